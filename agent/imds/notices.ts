import type { Logger } from '../log.ts';
import { ImdsUnavailableError, type ImdsClient } from './client.ts';

export type NoticeKind = 'spot-interruption' | 'asg-termination' | 'asg-warm-pool' | 'scheduled-maintenance' | 'rebalance-recommendation';

export interface Notice {
  readonly kind: NoticeKind;
  /** The same notice from poll to poll: its kind, and for maintenance `scheduled-maintenance:<EventId>`. */
  readonly key: string;
  /** When the instance must be out of the load balancers, if the notice says; it may move between polls. */
  readonly deadline: Date | undefined;
  /** The instance ends with it: once seen, it stays active for the life of the process, even when IMDS drops it. */
  readonly sticky: boolean;
  readonly detail: Readonly<Record<string, unknown>>;
}

/** For /readyz: whether IMDS notices can be read now. */
export type NoticesHealth = { readonly ok: true } | { readonly ok: false; readonly reason: string };

export interface NoticesWatcherOptions {
  imds: ImdsClient;
  pollIntervalMs: number;
  drainOnRebalance: boolean;
  /** How long before a scheduled maintenance's `NotBefore` it becomes actionable. */
  maintenanceLeadMs: number;
  /** Taken off a notice's time to give the deadline. */
  deadlineMarginMs: number;
  logger: Logger;
  /** Every notice active now, after each poll that changed them: one added or passed, or a deadline moved. */
  onNotices: (active: readonly Notice[]) => void;
  /** Once per failed poll. */
  onPollError?: (err: Error) => void;
  now?: () => number;
}

const SPOT_PATH = 'latest/meta-data/spot/instance-action';
const ASG_PATH = 'latest/meta-data/autoscaling/target-lifecycle-state';
const MAINTENANCE_PATH = 'latest/meta-data/events/maintenance/scheduled';
const REBALANCE_PATH = 'latest/meta-data/events/recommendations/rebalance';

/** The event codes EC2 documents; every one takes the instance down for a while. */
const MAINTENANCE_CODES = new Set(['instance-reboot', 'system-reboot', 'system-maintenance', 'instance-retirement', 'instance-stop']);
/** Network (or power) maintenance: out for the event's window, from NotBefore to NotAfter, then back. */
const WINDOWED_MAINTENANCE = 'system-maintenance';
const INACTIVE_MAINTENANCE_STATES = new Set(['completed', 'canceled']);

/** Target lifecycle states after which the instance is gone. */
const ENDING_STATES = new Set(['Terminated', 'Warmed:Terminated']);
/** A warm pool's instance about to be stopped or hibernated: out until it is InService again. */
const STOPPING_STATES = new Set(['Warmed:Stopped', 'Warmed:Hibernated']);
/** Auto Scaling's lifecycle states (API `LifecycleState`, plus `Warmed:Hibernated`); anything else is logged once. */
const KNOWN_STATES = new Set([
  'Pending', 'Pending:Wait', 'Pending:Proceed', 'Quarantined', 'InService', 'Terminating', 'Terminating:Wait', 'Terminating:Proceed',
  'Terminated', 'Detaching', 'Detached', 'EnteringStandby', 'Standby', 'Warmed:Pending', 'Warmed:Pending:Wait', 'Warmed:Pending:Proceed',
  'Warmed:Terminating', 'Warmed:Terminating:Wait', 'Warmed:Terminating:Proceed', 'Warmed:Terminated', 'Warmed:Stopped', 'Warmed:Running',
  'Warmed:Hibernated',
]);

/** How long a drain may still try when its notice's time has already come. */
const LATE_NOTICE_GRACE_MS = 10_000;

/**
 * Polls IMDS for signs that this instance is going away and keeps the set of notices active now: a
 * notice that passes (a canceled maintenance, a warm-pool instance InService again) leaves the set, one
 * that ends the instance never does.
 */
