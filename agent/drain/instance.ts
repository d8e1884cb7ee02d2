/** An EC2 instance, as much of it as deciding membership needs. */
export interface Instance {
  readonly id: string;
  readonly vpcId: string;
  /** Every private IPv4 address of every network interface. */
  readonly privateIps: readonly string[];
  /** Delegated IPv4 prefixes (CIDR), whose addresses pods may use as ip targets. */
  readonly ipv4Prefixes: readonly string[];
  /** Every IPv6 address of every network interface (an IPv6 cluster's ip targets). */
  readonly ipv6Addresses: readonly string[];
  /** Delegated IPv6 prefixes (CIDR, usually /80), whose addresses an IPv6 cluster's pods use. */
  readonly ipv6Prefixes: readonly string[];
  readonly tags: Readonly<Record<string, string>>;
}

/** How a caller names an instance: by id, or by any of its addresses (private IPv4, IPv6, prefixes). */
export type InstanceRef = { readonly id: string } | { readonly ip: string };

export class InstanceNotFoundError extends Error {
  constructor(readonly ref: InstanceRef, vpcId: string) {
    super('id' in ref ? `instance ${ref.id} was not found in ${vpcId}` : `no instance in ${vpcId} has the private IP ${ref.ip}`);
    this.name = 'InstanceNotFoundError';
  }
}

export interface InstanceLookup {
  find(ref: InstanceRef, signal: AbortSignal): Promise<Instance>;
}
