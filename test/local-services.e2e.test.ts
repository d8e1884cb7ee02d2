/**
 * Services with externalTrafficPolicy: Local, end to end: the built agent, the fake Kubernetes API with
 * EndpointSlices, and moto behind the call-logging proxy. A scoped drain of this node takes it out of
 * that Service's load balancers only, is skipped while another local pod is ready, and is undone (same
 * load balancer, same port) when a local pod is ready again, unless the node is going away.
 */
import assert from 'node:assert/strict';
import { beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DrainStatus } from '../agent/drain/status.ts';
import type { AwsProxy } from './fakes/aws-proxy.ts';
import type { FakeImds } from './fakes/imds.ts';
import { makeEndpointSlice, type FakeKube } from './fakes/kube.ts';
import { registrations, tagService, type World } from './fixtures/world.ts';
import { eventually, metricSample, spawnAgent, waitReady, type AgentProcess } from './helpers/agent-harness.ts';
import { useCluster } from './helpers/e2e-cluster.ts';
import { freePort, type Moto } from './helpers/moto.ts';

const SECRET = 'local-Services-Secret-4711';
const NODE = 'ip-10-0-1-4.ec2.internal';
const OTHER_NODE = 'ip-10-0-2-9.ec2.internal';
const BEARER = { authorization: `Bearer ${SECRET}` };
const ANNOTATION = 'hasta-la-vista.io/scoped-out';

const cluster = useCluster({ node: NODE, pod: { namespace: 'kube-system', name: 'hasta-la-vista-abcde' }, prepare: ({ moto, world }) => tagService(moto.url, world, 'shop/web') });
let moto: Moto;
let proxy: AwsProxy;
let world: World;
let imds: FakeImds;
let kube: FakeKube;
beforeEach(() => ({ moto, proxy, world, imds, kube } = cluster));

/** The Service's memberships of the node: a classic ELB (in-tree tag) and an ip target group (AWS LBC tag). */
const serviceMemberships = (w: World) => [`clb:${w.classic.tagged}:${w.node.id}`, `tg:taggedIp:${w.node.secondaryIp}:8080`];

function endpoints(list: { node: string; pod: string; ready?: boolean; terminating?: boolean }[]): void {
  kube.setEndpointSlice(makeEndpointSlice('shop', 'web', 'web-abc12', list.map((endpoint, i) => ({ ...endpoint, ip: `10.0.1.${100 + i}` }))));
}

async function startAgent(): Promise<AgentProcess> {
  const agent = spawnAgent(await freePort(), cluster.agentEnv({ SECRET, LOCAL_SERVICE_DRAIN: 'true' }));
  await waitReady(agent);
  return agent;
}

async function drainService(agent: AgentProcess, service = 'shop/web'): Promise<{ code: number; status: DrainStatus }> {
  const answer = await agent.fetch(`/drain?service=${service}&wait=true&timeout=20`, { method: 'POST', headers: BEARER });
  return { code: answer.status, status: (await answer.json()) as DrainStatus };
}

const registerCalls = () => proxy.calls.filter((call) => call.action.startsWith('Register'));
const deregisteredFrom = () => proxy.calls.filter((call) => call.action.startsWith('Deregister')).map((call) => call.params.get('LoadBalancerName') ?? call.params.get('TargetGroupArn')).sort();

