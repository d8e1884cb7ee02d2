/**
 * What moto cannot show, through the real Drainer and the real AWS families, with the SDK clients'
 * `send` mocked by aws-sdk-client-mock: targets that stay `draining`, a classic ELB's connection
 * draining ("Instance deregistration currently in progress"), InvalidInstance / LoadBalancerNotFound,
 * `Unknown` health, throttling, a failing load balancer among healthy ones, the deadline passing, the
 * tagging API denied, dry run, joining, and instance lookup by an address inside a delegated prefix.
 *
 * A small stateful fake of the four AWS APIs (`FakeAws`) answers every call; tests change its state or
 * inject faults, and assert on the drain status a user reads and on the calls the fake received.
 * Errors have the shape the real SDK gives them (class name in `name`, the query code in `Code`).
 *
 * aws-sdk-client-mock replaces `client.send`, so no middleware runs (not the SDK's retries, not the
 * agent's call counter): the retries seen here are the drainer's own, and `awsCalls` is checked in its
 * own test further down, which short-circuits the real clients inside their middleware stack instead.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  DescribeInstancesCommand,
  DescribeNetworkInterfacesCommand,
  EC2Client,
  type DescribeInstancesCommandInput,
  type DescribeNetworkInterfacesCommandInput,
  type NetworkInterface,
} from '@aws-sdk/client-ec2';
import {
  DeregisterInstancesFromLoadBalancerCommand,
  DescribeInstanceHealthCommand,
  DescribeLoadBalancersCommand as DescribeClassicCommand,
  DescribeTagsCommand as DescribeClassicTagsCommand,
  ElasticLoadBalancingClient,
  type DeregisterInstancesFromLoadBalancerCommandInput,
  type DescribeAccessPointsInput,
  type DescribeEndPointStateInput,
  type DescribeTagsInput as DescribeClassicTagsInput,
  type InstanceState,
} from '@aws-sdk/client-elastic-load-balancing';
import {
  DeregisterTargetsCommand,
  DescribeLoadBalancersCommand,
  DescribeTagsCommand,
  DescribeTargetGroupsCommand,
  DescribeTargetHealthCommand,
  ElasticLoadBalancingV2Client,
  type DeregisterTargetsCommandInput,
  type DescribeLoadBalancersCommandInput,
  type DescribeTagsCommandInput,
  type DescribeTargetGroupsCommandInput,
  type DescribeTargetHealthCommandInput,
  type TargetTypeEnum,
} from '@aws-sdk/client-elastic-load-balancing-v2';
import { GetResourcesCommand, ResourceGroupsTaggingAPIClient, type GetResourcesCommandInput } from '@aws-sdk/client-resource-groups-tagging-api';
import { mockClient } from 'aws-sdk-client-mock';
import { CallLog } from '../agent/aws/call-log.ts';
import { ClassicFamily } from '../agent/aws/classic.ts';
import { createAwsClients, type AwsClients } from '../agent/aws/clients.ts';
import { Ec2InstanceLookup } from '../agent/aws/instances.ts';
import { TaggedInventory } from '../agent/aws/inventory.ts';
import { TargetGroupFamily } from '../agent/aws/target-groups.ts';
import { Drainer, type DrainHandle } from '../agent/drain/drainer.ts';
import { ALL } from '../agent/drain/family.ts';
import { InstanceNotFoundError, type Instance } from '../agent/drain/instance.ts';
import type { DrainStatus, LoadBalancerStatus } from '../agent/drain/status.ts';
import { silentLogger } from '../agent/log.ts';

// ---------------------------------------------------------------------------------------------------
// The world

const REGION = 'eu-west-1';
const ACCOUNT = '123456789012';
const CLUSTER = 'demo';
const VPC = 'vpc-0cluster';
const OTHER_VPC = 'vpc-0other';
const CLUSTER_TAG = { [`kubernetes.io/cluster/${CLUSTER}`]: 'owned' };

const NODE = {
  id: 'i-0node00000000000a',
  primary: '10.0.1.10',
  secondary: '10.0.1.11',
  prefix: '10.0.1.32/28',
  podIp: '10.0.1.37',
  // An IPv6 cluster: the interface's own address, and a delegated /80 whose addresses the pods get.
  ipv6: '2600:1f18:4a3:6b00:8e2f:1c3a:9b0d:4e21',
  ipv6Prefix: '2600:1f18:4a3:6b00:a1b2::/80',
  podIpv6: '2600:1f18:4a3:6b00:a1b2::7',
};
const NEIGHBOUR = { id: 'i-0neighbour0000000b', primary: '10.0.1.20' };
const FOREIGN = { id: 'i-0foreign000000000c', primary: '10.1.1.10' };

const tgArn = (name: string): string => `arn:aws:elasticloadbalancing:${REGION}:${ACCOUNT}:targetgroup/${name}/0123456789abcdef`;
const albArn = (name: string): string => `arn:aws:elasticloadbalancing:${REGION}:${ACCOUNT}:loadbalancer/app/${name}/fedcba9876543210`;
const classicArn = (name: string): string => `arn:aws:elasticloadbalancing:${REGION}:${ACCOUNT}:loadbalancer/${name}`;

type Tags = Record<string, string>;
type Answer = Record<string, unknown>;

/** An error as the SDK throws it: the modelled class name (or the code), the query protocol's Code, HTTP status. */
function awsError(code: string, { name = code, status = 400, message = `${code} (fake)` } = {}): Error {
  return Object.assign(new Error(message), {
    name,
    Code: code,
    $fault: status >= 500 ? 'server' : 'client',
    $metadata: { httpStatusCode: status },
  });
}
const throttling = (): Error => awsError('Throttling', { message: 'Rate exceeded' });
const invalidInstance = (): Error =>
  awsError('InvalidInstance', { name: 'InvalidEndPointException', message: 'The requested instance(s) is not registered with the load balancer.' });
const classicNotFound = (name: string): Error =>
  awsError('LoadBalancerNotFound', { name: 'AccessPointNotFoundException', message: `There is no ACTIVE Load Balancer named '${name}'` });

interface FakeEc2Instance {
  readonly id: string;
  readonly vpcId: string;
  readonly primary: string;
  readonly secondaries: readonly string[];
  readonly prefixes: readonly string[];
  readonly ipv6s?: readonly string[];
  readonly ipv6Prefixes?: readonly string[];
}

interface FakeClassic {
  readonly name: string;
  readonly vpcId: string;
  readonly tags: Tags;
  /** What DescribeLoadBalancers lists as Instances. */
  readonly listed: Set<string>;
  /** When set, deregistration does not remove the instance from `listed` (the test does it later). */
  keepListed?: boolean;
  /** What DescribeInstanceHealth says about a deregistered instance; default OutOfService. */
  health?: (instanceId: string) => InstanceState | Error;
}

interface FakeTarget {
  readonly Id: string;
  readonly Port: number;
  State: string;
}

interface FakeGroup {
  readonly arn: string;
  readonly vpcId: string;
  readonly type: TargetTypeEnum;
  readonly loadBalancerArns: readonly string[];
  readonly tags: Tags;
  targets: FakeTarget[];
  /** When set, a deregistered target stays `draining` until the test changes it; otherwise it is gone at once. */
  drains?: boolean;
}

type Fault = (input: Answer) => Error | undefined;

interface Call {
  readonly action: string;
  readonly input: Answer;
}

/** Fails the first `times` calls the fault sees (the predicate narrows which calls count). */
function firstCalls(times: number, error: () => Error, which: (input: Answer) => boolean = () => true): Fault {
  let seen = 0;
  return (input) => (which(input) && seen++ < times ? error() : undefined);
}

