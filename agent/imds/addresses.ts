/**
 * This instance's own addresses, from IMDS: enough to drain itself without asking EC2, whose
 * DescribeInstances is throttled exactly when a spot wave makes every node ask at once.
 */
import type { ImdsClient } from './client.ts';

export interface ImdsAddresses {
  /** The primary network interface's VPC. */
  vpcId: string;
  /** Every private IPv4 address of every interface, the primary interface's first. */
  privateIps: string[];
  /** Delegated IPv4 prefixes (CIDR). */
  ipv4Prefixes: string[];
  ipv6Addresses: string[];
  /** Delegated IPv6 prefixes (CIDR, usually /80). */
  ipv6Prefixes: string[];
}

const MACS = 'latest/meta-data/network/interfaces/macs/';

/** Reads every interface at once; throws `ImdsUnavailableError` when IMDS fails, `Error` when it lacks the primary interface's VPC. */
export async function readInstanceAddresses(imds: ImdsClient): Promise<ImdsAddresses> {
  const [primary, listing] = await Promise.all([imds.get('latest/meta-data/mac'), imds.get(MACS)]);
  const primaryMac = primary?.trim();
  // A listing names each interface as "<mac>/"; the primary one goes first, so its address leads.
  const macs = lines(listing).map((entry) => entry.replace(/\/$/, ''));
  macs.sort((a, b) => Number(b === primaryMac) - Number(a === primaryMac));
  if (!primaryMac || !macs.includes(primaryMac)) throw new Error(`IMDS lists no primary network interface (mac ${primaryMac ?? 'absent'}) under /${MACS}`);

  const interfaces = await Promise.all(macs.map((mac) => readInterface(imds, mac)));
  const vpcId = interfaces[0]!.vpcId;
  if (!vpcId) throw new Error(`IMDS has no /${MACS}${primaryMac}/vpc-id: the primary network interface names no VPC`);
  return {
    vpcId,
    privateIps: interfaces.flatMap((iface) => iface.privateIps),
    ipv4Prefixes: interfaces.flatMap((iface) => iface.ipv4Prefixes),
    ipv6Addresses: interfaces.flatMap((iface) => iface.ipv6Addresses),
    ipv6Prefixes: interfaces.flatMap((iface) => iface.ipv6Prefixes),
  };
}

async function readInterface(imds: ImdsClient, mac: string): Promise<Omit<ImdsAddresses, 'vpcId'> & { vpcId: string | undefined }> {
  const item = (name: string) => imds.get(`${MACS}${mac}/${name}`);
  // An absent item (404) means none: an IPv4-only interface has no ipv6s, most have no prefixes.
  const [vpcId, privateIps, ipv4Prefixes, ipv6Addresses, ipv6Prefixes] = await Promise.all(
    ['vpc-id', 'local-ipv4s', 'ipv4-prefix', 'ipv6s', 'ipv6-prefix'].map(item),
  );
  return {
    vpcId: vpcId?.trim() || undefined,
    privateIps: lines(privateIps),
    ipv4Prefixes: lines(ipv4Prefixes),
    ipv6Addresses: lines(ipv6Addresses),
    ipv6Prefixes: lines(ipv6Prefixes),
  };
}

/** IMDS lists values one a line. */
function lines(body: string | undefined): string[] {
  return (body ?? '').split('\n').map((line) => line.trim()).filter((line) => line.length > 0);
}
