import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { stringify as toYaml } from 'yaml';
import { createKubeClient, KubeApiError, type KubeClient } from '../agent/kube/client.ts';
import { KubeConfigError, loadKubeAccess, type KubeAccess } from '../agent/kube/config.ts';
import { silentLogger } from '../agent/log.ts';
import { makeNode, makePod, startFakeKube, type FakeKube } from './fakes/kube.ts';

const TOKEN = 'test-token';
const FAKE_PEM = '-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n';
const b64 = (s: string) => Buffer.from(s).toString('base64');

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'hlv-kube-'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

function writeKubeconfig(name: string, doc: unknown): string {
  const path = join(dir, name);
  writeFileSync(path, typeof doc === 'string' ? doc : toYaml(doc));
  return path;
}

/** A minimal kubeconfig with one context; cluster and user fields are the test's. */
function kubeconfig(cluster: Record<string, unknown>, user: Record<string, unknown>): unknown {
  return {
    apiVersion: 'v1',
    kind: 'Config',
    'current-context': 'ctx',
    clusters: [{ name: 'c', cluster }],
    users: [{ name: 'u', user }],
    contexts: [{ name: 'ctx', context: { cluster: 'c', user: 'u' } }],
  };
}

/** Awaits the promise and returns the error it rejects with, which must be a `type`. */
async function rejection<E extends Error>(promise: Promise<unknown>, type: abstract new (...args: never[]) => E): Promise<E> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof type, `expected ${type.name}, got ${String(err)}`);
    return err;
  }
  assert.fail(`expected a ${type.name}`);
}

const configError = (promise: Promise<unknown>): Promise<KubeConfigError> => rejection(promise, KubeConfigError);
const apiError = (promise: Promise<unknown>): Promise<KubeApiError> => rejection(promise, KubeApiError);

