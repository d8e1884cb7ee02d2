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
  /** Instance metadata option `HttpTokens=required`: a GET without a token is refused with 401. Default true. */
  v1Disabled?: boolean;
  /** Token PUTs are never answered, as with hop limit 1 seen from a pod's network namespace. */
  hopLimitHang?: boolean;
  /** Clock for token expiry. */
  now?: () => number;
}

export interface FakeImds {
  readonly url: string;
  /** Switchable at run time; applies to every request, the token PUT included. */
  fault: FakeImdsFault;
  hopLimitHang: boolean;
  v1Disabled: boolean;
  /** Put (or with `undefined`, remove) an item: `set('meta-data/spot/instance-action', '{...}')`. */
  set(path: string, body: string | undefined): void;
  /** Every token issued so far stops working. */
  revokeTokens(): void;
  /** Requests received, of any kind. */
  readonly requests: number;
  readonly tokenRequests: number;
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

/** `meta-data/x`, `latest/meta-data/x` and `/latest/meta-data/x` all name `/latest/meta-data/x`. */
function itemPath(path: string): string {
  const bare = path.replace(/^\/+/, '').replace(/^latest\//, '');
  return `/latest/${bare}`;
}

class FakeImdsServer implements FakeImds {
  url = '';
  fault: FakeImdsFault = 'none';
  hopLimitHang: boolean;
  v1Disabled: boolean;
  requests = 0;
  tokenRequests = 0;

  private readonly items = new Map<string, string>();
  private readonly counts = new Map<string, number>();
  /** token -> expiry time (ms) */
  private readonly tokens = new Map<string, number>();
  private readonly now: () => number;
  private readonly server = createServer((req, res) => this.handle(req, res));

  constructor(opts: FakeImdsOptions) {
    this.hopLimitHang = opts.hopLimitHang ?? false;
    this.v1Disabled = opts.v1Disabled ?? true;
    this.now = opts.now ?? Date.now;
    const mac = opts.mac ?? '0e:49:61:0f:c3:11';
    const region = opts.region ?? 'eu-west-1';
    const identity: Record<string, string> = {
      'meta-data/instance-id': opts.instanceId ?? 'i-0123456789abcdef0',
      'meta-data/placement/region': region,
      'meta-data/placement/availability-zone': opts.availabilityZone ?? `${region}a`,
      'meta-data/mac': mac,
      [`meta-data/network/interfaces/macs/${mac}/vpc-id`]: opts.vpcId ?? 'vpc-0a1b2c3d4e5f60718',
      'meta-data/local-ipv4': opts.privateIp ?? '10.0.1.23',
    };
    for (const [path, body] of Object.entries(identity)) this.set(path, body);
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

    if (this.fault === 'hang') return;
    if (this.fault === 'error500') return reply(res, 500, 'Internal Server Error');

    if (path === TOKEN_PATH) return this.issueToken(req, res);
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(res, 405, 'Method Not Allowed');
    if (!this.authorized(req)) return reply(res, 401, 'Unauthorized');

    const body = this.items.get(path) ?? this.listing(path);
    if (body === undefined) return reply(res, 404, NOT_FOUND_PAGE, 'text/html');
    reply(res, 200, body);
  }

  private issueToken(req: IncomingMessage, res: ServerResponse): void {
    if (req.method !== 'PUT') return reply(res, 405, 'Method Not Allowed');
    if (this.hopLimitHang) return;
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
