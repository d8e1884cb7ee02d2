/**
 * The one place that decides whether this node is going away. Each source (IMDS notices, the Node
 * watch, the Pod read on SIGTERM) reports all it sees now; the verdict is "going away" while any sign
 * holds, or once a sticky one was seen. When the last non-sticky sign passes (a maintenance event
 * canceled, a warm-pool instance InService again, an autoscaler's taint taken off) the node is given
 * back. Listeners act on changes of the verdict; none of them decides.
 */
import type { Evidence } from './evidence.ts';

export type Source = 'imds' | 'node' | 'pod';

export type Verdict =
  | { readonly goingAway: false }
  | {
      readonly goingAway: true;
      /** Every sign that holds, sticky ones included; the first is the one the drain is named after. */
      readonly evidence: readonly Evidence[];
      /** The soonest deadline any sign gives. */
      readonly deadline: Date | undefined;
    };

export interface VerdictChange {
  readonly verdict: Verdict;
  /** Going away → staying: what a passing sign took out must be given back. */
  readonly givenBack: boolean;
  /** What changed, for the log: e.g. "the maintenance event passed". */
  readonly why: string;
}

const STAYING: Verdict = { goingAway: false };

export class NodeFate {
  private readonly current = new Map<Source, readonly Evidence[]>();
  /** Sticky signs stay, whatever their source reports later. */
  private readonly sticky = new Map<string, Evidence>();
  private verdict: Verdict = STAYING;
  private readonly listeners: ((change: VerdictChange) => void)[] = [];

  onChange(listener: (change: VerdictChange) => void): void {
    this.listeners.push(listener);
  }

  now(): Verdict {
    return this.verdict;
  }

  /** Everything `source` sees now (an empty list: it sees nothing any more). */
  report(source: Source, evidence: readonly Evidence[]): void {
    this.current.set(source, evidence);
    for (const sign of evidence) if (sign.sticky) this.sticky.set(sign.key, sign);
    const next = this.decide();
    if (sameVerdict(this.verdict, next)) return;
    const before = this.verdict;
    this.verdict = next;
    const change: VerdictChange = { verdict: next, givenBack: before.goingAway && !next.goingAway, why: describeChange(before, next) };
    for (const listener of this.listeners) listener(change);
  }

  private decide(): Verdict {
    const byKey = new Map<string, Evidence>();
    for (const evidence of this.current.values()) for (const sign of evidence) byKey.set(sign.key, sign);
    for (const [key, sign] of this.sticky) if (!byKey.has(key)) byKey.set(key, sign);
    if (byKey.size === 0) return STAYING;
    // Sticky first: an ending instance names the drain, not a maintenance event that may pass.
    const evidence = [...byKey.values()].sort((a, b) => Number(b.sticky) - Number(a.sticky));
    const deadlines = evidence.flatMap((sign) => (sign.deadline ? [sign.deadline.getTime()] : []));
    return { goingAway: true, evidence, deadline: deadlines.length > 0 ? new Date(Math.min(...deadlines)) : undefined };
  }
}

function sameVerdict(a: Verdict, b: Verdict): boolean {
  if (!a.goingAway || !b.goingAway) return a.goingAway === b.goingAway;
  const keys = (verdict: typeof a) => verdict.evidence.map((sign) => `${sign.key}@${sign.deadline?.getTime() ?? ''}`).sort().join(' ');
  return keys(a) === keys(b);
}

function describeChange(before: Verdict, after: Verdict): string {
  if (!after.goingAway) return before.goingAway ? `no sign holds any more (was: ${before.evidence.map((sign) => sign.reason).join('; ')})` : 'staying';
  const known = new Set(before.goingAway ? before.evidence.map((sign) => sign.key) : []);
  const added = after.evidence.filter((sign) => !known.has(sign.key));
  return added.length > 0 ? added.map((sign) => sign.reason).join('; ') : 'the signs changed';
}
