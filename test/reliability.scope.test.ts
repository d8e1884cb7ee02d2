/**
 * Scope safety: no input, configuration or AWS answer makes the agent deregister from a load balancer
 * outside VPCID or without the cluster tag, or deregister another instance than the one asked for;
 * DRY_RUN changes nothing. The proxy's call log is the witness: every Deregister* that reached "AWS".
 *
 * The property runs the real Drainer with the real load balancer families in process, against moto
 * through the proxy, over random worlds: load balancers and target groups in either VPC, with every
 * kind of tag (the three cluster keys, other clusters, a cluster whose name extends ours, Service
 * tags, none), holding the node, its neighbour, or both, drained with a random scope and dry run.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import fc from 'fast-check';
import { CreateSubnetCommand, CreateVpcCommand, RunInstancesCommand } from '@aws-sdk/client-ec2';
import { DescribeLoadBalancersCommand as DescribeClassicCommand } from '@aws-sdk/client-elastic-load-balancing';
import { CreateLoadBalancerCommand, DescribeTargetHealthCommand } from '@aws-sdk/client-elastic-load-balancing-v2';
import { createAwsClients } from '../agent/aws/clients.ts';
import { ClassicFamily } from '../agent/aws/classic.ts';
import { Ec2InstanceLookup } from '../agent/aws/instances.ts';
import { TaggedInventory } from '../agent/aws/inventory.ts';
import { TargetGroupFamily } from '../agent/aws/target-groups.ts';
import { Drainer } from '../agent/drain/drainer.ts';
import type { Scope } from '../agent/drain/family.ts';
import type { DrainStatus } from '../agent/drain/status.ts';
import { silentLogger } from '../agent/log.ts';
import { awsClients, CLUSTER, createClassic, createGroup, REGION } from './fixtures/world.ts';
import { deregisteredIds, deregisterTarget, finished, isDeregister, record, Rig, SECRET, neighbourInScope } from './helpers/reliability-rig.ts';
import { cleanEnv, runMain } from './helpers/run.ts';

const rig = new Rig();
before(() => rig.open());
after(() => rig.close());

const RUNS = Number(process.env.RELIABILITY_SCOPE_RUNS ?? 40);

// ---- random worlds

type TagChoice = 'k8s' | 'k8s-shared' | 'lbc' | 'lbc-other' | 'legacy' | 'other-cluster' | 'longer-name' | 'service' | 'none';
const TAGS: Record<TagChoice, { Key: string; Value: string }[]> = {
  k8s: [{ Key: `kubernetes.io/cluster/${CLUSTER}`, Value: 'owned' }],
  'k8s-shared': [{ Key: `kubernetes.io/cluster/${CLUSTER}`, Value: '' }],
  lbc: [{ Key: 'elbv2.k8s.aws/cluster', Value: CLUSTER }],
  'lbc-other': [{ Key: 'elbv2.k8s.aws/cluster', Value: `${CLUSTER}x` }],
  legacy: [{ Key: `kubernetes/cluster/${CLUSTER}`, Value: 'owned' }],
  'other-cluster': [{ Key: 'kubernetes.io/cluster/other', Value: 'owned' }],
  'longer-name': [{ Key: `kubernetes.io/cluster/${CLUSTER}-2`, Value: 'owned' }],
  service: [{ Key: 'kubernetes.io/service-name', Value: 'web/front' }],
  none: [],
};

interface LbSpec {
  readonly otherVpc: boolean;
  readonly tags: TagChoice[];
  readonly service: boolean;
  readonly members: { node: boolean; neighbour: boolean };
}
interface GroupSpec extends LbSpec {
  readonly type: 'instance' | 'ip';
  /** Behind an ALB with these tags, or on its own. */
  readonly alb: { tags: TagChoice[]; service: boolean } | undefined;
}

const tagChoice = fc.constantFrom<TagChoice>('k8s', 'k8s-shared', 'lbc', 'lbc-other', 'legacy', 'other-cluster', 'longer-name', 'none');
const tagSet = fc.uniqueArray(tagChoice, { maxLength: 2 });
/** Biased towards worlds where the drain has work to do, so the property is not mostly vacuous. */
const often = fc.constantFrom(true, true, true, false);
const sometimes = fc.constantFrom(false, false, false, true);
const members = fc.record({ node: often, neighbour: fc.boolean() });
const lbSpec: fc.Arbitrary<LbSpec> = fc.record({ otherVpc: sometimes, tags: tagSet, service: fc.boolean(), members });
const groupSpec: fc.Arbitrary<GroupSpec> = fc.record({
  otherVpc: sometimes,
  tags: tagSet,
  service: fc.boolean(),
  members,
  type: fc.constantFrom<'instance' | 'ip'>('instance', 'ip'),
  alb: fc.option(fc.record({ tags: tagSet, service: fc.boolean() }), { nil: undefined }),
});
const worldSpec = fc.record({
  classic: fc.array(lbSpec, { minLength: 1, maxLength: 4 }),
  groups: fc.array(groupSpec, { minLength: 1, maxLength: 4 }),
  scope: fc.constantFrom<Scope>({ kind: 'all' }, { kind: 'all' }, { kind: 'service', namespace: 'web', name: 'front' }),
  dryRun: sometimes,
  byIp: fc.boolean(),
});
type WorldSpec = typeof worldSpec extends fc.Arbitrary<infer T> ? T : never;