function always(error: () => Error, which: (input: Answer) => boolean = () => true): Fault {
  return (input) => (which(input) ? error() : undefined);
}

class FakeAws {
  readonly instances: FakeEc2Instance[] = [
    { id: NODE.id, vpcId: VPC, primary: NODE.primary, secondaries: [NODE.secondary], prefixes: [NODE.prefix], ipv6s: [NODE.ipv6], ipv6Prefixes: [NODE.ipv6Prefix] },
    { id: NEIGHBOUR.id, vpcId: VPC, primary: NEIGHBOUR.primary, secondaries: [], prefixes: [] },
    { id: FOREIGN.id, vpcId: OTHER_VPC, primary: FOREIGN.primary, secondaries: [], prefixes: [] },
  ];
  readonly classic: FakeClassic[] = [];
  readonly albs: { arn: string; tags: Tags }[] = [];
  readonly groups: FakeGroup[] = [];
  readonly calls: Call[] = [];
  private readonly faults = new Map<string, Fault[]>();

  addClassic(name: string, tags: Tags, instances: string[] = [NODE.id, NEIGHBOUR.id], vpcId = VPC): FakeClassic {
    const lb: FakeClassic = { name, vpcId, tags, listed: new Set(instances) };
    this.classic.push(lb);
    return lb;
  }

  addGroup(name: string, options: { type?: TargetTypeEnum; tags?: Tags; targets?: [string, number][]; albs?: string[]; vpcId?: string } = {}): FakeGroup {
    const group: FakeGroup = {
      arn: tgArn(name),
      vpcId: options.vpcId ?? VPC,
      type: options.type ?? 'instance',
      loadBalancerArns: options.albs ?? [],
      tags: options.tags ?? {},
      targets: (options.targets ?? [[NODE.id, 30080], [NEIGHBOUR.id, 30080]]).map(([Id, Port]) => ({ Id, Port, State: 'healthy' })),
    };
    this.groups.push(group);
    return group;
  }

  addAlb(name: string, tags: Tags): string {
    this.albs.push({ arn: albArn(name), tags });
    return albArn(name);
  }

  fault(action: string, fault: Fault): void {
    this.faults.set(action, [...(this.faults.get(action) ?? []), fault]);
  }

  callsOf(action: string, which: (input: Answer) => boolean = () => true): Answer[] {
    return this.calls.filter((call) => call.action === action && which(call.input)).map((call) => call.input);
  }

  target(arn: string, id: string, port: number): FakeTarget | undefined {
    return this.group(arn).targets.find((target) => target.Id === id && target.Port === port);
  }

  /** Connection draining over: ELBv2 forgets the target (asked about it, it says unused). */
  finishDraining(arn: string, id: string, port: number): void {
    const group = this.group(arn);
    group.targets = group.targets.filter((target) => !(target.Id === id && target.Port === port));
  }

  group(arn: string): FakeGroup {
    const group = this.groups.find((candidate) => candidate.arn === arn);
    assert.ok(group, `no fake target group ${arn}`);
    return group;
  }

  /** Answers one call: recorded, then faults, then the fake API. Always asynchronous, like the SDK. */
  async answer(action: string, input: Answer): Promise<Answer> {
    this.calls.push({ action, input: structuredClone(input) });
    await Promise.resolve();
    for (const fault of this.faults.get(action) ?? []) {
      const error = fault(input);
      if (error) throw error;
    }
    const handler = this.handlers[action];
    assert.ok(handler, `the fake does not answer ${action}`);
    return handler(input);
  }

