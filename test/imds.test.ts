import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Writable } from 'node:stream';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { readInstanceAddresses } from '../agent/imds/addresses.ts';
import {
  createImdsClient,
  HOP_LIMIT_FIX,
  ImdsHopLimitError,
  ImdsUnavailableError,
  instanceIdentity,
  type ImdsClient,
  type ImdsClientOptions,
} from '../agent/imds/client.ts';
import { NoticesWatcher, type Notice, type NoticesWatcherOptions } from '../agent/imds/notices.ts';
import { createLogger, silentLogger } from '../agent/log.ts';
import { startFakeImds, type FakeImds } from './fakes/imds.ts';

const SPOT = 'meta-data/spot/instance-action';
const ASG = 'meta-data/autoscaling/target-lifecycle-state';
const MAINTENANCE = 'meta-data/events/maintenance/scheduled';
const REBALANCE = 'meta-data/events/recommendations/rebalance';
const ID = 'latest/meta-data/instance-id';

function fixture(name: string): string {
  return readFileSync(new URL(`fixtures/imds/${name}`, import.meta.url), 'utf8');
}

// Short timeouts keep the failure tests quick; the defaults are for real instances.
function client(fake: FakeImds, opts: Partial<ImdsClientOptions> = {}): ImdsClient {
  return createImdsClient({ endpoint: fake.url, v1Fallback: false, timeoutMs: 150, retries: 1, logger: silentLogger(), ...opts });
}

async function rejectsUnavailable(promise: Promise<unknown>, message?: RegExp): Promise<ImdsUnavailableError> {
  let caught: ImdsUnavailableError | undefined;
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof ImdsUnavailableError, `expected ImdsUnavailableError, got ${String(err)}`);
    if (message) assert.match(err.message, message);
    caught = err;
    return true;
  });
  return caught!;
}

async function waitFor(what: string, predicate: () => boolean, timeoutMs = 3000): Promise<void> {
  const giveUpAt = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > giveUpAt) assert.fail(`timed out waiting for ${what}`);
    await delay(10);
  }
}

/** A logger whose JSON lines the test can read. */
function capturedLogger() {
  const lines: { level: string; msg: string }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString().split('\n')) if (line.trim()) lines.push(JSON.parse(line) as { level: string; msg: string });
      done();
    },
  });
  return { logger: createLogger('debug', sink), lines };
}

