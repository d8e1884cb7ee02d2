/**
 * Hostile input on the HTTP API of the BUILT agent (LOGLEVEL=debug, so every request passes the log),
 * sent on raw sockets so that nothing is cleaned up on the way: property-based (fast-check) over
 * methods, paths, query strings, headers, bodies and encodings; then oversized and slow requests and
 * many connections at once; then guessing the secret. Each property checks, per request, that the
 * agent answered (no hang), with no 5xx for a client mistake, and after the run, that it is alive,
 * drained nothing (proxy call log: no Deregister*), and never wrote the secret.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import type { DrainStatus } from '../agent/drain/status.ts';
import type { AgentProcess } from './helpers/agent-harness.ts';
import { rawRequest, trickle, type RawAnswer, type RawRequest } from './helpers/reliability-http.ts';
import { finished, record, Rig, SECRET, selfInScope } from './helpers/reliability-rig.ts';

const rig = new Rig();
let agent: AgentProcess;

before(() => rig.open());
after(() => rig.close());

/** What POST /drain takes (README.md's API table); any other parameter is a mistake. */
const DRAIN_PARAMETERS = ['id', 'ip', 'service', 'pod', 'wait', 'timeout', 'asg', 'pw'];

/** Runs per property: enough to find the classes of trouble, bounded so the suite stays quick. */
const RUNS = Number(process.env.RELIABILITY_API_RUNS ?? 150);

// ---- arbitraries

const NEAR_MISSES = [
  SECRET.slice(0, -1),
  `${SECRET}x`,
  SECRET.toUpperCase(),
  ` ${SECRET}`,
  `${SECRET}\u0000`,
  SECRET.replace(/.$/, '\u00e9'),
  encodeURIComponent(encodeURIComponent(`${SECRET}/`)),
  'a'.repeat(5000),
  '',
];

/** Text that stresses decoders: percent-escapes (valid, malformed, NUL, dot-dot), unicode, separators. */
const nasty = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 20 }),
  fc.constantFrom('%', '%%', '%zz', '%E0%A4%A', '%C0%AF', '%00', '%2e%2e', '%2F', '..', '/', '//', '?', '#', '&&', '==', '+', '%2B', '\u2028', '\ud83d\ude00', 'i-0123456789abcdef0', '10.0.1.23', 'true', '0'),
  fc.string({ maxLength: 3000 }).map((s) => s.padEnd(3000, 'z')),
);

/** How a piece of text goes on the wire: as is (only what a request line can carry), percent-encoded once or twice. */
const how = fc.oneof({ arbitrary: fc.constant(1), weight: 3 }, { arbitrary: fc.constant(2), weight: 1 }, { arbitrary: fc.constant(0), weight: 1 });

function wire(text: string, how: number): string {
  if (how === 1) return encodeURIComponent(text);
  if (how === 2) return encodeURIComponent(encodeURIComponent(text));
  // As is: drop what would end the request line; keep the rest, even bytes a parser may refuse.
  return text.replace(/[\s]/g, '');
}

const key = fc.oneof(fc.constantFrom('id', 'ip', 'pw', 'service', 'wait', 'timeout', 'ID', 'pw[]', 'id%00', ''), nasty);
const value = fc.oneof(fc.constantFrom(...NEAR_MISSES), nasty, fc.constantFrom('i-0123456789abcdef0', '10.0.1.23', 'default/web', '1', '3600', '99999999999999999999'));
const query = fc.array(fc.tuple(key, value, how), { maxLength: 8 }).map((pairs) => pairs.map(([k, v, h]) => `${wire(k, h)}=${wire(v, h)}`).join('&'));