  private readonly handlers: Record<string, (input: Answer) => Answer> = {
    'ec2:DescribeInstances': (raw) => {
      const input = raw as unknown as DescribeInstancesCommandInput;
      const found = (input.InstanceIds ?? []).map((id) => this.instances.find((instance) => instance.id === id));
      if (found.some((instance) => instance === undefined)) {
        throw awsError('InvalidInstanceID.NotFound', { message: `The instance IDs '${input.InstanceIds?.join(', ')}' do not exist` });
      }
      return { Reservations: [{ Instances: found.map((instance) => ec2Instance(instance!)) }] };
    },
    'ec2:DescribeNetworkInterfaces': (raw) => {
      const input = raw as unknown as DescribeNetworkInterfacesCommandInput;
      const filter = (name: string): string[] | undefined => input.Filters?.find((candidate) => candidate.Name === name)?.Values;
      const enis = this.instances
        .map(eniOf)
        .filter((eni) => filter('vpc-id')?.includes(eni.VpcId!) ?? true)
        .filter((eni) => filter('attachment.status')?.includes(eni.Attachment!.Status!) ?? true)
        .filter((eni) => {
          const ips = filter('addresses.private-ip-address');
          return ips === undefined || (eni.PrivateIpAddresses ?? []).some((address) => ips.includes(address.PrivateIpAddress!));
        });
      // EC2 may answer fewer than MaxResults: two at a time makes the scan follow NextToken.
      return page(enis, input.NextToken, Math.min(input.MaxResults ?? 1000, 2), 'NetworkInterfaces', 'NextToken');
    },
    'elb:DescribeLoadBalancers': (raw) => {
      const input = raw as unknown as DescribeAccessPointsInput;
      let lbs = this.classic;
      if (input.LoadBalancerNames) {
        lbs = input.LoadBalancerNames.map((name) => {
          const lb = this.classic.find((candidate) => candidate.name === name);
          if (!lb) throw classicNotFound(name);
          return lb;
        });
      }
      const descriptions = lbs.map((lb) => ({
        LoadBalancerName: lb.name,
        VPCId: lb.vpcId,
        Instances: [...lb.listed].map((InstanceId) => ({ InstanceId })),
      }));
      return page(descriptions, input.Marker, Math.min(input.PageSize ?? 400, 400), 'LoadBalancerDescriptions', 'NextMarker');
    },
    'elb:DescribeTags': (raw) => {
      const names = (raw as unknown as DescribeClassicTagsInput).LoadBalancerNames ?? [];
      if (names.length > 20) throw awsError('ValidationError', { message: 'LoadBalancerNames: at most 20' });
      return {
        TagDescriptions: names.map((name) => {
          const lb = this.classic.find((candidate) => candidate.name === name);
          if (!lb) throw classicNotFound(name);
          return { LoadBalancerName: name, Tags: tagList(lb.tags) };
        }),
      };
    },
    'elb:DeregisterInstancesFromLoadBalancer': (raw) => {
      const input = raw as unknown as DeregisterInstancesFromLoadBalancerCommandInput;
      const lb = this.classicNamed(input.LoadBalancerName!);
      for (const { InstanceId } of input.Instances ?? []) if (!lb.keepListed) lb.listed.delete(InstanceId!);
      return { Instances: [...lb.listed].map((InstanceId) => ({ InstanceId })) };
    },
    'elb:DescribeInstanceHealth': (raw) => {
      const input = raw as unknown as DescribeEndPointStateInput;
      const lb = this.classicNamed(input.LoadBalancerName!);
      return {
        InstanceStates: (input.Instances ?? []).map(({ InstanceId }): InstanceState => {
          const answer: InstanceState | Error = lb.health
            ? lb.health(InstanceId!)
            : { InstanceId, State: 'OutOfService', ReasonCode: 'N/A', Description: 'Instance is not currently registered with the LoadBalancer.' };
          if (answer instanceof Error) throw answer;
          return { InstanceId, ...answer };
        }),
      };
    },
    'elbv2:DescribeLoadBalancers': (raw) => {
      const input = raw as unknown as DescribeLoadBalancersCommandInput;
      const lbs = this.albs.map((alb) => ({ LoadBalancerArn: alb.arn, VpcId: VPC, Type: 'application' }));
      return page(lbs, input.Marker, Math.min(input.PageSize ?? 400, 400), 'LoadBalancers', 'NextMarker');
    },
    'elbv2:DescribeTargetGroups': (raw) => {
      const input = raw as unknown as DescribeTargetGroupsCommandInput;
      let groups = this.groups;
      if (input.LoadBalancerArn) {
        if (!this.albs.some((alb) => alb.arn === input.LoadBalancerArn)) throw awsError('LoadBalancerNotFound', { name: 'LoadBalancerNotFoundException' });
        groups = groups.filter((group) => group.loadBalancerArns.includes(input.LoadBalancerArn!));
      } else if (input.TargetGroupArns) {
        groups = input.TargetGroupArns.map((arn) => {
          const group = this.groups.find((candidate) => candidate.arn === arn);
          if (!group) throw awsError('TargetGroupNotFound', { name: 'TargetGroupNotFoundException' });
          return group;
        });
      }
      const described = groups.map((group) => ({
        TargetGroupArn: group.arn,
        VpcId: group.vpcId,
        TargetType: group.type,
        LoadBalancerArns: [...group.loadBalancerArns],
      }));
      return page(described, input.Marker, Math.min(input.PageSize ?? 400, 400), 'TargetGroups', 'NextMarker');
    },
    'elbv2:DescribeTags': (raw) => {
      const arns = (raw as unknown as DescribeTagsCommandInput).ResourceArns ?? [];
      if (arns.length > 20) throw awsError('ValidationError', { message: 'ResourceArns: at most 20' });
      return {
        TagDescriptions: arns.map((arn) => ({
          ResourceArn: arn,
          Tags: tagList((this.groups.find((group) => group.arn === arn) ?? this.albs.find((alb) => alb.arn === arn))?.tags ?? {}),
        })),
      };
    },
    'elbv2:DescribeTargetHealth': (raw) => {
      const input = raw as unknown as DescribeTargetHealthCommandInput;
      const group = this.group(input.TargetGroupArn!);
      if (!input.Targets) {
        return { TargetHealthDescriptions: group.targets.map((target) => ({ Target: { Id: target.Id, Port: target.Port }, TargetHealth: { State: target.State } })) };
      }
      // Asked about given targets, ELBv2 answers for each; one no longer registered is `unused`.
      return {
        TargetHealthDescriptions: input.Targets.map(({ Id, Port }) => ({
          Target: { Id, Port },
          TargetHealth: this.target(group.arn, Id!, Port!) ? { State: this.target(group.arn, Id!, Port!)!.State } : { State: 'unused', Reason: 'Target.NotRegistered' },
        })),
      };
    },
    'elbv2:DeregisterTargets': (raw) => {
      const input = raw as unknown as DeregisterTargetsCommandInput;
      const group = this.group(input.TargetGroupArn!);
      for (const { Id, Port } of input.Targets ?? []) {
        const target = this.target(group.arn, Id!, Port!);
        if (!target) continue;
        if (group.drains) target.State = 'draining';
        else group.targets = group.targets.filter((candidate) => candidate !== target);
      }
      return {};
    },
    'tagging:GetResources': (raw) => {
      const input = raw as unknown as GetResourcesCommandInput;
      const types = input.ResourceTypeFilters ?? [];
      const resources = [
        ...(types.includes('elasticloadbalancing:loadbalancer')
          ? [...this.classic.map((lb) => ({ arn: classicArn(lb.name), tags: lb.tags })), ...this.albs]
          : []),
        ...(types.includes('elasticloadbalancing:targetgroup') ? this.groups : []),
      ].filter((resource) =>
        (input.TagFilters ?? []).every(
          (filter) => filter.Key! in resource.tags && (filter.Values === undefined || filter.Values.length === 0 || filter.Values.includes(resource.tags[filter.Key!]!)),
        ),
      );
      const start = Number(input.PaginationToken || 0);
      const size = input.ResourcesPerPage ?? 50;
      const next = start + size < resources.length ? String(start + size) : '';
      return {
        ResourceTagMappingList: resources.slice(start, start + size).map((resource) => ({ ResourceARN: resource.arn, Tags: tagList(resource.tags) })),
        PaginationToken: next,
      };
    },
  };

  private classicNamed(name: string): FakeClassic {
    const lb = this.classic.find((candidate) => candidate.name === name);
    if (!lb) throw classicNotFound(name);
    return lb;
  }
}

function tagList(tags: Tags): { Key: string; Value: string }[] {
  return Object.entries(tags).map(([Key, Value]) => ({ Key, Value }));
}

function page<T>(items: readonly T[], token: string | undefined, size: number, listField: string, tokenField: string): Answer {
  const start = Number(token ?? 0);
  const answer: Answer = { [listField]: items.slice(start, start + size) };
  if (start + size < items.length) answer[tokenField] = String(start + size);
  return answer;
}

function eniOf(instance: FakeEc2Instance): NetworkInterface {
  return {
    NetworkInterfaceId: `eni-${instance.id.slice(2)}`,
    VpcId: instance.vpcId,
    PrivateIpAddress: instance.primary,
    PrivateIpAddresses: [
      { PrivateIpAddress: instance.primary, Primary: true },
      ...instance.secondaries.map((PrivateIpAddress) => ({ PrivateIpAddress, Primary: false })),
    ],
    Ipv4Prefixes: instance.prefixes.map((Ipv4Prefix) => ({ Ipv4Prefix })),
    Ipv6Addresses: (instance.ipv6s ?? []).map((Ipv6Address) => ({ Ipv6Address })),
    Ipv6Prefixes: (instance.ipv6Prefixes ?? []).map((Ipv6Prefix) => ({ Ipv6Prefix })),
    Attachment: { InstanceId: instance.id, Status: 'attached' },
  };
}

function ec2Instance(instance: FakeEc2Instance): Answer {
  const eni = eniOf(instance);
  return {
    InstanceId: instance.id,
    VpcId: instance.vpcId,
    PrivateIpAddress: instance.primary,
    NetworkInterfaces: [
      { NetworkInterfaceId: eni.NetworkInterfaceId, PrivateIpAddresses: eni.PrivateIpAddresses, Ipv4Prefixes: eni.Ipv4Prefixes, Ipv6Addresses: eni.Ipv6Addresses, Ipv6Prefixes: eni.Ipv6Prefixes },
    ],
    Tags: [{ Key: `kubernetes.io/cluster/${CLUSTER}`, Value: 'owned' }],
  };
}

// ---------------------------------------------------------------------------------------------------
// The agent, wired as agent/aws/provider.ts wires it, on mocked clients

interface Agent {
  readonly drainer: Drainer;
  readonly lookup: Ec2InstanceLookup;
}

/** Each loaded when first needed, as the agent's clients are. */
type Clients = Pick<AwsClients, 'ec2' | 'elb' | 'elbv2' | 'tagging'>;

/** Every agent a test built: a drain a failed test left running is ended, so the file never hangs. */
const agents: Agent[] = [];
afterEach(async () => {
  await Promise.all(agents.splice(0).map((agent) => agent.drainer.abortAll()));
});

function wire(clients: Clients, calls: CallLog): Agent {
  const logger = silentLogger();
  const inventory = new TaggedInventory(clients, CLUSTER, logger);
  const lookup = new Ec2InstanceLookup(clients.ec2, VPC);
  const families = [new ClassicFamily(clients.elb, inventory, logger), new TargetGroupFamily(clients.elbv2, inventory, logger)];
  const agent = { drainer: new Drainer({ lookup, families, calls, logger, maxConcurrent: 8 }), lookup };
  agents.push(agent);
  return agent;
}