describe('scoped drains of this node (LOCAL_SERVICE_DRAIN=true)', () => {
  test('skipped while another local pod of the Service is ready; the last one drains that Service only', async () => {
    const agent = await startAgent();
    const before = await registrations(moto.url, world);
    endpoints([
      { node: NODE, pod: 'web-1', ready: false, terminating: true },
      { node: NODE, pod: 'web-2' },
    ]);
    const skipped = await drainService(agent);
    assert.equal(skipped.code, 200);
    assert.equal(skipped.status.state, 'skipped');
    assert.match(skipped.status.reason!, /1 other ready endpoint\(s\) of shop\/web still run on this node/);
    assert.deepEqual(deregisteredFrom(), []);

    // A ready pod on another node does not keep this node in.
    endpoints([
      { node: NODE, pod: 'web-1', ready: false, terminating: true },
      { node: NODE, pod: 'web-2', ready: false, terminating: true },
      { node: OTHER_NODE, pod: 'web-3' },
    ]);
    const drained = await drainService(agent);
    assert.equal(drained.code, 200);
    assert.equal(drained.status.state, 'deregistered');
    assert.equal(drained.status.scope, 'service:shop/web');
    assert.deepEqual(deregisteredFrom(), [world.classic.tagged, world.groups.taggedIp].sort());
    const expected = [...before].filter((membership) => !serviceMemberships(world).includes(membership)).sort();
    assert.deepEqual([...(await registrations(moto.url, world))].sort(), expected, 'every other load balancer keeps the node');
    assert.equal(kube.node(NODE)!.metadata.labels['node.kubernetes.io/exclude-from-external-load-balancers'], undefined, 'the node as a whole stays in');
    const remembered = JSON.parse(kube.node(NODE)!.metadata.annotations[ANNOTATION]) as { service: string }[];
    assert.deepEqual(remembered.map((entry) => entry.service), ['shop/web', 'shop/web']);
  });

  test('the calling pod (pod=) is not counted, even while its EndpointSlice entry still says ready', async () => {
    const agent = await startAgent();
    endpoints([{ node: NODE, pod: 'web-1' }]); // the controller has not marked the stopping pod yet
    const answer = await agent.fetch('/drain?service=shop/web&pod=web-1&wait=true&timeout=20', { method: 'POST', headers: BEARER });
    assert.equal(answer.status, 200);
    assert.equal(((await answer.json()) as DrainStatus).state, 'deregistered');
    assert.deepEqual(deregisteredFrom(), [world.classic.tagged, world.groups.taggedIp].sort());
    const bad = await agent.fetch('/drain?service=shop/web&pod=Web_1', { method: 'POST', headers: BEARER });
    assert.equal(bad.status, 400);
  });

  test('registered back once, on the same port, when a local pod is ready again', async () => {
    const agent = await startAgent();
    endpoints([{ node: NODE, pod: 'web-1', ready: false, terminating: true }]);
    assert.equal((await drainService(agent)).status.state, 'deregistered');
    await sleep(2_500);
    assert.deepEqual(registerCalls(), [], 'nothing goes back while no local pod is ready');

    endpoints([{ node: NODE, pod: 'web-4' }]);
    await eventually(async () => {
      const now = await registrations(moto.url, world);
      return serviceMemberships(world).every((membership) => now.has(membership));
    }, 15_000, 'registered back');
    const registered = registerCalls();
    assert.deepEqual(registered.map((call) => call.action).sort(), ['RegisterInstancesWithLoadBalancer', 'RegisterTargets']);
    const targets = registered.find((call) => call.action === 'RegisterTargets')!;
    assert.equal(targets.params.get('Targets.member.1.Id'), world.node.secondaryIp);
    assert.equal(targets.params.get('Targets.member.1.Port'), '8080');

    await sleep(2_500);
    assert.equal(registerCalls().length, 2, 'registration happens once');
    assert.equal(kube.node(NODE)!.metadata.annotations[ANNOTATION], undefined, 'the memory is cleared');
    assert.equal(kube.events.filter((event) => event.reason === 'RegisteredBack').length, 2);
    const metrics = await (await agent.fetch('/metrics')).text();
    assert.equal(metricSample(metrics, 'hasta_la_vista_registered_back_total', { family: 'classic' }), 1);
    assert.equal(metricSample(metrics, 'hasta_la_vista_registered_back_total', { family: 'target-group' }), 1);
  });

  test('the memory survives a restart of the agent', async () => {
    const first = await startAgent();
    endpoints([{ node: NODE, pod: 'web-1', ready: false, terminating: true }]);
    assert.equal((await drainService(first)).status.state, 'deregistered');
    first.child.kill('SIGKILL');
    await first.exited;

    await startAgent();
    endpoints([{ node: NODE, pod: 'web-5' }]);
    await eventually(async () => {
      const now = await registrations(moto.url, world);
      return serviceMemberships(world).every((membership) => now.has(membership));
    }, 15_000, 'registered back by the new agent');
  });

  test('nothing goes back for a node that is going away', async () => {
    const agent = await startAgent();
    endpoints([{ node: NODE, pod: 'web-1', ready: false, terminating: true }]);
    assert.equal((await drainService(agent)).status.state, 'deregistered');
    imds.set('meta-data/spot/instance-action', JSON.stringify({ action: 'terminate', time: new Date(Date.now() + 120_000).toISOString() }));
    await eventually(async () => {
      const answer = await agent.fetch(`/drain/${world.node.id}`, { headers: BEARER });
      return answer.ok && ((await answer.json()) as DrainStatus).trigger === 'spot-interruption';
    }, 15_000, 'the spot drain');
    endpoints([{ node: NODE, pod: 'web-6' }]);
    await sleep(3_000);
    assert.deepEqual(registerCalls(), []);
  });

  test('a bad service is refused with 400 and a message', async () => {
    const agent = await startAgent();
    for (const service of ['web', 'Shop/Web', 'shop/web/x', '', 'shop/-web']) {
      const answer = await agent.fetch(`/drain?service=${encodeURIComponent(service)}`, { method: 'POST', headers: BEARER });
      assert.equal(answer.status, 400, service);
      assert.match(((await answer.json()) as { error: string }).error, /is not a Service: expected <namespace>\/<name>/);
    }
    assert.deepEqual(deregisteredFrom(), []);
  });
});
