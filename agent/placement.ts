/**
 * Where the agent runs: region, VPC and cluster, from the configuration where it says, else from
 * IMDS and the instance's own tags. Outside EC2 (the one-shot command on a laptop) the configuration
 * must say all three, and the error says so.
 */
import { createAwsClients, type AwsClients } from './aws/clients.ts';
import { clusterNameOfInstance, PlacementError, type Placement } from './aws/provider.ts';
import type { Config } from './config.ts';
import { createImdsClient, ImdsHopLimitError, instanceIdentity, type ImdsClient, type InstanceIdentity } from './imds/client.ts';
import type { Logger } from './log.ts';

export interface Resolved {
  readonly placement: Placement;
  readonly clients: AwsClients;
  /** This instance, when IMDS was asked (always in agent mode). */
  readonly self: InstanceIdentity | undefined;
}

export function imdsFor(config: Config, logger: Logger): ImdsClient {
  return createImdsClient({ endpoint: config.imdsEndpoint, v1Fallback: config.imdsV1Fallback, logger: logger.child({ component: 'imds' }) });
}

/** What IMDS is asked for: this instance's identity (the agent, `drain --self`), or only what the configuration leaves out. */
export type ImdsUse = { readonly client: ImdsClient; readonly for: 'self' | 'placement' };

/** With `imds`, this instance's identity is read first; without, the configuration must say all. */
export async function resolvePlacement(config: Config, imds: ImdsUse | undefined, logger: Logger): Promise<Resolved> {
  let self: InstanceIdentity | undefined;
  if (imds !== undefined) {
    try {
      self = await instanceIdentity(imds.client);
    } catch (error) {
      throw new PlacementError(imdsFailure(error, imds.for, config));
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

/**
 * What to do about it. A hop limit names its own fix; an instance that must know itself needs IMDS whatever
 * the configuration says; only a lookup of what the configuration left out can do without it.
 */
function imdsFailure(error: unknown, use: ImdsUse['for'], config: Config): string {
  // The IMDS client's own errors: their message is the whole cause, no AWS error code to add.
  const cause = `IMDS did not answer (${error instanceof Error ? error.message : String(error)})`;
  if (error instanceof ImdsHopLimitError) return cause;
  if (use === 'placement') return `${cause}; outside EC2, set ${missing(config).join(', ')}`;
  return (
    `${cause}: this instance's id and addresses come only from IMDS, whatever AWS_REGION, VPCID and CLUSTERNAME say; ` +
    'run on the EC2 instance with IMDS enabled (AWS_EC2_METADATA_SERVICE_ENDPOINT if it is not at 169.254.169.254)'
  );
}

function missing(config: Config): string[] {
  return [
    ...(config.region === undefined ? ['AWS_REGION'] : []),
    ...(config.vpcId === undefined ? ['VPCID'] : []),
    ...(config.clusterName === undefined ? ['CLUSTERNAME'] : []),
  ];
}