const path = fc.oneof(
  fc.constantFrom('/drain', '/drain/', '/drain/i-0123456789abcdef0', '/healthz', '/readyz', '/metrics', '//drain', '/drain/..', '/DRAIN', '/drain%2f', '/drain/%E0%A4%A', '/./drain', '*', 'http://agent/drain', '/drain;x', '/healthz/'),
  fc.array(fc.tuple(nasty, how), { minLength: 1, maxLength: 4 }).map((segments) => `/${segments.map(([s, h]) => wire(s, h)).join('/')}`),
  fc.tuple(fc.constantFrom('/drain/', '/drain/i-'), nasty, how).map(([prefix, s, h]) => prefix + wire(s, h)),
);

const method = fc.oneof(fc.constantFrom('GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'PATCH', 'TRACE', 'post', 'PRI', 'SEARCH', 'PROPFIND'), fc.stringMatching(/^[A-Za-z!#$%&'*+.^_`|~-]{1,12}$/));

const headerValue = fc.oneof(fc.string({ maxLength: 60 }).map((s) => s.replace(/[\r\n]/g, '')), fc.constantFrom(...NEAR_MISSES.filter((s) => !s.includes('\u0000'))));
const headers = fc.array(
  fc.oneof(
    headerValue.map((v) => ['Authorization', `Bearer ${v}`] as const),
    headerValue.map((v) => ['Authorization', v] as const),
    fc.constantFrom(
      ['Authorization', `Basic ${Buffer.from(`x:${SECRET}x`).toString('base64')}`] as const,
      ['Authorization', `bearer  ${SECRET}y`] as const,
      ['Content-Type', 'application/json'] as const,
      ['Content-Type', 'application/x-www-form-urlencoded'] as const,
      ['Content-Encoding', 'gzip'] as const,
      ['Expect', '100-continue'] as const,
      ['Upgrade', 'websocket'] as const,
      ['X-Forwarded-For', '127.0.0.2'] as const,
      ['Transfer-Encoding', 'identity'] as const,
      ['Accept-Encoding', 'br, gzip, deflate'] as const,
    ),
    fc.tuple(fc.stringMatching(/^[A-Za-z0-9-]{1,20}$/), headerValue),
  ),
  { maxLength: 6 },
);

const body = fc.option(
  fc.oneof(
    fc.string({ maxLength: 200 }).map((s) => Buffer.from(s, 'utf8')),
    fc.uint8Array({ maxLength: 2000 }).map((a) => Buffer.from(a)),
    fc.constantFrom(Buffer.from(`pw=${SECRET}x&id=i-0123456789abcdef0`), Buffer.from(JSON.stringify({ id: 'i-0123456789abcdef0', pw: `${SECRET}x` }))),
    fc.integer({ min: 16_000, max: 40_000 }).map((n) => Buffer.alloc(n, 0x61)),
  ),
  { nil: undefined },
);

/** A source address of its own for most requests, so the guess limiter answers 401, not 429, and is exercised across many addresses. */
const localAddress = fc.tuple(fc.integer({ min: 1, max: 254 }), fc.integer({ min: 1, max: 254 })).map(([a, b]) => `127.9.${a}.${b}`);

const hostile: fc.Arbitrary<RawRequest> = fc.record({ method, target: fc.tuple(path, query).map(([p, q]) => (q ? `${p}?${q}` : p)), headers, body, localAddress });

/** What a client mistake may be answered with; 429 is the guess limiter, 417 an Expect other than 100-continue. */
const CLIENT_MISTAKE = new Set([400, 401, 404, 405, 413, 414, 417, 429, 431]);

function assertAnswered(answer: RawAnswer, request: RawRequest, allowed: Set<number>): void {
  if (answer.status === undefined) {
    // Closed without an answer: only for requests HTTP cannot carry (CONNECT-like or upgrade), never for plain ones.
    assert.ok(/^(CONNECT|PRI)$/i.test(request.method) || request.headers?.some(([name]) => /^upgrade$/i.test(name)), `closed without an answer: ${request.method} ${request.target.slice(0, 200)}`);
    return;
  }
  assert.ok(allowed.has(answer.status), `answered ${answer.status} to ${request.method} ${request.target.slice(0, 200)}: ${answer.body.slice(0, 200)}`);
}

function assertSecretNeverWritten(): void {
  const output = agent.stdout() + agent.stderr();
  assert.ok(!output.includes(SECRET), 'the secret is not in the agent output');
  assert.ok(!output.includes(SECRET.slice(4, -4)), 'no large part of the secret is in the agent output');
}

describe('hostile requests (fast-check)', () => {
  before(async () => {
    await rig.fresh();
    agent = await rig.startAgent({ LOGLEVEL: 'debug' });
  });
  after(() => rig.cleanup());

  test(`${RUNS} random requests without the secret: always answered, never 5xx, never a drain, the secret never logged`, async (t) => {
    let sent = 0;
    const statuses: Record<string, number> = {};
    await fc.assert(
      fc.asyncProperty(hostile, async (request) => {
        const answer = await rawRequest(agent.port, request);
        sent++;
        statuses[String(answer.status ?? 'closed')] = (statuses[String(answer.status ?? 'closed')] ?? 0) + 1;
        assertAnswered(answer, request, new Set([200, 202, ...CLIENT_MISTAKE]));
        // 2xx only for the unauthenticated routes.
        if (answer.status === 200 || answer.status === 202) assert.match(request.target, /^\/(healthz|readyz|metrics)\b/, `${answer.status} for ${request.method} ${request.target.slice(0, 200)}`);
        assert.ok(agent.alive(), 'the agent is still running');
      }),
      { numRuns: RUNS, interruptAfterTimeLimit: 60_000 },
    );
    assert.equal(rig.deregisterCalls().length, 0, 'nothing was drained');
    assert.equal((await agent.fetch('/healthz')).status, 200);
    await rig.assertLeftExactly([]);
    await sleep(200);
    assertSecretNeverWritten();
    record(t, { requests: sent, statuses, drains: 0, crashes: 0, hangs: 0 });
  });

  /** With the right secret, a drain request with at least one certain mistake in it. */
  const withOneMistake = fc
    .record({
      base: fc.constantFrom<[string, string][]>([], [['id', 'i-0123456789abcdef0']], [['ip', '10.0.1.23']], [['service', 'default/web']], [['wait', 'true']]),
      mistake: fc.oneof(
        nasty.filter((s) => !/^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$/.test(s)).map((s) => ['id', s] as [string, string]),
        nasty.filter((s) => !/^\d+\.\d+\.\d+\.\d+$/.test(s)).map((s) => ['ip', s] as [string, string]),
        nasty.filter((s) => !/^[a-z0-9-]+\/[a-z0-9-]+$/.test(s)).map((s) => ['service', s] as [string, string]),
        nasty.filter((s) => !/^(\d+)$/.test(s) || Number(s) < 1 || Number(s) > 3600).map((s) => ['timeout', s] as [string, string]),
        nasty.filter((s) => !['', 'true', 'false', '0', '1'].includes(s)).map((s) => ['wait', s] as [string, string]),
        fc.constantFrom<[string, string]>(['id', 'i-0123456789abcdef0'], ['ip', '10.0.1.23'], ['wait', 'true'], ['timeout', '5'], ['service', 'a/b']).map((p) => ['repeat', ...p] as unknown as [string, string]),
        fc.stringMatching(/^[a-z]{1,8}$/).filter((k) => !DRAIN_PARAMETERS.includes(k)).map((k) => [k, 'x'] as [string, string]),
      ),
      how: fc.integer({ min: 0, max: 1 }),
      secretIn: fc.constantFrom('query', 'bearer'),
    })
    .map(({ base, mistake, how, secretIn }) => {
      const pairs: [string, string][] = [...base];
      if ((mistake as unknown as string[])[0] === 'repeat') {
        const [, k, v] = mistake as unknown as [string, string, string];
        pairs.push([k, v], [k, v]);
      } else {
        // id and ip together are a mistake too: keep whichever base there is.
        pairs.push(mistake);
      }
      if (secretIn === 'query') pairs.push(['pw', SECRET]);
      const target = `/drain?${pairs.map(([k, v]) => `${k}=${how ? encodeURIComponent(v) : wire(v, 1)}`).join('&')}`;
      return { method: 'POST', target, headers: secretIn === 'bearer' ? [['Authorization', `Bearer ${SECRET}`] as const] : [], localAddress: '127.0.0.5' } satisfies RawRequest;
    });

  test(`${RUNS} drain requests with the right secret and a mistake in the parameters: 400, never a drain`, async (t) => {
    let sent = 0;
    await fc.assert(
      fc.asyncProperty(withOneMistake, async (request) => {
        const answer = await rawRequest(agent.port, request);
        sent++;
        assert.equal(answer.status, 400, `${request.target.slice(0, 300)} -> ${answer.status} ${answer.body.slice(0, 300)}`);
        assert.ok(JSON.parse(answer.body).error, 'the answer says what is wrong');
      }),
      { numRuns: RUNS, interruptAfterTimeLimit: 60_000 },
    );
    assert.equal(rig.deregisterCalls().length, 0, 'nothing was drained');
    assertSecretNeverWritten();
    record(t, { requests: sent, drains: 0 });
  });

  test(
    'GET /drain/<anything> with the right secret: 400 or 404, never 5xx',
    async (t) => {
      let sent = 0;
      const statusPath = fc.tuple(nasty, fc.integer({ min: 0, max: 2 })).map(([s, how]) => `/drain/${wire(s, how)}`);
      await fc.assert(
        fc.asyncProperty(fc.oneof(fc.constant('/drain/%E0%A4%A'), statusPath), async (target) => {
          const answer = await rawRequest(agent.port, { method: 'GET', target, headers: [['Authorization', `Bearer ${SECRET}`]], localAddress: '127.0.0.6' });
          sent++;
          assert.ok(answer.status === 400 || answer.status === 404, `${target.slice(0, 200)} -> ${answer.status} ${answer.body.slice(0, 200)}`);
        }),
        { numRuns: Math.min(RUNS, 60), interruptAfterTimeLimit: 30_000 },
      );
      record(t, { requests: sent });
    },
  );
});

describe('strict parameters, on the built agent', () => {
  before(async () => {
    await rig.fresh();
    agent = await rig.startAgent({ LOGLEVEL: 'debug' });
  });
  after(() => rig.cleanup());

  test('a parameter a route does not take, or pod= without service=: 400 naming it and the fix, never a drain; a secret in a mistyped URL is never logged', async (t) => {
    const bearer = ['Authorization', `Bearer ${SECRET}`] as const;
    const cases: [string, string, RegExp][] = [
      ['POST', '/drain?pod=web-0', /pod= needs service=.*add service=<namespace>\/<name>, or leave out pod=/],
      ['POST', '/drain?foo=1', /unknown parameter "foo": POST \/drain takes id, ip, service, pod, wait, timeout, asg, pw/],
      ['GET', `/drain/${rig.world.node.id}?foo=1`, /unknown parameter "foo": GET \/drain\/<instance-id> takes only pw/],
      ['GET', '/healthz?foo=1', /unknown parameter "foo": GET \/healthz takes no parameters/],
      ['GET', '/readyz?foo=1', /unknown parameter "foo": GET \/readyz takes no parameters/],
      ['GET', '/metrics?foo=1', /unknown parameter "foo": GET \/metrics takes no parameters/],
    ];
    for (const [method, target, error] of cases) {
      const answer = await rawRequest(agent.port, { method, target, headers: [bearer], localAddress: '127.0.7.1' });
      assert.equal(answer.status, 400, `${method} ${target}: ${answer.body}`);
      assert.match((JSON.parse(answer.body) as { error: string }).error, error);
    }
    // The secret where no parameter goes: nothing to log but the route.
    for (const [target, status] of [[`/drain&pw=${SECRET}`, 404], [`/drain/${SECRET}`, 400]] as const) {
      assert.equal((await rawRequest(agent.port, { method: 'GET', target, headers: [bearer], localAddress: '127.0.7.2' })).status, status, target);
    }
    assert.equal(rig.deregisterCalls().length, 0, 'nothing was drained');
    await sleep(200);
    assertSecretNeverWritten();
    record(t, { requests: cases.length + 2, drains: 0 });
  });
});

describe('oversized and slow requests, many connections', () => {
  before(async () => {
    await rig.fresh();
    agent = await rig.startAgent();
  });
  after(() => rig.cleanup());

  test('oversized headers (20 KB, 200 headers), bodies (64 KB, 1 MB, a 10^15 Content-Length) and malformed framing: refused with 4xx, nothing drained', async (t) => {
    const bearer = ['Authorization', `Bearer ${SECRET}`] as const;
    const cases: [string, RawRequest, number[]][] = [
      ['a 20 KB header', { method: 'GET', target: '/healthz', headers: [['X-Big', 'a'.repeat(20_000)]] }, [431, 400]],
      ['a 20 KB query string', { method: 'POST', target: `/drain?id=${'a'.repeat(20_000)}`, headers: [bearer] }, [431, 414, 400]],
      ['200 headers', { method: 'GET', target: '/healthz', headers: Array.from({ length: 200 }, (_, i) => [`X-H${i}`, 'v'] as const) }, [431, 400, 200]],
      ['a 64 KB body with the secret', { method: 'POST', target: '/drain', headers: [bearer], body: Buffer.alloc(64 * 1024, 0x61) }, [413]],
      ['a 1 MB body with the secret', { method: 'POST', target: '/drain', headers: [bearer], body: Buffer.alloc(1024 * 1024, 0x61) }, [413]],
      ['a 1 MB body without the secret', { method: 'POST', target: '/drain', body: Buffer.alloc(1024 * 1024, 0x61), localAddress: '127.0.0.7' }, [401]],
      ['a Content-Length of 10^15', { method: 'POST', target: '/drain', headers: [bearer, ['Content-Length', '1000000000000000']], contentLength: false }, [413]],
      // An unknown instance, like the chunked case below: the framing is under test, not a drain of this node.
      ['a lying Content-Length', { method: 'POST', target: '/drain?id=i-0123456789abcdef0', headers: [bearer, ['Content-Length', '10']], body: 'x'.repeat(100), contentLength: false }, [400, 404, 405, 413]],
      ['two Content-Lengths', { method: 'POST', target: '/drain', headers: [bearer, ['Content-Length', '1'], ['Content-Length', '2']], contentLength: false }, [400]],
      ['a small chunked body', { method: 'POST', target: '/drain?id=i-0123456789abcdef0', headers: [bearer, ['Transfer-Encoding', 'chunked']], body: `${'400\r\n' + 'a'.repeat(1024) + '\r\n'}`.repeat(4) + '0\r\n\r\n', contentLength: false }, [404]],
    ];
    for (const [name, request, allowed] of cases) {
      const answer = await rawRequest(agent.port, request, 12_000);
      assert.ok(answer.status !== undefined && allowed.includes(answer.status), `${name}: ${answer.status} ${answer.body.slice(0, 200)}`);
    }
    // The lying Content-Length made a request of a 10-byte body; the rest is a malformed second request.
    assert.equal((await agent.fetch('/healthz')).status, 200);
    assert.equal(rig.deregisterCalls().length, 0);
    record(t, { requests: cases.length, drains: 0 });
  });

  test('slow clients and 300 idle connections are cut off by the timeouts, while /healthz answers and a spot notice is drained', async (t) => {
    const port = agent.port;
    // Headers one byte every 300 ms (never finishing within 5 s); a body one byte every 300 ms; idle sockets that never send.
    const headerTricklers = Array.from({ length: 20 }, (_, i) => trickle(port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ' + 'a'.repeat(200), 300, `127.0.1.${i + 1}`));
    const bodyTricklers = Array.from({ length: 10 }, (_, i) =>
      trickle(port, `POST /drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${SECRET}\r\nContent-Length: 5000\r\n\r\n${'a'.repeat(5000)}`, 20, `127.0.2.${i + 1}`),
    );
    const idle = Array.from({ length: 300 }, (_, i) => trickle(port, '', 1_000, `127.0.3.${(i % 250) + 1}`));
    const all = [...headerTricklers, ...bodyTricklers, ...idle];

    // While they hang on: health checks are answered promptly, and a spot notice is caught and drained.
    const notice = rig.spotNotice(30_000);
    let healthChecks = 0;
    let slowest = 0;
    const until = Date.now() + 4_000;
    while (Date.now() < until) {
      const started = Date.now();
      const answer = await agent.fetch('/healthz', { signal: AbortSignal.timeout(2_000) });
      assert.equal(answer.status, 200);
      slowest = Math.max(slowest, Date.now() - started);
      healthChecks++;
      await sleep(200);
    }
    const status = await finished(agent, rig.world.node.id, 15_000);
    assert.equal(status.state, 'deregistered');
    assert.ok(Date.parse(status.finishedAt!) <= notice.getTime());
    await rig.assertLeftExactly(selfInScope(rig.world));

    // When they are cut off is the next test's (see bug 4); with RELIABILITY_SOAK=1 this one waits for it too.
    let cut: Record<string, number> = {};
    if (process.env.RELIABILITY_SOAK) {
      const results = await Promise.race([Promise.all(all.map((c) => c.closed)), sleep(45_000).then(() => undefined)]);
      assert.ok(results, 'every slow or idle connection was closed by the agent within 45 s');
      const worst = (from: number, to: number) => Math.max(...results.slice(from, to).map((r) => r.ms));
      const h = headerTricklers.length;
      const b = h + bodyTricklers.length;
      cut = { headerTricklersCutAfterMs: worst(0, h), bodyTricklersCutAfterMs: worst(h, b), idleCutAfterMs: worst(b, all.length) };
    }
    assert.ok(all.every((c) => !c.socket.destroyed || process.env.RELIABILITY_SOAK), 'they were all still open while the agent served the others');
    for (const c of all) c.socket.destroy();
    assert.equal((await agent.fetch('/healthz')).status, 200);
    record(t, { connections: all.length, healthChecks, slowestHealthMs: slowest, drainsCompleted: 1, ...cut });
    assert.ok(slowest < 1_000, `health checks stayed quick: slowest ${slowest} ms`);
  });

  test(
    'a client trickling its headers is cut off by the 5 s headersTimeout (within 7 s), not 30 s later',
    async (t) => {
      const slow = trickle(agent.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ' + 'a'.repeat(200), 200, '127.0.4.1');
      const idle = trickle(agent.port, '', 1_000, '127.0.4.2');
      const [cut, idleCut] = await Promise.all([slow, idle].map((c) => Promise.race([c.closed, sleep(8_000).then(() => undefined)])));
      slow.socket.destroy();
      idle.socket.destroy();
      record(t, { cutAfterMs: cut?.ms ?? '>8000', idleCutAfterMs: idleCut?.ms ?? '>8000' });
      assert.ok(cut && cut.ms < 7_000, `a header trickler was cut after ${cut?.ms ?? '> 8000'} ms`);
      assert.match(cut.answer, /^HTTP\/1\.1 408/);
      assert.ok(idleCut && idleCut.ms < 7_000, `an idle connection was cut after ${idleCut?.ms ?? '> 8000'} ms`);
    },
  );

  test(
    'a chunked body over 16 KB, on /healthz without the secret or on /drain with it: 413, and the agent lives on',
    async (t) => {
      const chunked = `${'400\r\n' + 'a'.repeat(1024) + '\r\n'}`.repeat(40);
      for (const request of [
        { method: 'GET', target: '/healthz', headers: [['Transfer-Encoding', 'chunked']] as const, body: chunked, contentLength: false, localAddress: '127.0.6.1' },
        { method: 'POST', target: '/drain', headers: [['Authorization', `Bearer ${SECRET}`], ['Transfer-Encoding', 'chunked']] as const, body: chunked, contentLength: false, localAddress: '127.0.6.2' },
      ] satisfies RawRequest[]) {
        const answer = await rawRequest(agent.port, request);
        assert.equal(answer.status, 413);
        await sleep(300);
        assert.ok(agent.alive(), `the agent died after ${request.method} ${request.target} with a chunked body:\n${agent.stderr().slice(-1000)}`);
      }
      record(t, { requests: 2 });
    },
  );
});

describe('guessing the secret', () => {
  beforeEach(async () => {
    await rig.fresh();
    agent = await rig.startAgent();
  });
  afterEach(() => rig.cleanup());

  const get = (path: string, localAddress: string, secret?: string) =>
    rawRequest(agent.port, { method: 'GET', target: path, headers: secret ? [['Authorization', `Bearer ${secret}`]] : [], localAddress });

  test('10 failures from one address, then 429 (even with the right secret), while the legitimate caller on another address still drains', async (t) => {
    const attacker = '127.0.0.3';
    const statuses: number[] = [];
    for (let i = 0; i < 30; i++) statuses.push((await get(`/drain/${rig.world.node.id}`, attacker, `guess-${i}-wrong-secret`)).status!);
    assert.deepEqual(statuses.slice(0, 10), Array(10).fill(401));
    assert.deepEqual(new Set(statuses.slice(10)), new Set([429]));
    const locked = await get(`/drain/${rig.world.node.id}`, attacker, SECRET);
    assert.equal(locked.status, 429, 'a locked address is not even checked');
    assert.match(locked.head, /retry-after: \d+/i);
    // The attacker's address can still read health.
    assert.equal((await get('/healthz', attacker)).status, 200);

    // The legitimate caller, elsewhere: authenticated, and the drain works.
    const legit = '127.0.0.2';
    assert.equal((await get(`/drain/${rig.world.node.id}`, legit, SECRET)).status, 404, 'authenticated: no drain known yet');
    const answer = await rawRequest(agent.port, { method: 'POST', target: '/drain?wait=true', headers: [['Authorization', `Bearer ${SECRET}`]], localAddress: legit }, 20_000);
    assert.equal(answer.status, 200, answer.body);
    assert.equal((JSON.parse(answer.body) as DrainStatus).state, 'deregistered');
    await rig.assertLeftExactly(selfInScope(rig.world));
    record(t, { guesses: 30, checked: statuses.filter((s) => s === 401).length, refused429: statuses.filter((s) => s === 429).length, legitimateDrains: 1 });
  });

  test('guesses sprayed from 50 addresses: each address gets at most 10 checked, and the legitimate caller is never locked out', async (t) => {
    const checked = new Map<string, number>();
    let sent = 0;
    await Promise.all(
      Array.from({ length: 50 }, async (_, i) => {
        const address = `127.0.5.${i + 1}`;
        for (let n = 0; n < 15; n++) {
          const answer = await get(`/drain/${rig.world.node.id}`, address, `spray-${i}-${n}-wrong`);
          sent++;
          assert.ok(answer.status === 401 || answer.status === 429, String(answer.status));
          if (answer.status === 401) checked.set(address, (checked.get(address) ?? 0) + 1);
        }
      }),
    );
    for (const [address, n] of checked) assert.ok(n <= 10, `${address}: ${n} guesses checked`);
    assert.equal((await get(`/drain/${rig.world.node.id}`, '127.0.0.2', SECRET)).status, 404, 'the legitimate caller is authenticated');
    assert.equal(rig.deregisterCalls().length, 0);
    record(t, { guesses: sent, addresses: 50, maxCheckedPerAddress: Math.max(...checked.values()) });
  });
});
