/**
 * AWS for the benchmarks: a real moto server behind the project's call-counting proxy, with a
 * timestamp for every call that reaches the endpoint, an optional token-bucket rate limiter shaped
 * like the ELB API's, and fast parallel seeding of large regions with raw SDK calls.
 */
import { CreateSubnetCommand, CreateVpcCommand, EC2Client, RunInstancesCommand, type Instance as Ec2Instance } from '@aws-sdk/client-ec2';
import {
  CreateLoadBalancerCommand as CreateClassicCommand,
  ElasticLoadBalancingClient,
  RegisterInstancesWithLoadBalancerCommand,
} from '@aws-sdk/client-elastic-load-balancing';
import {
  CreateListenerCommand,
  CreateLoadBalancerCommand,
  CreateTargetGroupCommand,
  ElasticLoadBalancingV2Client,
  RegisterTargetsCommand,
} from '@aws-sdk/client-elastic-load-balancing-v2';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { Agent as HttpAgent } from 'node:http';
import { startAwsProxy, type AwsCall, type AwsProxy } from '../../test/fakes/aws-proxy.ts';
import { startMoto, type Moto } from '../../test/helpers/moto.ts';
import { pool } from '../../agent/aws/batches.ts';

export const REGION = 'us-east-1';
export const CLUSTER = 'bench';

export interface StampedCall {
  readonly at: number;
  readonly service: AwsCall['service'];
  readonly action: string;
  /** Answered by the rate limiter with Throttling instead of reaching moto. */
  throttled: boolean;
}

export interface Endpoint {
  readonly moto: Moto;
  readonly proxy: AwsProxy;
  /** Every call that reached the proxy, in arrival order, with its arrival time. */
  readonly stamps: StampedCall[];
  /** Installs (or with undefined removes) a rate limiter in front of moto. */
  setLimiter(limiter: TokenBuckets | undefined): void;
  /** tag:GetResources answers AccessDenied while set: the agent's fallback path. */
  denyTagging: boolean;
  close(): Promise<void>;
}

const open = new Set<Endpoint>();

/** Closes every endpoint still open (on Ctrl-C), so no moto server outlives the benchmark. */
export async function closeAllEndpoints(): Promise<void> {
  await Promise.allSettled([...open].map((endpoint) => endpoint.close()));
}

export async function startEndpoint(): Promise<Endpoint> {
  const moto = await startMoto();
  const proxy = await startAwsProxy(moto.url);
  const stamps: StampedCall[] = [];
  let limiter: TokenBuckets | undefined;
  const endpoint: Endpoint = {
    moto,
    proxy,
    stamps,
    denyTagging: false,
    setLimiter: (next) => {
      limiter = next;
    },
    close: async () => {
      open.delete(endpoint);
      await proxy.close();
      await moto.stop();
    },
  };
  open.add(endpoint);
  // Rules run in order for every call; this one only records and, when a limiter is set, throttles.
  proxy.addFault((call) => {
    const stamp: StampedCall = { at: Date.now(), service: call.service, action: call.action, throttled: false };
    stamps.push(stamp);
    if (endpoint.denyTagging && call.service === 'tagging') {
      return { kind: 'error', status: 400, code: 'AccessDeniedException', message: 'User is not authorized to perform: tag:GetResources' };
    }
    if (limiter && !limiter.take(call)) {
      stamp.throttled = true;
      return { kind: 'error', status: 400, code: 'Throttling', message: 'Rate exceeded' };
    }
    return undefined;
  });
  // The proxy keeps every call with its body; the benchmarks keep their own stamps instead.
  setInterval(() => proxy.calls.splice(0, proxy.calls.length), 5_000).unref();
  return endpoint;
}

export interface BucketSpec {
  readonly burst: number;
  readonly refillPerSecond: number;
}

export interface LimiterSpec {
  /** Non-mutating calls (Describe*, Get*), one bucket per API (ELB, ELBv2, EC2, tagging), as ELB documents. */
  readonly describe: BucketSpec;
  /** Register/Deregister and other mutating calls, one bucket per API. */
  readonly mutate: BucketSpec;
  /** EC2's own non-mutating bucket (DescribeInstances), which is much larger than ELB's. */
  readonly ec2Describe: BucketSpec;
  /** tag:GetResources (undocumented: assumed). */
  readonly tagging: BucketSpec;
}

