/**
 * Container hardening, on every way the chart can be rendered (defaults, every option on, an existing
 * Secret) and on the Dockerfile: non-root, read-only root filesystem, no privilege escalation, no added
 * capabilities, nothing from the host but the network, the secret only by reference, and RBAC limited to
 * the verbs the agent's Kubernetes client really uses (read from agent/kube/*.ts, so a grant nobody
 * calls, or a call nobody granted, fails here). test/chart.test.ts checks the default rendering's exact
 * shape; this file checks the invariants across renderings.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const CHART = join(ROOT, 'chart', 'hasta-la-vista');
const HELM = process.env.HELM ?? join(ROOT, '.cache', 'helm', 'helm');
const SECRET_VALUE = 'hardening-Secret-0f9e8d7c6b5a4321';

type Obj = Record<string, any>;

function render(args: string[]): { objects: Obj[]; text: string } {
  assert.ok(existsSync(HELM), `helm not found at ${HELM}: run \`bash scripts/fetch-helm.sh\``);
  const result = spawnSync(HELM, ['template', 'hlv', CHART, '--namespace', 'kube-system', '--kube-version', '1.25.0', ...args], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(result.status, 0, result.stderr);
  const objects = parseAllDocuments(result.stdout)
    .map((doc) => doc.toJS() as Obj | null)
    .filter((o): o is Obj => o !== null);
  return { objects, text: result.stdout };
}

const RENDERINGS: Record<string, string[]> = {
  defaults: ['--set', `secret.value=${SECRET_VALUE}`],
  'every option on': ['-f', join(ROOT, 'test', 'fixtures', 'values-all.yaml'), '--set', `secret.value=${SECRET_VALUE}`],
  'an existing Secret': ['--set', 'secret.existingSecret=my-drain-secret'],
};

function podSpecs(objects: Obj[]): { owner: string; spec: Obj }[] {
  return objects.flatMap((o) => {
    const spec = o.spec?.template?.spec ?? (o.kind === 'Pod' ? o.spec : undefined);
    return spec ? [{ owner: `${o.kind}/${o.metadata.name}`, spec }] : [];
  });
}

for (const [name, args] of Object.entries(RENDERINGS)) {
  describe(`hardening: the chart rendered with ${name}`, () => {
    const { objects, text } = render(args);
    const pods = podSpecs(objects);

    it('has a workload to check', () => assert.ok(pods.length >= 1));

    it('runs every container non-root, read-only, without escalation, privilege or added capabilities', () => {
      for (const { owner, spec } of pods) {
        assert.equal(spec.securityContext?.runAsNonRoot, true, owner);
        assert.notEqual(spec.securityContext?.runAsUser, 0, owner);
        for (const container of [...(spec.initContainers ?? []), ...(spec.containers ?? [])]) {
          const where = `${owner} container ${container.name}`;
          const sc = container.securityContext ?? {};
          assert.notEqual(sc.runAsUser, 0, where);
          assert.notEqual(sc.runAsNonRoot, false, where);
          assert.equal(sc.readOnlyRootFilesystem, true, where);
          assert.equal(sc.allowPrivilegeEscalation, false, where);
          assert.notEqual(sc.privileged, true, where);
          assert.deepEqual(sc.capabilities?.add ?? [], [], `${where}: no added capabilities`);
          assert.ok((sc.capabilities?.drop ?? []).includes('ALL'), `${where}: drops ALL`);
          assert.notEqual(sc.procMount, 'Unmasked', where);
        }
      }
    });

    it('takes nothing from the host but its network: no hostPID, hostIPC, hostPath volumes', () => {
      for (const { owner, spec } of pods) {
        assert.notEqual(spec.hostPID, true, owner);
        assert.notEqual(spec.hostIPC, true, owner);
        for (const volume of spec.volumes ?? []) assert.equal(volume.hostPath, undefined, `${owner} volume ${volume.name}`);
      }
    });

    it('passes the secret only by reference: no env value holds it, and it appears in no object but the Secret', () => {
      for (const { owner, spec } of pods) {
        for (const container of [...(spec.initContainers ?? []), ...(spec.containers ?? [])]) {
          const env: Obj[] = container.env ?? [];
          const secret = env.find((e) => e.name === 'SECRET');
          assert.ok(secret?.valueFrom?.secretKeyRef?.name, `${owner}: SECRET from a secretKeyRef`);
          assert.equal(secret.value, undefined);
          // Where the agent reads the secret as a file: a path into a volume of that same Secret, read-only.
          const file = env.find((e) => e.name === 'SECRET_FILE')?.value as string | undefined;
          const mount = (container.volumeMounts ?? []).find((m: Obj) => file?.startsWith(`${m.mountPath}/`));
          const volume = (spec.volumes ?? []).find((v: Obj) => v.name === mount?.name);
          assert.ok(mount?.readOnly && volume?.secret?.secretName === secret.valueFrom.secretKeyRef.name, `${owner}: SECRET_FILE is not in a read-only mount of the Secret`);
          /** Plain values whose names only sound secret: a region-endpoint switch, the file's path (checked above), the audience pods' tokens must carry. */
          const notSecret = ['AWS_STS_REGIONAL_ENDPOINTS', 'SECRET_FILE', 'TOKEN_AUDIENCE'];
          for (const e of env) {
            assert.ok(!String(e.value ?? '').includes(SECRET_VALUE), `${owner}: env ${e.name} holds the secret`);
            assert.ok(!/secret|password|token/i.test(e.name) || e.valueFrom !== undefined || notSecret.includes(e.name), `${owner}: env ${e.name} looks secret but is a plain value`);
          }
          for (const arg of [...(container.args ?? []), ...(container.command ?? [])]) assert.ok(!String(arg).includes(SECRET_VALUE), `${owner}: the secret on the command line`);
        }
      }
      const holders = objects.filter((o) => JSON.stringify(o).includes(SECRET_VALUE) || JSON.stringify(o).includes(Buffer.from(SECRET_VALUE).toString('base64')));
      assert.deepEqual(holders.map((o) => o.kind).filter((k) => k !== 'Secret'), [], 'only the Secret holds the secret');
      if (name === 'an existing Secret') assert.ok(!objects.some((o) => o.kind === 'Secret'), 'no Secret is created for an existing one');
      assert.ok(!/NOTES/.test(text) || !text.includes(SECRET_VALUE));
    });

    it('grants RBAC only for what agent/kube/*.ts calls, never wildcards, secrets or escalation', () => {
      const used = kubeCallsInSource();
      const roles = objects.filter((o) => o.kind === 'ClusterRole' || o.kind === 'Role');
      for (const role of roles) {
        for (const rule of role.rules ?? []) {
          for (const field of ['apiGroups', 'resources', 'verbs']) assert.ok(!(rule[field] ?? []).includes('*'), `${role.metadata.name}: no wildcard ${field}`);
          for (const resource of rule.resources ?? []) {
            assert.ok(!['secrets', 'serviceaccounts/token', 'pods/exec', 'nodes/proxy', 'clusterroles', 'roles', 'rolebindings', 'clusterrolebindings'].includes(resource), `${role.metadata.name}: ${resource}`);
            for (const verb of rule.verbs ?? []) {
              assert.ok(!['escalate', 'bind', 'impersonate', 'delete', 'deletecollection'].includes(verb), `${role.metadata.name}: ${verb} ${resource}`);
              assert.ok(used.has(`${verb} ${resource}`), `${role.metadata.name} grants ${verb} on ${resource}, which agent/kube/*.ts never does (it does: ${[...used].sort().join(', ')})`);
            }
          }
        }
      }
      // Everything the default agent calls is granted (the optional ones with their option).
      const granted = new Set(roles.flatMap((role) => (role.rules ?? []).flatMap((rule: Obj) => (rule.resources ?? []).flatMap((r: string) => (rule.verbs ?? []).map((v: string) => `${v} ${r}`)))));
      if (name !== 'an existing Secret' || roles.length > 0) for (const call of ['get pods', 'get nodes', 'patch nodes', 'create events']) assert.ok(granted.has(call), `${call} is granted`);
    });
  });
}

