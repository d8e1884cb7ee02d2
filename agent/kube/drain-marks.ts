/**
 * What the own Node says about this agent's work, for whoever waits on the node:
 *
 * - `hasta-la-vista.io/drain`: the state of the latest drain of the whole node (`state`, `trigger`,
 *   `startedAt`, `deadline`, and `finishedAt` once it ended), written when it starts and when it ends,
 *   removed when the node is given back. Reboot operators, runbooks and `kubectl get nodes` wait on it.
 * - `delay-deletion.cluster-autoscaler.kubernetes.io/hasta-la-vista`, the hold: the Cluster Autoscaler
 *   deletes a node only once no annotation with that prefix is left (or its --node-deletion-delay-timeout
 *   passed). It decides whether to wait from the Node as it was when it chose the node, before its
 *   ToBeDeletedByClusterAutoscaler taint: an annotation written on seeing that taint would come too late
 *   (cluster-autoscaler core/scaledown/actuation/delay.go). Before it chooses a node it marks it
 *   DeletionCandidateOfClusterAutoscaler, for --scale-down-unneeded-time (10 minutes by default). So the
 *   hold is on the Node while that soft taint is (the autoscaler leaves it on beside its taint), or its
 *   taint (then the agent writes it before the drain's first deregistration, though only an autoscaler
 *   that saw it before its taint waits for it), and no drain of the whole node has ended; it comes off
 *   when that drain ends, whatever its result, and stays off until the node is given back (a forgotten
 *   hold makes the autoscaler wait its whole timeout); it also comes off when the taints go, and when
 *   the agent stops without draining.
 *
 * A Node that never sees the autoscaler is never written to but for drains. Writes are merge patches of
 * the annotations, one at a time in the order decided; a failure is logged and never stops a drain.
 */
import type { DrainStatus } from '../drain/status.ts';
import { withinTimeout } from '../drain/retry.ts';
import { isFinished } from '../drain/status.ts';
import type { Logger } from '../log.ts';
import type { KubeClient, KubeNode } from './client.ts';

export const DRAIN_ANNOTATION = 'hasta-la-vista.io/drain';
export const AUTOSCALER_HOLD_ANNOTATION = 'delay-deletion.cluster-autoscaler.kubernetes.io/hasta-la-vista';
/** The Cluster Autoscaler's "may be removed later" (PreferNoSchedule): no drain, but the hold goes on. */
export const DELETION_CANDIDATE_TAINT = 'DeletionCandidateOfClusterAutoscaler';
/** The Cluster Autoscaler's "removing it now": the drain starts, held. */
export const AUTOSCALER_DELETING_TAINT = 'ToBeDeletedByClusterAutoscaler';
const HOLD_VALUE = 'deleted only once out of its load balancers';

/** The drain as the Node shows it. */
export interface DrainMark {
  readonly state: DrainStatus['state'];
  readonly trigger: DrainStatus['trigger'];
  readonly startedAt: string;
  readonly deadline: string;
  readonly finishedAt?: string;
}

export class NodeDrainMarks {
  private writes: Promise<void> = Promise.resolve();
  /** What the Node carries, as last seen or written. */
  private readonly carries = { hold: false, mark: false };
  /** The autoscaler's soft taint, or its taint, is on the Node. */
  private autoscaler = false;
  /** A drain of the whole node ended: nothing left to wait for until the node is given back. */
  private drained = false;

  constructor(
    private readonly kube: Pick<KubeClient, 'patchNode'>,
    private readonly nodeName: string,
    private readonly logger: Logger,
  ) {}

  /** The Node as the API has it now (read on start, then from the watch). */
  observe(node: KubeNode): Promise<void> {
    this.carries.hold = node.metadata.annotations[AUTOSCALER_HOLD_ANNOTATION] !== undefined;
    this.carries.mark = node.metadata.annotations[DRAIN_ANNOTATION] !== undefined;
    this.autoscaler = (node.spec.taints ?? []).some((taint) => taint.key === DELETION_CANDIDATE_TAINT || taint.key === AUTOSCALER_DELETING_TAINT);
    return this.write({});
  }

  /** Resolves once the writes asked for so far are done, or after `capMs`: a hold goes on before the drain, which waits no longer than that. */
  async written(capMs: number): Promise<void> {
    await withinTimeout(this.writes, capMs);
  }

  /** A drain of the whole node started or ended. */
  drainChanged(status: DrainStatus): Promise<void> {
    this.drained = isFinished(status);
    const mark: DrainMark = { state: status.state, trigger: status.trigger, startedAt: status.startedAt, deadline: status.deadline, ...(status.finishedAt ? { finishedAt: status.finishedAt } : {}) };
    return this.write({ [DRAIN_ANNOTATION]: JSON.stringify(mark) });
  }

  /** The node stays: no drain to show. */
  givenBack(): Promise<void> {
    this.drained = false;
    return this.write(this.carries.mark ? { [DRAIN_ANNOTATION]: null } : {});
  }

  /** This agent stops without draining (a pod restart, an uninstall): nobody would lift a hold. */
  stopping(): Promise<void> {
    this.autoscaler = false;
    return this.write({});
  }

  /** Writes `annotations`, and the hold whenever it should change. */
  private write(annotations: Record<string, string | null>): Promise<void> {
    const hold = this.autoscaler && !this.drained;
    const patch = { ...annotations, ...(hold !== this.carries.hold ? { [AUTOSCALER_HOLD_ANNOTATION]: hold ? HOLD_VALUE : null } : {}) };
    if (Object.keys(patch).length === 0) return this.writes;
    if (DRAIN_ANNOTATION in patch) this.carries.mark = patch[DRAIN_ANNOTATION] !== null;
    this.carries.hold = hold;
    this.writes = this.writes.then(() =>
      this.kube.patchNode(this.nodeName, { annotations: patch }).then(
        () => this.logger.info({ node: this.nodeName, annotations: patch }, 'Node annotations written'),
        (error: unknown) => this.logger.warn({ err: error, node: this.nodeName, annotations: Object.keys(patch) }, 'could not write the drain\'s annotations on the Node'),
      ),
    );
    return this.writes;
  }
}
