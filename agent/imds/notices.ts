import type { Logger } from '../log.ts';
import type { ImdsClient } from './client.ts';

export type NoticeKind = 'spot-interruption' | 'asg-termination' | 'scheduled-maintenance' | 'rebalance-recommendation';

export interface Notice {
  kind: NoticeKind;
  /** Distinct per notice: the kind and its time or event id. */
  key: string;
  /** When the instance must be out of the load balancers, if the notice says. */
  deadline: Date | undefined;
  detail: Record<string, unknown>;
}

export interface NoticesWatcherOptions {
  imds: ImdsClient;
  pollIntervalMs: number;
  drainOnRebalance: boolean;
  /** How long before a scheduled maintenance's `NotBefore` it becomes actionable. */
  maintenanceLeadMs: number;
  /** Taken off a notice's time to give the deadline. */
  deadlineMarginMs: number;
  logger: Logger;
  onNotice: (notice: Notice) => void;
  onPollError?: (err: Error) => void;
  now?: () => number;
}

const SPOT_PATH = 'latest/meta-data/spot/instance-action';
const ASG_PATH = 'latest/meta-data/autoscaling/target-lifecycle-state';
const MAINTENANCE_PATH = 'latest/meta-data/events/maintenance/scheduled';
const REBALANCE_PATH = 'latest/meta-data/events/recommendations/rebalance';

/** Event codes after which the instance is gone or rebooted; the others (e.g. network maintenance) keep it serving. */
const DISRUPTIVE_MAINTENANCE = new Set(['instance-reboot', 'system-reboot', 'system-maintenance', 'instance-retirement', 'instance-stop']);
const INACTIVE_MAINTENANCE_STATES = new Set(['completed', 'canceled']);
/** How long a drain may still try when its notice's time has already come. */
const LATE_NOTICE_GRACE_MS = 10_000;

/** Polls IMDS for signs that this instance is going away and reports each one once. */
export class NoticesWatcher {
  private readonly opts: NoticesWatcherOptions;
  private readonly now: () => number;
  private readonly reported = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  private running = false;
  private failing = false;
  private readonly malformedSeen = new Set<string>();
  private lastTick: number | undefined;
  private lastSuccess: number | undefined;

