/**
 * How long each of the cluster's load balancers keeps a deregistered instance before it is out: a
 * target group's `deregistration_delay.timeout_seconds` (AWS's default is 300 s), a classic ELB's
 * connection-draining timeout (0 when draining is off). A spot notice gives two minutes, so a delay
 * longer than about 100 s can never be over in time, whatever the agent does: that is said once when it
 * is first seen and whenever it changes (log, Event, and the gauge
 * hasta_la_vista_deregistration_delay_seconds), with the setting that fixes it.
 *
 * Read with the kept inventory, when it is refreshed in the background (by the coordinator alone, in a
 * coordinated cluster), never during a drain: a spot wave must not spend its describe budget on
 * settings that change a few times a year. A load balancer's delay is read when it first appears and
 * again every REREAD_MS: agents that keep an inventory each (no coordinator) would otherwise double
 * their idle describe calls. A drain uses what was read last.
 */
import { pool } from './batches.ts';
import { sdk, type AwsClients } from './clients.ts';
import { errorCode, errorMessage, isPermissionError } from './errors.ts';
import { LOAD_BALANCER_GONE, TARGET_GROUP_GONE, whileThrottled, type Inventory } from './inventory.ts';
import type { Logger } from '../log.ts';

export interface DeregistrationDelay {
  /** Also what the gauge's `load_balancer` label shows: a classic ELB's name, a target group's name. */
  readonly name: string;
  readonly seconds: number;
  /** NLB target groups: connections are closed at the end of the delay (deregistration_delay.connection_termination.enabled). */
  readonly connectionTermination?: boolean;
}

/** Longer than this, a delay cannot end within a spot notice's two minutes less the margin. */
export const LONGEST_SPOT_SAFE_DELAY_SECONDS = 100;
/** Settings read at once: a few, so that a large cluster's refresh is no burst against the describe budget. */
const CONCURRENT_READS = 4;
/** How long a delay read is trusted: a changed one is seen (and warned about) within this time. */
export const REREAD_MS = 6 * 3600_000;

export interface DelayListener {
  /** Every delay read, to publish (the gauge). */
  readonly read?: (delays: readonly DeregistrationDelay[]) => void;
  /** A delay too long for a spot notice, first seen or changed: `fix` says which setting to change. */
  readonly tooLong?: (delay: DeregistrationDelay, fix: string) => void;
}

/** Where a family finds the delay of a load balancer it found the instance in. */
export interface DelaySource {
  of(id: string): DeregistrationDelay | undefined;
}

export class DeregistrationDelays implements DelaySource {
  /** By classic ELB name or target group ARN, as memberships are identified; with when each was read. */
  private delays = new Map<string, DeregistrationDelay & { readonly readAt: number }>();
  private denied = false;

  constructor(
    private readonly clients: Pick<AwsClients, 'elb' | 'elbv2'>,
    private readonly vpcId: string,
    private readonly logger: Logger,
    private readonly listener: DelayListener = {},
    private readonly now: () => number = Date.now,
  ) {}

  /** The delay of a classic ELB (by name) or target group (by ARN), if it has been read. */
  of(id: string): DeregistrationDelay | undefined {
    return this.delays.get(id);
  }