/** The tags as AWS keeps them: one value per key, the last given. */
const tagsOf = (tags: TagChoice[], service: boolean) => [
  ...new Map([...tags.flatMap((tag) => TAGS[tag]), ...(service ? TAGS.service : [])].map((tag) => [tag.Key, tag] as const)).values(),
];
/** The README's rule, on the tags as stored. */
const inCluster = (choices: TagChoice[]) =>
  tagsOf(choices, false).some(
    (tag) => tag.Key === `kubernetes.io/cluster/${CLUSTER}` || tag.Key === `kubernetes/cluster/${CLUSTER}` || (tag.Key === 'elbv2.k8s.aws/cluster' && tag.Value === CLUSTER),
  );

interface Built {
  readonly node: { id: string; ip: string };
  readonly neighbour: { id: string; ip: string };
  readonly clusterVpc: string;
  /** Every membership as "clb:<name>:<id>" or "tg:<arn>:<id>:<port>". */
  readonly all: Set<string>;
  /** The node's memberships the drain may remove (the oracle). */
  readonly expected: Set<string>;
  /** Load balancer names and target group ARNs the drain may name. */
  readonly allowedTargets: Set<string>;
}

async function build(spec: WorldSpec, run: number): Promise<Built> {
  const aws = awsClients(rig.moto.url);
  const vpc = async (cidr: string) => (await aws.ec2.send(new CreateVpcCommand({ CidrBlock: cidr }))).Vpc!.VpcId!;
  const subnet = async (VpcId: string, CidrBlock: string, AvailabilityZone: string) =>
    (await aws.ec2.send(new CreateSubnetCommand({ VpcId, CidrBlock, AvailabilityZone }))).Subnet!.SubnetId!;
  const clusterVpc = await vpc('10.0.0.0/16');
  const otherVpc = await vpc('10.1.0.0/16');
  const subnets = { cluster: [await subnet(clusterVpc, '10.0.1.0/24', 'us-east-1a'), await subnet(clusterVpc, '10.0.2.0/24', 'us-east-1b')], other: [await subnet(otherVpc, '10.1.1.0/24', 'us-east-1a'), await subnet(otherVpc, '10.1.2.0/24', 'us-east-1b')] };
  const launch = async () => {
    const instance = (await aws.ec2.send(new RunInstancesCommand({ ImageId: 'ami-12c6146b', MinCount: 1, MaxCount: 1, SubnetId: subnets.cluster[0] }))).Instances![0]!;
    return { id: instance.InstanceId!, ip: instance.PrivateIpAddress! };
  };
  const node = await launch();
  const neighbour = await launch();
  const all = new Set<string>();
  const expected = new Set<string>();
  const allowedTargets = new Set<string>();
  const wanted = (tags: { Key: string; Value: string }[]) => spec.scope.kind === 'all' || tags.some((t) => t.Key === 'kubernetes.io/service-name' && t.Value === 'web/front');

  for (const [i, lb] of spec.classic.entries()) {
    const name = `clb-${run}-${i}`;
    const ids = [...(lb.members.node ? [node.id] : []), ...(lb.members.neighbour ? [neighbour.id] : [])];
    const tags = tagsOf(lb.tags, lb.service);
    await createClassic(aws, name, lb.otherVpc ? subnets.other : subnets.cluster, tags, ids);
    for (const id of ids) all.add(`clb:${name}:${id}`);
    const eligible = !lb.otherVpc && inCluster(lb.tags) && wanted(tags);
    if (eligible) allowedTargets.add(name);
    if (eligible && lb.members.node) expected.add(`clb:${name}:${node.id}`);
  }
  for (const [i, group] of spec.groups.entries()) {
    const vpcId = group.otherVpc ? otherVpc : clusterVpc;
    let albArn: string | undefined;
    const albTags = group.alb ? tagsOf(group.alb.tags, group.alb.service) : [];
    if (group.alb) {
      albArn = (await aws.elbv2.send(new CreateLoadBalancerCommand({ Name: `alb-${run}-${i}`, Subnets: group.otherVpc ? subnets.other : subnets.cluster, Tags: albTags.length ? albTags : undefined })))
        .LoadBalancers![0]!.LoadBalancerArn!;
    }
    const id = (who: { id: string; ip: string }) => (group.type === 'instance' ? who.id : who.ip);
    const targets = [...(group.members.node ? [{ Id: id(node), Port: 30000 + i }] : []), ...(group.members.neighbour ? [{ Id: id(neighbour), Port: 30000 + i }] : [])];
    const tags = tagsOf(group.tags, group.service);
    const arn = await createGroup(aws, `tg-${run}-${i}`, vpcId, group.type, tags, targets, albArn);
    for (const target of targets) all.add(`tg:${arn}:${target.Id}:${target.Port}`);
    // In the cluster through its own tag or its load balancer's; in a Service's scope when a cluster-tagged one of the two carries the Service tag.
    const eligible = !group.otherVpc && ((inCluster(group.tags) && wanted(tags)) || (group.alb !== undefined && inCluster(group.alb.tags) && wanted(albTags)));
    if (eligible) allowedTargets.add(arn);
    if (eligible && group.members.node) expected.add(`tg:${arn}:${id(node)}:${30000 + i}`);
  }
  return { node, neighbour, clusterVpc, all, expected, allowedTargets };
}

