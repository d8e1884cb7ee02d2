/**
 * Slows down guessing the secret: each client address may fail authentication a few times, then must
 * wait. Limits are per address, so an attacker elsewhere cannot lock out the legitimate callers (node
 * preStop hooks and operators, each from their own address); a locked address is answered 429 without
 * its guess being checked, so a flood of guesses learns nothing.
 */
export class GuessLimiter {
  private readonly buckets = new Map<string, { tokens: number; updatedAt: number }>();

  constructor(
    /** Failures allowed at once. */
    private readonly burst = 10,
    /** One more failure allowed every this many ms. */
    private readonly refillMs = 6_000,
    /** Addresses tracked at most; the oldest are forgotten first. */
    private readonly capacity = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** True while the address has failures left. */
  allows(address: string): boolean {
    return this.bucket(address).tokens >= 1;
  }

  recordFailure(address: string): void {
    const bucket = this.bucket(address);
    bucket.tokens = Math.max(0, bucket.tokens - 1);
    this.buckets.delete(address);
    this.buckets.set(address, bucket);
    if (this.buckets.size > this.capacity) this.buckets.delete(this.buckets.keys().next().value!);
  }

  /** Seconds until the address may try again. */
  retryAfterSeconds(address: string): number {
    const missing = 1 - this.bucket(address).tokens;
    return Math.max(1, Math.ceil((missing * this.refillMs) / 1000));
  }

  private bucket(address: string): { tokens: number; updatedAt: number } {
    const now = this.now();
    const bucket = this.buckets.get(address) ?? { tokens: this.burst, updatedAt: now };
    bucket.tokens = Math.min(this.burst, bucket.tokens + (now - bucket.updatedAt) / this.refillMs);
    bucket.updatedAt = now;
    return bucket;
  }
}
