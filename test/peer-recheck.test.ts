/**
 * The coordinator's keep-out re-check of the peers it served, against a fake drainer: which peers are
 * looked at, when one is drained again, that a slow pass is not overtaken, and that a peer is let go
 * an hour after its drain.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { KEEP_OUT_FOR_MS, PeerRecheck } from '../agent/coordinator/peer-recheck.ts';
import type { DrainOptions } from '../agent/drain/drain.ts';
import type { DrainHandle } from '../agent/drain/drainer.ts';
import type { Instance } from '../agent/drain/instance.ts';
import { silentLogger } from '../agent/log.ts';

const INTERVAL_MS = 20;

const peer = (id: string): Instance => ({ id, vpcId: 'vpc-0123456789abcdef0', privateIps: ['10.0.1.5'], ipv6: [], prefixes: [], tags: {} }) as unknown as Instance;

/** Answers servingMemberships from `registered` (or never, while `hang`), and records the drains started. */
class FakeDrainer {
  registered = new Map<string, { family: string; id: string }[]>();
  hang = false;
  readonly looked: string[] = [];
  readonly started: { id: string; options: DrainOptions }[] = [];

  servingMemberships = async (instance: Instance) => {
    this.looked.push(instance.id);
    if (this.hang) await new Promise(() => {});
    return this.registered.get(instance.id) ?? [];
  };

  start = (instance: Instance, options: DrainOptions): DrainHandle => {
    this.started.push({ id: instance.id, options });
    return {} as DrainHandle;
  };
}

let rechecks: PeerRecheck[] = [];
afterEach(() => {
  for (const recheck of rechecks) recheck.stop();
  rechecks = [];
});

function recheckWith(drainer: FakeDrainer, clock = { now: Date.now() }) {
  const caught: string[] = [];
  const recheck = new PeerRecheck({
    drainer,
    intervalMs: INTERVAL_MS,
    drainTimeoutMs: 120_000,
    dryRun: false,
    onCaught: (instance) => caught.push(instance.id),
    logger: silentLogger(),
    now: () => clock.now,
  });
  rechecks.push(recheck);
  return { recheck, caught, clock };
}

describe("the coordinator's keep-out re-check of served peers", () => {
  it('looks at every served peer at each interval, and drains again only the one registered again', async () => {
    const drainer = new FakeDrainer();
    const { recheck, caught } = recheckWith(drainer);
    recheck.add(peer('i-0aaaaaaaaaaaaaaa1'));
    recheck.add(peer('i-0aaaaaaaaaaaaaaa2'));
    await sleep(INTERVAL_MS * 3);
    assert.ok(drainer.looked.includes('i-0aaaaaaaaaaaaaaa1') && drainer.looked.includes('i-0aaaaaaaaaaaaaaa2'));
    assert.equal(drainer.started.length, 0, 'nothing registered again: nothing drained');

    drainer.registered.set('i-0aaaaaaaaaaaaaaa2', [{ family: 'target-group', id: 'arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/1' }]);
    await sleep(INTERVAL_MS * 3);
    assert.ok(caught.includes('i-0aaaaaaaaaaaaaaa2') && !caught.includes('i-0aaaaaaaaaaaaaaa1'));
    assert.equal(drainer.started[0]?.id, 'i-0aaaaaaaaaaaaaaa2');
    assert.equal(drainer.started[0]?.options.trigger, 'recheck');
    assert.equal(drainer.started[0]?.options.scope.kind, 'all');
  });

  it('a pass that hangs is not overtaken by the next ones', async () => {
    const drainer = new FakeDrainer();
    drainer.hang = true;
    const { recheck } = recheckWith(drainer);
    recheck.add(peer('i-0aaaaaaaaaaaaaaa1'));
    await sleep(INTERVAL_MS * 6);
    assert.deepEqual(drainer.looked, ['i-0aaaaaaaaaaaaaaa1'], 'one lookup in flight, none queued behind it');
  });

  it('lets a peer go an hour after its drain, and looks at nothing once none is left', async () => {
    const drainer = new FakeDrainer();
    const { recheck, clock } = recheckWith(drainer);
    recheck.add(peer('i-0aaaaaaaaaaaaaaa1'));
    await sleep(INTERVAL_MS * 3);
    assert.ok(drainer.looked.length >= 1);
    clock.now += KEEP_OUT_FOR_MS;
    await sleep(INTERVAL_MS * 3);
    const lookedThen = drainer.looked.length;
    await sleep(INTERVAL_MS * 4);
    assert.equal(drainer.looked.length, lookedThen, 'no more lookups');
  });

  it('stops at once when this agent no longer coordinates', async () => {
    const drainer = new FakeDrainer();
    const { recheck } = recheckWith(drainer);
    recheck.add(peer('i-0aaaaaaaaaaaaaaa1'));
    recheck.stop();
    await sleep(INTERVAL_MS * 4);
    assert.deepEqual(drainer.looked, []);
  });
});
