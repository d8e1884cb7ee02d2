/**
 * Holding the node until it is out, and telling everyone, end to end: the built agent, moto behind the
 * fault-injecting proxy (which plays a target group's deregistration delay), the fake IMDS and the fake
 * Kubernetes API. The Cluster Autoscaler's soft taint, its taint, Karpenter's taint followed by the
 * agent's eviction, the Node annotations that say where the drain stands, and the webhook that tells it.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ModifyLoadBalancerAttributesCommand } from '@aws-sdk/client-elastic-load-balancing';
import { ModifyTargetGroupAttributesCommand } from '@aws-sdk/client-elastic-load-balancing-v2';
import type { DrainStatus } from '../agent/drain/status.ts';
import { drainingTargets, type AwsProxy } from './fakes/aws-proxy.ts';
import type { FakeKube, KubeObject } from './fakes/kube.ts';
import { awsClients, type World } from './fixtures/world.ts';
import { eventually, exitWithin, metricSample, spawnAgent, statusBecomes as drainBecomes, waitReady, type AgentProcess } from './helpers/agent-harness.ts';
import { useCluster } from './helpers/e2e-cluster.ts';
import { freePort, type Moto } from './helpers/moto.ts';

const SECRET = 'holding-Secret-5e1d7a9c3b20';
const NODE = 'ip-10-0-1-23.ec2.internal';
const POD_NS = 'kube-system';
const POD = 'hasta-la-vista-h0ld1';
const HOLD = 'delay-deletion.cluster-autoscaler.kubernetes.io/hasta-la-vista';
const MARK = 'hasta-la-vista.io/drain';
const SOFT_TAINT = { key: 'DeletionCandidateOfClusterAutoscaler', value: '1765100000', effect: 'PreferNoSchedule' };
const CA_TAINT = { key: 'ToBeDeletedByClusterAutoscaler', value: '1765100600', effect: 'NoSchedule' };
const KARPENTER_TAINT = { key: 'karpenter.sh/disrupted', effect: 'NoSchedule' };

const cluster = useCluster({ node: NODE, pod: { namespace: POD_NS, name: POD } });
let moto: Moto;
let proxy: AwsProxy;
let world: World;
let kube: FakeKube;
let tmp: string;
beforeEach(() => ({ moto, proxy, world, kube, tmp } = cluster));

async function startAgent(extra: Record<string, string> = {}): Promise<AgentProcess> {
  const agent = spawnAgent(await freePort(), cluster.agentEnv({ SECRET, COORDINATION: 'off', ...extra }));
  await waitReady(agent);
  return agent;
}

const nodeNow = () => kube.node(NODE)!;
const annotation = (key: string): string | undefined => nodeNow().metadata.annotations[key];
const markNow = () => JSON.parse(annotation(MARK) ?? 'null') as Record<string, string> | null;
const taint = (...taints: KubeObject[]) => kube.setNode({ ...nodeNow(), spec: { ...nodeNow().spec, taints } });
const deregistrations = () => proxy.calls.filter((call) => call.action.startsWith('Deregister'));
const statusBecomes = (agent: AgentProcess, state: DrainStatus['state'], timeoutMs?: number) => drainBecomes(agent, SECRET, world.node.id, state, timeoutMs);
/** The patches that wrote `key`, with the value written. */
const writesOf = (key: string) => kube.patches.filter((patch) => key in (patch.body.metadata?.annotations ?? {})).map((patch) => ({ at: patch.at, value: patch.body.metadata.annotations[key] as string | null }));

