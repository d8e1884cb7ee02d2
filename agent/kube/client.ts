/**
 * The few Kubernetes API calls the agent makes (own pod, own node, a node label patch, events),
 * made directly on node:http(s) instead of through @kubernetes/client-node, which is far too heavy for an
 * agent that runs on every node.
 *
 * Calls are short (default 5 s) and never retried here: the agent's Kubernetes work is a side show
 * to deregistration, and the caller knows whether a failure matters. Every failure is a KubeApiError
 * that says what was attempted and, where the fix is known (RBAC, credentials), what to do.
 */
import { agentFor, readText, send } from '../http/request.ts';
import type { Logger } from '../log.ts';
import type { KubeAccess } from './config.ts';
import type { Lease, LeaseApi } from '../coordinator/lease-api.ts';

export interface KubePod {
  metadata: {
    name: string;
    namespace: string;
    uid: string;
    deletionTimestamp?: string;
    annotations?: Record<string, string>;
  };
  spec: { terminationGracePeriodSeconds?: number; nodeName?: string };
  /** What the kubelet says of the Pod: a graceful node shutdown writes its reason, message and a condition here. */
  status?: { phase?: string; reason?: string; message?: string; conditions?: KubeCondition[] };
}

/** A status condition as the API writes it (a Node's Ready, a Pod's DisruptionTarget). */
export interface KubeCondition {
  type: string;
  status: string;
  reason?: string;
  message?: string;
}

export interface KubeTaint {
  key: string;
  value?: string;
  effect: string;
}

export interface KubeNode {
  metadata: {
    name: string;
    uid: string;
    labels: Record<string, string>;
    annotations: Record<string, string>;
    deletionTimestamp?: string;
    /** Where a watch of the Node starts from. */
    resourceVersion?: string;
  };
  spec: { taints?: KubeTaint[]; providerID?: string };
  status?: { conditions?: KubeCondition[] };
}

/** Merge-patch semantics: a value sets, null removes, an absent key is left alone. */
export interface NodeMetadataPatch {
  labels?: Record<string, string | null>;
  annotations?: Record<string, string | null>;
}

export interface NodeEvent {
  node: KubeNode;
  /** CamelCase, as Kubernetes reasons are, e.g. `DrainStarted`. */
  reason: string;
  message: string;
  type: 'Normal' | 'Warning';
  /** Who reports, usually the pod's name. */
  reportingInstance: string;
}

/** One endpoint of a Service, as an EndpointSlice lists it: where it runs and whether it takes traffic. */
export interface KubeEndpoint {
  nodeName?: string;
  /** Unset in the API means ready (unknown state, which consumers treat as ready). */
  ready: boolean;
  terminating: boolean;
  /** The pod behind it, when there is one. */
  podName?: string;
}

/** One change of a watched Node, as the API streams it. */
export type NodeWatchEvent = { type: 'ADDED' | 'MODIFIED' | 'DELETED'; node: KubeNode } | { type: 'BOOKMARK'; resourceVersion: string };

export interface NodeWatchRequest {
  readonly resourceVersion: string;
  readonly signal: AbortSignal;
  /** The server accepted the watch (before any event: a quiet Node sends none for minutes). */
  readonly onOpen: () => void;
  readonly onEvent: (event: NodeWatchEvent) => void;
}

export interface KubeClient {
  getPod(namespace: string, name: string): Promise<KubePod>;
  /** Every endpoint of a Service, from all its EndpointSlices. */
  listServiceEndpoints(namespace: string, service: string): Promise<KubeEndpoint[]>;
  getNode(name: string): Promise<KubeNode>;
  /**
   * Streams the changes of one Node after `from.resourceVersion` until the server ends the watch (after
   * a few minutes) or `signal` aborts; resolves with the last resourceVersion seen. A version the server
   * no longer holds rejects with a KubeApiError of status 410 (`Expired`): read the Node again.
   */
  watchNode(name: string, watch: NodeWatchRequest): Promise<string>;
  patchNode(name: string, patch: NodeMetadataPatch): Promise<void>;
  createEvent(event: NodeEvent): Promise<void>;
  /** Who a bearer token belongs to, for these audiences (an authentication.k8s.io/v1 TokenReview). */
  reviewToken(token: string, audiences: readonly string[]): Promise<TokenReviewStatus>;
  /** The coordinator's Lease (coordination.k8s.io/v1), for the leader election. */
  readonly leases: LeaseApi;
  close(): Promise<void>;
}

