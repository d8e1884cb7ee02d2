/**
 * Calls for the same thing that arrive within a short window become one AWS call, as the AWS Load
 * Balancer Controller batches targets: the drains of a spot wave, which all reach the same target group
 * within a second, cost one DeregisterTargets for all their targets, and one DescribeTargetHealth
 * answers every one of them. The account's API budget then grows with load balancers, not nodes × load
 * balancers.
 *
 * Each caller keeps its own deadline: one whose signal aborts is answered at once, and the call goes on
 * for the others; the call itself is aborted only when every caller has gone.
 */
import { chunks } from './batches.ts';

/** Long enough for the drains of a wave that arrive together to meet; short against a 2-minute notice. */
export const BATCH_WINDOW_MS = 200;

export interface CoalescerOptions<Item, Answer> {
  /** How long the first call of a key waits for others. 0 still merges calls made in the same turn. */
  readonly windowMs: number;
  /** The most items one call may carry (AWS's limit, or a prudent size); more become several calls. */
  readonly maxItems: number;
  /** The AWS call for `items` (deduplicated by `itemKey`); what it answers is shared by every caller. */
  readonly call: (key: string, items: Item[], signal: AbortSignal) => Promise<Answer[]>;
  /** Items with the same item key are one: a target asked for by two drains is sent once. */
  readonly itemKey: (item: Item) => string;
}

interface Waiting<Item, Answer> {
  readonly items: readonly Item[];
  readonly signal: AbortSignal;
  readonly resolve: (answers: Answer[]) => void;
  readonly reject: (error: unknown) => void;
}

export class Coalescer<Item, Answer> {
  private readonly pending = new Map<string, Waiting<Item, Answer>[]>();

  constructor(private readonly options: CoalescerOptions<Item, Answer>) {}

  /**
   * What the calls for `key` answered, all of them: a caller picks out its own items. Rejects with the
   * first call's error when any of them fails, and with the signal's reason when `signal` aborts first.
   */
  submit(key: string, items: readonly Item[], signal: AbortSignal): Promise<Answer[]> {
    if (signal.aborted) return Promise.reject(signal.reason);
    return new Promise<Answer[]>((resolve, reject) => {
      let queue = this.pending.get(key);
      if (!queue) {
        queue = [];
        this.pending.set(key, queue);
        setTimeout(() => this.flush(key), this.options.windowMs);
      }
      queue.push({ items, signal, resolve, reject });
    });
  }

  private flush(key: string): void {
    const waiting = this.pending.get(key) ?? [];
    this.pending.delete(key);
    const live = waiting.filter((caller) => {
      if (!caller.signal.aborted) return true;
      caller.reject(caller.signal.reason);
      return false;
    });
    if (live.length === 0) return;
    const unique = new Map<string, Item>();
    for (const caller of live) for (const item of caller.items) unique.set(this.options.itemKey(item), item);
    // No items (a describe of everything in the group) is still one call.
    const batches = unique.size === 0 ? [[]] : chunks([...unique.values()], this.options.maxItems);
    const controller = new AbortController();
    const answered = Promise.all(batches.map((batch) => this.options.call(key, batch, controller.signal))).then((answers) => answers.flat());
    let stillWaiting = live.length;
    for (const caller of live) {
      const leave = () => {
        caller.reject(caller.signal.reason);
        // The last caller gone: nobody needs the answer any more.
        if (--stillWaiting === 0) controller.abort(caller.signal.reason);
      };
      caller.signal.addEventListener('abort', leave, { once: true });
      answered.then(caller.resolve, caller.reject).finally(() => caller.signal.removeEventListener('abort', leave));
    }
  }
}
