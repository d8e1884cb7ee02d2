/**
 * The HTTP API of DESIGN.md: POST /drain, GET /drain/<id>, /healthz, /readyz, /metrics, on one port.
 * It knows nothing of AWS or IMDS: it authenticates, validates, and asks the agent.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { errorMessage } from '../aws/errors.ts';
import { parseInstanceRef, parseScope, parseTimeoutSeconds, INSTANCE_ID, UsageError } from '../cli.ts';
import type { DrainHandle } from '../drain/drainer.ts';
import { TooManyDrainsError } from '../drain/drainer.ts';
import type { Scope } from '../drain/family.ts';
import { InstanceNotFoundError, type InstanceRef } from '../drain/instance.ts';
import { isFinished, type DrainStatus } from '../drain/status.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import { offeredSecret, secretMatches } from './auth.ts';
import { GuessLimiter } from './guess-limiter.ts';

export interface DrainRequest {
  /** Undefined: this node. */
  readonly target: InstanceRef | undefined;
  readonly scope: Scope;
  readonly timeoutMs: number | undefined;
  /** Hold the instance with its Auto Scaling termination hook while draining, then complete the action. */
  readonly asg: boolean;
  /** The pod asking (a preStop hook), which a scoped drain of this node does not count as another ready endpoint. */
  readonly pod?: string;
}

export type Readiness = { readonly ready: true } | { readonly ready: false; readonly reason: string };

/** What the API asks of the agent. */
export interface AgentApi {
  alive(): boolean;
  readiness(): Readiness;
  /** Starts (or joins) a drain; throws InstanceNotFoundError, TooManyDrainsError, or NotReadyError. */
  drain(request: DrainRequest, signal: AbortSignal): Promise<DrainHandle>;
  statusOf(instanceId: string): DrainStatus | undefined;
}

export class NotReadyError extends Error {
  constructor(reason: string) {
    super(`the agent is not ready yet: ${reason}`);
    this.name = 'NotReadyError';
  }
}

export interface ApiServerOptions {
  readonly secret: string;
  readonly agent: AgentApi;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly guessLimiter?: GuessLimiter;
}

/** Large enough for any legitimate request, which carries everything in its query string. */
const MAX_BODY_BYTES = 16 * 1024;
const QUERY_KEYS = new Set(['id', 'ip', 'service', 'pw', 'wait', 'timeout', 'asg', 'pod']);
/** A pod name: a DNS-1123 subdomain. */
const POD_NAME = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;

/** Answers to requests Node's parser refuses before they reach a handler. */
const CLIENT_ERROR_STATUS: Record<string, string> = {
  ERR_HTTP_REQUEST_TIMEOUT: '408 Request Timeout',
  HPE_HEADER_OVERFLOW: '431 Request Header Fields Too Large',
};

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export function createApiServer(options: ApiServerOptions): Server {
  const limiter = options.guessLimiter ?? new GuessLimiter();
  const server = createServer(
    {
      // Slow clients are cut off: headers within 5 s, the whole request within 10 s.
      headersTimeout: 5_000,
      requestTimeout: 10_000,
      keepAliveTimeout: 5_000,
      maxHeaderSize: 8 * 1024,
      // How often those timeouts are enforced; Node's default (30 s) would let slow clients linger.
      connectionsCheckingInterval: 1_000,
    },
    (req, res) => {
      const started = Date.now();
      // Read now: once a client has hung up, its socket no longer knows its address.
      const client = req.socket.remoteAddress ?? 'unknown';
      const path = (req.url ?? '').split('?')[0]; // the path only: the query may hold the secret
      let route = 'other';
      void handle(req, res, client, options, limiter, (name) => (route = name))
        .catch((error: unknown) => {
          if (res.destroyed || req.socket.destroyed) return; // the client went away; nobody to answer
          const httpError = error instanceof HttpError ? error : undefined;
          if (!httpError) options.logger.error({ err: error, path }, 'API request failed unexpectedly');
          if (!res.headersSent) sendJson(res, httpError?.status ?? 500, { error: httpError?.message ?? 'internal error' }, httpError?.headers);
        })
        .finally(() => {
          const code = res.headersSent ? String(res.statusCode) : 'aborted';
          options.metrics.apiRequests.inc({ route, code });
          options.logger.debug({ method: req.method, path, status: code, ms: Date.now() - started, client }, 'api request');
        });
    },
  );
  // Enough for every node's preStop hooks at once; beyond it, connections are refused, not queued.
  server.maxConnections = 1024;
  server.maxHeadersCount = 64;
  server.maxRequestsPerSocket = 100;
  server.on('clientError', (error: NodeJS.ErrnoException, socket) => {
    if (!socket.writable) return void socket.destroy();
    const status = CLIENT_ERROR_STATUS[error.code ?? ''] ?? '400 Bad Request';
    socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  });
  return server;
}