export class NoticesWatcher {
  private readonly opts: NoticesWatcherOptions;
  private readonly now: () => number;
  private readonly paths: readonly string[];
  /** Each item's last body read (`undefined`: absent); a failed read keeps the one before. */
  private readonly readings = new Map<string, string | undefined>();
  private readonly stickySeen = new Map<string, Notice>();
  /** When each active notice's time was first seen: a late notice's grace counts from then, so its deadline holds still. */
  private readonly timeSeen = new Map<string, { time: number; at: number }>();
  private reported: readonly Notice[] = [];
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  private running = false;
  /** Why the last poll failed; undefined after a poll that read every item. */
  private failure: { cause: string; reason: string } | undefined;
  private readonly malformedSeen = new Set<string>();
  private lastTick: number | undefined;
  private lastSuccess: number | undefined;

  constructor(opts: NoticesWatcherOptions) {
    this.opts = opts;
    this.now = opts.now ?? Date.now;
    this.paths = [SPOT_PATH, ASG_PATH, MAINTENANCE_PATH, ...(opts.drainOnRebalance ? [REBALANCE_PATH] : [])];
  }

  /** Polls at once, then `pollIntervalMs` after each poll ends, so polls never overlap. */
  start(): void {
    if (this.running) return;
    this.running = true;
    // A poll still ending after stop() schedules the next one itself.
    if (!this.polling) this.schedule(0);
  }

