/**
 * A fake Kubernetes API server for the few calls the agent makes, faithful where the agent could
 * notice: bearer-token authentication (401), authorization (403, switchable per resource and verb),
 * Status objects shaped as the real API server's, JSON merge patches (RFC 7386) on nodes,
 * generateName on events, watches of a node (from a resourceVersion, 410 once compacted away, bookmarks
 * left out), coordination.k8s.io/v1 Leases with optimistic concurrency (409 AlreadyExists on a second
 * create, 409 Conflict on a write with a stale resourceVersion), TokenReviews of the projected
 * ServiceAccount tokens it issues (audience, expiry, the bound pod, the pod and node in user.extra), and a
 * `down` switch that resets or hangs connections.
 *
 * Checks run in the real server's order: authentication, then authorization, then the object.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type RequestListener, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { stringify as toYaml } from 'yaml';

/** A Kubernetes object as JSON; loosely typed so tests can build and inspect any field. */
export type KubeObject = Record<string, any>;

export interface RecordedRequest {
  method: string;
  path: string;
}

export interface RecordedPatch {
  node: string;
  contentType: string | undefined;
  body: KubeObject;
  /** When the server received it (ms since the epoch), to order it against other fakes' calls. */
  at: number;
}

type Verb = 'get' | 'patch' | 'create' | 'list' | 'watch' | 'update';

/** A change to a node, as a watch streams it. */
interface NodeChange {
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: KubeObject;
  resourceVersion: number;
}

interface NodeWatcher {
  name: string;
  res: ServerResponse;
}
type Resource = 'pods' | 'nodes' | 'events' | 'endpointslices' | 'leases' | 'tokenreviews';

/** What a projected ServiceAccount token issued by the fake says of itself, as the real claims do. */
interface IssuedToken {
  namespace: string;
  serviceAccount: string;
  pod: string;
  podUid: string;
  node: string;
  audiences: string[];
  /** Seconds since the epoch, as the `exp` claim. */
  exp: number;
  /** Whether user.extra carries the node (API servers since 1.30); older ones leave it out. */
  nodeInfo: boolean;
}

/** The identity the fake pretends a request's token belongs to, for 403 messages. */
const USER = 'system:serviceaccount:kube-system:hasta-la-vista';

export class FakeKube {
  /** `reset`: every request's connection is reset; `hang`: requests are never answered. */
  down: false | 'reset' | 'hang' = false;
  readonly requests: RecordedRequest[] = [];
  readonly patches: RecordedPatch[] = [];
  /** Events as stored, after the server named them. */
  readonly events: KubeObject[] = [];

  private readonly pods = new Map<string, KubeObject>();
  private readonly nodes = new Map<string, KubeObject>();
  private readonly endpointSlices = new Map<string, KubeObject>();
  private readonly leases = new Map<string, KubeObject>();
  private readonly forbidden = new Set<string>();
  private readonly issued = new Map<string, IssuedToken>();
  private resourceVersion = 1;
  private readonly nodeChanges: NodeChange[] = [];
  /** Versions up to this one are compacted away: a watch from one of them is answered 410 Expired. */
  private compactedThrough = 0;
  private readonly watchers = new Set<NodeWatcher>();

  constructor(
    private readonly server: Server,
    readonly url: string,
    readonly token: string,
    /** The PEM certificate the server presents when it serves https; the kubeconfig trusts it. */
    private readonly ca: string | undefined,
  ) {}

  setPod(pod: KubeObject): void {
    const stored = this.stamp(pod);
    this.pods.set(`${stored.metadata.namespace}/${stored.metadata.name}`, stored);
  }

  deletePod(namespace: string, name: string): void {
    this.pods.delete(`${namespace}/${name}`);
  }

  setNode(node: KubeObject): void {
    const stored = this.stamp(node);
    const type = this.nodes.has(stored.metadata.name) ? 'MODIFIED' : 'ADDED';
    this.nodes.set(stored.metadata.name, stored);
    this.nodeChanged(type, stored);
  }

  deleteNode(name: string): void {
    const stored = this.nodes.get(name);
    this.nodes.delete(name);
    if (stored) this.nodeChanged('DELETED', { ...stored, metadata: { ...stored.metadata, resourceVersion: String(++this.resourceVersion) } });
  }

  /** Forget the history so far, as etcd compaction does: watches from an older version get 410 Expired. */
  compact(): void {
    this.compactedThrough = this.resourceVersion;
    this.nodeChanges.length = 0;
  }

