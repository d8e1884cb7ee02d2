/** The admin secret as a request offers it (?pw= or "Authorization: Bearer"), and its constant-time comparison. */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingMessage } from 'node:http';

/** The credential of an "Authorization: Bearer" header: the secret, or a pod's token. */
export function bearerOf(req: IncomingMessage): string | undefined {
  const header = req.headers.authorization;
  return header !== undefined && /^Bearer\s+/i.test(header) ? header.replace(/^Bearer\s+/i, '') : undefined;
}

/** The secret the request offers, if any. A request that offers two different ones offers none. */
export function offeredSecret(req: IncomingMessage, query: URLSearchParams): string | undefined {
  const bearer = bearerOf(req);
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
