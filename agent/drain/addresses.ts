/**
 * Whether a load balancer's target address belongs to an instance. Addresses are compared as addresses,
 * not as text: AWS may write an IPv6 target as "2600:1f18::1c" while an interface lists it in another
 * spelling, and an IPv6 cluster's pods take theirs from a delegated /80 prefix.
 */
import { BlockList, isIP } from 'node:net';
import type { Instance } from './instance.ts';

export type IpFamily = 'ipv4' | 'ipv6';

/** The address family of `text`, or undefined when it is not an IP address. */
export function ipFamily(text: string): IpFamily | undefined {
  // A zone id ("fe80::1%eth0") names a link, never a target of a load balancer.
  const version = text.includes('%') ? 0 : isIP(text);
  return version === 4 ? 'ipv4' : version === 6 ? 'ipv6' : undefined;
}

/** True when `cidr` (e.g. "10.0.1.16/28", "2600:1f18:1:2:3::/80") contains `address`; a malformed CIDR contains nothing. */
export function cidrContains(cidr: string, address: string): boolean {
  const list = new BlockList();
  return addSubnet(list, cidr) && check(list, address);
}

/** True when `address` is one of the instance's addresses, or inside one of its delegated prefixes. */
export function instanceHoldsAddress(instance: Instance, address: string): boolean {
  const list = new BlockList();
  for (const own of [...instance.privateIps, ...instance.ipv6Addresses]) {
    const family = ipFamily(own);
    if (family) list.addAddress(own, family);
  }
  for (const prefix of [...instance.ipv4Prefixes, ...instance.ipv6Prefixes]) addSubnet(list, prefix);
  return check(list, address);
}

/** True when `cidr` is an IPv4 or IPv6 prefix with a length its family allows ("10.0.1.16/28", "2600:1f18::/80"). */
export function isCidr(cidr: string): boolean {
  return addSubnet(new BlockList(), cidr);
}

function addSubnet(list: BlockList, cidr: string): boolean {
  const [base = '', bitsText = ''] = cidr.split('/');
  const family = ipFamily(base);
  const bits = Number(bitsText);
  if (!family || !/^\d+$/.test(bitsText) || bits > (family === 'ipv4' ? 32 : 128)) return false;
  list.addSubnet(base, bits, family);
  return true;
}

function check(list: BlockList, address: string): boolean {
  const family = ipFamily(address);
  return family !== undefined && list.check(address, family);
}