describe('IMDS client', () => {
  let fake: FakeImds;
  let imds: ImdsClient;

  /** Replaces the default client, for tests that need other options. */
  async function reopen(opts: Partial<ImdsClientOptions> = {}): Promise<void> {
    await imds.close();
    imds = client(fake, opts);
  }

  beforeEach(async () => {
    fake = await startFakeImds();
    imds = client(fake);
  });
  afterEach(async () => {
    await imds.close();
    await fake.close();
  });

  it('reads items with one token for many requests, concurrent ones included', async () => {
    const ids = await Promise.all(Array.from({ length: 5 }, () => imds.get(ID)));
    assert.deepEqual(new Set(ids), new Set(['i-0123456789abcdef0']));
    assert.equal(await imds.get('/latest/meta-data/placement/region'), 'eu-west-1');
    assert.equal(fake.tokenRequests, 1);
    assert.equal(fake.v1Requests, 0);
  });

  it('answers undefined for a missing item, not its HTML page', async () => {
    assert.equal(await imds.get(SPOT), undefined);
    fake.set(SPOT, fixture('spot-instance-action.json'));
    assert.equal(await imds.get(`latest/${SPOT}`), fixture('spot-instance-action.json'));
    fake.set(SPOT, undefined);
    assert.equal(await imds.get(`latest/${SPOT}`), undefined);
  });

  it('gets a fresh token once when IMDS answers 401', async () => {
    await imds.get(ID);
    fake.revokeTokens();
    assert.equal(await imds.get(ID), 'i-0123456789abcdef0');
    assert.equal(fake.tokenRequests, 2);
  });

  it('recovers when the token expired at IMDS before the client expected', async () => {
    let imdsClock = Date.now();
    await fake.close();
    fake = await startFakeImds({ now: () => imdsClock });
    await reopen({ tokenTtlSeconds: 60 });
    await imds.get(ID);
    imdsClock += 61_000;
    assert.equal(await imds.get(ID), 'i-0123456789abcdef0');
    assert.equal(fake.tokenRequests, 2);
  });

  it('renews the token before it expires', async () => {
    let clock = Date.now();
    await reopen({ tokenTtlSeconds: 100, now: () => clock });
    await imds.get(ID);
    clock += 50_000;
    await imds.get(ID);
    assert.equal(fake.tokenRequests, 1);
    clock += 31_000; // past 80% of the TTL
    await imds.get(ID);
    assert.equal(fake.tokenRequests, 2);
  });

  it('throws ImdsUnavailableError on 500, after retrying', async () => {
    fake.fault = 'error500';
    await rejectsUnavailable(imds.get(ID), /instance-id.*500/);
    assert.equal(fake.count('meta-data/instance-id'), 0, 'the token PUT failed first');
    assert.equal(fake.tokenRequests, 2, 'one attempt and one retry');
    fake.fault = 'none';
    assert.equal(await imds.get(ID), 'i-0123456789abcdef0');
  });

  it('gives up on a hanging IMDS instead of hanging too', async () => {
    await imds.get(ID);
    fake.fault = 'hang';
    await rejectsUnavailable(imds.get(ID), /no answer within 150ms/);
    fake.fault = 'none';
    assert.equal(await imds.get(ID), 'i-0123456789abcdef0');
  });

  it('throws ImdsUnavailableError when nothing listens', async () => {
    await fake.close();
    await rejectsUnavailable(imds.get(ID));
  });

  it('by default waits 3 s for an answer: a loaded IMDS answering in 1.7 s is read', async () => {
    fake.answerDelayMs = 1700;
    await reopen({ timeoutMs: undefined, retries: 0 });
    assert.equal(await imds.get(ID), 'i-0123456789abcdef0');
  });

  it('without IMDSv1, a token request that gets no answer names the hop limit and its fix', async () => {
    fake.hopLimitHang = true;
    fake.v1Disabled = false;
    const err = await rejectsUnavailable(imds.get(ID));
    assert.ok(err.reason.includes(HOP_LIMIT_FIX), err.reason);
    assert.match(err.reason, /no answer within 150ms/);
    assert.equal(fake.count('meta-data/instance-id'), 0, 'no request without a token');
  });

  for (const symptom of ['hang', 'drop'] as const) {
    it(`hop limit 1 with IMDSv2 required (token answer ${symptom === 'hang' ? 'never arrives' : 'dropped'}): the error says hop limit 2 or hostNetwork, not 401`, async () => {
      fake.hopLimitHang = symptom === 'hang';
      fake.hopLimitDrop = symptom === 'drop';
      await reopen({ v1Fallback: true });
      await assert.rejects(imds.get(ID), (err: unknown) => {
        assert.ok(err instanceof ImdsHopLimitError, `expected ImdsHopLimitError, got ${String(err)}`);
        assert.match(err.message, /hop limit is 1/);
        assert.ok(err.message.includes('aws ec2 modify-instance-metadata-options --instance-id <id> --http-put-response-hop-limit 2 --http-tokens required'));
        assert.match(err.message, /hostNetwork/);
        assert.doesNotMatch(err.message, /AWS_REGION|VPCID|CLUSTERNAME/);
        return true;
      });
      const tokenRequests = fake.tokenRequests;
      await assert.rejects(imds.get(ID), ImdsHopLimitError);
      assert.equal(fake.tokenRequests, tokenRequests, 'the next read does not wait for another token request');
    });
  }

  it('falls back to IMDSv1 when allowed and the token request hangs', async () => {
    fake.hopLimitHang = true;
    fake.v1Disabled = false;
    await reopen({ v1Fallback: true });
    assert.equal(await imds.get(ID), 'i-0123456789abcdef0');
    const tokenRequests = fake.tokenRequests;
    assert.equal(await imds.get('latest/meta-data/placement/region'), 'eu-west-1');
    assert.equal(fake.tokenRequests, tokenRequests, 'no new token request right after falling back');
    assert.equal(fake.v1Requests, 2);
  });

  it('on IMDSv1, asks for a token again with growing pauses', async () => {
    let clock = Date.now();
    fake.hopLimitHang = true;
    fake.v1Disabled = false;
    await reopen({ v1Fallback: true, retries: 0, now: () => clock });
    await imds.get(ID);
    const tries = [fake.tokenRequests];
    /** Reads at each clock step (ms), and lets a token retry it started end; the token requests so far. */
    async function readsAt(...steps: number[]): Promise<number> {
      for (const step of steps) {
        clock += step;
        await imds.get(ID);
        await delay(500); // a hanging token request gives up after 150 ms
      }
      return fake.tokenRequests;
    }
    tries.push(await readsAt(1_000, 1_000));
    assert.equal(tries[1], tries[0], 'no retry within the first 5 s');
    tries.push(await readsAt(3_000));
    assert.ok(tries[2]! > tries[1]!, 'a retry 5 s after falling back');
    tries.push(await readsAt(5_000));
    assert.equal(tries[3], tries[2], 'the next pause is longer than 5 s');
    tries.push(await readsAt(5_000));
    assert.ok(tries[4]! > tries[3]!, 'a retry 10 s after the last one');
    assert.equal(fake.v1Requests, 6, 'every read answered meanwhile, on v1');
  });

  it('goes back to IMDSv2 as soon as a token retry is answered', async () => {
    let clock = Date.now();
    fake.hopLimitHang = true;
    fake.v1Disabled = false;
    await reopen({ v1Fallback: true, now: () => clock });
    await imds.get(ID);
    fake.hopLimitHang = false;
    clock += 5_000;
    await imds.get(ID); // answered on v1; the token is asked for meanwhile
    for (let reads = 1; ; reads++) {
      const before = fake.v1Requests;
      await imds.get(ID);
      if (fake.v1Requests === before) break;
      assert.ok(reads < 100, 'still on IMDSv1');
      await delay(10);
    }
    const v1Requests = fake.v1Requests;
    await imds.get(ID);
    assert.equal(fake.v1Requests, v1Requests, 'reads carry the token again');
  });

  it('goes back to tokens when IMDS starts requiring them and answers the token request again', async () => {
    let clock = Date.now();
    fake.hopLimitHang = true;
    fake.v1Disabled = false;
    await reopen({ v1Fallback: true, now: () => clock });
    await imds.get(ID);
    fake.hopLimitHang = false;
    fake.v1Disabled = true;
    clock += 5_000;
    assert.equal(await imds.get(ID), 'i-0123456789abcdef0');
    assert.equal(await imds.get(ID), 'i-0123456789abcdef0');
  });

  it('reads the instance identity', async () => {
    await fake.close();
    fake = await startFakeImds({ instanceId: 'i-0aaa', region: 'us-east-2', mac: '02:00:00:00:00:01', vpcId: 'vpc-0bbb', privateIp: '10.1.2.3' });
    await reopen();
    assert.deepEqual(await instanceIdentity(imds), { instanceId: 'i-0aaa', region: 'us-east-2', vpcId: 'vpc-0bbb', privateIp: '10.1.2.3' });
  });

  it('reads an identity without a VPC when the interface has none', async () => {
    fake.set('meta-data/network/interfaces/macs/0e:49:61:0f:c3:11/vpc-id', undefined);
    const identity = await instanceIdentity(imds);
    assert.equal(identity.vpcId, undefined);
    assert.equal(identity.instanceId, 'i-0123456789abcdef0');
  });
});

