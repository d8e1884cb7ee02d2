/**
 * Finds an instance of the VPC by id or by any of its addresses: private IPv4 (primary, secondary), IPv6,
 * or one inside a delegated IPv4 or IPv6 prefix (the VPC CNI's prefix mode hands pods such addresses,
 * and ip target groups hold them).
 *
 * The EC2 SDK is imported only when a lookup runs (see AwsClients.ec2): an agent that never looks up an
 * instance never loads it.
 */
import type { EC2Client, Instance as Ec2Instance, NetworkInterface } from '@aws-sdk/client-ec2';
import { InstanceNotFoundError, type Instance, type InstanceLookup, type InstanceRef } from '../drain/instance.ts';
import { sdk } from './clients.ts';
import { errorCode } from './errors.ts';
import { cidrContains, ipFamily } from '../drain/addresses.ts';
import { tagsFromList } from './tags.ts';
import { describeSurvivors } from './batches.ts';
import { BATCH_WINDOW_MS, Coalescer } from './coalescer.ts';


/** One instance by id, or undefined when EC2 does not know it. */
export async function describeInstance(ec2: () => Promise<EC2Client>, id: string, signal?: AbortSignal): Promise<Ec2Instance | undefined> {
  const client = await ec2();
  const { DescribeInstancesCommand } = await sdk.ec2();
  try {
    const answer = await client.send(new DescribeInstancesCommand({ InstanceIds: [id] }), { abortSignal: signal });
    return answer.Reservations?.flatMap((reservation) => reservation.Instances ?? [])[0];
  } catch (error) {
    if (errorCode(error) === 'InvalidInstanceID.NotFound') return undefined;
    throw error;
  }
}

/** DescribeInstances takes many ids; a few hundred keep the answer small. */
const IDS_PER_CALL = 200;

export class Ec2InstanceLookup implements InstanceLookup {
  /** Lookups of a wave's instances that arrive together: one DescribeInstances for all of them. */
  private readonly byId: Coalescer<string, Ec2Instance>;

  constructor(
    private readonly ec2: () => Promise<EC2Client>,
    private readonly vpcId: string,
    batchWindowMs = BATCH_WINDOW_MS,
  ) {
    this.byId = new Coalescer({
      windowMs: batchWindowMs,
      maxItems: IDS_PER_CALL,
      itemKey: (id) => id,
      call: async (_key, ids, signal) => {
        const client = await this.ec2();
        const { DescribeInstancesCommand } = await sdk.ec2();
        // One unknown id fails the whole call: then one by one, so the others are still found.
        return describeSurvivors(
          ids,
          async (batch) => ((await client.send(new DescribeInstancesCommand({ InstanceIds: batch }), { abortSignal: signal })).Reservations ?? []).flatMap((r) => r.Instances ?? []),
          (error) => errorCode(error) === 'InvalidInstanceID.NotFound',
        );
      },
    });
  }

  async find(ref: InstanceRef, signal: AbortSignal): Promise<Instance> {
    const id = 'id' in ref ? ref.id : await this.instanceIdByIp(ref.ip, signal);
    if (id === undefined) throw new InstanceNotFoundError(ref, this.vpcId);
    const instance = (await this.byId.submit('ids', [id], signal)).find((candidate) => candidate.InstanceId === id);
    if (instance?.VpcId !== this.vpcId) throw new InstanceNotFoundError(ref, this.vpcId);
    return toInstance(instance, this.vpcId);
  }

  private async instanceIdByIp(ip: string, signal: AbortSignal): Promise<string | undefined> {
    const client = await this.ec2();
    const { DescribeNetworkInterfacesCommand, paginateDescribeNetworkInterfaces } = await sdk.ec2();
    // One precise query covers primary and secondary addresses of attached interfaces.
    const direct = await client.send(
      new DescribeNetworkInterfacesCommand({
        Filters: [
          { Name: 'vpc-id', Values: [this.vpcId] },
          { Name: ipFamily(ip) === 'ipv6' ? 'ipv6-addresses.ipv6-address' : 'addresses.private-ip-address', Values: [ip] },
        ],
      }),
      { abortSignal: signal },
    );
    const found = direct.NetworkInterfaces?.find((eni) => eni.Attachment?.InstanceId)?.Attachment?.InstanceId;
    if (found) return found;

    // No filter matches an address inside a delegated prefix, so look through the VPC's interfaces.
    const pages = paginateDescribeNetworkInterfaces(
      { client, pageSize: 1000 },
      { Filters: [{ Name: 'vpc-id', Values: [this.vpcId] }] },
      { abortSignal: signal },
    );
    for await (const page of pages) {
      signal.throwIfAborted();
      const owner = page.NetworkInterfaces?.find((eni) => interfaceHolds(eni, ip));
      if (owner?.Attachment?.InstanceId) return owner.Attachment.InstanceId;
    }
    return undefined;
  }
}

function interfaceHolds(eni: NetworkInterface, ip: string): boolean {
  return (
    (eni.PrivateIpAddresses ?? []).some((address) => address.PrivateIpAddress === ip) ||
    (eni.Ipv6Addresses ?? []).some((address) => address.Ipv6Address !== undefined && cidrContains(`${address.Ipv6Address}/128`, ip)) ||
    (eni.Ipv4Prefixes ?? []).some((prefix) => prefix.Ipv4Prefix !== undefined && cidrContains(prefix.Ipv4Prefix, ip)) ||
    (eni.Ipv6Prefixes ?? []).some((prefix) => prefix.Ipv6Prefix !== undefined && cidrContains(prefix.Ipv6Prefix, ip))
  );
}

function toInstance(instance: Ec2Instance, vpcId: string): Instance {
  const interfaces = instance.NetworkInterfaces ?? [];
  const privateIps = new Set<string>();
  if (instance.PrivateIpAddress) privateIps.add(instance.PrivateIpAddress);
  for (const eni of interfaces) {
    for (const address of eni.PrivateIpAddresses ?? []) if (address.PrivateIpAddress) privateIps.add(address.PrivateIpAddress);
  }
  return {
    id: instance.InstanceId!,
    vpcId,
    privateIps: [...privateIps],
    ipv4Prefixes: interfaces.flatMap((eni) => (eni.Ipv4Prefixes ?? []).flatMap((prefix) => (prefix.Ipv4Prefix ? [prefix.Ipv4Prefix] : []))),
    ipv6Addresses: interfaces.flatMap((eni) => (eni.Ipv6Addresses ?? []).flatMap((address) => (address.Ipv6Address ? [address.Ipv6Address] : []))),
    ipv6Prefixes: interfaces.flatMap((eni) => (eni.Ipv6Prefixes ?? []).flatMap((prefix) => (prefix.Ipv6Prefix ? [prefix.Ipv6Prefix] : []))),
    tags: tagsFromList(instance.Tags),
  };
}
