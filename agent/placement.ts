/**
 * Where the agent runs: region, VPC and cluster, from the configuration where it says, else from
 * IMDS and the instance's own tags. Outside EC2 (the one-shot command on a laptop) the configuration
 * must say all three, and the error says so.
 */
import { createAwsClients, type AwsClients } from './aws/clients.ts';
import { errorMessage } from './aws/errors.ts';
import { clusterNameOfInstance, PlacementError, type Placement } from './aws/provider.ts';
import type { Config } from './config.ts';
import { createImdsClient, instanceIdentity, type ImdsClient, type InstanceIdentity } from './imds/client.ts';
import type { Logger } from './log.ts';

export interface Resolved {
  readonly placement: Placement;
  readonly clients: AwsClients;
  /** This instance, when IMDS was asked (always in agent mode). */
  readonly self: InstanceIdentity | undefined;
}

export function imdsFor(config: Config, logger: Logger): ImdsClient {
  return createImdsClient({ v1Fallback: config.imdsV1Fallback, logger: logger.child({ component: 'imds' }) });
}

/** With `imds`, this instance's identity is read first (the agent needs it); without, the configuration must say all. */
export async function resolvePlacement(config: Config, imds: ImdsClient | undefined, logger: Logger): Promise<Resolved> {
  let self: InstanceIdentity | undefined;
  if (imds !== undefined) {
    try {
      self = await instanceIdentity(imds);
    } catch (error) {
      throw new PlacementError(
        `IMDS did not answer (${errorMessage(error)}); outside EC2, set AWS_REGION, VPCID and CLUSTERNAME`,
      );
    }
  }
  const region = config.region ?? self?.region;
  if (region === undefined) throw new PlacementError(`${missing(config).join(', ')} not set: outside EC2, set AWS_REGION, VPCID and CLUSTERNAME`);
  const clients = createAwsClients(region);
  const vpcId = config.vpcId ?? self?.vpcId;
  if (vpcId === undefined) throw new PlacementError('VPCID is not set and IMDS gave no VPC for the primary network interface: set VPCID');
  const clusterName = config.clusterName ?? (self ? await clusterNameOfInstance(clients, self.instanceId) : undefined);
  if (clusterName === undefined) throw new PlacementError('CLUSTERNAME is not set: set it, or run on a node tagged with its cluster');
  const placement = { region, vpcId, clusterName };
  logger.debug({ placement, from: self ? 'imds' : 'config' }, 'placement resolved');
  return { placement, clients, self };
}

function missing(config: Config): string[] {
  return [
    ...(config.region === undefined ? ['AWS_REGION'] : []),
    ...(config.vpcId === undefined ? ['VPCID'] : []),
    ...(config.clusterName === undefined ? ['CLUSTERNAME'] : []),
  ];
}
