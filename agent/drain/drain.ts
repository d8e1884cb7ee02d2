/**
 * One drain of one instance: find every membership across the families, deregister them all, and
 * watch until each is out or the deadline passes. A failure on one load balancer never stops the
 * others; transient errors are retried until the deadline, permanent ones are reported at once.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { isPermanent, isThrottling, explain } from '../aws/errors.ts';
import type { Logger } from '../log.ts';
import type { CallContext, LoadBalancerFamily, Membership, Scope } from './family.ts';
import { describeScope, PartialDiscoveryError } from './family.ts';
import type { Instance } from './instance.ts';
import { backoff } from './retry.ts';
import type { DrainStatus, LoadBalancerStatus, Trigger } from './status.ts';

export interface DrainOptions {
  readonly trigger: Trigger;
  readonly scope: Scope;
  readonly deadline: Date;
  readonly dryRun: boolean;
  /**
   * Load balancers already known to hold the instance (what a coordinator that could not finish had
   * reported): taken out at once, while discovery still looks for the rest. A spot wave's agents falling
   * back together then deregister before any of them waits on the throttled tagging API.
   */
  readonly startFrom?: readonly LoadBalancerStatus[];
}

export interface DrainObserver {
  loadBalancerSettled?(family: string, state: LoadBalancerStatus['state']): void;
  finished?(status: DrainStatus, durationMs: number): void;
}

/**
 * How often a deregistered membership is asked whether it is out yet: soon at first (moto, and load
 * balancers without a deregistration delay, let go at once), then every 15 s at most, because a
 * spot wave's nodes all wait through minutes of connection draining on one shared describe budget.
 */
const FIRST_CHECK_MS = 500;
const MAX_CHECK_MS = 15_000;
/** Retries after a throttle start later than after other errors: the account's whole budget is short. */
const RETRY_BASE_MS = 250;
const THROTTLED_RETRY_BASE_MS = 1_000;

const retryDelay = (attempt: number, error: unknown, signal: AbortSignal) => backoff(attempt, signal, isThrottling(error) ? THROTTLED_RETRY_BASE_MS : RETRY_BASE_MS);

/** What kept a drain from success: load balancers that could not be listed for good, or not before the deadline. */
interface Shortfall {
  readonly failures: string[];
  readonly unfinished: string[];
  /** What a success should still mention (e.g. an inventory that could not be refreshed). */
  readonly notes: string[];
}

export async function runDrain(
  instance: Instance,
  options: DrainOptions,
  families: readonly LoadBalancerFamily[],
  status: DrainStatus,
  signal: AbortSignal,
  logger: Logger,
  observer: DrainObserver = {},
): Promise<void> {
  const started = Date.now();
  const log = logger.child({ instanceId: instance.id, trigger: options.trigger, scope: describeScope(options.scope) });
  const ctx: CallContext = { signal };
  log.info({ deadline: options.deadline.toISOString(), dryRun: options.dryRun }, 'drain started');

  const shortfall: Shortfall = { failures: [], unfinished: [], notes: [] };
  await Promise.all(
    families.map(async (family) => {
      const takingOut: Promise<void>[] = [];
      const known = (options.startFrom ?? []).flatMap((lb) => (lb.family === family.name ? [family.fromSummary(lb, instance)].filter((m) => m !== undefined) : []));
      // Each membership is taken out as soon as it is found, while discovery goes on for the rest.
      await discover(family, instance, options.scope, ctx, shortfall, log, known, (membership) => {
        const delay = membership.deregistrationDelaySeconds;
        const entry: LoadBalancerStatus = { family: family.name, ...membership.summary, state: 'draining', ...(delay === undefined ? {} : { deregistrationDelaySeconds: delay }) };
        status.loadBalancers.push(entry);
        if (options.dryRun) {
          entry.reason = 'dry run: not deregistered';
          return;
        }
        takingOut.push(
          takeOut(family, membership, entry, ctx, log.child({ family: family.name, loadBalancer: membership.id })).then(() => {
            if (entry.state !== 'draining') observer.loadBalancerSettled?.(family.name, entry.state);
          }),
        );
      });
      await Promise.all(takingOut);
    }),
  );

  // Aborted other than by the deadline: the agent is stopping (a second signal, the end of a grace period),
  // or the node was given back; the abort's reason says which.
  const reason = signal.reason as Error | undefined;
  const interrupted = signal.aborted && reason?.name !== 'TimeoutError' ? reason?.message ?? 'the agent stopped the drain' : undefined;
  settle(status, shortfall, options.dryRun, interrupted);
  status.finishedAt = new Date().toISOString();
  const durationMs = Date.now() - started;
  observer.finished?.(status, durationMs);
  log[status.state === 'deregistered' || status.state === 'skipped' ? 'info' : 'warn']({ durationMs, status }, `drain ${status.state}`);
}

/**
 * Hands each of one family's memberships to `found` once: the `known` ones at once, then each new one
 * discovery finds, asking again (until the deadline) while some load balancers could not be read; what
 * stays unread is kept in `shortfall`.
 */
