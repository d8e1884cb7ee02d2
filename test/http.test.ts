/**
 * The HTTP API against a stub agent: every answer it can give, and its rules, as a caller sees them.
 * ANSWERS is the API table of README.md in machine-readable form: each row is sent, and must be
 * answered with its status, headers and body shape.
 */
import assert from 'node:assert/strict';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { after, before, beforeEach, describe, test } from 'node:test';
import { TooManyDrainsError, type DrainHandle } from '../agent/drain/drainer.ts';
import { InstanceNotFoundError } from '../agent/drain/instance.ts';
import type { DrainState, DrainStatus } from '../agent/drain/status.ts';
import { createApiServer, NotReadyError, RefusedRequestError, type AgentApi, type DrainRequest } from '../agent/http/server.ts';
import { GuessLimiter } from '../agent/http/guess-limiter.ts';
import { fixedSecret } from '../agent/http/api-secret.ts';
import { PodTokens } from '../agent/http/pod-tokens.ts';
import type { TokenReviewStatus } from '../agent/kube/client.ts';
import { createLogger, silentLogger, type Logger } from '../agent/log.ts';
import { Metrics } from '../agent/metrics.ts';
import { parseAnswer, rawExchange, rawRequest, trickle, type RawAnswer, type RawRequest } from './helpers/reliability-http.ts';

const SECRET = 'http-test-secret-0123456789';
const ID = 'i-0123456789abcdef0';
const BEARER = ['Authorization', `Bearer ${SECRET}`] as const;
const NODE = 'ip-10-0-1-4.ec2.internal';

/** Pods' tokens as the stub API server reviews them: JWT-shaped, named by what the review answers. */
const POD_TOKEN = { valid: 'e30.e30.valid', refused: 'e30.e30.refused', unreviewable: 'e30.e30.outage' } as const;
const asPod = (token: string) => ({ secret: false, headers: [['Authorization', `Bearer ${token}`]] as [string, string][] });
const podTokens = new PodTokens(
  {
    reviewToken: async (token): Promise<TokenReviewStatus> => {
      if (token === POD_TOKEN.unreviewable) throw new Error('create a tokenreview: 403 Forbidden');
      if (token === POD_TOKEN.refused) return { authenticated: false, error: '[invalid bearer token, service account token has expired]' };
      const extra = { 'authentication.kubernetes.io/pod-name': ['web-1'], 'authentication.kubernetes.io/node-name': [NODE] };
      return { authenticated: true, user: { username: 'system:serviceaccount:shop:web', extra }, audiences: ['hasta-la-vista'] };
    },
    getPod: () => Promise.reject(new Error('not asked: the review names the node')),
  },
  'hasta-la-vista',
);

function drainStatus(state: DrainState): DrainStatus {
  return {
    instanceId: ID,
    trigger: 'api',
    scope: 'all',
    state,
    dryRun: false,
    startedAt: new Date().toISOString(),
    deadline: new Date(Date.now() + 600_000).toISOString(),
    triggers: ['api'],
    finishedAt: state === 'draining' ? null : new Date().toISOString(),
    awsCalls: {},
    loadBalancers: [{ family: 'classic', name: 'web', state: state === 'deregistered' ? 'out' : 'draining' }],
  };
}

/** A drain showing `status` now and settling with `done`: by default, never (it runs far longer than any request waits). */
function drainHandle(status: DrainStatus, done: Promise<DrainStatus> = new Promise(() => undefined)): DrainHandle {
  return { status: () => status, done, joined: false, amend: () => undefined, reschedule: () => undefined, cancel: () => undefined };
}

/** What the agent does for each test; a test changes what it needs, and the next one starts from this again. */
const normalAgent: AgentApi = {
  alive: () => true,
  readiness: () => ({ ready: true }),
  drain: async (request) => {
    drainRequests.push(request);
    return drainHandle(drainStatus('draining'));
  },
  statusOf: () => undefined,
  cancelDrain: async () => undefined,
};
let agent: AgentApi = normalAgent;
const drainRequests: DrainRequest[] = [];
/** The guess limiter's clock: moved on by an hour, every address has all its attempts again. */
let clock = 0;
const forgetFailures = () => (clock += 3_600_000);

