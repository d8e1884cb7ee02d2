/**
 * What the drainer needs of a load balancer family (classic ELBs, ELBv2 target groups, or another
 * cloud's): find where an instance is registered, take it out, and tell when it is really out.
 * Adding a family is a new module implementing this, not an edit of the drainer.
 */
import type { Instance } from './instance.ts';
import { errorMessage } from '../aws/errors.ts';

/** Which load balancers a drain considers: all of the cluster's, or one Kubernetes Service's. */
export type Scope = { readonly kind: 'all' } | { readonly kind: 'service'; readonly namespace: string; readonly name: string };

export const ALL: Scope = Object.freeze({ kind: 'all' });

export function describeScope(scope: Scope): string {
  return scope.kind === 'all' ? 'all' : `service:${scope.namespace}/${scope.name}`;
}

/** One place an instance is registered: a classic ELB, or a target group with its targets. */
export interface Membership {
  /** Unique within its family: a load balancer name or a target group ARN. */
  readonly id: string;
  /** What a drain status shows for it, besides family and state: e.g. { name } or { arn, targets }. */
  readonly summary: Readonly<Record<string, unknown>>;
  /**
   * The load balancer may send it new traffic: registered and not on its way out. A target group's
   * target in `draining` or `unused` is a membership (a drain waits for it) but not serving (the
   * keep-out re-check does not count it as registered again).
   */
  readonly serving: boolean;
  /** How long the load balancer keeps it after deregistration, when that has been read. */
  readonly deregistrationDelaySeconds?: number;
}

export type OutCheck = { readonly out: true } | { readonly out: false; readonly detail: string };

export interface CallContext {
  /** Aborts at the drain's deadline: no call outlives it. */
  readonly signal: AbortSignal;
}

export interface DiscoveryContext extends CallContext {
  readonly found: (membership: Membership) => void;
  /** Something the drain's status should say even on success (e.g. a kept inventory was used). */
  readonly note: (text: string) => void;
}

/**
 * Some of a family's load balancers could not be read: `found` holds the memberships seen in the
 * others, so the drain can take those out now and ask again for the rest.
 */
export class PartialDiscoveryError<M extends Membership = Membership> extends Error {
  constructor(
    readonly found: M[],
    override readonly cause: unknown,
  ) {
    super(errorMessage(cause));
    this.name = 'PartialDiscoveryError';
  }
}

/**
 * The memberships of `settled`, the found part of a partial failure included; throws
 * PartialDiscoveryError with all of them when any part failed.
 */
export function allOrPartial<M extends Membership>(settled: PromiseSettledResult<M[]>[]): M[] {
  const found: M[] = [];
  let failure: { cause: unknown } | undefined;
  for (const result of settled) {
    if (result.status === 'fulfilled') {
      found.push(...result.value);
    } else if (result.reason instanceof PartialDiscoveryError) {
      found.push(...(result.reason.found as M[]));
      failure ??= { cause: result.reason.cause };
    } else {
      failure ??= { cause: result.reason };
    }
  }
  if (failure) throw new PartialDiscoveryError(found, failure.cause);
  return found;
}

export interface LoadBalancerFamily<M extends Membership = Membership> {
  /** As the drain status names it: "classic", "target-group". */
  readonly name: string;
  /**
   * Every membership of the instance in scope. Each is also handed to `ctx.found` the moment it is
   * known, so a slow load balancer does not hold up the others. Throws PartialDiscoveryError when some
   * load balancers could not be read but others were.
   */
  memberships(instance: Instance, scope: Scope, ctx: DiscoveryContext): Promise<M[]>;
  deregister(membership: M, ctx: CallContext): Promise<void>;
  isOut(membership: M, ctx: CallContext): Promise<OutCheck>;
  /** Puts the instance back where a scoped drain took it out: the same load balancer, the same ports. */
  register(membership: M, ctx: CallContext): Promise<void>;
  /**
   * The membership that a drain status entry (its summary fields) describes, limited to what is still
   * this instance (an ip target's address may belong to another pod by now); undefined when nothing
   * is, or the entry is not this family's.
   */
  fromSummary(summary: Readonly<Record<string, unknown>>, instance: Instance): M | undefined;
}