describe('loadKubeAccess', () => {
  it('is undefined outside a cluster without KUBECONFIG', async () => {
    assert.equal(await loadKubeAccess({}), undefined);
    assert.equal(await loadKubeAccess({ KUBECONFIG: '' }), undefined);
  });

  it('reads server and token from a kubeconfig, plain http allowed', async () => {
    const path = writeKubeconfig('token.yaml', kubeconfig({ server: 'http://127.0.0.1:8080/' }, { token: 'abc' }));
    const access = await loadKubeAccess({ KUBECONFIG: path });
    assert.ok(access);
    assert.equal(access.server, 'http://127.0.0.1:8080');
    assert.equal(access.token?.(), 'abc');
    assert.equal(access.source, `kubeconfig ${path} (context ctx)`);
    assert.equal(access.tls.rejectUnauthorized, true);
  });

  it('reads CA and client certificate data, insecure-skip-tls-verify and tls-server-name', async () => {
    const path = writeKubeconfig(
      'certs.yaml',
      kubeconfig(
        { server: 'https://k8s.example:6443', 'certificate-authority-data': b64(FAKE_PEM), 'insecure-skip-tls-verify': true, 'tls-server-name': 'kubernetes' },
        { 'client-certificate-data': b64(FAKE_PEM), 'client-key-data': b64('-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n') },
      ),
    );
    const access = await loadKubeAccess({ KUBECONFIG: path });
    assert.ok(access);
    assert.equal(access.tls.ca, FAKE_PEM);
    assert.equal(access.tls.cert, FAKE_PEM);
    assert.match(access.tls.key ?? '', /BEGIN PRIVATE KEY/);
    assert.equal(access.tls.rejectUnauthorized, false);
    assert.equal(access.tls.servername, 'kubernetes');
    assert.equal(access.token, undefined);
  });

  it('resolves file paths relative to the kubeconfig, and tokenFile wins over token', async () => {
    writeFileSync(join(dir, 'ca.pem'), FAKE_PEM);
    writeFileSync(join(dir, 'token-file'), 'from-file\n');
    const path = writeKubeconfig('files.yaml', kubeconfig({ server: 'https://k8s.example', 'certificate-authority': 'ca.pem' }, { token: 'inline', tokenFile: 'token-file' }));
    const access = await loadKubeAccess({ KUBECONFIG: path });
    assert.equal(access?.tls.ca, FAKE_PEM);
    assert.equal(access?.token?.(), 'from-file');
  });

  it('names the file when it is missing', async () => {
    const path = join(dir, 'nope.yaml');
    const err = await configError(loadKubeAccess({ KUBECONFIG: path }));
    assert.match(err.message, new RegExp(`KUBECONFIG file ${path}: cannot be read \\(ENOENT`));
  });

  it('names the file and the problem when it is malformed', async () => {
    const cases: [string, unknown, RegExp][] = [
      ['bad-yaml', 'clusters: [\n  - name: c\n  oops: {', /is not valid YAML/],
      ['scalar', 'just a string', /is not a kubeconfig/],
      ['no-context', { clusters: [] }, /no current-context is set/],
      ['missing-context', { 'current-context': 'x', contexts: [{ name: 'a', context: { cluster: 'c' } }] }, /context "x" is not among its contexts \(a\)/],
      ['no-server', kubeconfig({}, { token: 't' }), /cluster "c" has no server/],
      ['bad-server', kubeconfig({ server: 'not a url' }, {}), /cluster "c" has server "not a url", which is not a URL/],
      ['bad-ca', kubeconfig({ server: 'https://x', 'certificate-authority-data': b64('nope') }, {}), /certificate-authority-data is not PEM/],
      ['exec', kubeconfig({ server: 'https://x' }, { exec: { command: 'aws' } }), /user "u" authenticates with exec, which hasta-la-vista does not support/],
      ['half-cert', kubeconfig({ server: 'https://x' }, { 'client-certificate-data': b64(FAKE_PEM) }), /client certificate or a client key but not both/],
      ['token-type', kubeconfig({ server: 'https://x' }, { token: 42 }), /user "u" has a token that is not a string/],
    ];
    for (const [name, doc, expected] of cases) {
      const path = writeKubeconfig(`${name}.yaml`, doc);
      const err = await configError(loadKubeAccess({ KUBECONFIG: path }));
      assert.ok(err.message.startsWith(`KUBECONFIG file ${path}: `), err.message);
      assert.match(err.message, expected, name);
    }
  });

  it('refuses a list of kubeconfig files', async () => {
    const err = await configError(loadKubeAccess({ KUBECONFIG: '/a.yaml:/b.yaml' }));
    assert.match(err.message, /lists several files/);
  });

  describe('in cluster', () => {
    const env = { KUBERNETES_SERVICE_HOST: '10.100.0.1', KUBERNETES_SERVICE_PORT: '443' };

    it('uses the service account token and CA, and re-reads the rotating token', async () => {
      const sa = mkdtempSync(join(dir, 'sa-'));
      writeFileSync(join(sa, 'token'), 'first');
      writeFileSync(join(sa, 'ca.crt'), FAKE_PEM);
      const access = await loadKubeAccess(env, { serviceAccountDir: sa, tokenRefreshMs: 0 });
      assert.ok(access);
      assert.equal(access.server, 'https://10.100.0.1:443');
      assert.equal(access.tls.ca, FAKE_PEM);
      assert.equal(access.tls.rejectUnauthorized, true);
      assert.equal(access.token?.(), 'first');
      writeFileSync(join(sa, 'token'), 'second');
      assert.equal(access.token?.(), 'second');
      // A failed re-read keeps the last good token.
      rmSync(join(sa, 'token'));
      assert.equal(access.token?.(), 'second');
    });

    it('keeps the token between refreshes', async () => {
      const sa = mkdtempSync(join(dir, 'sa-'));
      writeFileSync(join(sa, 'token'), 'first');
      writeFileSync(join(sa, 'ca.crt'), FAKE_PEM);
      const access = await loadKubeAccess(env, { serviceAccountDir: sa, tokenRefreshMs: 60_000 });
      writeFileSync(join(sa, 'token'), 'second');
      assert.equal(access?.token?.(), 'first');
    });

    it('brackets an IPv6 service address', async () => {
      const sa = mkdtempSync(join(dir, 'sa-'));
      writeFileSync(join(sa, 'token'), 't');
      writeFileSync(join(sa, 'ca.crt'), FAKE_PEM);
      const access = await loadKubeAccess({ KUBERNETES_SERVICE_HOST: 'fd00::1', KUBERNETES_SERVICE_PORT: '443' }, { serviceAccountDir: sa });
      assert.equal(access?.server, 'https://[fd00::1]:443');
    });

    it('says what is missing when the token is not mounted', async () => {
      const err = await configError(loadKubeAccess(env, { serviceAccountDir: join(dir, 'absent') }));
      assert.match(err.message, /service account token .*absent\/token cannot be read.*automountServiceAccountToken/);
    });

    it('prefers KUBECONFIG over the in-cluster service account', async () => {
      const path = writeKubeconfig('prefer.yaml', kubeconfig({ server: 'http://127.0.0.1:1' }, { token: 't' }));
      assert.equal((await loadKubeAccess({ ...env, KUBECONFIG: path }))?.server, 'http://127.0.0.1:1');
    });
  });
});