function apiServer(logger: Logger): Server {
  return createApiServer({
    secret: fixedSecret(SECRET),
    podTokens: { tokens: podTokens, nodeName: NODE },
    metrics: new Metrics(),
    logger,
    guessLimiter: new GuessLimiter(10, 6_000, 10_000, () => clock),
    agent: { alive: () => agent.alive(), readiness: () => agent.readiness(), drain: (request, signal) => agent.drain(request, signal), statusOf: (id) => agent.statusOf(id), cancelDrain: (id, by) => agent.cancelDrain(id, by) },
  });
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

function close(server: Server): void {
  server.closeAllConnections();
  server.close();
}

const server = apiServer(silentLogger());
let port: number;
before(async () => (port = await listen(server)));
after(() => close(server));
beforeEach(() => {
  agent = normalAgent;
  drainRequests.length = 0;
});

/** One request on its own connection; with the secret (as a Bearer header) unless `secret: false`. */
function send(method: string, target: string, options: Omit<RawRequest, 'method' | 'target'> & { secret?: boolean } = {}): Promise<RawAnswer> {
  const { secret = true, headers = [], ...rest } = options;
  return rawRequest(port, { method, target, headers: secret ? [BEARER, ...headers] : headers, ...rest });
}

function header(answer: RawAnswer, name: string): string | undefined {
  return new RegExp(`^${name}: (.*)$`, 'im').exec(answer.head)?.[1];
}

function errorOf(answer: RawAnswer): string {
  assert.match(header(answer, 'content-type') ?? '', /^application\/json/, `an error is JSON: ${answer.head}`);
  const body = JSON.parse(answer.body) as { error?: unknown };
  assert.deepEqual(Object.keys(body), ['error'], `an error is { "error": "…" }: ${answer.body}`);
  assert.equal(typeof body.error, 'string');
  return body.error as string;
}

type BodyShape = 'status' | 'error' | 'health' | 'metrics' | 'none';

interface Answer {
  /** As the README's table names it; `any` is for answers every route may give. */
  readonly route: 'POST /drain' | 'GET /drain/<instance-id>' | 'DELETE /drain/<instance-id>' | 'GET /healthz' | 'GET /readyz' | 'GET /metrics' | 'any';
  readonly status: number;
  readonly when: string;
  readonly body: BodyShape;
  readonly headers?: Readonly<Record<string, RegExp>>;
  /** How the agent behaves for it; the normal agent otherwise. */
  readonly agent?: Partial<AgentApi>;
  readonly send: () => Promise<RawAnswer>;
}

/** A drain that settles with `state` when waited for. */
const settles = (state: DrainState) => async () => drainHandle(drainStatus('draining'), Promise.resolve(drainStatus(state)));
/** A drain decided at once: finished before the answer. */
const finishedAtOnce = (state: DrainState) => async () => drainHandle(drainStatus(state), Promise.resolve(drainStatus(state)));
const refuses = (error: Error) => async (): Promise<DrainHandle> => {
  throw error;
};
const RETRY_AFTER = { 'retry-after': /^\d+$/ };

/** Ten wrong secrets from one address, then the right one: refused unchecked. */
async function lockedOut(method: string, target: string): Promise<RawAnswer> {
  forgetFailures();
  try {
    for (let i = 0; i < 10; i++) assert.equal((await send(method, target, { secret: false, headers: [['Authorization', `Bearer wrong-${i}`]] })).status, 401);
    return await send(method, target);
  } finally {
    forgetFailures();
  }
}

/** Ten pod tokens the API server refuses, from one address, then a valid one: refused unchecked. */
async function lockedOutByTokens(): Promise<RawAnswer> {
  forgetFailures();
  try {
    for (let i = 0; i < 10; i++) assert.equal((await send('POST', '/drain?service=shop/web', asPod(POD_TOKEN.refused))).status, 401);
    return await send('POST', '/drain?service=shop/web', asPod(POD_TOKEN.valid));
  } finally {
    forgetFailures();
  }
}

/** 101 requests on one connection, which takes 100. */
async function pipelined(): Promise<RawAnswer> {
  const { text, ms } = await rawExchange(port, [Buffer.from('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(101))], { end: true });
  return parseAnswer(text.slice(text.lastIndexOf('HTTP/1.1 ')), ms);
}

/** Headers one byte every 200 ms: never complete within the 5 s allowed. */
async function trickled(): Promise<RawAnswer> {
  const { closed } = trickle(port, `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ${'a'.repeat(100)}`, 200);
  const { answer, ms } = await closed;
  return parseAnswer(answer, ms);
}

const ANSWERS: readonly Answer[] = [
  { route: 'POST /drain', status: 202, when: 'the drain started, or joined one running', body: 'status', headers: { location: /^\/drain\/i-/ }, send: () => send('POST', '/drain') },
  { route: 'POST /drain', status: 200, when: 'the drain finished at once (skipped)', body: 'status', headers: { location: /^\/drain\/i-/ }, agent: { drain: finishedAtOnce('skipped') }, send: () => send('POST', '/drain') },
  { route: 'POST /drain', status: 200, when: 'wait=true: out of every load balancer in scope', body: 'status', agent: { drain: settles('deregistered') }, send: () => send('POST', '/drain?wait=true') },
  { route: 'POST /drain', status: 504, when: "wait=true: the deadline or the request's timeout passed first", body: 'status', agent: { drain: settles('timed_out') }, send: () => send('POST', '/drain?wait=true') },
  { route: 'POST /drain', status: 502, when: 'wait=true: the drain failed', body: 'status', agent: { drain: settles('failed') }, send: () => send('POST', '/drain?wait=true') },
  { route: 'POST /drain', status: 400, when: 'a parameter is unknown, repeated or malformed; id and ip together; pod without service', body: 'error', send: () => send('POST', '/drain?pod=web-0') },
  { route: 'POST /drain', status: 401, when: 'the secret is missing or wrong', body: 'error', headers: { 'www-authenticate': /^Bearer$/ }, send: () => send('POST', `/drain?pw=${SECRET}x`, { secret: false }) },
  { route: 'POST /drain', status: 401, when: 'a pod token the API server refuses (expired, another audience, not a pod\'s)', body: 'error', headers: { 'www-authenticate': /^Bearer error="invalid_token"$/ }, send: () => send('POST', '/drain?service=shop/web', asPod(POD_TOKEN.refused)) },
  { route: 'POST /drain', status: 202, when: "a pod token: its own node's drain from a Service of its namespace", body: 'status', send: () => send('POST', '/drain?service=shop/web', asPod(POD_TOKEN.valid)) },
  { route: 'POST /drain', status: 403, when: "a pod token asks for more than its own node's scoped drain", body: 'error', send: () => send('POST', '/drain?service=bank/ledger', asPod(POD_TOKEN.valid)) },
  { route: 'POST /drain', status: 503, when: 'a pod token could not be checked (the TokenReview failed)', body: 'error', headers: RETRY_AFTER, send: () => send('POST', '/drain?service=shop/web', asPod(POD_TOKEN.unreviewable)) },
  { route: 'POST /drain', status: 404, when: 'no such instance in the VPC', body: 'error', agent: { drain: refuses(new InstanceNotFoundError({ ip: '10.0.9.9' }, 'vpc-0123456789abcdef0')) }, send: () => send('POST', '/drain?ip=10.0.9.9') },
  { route: 'POST /drain', status: 405, when: 'any method but POST', body: 'error', headers: { allow: /^POST$/ }, send: () => send('GET', '/drain') },
  { route: 'POST /drain', status: 429, when: 'MAX_CONCURRENT_DRAINS drains are running', body: 'error', headers: RETRY_AFTER, agent: { drain: refuses(new TooManyDrainsError(16)) }, send: () => send('POST', `/drain?id=${ID}`) },
  { route: 'POST /drain', status: 429, when: 'ten failed secrets from this address', body: 'error', headers: RETRY_AFTER, send: () => lockedOut('POST', '/drain') },
  { route: 'POST /drain', status: 429, when: 'ten refused pod tokens from this address', body: 'error', headers: RETRY_AFTER, send: lockedOutByTokens },
  { route: 'POST /drain', status: 413, when: 'a pod token with a body over 16 KiB', body: 'error', headers: { connection: /^close$/ }, send: () => send('POST', '/drain?service=shop/web', { ...asPod(POD_TOKEN.valid), body: Buffer.alloc(20_000, 0x61) }) },
  { route: 'POST /drain', status: 502, when: 'looking up the instance failed', body: 'error', agent: { drain: refuses(new Error('Rate exceeded')) }, send: () => send('POST', `/drain?id=${ID}`) },
  { route: 'POST /drain', status: 503, when: 'the agent is not ready yet, or shutting down', body: 'error', headers: RETRY_AFTER, agent: { drain: refuses(new NotReadyError('the first IMDS poll has not answered')) }, send: () => send('POST', '/drain') },

  { route: 'GET /drain/<instance-id>', status: 200, when: 'the latest drain of the instance', body: 'status', agent: { statusOf: () => drainStatus('deregistered') }, send: () => send('GET', `/drain/${ID}`) },
  { route: 'GET /drain/<instance-id>', status: 400, when: 'not an instance id, or a parameter other than pw', body: 'error', send: () => send('GET', `/drain/${ID}?foo=1`) },
  { route: 'GET /drain/<instance-id>', status: 401, when: 'the secret is missing or wrong', body: 'error', headers: { 'www-authenticate': /^Bearer$/ }, send: () => send('GET', `/drain/${ID}`, { secret: false }) },
  { route: 'GET /drain/<instance-id>', status: 403, when: 'a pod token', body: 'error', send: () => send('GET', `/drain/${ID}`, asPod(POD_TOKEN.valid)) },
  { route: 'GET /drain/<instance-id>', status: 404, when: 'no drain of it is known to this agent', body: 'error', send: () => send('GET', `/drain/${ID}`) },
  { route: 'GET /drain/<instance-id>', status: 405, when: 'any method but GET, HEAD and DELETE', body: 'error', headers: { allow: /^GET, HEAD, DELETE$/ }, send: () => send('POST', `/drain/${ID}`) },
  { route: 'DELETE /drain/<instance-id>', status: 200, when: 'the drain of another instance ended (its node given back), with its final status', body: 'status', agent: { cancelDrain: async () => drainStatus('failed') }, send: () => send('DELETE', `/drain/${ID}`) },
  { route: 'DELETE /drain/<instance-id>', status: 404, when: 'no drain of it is known to this agent', body: 'error', send: () => send('DELETE', `/drain/${ID}`) },
  { route: 'DELETE /drain/<instance-id>', status: 400, when: "this agent's own node (its drain follows the signs)", body: 'error', agent: { cancelDrain: async () => { throw new RefusedRequestError('this agent\'s own node: cancel drains of other instances only'); } }, send: () => send('DELETE', `/drain/${ID}`) },
  { route: 'GET /drain/<instance-id>', status: 429, when: 'ten failed secrets from this address', body: 'error', headers: RETRY_AFTER, send: () => lockedOut('GET', `/drain/${ID}`) },

  { route: 'GET /healthz', status: 200, when: 'the IMDS watcher ticks', body: 'health', send: () => send('GET', '/healthz', { secret: false }) },
  { route: 'GET /healthz', status: 503, when: 'the IMDS watcher stopped ticking', body: 'health', agent: { alive: () => false }, send: () => send('GET', '/healthz', { secret: false }) },
  { route: 'GET /healthz', status: 400, when: 'any parameter', body: 'error', send: () => send('GET', '/healthz?verbose=1', { secret: false }) },
  { route: 'GET /healthz', status: 405, when: 'any method but GET and HEAD', body: 'error', headers: { allow: /^GET, HEAD$/ }, send: () => send('POST', '/healthz', { secret: false }) },
  { route: 'GET /readyz', status: 200, when: 'ready', body: 'health', send: () => send('GET', '/readyz', { secret: false }) },
  { route: 'GET /readyz', status: 503, when: 'not ready, with the reason', body: 'health', agent: { readiness: () => ({ ready: false, reason: 'IMDS did not answer' }) }, send: () => send('GET', '/readyz', { secret: false }) },
  { route: 'GET /readyz', status: 400, when: 'any parameter', body: 'error', send: () => send('GET', '/readyz?pw=x', { secret: false }) },
  { route: 'GET /readyz', status: 405, when: 'any method but GET and HEAD', body: 'error', headers: { allow: /^GET, HEAD$/ }, send: () => send('DELETE', '/readyz', { secret: false }) },
  { route: 'GET /metrics', status: 200, when: 'always', body: 'metrics', send: () => send('GET', '/metrics', { secret: false }) },
  { route: 'GET /metrics', status: 400, when: 'any parameter', body: 'error', send: () => send('GET', '/metrics?name[]=x', { secret: false }) },
  { route: 'GET /metrics', status: 405, when: 'any method but GET and HEAD', body: 'error', headers: { allow: /^GET, HEAD$/ }, send: () => send('PUT', '/metrics', { secret: false }) },

  { route: 'any', status: 400, when: 'no Host header (HTTP/1.1)', body: 'error', send: () => send('GET', '/healthz', { secret: false, withoutHost: true }) },
  { route: 'any', status: 400, when: 'a malformed request URL', body: 'error', send: () => send('GET', 'http://[', { secret: false }) },
  { route: 'any', status: 400, when: "a request Node's HTTP parser refuses", body: 'error', headers: { connection: /^close$/ }, send: () => send('POST', '/drain', { headers: [['Content-Length', '1'], ['Content-Length', '2']] }) },
  { route: 'any', status: 404, when: 'no such endpoint', body: 'error', send: () => send('GET', '/drain&pw=oops', { secret: false }) },
  { route: 'any', status: 408, when: 'the headers took over 5 s, or the request over 10 s', body: 'error', headers: { connection: /^close$/ }, send: trickled },
  { route: 'any', status: 413, when: 'a body over 16 KiB', body: 'error', headers: { connection: /^close$/ }, send: () => send('POST', '/drain', { body: Buffer.alloc(20_000, 0x61) }) },
  { route: 'any', status: 417, when: 'an Expect other than 100-continue', body: 'error', send: () => send('GET', '/healthz', { secret: false, headers: [['Expect', 'something-else']] }) },
  { route: 'any', status: 431, when: 'request line and headers over 8 KiB', body: 'error', headers: { connection: /^close$/ }, send: () => send('GET', '/healthz', { secret: false, headers: [['X-Big', 'a'.repeat(9_000)]] }) },
  { route: 'any', status: 500, when: 'a fault in the agent', body: 'error', agent: { statusOf: () => { throw new Error('bug'); } }, send: () => send('GET', `/drain/${ID}`) },
  { route: 'any', status: 503, when: "over 100 requests on one connection (Node's own answer)", body: 'none', headers: { connection: /^close$/ }, send: pipelined },
];

describe('every answer of the API table', () => {
  for (const answer of ANSWERS) {
    test(`${answer.route}: ${answer.status} when ${answer.when}`, async () => {
      agent = { ...normalAgent, ...answer.agent };
      const got = await answer.send();
      assert.equal(got.status, answer.status, `${got.head}\n\n${got.body.slice(0, 300)}`);
      for (const [name, value] of Object.entries(answer.headers ?? {})) assert.match(header(got, name) ?? '(none)', value, name);
      assertShape(got, answer.body);
    });
  }
});

function assertShape(answer: RawAnswer, shape: BodyShape): void {
  switch (shape) {
    case 'error':
      // Cause, then what to do about it.
      return assert.match(errorOf(answer), /\S[:;] \S/);
    case 'status': {
      const status = JSON.parse(answer.body) as DrainStatus;
      return assert.equal(status.instanceId, ID);
    }
    case 'health': {
      const health = JSON.parse(answer.body) as { status?: unknown; reason?: unknown };
      assert.equal(typeof health.status, 'string');
      return assert.equal(answer.status === 200, health.reason === undefined, 'a reason exactly when not healthy');
    }
    case 'metrics':
      assert.match(header(answer, 'content-type') ?? '', /^text\/plain/);
      return assert.match(answer.body, /^hasta_la_vista_api_requests_total\{/m);
    case 'none':
      return assert.match(answer.body, /^(0\r\n\r\n)?$/);
  }
}

test('answers carry the Date header HTTP requires, in its IMF-fixdate form', async () => {
  for (const path of ['/healthz', '/metrics']) {
    const before = Date.now();
    const answer = await send('GET', path, { secret: false });
    const date = header(answer, 'date') ?? '(none)';
    assert.match(date, /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d\d:\d\d:\d\d GMT$/, path);
    // The second of the answer (the header has no milliseconds).
    assert.ok(Date.parse(date) >= Math.floor(before / 1000) * 1000 && Date.parse(date) <= Date.now(), `${path}: ${date} is not now`);
  }
});

describe('parameters', () => {
  const routes: [string, string, RegExp][] = [
    ['POST', '/drain', /POST \/drain takes id, ip, service, pod, wait, timeout, asg, pw/],
    ['GET', `/drain/${ID}`, /GET \/drain\/<instance-id> takes only pw/],
    ['GET', '/healthz', /GET \/healthz takes no parameters/],
    ['GET', '/readyz', /GET \/readyz takes no parameters/],
    ['GET', '/metrics', /GET \/metrics takes no parameters/],
  ];
  for (const [method, path, takes] of routes) {
    test(`${method} ${path}?foo=1 is refused, naming foo and what the route takes`, async () => {
      const answer = await send(method, `${path}?foo=1`);
      assert.equal(answer.status, 400);
      const error = errorOf(answer);
      assert.match(error, /unknown parameter "foo"/);
      assert.match(error, takes);
      assert.equal(drainRequests.length, 0, 'nothing was drained');
    });
  }

  test('pod= without service= is refused, saying to add service= or leave out pod=; with service= it reaches the agent', async () => {
    const alone = await send('POST', '/drain?pod=web-0');
    assert.equal(alone.status, 400);
    assert.match(errorOf(alone), /pod= needs service=.*add service=<namespace>\/<name>, or leave out pod=/);
    assert.equal(drainRequests.length, 0);

    assert.equal((await send('POST', '/drain?service=shop/web&pod=web-0')).status, 202);
    assert.deepEqual(drainRequests.map(({ pod, scope }) => ({ pod, scope })), [{ pod: 'web-0', scope: { kind: 'service', namespace: 'shop', name: 'web' } }]);
  });

  test('ip= takes IPv4 and IPv6 addresses, and refuses anything else naming both forms', async () => {
    for (const ip of ['10.0.1.23', '2600:1f18:4a3:6902::1c']) assert.equal((await send('POST', `/drain?ip=${encodeURIComponent(ip)}`)).status, 202, ip);
    assert.deepEqual(drainRequests.map((request) => request.target), [{ ip: '10.0.1.23' }, { ip: '2600:1f18:4a3:6902::1c' }]);
    const bad = await send('POST', '/drain?ip=10.0.1');
    assert.equal(bad.status, 400);
    assert.match(errorOf(bad), /^ip="10\.0\.1" is not an IPv4 .* IPv6/);
  });

  test('a parameter given twice is refused; the same secret twice is one secret', async () => {
    const twice = await send('POST', `/drain?id=${ID}&id=${ID}`);
    assert.equal(twice.status, 400);
    assert.match(errorOf(twice), /id is given more than once/);
    assert.equal((await send('POST', `/drain?pw=${SECRET}&pw=${SECRET}`, { secret: false })).status, 202);
  });

  test('wait=true that joins a longer drain answers 504 at its own timeout, with the drain still running', async () => {
    const started = Date.now();
    const answer = await send('POST', '/drain?wait=true&timeout=1');
    assert.equal(answer.status, 504);
    assert.equal((JSON.parse(answer.body) as DrainStatus).state, 'draining');
    assert.equal(header(answer, 'location'), `/drain/${ID}`);
    assert.ok(Date.now() - started < 5_000, "answered at the request's timeout, not the drain's deadline");
  });

  test('a malformed path escape on the status route is a 400, not a 5xx', async () => {
    const answer = await send('GET', '/drain/%E0%A4%A');
    assert.equal(answer.status, 400);
    assert.match(errorOf(answer), /is not an instance id/);
  });
});

test('the secret is never logged: not from pw=, the header, a mistyped URL, nor a request that failed inside the agent', async () => {
  let logged = '';
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      logged += chunk.toString();
      done();
    },
  });
  const logging = apiServer(createLogger('debug', sink));
  const loggingPort = await listen(logging);
  try {
    agent = { ...normalAgent, statusOf: () => { throw new Error('bug'); } };
    const requests: RawRequest[] = [
      { method: 'POST', target: `/drain?pw=${SECRET}` },
      { method: 'POST', target: `/drain?id=nonsense&pw=${SECRET}` },
      { method: 'GET', target: `/drain/${ID}?pw=${SECRET}` }, // fails inside the agent: 500, logged as an error
      { method: 'GET', target: '/healthz', headers: [BEARER] },
      { method: 'POST', target: `/drain&pw=${SECRET}` },
      { method: 'GET', target: `/drain/${SECRET}`, headers: [BEARER] },
      { method: 'GET', target: `/${SECRET}` },
      { method: 'GET', target: `/healthz?pw=${SECRET}` },
    ];
    for (const request of requests) await rawRequest(loggingPort, request);
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(logged.match(/"msg":"api request"/g)?.length, requests.length, 'every request was logged');
    assert.match(logged, /API request failed unexpectedly/);
    assert.ok(!logged.includes(SECRET), logged);
    assert.ok(!logged.includes(SECRET.slice(4, -4)), 'no large part of it either');
  } finally {
    close(logging);
  }
});

describe('a peer handing its drain to the coordinator', () => {
  const PEER = ['Hasta-La-Vista-Peer', 'hasta-la-vista-x7k2p'] as const;
  const described = { vpcId: 'vpc-0123456789abcdef0', privateIps: ['10.0.1.23', '10.0.1.57'], ipv4Prefixes: ['10.0.1.16/28'], ipv6Addresses: ['2600:1f18::1c'], ipv6Prefixes: ['2600:1f18:1:2:3::/80'] };
  const handOver = (body: string) => send('POST', `/drain?id=${ID}&timeout=90`, { headers: [PEER, ['Content-Type', 'application/json']], body });

  test('is named, and its instance as it describes it reaches the agent', async () => {
    const answer = await handOver(JSON.stringify({ instance: described }));
    assert.equal(answer.status, 202);
    assert.deepEqual(drainRequests[0]?.peer, { name: 'hasta-la-vista-x7k2p', instance: { id: ID, ...described, tags: {} } });
  });

  test('without a body it is named only: the agent looks the instance up itself', async () => {
    assert.equal((await send('POST', `/drain?id=${ID}`, { headers: [PEER] })).status, 202);
    assert.deepEqual(drainRequests[0]?.peer, { name: 'hasta-la-vista-x7k2p' });
  });

  const refused: [string, string, RegExp][] = [
    ['a body that is not JSON', '{"instance":', /not JSON/],
    ['no VPC id', JSON.stringify({ instance: { ...described, vpcId: 'vpc-xyz' } }), /instance\.vpcId is not a VPC id/],
    ['an address that is none', JSON.stringify({ instance: { ...described, privateIps: ['10.0.1.300'] } }), /instance\.privateIps is not a list of addresses/],
    ['a prefix without its length', JSON.stringify({ instance: { ...described, ipv6Prefixes: ['2600:1f18:1:2:3::'] } }), /instance\.ipv6Prefixes is not a list of addresses/],
  ];
  for (const [name, body, reason] of refused) {
    test(`with ${name} is refused (400, what to send), and nothing is drained`, async () => {
      const answer = await handOver(body);
      assert.equal(answer.status, 400);
      assert.match(errorOf(answer), reason);
      assert.match(errorOf(answer), /send \{"instance"/);
      assert.equal(drainRequests.length, 0);
    });
  }

  test('a body without the peer header is read as before: ignored', async () => {
    assert.equal((await send('POST', `/drain?id=${ID}`, { body: 'anything' })).status, 202);
    assert.equal(drainRequests[0]?.peer, undefined);
  });
});
