/**
 * The agents of a cluster elect one of themselves, the coordinator, which drains the nodes of a spot
 * wave together (one call per load balancer for all of them) and alone keeps the cluster's inventory.
 * This module is the agent's side of that: it runs the election, publishes where the coordinator's API
 * answers (an annotation on the Lease), and tells a dying node whom to hand its drain to.
 *
 * Without permission on the Lease (RBAC not installed, an older chart) the election stops for good after
 * one warning, and every agent drains its own node alone, as before coordination existed.
 */
import { isIPv6 } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.ts';
import { KubeApiError } from '../kube/client.ts';
import { LeaderElector } from './leader-election.ts';
import type { Lease, LeaseApi } from './lease-api.ts';

const LEASE_NAME = 'hasta-la-vista-coordinator';
/** On the Lease, written by its holder: `HOST_IP:PORT` of its API. */
const ENDPOINT_ANNOTATION = 'hasta-la-vista.io/endpoint';

/** client-go's defaults for controllers: a dead coordinator is replaced within about 15 s. */
const LEASE_DURATION_MS = 15_000;
const RENEW_DEADLINE_MS = 10_000;
const RETRY_PERIOD_MS = 2_000;
/**
 * A follower reads the Lease every 5–11 s while it names a holder, not every 2–4.4 s: less than half the
 * Kubernetes API requests of a large cluster (bench/RESULTS.md, table 6), the holder known at every moment.
 */
const FOLLOWER_RETRY_PERIOD_MS = 5_000;
/** While a follower waits for the successor of a coordinator that is gone. */
const SUCCESSOR_POLL_MS = 1_000;

export interface Coordinator {
  /** The Lease holder's identity (its pod name). */
  readonly identity: string;
  /** `host:port` of its API. */
  readonly endpoint: string;
}

export interface CoordinationOptions {
  leases: LeaseApi;
  namespace: string;
  /** This agent's pod name: unique in the cluster, and what the Lease names as holder. */
  identity: string;
  hostIp: string;
  port: number;
  /** False while this node is going away or the agent shuts down: it then never leads, and gives the lease up. */
  mayLead: () => boolean;
  /** This agent coordinates until `signal` aborts. */
  onLeading: (signal: AbortSignal) => void;
  /** The election stopped for good (no permission on the Lease): this agent is on its own from now on. */
  onAlone: () => void;
  logger: Logger;
}

export class Coordination {
  private readonly elector: LeaderElector;
  private forbidden = false;

  constructor(private readonly options: CoordinationOptions) {
    const endpoint = isIPv6(options.hostIp) ? `[${options.hostIp}]:${options.port}` : `${options.hostIp}:${options.port}`;
    this.elector = new LeaderElector({
      api: this.watchingForDenial(options.leases),
      namespace: options.namespace,
      name: LEASE_NAME,
      identity: options.identity,
      leaseDurationMs: LEASE_DURATION_MS,
      renewDeadlineMs: RENEW_DEADLINE_MS,
      retryPeriodMs: RETRY_PERIOD_MS,
      followerRetryPeriodMs: FOLLOWER_RETRY_PERIOD_MS,
      annotations: () => ({ [ENDPOINT_ANNOTATION]: endpoint }),
      mayLead: options.mayLead,
      callbacks: { onStartedLeading: options.onLeading },
      logger: options.logger,
    });
  }

  start(): void {
    this.elector.start();
  }

  /** Releases the lease if this agent holds it, so the next coordinator need not wait for it to expire. */
  stop(): Promise<void> {
    return this.elector.stop();
  }

  /** The node's fate changed: give the lease up now if this agent may no longer lead. */
  reconsider(): void {
    this.elector.reconsider();
  }

  isCoordinator(): boolean {
    return this.elector.isLeader();
  }

  /** Another agent coordinating now, reachable at its published endpoint; undefined when there is none to hand a drain to. */
  coordinator(): Coordinator | undefined {
    if (this.forbidden) return undefined;
    const leader = this.elector.leader();
    const endpoint = leader?.annotations[ENDPOINT_ANNOTATION];
    if (!leader || !endpoint || leader.identity === this.options.identity) return undefined;
    return { identity: leader.identity, endpoint };
  }

  /**
   * True once the Lease was seen naming someone else, or nobody (released). A Lease this agent cannot
   * read does not count: whether the coordinator still serves is what its own answers say.
   */
  replaced(coordinator: Coordinator): boolean {
    const holder = this.elector.lastSeenHolder();
    return holder !== undefined && holder !== coordinator.identity;
  }

  /** True while the Lease, as last read, names `coordinator` and has not expired by this agent's clock: it renews it. */
  renewing(coordinator: Coordinator): boolean {
    return this.elector.leader()?.identity === coordinator.identity;
  }

  /**
   * Another coordinator than `after`, as soon as the Lease names one, within `waitMs`; meanwhile the Lease
   * is read every second rather than at a follower's pace. Undefined when none is elected in time.
   */
  async successor(after: Coordinator, waitMs: number, signal: AbortSignal): Promise<Coordinator | undefined> {
    const until = Date.now() + waitMs;
    for (;;) {
      const current = this.coordinator();
      if (current && current.identity !== after.identity) return current;
      if (this.forbidden || signal.aborted || Date.now() >= until) return undefined;
      this.elector.reconsider();
      await sleep(Math.min(SUCCESSOR_POLL_MS, until - Date.now()), undefined, { signal }).catch(() => undefined);
    }
  }

  /** The Lease API, stopping the election at the first 403: without permission, retrying only fills the log. */
  private watchingForDenial(api: LeaseApi): LeaseApi {
    const guard = async <T>(call: () => Promise<T>): Promise<T> => {
      try {
        return await call();
      } catch (error) {
        if (error instanceof KubeApiError && error.status === 403 && !this.forbidden) {
          this.forbidden = true;
          this.options.logger.warn(
            { err: error.message },
            `no permission on the Lease ${this.options.namespace}/${LEASE_NAME}: this agent drains its own node alone, without a coordinator; ` +
              'grant get, create and update on it (the chart\'s Role does) to drain spot waves together',
          );
          void this.elector.stop();
          this.options.onAlone();
        }
        throw error;
      }
    };
    return {
      get: (namespace, name) => guard(() => api.get(namespace, name)),
      create: (lease: Lease) => guard(() => api.create(lease)),
      replace: (lease: Lease) => guard(() => api.replace(lease)),
    };
  }
}
