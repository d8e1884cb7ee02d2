/**
 * The decision about the node, on its own: which signs count as going away (and which never do), how
 * the verdict follows the signs as they come and pass, and what SIGTERM concludes from them.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { fromNode, fromNotice, fromPod, type Evidence } from '../agent/decision/evidence.ts';
import { NodeFate, type VerdictChange } from '../agent/decision/node-fate.ts';
import { decideOnSigterm, type SigtermInputs } from '../agent/decision/sigterm.ts';
import type { Notice } from '../agent/imds/notices.ts';
import type { KubeNode, KubePod } from '../agent/kube/client.ts';

const SHUTDOWN_MESSAGE = 'Pod was terminated in response to imminent node shutdown.';

function node(fields: { taints?: string[]; deleted?: boolean; ready?: { status: string; message?: string } } = {}): KubeNode {
  return {
    metadata: { name: 'n1', uid: 'u1', labels: {}, annotations: {}, ...(fields.deleted ? { deletionTimestamp: '2026-12-02T10:00:00Z' } : {}) },
    spec: { taints: (fields.taints ?? []).map((key) => ({ key, effect: 'NoSchedule' })) },
    status: { conditions: fields.ready ? [{ type: 'Ready', status: fields.ready.status, reason: 'KubeletNotReady', message: fields.ready.message }] : [{ type: 'Ready', status: 'True' }] },
  } as KubeNode;
}

type PodStatus = { phase?: string; reason?: string; message?: string; conditions?: { type: string; status: string; reason?: string; message?: string }[] };

function pod(status: PodStatus = {}, deleted = false): KubePod {
  return { metadata: { name: 'p', namespace: 'kube-system', uid: 'u', annotations: {}, ...(deleted ? { deletionTimestamp: '2026-12-02T10:00:00Z' } : {}) }, spec: { nodeName: 'n1' }, status } as KubePod;
}

function notice(kind: Notice['kind'], key: string, deadline?: Date): Notice {
  return { kind, key, deadline, detail: {}, sticky: kind !== 'scheduled-maintenance' && kind !== 'asg-warm-pool' };
}

describe('signs of going away', () => {
  it('the Node: deleted, an autoscaler\'s removal taint, or the kubelet shutting it down', () => {
    assert.deepEqual(fromNode(node({ deleted: true })).map((sign) => sign.key), ['node:deleted']);
    for (const taint of ['ToBeDeletedByClusterAutoscaler', 'karpenter.sh/disrupted']) {
      const [sign] = fromNode(node({ taints: [taint] }));
      assert.equal(sign?.trigger, 'node-removal');
      assert.match(sign!.reason, new RegExp(taint.replace('.', '\\.')));
    }
    const [shutdown] = fromNode(node({ ready: { status: 'False', message: 'node is shutting down' } }));
    assert.equal(shutdown?.trigger, 'node-shutdown');
    assert.equal(shutdown?.sticky, true);
  });

  it('never a healthy Node, a "maybe later" taint, or a NotReady Node for another reason', () => {
    assert.deepEqual(fromNode(node()), []);
    assert.deepEqual(fromNode(node({ taints: ['DeletionCandidateOfClusterAutoscaler', 'node.kubernetes.io/unreachable'] })), []);
    assert.deepEqual(fromNode(node({ ready: { status: 'False', message: 'container runtime network not ready' } })), []);
    assert.deepEqual(fromNode(node({ ready: { status: 'Unknown', message: 'Kubelet stopped posting node status.' } })), []);
  });

  it('the Pod: each way the kubelet marks a Pod it stops for a node shutdown', () => {
    for (const status of [
      { phase: 'Failed', reason: 'Terminated', message: SHUTDOWN_MESSAGE },
      { phase: 'Failed', reason: 'Shutdown', message: 'Shutting down, node is shutting down' },
      { phase: 'Running', conditions: [{ type: 'DisruptionTarget', status: 'True', reason: 'TerminationByKubelet', message: SHUTDOWN_MESSAGE }] },
    ]) {
      const sign = fromPod(pod(status));
      assert.equal(sign?.trigger, 'node-shutdown', JSON.stringify(status));
      assert.match(sign!.reason, /node shutdown/);
    }
  });

  it('never a Pod that is only restarting or evicted', () => {
    assert.equal(fromPod(pod({ phase: 'Running' })), undefined, 'a liveness-probe restart leaves the status as it was');
    assert.equal(fromPod(pod({ phase: 'Running' }, true)), undefined, 'deleted through the API: a rollout');
    assert.equal(fromPod(pod({ phase: 'Failed', reason: 'Evicted', message: 'The node was low on resource: memory.' })), undefined);
    const evicted = { phase: 'Failed', reason: 'Evicted', conditions: [{ type: 'DisruptionTarget', status: 'True', reason: 'TerminationByKubelet', message: 'The node was low on resource: memory.' }] };
    assert.equal(fromPod(pod(evicted)), undefined, 'node-pressure eviction carries TerminationByKubelet too, and the node stays');
    assert.equal(fromPod(pod({ reason: 'Terminated', message: 'something else' })), undefined);
  });
});

describe('the verdict', () => {
  const maintenance = (deadline: Date) => fromNotice(notice('scheduled-maintenance', 'scheduled-maintenance:instance-event-1', deadline));
  const spot = (deadline: Date) => fromNotice(notice('spot-interruption', 'spot-interruption', deadline));

  function watched(): { fate: NodeFate; changes: VerdictChange[] } {
    const fate = new NodeFate();
    const changes: VerdictChange[] = [];
    fate.onChange((change) => changes.push(change));
    return { fate, changes };
  }

  it('goes away on the first sign, with the soonest deadline, and says nothing when the same signs repeat', () => {
    const { fate, changes } = watched();
    const later = new Date('2026-12-02T12:00:00Z');
    const sooner = new Date('2026-12-02T11:00:00Z');
    fate.report('imds', [maintenance(later)]);
    fate.report('imds', [maintenance(later)]);
    assert.equal(changes.length, 1);
    fate.report('node', fromNode(node({ taints: ['ToBeDeletedByClusterAutoscaler'] })));
    fate.report('imds', [maintenance(later), spot(sooner)]);
    const verdict = fate.now();
    assert.ok(verdict.goingAway);
    assert.equal(verdict.deadline?.toISOString(), sooner.toISOString());
    assert.equal(verdict.evidence[0]?.trigger, 'spot-interruption', 'a sticky sign names the drain');
  });

  it('a deadline that moves is a change', () => {
    const { fate, changes } = watched();
    fate.report('imds', [spot(new Date('2026-12-02T11:02:00Z'))]);
    fate.report('imds', [spot(new Date('2026-12-02T11:01:00Z'))]);
    assert.equal(changes.length, 2);
    assert.ok(changes[1]!.verdict.goingAway && changes[1]!.verdict.deadline?.toISOString() === '2026-12-02T11:01:00.000Z');
  });

  it('gives the node back when the last passing sign passes, and only then', () => {
    const { fate, changes } = watched();
    fate.report('imds', [maintenance(new Date('2026-12-02T12:00:00Z'))]);
    fate.report('node', fromNode(node({ taints: ['ToBeDeletedByClusterAutoscaler'] })));
    fate.report('imds', []);
    assert.ok(fate.now().goingAway, 'the taint still holds');
    fate.report('node', fromNode(node()));
    assert.equal(fate.now().goingAway, false);
    assert.equal(changes.at(-1)?.givenBack, true);
    assert.match(changes.at(-1)!.why, /no sign holds any more/);
  });

  it('never gives back after a sticky sign, even when its source no longer shows it', () => {
    const { fate } = watched();
    fate.report('imds', [spot(new Date('2026-12-02T11:02:00Z'))]);
    fate.report('imds', []);
    assert.ok(fate.now().goingAway);
    fate.report('node', fromNode(node({ ready: { status: 'False', message: 'node is shutting down' } })));
    fate.report('node', fromNode(node()));
    assert.ok(fate.now().goingAway);
  });
});

describe('SIGTERM', () => {
  const inputs = (fields: Partial<SigtermInputs>): SigtermInputs => ({
    policy: 'auto',
    known: [],
    notices: async () => [],
    node: async () => node(),
    pod: async () => pod({ phase: 'Running' }),
    settleMs: 600,
    ...fields,
  });

  it('no sign at all (a liveness-probe restart): not draining, and the reason says what was read', async () => {
    const verdict = await decideOnSigterm(inputs({}));
    assert.equal(verdict.drain, false);
    assert.match(verdict.reason, /no sign that the node is going away/);
    assert.match(verdict.reason, /IMDS shows no notice/);
    assert.match(verdict.reason, /Pod's status says nothing of a node shutdown/);
  });

  it('a mark the kubelet writes a moment after the signal: draining, because the Pod is read again', async () => {
    let reads = 0;
    const verdict = await decideOnSigterm(inputs({ settleMs: 3_000, pod: async () => (++reads < 3 ? pod({ phase: 'Running' }) : pod({ reason: 'Terminated', message: SHUTDOWN_MESSAGE })) }));
    assert.equal(verdict.drain, true);
    assert.match(verdict.reason, /node shutdown/);
  });

  it('a sign known before the signal drains at once', async () => {
    const known: Evidence[] = fromNode(node({ taints: ['karpenter.sh/disrupted'] }));
    const verdict = await decideOnSigterm(inputs({ known, pod: async () => pod({ phase: 'Running' }, true) }));
    assert.equal(verdict.drain, true);
    assert.match(verdict.reason, /karpenter\.sh\/disrupted/);
  });

  it('a rollout (Pod deleted through the API) is answered without waiting', async () => {
    const verdict = await decideOnSigterm(inputs({ settleMs: 60_000, pod: async () => pod({ phase: 'Running' }, true) }));
    assert.equal(verdict.drain, false);
    assert.match(verdict.reason, /deleted through the API/);
  });

  it('Kubernetes unreachable and IMDS quiet: not draining, saying it cannot tell', async () => {
    const down = async () => Promise.reject(new Error('connect ECONNREFUSED'));
    const verdict = await decideOnSigterm(inputs({ node: down, pod: down }));
    assert.equal(verdict.drain, false);
    assert.match(verdict.reason, /cannot tell a node shutdown from a pod restart/);
    assert.match(verdict.reason, /ECONNREFUSED/);
  });

  it('always and never do as they say', async () => {
    assert.equal((await decideOnSigterm(inputs({ policy: 'always' }))).drain, true);
    assert.equal((await decideOnSigterm(inputs({ policy: 'never', known: fromNode(node({ deleted: true })) }))).drain, false);
  });
});
