/**
 * Leader election on a Lease, with several agents sharing an in-memory Lease API that refuses stale
 * resourceVersions as the API server does, on a virtual clock: time only moves when a test moves it,
 * and every step checks that no two agents lead at once.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { LeaderElector, type Timers } from '../agent/coordinator/leader-election.ts';
import { microTime, type Lease, type LeaseApi } from '../agent/coordinator/lease-api.ts';
import { KubeApiError } from '../agent/kube/client.ts';
import { silentLogger } from '../agent/log.ts';

const NAMESPACE = 'kube-system';
const NAME = 'hasta-la-vista-coordinator';
const ENDPOINT = 'hasta-la-vista.io/endpoint';
// client-go's defaults.
const LEASE_MS = 15_000;
const RENEW_DEADLINE_MS = 10_000;
const RETRY_MS = 2_000;

/** Timers that fire only when the test advances time, in order, letting the promises they start settle. */
class VirtualClock {
  time = Date.parse('2026-12-01T10:00:00Z');
  private pending: { at: number; callback: () => void }[] = [];
  readonly now = () => this.time;
  readonly timers: Timers = {
    setTimeout: (callback, ms) => {
      const timer = { at: this.time + Math.max(0, ms), callback };
      this.pending.push(timer);
      return timer;
    },
    clearTimeout: (handle) => {
      this.pending = this.pending.filter((timer) => timer !== handle);
    },
  };

  async advance(ms: number, afterEachStep: () => void = () => {}): Promise<void> {
    const end = this.time + ms;
    for (;;) {
      await settle();
      afterEachStep();
      const next = this.pending.filter((timer) => timer.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!next) break;
      this.pending = this.pending.filter((timer) => timer !== next);
      this.time = next.at;
      next.callback();
    }
    this.time = end;
    await settle();
    afterEachStep();
  }
}

/** The fake API answers on promises alone, so one turn of the event loop lets every chain of calls finish. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

/** One Lease store with the API server's optimistic concurrency; each agent reaches it through its own client. */
class FakeLeases {
  /** Who was refused, and why (`Conflict` or `AlreadyExists`). */
  readonly refused: { who: string; reason: string }[] = [];
  private readonly stored = new Map<string, Lease>();
  private version = 0;

  lease(): Lease | undefined {
    return structuredClone(this.stored.get(`${NAMESPACE}/${NAME}`));
  }

  /** A write by someone outside the election (kubectl annotate), which moves the resourceVersion on. */
  edit(change: (lease: Lease) => void): void {
    const lease = this.lease();
    assert.ok(lease, 'there is a Lease to edit');
    change(lease);
    this.store(lease);
  }

  client(who: string): FakeClient {
    return new FakeClient(this, who);
  }

  get(key: string): Lease | undefined {
    return structuredClone(this.stored.get(key));
  }

  create(who: string, lease: Lease): Lease {
    if (this.stored.has(keyOf(lease))) this.refuse(who, 'AlreadyExists', `leases "${lease.metadata.name}" already exists`);
    assert.equal(lease.metadata.resourceVersion, undefined, 'a create carries no resourceVersion');
    return this.store(lease);
  }

  replace(who: string, lease: Lease): Lease {
    const current = this.stored.get(keyOf(lease));
    if (!current) throw new KubeApiError(`leases "${lease.metadata.name}" not found`, 404, 'NotFound');
    if (lease.metadata.resourceVersion !== current.metadata.resourceVersion) {
      this.refuse(who, 'Conflict', 'the object has been modified; please apply your changes to the latest version and try again');
    }
    return this.store(lease);
  }

  private refuse(who: string, reason: string, message: string): never {
    this.refused.push({ who, reason });
    throw new KubeApiError(message, 409, reason);
  }

  private store(lease: Lease): Lease {
    const stored = structuredClone(lease);
    stored.metadata.resourceVersion = String(++this.version);
    this.stored.set(keyOf(stored), stored);
    return structuredClone(stored);
  }
}

function keyOf(lease: Lease): string {
  return `${lease.metadata.namespace}/${lease.metadata.name}`;
}

/** `fail`: every call is refused at once (API server down, or this node cut off); `hang`: calls get no answer until recover(). */
class FakeClient implements LeaseApi {
  down: false | 'fail' | 'hang' = false;
  /** Lease reads this agent made. */
  reads = 0;
  private hung: ((error: Error) => void)[] = [];

  constructor(
    private readonly leases: FakeLeases,
    private readonly who: string,
  ) {}