describe('instance addresses from IMDS', () => {
  let fake: FakeImds;
  let imds: ImdsClient;

  beforeEach(async () => {
    fake = await startFakeImds({ mac: '0e:00:00:00:00:02', vpcId: 'vpc-0aaa', privateIp: '10.0.1.23' });
    imds = client(fake);
  });
  afterEach(async () => {
    await imds.close();
    await fake.close();
  });

  it('collects every interface, the primary one first: IPv4, IPv6 and delegated prefixes', async () => {
    // Listed before the primary one (IMDS sorts by MAC), with secondary addresses and a prefix.
    fake.setInterface('0e:00:00:00:00:01', { vpcId: 'vpc-0aaa', localIpv4s: ['10.0.2.10', '10.0.2.11'], ipv4Prefixes: ['10.0.2.32/28'] });
    fake.setInterface('0e:00:00:00:00:02', {
      vpcId: 'vpc-0aaa',
      localIpv4s: ['10.0.1.23'],
      ipv6s: ['2600:1f18:aaaa:bb01::10'],
      ipv6Prefixes: ['2600:1f18:aaaa:bb01:8a3e::/80'],
    });
    // An IPv6-only interface: no local-ipv4s item at all.
    fake.setInterface('0e:00:00:00:00:03', { vpcId: 'vpc-0aaa', ipv6s: ['2600:1f18:aaaa:bb02::20', '2600:1f18:aaaa:bb02::21'] });

    assert.deepEqual(await readInstanceAddresses(imds), {
      vpcId: 'vpc-0aaa',
      privateIps: ['10.0.1.23', '10.0.2.10', '10.0.2.11'],
      ipv4Prefixes: ['10.0.2.32/28'],
      ipv6Addresses: ['2600:1f18:aaaa:bb01::10', '2600:1f18:aaaa:bb02::20', '2600:1f18:aaaa:bb02::21'],
      ipv6Prefixes: ['2600:1f18:aaaa:bb01:8a3e::/80'],
    });
  });

  it('a plain instance: one address, nothing else', async () => {
    assert.deepEqual(await readInstanceAddresses(imds), { vpcId: 'vpc-0aaa', privateIps: ['10.0.1.23'], ipv4Prefixes: [], ipv6Addresses: [], ipv6Prefixes: [] });
  });

  it('sees an interface attached later', async () => {
    await readInstanceAddresses(imds);
    fake.setInterface('0e:00:00:00:00:09', { vpcId: 'vpc-0aaa', localIpv4s: ['10.0.3.7'] });
    assert.deepEqual((await readInstanceAddresses(imds)).privateIps, ['10.0.1.23', '10.0.3.7']);
  });

  it('fails, naming the item, when the primary interface has no VPC', async () => {
    fake.setInterface('0e:00:00:00:00:02', { localIpv4s: ['10.0.1.23'] });
    await assert.rejects(readInstanceAddresses(imds), /0e:00:00:00:00:02\/vpc-id/);
  });

  it('fails with ImdsUnavailableError when an item cannot be read, rather than drain too little', async () => {
    fake.fail('meta-data/network/interfaces/macs/0e:00:00:00:00:02/ipv6s', 'error500');
    await rejectsUnavailable(readInstanceAddresses(imds), /ipv6s.*500/);
  });
});

