/**
 * Where the Kubernetes API server is and how to authenticate to it: a kubeconfig named by KUBECONFIG,
 * or the pod's own service account, or nothing (the agent then makes no Kubernetes calls).
 *
 * Only what an agent needs is supported: bearer tokens (inline or from a file) and client
 * certificates. A kubeconfig that authenticates otherwise (exec plugins, auth providers, basic auth)
 * is refused with a message saying so, rather than silently talking to the API server anonymously.
 */
import { readFileSync } from 'node:fs';
import { delimiter, dirname, resolve } from 'node:path';

export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** Projected service account tokens rotate; kubelet renews them well before they expire. */
const DEFAULT_TOKEN_REFRESH_MS = 60_000;

export interface KubeTls {
  /** PEM CA bundle to trust; unset: the system's. */
  ca?: string;
  /** PEM client certificate and key, for certificate authentication. */
  cert?: string;
  key?: string;
  rejectUnauthorized: boolean;
  /** Name to verify the server's certificate against, when it differs from the URL's host. */
  servername?: string;
}

export interface KubeAccess {
  /** API server base URL without a trailing slash; may carry a path prefix, may be plain http. */
  server: string;
  /** Where this access came from, for logs and error messages, e.g. `kubeconfig /x (context kind)`. */
  source: string;
  /** The current bearer token; file-backed tokens are re-read periodically. Unset: no token. */
  token?: () => string;
  tls: KubeTls;
}

export class KubeConfigError extends Error {
  override name = 'KubeConfigError';
}

export interface LoadKubeAccessOptions {
  serviceAccountDir?: string;
  tokenRefreshMs?: number;
}

type Env = Readonly<Record<string, string | undefined>>;

export async function loadKubeAccess(env: Env = process.env, options: LoadKubeAccessOptions = {}): Promise<KubeAccess | undefined> {
  const tokenRefreshMs = options.tokenRefreshMs ?? DEFAULT_TOKEN_REFRESH_MS;
  // kubectl treats an empty KUBECONFIG as unset; so do we.
  if (env.KUBECONFIG) return fromKubeconfig(env.KUBECONFIG, tokenRefreshMs);
  if (env.KUBERNETES_SERVICE_HOST && env.KUBERNETES_SERVICE_PORT) {
    return inCluster(env.KUBERNETES_SERVICE_HOST, env.KUBERNETES_SERVICE_PORT, options.serviceAccountDir ?? SERVICE_ACCOUNT_DIR, tokenRefreshMs);
  }
  return undefined;
}

function inCluster(host: string, port: string, dir: string, tokenRefreshMs: number): KubeAccess {
  const fail = (what: string) =>
    new KubeConfigError(`running in a pod (KUBERNETES_SERVICE_HOST is set) but ${what}; is automountServiceAccountToken false?`);
  const tokenPath = `${dir}/token`;
  const caPath = `${dir}/ca.crt`;
  // An IPv6 service address needs brackets in a URL.
  const hostInUrl = host.includes(':') ? `[${host}]` : host;
  return {
    server: `https://${hostInUrl}:${port}`,
    source: 'in-cluster service account',
    token: fileToken(tokenPath, tokenRefreshMs, (err) => fail(`the service account token ${tokenPath} cannot be read (${err})`)),
    tls: { ca: readText(caPath, (err) => fail(`the service account CA ${caPath} cannot be read (${err})`)), rejectUnauthorized: true },
  };
}

/**
 * A token read from a file and re-read every refreshMs. A failed re-read keeps the last good token:
 * kubelet swaps the file atomically, so a failure is transient, and the old token stays valid for a
 * while after a new one is written. Only the first read must succeed.
 */
function fileToken(path: string, refreshMs: number, onError: (err: string) => Error): () => string {
  let token = readToken(path, onError);
  let readAt = Date.now();
  return () => {
    if (Date.now() - readAt >= refreshMs) {
      readAt = Date.now();
      try {
        token = readToken(path, onError);
      } catch {
        // keep the last good token (see above)
      }
    }
    return token;
  };
}

function readToken(path: string, onError: (err: string) => Error): string {
  const token = readText(path, onError).trim();
  if (!token) throw onError('it is empty');
  return token;
}

function readText(path: string, onError: (err: string) => Error): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (err) {
    throw onError(err instanceof Error ? err.message : String(err));
  }
}

// ---- kubeconfig ----

type Mapping = Record<string, unknown>;

async function fromKubeconfig(path: string, tokenRefreshMs: number): Promise<KubeAccess> {
  if (path.includes(delimiter)) {
    throw new KubeConfigError(`KUBECONFIG lists several files (${path}); hasta-la-vista reads a single kubeconfig file`);
  }
  const kc = new KubeconfigReader(path);
  const doc = await kc.parse();

  const contextName = kc.optionalString(doc, 'current-context', 'the file');
  if (!contextName) throw kc.error('no current-context is set');
  const contextWhere = `context "${contextName}"`;
  const context = kc.namedEntry(doc, 'contexts', 'context', contextName);
  const clusterName = kc.requiredString(context, 'cluster', contextWhere);
  const cluster = kc.namedEntry(doc, 'clusters', 'cluster', clusterName);
  const userName = kc.optionalString(context, 'user', contextWhere);
  const user = userName ? kc.namedEntry(doc, 'users', 'user', userName) : {};

  const clusterWhere = `cluster "${clusterName}"`;
  const userWhere = `user "${userName}"`;
  kc.refuseUnsupportedAuth(user, userWhere);
  const cert = kc.pem(user, 'client-certificate-data', 'client-certificate', userWhere);
  const key = kc.pem(user, 'client-key-data', 'client-key', userWhere);
  if (Boolean(cert) !== Boolean(key)) throw kc.error(`${userWhere} has a client certificate or a client key but not both`);

  return {
    server: kc.serverUrl(kc.requiredString(cluster, 'server', clusterWhere), clusterWhere),
    source: `kubeconfig ${path} (context ${contextName})`,
    token: kc.userToken(user, userWhere, tokenRefreshMs),
    tls: {
      ca: kc.pem(cluster, 'certificate-authority-data', 'certificate-authority', clusterWhere),
      cert,
      key,
      rejectUnauthorized: cluster['insecure-skip-tls-verify'] !== true,
      servername: kc.optionalString(cluster, 'tls-server-name', clusterWhere),
    },
  };
}

