import { setTimeout as delay } from 'node:timers/promises';
import type { Agent } from 'node:http';
import { agentFor, readText, send } from '../http/request.ts';
import type { Logger } from '../log.ts';

/** A read-only IMDS client: IMDSv2 tokens handled inside, callers just ask for paths. */
export interface ImdsClient {
  /** Body of `path` on 200, `undefined` on 404; throws `ImdsUnavailableError` otherwise. */
  get(path: string): Promise<string | undefined>;
  close(): Promise<void>;
}

export interface ImdsClientOptions {
  /** Defaults to `http://169.254.169.254`. */
  endpoint?: string;
  /** Allow IMDSv1 (no token) when the token request is refused or never answered. */
  v1Fallback: boolean;
  /** Per attempt. Defaults to 3000 ms; keep it at 2 s or more on instances, where a loaded IMDS takes well over 1 s. */
  timeoutMs?: number;
  /** Extra attempts after a timeout, connection error or 5xx. */
  retries?: number;
  tokenTtlSeconds?: number;
  logger: Logger;
  now?: () => number;
}

/** IMDS could not answer: timeout, connection error, 5xx or an unexpected status. */
export class ImdsUnavailableError extends Error {
  override readonly name: string = 'ImdsUnavailableError';

  constructor(
    readonly path: string,
    /** The cause without the path, the same for every item that fails the same way: for logs and /readyz. */
    readonly reason: string,
    options?: { cause?: unknown },
  ) {
    super(`IMDS request for ${path} failed: ${reason}`, options);
  }
}

/** What fixes a metadata hop limit of 1 for a pod without host networking. */
export const HOP_LIMIT_FIX =
  'raise the instance\'s metadata hop limit to 2 (aws ec2 modify-instance-metadata-options --instance-id <id> ' +
  '--http-put-response-hop-limit 2 --http-tokens required; for a node group, set it in its launch template) or run the agent with hostNetwork: true';

/**
 * IMDS answers, insists on a token, and the answer to the token request never arrives: the metadata hop
 * limit is 1 and the agent runs one hop away, in a pod without host networking.
 */
export class ImdsHopLimitError extends ImdsUnavailableError {
  override readonly name = 'ImdsHopLimitError';
}

export interface InstanceIdentity {
  instanceId: string;
  region: string;
  vpcId: string | undefined;
  privateIp?: string;
}

/** What the agent needs to know about its own instance at start-up. */
export async function instanceIdentity(imds: ImdsClient): Promise<InstanceIdentity> {
  const [instanceId, region, mac, privateIp] = await Promise.all([
    required(imds, 'latest/meta-data/instance-id'),
    required(imds, 'latest/meta-data/placement/region'),
    imds.get('latest/meta-data/mac'),
    imds.get('latest/meta-data/local-ipv4'),
  ]);
  // The primary interface's MAC leads to the VPC; an instance always has one, but stay lenient.
  const vpcId = mac ? await imds.get(`latest/meta-data/network/interfaces/macs/${mac.trim()}/vpc-id`) : undefined;
  return {
    instanceId: instanceId.trim(),
    region: region.trim(),
    vpcId: vpcId?.trim() || undefined,
    ...(privateIp?.trim() ? { privateIp: privateIp.trim() } : {}),
  };
}

async function required(imds: ImdsClient, path: string): Promise<string> {
  const value = await imds.get(path);
  if (!value?.trim()) throw new Error(`IMDS has no /${path}`);
  return value;
}

export function createImdsClient(opts: ImdsClientOptions): ImdsClient {
  return new HttpImdsClient(opts);
}

const TOKEN_PATH = '/latest/api/token';
const TOKEN_TTL_HEADER = 'x-aws-ec2-metadata-token-ttl-seconds';
const TOKEN_HEADER = 'x-aws-ec2-metadata-token';
/** Renew before IMDS does expire the token, so a slow request never carries a dead one. */
const TOKEN_RENEW_FRACTION = 0.8;
const BACKOFF_BASE_MS = 100;
/** On IMDSv1, the token is asked for again after 5 s, then 10 s, 20 s… at most every 2 minutes. */
const TOKEN_RETRY_BASE_MS = 5_000;
const TOKEN_RETRY_MAX_MS = 120_000;
/** Statuses with which IMDS says "no IMDSv2 here", as the AWS SDK treats them. */
const NO_V2_STATUSES = new Set([403, 404, 405]);
/** A connection closed before or during the answer (`socket hang up`, `aborted`): the request may have arrived, its answer did not. */
const DROPPED_CODES = new Set(['ECONNRESET']);

/** `noAnswer`: timed out or dropped, the way a lost answer looks, as opposed to a refused connection. */
type Outcome = { status: number; body: string } | { error: Error; timedOut: boolean; noAnswer: boolean };
/** A token request that did not give a token. */
type TokenFailure = Exclude<Outcome, { body: string }> | { status: number };

type TokenOutcome = { kind: 'token'; value: string } | { kind: 'v1' } | { kind: 'failed'; failure: TokenFailure };