  /** Ends every open watch, as the server does when a watch's timeout passes or it restarts. */
  endWatches(): void {
    for (const watcher of this.watchers) watcher.res.end();
    this.watchers.clear();
  }

  /** Watches open now. */
  openWatches(): number {
    return this.watchers.size;
  }

  /** Adds or replaces an EndpointSlice (discovery.k8s.io/v1), keyed by namespace and name. */
  setEndpointSlice(slice: KubeObject): void {
    const stored = this.stamp(slice);
    this.endpointSlices.set(`${stored.metadata.namespace}/${stored.metadata.name}`, stored);
  }

  deleteEndpointSlice(namespace: string, name: string): void {
    this.endpointSlices.delete(`${namespace}/${name}`);
  }

  /** The Lease as the server holds it now. */
  lease(namespace: string, name: string): KubeObject | undefined {
    return this.leases.get(`${namespace}/${name}`);
  }

  /** The node as the server holds it now, e.g. after patches. */
  node(name: string): KubeObject | undefined {
    return this.nodes.get(name);
  }

  /** Answer 403 to `verb` (all verbs when omitted) on `resource`, as missing RBAC would. */
  forbid(resource: Resource, verb?: Verb): void {
    this.forbidden.add(verb ? `${verb} ${resource}` : `* ${resource}`);
  }

  /** Takes back a forbid(). */
  allow(resource: Resource, verb?: Verb): void {
    this.forbidden.delete(verb ? `${verb} ${resource}` : `* ${resource}`);
  }

  /**
   * A projected ServiceAccount token of a stored pod, as kubelet would mount it: a JWT-shaped string whose
   * payload has the real claims (aud, exp, sub, the pod and node), signed with nothing the agent could check.
   */
  issueToken(namespace: string, pod: string, options: { audience?: string; expiresInSeconds?: number; nodeInfo?: boolean } = {}): string {
    const stored = this.pods.get(`${namespace}/${pod}`);
    if (!stored) throw new Error(`no pod ${namespace}/${pod}: setPod() it first`);
    const claims: IssuedToken = {
      namespace,
      serviceAccount: stored.spec.serviceAccountName ?? 'default',
      pod,
      podUid: stored.metadata.uid,
      node: stored.spec.nodeName,
      audiences: [options.audience ?? 'hasta-la-vista'],
      exp: Math.floor(Date.now() / 1000) + (options.expiresInSeconds ?? 600),
      nodeInfo: options.nodeInfo ?? true,
    };
    const part = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
    const payload = { aud: claims.audiences, exp: claims.exp, sub: `system:serviceaccount:${namespace}:${claims.serviceAccount}`, 'kubernetes.io': { namespace, pod: { name: pod, uid: claims.podUid }, node: { name: claims.node } } };
    const token = `${part({ alg: 'RS256', kid: 'fake' })}.${part(payload)}.${randomBytes(32).toString('base64url')}`;
    this.issued.set(token, claims);
    return token;
  }

  /** Writes a kubeconfig pointing at this server with its token; returns the path. */
  writeKubeconfig(path: string): string {
    const config = {
      apiVersion: 'v1',
      kind: 'Config',
      'current-context': 'fake',
      clusters: [{ name: 'fake', cluster: { server: this.url, ...(this.ca ? { 'certificate-authority-data': Buffer.from(this.ca).toString('base64') } : {}) } }],
      users: [{ name: 'agent', user: { token: this.token } }],
      contexts: [{ name: 'fake', context: { cluster: 'fake', user: 'agent' } }],
    };
    writeFileSync(path, toYaml(config));
    return path;
  }

  async close(): Promise<void> {
    this.endWatches();
    // Hung requests would otherwise keep close() waiting forever.
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Called for every request by the HTTP server. */
  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const method = req.method ?? 'GET';
    const url = new URL(req.url ?? '/', this.url);
    const path = url.pathname;
    this.requests.push({ method, path });

    if (this.down === 'reset') {
      req.socket.resetAndDestroy();
      return;
    }
    if (this.down === 'hang') return;

    if (req.headers.authorization !== `Bearer ${this.token}`) {
      return send(res, 401, status(401, 'Unauthorized', 'Unauthorized'));
    }
    const route = routeOf(method, path);
    if (!route) return send(res, 404, status(404, 'NotFound', 'the server could not find the requested resource'));
    if (this.isForbidden(route.verb, route.resource)) return send(res, 403, forbiddenStatus(route));

    const body = method === 'GET' ? undefined : await readJson(req);
    if (body === null) return send(res, 400, status(400, 'BadRequest', 'the request body is not valid JSON'));

    switch (route.verb) {
      case 'watch':
        return this.watchNode(res, url.searchParams);
      case 'list':
        return this.listEndpointSlices(res, route.namespace, url.searchParams.get('labelSelector') ?? '');
      case 'get':
        return this.get(res, route);
      case 'patch':
        return this.patchNode(res, route.name, req.headers['content-type'], body ?? {});
      case 'create':
        if (route.resource === 'tokenreviews') return this.reviewToken(res, body ?? {});
        return route.resource === 'leases' ? this.createLease(res, route.namespace, body ?? {}) : this.createEvent(res, route.namespace, body ?? {});
      case 'update':
        return this.updateLease(res, route, body ?? {});
    }
  }

