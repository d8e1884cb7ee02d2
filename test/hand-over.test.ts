/**
 * A dying node's drain handed to the coordinator, against a fake coordinator (a real HTTP server
 * answering as the agent's API does): served, and every case in which the agent must drain alone
 * instead. Timings are shortened; the rules are the same.
 */
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { handOverTo, stillKeptOutBy, type HandOverOptions, type HandOverTiming } from '../agent/coordinator/hand-over.ts';
import type { DrainOptions } from '../agent/drain/drain.ts';
import { DrainCanceled } from '../agent/drain/drainer.ts';
import { ALL } from '../agent/drain/family.ts';
import type { Instance } from '../agent/drain/instance.ts';
import type { DrainStatus, LoadBalancerStatus } from '../agent/drain/status.ts';
import { silentLogger } from '../agent/log.ts';

const SECRET = 'hand-over-Secret-0123456789';
const INSTANCE: Instance = { id: 'i-0123456789abcdef0', vpcId: 'vpc-0123456789abcdef0', privateIps: ['10.0.1.23'], ipv4Prefixes: [], ipv6Addresses: [], ipv6Prefixes: [], tags: {} };
const TIMING: HandOverTiming = { answerMs: 300, slowAnswerMs: 600, pollMs: 50, failedPolls: 2, progressWaitMs: 600, successorWaitMs: 1_000 };
const TG = 'arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef';

/** An answer, optionally `afterMs` late; or none ('hang'); or the connection reset. */
type Answer = { status: number; body: unknown; afterMs?: number } | 'hang' | 'reset';