function mockedAgent(world: FakeAws): Agent {
  const config = { region: REGION, credentials: { accessKeyId: 'test', secretAccessKey: 'test' } };
  const ec2Client = new EC2Client(config);
  const elbClient = new ElasticLoadBalancingClient(config);
  const elbv2Client = new ElasticLoadBalancingV2Client(config);
  const taggingClient = new ResourceGroupsTaggingAPIClient(config);
  const clients: Clients = { ec2: async () => ec2Client, elb: async () => elbClient, elbv2: async () => elbv2Client, tagging: async () => taggingClient };
  const fake = (action: string) => (input: Answer) => world.answer(action, input);

  // Anything the fake does not answer is a test failure, not a silent undefined (set first: later rules win).
  const unexpected = new Error('unexpected command: the fake does not answer it');
  const ec2 = mockClient(ec2Client);
  ec2.onAnyCommand().rejects(unexpected);
  ec2.on(DescribeInstancesCommand).callsFake(fake('ec2:DescribeInstances'));
  ec2.on(DescribeNetworkInterfacesCommand).callsFake(fake('ec2:DescribeNetworkInterfaces'));
  const elb = mockClient(elbClient);
  elb.onAnyCommand().rejects(unexpected);
  elb.on(DescribeClassicCommand).callsFake(fake('elb:DescribeLoadBalancers'));
  elb.on(DescribeClassicTagsCommand).callsFake(fake('elb:DescribeTags'));
  elb.on(DeregisterInstancesFromLoadBalancerCommand).callsFake(fake('elb:DeregisterInstancesFromLoadBalancer'));
  elb.on(DescribeInstanceHealthCommand).callsFake(fake('elb:DescribeInstanceHealth'));
  const elbv2 = mockClient(elbv2Client);
  elbv2.onAnyCommand().rejects(unexpected);
  elbv2.on(DescribeLoadBalancersCommand).callsFake(fake('elbv2:DescribeLoadBalancers'));
  elbv2.on(DescribeTargetGroupsCommand).callsFake(fake('elbv2:DescribeTargetGroups'));
  elbv2.on(DescribeTagsCommand).callsFake(fake('elbv2:DescribeTags'));
  elbv2.on(DescribeTargetHealthCommand).callsFake(fake('elbv2:DescribeTargetHealth'));
  elbv2.on(DeregisterTargetsCommand).callsFake(fake('elbv2:DeregisterTargets'));
  const tagging = mockClient(taggingClient);
  tagging.onAnyCommand().rejects(unexpected);
  tagging.on(GetResourcesCommand).callsFake(fake('tagging:GetResources'));

  return wire(clients, new CallLog());
}

async function node(agent: Agent): Promise<Instance> {
  return agent.drainer.find({ id: NODE.id }, AbortSignal.timeout(5_000));
}

async function startDrain(agent: Agent, { timeoutMs = 20_000, dryRun = false } = {}): Promise<DrainHandle> {
  return agent.drainer.start(await node(agent), { trigger: 'cli', scope: ALL, deadline: new Date(Date.now() + timeoutMs), dryRun });
}

async function drain(agent: Agent, options: { timeoutMs?: number; dryRun?: boolean } = {}): Promise<DrainStatus> {
  return (await startDrain(agent, options)).done;
}

setFlagsFromString('--expose-gc');
const collectGarbage = runInNewContext('gc') as () => void;

/**
 * The final status of a drain that must end at its deadline. Collects garbage while it waits, as a
 * long-running agent eventually does: the deadline must not depend on an object nothing holds. A drain
 * still running well after its deadline fails the test (and is ended) instead of hanging it.
 */
async function endedByDeadline(agent: Agent, handle: DrainHandle, graceMs = 2_000): Promise<DrainStatus> {
  const giveUpAt = Date.parse(handle.status().deadline) + graceMs;
  let final: DrainStatus | undefined;
  void handle.done.then((status) => (final = status));
  while (final === undefined && Date.now() < giveUpAt) {
    collectGarbage();
    await delay(100);
  }
  if (final === undefined) {
    const stuck = handle.status();
    await agent.drainer.abortAll();
    assert.fail(`the drain was still ${stuck.state} ${graceMs} ms after its deadline: ${JSON.stringify(stuck.loadBalancers)}`);
  }
  return final;
}

async function waitFor(what: string, predicate: () => boolean, timeoutMs = 8_000): Promise<void> {
  const giveUpAt = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > giveUpAt) assert.fail(`timed out waiting for ${what}`);
    await delay(10);
  }
}

function lbOf(status: DrainStatus, key: string): LoadBalancerStatus {
  const lb = status.loadBalancers.find((candidate) => candidate['name'] === key || candidate['arn'] === key);
  assert.ok(lb, `${key} is not in the drain status: ${JSON.stringify(status.loadBalancers)}`);
  return lb;
}

const isCheck = (input: Answer): boolean => input['Targets'] !== undefined; // DescribeTargetHealth asking about our targets
const forGroup = (arn: string) => (input: Answer): boolean => input['TargetGroupArn'] === arn;
const forClassic = (name: string) => (input: Answer): boolean => input['LoadBalancerName'] === name;

function targetsOf(input: Answer): string[] {
  return (input['Targets'] as { Id: string; Port: number }[]).map((target) => `${target.Id}:${target.Port}`).sort();
}

// ---------------------------------------------------------------------------------------------------

describe('ELBv2: a deregistered target is out only once it is no longer draining', () => {
  it('stays draining while DescribeTargetHealth says draining, and is out once it says unused', async () => {
    const world = new FakeAws();
    const group = world.addGroup('web', { tags: CLUSTER_TAG });
    group.drains = true;
    const handle = await startDrain(mockedAgent(world));

    await waitFor('two health checks that answered draining', () => world.callsOf('elbv2:DescribeTargetHealth', isCheck).length >= 2);
    const during = handle.status();
    assert.equal(during.state, 'draining');
    assert.equal(during.finishedAt, null);
    const lbDuring = lbOf(during, group.arn);
    assert.equal(lbDuring.state, 'draining');
    assert.ok(lbDuring.deregisteredAt, 'deregistered already, only waiting');
    assert.equal(lbDuring.outAt, undefined);
    assert.match(lbDuring.reason ?? '', /draining/);
    assert.equal(world.target(group.arn, NODE.id, 30080)?.State, 'draining');

    world.target(group.arn, NODE.id, 30080)!.State = 'unused';
    const releasedAt = Date.now();
    const final = await handle.done;
    assert.equal(final.state, 'deregistered');
    const lb = lbOf(final, group.arn);
    assert.equal(lb.state, 'out');
    assert.ok(Date.parse(lb.outAt!) >= releasedAt - 5, 'out only after DescribeTargetHealth said unused');
    assert.equal(world.target(group.arn, NEIGHBOUR.id, 30080)?.State, 'healthy', 'the neighbour is untouched');
  });

  it('a target still draining at the deadline: timed_out, that target group still draining, and the drain returns promptly', async () => {
    const world = new FakeAws();
    const group = world.addGroup('web', { tags: CLUSTER_TAG });
    group.drains = true;
    world.addClassic('clb-ok', CLUSTER_TAG);
    const agent = mockedAgent(world);
    const handle = await startDrain(agent, { timeoutMs: 1_500 });
    const deadline = Date.parse(handle.status().deadline);

    const final = await endedByDeadline(agent, handle);
    assert.equal(final.state, 'timed_out');
    assert.ok(final.finishedAt, 'finishedAt is set');
    assert.ok(Date.parse(final.finishedAt) >= deadline - 50, 'not given up before the deadline');
    const lb = lbOf(final, group.arn);
    assert.equal(lb.state, 'draining');
    assert.match(lb.reason ?? '', /draining/, 'says why it is not out');
    assert.equal(lbOf(final, 'clb-ok').state, 'out', 'the classic ELB was taken out meanwhile');
    assert.equal(agent.drainer.statusOf(NODE.id)?.state, 'timed_out');
  });
});

