/**
 * The coordinator end to end: two BUILT agents, one per instance of the moto world, each with its own
 * fake IMDS and its own call-counting proxy in front of the same moto (so each agent's AWS calls are
 * its own), sharing one fake Kubernetes API that holds their Lease. What a user would notice: who holds
 * the Lease and where it points, which agent called AWS, the load balancers' memberships, each drain's
 * status, and that a node still gets out when the coordinator cannot serve it.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { RegisterTargetsCommand } from '@aws-sdk/client-elastic-load-balancing-v2';
import type { DrainStatus } from '../agent/drain/status.ts';
import { startAwsProxy, type AwsProxy } from './fakes/aws-proxy.ts';
import { imdsDate, startFakeImds, type FakeImds } from './fakes/imds.ts';
import { makeNode, makePod, startFakeKube, type FakeKube } from './fakes/kube.ts';
import { awsClients, CLUSTER, REGION, registrations, seedWorld, type World } from './fixtures/world.ts';
import { eventually, killAllAgents, spawnAgent, statusBecomes, waitReady, type AgentProcess } from './helpers/agent-harness.ts';
import { freePort, startMoto, type Moto } from './helpers/moto.ts';

const SECRET = 'coordination-Secret-4b1d9e';
const NAMESPACE = 'kube-system';
const LEASE = 'hasta-la-vista-coordinator';
const SPOT = 'meta-data/spot/instance-action';
const MAINTENANCE = 'meta-data/events/maintenance/scheduled';


/** One agent's world: its instance, node, pod, IMDS and proxy. */
interface Member {
  readonly pod: string;
  readonly node: string;
  readonly instanceId: string;
  readonly imds: FakeImds;
  readonly proxy: AwsProxy;
  agent?: AgentProcess;
}

let moto: Moto;
let world: World;
let initial: Set<string>;
let kube: FakeKube;
let kubeconfig: string;
let tmp: string;
/** The agent started first, on the neighbour instance: it takes the Lease. */
let first: Member;
/** The agent on the node under test, started once the first one leads. */
let second: Member;

const selfInScope = (w: World) => [
  `clb:${w.classic.tagged}:${w.node.id}`,
  `clb:${w.classic.readmeTagged}:${w.node.id}`,
  `tg:viaTaggedAlb:${w.node.id}:30080`,
  `tg:taggedIp:${w.node.secondaryIp}:8080`,
];
const neighbourInScope = (w: World) => [`clb:${w.classic.tagged}:${w.neighbour.id}`, `tg:viaTaggedAlb:${w.neighbour.id}:30080`, `tg:taggedIp:${w.neighbour.ip}:8080`];

async function assertLeftExactly(gone: string[]): Promise<void> {
  const expected = [...initial].filter((membership) => !gone.includes(membership)).sort();
  assert.deepEqual([...(await registrations(moto.url, world))].sort(), expected);
}

const deregistrations = (proxy: AwsProxy) => proxy.calls.filter((call) => call.action.startsWith('Deregister')).length;
const holder = () => kube.lease(NAMESPACE, LEASE)?.spec?.holderIdentity as string | undefined;

async function member(pod: string, node: string, instance: { id: string; ip: string }, secondaryIps: string[] = []): Promise<Member> {
  const imds = await startFakeImds({ instanceId: instance.id, region: REGION, availabilityZone: 'us-east-1a', vpcId: world.clusterVpc, privateIp: instance.ip, secondaryIps });
  imds.set('meta-data/autoscaling/target-lifecycle-state', 'InService');
  kube.setNode(makeNode(node, { providerID: `aws:///us-east-1a/${instance.id}` }));
  kube.setPod(makePod(NAMESPACE, pod, { nodeName: node }));
  return { pod, node, instanceId: instance.id, imds, proxy: await startAwsProxy(moto.url) };
}

async function start(m: Member, extra: Record<string, string> = {}): Promise<AgentProcess> {
  m.agent = spawnAgent(await freePort(), {
    AWS_ENDPOINT_URL: m.proxy.url,
    AWS_EC2_METADATA_SERVICE_ENDPOINT: m.imds.url,
    SECRET,
    CLUSTERNAME: CLUSTER,
    POLL_INTERVAL: '1',
    NODE_NAME: m.node,
    POD_NAME: m.pod,
    POD_NAMESPACE: NAMESPACE,
    HOST_IP: '127.0.0.1',
    KUBECONFIG: kubeconfig,
    ...extra,
  });
  await waitReady(m.agent);
  return m.agent;
}

/** Starts the first agent and waits until it holds the Lease; then the second, which follows it. */
async function startBoth(extra: Record<string, string> = {}): Promise<void> {
  const leader = await start(first, extra);
  await eventually(() => holder() === first.pod, 10_000, 'the first agent holds the Lease');
  assert.equal(kube.lease(NAMESPACE, LEASE)!.metadata.annotations['hasta-la-vista.io/endpoint'], `127.0.0.1:${leader.port}`);
  const follower = await start(second, extra);
  await eventually(() => follower.logs().some((line) => line.msg === 'new leader' && line.leader === first.pod), 10_000, 'the second agent sees the coordinator');
}