/** Every membership of the built world, as moto has it now. */
async function current(built: Built): Promise<Set<string>> {
  const aws = awsClients(rig.moto.url);
  const seen = new Set<string>();
  const names = new Set([...built.all].filter((m) => m.startsWith('clb:')).map((m) => m.split(':')[1]!));
  const arns = new Set([...built.all].filter((m) => m.startsWith('tg:')).map((m) => m.slice(3, m.lastIndexOf(':', m.lastIndexOf(':') - 1))));
  for (const name of names) {
    const lb = (await aws.elb.send(new DescribeClassicCommand({ LoadBalancerNames: [name] }))).LoadBalancerDescriptions![0]!;
    for (const instance of lb.Instances ?? []) seen.add(`clb:${name}:${instance.InstanceId}`);
  }
  for (const arn of arns) {
    const health = await aws.elbv2.send(new DescribeTargetHealthCommand({ TargetGroupArn: arn }));
    for (const d of health.TargetHealthDescriptions ?? []) if (d.TargetHealth?.State !== 'unused') seen.add(`tg:${arn}:${d.Target!.Id}:${d.Target!.Port}`);
  }
  return seen;
}

describe('random worlds (fast-check, in process against moto)', () => {
  test(`${RUNS} random worlds: only in-scope load balancers of VPCID are asked, only for the asked instance; DRY_RUN asks none; the rest stays registered`, async (t) => {
    Object.assign(process.env, { AWS_ENDPOINT_URL: rig.proxy.url, AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test', AWS_EC2_METADATA_DISABLED: 'true' });
    const totals = { runs: 0, loadBalancers: 0, deregisterCalls: 0, expectedOut: 0, dryRuns: 0, lost: 0 };
    let run = 0;
    await fc.assert(
      fc.asyncProperty(worldSpec, async (spec) => {
        run++;
        await rig.moto.reset();
        const built = await build(spec, run);
        rig.proxy.calls.length = 0;
        const clients = createAwsClients(REGION);
        try {
          // The agent's own wiring (agent/aws/provider.ts), built here from the same parts.
          const inventory = new TaggedInventory(clients, CLUSTER, silentLogger());
          const drainer = new Drainer({
            lookup: new Ec2InstanceLookup(clients.ec2, built.clusterVpc),
            families: [new ClassicFamily(clients.elb, inventory, silentLogger()), new TargetGroupFamily(clients.elbv2, inventory, silentLogger())],
            calls: clients.calls,
            logger: silentLogger(),
            maxConcurrent: 4,
          });
          const instance = await drainer.find(spec.byIp ? { ip: built.node.ip } : { id: built.node.id }, AbortSignal.timeout(10_000));
          assert.equal(instance.id, built.node.id);
          const status: DrainStatus = await drainer.start(instance, { trigger: 'cli', scope: spec.scope, deadline: new Date(Date.now() + 20_000), dryRun: spec.dryRun }).done;

          const calls = rig.proxy.calls.filter(isDeregister);
          for (const call of calls) {
            assert.ok(built.allowedTargets.has(deregisterTarget(call)), `Deregister* on ${deregisterTarget(call)}, outside scope`);
            for (const id of deregisteredIds(call)) assert.ok(id === built.node.id || id === built.node.ip, `Deregister* of ${id}, not the node`);
          }
          const now = await current(built);
          if (spec.dryRun) {
            assert.equal(calls.length, 0, 'DRY_RUN asks nothing');
            assert.deepEqual([...now].sort(), [...built.all].sort(), 'DRY_RUN changes nothing');
            assert.equal(status.state, 'skipped');
          } else {
            assert.equal(status.state, 'deregistered', JSON.stringify(status));
            assert.deepEqual([...now].sort(), [...built.all].filter((m) => !built.expected.has(m)).sort(), 'exactly the in-scope memberships of the node are gone');
          }
          assert.equal(status.loadBalancers.length, built.expected.size, 'the status lists each in-scope membership');
          totals.runs++;
          totals.loadBalancers += spec.classic.length + spec.groups.length;
          totals.deregisterCalls += calls.length;
          totals.expectedOut += spec.dryRun ? 0 : built.expected.size;
          totals.dryRuns += spec.dryRun ? 1 : 0;
        } finally {
          clients.destroy();
        }
      }),
      { numRuns: RUNS, interruptAfterTimeLimit: 90_000 },
    );
    record(t, totals);
  });
});

describe('the built agent', () => {
  beforeEach(() => rig.fresh());
  afterEach(() => rig.cleanup());

  test('DRY_RUN=true: a spot notice and API drains find the memberships and change nothing (no Deregister* reached AWS)', async (t) => {
    const agent = await rig.startAgent({ DRY_RUN: 'true' });
    rig.spotNotice(30_000);
    const self = await finished(agent, rig.world.node.id, 15_000);
    assert.equal(self.state, 'skipped');
    assert.equal(self.dryRun, true);
    assert.match(String(self.reason), /dry run: would deregister from 4 load balancer\(s\), changed nothing/);
    const answer = await agent.fetch(`/drain?id=${rig.world.neighbour.id}&wait=true&pw=${SECRET}`, { method: 'POST' });
    assert.equal(answer.status, 200);
    assert.equal(((await answer.json()) as DrainStatus).state, 'skipped');
    assert.equal(rig.deregisterCalls().length, 0);
    await rig.assertLeftExactly([]);
    record(t, { drains: 2, deregisterCalls: 0 });
  });

  test('asked for the neighbour (by id, then by IP): only the neighbour leaves, only its in-scope load balancers are asked', async (t) => {
    const agent = await rig.startAgent();
    const byId = await agent.fetch(`/drain?id=${rig.world.neighbour.id}&wait=true&pw=${SECRET}`, { method: 'POST' });
    assert.equal(((await byId.json()) as DrainStatus).state, 'deregistered');
    const byIp = await agent.fetch(`/drain?ip=${rig.world.neighbour.ip}&wait=true&pw=${SECRET}`, { method: 'POST' });
    assert.equal(((await byIp.json()) as DrainStatus).instanceId, rig.world.neighbour.id);
    for (const call of rig.deregisterCalls()) for (const id of deregisteredIds(call)) assert.ok(id === rig.world.neighbour.id || id === rig.world.neighbour.ip, id);
    await rig.assertLeftExactly(neighbourInScope(rig.world));
    // Another VPC's instance, an IP no instance has, an IP of another VPC: 404 and nothing asked.
    const before = rig.deregisterCalls().length;
    for (const query of [`id=${rig.world.foreignNode.id}`, `ip=${rig.world.foreignNode.ip}`, 'ip=10.0.9.9']) {
      const answer = await agent.fetch(`/drain?${query}&pw=${SECRET}`, { method: 'POST' });
      assert.equal(answer.status, 404, query);
    }
    assert.equal(rig.deregisterCalls().length, before);
    record(t, { drains: 2, refused: 3 });
  });

  test('configuration: VPCID of another VPC finds not the node; CLUSTERNAME of a cluster whose name extends ours, or a prefix of it, touches none of ours', async (t) => {
    const env = (extra: Record<string, string>) => cleanEnv({ AWS_ENDPOINT_URL: rig.proxy.url, AWS_REGION: REGION, VPCID: rig.world.clusterVpc, CLUSTERNAME: CLUSTER, ...extra });
    const otherVpc = await runMain(['drain', '--id', rig.world.node.id], env({ VPCID: rig.world.otherVpc }));
    assert.equal(otherVpc.code, 4, otherVpc.stderr);
    for (const name of [`${CLUSTER}-2`, CLUSTER.slice(0, -1), `${CLUSTER}/`]) {
      const result = await runMain(['drain', '--id', rig.world.node.id], env({ CLUSTERNAME: name }));
      assert.ok(result.code === 0 || result.code === 2, `${name}: ${result.code} ${result.stderr}`);
    }
    // The same ids in a dry run of the right cluster: found, not touched.
    const dry = await runMain(['drain', '--id', rig.world.node.id, '--dry-run'], env({}));
    assert.equal(dry.code, 0, dry.stderr);
    assert.equal(rig.deregisterCalls().length, 0);
    await rig.assertLeftExactly([]);
    record(t, { commands: 5, deregisterCalls: 0 });
  });
});
