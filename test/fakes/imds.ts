// A fake EC2 instance metadata service that keeps IMDSv2's rules strictly, so the client is tested
// against the behaviour it will meet on an instance, not against a lenient stub.
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export type FakeImdsFault = 'none' | 'error500' | 'hang';

export interface FakeImdsOptions {
  instanceId?: string;
  region?: string;
  availabilityZone?: string;
  mac?: string;
  vpcId?: string;
  privateIp?: string;
  /** More private IPv4 addresses of the primary interface (the VPC CNI's, for pods), listed after `privateIp`. */
  secondaryIps?: readonly string[];
  /** Instance metadata option `HttpTokens=required`: a GET without a token is refused with 401. Default true. */
  v1Disabled?: boolean;
  /** Token PUTs are never answered, as with hop limit 1 seen from a pod's network namespace. */
  hopLimitHang?: boolean;
  /** Every answer waits this long, as on a loaded instance. */
  answerDelayMs?: number;
  /** Clock for token expiry. */
  now?: () => number;
}

/** The items of one network interface, under `meta-data/network/interfaces/macs/<mac>/`; empty lists are absent items. */
export interface FakeInterface {
  vpcId?: string;
  localIpv4s?: readonly string[];
  ipv4Prefixes?: readonly string[];
  ipv6s?: readonly string[];
  ipv6Prefixes?: readonly string[];
}

/** Auto Scaling's steady lifecycle states, the values `autoscaling/target-lifecycle-state` documents. */
export type TargetLifecycleState =
  | 'InService'
  | 'Terminated'
  | 'Detached'
  | 'Standby'
  | 'Warmed:Hibernated'
  | 'Warmed:Running'
  | 'Warmed:Stopped'
  | 'Warmed:Terminated';

/** One scheduled event of `events/maintenance/scheduled`; dates are written the way IMDS writes them. */
export interface FakeMaintenanceEvent {
  Code: 'instance-reboot' | 'system-reboot' | 'system-maintenance' | 'instance-retirement' | 'instance-stop';
  EventId: string;
  NotBefore: Date;
  NotAfter?: Date;
  State: 'active' | 'completed' | 'canceled';
  Description?: string;
}

export interface FakeImds {
  readonly url: string;
  /** Switchable at run time; applies to every request, the token PUT included. */
  fault: FakeImdsFault;
  /** Hop limit 1 seen from a pod: the token PUT arrives, its answer never does (the client times out). */
  hopLimitHang: boolean;
  /** The same, seen as the token PUT's connection closed without an answer. */
  hopLimitDrop: boolean;
  v1Disabled: boolean;
  answerDelayMs: number;
  /** Put (or with `undefined`, remove) an item: `set('meta-data/spot/instance-action', '{...}')`. */
  set(path: string, body: string | undefined): void;
  /** A fault for one item only (`'none'` clears it), e.g. a 500 for the maintenance events while the rest answers. */
  fail(path: string, fault: FakeImdsFault): void;
  /** Put (or with `undefined`, remove) a network interface; it shows in the `macs/` listing while it has an item. */
  setInterface(mac: string, iface: FakeInterface | undefined): void;
  /** `undefined`: not in an Auto Scaling group (the item is absent). */
  setLifecycleState(state: TargetLifecycleState | undefined): void;
  /** `undefined`: the item is absent. */
  setMaintenanceEvents(events: readonly FakeMaintenanceEvent[] | undefined): void;
  /** Every token issued so far stops working. */
  revokeTokens(): void;
  /** Requests received, of any kind. */
  readonly requests: number;
  readonly tokenRequests: number;
  /** GETs answered without a token (IMDSv1). */
  readonly v1Requests: number;
  /** Requests received for one path (same spelling as `set`). */
  count(path: string): number;
  close(): Promise<void>;
}

const TOKEN_PATH = '/latest/api/token';
const MAX_TOKEN_TTL_SECONDS = 21600;

// IMDS answers a missing item with an HTML page: clients must decide on the status, not the body.
const NOT_FOUND_PAGE = `<?xml version="1.0" encoding="iso-8859-1"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN"
         "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml" xml:lang="en" lang="en">
 <head>
  <title>404 - Not Found</title>
 </head>
 <body>
  <h1>404 - Not Found</h1>
 </body>
</html>
`;

