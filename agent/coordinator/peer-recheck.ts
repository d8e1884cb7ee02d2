/**
 * The coordinator's keep-out re-check of the peers whose drains it served: one pass every
 * RECHECK_INTERVAL for all of them together, so their lookups share one inventory and one describe per
 * load balancer. Each served follower checking itself would cost a discovery per node per interval:
 * after a wave of 300, 300 inventories every 30 s, spent against the same account's budget as the wave's
 * stragglers. A peer found registered again is drained again at once, by the coordinator.
 *
 * A peer is checked for KEEP_OUT_FOR_MS after its drain (a spot instance dies two minutes after its
 * notice, an Auto Scaling termination within its hook's timeout), and only while this agent coordinates:
 * a follower whose coordinator is replaced, or no longer knows its drain (restarted), checks itself again.
 */
import { ALL } from '../drain/family.ts';
import type { Drainer } from '../drain/drainer.ts';
import type { Instance } from '../drain/instance.ts';
import type { Logger } from '../log.ts';

/** How long after its drain a served peer is still re-checked. */
export const KEEP_OUT_FOR_MS = 3_600_000;

export interface PeerRecheckOptions {
  readonly drainer: Pick<Drainer, 'servingMemberships' | 'start'>;
  readonly intervalMs: number;
  /** The deadline of a drain started because a peer was found registered again. */
  readonly drainTimeoutMs: number;
  readonly dryRun: boolean;
  /** A peer was found registered again, in `found` (the metric and the log are the caller's). */
  readonly onCaught: (instance: Instance, found: readonly { family: string; id: string }[]) => void;
  readonly logger: Logger;
  readonly now?: () => number;
}

export class PeerRecheck {
  private readonly peers = new Map<string, { instance: Instance; until: number }>();
  private timer: NodeJS.Timeout | undefined;
  private pass: Promise<void> | undefined;
  private readonly now: () => number;

  constructor(private readonly options: PeerRecheckOptions) {
    this.now = options.now ?? Date.now;
  }

  /** Keeps `instance` out from now on (for KEEP_OUT_FOR_MS), checked with the others at every interval. */
  add(instance: Instance): void {
    this.peers.set(instance.id, { instance, until: this.now() + KEEP_OUT_FOR_MS });
    this.timer ??= setInterval(() => void this.runPass(), this.options.intervalMs).unref();
  }

  /** A peer given back: it is no longer kept out. */
  remove(instanceId: string): void {
    this.peers.delete(instanceId);
  }

  /** This agent no longer coordinates: the followers check themselves again. */
  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.peers.clear();
  }

  private runPass(): Promise<void> {
    // A pass still running (AWS slow or throttled) is not overtaken by the next: they would only queue up.
    this.pass ??= this.checkAll().finally(() => (this.pass = undefined));
    return this.pass;
  }

  private async checkAll(): Promise<void> {
    const now = this.now();
    for (const [id, peer] of this.peers) if (peer.until <= now) this.peers.delete(id);
    if (this.peers.size === 0) return this.stop();
    const signal = AbortSignal.timeout(this.options.intervalMs);
    await Promise.all(
      [...this.peers.values()].map(async ({ instance }) => {
        try {
          const found = await this.options.drainer.servingMemberships(instance, ALL, signal);
          if (found.length === 0 || !this.peers.has(instance.id)) return;
          this.options.onCaught(instance, found);
          const deadline = new Date(this.now() + this.options.drainTimeoutMs);
          this.options.drainer.start(instance, { trigger: 'recheck', scope: ALL, deadline, dryRun: this.options.dryRun }, { capped: false });
        } catch (error) {
          this.options.logger.warn({ err: error, instanceId: instance.id }, 'keep-out re-check of a served peer failed; trying again at the next interval');
        }
      }),
    );
  }
}