describe('KubeClient against the fake API server', () => {
  let fake: FakeKube;
  let access: KubeAccess;
  let client: KubeClient;

  before(async () => {
    fake = await startFakeKube({ token: TOKEN });
    const loaded = await loadKubeAccess({ KUBECONFIG: fake.writeKubeconfig(join(dir, 'fake.yaml')) });
    assert.ok(loaded);
    access = loaded;
    client = createKubeClient(access, { logger: silentLogger() });
  });
  after(async () => {
    await client.close();
    await fake.close();
  });

  it('gets a pod with the fields the agent uses', async () => {
    fake.setPod(makePod('kube-system', 'hlv-abcde', { uid: 'pod-uid', nodeName: 'node-a', terminationGracePeriodSeconds: 120, annotations: { a: 'b' } }));
    const pod = await client.getPod('kube-system', 'hlv-abcde');
    assert.deepEqual(pod, {
      metadata: { name: 'hlv-abcde', namespace: 'kube-system', uid: 'pod-uid', annotations: { a: 'b' } },
      spec: { terminationGracePeriodSeconds: 120, nodeName: 'node-a' },
      // What the kubelet says of the Pod: read on SIGTERM for its node-shutdown marks.
      status: { phase: 'Running' },
    });
    assert.deepEqual(fake.requests.at(-1), { method: 'GET', path: '/api/v1/namespaces/kube-system/pods/hlv-abcde' });
  });

  it('gets a node with labels, annotations, taints, providerID and deletionTimestamp', async () => {
    const taint = { key: 'node.kubernetes.io/unschedulable', effect: 'NoSchedule' };
    fake.setNode(makeNode('node-b', { uid: 'node-uid', labels: { role: 'web' }, taints: [taint], providerID: 'aws:///us-east-1a/i-0b', deletionTimestamp: '2026-11-27T10:00:00Z' }));
    const node = await client.getNode('node-b');
    assert.equal(node.metadata.name, 'node-b');
    assert.equal(node.metadata.uid, 'node-uid');
    assert.equal(node.metadata.labels.role, 'web');
    assert.equal(node.metadata.annotations['node.alpha.kubernetes.io/ttl'], '0');
    assert.equal(node.metadata.deletionTimestamp, '2026-11-27T10:00:00Z');
    assert.deepEqual(node.spec, { taints: [taint], providerID: 'aws:///us-east-1a/i-0b' });
    // The Ready condition, where the kubelet says "node is shutting down".
    assert.deepEqual(node.status, { conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady' }] });
  });

  it('defaults missing labels and annotations to empty maps', async () => {
    fake.setNode({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'bare', uid: 'u' }, spec: {} });
    const node = await client.getNode('bare');
    // The version the server stamped: where a watch of the Node starts.
    assert.deepEqual(node, { metadata: { name: 'bare', uid: 'u', labels: {}, annotations: {}, resourceVersion: fake.node('bare')!.metadata.resourceVersion }, spec: {} });
  });

  it('merge-patches node labels and annotations: a value adds, null removes', async () => {
    fake.setNode(makeNode('node-c', { labels: { old: 'x', keep: 'y' } }));
    await client.patchNode('node-c', {
      labels: { 'node.kubernetes.io/exclude-from-external-load-balancers': 'true', old: null },
      annotations: { 'hasta-la-vista/drained-at': '2026-11-27T10:00:00Z' },
    });
    const stored = fake.node('node-c');
    assert.equal(stored?.metadata.labels['node.kubernetes.io/exclude-from-external-load-balancers'], 'true');
    assert.equal(stored?.metadata.labels.old, undefined);
    assert.equal(stored?.metadata.labels.keep, 'y');
    assert.equal(stored?.metadata.annotations['hasta-la-vista/drained-at'], '2026-11-27T10:00:00Z');
    const { at: _at, ...sent } = fake.patches.at(-1)!;
    assert.deepEqual(sent, {
      node: 'node-c',
      contentType: 'application/merge-patch+json',
      body: {
        metadata: {
          labels: { 'node.kubernetes.io/exclude-from-external-load-balancers': 'true', old: null },
          annotations: { 'hasta-la-vista/drained-at': '2026-11-27T10:00:00Z' },
        },
      },
    });
  });

  it('posts an Event in default involving the Node', async () => {
    fake.setNode(makeNode('node-d', { uid: 'uid-d' }));
    const node = await client.getNode('node-d');
    await client.createEvent({ node, reason: 'DrainStarted', message: 'spot interruption', type: 'Warning', reportingInstance: 'hlv-abcde' });
    assert.deepEqual(fake.requests.at(-1), { method: 'POST', path: '/api/v1/namespaces/default/events' });
    const event = fake.events.at(-1);
    assert.ok(event);
    assert.deepEqual(event.involvedObject, { apiVersion: 'v1', kind: 'Node', name: 'node-d', uid: 'uid-d' });
    assert.equal(event.metadata.namespace, 'default');
    assert.match(event.metadata.name, /^node-d\.[a-z0-9]{5}$/);
    assert.equal(event.reason, 'DrainStarted');
    assert.equal(event.message, 'spot interruption');
    assert.equal(event.type, 'Warning');
    assert.deepEqual(event.source, { component: 'hasta-la-vista', host: 'node-d' });
    assert.equal(event.reportingComponent, 'hasta-la-vista');
    assert.equal(event.reportingInstance, 'hlv-abcde');
    assert.equal(event.count, 1);
    assert.match(event.firstTimestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    assert.equal(event.lastTimestamp, event.firstTimestamp);
  });

  it('turns 404 into KubeApiError NotFound naming the object', async () => {
    const err = await apiError(client.getNode('ghost'));
    assert.equal(err.status, 404);
    assert.equal(err.reason, 'NotFound');
    assert.equal(err.message, 'get node "ghost": 404 NotFound: nodes "ghost" not found');
    fake.setNode(makeNode('gone'));
    fake.deleteNode('gone');
    assert.equal((await apiError(client.getNode('gone'))).reason, 'NotFound');
    const podErr = await apiError(client.getPod('ns', 'ghost'));
    assert.match(podErr.message, /^get pod "ns\/ghost": 404 NotFound: pods "ghost" not found$/);
  });

  it('turns 401 into KubeApiError Unauthorized naming the credentials source', async () => {
    const wrong = createKubeClient({ ...access, token: () => 'wrong' }, { logger: silentLogger() });
    try {
      const err = await apiError(wrong.getNode('node-b'));
      assert.equal(err.status, 401);
      assert.equal(err.reason, 'Unauthorized');
      assert.match(err.message, /^get node "node-b": 401 Unauthorized: Unauthorized \(the API server did not accept the credentials from kubeconfig .*fake\.yaml/);
    } finally {
      await wrong.close();
    }
  });

  it('turns 403 into KubeApiError Forbidden with the RBAC rule to add', async () => {
    const forbidden = await startFakeKube({ token: TOKEN });
    forbidden.forbid('nodes', 'patch');
    forbidden.forbid('events');
    forbidden.forbid('pods', 'get');
    forbidden.setNode(makeNode('n'));
    const c = createKubeClient({ ...access, server: forbidden.url }, { logger: silentLogger() });
    try {
      const node = await c.getNode('n'); // get on nodes stays allowed
      const patchErr = await apiError(c.patchNode('n', { labels: { a: 'b' } }));
      assert.equal(patchErr.status, 403);
      assert.equal(patchErr.reason, 'Forbidden');
      assert.match(patchErr.message, /^patch node "n": 403 Forbidden: nodes "n" is forbidden: User ".*" cannot patch resource "nodes"/);
      assert.match(patchErr.message, /grant patch on nodes to the agent's ServiceAccount: ClusterRole rule \{apiGroups: \[""\], resources: \["nodes"\], verbs: \["patch"\]\}/);

      const eventErr = await apiError(c.createEvent({ node, reason: 'R', message: 'm', type: 'Normal', reportingInstance: 'i' }));
      assert.match(eventErr.message, /grant create on events in namespace default to the agent's ServiceAccount: Role or ClusterRole rule/);

      const podErr = await apiError(c.getPod('kube-system', 'p'));
      assert.match(podErr.message, /grant get on pods in namespace kube-system/);
      assert.equal(forbidden.patches.length, 0);
      assert.equal(forbidden.events.length, 0);
    } finally {
      await c.close();
      await forbidden.close();
    }
  });
});

describe('KubeClient when the API server is unreachable', () => {
  let fake: FakeKube;
  let client: KubeClient;

  before(async () => {
    fake = await startFakeKube({ token: TOKEN });
    const access = await loadKubeAccess({ KUBECONFIG: fake.writeKubeconfig(join(dir, 'down.yaml')) });
    assert.ok(access);
    client = createKubeClient(access, { logger: silentLogger(), timeoutMs: 200 });
  });
  after(async () => {
    await client.close();
    await fake.close();
  });

  it('times out when the server hangs', async () => {
    fake.down = 'hang';
    const started = Date.now();
    const err = await apiError(client.getNode('n'));
    assert.ok(Date.now() - started < 2_000, 'gave up quickly');
    assert.equal(err.status, undefined);
    assert.equal(err.reason, 'Timeout');
    assert.match(err.message, /^get node "n": no answer from the Kubernetes API at http:\/\/127\.0\.0\.1:\d+ within 200 ms$/);
  });

  it('reports a reset connection as Unreachable', async () => {
    fake.down = 'reset';
    const err = await apiError(client.patchNode('n', { labels: { a: null } }));
    assert.equal(err.status, undefined);
    assert.equal(err.reason, 'Unreachable');
    assert.match(err.message, /^patch node "n": cannot reach the Kubernetes API at http:\/\/127\.0\.0\.1:\d+ \(.+\)$/);
  });

  it('reports a refused connection as Unreachable', async () => {
    const closed = await startFakeKube({ token: TOKEN });
    await closed.close();
    const c = createKubeClient({ server: closed.url, source: 'test', tls: { rejectUnauthorized: true } }, { logger: silentLogger() });
    try {
      const err = await apiError(c.getNode('n'));
      assert.equal(err.reason, 'Unreachable');
      assert.match(err.message, /ECONNREFUSED/);
    } finally {
      await c.close();
    }
  });
});

/** A self-signed certificate for `san` made with openssl; undefined where openssl is missing. */
function selfSigned(san: string): { cert: string; key: string } | undefined {
  const name = san.replace(/\W/g, '-');
  const certPath = join(dir, `${name}.crt`);
  const keyPath = join(dir, `${name}.key`);
  try {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', '/CN=kubernetes', '-addext', `subjectAltName=${san}`, '-keyout', keyPath, '-out', certPath,
    ], { stdio: 'ignore' });
  } catch {
    return undefined;
  }
  return { cert: readFileSync(certPath, 'utf8'), key: readFileSync(keyPath, 'utf8') };
}

describe('KubeClient over TLS', () => {
  it('trusts the in-cluster CA and rejects a server it does not trust', async (t) => {
    const tls = selfSigned('IP:127.0.0.1');
    if (!tls) return t.skip('openssl not available');
    const fake = await startFakeKube({ token: TOKEN, tls });
    fake.setNode(makeNode('n'));
    const sa = mkdtempSync(join(dir, 'sa-'));
    writeFileSync(join(sa, 'token'), TOKEN);
    writeFileSync(join(sa, 'ca.crt'), tls.cert);
    const port = new URL(fake.url).port;
    const access = await loadKubeAccess({ KUBERNETES_SERVICE_HOST: '127.0.0.1', KUBERNETES_SERVICE_PORT: port }, { serviceAccountDir: sa });
    assert.ok(access);
    const trusting = createKubeClient(access, { logger: silentLogger() });
    const untrusting = createKubeClient({ ...access, tls: { rejectUnauthorized: true } }, { logger: silentLogger() });
    const insecure = createKubeClient({ ...access, tls: { rejectUnauthorized: false } }, { logger: silentLogger() });
    try {
      assert.equal((await trusting.getNode('n')).metadata.name, 'n');
      const err = await apiError(untrusting.getNode('n'));
      assert.equal(err.reason, 'Unreachable');
      assert.match(err.message, /certificate/i);
      assert.equal((await insecure.getNode('n')).metadata.name, 'n');

      // The kubeconfig the fake writes trusts its certificate too.
      const viaKubeconfig = await loadKubeAccess({ KUBECONFIG: fake.writeKubeconfig(join(dir, 'tls.yaml')) });
      assert.ok(viaKubeconfig);
      const c = createKubeClient(viaKubeconfig, { logger: silentLogger() });
      assert.equal((await c.getNode('n')).metadata.name, 'n');
      await c.close();
    } finally {
      await Promise.all([trusting.close(), untrusting.close(), insecure.close()]);
      await fake.close();
    }
  });

  it('verifies the certificate against tls-server-name when the kubeconfig sets it', async (t) => {
    const tls = selfSigned('DNS:kubernetes');
    if (!tls) return t.skip('openssl not available');
    const fake = await startFakeKube({ token: TOKEN, tls });
    fake.setNode(makeNode('n'));
    const cluster = { server: fake.url, 'certificate-authority-data': b64(tls.cert) };
    const named = await loadKubeAccess({ KUBECONFIG: writeKubeconfig('sni.yaml', kubeconfig({ ...cluster, 'tls-server-name': 'kubernetes' }, { token: TOKEN })) });
    const unnamed = await loadKubeAccess({ KUBECONFIG: writeKubeconfig('no-sni.yaml', kubeconfig(cluster, { token: TOKEN })) });
    assert.ok(named && unnamed);
    const good = createKubeClient(named, { logger: silentLogger() });
    const bad = createKubeClient(unnamed, { logger: silentLogger() });
    try {
      assert.equal((await good.getNode('n')).metadata.name, 'n');
      const err = await apiError(bad.getNode('n'));
      assert.match(err.message, /ERR_TLS_CERT_ALTNAME_INVALID/);
    } finally {
      await Promise.all([good.close(), bad.close()]);
      await fake.close();
    }
  });
});