  /** Only what the agent sends: one node by `fieldSelector=metadata.name=…`, from a resourceVersion. */
  private watchNode(res: ServerResponse, query: URLSearchParams): void {
    const name = /^metadata\.name=(.+)$/.exec(query.get('fieldSelector') ?? '')?.[1];
    if (query.get('watch') !== '1' || !name) return send(res, 400, status(400, 'BadRequest', 'the fake watches one node: watch=1&fieldSelector=metadata.name=<name>'));
    const from = Number(query.get('resourceVersion') ?? '0');
    res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
    // As the API server does: the watch is open (headers sent) before any event.
    res.flushHeaders();
    const write = (type: string, object: KubeObject) => res.write(`${JSON.stringify({ type, object })}\n`);
    if (from > 0 && from < this.compactedThrough) {
      write('ERROR', status(410, 'Expired', `too old resource version: ${from} (${this.compactedThrough})`));
      return void res.end();
    }
    if (from === 0) {
      const current = this.nodes.get(name);
      if (current) write('ADDED', current);
    } else {
      for (const change of this.nodeChanges) if (change.resourceVersion > from && change.object.metadata.name === name) write(change.type, change.object);
    }
    const watcher = { name, res };
    this.watchers.add(watcher);
    const timeout = setTimeout(() => res.end(), Number(query.get('timeoutSeconds') ?? '1800') * 1000);
    res.once('close', () => {
      clearTimeout(timeout);
      this.watchers.delete(watcher);
    });
  }

  private nodeChanged(type: NodeChange['type'], object: KubeObject): void {
    const change = { type, object, resourceVersion: Number(object.metadata.resourceVersion) };
    this.nodeChanges.push(change);
    for (const watcher of this.watchers) if (watcher.name === object.metadata.name) watcher.res.write(`${JSON.stringify({ type, object })}\n`);
  }

  private get(res: ServerResponse, route: Route): void {
    const key = `${route.namespace}/${route.name}`;
    const stored = route.resource === 'pods' ? this.pods.get(key) : route.resource === 'leases' ? this.leases.get(key) : this.nodes.get(route.name);
    if (!stored) return send(res, 404, notFound(route.resource, route.name));
    send(res, 200, stored);
  }

  /** Only the equality selectors the agent sends (key=value, comma-separated), as the API server applies them. */
  private listEndpointSlices(res: ServerResponse, namespace: string, selector: string): void {
    const wanted = selector.split(',').filter(Boolean).map((term) => term.split('=') as [string, string]);
    const items = [...this.endpointSlices.values()].filter(
      (slice) => slice.metadata.namespace === namespace && wanted.every(([key, value]) => slice.metadata.labels?.[key] === value),
    );
    send(res, 200, { kind: 'EndpointSliceList', apiVersion: 'discovery.k8s.io/v1', metadata: { resourceVersion: String(this.resourceVersion) }, items });
  }

  private patchNode(res: ServerResponse, name: string, contentType: string | undefined, body: KubeObject): void {
    this.patches.push({ node: name, contentType, body, at: Date.now() });
    if (contentType?.split(';')[0]?.trim() !== 'application/merge-patch+json') {
      return send(
        res,
        415,
        status(415, 'UnsupportedMediaType', `the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json`),
      );
    }
    const stored = this.nodes.get(name);
    if (!stored) return send(res, 404, notFound('nodes', name));
    const patched = mergePatch(stored, body) as KubeObject;
    patched.metadata.resourceVersion = String(++this.resourceVersion);
    this.nodes.set(name, patched);
    this.nodeChanged('MODIFIED', patched);
    send(res, 200, patched);
  }

