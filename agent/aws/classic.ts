/**
 * Classic ELBs. An instance is out when DescribeInstanceHealth says OutOfService, or no longer knows
 * the instance or the load balancer. While connection draining runs, the instance stays InService
 * ("Instance deregistration currently in progress"): that is not out, whatever DescribeLoadBalancers
 * already lists.
 *
 * Drains running together share their calls (see coalescer.ts): one DeregisterInstancesFromLoadBalancer
 * and one DescribeInstanceHealth per load balancer carry every drain's instance within the window.
 */
import type { ElasticLoadBalancingClient, InstanceState, LoadBalancerDescription } from '@aws-sdk/client-elastic-load-balancing';
import { sdk, type LazyClient } from './clients.ts';
import { BATCH_WINDOW_MS, Coalescer } from './coalescer.ts';
import { allOrPartial, type CallContext, type DiscoveryContext, type LoadBalancerFamily, type Membership, type OutCheck, type Scope } from '../drain/family.ts';
import type { Instance } from '../drain/instance.ts';
import { errorCode } from './errors.ts';
import { chunks, describeSurvivors } from './batches.ts';
import { fromKnownThenFresh, type Inventory, type InventorySource } from './inventory.ts';
import type { Logger } from '../log.ts';
import type { DelaySource } from './deregistration-delays.ts';
import { inScope } from './tags.ts';

export interface ClassicMembership extends Membership {
  readonly name: string;
  readonly instanceId: string;
}

/** Both mean the instance cannot be registered there any more. */
const GONE = new Set(['LoadBalancerNotFound', 'AccessPointNotFoundException', 'InvalidInstance', 'InvalidEndPointException']);
/** DescribeLoadBalancers takes names in batches; one unknown name fails the whole batch. */
const NAMES_PER_CALL = 20;
/** AWS documents no per-call limit for the instance lists; calls of this size stay well within request limits. */
const INSTANCES_PER_CALL = 100;

export class ClassicFamily implements LoadBalancerFamily<ClassicMembership> {
  readonly name = 'classic';

  private readonly deregistrations: Coalescer<string, never>;
  private readonly health: Coalescer<string, InstanceState>;
  private readonly descriptions: Coalescer<string, LoadBalancerDescription>;

  constructor(
    private readonly elb: LazyClient<ElasticLoadBalancingClient>,
    private readonly inventory: InventorySource,
    private readonly logger: Logger,
    private readonly delays?: DelaySource,
    batchWindowMs = BATCH_WINDOW_MS,
  ) {
    const batched = <Answer>(maxItems: number, call: (name: string, items: string[], signal: AbortSignal) => Promise<Answer[]>) =>
      new Coalescer<string, Answer>({ windowMs: batchWindowMs, maxItems, itemKey: (item) => item, call });
    this.deregistrations = batched(INSTANCES_PER_CALL, async (name, instances, signal) => {
      // One instance no longer registered fails the whole call: then each on its own, so the rest still leave.
      await describeSurvivors(
        instances,
        async (batch) => {
          const { DeregisterInstancesFromLoadBalancerCommand } = await sdk.elb();
          await (await this.elb()).send(new DeregisterInstancesFromLoadBalancerCommand({ LoadBalancerName: name, Instances: batch.map((InstanceId) => ({ InstanceId })) }), { abortSignal: signal });
          return [];
        },
        (error) => GONE.has(errorCode(error) ?? ''),
      );
      return [];
    });
    this.health = batched(INSTANCES_PER_CALL, (name, instances, signal) =>
      describeSurvivors(
        instances,
        async (batch) => {
          const { DescribeInstanceHealthCommand } = await sdk.elb();
          const answer = await (await this.elb()).send(new DescribeInstanceHealthCommand({ LoadBalancerName: name, Instances: batch.map((InstanceId) => ({ InstanceId })) }), { abortSignal: signal });
          return answer.InstanceStates ?? [];
        },
        (error) => errorCode(error) === 'InvalidInstance' || errorCode(error) === 'InvalidEndPointException',
      ),
    );
    this.descriptions = batched(NAMES_PER_CALL, (_key, names, signal) =>
      describeSurvivors(
        names,
        async (batch) => {
          const { DescribeLoadBalancersCommand } = await sdk.elb();
          return (await (await this.elb()).send(new DescribeLoadBalancersCommand({ LoadBalancerNames: batch }), { abortSignal: signal })).LoadBalancerDescriptions ?? [];
        },
        (error) => GONE.has(errorCode(error) ?? ''),
      ),
    );
  }

