/**
 * The drain engine against a real moto server, through the built one-shot command, exactly as a user
 * runs it: the instance leaves exactly the in-scope load balancers and nothing else is touched.
 * (Draining delays, throttling and failures, which moto cannot show, are in drain.mock.test.ts.)
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import { awsClients, CLUSTER, createClassic, createGroup, REGION, registrations, seedWorld, type World } from './fixtures/world.ts';
import { startAwsProxy, type AwsProxy } from './fakes/aws-proxy.ts';
import { startMoto, type Moto } from './helpers/moto.ts';
import { cleanEnv, MAIN, runMain } from './helpers/run.ts';
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DrainStatus } from '../agent/drain/status.ts';

let moto: Moto;
let proxy: AwsProxy;
let world: World;

/** Real AWS refuses DescribeTags with more than 20 names or ARNs; moto does not, so the proxy does. */
function enforceDescribeTagsLimit(): void {
  proxy.addFault((call) => {
    if (call.action !== 'DescribeTags') return undefined;
    const names = [...call.params.keys()].filter((key) => /^(LoadBalancerNames|ResourceArns)\.member\.\d+$/.test(key));
    return names.length > 20 ? { kind: 'error', status: 400, code: 'ValidationError', message: 'too many names (limit 20)' } : undefined;
  });
}

function env(extra: Record<string, string> = {}) {
  return cleanEnv({ AWS_ENDPOINT_URL: proxy.url, AWS_REGION: REGION, VPCID: world.clusterVpc, CLUSTERNAME: CLUSTER, ...extra });
}

async function drain(args: string[], extra: Record<string, string> = {}) {
  const result = await runMain(['drain', ...args], env(extra));
  const status = result.stdout.trim() ? (JSON.parse(result.stdout) as DrainStatus) : undefined;
  return { ...result, status };
}

const NOT_IN_SCOPE = (w: World) => [
  `clb:${w.classic.untagged}:${w.node.id}`,
  `clb:${w.classic.otherCluster}:${w.node.id}`,
  `tg:untagged:${w.node.id}:30081`,
  `tg:otherCluster:${w.node.id}:30082`,
];
const NEIGHBOURS = (w: World) => [
  `clb:${w.classic.tagged}:${w.neighbour.id}`,
  `tg:viaTaggedAlb:${w.neighbour.id}:30080`,
  `tg:taggedIp:${w.neighbour.ip}:8080`,
  `clb:${w.classic.otherVpc}:${w.foreignNode.id}`,
  `tg:otherVpc:${w.foreignNode.id}:30080`,
];

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
  proxy.calls.length = 0;
  world = await seedWorld(moto.url);
  enforceDescribeTagsLimit();
  proxy.calls.length = 0;
});

