/**
 * Leader election on a `coordination.k8s.io/v1` Lease, with the rules of client-go's
 * tools/leaderelection, in one small loop:
 *
 * - Expiry is judged on this agent's own clock, from the moment it last saw the Lease's record change,
 *   never from the renewTime written on it: the nodes' clocks disagree, a stopwatch on one node does not.
 * - Every write carries the resourceVersion last read. A conflict means another agent wrote first, so
 *   the next round reads the Lease again instead of repeating the write.
 * - The leader steps down when it has not renewed for renewDeadline, which is shorter than the lease
 *   duration: it has stopped acting as leader before any other agent may take over.
 * - Candidates retry with jitter (client-go's factor 1.2), so hundreds of agents started together do
 *   not hit the API server in step.
 * - Unlike client-go, built for a few replicas of a controller, a follower that sees a valid holder may
 *   read the Lease less often than the holder renews it (followerRetryPeriod): a DaemonSet has one
 *   candidate per node, and 300 of them reading every 2 s would be about 100 requests a second. It never
 *   waits so long that its view of the holder expires, so it always knows whom to hand a drain to.
 */
import { errorMessage } from '../aws/errors.ts';
import type { Logger } from '../log.ts';
import { isConflict, microTime, type Lease, type LeaseApi } from './lease-api.ts';

/** A candidate waits retryPeriod × (1 + JITTER_FACTOR × random) between attempts, as client-go does. */
export const JITTER_FACTOR = 1.2;

export interface Timers {
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface LeaderCallbacks {
  /** This agent leads until `signal` aborts (and onStoppedLeading is called). Not awaited. */
  onStartedLeading?: (signal: AbortSignal) => void | Promise<void>;
  onStoppedLeading?: () => void;
  /** The Lease's holder changed to `identity` (this agent included), as observed. */
  onNewLeader?: (identity: string, lease: Lease) => void;
}

export interface LeaderElectorOptions {
  api: LeaseApi;
  namespace: string;
  name: string;
  /** Unique per agent; the pod's name is the usual choice. */
  identity: string;
  leaseDurationMs: number;
  renewDeadlineMs: number;
  retryPeriodMs: number;
  /**
   * Between two reads of a follower that sees a valid holder (jittered as retries are); retryPeriodMs
   * when absent. With its jitter it must stay under leaseDurationMs, so the follower's view never expires.
   */
  followerRetryPeriodMs?: number;
  /** Written on the Lease by the holder (its endpoint, for one), read by the others through `leader()`. */
  annotations?: () => Record<string, string>;
  /** False while this agent must not lead (its own node is going away): it never takes the lease then, and gives it up. */
  mayLead: () => boolean;
  callbacks?: LeaderCallbacks;
  logger: Logger;
  now?: () => number;
  timers?: Timers;
}

export interface LeaderView {
  identity: string;
  annotations: Record<string, string>;
}

/** The Lease as last seen, and when it was first seen with this record (holder, times, transitions). */
interface Observation {
  lease: Lease;
  record: string;
  at: number;
}

export class LeaderElector {
  private readonly api: LeaseApi;
  private readonly logger: Logger;
  private readonly now: () => number;
  private readonly timers: Timers;
  /** The Lease counts whole seconds; rounding up only lengthens what the others wait. */
  private readonly leaseDurationSeconds: number;

  private observed: Observation | undefined;
  private reportedHolder = '';
  private leading: { controller: AbortController; deadline?: unknown } | undefined;
  /** Set by release(): this agent stays a follower for good. */
  private resigned = false;
  private stopped = false;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  /** Lease reads and writes run one at a time, so a release can never be overtaken by a renewal in flight. */
  private queue: Promise<unknown> = Promise.resolve();
  private lastFailure: string | undefined;

