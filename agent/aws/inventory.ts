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
import type { TargetGroup } from '@aws-sdk/client-elastic-load-balancing-v2';
import { sdk, type AwsClients } from './clients.ts';
import { allOrPartial, type DiscoveryContext, type Membership } from '../drain/family.ts';
import type { Logger } from '../log.ts';
import { chunks, describeSurvivors } from './batches.ts';
import { errorCode, errorMessage, isPermissionError, isThrottling } from './errors.ts';
import { backoff } from '../drain/retry.ts';
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
  /**
   * The descriptions (VPC, target type, load balancers) of every target group in the cluster's scope:
   * the tagged ones and those of tagged load balancers. They change rarely, so a drain that starts from
   * a kept inventory asks only for their targets' health.
   */
  readonly groups: ReadonlyMap<string, TargetGroup>;
}

export interface InventorySource {
  /** The last inventory fetched, if any, and when: where a drain starts. */
  known(): { readonly inventory: Inventory; readonly at: number } | undefined;
  /** A fresh inventory; it becomes the known one. */
  inventory(signal: AbortSignal): Promise<Inventory>;
}

/** The DescribeTags limit of both ELB APIs. */
export const DESCRIBE_TAGS_LIMIT = 20;
const RESOURCE_TYPES = ['elasticloadbalancing:loadbalancer', 'elasticloadbalancing:targetgroup'];

export class TaggedInventory implements InventorySource {
  private inFlight: Promise<Inventory> | undefined;
  private last: { inventory: Inventory; at: number } | undefined;
  private taggingDenied = false;
  private refresher: NodeJS.Timeout | undefined;
  private refreshing: { stopped: boolean } | undefined;
  private readonly refreshed: ((inventory: Inventory, signal: AbortSignal) => Promise<void>)[] = [];

  constructor(
    private readonly clients: Pick<AwsClients, 'tagging' | 'elb' | 'elbv2'>,
    private readonly clusterName: string,
    private readonly logger: Logger,
  ) {}

  known(): { inventory: Inventory; at: number } | undefined {
    return this.last;
  }

  inventory(signal: AbortSignal): Promise<Inventory> {
    // Shared by whoever asks while it runs (bounded by the first caller's signal); each caller stops
    // waiting at its own deadline, and one with a later deadline asks again once this one settled.
    this.inFlight ??= this.fetch(signal)
      .then((inventory) => {
        this.last = { inventory, at: Date.now() };
        return inventory;
      })
      .finally(() => {
        this.inFlight = undefined;
      });
    return untilAborted(this.inFlight, signal);
  }

  /** Work to do after each background refresh (not after a drain's own fetch), before the next is planned. */
  afterRefresh(work: (inventory: Inventory, signal: AbortSignal) => Promise<void>): void {
    this.refreshed.push(work);
  }

  /** Fetches now, then about every `intervalMs` (between half and one and a half times it, so nodes spread out). */
  refreshEvery(intervalMs: number): void {
    this.stop();
    const refreshing = { stopped: false };
    this.refreshing = refreshing;
    const refresh = () => {
      const signal = AbortSignal.timeout(60_000);
      this.inventory(signal)
        .then(async (inventory) => {
          for (const work of this.refreshed) await work(inventory, signal);
        })
        .catch((error: unknown) => this.logger.warn({ err: error }, 'could not refresh the inventory of cluster load balancers; a drain will ask again'))
        .finally(() => {
          // Stopped while this refresh ran (the agent stopped coordinating): no next one.
          if (refreshing.stopped) return;
          this.refresher = setTimeout(refresh, Math.round(intervalMs * (0.5 + Math.random())));
          this.refresher.unref();
        });
    };
    refresh();
  }

  stop(): void {
    if (this.refreshing) this.refreshing.stopped = true;
    clearTimeout(this.refresher);
  }

  private async fetch(signal: AbortSignal): Promise<Inventory> {
    const tagged = await this.tagged(signal);
    return { ...tagged, groups: await this.describeGroups(tagged, signal) };
  }