/** Token buckets keyed by API and kind of call; a throttled request takes no token. */
export class TokenBuckets {
  private readonly buckets = new Map<string, { tokens: number; at: number; spec: BucketSpec }>();
  readonly throttledBy = new Map<string, number>();

  constructor(
    readonly spec: LimiterSpec,
    private readonly now: () => number = Date.now,
  ) {}

  take(call: { service: string; action: string }): boolean {
    const mutating = /^(Register|Deregister|Create|Delete|Modify|Add|Remove|Set|Apply|Attach|Detach)/.test(call.action);
    const spec = mutating ? this.spec.mutate : call.service === 'ec2' ? this.spec.ec2Describe : call.service === 'tagging' ? this.spec.tagging : this.spec.describe;
    const key = `${call.service}:${mutating ? 'mutate' : 'describe'}`;
    const now = this.now();
    const bucket = this.buckets.get(key) ?? { tokens: spec.burst, at: now, spec };
    bucket.tokens = Math.min(spec.burst, bucket.tokens + ((now - bucket.at) / 1000) * spec.refillPerSecond);
    bucket.at = now;
    this.buckets.set(key, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return true;
    }
    this.throttledBy.set(call.action, (this.throttledBy.get(call.action) ?? 0) + 1);
    return false;
  }
}

// ---------------------------------------------------------------- seeding

export function seedClients(endpoint: string) {
  // Many sockets: seeding runs many calls at once against moto's threaded server.
  const requestHandler = new NodeHttpHandler({ httpAgent: new HttpAgent({ keepAlive: true, maxSockets: 64 }) });
  const config = { region: REGION, endpoint, credentials: { accessKeyId: 'test', secretAccessKey: 'test' }, requestHandler, maxAttempts: 5 };
  return { ec2: new EC2Client(config), elb: new ElasticLoadBalancingClient(config), elbv2: new ElasticLoadBalancingV2Client(config) };
}
export type SeedClients = ReturnType<typeof seedClients>;


export interface Node {
  readonly id: string;
  readonly ip: string;
}

/** The cluster: a VPC, nodes, and the load balancers every node is registered in (as a NodePort Service's are). */
export interface Cluster {
  readonly vpcId: string;
  readonly subnets: readonly string[];
  readonly nodes: readonly Node[];
  /** Classic ELBs tagged kubernetes.io/cluster/<CLUSTER>. */
  readonly classic: readonly string[];
  /** Target groups: one behind a tagged ALB (type instance), one tagged itself (type ip). */
  readonly groups: readonly { readonly arn: string; readonly type: 'instance' | 'ip' }[];
}

