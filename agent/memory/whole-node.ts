/**
 * What drains of the whole node took out, for when the node is given back (a maintenance event
 * canceled, a warm-pool instance InService again). Kept on the Node (annotation
 * `hasta-la-vista.io/taken-out`) when the agent has Kubernetes access, so a reboot in between forgets
 * nothing; in the process only, otherwise.
 */
import { backoff } from '../drain/retry.ts';
import type { LoadBalancerFamily } from '../drain/family.ts';
import type { Instance } from '../drain/instance.ts';
import type { DrainStatus } from '../drain/status.ts';
import type { Logger } from '../log.ts';
import { loadBalancerOf, registerBack, takenOutBy, type NodeAnnotationMemory, type TakenOut } from './taken-out.ts';

export const TAKEN_OUT_ANNOTATION = 'hasta-la-vista.io/taken-out';
/** Registering back is tried this long before the rest is left for the next start. */
const PUT_BACK_MS = 60_000;

export interface PutBack {
  readonly registered: readonly TakenOut[];
  /** Still out: AWS refused or could not be reached, or the node started going away again. */
  readonly left: readonly TakenOut[];
}

export class WholeNodeMemory {
  private entries: TakenOut[] = [];

  constructor(
    private readonly store: NodeAnnotationMemory<TakenOut> | undefined,
    private readonly families: readonly LoadBalancerFamily[],
    private readonly logger: Logger,
  ) {}

  /** What an earlier run took out and did not put back. */
  async load(): Promise<void> {
    if (this.store) this.entries = await this.store.load();
  }

  pending(): readonly TakenOut[] {
    return this.entries;
  }

  /** Adds what `status` deregistered (a second drain of the same load balancer replaces the first). */
  async remember(status: DrainStatus): Promise<void> {
    const taken = takenOutBy(status);
    if (taken.length === 0) return;
    const fresh = new Set(taken.map((entry) => `${entry.family} ${loadBalancerOf(entry)}`));
    this.entries = [...this.entries.filter((entry) => !fresh.has(`${entry.family} ${loadBalancerOf(entry)}`)), ...taken];
    await this.store?.save(this.entries);
  }

  /**
   * Registers the instance back into everything remembered, retrying for a minute; stops early when
   * `mayGoOn` says no (the node is going away again). What could not be put back stays remembered.
   */
  async putBack(instance: Instance, mayGoOn: () => boolean): Promise<PutBack> {
    if (this.entries.length === 0) return { registered: [], left: [] };
    const registered: TakenOut[] = [];
    const giveUpAt = Date.now() + PUT_BACK_MS;
    for (let attempt = 0; this.entries.length > 0 && mayGoOn(); attempt++) {
      const signal = AbortSignal.timeout(Math.max(1, giveUpAt - Date.now()));
      for (const entry of [...this.entries]) {
        if (!mayGoOn()) break;
        const loadBalancer = loadBalancerOf(entry);
        try {
          const outcome = await registerBack(entry, this.families, instance, { signal });
          if (outcome === 'registered') {
            registered.push(entry);
            this.logger.info({ instanceId: instance.id, family: entry.family, loadBalancer }, 'given back: registered again');
          } else {
            this.logger.warn({ instanceId: instance.id, entry }, 'nothing of this deregistration still names this instance: forgetting it');
          }
          this.entries = this.entries.filter((candidate) => candidate !== entry);
        } catch (error) {
          this.logger.warn({ err: error, instanceId: instance.id, family: entry.family, loadBalancer, attempt }, 'could not register back; trying again');
        }
      }
      if (this.entries.length === 0 || Date.now() >= giveUpAt) break;
      await backoff(attempt, AbortSignal.timeout(Math.max(1, giveUpAt - Date.now()))).catch(() => undefined);
    }
    await this.store?.save(this.entries);
    return { registered, left: [...this.entries] };
  }
}