  private createEvent(res: ServerResponse, namespace: string, body: KubeObject): void {
    const metadata: KubeObject = body.metadata ?? {};
    if (metadata.namespace && metadata.namespace !== namespace) {
      return send(res, 400, status(400, 'BadRequest', 'the namespace of the provided object does not match the namespace sent on the request'));
    }
    if (!metadata.name && !metadata.generateName) {
      return send(res, 422, status(422, 'Invalid', 'Event "" is invalid: metadata.name: Required value: name or generateName is required'));
    }
    const name = metadata.name || `${metadata.generateName}${generatedSuffix()}`;
    const stored = this.stamp({ ...body, metadata: { ...metadata, name, namespace } });
    this.events.push(stored);
    send(res, 201, stored);
  }

  /** As the API server's token authenticator answers: authenticated false with an error, never an HTTP error. */
  private reviewToken(res: ServerResponse, body: KubeObject): void {
    const token: unknown = body.spec?.token;
    const wanted: string[] = body.spec?.audiences ?? [];
    if (body.kind !== 'TokenReview' || typeof token !== 'string') return send(res, 400, status(400, 'BadRequest', 'a TokenReview with spec.token is required'));
    const answer = (reviewStatus: KubeObject) => send(res, 201, { kind: 'TokenReview', apiVersion: 'authentication.k8s.io/v1', metadata: { creationTimestamp: null }, spec: body.spec, status: reviewStatus });
    const refuse = (error: string) => answer({ authenticated: false, user: {}, error: `[invalid bearer token, ${error}]` });
    const claims = this.issued.get(token);
    if (!claims) return refuse('square/go-jose: error in cryptographic primitive');
    if (Date.now() >= claims.exp * 1000) return refuse('service account token has expired');
    const audiences = wanted.filter((audience) => claims.audiences.includes(audience));
    if (audiences.length === 0) return refuse(`token audiences ${JSON.stringify(claims.audiences)} is invalid for the target audiences ${JSON.stringify(wanted)}`);
    const pod = this.pods.get(`${claims.namespace}/${claims.pod}`);
    if (!pod || pod.metadata.uid !== claims.podUid) return refuse(`service account token has been invalidated`);
    const extra: Record<string, string[]> = {
      'authentication.kubernetes.io/credential-id': [`JTI=${randomUUID()}`],
      'authentication.kubernetes.io/pod-name': [claims.pod],
      'authentication.kubernetes.io/pod-uid': [claims.podUid],
      ...(claims.nodeInfo ? { 'authentication.kubernetes.io/node-name': [claims.node], 'authentication.kubernetes.io/node-uid': [randomUUID()] } : {}),
    };
    answer({
      authenticated: true,
      user: {
        username: `system:serviceaccount:${claims.namespace}:${claims.serviceAccount}`,
        uid: randomUUID(),
        groups: ['system:serviceaccounts', `system:serviceaccounts:${claims.namespace}`, 'system:authenticated'],
        extra,
      },
      audiences,
    });
  }

  private createLease(res: ServerResponse, namespace: string, body: KubeObject): void {
    const name = body.metadata?.name;
    if (!name) return send(res, 422, status(422, 'Invalid', 'Lease.coordination.k8s.io "" is invalid: metadata.name: Required value: name or generateName is required'));
    const key = `${namespace}/${name}`;
    if (this.leases.has(key)) return send(res, 409, status(409, 'AlreadyExists', `leases.coordination.k8s.io "${name}" already exists`, { name, group: 'coordination.k8s.io', kind: 'leases' }));
    const stored = this.stamp({ ...body, metadata: { ...body.metadata, namespace } });
    this.leases.set(key, stored);
    send(res, 201, stored);
  }

  /** A PUT: refused when the body's resourceVersion is not the stored one (someone wrote in between). */
  private updateLease(res: ServerResponse, route: Route, body: KubeObject): void {
    const key = `${route.namespace}/${route.name}`;
    const stored = this.leases.get(key);
    if (!stored) return send(res, 404, notFound('leases', route.name));
    if (body.metadata?.name !== route.name) return send(res, 400, status(400, 'BadRequest', 'the name of the object does not match the name on the URL'));
    if (body.metadata?.resourceVersion !== stored.metadata.resourceVersion) {
      const message = `Operation cannot be fulfilled on leases.coordination.k8s.io "${route.name}": the object has been modified; please apply your changes to the latest version and try again`;
      return send(res, 409, status(409, 'Conflict', message, { name: route.name, group: 'coordination.k8s.io', kind: 'leases' }));
    }
    const updated = { ...body, metadata: { ...body.metadata, uid: stored.metadata.uid, creationTimestamp: stored.metadata.creationTimestamp, namespace: route.namespace, resourceVersion: String(++this.resourceVersion) } };
    this.leases.set(key, updated);
    send(res, 200, updated);
  }

