/**
 * Keeps a drained node out: the label node.kubernetes.io/exclude-from-external-load-balancers makes the
 * service controller and the AWS Load Balancer Controller stop registering it. The agent marks the
 * labels it set with an annotation, so that on a clean start (a false alarm, a finished reboot) it
 * removes its own label, and never one that an operator set.
 */
import type { Logger } from '../log.ts';
import type { KubeClient, KubeNode } from './client.ts';

export const EXCLUDE_LABEL = 'node.kubernetes.io/exclude-from-external-load-balancers';
export const MARK_ANNOTATION = 'hasta-la-vista.io/excluded-at';

export type EventKind =
  | 'DrainStarted'
  | 'DrainFinished'
  | 'DrainTimedOut'
  | 'DrainFailed'
  | 'ExclusionLifted'
  | 'ReRegistrationCaught'
  | 'RegisteredBack'
  | 'GivenBack'
  | 'NotDraining'
  | 'LongDeregistrationDelay';

export class NodeKeeper {
  constructor(
    private readonly kube: KubeClient,
    private readonly nodeName: string,
    private readonly podName: string,
    private readonly logger: Logger,
  ) {}

  /** Labels the node, unless it carries the label already (then it is someone else's to remove). */
  async exclude(reason: string): Promise<void> {
    const node = await this.kube.getNode(this.nodeName);
    if (node.metadata.labels[EXCLUDE_LABEL] !== undefined) {
      this.logger.info({ node: this.nodeName }, 'node already excluded from external load balancers');
      return;
    }
    await this.kube.patchNode(this.nodeName, {
      labels: { [EXCLUDE_LABEL]: 'true' },
      annotations: { [MARK_ANNOTATION]: `${new Date().toISOString()} ${reason}` },
    });
    this.logger.info({ node: this.nodeName, label: EXCLUDE_LABEL }, 'node excluded from external load balancers');
  }

  /**
   * When the node is given back: removes the label this agent set, unless `goingAway` (asked at the last
   * moment) gives a reason to keep it. Returns whether it did.
   */
  async liftOwnExclusion(goingAway: () => string | undefined, why: string): Promise<boolean> {
    const node = await this.kube.getNode(this.nodeName);
    const mark = node.metadata.annotations[MARK_ANNOTATION];
    if (mark === undefined) return false;
    const reason = goingAway();
    if (reason) {
      this.logger.info({ node: this.nodeName, reason }, 'the exclusion stays: the node is going away');
      return false;
    }
    await this.kube.patchNode(this.nodeName, {
      labels: node.metadata.labels[EXCLUDE_LABEL] === undefined ? {} : { [EXCLUDE_LABEL]: null },
      annotations: { [MARK_ANNOTATION]: null },
    });
    this.logger.info({ node: this.nodeName, excludedAt: mark, why }, 'lifted the exclusion this agent had set');
    await this.event('ExclusionLifted', `${why}: removed ${EXCLUDE_LABEL} set at ${mark}`, 'Normal', node);
    return true;
  }

  /** Records an Event on the node; a failure is logged, never fatal (events are a courtesy). */
  async event(reason: EventKind, message: string, type: 'Normal' | 'Warning', node?: KubeNode): Promise<void> {
    try {
      await this.kube.createEvent({ node: node ?? (await this.kube.getNode(this.nodeName)), reason, message, type, reportingInstance: this.podName });
    } catch (error) {
      this.logger.warn({ err: error, reason }, 'could not record a Kubernetes event');
    }
  }
}
