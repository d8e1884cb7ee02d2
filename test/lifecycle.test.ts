/**
 * Auto Scaling termination held by the group's lifecycle hook while the drain runs.
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
  DescribeLifecycleHooksCommand,
  PutLifecycleHookCommand,
  RecordLifecycleActionHeartbeatCommand,
} from '@aws-sdk/client-auto-scaling';
import { CreateLaunchTemplateCommand, CreateTagsCommand } from '@aws-sdk/client-ec2';
import { mockClient } from 'aws-sdk-client-mock';
import { LifecycleHolder, type HookSetting } from '../agent/aws/lifecycle.ts';
import type { Instance } from '../agent/drain/instance.ts';
import type { DrainStatus } from '../agent/drain/status.ts';
import { silentLogger } from '../agent/log.ts';
import { startAwsProxy, type AwsProxy } from './fakes/aws-proxy.ts';
import { startFakeImds, type FakeImds } from './fakes/imds.ts';
import { awsClients, REGION, seedWorld, type World } from './fixtures/world.ts';
import { eventually, killAllAgents, spawnAgent, waitReady } from './helpers/agent-harness.ts';
import { freePort, startMoto, type Moto } from './helpers/moto.ts';

const instance = (tags: Record<string, string>): Instance => ({ id: 'i-0123456789abcdef0', vpcId: 'vpc-01234567', privateIps: [], ipv4Prefixes: [], ipv6Addresses: [], ipv6Prefixes: [], tags });
const GROUP = { 'aws:autoscaling:groupName': 'nodes-a' };
const drained = (state: DrainStatus['state']) => ({ state }) as DrainStatus;
const noActiveAction = () => Object.assign(new Error('No active Lifecycle Action found with instance ID i-0123456789abcdef0'), { name: 'ValidationError' });

describe('LifecycleHolder (Auto Scaling client mocked)', () => {
  const autoscaling = mockClient(AutoScalingClient);
  const holder = (setting: HookSetting = { kind: 'auto' }) => new LifecycleHolder(new AutoScalingClient({ region: REGION }), setting, silentLogger());
  beforeEach(() => autoscaling.reset());
  // mockClient(Class) patches every instance's send: the end-to-end suite below needs the real one.
  after(() => autoscaling.restore());

  test('finds the group\'s termination hook; ignores launch hooks', async () => {
    autoscaling.on(DescribeLifecycleHooksCommand).resolves({
      LifecycleHooks: [
        { LifecycleHookName: 'on-launch', LifecycleTransition: 'autoscaling:EC2_INSTANCE_LAUNCHING', HeartbeatTimeout: 60 },
        { LifecycleHookName: 'drain', LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING', HeartbeatTimeout: 90 },
      ],
    });
    assert.deepEqual(await holder().hookFor(instance(GROUP), AbortSignal.timeout(1000)), { group: 'nodes-a', hook: 'drain', heartbeatTimeoutSeconds: 90 });
    assert.equal(autoscaling.commandCalls(DescribeLifecycleHooksCommand)[0]!.args[0].input.AutoScalingGroupName, 'nodes-a');
  });

  test('holds nothing when turned off, or for an instance of no group', async () => {
    assert.equal(await holder({ kind: 'off' }).hookFor(instance(GROUP), AbortSignal.timeout(1000)), undefined);
    assert.equal(await holder().hookFor(instance({}), AbortSignal.timeout(1000)), undefined);
    assert.equal(autoscaling.calls().length, 0);
  });

  test('a named hook is asked for by name', async () => {
    autoscaling.on(DescribeLifecycleHooksCommand).resolves({ LifecycleHooks: [] });
    assert.equal(await holder({ kind: 'named', name: 'mine' }).hookFor(instance(GROUP), AbortSignal.timeout(1000)), undefined);
    assert.deepEqual(autoscaling.commandCalls(DescribeLifecycleHooksCommand)[0]!.args[0].input.LifecycleHookNames, ['mine']);
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
    // A short heartbeat timeout (real AWS allows 30 s at least), so a heartbeat falls inside the test.
    await autoscaling.send(
      new PutLifecycleHookCommand({ AutoScalingGroupName: 'nodes-a', LifecycleHookName: 'drain-first', LifecycleTransition: 'autoscaling:EC2_INSTANCE_TERMINATING', HeartbeatTimeout: 2 }),
    );
    await aws.ec2.send(new CreateTagsCommand({ Resources: [world.node.id], Tags: [{ Key: 'aws:autoscaling:groupName', Value: 'nodes-a' }] }));

    drainingUntil = undefined;
    const ok = (action: string) => `<${action}Response xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><${action}Result/><ResponseMetadata><RequestId>proxy</RequestId></ResponseMetadata></${action}Response>`;
    proxy.addFault((call) => (call.service === 'autoscaling' && ['RecordLifecycleActionHeartbeat', 'CompleteLifecycleAction'].includes(call.action) ? { kind: 'respond', status: 200, body: ok(call.action) } : undefined));
    proxy.addFault((call) => {
      if (call.action !== 'DescribeInstanceHealth' || call.params.get('LoadBalancerName') !== world.classic.tagged || drainingUntil === undefined || Date.now() >= drainingUntil) return undefined;
      return { kind: 'respond', status: 200, body: inProgress(world.node.id) };
    });
    proxy.calls.length = 0;
    imds = await startFakeImds({ instanceId: world.node.id, region: REGION, vpcId: world.clusterVpc, privateIp: world.node.ip });
    imds.set('meta-data/autoscaling/target-lifecycle-state', 'InService');
  });
  afterEach(async () => {
    await killAllAgents();
    await imds.close();
  });

  const startAgent = async (extra: Record<string, string> = {}) => {
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
    const agent = await startAgent({ DRAIN_TIMEOUT: '3' });
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
  });
});

function inProgress(instanceId: string): string {
  return `<DescribeInstanceHealthResponse xmlns="http://elasticloadbalancing.amazonaws.com/doc/2012-06-01/"><DescribeInstanceHealthResult><InstanceStates><member><InstanceId>${instanceId}</InstanceId><State>InService</State><ReasonCode>N/A</ReasonCode><Description>Instance deregistration currently in progress.</Description></member></InstanceStates></DescribeInstanceHealthResult><ResponseMetadata><RequestId>proxy</RequestId></ResponseMetadata></DescribeInstanceHealthResponse>`;
}
