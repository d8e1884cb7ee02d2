/**
 * The HTTP API (README.md, "The HTTP API"): POST /drain, GET /drain/<id>, /healthz, /readyz, /metrics,
 * on one port. It knows nothing of AWS or IMDS: it authenticates, validates, and asks the agent. Every
 * error, including those Node's parser answers, is JSON `{ "error": "<cause>: <fix>" }`.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { errorMessage } from '../aws/errors.ts';
import { parseInstanceRef, parseScope, parseTimeoutSeconds, INSTANCE_ID, UsageError } from '../cli.ts';
import type { DrainHandle } from '../drain/drainer.ts';
import { TooManyDrainsError } from '../drain/drainer.ts';
import type { Scope } from '../drain/family.ts';
import { InstanceNotFoundError, type Instance, type InstanceRef } from '../drain/instance.ts';
import { ipFamily, isCidr } from '../drain/addresses.ts';
import { VPC_ID } from '../config.ts';
import { withinTimeout } from '../drain/retry.ts';
import { isFinished, type DrainStatus } from '../drain/status.ts';
import type { Logger } from '../log.ts';
import type { Metrics } from '../metrics.ts';
import type { ApiSecret } from './api-secret.ts';
import { bearerOf, offeredSecret } from './auth.ts';
import { GuessLimiter } from './guess-limiter.ts';
import { whyPodRefused } from './pod-permissions.ts';
import { describeCaller, looksLikeToken, TokenRefusedError, TokenReviewsBusyError, TokenReviewUnavailableError, type PodCaller, type PodTokens } from './pod-tokens.ts';
import { httpDate } from '../utc-time.ts';

export interface DrainRequest {
  /** Undefined: this node. */
  readonly target: InstanceRef | undefined;
  readonly scope: Scope;
  readonly timeoutMs: number | undefined;
  /** Hold the instance with its Auto Scaling termination hook while draining, then complete the action. */
  readonly asg: boolean;
  /** The pod asking (a preStop hook), which a scoped drain of this node does not count as another ready endpoint. */
  readonly pod?: string;
  /** Set when a peer agent hands its node's drain to this one, the coordinator. */
  readonly peer?: PeerHandOver;
  /** Who asked, for the node's Events: set for a pod that presented its token. */
  readonly caller?: string;
}

/** A dying peer's hand-over: its pod name, and its instance as its IMDS describes it, so the coordinator need not ask EC2. */
export interface PeerHandOver {
  readonly name: string;
  readonly instance?: Instance;
}

export type Readiness = { readonly ready: true } | { readonly ready: false; readonly reason: string };

/** What the API asks of the agent. */
export interface AgentApi {
  alive(): boolean;
  readiness(): Readiness;
  /** Starts (or joins) a drain; throws InstanceNotFoundError, TooManyDrainsError, NotReadyError or RefusedRequestError. */
  drain(request: DrainRequest, signal: AbortSignal): Promise<DrainHandle>;
  statusOf(instanceId: string): DrainStatus | undefined;
  /**
   * Ends the latest drain of another instance (its own node was given back, so its agent takes back the
   * drain it handed over) and stops keeping it out; resolves with the final status, undefined when no
   * drain of it is known. Throws RefusedRequestError for this node's own drain, or NotReadyError.
   */
  cancelDrain(instanceId: string, by: string): Promise<DrainStatus | undefined>;
}

export class NotReadyError extends Error {
  constructor(reason: string) {
    super(`the agent is not ready yet: ${reason}`);
    this.name = 'NotReadyError';
  }
}

/** A well-formed request this agent's configuration cannot carry out; the message says what to change. */
export class RefusedRequestError extends Error {
  override name = 'RefusedRequestError';
}

export interface ApiServerOptions {
  readonly secret: ApiSecret;
  /** Pods' own tokens, when the agent accepts them (TOKEN_AUDIENCE, Kubernetes access, NODE_NAME). */
  readonly podTokens?: { readonly tokens: PodTokens; readonly nodeName: string };
  readonly agent: AgentApi;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly guessLimiter?: GuessLimiter;
}