  get(namespace: string, name: string) {
    this.reads++;
    return this.answer(() => this.leases.get(`${namespace}/${name}`));
  }

  create(lease: Lease) {
    return this.answer(() => this.leases.create(this.who, lease));
  }

  replace(lease: Lease) {
    return this.answer(() => this.leases.replace(this.who, lease));
  }

  /** Answers again; calls left hanging fail, as they would at the client's timeout. */
  recover(): void {
    this.down = false;
    for (const reject of this.hung.splice(0)) reject(new KubeApiError('no answer from the Kubernetes API within 5000 ms', undefined, 'Timeout'));
  }

  private async answer<T>(call: () => T): Promise<T> {
    if (this.down === 'fail') throw new KubeApiError('cannot reach the Kubernetes API (ECONNREFUSED)', undefined, 'Unreachable');
    if (this.down === 'hang') return new Promise<T>((_, reject) => this.hung.push(reject));
    return call();
  }
}

interface Agent {
  id: string;
  endpoint: string;
  elector: LeaderElector;
  client: FakeClient;
  mayLead: boolean;
  /** `started`, `stopped`, `new-leader <id> <endpoint>`, in order. */
  events: string[];
  signals: AbortSignal[];
}

class World {
  readonly clock = new VirtualClock();
  readonly leases = new FakeLeases();
  readonly agents: Agent[] = [];

  constructor(
    count: number,
    private readonly options: { mayLead?: boolean; followerRetryPeriodMs?: number } = {},
  ) {
    for (let i = 0; i < count; i++) this.agents.push(this.agent(`agent-${i}`, `10.0.0.${i + 1}:9100`, options.mayLead ?? true));
  }

  start(): void {
    for (const agent of this.agents) agent.elector.start();
  }

  leaders(): Agent[] {
    return this.agents.filter((agent) => agent.elector.isLeader());
  }

  /** Moves time on, checking at every step that no two agents lead at once. */
  advance(ms: number): Promise<void> {
    return this.clock.advance(ms, () => {
      const leaders = this.leaders().map((agent) => agent.id);
      assert.ok(leaders.length <= 1, `two agents lead at once: ${leaders.join(', ')}`);
    });
  }

  /** Moves time on in small steps until `condition` holds; fails if it does not within `withinMs`. */
  async eventually<T>(condition: () => T | undefined | false, withinMs: number, what: string): Promise<T> {
    for (let waited = 0; ; waited += 100) {
      const result = condition();
      if (result) return result;
      if (waited >= withinMs) assert.fail(`${what}: not within ${withinMs} ms`);
      await this.advance(100);
    }
  }

  /** The single agent leading, once there is one. */
  leader(withinMs = 10_000): Promise<Agent> {
    return this.eventually(() => (this.leaders().length === 1 ? this.leaders()[0] : undefined), withinMs, 'one agent leads');
  }

  async close(): Promise<void> {
    for (const agent of this.agents) agent.client.recover();
    await Promise.all(this.agents.map((agent) => agent.elector.stop()));
  }

  private agent(id: string, endpoint: string, mayLead: boolean): Agent {
    const client = this.leases.client(id);
    const events: string[] = [];
    const signals: AbortSignal[] = [];
    const agent: Agent = { id, endpoint, client, mayLead, events, signals, elector: undefined as unknown as LeaderElector };
    agent.elector = new LeaderElector({
      api: client,
      namespace: NAMESPACE,
      name: NAME,
      identity: id,
      leaseDurationMs: LEASE_MS,
      renewDeadlineMs: RENEW_DEADLINE_MS,
      retryPeriodMs: RETRY_MS,
      followerRetryPeriodMs: this.options.followerRetryPeriodMs,
      annotations: () => ({ [ENDPOINT]: endpoint }),
      mayLead: () => agent.mayLead,
      callbacks: {
        onStartedLeading: (signal) => {
          events.push('started');
          signals.push(signal);
        },
        onStoppedLeading: () => events.push('stopped'),
        onNewLeader: (identity, lease) => events.push(`new-leader ${identity} ${lease.metadata.annotations?.[ENDPOINT]}`),
      },
      logger: silentLogger(),
      now: this.clock.now,
      timers: this.clock.timers,
    });
    return agent;
  }
}

const count = (events: string[], event: string) => events.filter((e) => e === event).length;

let world: World | undefined;
function newWorld(agents: number, options?: { mayLead?: boolean; followerRetryPeriodMs?: number }): World {
  world = new World(agents, options);
  return world;
}
afterEach(async () => {
  await world?.close();
  world = undefined;
});