async function discover(
  family: LoadBalancerFamily,
  instance: Instance,
  scope: Scope,
  ctx: CallContext,
  shortfall: Shortfall,
  log: Logger,
  known: readonly Membership[],
  found: (membership: Membership) => void,
): Promise<void> {
  const seen = new Set<string>();
  const take = (memberships: Membership[]) => {
    const fresh = memberships.filter((membership) => !seen.has(membership.id));
    for (const membership of fresh) {
      seen.add(membership.id);
      found(membership);
    }
    if (fresh.length > 0) log.debug({ family: family.name, found: fresh.map((m) => m.id) }, 'memberships found');
  };
  take([...known]);
  for (let attempt = 0; ; attempt++) {
    let failure: unknown;
    try {
      const note = (text: string) => {
        if (!shortfall.notes.includes(text)) shortfall.notes.push(text);
      };
      take(await family.memberships(instance, scope, { ...ctx, found: (membership) => take([membership]), note }));
      return;
    } catch (error) {
      failure = error instanceof PartialDiscoveryError ? error.cause : error;
      if (error instanceof PartialDiscoveryError) take(error.found);
    }
    const problem = `could not list ${family.name} load balancers: ${explain(failure, 'the describe actions')}`;
    if (isPermanent(failure)) {
      shortfall.failures.push(problem);
      log.error({ family: family.name, err: failure }, problem);
      return;
    }
    log.warn({ family: family.name, attempt, err: failure }, `${problem}; retrying`);
    try {
      if (ctx.signal.aborted) throw failure;
      await retryDelay(attempt, failure, ctx.signal);
    } catch {
      shortfall.unfinished.push(`${problem} before the deadline`);
      return;
    }
  }
}

/** Deregisters one membership, then waits until it is out. Leaves `entry` as far as it got by the deadline. */
async function takeOut(family: LoadBalancerFamily, membership: Membership, entry: LoadBalancerStatus, ctx: CallContext, log: Logger): Promise<void> {
  const started = Date.now();
  for (let attempt = 0; entry.deregisteredAt === undefined; attempt++) {
    try {
      await family.deregister(membership, ctx);
      // One reading of the clock for both: out at the latest exactly one delay after the deregistration.
      const deregisteredAt = Date.now();
      entry.deregisteredAt = new Date(deregisteredAt).toISOString();
      if (entry.deregistrationDelaySeconds !== undefined) entry.expectedOutAt = new Date(deregisteredAt + entry.deregistrationDelaySeconds * 1000).toISOString();
      delete entry.reason;
      log.info({ ms: Date.now() - started }, 'deregistered');
    } catch (error) {
      if (!(await failOrWait(error, attempt, entry, ctx, log, 'deregister'))) return;
    }
  }
  for (let attempt = 0, delay = FIRST_CHECK_MS; ; attempt++) {
    try {
      const check = await family.isOut(membership, ctx);
      if (check.out) {
        entry.state = 'out';
        entry.outAt = new Date().toISOString();
        delete entry.reason;
        log.info({ ms: Date.now() - started }, 'out');
        return;
      }
      entry.reason = check.detail;
      await sleep(delay, undefined, { signal: ctx.signal });
      delay = Math.min(MAX_CHECK_MS, delay * 2);
    } catch (error) {
      if (!(await failOrWait(error, attempt, entry, ctx, log, 'check'))) return;
    }
  }
}

/** After an error: false to stop (permanent, or the deadline passed), true once it is time to retry. */
async function failOrWait(error: unknown, attempt: number, entry: LoadBalancerStatus, ctx: CallContext, log: Logger, step: 'deregister' | 'check'): Promise<boolean> {
  if (ctx.signal.aborted) return false;
  const action = step === 'deregister' ? 'the deregister action' : 'the describe health action';
  if (isPermanent(error)) {
    entry.state = 'failed';
    entry.reason = explain(error, action);
    log.error({ err: error, step }, `${step} failed`);
    return false;
  }
  entry.reason = `retrying after: ${explain(error, action)}`;
  log.warn({ err: error, step, attempt }, `${step} failed; retrying`);
  try {
    await retryDelay(attempt, error, ctx.signal);
    return true;
  } catch {
    return false;
  }
}

/** What says why a drain timed out when a load balancer's deregistration delay ends after the deadline. */
function outlasting(status: DrainStatus): string[] {
  return status.loadBalancers
    .filter((lb) => lb.state === 'draining' && lb.expectedOutAt !== undefined && lb.expectedOutAt > status.deadline)
    .map((lb) => `${String(lb.name ?? lb.arn)}'s deregistration delay of ${lb.deregistrationDelaySeconds} s outlasts the deadline (out at ${lb.expectedOutAt}): shorten it to fit the time a notice gives`);
}

/** The overall state, from what each load balancer reached: success only where every one was seen out. */
function settle(status: DrainStatus, { failures, unfinished, notes }: Shortfall, dryRun: boolean, interrupted: string | undefined): void {
  const draining = status.loadBalancers.filter((lb) => lb.state === 'draining').length;
  const failed = status.loadBalancers.filter((lb) => lb.state === 'failed').length;
  const problems = [...failures, ...unfinished];
  if (dryRun) {
    status.state = problems.length > 0 ? 'failed' : 'skipped';
    status.reason = [`dry run: would deregister from ${status.loadBalancers.length} load balancer(s), changed nothing`, ...problems].join('; ');
  } else if (interrupted !== undefined && (draining > 0 || unfinished.length > 0)) {
    status.state = 'failed';
    status.reason = [`interrupted: ${interrupted} with ${draining} load balancer(s) not yet out`, ...problems].join('; ');
  } else if (draining > 0 || unfinished.length > 0) {
    status.state = 'timed_out';
    status.reason = [...(draining > 0 ? [`deadline passed with ${draining} load balancer(s) not yet out`] : []), ...outlasting(status), ...problems].join('; ');
  } else if (failed > 0 || failures.length > 0) {
    status.state = 'failed';
    status.reason = [...(failed > 0 ? [`${failed} load balancer(s) failed`] : []), ...failures].join('; ');
  } else {
    status.state = 'deregistered';
    const nothing = status.loadBalancers.length === 0 ? ['not registered with any load balancer in scope'] : [];
    if (nothing.length + notes.length > 0) status.reason = [...nothing, ...notes].join('; ');
  }
}