describe('classic ELB: connection draining and what counts as out', () => {
  const IN_PROGRESS = 'Instance deregistration currently in progress.';

  it('InService "deregistration currently in progress" is not out, even once DescribeLoadBalancers no longer lists the instance', async () => {
    const world = new FakeAws();
    const lb = world.addClassic('clb-web', CLUSTER_TAG);
    let draining = true;
    lb.health = (InstanceId) =>
      draining
        ? { InstanceId, State: 'InService', ReasonCode: 'N/A', Description: IN_PROGRESS }
        : { InstanceId, State: 'OutOfService', ReasonCode: 'Instance', Description: 'Instance is not currently registered with the LoadBalancer.' };
    const handle = await startDrain(mockedAgent(world));

    await waitFor('two health checks during connection draining', () => world.callsOf('elb:DescribeInstanceHealth').length >= 2);
    assert.ok(!lb.listed.has(NODE.id), 'DescribeLoadBalancers no longer lists the instance');
    assert.deepEqual(world.callsOf('elb:DeregisterInstancesFromLoadBalancer'), [{ LoadBalancerName: 'clb-web', Instances: [{ InstanceId: NODE.id }] }]);
    const during = handle.status();
    assert.equal(during.state, 'draining');
    assert.equal(lbOf(during, 'clb-web').state, 'draining');
    assert.match(lbOf(during, 'clb-web').reason ?? '', /deregistration currently in progress/);

    draining = false;
    const releasedAt = Date.now();
    const final = await handle.done;
    assert.equal(final.state, 'deregistered');
    assert.equal(lbOf(final, 'clb-web').state, 'out');
    assert.ok(Date.parse(lbOf(final, 'clb-web').outAt!) >= releasedAt - 5, 'out only after OutOfService');
    assert.ok(lb.listed.has(NEIGHBOUR.id), 'the neighbour is untouched');
  });

  it('InvalidInstance from DescribeInstanceHealth means out', async () => {
    const world = new FakeAws();
    world.addClassic('clb-web', CLUSTER_TAG).health = () => invalidInstance();
    const final = await drain(mockedAgent(world));
    assert.equal(final.state, 'deregistered');
    assert.equal(lbOf(final, 'clb-web').state, 'out');
  });

  it('LoadBalancerNotFound (deleted after discovery) means out', async () => {
    const world = new FakeAws();
    world.addClassic('clb-gone', CLUSTER_TAG);
    world.addClassic('clb-web', CLUSTER_TAG);
    // Deleted between discovery and deregistration: both later calls answer LoadBalancerNotFound.
    const gone = forClassic('clb-gone');
    world.fault('elb:DeregisterInstancesFromLoadBalancer', always(() => classicNotFound('clb-gone'), gone));
    world.fault('elb:DescribeInstanceHealth', always(() => classicNotFound('clb-gone'), gone));
    const final = await drain(mockedAgent(world));
    assert.equal(final.state, 'deregistered');
    assert.equal(lbOf(final, 'clb-gone').state, 'out');
    assert.equal(lbOf(final, 'clb-web').state, 'out');
  });

  it('Unknown health is not out while DescribeLoadBalancers lists the instance, and out once it does not', async () => {
    const world = new FakeAws();
    const lb = world.addClassic('clb-web', CLUSTER_TAG);
    lb.keepListed = true;
    lb.health = (InstanceId) => ({ InstanceId, State: 'Unknown', ReasonCode: 'ELB', Description: 'A transient error occurred. Please try again later.' });
    const handle = await startDrain(mockedAgent(world));

    await waitFor('two Unknown health checks', () => world.callsOf('elb:DescribeInstanceHealth').length >= 2);
    assert.equal(handle.status().state, 'draining');
    assert.equal(lbOf(handle.status(), 'clb-web').state, 'draining');

    lb.listed.delete(NODE.id);
    const final = await handle.done;
    assert.equal(final.state, 'deregistered');
    assert.equal(lbOf(final, 'clb-web').state, 'out');
  });
});

describe('ELBv2 membership: exactly the registered targets', () => {
  it('deregisters both ports of an instance target, ip targets by secondary IP and by delegated prefix, and skips lambda and alb groups', async () => {
    const world = new FakeAws();
    const ports = world.addGroup('nodeports', {
      tags: CLUSTER_TAG,
      targets: [[NODE.id, 30080], [NODE.id, 30081], [NEIGHBOUR.id, 30080]],
    });
    const pods = world.addGroup('pods', {
      type: 'ip',
      tags: CLUSTER_TAG,
      targets: [
        [NODE.secondary, 8080], // the node's secondary address
        [NODE.podIp, 8080], // inside the node's delegated prefix 10.0.1.32/28
        [NEIGHBOUR.primary, 8080],
        ['10.0.1.50', 8080], // just outside the prefix
      ],
    });
    const lambda = world.addGroup('fn', { type: 'lambda', tags: CLUSTER_TAG, targets: [[`arn:aws:lambda:${REGION}:${ACCOUNT}:function:f`, 0]] });
    const chained = world.addGroup('chained', { type: 'alb', tags: CLUSTER_TAG, targets: [[albArn('inner'), 80]] });

    const final = await drain(mockedAgent(world));
    assert.equal(final.state, 'deregistered');

    const deregistered = world.callsOf('elbv2:DeregisterTargets');
    assert.equal(deregistered.length, 2, 'one DeregisterTargets per target group');
    assert.deepEqual(targetsOf(deregistered.find(forGroup(ports.arn))!), [`${NODE.id}:30080`, `${NODE.id}:30081`]);
    assert.deepEqual(targetsOf(deregistered.find(forGroup(pods.arn))!), [`${NODE.podIp}:8080`, `${NODE.secondary}:8080`].sort());
    assert.deepEqual(
      lbOf(final, ports.arn)['targets'],
      [
        { id: NODE.id, port: 30080 },
        { id: NODE.id, port: 30081 },
      ],
      'the status lists both targets of the instance',
    );
    assert.equal(lbOf(final, ports.arn).state, 'out');
    assert.equal(lbOf(final, pods.arn).state, 'out');
    assert.deepEqual(
      world.group(pods.arn).targets.map((target) => target.Id).sort(),
      ['10.0.1.50', NEIGHBOUR.primary].sort(),
      'other addresses stay registered',
    );

    for (const skipped of [lambda.arn, chained.arn]) {
      assert.equal(world.callsOf('elbv2:DeregisterTargets', forGroup(skipped)).length, 0);
      assert.equal(world.callsOf('elbv2:DescribeTargetHealth', forGroup(skipped)).length, 0, 'not even asked about');
      assert.ok(!final.loadBalancers.some((lb) => lb['arn'] === skipped));
    }
  });
});

