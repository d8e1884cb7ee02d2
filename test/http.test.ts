/** The HTTP API's own rules, against a stub agent: what a caller sees, whatever the drain does. */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { DrainHandle } from '../agent/drain/drainer.ts';
import type { DrainStatus } from '../agent/drain/status.ts';
import { createApiServer } from '../agent/http/server.ts';
import { silentLogger } from '../agent/log.ts';
import { Metrics } from '../agent/metrics.ts';

const SECRET = 'http-test-secret-0123456789';
const draining: DrainStatus = {
  instanceId: 'i-0123456789abcdef0',
  trigger: 'spot-interruption',
  scope: 'all',
  state: 'draining',
  dryRun: false,
  startedAt: new Date().toISOString(),
  deadline: new Date(Date.now() + 600_000).toISOString(),
  finishedAt: null,
  awsCalls: {},
  loadBalancers: [{ family: 'classic', name: 'web', state: 'draining' }],
};
/** A drain that runs far longer than any request waits: it has the later deadline. */
const longDrain: DrainHandle = { status: () => draining, done: new Promise(() => undefined), joined: true, amend: () => undefined };

let url: string;
const server = createApiServer({
  secret: SECRET,
  metrics: new Metrics(),
  logger: silentLogger(),
  agent: { alive: () => true, readiness: () => ({ ready: true }), drain: async () => longDrain, statusOf: () => undefined },
});
before(async () => {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => {
  server.closeAllConnections();
  server.close();
});

test('wait=true that joins a longer drain answers 504 at its own timeout, with the drain still running', async () => {
  const started = Date.now();
  const answer = await fetch(`${url}/drain?wait=true&timeout=1`, { method: 'POST', headers: { authorization: `Bearer ${SECRET}` }, signal: AbortSignal.timeout(10_000) });
  assert.equal(answer.status, 504);
  assert.equal(((await answer.json()) as DrainStatus).state, 'draining');
  assert.equal(answer.headers.get('location'), '/drain/i-0123456789abcdef0');
  assert.ok(Date.now() - started < 5_000, 'answered at the request\'s timeout, not the drain\'s deadline');
});

test('a malformed path escape on the status route is a 400, not a 5xx', async () => {
  const answer = await fetch(`${url}/drain/%E0%A4%A`, { headers: { authorization: `Bearer ${SECRET}` } });
  assert.equal(answer.status, 400);
  assert.match(((await answer.json()) as { error: string }).error, /is not an instance id/);
});
