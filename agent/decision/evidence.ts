/**
 * Signs that this node is going away, read from the three places that can say so: IMDS notices, the
 * Node object and the agent's own Pod. Each sign is positive evidence; the absence of a sign (a Pod
 * that the API did not delete, say) is never read as one: a liveness-probe restart looks just like it.
 */
import type { Trigger } from '../drain/status.ts';
import type { Notice } from '../imds/notices.ts';
import type { KubeCondition, KubeNode, KubePod } from '../kube/client.ts';

export interface Evidence {
  /** The same sign seen twice is one sign: e.g. "imds:spot-interruption", "node:taint:karpenter.sh/disrupted". */
  readonly key: string;
  readonly trigger: Trigger;
  /** Said in the log, the Event and the drain's status. */
  readonly reason: string;
  /** When the node must be out, if the sign says. */
  readonly deadline: Date | undefined;
  /** The node will not come back from it (the instance ends, the node shuts down): it is never given back. */
  readonly sticky: boolean;
}

/** Autoscalers' taints meaning "this node is being removed now" (not DeletionCandidateOfClusterAutoscaler: "maybe later"). */
export const GOING_AWAY_TAINTS = ['ToBeDeletedByClusterAutoscaler', 'karpenter.sh/disrupted', 'karpenter.sh/disruption'] as const;
/** What the kubelet's graceful node shutdown writes into the Node's Ready condition. */
const SHUTTING_DOWN = 'node is shutting down';
/** What it writes into the status of each Pod it stops for the shutdown (reason `Shutdown` on Kubernetes 1.21). */
const SHUTDOWN_POD_MESSAGE = 'Pod was terminated in response to imminent node shutdown.';

export function fromNotice(notice: Notice): Evidence {
  return {
    key: `imds:${notice.key}`,
    trigger: notice.kind,
    reason: `IMDS shows ${notice.kind}${notice.deadline ? ` (out by ${notice.deadline.toISOString()})` : ''}`,
    deadline: notice.deadline,
    sticky: notice.sticky,
  };
}

/** The Node deleted from the API: being deleted (a finalizer holds it) or gone already. */
export const NODE_DELETED: Evidence = { key: 'node:deleted', trigger: 'node-removal', reason: 'the Node is being deleted', deadline: undefined, sticky: true };

/** Every sign the Node gives: being deleted, an autoscaler's taint, the kubelet shutting it down. */
export function fromNode(node: KubeNode): Evidence[] {
  const found: Evidence[] = [];
  if (node.metadata.deletionTimestamp) found.push(NODE_DELETED);
  for (const taint of node.spec.taints ?? []) {
    if (!(GOING_AWAY_TAINTS as readonly string[]).includes(taint.key)) continue;
    // An autoscaler that gives up on removing the node takes its taint off again: then the node stays.
    found.push({ key: `node:taint:${taint.key}`, trigger: 'node-removal', reason: `the Node carries the ${taint.key} taint`, deadline: undefined, sticky: false });
  }
  const ready = condition(node.status?.conditions, 'Ready');
  if (ready?.status === 'False' && ready.message?.includes(SHUTTING_DOWN)) {
    found.push({ key: 'node:shutdown', trigger: 'node-shutdown', reason: `the kubelet says: ${ready.message}`, deadline: undefined, sticky: true });
  }
  return found;
}

/** The kubelet's word, in the agent's own Pod status, that it stops the Pod for a node shutdown. */
export function fromPod(pod: KubePod): Evidence | undefined {
  const status = pod.status ?? {};
  // An eviction under node pressure also comes from the kubelet (even as TerminationByKubelet), but the node stays.
  if (status.reason === 'Evicted') return undefined;
  const disruption = condition(status.conditions, 'DisruptionTarget');
  const byKubelet = disruption?.status === 'True' && disruption.reason === 'TerminationByKubelet';
  const terminated = (status.reason === 'Terminated' && status.message === SHUTDOWN_POD_MESSAGE) || status.reason === 'Shutdown';
  if (!byKubelet && !terminated) return undefined;
  const said = byKubelet ? `DisruptionTarget condition, reason TerminationByKubelet${disruption.message ? `: ${disruption.message}` : ''}` : `reason ${status.reason}${status.message ? `: ${status.message}` : ''}`;
  return { key: 'pod:shutdown', trigger: 'node-shutdown', reason: `the kubelet stops this Pod for a node shutdown (${said})`, deadline: undefined, sticky: true };
}

function condition(conditions: readonly KubeCondition[] | undefined, type: string): KubeCondition | undefined {
  return conditions?.find((candidate) => candidate.type === type);
}