/** Large enough for any legitimate request, which carries everything in its query string. */
const MAX_BODY_BYTES = 16 * 1024;
const MAX_HEAD_BYTES = 8 * 1024;
// Slow clients are cut off: headers within 5 s, the whole request within 10 s.
const HEADERS_TIMEOUT_MS = 5_000;
const REQUEST_TIMEOUT_MS = 10_000;
/** When a client refused for being early (not ready) or many (too many drains) should come back. */
const RETRY_AFTER_SECONDS = 5;
/** A pod name: a DNS-1123 subdomain. */
const POD_NAME = /^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$/;

interface Route {
  /** The `route` label of hasta_la_vista_api_requests_total. */
  readonly name: 'drain' | 'drain-status' | 'healthz' | 'readyz' | 'metrics';
  /** As messages show it. */
  readonly path: string;
  readonly methods: readonly string[];
  /** Every query parameter it takes; any other is refused, so a misspelt one is never silently ignored. */
  readonly parameters: readonly string[];
  readonly authenticated: boolean;
}

const HEALTH = { methods: ['GET', 'HEAD'], parameters: [], authenticated: false } as const;
const ROUTES: readonly Route[] = [
  { name: 'drain', path: '/drain', methods: ['POST'], parameters: ['id', 'ip', 'service', 'pod', 'wait', 'timeout', 'asg', 'pw'], authenticated: true },
  { name: 'drain-status', path: '/drain/<instance-id>', methods: ['GET', 'HEAD', 'DELETE'], parameters: ['pw'], authenticated: true },
  { name: 'healthz', path: '/healthz', ...HEALTH },
  { name: 'readyz', path: '/readyz', ...HEALTH },
  { name: 'metrics', path: '/metrics', ...HEALTH },
];
const STATUS_ROUTE = ROUTES.find((route) => route.name === 'drain-status')!;
const STATUS_PREFIX = '/drain/';

function routeOf(pathname: string): Route | undefined {
  return pathname.startsWith(STATUS_PREFIX) ? STATUS_ROUTE : ROUTES.find((route) => route.path === pathname);
}

const shown = (route: Route) => `${route.methods[0]} ${route.path}`;

/**
 * The path as logged: a route's own, never other text a client sent, which may hold the secret (a
 * mistyped "/drain&pw=SECRET", a secret pasted where the instance id goes).
 */
function loggablePath(rawUrl: string | undefined): string {
  const path = (rawUrl ?? '').split('?')[0]!;
  if (path.startsWith(STATUS_PREFIX)) return INSTANCE_ID.test(path.slice(STATUS_PREFIX.length)) ? path : `${STATUS_PREFIX}<not an instance id>`;
  return routeOf(path) ? path : '<no such endpoint>';
}

/** Answers to requests Node's parser refuses before they reach a handler. */
const CLIENT_ERRORS: Record<string, { readonly status: string; readonly error: string }> = {
  ERR_HTTP_REQUEST_TIMEOUT: {
    status: '408 Request Timeout',
    error: `the request took too long to arrive (headers within ${HEADERS_TIMEOUT_MS / 1000} s, all of it within ${REQUEST_TIMEOUT_MS / 1000} s): send it at once`,
  },
  HPE_HEADER_OVERFLOW: { status: '431 Request Header Fields Too Large', error: `the request line and headers exceed ${MAX_HEAD_BYTES / 1024} KiB: shorten the URL, send fewer headers` },
};

/** What a client sees when the agent itself failed; the cause is in its log, never in the answer. */
const INTERNAL_ERROR = 'internal error in the agent: its log has the cause ("API request failed unexpectedly"); try again, and report it if it persists';