/** A coordinator whose answers the test scripts: `post` for the hand-over, `get` for each status read. */
class FakeCoordinator {
  readonly requests: { method: string; url: string; authorization?: string; peer?: string; body: string }[] = [];
  post: () => Answer = () => ({ status: 202, body: remote('draining', []) });
  get: () => Answer = () => ({ status: 200, body: remote('deregistered', [lb('out')]) });
  /** The follower's node given back: the coordinator ends its drain and answers the final status. */
  del: () => Answer = () => ({ status: 200, body: remote('failed', [lb('draining')], 'interrupted: canceled by peer hlv-follower') });
  private readonly server: Server = createServer((req, res) => void this.answer(req, res));

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  close(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private async answer(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let body = '';
    for await (const chunk of req) body += String(chunk);
    this.requests.push({ method: req.method!, url: req.url!, authorization: req.headers.authorization, peer: req.headers['hasta-la-vista-peer'] as string | undefined, body });
    const answer = req.method === 'POST' ? this.post() : req.method === 'DELETE' ? this.del() : this.get();
    if (answer === 'hang') return;
    if (answer === 'reset') return void req.socket.resetAndDestroy();
    if (answer.afterMs) await sleep(answer.afterMs);
    res.writeHead(answer.status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(answer.body));
  }
}

function lb(state: LoadBalancerStatus['state'], deregistered = true): LoadBalancerStatus {
  return { family: 'target-group', arn: TG, targets: [{ id: INSTANCE.id, port: 30080 }], state, ...(deregistered ? { deregisteredAt: new Date().toISOString() } : {}) };
}

function remote(state: DrainStatus['state'], loadBalancers: LoadBalancerStatus[], reason?: string): DrainStatus {
  return {
    instanceId: INSTANCE.id,
    trigger: 'api',
    scope: 'all',
    state,
    ...(reason ? { reason } : {}),
    dryRun: false,
    startedAt: new Date().toISOString(),
    deadline: new Date(Date.now() + 60_000).toISOString(),
    triggers: ['api'],
    finishedAt: state === 'draining' ? null : new Date().toISOString(),
    awsCalls: { DeregisterTargets: 1 },
    loadBalancers,
  };
}

function ownStatus(deadline: Date): DrainStatus {
  return { ...remote('draining', []), trigger: 'spot-interruption', triggers: ['spot-interruption'], deadline: deadline.toISOString(), awsCalls: {}, finishedAt: null };
}

let coordinator: FakeCoordinator;
afterEach(() => coordinator?.close());

/** Runs one hand-over to the fake; `alone` records whether (and why) the agent drained by itself. */
async function handOver({
  deadlineMs = 5_000,
  stillCoordinating = (): boolean => true,
  renewing = (): boolean => false,
  signal = new AbortController().signal,
  successor,
}: { deadlineMs?: number; stillCoordinating?: () => boolean; renewing?: () => boolean; signal?: AbortSignal; successor?: HandOverOptions['successor'] } = {}) {
  coordinator ??= new FakeCoordinator();
  const endpoint = await coordinator.listen();
  const deadline = new Date(Date.now() + deadlineMs);
  const status = ownStatus(deadline);
  let alone = false;
  let startedFrom: DrainOptions['startFrom'];
  const run = handOverTo({
    coordinator: { identity: 'hlv-coordinator', endpoint },
    secret: SECRET,
    peer: 'hlv-follower',
    stillCoordinating,
    renewing,
    successor,
    alone: async (_instance, aloneOptions, drained) => {
      alone = true;
      startedFrom = aloneOptions.startFrom;
      drained.loadBalancers.push(lb('out'));
      drained.state = 'deregistered';
      drained.finishedAt = new Date().toISOString();
    },
    logger: silentLogger(),
    timing: TIMING,
  });
  const options: DrainOptions = { trigger: 'spot-interruption', scope: ALL, deadline, dryRun: false };
  const started = Date.now();
  await run(INSTANCE, options, status, signal);
  return { status, alone, startedFrom, ms: Date.now() - started };
}

describe('handing a drain to the coordinator', () => {
  it('asks the coordinator with the secret and its name, follows its status, and reports it served', async () => {
    coordinator = new FakeCoordinator();
    let reads = 0;
    coordinator.get = () => ({ status: 200, body: ++reads < 3 ? remote('draining', [lb('draining')]) : remote('deregistered', [lb('out')]) });
    const { status, alone } = await handOver();
    assert.equal(alone, false);
    assert.equal(status.state, 'deregistered');
    assert.deepEqual(status.handOver, { coordinator: 'hlv-coordinator', outcome: 'served' });
    assert.deepEqual(status.loadBalancers.map((entry) => entry.state), ['out']);
    // Its own trigger and deadline, not the coordinator's.
    assert.equal(status.trigger, 'spot-interruption');
    assert.notEqual(status.finishedAt, null);
    const [post, ...gets] = coordinator.requests;
    assert.equal(post!.method, 'POST');
    assert.match(post!.url, new RegExp(`^/drain\\?id=${INSTANCE.id}&timeout=[45]$`));
    assert.equal(post!.authorization, `Bearer ${SECRET}`);
    assert.equal(post!.peer, 'hlv-follower');
    // Its instance as its IMDS describes it, so the coordinator asks EC2 nothing.
    assert.deepEqual(JSON.parse(post!.body), { instance: { vpcId: INSTANCE.vpcId, privateIps: ['10.0.1.23'], ipv4Prefixes: [], ipv6Addresses: [], ipv6Prefixes: [] } });
    assert.ok(gets.length >= 3 && gets.every((get) => get.method === 'GET' && get.url === `/drain/${INSTANCE.id}`));
    assert.ok(!JSON.stringify(coordinator.requests.map((r) => r.url)).includes(SECRET), 'the secret is never in a URL');
  });

  const fallbacks: { name: string; set: (fake: FakeCoordinator) => void; stillCoordinating?: () => boolean; reason: RegExp }[] = [
    {
      name: 'the hand-over is not answered within the answer time, nor when asked once more while the Lease names the coordinator',
      set: (fake) => (fake.post = () => 'hang'),
      reason: /not accepted within 300 ms: .*asked once more, no answer within 600 ms either/,
    },
    { name: 'the coordinator refuses it (503 while it starts)', set: (fake) => (fake.post = () => ({ status: 503, body: { error: 'starting' } })), reason: /answered 503: starting/ },
    { name: 'the coordinator stops answering (two status reads in a row)', set: (fake) => (fake.get = () => 'reset'), reason: /stopped answering/ },
    {
      name: 'the coordinator\'s drain ends without the node out, with time left',
      set: (fake) => (fake.get = () => ({ status: 200, body: remote('failed', [lb('failed')], 'AccessDenied') })),
      reason: /ended failed \(AccessDenied\)/,
    },
    { name: 'the coordinator deregisters nothing in time', set: (fake) => (fake.get = () => ({ status: 200, body: remote('draining', []) })), reason: /deregistered nothing within/ },
    {
      name: 'the coordinator steps down before deregistering',
      set: (fake) => (fake.get = () => ({ status: 200, body: remote('draining', []) })),
      stillCoordinating: () => false,
      reason: /stepped down before deregistering/,
    },
  ];
  for (const { name, set, stillCoordinating, reason } of fallbacks) {
    it(`drains alone at once when ${name}`, async () => {
      coordinator = new FakeCoordinator();
      set(coordinator);
      const { status, alone, ms } = await handOver({ stillCoordinating });
      assert.equal(alone, true);
      assert.equal(status.handOver?.outcome, 'drained-alone');
      assert.match(status.handOver?.reason ?? '', reason);
      assert.equal(status.state, 'deregistered');
      // What the coordinator had reported is replaced by what the agent found itself.
      assert.deepEqual(status.loadBalancers.map((entry) => entry.state), ['out']);
      assert.ok(ms < 2_000, `fell back after ${ms} ms, well before the 5 s deadline`);
    });
  }

  it('a hand-over answered late is asked once more while the Lease still names the coordinator, and served', async () => {
    coordinator = new FakeCoordinator();
    let posts = 0;
    coordinator.post = () => (++posts === 1 ? 'hang' : { status: 202, body: remote('draining', []) });
    const { status, alone } = await handOver();
    assert.equal(alone, false, 'no drain of its own: a busy coordinator still serves');
    assert.equal(status.state, 'deregistered');
    assert.deepEqual(status.handOver, { coordinator: 'hlv-coordinator', outcome: 'served' });
    assert.equal(coordinator.requests.filter((r) => r.method === 'POST').length, 2);
  });

  it('a status read that times out while the coordinator renews the Lease is read again, given longer to answer, and the drain is served', async () => {
    coordinator = new FakeCoordinator();
    coordinator.post = () => ({ status: 202, body: remote('draining', [lb('draining')]) });
    let reads = 0;
    // No answer, then one later than the answer time (300 ms) but within the longer one (600 ms).
    coordinator.get = () => (++reads === 1 ? 'hang' : { status: 200, body: remote('deregistered', [lb('out')]), afterMs: 450 });
    let successorAsked = false;
    const successor: HandOverOptions['successor'] = async () => {
      successorAsked = true;
      return undefined;
    };
    const { status, alone } = await handOver({ renewing: () => true, successor });
    assert.equal(alone, false, 'no drain of its own: the coordinator was busy, not gone');
    assert.equal(successorAsked, false, 'no successor waited for while it renews the Lease');
    assert.equal(status.state, 'deregistered');
    assert.deepEqual(status.handOver, { coordinator: 'hlv-coordinator', outcome: 'served' });
  });

  it('status reads that time out once the Lease has expired count: after two the coordinator is gone', async () => {
    coordinator = new FakeCoordinator();
    coordinator.post = () => ({ status: 202, body: remote('draining', [lb('draining')]) });
    coordinator.get = () => 'hang';
    const { status, alone } = await handOver({ renewing: () => false });
    assert.equal(alone, true);
    assert.match(status.handOver?.reason ?? '', /stopped answering/);
    assert.equal(coordinator.requests.filter((r) => r.method === 'GET').length, TIMING.failedPolls);
  });

  it('a coordinator that renews the Lease but stays silent is waited for no longer than a successor would be', async () => {
    coordinator = new FakeCoordinator();
    coordinator.post = () => ({ status: 202, body: remote('draining', [lb('draining')]) });
    coordinator.get = () => 'hang';
    const { status, alone } = await handOver({ renewing: () => true });
    assert.equal(alone, true, 'drained alone in the end');
    assert.match(status.handOver?.reason ?? '', /stopped answering/);
    assert.equal(status.state, 'deregistered');
    const reads = coordinator.requests.filter((r) => r.method === 'GET').length;
    assert.ok(reads > TIMING.failedPolls, `read ${reads} times: timeouts did not count while it renewed the Lease, within the successor's wait`);
  });

  it('a hand-over not answered while the Lease names another holder is not asked again: the agent drains alone', async () => {
    coordinator = new FakeCoordinator();
    coordinator.post = () => 'hang';
    const { status, alone } = await handOver({ stillCoordinating: () => false });
    assert.equal(alone, true);
    assert.match(status.handOver?.reason ?? '', /not accepted within 300 ms/);
    assert.doesNotMatch(status.handOver?.reason ?? '', /asked once more/);
    assert.equal(coordinator.requests.filter((r) => r.method === 'POST').length, 1);
  });

  it('canceled (the node given back) while the coordinator drains: the coordinator is told to stop, and its final status is what was taken out', async () => {
    coordinator = new FakeCoordinator();
    coordinator.get = () => ({ status: 200, body: remote('draining', [lb('draining')]) });
    const canceled = new AbortController();
    setTimeout(() => canceled.abort(new DrainCanceled('the node was given back (the maintenance event was canceled)')), 200);
    const { status, alone } = await handOver({ signal: canceled.signal });
    assert.equal(alone, false, 'given back: nothing to drain alone');
    assert.deepEqual(coordinator.requests.filter((request) => request.method === 'DELETE').map((request) => request.url), [`/drain/${INSTANCE.id}`]);
    assert.equal(status.state, 'failed');
    assert.match(status.reason ?? '', /interrupted: the node was given back .*; the coordinator stopped its drain/);
    assert.ok(status.loadBalancers[0]?.deregisteredAt, 'what the coordinator deregistered, for the give-back to register again');
  });

  it('draining alone starts from what the coordinator had reported: no discovery to wait for first', async () => {
    coordinator = new FakeCoordinator();
    coordinator.post = () => ({ status: 202, body: remote('draining', [lb('draining')]) });
    coordinator.get = () => ({ status: 200, body: remote('failed', [lb('failed')], 'AccessDenied on one load balancer') });
    const { alone, startedFrom, status } = await handOver();
    assert.equal(alone, true);
    assert.deepEqual(startedFrom?.map((entry) => [entry.family, entry.arn]), [['target-group', TG]]);
    assert.deepEqual(status.loadBalancers.map((entry) => entry.state), ['out'], 'the status is what this agent did');
  });

  describe('when the coordinator is gone', () => {
    let next: FakeCoordinator | undefined;
    afterEach(() => next?.close());

    /** The successor the agent's election would name: `next`, `afterMs` after it is asked. */
    const electedAfter = (afterMs: number, asked: { after?: string; waitMs?: number }): HandOverOptions['successor'] => async (after, waitMs) => {
      asked.after = after.identity;
      asked.waitMs = waitMs;
      next = new FakeCoordinator();
      const endpoint = await next.listen();
      await sleep(afterMs);
      return { identity: 'hlv-next', endpoint };
    };

    it('hands the drain to the next coordinator once one is elected, which serves it', async () => {
      coordinator = new FakeCoordinator();
      coordinator.get = () => 'reset';
      const asked: { after?: string; waitMs?: number } = {};
      const { status, alone } = await handOver({ successor: electedAfter(100, asked) });
      assert.equal(alone, false, 'no drain of its own');
      assert.equal(asked.after, 'hlv-coordinator');
      assert.ok(asked.waitMs! <= TIMING.successorWaitMs, `waits at most ${TIMING.successorWaitMs} ms`);
      assert.equal(status.state, 'deregistered');
      assert.equal(status.handOver?.coordinator, 'hlv-next');
      assert.equal(status.handOver?.outcome, 'served');
      assert.equal(status.handOver?.previous?.length, 1);
      assert.equal(status.handOver?.previous?.[0]?.coordinator, 'hlv-coordinator');
      assert.match(status.handOver?.previous?.[0]?.reason ?? '', /stopped answering/);
      assert.equal(next!.requests.filter((r) => r.method === 'POST').length, 1, 'the drain was handed to the next coordinator');
    });

    it('a refused connection at the hand-over is "gone" too', async () => {
      coordinator = new FakeCoordinator();
      const endpoint = await coordinator.listen();
      await coordinator.close();
      const deadline = new Date(Date.now() + 5_000);
      const status = ownStatus(deadline);
      const asked: { after?: string } = {};
      await handOverTo({
        coordinator: { identity: 'hlv-coordinator', endpoint },
        secret: SECRET,
        peer: 'hlv-follower',
        stillCoordinating: () => true,
        renewing: () => false,
        successor: electedAfter(50, asked),
        alone: async () => assert.fail('drained alone'),
        logger: silentLogger(),
        timing: TIMING,
      })(INSTANCE, { trigger: 'spot-interruption', scope: ALL, deadline, dryRun: false }, status, new AbortController().signal);
      assert.equal(status.handOver?.outcome, 'served');
      assert.match(status.handOver?.previous?.[0]?.reason ?? '', /not accepted .*ECONNREFUSED/);
    });

    it('drains alone when no other coordinator is elected in time, and says it waited', async () => {
      coordinator = new FakeCoordinator();
      coordinator.get = () => 'reset';
      const { status, alone } = await handOver({ successor: async () => undefined });
      assert.equal(alone, true);
      assert.equal(status.handOver?.outcome, 'drained-alone');
      assert.match(status.handOver?.reason ?? '', /stopped answering.*; no other coordinator within \d+ s/);
    });

    it('a coordinator that is there but slow is not waited for: it drains alone at once', async () => {
      coordinator = new FakeCoordinator();
      coordinator.post = () => 'hang';
      let asked = false;
      const { status, alone } = await handOver({
        successor: async () => {
          asked = true;
          return undefined;
        },
      });
      assert.equal(alone, true);
      assert.equal(asked, false, 'no successor looked for');
      assert.match(status.handOver?.reason ?? '', /not accepted within 300 ms/);
    });
  });

  describe('whether the coordinator still keeps a served node out', () => {
    const asker = { secret: SECRET, peer: 'hlv-follower', answerMs: 300 };
    it('yes while it knows the drain as deregistered; no once it has forgotten it (restarted: 404) or cannot be reached', async () => {
      coordinator = new FakeCoordinator();
      const endpoint = await coordinator.listen();
      const served = { identity: 'hlv-coordinator', endpoint };
      assert.equal(await stillKeptOutBy(served, INSTANCE.id, asker), true);
      assert.equal(coordinator.requests.at(-1)?.url, `/drain/${INSTANCE.id}`);
      assert.equal(coordinator.requests.at(-1)?.authorization, `Bearer ${SECRET}`);
      coordinator.get = () => ({ status: 404, body: { error: `no drain of ${INSTANCE.id}` } });
      assert.equal(await stillKeptOutBy(served, INSTANCE.id, asker), false);
      coordinator.get = () => 'hang';
      assert.equal(await stillKeptOutBy(served, INSTANCE.id, asker), false);
      await coordinator.close();
      assert.equal(await stillKeptOutBy(served, INSTANCE.id, asker), false);
    });
  });

  it('keeps following a coordinator that has deregistered, even once it stepped down', async () => {
    coordinator = new FakeCoordinator();
    coordinator.post = () => ({ status: 202, body: remote('draining', [lb('draining')]) });
    let reads = 0;
    coordinator.get = () => ({ status: 200, body: ++reads < 4 ? remote('draining', [lb('draining')]) : remote('deregistered', [lb('out')]) });
    const { status, alone } = await handOver({ stillCoordinating: () => false });
    assert.equal(alone, false);
    assert.equal(status.handOver?.outcome, 'served');
  });

  it('reports timed_out at its deadline while the coordinator still drains, without a second drain', async () => {
    coordinator = new FakeCoordinator();
    coordinator.get = () => ({ status: 200, body: remote('draining', [lb('draining')]) });
    const deadline = new AbortController();
    setTimeout(() => deadline.abort(new DOMException('the drain deadline passed', 'TimeoutError')), 400);
    const { status, alone } = await handOver({ signal: deadline.signal });
    assert.equal(alone, false);
    assert.equal(status.state, 'timed_out');
    assert.match(status.reason ?? '', /deadline passed while the coordinator drained, with 1 load balancer\(s\) not yet out/);
  });

  it('a drain given back while the coordinator drains stops following it and says so', async () => {
    coordinator = new FakeCoordinator();
    coordinator.get = () => ({ status: 200, body: remote('draining', [lb('draining')]) });
    const canceled = new AbortController();
    setTimeout(() => canceled.abort(new DOMException('the node was given back (maintenance canceled)', 'AbortError')), 200);
    const { status, alone } = await handOver({ signal: canceled.signal });
    assert.equal(alone, false);
    assert.equal(status.state, 'failed');
    assert.match(status.reason ?? '', /^interrupted: the node was given back \(maintenance canceled\) while the coordinator drained/);
  });
});
