/**
 * On SIGTERM: is the node really going away, or is only this pod being restarted? A DaemonSet rollout
 * must never pull nodes out of load balancers, and a node shutdown must.
 *
 * - IMDS says so (spot interruption, ASG Terminated, maintenance): going away.
 * - The Node is being deleted, or carries ToBeDeletedByClusterAutoscaler or karpenter.sh/disrupted: going away.
 * - Our own Pod has no deletionTimestamp: the kubelet, not the API, is stopping it (node shutdown): going away.
 * - Our Pod has a deletionTimestamp (rollout, kubectl delete, eviction) and nothing above holds: a restart.
 * - Kubernetes cannot be asked and IMDS shows nothing: do not drain, and say why.
 */
import type { SigtermPolicy } from './config.ts';
import { errorMessage } from './aws/errors.ts';
import type { Notice } from './imds/notices.ts';
import type { KubeClient, KubeNode } from './kube/client.ts';

export type Verdict = { readonly drain: boolean; readonly reason: string };

export interface ShutdownEvidence {
  readonly policy: SigtermPolicy;
  /** Notices IMDS shows now; rejects when IMDS cannot be read. */
  readonly notices: () => Promise<Notice[]>;
  readonly kube: KubeClient | undefined;
  readonly nodeName: string | undefined;
  readonly pod: { readonly namespace: string; readonly name: string } | undefined;
}

const GOING_AWAY_TAINTS = ['ToBeDeletedByClusterAutoscaler', 'karpenter.sh/disrupted', 'karpenter.sh/disruption'];

/** Why the Node itself says it is going away (deleted, or marked by an autoscaler), or undefined. */
export function nodeGoingAway(node: KubeNode): string | undefined {
  if (node.metadata.deletionTimestamp) return 'the Node is being deleted';
  const taint = (node.spec.taints ?? []).find((t) => GOING_AWAY_TAINTS.includes(t.key));
  return taint ? `the Node carries the ${taint.key} taint` : undefined;
}

export async function classifyShutdown(evidence: ShutdownEvidence): Promise<Verdict> {
  if (evidence.policy === 'always') return { drain: true, reason: 'SIGTERM_DRAIN=always' };
  if (evidence.policy === 'never') return { drain: false, reason: 'SIGTERM_DRAIN=never' };

  const { kube, nodeName, pod } = evidence;
  const [notices, node, ownPod] = await Promise.allSettled([
    evidence.notices(),
    kube && nodeName ? kube.getNode(nodeName) : Promise.reject(new Error('NODE_NAME is not set')),
    kube && pod ? kube.getPod(pod.namespace, pod.name) : Promise.reject(new Error('POD_NAME and POD_NAMESPACE are not set')),
  ]);

  if (notices.status === 'fulfilled' && notices.value.length > 0) {
    return { drain: true, reason: `IMDS shows ${notices.value.map((notice) => notice.kind).join(', ')}` };
  }
  const nodeReason = node.status === 'fulfilled' ? nodeGoingAway(node.value) : undefined;
  if (nodeReason) return { drain: true, reason: nodeReason };
  if (ownPod.status === 'fulfilled') {
    return ownPod.value.metadata.deletionTimestamp
      ? { drain: false, reason: 'the Pod is being deleted through the API (rollout, delete or eviction) and nothing says the node is going away' }
      : { drain: true, reason: 'the Pod was not deleted through the API: the kubelet is stopping it, the node is shutting down' };
  }
  const why = [
    notices.status === 'rejected' ? `IMDS: ${errorMessage(notices.reason)}` : 'IMDS shows no notice',
    `Kubernetes: ${errorMessage(ownPod.reason)}`,
  ];
  return { drain: false, reason: `cannot tell a node shutdown from a pod restart (${why.join('; ')}): not draining` };
}