/** Who a request comes from, once authenticated. */
type Caller = { readonly kind: 'admin' } | { readonly kind: 'pod'; readonly pod: PodCaller };
const ADMIN: Caller = { kind: 'admin' };

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
      headersTimeout: HEADERS_TIMEOUT_MS,
      requestTimeout: REQUEST_TIMEOUT_MS,
      keepAliveTimeout: 5_000,
      maxHeaderSize: MAX_HEAD_BYTES,
      // How often those timeouts are enforced; Node's default (30 s) would let slow clients linger.
      connectionsCheckingInterval: 1_000,
      // Checked in handle(), so that the answer is JSON like every other.
      requireHostHeader: false,
    },
    (req, res) => {
      const started = Date.now();
      // Node's own Date header would format it with toUTCString (utc-time.ts says why not). The time the
      // request arrived: a wait=true answer's may be up to its timeout older than the answer.
      res.sendDate = false;
      res.setHeader('date', httpDate(started));
      // Read now: once a client has hung up, its socket no longer knows its address.
      const client = req.socket.remoteAddress ?? 'unknown';
      const path = loggablePath(req.url);
      let route = 'other';
      void handle(req, res, client, options, limiter, (name) => (route = name))
        .catch((error: unknown) => {
          if (res.destroyed || req.socket.destroyed) return; // the client went away; nobody to answer
          const httpError = error instanceof HttpError ? error : undefined;
          if (!httpError) options.logger.error({ err: error, path }, 'API request failed unexpectedly');
          if (!res.headersSent) sendJson(res, httpError?.status ?? 500, { error: httpError?.message ?? INTERNAL_ERROR }, httpError?.headers);
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
    const { status, error: message } = CLIENT_ERRORS[error.code ?? ''] ?? {
      status: '400 Bad Request',
      error: `malformed HTTP request (${error.code ?? 'unknown parser error'}): send a well-formed HTTP/1.1 request`,
    };
    const body = JSON.stringify({ error: message });
    socket.end(`HTTP/1.1 ${status}\r\nContent-Type: application/json; charset=utf-8\r\nConnection: close\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  });
  // Without a listener Node answers an Expect other than 100-continue with an empty 417.
  server.on('checkExpectation', (req: IncomingMessage, res: ServerResponse) => {
    sendJson(res, 417, { error: `"Expect: ${req.headers.expect}" is not supported: send the request without it` });
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
  if (req.httpVersion === '1.1' && req.headers.host === undefined) throw new HttpError(400, 'the request has no Host header, which HTTP/1.1 requires: send one (any value)');
  const url = parseUrl(req.url ?? '/');
  const route = routeOf(url.pathname);
  if (!route) throw new HttpError(404, `no such endpoint ${JSON.stringify(url.pathname.slice(0, 200))}: the API has ${ROUTES.map(shown).join(', ')}`);
  setRoute(route.name);
  allowMethods(req, route);
  const caller = route.authenticated ? await authenticate(req, client, url.searchParams, options, limiter) : ADMIN;
  const body = await readBody(req);
  checkParameters(url.searchParams, route);
  if (caller.kind === 'pod' && route.name !== 'drain') {
    throw refusePod(options, caller.pod, `a pod token may only POST /drain?service=${caller.pod.namespace}/<service>; ${shown(route)} needs the admin secret`);
  }

  switch (route.name) {
    case 'healthz': {
      const alive = options.agent.alive();
      return sendJson(res, alive ? 200 : 503, alive ? { status: 'ok' } : { status: 'not alive', reason: 'the IMDS watcher has stopped ticking' });
    }
    case 'readyz': {
      const readiness = options.agent.readiness();
      return sendJson(res, readiness.ready ? 200 : 503, readiness.ready ? { status: 'ready' } : { status: 'not ready', reason: readiness.reason });
    }
    case 'metrics':
      res.writeHead(200, { 'content-type': options.metrics.registry.contentType });
      return void res.end(await options.metrics.registry.metrics());
    case 'drain-status':
      // An instance id needs no decoding: taken as sent, anything else is simply not an id.
      if (req.method === 'DELETE') return cancelRoute(req, res, url.pathname.slice(STATUS_PREFIX.length), options.agent);
      return statusRoute(res, url.pathname.slice(STATUS_PREFIX.length), options.agent);
    case 'drain':
      return drainRoute(req, res, url.searchParams, body, caller, options);
  }
}

/** The request target as a URL; "//drain" stays a path (a base URL would read "drain" as a host). */
function parseUrl(target: string): URL {
  try {
    return new URL(target.startsWith('/') ? `http://agent${target}` : target);
  } catch {
    throw new HttpError(400, 'malformed request URL: send a path such as /drain?id=i-0123456789abcdef0');
  }
}

/** Refuses what the route does not take: a parameter it does not know, or one given twice. */
function checkParameters(query: URLSearchParams, route: Route): void {
  for (const key of new Set(query.keys())) {
    if (route.parameters.includes(key)) continue;
    const takes = route.parameters.length === 0 ? 'no parameters' : route.parameters.length === 1 ? `only ${route.parameters[0]}` : route.parameters.join(', ');
    throw new HttpError(400, `unknown parameter ${JSON.stringify(key)}: ${shown(route)} takes ${takes}; remove it or correct its spelling`);
  }
  // The secret may repeat: offeredSecret() accepts the same one twice and refuses two different ones.
  for (const key of route.parameters) {
    if (key !== 'pw' && query.getAll(key).length > 1) throw new HttpError(400, `parameter ${key} is given more than once: give it once`);
  }
}

function allowMethods(req: IncomingMessage, { methods, path }: Route): void {
  if (!methods.includes(req.method ?? '')) throw new HttpError(405, `method ${req.method} is not allowed on ${path}: use ${methods.join(' or ')}`, { allow: methods.join(', ') });
}

async function authenticate(req: IncomingMessage, address: string, query: URLSearchParams, options: ApiServerOptions, limiter: GuessLimiter): Promise<Caller> {
  if (!limiter.allows(address)) {
    throw new HttpError(429, 'too many failed attempts from this address: wait and try again', { 'retry-after': String(limiter.retryAfterSeconds(address)) });
  }
  if (options.secret.accepts(offeredSecret(req, query))) return ADMIN;
  const bearer = bearerOf(req);
  if (bearer !== undefined && looksLikeToken(bearer) && !query.has('pw')) return podCaller(bearer, address, options, limiter);
  limiter.recordFailure(address);
  // One answer for a missing and a wrong secret: nothing to learn from the difference.
  throw new HttpError(401, 'missing or wrong secret: pass ?pw=SECRET or the header "Authorization: Bearer SECRET"', { 'www-authenticate': 'Bearer' });
}

/** A pod's token, checked with the API server: a refused token counts as a failed attempt, an outage does not. */
async function podCaller(token: string, address: string, options: ApiServerOptions, limiter: GuessLimiter): Promise<Caller> {
  const invalid = { 'www-authenticate': 'Bearer error="invalid_token"' };
  if (!options.podTokens) {
    limiter.recordFailure(address);
    throw new HttpError(401, 'pod tokens are not accepted by this agent (TOKEN_AUDIENCE=off, or no Kubernetes access or NODE_NAME): use the admin secret, or enable pod tokens', invalid);
  }
  try {
    return { kind: 'pod', pod: await options.podTokens.tokens.callerOf(token) };
  } catch (error) {
    if (error instanceof TokenRefusedError) {
      limiter.recordFailure(address);
      throw new HttpError(401, error.message, invalid);
    }
    if (error instanceof TokenReviewsBusyError) throw new HttpError(429, error.message, { 'retry-after': '1' });
    if (error instanceof TokenReviewUnavailableError) {
      options.logger.warn({ err: error }, 'a pod token could not be checked: refused');
      const fix = 'pod tokens need the agent to reach the Kubernetes API and to create tokenreviews.authentication.k8s.io (the chart grants it); the admin secret works meanwhile';
      throw new HttpError(503, `${error.message}: try again; ${fix}`, { 'retry-after': String(RETRY_AFTER_SECONDS) });
    }
    throw error;
  }
}

/** 403, with the pod that asked in the log. */
function refusePod(options: ApiServerOptions, caller: PodCaller, reason: string): HttpError {
  options.logger.info({ caller: describeCaller(caller), reason }, 'a pod token asked for more than its own node\'s scoped drain: refused');
  return new HttpError(403, reason);
}

/**
 * Reads a body (only a peer's hand-over has one that matters), refusing one that is too large. It stops
 * reading then, but leaves the socket to the answer: destroying the request would destroy the
 * connection before the 413 is sent.
 */
function readBody(req: IncomingMessage): Promise<Buffer> {
  const tooLarge = () => new HttpError(413, `request body too large (limit ${MAX_BODY_BYTES} bytes): parameters go in the query string`, { connection: 'close' });
  if (Number(req.headers['content-length'] ?? 0) > MAX_BODY_BYTES) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let received = 0;
    const onData = (chunk: Buffer) => {
      received += chunk.length;
      if (received <= MAX_BODY_BYTES) return void chunks.push(chunk);
      req.off('data', onData);
      req.pause();
      reject(tooLarge());
    };
    req.on('data', onData);
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
  });
}

