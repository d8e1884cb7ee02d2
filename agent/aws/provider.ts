/**
 * AWS as the drainer sees it: where this runs (region, VPC, cluster), how to find an instance, and
 * the load balancer families. Built once at start-up; the only module that knows all of the AWS parts.
 */
import type { LoadBalancerFamily } from '../drain/family.ts';
import type { InstanceLookup } from '../drain/instance.ts';
import type { Logger } from '../log.ts';
import { ClassicFamily } from './classic.ts';
import type { AwsClients } from './clients.ts';
import { describeInstance, Ec2InstanceLookup } from './instances.ts';
import { LifecycleHolder, type HookSetting } from './lifecycle.ts';
import { DeregistrationDelays, type DelayListener } from './deregistration-delays.ts';
import { TaggedInventory } from './inventory.ts';
import { clusterNameFromInstanceTags, tagsFromList } from './tags.ts';
import { TargetGroupFamily } from './target-groups.ts';

export interface Placement {
  readonly region: string;
  readonly vpcId: string;
  readonly clusterName: string;
}

export interface AwsProvider {
  readonly lookup: InstanceLookup;
  readonly families: readonly LoadBalancerFamily[];
  readonly lifecycle: LifecycleHolder;
  /** The cluster's load balancers, kept for drains to start from (the agent refreshes it). */
  readonly inventory: TaggedInventory;
}

/** `delays`: told what the deregistration delays are, read with each background refresh of the inventory. */
export function createAwsProvider(clients: AwsClients, placement: Placement, hooks: HookSetting, logger: Logger, delays?: DelayListener): AwsProvider {
  const inventory = new TaggedInventory(clients, placement.clusterName, logger);
  const deregistrationDelays = new DeregistrationDelays(clients, placement.vpcId, logger.child({ component: 'delays' }), delays);
  inventory.afterRefresh((known, signal) => deregistrationDelays.refresh(known, signal));
  return {
    lookup: new Ec2InstanceLookup(clients.ec2, placement.vpcId),
    families: [new ClassicFamily(clients.elb, inventory, logger, deregistrationDelays), new TargetGroupFamily(clients.elbv2, inventory, logger, deregistrationDelays)],
    lifecycle: new LifecycleHolder(clients.autoscaling, hooks, logger.child({ component: 'lifecycle' })),
    inventory,
  };
}

export class PlacementError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PlacementError';
  }
}

/** The cluster name from the instance's own tags (kubernetes.io/cluster/<name> or eks:cluster-name). */
export async function clusterNameOfInstance(clients: AwsClients, instanceId: string): Promise<string> {
  const instance = await describeInstance(clients.ec2, instanceId);
  const name = clusterNameFromInstanceTags(tagsFromList(instance?.Tags));
  if (name === undefined) {
    throw new PlacementError(
      `CLUSTERNAME is not set and instance ${instanceId} has no kubernetes.io/cluster/<name> or eks:cluster-name tag: set CLUSTERNAME`,
    );
  }
  return name;
}