describe('hasta-la-vista drain against moto', () => {
  test('takes the instance out of exactly the cluster-tagged load balancers of its VPC', async () => {
    const { code, status, stderr } = await drain(['--id', world.node.id]);
    assert.equal(code, 0, stderr);
    assert.equal(status?.state, 'deregistered');
    assert.equal(status?.instanceId, world.node.id);
    assert.equal(status?.trigger, 'cli');
    assert.equal(status?.scope, 'all');
    assert.ok(status?.finishedAt);

    const summary = status!.loadBalancers.map((lb) => `${lb.family}:${String(lb.name ?? lb.arn)}:${lb.state}`).sort();
    assert.deepEqual(summary, [
      `classic:${world.classic.readmeTagged}:out`,
      `classic:${world.classic.tagged}:out`,
      `target-group:${world.groups.taggedIp}:out`,
      `target-group:${world.groups.viaTaggedAlb}:out`,
    ].sort());
    const ipGroup = status!.loadBalancers.find((lb) => lb.arn === world.groups.taggedIp);
    assert.deepEqual(ipGroup?.targets, [{ id: world.node.secondaryIp, port: 8080 }]);

    const left = await registrations(moto.url, world);
    for (const kept of [...NOT_IN_SCOPE(world), ...NEIGHBOURS(world)]) assert.ok(left.has(kept), `${kept} must stay registered`);
    for (const gone of [`clb:${world.classic.tagged}:${world.node.id}`, `clb:${world.classic.readmeTagged}:${world.node.id}`, `tg:viaTaggedAlb:${world.node.id}:30080`, `tg:taggedIp:${world.node.secondaryIp}:8080`]) {
      assert.ok(!left.has(gone), `${gone} must be deregistered`);
    }
    // Only the in-scope load balancers were asked to let go.
    const deregistered = proxy.calls
      .filter((call) => call.action.startsWith('Deregister'))
      .map((call) => call.params.get('LoadBalancerName') ?? call.params.get('TargetGroupArn'))
      .sort();
    assert.deepEqual(deregistered, [world.classic.readmeTagged, world.classic.tagged, world.groups.taggedIp, world.groups.viaTaggedAlb].sort());
    assert.equal(status!.awsCalls.DeregisterTargets, 2);
    assert.equal(status!.awsCalls.DeregisterInstancesFromLoadBalancer, 2);
  });

  test('finds the instance by a secondary private IP', async () => {
    const { code, status, stderr } = await drain(['--ip', world.node.secondaryIp]);
    assert.equal(code, 0, stderr);
    assert.equal(status?.instanceId, world.node.id);
    assert.equal(status?.loadBalancers.length, 4);
  });

  test('finds the instance by its primary IP', async () => {
    const { code, status } = await drain(['--ip', world.node.ip]);
    assert.equal(code, 0);
    assert.equal(status?.instanceId, world.node.id);
  });

  test('an unknown instance, or one of another VPC, exits 4 and changes nothing', async () => {
    for (const args of [['--id', 'i-0123456789abcdef0'], ['--id', world.foreignNode.id], ['--ip', '10.0.9.9']]) {
      const before = await registrations(moto.url, world);
      const { code, stdout, stderr } = await drain(args);
      assert.equal(code, 4, `${args.join(' ')}: ${stderr}`);
      assert.equal((JSON.parse(stdout) as { error?: { code: string } }).error?.code, 'not_found');
      assert.match(stderr, new RegExp(`not found in ${world.clusterVpc}|no instance in ${world.clusterVpc}`));
      assert.deepEqual(await registrations(moto.url, world), before);
    }
  });

  test('a dry run reports what it would do and changes nothing', async () => {
    const before = await registrations(moto.url, world);
    const { code, status } = await drain(['--id', world.node.id, '--dry-run']);
    assert.equal(code, 0);
    assert.equal(status?.state, 'skipped');
    assert.equal(status?.dryRun, true);
    assert.equal(status?.loadBalancers.length, 4);
    assert.deepEqual(await registrations(moto.url, world), before);
    assert.equal(proxy.calls.filter((call) => call.action.startsWith('Deregister')).length, 0);
  });

  test('DRY_RUN=true in the environment changes nothing either', async () => {
    const { code, status } = await drain(['--id', world.node.id], { DRY_RUN: 'true' });
    assert.equal(code, 0);
    assert.equal(status?.state, 'skipped');
    assert.equal(proxy.calls.filter((call) => call.action.startsWith('Deregister')).length, 0);
  });

  test('an instance in no load balancer is already out: deregistered, nothing called', async () => {
    const { code, status } = await drain(['--id', world.neighbour.id, '--service', 'nobody/here']);
    assert.equal(code, 0);
    assert.equal(status?.state, 'deregistered');
    assert.equal(status?.scope, 'service:nobody/here');
    assert.deepEqual(status?.loadBalancers, []);
  });

  test('draining twice is harmless: the second run finds nothing left', async () => {
    assert.equal((await drain(['--id', world.node.id])).code, 0);
    const second = await drain(['--id', world.node.id]);
    assert.equal(second.code, 0);
    assert.deepEqual(second.status?.loadBalancers, []);
  });

  test('discovery costs a few calls whatever the region holds: no describe of untagged load balancers', async () => {
    await drain(['--id', world.node.id]);
    assert.equal(proxy.count('GetResources', 'tagging'), 3);
    assert.equal(proxy.count('DescribeTags'), 0);
    // classic membership from DescribeLoadBalancers of the in-scope names only
    for (const call of proxy.calls.filter((c) => c.service === 'elb' && c.action === 'DescribeLoadBalancers')) {
      const names = [...call.params.entries()].filter(([key]) => key.startsWith('LoadBalancerNames.member')).map(([, value]) => value);
      assert.ok(names.length > 0, 'never a describe of every classic load balancer');
      // cluster-tagged ones only (the one in the other VPC is described to learn its VPC)
      for (const name of names) assert.ok([world.classic.tagged, world.classic.readmeTagged, world.classic.otherVpc].includes(name), name);
      assert.ok(!names.includes(world.classic.untagged) && !names.includes(world.classic.otherCluster));
    }
  });
});

