/**
 * Who may call the API, end to end: the built agent, moto behind the call-logging proxy, the fake IMDS,
 * and the fake Kubernetes API answering TokenReviews of the projected tokens it issues.
 *
 * A pod's own token (audience hasta-la-vista) may drain only the node the pod runs on, from a Service of
 * the pod's namespace, as that pod; everything else stays with the admin secret. The admin secret can be
 * a file the agent follows when it changes, and the API can be bound to one address.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DrainStatus } from '../agent/drain/status.ts';
import type { AwsProxy } from './fakes/aws-proxy.ts';
import type { FakeImds } from './fakes/imds.ts';
import { makeEndpointSlice, makePod, type FakeKube } from './fakes/kube.ts';
import { tagService, type World } from './fixtures/world.ts';
import { eventually, spawnAgent, waitReady, type AgentProcess } from './helpers/agent-harness.ts';
import { useCluster } from './helpers/e2e-cluster.ts';
import { freePort } from './helpers/moto.ts';

const SECRET = 'callers-Admin-Secret-8841';
const ADMIN = { authorization: `Bearer ${SECRET}` };
const NODE = 'ip-10-0-1-4.ec2.internal';
const OTHER_NODE = 'ip-10-0-2-9.ec2.internal';

const cluster = useCluster({
  node: NODE,
  pod: { namespace: 'kube-system', name: 'hasta-la-vista-abcde' },
  prepare: async ({ moto, world, kube }) => {
    await tagService(moto.url, world, 'shop/web');
    kube.setPod(makePod('shop', 'web-1', { nodeName: NODE }));
    kube.setPod(makePod('shop', 'web-2', { nodeName: OTHER_NODE }));
    // The stopping pod is still listed as ready: only its being the caller keeps it from counting.
    kube.setEndpointSlice(makeEndpointSlice('shop', 'web', 'web-abc12', [{ node: NODE, pod: 'web-1', ip: '10.0.1.100' }]));
  },
});
let proxy: AwsProxy;
let world: World;
let imds: FakeImds;
let kube: FakeKube;
let tmp: string;
beforeEach(() => ({ proxy, world, imds, kube, tmp } = cluster));

async function startAgent(env: Record<string, string> = {}): Promise<AgentProcess> {
  const agent = spawnAgent(await freePort(), cluster.agentEnv({ SECRET, LOCAL_SERVICE_DRAIN: 'true', COORDINATION: 'off', ...env }));
  await waitReady(agent);
  return agent;
}

const asPod = (token: string) => ({ authorization: `Bearer ${token}` });

async function post(agent: AgentProcess, query: string, headers: Record<string, string>): Promise<{ code: number; body: DrainStatus & { error?: string } }> {
  const answer = await agent.fetch(`/drain?${query}`, { method: 'POST', headers });
  return { code: answer.status, body: (await answer.json()) as DrainStatus & { error?: string } };
}

const deregisteredFrom = () => proxy.calls.filter((call) => call.action.startsWith('Deregister')).map((call) => call.params.get('LoadBalancerName') ?? call.params.get('TargetGroupArn')).sort();
const tokenReviews = () => kube.requests.filter((request) => request.path === '/apis/authentication.k8s.io/v1/tokenreviews').length;

describe('a pod presenting its own projected token', () => {
  test('drains its own node from its own Service, as that pod, and is named in the log and the Event; the token is never logged', async () => {
    const agent = await startAgent();
    const token = kube.issueToken('shop', 'web-1');
    const { code, body } = await post(agent, 'service=shop/web&wait=true&timeout=20', asPod(token));
    assert.equal(code, 200, JSON.stringify(body));
    assert.equal(body.state, 'deregistered', 'the caller (from the token) is not counted as another ready endpoint');
    assert.equal(body.scope, 'service:shop/web');
    assert.deepEqual(deregisteredFrom(), [world.classic.tagged, world.groups.taggedIp].sort(), "that Service's load balancers only");

    const started = kube.events.find((event) => event.reason === 'DrainStarted');
    assert.match(started?.message ?? '', /^Draining i-\w+ \(api\) from the load balancers of Service shop\/web until \S+, asked by pod shop\/web-1 \(service account hasta-la-vista, node ip-10-0-1-4\.ec2\.internal\)$/);
    assert.ok(agent.logs().some((line) => line.msg === 'scoped drain asked by a pod' && /pod shop\/web-1/.test(line.caller)), 'the caller is in the log');
    // A preStop hook that tries again costs no second review.
    assert.equal((await post(agent, 'service=shop/web&wait=true&timeout=20', asPod(token))).code, 200);
    assert.equal(tokenReviews(), 1);
    assert.ok(!agent.stderr().includes(token) && !agent.stdout().includes(token), 'the token is in the output');
  });

  test('is refused (403, with the reason) for anything more: another node, another namespace, a full drain, id=, ip=, asg=, another pod, reading drains', async () => {
    const agent = await startAgent();
    const own = asPod(kube.issueToken('shop', 'web-1'));
    const refusals: [string, Record<string, string>, string | RegExp][] = [
      ['service=shop/web', asPod(kube.issueToken('shop', 'web-2')), /runs on node ip-10-0-2-9\.ec2\.internal, not on ip-10-0-1-4\.ec2\.internal: call the agent on the pod's own node/],
      ['service=bank/ledger', own, /from a Service of its own namespace: POST \/drain\?service=shop\/<service>, not bank\/ledger/],
      ['', own, /a drain of every load balancer needs the admin secret/],
      ['wait=true', own, /a drain of every load balancer needs the admin secret/],
      [`id=${world.neighbour.id}&service=shop/web`, own, /with no id= or ip=/],
      [`id=${world.node.id}&service=shop/web`, own, /with no id= or ip=/],
      ['ip=10.0.1.77&service=shop/web', own, /with no id= or ip=/],
      ['service=shop/web&asg=true', own, /asg=true needs the admin secret/],
      ['service=shop/web&pod=web-9', own, /pod=web-9 is not the token's pod web-1: leave out pod=/],
    ];
    for (const [query, headers, reason] of refusals) {
      const { code, body } = await post(agent, query, headers);
      assert.equal(code, 403, `${query}: ${JSON.stringify(body)}`);
      assert.match(body.error!, reason instanceof RegExp ? reason : new RegExp(reason));
    }
    const status = await agent.fetch(`/drain/${world.node.id}`, { headers: own });
    assert.equal(status.status, 403);
    assert.match(((await status.json()) as { error: string }).error, /GET \/drain\/<instance-id> needs the admin secret/);

    assert.deepEqual(deregisteredFrom(), [], 'nothing was drained');
    assert.ok(agent.logs().some((line) => /refused/.test(line.msg) && /pod shop\/web-1/.test(line.caller)), 'the refused caller is in the log');
    // The admin secret still may do all of it.
    assert.equal((await post(agent, 'service=bank/ledger&wait=true&timeout=20', ADMIN)).code, 200);
  });

  test('with the wrong audience, made up, or expired: 401 with the reason, and nothing is drained', async () => {
    const agent = await startAgent();
    const wrongAudience = await post(agent, 'service=shop/web', asPod(kube.issueToken('shop', 'web-1', { audience: 'vault' })));
    assert.equal(wrongAudience.code, 401);
    assert.match(wrongAudience.body.error!, /the pod token is refused: .*token audiences \["vault"\] is invalid for the target audiences \["hasta-la-vista"\].*audience "hasta-la-vista"/);
    const madeUp = await post(agent, 'service=shop/web', asPod('eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtZSJ9.c2ln'));
    assert.equal(madeUp.code, 401);

    const shortLived = kube.issueToken('shop', 'web-1', { expiresInSeconds: 2 });
    const first = await post(agent, 'service=shop/web&wait=true&timeout=20', asPod(shortLived));
    assert.equal(first.code, 200, 'valid while it lasts');
    await sleep(2_500);
    const expired = await post(agent, 'service=shop/web', asPod(shortLived));
    assert.equal(expired.code, 401, 'not kept past its expiry');
    assert.match(expired.body.error!, /service account token has expired/);
  });

  test('a TokenReview outage fails closed (503, naming the cause) while the admin secret keeps working', async () => {
    const agent = await startAgent();
    const token = asPod(kube.issueToken('shop', 'web-1'));
    kube.forbid('tokenreviews');
    const forbidden = await post(agent, 'service=shop/web', token);
    assert.equal(forbidden.code, 503);
    assert.match(forbidden.body.error!, /could not check the pod token, the TokenReview failed: .*403.*grant create on tokenreviews.*the admin secret works meanwhile/);
    assert.deepEqual(deregisteredFrom(), []);
    assert.equal((await post(agent, 'service=shop/web&wait=true&timeout=20', ADMIN)).code, 200, 'the admin secret is not affected');

    kube.allow('tokenreviews');
    assert.equal((await post(agent, 'service=shop/web&wait=true&timeout=20', token)).code, 200, 'an outage is not remembered against the token');
  });

  test('on an API server that leaves the node out of the review, the pod is read to learn it', async () => {
    const agent = await startAgent();
    assert.equal((await post(agent, 'service=shop/web', asPod(kube.issueToken('shop', 'web-2', { nodeInfo: false })))).code, 403);
    const own = await post(agent, 'service=shop/web&wait=true&timeout=20', asPod(kube.issueToken('shop', 'web-1', { nodeInfo: false })));
    assert.equal(own.code, 200);
    assert.equal(own.body.state, 'deregistered');
  });

  test('TOKEN_AUDIENCE=off: a token is refused (401) and says so', async () => {
    const agent = await startAgent({ TOKEN_AUDIENCE: 'off' });
    const { code, body } = await post(agent, 'service=shop/web', asPod(kube.issueToken('shop', 'web-1')));
    assert.equal(code, 401);
    assert.match(body.error!, /pod tokens are not accepted by this agent \(TOKEN_AUDIENCE=off/);
    assert.equal(tokenReviews(), 0);
  });
});

describe('the admin secret as a file (SECRET_FILE)', () => {
  test('a changed file opens the API with the new secret without a restart; the previous one keeps working for a while', async () => {
    const file = join(tmp, 'secret');
    writeFileSync(file, 'first-Secret-from-a-file-1\n');
    const agent = await startAgent({ SECRET: '', SECRET_FILE: file });
    const status = (secret: string) => agent.fetch(`/drain/${world.node.id}`, { headers: { authorization: `Bearer ${secret}` } }).then((answer) => answer.status);
    assert.equal(await status('first-Secret-from-a-file-1'), 404, 'opened (no drain known yet)');
    assert.equal(await status(SECRET), 401);

    writeFileSync(file, 'second-Secret-from-a-file-2\n');
    assert.equal(await status('second-Secret-from-a-file-2'), 404, 'the new secret opens the API as soon as the file has it');
    assert.equal(await status('first-Secret-from-a-file-1'), 404, 'the replaced one, within its grace');
    assert.ok(agent.logs().some((line) => line.msg.startsWith('the API secret changed')));

    writeFileSync(file, 'short\n');
    assert.equal(await status('short'), 401, 'a bad file opens nothing');
    assert.equal(await status('second-Secret-from-a-file-2'), 404, 'and keeps the last good secret');
    await eventually(() => agent.logs().some((line) => line.level === 'error' && /is 5 characters long/.test(line.msg)), 5_000, 'the bad file is reported');
    for (const secret of ['first-Secret-from-a-file-1', 'second-Secret-from-a-file-2', 'short']) assert.ok(!agent.stderr().includes(secret), 'a secret is in the log');
  });
});

describe('BIND_ADDRESS', () => {
  test('the API answers on that address only', async () => {
    const port = await freePort();
    const agent = spawnAgent(port, { AWS_ENDPOINT_URL: proxy.url, AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url, SECRET, BIND_ADDRESS: '127.0.0.2' });
    await eventually(async () => (await fetch(`http://127.0.0.2:${port}/healthz`)).status === 200, 20_000, 'the API answers on 127.0.0.2');
    await assert.rejects(fetch(`http://127.0.0.1:${port}/healthz`), 'nothing listens on 127.0.0.1');
    assert.ok(agent.logs().some((line) => line.msg === 'API listening' && line.address === '127.0.0.2'));
  });
});
