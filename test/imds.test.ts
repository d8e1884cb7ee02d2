import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { createImdsClient, ImdsUnavailableError, instanceIdentity, type ImdsClient, type ImdsClientOptions } from '../agent/imds/client.ts';
import { NoticesWatcher, type Notice, type NoticesWatcherOptions } from '../agent/imds/notices.ts';
import { silentLogger } from '../agent/log.ts';
import { startFakeImds, type FakeImds } from './fakes/imds.ts';

const SPOT = 'meta-data/spot/instance-action';
const ASG = 'meta-data/autoscaling/target-lifecycle-state';
const MAINTENANCE = 'meta-data/events/maintenance/scheduled';
const REBALANCE = 'meta-data/events/recommendations/rebalance';

// Short timeouts keep the failure tests quick; the defaults are for real instances.
function client(fake: FakeImds, opts: Partial<ImdsClientOptions> = {}): ImdsClient {
  return createImdsClient({ endpoint: fake.url, v1Fallback: false, timeoutMs: 150, retries: 1, logger: silentLogger(), ...opts });
}

async function rejectsUnavailable(promise: Promise<unknown>, message?: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof ImdsUnavailableError, `expected ImdsUnavailableError, got ${String(err)}`);
    if (message) assert.match(err.message, message);
    return true;
  });
}

async function waitFor(what: string, predicate: () => boolean, timeoutMs = 3000): Promise<void> {
  const giveUpAt = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > giveUpAt) assert.fail(`timed out waiting for ${what}`);
    await delay(10);
  }
}

