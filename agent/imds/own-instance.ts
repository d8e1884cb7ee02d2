/**
 * This instance as a drain of it needs it (id, VPC, every address and delegated prefix), from IMDS
 * alone. EC2's DescribeInstances is throttled exactly when a spot wave makes every node ask at once,
 * and a self-drain must not wait for it: IMDS is local, answers in milliseconds and is not shared.
 *
 * Read at start, again before each drain (pods' addresses come and go with the interfaces the VPC CNI
 * attaches), and now and then in between, so that an IMDS failing at the moment of a drain still leaves
 * recent addresses to drain by.
 */
import { errorMessage } from '../aws/errors.ts';
import type { Instance } from '../drain/instance.ts';
import type { Logger } from '../log.ts';
import { readInstanceAddresses } from './addresses.ts';
import type { ImdsClient } from './client.ts';

export interface OwnInstanceOptions {
  readonly imds: ImdsClient;
  readonly instanceId: string;
  /** The VPC the agent works in (VPCID, or the primary interface's). */
  readonly vpcId: string;
  /** IMDS's `local-ipv4`, known from start-up: the least a drain by address has, should nothing else be read. */
  readonly privateIp: string | undefined;
  readonly logger: Logger;
  /** How long a read before a drain may take before the last addresses read are used instead. */
  readonly readTimeoutMs?: number;
}

export class OwnInstance {
  private latest: Instance;
  private refresher: NodeJS.Timeout | undefined;

  constructor(private readonly options: OwnInstanceOptions) {
    const { instanceId, vpcId, privateIp } = options;
    this.latest = { id: instanceId, vpcId, privateIps: privateIp ? [privateIp] : [], ipv4Prefixes: [], ipv6Addresses: [], ipv6Prefixes: [], tags: {} };
  }

  /** This instance now; when IMDS fails or is slow, the addresses last read, and the log says so. */
  read(): Promise<Instance> {
    return this.readLogging('warn');
  }

  /** The addresses last read, without asking IMDS. */
  last(): Instance {
    return this.latest;
  }

  refreshEvery(intervalMs: number): void {
    // Quietly: an IMDS outage is the notices watcher's to report, once.
    this.refresher ??= setInterval(() => void this.readLogging('debug'), intervalMs).unref();
  }

  stop(): void {
    clearInterval(this.refresher);
  }

  private async readLogging(level: 'warn' | 'debug'): Promise<Instance> {
    const { imds, readTimeoutMs = 2_000, logger } = this.options;
    let timer: NodeJS.Timeout | undefined;
    const tooSlow = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`IMDS gave no addresses within ${readTimeoutMs} ms`)), readTimeoutMs);
    });
    try {
      const addresses = await Promise.race([readInstanceAddresses(imds), tooSlow]);
      // The id and the agent's VPC stay as configured; the addresses are IMDS's.
      this.latest = { ...this.latest, privateIps: addresses.privateIps, ipv4Prefixes: addresses.ipv4Prefixes, ipv6Addresses: addresses.ipv6Addresses, ipv6Prefixes: addresses.ipv6Prefixes };
    } catch (error) {
      logger[level]({ err: error, instanceId: this.latest.id, addresses: this.latest.privateIps.length }, `could not read this instance's addresses from IMDS (${errorMessage(error)}): using the last ones read`);
    } finally {
      clearTimeout(timer);
    }
    return this.latest;
  }
}
