/** Just enough IPv4 arithmetic to tell whether an address lies inside a delegated prefix. */

const DOTTED_QUAD = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

export function isIpv4(text: string): boolean {
  return DOTTED_QUAD.test(text);
}

function toNumber(address: string): number {
  return address.split('.').reduce((value, octet) => value * 256 + Number(octet), 0);
}

/** True when `address` is inside `cidr` (e.g. "10.0.1.16/28"); a malformed CIDR contains nothing. */
export function cidrContains(cidr: string, address: string): boolean {
  const [base, bitsText] = cidr.split('/');
  const bits = Number(bitsText);
  if (base === undefined || !isIpv4(base) || !isIpv4(address) || !Number.isInteger(bits) || bits < 0 || bits > 32) return false;
  const size = 2 ** (32 - bits);
  const start = Math.floor(toNumber(base) / size) * size;
  const value = toNumber(address);
  return value >= start && value < start + size;
}
