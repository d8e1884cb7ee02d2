/**
 * The agent end to end: the BUILT agent (`node dist/main.js`) runs as a separate process against a
 * strict fake IMDSv2, a fake Kubernetes API reached through KUBECONFIG, and a real moto server behind
 * a call-counting proxy (AWS_ENDPOINT_URL). Every test asserts what a user would notice: which load
 * balancers still hold which instance, the Node's labels and Events, the HTTP answers, the exit code,
 * and the agent's output.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { AddTagsCommand } from '@aws-sdk/client-elastic-load-balancing';
import { RegisterTargetsCommand } from '@aws-sdk/client-elastic-load-balancing-v2';
import type { DrainStatus } from '../agent/drain/status.ts';
import { drainingTargets, startAwsProxy, type AwsProxy } from './fakes/aws-proxy.ts';
import { imdsDate, startFakeImds, type FakeImds } from './fakes/imds.ts';
import { makeNode, makePod, startFakeKube, type FakeKube, type KubeObject } from './fakes/kube.ts';
import { awsClients, CLUSTER, REGION, registrations, seedWorld, type World } from './fixtures/world.ts';
import { eventually, exitWithin, killAllAgents, metricSample, spawnAgent, statusBecomes as drainBecomes, waitReady, type AgentProcess } from './helpers/agent-harness.ts';
import { freePort, startMoto, type Moto } from './helpers/moto.ts';

const SECRET = 'e2e-Secret-7f3a9c1d5b2e8046';
const WRONG_SECRET = 'guess-Wrong-0000-zzzz-9999';
const NODE = 'ip-10-0-1-23.ec2.internal';
const POD_NS = 'kube-system';
const POD = 'hasta-la-vista-x7k2p';
const EXCLUDE_LABEL = 'node.kubernetes.io/exclude-from-external-load-balancers';
const MARK = 'hasta-la-vista.io/excluded-at';

const SPOT = 'meta-data/spot/instance-action';
const ASG = 'meta-data/autoscaling/target-lifecycle-state';
const MAINTENANCE = 'meta-data/events/maintenance/scheduled';

const BEARER = { authorization: `Bearer ${SECRET}` };

let moto: Moto;
let proxy: AwsProxy;
let world: World;
let initial: Set<string>;
let imds: FakeImds;
let kube: FakeKube;
let kubeconfig: string;
let tmp: string;
let started: AgentProcess[] = [];

// ---- helpers

/** The memberships a drain of the node (scope all) must remove: cluster-tagged, in its VPC. */
const selfInScope = (w: World) => [
  `clb:${w.classic.tagged}:${w.node.id}`,
  `clb:${w.classic.readmeTagged}:${w.node.id}`,
  `tg:viaTaggedAlb:${w.node.id}:30080`,
  `tg:taggedIp:${w.node.secondaryIp}:8080`,
];
const neighbourInScope = (w: World) => [`clb:${w.classic.tagged}:${w.neighbour.id}`, `tg:viaTaggedAlb:${w.neighbour.id}:30080`, `tg:taggedIp:${w.neighbour.ip}:8080`];

/** Load balancer summaries of a status, as "family:name-or-arn:state", sorted. */
const summary = (status: DrainStatus) => status.loadBalancers.map((lb) => `${lb.family}:${String(lb.name ?? lb.arn)}:${lb.state}`).sort();
const selfSummary = (w: World) =>
  [`classic:${w.classic.tagged}:out`, `classic:${w.classic.readmeTagged}:out`, `target-group:${w.groups.viaTaggedAlb}:out`, `target-group:${w.groups.taggedIp}:out`].sort();

/** Registrations now must be exactly the initial ones less `gone`: untagged, other-cluster, other-VPC and neighbours untouched. */
async function assertLeftExactly(gone: string[]): Promise<void> {
  for (const membership of gone) assert.ok(initial.has(membership), `fixture: ${membership} was registered at the start`);
  const expected = [...initial].filter((membership) => !gone.includes(membership)).sort();
  assert.deepEqual([...(await registrations(moto.url, world))].sort(), expected);
}

const deregisterCalls = () => proxy.calls.filter((call) => call.action.startsWith('Deregister'));
/** The load balancer names and target group ARNs the agent asked to let go. */
const deregisteredFrom = () => [...new Set(deregisterCalls().map((call) => call.params.get('LoadBalancerName') ?? call.params.get('TargetGroupArn')))].sort();

const eventsOf = (reason: string) => kube.events.filter((event) => event.reason === reason);
const nodeNow = () => kube.node(NODE)!;
const nullPatches = () => kube.patches.filter((patch) => JSON.stringify(patch.body).includes('null'));


async function startAgent(extra: Record<string, string> = {}): Promise<AgentProcess> {
  const agent = await spawnWith(extra);
  await waitReady(agent);
  return agent;
}

/** The agent as startAgent runs it, without waiting for it to be ready. */
async function spawnWith(extra: Record<string, string>): Promise<AgentProcess> {
  const agent = spawnAgent(await freePort(), {
    AWS_ENDPOINT_URL: proxy.url,
    AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url,
    SECRET,
    POLL_INTERVAL: '1',
    NODE_NAME: NODE,
    POD_NAME: POD,
    POD_NAMESPACE: POD_NS,
    KUBECONFIG: kubeconfig,
    ...extra,
  });
  started.push(agent);
  return agent;
}

async function json(answer: Response): Promise<any> {
  const text = await answer.text();
  try {
    return JSON.parse(text);
  } catch {
    assert.fail(`expected a JSON body, got ${answer.status} ${JSON.stringify(text.slice(0, 300))}`);
  }
}

/** GET /drain/<id> until its state is `state`. */
const statusBecomes = (agent: AgentProcess, instanceId: string, state: DrainStatus['state'], timeoutMs?: number) => drainBecomes(agent, SECRET, instanceId, state, timeoutMs);