async function handle(
  req: IncomingMessage,
  res: ServerResponse,
  client: string,
  options: ApiServerOptions,
  limiter: GuessLimiter,
  setRoute: (route: string) => void,
): Promise<void> {
  let url: URL;
  try {
    url = new URL(req.url ?? '/', 'http://agent');
  } catch {
    throw new HttpError(400, 'malformed request URL');
  }
  const { pathname } = url;

  if (pathname === '/healthz' || pathname === '/readyz' || pathname === '/metrics') {
    setRoute(pathname.slice(1));
    allowMethods(req, ['GET', 'HEAD']);
    await drainBody(req);
    if (pathname === '/healthz') {
      const alive = options.agent.alive();
      return sendJson(res, alive ? 200 : 503, { status: alive ? 'ok' : 'the IMDS watcher has stopped ticking' });
    }
    if (pathname === '/readyz') {
      const readiness = options.agent.readiness();
      return sendJson(res, readiness.ready ? 200 : 503, readiness.ready ? { status: 'ready' } : { status: 'not ready', reason: readiness.reason });
    }
    res.writeHead(200, { 'content-type': options.metrics.registry.contentType });
    return void res.end(await options.metrics.registry.metrics());
  }

  if (pathname === '/drain' || pathname.startsWith('/drain/')) {
    const isStatus = pathname !== '/drain';
    setRoute(isStatus ? 'drain-status' : 'drain');
    allowMethods(req, isStatus ? ['GET', 'HEAD'] : ['POST']);
    authenticate(req, client, url.searchParams, options.secret, limiter);
    await drainBody(req);
    // An instance id needs no decoding: taken as sent, anything else is simply not an id.
    return isStatus ? statusRoute(res, pathname.slice('/drain/'.length), options.agent) : drainRoute(res, url.searchParams, options.agent);
  }
  throw new HttpError(404, `no such endpoint ${JSON.stringify(pathname)}: see the README for POST /drain, GET /drain/<instance-id>, /healthz, /readyz, /metrics`);
}

function allowMethods(req: IncomingMessage, methods: string[]): void {
  if (!methods.includes(req.method ?? '')) throw new HttpError(405, `method ${req.method} is not allowed here: use ${methods.join(' or ')}`, { allow: methods.join(', ') });
}

function authenticate(req: IncomingMessage, address: string, query: URLSearchParams, secret: string, limiter: GuessLimiter): void {
  if (!limiter.allows(address)) {
    throw new HttpError(429, 'too many failed attempts from this address: wait and try again', { 'retry-after': String(limiter.retryAfterSeconds(address)) });
  }
  if (!secretMatches(offeredSecret(req, query), secret)) {
    limiter.recordFailure(address);
    // One answer for a missing and a wrong secret: nothing to learn from the difference.
    throw new HttpError(401, 'missing or wrong secret: pass ?pw=SECRET or the header "Authorization: Bearer SECRET"', { 'www-authenticate': 'Bearer' });
  }
}

/**
 * Reads and discards a body, refusing one that is too large. It stops reading then, but leaves the
 * socket to the answer: destroying the request would destroy the connection before the 413 is sent.
 */
function drainBody(req: IncomingMessage): Promise<void> {
  const tooLarge = () => new HttpError(413, `request body too large (limit ${MAX_BODY_BYTES} bytes): parameters go in the query string`, { connection: 'close' });
  if (Number(req.headers['content-length'] ?? 0) > MAX_BODY_BYTES) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    let received = 0;
    const onData = (chunk: Buffer) => {
      received += chunk.length;
      if (received <= MAX_BODY_BYTES) return;
      req.off('data', onData);
      req.pause();
      reject(tooLarge());
    };
    req.on('data', onData);
    req.once('end', resolve);
    req.once('error', reject);
  });
}