  constructor(opts: NoticesWatcherOptions) {
    this.opts = opts;
    this.now = opts.now ?? Date.now;
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

  /**
   * Every notice actionable now, without reporting any. Throws only when IMDS could not be read and
   * nothing was found: a notice read from one item is an answer even if another item failed.
   */
  async check(): Promise<Notice[]> {
    const { notices, errors } = await this.scan();
    if (notices.length === 0 && errors[0]) throw errors[0];
    return notices;
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
    const { notices, errors } = await this.scan();
    for (const notice of notices) this.report(notice);
    const firstError = errors[0];
    if (firstError) this.pollFailed(firstError);
    else this.pollSucceeded();
    this.lastTick = this.now();
  }

  private report(notice: Notice): void {
    if (this.reported.has(notice.key)) return;
    this.reported.add(notice.key);
    this.opts.logger.info({ notice }, 'instance notice');
    try {
      this.opts.onNotice(notice);
    } catch (err) {
      this.opts.logger.error({ err, notice }, 'notice handler failed');
    }
  }

  private pollFailed(err: Error): void {
    // Warn when IMDS starts failing; repeating it every poll would only bury the other logs.
    if (this.failing) this.opts.logger.debug({ err }, 'IMDS poll still failing');
    else this.opts.logger.warn({ err }, 'IMDS poll failed; will keep polling');
    this.failing = true;
    try {
      this.opts.onPollError?.(err);
    } catch (handlerErr) {
      this.opts.logger.error({ err: handlerErr }, 'poll error handler failed');
    }
  }

  private pollSucceeded(): void {
    if (this.failing) this.opts.logger.info('IMDS poll recovered');
    this.failing = false;
    this.lastSuccess = this.now();
  }

  /** Reads every item at once, so one slow item does not delay the others. */
  private async scan(): Promise<{ notices: Notice[]; errors: Error[] }> {
    const readers = [this.spotNotices(), this.asgNotices(), this.maintenanceNotices()];
    if (this.opts.drainOnRebalance) readers.push(this.rebalanceNotices());
    const results = await Promise.allSettled(readers);
    const notices: Notice[] = [];
    const errors: Error[] = [];
    for (const result of results) {
      if (result.status === 'fulfilled') notices.push(...result.value);
      else errors.push(result.reason instanceof Error ? result.reason : new Error(String(result.reason)));
    }
    return { notices, errors };
  }

  private async spotNotices(): Promise<Notice[]> {
    const action = await this.readJson(SPOT_PATH);
    if (!isRecord(action) || typeof action.action !== 'string') {
      if (action !== undefined) this.malformed(SPOT_PATH, 'no action');
      return [];
    }
    // An interruption is too important to skip for a bad time: act, with no deadline from the notice.
    const time = typeof action.time === 'string' ? Date.parse(action.time) : NaN;
    return [
      {
        kind: 'spot-interruption',
        key: `spot-interruption:${String(action.time)}`,
        deadline: this.deadlineBefore(time),
        detail: { action: action.action, time: action.time },
      },
    ];
  }

  private async asgNotices(): Promise<Notice[]> {
    const state = await this.opts.imds.get(ASG_PATH);
    // Other states (Pending, InService, Warmed:*) are no reason to leave.
    if (state?.trim() !== 'Terminated') return [];
    return [{ kind: 'asg-termination', key: 'asg-termination:Terminated', deadline: undefined, detail: { state: 'Terminated' } }];
  }

  private async maintenanceNotices(): Promise<Notice[]> {
    const events = await this.readJson(MAINTENANCE_PATH);
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
    if (!DISRUPTIVE_MAINTENANCE.has(event.Code)) return undefined;
    if (typeof event.State === 'string' && INACTIVE_MAINTENANCE_STATES.has(event.State)) return undefined;
    // NotBefore looks like "21 Jan 2019 09:00:43 GMT", which Date.parse reads.
    const notBefore = typeof event.NotBefore === 'string' ? Date.parse(event.NotBefore) : NaN;
    if (Number.isNaN(notBefore)) {
      this.malformed(MAINTENANCE_PATH, `event ${event.EventId} has no readable NotBefore`);
      return undefined;
    }
    if (this.now() < notBefore - this.opts.maintenanceLeadMs) return undefined;
    return {
      kind: 'scheduled-maintenance',
      key: `scheduled-maintenance:${event.EventId}`,
      deadline: this.deadlineBefore(notBefore),
      detail: { ...event },
    };
  }

  private async rebalanceNotices(): Promise<Notice[]> {
    const recommendation = await this.readJson(REBALANCE_PATH);
    if (recommendation === undefined) return [];
    if (!isRecord(recommendation) || typeof recommendation.noticeTime !== 'string') {
      this.malformed(REBALANCE_PATH, 'no noticeTime');
      return [];
    }
    return [
      {
        kind: 'rebalance-recommendation',
        key: `rebalance-recommendation:${recommendation.noticeTime}`,
        deadline: undefined,
        detail: { noticeTime: recommendation.noticeTime },
      },
    ];
  }

  /** The item's JSON, or `undefined` when it is absent or not JSON (logged). */
  private async readJson(path: string): Promise<unknown> {
    const body = await this.opts.imds.get(path);
    if (body === undefined) return undefined;
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
   * `time` less the margin. A notice seen too late for the margin gets until `time` itself, and one seen
   * after its time a short grace: a deadline of "now" would abort the drain before its first call.
   */
  private deadlineBefore(time: number): Date | undefined {
    if (Number.isNaN(time)) return undefined;
    const now = this.now();
    if (time - this.opts.deadlineMarginMs > now) return new Date(time - this.opts.deadlineMarginMs);
    return new Date(Math.max(time, now + LATE_NOTICE_GRACE_MS));
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