  constructor(private readonly options: LeaderElectorOptions) {
    const { identity, leaseDurationMs, renewDeadlineMs, retryPeriodMs } = options;
    if (!identity) throw new Error('leader election: identity is empty; give each agent a unique one, such as its pod name');
    if (!(retryPeriodMs > 0)) throw new Error(`leader election: retryPeriodMs (${retryPeriodMs}) must be greater than 0`);
    if (!(renewDeadlineMs > JITTER_FACTOR * retryPeriodMs)) {
      throw new Error(
        `leader election: renewDeadlineMs (${renewDeadlineMs}) must be greater than ${JITTER_FACTOR} × retryPeriodMs (${retryPeriodMs}), so a leader gets more than one try to renew`,
      );
    }
    const followerRetryPeriodMs = options.followerRetryPeriodMs ?? retryPeriodMs;
    if (!(followerRetryPeriodMs >= retryPeriodMs && leaseDurationMs > followerRetryPeriodMs * (1 + JITTER_FACTOR))) {
      throw new Error(
        `leader election: followerRetryPeriodMs (${followerRetryPeriodMs}) must be at least retryPeriodMs (${retryPeriodMs}) and, times ${1 + JITTER_FACTOR} for its jitter, less than leaseDurationMs (${leaseDurationMs}), so a follower always knows the holder`,
      );
    }
    if (!(leaseDurationMs > renewDeadlineMs)) {
      throw new Error(
        `leader election: leaseDurationMs (${leaseDurationMs}) must be greater than renewDeadlineMs (${renewDeadlineMs}), so a leader that cannot renew steps down before another may take over`,
      );
    }
    this.api = options.api;
    this.logger = options.logger.child({ lease: `${options.namespace}/${options.name}`, identity });
    this.now = options.now ?? Date.now;
    this.timers = options.timers ?? { setTimeout: (callback, ms) => setTimeout(callback, ms), clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout) };
    this.leaseDurationSeconds = Math.ceil(leaseDurationMs / 1000);
  }

  /** Starts observing the Lease, and competing for it whenever mayLead() allows. */
  start(): void {
    this.loop ??= this.run();
  }

  /**
   * Gives the lease up at once if this agent holds it (holder emptied, duration 1 s, as client-go's
   * release writes it) and never competes again. It keeps observing, so leader() still names the holder.
   */
  async release(): Promise<void> {
    this.resigned = true;
    this.stopLeading('released');
    await this.exclusive(() => this.writeRelease());
  }

  /** Stops the loop and releases the lease if this agent holds it, so the next leader need not wait it out. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.loop;
    this.stopLeading('stopping');
    if (this.holdsByRecord()) await this.exclusive(() => this.writeRelease());
  }

  /** mayLead() may have changed (the node's fate did): run the next round now, not after the retry period. */
  reconsider(): void {
    this.wake?.();
  }

  /** The holder last observed and its annotations, while its lease has not expired by this agent's clock. */
  leader(): LeaderView | undefined {
    const identity = this.observed?.lease.spec.holderIdentity;
    if (!this.observed || !identity || !this.observedValid(this.now())) return undefined;
    return { identity, annotations: { ...this.observed.lease.metadata.annotations } };
  }

  /** The holder on the Lease as last read, however long ago; '' when it was released. */
  lastSeenHolder(): string | undefined {
    return this.observed?.lease.spec.holderIdentity;
  }

