/**
 * ELBv2 target groups (behind application and network load balancers). A target group is in scope
 * when it, or one of its load balancers, carries the cluster tag. The instance is a member as its
 * id (type instance) or as any of its private addresses, delegated prefixes included (type ip); each
 * registered Target (id and port: one target on two ports is two targets) is deregistered exactly.
 * Out means DescribeTargetHealth no longer lists the target, or says "unused"; "draining" is not out.
 *
 * Drains running together share their calls (see coalescer.ts): one DescribeTargetHealth of a group
 * answers every drain's discovery and "out yet?" within the window, and one DeregisterTargets carries
 * every drain's targets of the group.
 */
import type { ElasticLoadBalancingV2Client, TargetDescription, TargetGroup, TargetHealthDescription } from '@aws-sdk/client-elastic-load-balancing-v2';
import { sdk, type LazyClient } from './clients.ts';
import { BATCH_WINDOW_MS, Coalescer } from './coalescer.ts';
import { allOrPartial, type CallContext, type DiscoveryContext, type LoadBalancerFamily, type Membership, type OutCheck, type Scope } from '../drain/family.ts';
import type { Instance } from '../drain/instance.ts';
import { describeSurvivors } from './batches.ts';
import { errorCode } from './errors.ts';
import { fromKnownThenFresh, type Inventory, type InventorySource } from './inventory.ts';
import type { Logger } from '../log.ts';
import type { DelaySource } from './deregistration-delays.ts';
import { instanceHoldsAddress } from '../drain/addresses.ts';
import { inScope, type Tags } from './tags.ts';

export interface TargetGroupMembership extends Membership {
  readonly arn: string;
  readonly targets: readonly TargetDescription[];
}

const GONE = new Set(['TargetGroupNotFound', 'TargetGroupNotFoundException']);
/** Real AWS succeeds deregistering an absent target; some emulators answer InvalidTarget. Either way it is out. */
const TARGET_ABSENT = 'InvalidTarget';
/**
 * States in which the load balancer may still send the target new connections. `draining` (deregistered,
 * finishing what it has) and `unused` are on their way out: the keep-out re-check must not count them.
 */
const SERVING_STATES = new Set(['initial', 'healthy', 'unhealthy', 'unhealthy.draining', 'unavailable']);
/** AWS documents no per-call limit for DeregisterTargets; calls of this size stay well within request limits. */
const TARGETS_PER_CALL = 100;

export class TargetGroupFamily implements LoadBalancerFamily<TargetGroupMembership> {
  readonly name = 'target-group';

  /** DescribeTargetHealth: of every target of a group (key `all <arn>`, no items), or of the given ones (key `some <arn>`). */
  private readonly health: Coalescer<TargetDescription, TargetHealthDescription>;
  private readonly deregistrations: Coalescer<TargetDescription, never>;

  constructor(
    private readonly elbv2: LazyClient<ElasticLoadBalancingV2Client>,
    private readonly inventory: InventorySource,
    private readonly logger: Logger,
    private readonly delays?: DelaySource,
    batchWindowMs = BATCH_WINDOW_MS,
  ) {
    const describe = async (arn: string, targets: TargetDescription[] | undefined, signal: AbortSignal) => {
      const { DescribeTargetHealthCommand } = await sdk.elbv2();
      return (await (await this.elbv2()).send(new DescribeTargetHealthCommand({ TargetGroupArn: arn, Targets: targets }), { abortSignal: signal })).TargetHealthDescriptions ?? [];
    };
    this.health = new Coalescer({
      windowMs: batchWindowMs,
      maxItems: TARGETS_PER_CALL,
      itemKey: targetKey,
      call: (key, targets, signal) => {
        const [which, arn] = key.split(' ') as ['all' | 'some', string];
        if (which === 'all') return describe(arn, undefined, signal);
        // An emulator's InvalidTarget for one target no longer registered would fail the rest: then one by one (it is out).
        return describeSurvivors(targets, (batch) => describe(arn, batch, signal), (error) => errorCode(error) === TARGET_ABSENT);
      },
    });
    this.deregistrations = new Coalescer({
      windowMs: batchWindowMs,
      maxItems: TARGETS_PER_CALL,
      itemKey: targetKey,
      call: async (arn, targets, signal) => {
        await this.deregisterEach(arn, targets, signal);
        return [];
      },
    });
  }

  async memberships(instance: Instance, scope: Scope, ctx: DiscoveryContext): Promise<TargetGroupMembership[]> {
    return fromKnownThenFresh(this.inventory, ctx, this.logger, (inventory) => this.membershipsIn(inventory, instance, scope, ctx));
  }

  private async membershipsIn(inventory: Inventory, instance: Instance, scope: Scope, ctx: DiscoveryContext): Promise<TargetGroupMembership[]> {
    const groups = groupsInScope(inventory, instance.vpcId, scope);
    // Each group on its own: one that cannot be read must not hold up the others' deregistration.
    const settled = await Promise.allSettled(groups.map(async (group) => {
      const membership = await this.membership(group, instance, ctx);
      if (!membership) return [];
      ctx.found(membership);
      return [membership];
    }));
    return allOrPartial(settled);
  }