class HttpImdsClient implements ImdsClient {
  private readonly base: string;
  private readonly v1Fallback: boolean;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly tokenTtlSeconds: number;
  private readonly logger: Logger;
  private readonly now: () => number;
  private readonly agent: Agent;
  private closed = false;

  private token: { value: string; renewAt: number } | undefined;
  /** One token request shared by every concurrent caller. */
  private tokenInFlight: Promise<TokenOutcome> | undefined;
  /**
   * Set while on IMDSv1 (the token request failed and v1 is allowed), with why and when to ask for a
   * token again; cleared only by a token, so a slow token request costs v2 for a while, not for good.
   */
  private v1: { failure: TokenFailure; retries: number; nextTokenAt: number } | undefined;

  constructor(opts: ImdsClientOptions) {
    this.base = opts.endpoint ?? 'http://169.254.169.254';
    this.v1Fallback = opts.v1Fallback;
    this.timeoutMs = opts.timeoutMs ?? 3000;
    this.retries = opts.retries ?? 2;
    this.tokenTtlSeconds = opts.tokenTtlSeconds ?? 21600;
    this.logger = opts.logger;
    this.now = opts.now ?? Date.now;
    this.agent = agentFor(this.base);
  }

  async get(rawPath: string): Promise<string | undefined> {
    const path = normalizePath(rawPath);
    let token = await this.currentToken(path);
    let outcome = await this.send('GET', path, tokenHeaders(token));
    if ('status' in outcome && outcome.status === 401) {
      // Without a token: IMDS insists on one. With one: it expired or was revoked. One retry with a fresh one.
      if (token === undefined) token = await this.tokenSinceV1Refused(path);
      else {
        if (this.token?.value === token) this.token = undefined;
        token = await this.currentToken(path);
      }
      outcome = await this.send('GET', path, tokenHeaders(token));
    }
    return this.interpret(path, outcome);
  }

  async close(): Promise<void> {
    this.closed = true;
    // Shutting down must not wait on a metadata service that does not answer.
    this.agent.destroy();
  }

  private interpret(path: string, outcome: Outcome): string | undefined {
    if ('error' in outcome) throw new ImdsUnavailableError(path, this.describeFailure(outcome), { cause: outcome.error });
    if (outcome.status === 200) return outcome.body;
    if (outcome.status === 404) return undefined;
    throw new ImdsUnavailableError(path, `IMDS answered ${outcome.status}`);
  }

  /** The token to send, or `undefined` to go without one (IMDSv1). */
  private async currentToken(path: string): Promise<string | undefined> {
    if (this.v1) {
      // The v1 answer does not wait for the retry: a token request that hangs would hold up every read.
      if (this.now() >= this.v1.nextTokenAt && !this.tokenInFlight) void this.requestToken();
      return undefined;
    }
    if (this.token && this.now() < this.token.renewAt) return this.token.value;
    const outcome = await this.requestToken();
    if (outcome.kind === 'failed') throw this.tokenError(path, outcome.failure);
    return outcome.kind === 'token' ? outcome.value : undefined;
  }

  /** On v1, IMDS answered 401: it requires a token now. Get one if a try is due, else say why there is none. */
  private async tokenSinceV1Refused(path: string): Promise<string> {
    // A token retry may have ended between this request's start and its answer.
    if (!this.v1 && this.token) return this.token.value;
    const due = this.v1 === undefined || this.now() >= this.v1.nextTokenAt;
    const pending = this.tokenInFlight ?? (due ? this.requestToken() : undefined);
    const outcome = await pending;
    if (outcome?.kind === 'token') return outcome.value;
    const failure = outcome?.kind === 'failed' ? outcome.failure : this.v1?.failure;
    throw this.tokenRequiredError(path, failure);
  }

  private requestToken(): Promise<TokenOutcome> {
    this.tokenInFlight ??= this.fetchToken().finally(() => {
      this.tokenInFlight = undefined;
    });
    return this.tokenInFlight;
  }

  /** Never rejects: the outcome is shared by concurrent callers, each of which reports it for its own path. */
  private async fetchToken(): Promise<TokenOutcome> {
    const requestedAt = this.now();
    const outcome = await this.send('PUT', TOKEN_PATH, { [TOKEN_TTL_HEADER]: String(this.tokenTtlSeconds) });
    if ('status' in outcome && outcome.status === 200 && outcome.body.length > 0) {
      this.token = { value: outcome.body, renewAt: requestedAt + this.tokenTtlSeconds * 1000 * TOKEN_RENEW_FRACTION };
      if (this.v1) this.logger.info('IMDS answered the token request again: back on IMDSv2');
      else this.logger.debug({ ttlSeconds: this.tokenTtlSeconds }, 'IMDS token obtained');
      this.v1 = undefined;
      return { kind: 'token', value: outcome.body };
    }
    const failure: TokenFailure = 'status' in outcome ? { status: outcome.status } : outcome;

    if (this.v1) {
      const retries = this.v1.retries + 1;
      this.v1 = { failure, retries, nextTokenAt: this.now() + tokenRetryDelay(retries) };
      this.logger.debug({ reason: this.describeTokenFailure(failure) }, 'IMDS token still unavailable; staying on IMDSv1');
      return { kind: 'v1' };
    }
    const noV2 = 'status' in failure ? NO_V2_STATUSES.has(failure.status) : failure.noAnswer;
    if (noV2 && this.v1Fallback) {
      this.v1 = { failure, retries: 0, nextTokenAt: this.now() + tokenRetryDelay(0) };
      this.logger.warn(
        { reason: this.describeTokenFailure(failure) },
        'IMDSv2 token unavailable; using IMDSv1 and asking for a token again with backoff (set AWS_EC2_METADATA_V1_DISABLED=true to forbid IMDSv1)',
      );
      return { kind: 'v1' };
    }
    return { kind: 'failed', failure };
  }