function spotNotice(m: Member): void {
  m.imds.set(SPOT, JSON.stringify({ action: 'terminate', time: new Date(Date.now() + 120_000).toISOString().replace(/\.\d+Z$/, 'Z') }));
}

const statusOf = (agent: AgentProcess, instanceId: string, state: DrainStatus['state']) => statusBecomes(agent, SECRET, instanceId, state, 20_000);

before(async () => {
  moto = await startMoto();
  tmp = mkdtempSync(join(tmpdir(), 'hlv-coordination-'));
});

after(async () => {
  await moto?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

beforeEach(async () => {
  await moto.reset();
  world = await seedWorld(moto.url);
  initial = await registrations(moto.url, world);
  kube = await startFakeKube({ token: 'kube-coordination-token' });
  kubeconfig = kube.writeKubeconfig(join(tmp, 'kubeconfig'));
  first = await member('hasta-la-vista-aaaaa', 'ip-10-0-2-10.ec2.internal', world.neighbour);
  second = await member('hasta-la-vista-bbbbb', 'ip-10-0-1-23.ec2.internal', world.node, [world.node.secondaryIp]);
});

afterEach(async () => {
  await killAllAgents();
  for (const m of [first, second]) {
    await m.imds.close();
    await m.proxy.close();
    assert.deepEqual(m.agent?.nonJsonLines() ?? [], [], 'every stderr line of the agent is JSON');
  }
  await kube.close();
});

describe('a coordinator drains the dying nodes of the cluster', () => {
  test('a dying node hands its drain to the coordinator, which takes it out; the follower calls AWS not once', async () => {
    await startBoth();
    const follower = second.agent!;
    spotNotice(second);

    const status = await statusOf(follower, second.instanceId, 'deregistered');
    assert.deepEqual(status.handOver, { coordinator: first.pod, outcome: 'served' });
    assert.equal(status.trigger, 'spot-interruption');
    await assertLeftExactly(selfInScope(world));
    // The coordinator made every call; the follower none, at start or for its drain.
    assert.ok(deregistrations(first.proxy) >= 2, 'the coordinator deregistered');
    assert.deepEqual(second.proxy.calls.map((call) => call.action), [], 'the follower called AWS');
    // The follower described its own instance: the coordinator looked nothing up in EC2.
    assert.equal(first.proxy.count('DescribeInstances'), 0);
    const served = await statusOf(first.agent!, second.instanceId, 'deregistered');
    assert.equal(served.trigger, 'api');
    assert.ok(first.agent!.logs().some((line) => line.msg === "serving a peer's drain" && line.peer === second.pod));
    // The follower still keeps its own node out.
    await eventually(() => kube.node(second.node)!.metadata.labels?.['node.kubernetes.io/exclude-from-external-load-balancers'] === 'true', 5_000, 'the follower labels its node');
  });

  test('a served node is kept out by the coordinator: registered again, the coordinator takes it out again, and the follower still calls AWS not once', async () => {
    await startBoth({ RECHECK_INTERVAL: '5' });
    spotNotice(second);
    await statusOf(second.agent!, second.instanceId, 'deregistered');
    await assertLeftExactly(selfInScope(world));
    assert.ok(second.agent!.logs().some((line) => line.msg === 'the coordinator re-checks that this node stays out while it coordinates'));

    // A controller puts the node back.
    await awsClients(moto.url).elbv2.send(new RegisterTargetsCommand({ TargetGroupArn: world.groups.viaTaggedAlb, Targets: [{ Id: world.node.id, Port: 30080 }] }));
    await eventually(async () => !(await registrations(moto.url, world)).has(`tg:viaTaggedAlb:${world.node.id}:30080`), 16_000, 'deregistered again');
    await assertLeftExactly(selfInScope(world));
    assert.ok(first.agent!.logs().some((line) => line.msg === 'a served peer was registered again: taking it out again' && line.instanceId === second.instanceId));
    // Two more intervals: the follower never checked itself.
    await sleep(10_000);
    assert.deepEqual(second.proxy.calls.map((call) => call.action), [], 'the follower called AWS');
  });

  test('a served node given back (the maintenance event canceled): the coordinator lets go of it, and it stays registered again', async () => {
    await startBoth({ RECHECK_INTERVAL: '5' });
    const maintenance = { NotBefore: imdsDate(new Date(Date.now() + 300_000)), Code: 'system-reboot', Description: 'scheduled reboot', EventId: 'instance-event-0ddddddddddddddd', State: 'active' };
    second.imds.set(MAINTENANCE, JSON.stringify([maintenance]));
    const served = await statusOf(second.agent!, second.instanceId, 'deregistered');
    assert.equal(served.handOver?.outcome, 'served');
    await assertLeftExactly(selfInScope(world));

    second.imds.set(MAINTENANCE, JSON.stringify([{ ...maintenance, State: 'canceled' }]));
    await eventually(async () => (await registrations(moto.url, world)).size === initial.size, 15_000, 'registered back');
    assert.ok(first.agent!.logs().some((line) => line.msg === 'drain canceled' && line.instanceId === second.instanceId && line.by === `peer ${second.pod}`), 'the coordinator was told');
    // Two of the coordinator's re-check intervals: it does not take the node out again.
    await sleep(11_000);
    await assertLeftExactly([]);
    assert.equal(first.agent!.logs().filter((line) => line.msg === 'a served peer was registered again: taking it out again').length, 0);
  });

  test('a coordinator killed in the middle of a drain, and no other agent to take over: the follower waits for a successor, then drains alone well inside its deadline', async () => {
    await startBoth();
    // The coordinator's target-group deregistrations never answer: it is stuck mid-drain when it dies.
    first.proxy.addFault((call) => (call.action === 'DeregisterTargets' ? { kind: 'hang' } : undefined));
    spotNotice(second);
    await eventually(() => first.proxy.count('DeregisterTargets') > 0, 10_000, 'the coordinator started deregistering');
    first.agent!.child.kill('SIGKILL');
    const killedAt = Date.now();

    const status = await statusBecomes(second.agent!, SECRET, second.instanceId, 'deregistered', 60_000);
    assert.equal(status.handOver?.outcome, 'drained-alone');
    assert.match(status.handOver?.reason ?? '', /the coordinator stopped answering.*; no other coordinator within 30 s/);
    // Two failed status reads, the 30 s wait for a successor, then its own drain: a third of its two minutes.
    const outAfter = Date.parse(status.finishedAt!) - killedAt;
    assert.ok(outAfter < 45_000, `out ${outAfter} ms after the coordinator died`);
    await assertLeftExactly(selfInScope(world));
    assert.ok(deregistrations(second.proxy) >= 2, 'the follower deregistered itself');
  });

  test('a coordinator killed in the middle of a drain: the next coordinator serves the follower, which deregisters nothing itself', async () => {
    // A third agent on a node that stays, in the cluster's VPC: a candidate to take over.
    const standby = await member('hasta-la-vista-ccccc', 'ip-10-0-2-99.ec2.internal', { id: 'i-0feedfacecafe0001', ip: '10.0.2.99' });
    try {
      await startBoth();
      await start(standby);
      first.proxy.addFault((call) => (call.action === 'DeregisterTargets' ? { kind: 'hang' } : undefined));
      spotNotice(second);
      await eventually(() => first.proxy.count('DeregisterTargets') > 0, 10_000, 'the coordinator started deregistering');
      first.agent!.child.kill('SIGKILL');

      const status = await statusBecomes(second.agent!, SECRET, second.instanceId, 'deregistered', 60_000);
      assert.equal(status.handOver?.outcome, 'served');
      assert.equal(status.handOver?.coordinator, standby.pod);
      assert.equal(status.handOver?.previous?.[0]?.coordinator, first.pod);
      assert.match(status.handOver?.previous?.[0]?.reason ?? '', /the coordinator stopped answering/);
      assert.equal(holder(), standby.pod);
      await assertLeftExactly(selfInScope(world));
      assert.equal(deregistrations(second.proxy), 0, 'the follower deregistered nothing itself');
      assert.ok(deregistrations(standby.proxy) >= 1, 'the new coordinator did');
    } finally {
      standby.agent?.child.kill('SIGKILL');
      await standby.agent?.exited;
      await standby.imds.close();
      await standby.proxy.close();
    }
  });

  test('a coordinator whose own node goes away gives the Lease up at once, and another agent takes it', async () => {
    await startBoth();
    spotNotice(first);
    await statusOf(first.agent!, first.instanceId, 'deregistered');
    await eventually(() => holder() === second.pod, 10_000, 'the second agent holds the Lease');
    await assertLeftExactly(neighbourInScope(world));
    // Its own drain went alone: no coordinator but itself when it started.
    assert.equal((await statusOf(first.agent!, first.instanceId, 'deregistered')).handOver, undefined);
    assert.ok(second.agent!.logs().some((line) => line.msg === 'leading: acquired the lease'));
  });

  test('without permission on the Lease every agent drains its own node alone, as before, and says so once', async () => {
    kube.forbid('leases');
    const alone = await start(second);
    await eventually(() => alone.logs().some((line) => /no permission on the Lease/.test(line.msg)), 10_000, 'the agent says why it drains alone');
    spotNotice(second);
    const status = await statusOf(alone, second.instanceId, 'deregistered');
    assert.equal(status.handOver, undefined);
    await assertLeftExactly(selfInScope(world));
    await sleep(2_500);
    assert.equal(alone.logs().filter((line) => /no permission on the Lease/.test(line.msg)).length, 1, 'said once, not at every retry');
    assert.equal(kube.lease(NAMESPACE, LEASE), undefined);
  });
});
