import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Waits before retry number `attempt` (0-based): exponential backoff with jitter (half fixed, half random), so many agents
 * retrying the same throttled API spread out instead of retrying in step. Rejects when `signal` aborts.
 */
export function backoff(attempt: number, signal: AbortSignal, baseMs = 250, capMs = 5_000): Promise<void> {
  const ceiling = Math.min(capMs, baseMs * 2 ** attempt);
  return sleep(Math.round(ceiling / 2 + Math.random() * (ceiling / 2)), undefined, { signal });
}

/** `work`'s result, or undefined once `timeoutMs` passed first (never, without a timeout); `work` itself goes on. */
export async function withinTimeout<T>(work: Promise<T>, timeoutMs: number | undefined): Promise<T | undefined> {
  if (timeoutMs === undefined) return work;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), timeoutMs);
  });
  try {
    return await Promise.race([work, timedOut]);
  } finally {
    clearTimeout(timer);
  }
}
