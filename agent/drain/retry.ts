import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Waits before retry number `attempt` (0-based): exponential backoff with jitter (half fixed, half random), so many agents
 * retrying the same throttled API spread out instead of retrying in step. Rejects when `signal` aborts.
 */
export function backoff(attempt: number, signal: AbortSignal, baseMs = 250, capMs = 5_000): Promise<void> {
  const ceiling = Math.min(capMs, baseMs * 2 ** attempt);
  return sleep(Math.round(ceiling / 2 + Math.random() * (ceiling / 2)), undefined, { signal });
}
