/**
 * Services with externalTrafficPolicy: Local. A node serves such a Service only while it runs one of
 * its pods; when the last local pod stops, the node should leave that Service's load balancers (and
 * only those), and come back when a local pod is ready again.
 *
 * This remembers each scoped deregistration of this node (which load balancer, which ports), keeps that
 * memory on the Node as an annotation so it survives a restart, watches the Service's EndpointSlices
 * while anything is remembered, and registers the node back once, exactly where it was, when a ready
 * local endpoint appears again: unless the node itself is going away or excluded.
 */
import type { CallContext, LoadBalancerFamily } from '../drain/family.ts';
import type { Instance } from '../drain/instance.ts';
import type { DrainStatus } from '../drain/status.ts';
import type { KubeClient } from '../kube/client.ts';
import { EXCLUDE_LABEL } from '../kube/keep-out.ts';
import type { Logger } from '../log.ts';

export const SCOPED_OUT_ANNOTATION = 'hasta-la-vista.io/scoped-out';
/** A drain status entry's own fields; the rest is the family's summary of the membership. */
const STATUS_FIELDS = new Set(['family', 'state', 'reason', 'deregisteredAt', 'outAt']);

/** One membership a scoped drain took out, as the drain status described it. */
export interface Remembered {
  /** namespace/name */
  readonly service: string;
  readonly family: string;
  readonly summary: Readonly<Record<string, unknown>>;
  readonly since: string;
}

export interface LocalServicesOptions {
  readonly kube: KubeClient;
  readonly nodeName: string;
  readonly families: readonly LoadBalancerFamily[];
  /** This instance as AWS knows it now. */
  readonly instance: () => Promise<Instance>;
  /** Why the node must not be registered anywhere now (going away), or undefined. */
  readonly blockedBecause: () => string | undefined;
  readonly onRegistered: (entry: Remembered) => void;
  readonly pollIntervalMs: number;
  readonly logger: Logger;
}

export class LocalServices {
  private remembered: Remembered[] = [];
  private timer: NodeJS.Timeout | undefined;
  private polling = false;
  private stopped = false;

  constructor(private readonly options: LocalServicesOptions) {}

  /** Reads what an earlier run remembered, from the Node. */
  async load(): Promise<void> {
    const node = await this.options.kube.getNode(this.options.nodeName);
    const text = node.metadata.annotations[SCOPED_OUT_ANNOTATION];
    if (text === undefined) return;
    try {
      const parsed = JSON.parse(text) as unknown;
      this.remembered = Array.isArray(parsed) ? parsed.filter(isRemembered) : [];
      this.options.logger.info({ remembered: this.remembered.length }, 'scoped deregistrations to put back, from the Node annotation');
    } catch {
      this.options.logger.warn({ annotation: SCOPED_OUT_ANNOTATION }, 'the Node annotation of scoped deregistrations is not JSON: ignoring it');
    }
  }

  /** Ready, non-terminating endpoints of the Service on this node, but for the pod `except`. */
  async readyHere(namespace: string, name: string, except?: string): Promise<number> {
    const endpoints = await this.options.kube.listServiceEndpoints(namespace, name);
    return endpoints.filter((endpoint) => endpoint.nodeName === this.options.nodeName && endpoint.ready && !endpoint.terminating && endpoint.podName !== except).length;
  }

  /** Remembers what a scoped drain of this node took out, to put it back later. */
  async remember(service: string, status: DrainStatus): Promise<void> {
    const taken = status.loadBalancers.filter((lb) => lb.deregisteredAt !== undefined);
    if (taken.length === 0) return;
    const since = new Date().toISOString();
    for (const lb of taken) {
      const family = lb.family;
      const summary = Object.fromEntries(Object.entries(lb).filter(([key]) => !STATUS_FIELDS.has(key)));
      const id = summaryId(summary);
      this.remembered = this.remembered.filter((entry) => !(entry.service === service && entry.family === family && summaryId(entry.summary) === id));
      this.remembered.push({ service, family, summary, since });
    }
    await this.persist();
    this.start();
  }

  /** Watches while anything is remembered, until stopped for good. */
  start(): void {
    if (this.timer || this.stopped || this.remembered.length === 0) return;
    this.timer = setInterval(() => void this.poll(), this.options.pollIntervalMs);
  }

  /** For good: a scoped drain that finishes during shutdown still remembers, but watches no more. */
  stop(): void {
    this.stopped = true;
    this.pause();
  }

  private pause(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      const blocked = this.options.blockedBecause() ?? (await this.excluded());
      if (blocked) {
        this.options.logger.debug({ reason: blocked }, 'not putting scoped deregistrations back');
        return;
      }
      for (const service of new Set(this.remembered.map((entry) => entry.service))) {
        const [namespace = '', name = ''] = service.split('/');
        if ((await this.readyHere(namespace, name)) > 0) await this.registerBack(service);
      }
    } catch (error) {
      this.options.logger.warn({ err: error }, 'could not check the Services to put back; trying again');
    } finally {
      this.polling = false;
      if (this.remembered.length === 0) this.pause();
    }
  }

  private async excluded(): Promise<string | undefined> {
    const node = await this.options.kube.getNode(this.options.nodeName);
    return node.metadata.labels[EXCLUDE_LABEL] !== undefined ? `the node carries ${EXCLUDE_LABEL}` : undefined;
  }

  private async registerBack(service: string): Promise<void> {
    const instance = await this.options.instance();
    const ctx: CallContext = { signal: AbortSignal.timeout(this.options.pollIntervalMs * 5) };
    for (const entry of this.remembered.filter((candidate) => candidate.service === service)) {
      const family = this.options.families.find((candidate) => candidate.name === entry.family);
      const membership = family?.fromSummary(entry.summary, instance);
      if (family && membership) {
        try {
          await family.register(membership, ctx);
        } catch (error) {
          this.options.logger.warn({ err: error, service, loadBalancer: membership.id }, 'could not register back; trying again');
          continue;
        }
        this.options.logger.info({ service, family: family.name, loadBalancer: membership.id, instanceId: instance.id }, 'a local endpoint is ready again: registered back');
        this.options.onRegistered(entry);
      } else {
        this.options.logger.warn({ entry }, 'nothing of this remembered deregistration is still this instance (or it is malformed): forgetting it');
      }
      this.remembered = this.remembered.filter((candidate) => candidate !== entry);
    }
    await this.persist();
  }

  private async persist(): Promise<void> {
    await this.options.kube.patchNode(this.options.nodeName, {
      annotations: { [SCOPED_OUT_ANNOTATION]: this.remembered.length > 0 ? JSON.stringify(this.remembered) : null },
    });
  }
}

function summaryId(summary: Readonly<Record<string, unknown>>): string {
  return String(summary.arn ?? summary.name);
}

function isRemembered(value: unknown): value is Remembered {
  const entry = value as Partial<Remembered> | null;
  return typeof entry?.service === 'string' && typeof entry.family === 'string' && typeof entry.summary === 'object' && entry.summary !== null;
}
