/** The tags that put a load balancer or target group in a cluster's scope, or in a Service's. */
import type { Scope } from '../drain/family.ts';

export type Tags = Readonly<Record<string, string>>;

export interface TagFilter {
  readonly key: string;
  /** Undefined: any value. */
  readonly value?: string;
}

/** Each filter alone puts a resource in the cluster (the tagging API ANDs filters, so one query each). */
export function clusterTagFilters(clusterName: string): TagFilter[] {
  return [
    { key: `kubernetes.io/cluster/${clusterName}` }, // in-tree service controller and cloud-provider-aws
    { key: 'elbv2.k8s.aws/cluster', value: clusterName }, // AWS Load Balancer Controller
    { key: `kubernetes/cluster/${clusterName}` }, // as the original hasta-la-vista README spells it
  ];
}

export function inCluster(tags: Tags, clusterName: string): boolean {
  return clusterTagFilters(clusterName).some((filter) => filter.key in tags && (filter.value === undefined || tags[filter.key] === filter.value));
}

/** Whether a resource with these tags (its own, or its load balancer's) belongs to the scope. */
export function inScope(tags: Tags, scope: Scope): boolean {
  if (scope.kind === 'all') return true;
  const service = `${scope.namespace}/${scope.name}`;
  return tags['kubernetes.io/service-name'] === service || tags['service.k8s.aws/stack'] === service;
}

export function tagsFromList(list: readonly { Key?: string | undefined; Value?: string | undefined }[] | undefined): Tags {
  return Object.fromEntries((list ?? []).flatMap((tag) => (tag.Key === undefined ? [] : [[tag.Key, tag.Value ?? '']])));
}

/** The cluster name an instance's own tags give, as the installers write it. */
export function clusterNameFromInstanceTags(tags: Tags): string | undefined {
  if (tags['eks:cluster-name']) return tags['eks:cluster-name'];
  for (const key of Object.keys(tags)) {
    const match = /^kubernetes\.io\/cluster\/(.+)$/.exec(key);
    if (match) return match[1];
  }
  return undefined;
}