  /** Stops polling; resolves once a poll in progress has ended. */
  async stop(): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.polling;
  }

  /** Time of the last poll that ended, whether IMDS answered or not: the loop is alive. */
  lastTickAt(): number | undefined {
    return this.lastTick;
  }

  /** Time of the last poll in which every item was read. */
  lastSuccessAt(): number | undefined {
    return this.lastSuccess;
  }

  /** Not ok before the first poll and while polls fail: notices may then be missed. */
  health(): NoticesHealth {
    if (this.lastTick === undefined) return { ok: false, reason: 'no IMDS poll has finished yet' };
    return this.failure ? { ok: false, reason: this.failure.reason } : { ok: true };
  }

  /**
   * Every notice actionable now, sticky ones included, without reporting them. Throws only when an item
   * could not be read and no notice is active: a notice found is an answer even if another item failed.
   */
  async check(): Promise<Notice[]> {
    const errors = await this.read();
    const active = this.active();
    if (active.length === 0 && errors[0]) throw errors[0];
    return active;
  }

  private schedule(delayMs: number): void {
    this.timer = setTimeout(() => {
      this.polling = this.poll().finally(() => {
        this.polling = undefined;
        if (this.running) this.schedule(this.opts.pollIntervalMs);
      });
    }, delayMs);
  }

  /** Never rejects: it runs from a timer. */
  private async poll(): Promise<void> {
    const errors = await this.read();
    this.report(this.active());
    if (errors.length > 0) this.pollFailed(errors);
    else this.pollSucceeded();
    this.lastTick = this.now();
  }

  /** Reads every item at once, so one slow item does not delay the others; returns the failures. */
  private async read(): Promise<Error[]> {
    const results = await Promise.allSettled(this.paths.map((path) => this.opts.imds.get(path)));
    const errors: Error[] = [];
    results.forEach((result, i) => {
      if (result.status === 'fulfilled') this.readings.set(this.paths[i]!, result.value);
      else errors.push(result.reason instanceof Error ? result.reason : new Error(String(result.reason)));
    });
    return errors;
  }

  /** The notices the readings give now, plus every sticky one seen before; sorted by key. */
  private active(): Notice[] {
    const byKey = new Map<string, Notice>();
    for (const [path, body] of this.readings) for (const notice of this.noticesOf(path, body)) byKey.set(notice.key, notice);
    for (const notice of byKey.values()) if (notice.sticky) this.stickySeen.set(notice.key, notice);
    for (const [key, notice] of this.stickySeen) if (!byKey.has(key)) byKey.set(key, notice);
    for (const key of this.timeSeen.keys()) if (!byKey.has(key)) this.timeSeen.delete(key);
    // By code unit, not localeCompare: the keys are ASCII, and the first collation loads ICU data (3 MiB).
    return [...byKey.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  private report(active: readonly Notice[]): void {
    const before = new Map(this.reported.map((notice) => [notice.key, notice]));
    const now = new Map(active.map((notice) => [notice.key, notice]));
    const added = active.filter((notice) => !before.has(notice.key)).map((notice) => notice.key);
    const passed = this.reported.filter((notice) => !now.has(notice.key)).map((notice) => notice.key);
    const moved = active
      .filter((notice) => before.has(notice.key) && before.get(notice.key)!.deadline?.getTime() !== notice.deadline?.getTime())
      .map((notice) => notice.key);
    if (added.length + passed.length + moved.length === 0) return;
    this.reported = active;
    this.opts.logger.info({ added, passed, moved, notices: active }, 'instance notices changed');
    try {
      this.opts.onNotices(active);
    } catch (err) {
      this.opts.logger.error({ err }, 'notices handler failed');
    }
  }

  private pollFailed(errors: readonly Error[]): void {
    const reasons = [...new Set(errors.map((err) => (err instanceof ImdsUnavailableError ? err.reason : err.message)))].sort();
    const cause = reasons.join('; ');
    const paths = errors.flatMap((err) => (err instanceof ImdsUnavailableError ? [err.path] : []));
    // Warn when the cause changes; repeating it every poll would only bury the other logs.
    if (this.failure?.cause === cause) this.opts.logger.debug({ paths, cause }, 'IMDS poll still failing');
    else this.opts.logger.warn({ paths, cause, err: errors[0] }, 'IMDS poll failed; will keep polling');
    this.failure = { cause, reason: `IMDS notices cannot be read (${paths.join(', ') || 'IMDS'}): ${cause}` };
    try {
      this.opts.onPollError?.(errors[0]!);
    } catch (handlerErr) {
      this.opts.logger.error({ err: handlerErr }, 'poll error handler failed');
    }
  }

  private pollSucceeded(): void {
    if (this.failure) this.opts.logger.info({ was: this.failure.cause }, 'IMDS poll recovered');
    this.failure = undefined;
    this.lastSuccess = this.now();
  }

  private noticesOf(path: string, body: string | undefined): Notice[] {
    if (body === undefined) return [];
    switch (path) {
      case SPOT_PATH:
        return this.spotNotices(body);
      case ASG_PATH:
        return this.asgNotices(body);
      case MAINTENANCE_PATH:
        return this.maintenanceNotices(body);
      default:
        return this.rebalanceNotices(body);
    }
  }

  private spotNotices(body: string): Notice[] {
    const action = this.parseJson(SPOT_PATH, body);
    if (!isRecord(action) || typeof action.action !== 'string') {
      if (action !== undefined) this.malformed(SPOT_PATH, 'no action');
      return [];
    }
    // An interruption is too important to skip for a bad time: act, with no deadline from the notice.
    const time = typeof action.time === 'string' ? Date.parse(action.time) : NaN;
    const key = 'spot-interruption';
    return [{ kind: key, key, deadline: this.deadlineBefore(key, time), sticky: true, detail: { action: action.action, time: action.time } }];
  }

  private asgNotices(body: string): Notice[] {
    const state = body.trim();
    if (ENDING_STATES.has(state)) return [{ kind: 'asg-termination', key: 'asg-termination', deadline: undefined, sticky: true, detail: { state } }];
    // No deadline in the item: the stop waits for the lifecycle hooks, if any.
    if (STOPPING_STATES.has(state)) return [{ kind: 'asg-warm-pool', key: 'asg-warm-pool', deadline: undefined, sticky: false, detail: { state } }];
    if (!KNOWN_STATES.has(state)) this.malformed(ASG_PATH, `unknown state ${JSON.stringify(state)}`);
    return [];
  }

  private maintenanceNotices(body: string): Notice[] {
    const events = this.parseJson(MAINTENANCE_PATH, body);
    if (events === undefined) return [];
    if (!Array.isArray(events)) {
      this.malformed(MAINTENANCE_PATH, 'not an array');
      return [];
    }
    return events.flatMap((event: unknown) => {
      const notice = this.maintenanceNotice(event);
      return notice ? [notice] : [];
    });
  }

  private maintenanceNotice(event: unknown): Notice | undefined {
    if (!isRecord(event) || typeof event.Code !== 'string' || typeof event.EventId !== 'string') {
      this.malformed(MAINTENANCE_PATH, 'an event without Code or EventId');
      return undefined;
    }
    if (!MAINTENANCE_CODES.has(event.Code)) {
      this.malformed(MAINTENANCE_PATH, `unknown event code ${event.Code}`);
      return undefined;
    }
    if (typeof event.State === 'string' && INACTIVE_MAINTENANCE_STATES.has(event.State)) return undefined;
    // NotBefore looks like "21 Jan 2019 09:00:43 GMT" (or "2 Jan…"), which Date.parse reads.
    const notBefore = typeof event.NotBefore === 'string' ? Date.parse(event.NotBefore) : NaN;
    if (Number.isNaN(notBefore)) {
      this.malformed(MAINTENANCE_PATH, `event ${event.EventId} has no readable NotBefore`);
      return undefined;
    }
    const now = this.now();
    if (now < notBefore - this.opts.maintenanceLeadMs) return undefined;
    const notAfter = typeof event.NotAfter === 'string' ? Date.parse(event.NotAfter) : NaN;
    if (event.Code === WINDOWED_MAINTENANCE && now >= notAfter) return undefined;
    const key = `scheduled-maintenance:${event.EventId}`;
    return { kind: 'scheduled-maintenance', key, deadline: this.deadlineBefore(key, notBefore), sticky: false, detail: { ...event } };
  }

  private rebalanceNotices(body: string): Notice[] {
    const recommendation = this.parseJson(REBALANCE_PATH, body);
    if (!isRecord(recommendation) || typeof recommendation.noticeTime !== 'string') {
      if (recommendation !== undefined) this.malformed(REBALANCE_PATH, 'no noticeTime');
      return [];
    }
    const key = 'rebalance-recommendation';
    return [{ kind: key, key, deadline: undefined, sticky: true, detail: { noticeTime: recommendation.noticeTime } }];
  }

  /** The item's JSON, or `undefined` when it is not JSON (logged). */
  private parseJson(path: string, body: string): unknown {
    try {
      return JSON.parse(body) as unknown;
    } catch {
      this.malformed(path, 'not JSON');
      return undefined;
    }
  }

  /** Warns once per kind of fault: the same bad item is read again every poll. */
  private malformed(path: string, why: string): void {
    const key = `${path}: ${why}`;
    const level = this.malformedSeen.has(key) ? 'debug' : 'warn';
    this.malformedSeen.add(key);
    this.opts.logger[level]({ path, why }, 'ignoring malformed IMDS item');
  }

  /**
   * `time` less the margin. A time seen too late for the margin gives until `time` itself, and one seen
   * after it has come a short grace from when it was seen: a deadline of "now" would abort the drain
   * before its first call.
   */
  private deadlineBefore(key: string, time: number): Date | undefined {
    if (Number.isNaN(time)) return undefined;
    const seen = this.timeSeen.get(key);
    const seenAt = seen?.time === time ? seen.at : this.now();
    this.timeSeen.set(key, { time, at: seenAt });
    if (time - this.opts.deadlineMarginMs > seenAt) return new Date(time - this.opts.deadlineMarginMs);
    return new Date(Math.max(time, seenAt + LATE_NOTICE_GRACE_MS));
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