/** "verb resource" pairs the Kubernetes client sends, from its request literals: { method: 'GET', path: `/api/v1/…/pods/…` }. */
function kubeCallsInSource(): Set<string> {
  const dir = join(ROOT, 'agent', 'kube');
  const source = readdirSync(dir)
    .filter((f) => f.endsWith('.ts'))
    .map((f) => readFileSync(join(dir, f), 'utf8'))
    .join('\n');
  const used = new Set<string>();
  for (const match of source.matchAll(/method:\s*'(GET|PATCH|POST|PUT|DELETE)',\s*path:\s*`([^`]*)`/g)) {
    const [, method, path] = match as unknown as [string, string, string];
    // /api/v1/namespaces/X/pods/X -> pods, named; /apis/g/v1/namespaces/X/endpointslices -> a collection.
    const parts = path.split('?')[0]!.replace(/\$\{[^}]*\}/g, 'X').split('/').filter(Boolean);
    let rest = parts[0] === 'api' ? parts.slice(2) : parts.slice(3);
    if (rest[0] === 'namespaces' && rest.length > 2) rest = rest.slice(2);
    const resource = rest[0]!;
    const named = rest.length > 1;
    const verb = method === 'GET' ? (/[?&]watch=(true|1)/.test(path) ? 'watch' : named ? 'get' : 'list') : method === 'PATCH' ? 'patch' : method === 'POST' ? 'create' : method === 'PUT' ? 'update' : 'delete';
    used.add(`${verb} ${resource}`);
  }
  // A request literal split over lines (method, then the path on the next line).
  for (const match of source.matchAll(/method:\s*'PATCH'[\s\S]{0,200}?path:\s*`([^`]*)`/g)) {
    let rest = match[1]!.split('?')[0]!.split('/').filter(Boolean);
    rest = rest[0] === 'api' ? rest.slice(2) : rest.slice(3);
    if (rest[0] === 'namespaces' && rest.length > 2) rest = rest.slice(2);
    used.add(`patch ${rest[0]}`);
  }
  return used;
}

