/**
 * The `coordination.k8s.io/v1` Lease as the leader election reads and writes it, and the three calls
 * it needs. Kept apart from the elector so the Kubernetes client can implement the calls without
 * depending on the election, and tests can put an in-memory API behind the same interface.
 */
import { KubeApiError } from '../kube/client.ts';

/** The Kubernetes object's shape. Times are RFC 3339 with microseconds (metav1.MicroTime). */
export interface Lease {
  metadata: {
    name: string;
    namespace: string;
    /** Set by the API server; a write carrying a stale one is refused with 409 Conflict. */
    resourceVersion?: string;
    annotations?: Record<string, string>;
  };
  spec: {
    /** Empty when nobody holds the lease: anyone may take it at once. */
    holderIdentity?: string;
    leaseDurationSeconds?: number;
    acquireTime?: string;
    renewTime?: string;
    leaseTransitions?: number;
  };
}

/**
 * `get` answers undefined when the Lease does not exist. `create` of a Lease that exists and `replace`
 * with a stale `metadata.resourceVersion` reject with an error `isConflict` recognises.
 */
export interface LeaseApi {
  get(namespace: string, name: string): Promise<Lease | undefined>;
  create(lease: Lease): Promise<Lease>;
  replace(lease: Lease): Promise<Lease>;
}

/**
 * Someone else wrote first: 409 `Conflict` (stale resourceVersion) or `AlreadyExists` (created
 * meanwhile), as the Kubernetes client reports them.
 */
export function isConflict(error: unknown): boolean {
  return error instanceof KubeApiError && error.status === 409;
}

/** metav1.MicroTime: `2026-12-01T10:00:00.123000Z`. JavaScript clocks stop at milliseconds. */
export function microTime(epochMs: number): string {
  return new Date(epochMs).toISOString().replace(/Z$/, '000Z');
}