  private isForbidden(verb: Verb, resource: Resource): boolean {
    return this.forbidden.has(`${verb} ${resource}`) || this.forbidden.has(`* ${resource}`);
  }

  /** A stored copy with the fields the server assigns. */
  private stamp(obj: KubeObject): KubeObject {
    const copy = structuredClone(obj);
    copy.metadata = {
      uid: randomUUID(),
      creationTimestamp: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
      ...copy.metadata,
      resourceVersion: String(++this.resourceVersion),
    };
    return copy;
  }
}

/** Plain http unless `tls` (a PEM certificate valid for 127.0.0.1, and its key) is given. */
export async function startFakeKube(opts: { token: string; tls?: { cert: string; key: string } }): Promise<FakeKube> {
  let fake: FakeKube | undefined;
  const listener: RequestListener = (req, res) => {
    fake?.handle(req, res).catch((err: unknown) => send(res, 500, status(500, 'InternalError', String(err))));
  };
  const server = opts.tls ? createTlsServer(opts.tls, listener) : createServer(listener);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  fake = new FakeKube(server, `${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}`, opts.token, opts.tls?.cert);
  return fake;
}

// ---- objects as a real EKS cluster would hold them ----

export function makeNode(
  name: string,
  fields: { uid?: string; labels?: Record<string, string>; annotations?: Record<string, string>; taints?: KubeObject[]; providerID?: string; deletionTimestamp?: string } = {},
): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Node',
    metadata: {
      name,
      uid: fields.uid ?? randomUUID(),
      labels: {
        'kubernetes.io/hostname': name,
        'kubernetes.io/os': 'linux',
        'node.kubernetes.io/instance-type': 'm5.large',
        'topology.kubernetes.io/zone': 'us-east-1a',
        ...fields.labels,
      },
      annotations: { 'node.alpha.kubernetes.io/ttl': '0', ...fields.annotations },
      ...(fields.deletionTimestamp ? { deletionTimestamp: fields.deletionTimestamp } : {}),
    },
    spec: {
      providerID: fields.providerID ?? 'aws:///us-east-1a/i-0123456789abcdef0',
      ...(fields.taints ? { taints: fields.taints } : {}),
    },
    status: {
      conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady' }],
      addresses: [{ type: 'InternalIP', address: '10.0.1.23' }],
    },
  };
}

/** An EndpointSlice of a Service with endpoints on the given nodes, as the EndpointSlice controller writes them. */
export function makeEndpointSlice(
  namespace: string,
  service: string,
  name: string,
  endpoints: { node: string; pod: string; ip: string; ready?: boolean; terminating?: boolean }[],
): KubeObject {
  return {
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name, namespace, labels: { 'kubernetes.io/service-name': service, 'endpointslice.kubernetes.io/managed-by': 'endpointslice-controller.k8s.io' } },
    addressType: 'IPv4',
    endpoints: endpoints.map((endpoint) => ({
      addresses: [endpoint.ip],
      conditions: { ready: endpoint.ready ?? true, serving: endpoint.ready ?? true, terminating: endpoint.terminating ?? false },
      nodeName: endpoint.node,
      targetRef: { kind: 'Pod', namespace, name: endpoint.pod },
    })),
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
  };
}

export function makePod(
  namespace: string,
  name: string,
  fields: { uid?: string; nodeName?: string; terminationGracePeriodSeconds?: number; annotations?: Record<string, string>; deletionTimestamp?: string } = {},
): KubeObject {
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name,
      namespace,
      uid: fields.uid ?? randomUUID(),
      labels: { 'app.kubernetes.io/name': 'hasta-la-vista' },
      ...(fields.annotations ? { annotations: fields.annotations } : {}),
      ...(fields.deletionTimestamp ? { deletionTimestamp: fields.deletionTimestamp } : {}),
    },
    spec: {
      nodeName: fields.nodeName ?? 'ip-10-0-1-23.ec2.internal',
      terminationGracePeriodSeconds: fields.terminationGracePeriodSeconds ?? 30,
      serviceAccountName: 'hasta-la-vista',
      containers: [{ name: 'agent', image: 'hasta-la-vista:test' }],
    },
    status: { phase: 'Running' },
  };
}

