/** Asking AWS about many resources at once, within its per-call limits. */

export function chunks<T>(items: readonly T[], size: number): T[][] {
  const result: T[][] = [];
  for (let start = 0; start < items.length; start += size) result.push(items.slice(start, start + size));
  return result;
}

/** Runs `work` over `items` with at most `concurrency` at once, the results in the items' order; the first failure fails all. */
export async function pool<T, R>(items: readonly T[], concurrency: number, work: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (next < items.length) {
        const index = next++;
        results[index] = await work(items[index]!, index);
      }
    }),
  );
  return results;
}

/**
 * Describes `keys` in one call. When the call fails because one of them is gone (deleted since it was
 * found, and AWS fails the whole batch for it), asks one by one, so the others are still seen.
 */
export async function describeSurvivors<K, T>(keys: readonly K[], describe: (batch: K[]) => Promise<T[]>, isGone: (error: unknown) => boolean): Promise<T[]> {
  if (keys.length === 0) return [];
  try {
    return await describe([...keys]);
  } catch (error) {
    if (!isGone(error)) throw error;
    if (keys.length === 1) return [];
    return (await Promise.all(keys.map((key) => describeSurvivors([key], describe, isGone)))).flat();
  }
}