  async deregister(membership: TargetGroupMembership, ctx: CallContext): Promise<void> {
    try {
      await this.deregistrations.submit(membership.arn, membership.targets, ctx.signal);
    } catch (error) {
      if (!GONE.has(errorCode(error) ?? '')) throw error;
    }
  }

  /** One call for all; an emulator's InvalidTarget for one absent target would fail the rest, so then one by one. */
  private async deregisterEach(arn: string, targets: TargetDescription[], signal: AbortSignal): Promise<void> {
    try {
      const { DeregisterTargetsCommand } = await sdk.elbv2();
      await (await this.elbv2()).send(new DeregisterTargetsCommand({ TargetGroupArn: arn, Targets: targets }), { abortSignal: signal });
    } catch (error) {
      if (errorCode(error) !== TARGET_ABSENT) throw error;
      if (targets.length > 1) await Promise.all(targets.map((target) => this.deregisterEach(arn, [target], signal)));
    }
  }

  async isOut(membership: TargetGroupMembership, ctx: CallContext): Promise<OutCheck> {
    let descriptions;
    try {
      descriptions = await this.health.submit(`some ${membership.arn}`, membership.targets, ctx.signal);
    } catch (error) {
      if (GONE.has(errorCode(error) ?? '')) return { out: true };
      throw error;
    }
    const stillIn = descriptions.filter(
      (description) =>
        description.TargetHealth?.State !== 'unused' &&
        membership.targets.some((target) => target.Id === description.Target?.Id && target.Port === description.Target?.Port),
    );
    if (stillIn.length === 0) return { out: true };
    return {
      out: false,
      detail: stillIn.map((description) => `${description.Target?.Id}:${description.Target?.Port} ${description.TargetHealth?.State}`).join(', '),
    };
  }

  async register(membership: TargetGroupMembership, ctx: CallContext): Promise<void> {
    const { RegisterTargetsCommand } = await sdk.elbv2();
    await (await this.elbv2()).send(new RegisterTargetsCommand({ TargetGroupArn: membership.arn, Targets: [...membership.targets] }), { abortSignal: ctx.signal });
  }

  fromSummary(summary: Readonly<Record<string, unknown>>, instance: Instance): TargetGroupMembership | undefined {
    const { arn, targets } = summary;
    if (typeof arn !== 'string' || !arn.startsWith('arn:') || !Array.isArray(targets)) return undefined;
    const stillThisInstance = targets.flatMap((target: unknown) => {
      const { id, port } = (target ?? {}) as { id?: unknown; port?: unknown };
      const valid = typeof id === 'string' && (port === undefined || Number.isInteger(port));
      return valid && isThisInstance(id, instance) ? [{ Id: id, Port: port as number | undefined }] : [];
    });
    // Put back from memory: not serving until registered again.
    return stillThisInstance.length > 0 ? toMembership(arn, stillThisInstance, false) : undefined;
  }


  private async membership(group: TargetGroup, instance: Instance, ctx: CallContext): Promise<TargetGroupMembership | undefined> {
    const arn = group.TargetGroupArn!;
    let health;
    try {
      health = await this.health.submit(`all ${arn}`, [], ctx.signal);
    } catch (error) {
      if (GONE.has(errorCode(error) ?? '')) return undefined;
      throw error;
    }
    const isInstance = (id: string): boolean => (group.TargetType === 'instance' ? id === instance.id : isThisInstance(id, instance) && id !== instance.id);
    const mine = health.filter((description) => description.Target?.Id !== undefined && isInstance(description.Target.Id));
    if (mine.length === 0) return undefined;
    const serving = mine.some((description) => SERVING_STATES.has(description.TargetHealth?.State ?? ''));
    return toMembership(arn, mine.map((description) => description.Target!), serving, this.delays?.of(arn)?.seconds);
  }
}

/** Target groups in the VPC, tagged themselves or through a tagged load balancer, of a type we can drain. */
function groupsInScope({ loadBalancers, targetGroups, groups }: Inventory, vpcId: string, scope: Scope): TargetGroup[] {
  // A target group's scope tags may sit on it or on any of its load balancers.
  const tagsOf = (group: TargetGroup): Tags[] => [
    targetGroups.get(group.TargetGroupArn!)?.tags ?? {},
    ...(group.LoadBalancerArns ?? []).map((arn) => loadBalancers.get(arn)?.tags ?? {}),
  ];
  return [...groups.values()].filter(
    (group) => group.VpcId === vpcId && (group.TargetType === 'instance' || group.TargetType === 'ip') && tagsOf(group).some((tags) => inScope(tags, scope)),
  );
}

function targetKey(target: TargetDescription): string {
  return `${target.Id}:${target.Port ?? ''}`;
}

/** A target id that names the instance: its id, any address of it, or one inside its prefixes. */
function isThisInstance(id: string, instance: Instance): boolean {
  return id === instance.id || instanceHoldsAddress(instance, id);
}

function toMembership(arn: string, targets: readonly TargetDescription[], serving: boolean, deregistrationDelaySeconds?: number): TargetGroupMembership {
  const summary = { arn, targets: targets.map((target) => ({ id: target.Id, port: target.Port })) };
  return { id: arn, arn, targets, serving, summary, ...(deregistrationDelaySeconds === undefined ? {} : { deregistrationDelaySeconds }) };
}
