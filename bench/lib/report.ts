/** What each benchmark hands back to bench/run.ts. */
export interface Section {
  readonly id: string;
  readonly title: string;
  /** Markdown: tables and their notes. */
  readonly body: string;
  /** Numbers behind the tables, kept in bench/results.json. */
  readonly raw: unknown;
  /** One-line headline numbers for the summary at the top. */
  readonly headline: readonly string[];
}

export interface BenchOptions {
  /** Tiny sizes and single runs, for CI: proves the benchmarks still run, says nothing about numbers. */
  readonly smoke: boolean;
  readonly log: (line: string) => void;
}