/** Reads one kubeconfig file; every error names the file and what in it is wrong. */
class KubeconfigReader {
  /** Relative paths inside a kubeconfig are relative to its own directory, as kubectl resolves them. */
  private readonly baseDir: string;

  constructor(private readonly path: string) {
    this.baseDir = dirname(resolve(path));
  }

  error(what: string): KubeConfigError {
    return new KubeConfigError(`KUBECONFIG file ${this.path}: ${what}`);
  }

  async parse(): Promise<Mapping> {
    const text = readText(this.path, (err) => this.error(`cannot be read (${err})`));
    // The YAML parser is loaded only here: in a pod the agent uses its service account, and a module it
    // never runs would cost every node memory (1 MiB of resident memory on Node 22, measured).
    const { parseYaml } = await import('./yaml.ts');
    let doc: unknown;
    try {
      doc = parseYaml(text);
    } catch (err) {
      throw this.error(`is not valid YAML (${err instanceof Error ? err.message : String(err)})`);
    }
    if (!isMapping(doc)) throw this.error('is not a kubeconfig (expected a mapping with clusters, contexts and users)');
    return doc;
  }

  /** The body of the entry with that name in a list like `clusters: [{name, cluster: {...}}]`. */
  namedEntry(doc: Mapping, list: string, key: string, name: string): Mapping {
    const entries = doc[list] ?? [];
    if (!Array.isArray(entries)) throw this.error(`${list} is not a list`);
    const entry: unknown = entries.find((e: unknown) => isMapping(e) && e.name === name);
    if (!isMapping(entry)) {
      const known = entries.flatMap((e: unknown) => (isMapping(e) && typeof e.name === 'string' ? [e.name] : []));
      throw this.error(`${key} "${name}" is not among its ${list} (${known.join(', ') || 'none'})`);
    }
    const body = entry[key];
    if (!isMapping(body)) throw this.error(`${key} "${name}" has no ${key} mapping`);
    return body;
  }

  serverUrl(server: string, where: string): string {
    let url: URL;
    try {
      url = new URL(server);
    } catch {
      throw this.error(`${where} has server "${server}", which is not a URL`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw this.error(`${where} has server "${server}", which is not http(s)`);
    return server.replace(/\/+$/, '');
  }

  refuseUnsupportedAuth(user: Mapping, where: string): void {
    for (const key of ['exec', 'auth-provider', 'username']) {
      if (user[key] !== undefined) {
        throw this.error(`${where} authenticates with ${key}, which hasta-la-vista does not support; use token, tokenFile or a client certificate`);
      }
    }
  }

  /** As in client-go, a tokenFile (re-read periodically) wins over an inline token. */
  userToken(user: Mapping, where: string, refreshMs: number): (() => string) | undefined {
    const tokenFile = this.optionalString(user, 'tokenFile', where);
    if (tokenFile) {
      const path = resolve(this.baseDir, tokenFile);
      return fileToken(path, refreshMs, (err) => this.error(`${where}'s tokenFile ${path} cannot be used (${err})`));
    }
    const token = this.optionalString(user, 'token', where);
    return token ? () => token : undefined;
  }

  /** A PEM block given inline as base64 (the `…-data` key) or as a file path. */
  pem(obj: Mapping, dataKey: string, fileKey: string, where: string): string | undefined {
    const data = this.optionalString(obj, dataKey, where);
    const file = this.optionalString(obj, fileKey, where);
    let pem: string;
    if (data) {
      pem = Buffer.from(data, 'base64').toString('utf8');
    } else if (file) {
      const path = resolve(this.baseDir, file);
      pem = readText(path, (err) => this.error(`${where}'s ${fileKey} ${path} cannot be read (${err})`));
    } else {
      return undefined;
    }
    if (!pem.includes('-----BEGIN ')) throw this.error(`${where}'s ${data ? dataKey : fileKey} is not PEM`);
    return pem;
  }

  optionalString(obj: Mapping, key: string, where: string): string | undefined {
    const value = obj[key];
    if (value === undefined || value === null || value === '') return undefined;
    if (typeof value !== 'string') throw this.error(`${where} has a ${key} that is not a string`);
    return value;
  }

  requiredString(obj: Mapping, key: string, where: string): string {
    const value = this.optionalString(obj, key, where);
    if (value === undefined) throw this.error(`${where} has no ${key}`);
    return value;
  }
}

function isMapping(value: unknown): value is Mapping {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