  isLeader(): boolean {
    return this.leading !== undefined;
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      try {
        await this.exclusive(() => this.round());
      } catch (error) {
        this.logger.error({ err: errorMessage(error) }, 'leader election round failed');
      }
      if (this.stopped) break;
      await this.pause(this.untilNextRoundMs());
    }
  }

  /** The holder renews every retry period; a follower of a valid holder reads at its own pace; anyone else tries as often as the holder. */
  private untilNextRoundMs(): number {
    const { retryPeriodMs, followerRetryPeriodMs = retryPeriodMs } = this.options;
    if (this.leading) return retryPeriodMs;
    const following = this.observed?.lease.spec.holderIdentity && this.observedValid(this.now());
    return (following ? followerRetryPeriodMs : retryPeriodMs) * (1 + JITTER_FACTOR * Math.random());
  }

  private isCandidate(): boolean {
    return !this.stopped && !this.resigned && this.options.mayLead();
  }

  private async round(): Promise<void> {
    if (!this.isCandidate() && this.holdsByRecord()) {
      this.stopLeading('may no longer lead');
      await this.writeRelease();
      return;
    }
    const attemptedAt = this.now();
    const held = await this.tryAcquireOrRenew(this.isCandidate(), attemptedAt);
    // Candidacy may have ended while the call was in flight (release, stop, the node's fate): then the
    // lease is held without leading, and the release that follows gives it up.
    if (held && this.isCandidate()) {
      if (!this.leading) this.startLeading();
      this.armRenewDeadline(attemptedAt);
    }
    this.reportNewHolder();
  }

  /** Reads the Lease, and as a candidate takes or renews it where the rules allow. True when it is ours. */
  private async tryAcquireOrRenew(candidate: boolean, now: number): Promise<boolean> {
    // The leader's usual round: one write with the resourceVersion it already knows.
    if (candidate && this.observed && this.holdsByRecord() && this.observedValid(now)) {
      try {
        this.observe(await this.api.replace(this.claim(this.observed.lease, now)));
        return true;
      } catch (error) {
        if (!isConflict(error)) return this.failed('renew', error);
        this.logger.debug('the Lease changed since it was last read; reading it again');
      }
    }

    let current: Lease | undefined;
    try {
      current = await this.api.get(this.options.namespace, this.options.name);
    } catch (error) {
      return this.failed('read', error);
    }
    if (!current) {
      this.observed = undefined;
      this.lastFailure = undefined;
      if (!candidate) return false;
      return this.write('create', () => this.api.create(this.claim(undefined, now)));
    }
    this.observe(current);
    if (!candidate) return false;
    const holder = current.spec.holderIdentity;
    if (holder && holder !== this.options.identity && this.observedValid(now)) return false;
    return this.write('acquire', () => this.api.replace(this.claim(current, now)));
  }

  private async write(what: string, call: () => Promise<Lease>): Promise<boolean> {
    try {
      this.observe(await call());
      return true;
    } catch (error) {
      if (!isConflict(error)) return this.failed(what, error);
      this.logger.debug({ what }, 'another agent wrote the Lease first');
      return false;
    }
  }

  /** The Lease with this agent as holder, renewed now; keeps what others wrote on it. */
  private claim(current: Lease | undefined, now: number): Lease {
    const { namespace, name, identity } = this.options;
    const ours = current?.spec.holderIdentity === identity;
    const transitions = current?.spec.leaseTransitions ?? 0;
    return {
      ...current,
      metadata: { ...current?.metadata, namespace, name, annotations: { ...current?.metadata.annotations, ...this.options.annotations?.() } },
      spec: {
        ...current?.spec,
        holderIdentity: identity,
        leaseDurationSeconds: this.leaseDurationSeconds,
        acquireTime: (ours && current.spec.acquireTime) || microTime(now),
        renewTime: microTime(now),
        leaseTransitions: current === undefined || ours ? transitions : transitions + 1,
      },
    };
  }

  /** Empties the holder if this agent holds the Lease; re-reads on a conflict, a few times. */
  private async writeRelease(): Promise<void> {
    for (let attempt = 0; attempt < 3; attempt++) {
      let current: Lease | undefined;
      try {
        current = await this.api.get(this.options.namespace, this.options.name);
      } catch (error) {
        this.failed('release', error);
        return;
      }
      if (current?.spec.holderIdentity !== this.options.identity) return;
      // Our published annotations go too: a Lease without a holder must point nobody anywhere.
      const annotations = { ...current.metadata.annotations };
      for (const key of Object.keys(this.options.annotations?.() ?? {})) delete annotations[key];
      const now = this.now();
      try {
        this.observe(
          await this.api.replace({
            ...current,
            metadata: { ...current.metadata, annotations },
            spec: { ...current.spec, holderIdentity: '', leaseDurationSeconds: 1, acquireTime: microTime(now), renewTime: microTime(now) },
          }),
        );
        this.logger.info('released the lease');
        return;
      } catch (error) {
        if (!isConflict(error)) {
          this.failed('release', error);
          return;
        }
      }
    }
    this.logger.warn('could not release the lease: it kept changing under every write; it expires by itself');
  }

  private observe(lease: Lease): void {
    this.lastFailure = undefined;
    const { holderIdentity, leaseDurationSeconds, acquireTime, renewTime, leaseTransitions } = lease.spec;
    const record = JSON.stringify([holderIdentity, leaseDurationSeconds, acquireTime, renewTime, leaseTransitions]);
    this.observed = this.observed?.record === record ? { ...this.observed, lease } : { lease, record, at: this.now() };
  }

  private observedValid(now: number): boolean {
    return this.observed !== undefined && this.observed.at + (this.observed.lease.spec.leaseDurationSeconds ?? 0) * 1000 > now;
  }

  private holdsByRecord(): boolean {
    return this.observed?.lease.spec.holderIdentity === this.options.identity;
  }

  /** Logs a failed call: the first of a kind as a warning, its repeats (every retry period) as debug. */
  private failed(what: string, error: unknown): false {
    const message = `${what} Lease ${this.options.namespace}/${this.options.name}: ${errorMessage(error)}`;
    if (message === this.lastFailure) this.logger.debug({ err: message }, 'leader election call failed again');
    else this.logger.warn({ err: message }, 'leader election call failed');
    this.lastFailure = message;
    return false;
  }

  private startLeading(): void {
    const controller = new AbortController();
    this.leading = { controller };
    this.logger.info('leading: acquired the lease');
    this.notify('onStartedLeading', () => this.options.callbacks?.onStartedLeading?.(controller.signal));
  }

  /** Steps down when no renewal succeeds within renewDeadline of the last successful attempt, even if a call hangs. */
  private armRenewDeadline(attemptedAt: number): void {
    if (!this.leading) return;
    this.timers.clearTimeout(this.leading.deadline);
    const remainingMs = attemptedAt + this.options.renewDeadlineMs - this.now();
    this.leading.deadline = this.timers.setTimeout(() => this.stopLeading(`not renewed within ${this.options.renewDeadlineMs} ms`), remainingMs);
  }

  private stopLeading(why: string): void {
    if (!this.leading) return;
    const { controller, deadline } = this.leading;
    this.leading = undefined;
    this.timers.clearTimeout(deadline);
    this.logger.info({ why }, 'stopped leading');
    controller.abort(new Error(`stopped leading: ${why}`));
    this.notify('onStoppedLeading', () => this.options.callbacks?.onStoppedLeading?.());
  }

  private reportNewHolder(): void {
    const holder = this.observed?.lease.spec.holderIdentity ?? '';
    if (holder === this.reportedHolder) return;
    this.reportedHolder = holder;
    if (!holder || !this.observed) return;
    this.logger.info({ leader: holder }, 'new leader');
    const lease = this.observed.lease;
    this.notify('onNewLeader', () => this.options.callbacks?.onNewLeader?.(holder, lease));
  }

  /** Runs a callback so that its failure, thrown or rejected, is logged and never stops the election. */
  private notify(callback: string, run: () => unknown): void {
    const logFailure = (error: unknown) => this.logger.error({ callback, err: errorMessage(error) }, 'leader election callback failed');
    try {
      const result = run();
      if (result instanceof Promise) result.catch(logFailure);
    } catch (error) {
      logFailure(error);
    }
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        this.wake = undefined;
        resolve();
      };
      const handle = this.timers.setTimeout(done, ms);
      this.wake = () => {
        this.timers.clearTimeout(handle);
        done();
      };
    });
  }

  private exclusive<T>(operation: () => Promise<T>): Promise<T> {
    const result = this.queue.then(operation);
    this.queue = result.catch(() => undefined);
    return result;
  }
}