describe('leader election on a Lease', () => {
  it('one of several agents leads, keeps leading, and the others name it', async () => {
    const w = newWorld(5);
    w.start();
    const leader = await w.leader();
    await w.advance(120_000);
    assert.deepEqual(w.leaders(), [leader], 'the same agent still leads after two minutes of renewals');
    assert.deepEqual(leader.events.filter((e) => e === 'started' || e === 'stopped'), ['started']);
    for (const agent of w.agents) {
      assert.equal(agent.elector.leader()?.identity, leader.id, `${agent.id} names the leader`);
      if (agent !== leader) assert.equal(count(agent.events, 'started'), 0, `${agent.id} never led`);
    }
    const lease = w.leases.lease();
    assert.equal(lease?.spec.holderIdentity, leader.id);
    assert.equal(lease?.spec.leaseDurationSeconds, LEASE_MS / 1000);
    assert.equal(lease?.spec.leaseTransitions, 0);
    assert.match(lease?.spec.renewTime ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$/, 'RFC 3339 with microseconds');
    assert.ok(w.clock.time - Date.parse(lease!.spec.renewTime!) <= RETRY_MS, 'renewed every retry period');
  });

  it('two agents creating the Lease at the same moment: one is refused and follows the other', async () => {
    const w = newWorld(2);
    w.start();
    const leader = await w.leader();
    const loser = w.agents.find((agent) => agent !== leader)!;
    assert.deepEqual(w.leases.refused, [{ who: loser.id, reason: 'AlreadyExists' }]);
    await w.advance(30_000);
    assert.deepEqual(w.leaders(), [leader]);
    assert.equal(loser.elector.leader()?.identity, leader.id);
  });

  it('a write with a stale resourceVersion is refused, and the leader reads the Lease again instead of stepping down', async () => {
    const w = newWorld(2);
    w.start();
    const leader = await w.leader();
    w.leases.edit((lease) => {
      lease.metadata.annotations = { ...lease.metadata.annotations, 'example.com/owner': 'platform-team' };
    });
    const editedAt = w.clock.time;
    await w.advance(30_000);
    assert.ok(w.leases.refused.some(({ who, reason }) => who === leader.id && reason === 'Conflict'), 'the leader\'s renewal met the edit');
    assert.deepEqual(w.leaders(), [leader]);
    assert.equal(count(leader.events, 'stopped'), 0);
    const lease = w.leases.lease()!;
    assert.equal(lease.spec.holderIdentity, leader.id);
    assert.ok(Date.parse(lease.spec.renewTime!) > editedAt, 'renewed after the edit');
    assert.equal(lease.metadata.annotations?.['example.com/owner'], 'platform-team', 'the other writer\'s annotation is kept');
    assert.equal(lease.metadata.annotations?.[ENDPOINT], leader.endpoint);
  });

  it('when the leader dies, another agent takes over once the dead one\'s lease has expired', async () => {
    const w = newWorld(3);
    w.start();
    const dead = await w.leader();
    dead.client.down = 'fail';
    const next = await w.eventually(() => w.leaders().find((agent) => agent !== dead), LEASE_MS + 3 * RETRY_MS * 2.2, 'another agent leads');
    assert.equal(dead.elector.isLeader(), false);
    assert.deepEqual(dead.events.filter((e) => e === 'started' || e === 'stopped'), ['started', 'stopped']);
    assert.equal(dead.signals[0]?.aborted, true, 'the dead leader\'s work was told to stop');
    assert.equal(w.leases.lease()?.spec.leaseTransitions, 1);
    const follower = w.agents.find((agent) => agent !== dead && agent !== next)!;
    await w.eventually(() => follower.elector.leader()?.identity === next.id, RETRY_MS * 2.2, 'the other follower names the new leader');
    assert.ok(follower.events.includes(`new-leader ${next.id} ${next.endpoint}`));
  });

  it('judges expiry by its own clock, not by the renewTime a holder with a skewed clock writes', async () => {
    const w = newWorld(2);
    const hourAgo = (ms: number) => microTime(ms - 3_600_000);
    // A holder outside this world whose clock is an hour behind: every renewTime it writes looks long expired.
    w.leases.create('skewed', {
      metadata: { namespace: NAMESPACE, name: NAME },
      spec: { holderIdentity: 'skewed', leaseDurationSeconds: LEASE_MS / 1000, acquireTime: hourAgo(w.clock.time), renewTime: hourAgo(w.clock.time), leaseTransitions: 0 },
    });
    w.start();
    for (let renewal = 0; renewal < 30; renewal++) {
      await w.advance(RETRY_MS);
      w.leases.edit((lease) => {
        lease.spec.renewTime = hourAgo(w.clock.time);
      });
    }
    assert.deepEqual(w.leaders(), [], 'nobody takes a lease that is still being renewed');
    assert.equal(w.agents[0]!.elector.leader()?.identity, 'skewed');

    const next = await w.leader(LEASE_MS + 2 * RETRY_MS * 2.2);
    assert.equal(w.leases.lease()?.spec.leaseTransitions, 1, `${next.id} took it over once the renewals stopped`);
  });

  it('release hands the lease over at once, and the agent that released never leads again', async () => {
    const w = newWorld(3);
    w.start();
    const first = await w.leader();
    await first.elector.release();
    assert.equal(first.elector.isLeader(), false);
    assert.deepEqual(first.events.filter((e) => e === 'started' || e === 'stopped'), ['started', 'stopped']);
    const released = w.leases.lease()!;
    assert.equal(released.spec.holderIdentity, '');
    assert.equal(released.spec.leaseDurationSeconds, 1);
    assert.equal(released.metadata.annotations?.[ENDPOINT], undefined, 'a Lease without a holder points nobody to an endpoint');

    // Far sooner than the 15 s the lease would take to expire.
    const next = await w.leader(2 * RETRY_MS * 2.2);
    assert.notEqual(next, first);
    await w.advance(60_000);
    assert.equal(count(first.events, 'started'), 1);
    assert.equal(first.elector.leader()?.identity, next.id, 'it still follows the Lease');
  });

  it('stopping the leader releases the lease, so the next one need not wait it out', async () => {
    const w = newWorld(2);
    w.start();
    const first = await w.leader();
    await first.elector.stop();
    assert.equal(w.leases.lease()?.spec.holderIdentity, '');
    const next = await w.leader(2 * RETRY_MS * 2.2);
    assert.notEqual(next, first);
  });

  it('an agent whose node is going away never takes the lease, even when nobody holds it', async () => {
    const w = newWorld(3, { mayLead: false });
    w.start();
    await w.advance(60_000);
    assert.deepEqual(w.leaders(), []);
    assert.equal(w.leases.lease(), undefined, 'no agent even created the Lease');
    assert.ok(w.agents.every((agent) => count(agent.events, 'started') === 0));

    w.agents[2]!.mayLead = true;
    const leader = await w.leader();
    assert.equal(leader.id, 'agent-2');
    await w.advance(60_000);
    assert.deepEqual(w.leaders(), [leader]);
  });

  it('a leader whose node starts going away gives the lease up at once', async () => {
    const w = newWorld(3);
    w.start();
    const dying = await w.leader();
    dying.mayLead = false;
    await w.eventually(() => w.leases.lease()?.spec.holderIdentity !== dying.id, RETRY_MS * 2, 'the dying node gave the lease up');
    assert.equal(dying.elector.isLeader(), false);
    assert.equal(count(dying.events, 'stopped'), 1);
    const next = await w.leader(2 * RETRY_MS * 2.2);
    assert.notEqual(next, dying);
    await w.advance(60_000);
    assert.equal(count(dying.events, 'started'), 1, 'it never takes the lease back while its node is going away');
    assert.equal(dying.elector.leader()?.identity, next.id, 'it still knows who leads, to hand its drain over');
  });

  it('the leader publishes its endpoint on the Lease, and followers read it there', async () => {
    const w = newWorld(3);
    w.start();
    const first = await w.leader();
    await w.advance(RETRY_MS * 3);
    for (const follower of w.agents.filter((agent) => agent !== first)) {
      assert.deepEqual(follower.elector.leader(), { identity: first.id, annotations: { [ENDPOINT]: first.endpoint } });
      assert.ok(follower.events.includes(`new-leader ${first.id} ${first.endpoint}`));
    }

    await first.elector.release();
    const next = await w.leader(2 * RETRY_MS * 2.2);
    const follower = w.agents.find((agent) => agent !== first && agent !== next)!;
    await w.eventually(() => follower.elector.leader()?.annotations[ENDPOINT] === next.endpoint, RETRY_MS * 2.2, 'the follower reads the new endpoint');
  });

  it('followers name nobody once the holder\'s lease has expired by their own clock', async () => {
    const w = newWorld(2);
    w.agents[1]!.mayLead = false;
    w.start();
    const dead = await w.leader();
    assert.equal(dead.id, 'agent-0');
    await w.advance(RETRY_MS * 3);
    assert.equal(w.agents[1]!.elector.leader()?.identity, dead.id);
    dead.client.down = 'fail';
    await w.eventually(() => w.agents[1]!.elector.leader() === undefined, LEASE_MS + RETRY_MS * 2.2, 'the follower stops naming the dead leader');
  });

  it('a leader that cannot renew steps down within the renew deadline, before its lease can expire for the others', async () => {
    const w = newWorld(2);
    w.start();
    const leader = await w.leader();
    for (const agent of w.agents) agent.client.down = 'fail';
    await w.eventually(() => !leader.elector.isLeader(), LEASE_MS, 'the leader steps down');
    assert.equal(count(leader.events, 'stopped'), 1);
    assert.equal(leader.signals[0]?.aborted, true);

    for (const agent of w.agents) agent.client.recover();
    await w.leader(LEASE_MS + 2 * RETRY_MS * 2.2);
  });

  it('a renewal that never gets an answer ends leadership at the renew deadline too', async () => {
    const w = newWorld(2);
    w.start();
    const leader = await w.leader();
    leader.client.down = 'hang';
    await w.eventually(() => !leader.elector.isLeader(), LEASE_MS, 'the leader steps down');
    assert.equal(count(leader.events, 'stopped'), 1);
  });

  it('followers of a valid holder read the Lease at their own slower pace, always name the holder, and still take over when it dies', async () => {
    const FOLLOWER_MS = 5_000;
    const w = newWorld(20, { followerRetryPeriodMs: FOLLOWER_MS });
    w.start();
    const leader = await w.leader();
    const followers = w.agents.filter((agent) => agent !== leader);
    // Those refused when they raced to create the Lease read it at the next retry.
    await w.eventually(() => followers.every((agent) => agent.elector.leader()?.identity === leader.id), RETRY_MS * 2.2, 'every follower names the holder');
    const readsBefore = followers.map((agent) => agent.client.reads);
    const minutes = 5;
    for (let step = 0; step < (minutes * 60_000) / 500; step++) {
      await w.advance(500);
      for (const agent of followers) assert.equal(agent.elector.leader()?.identity, leader.id, `${agent.id} names the holder at every moment`);
    }
    const reads = followers.map((agent, i) => agent.client.reads - readsBefore[i]!);
    // Jittered between 1 and 2.2 periods: 5 minutes hold 27 to 60 reads at 5 s, 68 to 150 at client-go's 2 s.
    for (const [i, n] of reads.entries()) assert.ok(n >= 25 && n <= 62, `${followers[i]!.id} read the Lease ${n} times in ${minutes} minutes`);

    leader.client.down = 'fail';
    const next = await w.eventually(() => w.leaders().find((agent) => agent !== leader), LEASE_MS + 2 * FOLLOWER_MS * 2.2, 'a follower takes over');
    assert.notEqual(next, leader);
  });

  it('refuses timings under which a follower would lose sight of the holder', () => {
    const options = { api: new FakeLeases().client('a'), namespace: NAMESPACE, name: NAME, identity: 'a', mayLead: () => true, logger: silentLogger(), leaseDurationMs: 15_000, renewDeadlineMs: 10_000, retryPeriodMs: 2_000 };
    assert.throws(() => new LeaderElector({ ...options, followerRetryPeriodMs: 7_000 }), /followerRetryPeriodMs \(7000\) must be .* less than leaseDurationMs \(15000\)/);
    assert.throws(() => new LeaderElector({ ...options, followerRetryPeriodMs: 1_000 }), /must be at least retryPeriodMs \(2000\)/);
  });

  it('refuses timings under which two agents could lead at once', () => {
    const options = { api: new FakeLeases().client('a'), namespace: NAMESPACE, name: NAME, identity: 'a', mayLead: () => true, logger: silentLogger() };
    assert.throws(() => new LeaderElector({ ...options, leaseDurationMs: 10_000, renewDeadlineMs: 10_000, retryPeriodMs: 2_000 }), /leaseDurationMs \(10000\) must be greater than renewDeadlineMs/);
    assert.throws(() => new LeaderElector({ ...options, leaseDurationMs: 15_000, renewDeadlineMs: 2_000, retryPeriodMs: 2_000 }), /renewDeadlineMs \(2000\) must be greater than 1.2 × retryPeriodMs/);
    assert.throws(() => new LeaderElector({ ...options, identity: '', leaseDurationMs: 15_000, renewDeadlineMs: 10_000, retryPeriodMs: 2_000 }), /identity is empty/);
  });
});
