/**
 * Finds the cluster's load balancers and target groups in the region, for a few calls whatever the
 * region holds: the Resource Groups Tagging API answers "which resources carry this tag" directly.
 * Where that API is denied, it falls back to describing everything and reading tags 20 at a time (the
 * DescribeTags limit), which costs calls in proportion to the region's size, and says so once.
 *
 * Concurrent callers share one inventory in flight: both families of a drain, and drains of several
 * instances at once, ask for it together and pay for it once. The agent also keeps the last inventory
 * (refreshed in the background, with jitter), so that a drain starts from it at once, without waiting
 * for the tagging API that a whole spot wave is calling at the same moment, and still asks for a fresh
 * one to catch load balancers created since.
 */
import {
  DescribeTagsCommand as DescribeClassicTagsCommand,
  paginateDescribeLoadBalancers as paginateClassicLoadBalancers,
  type ElasticLoadBalancingClient,
} from '@aws-sdk/client-elastic-load-balancing';
import {
  DescribeTagsCommand,
  paginateDescribeLoadBalancers,
  paginateDescribeTargetGroups,
  type ElasticLoadBalancingV2Client,
} from '@aws-sdk/client-elastic-load-balancing-v2';
import { paginateGetResources, type ResourceGroupsTaggingAPIClient } from '@aws-sdk/client-resource-groups-tagging-api';
import { allOrPartial, type Membership } from '../drain/family.ts';
import type { Logger } from '../log.ts';
import { isPermissionError } from './errors.ts';
import { clusterTagFilters, inCluster, tagsFromList, type Tags } from './tags.ts';

export interface TaggedResource {
  readonly arn: string;
  readonly tags: Tags;
}

export interface Inventory {
  /** Classic ELBs, by name. */
  readonly classic: ReadonlyMap<string, TaggedResource>;
  /** Application, network and gateway load balancers, by ARN. */
  readonly loadBalancers: ReadonlyMap<string, TaggedResource>;
  /** Target groups, by ARN. */
  readonly targetGroups: ReadonlyMap<string, TaggedResource>;
}

export interface InventorySource {
  /** The last inventory fetched, if any: where a drain starts. */
  known(): Inventory | undefined;
  /** A fresh inventory; it becomes the known one. */
  inventory(signal: AbortSignal): Promise<Inventory>;
}

/** The DescribeTags limit of both ELB APIs. */
export const DESCRIBE_TAGS_LIMIT = 20;
const RESOURCE_TYPES = ['elasticloadbalancing:loadbalancer', 'elasticloadbalancing:targetgroup'];

export class TaggedInventory implements InventorySource {
  private inFlight: Promise<Inventory> | undefined;
  private last: Inventory | undefined;
  private taggingDenied = false;
  private refresher: NodeJS.Timeout | undefined;

  constructor(
    private readonly clients: {
      readonly tagging: ResourceGroupsTaggingAPIClient;
      readonly elb: ElasticLoadBalancingClient;
      readonly elbv2: ElasticLoadBalancingV2Client;
    },
    private readonly clusterName: string,
    private readonly logger: Logger,
  ) {}

  known(): Inventory | undefined {
    return this.last;
  }

  inventory(signal: AbortSignal): Promise<Inventory> {
    // Shared by whoever asks while it runs; the first caller's signal bounds it, and a caller that
    // comes later with a later deadline simply asks again once this one settled.
    this.inFlight ??= this.fetch(signal)
      .then((inventory) => (this.last = inventory))
      .finally(() => {
        this.inFlight = undefined;
      });
    return this.inFlight;
  }

  /** Fetches now, then about every `intervalMs` (between half and one and a half times it, so nodes spread out). */
  refreshEvery(intervalMs: number): void {
    const refresh = () => {
      this.inventory(AbortSignal.timeout(60_000))
        .catch((error: unknown) => this.logger.warn({ err: error }, 'could not refresh the inventory of cluster load balancers; a drain will ask again'))
        .finally(() => {
          this.refresher = setTimeout(refresh, Math.round(intervalMs * (0.5 + Math.random())));
          this.refresher.unref();
        });
    };
    refresh();
  }

  stop(): void {
    clearTimeout(this.refresher);
  }

  private async fetch(signal: AbortSignal): Promise<Inventory> {
    if (!this.taggingDenied) {
      try {
        return await this.fromTaggingApi(signal);
      } catch (error) {
        if (!isPermissionError(error)) throw error;
        this.taggingDenied = true;
        this.logger.warn(
          { err: error },
          'tag:GetResources is denied: falling back to describing every load balancer and reading tags 20 at a time, which costs many more calls in a large region; grant tag:GetResources to the agent role',
        );
      }
    }
    return this.byDescribingEverything(signal);
  }

  private async fromTaggingApi(signal: AbortSignal): Promise<Inventory> {
    const found = new Map<string, Tags>();
    await Promise.all(
      clusterTagFilters(this.clusterName).map(async (filter) => {
        const pages = paginateGetResources(
          { client: this.clients.tagging, pageSize: 100 },
          { ResourceTypeFilters: RESOURCE_TYPES, TagFilters: [{ Key: filter.key, Values: filter.value === undefined ? undefined : [filter.value] }] },
        );
        for await (const page of pages) {
          signal.throwIfAborted();
          for (const resource of page.ResourceTagMappingList ?? []) {
            if (resource.ResourceARN) found.set(resource.ResourceARN, tagsFromList(resource.Tags));
          }
        }
      }),
    );
    return classify(found);
  }