describe('IPv6 ip targets (an IPv6 cluster; moto cannot describe IPv6 interfaces)', () => {
  it('deregisters the instance\'s IPv6 address and a pod address inside its delegated /80, whatever the spelling, and nothing else', async () => {
    const world = new FakeAws();
    const outside = '2600:1f18:4a3:6b00:a1b3::7'; // the next /80: another node's pods
    const pods = world.addGroup('pods-v6', {
      type: 'ip',
      tags: CLUSTER_TAG,
      targets: [
        [NODE.ipv6.toUpperCase(), 8080], // hostNetwork pods, spelled in capitals
        ['2600:1f18:04a3:6b00:a1b2:0000:0000:0007', 8080], // a pod in the prefix, spelled in full
        [outside, 8080],
        [NEIGHBOUR.primary, 8080],
      ],
    });

    const final = await drain(mockedAgent(world));
    assert.equal(final.state, 'deregistered');
    assert.equal(lbOf(final, pods.arn).state, 'out');
    const [call, ...more] = world.callsOf('elbv2:DeregisterTargets', forGroup(pods.arn));
    assert.equal(more.length, 0, 'one call for the group');
    // The ids exactly as the target group lists them, so AWS finds them.
    assert.deepEqual(targetsOf(call!), [`${NODE.ipv6.toUpperCase()}:8080`, '2600:1f18:04a3:6b00:a1b2:0000:0000:0007:8080'].sort());
    assert.deepEqual(world.group(pods.arn).targets.map((target) => target.Id).sort(), [NEIGHBOUR.primary, outside].sort(), 'other addresses stay registered');
  });

  it('finds the instance by an IPv6 address of a pod (POST /drain?ip=…)', async () => {
    const world = new FakeAws();
    world.addGroup('pods-v6', { type: 'ip', tags: CLUSTER_TAG, targets: [[NODE.podIpv6, 8080]] });
    const agent = mockedAgent(world);
    const found = await agent.drainer.find({ ip: NODE.podIpv6 }, AbortSignal.timeout(5_000));
    assert.equal(found.id, NODE.id);
  });
});

describe('drains that run together share their AWS calls (a spot wave at the coordinator)', () => {
  it('eight instances drained at once: one DescribeInstances finds them, one DeregisterTargets per target group and one DeregisterInstancesFromLoadBalancer per classic ELB carry them all, one describe confirms each; each drain has its own status', async () => {
    const world = new FakeAws();
    const wave = Array.from({ length: 8 }, (_, n) => ({ id: `i-0wave0000000000${n}`, vpcId: VPC, primary: `10.0.2.${10 + n}`, secondaries: [], prefixes: [] }));
    world.instances.push(...wave);
    const ports = world.addGroup('nodeports', { tags: CLUSTER_TAG, targets: [...wave.map((i): [string, number] => [i.id, 30080]), [NEIGHBOUR.id, 30080]] });
    const pods = world.addGroup('pods', { type: 'ip', tags: CLUSTER_TAG, targets: [...wave.map((i): [string, number] => [i.primary, 8080]), [NEIGHBOUR.primary, 8080]] });
    world.addClassic('clb-web', CLUSTER_TAG, [...wave.map((i) => i.id), NEIGHBOUR.id]);
    const agent = mockedAgent(world);

    const handles = await Promise.all(
      wave.map(async (instance) => {
        const found = await agent.drainer.find({ id: instance.id }, AbortSignal.timeout(5_000));
        return agent.drainer.start(found, { trigger: 'api', scope: ALL, deadline: new Date(Date.now() + 20_000), dryRun: false });
      }),
    );
    const finals = await Promise.all(handles.map((handle) => handle.done));

    for (const [n, final] of finals.entries()) {
      assert.equal(final.instanceId, wave[n]!.id);
      assert.equal(final.state, 'deregistered', JSON.stringify(final));
      assert.deepEqual(final.loadBalancers.map((lb) => lb.state), ['out', 'out', 'out']);
      assert.deepEqual(lbOf(final, pods.arn)['targets'], [{ id: wave[n]!.primary, port: 8080 }], 'its own targets only');
    }
    assert.equal(world.callsOf('ec2:DescribeInstances').length, 1);
    assert.deepEqual(targetsOf(world.callsOf('elbv2:DeregisterTargets', forGroup(ports.arn))[0]!), wave.map((i) => `${i.id}:30080`).sort());
    assert.equal(world.callsOf('elbv2:DeregisterTargets', forGroup(ports.arn)).length, 1);
    assert.equal(world.callsOf('elbv2:DeregisterTargets', forGroup(pods.arn)).length, 1);
    const classic = world.callsOf('elb:DeregisterInstancesFromLoadBalancer');
    assert.equal(classic.length, 1);
    assert.equal((classic[0]!['Instances'] as unknown[]).length, 8);
    // Discovery: one look at each group for all eight; out: one check of each for all eight.
    assert.equal(world.callsOf('elbv2:DescribeTargetHealth', (input) => input['Targets'] === undefined).length, 2);
    assert.equal(world.callsOf('elbv2:DescribeTargetHealth', isCheck).length, 2);
    assert.equal(world.callsOf('elb:DescribeInstanceHealth').length, 1);
    assert.deepEqual(world.group(ports.arn).targets.map((t) => t.Id), [NEIGHBOUR.id], 'the neighbour stays');
  });

  it('one instance of the batch no longer registered (InvalidTarget from an emulator): the others still leave, in a second call each', async () => {
    const world = new FakeAws();
    const group = world.addGroup('web', { tags: CLUSTER_TAG, targets: [[NODE.id, 30080], [NEIGHBOUR.id, 30080]] });
    const agent = mockedAgent(world);
    // The first, batched, call fails as moto does for a target it does not hold.
    let failed = false;
    world.fault('elbv2:DeregisterTargets', (input) => {
      if (failed || (input['Targets'] as unknown[]).length < 2) return undefined;
      failed = true;
      return awsError('InvalidTarget', { message: 'The following targets are not registered in target group' });
    });
    const handles = await Promise.all([NODE.id, NEIGHBOUR.id].map(async (id) => agent.drainer.start(await agent.drainer.find({ id }, AbortSignal.timeout(5_000)), { trigger: 'api', scope: ALL, deadline: new Date(Date.now() + 20_000), dryRun: false })));
    const finals = await Promise.all(handles.map((handle) => handle.done));
    assert.deepEqual(finals.map((final) => final.state), ['deregistered', 'deregistered']);
    assert.equal(failed, true);
    assert.deepEqual(world.group(group.arn).targets, []);
  });
});

describe('throttling', () => {
  it('Throttling on GetResources, DescribeTargetHealth, DeregisterTargets and the classic calls is retried until it succeeds', async () => {
    const world = new FakeAws();
    const group = world.addGroup('web', { tags: CLUSTER_TAG });
    world.addClassic('clb-web', CLUSTER_TAG);
    for (const action of [
      'tagging:GetResources',
      'elbv2:DescribeTargetHealth',
      'elbv2:DeregisterTargets',
      'elb:DeregisterInstancesFromLoadBalancer',
      'elb:DescribeInstanceHealth',
    ]) {
      world.fault(action, firstCalls(2, throttling));
    }
    const final = await drain(mockedAgent(world), { timeoutMs: 30_000 });

    assert.equal(final.state, 'deregistered', JSON.stringify(final));
    assert.equal(lbOf(final, group.arn).state, 'out');
    assert.equal(lbOf(final, 'clb-web').state, 'out');
    assert.equal(world.callsOf('elbv2:DeregisterTargets').length, 3, 'two throttled, then one that worked');
    assert.equal(world.callsOf('elb:DeregisterInstancesFromLoadBalancer').length, 3);
    assert.ok(world.callsOf('elbv2:DescribeTargetHealth').length > 2);
    assert.ok(world.callsOf('tagging:GetResources').length > 2);
    assert.deepEqual(world.group(group.arn).targets.map((target) => target.Id), [NEIGHBOUR.id]);
  });
});