export async function startFakeImds(opts: FakeImdsOptions = {}): Promise<FakeImds> {
  const fake = new FakeImdsServer(opts);
  await fake.listen();
  return fake;
}

const MACS = 'meta-data/network/interfaces/macs';

/** IMDS's date format for scheduled events, `21 Jan 2019 09:00:43 GMT`. */
export function imdsDate(date: Date): string {
  const [, day, month, year, time] = date.toUTCString().split(' ');
  return `${day} ${month} ${year} ${time} GMT`;
}

/** `meta-data/x`, `latest/meta-data/x` and `/latest/meta-data/x` all name `/latest/meta-data/x`. */
function itemPath(path: string): string {
  const bare = path.replace(/^\/+/, '').replace(/^latest\//, '');
  return `/latest/${bare}`;
}

class FakeImdsServer implements FakeImds {
  url = '';
  fault: FakeImdsFault = 'none';
  hopLimitHang: boolean;
  hopLimitDrop = false;
  v1Disabled: boolean;
  answerDelayMs: number;
  requests = 0;
  tokenRequests = 0;
  v1Requests = 0;

  private readonly items = new Map<string, string>();
  private readonly itemFaults = new Map<string, FakeImdsFault>();
  private readonly counts = new Map<string, number>();
  /** token -> expiry time (ms) */
  private readonly tokens = new Map<string, number>();
  private readonly now: () => number;
  private readonly server = createServer((req, res) => this.handle(req, res));

  constructor(opts: FakeImdsOptions) {
    this.hopLimitHang = opts.hopLimitHang ?? false;
    this.v1Disabled = opts.v1Disabled ?? true;
    this.answerDelayMs = opts.answerDelayMs ?? 0;
    this.now = opts.now ?? Date.now;
    const mac = opts.mac ?? '0e:49:61:0f:c3:11';
    const region = opts.region ?? 'eu-west-1';
    const privateIp = opts.privateIp ?? '10.0.1.23';
    const identity: Record<string, string> = {
      'meta-data/instance-id': opts.instanceId ?? 'i-0123456789abcdef0',
      'meta-data/placement/region': region,
      'meta-data/placement/availability-zone': opts.availabilityZone ?? `${region}a`,
      'meta-data/mac': mac,
      'meta-data/local-ipv4': privateIp,
    };
    for (const [path, body] of Object.entries(identity)) this.set(path, body);
    this.setInterface(mac, { vpcId: opts.vpcId ?? 'vpc-0a1b2c3d4e5f60718', localIpv4s: [privateIp, ...(opts.secondaryIps ?? [])] });
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(0, '127.0.0.1', () => {
        const { port } = this.server.address() as AddressInfo;
        this.url = `http://127.0.0.1:${port}`;
        resolve();
      });
    });
  }

  set(path: string, body: string | undefined): void {
    if (body === undefined) this.items.delete(itemPath(path));
    else this.items.set(itemPath(path), body);
  }

  fail(path: string, fault: FakeImdsFault): void {
    if (fault === 'none') this.itemFaults.delete(itemPath(path));
    else this.itemFaults.set(itemPath(path), fault);
  }

  setInterface(mac: string, iface: FakeInterface | undefined): void {
    const items: Record<string, string | readonly string[] | undefined> = {
      'vpc-id': iface?.vpcId,
      'local-ipv4s': iface?.localIpv4s,
      'ipv4-prefix': iface?.ipv4Prefixes,
      ipv6s: iface?.ipv6s,
      'ipv6-prefix': iface?.ipv6Prefixes,
    };
    for (const [name, value] of Object.entries(items)) {
      // IMDS lists values one a line, and has no item at all for an empty list.
      const body = typeof value === 'string' ? value : value?.join('\n');
      this.set(`${MACS}/${mac}/${name}`, body || undefined);
    }
  }

  setLifecycleState(state: TargetLifecycleState | undefined): void {
    this.set('meta-data/autoscaling/target-lifecycle-state', state);
  }

  setMaintenanceEvents(events: readonly FakeMaintenanceEvent[] | undefined): void {
    const body = events?.map((event) => ({
      NotBefore: imdsDate(event.NotBefore),
      Code: event.Code,
      Description: event.Description ?? `scheduled ${event.Code}`,
      EventId: event.EventId,
      ...(event.NotAfter ? { NotAfter: imdsDate(event.NotAfter) } : {}),
      State: event.State,
    }));
    this.set('meta-data/events/maintenance/scheduled', body && JSON.stringify(body, undefined, 2));
  }

  revokeTokens(): void {
    this.tokens.clear();
  }

  count(path: string): number {
    return this.counts.get(itemPath(path)) ?? 0;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      // Hung requests would keep the server open forever.
      this.server.closeAllConnections();
      this.server.close(() => resolve());
    });
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const path = new URL(req.url ?? '/', 'http://imds').pathname;
    this.requests++;
    this.counts.set(path, (this.counts.get(path) ?? 0) + 1);
    if (path === TOKEN_PATH) this.tokenRequests++;
    if (this.answerDelayMs > 0) setTimeout(() => this.answer(path, req, res), this.answerDelayMs);
    else this.answer(path, req, res);
  }

  private answer(path: string, req: IncomingMessage, res: ServerResponse): void {
    const fault = this.fault === 'none' ? (this.itemFaults.get(path) ?? 'none') : this.fault;
    if (fault === 'hang') return;
    if (fault === 'error500') return reply(res, 500, 'Internal Server Error');

    if (path === TOKEN_PATH) return this.issueToken(req, res);
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(res, 405, 'Method Not Allowed');
    if (!this.authorized(req)) return reply(res, 401, 'Unauthorized');
    if (req.headers['x-aws-ec2-metadata-token'] === undefined) this.v1Requests++;

    const body = this.items.get(path) ?? this.listing(path);
    if (body === undefined) return reply(res, 404, NOT_FOUND_PAGE, 'text/html');
    reply(res, 200, body);
  }

  private issueToken(req: IncomingMessage, res: ServerResponse): void {
    if (req.method !== 'PUT') return reply(res, 405, 'Method Not Allowed');
    if (this.hopLimitHang) return;
    if (this.hopLimitDrop) return void req.socket.destroy();
    // IMDS refuses token requests that went through a proxy.
    if (req.headers['x-forwarded-for'] !== undefined) return reply(res, 403, 'Forbidden');
    const ttlHeader = req.headers['x-aws-ec2-metadata-token-ttl-seconds'];
    const ttl = typeof ttlHeader === 'string' && /^\d+$/.test(ttlHeader) ? Number(ttlHeader) : NaN;
    if (!(ttl >= 1 && ttl <= MAX_TOKEN_TTL_SECONDS)) return reply(res, 400, 'Bad Request');

    const token = randomBytes(42).toString('base64');
    this.tokens.set(token, this.now() + ttl * 1000);
    res.setHeader('x-aws-ec2-metadata-token-ttl-seconds', String(ttl));
    reply(res, 200, token);
  }

  /** A token, when sent, must be valid, whatever the v1 setting; without one, only when v1 is allowed. */
  private authorized(req: IncomingMessage): boolean {
    const token = req.headers['x-aws-ec2-metadata-token'];
    if (token === undefined) return !this.v1Disabled;
    const expiresAt = typeof token === 'string' ? this.tokens.get(token) : undefined;
    return expiresAt !== undefined && this.now() < expiresAt;
  }

  /** Like IMDS, a category answers with its children, one a line, sub-categories ending in `/`. */
  private listing(path: string): string | undefined {
    const prefix = path.endsWith('/') ? path : `${path}/`;
    const children = new Set<string>();
    for (const key of this.items.keys()) {
      if (!key.startsWith(prefix)) continue;
      const rest = key.slice(prefix.length);
      const slash = rest.indexOf('/');
      children.add(slash === -1 ? rest : rest.slice(0, slash + 1));
    }
    return children.size > 0 ? [...children].sort().join('\n') : undefined;
  }
}

function reply(res: ServerResponse, status: number, body: string, contentType = 'text/plain'): void {
  res.writeHead(status, { 'content-type': contentType, server: 'EC2ws' });
  res.end(body);
}
