/**
 * The drainer: the one entry point every trigger (IMDS notices, SIGTERM, the HTTP API, the one-shot
 * command) calls. One drain per instance and scope at a time: asking again while one runs joins it.
 */
import type { CallLog } from '../aws/call-log.ts';
import { errorMessage } from '../aws/errors.ts';
import type { Logger } from '../log.ts';
import { runDrain, type DrainObserver, type DrainOptions } from './drain.ts';
import { describeScope, type LoadBalancerFamily, type Scope } from './family.ts';
import type { Instance, InstanceLookup, InstanceRef } from './instance.ts';
import { isFinished, type DrainStatus, type Trigger } from './status.ts';

export interface DrainHandle {
  /** A snapshot of the drain's status, safe to serialise. */
  status(): DrainStatus;
  /** Settles with the final status; never rejects. */
  readonly done: Promise<DrainStatus>;
  /** True when this request joined a drain already in flight. */
  readonly joined: boolean;
  /** Adds what a caller learned alongside the drain (e.g. its lifecycle action) to the status. */
  amend(fields: Pick<DrainStatus, 'lifecycleAction'>): void;
  /**
   * Moves the deadline (a spot notice's time moved, a sooner notice arrived) and records every trigger
   * now behind the drain. A finished drain ignores it.
   */
  reschedule(deadline: Date, triggers: readonly Trigger[]): void;
  /** Ends the drain now, e.g. because the node was given back; its status says `interrupted: <why>`. */
  cancel(why: string): void;
}

/** How a drain is carried out, filling in `status` until it settles: by this agent's own AWS calls (Drainer.alone), or handed to the coordinator. */
export type DrainRunner = (instance: Instance, options: DrainOptions, status: DrainStatus, signal: AbortSignal) => Promise<void>;

export class TooManyDrainsError extends Error {
  constructor(limit: number) {
    super(`${limit} drains are already running (MAX_CONCURRENT_DRAINS); try again when one finished`);
    this.name = 'TooManyDrainsError';
  }
}

/** Why a drain's signal aborts when it was canceled (the node given back): not the deadline, not the agent stopping. */
export class DrainCanceled extends Error {
  override name = 'DrainCanceled';
}

export interface DrainerOptions {
  readonly lookup: InstanceLookup;
  readonly families: readonly LoadBalancerFamily[];
  readonly calls: CallLog;
  readonly logger: Logger;
  readonly maxConcurrent: number;
  readonly observer?: DrainObserver;
}

/** Finished statuses kept for GET /drain/<id>; the oldest go first. */
const HISTORY_LIMIT = 1000;

export class Drainer {
  private readonly inFlight = new Map<string, DrainHandle>();
  private readonly latest = new Map<string, DrainHandle>();
  private readonly stopping = new AbortController();

  constructor(private readonly options: DrainerOptions) {}

  /** Resolves a caller's reference; throws InstanceNotFoundError when the VPC has no such instance. */
  find(ref: InstanceRef, signal: AbortSignal): Promise<Instance> {
    return this.options.lookup.find(ref, signal);
  }

  /** Drains by this agent's own calls to AWS. */
  readonly alone: DrainRunner = (instance, options, status, signal) =>
    runDrain(instance, options, this.options.families, status, signal, this.options.logger, this.options.observer);