function statusRoute(res: ServerResponse, instanceId: string, agent: AgentApi): void {
  if (!INSTANCE_ID.test(instanceId)) throw new HttpError(400, `${JSON.stringify(instanceId)} is not an instance id: expected i- and 8 or 17 hex digits`);
  const status = agent.statusOf(instanceId);
  if (!status) throw new HttpError(404, `no drain of ${instanceId} is known to this agent`);
  sendJson(res, 200, status);
}

async function drainRoute(res: ServerResponse, query: URLSearchParams, agent: AgentApi): Promise<void> {
  const request = parseDrainRequest(query);
  const wait = parseBoolean(query, 'wait');

  const aborted = new AbortController();
  res.on('close', () => aborted.abort());
  let handle: DrainHandle;
  try {
    handle = await agent.drain(request, aborted.signal);
  } catch (error) {
    if (error instanceof InstanceNotFoundError) throw new HttpError(404, error.message);
    if (error instanceof TooManyDrainsError) throw new HttpError(429, error.message, { 'retry-after': '5' });
    if (error instanceof NotReadyError) throw new HttpError(503, error.message, { 'retry-after': '5' });
    // What is left is AWS failing to find the instance (throttling, permissions): not the client's mistake.
    throw new HttpError(502, `could not look up the instance: ${errorMessage(error)}`);
  }
  const location = `/drain/${handle.status().instanceId}`;
  // 202 while it runs; a drain decided against at once (skipped) is answered 200 right away.
  if (!wait) return sendJson(res, isFinished(handle.status()) ? 200 : 202, handle.status(), { location });
  // The drain goes on if the client hangs up: it was asked for, and it is idempotent. A request that
  // joined a drain with a later deadline still gets its answer at its own timeout: 504, still draining.
  const status = await withinTimeout(handle.done, request.timeoutMs);
  const latest = status ?? handle.status();
  sendJson(res, status ? httpStatusOf(status) : 504, latest, { location });
}

async function withinTimeout<T>(work: Promise<T>, timeoutMs: number | undefined): Promise<T | undefined> {
  if (timeoutMs === undefined) return work;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timedOut = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), timeoutMs);
  });
  try {
    return await Promise.race([work, timedOut]);
  } finally {
    clearTimeout(timer);
  }
}

function httpStatusOf(status: DrainStatus): number {
  switch (status.state) {
    case 'deregistered':
    case 'skipped':
      return 200;
    case 'timed_out':
      return 504;
    case 'failed':
    case 'draining':
      return 502;
  }
}

function parseDrainRequest(query: URLSearchParams): DrainRequest {
  const unknown = [...query.keys()].filter((key) => !QUERY_KEYS.has(key));
  if (unknown.length > 0) throw new HttpError(400, `unknown parameter ${JSON.stringify(unknown[0])}: expected id, ip, service, pod, wait, timeout, asg, pw`);
  for (const key of ['id', 'ip', 'service', 'pod', 'wait', 'timeout', 'asg']) {
    if (query.getAll(key).length > 1) throw new HttpError(400, `parameter ${key} is given more than once`);
  }
  try {
    const timeout = query.get('timeout');
    const timeoutSeconds = timeout === null ? undefined : parseTimeoutSeconds(timeout, 'timeout=');
    return {
      target: parseInstanceRef(query.get('id') ?? undefined, query.get('ip') ?? undefined),
      scope: parseScope(query.get('service') ?? undefined),
      timeoutMs: timeoutSeconds === undefined ? undefined : timeoutSeconds * 1000,
      asg: parseBoolean(query, 'asg'),
      ...parsePod(query.get('pod')),
    };
  } catch (error) {
    if (error instanceof UsageError) throw new HttpError(400, error.message);
    throw error;
  }
}

function parsePod(pod: string | null): { pod?: string } {
  if (pod === null) return {};
  if (!POD_NAME.test(pod)) throw new HttpError(400, `pod=${JSON.stringify(pod)} is not a pod name (lower-case letters, digits, "-" and ".")`);
  return { pod };
}

function parseBoolean(query: URLSearchParams, key: string): boolean {
  const value = query.get(key);
  if (value === null || value === 'false' || value === '0') return false;
  if (value === '' || value === 'true' || value === '1') return true;
  throw new HttpError(400, `${key}=${JSON.stringify(value)} is not a boolean: use true or false`);
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}
