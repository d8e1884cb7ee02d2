/** Small statistics and formatting helpers for the benchmark tables. */

export function sorted(values: readonly number[]): number[] {
  return [...values].filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
}

export function quantile(values: readonly number[], q: number): number {
  const s = sorted(values);
  if (s.length === 0) return NaN;
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return s[lo]! + (s[hi]! - s[lo]!) * (pos - lo);
}

export const median = (values: readonly number[]): number => quantile(values, 0.5);
export const min = (values: readonly number[]): number => sorted(values)[0] ?? NaN;
export const max = (values: readonly number[]): number => sorted(values).at(-1) ?? NaN;

/** Nearest-rank percentile (what latency reports usually mean by p99). */
export function percentile(values: readonly number[], p: number): number {
  const s = sorted(values);
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/** "median (min–max)" with a unit, e.g. "1.23 s (1.01–1.50)". */
export function mmm(values: readonly number[], format: (n: number) => string = ms): string {
  if (values.length === 0) return 'n/a';
  if (values.length === 1) return format(values[0]!);
  return `${format(median(values))} (${format(min(values))}–${format(max(values))})`;
}

export function ms(n: number): string {
  if (!Number.isFinite(n)) return 'n/a';
  return `${Math.round(n)} ms`;
}

export function seconds(n: number): string {
  if (!Number.isFinite(n)) return 'n/a';
  return `${(n / 1000).toFixed(2)} s`;
}

export function num(n: number, digits = 0): string {
  if (!Number.isFinite(n)) return 'n/a';
  return n.toFixed(digits);
}

export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

export function sum(values: readonly number[]): number {
  return values.reduce((a, b) => a + b, 0);
}
