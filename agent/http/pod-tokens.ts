/**
 * Pods as callers, without a shared secret in their namespace: a pod presents its projected
 * ServiceAccount token (audience TOKEN_AUDIENCE) as the Bearer credential, and the API server says
 * whose it is with a TokenReview. Only a token bound to a pod counts, and the pod it names, with that
 * pod's namespace and node, is the caller: nothing the caller writes in the request can widen that.
 *
 * A review's answer is kept until the token expires (at most 10 minutes, the shortest lifetime a
 * projected token may have, so the token of a deleted pod stops working within that), so a preStop hook
 * that retries costs the API server one review. The token itself is never logged or kept: the cache is
 * keyed by its digest.
 */
import { createHash } from 'node:crypto';
import type { KubeClient, TokenReviewStatus } from '../kube/client.ts';
import { errorMessage } from '../aws/errors.ts';

/** The pod a valid token names. */
export interface PodCaller {
  readonly namespace: string;
  readonly pod: string;
  readonly serviceAccount: string;
  /** The node the pod runs on. */
  readonly node: string;
}

/** Not a valid token for this agent (expired, another audience, not a pod's): 401. */
export class TokenRefusedError extends Error {
  override name = 'TokenRefusedError';
}

/** The API server could not say (unreachable, no permission to review tokens): fail closed, 503. */
export class TokenReviewUnavailableError extends Error {
  override name = 'TokenReviewUnavailableError';
}

/** Too many distinct tokens under review at once: 429. */
export class TokenReviewsBusyError extends Error {
  override name = 'TokenReviewsBusyError';
}

/** What the API server writes into a pod-bound token's review (user.extra). */
const POD_NAME = 'authentication.kubernetes.io/pod-name';
const POD_UID = 'authentication.kubernetes.io/pod-uid';
/** Since Kubernetes 1.30 (ServiceAccountTokenPodNodeInfo); older servers leave it out and the pod is read instead. */
const NODE_NAME = 'authentication.kubernetes.io/node-name';
const SERVICE_ACCOUNT = /^system:serviceaccount:([a-z0-9][-a-z0-9]*):([a-z0-9][-a-z0-9.]*)$/;
/** A JSON Web Token's shape: three base64url parts. Anything else offered as Bearer is a (wrong) secret. */
const JWT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

const MAX_CACHE_MS = 10 * 60_000;
const MAX_CACHED = 4096;
/** Distinct tokens under review at once: a burst of preStop hooks fits, a flood of made-up tokens does not reach the API server. */
const MAX_REVIEWS_IN_FLIGHT = 16;

export function looksLikeToken(bearer: string): boolean {
  return JWT.test(bearer);
}

export class PodTokens {
  private readonly cache = new Map<string, { readonly caller: PodCaller; readonly until: number }>();
  private readonly inFlight = new Map<string, Promise<PodCaller>>();

  constructor(
    private readonly kube: Pick<KubeClient, 'reviewToken' | 'getPod'>,
    readonly audience: string,
    private readonly now: () => number = Date.now,
  ) {}

  /** The pod the token names; throws TokenRefusedError, TokenReviewUnavailableError or TokenReviewsBusyError. */
  async callerOf(token: string): Promise<PodCaller> {
    const key = createHash('sha256').update(token).digest('base64');
    const cached = this.cache.get(key);
    if (cached && this.now() < cached.until) return cached.caller;
    if (cached) this.cache.delete(key);
    const pending = this.inFlight.get(key);
    if (pending) return pending;
    if (this.inFlight.size >= MAX_REVIEWS_IN_FLIGHT) throw new TokenReviewsBusyError(`${MAX_REVIEWS_IN_FLIGHT} pod tokens are under review already: try again in a second`);
    const review = this.review(token)
      .then((caller) => {
        this.remember(key, caller, expiresAt(token));
        return caller;
      })
      .finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, review);
    return review;
  }

  private async review(token: string): Promise<PodCaller> {
    let status: TokenReviewStatus;
    try {
      status = await this.kube.reviewToken(token, [this.audience]);
    } catch (error) {
      throw new TokenReviewUnavailableError(`could not check the pod token, the TokenReview failed: ${errorMessage(error)}`);
    }
    const refused = (why: string) => new TokenRefusedError(`the pod token is refused: ${why}`);
    const fix = `present the pod's projected ServiceAccount token with audience "${this.audience}" (a serviceAccountToken volume; the chart's NOTES show one)`;
    if (!status.authenticated) throw refused(`${status.error || 'the API server did not authenticate it'}; ${fix}`);
    // An API server that ignored the audiences asked for would accept any of the pod's tokens.
    if (!status.audiences?.includes(this.audience)) throw refused(`it is not valid for audience "${this.audience}"; ${fix}`);
    const account = SERVICE_ACCOUNT.exec(status.user?.username ?? '');
    if (!account) throw refused(`it belongs to ${JSON.stringify(status.user?.username ?? 'nobody')}, not to a ServiceAccount; ${fix}`);
    const [, namespace, serviceAccount] = account as unknown as [string, string, string];
    const extra = status.user?.extra ?? {};
    const pod = extra[POD_NAME]?.[0];
    if (!pod) throw refused(`it is not bound to a pod (a TokenRequest of the ServiceAccount alone); ${fix}`);
    const node = extra[NODE_NAME]?.[0] ?? (await this.nodeOf(namespace, pod, extra[POD_UID]?.[0]));
    return { namespace, pod, serviceAccount, node };
  }

  /** The node of the token's pod, read from the pod itself on API servers that do not put it in the review. */
  private async nodeOf(namespace: string, name: string, uid: string | undefined): Promise<string> {
    let pod;
    try {
      pod = await this.kube.getPod(namespace, name);
    } catch (error) {
      throw new TokenReviewUnavailableError(`could not read the pod the token names, to learn its node: ${errorMessage(error)}`);
    }
    if (uid !== undefined && pod.metadata.uid !== uid) throw new TokenRefusedError(`the pod token is refused: its pod ${namespace}/${name} has been replaced by another of the same name`);
    if (!pod.spec.nodeName) throw new TokenRefusedError(`the pod token is refused: its pod ${namespace}/${name} is not scheduled on a node`);
    return pod.spec.nodeName;
  }

  private remember(key: string, caller: PodCaller, expires: number | undefined): void {
    const now = this.now();
    const until = Math.min(expires ?? now, now + MAX_CACHE_MS);
    if (until <= now) return;
    if (this.cache.size >= MAX_CACHED) {
      for (const [cachedKey, entry] of this.cache) if (entry.until <= now) this.cache.delete(cachedKey);
      if (this.cache.size >= MAX_CACHED) this.cache.delete(this.cache.keys().next().value!);
    }
    this.cache.set(key, { caller, until });
  }
}

/**
 * When the token says it expires (its `exp` claim), read without checking the signature: only the
 * cache's lifetime depends on it, never whether the token is accepted, which the TokenReview decides.
 */
function expiresAt(token: string): number | undefined {
  try {
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8')) as { exp?: unknown };
    return typeof claims.exp === 'number' ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** How a pod caller appears in the log and in Events. */
export function describeCaller(caller: PodCaller): string {
  return `pod ${caller.namespace}/${caller.pod} (service account ${caller.serviceAccount}, node ${caller.node})`;
}