function statusRoute(res: ServerResponse, instanceId: string, agent: AgentApi): void {
  checkInstanceId(instanceId);
  const status = agent.statusOf(instanceId);
  if (!status) throw new HttpError(404, `no drain of ${instanceId} is known to this agent, which knows the drains it ran since it started: POST /drain?id=${instanceId} starts one`);
  sendJson(res, 200, status);
}

function checkInstanceId(instanceId: string): void {
  if (!INSTANCE_ID.test(instanceId)) throw new HttpError(400, `${JSON.stringify(instanceId)} is not an instance id: expected i- and 8 or 17 hex digits`);
}

/** DELETE /drain/<id>: the drain ended (its status once settled), and the instance no longer kept out. */
async function cancelRoute(req: IncomingMessage, res: ServerResponse, instanceId: string, agent: AgentApi): Promise<void> {
  checkInstanceId(instanceId);
  const peer = req.headers[PEER_HEADER];
  let status: DrainStatus | undefined;
  try {
    status = await agent.cancelDrain(instanceId, typeof peer === 'string' ? `peer ${peer.slice(0, 253)}` : 'the API');
  } catch (error) {
    if (error instanceof RefusedRequestError) throw new HttpError(400, error.message);
    if (error instanceof NotReadyError) throw new HttpError(503, `${error.message}; try again in ${RETRY_AFTER_SECONDS} s`, { 'retry-after': String(RETRY_AFTER_SECONDS) });
    throw error;
  }
  if (!status) throw new HttpError(404, `no drain of ${instanceId} is known to this agent: there is nothing to cancel`);
  sendJson(res, 200, status);
}

