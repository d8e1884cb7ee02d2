/**
 * ELBv2 target groups (behind application and network load balancers). A target group is in scope
 * when it, or one of its load balancers, carries the cluster tag. The instance is a member as its
 * id (type instance) or as any of its private addresses, delegated prefixes included (type ip); each
 * registered Target (id and port: one target on two ports is two targets) is deregistered exactly.
 * Out means DescribeTargetHealth no longer lists the target, or says "unused"; "draining" is not out.
 */
import {
  RegisterTargetsCommand,
  DeregisterTargetsCommand,
  DescribeTargetGroupsCommand,
  DescribeTargetHealthCommand,
  paginateDescribeTargetGroups,
  type ElasticLoadBalancingV2Client,
  type TargetDescription,
  type TargetGroup,
} from '@aws-sdk/client-elastic-load-balancing-v2';
import { allOrPartial, type CallContext, type DiscoveryContext, type LoadBalancerFamily, type Membership, type OutCheck, type Scope } from '../drain/family.ts';
import type { Instance } from '../drain/instance.ts';
import { errorCode } from './errors.ts';
import { chunks, fromKnownThenFresh, type Inventory, type InventorySource } from './inventory.ts';
import type { Logger } from '../log.ts';
import { cidrContains } from './ipv4.ts';
import { inScope, type Tags } from './tags.ts';

export interface TargetGroupMembership extends Membership {
  readonly arn: string;
  readonly targets: readonly TargetDescription[];
}

const GONE = new Set(['TargetGroupNotFound', 'TargetGroupNotFoundException']);
/** Real AWS succeeds deregistering an absent target; some emulators answer InvalidTarget. Either way it is out. */
const TARGET_ABSENT = 'InvalidTarget';
const ARNS_PER_CALL = 20;

export class TargetGroupFamily implements LoadBalancerFamily<TargetGroupMembership> {
  readonly name = 'target-group';

  constructor(
    private readonly elbv2: ElasticLoadBalancingV2Client,
    private readonly inventory: InventorySource,
    private readonly logger: Logger,
  ) {}

  async memberships(instance: Instance, scope: Scope, ctx: DiscoveryContext): Promise<TargetGroupMembership[]> {
    return fromKnownThenFresh(this.inventory, ctx.signal, this.logger, (inventory) => this.membershipsIn(inventory, instance, scope, ctx));
  }