describe('the Cluster Autoscaler waits for the drain', () => {
  test('its soft taint puts the hold on and drains nothing; its taint drains the node, held from before the first deregistration until out', async () => {
    const agent = await startAgent();
    assert.equal(annotation(HOLD), undefined, 'no autoscaler in sight: no hold');
    assert.deepEqual(kube.patches, [], 'and nothing written');

    taint(SOFT_TAINT);
    await eventually(() => annotation(HOLD) !== undefined, 5_000, 'the hold on the Node');
    await sleep(1_500);
    assert.deepEqual(deregistrations(), [], '"may be removed later" drains nothing');
    assert.equal(annotation(MARK), undefined);

    taint(SOFT_TAINT, CA_TAINT);
    const status = await statusBecomes(agent, 'deregistered');
    assert.equal(status.trigger, 'node-removal');
    const held = writesOf(HOLD);
    assert.ok(held[0]!.value !== null && held[0]!.at < deregistrations()[0]!.at, 'held before the first deregistration');
    await eventually(() => annotation(HOLD) === undefined, 5_000, 'the hold off once out, though the soft taint stays');
    assert.deepEqual(markNow(), { state: 'deregistered', trigger: 'node-removal', startedAt: status.startedAt, deadline: status.deadline, finishedAt: status.finishedAt });
    const marks = writesOf(MARK).map((write) => (JSON.parse(write.value!) as { state: string }).state);
    assert.deepEqual(marks, ['draining', 'deregistered'], 'written when it started and when it ended');
  });

  test('its taint alone (its soft taint not seen: the agent started late): held before the first deregistration all the same, and let go once out', async () => {
    const agent = await startAgent();
    taint(CA_TAINT);
    await statusBecomes(agent, 'deregistered');
    const held = writesOf(HOLD);
    assert.ok(held[0]!.value !== null && held[0]!.at < deregistrations()[0]!.at, 'held before the first deregistration');
    await eventually(() => annotation(HOLD) === undefined, 5_000, 'the hold off once out');
  });

  test('a drain that times out (a deregistration delay longer than the drain may wait): the hold comes off all the same', async () => {
    proxy.addFault(drainingTargets());
    const agent = await startAgent({ DRAIN_TIMEOUT: '3' });
    taint(SOFT_TAINT);
    await eventually(() => annotation(HOLD) !== undefined, 5_000, 'the hold on the Node');
    taint(SOFT_TAINT, CA_TAINT);
    await statusBecomes(agent, 'timed_out', 15_000);
    await eventually(() => annotation(HOLD) === undefined, 5_000, 'the hold off: a forgotten one makes the autoscaler wait its whole timeout');
    assert.equal(markNow()?.state, 'timed_out');
  });

  test('given back (the autoscaler gave up and took its taint off): the mark goes, and the hold is back while the soft taint stays', async () => {
    const agent = await startAgent();
    taint(SOFT_TAINT, CA_TAINT);
    await statusBecomes(agent, 'deregistered');
    await eventually(() => annotation(HOLD) === undefined && markNow()?.state === 'deregistered', 5_000, 'out, the hold off');

    taint(SOFT_TAINT);
    await eventually(() => annotation(MARK) === undefined, 15_000, 'the drain mark removed on give-back');
    await eventually(() => annotation(HOLD) !== undefined, 5_000, 'held again for the next time');
  });

  test('the agent stopping without a drain (a restart, an uninstall) takes its hold off: nobody would lift it', async () => {
    const agent = await startAgent();
    taint(SOFT_TAINT);
    await eventually(() => annotation(HOLD) !== undefined, 5_000, 'the hold on the Node');
    agent.child.kill('SIGTERM');
    assert.equal((await exitWithin(agent, 10_000)).code, 0);
    assert.equal(annotation(HOLD), undefined);
    assert.deepEqual(deregistrations(), []);
  });
});

describe('Karpenter waits for the agent', () => {
  test('its taint starts the drain at once; evicted (SIGTERM) while a deregistration delay runs, the agent ends only once out', async () => {
    let delayOver = false;
    proxy.addFault(drainingTargets(() => !delayOver));
    const agent = await startAgent({ TERMINATION_GRACE_PERIOD: '60' });
    taint(KARPENTER_TAINT);
    await eventually(() => proxy.count('DeregisterTargets') === 2, 10_000, 'deregistered from both target groups, no signal needed');
    assert.equal(markNow()?.state, 'draining');

    agent.child.kill('SIGTERM');
    await sleep(2_000);
    assert.ok(agent.alive(), 'evicted, it keeps draining');
    delayOver = true;
    const endedAt = Date.now();
    const exit = await exitWithin(agent, 20_000);
    assert.equal(exit.code, 0, agent.stderr());
    const drained = agent.logs().find((line) => line.msg === 'drain deregistered');
    assert.ok(drained, 'the drain ended out before the process did');
    assert.ok(new Date(drained.time).getTime() >= endedAt, 'out only once the delay was over');
    assert.equal(markNow()?.state, 'deregistered');
  });
});