  private async tagged(signal: AbortSignal): Promise<Tagged> {
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

  private async fromTaggingApi(signal: AbortSignal): Promise<Tagged> {
    const found = new Map<string, Tags>();
    const [tagging, { GetResourcesCommand }] = await Promise.all([this.clients.tagging(), sdk.tagging()]);
    await Promise.all(
      clusterTagFilters(this.clusterName).map(async (filter) => {
        const TagFilters = [{ Key: filter.key, Values: filter.value === undefined ? undefined : [filter.value] }];
        let token: string | undefined;
        do {
          // One page at a time, each retried by itself: a throttled page never sends the listing back to its first page.
          const page = await whileThrottled(
            () => tagging.send(new GetResourcesCommand({ ResourceTypeFilters: RESOURCE_TYPES, TagFilters, ResourcesPerPage: 100, PaginationToken: token }), { abortSignal: signal }),
            signal,
          );
          for (const resource of page.ResourceTagMappingList ?? []) {
            if (resource.ResourceARN) found.set(resource.ResourceARN, tagsFromList(resource.Tags));
          }
          token = page.PaginationToken || undefined;
        } while (token);
      }),
    );
    return classify(found);
  }

  private async byDescribingEverything(signal: AbortSignal): Promise<Tagged> {
    const found = new Map<string, Tags>();
    const [classicNames, elbv2Arns] = await Promise.all([this.allClassicNames(signal), this.allElbv2Arns(signal)]);
    const [elb, elbv2, { DescribeTagsCommand: DescribeClassicTagsCommand }, { DescribeTagsCommand }] = await Promise.all([
      this.clients.elb(),
      this.clients.elbv2(),
      sdk.elb(),
      sdk.elbv2(),
    ]);

    await Promise.all([
      ...chunks(classicNames, DESCRIBE_TAGS_LIMIT).map(async (names) => {
        const answer = await elb.send(new DescribeClassicTagsCommand({ LoadBalancerNames: names }), { abortSignal: signal });
        for (const description of answer.TagDescriptions ?? []) {
          const tags = tagsFromList(description.Tags);
          if (description.LoadBalancerName && inCluster(tags, this.clusterName)) found.set(classicArn(description.LoadBalancerName), tags);
        }
      }),
      ...chunks(elbv2Arns, DESCRIBE_TAGS_LIMIT).map(async (arns) => {
        const answer = await elbv2.send(new DescribeTagsCommand({ ResourceArns: arns }), { abortSignal: signal });
        for (const description of answer.TagDescriptions ?? []) {
          const tags = tagsFromList(description.Tags);
          if (description.ResourceArn && inCluster(tags, this.clusterName)) found.set(description.ResourceArn, tags);
        }
      }),
    ]);
    return classify(found);
  }

  /** The target groups of the tagged load balancers, and the tagged target groups themselves. */
  private async describeGroups({ loadBalancers, targetGroups }: Tagged, signal: AbortSignal): Promise<Map<string, TargetGroup>> {
    const [viaLoadBalancers, tagged] = await Promise.all([
      Promise.all([...loadBalancers.keys()].map((arn) => this.groupsOfLoadBalancer(arn, signal))),
      Promise.all(chunks([...targetGroups.keys()], ARNS_PER_CALL).map((arns) => this.groupsByArn(arns, signal))),
    ]);
    const groups = new Map<string, TargetGroup>();
    for (const group of [...viaLoadBalancers.flat(), ...tagged.flat()]) if (group.TargetGroupArn) groups.set(group.TargetGroupArn, group);
    return groups;
  }

  private async groupsOfLoadBalancer(loadBalancerArn: string, signal: AbortSignal): Promise<TargetGroup[]> {
    const groups: TargetGroup[] = [];
    const [elbv2, { DescribeTargetGroupsCommand }] = await Promise.all([this.clients.elbv2(), sdk.elbv2()]);
    try {
      let marker: string | undefined;
      do {
        const page = await whileThrottled(
          () => elbv2.send(new DescribeTargetGroupsCommand({ LoadBalancerArn: loadBalancerArn, PageSize: 400, Marker: marker }), { abortSignal: signal }),
          signal,
        );
        groups.push(...(page.TargetGroups ?? []));
        marker = page.NextMarker;
      } while (marker);
    } catch (error) {
      // Deleted since it was found: it has no target groups to drain.
      if (!LOAD_BALANCER_GONE.has(errorCode(error) ?? '')) throw error;
    }
    return groups;
  }

  private async groupsByArn(arns: string[], signal: AbortSignal): Promise<TargetGroup[]> {
    const [elbv2, { DescribeTargetGroupsCommand }] = await Promise.all([this.clients.elbv2(), sdk.elbv2()]);
    return describeSurvivors(
      arns,
      async (batch) => (await whileThrottled(() => elbv2.send(new DescribeTargetGroupsCommand({ TargetGroupArns: batch }), { abortSignal: signal }), signal)).TargetGroups ?? [],
      (error) => TARGET_GROUP_GONE.has(errorCode(error) ?? ''),
    );
  }

  private async allClassicNames(signal: AbortSignal): Promise<string[]> {
    const names: string[] = [];
    const [client, { paginateDescribeLoadBalancers }] = await Promise.all([this.clients.elb(), sdk.elb()]);
    // PageSize goes in the input: the paginator's pageSize is not passed on by this API's paginator.
    for await (const page of paginateDescribeLoadBalancers({ client }, { PageSize: 400 }, { abortSignal: signal })) {
      signal.throwIfAborted();
      for (const lb of page.LoadBalancerDescriptions ?? []) if (lb.LoadBalancerName) names.push(lb.LoadBalancerName);
    }
    return names;
  }

  private async allElbv2Arns(signal: AbortSignal): Promise<string[]> {
    const arns: string[] = [];
    const [client, { paginateDescribeLoadBalancers, paginateDescribeTargetGroups }] = await Promise.all([this.clients.elbv2(), sdk.elbv2()]);
    for await (const page of paginateDescribeLoadBalancers({ client }, { PageSize: 400 }, { abortSignal: signal })) {
      signal.throwIfAborted();
      for (const lb of page.LoadBalancers ?? []) if (lb.LoadBalancerArn) arns.push(lb.LoadBalancerArn);
    }
    for await (const page of paginateDescribeTargetGroups({ client }, { PageSize: 400 }, { abortSignal: signal })) {
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

/** An inventory before its target groups are described. */
type Tagged = Omit<Inventory, 'groups'>;

const ARNS_PER_CALL = 20;
export const LOAD_BALANCER_GONE = new Set(['LoadBalancerNotFound', 'LoadBalancerNotFoundException']);
export const TARGET_GROUP_GONE = new Set(['TargetGroupNotFound', 'TargetGroupNotFoundException']);

function classify(found: ReadonlyMap<string, Tags>): Tagged {
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
 * inventory adds. Without a known inventory, the fresh one is needed; with one, a fresh one is asked for
 * only when the known one is older than a minute (a drain's retry does not ask again), and may take
 * FRESH_WAIT_MS at most: one that cannot be had by then (throttled in a spot wave) is only a warning.
 */
export async function fromKnownThenFresh<M extends Membership>(
  source: InventorySource,
  ctx: DiscoveryContext,
  logger: Logger,
  find: (inventory: Inventory) => Promise<M[]>,
): Promise<M[]> {
  const { signal } = ctx;
  const kept = source.known();
  if (!kept) return find(await source.inventory(signal));
  const known = kept.inventory;
  if (Date.now() - kept.at < FRESH_ENOUGH_MS) return find(known);
  const fresh = withTimeout(signal, FRESH_WAIT_MS, (bounded) => source.inventory(bounded)).then(
    (inventory) => find(added(known, inventory)),
    (error: unknown) => {
      const keptFrom = new Date(kept.at).toISOString();
      logger.warn({ err: error, keptFrom }, 'no fresh inventory of cluster load balancers: using the one kept from before');
      ctx.note(`load balancers created since ${keptFrom} were not looked for (no fresh inventory: ${errorMessage(error)})`);
      return [];
    },
  );
  return allOrPartial(await Promise.allSettled([find(known), fresh]));
}

/**
 * Retries one call for as long as AWS throttles it (jittered backoff from 1 s to 10 s, which lets an
 * account's token bucket refill), until the caller's signal ends: in a spot wave, what the other calls
 * of a discovery already got is kept, and only this call waits. Other errors are the caller's.
 */
export async function whileThrottled<T>(call: () => Promise<T>, signal: AbortSignal): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await call();
    } catch (error) {
      if (!isThrottling(error) || signal.aborted) throw error;
      await backoff(attempt, signal, 1_000, 10_000);
    }
  }
}

/** A kept inventory this young is used as it is. */
const FRESH_ENOUGH_MS = 60_000;
/** How long a drain that has a kept inventory waits for a fresh one. */
const FRESH_WAIT_MS = 10_000;

/** Runs `work` with a signal that aborts with `signal` or after `ms`, whichever is first. */
async function withTimeout<T>(signal: AbortSignal, ms: number, work: (bounded: AbortSignal) => Promise<T>): Promise<T> {
  const bounded = new AbortController();
  // A timer of our own: on Node 20, AbortSignal.timeout() inside AbortSignal.any() can be lost to GC.
  const timer = setTimeout(() => bounded.abort(new DOMException(`no answer within ${ms} ms`, 'TimeoutError')), ms);
  const follow = () => bounded.abort(signal.reason);
  signal.addEventListener('abort', follow, { once: true });
  try {
    return await work(bounded.signal);
  } finally {
    clearTimeout(timer);
    signal.removeEventListener('abort', follow);
  }
}

/** `work`, or the signal's reason once it aborts, whichever comes first. */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const abort = () => reject(signal.reason);
    signal.addEventListener('abort', abort, { once: true });
    work.then(resolve, reject).finally(() => signal.removeEventListener('abort', abort));
  });
}

/** What `fresh` holds that `known` does not. */
function added(known: Inventory, fresh: Inventory): Inventory {
  const only = <K, V>(fresh: ReadonlyMap<K, V>, known: ReadonlyMap<K, V>) => new Map([...fresh].filter(([key]) => !known.has(key)));
  return {
    classic: only(fresh.classic, known.classic),
    // Tags of the new groups' load balancers may sit on known ones: keep them all for scope decisions.
    loadBalancers: fresh.loadBalancers,
    targetGroups: fresh.targetGroups,
    groups: only(fresh.groups, known.groups),
  };
}