describe('hardening: the Dockerfile', () => {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const stages = lines.reduce<string[][]>((acc, line) => (/^FROM\s/i.test(line) ? [...acc, [line]] : (acc[acc.length - 1]!.push(line), acc)), []);
  const runtime = stages[stages.length - 1]!;

  it('runs as a numeric non-root user, set last in the runtime stage, on a nonroot base', () => {
    const users = runtime.filter((l) => /^USER\s/i.test(l));
    assert.ok(users.length >= 1, 'the runtime stage sets USER');
    const [uid, gid] = users[users.length - 1]!.split(/\s+/)[1]!.split(':');
    assert.match(uid!, /^\d+$/);
    assert.notEqual(Number(uid), 0);
    if (gid !== undefined) assert.notEqual(Number(gid), 0);
    assert.match(runtime[0]!, /:nonroot\b|distroless/);
  });

  it('bakes no secret into the image and fetches nothing at build time with ADD', () => {
    for (const line of lines) {
      if (/^(ENV|ARG)\s/i.test(line)) assert.doesNotMatch(line, /SECRET|PASSWORD|TOKEN|AWS_ACCESS_KEY|AWS_SECRET/i, line);
      if (/^ADD\s/i.test(line)) assert.doesNotMatch(line, /https?:\/\//, line);
      assert.doesNotMatch(line, /chmod\s+(-R\s+)?[0-7]*7[0-7]{0,1}7\b/, line);
    }
  });

  it('runs no shell in the runtime stage (nothing to exec into, nothing to write)', () => {
    assert.deepEqual(runtime.filter((l) => /^RUN\s/i.test(l)), []);
    const entry = runtime.find((l) => /^ENTRYPOINT\s/i.test(l));
    assert.ok(entry && /^ENTRYPOINT\s+\[/.test(entry), 'exec-form ENTRYPOINT');
  });
});