async function metrics(agent: AgentProcess): Promise<string> {
  const answer = await agent.fetch('/metrics');
  assert.equal(answer.status, 200);
  assert.match(answer.headers.get('content-type') ?? '', /^text\/plain/);
  return answer.text();
}

// ---- one moto per file; a fresh world, IMDS and cluster per test

before(async () => {
  moto = await startMoto();
  proxy = await startAwsProxy(moto.url);
  tmp = mkdtempSync(join(tmpdir(), 'hlv-e2e-'));
});

after(async () => {
  await proxy?.close();
  await moto?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

beforeEach(async () => {
  await moto.reset();
  proxy.clearFaults();
  world = await seedWorld(moto.url);
  initial = await registrations(moto.url, world);
  proxy.calls.length = 0;
  imds = await startFakeImds({ instanceId: world.node.id, region: REGION, availabilityZone: 'us-east-1a', vpcId: world.clusterVpc, privateIp: world.node.ip, secondaryIps: [world.node.secondaryIp] });
  // An instance in an ASG shows its lifecycle state all along; only Terminated means going away.
  imds.set(ASG, 'InService');
  kube = await startFakeKube({ token: 'kube-e2e-token' });
  kube.setNode(makeNode(NODE, { providerID: `aws:///us-east-1a/${world.node.id}` }));
  kube.setPod(makePod(POD_NS, POD, { nodeName: NODE }));
  kubeconfig = kube.writeKubeconfig(join(tmp, 'kubeconfig'));
});

afterEach(async () => {
  await killAllAgents();
  await imds.close();
  await kube.close();
  const agents = started;
  started = [];
  // Every line the agent writes to stderr is one JSON log event.
  for (const agent of agents) assert.deepEqual(agent.nonJsonLines(), [], 'every stderr line of the agent is JSON');
});

// ---- tests

describe('IMDS notices drain the node', () => {
  const notices: { name: string; trigger: string; kind: string; raise: () => void }[] = [
    {
      name: 'a spot interruption notice',
      trigger: 'spot-interruption',
      kind: 'spot-interruption',
      raise: () => imds.set(SPOT, JSON.stringify({ action: 'terminate', time: new Date(Date.now() + 120_000).toISOString().replace(/\.\d+Z$/, 'Z') })),
    },
    {
      name: 'an ASG Terminated lifecycle state',
      trigger: 'asg-termination',
      kind: 'asg-termination',
      raise: () => imds.set(ASG, 'Terminated'),
    },
    {
      name: 'a scheduled maintenance event within the lead time',
      trigger: 'scheduled-maintenance',
      kind: 'scheduled-maintenance',
      raise: () =>
        imds.set(
          MAINTENANCE,
          JSON.stringify([
            // Not acted on: canceled, and far in the future.
            { NotBefore: imdsDate(new Date(Date.now() + 60_000)), Code: 'system-reboot', Description: 'canceled', EventId: 'instance-event-0aaaaaaaaaaaaaaaa', State: 'canceled' },
            { NotBefore: imdsDate(new Date(Date.now() + 86_400_000)), Code: 'instance-stop', Description: 'later', EventId: 'instance-event-0bbbbbbbbbbbbbbbb', State: 'active' },
            {
              NotBefore: imdsDate(new Date(Date.now() + 300_000)),
              NotAfter: imdsDate(new Date(Date.now() + 7_200_000)),
              Code: 'system-reboot',
              Description: 'scheduled reboot',
              EventId: 'instance-event-0d59937288b749b32',
              State: 'active',
            },
          ]),
        ),
    },
  ];

  for (const notice of notices) {
    test(`${notice.name}: out of exactly the in-scope load balancers, node labelled, DrainStarted and DrainFinished`, async () => {
      const agent = await startAgent();
      // Ready and polling: nothing has been touched yet.
      assert.equal(deregisterCalls().length, 0);
      notice.raise();

      const status = await statusBecomes(agent, world.node.id, 'deregistered');
      assert.equal(status.trigger, notice.trigger);
      assert.equal(status.scope, 'all');
      assert.ok(status.finishedAt);
      assert.deepEqual(summary(status), selfSummary(world));
      await assertLeftExactly(selfInScope(world));
      assert.deepEqual(deregisteredFrom(), [world.classic.tagged, world.classic.readmeTagged, world.groups.viaTaggedAlb, world.groups.taggedIp].sort());

      await eventually(() => nodeNow().metadata.labels[EXCLUDE_LABEL] === 'true', 5_000, 'node labelled');
      assert.ok(nodeNow().metadata.annotations[MARK], 'the label is marked as set by the agent');
      await eventually(() => eventsOf('DrainFinished').length === 1, 5_000, 'DrainFinished event');
      for (const reason of ['DrainStarted', 'DrainFinished']) {
        const [event] = eventsOf(reason);
        assert.equal(event?.involvedObject?.kind, 'Node');
        assert.equal(event?.involvedObject?.name, NODE);
        assert.equal(event?.type, 'Normal');
      }

      // It started from the inventory kept at start-up: the tagging API, which a whole spot wave calls
      // at once, was not asked during the drain, nor were target groups described again.
      assert.deepEqual(status.awsCalls.GetResources, undefined);
      assert.deepEqual(status.awsCalls.DescribeTargetGroups, undefined);

      // The same notice, seen at every later poll, does not start another drain.
      await sleep(2_000);
      assert.equal(eventsOf('DrainStarted').length, 1);
      assert.equal(eventsOf('DrainFinished').length, 1);
      const text = await metrics(agent);
      assert.equal(metricSample(text, 'hasta_la_vista_notices_total', { kind: notice.kind }), 1);
      assert.equal(metricSample(text, 'hasta_la_vista_drains_total', { trigger: notice.trigger, outcome: 'deregistered' }), 1);
    });
  }
});

describe('SIGTERM', () => {
  const deleted = () => new Date(Date.now() - 1_000).toISOString().replace(/\.\d+Z$/, 'Z');

  test('during a rollout (Pod being deleted, healthy Node, no notice): nothing deregistered, no label, exit 0 promptly', async () => {
    kube.setPod(makePod(POD_NS, POD, { nodeName: NODE, deletionTimestamp: deleted() }));
    const agent = await startAgent({ TERMINATION_GRACE_PERIOD: '10' });
    agent.child.kill('SIGTERM');
    const exit = await exitWithin(agent, 3_000);
    assert.equal(exit.code, 0, agent.stderr());
    assert.equal(deregisterCalls().length, 0, 'no Deregister* call reached AWS');
    assert.deepEqual(kube.patches, [], 'the node was not patched');
    assert.equal(nodeNow().metadata.labels[EXCLUDE_LABEL], undefined);
    assert.deepEqual(eventsOf('DrainStarted'), []);
    await assertLeftExactly([]);
    const verdict = agent.logs().find((line) => line.signal === 'SIGTERM' && line.drain !== undefined);
    assert.equal(verdict?.drain, false);
    assert.match(String(verdict?.reason), /Pod is being deleted/);
  });

  test('a restart the kubelet makes (liveness probe; Pod not deleted, no sign of shutdown): nothing deregistered, and the log and an Event say why', async () => {
    const agent = await startAgent({ TERMINATION_GRACE_PERIOD: '10' });
    agent.child.kill('SIGTERM');
    const exit = await exitWithin(agent, 10_000);
    assert.equal(exit.code, 0, agent.stderr());
    assert.equal(deregisterCalls().length, 0, 'no Deregister* call reached AWS');
    assert.equal(nodeNow().metadata.labels[EXCLUDE_LABEL], undefined);
    await assertLeftExactly([]);
    const verdict = agent.logs().find((line) => line.signal === 'SIGTERM' && line.drain !== undefined);
    assert.equal(verdict?.drain, false);
    assert.match(String(verdict?.reason), /no sign that the node is going away/);
    assert.match(eventsOf('NotDraining')[0]?.message ?? '', /not draining/);
  });

  const kubeletShutdownMarks: [string, (pod: KubeObject, node: KubeObject) => void][] = [
    ['the Pod\'s status reason Terminated', (pod) => (pod.status = { ...pod.status, phase: 'Failed', reason: 'Terminated', message: 'Pod was terminated in response to imminent node shutdown.' })],
    ['the Pod\'s status reason Shutdown (1.21)', (pod) => (pod.status = { ...pod.status, phase: 'Failed', reason: 'Shutdown', message: 'Shutting down, node is shutting down' })],
    [
      'the Pod\'s DisruptionTarget condition (TerminationByKubelet)',
      (pod) => (pod.status = { ...pod.status, conditions: [...(pod.status?.conditions ?? []), { type: 'DisruptionTarget', status: 'True', reason: 'TerminationByKubelet', message: 'Pod was terminated in response to imminent node shutdown.' }] }),
    ],
    [
      'the Node\'s Ready condition "node is shutting down"',
      (_pod, node) => (node.status = { ...node.status, conditions: [{ type: 'Ready', status: 'False', reason: 'KubeletNotReady', message: 'node is shutting down' }] }),
    ],
  ];
  for (const [mark, apply] of kubeletShutdownMarks) {
    test(`at node shutdown, shown by ${mark}: deregistered before the process exits 0`, async () => {
      const pod = makePod(POD_NS, POD, { nodeName: NODE });
      const node = makeNode(NODE, { providerID: `aws:///us-east-1a/${world.node.id}` });
      apply(pod, node);
      kube.setPod(pod);
      kube.setNode(node);
      const agent = await startAgent({ TERMINATION_GRACE_PERIOD: '10' });
      agent.child.kill('SIGTERM');
      const exit = await exitWithin(agent, 12_000);
      assert.equal(exit.code, 0, agent.stderr());
      // The process is gone: whatever moto shows now was done before it exited.
      await assertLeftExactly(selfInScope(world));
      assert.equal(nodeNow().metadata.labels[EXCLUDE_LABEL], 'true');
      assert.equal(eventsOf('DrainFinished').length, 1);
      const verdict = agent.logs().find((line) => line.signal === 'SIGTERM' && line.drain !== undefined);
      assert.equal(verdict?.drain, true);
      assert.match(String(verdict?.reason), /shutting down|node shutdown/);
    });
  }

  test('with the Node tainted ToBeDeletedByClusterAutoscaler and the Pod being deleted: drains', async () => {
    kube.setNode(
      makeNode(NODE, { providerID: `aws:///us-east-1a/${world.node.id}`, taints: [{ key: 'ToBeDeletedByClusterAutoscaler', value: '1732701600', effect: 'NoSchedule' }] }),
    );
    kube.setPod(makePod(POD_NS, POD, { nodeName: NODE, deletionTimestamp: deleted() }));
    const agent = await startAgent({ TERMINATION_GRACE_PERIOD: '10' });
    agent.child.kill('SIGTERM');
    const exit = await exitWithin(agent, 12_000);
    assert.equal(exit.code, 0, agent.stderr());
    await assertLeftExactly(selfInScope(world));
    const verdict = agent.logs().find((line) => line.signal === 'SIGTERM' && line.drain !== undefined);
    assert.equal(verdict?.drain, true);
    assert.match(String(verdict?.reason), /ToBeDeletedByClusterAutoscaler/);
  });

  test('SIGTERM_DRAIN=never at node shutdown: no drain, exit 0', async () => {
    const agent = await startAgent({ TERMINATION_GRACE_PERIOD: '10', SIGTERM_DRAIN: 'never' });
    agent.child.kill('SIGTERM');
    const exit = await exitWithin(agent, 5_000);
    assert.equal(exit.code, 0, agent.stderr());
    assert.equal(deregisterCalls().length, 0);
    assert.deepEqual(kube.patches, []);
    await assertLeftExactly([]);
  });

  test('Kubernetes unreachable and no IMDS evidence: no drain, and the log says why', async () => {
    const agent = await startAgent({ TERMINATION_GRACE_PERIOD: '10' });
    kube.down = 'hang';
    agent.child.kill('SIGTERM');
    const exit = await exitWithin(agent, 10_000);
    assert.equal(exit.code, 0, agent.stderr());
    assert.equal(deregisterCalls().length, 0);
    assert.deepEqual(kube.patches, []);
    await assertLeftExactly([]);
    const verdict = agent.logs().find((line) => line.signal === 'SIGTERM' && line.drain !== undefined);
    assert.equal(verdict?.drain, false);
    assert.match(String(verdict?.reason), /cannot tell a node shutdown from a pod restart/);
    assert.match(String(verdict?.reason), /Kubernetes/);
  });
});

describe('a self-drain does not wait for EC2', () => {
  test('with DescribeInstances throttled all along: a spot notice still takes the node out of everything, ip targets included, with no EC2 call', async () => {
    const throttled = (call: { action: string }) => (call.action === 'DescribeInstances' ? { kind: 'error' as const, status: 400, code: 'RequestLimitExceeded', message: 'Request limit exceeded.' } : undefined);
    proxy.addFault(throttled);
    // CLUSTERNAME set: start-up needs no EC2 either.
    const agent = await startAgent({ CLUSTERNAME: CLUSTER });
    imds.set(SPOT, JSON.stringify({ action: 'terminate', time: new Date(Date.now() + 120_000).toISOString().replace(/\.\d+Z$/, 'Z') }));
    const status = await statusBecomes(agent, world.node.id, 'deregistered');
    assert.deepEqual(summary(status), selfSummary(world));
    await assertLeftExactly(selfInScope(world));
    assert.equal(proxy.calls.filter((call) => call.action === 'DescribeInstances').length, 0, 'the addresses came from IMDS');
  });

  test('POST /drain?ip=<one of its own addresses> drains this node without asking EC2', async () => {
    proxy.addFault((call) => (call.action === 'DescribeInstances' ? { kind: 'error', status: 400, code: 'RequestLimitExceeded', message: 'Request limit exceeded.' } : undefined));
    const agent = await startAgent({ CLUSTERNAME: CLUSTER });
    const answer = await agent.fetch(`/drain?ip=${world.node.secondaryIp}&wait=true`, { method: 'POST', headers: BEARER });
    const status = (await json(answer)) as DrainStatus;
    assert.equal(answer.status, 200, JSON.stringify(status));
    assert.equal(status.instanceId, world.node.id);
    await assertLeftExactly(selfInScope(world));
    assert.equal(proxy.calls.filter((call) => call.action === 'DescribeInstances').length, 0);
  });
});

describe('the Node, watched while the agent runs', () => {
  test('the kubelet\'s "node is shutting down" appearing: drained at once, before any SIGTERM; the SIGTERM then exits 0 without a second drain', async () => {
    const agent = await startAgent({ TERMINATION_GRACE_PERIOD: '10' });
    assert.equal(deregisterCalls().length, 0);
    kube.setNode({ ...nodeNow(), status: { conditions: [{ type: 'Ready', status: 'False', reason: 'KubeletNotReady', message: 'node is shutting down' }] } });

    const status = await statusBecomes(agent, world.node.id, 'deregistered');
    assert.equal(status.trigger, 'node-shutdown');
    await assertLeftExactly(selfInScope(world));
    await eventually(() => nodeNow().metadata.labels[EXCLUDE_LABEL] === 'true', 5_000, 'node labelled');
    assert.equal(agent.child.exitCode, null, 'no signal was needed');

    agent.child.kill('SIGTERM');
    assert.equal((await exitWithin(agent, 12_000)).code, 0, agent.stderr());
    assert.equal(eventsOf('DrainStarted').length, 1, 'one drain');
    await assertLeftExactly(selfInScope(world));
  });
});

describe('passing signs give the node back while the agent runs', () => {
  const maintenance = { NotBefore: imdsDate(new Date(Date.now() + 300_000)), Code: 'system-reboot', Description: 'scheduled reboot', EventId: 'instance-event-0eeeeeeeeeeeeeeee', State: 'active' };
  const untainted = () => ({ ...nodeNow(), spec: { ...nodeNow().spec, taints: [] } });
  const roundTrips: { name: string; trigger: string; raise: () => void; pass: () => void }[] = [
    {
      name: 'a scheduled maintenance event, then canceled',
      trigger: 'scheduled-maintenance',
      raise: () => imds.set(MAINTENANCE, JSON.stringify([maintenance])),
      pass: () => imds.set(MAINTENANCE, JSON.stringify([{ ...maintenance, State: 'canceled' }])),
    },
    {
      name: 'a warm-pool instance about to stop (Warmed:Stopped), then InService again',
      trigger: 'asg-warm-pool',
      raise: () => imds.set(ASG, 'Warmed:Stopped'),
      pass: () => imds.set(ASG, 'InService'),
    },
    {
      name: 'Karpenter\'s disrupted taint, then taken off (the disruption given up)',
      trigger: 'node-removal',
      raise: () => kube.setNode({ ...nodeNow(), spec: { ...nodeNow().spec, taints: [{ key: 'karpenter.sh/disrupted', effect: 'NoSchedule' }] } }),
      pass: () => kube.setNode(untainted()),
    },
  ];

  for (const trip of roundTrips) {
    test(`${trip.name}: out, then registered again on the same ports, label gone, GivenBack`, async () => {
      const agent = await startAgent();
      trip.raise();
      const status = await statusBecomes(agent, world.node.id, 'deregistered');
      assert.equal(status.trigger, trip.trigger);
      await assertLeftExactly(selfInScope(world));
      await eventually(() => nodeNow().metadata.labels[EXCLUDE_LABEL] === 'true', 5_000, 'node labelled');
      await eventually(() => nodeNow().metadata.annotations['hasta-la-vista.io/taken-out'] !== undefined, 5_000, 'what was taken out is remembered on the Node');

      trip.pass();
      // Exactly as before: every load balancer, port and address the drain took it out of.
      await eventually(async () => (await registrations(moto.url, world)).size === initial.size, 15_000, 'registered back');
      await assertLeftExactly([]);
      await eventually(() => nodeNow().metadata.labels[EXCLUDE_LABEL] === undefined, 5_000, 'label removed');
      assert.equal(nodeNow().metadata.annotations[MARK], undefined);
      await eventually(() => eventsOf('GivenBack').length === 1, 5_000, 'GivenBack event');
      assert.equal(nodeNow().metadata.annotations['hasta-la-vista.io/taken-out'], undefined, 'nothing left to give back');
      const text = await metrics(agent);
      assert.equal(metricSample(text, 'hasta_la_vista_given_back_total', { family: 'target-group' }), 2);
      assert.equal(metricSample(text, 'hasta_la_vista_given_back_total', { family: 'classic' }), 2);
      // Given back for good: the re-check does not take it out again.
      await sleep(2_500);
      await assertLeftExactly([]);
    });
  }
});

describe('IMDS trouble', () => {
  async function catchesNextSpotNotice(agent: AgentProcess): Promise<void> {
    const health = await agent.fetch('/healthz');
    assert.equal(health.status, 200, 'alive after IMDS recovered');
    imds.set(SPOT, JSON.stringify({ action: 'stop', time: new Date(Date.now() + 120_000).toISOString() }));
    const status = await statusBecomes(agent, world.node.id, 'deregistered');
    assert.equal(status.trigger, 'spot-interruption');
    await assertLeftExactly(selfInScope(world));
  }

  test('hop limit 1 at start-up, AWS_REGION, VPCID and CLUSTERNAME set: not ready with the real cause said once, alive, no exit; fixed, it starts and catches the next notice', async () => {
    imds.hopLimitDrop = true;
    const agent = await spawnWith({ AWS_REGION: REGION, VPCID: world.clusterVpc, CLUSTERNAME: CLUSTER });
    const identityReads = () => imds.count('latest/meta-data/instance-id');
    await eventually(() => identityReads() >= 4, 30_000, 'start-up retried several times');

    const ready = await agent.fetch('/readyz');
    assert.equal(ready.status, 503);
    const { reason } = (await json(ready)) as { reason: string };
    assert.match(reason, /^resolve placement: IMDS did not answer/);
    assert.match(reason, /hop limit is 1/);
    assert.match(reason, /--http-put-response-hop-limit 2/);
    assert.match(reason, /hostNetwork/);
    assert.doesNotMatch(reason, /AWS_REGION|VPCID|CLUSTERNAME/, 'the configuration cannot replace IMDS: not suggested');
    assert.equal((await agent.fetch('/healthz')).status, 200, 'alive: the liveness probe does not restart it');
    assert.ok(agent.alive(), 'still running');

    const failures = agent.logs().filter((line) => /^resolve placement failed/.test(line.msg));
    assert.equal(failures.length, 1, `the cause logged once while it stays the same: ${JSON.stringify(failures)}`);
    assert.equal(failures[0]!.level, 'error');
    assert.ok(failures[0]!.msg.includes(reason.replace('resolve placement: ', '')), 'the log says what /readyz says');
    assert.ok(!agent.stderr().includes('    at '), 'no stack traces for a cause the message explains');

    imds.hopLimitDrop = false;
    await waitReady(agent, 90_000);
    assert.ok(agent.logs().some((line) => /^resolve placement: done after \d+ failed attempts/.test(line.msg)), 'the recovery logged');
    await catchesNextSpotNotice(agent);
  });

  test('SIGTERM while start-up waits for IMDS: exits 0, saying nothing was drained', async () => {
    imds.hopLimitDrop = true;
    const agent = await spawnWith({});
    await eventually(() => agent.logs().some((line) => /^resolve placement failed/.test(line.msg)), 20_000, 'start-up failing');
    agent.child.kill('SIGTERM');
    const { code } = await exitWithin(agent, 10_000);
    assert.equal(code, 0);
    assert.ok(agent.logs().some((line) => /SIGTERM before start-up finished: .*nothing was drained/.test(line.msg)));
  });

  test('token revoked mid-run: a new token is fetched and the next notice is caught', async () => {
    const agent = await startAgent();
    const tokensBefore = imds.tokenRequests;
    imds.revokeTokens();
    await eventually(() => imds.tokenRequests > tokensBefore, 5_000, 'a new token requested');
    await catchesNextSpotNotice(agent);
  });

  test('IMDS answering 500 for a while: errors counted, the agent survives and catches the next notice', async () => {
    const agent = await startAgent();
    imds.fault = 'error500';
    await eventually(async () => (metricSample(await metrics(agent), 'hasta_la_vista_imds_errors_total') ?? 0) >= 2, 10_000, 'IMDS errors counted');
    assert.equal((await agent.fetch('/healthz')).status, 200);
    imds.fault = 'none';
    await eventually(() => agent.logs().some((line) => /IMDS poll recovered/.test(line.msg)), 10_000, 'recovery logged');
    await catchesNextSpotNotice(agent);
  });

  test('IMDS hanging for a while: the agent survives and catches the next notice', async () => {
    const agent = await startAgent();
    imds.fault = 'hang';
    await eventually(() => agent.logs().some((line) => /IMDS poll failed/.test(line.msg)), 20_000, 'the failing poll logged');
    assert.equal((await agent.fetch('/healthz')).status, 200, 'alive while IMDS hangs');
    imds.fault = 'none';
    await eventually(() => agent.logs().some((line) => /IMDS poll recovered/.test(line.msg)), 15_000, 'recovery logged');
    await catchesNextSpotNotice(agent);
  });
});

describe('the HTTP API', () => {
  test('POST /drain?id= drains another instance: 202, JSON status, Location; then ?ip= (a secondary IP) with wait=true; /metrics counts them', async () => {
    const agent = await startAgent();

    const accepted = await agent.fetch(`/drain?id=${world.neighbour.id}&pw=${SECRET}`, { method: 'POST' });
    assert.equal(accepted.status, 202);
    assert.match(accepted.headers.get('content-type') ?? '', /^application\/json/);
    assert.equal(accepted.headers.get('location'), `/drain/${world.neighbour.id}`);
    const first = (await json(accepted)) as DrainStatus;
    assert.equal(first.instanceId, world.neighbour.id);
    assert.equal(first.trigger, 'api');
    assert.equal(first.scope, 'all');
    assert.ok(['draining', 'deregistered'].includes(first.state), first.state);
    assert.ok(Date.parse(first.startedAt) && Date.parse(first.deadline));
    assert.ok(Array.isArray(first.loadBalancers));

    const done = await statusBecomes(agent, world.neighbour.id, 'deregistered');
    assert.equal(done.trigger, 'api');
    await assertLeftExactly(neighbourInScope(world));
    assert.deepEqual(kube.patches, [], 'draining another instance does not label this node');

    const byIp = await agent.fetch(`/drain?ip=${world.node.secondaryIp}&wait=true`, { method: 'POST', headers: BEARER });
    assert.equal(byIp.status, 200);
    assert.equal(byIp.headers.get('location'), `/drain/${world.node.id}`);
    const second = (await json(byIp)) as DrainStatus;
    assert.equal(second.state, 'deregistered');
    assert.equal(second.instanceId, world.node.id);
    assert.deepEqual(summary(second), selfSummary(world));
    await assertLeftExactly([...neighbourInScope(world), ...selfInScope(world)]);

    const text = await metrics(agent);
    assert.match(text, /^hasta_la_vista_drains_total\{/m);
    assert.equal(metricSample(text, 'hasta_la_vista_drains_total', { trigger: 'api', outcome: 'deregistered' }), 2);
    assert.ok((metricSample(text, 'hasta_la_vista_deregistrations_total', { outcome: 'out' }) ?? 0) >= 7);
  });

  test('POST /drain with neither id nor ip (Bearer, wait=true) drains this node; GET /drain/<id> 200, unknown 404', async () => {
    const agent = await startAgent();
    const answer = await agent.fetch('/drain?wait=true', { method: 'POST', headers: BEARER });
    assert.equal(answer.status, 200);
    const status = (await json(answer)) as DrainStatus;
    assert.equal(status.state, 'deregistered');
    assert.equal(status.instanceId, world.node.id);
    assert.equal(status.trigger, 'api');
    assert.ok(status.finishedAt);
    await assertLeftExactly(selfInScope(world));
    await eventually(() => nodeNow().metadata.labels[EXCLUDE_LABEL] === 'true', 5_000, 'node labelled');

    const got = await agent.fetch(`/drain/${world.node.id}`, { headers: BEARER });
    assert.equal(got.status, 200);
    assert.equal(((await json(got)) as DrainStatus).state, 'deregistered');

    const unknown = await agent.fetch('/drain/i-0fedcba9876543210', { headers: BEARER });
    assert.equal(unknown.status, 404);
    assert.match((await json(unknown)).error, /no drain/);
  });

  test('service=<ns>/<name> drains only that Service\'s load balancers', async () => {
    const aws = awsClients(moto.url);
    await aws.elb.send(new AddTagsCommand({ LoadBalancerNames: [world.classic.tagged], Tags: [{ Key: 'kubernetes.io/service-name', Value: 'web/front' }] }));
    const agent = await startAgent();
    const answer = await agent.fetch(`/drain?service=web/front&wait=true&pw=${SECRET}`, { method: 'POST' });
    assert.equal(answer.status, 200);
    const status = (await json(answer)) as DrainStatus;
    assert.equal(status.state, 'deregistered');
    assert.equal(status.scope, 'service:web/front');
    assert.deepEqual(summary(status), [`classic:${world.classic.tagged}:out`]);
    await assertLeftExactly([`clb:${world.classic.tagged}:${world.node.id}`]);
    assert.deepEqual(deregisteredFrom(), [world.classic.tagged]);
    // Only this node, and only that Service: the node stays eligible for every other load balancer.
    assert.deepEqual(kube.patches, []);

  });

  test(
    'wait=true when the deadline passes first: 504 with timed_out, and no success it did not see',
    async () => {
      const agent = await startAgent();
      // Classic ELB health never answers: the two classic ELBs cannot be seen out.
      proxy.addFault((call) => (call.action === 'DescribeInstanceHealth' ? { kind: 'hang' } : undefined));
      const late = await agent.fetch(`/drain?wait=true&timeout=2&pw=${SECRET}`, { method: 'POST', signal: AbortSignal.timeout(6_000) });
      assert.equal(late.status, 504);
      assert.equal(late.headers.get('location'), `/drain/${world.node.id}`);
      const status = (await json(late)) as DrainStatus;
      assert.equal(status.state, 'timed_out');
      assert.ok(status.finishedAt);
      assert.match(String(status.reason), /deadline/);
      assert.deepEqual(summary(status), [
        `classic:${world.classic.readmeTagged}:draining`,
        `classic:${world.classic.tagged}:draining`,
        `target-group:${world.groups.taggedIp}:out`,
        `target-group:${world.groups.viaTaggedAlb}:out`,
      ].sort());
      await eventually(() => eventsOf('DrainTimedOut').length === 1, 5_000, 'DrainTimedOut event');
      assert.equal(eventsOf('DrainTimedOut')[0]!.type, 'Warning');
      assert.equal(eventsOf('DrainFinished').length, 0);
      assert.equal(metricSample(await metrics(agent), 'hasta_la_vista_drains_total', { trigger: 'api', outcome: 'timed_out' }), 1);
    },
  );

  test('bad requests do nothing: 401 (same answer for a missing and a wrong secret), 400, 404, 405; the secret is never in the output', async () => {
    const agent = await startAgent({ LOGLEVEL: 'debug' });
    const startLines = agent.logs().filter((line) => line.config !== undefined);
    assert.equal(startLines.length, 1, 'one start-up line with the resolved configuration');
    assert.equal(startLines[0]!.config.secret, '[redacted]');
    assert.equal(startLines[0]!.config.pollIntervalMs, 1000);

    // 401: missing, wrong pw, wrong bearer, and a status read without the secret.
    const unauthorized = [
      await agent.fetch(`/drain?id=${world.node.id}`, { method: 'POST' }),
      await agent.fetch(`/drain?id=${world.node.id}&pw=${WRONG_SECRET}`, { method: 'POST' }),
      await agent.fetch('/drain?wait=true', { method: 'POST', headers: { authorization: `Bearer ${WRONG_SECRET}` } }),
      await agent.fetch(`/drain/${world.node.id}?pw=${WRONG_SECRET}`),
    ];
    const bodies = await Promise.all(unauthorized.map((answer) => answer.text()));
    assert.deepEqual(
      unauthorized.map((answer) => answer.status),
      [401, 401, 401, 401],
    );
    assert.equal(new Set(bodies).size, 1, `one answer for every 401: ${bodies.join(' | ')}`);
    assert.ok(JSON.parse(bodies[0]!).error);

    // 400 with a message that says what is wrong.
    for (const [query, pattern] of [
      ['id=i-nothex', /not an instance id/],
      ['ip=10.0.1.300', /not an IPv4 address/],
      [`id=${world.node.id}&ip=${world.node.ip}`, /both given: give one of them/],
    ] as const) {
      const answer = await agent.fetch(`/drain?${query}`, { method: 'POST', headers: BEARER });
      assert.equal(answer.status, 400, query);
      assert.match((await json(answer)).error, pattern, query);
    }

    // 404: not an instance of this VPC.
    for (const query of [`id=${world.foreignNode.id}`, 'id=i-0123456789abcdef0', 'ip=10.0.9.9']) {
      const answer = await agent.fetch(`/drain?${query}`, { method: 'POST', headers: BEARER });
      assert.equal(answer.status, 404, query);
      assert.ok((await json(answer)).error, query);
    }

    // 405: /drain is POST only.
    const get = await agent.fetch('/drain', { headers: BEARER });
    assert.equal(get.status, 405);
    assert.match(get.headers.get('allow') ?? '', /POST/);
    assert.ok((await json(get)).error);

    // 413: parameters go in the query string, not in a large body.
    const large = await agent.fetch(`/drain?id=${world.node.id}`, { method: 'POST', headers: BEARER, body: 'x'.repeat(64 * 1024) });
    assert.equal(large.status, 413);
    assert.ok((await json(large)).error);

    for (const path of ['/healthz', '/readyz']) assert.equal((await agent.fetch(path)).status, 200, path);
    assert.match(await metrics(agent), /^# HELP hasta_la_vista_/m);

    // Nothing at all was done.
    assert.equal(deregisterCalls().length, 0);
    assert.deepEqual(kube.patches, []);
    await assertLeftExactly([]);

    // A good request that carries the secret in its URL, so that it passes every log the agent writes.
    const ok = await agent.fetch(`/drain?id=${world.neighbour.id}&wait=true&pw=${SECRET}`, { method: 'POST' });
    assert.equal(ok.status, 200);
    await sleep(300);
    const output = agent.stdout() + agent.stderr();
    assert.ok(output.includes('api request'), 'debug logging shows API requests');
    assert.ok(!output.includes(SECRET), 'the secret is not in the agent output');
    assert.ok(!output.includes(WRONG_SECRET), 'a guessed secret is not in the agent output');
  });
});

describe('output', () => {
  test(
    'an AWS call slower than the SDK request timeout: the drain still finishes, and every stderr line stays JSON',
    async () => {
      const agent = await startAgent();
      // The first classic health check answers only after 11 s (the SDK's request timeout is 10 s).
      let slowed = false;
      proxy.addFault((call) => {
        if (call.action !== 'DescribeInstanceHealth' || slowed) return undefined;
        slowed = true;
        return { kind: 'delay', ms: 11_000 };
      });
      const answer = await agent.fetch(`/drain?timeout=60&pw=${SECRET}`, { method: 'POST' });
      assert.equal(answer.status, 202);
      await statusBecomes(agent, world.node.id, 'deregistered', 20_000);
      await assertLeftExactly(selfInScope(world));
      assert.deepEqual(agent.nonJsonLines(), [], 'every stderr line of the agent is JSON');
    },
  );
});

describe('keep-out', () => {
  test('a re-registration after the drain is caught and undone', async () => {
    const agent = await startAgent({ RECHECK_INTERVAL: '5' });
    const answer = await agent.fetch('/drain?wait=true', { method: 'POST', headers: BEARER });
    assert.equal(((await json(answer)) as DrainStatus).state, 'deregistered');
    await assertLeftExactly(selfInScope(world));

    // A controller puts the node back.
    const aws = awsClients(moto.url);
    await aws.elbv2.send(new RegisterTargetsCommand({ TargetGroupArn: world.groups.viaTaggedAlb, Targets: [{ Id: world.node.id, Port: 30080 }] }));
    assert.ok((await registrations(moto.url, world)).has(`tg:viaTaggedAlb:${world.node.id}:30080`));

    await eventually(async () => !(await registrations(moto.url, world)).has(`tg:viaTaggedAlb:${world.node.id}:30080`), 16_000, 'deregistered again');
    await assertLeftExactly(selfInScope(world));
    const text = await metrics(agent);
    assert.ok((metricSample(text, 'hasta_la_vista_reregistrations_caught_total') ?? 0) >= 1, text.split('\n').filter((l) => l.includes('reregistr')).join('\n'));
    assert.ok(eventsOf('ReRegistrationCaught').length >= 1, 'a Warning Event says the node was taken out again');
  });

  test('a drain that times out while its targets still drain (deregistration delay): no second deregistration, no "re-registration caught"', async () => {
    proxy.addFault(drainingTargets());
    const agent = await startAgent({ RECHECK_INTERVAL: '5' });
    const answer = await agent.fetch('/drain?wait=true&timeout=3', { method: 'POST', headers: BEARER });
    const status = (await json(answer)) as DrainStatus;
    assert.equal(answer.status, 504, JSON.stringify(status));
    assert.equal(status.state, 'timed_out');
    for (const lb of status.loadBalancers) assert.equal(lb.state, lb.family === 'target-group' ? 'draining' : 'out', JSON.stringify(lb));
    const deregistrations = () => proxy.count('DeregisterTargets');
    assert.equal(deregistrations(), 2, 'one DeregisterTargets per target group');

    // Two keep-out re-checks later: still draining is not "back", so nothing is deregistered again.
    const checked = proxy.count('DescribeTargetHealth');
    await eventually(() => proxy.count('DescribeTargetHealth') >= checked + 4, 15_000, 'two re-checks of both target groups');
    assert.equal(deregistrations(), 2, 'no second DeregisterTargets');
    const text = await metrics(agent);
    assert.equal(metricSample(text, 'hasta_la_vista_reregistrations_caught_total') ?? 0, 0);
    assert.deepEqual(eventsOf('ReRegistrationCaught'), []);
    assert.equal(agent.logs().filter((line) => /registered again/.test(String(line.msg))).length, 0);
  });
});

describe('heal on start', () => {
  const labelledNode = (annotations: Record<string, string> = {}): KubeObject =>
    makeNode(NODE, { providerID: `aws:///us-east-1a/${world.node.id}`, labels: { [EXCLUDE_LABEL]: 'true' }, annotations });

  test('the label and mark this agent set, and no notice: both removed', async () => {
    kube.setNode(labelledNode({ [MARK]: '2026-11-27T10:00:00.000Z spot-interruption' }));
    await startAgent();
    await eventually(() => nodeNow().metadata.labels[EXCLUDE_LABEL] === undefined && nodeNow().metadata.annotations[MARK] === undefined, 5_000, 'label and mark removed');
    assert.equal(kube.patches.length, 1);
    assert.equal(kube.patches[0]!.body.metadata.labels[EXCLUDE_LABEL], null);
    assert.equal(kube.patches[0]!.body.metadata.annotations[MARK], null);
    // The rest of the node is untouched.
    assert.equal(nodeNow().metadata.labels['kubernetes.io/hostname'], NODE);
    assert.equal(nodeNow().metadata.annotations['node.alpha.kubernetes.io/ttl'], '0');
    await assertLeftExactly([]);
  });

  test('a drain for a maintenance event that passed while the agent was away: registered again where it was, label removed', async () => {
    const event = { NotBefore: imdsDate(new Date(Date.now() + 60_000)), Code: 'system-reboot', Description: 'scheduled reboot', EventId: 'instance-event-0ccccccccccccccccc', State: 'active' };
    imds.set(MAINTENANCE, JSON.stringify([event]));
    const first = await startAgent();
    await statusBecomes(first, world.node.id, 'deregistered');
    await assertLeftExactly(selfInScope(world));
    await eventually(() => nodeNow().metadata.annotations['hasta-la-vista.io/taken-out'] !== undefined, 5_000, 'what was taken out is remembered on the Node');
    first.child.kill('SIGTERM');
    assert.equal((await exitWithin(first, 12_000)).code, 0, first.stderr());

    // The reboot happened (or the event was canceled): no notice any more.
    imds.set(MAINTENANCE, JSON.stringify([{ ...event, State: 'completed' }]));
    const second = await startAgent();
    await eventually(async () => (await registrations(moto.url, world)).size === initial.size, 15_000, 'registered back');
    await assertLeftExactly([]);
    await eventually(() => nodeNow().metadata.labels[EXCLUDE_LABEL] === undefined, 5_000, 'label removed');
    assert.equal(nodeNow().metadata.annotations['hasta-la-vista.io/taken-out'], undefined, 'nothing left to give back');
    assert.equal(eventsOf('GivenBack').length, 1);
    const text = await metrics(second);
    assert.equal(metricSample(text, 'hasta_la_vista_given_back_total', { family: 'target-group' }), 2);
    assert.equal(metricSample(text, 'hasta_la_vista_given_back_total', { family: 'classic' }), 2);
  });

  test('a label without the mark (an operator\'s): left alone', async () => {
    kube.setNode(labelledNode());
    await startAgent();
    // Ready means the start-up check is done; a moment more for any late patch.
    await sleep(1_000);
    assert.deepEqual(kube.patches, []);
    assert.equal(nodeNow().metadata.labels[EXCLUDE_LABEL], 'true');
  });

  test('a termination notice present on start: the exclusion stays', async () => {
    kube.setNode(labelledNode({ [MARK]: '2026-11-27T10:00:00.000Z spot-interruption' }));
    imds.set(SPOT, JSON.stringify({ action: 'terminate', time: new Date(Date.now() + 120_000).toISOString() }));
    const agent = await startAgent();
    await statusBecomes(agent, world.node.id, 'deregistered');
    assert.deepEqual(nullPatches(), []);
    assert.equal(nodeNow().metadata.labels[EXCLUDE_LABEL], 'true');
    assert.ok(nodeNow().metadata.annotations[MARK]);
  });
});
