/**
 * The admin secret of the API as it is now. Given as SECRET it never changes. Given as SECRET_FILE (a
 * mounted Secret, which kubelet rewrites in place when the Secret changes) it is re-read when asked: at
 * most once a second, and at once when an offered secret does not match (a caller that already has the
 * new one must not collect failed attempts until the next read). So a rotated secret opens every agent as
 * soon as its kubelet has written it: no restart, no pod-template checksum that would roll the whole
 * DaemonSet at every GitOps render. A wrong guess costs one read of a small file, and the GuessLimiter
 * bounds the guesses.
 *
 * The value it replaced stays accepted for a short while: kubelets write the new value node by node
 * within about a minute, and a caller who read the Secret just before the change still holds the old one.
 */
import type { Logger } from '../log.ts';
import { readSecretFile } from '../config.ts';
import { secretMatches } from './auth.ts';

export interface ApiSecret {
  /** The secret to present to a peer agent. */
  current(): string;
  /** Whether `offered` opens the API now. */
  accepts(offered: string | undefined): boolean;
}

/** How long a replaced secret keeps working: a kubelet's sync period (1 min) and its cache, with a margin. */
export const REPLACED_SECRET_GRACE_MS = 120_000;
const REREAD_AFTER_MS = 1_000;

export function fixedSecret(value: string): ApiSecret {
  return { current: () => value, accepts: (offered) => secretMatches(offered, value) };
}

export class SecretFile implements ApiSecret {
  private value: string;
  private replaced: { readonly value: string; readonly until: number } | undefined;
  private readAt: number;
  /** The last problem logged, so that a lasting one is logged once, not once a second. */
  private problem: string | undefined;

  constructor(
    private readonly path: string,
    /** As read at start-up, and checked then. */
    initial: string,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {
    this.value = initial;
    this.readAt = now();
  }

  current(): string {
    this.refresh();
    return this.value;
  }

  accepts(offered: string | undefined): boolean {
    this.refresh();
    if (this.matches(offered)) return true;
    this.refresh(true);
    return this.matches(offered);
  }

  private matches(offered: string | undefined): boolean {
    if (secretMatches(offered, this.value)) return true;
    return this.replaced !== undefined && this.now() < this.replaced.until && secretMatches(offered, this.replaced.value);
  }

  private refresh(force = false): void {
    const now = this.now();
    if (!force && now - this.readAt < REREAD_AFTER_MS) return;
    this.readAt = now;
    const found = readSecretFile(this.path);
    if ('problem' in found) return this.report(found.problem);
    const next = found.value;
    if (this.problem !== undefined) this.logger.info({ path: this.path }, 'SECRET_FILE is readable again');
    this.problem = undefined;
    if (next === this.value) return;
    this.replaced = { value: this.value, until: now + REPLACED_SECRET_GRACE_MS };
    this.value = next;
    this.logger.info({ path: this.path, previousAcceptedForMs: REPLACED_SECRET_GRACE_MS }, 'the API secret changed: the new one is in use, the previous one is accepted for a while');
  }

  /** Keeps the secret it has: an API nobody can open would be worse than one that opens with the last good one. */
  private report(problem: string): void {
    if (problem === this.problem) return;
    this.problem = problem;
    this.logger.error({ path: this.path }, `${problem}: keeping the secret read before; fix the mounted Secret`);
  }
}