/** A TokenReview's answer, as the API server writes it: `authenticated` false comes with `error`. */
export interface TokenReviewStatus {
  readonly authenticated: boolean;
  readonly user?: { readonly username?: string; readonly uid?: string; readonly extra?: Readonly<Record<string, readonly string[]>> };
  /** The audiences, of those asked for, that the token is valid for. */
  readonly audiences?: readonly string[];
  readonly error?: string;
}

export const DEFAULT_KUBE_TIMEOUT_MS = 5_000;
/** How long the server keeps one watch open; the API server's own default is 30 to 60 minutes. */
const WATCH_SECONDS = 300;
/** With no byte for this long (bookmarks come about every minute), the connection is taken for dead. */
const WATCH_SILENCE_MS = (WATCH_SECONDS + 30) * 1_000;
const COMPONENT = 'hasta-la-vista';
/** Events about cluster-scoped objects such as Nodes live in `default`, as kubelet's do. */
const EVENT_NAMESPACE = 'default';

export class KubeApiError extends Error {
  override name = 'KubeApiError';
  constructor(
    message: string,
    /** The HTTP status; undefined when no answer came (timeout, connection refused or reset). */
    readonly status: number | undefined,
    /** The Kubernetes Status reason (`NotFound`, `Forbidden`, …), or `Timeout`/`Unreachable` without an answer. */
    readonly reason: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** What a call does, for error messages and RBAC hints. */
interface Action {
  verb: 'get' | 'patch' | 'create' | 'list' | 'watch' | 'update';
  resource: 'pods' | 'nodes' | 'events' | 'endpointslices' | 'leases' | 'tokenreviews';
  /** The API group, "" for core. */
  group?: string;
  /** Set for namespaced resources. */
  namespace?: string;
  /** e.g. `node "ip-10-0-0-1"`. */
  what: string;
}

interface Call {
  method: 'GET' | 'PATCH' | 'POST' | 'PUT';
  path: string;
  body?: unknown;
  contentType?: string;
}

export function createKubeClient(access: KubeAccess, opts: { logger: Logger; timeoutMs?: number }): KubeClient {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_KUBE_TIMEOUT_MS;
  const logger = opts.logger;
  const agent = agentFor(access.server, access.tls);

  async function call(action: Action, { method, path, body, contentType }: Call): Promise<unknown> {
    const sent = { ...headers(), ...(body !== undefined ? { 'content-type': contentType ?? 'application/json' } : {}) };

    const signal = AbortSignal.timeout(timeoutMs);
    const started = performance.now();
    let status: number;
    let text: string;
    try {
      const res = await send({ method, url: access.server + path, headers: sent, body: body === undefined ? undefined : JSON.stringify(body), signal, agent });
      status = res.status;
      text = await readText(res.body, signal);
    } catch (err) {
      throw transportError(action, access.server, timeoutMs, signal.aborted, err);
    }
    logger.debug({ method, path, status, ms: Math.round(performance.now() - started) }, 'kubernetes api call');

    if (status < 200 || status >= 300) throw statusError(action, access.source, status, text);
    try {
      return JSON.parse(text) as unknown;
    } catch {
      throw new KubeApiError(`${action.verb} ${action.what}: the API server answered ${status} with a body that is not JSON`, status, 'BadResponse');
    }
  }

  return {
    async getPod(namespace, name) {
      const raw = await call(
        { verb: 'get', resource: 'pods', namespace, what: `pod "${namespace}/${name}"` },
        { method: 'GET', path: `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(name)}` },
      );
      return toPod(raw, `pod "${namespace}/${name}"`);
    },

    async listServiceEndpoints(namespace, service) {
      const selector = encodeURIComponent(`kubernetes.io/service-name=${service}`);
      const raw = await call(
        { verb: 'list', resource: 'endpointslices', group: 'discovery.k8s.io', namespace, what: `endpointslices of service "${namespace}/${service}"` },
        { method: 'GET', path: `/apis/discovery.k8s.io/v1/namespaces/${encodeURIComponent(namespace)}/endpointslices?labelSelector=${selector}` },
      );
      return toEndpoints(raw);
    },

    async getNode(name) {
      const raw = await call(
        { verb: 'get', resource: 'nodes', what: `node "${name}"` },
        { method: 'GET', path: `/api/v1/nodes/${encodeURIComponent(name)}` },
      );
      return toNode(raw, `node "${name}"`);
    },

    async patchNode(name, patch) {
      await call(
        { verb: 'patch', resource: 'nodes', what: `node "${name}"` },
        {
          method: 'PATCH',
          path: `/api/v1/nodes/${encodeURIComponent(name)}`,
          body: { metadata: { labels: patch.labels, annotations: patch.annotations } },
          contentType: 'application/merge-patch+json',
        },
      );
    },

    async createEvent(event) {
      await call(
        { verb: 'create', resource: 'events', namespace: EVENT_NAMESPACE, what: `event ${event.reason} for node "${event.node.metadata.name}"` },
        { method: 'POST', path: `/api/v1/namespaces/${EVENT_NAMESPACE}/events`, body: eventBody(event) },
      );
    },

    async reviewToken(token, audiences) {
      // The token is only in the body, which is never logged.
      const raw = await call(
        { verb: 'create', resource: 'tokenreviews', group: 'authentication.k8s.io', what: 'a tokenreview' },
        { method: 'POST', path: `/apis/authentication.k8s.io/v1/tokenreviews`, body: { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenReview', spec: { token, audiences } } },
      );
      const status = (raw as { status?: TokenReviewStatus } | null)?.status;
      if (typeof status?.authenticated !== 'boolean') throw new KubeApiError('create a tokenreview: the API server answered without status.authenticated', undefined, 'BadResponse');
      return status;
    },

    async watchNode(name, { resourceVersion, signal, onOpen, onEvent }) {
      const action: Action = { verb: 'watch', resource: 'nodes', what: `node "${name}"` };
      const query = new URLSearchParams({ fieldSelector: `metadata.name=${name}`, resourceVersion, allowWatchBookmarks: 'true', timeoutSeconds: String(WATCH_SECONDS) });
      const { method, path } = { method: 'GET', path: `/api/v1/nodes?watch=1&${query.toString()}` } as const;
      const silent = new AbortController();
      let silence = setTimeout(() => silent.abort(), WATCH_SILENCE_MS);
      const aborted = AbortSignal.any([signal, silent.signal]);
      let last = resourceVersion;
      try {
        const res = await send({ method, url: access.server + path, headers: headers(), signal: aborted, agent });
        if (res.status < 200 || res.status >= 300) throw statusError(action, access.source, res.status, await readText(res.body, aborted));
        onOpen();
        // Decoded as a stream: a character split across two chunks stays whole.
        res.body.setEncoding('utf8');
        let buffered = '';
        for await (const chunk of res.body) {
          clearTimeout(silence);
          silence = setTimeout(() => silent.abort(), WATCH_SILENCE_MS);
          buffered += chunk as string;
          let newline: number;
          while ((newline = buffered.indexOf('\n')) >= 0) {
            const line = buffered.slice(0, newline).trim();
            buffered = buffered.slice(newline + 1);
            if (!line) continue;
            const event = toWatchEvent(line, action, access.source);
            last = event.type === 'BOOKMARK' ? event.resourceVersion : (event.node.metadata.resourceVersion ?? last);
            onEvent(event);
          }
        }
        return last;
      } catch (err) {
        if (err instanceof KubeApiError) throw err;
        // The caller's stop is not a failure; a silent connection is, as is any other transport error.
        if (signal.aborted) return last;
        throw transportError(action, access.server, WATCH_SILENCE_MS, silent.signal.aborted, err);
      } finally {
        clearTimeout(silence);
      }
    },

    leases: {
      async get(namespace, name) {
        const action: Action = { verb: 'get', resource: 'leases', group: LEASE_GROUP, namespace, what: `lease "${namespace}/${name}"` };
        try {
          return (await call(action, { method: 'GET', path: `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(namespace)}/leases/${encodeURIComponent(name)}` })) as Lease;
        } catch (error) {
          if (error instanceof KubeApiError && error.status === 404) return undefined;
          throw error;
        }
      },
      async create(lease) {
        const { namespace, name } = lease.metadata;
        const action: Action = { verb: 'create', resource: 'leases', group: LEASE_GROUP, namespace, what: `lease "${namespace}/${name}"` };
        return (await call(action, { method: 'POST', path: `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(namespace)}/leases`, body: leaseBody(lease) })) as Lease;
      },
      async replace(lease) {
        const { namespace, name } = lease.metadata;
        const action: Action = { verb: 'update', resource: 'leases', group: LEASE_GROUP, namespace, what: `lease "${namespace}/${name}"` };
        return (await call(action, { method: 'PUT', path: `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(namespace)}/leases/${encodeURIComponent(name)}`, body: leaseBody(lease) })) as Lease;
      },
    },

    close: async () => agent.destroy(),
  };

  function headers(): Record<string, string> {
    const token = access.token?.();
    return { accept: 'application/json', 'user-agent': COMPONENT, ...(token ? { authorization: `Bearer ${token}` } : {}) };
  }
}

/** One line of a watch stream: `{"type": …, "object": …}`; an ERROR carries a Status (410 when the version is gone). */
function toWatchEvent(line: string, action: Action, source: string): NodeWatchEvent {
  let raw: Raw;
  try {
    raw = JSON.parse(line) as Raw;
  } catch {
    throw new KubeApiError(`${action.verb} ${action.what}: the watch stream carried a line that is not JSON`, 200, 'BadResponse');
  }
  const type = raw.type;
  if (type === 'ERROR') {
    const status = object(raw, 'object');
    const code = typeof status.code === 'number' ? status.code : 500;
    throw statusError(action, source, code, JSON.stringify(status));
  }
  if (type === 'BOOKMARK') {
    const version = object(object(raw, 'object'), 'metadata').resourceVersion;
    if (!isString(version)) throw new KubeApiError(`${action.verb} ${action.what}: a watch bookmark without a resourceVersion`, 200, 'BadResponse');
    return { type, resourceVersion: version };
  }
  if (type !== 'ADDED' && type !== 'MODIFIED' && type !== 'DELETED') {
    throw new KubeApiError(`${action.verb} ${action.what}: the watch stream carried an event of unknown type ${String(type)}`, 200, 'BadResponse');
  }
  return { type, node: toNode(raw.object, action.what) };
}

const LEASE_GROUP = 'coordination.k8s.io';

function leaseBody(lease: Lease): unknown {
  return { apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', ...lease };
}

/** A core/v1 Event; core/v1 (unlike events.k8s.io/v1) does not require eventTime or an action. */
function eventBody({ node, reason, message, type, reportingInstance }: NodeEvent): unknown {
  // metav1.Time is RFC 3339 to the second.
  const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  return {
    apiVersion: 'v1',
    kind: 'Event',
    metadata: { generateName: `${node.metadata.name}.`, namespace: EVENT_NAMESPACE },
    involvedObject: { apiVersion: 'v1', kind: 'Node', name: node.metadata.name, uid: node.metadata.uid },
    reason,
    message,
    type,
    source: { component: COMPONENT, host: node.metadata.name },
    reportingComponent: COMPONENT,
    reportingInstance,
    firstTimestamp: now,
    lastTimestamp: now,
    count: 1,
  };
}

// ---- errors ----

function transportError(action: Action, server: string, timeoutMs: number, timedOut: boolean, err: unknown): KubeApiError {
  const prefix = `${action.verb} ${action.what}`;
  if (timedOut) {
    return new KubeApiError(`${prefix}: no answer from the Kubernetes API at ${server} within ${timeoutMs} ms`, undefined, 'Timeout', { cause: err });
  }
  const detail = err instanceof Error ? errorDetail(err) : String(err);
  return new KubeApiError(`${prefix}: cannot reach the Kubernetes API at ${server} (${detail})`, undefined, 'Unreachable', { cause: err });
}

/** The message, led by the error code (ECONNREFUSED, UND_ERR_SOCKET…) unless it already names it. */
function errorDetail(err: Error): string {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && !err.message.includes(code) ? `${code}: ${err.message}` : err.message;
}

/** Reasons for answers that carry no Status object (a proxy's HTML page, an empty body). */
const REASON_BY_STATUS: Record<number, string> = {
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'NotFound',
  409: 'Conflict',
  422: 'Invalid',
  429: 'TooManyRequests',
  500: 'InternalError',
  503: 'ServiceUnavailable',
  504: 'Timeout',
};

function statusError(action: Action, source: string, status: number, text: string): KubeApiError {
  const parsed = parseStatus(text);
  const reason = parsed.reason ?? REASON_BY_STATUS[status] ?? 'Unknown';
  let message = `${action.verb} ${action.what}: ${status} ${reason}`;
  if (parsed.message) message += `: ${parsed.message}`;
  const hint = hintFor(action, status, source);
  if (hint) message += ` (${hint})`;
  return new KubeApiError(message, status, reason);
}

function parseStatus(text: string): { reason?: string; message?: string } {
  try {
    const body = JSON.parse(text) as unknown;
    if (typeof body !== 'object' || body === null || (body as { kind?: unknown }).kind !== 'Status') return {};
    const { reason, message } = body as { reason?: unknown; message?: unknown };
    return {
      reason: typeof reason === 'string' && reason ? reason : undefined,
      message: typeof message === 'string' && message ? message : undefined,
    };
  } catch {
    return {};
  }
}

function hintFor(action: Action, status: number, source: string): string | undefined {
  if (status === 401) return `the API server did not accept the credentials from ${source}: expired, revoked, or for another cluster?`;
  if (status !== 403) return undefined;
  const rule = `{apiGroups: ["${action.group ?? ''}"], resources: ["${action.resource}"], verbs: ["${action.verb}"]}`;
  return action.namespace === undefined
    ? `grant ${action.verb} on ${action.resource} to the agent's ServiceAccount: ClusterRole rule ${rule}`
    : `grant ${action.verb} on ${action.resource} in namespace ${action.namespace} to the agent's ServiceAccount: Role or ClusterRole rule ${rule}`;
}

// ---- responses to our types ----

type Raw = Record<string, unknown>;

function toPod(raw: unknown, what: string): KubePod {
  const metadata = object(raw, 'metadata');
  const spec = object(raw, 'spec');
  const status = object(raw, 'status');
  const name = metadata.name;
  const namespace = metadata.namespace;
  const uid = metadata.uid;
  if (typeof name !== 'string' || typeof namespace !== 'string' || typeof uid !== 'string') throw badObject(what);
  return {
    metadata: {
      name,
      namespace,
      uid,
      ...optional('deletionTimestamp', metadata.deletionTimestamp, isString),
      ...optional('annotations', metadata.annotations, isStringMap),
    },
    spec: {
      ...optional('terminationGracePeriodSeconds', spec.terminationGracePeriodSeconds, isNumber),
      ...optional('nodeName', spec.nodeName, isString),
    },
    ...present('status', {
      ...optional('phase', status.phase, isString),
      ...optional('reason', status.reason, isString),
      ...optional('message', status.message, isString),
      ...present('conditions', conditionsOf(status)),
    }),
  };
}

function toNode(raw: unknown, what: string): KubeNode {
  const metadata = object(raw, 'metadata');
  const spec = object(raw, 'spec');
  const status = object(raw, 'status');
  const name = metadata.name;
  const uid = metadata.uid;
  if (typeof name !== 'string' || typeof uid !== 'string') throw badObject(what);
  return {
    metadata: {
      name,
      uid,
      labels: isStringMap(metadata.labels) ? metadata.labels : {},
      annotations: isStringMap(metadata.annotations) ? metadata.annotations : {},
      ...optional('deletionTimestamp', metadata.deletionTimestamp, isString),
      ...optional('resourceVersion', metadata.resourceVersion, isString),
    },
    spec: {
      ...optional('taints', spec.taints, isTaintList),
      ...optional('providerID', spec.providerID, isString),
    },
    ...present('status', present('conditions', conditionsOf(status))),
  };
}

/** `{ [key]: value }` when value holds anything, else nothing: objects as the API would leave them out. */
function present<K extends string, V extends object>(key: K, value: V): { [P in K]?: V } {
  return Object.keys(value).length > 0 ? ({ [key]: value } as { [P in K]?: V }) : {};
}

/** The well-formed conditions of a status; a malformed one is left out rather than failing the read. */
function conditionsOf(status: Raw): KubeCondition[] {
  const list = Array.isArray(status.conditions) ? (status.conditions as unknown[]) : [];
  return list.flatMap((item) => {
    const c = (typeof item === 'object' && item !== null ? item : {}) as Raw;
    if (!isString(c.type) || !isString(c.status)) return [];
    return [{ type: c.type, status: c.status, ...optional('reason', c.reason, isString), ...optional('message', c.message, isString) }];
  });
}

function toEndpoints(raw: unknown): KubeEndpoint[] {
  const items = typeof raw === 'object' && raw !== null && Array.isArray((raw as Raw).items) ? ((raw as Raw).items as unknown[]) : [];
  return items.flatMap((slice) => {
    const endpoints = typeof slice === 'object' && slice !== null && Array.isArray((slice as Raw).endpoints) ? ((slice as Raw).endpoints as unknown[]) : [];
    return endpoints.map((endpoint) => {
      const conditions = object(endpoint, 'conditions');
      const targetRef = object(endpoint, 'targetRef');
      const nodeName = (endpoint as Raw | null)?.nodeName;
      return {
        ...(isString(nodeName) ? { nodeName } : {}),
        ready: conditions.ready !== false,
        terminating: conditions.terminating === true,
        ...(targetRef.kind === 'Pod' && isString(targetRef.name) ? { podName: targetRef.name } : {}),
      };
    });
  });
}

function badObject(what: string): KubeApiError {
  return new KubeApiError(`get ${what}: the API server answered with an object without metadata name or uid`, 200, 'BadResponse');
}

/** A nested object, or an empty one, so a missing `spec` reads as no fields rather than a crash. */
function object(raw: unknown, key: string): Raw {
  const value = typeof raw === 'object' && raw !== null ? (raw as Raw)[key] : undefined;
  return typeof value === 'object' && value !== null ? (value as Raw) : {};
}

/** `{key: value}` when value passes the check, `{}` otherwise: keeps absent fields absent. */
function optional<K extends string, T>(key: K, value: unknown, check: (v: unknown) => v is T): { [P in K]?: T } {
  return check(value) ? ({ [key]: value } as { [P in K]?: T }) : {};
}

function isString(v: unknown): v is string {
  return typeof v === 'string';
}

function isNumber(v: unknown): v is number {
  return typeof v === 'number';
}

function isStringMap(v: unknown): v is Record<string, string> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && Object.values(v).every(isString);
}

function isTaintList(v: unknown): v is KubeTaint[] {
  return Array.isArray(v) && v.every((t) => typeof t === 'object' && t !== null && isString(t.key) && isString(t.effect));
}