  /**
   * `capped: false` for the agent's own instance, and for the drains of dying peers while it coordinates:
   * the cap on concurrent drains (MAX_CONCURRENT_DRAINS) never turns those away. `run`: how (Drainer.alone
   * unless the drain is handed over).
   */
  start(instance: Instance, options: DrainOptions, { capped = true, run = this.alone }: { capped?: boolean; run?: DrainRunner } = {}): DrainHandle {
    const key = `${instance.id} ${describeScope(options.scope)}`;
    const running = this.inFlight.get(key);
    if (running) return { ...running, joined: true };
    if (capped && this.inFlight.size >= this.options.maxConcurrent) throw new TooManyDrainsError(this.options.maxConcurrent);

    const status = newStatus(instance, options);
    // A timer of our own, not AbortSignal.timeout(): on Node 20 a garbage collection can lose that
    // signal inside AbortSignal.any(), and the drain would then never reach its deadline.
    const deadline = new AbortController();
    const canceled = new AbortController();
    const arm = (at: Date) => setTimeout(() => deadline.abort(new DOMException('the drain deadline passed', 'TimeoutError')), Math.max(0, at.getTime() - Date.now()));
    let timer = arm(options.deadline);
    const signal = AbortSignal.any([deadline.signal, canceled.signal, this.stopping.signal]);
    const done = this.options.calls
      .measure(status.awsCalls, () => run(instance, options, status, signal))
      .catch((error: unknown) => {
        // A runner handles every AWS and network error itself; this is a bug, reported rather than lost.
        status.state = 'failed';
        status.reason = `internal error: ${errorMessage(error)}`;
        status.finishedAt = new Date().toISOString();
        this.options.logger.error({ err: error, instanceId: instance.id }, 'drain crashed');
      })
      .then(() => {
        clearTimeout(timer);
        this.inFlight.delete(key);
        return snapshot(status);
      });
    const handle: DrainHandle = {
      status: () => snapshot(status),
      done,
      joined: false,
      amend: (fields) => Object.assign(status, fields),
      reschedule: (at, triggers) => {
        if (isFinished(status) || deadline.signal.aborted) return;
        clearTimeout(timer);
        timer = arm(at);
        status.deadline = at.toISOString();
        status.triggers = [...new Set([status.trigger, ...triggers])];
      },
      cancel: (why) => canceled.abort(new DrainCanceled(why)),
    };
    this.inFlight.set(key, handle);
    this.remember(instance.id, handle);
    return handle;
  }

  /** A drain decided against before it began (e.g. another local endpoint of the Service is still ready): recorded, nothing done. */
  skip(instance: Instance, options: DrainOptions, reason: string): DrainHandle {
    const status: DrainStatus = { ...newStatus(instance, options), state: 'skipped', reason, finishedAt: new Date().toISOString() };
    this.options.logger.info({ instanceId: instance.id, trigger: options.trigger, scope: status.scope, reason }, 'drain skipped');
    this.options.observer?.finished?.(snapshot(status), 0);
    const handle: DrainHandle = {
      status: () => snapshot(status),
      done: Promise.resolve(snapshot(status)),
      joined: false,
      amend: (fields) => Object.assign(status, fields),
      reschedule: () => undefined,
      cancel: () => undefined,
    };
    this.remember(instance.id, handle);
    return handle;
  }

  /**
   * Where the instance takes traffic now, without changing anything (the keep-out re-check): a target
   * still draining from the last deregistration is not "registered again".
   */
  async servingMemberships(instance: Instance, scope: Scope, signal: AbortSignal): Promise<{ family: string; id: string }[]> {
    const found = await Promise.all(
      this.options.families.map(async (family) =>
        (await family.memberships(instance, scope, { signal, found: () => undefined, note: () => undefined })).filter((m) => m.serving).map((m) => ({ family: family.name, id: m.id })),
      ),
    );
    return found.flat();
  }

  /** The latest drain of an instance, running or finished. */
  statusOf(instanceId: string): DrainStatus | undefined {
    return this.latest.get(instanceId)?.status();
  }

  /** Ends the latest drain of an instance if it still runs; resolves with its final status (undefined: none known). */
  async cancel(instanceId: string, why: string): Promise<DrainStatus | undefined> {
    const handle = this.latest.get(instanceId);
    handle?.cancel(why);
    return handle?.done;
  }

  running(): number {
    return this.inFlight.size;
  }

  /** Ends every running drain now (each reports how far it got) and waits for them to settle. */
  async abortAll(): Promise<void> {
    this.stopping.abort(new DOMException('the agent stopped the drain', 'AbortError'));
    await Promise.all([...this.inFlight.values()].map((handle) => handle.done));
  }

  private remember(instanceId: string, handle: DrainHandle): void {
    this.latest.delete(instanceId);
    this.latest.set(instanceId, handle);
    for (const [oldest, old] of this.latest) {
      if (this.latest.size <= HISTORY_LIMIT) break;
      if (isFinished(old.status())) this.latest.delete(oldest);
      else break;
    }
  }
}

function newStatus(instance: Instance, options: DrainOptions): DrainStatus {
  return {
    instanceId: instance.id,
    trigger: options.trigger,
    scope: describeScope(options.scope),
    state: 'draining',
    dryRun: options.dryRun,
    startedAt: new Date().toISOString(),
    deadline: options.deadline.toISOString(),
    triggers: [options.trigger],
    finishedAt: null,
    awsCalls: {},
    loadBalancers: [],
  };
}

function snapshot(status: DrainStatus): DrainStatus {
  return structuredClone(status);
}
