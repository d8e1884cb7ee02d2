/**
 * NodeDrainMarks on its own: which annotation patches the Node gets, in which order, for each turn of a
 * node's life (the autoscaler's soft taint, a drain, a give-back, the agent stopping). End to end:
 * holding.e2e.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { DrainStatus } from '../agent/drain/status.ts';
import type { KubeNode, NodeMetadataPatch } from '../agent/kube/client.ts';
import { AUTOSCALER_HOLD_ANNOTATION as HOLD, DRAIN_ANNOTATION as MARK, NodeDrainMarks } from '../agent/kube/drain-marks.ts';
import { silentLogger } from '../agent/log.ts';

function setUp(fail = false) {
  const patches: Record<string, string | null>[] = [];
  const kube = {
    patchNode: async (_name: string, patch: NodeMetadataPatch) => {
      patches.push(patch.annotations!);
      if (fail) throw new Error('patch nodes "n": 403 Forbidden');
    },
  };
  return { patches, marks: new NodeDrainMarks(kube, 'n', silentLogger()) };
}

const node = (taints: string[], annotations: Record<string, string> = {}) =>
  ({ metadata: { name: 'n', labels: {}, annotations }, spec: { taints: taints.map((key) => ({ key, effect: 'PreferNoSchedule' })) } }) as unknown as KubeNode;

const status = (state: DrainStatus['state']) =>
  ({ state, trigger: 'node-removal', startedAt: '2026-12-07T10:00:00.000Z', deadline: '2026-12-07T10:02:00.000Z', finishedAt: state === 'draining' ? null : '2026-12-07T10:00:05.000Z' }) as DrainStatus;

describe('NodeDrainMarks', () => {
  it('writes nothing for a node the autoscaler never looks at, but the drain itself', async () => {
    const { patches, marks } = setUp();
    await marks.observe(node([]));
    await marks.drainChanged(status('draining'));
    await marks.drainChanged(status('deregistered'));
    assert.deepEqual(patches, [
      { [MARK]: '{"state":"draining","trigger":"node-removal","startedAt":"2026-12-07T10:00:00.000Z","deadline":"2026-12-07T10:02:00.000Z"}' },
      { [MARK]: '{"state":"deregistered","trigger":"node-removal","startedAt":"2026-12-07T10:00:00.000Z","deadline":"2026-12-07T10:02:00.000Z","finishedAt":"2026-12-07T10:00:05.000Z"}' },
    ]);
  });

  it('holds while the soft taint is on, lets go when the drain ends, holds again once given back', async () => {
    const { patches, marks } = setUp();
    await marks.observe(node(['DeletionCandidateOfClusterAutoscaler']));
    await marks.observe(node(['DeletionCandidateOfClusterAutoscaler'], { [HOLD]: 'x' }));
    await marks.drainChanged(status('draining'));
    await marks.drainChanged(status('timed_out'));
    await marks.givenBack();
    const holds = patches.filter((patch) => HOLD in patch).map((patch) => patch[HOLD] !== null);
    assert.deepEqual(holds, [true, false, true], 'on, off at the end of the drain (even timed out), on after the give-back');
    assert.equal(patches.at(-1)![MARK], null, 'the give-back removes the drain mark');
  });

  it('lets go when the soft taint goes, or the agent stops without draining; removes only what the Node carries', async () => {
    const { patches, marks } = setUp();
    await marks.observe(node(['DeletionCandidateOfClusterAutoscaler']));
    await marks.observe(node([], { [HOLD]: 'x' }));
    await marks.observe(node(['DeletionCandidateOfClusterAutoscaler']));
    await marks.stopping();
    assert.deepEqual(patches.map((patch) => patch[HOLD] !== null), [true, false, true, false]);
    await marks.givenBack();
    assert.equal(patches.length, 4, 'no drain mark to remove');
  });

  it('the autoscaler\'s taint alone holds too, until the drain ends', async () => {
    const { patches, marks } = setUp();
    await marks.observe(node(['ToBeDeletedByClusterAutoscaler']));
    await marks.drainChanged(status('draining'));
    await marks.drainChanged(status('deregistered'));
    assert.deepEqual(patches.filter((patch) => HOLD in patch).map((patch) => patch[HOLD] !== null), [true, false]);
  });

  it('a failed write is logged and never thrown: the drain goes on', async () => {
    const { patches, marks } = setUp(true);
    await marks.drainChanged(status('draining'));
    await marks.drainChanged(status('deregistered'));
    assert.equal(patches.length, 2);
  });
});
