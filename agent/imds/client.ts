import { setTimeout as delay } from 'node:timers/promises';
import { Agent, request } from 'undici';
import type { Logger } from '../log.ts';

/** A read-only IMDS client: IMDSv2 tokens handled inside, callers just ask for paths. */
export interface ImdsClient {
  /** Body of `path` on 200, `undefined` on 404; throws `ImdsUnavailableError` otherwise. */
  get(path: string): Promise<string | undefined>;
  close(): Promise<void>;
}

export interface ImdsClientOptions {
  /** Defaults to `AWS_EC2_METADATA_SERVICE_ENDPOINT`, then `http://169.254.169.254`. */
  endpoint?: string;
  /** Allow IMDSv1 (no token) when the token request is refused or never answered. */
  v1Fallback: boolean;
  /** Per attempt. */
  timeoutMs?: number;
  /** Extra attempts after a timeout, connection error or 5xx. */
  retries?: number;
  tokenTtlSeconds?: number;
  logger: Logger;
  now?: () => number;
}

/** IMDS could not answer: timeout, connection error, 5xx or an unexpected status. */
export class ImdsUnavailableError extends Error {
  override readonly name = 'ImdsUnavailableError';

  constructor(
    readonly path: string,
    reason: string,
    options?: { cause?: unknown },
  ) {
    super(`IMDS request for ${path} failed: ${reason}`, options);
  }
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
  return new UndiciImdsClient(opts);
}

const TOKEN_PATH = '/latest/api/token';
const TOKEN_TTL_HEADER = 'x-aws-ec2-metadata-token-ttl-seconds';
const TOKEN_HEADER = 'x-aws-ec2-metadata-token';
/** Renew before IMDS does expire the token, so a slow request never carries a dead one. */
const TOKEN_RENEW_FRACTION = 0.8;
const BACKOFF_BASE_MS = 100;
/** Statuses with which IMDS says "no IMDSv2 here", as the AWS SDK treats them. */
const NO_V2_STATUSES = new Set([403, 404, 405]);

type Outcome = { status: number; body: string } | { error: Error; timedOut: boolean };

type TokenOutcome = { kind: 'token'; value: string } | { kind: 'v1' } | { kind: 'failed'; reason: string; cause?: unknown };

class UndiciImdsClient implements ImdsClient {
  private readonly base: string;
  private readonly v1Fallback: boolean;
  private readonly timeoutMs: number;
  private readonly retries: number;
  private readonly tokenTtlSeconds: number;
  private readonly logger: Logger;
  private readonly now: () => number;
  private readonly agent: Agent;

  private token: { value: string; renewAt: number } | undefined;
  /** One token request shared by every concurrent caller. */
  private tokenInFlight: Promise<TokenOutcome> | undefined;
  /** Set when IMDSv2 looked unavailable and v1 is allowed; cleared when IMDS answers 401 without a token. */
  private usingV1 = false;

  constructor(opts: ImdsClientOptions) {
    this.base = opts.endpoint ?? process.env.AWS_EC2_METADATA_SERVICE_ENDPOINT ?? 'http://169.254.169.254';
    this.v1Fallback = opts.v1Fallback;
    this.timeoutMs = opts.timeoutMs ?? 1500;
    this.retries = opts.retries ?? 2;
    this.tokenTtlSeconds = opts.tokenTtlSeconds ?? 21600;
    this.logger = opts.logger;
    this.now = opts.now ?? Date.now;
    this.agent = new Agent({
      connectTimeout: this.timeoutMs,
      headersTimeout: this.timeoutMs,
      bodyTimeout: this.timeoutMs,
      keepAliveTimeout: 5000,
    });
  }

  async get(rawPath: string): Promise<string | undefined> {
    const path = normalizePath(rawPath);
    let token = await this.currentToken(path);
    let outcome = await this.send('GET', path, tokenHeaders(token));
    if ('status' in outcome && outcome.status === 401) {
      // The token expired or was revoked, or IMDS now insists on a token: one retry with a fresh one.
      this.forget(token);
      token = await this.currentToken(path);
      outcome = await this.send('GET', path, tokenHeaders(token));
    }
    return this.interpret(path, outcome);
  }

  async close(): Promise<void> {
    // Shutting down must not wait on a metadata service that does not answer.
    await this.agent.destroy();
  }

