/**
 * Auto Scaling termination held while the drain runs by the lifecycle hook named in ASG_LIFECYCLE_HOOK,
 * and by no other: EKS's own Terminate-LC-Hook beside it is never heartbeaten or completed.
 * moto knows groups and hooks but not heartbeats or completions: the unit tests mock the Auto Scaling
 * client (aws-sdk-client-mock); the end-to-end tests let the proxy in front of moto answer those two
 * calls (recording when they came) and play a classic ELB's connection draining, which moto cannot.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import {
  AutoScalingClient,
  CompleteLifecycleActionCommand,
  CreateAutoScalingGroupCommand,
  DescribeAutoScalingInstancesCommand,
  DeleteLifecycleHookCommand,
  DescribeLifecycleHooksCommand,
  PutLifecycleHookCommand,
  RecordLifecycleActionHeartbeatCommand,
  type LifecycleHook,
} from '@aws-sdk/client-auto-scaling';
import { CreateLaunchTemplateCommand, CreateTagsCommand } from '@aws-sdk/client-ec2';
import { mockClient } from 'aws-sdk-client-mock';
import { drainHeldByHook, LifecycleHolder, type HookSetting } from '../agent/aws/lifecycle.ts';
import type { DrainHandle } from '../agent/drain/drainer.ts';
import type { Instance } from '../agent/drain/instance.ts';
import type { DrainStatus } from '../agent/drain/status.ts';
import { silentLogger } from '../agent/log.ts';
import { startAwsProxy, type AwsProxy } from './fakes/aws-proxy.ts';
import { startFakeImds, type FakeImds } from './fakes/imds.ts';
import { awsClients, REGION, seedWorld, type World } from './fixtures/world.ts';
import { eventually, killAllAgents, spawnAgent, waitReady } from './helpers/agent-harness.ts';
import { freePort, startMoto, type Moto } from './helpers/moto.ts';

const INSTANCE_ID = 'i-0123456789abcdef0';
const instance = (tags: Record<string, string>): Instance => ({ id: INSTANCE_ID, vpcId: 'vpc-01234567', privateIps: [], ipv4Prefixes: [], ipv6Addresses: [], ipv6Prefixes: [], tags });
const GROUP = { 'aws:autoscaling:groupName': 'nodes-a' };
/** EKS's own termination hook on a managed node group, and the one created for the agent (a short timeout: a heartbeat each second). */
const EKS_HOOK: LifecycleHook = { LifecycleHookName: 'Terminate-LC-Hook', LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING', HeartbeatTimeout: 1800 };
const OUR_HOOK: LifecycleHook = { LifecycleHookName: 'drain-first', LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING', HeartbeatTimeout: 2 };
const drained = (state: DrainStatus['state']) => ({ state }) as DrainStatus;

/** A drain that ends when the test says so, as much of a DrainHandle as holding it uses. */
function fakeDrain(): { handle: DrainHandle; finish(state: DrainStatus['state']): void } {
  let status = { instanceId: INSTANCE_ID, state: 'draining' } as DrainStatus;
  let finish!: (state: DrainStatus['state']) => void;
  const done = new Promise<DrainStatus>((resolve) => (finish = (state) => resolve((status = { ...status, state }))));
  const handle = { done, status: () => status, amend: (fields: Partial<DrainStatus>) => (status = { ...status, ...fields }) };
  return { handle: handle as unknown as DrainHandle, finish };
}
const noActiveAction = () => Object.assign(new Error('No active Lifecycle Action found with instance ID i-0123456789abcdef0'), { name: 'ValidationError' });

describe('LifecycleHolder (Auto Scaling client mocked)', () => {
  const autoscaling = mockClient(AutoScalingClient);
  /** How often the holder asked for its client: it must build none while holding is off. */
  let clientsAsked = 0;
  const holder = (setting: HookSetting = { kind: 'named', name: 'drain-first' }) =>
    new LifecycleHolder(async () => (clientsAsked++, new AutoScalingClient({ region: REGION })), setting, silentLogger());
  beforeEach(() => {
    autoscaling.reset();
    clientsAsked = 0;
  });
  // mockClient(Class) patches every instance's send: the end-to-end suite below needs the real one.
  after(() => autoscaling.restore());

  /** The group as EKS makes a managed node group's: its own termination hook, and ours beside it. */
  const eksGroupHooks = (hooks: LifecycleHook[] = [EKS_HOOK, OUR_HOOK]) =>
    autoscaling.on(DescribeLifecycleHooksCommand).callsFake((input: { LifecycleHookNames?: string[] }) => ({
      LifecycleHooks: hooks.filter((hook) => input.LifecycleHookNames === undefined || input.LifecycleHookNames.includes(hook.LifecycleHookName!)),
    }));

  test("no hook named: a group holding only EKS's Terminate-LC-Hook gets no Auto Scaling call at all", async () => {
    eksGroupHooks([EKS_HOOK]);
    const drain = fakeDrain();
    const off = holder({ kind: 'off' });
    const held = drainHeldByHook(off, instance(GROUP), drain.handle, silentLogger());
    drain.finish('deregistered');
    const status = await held;
    assert.equal(status.lifecycleAction, undefined);
    assert.equal(await off.hookFor(instance({}), AbortSignal.timeout(1000)), undefined);
    assert.deepEqual(autoscaling.calls(), []);
    assert.equal(clientsAsked, 0, 'the Auto Scaling client is not even built');
  });

  test('a named hook: heartbeats and completes that hook only, never Terminate-LC-Hook', async () => {
    eksGroupHooks();
    autoscaling.on(DescribeAutoScalingInstancesCommand).resolves({ AutoScalingInstances: [] });
    const drain = fakeDrain();
    // The drain ends once a heartbeat went out, so the hold is seen doing both.
    autoscaling.on(RecordLifecycleActionHeartbeatCommand).callsFake(() => drain.finish('deregistered'));
    autoscaling.on(CompleteLifecycleActionCommand).resolves({});
    const status = await drainHeldByHook(holder(), instance(GROUP), drain.handle, silentLogger());

    assert.equal(status.lifecycleAction?.outcome, 'completed');
    assert.equal(status.lifecycleAction?.hook, 'drain-first');
    assert.deepEqual(autoscaling.commandCalls(DescribeLifecycleHooksCommand)[0]!.args[0].input, { AutoScalingGroupName: 'nodes-a', LifecycleHookNames: ['drain-first'] });
    const touched = [...autoscaling.commandCalls(RecordLifecycleActionHeartbeatCommand), ...autoscaling.commandCalls(CompleteLifecycleActionCommand)];
    assert.ok(autoscaling.commandCalls(RecordLifecycleActionHeartbeatCommand).length >= 1);
    assert.equal(autoscaling.commandCalls(CompleteLifecycleActionCommand).length, 1);
    assert.deepEqual(new Set(touched.map((call) => call.args[0].input.LifecycleHookName)), new Set(['drain-first']));
    assert.equal(autoscaling.commandCalls(DescribeAutoScalingInstancesCommand).length, 0, 'the tag named the group');
    assert.equal(clientsAsked, 1, 'one client, built when the hook was first looked up');
  });

  test('an instance without the group tag (the own one, read from IMDS): the group comes from DescribeAutoScalingInstances', async () => {
    eksGroupHooks();
    autoscaling.on(DescribeAutoScalingInstancesCommand).resolves({
      AutoScalingInstances: [{ InstanceId: INSTANCE_ID, AutoScalingGroupName: 'nodes-a', AvailabilityZone: 'eu-west-1a', LifecycleState: 'Terminating:Wait', HealthStatus: 'HEALTHY', ProtectedFromScaleIn: false }],
    });
    assert.deepEqual(await holder().hookFor(instance({}), AbortSignal.timeout(1000)), { group: 'nodes-a', hook: 'drain-first', heartbeatTimeoutSeconds: 2 });
    assert.deepEqual(autoscaling.commandCalls(DescribeAutoScalingInstancesCommand)[0]!.args[0].input, { InstanceIds: [INSTANCE_ID] });
  });

  test('an instance in no group: nothing to hold, no hook looked up', async () => {
    autoscaling.on(DescribeAutoScalingInstancesCommand).resolves({ AutoScalingInstances: [] });
    assert.equal(await holder().hookFor(instance({}), AbortSignal.timeout(1000)), undefined);
    assert.equal(autoscaling.commandCalls(DescribeLifecycleHooksCommand).length, 0);
  });

  test('a named hook the group lacks, or one on launch, holds nothing', async () => {
    eksGroupHooks([EKS_HOOK]);
    assert.equal(await holder().hookFor(instance(GROUP), AbortSignal.timeout(1000)), undefined);
    eksGroupHooks([EKS_HOOK, { ...OUR_HOOK, LifecycleTransition: 'autoscaling:EC2_INSTANCE_LAUNCHING' }]);
    assert.equal(await holder().hookFor(instance(GROUP), AbortSignal.timeout(1000)), undefined);
  });

  test('heartbeats while the drain runs, then completes with CONTINUE, in that order', async () => {
    const order: string[] = [];
    autoscaling.on(RecordLifecycleActionHeartbeatCommand).callsFake(() => order.push('heartbeat'));
    autoscaling.on(CompleteLifecycleActionCommand).callsFake(() => order.push('complete'));
    const drain = new Promise<DrainStatus>((resolve) => setTimeout(() => (order.push('drained'), resolve(drained('deregistered'))), 2_700));
    const status = await holder().hold({ group: 'nodes-a', hook: 'drain', heartbeatTimeoutSeconds: 2 }, 'i-0123456789abcdef0', drain);
    assert.deepEqual(order, ['heartbeat', 'heartbeat', 'drained', 'complete']);
    assert.equal(status.outcome, 'completed');
    assert.equal(status.heartbeats, 2);
    assert.deepEqual(autoscaling.commandCalls(CompleteLifecycleActionCommand)[0]!.args[0].input, {
      AutoScalingGroupName: 'nodes-a',
      LifecycleHookName: 'drain',
      InstanceId: 'i-0123456789abcdef0',
      LifecycleActionResult: 'CONTINUE',
    });
  });

  test('completes also when the drain timed out: never keeps a node longer than asked', async () => {
    autoscaling.on(CompleteLifecycleActionCommand).resolves({});
    const status = await holder().hold({ group: 'nodes-a', hook: 'drain', heartbeatTimeoutSeconds: 60 }, 'i-0123456789abcdef0', Promise.resolve(drained('timed_out')));
    assert.equal(status.outcome, 'completed');
    assert.equal(autoscaling.commandCalls(CompleteLifecycleActionCommand).length, 1);
  });

  test('"no active lifecycle action" is success: another tool completed it', async () => {
    autoscaling.on(CompleteLifecycleActionCommand).rejects(noActiveAction());
    const status = await holder().hold({ group: 'nodes-a', hook: 'drain', heartbeatTimeoutSeconds: 60 }, 'i-0123456789abcdef0', Promise.resolve(drained('deregistered')));
    assert.equal(status.outcome, 'no-active-action');
  });

  test('any other completion error is reported with its cause, not thrown', async () => {
    autoscaling.on(CompleteLifecycleActionCommand).rejects(Object.assign(new Error('User is not authorized'), { name: 'AccessDenied' }));
    const status = await holder().hold({ group: 'nodes-a', hook: 'drain', heartbeatTimeoutSeconds: 60 }, 'i-0123456789abcdef0', Promise.resolve(drained('deregistered')));
    assert.equal(status.outcome, 'failed');
    assert.match(status.reason!, /not authorized/);
  });
});

describe('the agent holds an Auto Scaling termination until the node is out (end to end)', () => {
  const SECRET = 'lifecycle-Secret-0123456789';
  let moto: Moto;
  let proxy: AwsProxy;
  let world: World;
  let imds: FakeImds;
  /** When the classic ELB's connection draining ends, once started. */
  let drainingUntil: number | undefined;
  let removeOurHook: () => Promise<unknown>;

  before(async () => {
    moto = await startMoto();
    proxy = await startAwsProxy(moto.url);
  });
  after(async () => {
    await proxy.close();
    await moto.stop();
  });
  beforeEach(async () => {
    await moto.reset();
    proxy.clearFaults();
    world = await seedWorld(moto.url);
    const aws = awsClients(moto.url);
    const autoscaling = new AutoScalingClient({ region: REGION, endpoint: moto.url, credentials: { accessKeyId: 'test', secretAccessKey: 'test' } });
    await aws.ec2.send(new CreateLaunchTemplateCommand({ LaunchTemplateName: 'nodes', LaunchTemplateData: { ImageId: 'ami-12c6146b' } }));
    await autoscaling.send(
      new CreateAutoScalingGroupCommand({ AutoScalingGroupName: 'nodes-a', MinSize: 0, MaxSize: 1, DesiredCapacity: 0, LaunchTemplate: { LaunchTemplateName: 'nodes' }, VPCZoneIdentifier: world.subnets[0] }),
    );
    // As on an EKS managed node group: EKS's own termination hook, and the one created for the agent.
    // A short heartbeat timeout (real AWS allows 30 s at least), so a heartbeat falls inside the test.
    for (const [name, timeout] of [['Terminate-LC-Hook', 1800], ['drain-first', 2]] as const) {
      await autoscaling.send(
        new PutLifecycleHookCommand({ AutoScalingGroupName: 'nodes-a', LifecycleHookName: name, LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING', HeartbeatTimeout: timeout }),
      );
    }
    await aws.ec2.send(new CreateTagsCommand({ Resources: [world.node.id], Tags: [{ Key: 'aws:autoscaling:groupName', Value: 'nodes-a' }] }));
    removeOurHook = () => autoscaling.send(new DeleteLifecycleHookCommand({ AutoScalingGroupName: 'nodes-a', LifecycleHookName: 'drain-first' }));

    drainingUntil = undefined;
    const ok = (action: string) => `<${action}Response xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><${action}Result/><ResponseMetadata><RequestId>proxy</RequestId></ResponseMetadata></${action}Response>`;
    proxy.addFault((call) => (call.service === 'autoscaling' && ['RecordLifecycleActionHeartbeat', 'CompleteLifecycleAction'].includes(call.action) ? { kind: 'respond', status: 200, body: ok(call.action) } : undefined));
    // moto knows only the instances it launched into the group; the node was made apart from it.
    proxy.addFault((call) => (call.action === 'DescribeAutoScalingInstances' && call.params.get('InstanceIds.member.1') === world.node.id ? { kind: 'respond', status: 200, body: inGroup(world.node.id, 'nodes-a') } : undefined));
    proxy.addFault((call) => {
      if (call.action !== 'DescribeInstanceHealth' || call.params.get('LoadBalancerName') !== world.classic.tagged || drainingUntil === undefined || Date.now() >= drainingUntil) return undefined;
      return { kind: 'respond', status: 200, body: inProgress(world.node.id) };
    });
    proxy.calls.length = 0;
    imds = await startFakeImds({ instanceId: world.node.id, region: REGION, vpcId: world.clusterVpc, privateIp: world.node.ip, secondaryIps: [world.node.secondaryIp] });
    imds.set('meta-data/autoscaling/target-lifecycle-state', 'InService');
  });
  afterEach(async () => {
    await killAllAgents();
    await imds.close();
  });

  const startAgent = async (extra: Record<string, string> = { ASG_LIFECYCLE_HOOK: 'drain-first' }) => {
    const agent = spawnAgent(await freePort(), { AWS_ENDPOINT_URL: proxy.url, AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url, SECRET, POLL_INTERVAL: '1', ...extra });
    await waitReady(agent);
    return agent;
  };
  const first = (action: string) => proxy.calls.find((call) => call.action === action);
  const all = (action: string) => proxy.calls.filter((call) => call.action === action);

  test('heartbeats through connection draining, completes only once every membership is out', async () => {
    const agent = await startAgent();
    drainingUntil = Date.now() + 1e9; // draining until the test says so
    imds.set('meta-data/autoscaling/target-lifecycle-state', 'Terminated');
    await eventually(() => all('RecordLifecycleActionHeartbeat').length >= 2, 15_000, 'two heartbeats while the ELB drains');
    assert.equal(first('CompleteLifecycleAction'), undefined, 'no completion while a load balancer is still draining');
    drainingUntil = Date.now();

    const complete = await eventually(() => first('CompleteLifecycleAction'), 15_000, 'the lifecycle action completed');
    assert.equal(complete.params.get('LifecycleActionResult'), 'CONTINUE');
    assert.equal(complete.params.get('AutoScalingGroupName'), 'nodes-a');
    assert.equal(complete.params.get('LifecycleHookName'), 'drain-first');
    assert.equal(complete.params.get('InstanceId'), world.node.id);
    assert.deepEqual(new Set([...all('RecordLifecycleActionHeartbeat'), ...all('CompleteLifecycleAction')].map((call) => call.params.get('LifecycleHookName'))), new Set(['drain-first']), "EKS's hook is never touched");
    const lastOut = Math.max(...agent.logs().filter((event) => event.msg === 'out').map((event) => Date.parse(event.time)));
    assert.ok(complete.at >= lastOut, 'completed after the last load balancer was seen out');
    assert.equal(all('CompleteLifecycleAction').length, 1);

    const status = (await (await agent.fetch(`/drain/${world.node.id}`, { headers: { authorization: `Bearer ${SECRET}` } })).json()) as DrainStatus;
    assert.equal(status.trigger, 'asg-termination');
    assert.equal(status.state, 'deregistered');
    assert.equal(status.lifecycleAction?.outcome, 'completed');
    assert.ok(status.lifecycleAction!.heartbeats >= 2);
  });

  test('completes even when the drain times out, and says so', async () => {
    const agent = await startAgent({ ASG_LIFECYCLE_HOOK: 'drain-first', DRAIN_TIMEOUT: '3' });
    drainingUntil = Date.now() + 1e9; // never out
    imds.set('meta-data/autoscaling/target-lifecycle-state', 'Terminated');
    const complete = await eventually(() => first('CompleteLifecycleAction'), 15_000, 'the lifecycle action completed');
    assert.equal(complete.params.get('LifecycleActionResult'), 'CONTINUE');
    const status = (await (await agent.fetch(`/drain/${world.node.id}`, { headers: { authorization: `Bearer ${SECRET}` } })).json()) as DrainStatus;
    assert.equal(status.state, 'timed_out');
    assert.equal(status.lifecycleAction?.outcome, 'completed');
  });

  test('POST /drain?asg=true does the same for any instance; ASG_LIFECYCLE_HOOK=off leaves hooks alone', async () => {
    const agent = await startAgent();
    const answer = await agent.fetch(`/drain?id=${world.node.id}&asg=true&wait=true&pw=${SECRET}`, { method: 'POST' });
    assert.equal(answer.status, 200);
    assert.equal(((await answer.json()) as DrainStatus).lifecycleAction?.outcome, 'completed');
    assert.equal(all('CompleteLifecycleAction').length, 1);

    await killAllAgents();
    proxy.calls.length = 0;
    const off = await startAgent({ ASG_LIFECYCLE_HOOK: 'off' });
    imds.set('meta-data/autoscaling/target-lifecycle-state', 'Terminated');
    await eventually(() => off.logs().some((event) => event.msg === 'drain deregistered'), 15_000, 'the drain finished');
    assert.equal(all('DescribeLifecycleHooks').length + all('CompleteLifecycleAction').length, 0);

    // Asked to hold an instance with no hook to hold it by: refused, saying what to set, nothing drained.
    const deregistrationsBefore = proxy.calls.filter((call) => call.action.startsWith('Deregister')).length;
    const refused = await off.fetch(`/drain?id=${world.neighbour.id}&asg=true&pw=${SECRET}`, { method: 'POST' });
    assert.equal(refused.status, 400);
    assert.match(((await refused.json()) as { error: string }).error, /asg=true .*ASG_LIFECYCLE_HOOK names no hook: set it to the name of the hook/);
    assert.equal(proxy.calls.filter((call) => call.action.startsWith('Deregister')).length, deregistrationsBefore);
  });

  test("no hook named, a group holding only EKS's Terminate-LC-Hook: the drain runs, no lifecycle call at all", async () => {
    await removeOurHook();
    proxy.calls.length = 0;
    const agent = await startAgent({});
    imds.set('meta-data/autoscaling/target-lifecycle-state', 'Terminated');
    await eventually(() => agent.logs().some((event) => event.msg === 'drain deregistered'), 15_000, 'the drain finished');
    assert.deepEqual(proxy.calls.filter((call) => call.service === 'autoscaling').map((call) => call.action), []);
    const status = (await (await agent.fetch(`/drain/${world.node.id}`, { headers: { authorization: `Bearer ${SECRET}` } })).json()) as DrainStatus;
    assert.equal(status.trigger, 'asg-termination');
    assert.equal(status.lifecycleAction, undefined);
  });
});

function inGroup(instanceId: string, group: string): string {
  return `<DescribeAutoScalingInstancesResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><DescribeAutoScalingInstancesResult><AutoScalingInstances><member><InstanceId>${instanceId}</InstanceId><AutoScalingGroupName>${group}</AutoScalingGroupName><AvailabilityZone>${REGION}a</AvailabilityZone><LifecycleState>Terminating:Wait</LifecycleState><HealthStatus>HEALTHY</HealthStatus><ProtectedFromScaleIn>false</ProtectedFromScaleIn></member></AutoScalingInstances></DescribeAutoScalingInstancesResult><ResponseMetadata><RequestId>proxy</RequestId></ResponseMetadata></DescribeAutoScalingInstancesResponse>`;
}

function inProgress(instanceId: string): string {
  return `<DescribeInstanceHealthResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2012-06-01/"><DescribeInstanceHealthResult><InstanceStates><member><InstanceId>${instanceId}</InstanceId><State>InService</State><ReasonCode>N/A</ReasonCode><Description>Instance deregistration currently in progress.</Description></member></InstanceStates></DescribeInstanceHealthResult><ResponseMetadata><RequestId>proxy</RequestId></ResponseMetadata></DescribeInstanceHealthResponse>`;
}