  private async membershipsIn(inventory: Inventory, instance: Instance, scope: Scope, ctx: DiscoveryContext): Promise<TargetGroupMembership[]> {
    const groups = await this.groupsInScope(inventory, instance.vpcId, scope, ctx);
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
      await this.elbv2.send(new DeregisterTargetsCommand({ TargetGroupArn: membership.arn, Targets: [...membership.targets] }), {
        abortSignal: ctx.signal,
      });
    } catch (error) {
      const code = errorCode(error) ?? '';
      if (!GONE.has(code) && code !== TARGET_ABSENT) throw error;
    }
  }

  async isOut(membership: TargetGroupMembership, ctx: CallContext): Promise<OutCheck> {
    let descriptions;
    try {
      const answer = await this.elbv2.send(
        new DescribeTargetHealthCommand({ TargetGroupArn: membership.arn, Targets: [...membership.targets] }),
        { abortSignal: ctx.signal },
      );
      descriptions = answer.TargetHealthDescriptions ?? [];
    } catch (error) {
      const code = errorCode(error) ?? '';
      if (GONE.has(code) || code === TARGET_ABSENT) return { out: true };
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
    await this.elbv2.send(new RegisterTargetsCommand({ TargetGroupArn: membership.arn, Targets: [...membership.targets] }), { abortSignal: ctx.signal });
  }

  fromSummary(summary: Readonly<Record<string, unknown>>): TargetGroupMembership | undefined {
    const { arn, targets } = summary;
    if (typeof arn !== 'string' || !arn.startsWith('arn:') || !Array.isArray(targets)) return undefined;
    const parsed = targets.flatMap((target: unknown) => {
      const { id, port } = (target ?? {}) as { id?: unknown; port?: unknown };
      return typeof id === 'string' && (port === undefined || Number.isInteger(port)) ? [{ Id: id, Port: port as number | undefined }] : [];
    });
    return parsed.length === targets.length && parsed.length > 0 ? toMembership(arn, parsed) : undefined;
  }

  /** Target groups in the VPC, tagged themselves or through a tagged load balancer, of a type we can drain. */
  private async groupsInScope({ loadBalancers, targetGroups }: Inventory, vpcId: string, scope: Scope, ctx: CallContext): Promise<TargetGroup[]> {
    const byArn = new Map<string, TargetGroup>();
    // A target group's scope tags may sit on it or on any of its load balancers.
    const tagsOf = (group: TargetGroup): Tags[] => [
      targetGroups.get(group.TargetGroupArn!)?.tags ?? {},
      ...(group.LoadBalancerArns ?? []).map((arn) => loadBalancers.get(arn)?.tags ?? {}),
    ];

    const [viaLoadBalancers, tagged] = await Promise.all([
      Promise.all([...loadBalancers.keys()].map((arn) => this.groupsOfLoadBalancer(arn, ctx))),
      Promise.all(chunks([...targetGroups.keys()], ARNS_PER_CALL).map((arns) => this.describeGroups(arns, ctx))),
    ]);
    for (const group of [...viaLoadBalancers.flat(), ...tagged.flat()]) {
      if (group.TargetGroupArn) byArn.set(group.TargetGroupArn, group);
    }
    return [...byArn.values()].filter(
      (group) =>
        group.VpcId === vpcId &&
        (group.TargetType === 'instance' || group.TargetType === 'ip') &&
        tagsOf(group).some((tags) => inScope(tags, scope)),
    );
  }

  private async groupsOfLoadBalancer(loadBalancerArn: string, ctx: CallContext): Promise<TargetGroup[]> {
    const groups: TargetGroup[] = [];
    try {
      for await (const page of paginateDescribeTargetGroups({ client: this.elbv2 }, { LoadBalancerArn: loadBalancerArn, PageSize: 400 })) {
        ctx.signal.throwIfAborted();
        groups.push(...(page.TargetGroups ?? []));
      }
    } catch (error) {
      // Deleted since the inventory was taken: it has no target groups to drain.
      if (errorCode(error) !== 'LoadBalancerNotFound' && errorCode(error) !== 'LoadBalancerNotFoundException') throw error;
    }
    return groups;
  }

  private async describeGroups(arns: string[], ctx: CallContext): Promise<TargetGroup[]> {
    try {
      const answer = await this.elbv2.send(new DescribeTargetGroupsCommand({ TargetGroupArns: arns }), { abortSignal: ctx.signal });
      return answer.TargetGroups ?? [];
    } catch (error) {
      if (!GONE.has(errorCode(error) ?? '')) throw error;
      // One was deleted since the inventory: ask one by one so the others are still seen.
      if (arns.length === 1) return [];
      return (await Promise.all(arns.map((arn) => this.describeGroups([arn], ctx)))).flat();
    }
  }

  private async membership(group: TargetGroup, instance: Instance, ctx: CallContext): Promise<TargetGroupMembership | undefined> {
    const arn = group.TargetGroupArn!;
    let health;
    try {
      health = await this.elbv2.send(new DescribeTargetHealthCommand({ TargetGroupArn: arn }), { abortSignal: ctx.signal });
    } catch (error) {
      if (GONE.has(errorCode(error) ?? '')) return undefined;
      throw error;
    }
    const isInstance = (id: string): boolean =>
      group.TargetType === 'instance'
        ? id === instance.id
        : instance.privateIps.includes(id) || instance.ipv4Prefixes.some((prefix) => cidrContains(prefix, id));
    const targets = (health.TargetHealthDescriptions ?? [])
      .filter((description) => description.Target?.Id !== undefined && isInstance(description.Target.Id))
      .map((description) => description.Target!);
    if (targets.length === 0) return undefined;
    return toMembership(arn, targets);
  }
}

function toMembership(arn: string, targets: readonly TargetDescription[]): TargetGroupMembership {
  return { id: arn, arn, targets, summary: { arn, targets: targets.map((target) => ({ id: target.Id, port: target.Port })) } };
}