describe('interrupted', () => {
  test('Ctrl-C ends the drain where it is: exit 130, the status says interrupted and what is not yet out', async () => {
    proxy.addFault((call) => (call.action === 'DeregisterTargets' ? { kind: 'hang' } : undefined));
    const child = spawn(process.execPath, [MAIN, 'drain', '--id', world.node.id], { env: env(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    // Once discovery is over (both in-scope target groups' deregistrations under way, and hanging; both
    // classic ones asked), interrupt: what is not yet out is then known, not still being listed.
    const underWay = () => proxy.count('DeregisterTargets') >= 2 && proxy.count('DeregisterInstancesFromLoadBalancer') >= 2;
    for (let i = 0; i < 100 && !underWay(); i++) await sleep(100);
    assert.ok(underWay(), 'the drain reached every in-scope load balancer');
    child.kill('SIGINT');
    assert.equal(await exited, 130);
    const status = JSON.parse(stdout) as DrainStatus;
    assert.equal(status.state, 'failed');
    assert.match(String(status.reason), /^interrupted: the agent stopped the drain with [2-4] load balancer\(s\) not yet out/);
    // the hung target groups are reported as still draining, never as out
    for (const lb of status.loadBalancers.filter((entry) => entry.family === 'target-group')) assert.equal(lb.state, 'draining');
  });
});

describe('without the tagging API', () => {
  test('falls back to describing and reading tags 20 at a time, over pages of 400, and still finds every one', async () => {
    proxy.addFault((call) => (call.action === 'GetResources' ? { kind: 'error', status: 400, code: 'AccessDeniedException', message: 'not allowed' } : undefined));
    const aws = awsClients(moto.url);
    // 430 classic ELBs (two pages of 400), 25 of them cluster-tagged with the node registered.
    const tagged: string[] = [];
    for (let i = 0; i < 430; i++) {
      const name = `bulk-${i}`;
      const isTagged = i % 17 === 0;
      await createClassic(aws, name, world.subnets, isTagged ? [{ Key: `kubernetes.io/cluster/${CLUSTER}`, Value: 'owned' }] : [{ Key: 'x', Value: 'y' }], isTagged ? [world.node.id] : []);
      if (isTagged) tagged.push(name);
    }
    // and 25 tagged target groups holding the node
    for (let i = 0; i < 25; i++) {
      await createGroup(aws, `bulk-tg-${i}`, world.clusterVpc, 'instance', [{ Key: 'elbv2.k8s.aws/cluster', Value: CLUSTER }], [{ Id: world.node.id, Port: 31000 + i }]);
    }
    proxy.calls.length = 0;

    const { code, status, stderr } = await drain(['--id', world.node.id]);
    assert.equal(code, 0, stderr);
    assert.ok(tagged.length > 20 && tagged.length < 30);
    const classicOut = status!.loadBalancers.filter((lb) => lb.family === 'classic').map((lb) => lb.name);
    for (const name of tagged) assert.ok(classicOut.includes(name), `${name} drained`);
    assert.equal(status!.loadBalancers.filter((lb) => lb.family === 'target-group').length, 25 + 2);
    assert.ok(proxy.count('DescribeTags', 'elb') >= 2, 'classic tags read in chunks');
    assert.ok(proxy.count('DescribeTags', 'elbv2') >= 2, 'ELBv2 tags read in chunks');
    assert.ok(proxy.count('DescribeLoadBalancers', 'elb') >= 2, 'paged through 430 classic load balancers');
    assert.match(stderr, /tag:GetResources is denied/);
  });
});
