/**
 * What a drain of this node took out, remembered so that it can be put back exactly: the same load
 * balancer, the same targets and ports. The memory is kept on the Node as an annotation, so it outlives
 * the agent's restart (a reboot for maintenance restarts the agent before the node is given back).
 * Scoped drains (a Service's load balancers) and whole-node drains each keep their own annotation.
 */
import type { CallContext, LoadBalancerFamily } from '../drain/family.ts';
import type { Instance } from '../drain/instance.ts';
import type { DrainStatus } from '../drain/status.ts';
import type { KubeClient } from '../kube/client.ts';
import type { Logger } from '../log.ts';

/** One membership a drain took out, as the drain's status described it. */
export interface TakenOut {
  readonly family: string;
  /** The family's own description: { name } or { arn, targets }. */
  readonly summary: Readonly<Record<string, unknown>>;
  readonly since: string;
}

/** A drain status entry's own fields; the rest is the family's summary of the membership. */
const STATUS_FIELDS = new Set(['family', 'state', 'reason', 'deregisteredAt', 'outAt', 'deregistrationDelaySeconds', 'expectedOutAt']);

/** The memberships the drain really deregistered (not those it only found). */
export function takenOutBy(status: DrainStatus): TakenOut[] {
  const since = new Date().toISOString();
  return status.loadBalancers
    .filter((lb) => lb.deregisteredAt !== undefined)
    .map((lb) => ({ family: lb.family, summary: Object.fromEntries(Object.entries(lb).filter(([key]) => !STATUS_FIELDS.has(key))), since }));
}

/** Which load balancer an entry is about (a target group ARN or a classic ELB name). */
export function loadBalancerOf(entry: TakenOut): string {
  return String(entry.summary.arn ?? entry.summary.name);
}

export type RegisterBackOutcome = 'registered' | 'not-this-instance';

/**
 * Registers the instance back where `entry` says; 'not-this-instance' when nothing of it still names the
 * instance (its addresses changed) or it is malformed. Throws when AWS refused or could not be reached.
 */
export async function registerBack(entry: TakenOut, families: readonly LoadBalancerFamily[], instance: Instance, ctx: CallContext): Promise<RegisterBackOutcome> {
  const family = families.find((candidate) => candidate.name === entry.family);
  const membership = family?.fromSummary(entry.summary, instance);
  if (!family || !membership) return 'not-this-instance';
  await family.register(membership, ctx);
  return 'registered';
}

export function isTakenOut(value: unknown): value is TakenOut {
  const entry = value as Partial<TakenOut> | null;
  return typeof entry?.family === 'string' && typeof entry.summary === 'object' && entry.summary !== null;
}

/** A list of entries kept as JSON in one annotation of the Node. */
export class NodeAnnotationMemory<T> {
  constructor(
    private readonly kube: KubeClient,
    private readonly nodeName: string,
    readonly annotation: string,
    private readonly isEntry: (value: unknown) => value is T,
    private readonly logger: Logger,
  ) {}

  /** What an earlier run kept; an unreadable annotation is logged and read as nothing. */
  async load(): Promise<T[]> {
    const node = await this.kube.getNode(this.nodeName);
    const text = node.metadata.annotations[this.annotation];
    if (text === undefined) return [];
    try {
      const parsed = JSON.parse(text) as unknown;
      return Array.isArray(parsed) ? parsed.filter(this.isEntry) : [];
    } catch {
      this.logger.warn({ annotation: this.annotation }, 'the Node annotation is not JSON: ignoring it');
      return [];
    }
  }

  /** Keeps exactly `entries`; none removes the annotation. */
  async save(entries: readonly T[]): Promise<void> {
    await this.kube.patchNode(this.nodeName, { annotations: { [this.annotation]: entries.length > 0 ? JSON.stringify(entries) : null } });
  }
}
