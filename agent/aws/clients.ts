/**
 * The one place that builds AWS SDK clients.
 *
 * Credentials come from the SDK's standard chain (environment, IRSA web identity, EKS Pod Identity,
 * instance profile); endpoints honour AWS_ENDPOINT_URL and AWS_ENDPOINT_URL_<SERVICE> as the SDK
 * defines them. Retries use the SDK's standard mode (exponential backoff with jitter), with few attempts,
 * not the adaptive one, whose client-side rate limiter slows every later call after one throttle (a
 * throttled drain took seconds instead of a fraction of one, measured): the drainer retries across its whole
 * deadline itself, and every call it makes carries an abort signal, so no retry runs past the deadline.
 */
import { AutoScalingClient } from '@aws-sdk/client-auto-scaling';
import { EC2Client } from '@aws-sdk/client-ec2';
import { ElasticLoadBalancingClient } from '@aws-sdk/client-elastic-load-balancing';
import { ElasticLoadBalancingV2Client } from '@aws-sdk/client-elastic-load-balancing-v2';
import { ResourceGroupsTaggingAPIClient } from '@aws-sdk/client-resource-groups-tagging-api';
import { fromNodeProviderChain } from '@aws-sdk/credential-providers';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { CallLog } from './call-log.ts';

export interface AwsClients {
  readonly ec2: EC2Client;
  readonly elb: ElasticLoadBalancingClient;
  readonly elbv2: ElasticLoadBalancingV2Client;
  readonly tagging: ResourceGroupsTaggingAPIClient;
  readonly autoscaling: AutoScalingClient;
  /** Counts every call by action, overall and per drain. */
  readonly calls: CallLog;
  destroy(): void;
}

/** A client's middleware stack, as far as counting calls needs it. */
interface CountableClient {
  middlewareStack: {
    add(middleware: (next: (args: unknown) => Promise<unknown>, context: { commandName?: string }) => (args: unknown) => Promise<unknown>, options: { step: 'initialize'; name: string }): void;
  };
}

export function createAwsClients(region: string): AwsClients {
  const calls = new CallLog();
  const common = {
    region,
    credentials: fromNodeProviderChain(),
    retryMode: 'standard',
    maxAttempts: 3,
    // throwOnRequestTimeout: without it this handler only warns (on the console) and keeps waiting.
    requestHandler: new NodeHttpHandler({ connectionTimeout: 3_000, requestTimeout: 10_000, throwOnRequestTimeout: true }),
  } as const;

  const clients = {
    ec2: new EC2Client(common),
    elb: new ElasticLoadBalancingClient(common),
    elbv2: new ElasticLoadBalancingV2Client(common),
    tagging: new ResourceGroupsTaggingAPIClient(common),
    autoscaling: new AutoScalingClient(common),
  };
  for (const client of Object.values(clients)) countCalls(client as unknown as CountableClient, calls);

  return {
    ...clients,
    calls,
    destroy() {
      for (const client of Object.values(clients)) client.destroy();
    },
  };
}

function countCalls(client: CountableClient, calls: CallLog): void {
  client.middlewareStack.add(
    (next, context) => (args) => {
      calls.record((context.commandName ?? 'Unknown').replace(/Command$/, ''));
      return next(args);
    },
    // Initialize runs once per command, before retries: this counts what the agent asked for.
    { step: 'initialize', name: 'hastaLaVistaCallCounter' },
  );
}