  private interpret(path: string, outcome: Outcome): string | undefined {
    if ('error' in outcome) throw new ImdsUnavailableError(path, this.describeFailure(outcome), { cause: outcome.error });
    if (outcome.status === 200) return outcome.body;
    if (outcome.status === 404) return undefined;
    throw new ImdsUnavailableError(path, `IMDS answered ${outcome.status}`);
  }

  /** The token to send, or `undefined` to go without one (IMDSv1). */
  private async currentToken(path: string): Promise<string | undefined> {
    if (this.usingV1) return undefined;
    if (this.token && this.now() < this.token.renewAt) return this.token.value;
    this.tokenInFlight ??= this.fetchToken().finally(() => {
      this.tokenInFlight = undefined;
    });
    const outcome = await this.tokenInFlight;
    if (outcome.kind === 'failed') throw new ImdsUnavailableError(path, outcome.reason, { cause: outcome.cause });
    return outcome.kind === 'token' ? outcome.value : undefined;
  }

  private forget(token: string | undefined): void {
    if (token === undefined) this.usingV1 = false;
    else if (this.token?.value === token) this.token = undefined;
  }

  /** Never rejects: the outcome is shared by concurrent callers, each of which reports it for its own path. */
  private async fetchToken(): Promise<TokenOutcome> {
    const requestedAt = this.now();
    const outcome = await this.send('PUT', TOKEN_PATH, { [TOKEN_TTL_HEADER]: String(this.tokenTtlSeconds) });
    if ('status' in outcome && outcome.status === 200 && outcome.body.length > 0) {
      this.token = { value: outcome.body, renewAt: requestedAt + this.tokenTtlSeconds * 1000 * TOKEN_RENEW_FRACTION };
      this.logger.debug({ ttlSeconds: this.tokenTtlSeconds }, 'IMDS token obtained');
      return { kind: 'token', value: outcome.body };
    }

    const noV2 = 'status' in outcome ? NO_V2_STATUSES.has(outcome.status) : outcome.timedOut;
    if (noV2 && this.v1Fallback) {
      this.usingV1 = true;
      this.logger.warn(
        { reason: this.describeTokenFailure(outcome) },
        'IMDSv2 token unavailable; falling back to IMDSv1 (set AWS_EC2_METADATA_V1_DISABLED=true to forbid this)',
      );
      return { kind: 'v1' };
    }
    return { kind: 'failed', reason: this.describeTokenFailure(outcome), cause: 'error' in outcome ? outcome.error : undefined };
  }

  private describeTokenFailure(outcome: Outcome): string {
    if ('status' in outcome) return `the token request was answered ${outcome.status}`;
    if (!outcome.timedOut) return `the token request failed: ${outcome.error.message}`;
    // With hop limit 1, the PUT's answer dies one hop short of a pod's network namespace: it hangs, it does not fail.
    return (
      `IMDS did not answer the token request within ${this.timeoutMs}ms; if the agent runs in a pod without host networking, ` +
      `raise the instance's metadata hop limit to 2 (aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2) ` +
      `or use hostNetwork`
    );
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
      if (!transient || attempt >= this.retries) return outcome;
      await delay(BACKOFF_BASE_MS * 2 ** attempt);
    }
  }

  private async attempt(method: 'GET' | 'PUT', path: string, headers: Record<string, string>): Promise<Outcome> {
    try {
      const res = await request(new URL(path, this.base), {
        method,
        headers,
        dispatcher: this.agent,
        // The agent's timeouts cover each phase; this bounds the whole attempt.
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      // Always read the body, so the connection can be reused; decisions are on the status only.
      return { status: res.statusCode, body: await res.body.text() };
    } catch (err) {
      return { error: err instanceof Error ? err : new Error(String(err)), timedOut: isTimeout(err) };
    }
  }
}

function tokenHeaders(token: string | undefined): Record<string, string> {
  return token === undefined ? {} : { [TOKEN_HEADER]: token };
}

/** `latest/meta-data/x` and `/latest/meta-data/x` are the same item. */
function normalizePath(path: string): string {
  return `/${path.replace(/^\/+/, '')}`;
}

const TIMEOUT_CODES = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

function isTimeout(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  return err.name === 'TimeoutError' || (typeof code === 'string' && TIMEOUT_CODES.has(code));
}
