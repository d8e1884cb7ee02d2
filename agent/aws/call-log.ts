import { AsyncLocalStorage } from 'node:async_hooks';

export type CallCounts = Record<string, number>;

/**
 * Counts AWS calls by action. Besides the running total, a drain can `measure` its own work: calls
 * made anywhere below it (even in shared helpers) are attributed to it through async context, so
 * concurrent drains do not blur each other's counts.
 */
export class CallLog {
  private readonly total: CallCounts = {};
  private readonly current = new AsyncLocalStorage<CallCounts>();
  private readonly listeners: ((action: string) => void)[] = [];

  /** Called on every call, e.g. to count it in a metric. */
  onCall(listener: (action: string) => void): void {
    this.listeners.push(listener);
  }

  record(action: string): void {
    increment(this.total, action);
    for (const listener of this.listeners) listener(action);
    const scoped = this.current.getStore();
    if (scoped) increment(scoped, action);
  }

  /** Runs `work`, collecting into `into` the calls it makes. */
  measure<T>(into: CallCounts, work: () => Promise<T>): Promise<T> {
    return this.current.run(into, work);
  }

  totals(): Readonly<CallCounts> {
    return { ...this.total };
  }
}

function increment(counts: CallCounts, action: string): void {
  counts[action] = (counts[action] ?? 0) + 1;
}