describe('a drain that starts from known load balancers (a coordinator\'s report, on falling back)', () => {
  it('deregisters from them at once, while the tagging API stays throttled, and says the discovery did not finish', async () => {
    const world = new FakeAws();
    const group = world.addGroup('web', { tags: CLUSTER_TAG });
    world.fault('tagging:GetResources', always(throttling));
    const agent = mockedAgent(world);
    const reported = { family: 'target-group', arn: group.arn, targets: [{ id: NODE.id, port: 30080 }], state: 'draining' as const };
    const handle = agent.drainer.start(await node(agent), { trigger: 'spot-interruption', scope: ALL, deadline: new Date(Date.now() + 3_000), dryRun: false, startFrom: [reported] });
    const final = await handle.done;

    assert.equal(lbOf(final, group.arn).state, 'out', 'taken out without discovery');
    assert.deepEqual(world.group(group.arn).targets.map((target) => target.Id), [NEIGHBOUR.id]);
    assert.equal(final.state, 'timed_out', 'the rest could not be looked for');
    assert.match(final.reason ?? '', /could not list/);
  });
});

describe('throttling never sends discovery back to the start', () => {
  it('a throttled page of GetResources is asked again by itself: the pages already read are not read again', async () => {
    const world = new FakeAws();
    // 150 tagged target groups: the cluster tag's listing takes two pages of 100.
    const groups = Array.from({ length: 150 }, (_, i) => world.addGroup(`web-${i}`, { tags: CLUSTER_TAG }));
    const secondPage = (input: Answer) => (input as GetResourcesCommandInput).PaginationToken === '100';
    world.fault('tagging:GetResources', firstCalls(3, throttling, secondPage));
    const final = await drain(mockedAgent(world), { timeoutMs: 30_000 });

    assert.equal(final.state, 'deregistered', JSON.stringify(final.reason));
    assert.equal(final.loadBalancers.filter((lb) => lb.state === 'out').length, 150);
    const firstPages = world.callsOf('tagging:GetResources', (input) => !(input as GetResourcesCommandInput).PaginationToken);
    assert.equal(firstPages.length, 3, 'each tag key\'s first page was read once');
    assert.equal(world.callsOf('tagging:GetResources', secondPage).length, 4, 'three throttled, then the one that worked');
    assert.ok(groups.every((group) => group.targets.every((target) => target.Id !== NODE.id)));
  });
});

describe('one failing load balancer among healthy ones', () => {
  it('AccessDenied on one target group: that one failed with the permission fix, the others out, overall failed, without waiting for the deadline', async () => {
    const world = new FakeAws();
    const denied = world.addGroup('denied', { tags: CLUSTER_TAG });
    const fine = world.addGroup('fine', { tags: CLUSTER_TAG });
    world.addClassic('clb-web', CLUSTER_TAG);
    world.fault(
      'elbv2:DeregisterTargets',
      always(
        () =>
          awsError('AccessDenied', {
            message: `User: arn:aws:sts::${ACCOUNT}:assumed-role/hlv/x is not authorized to perform: elasticloadbalancing:DeregisterTargets on resource: ${denied.arn}`,
          }),
        forGroup(denied.arn),
      ),
    );
    const timeoutMs = 20_000;
    const started = Date.now();
    const final = await drain(mockedAgent(world), { timeoutMs });

    assert.equal(final.state, 'failed');
    assert.ok(Date.now() - started < timeoutMs / 2, 'a permanent error is reported at once, not at the deadline');
    const lb = lbOf(final, denied.arn);
    assert.equal(lb.state, 'failed');
    assert.match(lb.reason ?? '', /AccessDenied/);
    assert.match(lb.reason ?? '', /grant .*IAM/, 'the reason says how to fix it');
    assert.equal(world.callsOf('elbv2:DeregisterTargets', forGroup(denied.arn)).length, 1, 'a permission error is not retried');
    assert.equal(lbOf(final, fine.arn).state, 'out');
    assert.equal(lbOf(final, 'clb-web').state, 'out');
    assert.equal(world.target(fine.arn, NODE.id, 30080), undefined, 'the healthy target group was really deregistered');
  });

  it('a 5xx forever on one target group: it stays draining, the others out, timed_out at the deadline', async () => {
    const world = new FakeAws();
    const broken = world.addGroup('broken', { tags: CLUSTER_TAG });
    const fine = world.addGroup('fine', { tags: CLUSTER_TAG });
    world.addClassic('clb-web', CLUSTER_TAG);
    world.fault('elbv2:DeregisterTargets', always(() => awsError('ServiceUnavailable', { status: 503 }), forGroup(broken.arn)));
    const agent = mockedAgent(world);
    const handle = await startDrain(agent, { timeoutMs: 1_500 });

    const final = await endedByDeadline(agent, handle);
    assert.equal(final.state, 'timed_out');
    const lb = lbOf(final, broken.arn);
    assert.equal(lb.state, 'draining');
    assert.match(lb.reason ?? '', /ServiceUnavailable/);
    assert.ok(world.callsOf('elbv2:DeregisterTargets', forGroup(broken.arn)).length > 1, 'a transient error is retried');
    assert.equal(lbOf(final, fine.arn).state, 'out');
    assert.equal(lbOf(final, 'clb-web').state, 'out');
  });
});

describe('tagging API denied', () => {
  it('falls back to describing everything, reads tags at most 20 at a time, and still finds the tagged load balancers', async () => {
    const world = new FakeAws();
    const n = (i: number): string => String(i).padStart(2, '0');
    for (let i = 0; i < 45; i++) {
      const tags: Tags =
        i === 7 ? CLUSTER_TAG : i === 30 ? { [`kubernetes/cluster/${CLUSTER}`]: 'owned' } : i === 44 ? { 'kubernetes.io/cluster/other': 'owned' } : { team: 'web' };
      world.addClassic(`clb-${n(i)}`, tags);
    }
    const taggedAlb = world.addAlb('tagged', { 'elbv2.k8s.aws/cluster': CLUSTER });
    const otherAlb = world.addAlb('other', { 'elbv2.k8s.aws/cluster': 'other' });
    for (let i = 0; i < 45; i++) {
      const tags: Tags = i === 3 ? { 'elbv2.k8s.aws/cluster': CLUSTER } : i === 40 ? { 'elbv2.k8s.aws/cluster': 'other' } : {};
      const albs = i === 25 ? [taggedAlb] : i === 26 ? [otherAlb] : [];
      world.addGroup(`tg-${n(i)}`, { tags, albs });
    }
    world.fault('tagging:GetResources', always(() => Object.assign(awsError('AccessDeniedException'), { Code: undefined })));

    const final = await drain(mockedAgent(world));

    assert.equal(final.state, 'deregistered', JSON.stringify(final));
    assert.ok(world.callsOf('tagging:GetResources').length >= 1, 'the tagging API was tried first');
    const classicTagCalls = world.callsOf('elb:DescribeTags').map((input) => input['LoadBalancerNames'] as string[]);
    const elbv2TagCalls = world.callsOf('elbv2:DescribeTags').map((input) => input['ResourceArns'] as string[]);
    for (const names of [...classicTagCalls, ...elbv2TagCalls]) assert.ok(names.length <= 20, `DescribeTags with ${names.length} names`);
    assert.equal(new Set(classicTagCalls.flat()).size, 45, 'read the tags of every classic ELB');
    assert.equal(new Set(elbv2TagCalls.flat()).size, 45 + 2, 'read the tags of every target group and load balancer');

    assert.deepEqual(
      world.callsOf('elb:DeregisterInstancesFromLoadBalancer').map((input) => input['LoadBalancerName']).sort(),
      ['clb-07', 'clb-30'],
    );
    assert.deepEqual(
      world.callsOf('elbv2:DeregisterTargets').map((input) => input['TargetGroupArn']).sort(),
      [tgArn('tg-03'), tgArn('tg-25')],
    );
    assert.equal(final.loadBalancers.length, 4);
    assert.ok(final.loadBalancers.every((lb) => lb.state === 'out'));
  });
});