  private tokenError(path: string, failure: TokenFailure): ImdsUnavailableError {
    const reason = this.describeTokenFailure(failure);
    if ('status' in failure || !failure.noAnswer) return new ImdsUnavailableError(path, reason, { cause: causeOf(failure) });
    // Without v1 there is no token-less answer to prove IMDS reachable: name the likely cause, and the other one.
    return new ImdsUnavailableError(
      path,
      `${reason}. On EC2 this is the metadata hop limit: the token's answer does not reach a pod without host networking when the hop limit is 1; ` +
        `${HOP_LIMIT_FIX}. Elsewhere, nothing answers at the IMDS address`,
      { cause: failure.error },
    );
  }

  /** IMDS answered a request without a token with 401, and the token request had failed as `failure` says. */
  private tokenRequiredError(path: string, failure: TokenFailure | undefined): ImdsUnavailableError {
    const refused = 'IMDS requires a token (it answered 401 without one)';
    if (failure && !('status' in failure) && failure.noAnswer) {
      return new ImdsHopLimitError(
        path,
        `${refused}, but ${this.describeTokenFailure(failure)}: its answer is lost on the way because the metadata hop limit ` +
          `is 1 and the agent runs in a pod without host networking; ${HOP_LIMIT_FIX}`,
        { cause: failure.error },
      );
    }
    const why = failure ? this.describeTokenFailure(failure) : 'no token was obtained';
    return new ImdsUnavailableError(path, `${refused}, but ${why}`, { cause: failure && causeOf(failure) });
  }

  private describeTokenFailure(failure: TokenFailure): string {
    if ('status' in failure) return `the token request was answered ${failure.status}`;
    const attempts = `${this.retries + 1} attempts`;
    if (failure.timedOut) return `the token request got no answer within ${this.timeoutMs}ms (${attempts})`;
    if (failure.noAnswer) return `the token request's connection was closed without an answer (${attempts})`;
    return `the token request failed: ${failure.error.message} (${attempts})`;
  }

  private describeFailure(outcome: { error: Error; timedOut: boolean }): string {
    const attempts = this.retries + 1;
    return outcome.timedOut
      ? `no answer within ${this.timeoutMs}ms (${attempts} attempts)`
      : `${outcome.error.message} (${attempts} attempts)`;
  }

  /** One request with retries on what may pass: timeouts, connection errors and 5xx. */
  private async send(method: 'GET' | 'PUT', path: string, headers: Record<string, string>): Promise<Outcome> {
    for (let attempt = 0; ; attempt++) {
      const outcome = await this.attempt(method, path, headers);
      const transient = 'error' in outcome || outcome.status >= 500;
      if (!transient || attempt >= this.retries || this.closed) return outcome;
      await delay(BACKOFF_BASE_MS * 2 ** attempt);
    }
  }

  private async attempt(method: 'GET' | 'PUT', path: string, headers: Record<string, string>): Promise<Outcome> {
    try {
      // One bound for the whole attempt: connecting, the answer's headers and its body.
      const signal = AbortSignal.timeout(this.timeoutMs);
      const res = await send({ method, url: new URL(path, this.base), headers, agent: this.agent, signal });
      // Always read the body, so the connection can be reused; decisions are on the status only.
      return { status: res.status, body: await readText(res.body, signal) };
    } catch (err) {
      const error = err instanceof Error ? err : new Error(String(err));
      const timedOut = isTimeout(error);
      return { error, timedOut, noAnswer: timedOut || DROPPED_CODES.has(errorCode(error) ?? '') };
    }
  }
}

function tokenRetryDelay(retries: number): number {
  return Math.min(TOKEN_RETRY_BASE_MS * 2 ** retries, TOKEN_RETRY_MAX_MS);
}

function causeOf(failure: TokenFailure): Error | undefined {
  return 'error' in failure ? failure.error : undefined;
}

function tokenHeaders(token: string | undefined): Record<string, string> {
  return token === undefined ? {} : { [TOKEN_HEADER]: token };
}

/** `latest/meta-data/x` and `/latest/meta-data/x` are the same item. */
function normalizePath(path: string): string {
  return `/${path.replace(/^\/+/, '')}`;
}

function errorCode(err: Error): string | undefined {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

function isTimeout(err: Error): boolean {
  return err.name === 'TimeoutError';
}