  /**
   * Reads the delays of the inventory's load balancers that are new or read longest ago; forgets those it
   * no longer holds. On failure, keeps what it had.
   */
  async refresh(inventory: Inventory, signal: AbortSignal): Promise<void> {
    if (this.denied) return;
    const now = this.now();
    const stale = (id: string) => (this.delays.get(id)?.readAt ?? -Infinity) <= now - REREAD_MS;
    const groups = [...inventory.groups.values()].filter((group) => group.VpcId === this.vpcId && group.TargetGroupArn);
    const all = [
      ...[...inventory.classic.keys()].map((name) => ({ id: name, read: () => this.classicDelay(name, signal) })),
      ...groups.map((group) => ({ id: group.TargetGroupArn!, read: () => this.groupDelay(group.TargetGroupArn!, group.TargetGroupName ?? group.TargetGroupArn!, signal) })),
    ];
    const reads = all.filter(({ id }) => stale(id));
    let results: [string, DeregistrationDelay | undefined][];
    try {
      results = await pool(reads, CONCURRENT_READS, async ({ id, read }) => [id, await read()] as [string, DeregistrationDelay | undefined]);
    } catch (error) {
      if (isPermissionError(error)) {
        this.denied = true;
        this.logger.warn(
          { err: error },
          'reading deregistration delays is denied: a delay too long for a spot notice will not be reported; grant elasticloadbalancing:DescribeTargetGroupAttributes and elasticloadbalancing:DescribeLoadBalancerAttributes (deploy/iam-policy.json)',
        );
        return;
      }
      this.logger.warn({ err: error }, `could not read the deregistration delays (${errorMessage(error)}); keeping the ones read before`);
      return;
    }
    const held = new Set(all.map(({ id }) => id));
    const next = new Map([...this.delays].filter(([id]) => held.has(id)));
    for (const [id, delay] of results) {
      if (!delay) {
        next.delete(id);
        continue;
      }
      const before = this.delays.get(id);
      if (delay.seconds > LONGEST_SPOT_SAFE_DELAY_SECONDS && before?.seconds !== delay.seconds) this.listener.tooLong?.(delay, fixFor(id, delay));
      next.set(id, { ...delay, readAt: now });
    }
    this.delays = next;
    this.listener.read?.([...next.values()].map(({ name, seconds, connectionTermination }) => ({ name, seconds, ...(connectionTermination === undefined ? {} : { connectionTermination }) })));
  }

  private async groupDelay(arn: string, name: string, signal: AbortSignal): Promise<DeregistrationDelay | undefined> {
    const [elbv2, { DescribeTargetGroupAttributesCommand }] = await Promise.all([this.clients.elbv2(), sdk.elbv2()]);
    const answer = await whileThrottled(() => elbv2.send(new DescribeTargetGroupAttributesCommand({ TargetGroupArn: arn }), { abortSignal: signal }), signal).catch(goneIsUndefined(TARGET_GROUP_GONE));
    if (!answer) return undefined;
    const value = (key: string) => answer.Attributes?.find((attribute) => attribute.Key === key)?.Value;
    const seconds = Number(value('deregistration_delay.timeout_seconds') ?? 300);
    const termination = value('deregistration_delay.connection_termination.enabled');
    return { name, seconds, ...(termination === undefined ? {} : { connectionTermination: termination === 'true' }) };
  }

  private async classicDelay(name: string, signal: AbortSignal): Promise<DeregistrationDelay | undefined> {
    const [elb, { DescribeLoadBalancerAttributesCommand }] = await Promise.all([this.clients.elb(), sdk.elb()]);
    const answer = await whileThrottled(() => elb.send(new DescribeLoadBalancerAttributesCommand({ LoadBalancerName: name }), { abortSignal: signal }), signal).catch(goneIsUndefined(CLASSIC_GONE));
    if (!answer) return undefined;
    const draining = answer.LoadBalancerAttributes?.ConnectionDraining;
    return { name, seconds: draining?.Enabled ? (draining.Timeout ?? 300) : 0 };
  }
}

/** The classic API names a missing load balancer by its code or by the SDK's exception. */
const CLASSIC_GONE = new Set([...LOAD_BALANCER_GONE, 'AccessPointNotFoundException']);

/** A load balancer deleted since the inventory found it has no delay to report. */
function goneIsUndefined(gone: ReadonlySet<string>): (error: unknown) => undefined {
  return (error) => {
    if (gone.has(errorCode(error) ?? '')) return undefined;
    throw error;
  };
}

/** The setting that shortens the delay, where the load balancer comes from. */
function fixFor(id: string, delay: DeregistrationDelay): string {
  if (!id.startsWith('arn:')) {
    return `set the classic ELB's connection-draining timeout to 30 s or less: the Service annotation service.beta.kubernetes.io/aws-load-balancer-connection-draining-timeout: "30" (or aws elb modify-load-balancer-attributes --load-balancer-name ${delay.name})`;
  }
  return (
    'set deregistration_delay.timeout_seconds=30 or less: for a Service, the annotation service.beta.kubernetes.io/aws-load-balancer-target-group-attributes: deregistration_delay.timeout_seconds=30; ' +
    'for an Ingress, alb.ingress.kubernetes.io/target-group-attributes: deregistration_delay.timeout_seconds=30; for a TargetGroupBinding or a group of your own, aws elbv2 modify-target-group-attributes'
  );
}