  async memberships(instance: Instance, scope: Scope, ctx: DiscoveryContext): Promise<ClassicMembership[]> {
    return fromKnownThenFresh(this.inventory, ctx, this.logger, (inventory) => this.membershipsIn(inventory, instance, scope, ctx));
  }

  private async membershipsIn({ classic }: Inventory, instance: Instance, scope: Scope, ctx: DiscoveryContext): Promise<ClassicMembership[]> {
    const names = [...classic.values()].filter((lb) => inScope(lb.tags, scope)).map((lb) => nameOf(lb.arn));
    const isMember = (lb: LoadBalancerDescription) => lb.VPCId === instance.vpcId && (lb.Instances ?? []).some((member) => member.InstanceId === instance.id);
    // Batch by batch: a batch that cannot be read must not hold up the others' deregistration.
    const settled = await Promise.allSettled(
      chunks(names, NAMES_PER_CALL).map(async (batch) => {
        const found = (await this.describe(batch, ctx)).filter(isMember).map((lb) => membership(lb.LoadBalancerName!, instance.id, true, this.delays?.of(lb.LoadBalancerName!)?.seconds));
        found.forEach(ctx.found);
        return found;
      }),
    );
    return allOrPartial(settled);
  }

  async deregister(membership: ClassicMembership, ctx: CallContext): Promise<void> {
    try {
      await this.deregistrations.submit(membership.name, [membership.instanceId], ctx.signal);
    } catch (error) {
      if (!GONE.has(errorCode(error) ?? '')) throw error;
    }
  }

  async isOut(membership: ClassicMembership, ctx: CallContext): Promise<OutCheck> {
    let health;
    try {
      const states = await this.health.submit(membership.name, [membership.instanceId], ctx.signal);
      health = states.find((state) => state.InstanceId === membership.instanceId);
    } catch (error) {
      if (GONE.has(errorCode(error) ?? '')) return { out: true };
      throw error;
    }
    if (health === undefined || health.State === 'OutOfService') return { out: true };
    if (health.State === 'Unknown' && !(await this.stillListed(membership, ctx))) return { out: true };
    return { out: false, detail: `${health.State}: ${health.Description ?? 'no description'}` };
  }

  async register(membership: ClassicMembership, ctx: CallContext): Promise<void> {
    const { RegisterInstancesWithLoadBalancerCommand } = await sdk.elb();
    await (await this.elb()).send(
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

  /** The same names asked by drains running together: one call (the key is the batch of names). */
  private async describe(names: string[], ctx: CallContext): Promise<LoadBalancerDescription[]> {
    const described = await this.descriptions.submit([...names].sort().join(' '), names, ctx.signal);
    return described.filter((lb) => names.includes(lb.LoadBalancerName!));
  }
}

function nameOf(arn: string): string {
  return arn.slice(arn.lastIndexOf('/') + 1);
}

/** `serving`: listed by DescribeLoadBalancers, which drops an instance as soon as it is deregistered. */
function membership(name: string, instanceId: string, serving: boolean, deregistrationDelaySeconds?: number): ClassicMembership {
  return { id: name, name, instanceId, serving, summary: { name }, ...(deregistrationDelaySeconds === undefined ? {} : { deregistrationDelaySeconds }) };
}