/** IMDS's maintenance date format: `21 Jan 2019 09:00:43 GMT`. */
function imdsDate(ms: number): string {
  const [, day, month, year, time] = new Date(ms).toUTCString().split(' ');
  return `${day} ${month} ${year} ${time} GMT`;
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
    const ids = await Promise.all(Array.from({ length: 5 }, () => imds.get('latest/meta-data/instance-id')));
    assert.deepEqual(new Set(ids), new Set(['i-0123456789abcdef0']));
    assert.equal(await imds.get('/latest/meta-data/placement/region'), 'eu-west-1');
    assert.equal(fake.tokenRequests, 1);
  });

  it('answers undefined for a missing item, not its HTML page', async () => {
    assert.equal(await imds.get(SPOT), undefined);
    fake.set(SPOT, '{"action":"terminate","time":"2026-11-27T10:02:00Z"}');
    assert.equal(await imds.get(`latest/${SPOT}`), '{"action":"terminate","time":"2026-11-27T10:02:00Z"}');
    fake.set(SPOT, undefined);
    assert.equal(await imds.get(`latest/${SPOT}`), undefined);
  });

  it('gets a fresh token once when IMDS answers 401', async () => {
    await imds.get('latest/meta-data/instance-id');
    fake.revokeTokens();
    assert.equal(await imds.get('latest/meta-data/instance-id'), 'i-0123456789abcdef0');
    assert.equal(fake.tokenRequests, 2);
  });

  it('recovers when the token expired at IMDS before the client expected', async () => {
    let imdsClock = Date.now();
    await fake.close();
    fake = await startFakeImds({ now: () => imdsClock });
    await reopen({ tokenTtlSeconds: 60 });
    await imds.get('latest/meta-data/instance-id');
    imdsClock += 61_000;
    assert.equal(await imds.get('latest/meta-data/instance-id'), 'i-0123456789abcdef0');
    assert.equal(fake.tokenRequests, 2);
  });

  it('renews the token before it expires', async () => {
    let clock = Date.now();
    await reopen({ tokenTtlSeconds: 100, now: () => clock });
    await imds.get('latest/meta-data/instance-id');
    clock += 50_000;
    await imds.get('latest/meta-data/instance-id');
    assert.equal(fake.tokenRequests, 1);
    clock += 31_000; // past 80% of the TTL
    await imds.get('latest/meta-data/instance-id');
    assert.equal(fake.tokenRequests, 2);
  });

  it('throws ImdsUnavailableError on 500, after retrying', async () => {
    fake.fault = 'error500';
    await rejectsUnavailable(imds.get('latest/meta-data/instance-id'), /instance-id.*500/);
    assert.equal(fake.count('meta-data/instance-id'), 0, 'the token PUT failed first');
    assert.equal(fake.tokenRequests, 2, 'one attempt and one retry');
    fake.fault = 'none';
    assert.equal(await imds.get('latest/meta-data/instance-id'), 'i-0123456789abcdef0');
  });

  it('gives up on a hanging IMDS instead of hanging too', async () => {
    await imds.get('latest/meta-data/instance-id');
    fake.fault = 'hang';
    await rejectsUnavailable(imds.get('latest/meta-data/instance-id'), /no answer within 150ms/);
    fake.fault = 'none';
    assert.equal(await imds.get('latest/meta-data/instance-id'), 'i-0123456789abcdef0');
  });

  it('throws ImdsUnavailableError when nothing listens', async () => {
    await fake.close();
    await rejectsUnavailable(imds.get('latest/meta-data/instance-id'));
  });

  it('does not fall back to IMDSv1 unless allowed, and explains the hop limit', async () => {
    fake.hopLimitHang = true;
    fake.v1Disabled = false;
    await rejectsUnavailable(imds.get('latest/meta-data/instance-id'), /hop limit to 2.*hostNetwork/);
    assert.equal(fake.count('meta-data/instance-id'), 0);
  });

  it('falls back to IMDSv1 when allowed and the token request hangs, once', async () => {
    fake.hopLimitHang = true;
    fake.v1Disabled = false;
    await reopen({ v1Fallback: true });
    assert.equal(await imds.get('latest/meta-data/instance-id'), 'i-0123456789abcdef0');
    const tokenRequests = fake.tokenRequests;
    assert.equal(await imds.get('latest/meta-data/placement/region'), 'eu-west-1');
    assert.equal(fake.tokenRequests, tokenRequests, 'no new token request once on v1');
  });

  it('goes back to tokens when IMDS starts requiring them', async () => {
    fake.hopLimitHang = true;
    fake.v1Disabled = false;
    await reopen({ v1Fallback: true });
    await imds.get('latest/meta-data/instance-id');
    fake.hopLimitHang = false;
    fake.v1Disabled = true;
    assert.equal(await imds.get('latest/meta-data/instance-id'), 'i-0123456789abcdef0');
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

describe('notices watcher', () => {
  const start = Date.parse('2026-11-27T10:00:00Z');
  const margin = 10_000;
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
    for (const path of [SPOT, ASG, MAINTENANCE, REBALANCE]) fake.set(path, undefined);
    fake.fault = 'none';
  });
  afterEach(async () => {
    await Promise.all(watchers.map((w) => w.stop()));
    await imds.close();
  });

  function watch(opts: Partial<NoticesWatcherOptions> = {}) {
    const notices: Notice[] = [];
    const errors: Error[] = [];
    const watcher = new NoticesWatcher({
      imds,
      pollIntervalMs: 20,
      drainOnRebalance: false,
      maintenanceLeadMs: 3_600_000,
      deadlineMarginMs: margin,
      logger: silentLogger(),
      onNotice: (n) => notices.push(n),
      onPollError: (err) => errors.push(err),
      now: () => clock,
      ...opts,
    });
    watchers.push(watcher);
    return { watcher, notices, errors };
  }

  /** Lets the watcher poll a few more times. */
  async function polls(n: number): Promise<void> {
    const target = fake.count(SPOT) + n;
    await waitFor(`${n} polls`, () => fake.count(SPOT) >= target);
  }

  it('reports a spot interruption once, with the deadline before its time', async () => {
    const { watcher, notices } = watch();
    watcher.start();
    await polls(2);
    assert.equal(notices.length, 0);

    fake.set(SPOT, JSON.stringify({ action: 'terminate', time: '2026-11-27T10:02:00Z' }));
    await waitFor('the spot notice', () => notices.length === 1);
    assert.equal(notices[0]?.kind, 'spot-interruption');
    assert.equal(notices[0]?.deadline?.toISOString(), '2026-11-27T10:01:50.000Z');
    assert.deepEqual(notices[0]?.detail, { action: 'terminate', time: '2026-11-27T10:02:00Z' });

    await polls(3);
    assert.equal(notices.length, 1, 'the same notice is reported once');

    fake.set(SPOT, JSON.stringify({ action: 'stop', time: '2026-11-27T10:05:00Z' }));
    await waitFor('the second spot notice', () => notices.length === 2);
    assert.notEqual(notices[1]?.key, notices[0]?.key);
  });

  it('a notice seen too late for the margin still gets a real drain, never a deadline of now', async () => {
    // 5 s before its time, with a 10 s margin: the margin is gone, the drain still gets a short grace.
    fake.set(SPOT, JSON.stringify({ action: 'terminate', time: '2026-11-27T10:00:05Z' }));
    const [late] = await watch().watcher.check();
    assert.equal(late?.deadline?.getTime(), start + 10_000);
  });

  it('a notice whose time has passed still gets a short drain', async () => {
    fake.set(SPOT, JSON.stringify({ action: 'terminate', time: new Date(start - 60_000).toISOString() }));
    const [notice] = await watch().watcher.check();
    assert.equal(notice?.deadline?.getTime(), start + 10_000);
  });

  it('reports an ASG termination, not other lifecycle states', async () => {
    const { watcher } = watch();
    fake.set(ASG, 'InService');
    assert.deepEqual(await watcher.check(), []);
    fake.set(ASG, 'Terminated');
    const notices = await watcher.check();
    assert.equal(notices.length, 1);
    assert.equal(notices[0]?.kind, 'asg-termination');
    assert.equal(notices[0]?.deadline, undefined);
  });

  it('acts on disruptive scheduled maintenance only, from the lead time on', async () => {
    const notBefore = start + 2 * 3_600_000;
    const event = (EventId: string, Code: string, State: string) => ({
      NotBefore: imdsDate(notBefore),
      Code,
      Description: 'scheduled',
      EventId,
      NotAfter: imdsDate(notBefore + 7_200_000),
      State,
    });
    fake.set(
      MAINTENANCE,
      JSON.stringify([
        event('instance-event-completed', 'system-reboot', 'completed'),
        event('instance-event-canceled', 'instance-stop', 'canceled'),
        event('instance-event-harmless', 'network-maintenance', 'active'),
        event('instance-event-0d59937288b749b32', 'system-reboot', 'active'),
      ]),
    );
    const { watcher } = watch();
    assert.deepEqual(await watcher.check(), [], 'two hours ahead, with a one hour lead');

    clock = notBefore - 3_600_000;
    const notices = await watcher.check();
    assert.deepEqual(
      notices.map((n) => n.key),
      ['scheduled-maintenance:instance-event-0d59937288b749b32'],
    );
    assert.equal(notices[0]?.deadline?.getTime(), notBefore - margin);
    assert.equal(notices[0]?.detail.Code, 'system-reboot');
  });

  it('reports rebalance recommendations only when asked to', async () => {
    fake.set(REBALANCE, JSON.stringify({ noticeTime: '2026-11-27T09:58:00Z' }));
    assert.deepEqual(await watch().watcher.check(), []);
    const notices = await watch({ drainOnRebalance: true }).watcher.check();
    assert.equal(notices[0]?.kind, 'rebalance-recommendation');
    assert.equal(notices[0]?.key, 'rebalance-recommendation:2026-11-27T09:58:00Z');
  });

  it('skips malformed items and still reads the others', async () => {
    fake.set(SPOT, '{"action": "terminate", "time":');
    fake.set(MAINTENANCE, JSON.stringify([{ Description: 'no code' }, 42]));
    fake.set(REBALANCE, 'null');
    fake.set(ASG, 'Terminated');
    const { watcher, notices, errors } = watch({ drainOnRebalance: true });
    assert.deepEqual((await watcher.check()).map((n) => n.kind), ['asg-termination']);

    watcher.start();
    await waitFor('the ASG notice', () => notices.length === 1);
    await polls(2);
    assert.deepEqual(errors, []);
    assert.ok(watcher.lastSuccessAt() !== undefined);
  });

  it('keeps polling through 500s, hangs and revoked tokens, and catches the next notice', async () => {
    const { watcher, notices, errors } = watch();
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
    fake.set(SPOT, JSON.stringify({ action: 'terminate', time: '2026-11-27T10:02:00Z' }));
    await waitFor('the spot notice', () => notices.length === 1);
    await waitFor('a successful poll', () => watcher.lastSuccessAt() !== undefined);
  });

  it('keeps polling when the notice handler throws', async () => {
    let calls = 0;
    const { watcher } = watch({
      onNotice: () => {
        calls++;
        throw new Error('handler bug');
      },
    });
    fake.set(ASG, 'Terminated');
    watcher.start();
    await waitFor('the notice', () => calls === 1);
    fake.set(SPOT, JSON.stringify({ action: 'terminate', time: '2026-11-27T10:02:00Z' }));
    await waitFor('the next notice', () => calls === 2);
  });

  it('check() throws when IMDS cannot be read and nothing was found', async () => {
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