describe('notices watcher', () => {
  const start = Date.parse('2026-11-27T10:00:00Z');
  const margin = 10_000;
  const hour = 3_600_000;
  let clock: number;
  let fake: FakeImds;
  let imds: ImdsClient;
  let watchers: NoticesWatcher[];

  before(async () => {
    fake = await startFakeImds();
  });
  after(async () => {
    await fake.close();
  });
  beforeEach(() => {
    clock = start;
    imds = client(fake, { timeoutMs: 100, retries: 0 });
    watchers = [];
    for (const path of [SPOT, ASG, MAINTENANCE, REBALANCE]) {
      fake.set(path, undefined);
      fake.fail(path, 'none');
    }
    fake.fault = 'none';
  });
  afterEach(async () => {
    await Promise.all(watchers.map((w) => w.stop()));
    await imds.close();
  });

  function watch(opts: Partial<NoticesWatcherOptions> = {}) {
    /** Each active set reported, in order. */
    const reports: (readonly Notice[])[] = [];
    const errors: Error[] = [];
    const watcher = new NoticesWatcher({
      imds,
      pollIntervalMs: 20,
      drainOnRebalance: false,
      maintenanceLeadMs: hour,
      deadlineMarginMs: margin,
      logger: silentLogger(),
      onNotices: (active) => reports.push(active),
      onPollError: (err) => errors.push(err),
      now: () => clock,
      ...opts,
    });
    watchers.push(watcher);
    const keys = () => reports.at(-1)?.map((n) => n.key) ?? [];
    return { watcher, reports, errors, keys };
  }

  /** Lets the watcher poll a few more times. */
  async function polls(n: number): Promise<void> {
    const target = fake.count(SPOT) + n;
    await waitFor(`${n} polls`, () => fake.count(SPOT) >= target);
    await delay(5); // the last poll's other items and its report
  }

  it('reports the active set when a spot notice appears, once, with the deadline before its time', async () => {
    const { watcher, reports } = watch();
    watcher.start();
    await polls(2);
    assert.equal(reports.length, 0, 'nothing to report while IMDS shows nothing');

    fake.set(SPOT, fixture('spot-instance-action.json'));
    await waitFor('the spot notice', () => reports.length === 1);
    const [notice] = reports[0]!;
    assert.equal(notice?.kind, 'spot-interruption');
    assert.equal(notice?.key, 'spot-interruption');
    assert.equal(notice?.sticky, true);
    assert.equal(notice?.deadline?.toISOString(), '2026-11-27T10:01:50.000Z');
    assert.deepEqual(notice?.detail, { action: 'terminate', time: '2026-11-27T10:02:00Z' });

    await polls(3);
    assert.equal(reports.length, 1, 'an unchanged set is not reported again');
  });

  it('a spot notice whose time moves keeps its key and is reported with the new deadline', async () => {
    const { watcher, reports } = watch();
    fake.set(SPOT, JSON.stringify({ action: 'terminate', time: '2026-11-27T10:02:00Z' }));
    watcher.start();
    await waitFor('the spot notice', () => reports.length === 1);
    fake.set(SPOT, JSON.stringify({ action: 'terminate', time: '2026-11-27T10:01:30Z' }));
    await waitFor('the moved deadline', () => reports.length === 2);
    await polls(3);
    assert.equal(reports.length, 2, 'one report per change, not one per poll');
    assert.deepEqual(reports[1]!.map((n) => [n.key, n.deadline?.toISOString()]), [['spot-interruption', '2026-11-27T10:01:20.000Z']]);
  });

  it('notices that arrive together are reported together, each with its own deadline', async () => {
    fake.set(SPOT, fixture('spot-instance-action.json'));
    fake.setLifecycleState('Terminated');
    fake.set(MAINTENANCE, fixture('maintenance-system-reboot-active.json'));
    const { watcher, reports } = watch({ maintenanceLeadMs: 3 * hour });
    watcher.start();
    await waitFor('the notices', () => reports.length === 1);
    await polls(2);
    assert.equal(reports.length, 1);
    assert.deepEqual(
      reports[0]!.map((n) => [n.key, n.deadline?.toISOString()]),
      [
        ['asg-termination', undefined],
        ['scheduled-maintenance:instance-event-0d59937288b749b32', '2026-11-27T11:59:50.000Z'],
        ['spot-interruption', '2026-11-27T10:01:50.000Z'],
      ],
    );
  });

  it('a notice seen too late for the margin still gets a real drain, never a deadline of now', async () => {
    // 5 s before its time, with a 10 s margin: the margin is gone, the drain still gets a short grace.
    fake.set(SPOT, JSON.stringify({ action: 'terminate', time: '2026-11-27T10:00:05Z' }));
    const { watcher } = watch();
    const [late] = await watcher.check();
    assert.equal(late?.deadline?.getTime(), start + 10_000);
    clock += 3_000;
    const [again] = await watcher.check();
    assert.equal(again?.deadline?.getTime(), start + 10_000, 'the grace counts from when the notice was seen');
  });

  it('a notice whose time has passed still gets a short drain', async () => {
    fake.set(SPOT, JSON.stringify({ action: 'terminate', time: new Date(start - 60_000).toISOString() }));
    const [notice] = await watch().watcher.check();
    assert.equal(notice?.deadline?.getTime(), start + 10_000);
  });

  it('notices that end the instance stay active after IMDS stops showing them', async () => {
    const { watcher, reports, keys } = watch({ drainOnRebalance: true });
    fake.set(SPOT, fixture('spot-instance-action.json'));
    fake.setLifecycleState('Warmed:Terminated');
    fake.set(REBALANCE, fixture('rebalance-recommendation.json'));
    watcher.start();
    await waitFor('the notices', () => reports.length === 1);
    assert.deepEqual(keys(), ['asg-termination', 'rebalance-recommendation', 'spot-interruption']);
    assert.ok(reports[0]!.every((n) => n.sticky));

    fake.set(SPOT, undefined);
    fake.setLifecycleState('InService');
    fake.set(REBALANCE, undefined);
    await polls(3);
    assert.equal(reports.length, 1, 'nothing passed');
    assert.deepEqual((await watcher.check()).map((n) => n.key), ['asg-termination', 'rebalance-recommendation', 'spot-interruption']);
  });

  it('a failed read of one item keeps its notices: an IMDS error is not a notice passing', async () => {
    fake.set(MAINTENANCE, fixture('maintenance-system-reboot-active.json'));
    const { watcher, reports, keys } = watch({ maintenanceLeadMs: 3 * hour });
    watcher.start();
    await waitFor('the maintenance notice', () => reports.length === 1);

    fake.fail(MAINTENANCE, 'error500');
    fake.set(MAINTENANCE, undefined);
    await polls(3);
    assert.equal(reports.length, 1, 'still active while the item cannot be read');
    assert.deepEqual((await watcher.check()).map((n) => n.key), ['scheduled-maintenance:instance-event-0d59937288b749b32']);

    fake.fail(MAINTENANCE, 'none');
    await waitFor('the event gone', () => reports.length === 2);
    assert.deepEqual(keys(), []);
  });

  for (const [how, body] of [
    ['canceled', fixture('maintenance-system-reboot-canceled.json')],
    ['completed', fixture('maintenance-system-reboot-completed.json')],
    ['removed from the list', '[]'],
    ['gone with the item', undefined],
  ] as const) {
    it(`a scheduled maintenance ${how} passes`, async () => {
      fake.set(MAINTENANCE, fixture('maintenance-system-reboot-active.json'));
      const { watcher, reports, keys } = watch({ maintenanceLeadMs: 3 * hour });
      watcher.start();
      await waitFor('the maintenance notice', () => reports.length === 1);
      assert.deepEqual(keys(), ['scheduled-maintenance:instance-event-0d59937288b749b32']);
      assert.equal(reports[0]![0]!.sticky, false);

      fake.set(MAINTENANCE, body);
      await waitFor('the notice passing', () => reports.length === 2);
      assert.deepEqual(keys(), []);
    });
  }

  it('acts on scheduled maintenance from the lead time on', async () => {
    fake.set(MAINTENANCE, fixture('maintenance-system-reboot-active.json'));
    const notBefore = Date.parse('2026-11-27T12:00:00Z');
    const { watcher } = watch();
    assert.deepEqual(await watcher.check(), [], 'two hours ahead, with a one hour lead');

    clock = notBefore - hour;
    const notices = await watcher.check();
    assert.deepEqual(notices.map((n) => n.key), ['scheduled-maintenance:instance-event-0d59937288b749b32']);
    assert.equal(notices[0]?.deadline?.getTime(), notBefore - margin);
    assert.equal(notices[0]?.detail.Code, 'system-reboot');
  });

  it('network maintenance (system-maintenance) is active for its window, then passes while still listed', async () => {
    fake.set(MAINTENANCE, fixture('maintenance-system-maintenance.json'));
    const notBefore = Date.parse('2026-12-01T02:00:00Z');
    const notAfter = Date.parse('2026-12-01T04:00:00Z');
    clock = notBefore - hour - 1_000;
    const { watcher, reports, keys } = watch();
    watcher.start();
    await polls(2);
    assert.equal(reports.length, 0, 'before the lead time');

    clock = notBefore - hour;
    await waitFor('the window opening', () => reports.length === 1);
    assert.deepEqual(keys(), ['scheduled-maintenance:instance-event-1234567890abcdef0']);
    assert.equal(reports[0]![0]!.deadline?.getTime(), notBefore - margin);

    clock = notAfter - 1;
    await polls(2);
    assert.equal(reports.length, 1, 'still inside the window');
    clock = notAfter;
    await waitFor('the window closing', () => reports.length === 2);
    assert.deepEqual(keys(), []);
  });

  it('a warm pool: out when the instance is about to stop or hibernate, back when it is InService', async () => {
    fake.setLifecycleState('InService');
    const { watcher, reports, keys } = watch();
    watcher.start();
    await polls(2);
    assert.equal(reports.length, 0);

    fake.setLifecycleState('Warmed:Stopped');
    await waitFor('the warm-pool notice', () => reports.length === 1);
    assert.deepEqual(reports[0], [{ kind: 'asg-warm-pool', key: 'asg-warm-pool', deadline: undefined, sticky: false, detail: { state: 'Warmed:Stopped' } }]);

    fake.setLifecycleState('InService');
    await waitFor('the notice passing', () => reports.length === 2);
    assert.deepEqual(keys(), []);

    fake.setLifecycleState('Warmed:Hibernated');
    await waitFor('the next warm-pool notice', () => reports.length === 3);
    assert.deepEqual(keys(), ['asg-warm-pool']);

    fake.setLifecycleState('Warmed:Running');
    await waitFor('a running warm instance, no notice', () => reports.length === 4);
    assert.deepEqual(keys(), []);
  });

  it('ASG lifecycle states that keep the instance serving are no notice', async () => {
    const { watcher } = watch();
    for (const state of ['InService', 'Pending', 'Warmed:Running', 'Warmed:Pending:Wait', 'Standby', 'Detached'] as const) {
      fake.set(ASG, state);
      assert.deepEqual(await watcher.check(), [], state);
    }
  });

  it('reports rebalance recommendations only when asked to', async () => {
    fake.set(REBALANCE, fixture('rebalance-recommendation.json'));
    assert.deepEqual(await watch().watcher.check(), []);
    const notices = await watch({ drainOnRebalance: true }).watcher.check();
    assert.deepEqual(notices.map((n) => [n.kind, n.key, n.detail.noticeTime]), [['rebalance-recommendation', 'rebalance-recommendation', '2026-11-27T09:58:00Z']]);
  });

  it('skips malformed items and still reads the others', async () => {
    fake.set(SPOT, '{"action": "terminate", "time":');
    fake.set(MAINTENANCE, JSON.stringify([{ Description: 'no code' }, 42]));
    fake.set(REBALANCE, 'null');
    fake.set(ASG, 'Terminated');
    const { watcher, reports, errors } = watch({ drainOnRebalance: true });
    assert.deepEqual((await watcher.check()).map((n) => n.kind), ['asg-termination']);

    watcher.start();
    await waitFor('the ASG notice', () => reports.length === 1);
    await polls(2);
    assert.deepEqual(errors, []);
    assert.deepEqual(watcher.health(), { ok: true });
  });

  it('health: not ok before the first poll and while polls fail, with the cause; ok again after', async () => {
    const { watcher, errors } = watch();
    assert.equal(watcher.health().ok, false);
    watcher.start();
    await polls(1);
    await waitFor('a finished poll', () => watcher.health().ok);

    fake.fail(MAINTENANCE, 'error500');
    await waitFor('a failed poll', () => errors.length >= 1);
    const health = watcher.health();
    assert.equal(health.ok, false);
    assert.match(!health.ok ? health.reason : '', /IMDS notices cannot be read.*events\/maintenance\/scheduled.*IMDS answered 500/);

    fake.fail(MAINTENANCE, 'none');
    await waitFor('recovery', () => watcher.health().ok);
  });

  it('logs a failing poll once per cause, and the recovery once', async () => {
    const { logger, lines } = capturedLogger();
    const { watcher, errors } = watch({ logger });
    const warned = () => lines.filter((l) => l.level === 'warn' && /IMDS poll failed/.test(l.msg)).length;
    fake.fault = 'error500';
    watcher.start();
    await waitFor('several failed polls', () => errors.length >= 4);
    assert.equal(warned(), 1, 'one warning for many polls failing the same way');

    fake.fault = 'hang';
    const failed = errors.length;
    await waitFor('polls failing another way', () => errors.length >= failed + 3);
    assert.equal(warned(), 2, 'a new cause is a new warning');

    fake.fault = 'none';
    await waitFor('recovery', () => watcher.health().ok);
    await polls(2);
    assert.equal(lines.filter((l) => /IMDS poll recovered/.test(l.msg)).length, 1);
  });

  it('keeps polling through 500s, hangs and revoked tokens, and catches the next notice', async () => {
    const { watcher, reports, errors } = watch();
    fake.fault = 'error500';
    watcher.start();
    await waitFor('a poll error', () => errors.length >= 2);
    assert.ok(errors.every((e) => e instanceof ImdsUnavailableError));
    assert.ok(watcher.lastTickAt() !== undefined, 'a failed poll is still a tick');
    assert.equal(watcher.lastSuccessAt(), undefined);

    fake.fault = 'hang';
    const before = errors.length;
    await waitFor('a timed-out poll', () => errors.length >= before + 2);

    fake.fault = 'none';
    fake.revokeTokens();
    fake.set(SPOT, fixture('spot-instance-action.json'));
    await waitFor('the spot notice', () => reports.length === 1);
    await waitFor('a successful poll', () => watcher.lastSuccessAt() !== undefined);
  });

  it('keeps polling when the notices handler throws', async () => {
    let calls = 0;
    const { watcher } = watch({
      onNotices: () => {
        calls++;
        throw new Error('handler bug');
      },
    });
    fake.set(ASG, 'Terminated');
    watcher.start();
    await waitFor('the notice', () => calls === 1);
    fake.set(SPOT, fixture('spot-instance-action.json'));
    await waitFor('the next notice', () => calls === 2);
  });

  it('check() throws when IMDS cannot be read and no notice is active', async () => {
    fake.fault = 'error500';
    await rejectsUnavailable(watch().watcher.check());
  });

  it('stops polling on stop(), after the poll in progress', async () => {
    const { watcher, errors } = watch();
    watcher.start();
    await polls(2);
    fake.fault = 'hang';
    await delay(30); // a poll is now waiting on the hanging IMDS
    await watcher.stop();
    assert.ok(errors.length >= 1, 'stop() waited for the hanging poll to end');

    fake.fault = 'none';
    const requests = fake.requests;
    await delay(100);
    assert.equal(fake.requests, requests, 'no polls after stop()');
  });
});