export async function seedCluster(aws: SeedClients, nodeCount: number): Promise<Cluster> {
  const vpcId = (await aws.ec2.send(new CreateVpcCommand({ CidrBlock: '10.0.0.0/16' }))).Vpc!.VpcId!;
  const subnets = [
    (await aws.ec2.send(new CreateSubnetCommand({ VpcId: vpcId, CidrBlock: '10.0.0.0/20', AvailabilityZone: `${REGION}a` }))).Subnet!.SubnetId!,
    (await aws.ec2.send(new CreateSubnetCommand({ VpcId: vpcId, CidrBlock: '10.0.16.0/20', AvailabilityZone: `${REGION}b` }))).Subnet!.SubnetId!,
  ];
  const launched: Ec2Instance[] = [];
  for (let left = nodeCount; left > 0; left -= Math.min(left, 100)) {
    const count = Math.min(left, 100);
    const answer = await aws.ec2.send(
      new RunInstancesCommand({
        ImageId: 'ami-12c6146b',
        MinCount: count,
        MaxCount: count,
        SubnetId: subnets[launched.length % 2],
        TagSpecifications: [{ ResourceType: 'instance', Tags: [{ Key: `kubernetes.io/cluster/${CLUSTER}`, Value: 'owned' }] }],
      }),
    );
    launched.push(...answer.Instances!);
  }
  const nodes = launched.map((i) => ({ id: i.InstanceId!, ip: i.PrivateIpAddress! }));
  const tag = [{ Key: `kubernetes.io/cluster/${CLUSTER}`, Value: 'owned' }];

  const classic = ['clb-web', 'clb-api'];
  for (const name of classic) {
    await aws.elb.send(
      new CreateClassicCommand({ LoadBalancerName: name, Listeners: [{ Protocol: 'TCP', LoadBalancerPort: 80, InstancePort: 30080 }], Subnets: subnets, Tags: tag }),
    );
  }
  const alb = (await aws.elbv2.send(new CreateLoadBalancerCommand({ Name: 'alb-shop', Subnets: [...subnets], Tags: [{ Key: 'elbv2.k8s.aws/cluster', Value: CLUSTER }] })))
    .LoadBalancers![0]!.LoadBalancerArn!;
  const viaAlb = (await aws.elbv2.send(new CreateTargetGroupCommand({ Name: 'tg-shop', Protocol: 'HTTP', Port: 80, VpcId: vpcId, TargetType: 'instance' })))
    .TargetGroups![0]!.TargetGroupArn!;
  await aws.elbv2.send(new CreateListenerCommand({ LoadBalancerArn: alb, Protocol: 'HTTP', Port: 80, DefaultActions: [{ Type: 'forward', TargetGroupArn: viaAlb }] }));
  const ipGroup = (
    await aws.elbv2.send(new CreateTargetGroupCommand({ Name: 'tg-pods-ip', Protocol: 'HTTP', Port: 80, VpcId: vpcId, TargetType: 'ip', Tags: tag }))
  ).TargetGroups![0]!.TargetGroupArn!;
  const cluster: Cluster = {
    vpcId,
    subnets,
    nodes,
    classic,
    groups: [
      { arn: viaAlb, type: 'instance' },
      { arn: ipGroup, type: 'ip' },
    ],
  };
  await registerNodes(aws, cluster, nodes);
  return cluster;
}

/** (Re-)registers nodes in every cluster load balancer: 2 classic ELBs, 2 target groups (4 memberships a node). */
export async function registerNodes(aws: SeedClients, cluster: Cluster, nodes: readonly Node[]): Promise<void> {
  for (let start = 0; start < nodes.length; start += 100) {
    const batch = nodes.slice(start, start + 100);
    await Promise.all([
      ...cluster.classic.map((name) =>
        aws.elb.send(new RegisterInstancesWithLoadBalancerCommand({ LoadBalancerName: name, Instances: batch.map((n) => ({ InstanceId: n.id })) })),
      ),
      ...cluster.groups.map((group) =>
        aws.elbv2.send(
          new RegisterTargetsCommand({
            TargetGroupArn: group.arn,
            Targets: batch.map((n) => ({ Id: group.type === 'instance' ? n.id : n.ip, Port: group.type === 'instance' ? 30080 : 8080 })),
          }),
        ),
      ),
    ]);
  }
}

/**
 * Other load balancers in the region, none of them this cluster's: half classic ELBs, half target
 * groups; alternately untagged and tagged for another cluster. `from` lets a larger region be grown
 * from a smaller one.
 */
export async function seedOthers(aws: SeedClients, cluster: Cluster, from: number, to: number): Promise<void> {
  const indices = Array.from({ length: to - from }, (_, i) => from + i);
  await pool(indices, 24, async (i) => {
    const foreign = i % 4 < 2;
    if (i % 2 === 0) {
      await aws.elb.send(
        new CreateClassicCommand({
          LoadBalancerName: `other-clb-${i}`,
          Listeners: [{ Protocol: 'TCP', LoadBalancerPort: 80, InstancePort: 31000 }],
          Subnets: [...cluster.subnets],
          Tags: foreign ? [{ Key: 'kubernetes.io/cluster/other', Value: 'owned' }] : [{ Key: 'team', Value: 'data' }],
        }),
      );
    } else {
      await aws.elbv2.send(
        new CreateTargetGroupCommand({
          Name: `other-tg-${i}`,
          Protocol: 'HTTP',
          Port: 80,
          VpcId: cluster.vpcId,
          TargetType: 'instance',
          Tags: foreign ? [{ Key: 'elbv2.k8s.aws/cluster', Value: 'other' }] : [{ Key: 'team', Value: 'data' }],
        }),
      );
    }
  });
}
