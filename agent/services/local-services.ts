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
import { isTakenOut, loadBalancerOf, NodeAnnotationMemory, registerBack, takenOutBy, type TakenOut } from '../memory/taken-out.ts';

export const SCOPED_OUT_ANNOTATION = 'hasta-la-vista.io/scoped-out';

/** One membership a scoped drain took out, and for which Service. */
export interface Remembered extends TakenOut {
  /** namespace/name */
  readonly service: string;
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
  private readonly memory: NodeAnnotationMemory<Remembered>;

  constructor(private readonly options: LocalServicesOptions) {
    this.memory = new NodeAnnotationMemory(options.kube, options.nodeName, SCOPED_OUT_ANNOTATION, isRemembered, options.logger);
  }

  /** Reads what an earlier run remembered, from the Node. */
  async load(): Promise<void> {
    this.remembered = await this.memory.load();
    if (this.remembered.length > 0) this.options.logger.info({ remembered: this.remembered.length }, 'scoped deregistrations to put back, from the Node annotation');
  }

  /** Ready, non-terminating endpoints of the Service on this node, but for the pod `except`. */
  async readyHere(namespace: string, name: string, except?: string): Promise<number> {
    const endpoints = await this.options.kube.listServiceEndpoints(namespace, name);
    return endpoints.filter((endpoint) => endpoint.nodeName === this.options.nodeName && endpoint.ready && !endpoint.terminating && endpoint.podName !== except).length;
  }

  /** Remembers what a scoped drain of this node took out, to put it back later. */
  async remember(service: string, status: DrainStatus): Promise<void> {
    const taken = takenOutBy(status);
    if (taken.length === 0) return;
    for (const entry of taken) {
      this.remembered = this.remembered.filter((old) => !(old.service === service && old.family === entry.family && loadBalancerOf(old) === loadBalancerOf(entry)));
      this.remembered.push({ ...entry, service });
    }
    await this.memory.save(this.remembered);
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
      const loadBalancer = loadBalancerOf(entry);
      try {
        if ((await registerBack(entry, this.options.families, instance, ctx)) === 'registered') {
          this.options.logger.info({ service, family: entry.family, loadBalancer, instanceId: instance.id }, 'a local endpoint is ready again: registered back');
          this.options.onRegistered(entry);
        } else {
          this.options.logger.warn({ entry }, 'nothing of this remembered deregistration is still this instance (or it is malformed): forgetting it');
        }
      } catch (error) {
        this.options.logger.warn({ err: error, service, loadBalancer }, 'could not register back; trying again');
        continue;
      }
      this.remembered = this.remembered.filter((candidate) => candidate !== entry);
    }
    await this.memory.save(this.remembered);
  }
}

function isRemembered(value: unknown): value is Remembered {
  return isTakenOut(value) && typeof (value as Partial<Remembered>).service === 'string';
}
