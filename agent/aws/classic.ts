/**
 * Classic ELBs. An instance is out when DescribeInstanceHealth says OutOfService, or no longer knows
 * the instance or the load balancer. While connection draining runs, the instance stays InService
 * ("Instance deregistration currently in progress"): that is not out, whatever DescribeLoadBalancers
 * already lists.
 */
import {
  RegisterInstancesWithLoadBalancerCommand,
  DescribeInstanceHealthCommand,
  DescribeLoadBalancersCommand,
  DeregisterInstancesFromLoadBalancerCommand,
  type ElasticLoadBalancingClient,
  type LoadBalancerDescription,
} from '@aws-sdk/client-elastic-load-balancing';
import { allOrPartial, type CallContext, type DiscoveryContext, type LoadBalancerFamily, type Membership, type OutCheck, type Scope } from '../drain/family.ts';
import type { Instance } from '../drain/instance.ts';
import { errorCode } from './errors.ts';
import { chunks, describeSurvivors } from './batches.ts';
import { fromKnownThenFresh, type Inventory, type InventorySource } from './inventory.ts';
import type { Logger } from '../log.ts';
import { inScope } from './tags.ts';

export interface ClassicMembership extends Membership {
  readonly name: string;
  readonly instanceId: string;
}

/** Both mean the instance cannot be registered there any more. */
const GONE = new Set(['LoadBalancerNotFound', 'AccessPointNotFoundException', 'InvalidInstance', 'InvalidEndPointException']);
/** DescribeLoadBalancers takes names in batches; one unknown name fails the whole batch. */
const NAMES_PER_CALL = 20;

export class ClassicFamily implements LoadBalancerFamily<ClassicMembership> {
  readonly name = 'classic';

  constructor(
    private readonly elb: ElasticLoadBalancingClient,
    private readonly inventory: InventorySource,
    private readonly logger: Logger,
  ) {}

  async memberships(instance: Instance, scope: Scope, ctx: DiscoveryContext): Promise<ClassicMembership[]> {
    return fromKnownThenFresh(this.inventory, ctx, this.logger, (inventory) => this.membershipsIn(inventory, instance, scope, ctx));
  }

  private async membershipsIn({ classic }: Inventory, instance: Instance, scope: Scope, ctx: DiscoveryContext): Promise<ClassicMembership[]> {
    const names = [...classic.values()].filter((lb) => inScope(lb.tags, scope)).map((lb) => nameOf(lb.arn));
    const isMember = (lb: LoadBalancerDescription) => lb.VPCId === instance.vpcId && (lb.Instances ?? []).some((member) => member.InstanceId === instance.id);
    // Batch by batch: a batch that cannot be read must not hold up the others' deregistration.
    const settled = await Promise.allSettled(
      chunks(names, NAMES_PER_CALL).map(async (batch) => {
        const found = (await this.describe(batch, ctx)).filter(isMember).map((lb) => membership(lb.LoadBalancerName!, instance.id, true));
        found.forEach(ctx.found);
        return found;
      }),
    );
    return allOrPartial(settled);
  }

  async deregister(membership: ClassicMembership, ctx: CallContext): Promise<void> {
    try {
      await this.elb.send(
        new DeregisterInstancesFromLoadBalancerCommand({ LoadBalancerName: membership.name, Instances: [{ InstanceId: membership.instanceId }] }),
        { abortSignal: ctx.signal },
      );
    } catch (error) {
      if (!GONE.has(errorCode(error) ?? '')) throw error;
    }
  }

  async isOut(membership: ClassicMembership, ctx: CallContext): Promise<OutCheck> {
    let health;
    try {
      const answer = await this.elb.send(
        new DescribeInstanceHealthCommand({ LoadBalancerName: membership.name, Instances: [{ InstanceId: membership.instanceId }] }),
        { abortSignal: ctx.signal },
      );
      health = answer.InstanceStates?.find((state) => state.InstanceId === membership.instanceId);
    } catch (error) {
      if (GONE.has(errorCode(error) ?? '')) return { out: true };
      throw error;
    }
    if (health === undefined || health.State === 'OutOfService') return { out: true };
    if (health.State === 'Unknown' && !(await this.stillListed(membership, ctx))) return { out: true };
    return { out: false, detail: `${health.State}: ${health.Description ?? 'no description'}` };
  }

  async register(membership: ClassicMembership, ctx: CallContext): Promise<void> {
    await this.elb.send(
      new RegisterInstancesWithLoadBalancerCommand({ LoadBalancerName: membership.name, Instances: [{ InstanceId: membership.instanceId }] }),
      { abortSignal: ctx.signal },
    );
  }

  fromSummary(summary: Readonly<Record<string, unknown>>, instance: Instance): ClassicMembership | undefined {
    return typeof summary.name === 'string' && summary.name !== '' ? membership(summary.name, instance.id, false) : undefined;
  }

  /** "Unknown" health is transient unless the load balancer no longer lists the instance at all. */
  private async stillListed(membership: ClassicMembership, ctx: CallContext): Promise<boolean> {
    const [lb] = await this.describe([membership.name], ctx);
    return (lb?.Instances ?? []).some((member) => member.InstanceId === membership.instanceId);
  }

  private describe(names: string[], ctx: CallContext): Promise<LoadBalancerDescription[]> {
    return describeSurvivors(
      names,
      async (batch) => (await this.elb.send(new DescribeLoadBalancersCommand({ LoadBalancerNames: batch }), { abortSignal: ctx.signal })).LoadBalancerDescriptions ?? [],
      (error) => GONE.has(errorCode(error) ?? ''),
    );
  }
}

function nameOf(arn: string): string {
  return arn.slice(arn.lastIndexOf('/') + 1);
}

/** `serving`: listed by DescribeLoadBalancers, which drops an instance as soon as it is deregistered. */
function membership(name: string, instanceId: string, serving: boolean): ClassicMembership {
  return { id: name, name, instanceId, serving, summary: { name } };
}
