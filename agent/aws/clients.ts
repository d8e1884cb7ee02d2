/**
 * The one place that builds AWS SDK clients.
 *
 * Credentials come from the SDK's standard chain (environment, IRSA web identity, EKS Pod Identity,
 * instance profile); endpoints honour AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE> as the SDK
 * defines them. Retries use the SDK's standard mode (exponential backoff with jitter), with few attempts,
 * not the adaptive one, whose client-side rate limiter slows every later call after one throttle (a
 * throttled drain took seconds instead of a fraction of one, measured): the drainer retries across its whole
 * deadline itself, and every call it makes carries an abort signal, so no retry runs past the deadline.
 *
 * Every client is loaded on first use, with its SDK module (`<service>-sdk.ts`, each a chunk of its own in
 * the build): a follower waiting for a notice with CLUSTERNAME set calls AWS not at all, and pays nothing
 * for the SDK's modules (the SDK's core with the EC2 client, once loaded, costs it about 4 MiB of resident
 * memory on Node 22: bench/RESULTS.md, table 3). Modules that send commands take them from the same
 * module (`sdk` below) when they first send one, by which time it is loaded.
 */
import type { AutoScalingClient } from '@aws-sdk/client-auto-scaling';
import type { EC2Client } from '@aws-sdk/client-ec2';
import type { ElasticLoadBalancingClient } from '@aws-sdk/client-elastic-load-balancing';
import type { ElasticLoadBalancingV2Client } from '@aws-sdk/client-elastic-load-balancing-v2';
import type { ResourceGroupsTaggingAPIClient } from '@aws-sdk/client-resource-groups-tagging-api';
import { CallLog } from './call-log.ts';

/** Loads and creates the client on the first call; every call answers the same client. */
export type LazyClient<T> = () => Promise<T>;

/**
 * Each service's SDK module (the client and the commands the agent sends), loaded on first use: the one
 * way in, for the clients here and for the modules that send commands, which by then find it loaded.
 */
export const sdk = {
  ec2: () => import('./ec2-sdk.ts'),
  elb: () => import('./elb-sdk.ts'),
  elbv2: () => import('./elbv2-sdk.ts'),
  tagging: () => import('./tagging-sdk.ts'),
  autoscaling: () => import('./autoscaling-sdk.ts'),
} as const;

export interface AwsClients {
  readonly ec2: LazyClient<EC2Client>;
  readonly elb: LazyClient<ElasticLoadBalancingClient>;
  readonly elbv2: LazyClient<ElasticLoadBalancingV2Client>;
  readonly tagging: LazyClient<ResourceGroupsTaggingAPIClient>;
  readonly autoscaling: LazyClient<AutoScalingClient>;
  /** Counts every call by action, overall and per drain. */
  readonly calls: CallLog;
  /** Destroys every client created so far (a lazy one that was never asked for is never loaded). */
  destroy(): void;
}

/** What every SDK client has (their middleware stacks' types differ by client; counting needs only this much). */
interface SdkClient {
  readonly middlewareStack: object;
  destroy(): void;
}

/** A client's middleware stack, as far as counting calls needs it. */
interface CountableStack {
  add(middleware: (next: (args: unknown) => Promise<unknown>, context: { commandName?: string }) => (args: unknown) => Promise<unknown>, options: { step: 'initialize'; name: string }): void;
}

export function createAwsClients(region: string): AwsClients {
  const calls = new CallLog();
  // One credential chain and one connection pool for all clients, made with the first (again, if that failed).
  let shared: ReturnType<typeof clientConfig> | undefined;
  const common = () =>
    (shared ??= clientConfig(region).catch((error: unknown) => {
      shared = undefined;
      throw error;
    }));

  const created: SdkClient[] = [];
  const counted = <T extends SdkClient>(client: T): T => {
    countCalls(client, calls);
    created.push(client);
    return client;
  };
  /** The client `load` makes, made once, on the first call (a failed load is tried again on the next). */
  const lazy = <T extends SdkClient>(load: () => Promise<T>): LazyClient<T> => {
    let client: Promise<T> | undefined;
    return () =>
      (client ??= load().then(counted, (error: unknown) => {
        client = undefined;
        throw error;
      }));
  };

  return {
    ec2: lazy(async () => new (await sdk.ec2()).EC2Client(await common())),
    elb: lazy(async () => new (await sdk.elb()).ElasticLoadBalancingClient(await common())),
    elbv2: lazy(async () => new (await sdk.elbv2()).ElasticLoadBalancingV2Client(await common())),
    tagging: lazy(async () => new (await sdk.tagging()).ResourceGroupsTaggingAPIClient(await common())),
    autoscaling: lazy(async () => new (await sdk.autoscaling()).AutoScalingClient(await common())),
    calls,
    destroy() {
      for (const client of created) client.destroy();
    },
  };
}

async function clientConfig(region: string) {
  const { fromNodeProviderChain, NodeHttpHandler } = await import('./common-sdk.ts');
  return {
    region,
    credentials: fromNodeProviderChain(),
    retryMode: 'standard',
    maxAttempts: 3,
    // throwOnRequestTimeout: without it this handler only warns (on the console) and keeps waiting.
    requestHandler: new NodeHttpHandler({ connectionTimeout: 3_000, requestTimeout: 10_000, throwOnRequestTimeout: true }),
  } as const;
}

function countCalls(client: SdkClient, calls: CallLog): void {
  (client.middlewareStack as CountableStack).add(
    (next, context) => (args) => {
      calls.record((context.commandName ?? 'Unknown').replace(/Command$/, ''));
      return next(args);
    },
    // Initialize runs once per command, before retries: this counts what the agent asked for.
    { step: 'initialize', name: 'hastaLaVistaCallCounter' },
  );
}
