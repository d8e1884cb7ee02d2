/**
 * On SIGTERM: is the node going away, or is only this pod stopping (a rollout, a liveness-probe restart,
 * an eviction)? Only positive evidence drains (SIGTERM_DRAIN=auto): a sign already known, or one that
 * IMDS, the Node or the Pod shows now. The kubelet writes its shutdown marks asynchronously, so a Pod the
 * kubelet (not the API) is stopping is read again for a few seconds before the answer is "restart".
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage } from '../aws/errors.ts';
import type { SigtermPolicy } from '../config.ts';
import type { Notice } from '../imds/notices.ts';
import type { KubeNode, KubePod } from '../kube/client.ts';
import { fromNode, fromNotice, fromPod, type Evidence } from './evidence.ts';

export type SigtermVerdict =
  /** `kubernetesReadable`: false when neither the Node nor the Pod could be read (no Event can be written either). */
  | { readonly drain: false; readonly reason: string; readonly kubernetesReadable: boolean }
  | { readonly drain: true; readonly reason: string; readonly evidence: readonly Evidence[] };

export interface SigtermInputs {
  readonly policy: SigtermPolicy;
  /** Signs known before the signal (the notices watcher, the Node watch). */
  readonly known: readonly Evidence[];
  /** Notices IMDS shows now; rejects when IMDS cannot be read. */
  readonly notices: () => Promise<Notice[]>;
  /** Undefined without Kubernetes access, NODE_NAME, or POD_NAME and POD_NAMESPACE. */
  readonly node: (() => Promise<KubeNode>) | undefined;
  readonly pod: (() => Promise<KubePod>) | undefined;
  /** How long to keep reading for the kubelet's marks. */
  readonly settleMs?: number;
}

/** The kubelet writes the Node's and the Pod's shutdown marks within moments of stopping the first pods. */
const SETTLE_MS = 3_000;
const REREAD_MS = 500;

export async function decideOnSigterm(inputs: SigtermInputs): Promise<SigtermVerdict> {
  if (inputs.policy === 'always') return { drain: true, reason: 'SIGTERM_DRAIN=always', evidence: [] };
  if (inputs.policy === 'never') return { drain: false, reason: 'SIGTERM_DRAIN=never', kubernetesReadable: true };
  if (inputs.known.length > 0) return goingAway(inputs.known);

  const giveUpAt = Date.now() + (inputs.settleMs ?? SETTLE_MS);
  for (;;) {
    const seen = await look(inputs);
    if (seen.evidence.length > 0) return goingAway(seen.evidence);
    // Deleted through the API (rollout, kubectl delete, an eviction): the kubelet's shutdown never does that.
    if (seen.pod?.metadata.deletionTimestamp) {
      return { drain: false, reason: `the Pod is being deleted through the API (rollout, delete or eviction) and nothing says the node is going away (${seen.nothing.join('; ')})`, kubernetesReadable: true };
    }
    if (Date.now() + REREAD_MS > giveUpAt) return { drain: false, reason: notGoingAway(seen), kubernetesReadable: !seen.unreadable };
    await sleep(REREAD_MS);
  }
}

interface Look {
  readonly evidence: Evidence[];
  readonly pod: KubePod | undefined;
  /** What each source said when it showed no sign, or why it could not be read. */
  readonly nothing: string[];
  readonly unreadable: boolean;
}

async function look(inputs: SigtermInputs): Promise<Look> {
  const missing = (what: string) => () => Promise.reject(new Error(what));
  const [notices, node, pod] = await Promise.allSettled([
    inputs.notices(),
    (inputs.node ?? missing('no Kubernetes access or NODE_NAME'))(),
    (inputs.pod ?? missing('no Kubernetes access or POD_NAME and POD_NAMESPACE'))(),
  ]);
  const evidence: Evidence[] = [];
  const nothing: string[] = [];
  if (notices.status === 'fulfilled') {
    evidence.push(...notices.value.map(fromNotice));
    if (notices.value.length === 0) nothing.push('IMDS shows no notice');
  } else nothing.push(`IMDS: ${errorMessage(notices.reason)}`);
  if (node.status === 'fulfilled') {
    const signs = fromNode(node.value);
    evidence.push(...signs);
    if (signs.length === 0) nothing.push('the Node is not being deleted, tainted for removal or shutting down');
  } else nothing.push(`Kubernetes (Node): ${errorMessage(node.reason)}`);
  if (pod.status === 'fulfilled') {
    const sign = fromPod(pod.value);
    if (sign) evidence.push(sign);
    else nothing.push('the Pod\'s status says nothing of a node shutdown');
  } else nothing.push(`Kubernetes (Pod): ${errorMessage(pod.reason)}`);
  return { evidence, pod: pod.status === 'fulfilled' ? pod.value : undefined, nothing, unreadable: node.status === 'rejected' && pod.status === 'rejected' };
}

function goingAway(evidence: readonly Evidence[]): SigtermVerdict {
  return { drain: true, reason: evidence.map((sign) => sign.reason).join('; '), evidence };
}

function notGoingAway(seen: Look): string {
  if (seen.unreadable) return `cannot tell a node shutdown from a pod restart (${seen.nothing.join('; ')}): not draining`;
  return `no sign that the node is going away, so this is a restart of the Pod (a liveness probe, an update, a crash): ${seen.nothing.join('; ')}`;
}
