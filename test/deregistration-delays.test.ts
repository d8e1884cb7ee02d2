/**
 * DeregistrationDelays on mocked ELB clients (aws-sdk-client-mock): what it reads at each refresh of the
 * inventory, when it warns, and what it forgets. Against moto, end to end: holding.e2e.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DescribeLoadBalancerAttributesCommand, ElasticLoadBalancingClient } from '@aws-sdk/client-elastic-load-balancing';
import { DescribeTargetGroupAttributesCommand, ElasticLoadBalancingV2Client, type TargetGroup } from '@aws-sdk/client-elastic-load-balancing-v2';
import { mockClient } from 'aws-sdk-client-mock';
import { DeregistrationDelays, REREAD_MS, type DeregistrationDelay } from '../agent/aws/deregistration-delays.ts';
import type { Inventory } from '../agent/aws/inventory.ts';
import { silentLogger } from '../agent/log.ts';

const VPC = 'vpc-0123456789abcdef0';
const arn = (name: string) => `arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/${name}/0123456789abcdef`;

function inventory(groups: string[], classic: string[] = []): Inventory {
  const described = new Map<string, TargetGroup>(groups.map((name) => [arn(name), { TargetGroupArn: arn(name), TargetGroupName: name, VpcId: VPC }]));
  return { classic: new Map(classic.map((name) => [name, { arn: `arn:classic/${name}`, tags: {} }])), loadBalancers: new Map(), targetGroups: new Map(), groups: described };
}

function setUp(seconds: Record<string, number | undefined>) {
  const config = { region: 'us-east-1', credentials: { accessKeyId: 'test', secretAccessKey: 'test' } };
  const elb = new ElasticLoadBalancingClient(config);
  const elbv2 = new ElasticLoadBalancingV2Client(config);
  const v2 = mockClient(elbv2);
  v2.on(DescribeTargetGroupAttributesCommand).callsFake((input: { TargetGroupArn: string }) => {
    const value = seconds[input.TargetGroupArn.split('/')[1]!];
    // Deleted since the inventory found it, as ELBv2 says so.
    if (value === undefined) throw Object.assign(new Error('One or more target groups not found'), { name: 'TargetGroupNotFoundException', Code: 'TargetGroupNotFound' });
    return { Attributes: [{ Key: 'deregistration_delay.timeout_seconds', Value: String(value) }] };
  });
  const classic = mockClient(elb);
  classic.on(DescribeLoadBalancerAttributesCommand).resolves({ LoadBalancerAttributes: { ConnectionDraining: { Enabled: true, Timeout: 20 } } });
  let now = 0;
  const warned: DeregistrationDelay[] = [];
  let published: readonly DeregistrationDelay[] = [];
  const delays = new DeregistrationDelays({ elb: async () => elb, elbv2: async () => elbv2 }, VPC, silentLogger(), { tooLong: (delay) => warned.push(delay), read: (all) => (published = all) }, () => now);
  const reads = () => v2.commandCalls(DescribeTargetGroupAttributesCommand).length + classic.commandCalls(DescribeLoadBalancerAttributesCommand).length;
  return { delays, warned, published: () => published, reads, later: (ms: number) => (now += ms) };
}

describe('DeregistrationDelays', () => {
  it('reads each load balancer when it first appears, then again only after REREAD_MS: refreshes in between cost nothing', async () => {
    const seconds = { web: 300, api: 30 };
    const { delays, reads, later, warned } = setUp(seconds);
    await delays.refresh(inventory(['web', 'api'], ['clb-web']), AbortSignal.timeout(5_000));
    assert.equal(reads(), 3);
    assert.equal(delays.of(arn('web'))?.seconds, 300);
    assert.equal(delays.of('clb-web')?.seconds, 20);
    assert.deepEqual(warned.map((delay) => delay.name), ['web'], 'one warning, for the delay a spot notice cannot wait out');

    later(30 * 60_000);
    await delays.refresh(inventory(['web', 'api', 'new'], ['clb-web']), AbortSignal.timeout(5_000));
    assert.equal(reads(), 4, 'only the new target group');

    seconds.web = 600;
    later(REREAD_MS);
    await delays.refresh(inventory(['web', 'api', 'new'], ['clb-web']), AbortSignal.timeout(5_000));
    assert.equal(reads(), 8, 'all of them, once their reading is old');
    assert.deepEqual(warned.map((delay) => `${delay.name} ${delay.seconds}`), ['web 300', 'web 600'], 'warned again when it changed');
  });

  it('a target group deleted since the inventory found it has no delay; the others are read all the same', async () => {
    const { delays, published } = setUp({ web: 30 });
    await delays.refresh(inventory(['web', 'gone']), AbortSignal.timeout(5_000));
    assert.equal(delays.of(arn('gone')), undefined);
    assert.deepEqual(published(), [{ name: 'web', seconds: 30 }]);
  });

  it('forgets the load balancers the inventory no longer holds, and publishes what it holds', async () => {
    const { delays, published } = setUp({ web: 30, api: 30 });
    await delays.refresh(inventory(['web', 'api']), AbortSignal.timeout(5_000));
    await delays.refresh(inventory(['web']), AbortSignal.timeout(5_000));
    assert.equal(delays.of(arn('api')), undefined);
    assert.deepEqual(published(), [{ name: 'web', seconds: 30 }]);
  });
});