// ---- routing and wire format ----

interface Route {
  verb: Verb;
  resource: Resource;
  namespace: string;
  name: string;
}

function routeOf(method: string, path: string): Route | undefined {
  const segments = path.split('/').slice(1).map(decodeURIComponent);
  const [api, version, first, second, third, fourth] = segments;
  // /apis/discovery.k8s.io/v1/namespaces/<ns>/endpointslices
  // /apis/coordination.k8s.io/v1/namespaces/<ns>/leases[/<name>]
  if (api === 'apis' && version === 'coordination.k8s.io' && first === 'v1' && second === 'namespaces' && third && fourth === 'leases') {
    const name = segments[6];
    if (segments.length === 6 && method === 'POST') return { verb: 'create', resource: 'leases', namespace: third, name: '' };
    if (segments.length === 7 && name && method === 'GET') return { verb: 'get', resource: 'leases', namespace: third, name };
    if (segments.length === 7 && name && method === 'PUT') return { verb: 'update', resource: 'leases', namespace: third, name };
    return undefined;
  }
  if (api === 'apis' && version === 'authentication.k8s.io' && first === 'v1' && second === 'tokenreviews' && segments.length === 4 && method === 'POST') {
    return { verb: 'create', resource: 'tokenreviews', namespace: '', name: '' };
  }
  if (api === 'apis' && version === 'discovery.k8s.io' && first === 'v1' && second === 'namespaces' && third && fourth === 'endpointslices' && segments.length === 6 && method === 'GET') {
    return { verb: 'list', resource: 'endpointslices', namespace: third, name: '' };
  }
  if (api !== 'api' || version !== 'v1') return undefined;
  if (first === 'nodes' && segments.length === 3 && method === 'GET') return { verb: 'watch', resource: 'nodes', namespace: '', name: '' };
  if (first === 'nodes' && second && segments.length === 4) {
    if (method === 'GET') return { verb: 'get', resource: 'nodes', namespace: '', name: second };
    if (method === 'PATCH') return { verb: 'patch', resource: 'nodes', namespace: '', name: second };
  }
  if (first === 'namespaces' && second) {
    if (third === 'pods' && fourth && segments.length === 6 && method === 'GET') return { verb: 'get', resource: 'pods', namespace: second, name: fourth };
    if (third === 'events' && segments.length === 5 && method === 'POST') return { verb: 'create', resource: 'events', namespace: second, name: '' };
  }
  return undefined;
}

function status(code: number, reason: string, message: string, details?: KubeObject): KubeObject {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, ...(details ? { details } : {}), code };
}

function notFound(resource: Resource, name: string): KubeObject {
  return status(404, 'NotFound', `${resource} "${name}" not found`, { name, kind: resource });
}

function forbiddenStatus({ verb, resource, namespace, name }: Route): KubeObject {
  const object = name ? `${resource} "${name}"` : resource;
  const scope = namespace ? `in the namespace "${namespace}"` : 'at the cluster scope';
  const group = { endpointslices: 'discovery.k8s.io', leases: 'coordination.k8s.io', tokenreviews: 'authentication.k8s.io' }[resource as string] ?? '';
  const message = `${object} is forbidden: User "${USER}" cannot ${verb} resource "${resource}" in API group "${group}" ${scope}`;
  return status(403, 'Forbidden', message, { ...(name ? { name } : {}), kind: resource });
}

function send(res: ServerResponse, code: number, body: KubeObject): void {
  res.writeHead(code, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

/** The request body as JSON; null when it is not JSON. */
async function readJson(req: IncomingMessage): Promise<KubeObject | null | undefined> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text) return undefined;
  try {
    return JSON.parse(text) as KubeObject;
  } catch {
    return null;
  }
}

/** RFC 7386: objects merge recursively, null removes a key, anything else replaces. */
function mergePatch(target: unknown, patch: unknown): unknown {
  if (!isObject(patch)) return patch;
  const result: KubeObject = isObject(target) ? { ...target } : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete result[key];
    else result[key] = mergePatch(result[key], value);
  }
  return result;
}

function isObject(value: unknown): value is KubeObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Five characters from the alphabet the API server uses for generateName (no vowels, no lookalikes). */
function generatedSuffix(): string {
  const alphabet = 'bcdfghjklmnpqrstvwxz2456789';
  return Array.from(randomBytes(5), (b) => alphabet[b % alphabet.length]).join('');
}