  private async byDescribingEverything(signal: AbortSignal): Promise<Inventory> {
    const found = new Map<string, Tags>();
    const [classicNames, elbv2Arns] = await Promise.all([this.allClassicNames(signal), this.allElbv2Arns(signal)]);

    await Promise.all([
      ...chunks(classicNames, DESCRIBE_TAGS_LIMIT).map(async (names) => {
        const answer = await this.clients.elb.send(new DescribeClassicTagsCommand({ LoadBalancerNames: names }), { abortSignal: signal });
        for (const description of answer.TagDescriptions ?? []) {
          const tags = tagsFromList(description.Tags);
          if (description.LoadBalancerName && inCluster(tags, this.clusterName)) found.set(classicArn(description.LoadBalancerName), tags);
        }
      }),
      ...chunks(elbv2Arns, DESCRIBE_TAGS_LIMIT).map(async (arns) => {
        const answer = await this.clients.elbv2.send(new DescribeTagsCommand({ ResourceArns: arns }), { abortSignal: signal });
        for (const description of answer.TagDescriptions ?? []) {
          const tags = tagsFromList(description.Tags);
          if (description.ResourceArn && inCluster(tags, this.clusterName)) found.set(description.ResourceArn, tags);
        }
      }),
    ]);
    return classify(found);
  }

  private async allClassicNames(signal: AbortSignal): Promise<string[]> {
    const names: string[] = [];
    // PageSize goes in the input: the paginator's pageSize is not passed on by this API's paginator.
    for await (const page of paginateClassicLoadBalancers({ client: this.clients.elb }, { PageSize: 400 })) {
      signal.throwIfAborted();
      for (const lb of page.LoadBalancerDescriptions ?? []) if (lb.LoadBalancerName) names.push(lb.LoadBalancerName);
    }
    return names;
  }

  private async allElbv2Arns(signal: AbortSignal): Promise<string[]> {
    const arns: string[] = [];
    for await (const page of paginateDescribeLoadBalancers({ client: this.clients.elbv2 }, { PageSize: 400 })) {
      signal.throwIfAborted();
      for (const lb of page.LoadBalancers ?? []) if (lb.LoadBalancerArn) arns.push(lb.LoadBalancerArn);
    }
    for await (const page of paginateDescribeTargetGroups({ client: this.clients.elbv2 }, { PageSize: 400 })) {
      signal.throwIfAborted();
      for (const group of page.TargetGroups ?? []) if (group.TargetGroupArn) arns.push(group.TargetGroupArn);
    }
    return arns;
  }
}

// arn:aws:elasticloadbalancing:REGION:ACCOUNT:loadbalancer/NAME                 classic
// arn:aws:elasticloadbalancing:REGION:ACCOUNT:loadbalancer/app|net|gwy/NAME/ID   ELBv2
// arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID
const RESOURCE = /^arn:[^:]+:elasticloadbalancing:[^:]*:[^:]*:(loadbalancer|targetgroup)\/(.+)$/;

function classify(found: ReadonlyMap<string, Tags>): Inventory {
  const classic = new Map<string, TaggedResource>();
  const loadBalancers = new Map<string, TaggedResource>();
  const targetGroups = new Map<string, TaggedResource>();
  for (const [arn, tags] of found) {
    const match = RESOURCE.exec(arn);
    if (!match) continue;
    const [, type, rest] = match as unknown as [string, string, string];
    if (type === 'targetgroup') targetGroups.set(arn, { arn, tags });
    else if (rest.includes('/')) loadBalancers.set(arn, { arn, tags });
    else classic.set(rest, { arn, tags });
  }
  return { classic, loadBalancers, targetGroups };
}

function classicArn(name: string): string {
  // Only the name matters to classify(); the region and account parts are not used.
  return `arn:aws:elasticloadbalancing:::loadbalancer/${name}`;
}

/**
 * Memberships found from the known inventory at once (handed on as they come), then from what a fresh
 * inventory adds. Without a known inventory, the fresh one is needed; with one, a fresh one that cannot
 * be had (throttled in a spot wave) is only a warning.
 */
export async function fromKnownThenFresh<M extends Membership>(
  source: InventorySource,
  signal: AbortSignal,
  logger: Logger,
  find: (inventory: Inventory) => Promise<M[]>,
): Promise<M[]> {
  const known = source.known();
  if (!known) return find(await source.inventory(signal));
  const fresh = source.inventory(signal).then(
    (inventory) => find(added(known, inventory)),
    (error: unknown) => {
      logger.warn({ err: error }, 'no fresh inventory of cluster load balancers: using the one kept from before');
      return [];
    },
  );
  return allOrPartial(await Promise.allSettled([find(known), fresh]));
}

/** What `fresh` holds that `known` does not. */
function added(known: Inventory, fresh: Inventory): Inventory {
  const only = <K, V>(fresh: ReadonlyMap<K, V>, known: ReadonlyMap<K, V>) => new Map([...fresh].filter(([key]) => !known.has(key)));
  return { classic: only(fresh.classic, known.classic), loadBalancers: only(fresh.loadBalancers, known.loadBalancers), targetGroups: only(fresh.targetGroups, known.targetGroups) };
}

export function chunks<T>(items: readonly T[], size: number): T[][] {
  const result: T[][] = [];
  for (let start = 0; start < items.length; start += size) result.push(items.slice(start, start + size));
  return result;
}