async function drainRoute(req: IncomingMessage, res: ServerResponse, query: URLSearchParams, body: Buffer, caller: Caller, options: ApiServerOptions): Promise<void> {
  const { agent } = options;
  const request = caller.kind === 'admin' ? { ...parseDrainRequest(query), peer: peerOf(req, query, body) } : podRequest(query, caller.pod, options);
  const wait = parseBoolean(query, 'wait');

  const aborted = new AbortController();
  res.on('close', () => aborted.abort());
  let handle: DrainHandle;
  try {
    handle = await agent.drain(request, aborted.signal);
  } catch (error) {
    if (error instanceof InstanceNotFoundError) throw new HttpError(404, `${error.message}: check the id or IP; an agent drains only instances of its own VPC`);
    if (error instanceof TooManyDrainsError) throw new HttpError(429, error.message, { 'retry-after': String(RETRY_AFTER_SECONDS) });
    if (error instanceof RefusedRequestError) throw new HttpError(400, error.message);
    if (error instanceof NotReadyError) throw new HttpError(503, `${error.message}; try again in ${RETRY_AFTER_SECONDS} s`, { 'retry-after': String(RETRY_AFTER_SECONDS) });
    // What is left is AWS (or IMDS, for this node) failing to find the instance: throttling, permissions.
    throw new HttpError(502, `could not look up the instance: ${errorMessage(error)}; try again`);
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

/** Sent with a hand-over, naming the asking agent: the coordinator serves it whatever MAX_CONCURRENT_DRAINS says. */
export const PEER_HEADER = 'hasta-la-vista-peer';

/**
 * The agent handing over its drain: its name from the header, its instance from the JSON body
 * (`{"instance": {"vpcId", "privateIps", "ipv4Prefixes", "ipv6Addresses", "ipv6Prefixes"}}`, the id
 * being the request's `id=`). Read only after authentication: whoever holds the secret may already
 * drain any address of the VPC with ip=.
 */
function peerOf(req: IncomingMessage, query: URLSearchParams, body: Buffer): PeerHandOver | undefined {
  const name = req.headers[PEER_HEADER];
  if (typeof name !== 'string' || !/^[a-z0-9][a-z0-9.-]{0,252}$/.test(name)) return undefined;
  const id = query.get('id');
  if (body.length === 0 || id === null) return { name };
  const fix = 'send {"instance": {"vpcId": "vpc-…", "privateIps": [...], "ipv4Prefixes": [...], "ipv6Addresses": [...], "ipv6Prefixes": [...]}}, or no body';
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    throw new HttpError(400, `the hand-over's body is not JSON: ${fix}`);
  }
  const described = (parsed as { instance?: Record<string, unknown> } | null)?.instance;
  const list = (key: string, valid: (text: string) => boolean): string[] => {
    const value = described?.[key] ?? [];
    if (!Array.isArray(value) || value.length > 1000 || !value.every((item) => typeof item === 'string' && valid(item))) {
      throw new HttpError(400, `the hand-over's instance.${key} is not a list of addresses: ${fix}`);
    }
    return value as string[];
  };
  const address = (text: string) => ipFamily(text) !== undefined;
  const vpcId = described?.vpcId;
  if (typeof vpcId !== 'string' || !VPC_ID.test(vpcId)) throw new HttpError(400, `the hand-over's instance.vpcId is not a VPC id: ${fix}`);
  const instance: Instance = {
    id,
    vpcId,
    privateIps: list('privateIps', address),
    ipv4Prefixes: list('ipv4Prefixes', isCidr),
    ipv6Addresses: list('ipv6Addresses', address),
    ipv6Prefixes: list('ipv6Prefixes', isCidr),
    tags: {},
  };
  return { name, instance };
}

/** A pod's request, as far as its token allows: its pod comes from the token, never from the caller. */
function podRequest(query: URLSearchParams, caller: PodCaller, options: ApiServerOptions): DrainRequest {
  const request = parseDrainRequest(query);
  const refused = whyPodRefused(caller, request, options.podTokens!.nodeName);
  if (refused !== undefined) throw refusePod(options, caller, refused);
  const described = describeCaller(caller);
  options.logger.info({ caller: described, service: request.scope.kind === 'service' ? `${request.scope.namespace}/${request.scope.name}` : undefined }, 'scoped drain asked by a pod');
  return { ...request, pod: caller.pod, caller: described };
}

function parseDrainRequest(query: URLSearchParams): DrainRequest {
  if (query.has('id') && query.has('ip')) throw new HttpError(400, 'id= and ip= are both given: give one of them, or neither to drain this node');
  if (query.has('pod') && !query.has('service')) {
    throw new HttpError(400, 'pod= needs service=: it names the pod asking for a scoped drain of its Service; add service=<namespace>/<name>, or leave out pod=');
  }
  const timeoutSeconds = parameter(query, 'timeout', (text) => parseTimeoutSeconds(text, ''));
  return {
    target: parameter(query, 'id', (id) => parseInstanceRef(id, undefined)) ?? parameter(query, 'ip', (ip) => parseInstanceRef(undefined, ip)),
    scope: parameter(query, 'service', parseScope) ?? parseScope(undefined),
    timeoutMs: timeoutSeconds === undefined ? undefined : timeoutSeconds * 1000,
    asg: parseBoolean(query, 'asg'),
    ...parsePod(query.get('pod')),
  };
}

/** A parameter parsed by the command line's rules (cli.ts), its error naming it: `id="x" is not an instance id: …`. */
function parameter<T>(query: URLSearchParams, key: string, parse: (value: string) => T): T | undefined {
  const value = query.get(key);
  if (value === null) return undefined;
  try {
    return parse(value);
  } catch (error) {
    if (error instanceof UsageError) throw new HttpError(400, `${key}=${error.message}`);
    throw error;
  }
}

function parsePod(pod: string | null): { pod?: string } {
  if (pod === null) return {};
  if (!POD_NAME.test(pod)) throw new HttpError(400, `pod=${JSON.stringify(pod)} is not a pod name: pass the pod's metadata.name (lower-case letters, digits, "-" and ".")`);
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