/** A webhook receiver: what it was sent, and how it answers each request (an HTTP status, or never). */
async function startReceiver(answer: (index: number) => number | 'never'): Promise<{ url: string; received: { headers: IncomingMessage['headers']; body: Record<string, any>; status: number | 'never' }[]; server: Server }> {
  const received: { headers: IncomingMessage['headers']; body: Record<string, any>; status: number | 'never' }[] = [];
  const server = createServer((req, res) => {
    let text = '';
    req.on('data', (chunk: Buffer) => (text += chunk.toString()));
    req.on('end', () => {
      const status = answer(received.length);
      received.push({ headers: req.headers, body: JSON.parse(text) as Record<string, any>, status });
      if (status !== 'never') res.writeHead(status).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `127.0.0.1:${(server.address() as AddressInfo).port}`, received, server };
}

describe('the webhook tells when a drain of this node starts and ends', () => {
  const drainNow = (agent: AgentProcess) => agent.fetch('/drain?wait=true&timeout=20', { method: 'POST', headers: { authorization: `Bearer ${SECRET}` } });

  test('one notice at the start and one at the end, with the status and a text line; a failed delivery is tried again; the URL\'s credential and the headers are never logged', async () => {
    const receiver = await startReceiver((index) => (index === 0 ? 500 : 200));
    const headers = join(tmp, 'webhook-headers');
    writeFileSync(headers, '# from a mounted Secret\nAuthorization: Bearer hook-Token-4242\nX-Team: sre\n');
    try {
      const agent = await startAgent({ WEBHOOK_URL: `http://hook:Pa55word@${receiver.url}/services/T0/B0/Path-Secret-77`, WEBHOOK_HEADERS_FILE: headers });
      const status = (await (await drainNow(agent)).json()) as DrainStatus;
      assert.equal(status.state, 'deregistered');
      await eventually(() => receiver.received.filter((r) => r.status === 200).length === 2, 15_000, 'both notices delivered');

      const delivered = receiver.received.filter((r) => r.status === 200).map((r) => r.body);
      const started = delivered.find((body) => body.event === 'drain.started')!;
      const ended = delivered.find((body) => body.event === 'drain.ended')!;
      assert.equal(started.instanceId, world.node.id);
      assert.equal(started.node, NODE);
      assert.equal(started.state, 'draining');
      assert.match(started.text, new RegExp(`^hasta-la-vista: draining ${world.node.id} \\(node ${NODE.replace(/\./g, '\\.')}\\) from its load balancers \\(api\\), until `));
      assert.equal(ended.state, 'deregistered');
      assert.equal(ended.finishedAt, status.finishedAt);
      assert.equal(ended.loadBalancers.length, status.loadBalancers.length);
      assert.match(ended.text, /is out of all 4 load balancers after \d+\.\d s \(api\)$/);
      assert.ok(receiver.received.length >= 3, 'the refused delivery was tried again');
      assert.equal(receiver.received[0]!.headers.authorization, 'Bearer hook-Token-4242');
      assert.equal(receiver.received[0]!.headers['x-team'], 'sre');
      assert.equal(receiver.received[0]!.headers['content-type'], 'application/json');

      const text = await (await agent.fetch('/metrics')).text();
      assert.equal(metricSample(text, 'hasta_la_vista_webhook_notices_total', { event: 'drain.ended', outcome: 'delivered' }), 1);
      assert.equal(metricSample(text, 'hasta_la_vista_webhook_notices_total', { outcome: 'attempt_failed' }), 1);
      assert.equal(agent.logs().filter((line) => /webhook delivery failed: the receiver answered 500/.test(line.msg)).length, 1, 'the failure said once');
      for (const secret of ['Pa55word', 'Path-Secret-77', 'hook-Token-4242']) assert.ok(!agent.stderr().includes(secret), `${secret} is in the log`);
    } finally {
      receiver.server.closeAllConnections();
      receiver.server.close();
    }
  });

  test('a receiver that never answers does not delay the drain', async () => {
    const receiver = await startReceiver(() => 'never');
    try {
      const agent = await startAgent({ WEBHOOK_URL: `http://${receiver.url}/hook` });
      const answer = await drainNow(agent);
      assert.equal(answer.status, 200);
      assert.equal(((await answer.json()) as DrainStatus).state, 'deregistered');
      assert.ok(receiver.received.length >= 1, 'the start was sent');
      assert.ok(receiver.received.every((r) => r.status === 'never'), 'out while no notice has been answered');
      await eventually(() => agent.logs().some((line) => /webhook delivery failed: no answer within 5 s; trying again/.test(line.msg)), 15_000, 'the timeout is said');
    } finally {
      receiver.server.closeAllConnections();
      receiver.server.close();
    }
  });
});

describe('deregistration delays against the deadline', () => {
  /** As a cluster often has it: one target group left at AWS's default 300 s, the rest short. */
  async function delays(): Promise<void> {
    const aws = awsClients(moto.url);
    await aws.elbv2.send(new ModifyTargetGroupAttributesCommand({ TargetGroupArn: world.groups.taggedIp, Attributes: [{ Key: 'deregistration_delay.timeout_seconds', Value: '30' }] }));
    await aws.elbv2.send(new ModifyTargetGroupAttributesCommand({ TargetGroupArn: world.groups.viaTaggedAlb, Attributes: [{ Key: 'deregistration_delay.timeout_seconds', Value: '300' }] }));
    for (const name of [world.classic.tagged, world.classic.readmeTagged]) {
      await aws.elb.send(new ModifyLoadBalancerAttributesCommand({ LoadBalancerName: name, LoadBalancerAttributes: { ConnectionDraining: { Enabled: true, Timeout: 20 } } }));
    }
  }

  test('a target group with a 300 s delay: one warning with the fix (log, Event, gauge); the status says when each should be out; the timeout says the delay outlasts the deadline', async () => {
    await delays();
    proxy.addFault(drainingTargets());
    const agent = await startAgent({ DRAIN_TIMEOUT: '3' });
    await eventually(() => kube.events.some((event) => event.reason === 'LongDeregistrationDelay'), 10_000, 'the warning Event');
    const warnings = agent.logs().filter((line) => line.level === 'warn' && /deregistration delay is 300 s, longer than a spot notice allows/.test(line.msg));
    assert.equal(warnings.length, 1, 'one warning, for the one group');
    assert.match(warnings[0]!.msg, /^tg-via-alb's .*service\.beta\.kubernetes\.io\/aws-load-balancer-target-group-attributes: deregistration_delay\.timeout_seconds=30/);
    assert.equal(kube.events.filter((event) => event.reason === 'LongDeregistrationDelay').length, 1);
    const text = await (await agent.fetch('/metrics')).text();
    assert.equal(metricSample(text, 'hasta_la_vista_deregistration_delay_seconds', { load_balancer: 'tg-via-alb' }), 300);
    assert.equal(metricSample(text, 'hasta_la_vista_deregistration_delay_seconds', { load_balancer: 'tg-tagged-ip' }), 30);
    assert.equal(metricSample(text, 'hasta_la_vista_deregistration_delay_seconds', { load_balancer: world.classic.tagged }), 20);

    const answer = await agent.fetch('/drain?wait=true', { method: 'POST', headers: { authorization: `Bearer ${SECRET}` } });
    const status = (await answer.json()) as DrainStatus;
    assert.equal(status.state, 'timed_out');
    const group = status.loadBalancers.find((lb) => lb.arn === world.groups.viaTaggedAlb)!;
    assert.equal(group.deregistrationDelaySeconds, 300);
    assert.equal(Date.parse(group.expectedOutAt!) - Date.parse(group.deregisteredAt!), 300_000, 'out at the latest when the delay ends');
    assert.equal(status.loadBalancers.find((lb) => lb.name === world.classic.tagged)?.deregistrationDelaySeconds, 20);
    assert.match(status.reason!, new RegExp(`${world.groups.viaTaggedAlb}'s deregistration delay of 300 s outlasts the deadline`));
  });

  test('reading the delays denied (an older IAM policy): said once with the permission to grant, and drains go on', async () => {
    proxy.addFault((call) => (call.action === 'DescribeTargetGroupAttributes' ? { kind: 'error', status: 403, code: 'AccessDenied', message: 'not authorized' } : undefined));
    const agent = await startAgent();
    await eventually(() => agent.logs().some((line) => /reading deregistration delays is denied.*grant elasticloadbalancing:DescribeTargetGroupAttributes/.test(line.msg)), 10_000, 'the denial said');
    const answer = await agent.fetch('/drain?wait=true&timeout=20', { method: 'POST', headers: { authorization: `Bearer ${SECRET}` } });
    assert.equal(((await answer.json()) as DrainStatus).state, 'deregistered');
  });
});
