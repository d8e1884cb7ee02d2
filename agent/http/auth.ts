/** Who may drain: whoever holds the secret, given as ?pw= or as "Authorization: Bearer". */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

/** The secret the request offers, if any. A request that offers two different ones offers none. */
export function offeredSecret(req: IncomingMessage, query: URLSearchParams): string | undefined {
  const header = req.headers.authorization;
  const bearer = header !== undefined && /^Bearer\s+/i.test(header) ? header.replace(/^Bearer\s+/i, '') : undefined;
  const fromQuery = query.getAll('pw');
  const offered = [...fromQuery, ...(bearer === undefined ? [] : [bearer])];
  const distinct = new Set(offered);
  return distinct.size === 1 ? offered[0] : undefined;
}

/**
 * Compares in constant time over digests of equal length, so neither the content nor the length of
 * the secret leaks through timing.
 */
export function secretMatches(offered: string | undefined, secret: string): boolean {
  if (offered === undefined) return false;
  const digest = (text: string) => createHash('sha256').update(text, 'utf8').digest();
  return timingSafeEqual(digest(offered), digest(secret));
}