describe('dry run', () => {
  it('finds and reports the load balancers, deregisters nothing, and says skipped', async () => {
    const world = new FakeAws();
    const group = world.addGroup('web', { tags: CLUSTER_TAG });
    world.addClassic('clb-web', CLUSTER_TAG);
    world.addClassic('clb-foreign', {});
    const final = await drain(mockedAgent(world), { dryRun: true });

    assert.equal(final.state, 'skipped');
    assert.equal(final.dryRun, true);
    assert.match(final.reason ?? '', /dry run/);
    assert.deepEqual(final.loadBalancers.map((lb) => lb['name'] ?? lb['arn']).sort(), ['clb-web', group.arn].sort(), 'reports what it would drain');
    assert.equal(world.callsOf('elbv2:DeregisterTargets').length, 0);
    assert.equal(world.callsOf('elb:DeregisterInstancesFromLoadBalancer').length, 0);
    assert.equal(world.target(group.arn, NODE.id, 30080)?.State, 'healthy');
    assert.ok(world.classic[0]!.listed.has(NODE.id));
  });
});

describe('joining', () => {
  it('a second start for the same instance while one runs joins it: one set of deregister calls', async () => {
    const world = new FakeAws();
    const group = world.addGroup('web', { tags: CLUSTER_TAG });
    group.drains = true;
    world.addClassic('clb-web', CLUSTER_TAG);
    const agent = mockedAgent(world);
    const first = await startDrain(agent);
    await waitFor('the first drain to deregister', () => world.callsOf('elbv2:DeregisterTargets').length === 1);
    const second = await startDrain(agent);

    assert.equal(first.joined, false);
    assert.equal(second.joined, true);
    assert.equal(second.status().startedAt, first.status().startedAt);
    assert.equal(agent.drainer.running(), 1);

    world.finishDraining(group.arn, NODE.id, 30080);
    const [a, b] = await Promise.all([first.done, second.done]);
    assert.equal(a.state, 'deregistered');
    assert.deepEqual(b, a);
    assert.equal(world.callsOf('elbv2:DeregisterTargets').length, 1);
    assert.equal(world.callsOf('elb:DeregisterInstancesFromLoadBalancer').length, 1);

    const third = await startDrain(agent);
    assert.equal(third.joined, false, 'a finished drain is not joined: asking again starts a new one');
    const again = await third.done;
    assert.equal(again.state, 'deregistered');
    assert.equal(again.loadBalancers.length, 0, 'already out of everything');
  });
});

describe('instance lookup', () => {
  const find = (agent: Agent, ref: { id: string } | { ip: string }): Promise<Instance> => agent.lookup.find(ref, AbortSignal.timeout(5_000));

  it('an unknown id is InstanceNotFoundError', async () => {
    const agent = mockedAgent(new FakeAws());
    await assert.rejects(find(agent, { id: 'i-0doesnotexist0000' }), (error: unknown) => {
      assert.ok(error instanceof InstanceNotFoundError, String(error));
      assert.match(error.message, /i-0doesnotexist0000/);
      return true;
    });
  });

  it('an instance of another VPC is InstanceNotFoundError', async () => {
    const agent = mockedAgent(new FakeAws());
    await assert.rejects(find(agent, { id: FOREIGN.id }), InstanceNotFoundError);
    await assert.rejects(find(agent, { ip: FOREIGN.primary }), InstanceNotFoundError);
  });

  it('finds the instance by its secondary IP, and by an address inside its delegated prefix', async () => {
    const world = new FakeAws();
    const agent = mockedAgent(world);

    const bySecondary = await find(agent, { ip: NODE.secondary });
    assert.equal(bySecondary.id, NODE.id);

    world.calls.length = 0;
    const byPrefix = await find(agent, { ip: NODE.podIp });
    assert.equal(byPrefix.id, NODE.id);
    assert.deepEqual([...byPrefix.privateIps].sort(), [NODE.primary, NODE.secondary].sort());
    assert.deepEqual(byPrefix.ipv4Prefixes, [NODE.prefix]);
    const [direct, ...scan] = world.callsOf('ec2:DescribeNetworkInterfaces');
    assert.deepEqual(
      (direct!['Filters'] as { Name: string; Values: string[] }[]).find((filter) => filter.Name === 'addresses.private-ip-address')?.Values,
      [NODE.podIp],
      'the precise query first',
    );
    assert.ok(scan.length >= 1, 'then a scan of the interfaces');

    await assert.rejects(find(agent, { ip: '10.0.9.9' }), InstanceNotFoundError);
  });
});

describe('awsCalls in the drain status', () => {
  it('counts the calls the drain made, by action (clients from createAwsClients, answered inside their middleware stack)', async () => {
    // aws-sdk-client-mock replaces send(), so the agent's counting middleware never runs under it.
    // Here the real clients run their stack; a middleware placed after the counter answers from the fake.
    const world = new FakeAws();
    world.addGroup('web', { tags: CLUSTER_TAG });
    world.addClassic('clb-web', CLUSTER_TAG);
    const clients = createAwsClients(REGION);
    try {
      for (const [service, client] of [
        ['ec2', await clients.ec2()],
        ['elb', await clients.elb()],
        ['elbv2', await clients.elbv2()],
        ['tagging', await clients.tagging()],
      ] as const) {
        (client.middlewareStack as unknown as ShortCircuitStack).add(
          (_next, context) => async (args) => ({
            output: await world.answer(`${service}:${(context.commandName ?? '').replace(/Command$/, '')}`, args.input),
            response: {},
          }),
          { step: 'initialize', priority: 'low', name: 'fakeAwsAnswers' },
        );
      }
      const agent = wire(clients, clients.calls);
      const instance = await node(agent);
      const before = world.calls.length;
      const final = await agent.drainer.start(instance, { trigger: 'cli', scope: ALL, deadline: new Date(Date.now() + 20_000), dryRun: false }).done;
      assert.equal(final.state, 'deregistered', JSON.stringify(final));

      const expected: Record<string, number> = {};
      for (const call of world.calls.slice(before)) {
        const action = call.action.slice(call.action.indexOf(':') + 1);
        expected[action] = (expected[action] ?? 0) + 1;
      }
      assert.deepEqual(final.awsCalls, expected);
      assert.equal(final.awsCalls['DeregisterTargets'], 1);
      assert.equal(final.awsCalls['DeregisterInstancesFromLoadBalancer'], 1);
      assert.equal(final.awsCalls['DescribeInstances'], undefined, 'the lookup before the drain is not the drain\'s');
      assert.equal(clients.calls.totals()['DescribeInstances'], 1, 'but it is in the running total');
    } finally {
      clients.destroy();
    }
  });
});

interface ShortCircuitStack {
  add(
    middleware: (next: unknown, context: { commandName?: string }) => (args: { input: Answer }) => Promise<{ output: Answer; response: unknown }>,
    options: { step: 'initialize'; priority: 'low'; name: string },
  ): void;
}
