/**
 * The Helm chart, rendered by a real helm (3.17, from `bash scripts/fetch-helm.sh`) and checked three ways:
 * helm's own lint and values schema, Kubernetes' schemas (kubernetes-models), and assertions on the
 * objects that matter to a node agent that deregisters its own instance.
 */
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parse as parseYaml, parseAllDocuments } from 'yaml';
import { DaemonSet } from 'kubernetes-models/apps/v1/DaemonSet';
import { ClusterRole } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole';
import { ClusterRoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding';
import { Role } from 'kubernetes-models/rbac.authorization.k8s.io/v1/Role';
import { RoleBinding } from 'kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding';
import { Secret } from 'kubernetes-models/v1/Secret';
import { Service } from 'kubernetes-models/v1/Service';
import { ServiceAccount } from 'kubernetes-models/v1/ServiceAccount';
import type { IContainer } from 'kubernetes-models/v1/Container';
import type { IEnvVar } from 'kubernetes-models/v1/EnvVar';
import { ConfigError, loadConfig } from '../agent/config.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const CHART = join(ROOT, 'chart', 'hasta-la-vista');
const VALUES_ALL = join(ROOT, 'test', 'fixtures', 'values-all.yaml');
const HELM = process.env.HELM ?? join(ROOT, '.cache', 'helm', 'helm');
// Pinned so that rendering does not depend on the helm build's default; the oldest version the chart supports.
const KUBE_VERSION = '1.25.0';
const NAMESPACE = 'kube-system';
const RELEASE = 'hlv';

const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };
const chartMeta = parseYaml(readFileSync(join(CHART, 'Chart.yaml'), 'utf8')) as { appVersion: string };
const fixture = parseYaml(readFileSync(VALUES_ALL, 'utf8')) as { secret: { value: string } };

interface HelmResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

function helm(args: string[]): HelmResult {
  if (!existsSync(HELM)) {
    throw new Error(`helm not found at ${HELM}: run \`bash scripts/fetch-helm.sh\` first (or set HELM to a helm 3 binary)`);
  }
  const result = spawnSync(HELM, args, { encoding: 'utf8', timeout: 60_000 });
  if (result.error) throw result.error;
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

type K8sObject = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; [k: string]: unknown }; [k: string]: unknown };

/** `helm template` that must fail: returns helm's error output. */
function renderFails(...args: string[]): string {
  const result = helm(['template', RELEASE, CHART, '--namespace', NAMESPACE, '--kube-version', KUBE_VERSION, ...args]);
  assert.notEqual(result.status, 0, `helm template ${args.join(' ')} should have failed, but rendered:\n${result.stdout.slice(0, 500)}`);
  return result.stderr;
}

/** `helm template` that must succeed: the rendered objects, parsed. */
function render(...args: string[]): K8sObject[] {
  const result = helm(['template', RELEASE, CHART, '--namespace', NAMESPACE, '--kube-version', KUBE_VERSION, ...args]);
  assert.equal(result.status, 0, `helm template ${args.join(' ')} failed:\n${result.stderr}`);
  const objects: K8sObject[] = [];
  for (const doc of parseAllDocuments(result.stdout)) {
    assert.deepEqual(doc.errors, [], 'helm rendered invalid YAML');
    const value = doc.toJS() as K8sObject | null;
    if (value !== null) objects.push(value);
  }
  return objects;
}

const MONITORING = 'monitoring.coreos.com/v1';

/** Every object against its Kubernetes schema; the Prometheus Operator kinds (no schema here) by shape. */
function validateAll(objects: K8sObject[]): void {
  const models: Record<string, new (data: never) => { validate(): void }> = {
    'apps/v1/DaemonSet': DaemonSet,
    'rbac.authorization.k8s.io/v1/ClusterRole': ClusterRole,
    'rbac.authorization.k8s.io/v1/ClusterRoleBinding': ClusterRoleBinding,
    'rbac.authorization.k8s.io/v1/Role': Role,
    'rbac.authorization.k8s.io/v1/RoleBinding': RoleBinding,
    'v1/Secret': Secret,
    'v1/Service': Service,
    'v1/ServiceAccount': ServiceAccount,
  };
  for (const object of objects) {
    const id = `${object.apiVersion}/${object.kind}`;
    assert.ok(object.metadata?.name, `${id} has no name`);
    if (object.apiVersion === MONITORING) {
      assert.ok(['PodMonitor', 'ServiceMonitor'].includes(object.kind), `unexpected ${id}`);
      assertMonitorShape(object);
      continue;
    }
    const Model = models[id];
    assert.ok(Model, `no schema for ${id}: add it to validateAll`);
    // Throws with the JSON path of the first schema violation.
    new Model(object as never).validate();
    if (object.kind !== 'ClusterRole' && object.kind !== 'ClusterRoleBinding') {
      assert.equal(object.metadata.namespace, NAMESPACE, `${id} ${object.metadata.name} is not in the release namespace`);
    }
  }
}

function assertMonitorShape(monitor: K8sObject): void {
  const spec = monitor.spec as Record<string, any>;
  assert.equal(typeof spec.selector?.matchLabels, 'object', `${monitor.kind} needs a label selector`);
  assert.deepEqual(spec.namespaceSelector, { matchNames: [NAMESPACE] });
  const endpoints = (monitor.kind === 'PodMonitor' ? spec.podMetricsEndpoints : spec.endpoints) as Record<string, unknown>[];
  assert.equal(endpoints.length, 1);
  assert.equal(endpoints[0]?.port, 'http');
  assert.equal(endpoints[0]?.path, '/metrics');
  assert.match(String(endpoints[0]?.interval), /^\d+(ms|s|m|h)$/);
}

function only(objects: K8sObject[], kind: string): any {
  const found = objects.filter((o) => o.kind === kind);
  assert.equal(found.length, 1, `expected exactly one ${kind}, found ${found.length}`);
  return found[0];
}

function agentContainer(objects: K8sObject[]): IContainer {
  const containers = only(objects, 'DaemonSet').spec.template.spec.containers as IContainer[];
  assert.equal(containers.length, 1);
  return containers[0]!;
}

function envOf(container: IContainer): Map<string, IEnvVar> {
  const env = new Map<string, IEnvVar>();
  for (const variable of container.env ?? []) {
    assert.ok(!env.has(variable.name), `${variable.name} is set twice`);
    env.set(variable.name, variable);
  }
  return env;
}

function envValue(env: Map<string, IEnvVar>, name: string): string | undefined {
  const variable = env.get(name);
  assert.ok(variable, `${name} is not set`);
  return variable.value;
}

describe('chart: helm lint', () => {
  it('passes --strict with the default values', () => {
    const result = helm(['lint', '--strict', CHART]);
    assert.equal(result.status, 0, result.stdout + result.stderr);
  });

  it('passes --strict with every option on', () => {
    const result = helm(['lint', '--strict', CHART, '-f', VALUES_ALL]);
    assert.equal(result.status, 0, result.stdout + result.stderr);
  });
});

describe('chart: default values', () => {
  const objects = render();
  const daemonSet = only(objects, 'DaemonSet');
  const pod = daemonSet.spec.template.spec;
  const container = agentContainer(objects);
  const env = envOf(container);

  it('renders exactly the expected objects, all valid against Kubernetes schemas', () => {
    assert.deepEqual(objects.map((o) => o.kind).sort(), ['ClusterRole', 'ClusterRoleBinding', 'DaemonSet', 'Role', 'RoleBinding', 'Secret', 'ServiceAccount']);
    validateAll(objects);
  });

  it('uses the image of the same version as the agent', () => {
    assert.equal(chartMeta.appVersion, pkg.version, 'Chart.yaml appVersion must equal package.json version');
    assert.equal(container.image, `ghcr.io/hasta-la-vista/hasta-la-vista:${pkg.version}`);
  });

  it('runs on the host network with the API on hostPort 9740', () => {
    assert.equal(pod.hostNetwork, true);
    assert.deepEqual(container.ports, [{ name: 'http', containerPort: 9740, hostPort: 9740, protocol: 'TCP' }]);
    assert.equal(envValue(env, 'PORT'), '9740');
  });

  it('schedules on every Linux node but Fargate, tolerating every taint, at node-critical priority', () => {
    assert.equal(pod.priorityClassName, 'system-node-critical');
    assert.deepEqual(pod.tolerations, [{ operator: 'Exists' }]);
    assert.deepEqual(pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms, [
      {
        matchExpressions: [
          { key: 'kubernetes.io/os', operator: 'In', values: ['linux'] },
          { key: 'eks.amazonaws.com/compute-type', operator: 'NotIn', values: ['fargate'] },
        ],
      },
    ]);
    assert.deepEqual(daemonSet.spec.updateStrategy, { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: '10%' } });
  });

  it('gives the pod a grace period longer than the drain timeout, and tells the agent', () => {
    const drainTimeout = Number(envValue(env, 'DRAIN_TIMEOUT'));
    assert.equal(drainTimeout, 120);
    assert.equal(pod.terminationGracePeriodSeconds, 150);
    assert.ok(pod.terminationGracePeriodSeconds > drainTimeout);
    assert.equal(envValue(env, 'TERMINATION_GRACE_PERIOD'), '150');
  });

  it('probes /healthz and /readyz on the API port', () => {
    assert.equal(container.livenessProbe?.httpGet?.path, '/healthz');
    assert.equal(container.livenessProbe?.httpGet?.port, 'http');
    assert.equal(container.readinessProbe?.httpGet?.path, '/readyz');
    assert.equal(container.readinessProbe?.httpGet?.port, 'http');
  });

  it('runs restricted: non-root 65532, read-only root, no escalation, no capabilities, RuntimeDefault seccomp', () => {
    assert.equal(pod.securityContext.runAsNonRoot, true);
    assert.equal(pod.securityContext.runAsUser, 65532);
    assert.deepEqual(pod.securityContext.seccompProfile, { type: 'RuntimeDefault' });
    const sc = container.securityContext!;
    assert.equal(sc.runAsNonRoot, true);
    assert.equal(sc.runAsUser, 65532);
    assert.equal(sc.readOnlyRootFilesystem, true);
    assert.equal(sc.allowPrivilegeEscalation, false);
    assert.deepEqual(sc.capabilities, { drop: ['ALL'] });
    assert.deepEqual(sc.seccompProfile, { type: 'RuntimeDefault' });
    assert.equal(sc.privileged, undefined);
  });

  it('requests little and limits memory, but not CPU (a drain must not be throttled)', () => {
    // sized from bench/RESULTS.md: idle RSS about 118 MiB, 0.6 % of a core
    assert.deepEqual(container.resources, { requests: { cpu: '10m', memory: '96Mi' }, limits: { memory: '256Mi' } });
  });

  it('passes node, pod name and namespace from the downward API', () => {
    assert.deepEqual(env.get('NODE_NAME')?.valueFrom, { fieldRef: { fieldPath: 'spec.nodeName' } });
    assert.deepEqual(env.get('POD_NAME')?.valueFrom, { fieldRef: { fieldPath: 'metadata.name' } });
    assert.deepEqual(env.get('POD_NAMESPACE')?.valueFrom, { fieldRef: { fieldPath: 'metadata.namespace' } });
  });

  it('sets the documented defaults and leaves discovered settings unset', () => {
    const expected: Record<string, string> = {
      LOGLEVEL: 'info', CLOUDPROVIDER: 'aws', PORT: '9740', POLL_INTERVAL: '2', DRAIN_TIMEOUT: '120', DRY_RUN: 'false',
      SIGTERM_DRAIN: 'auto', DEADLINE_MARGIN: '15', MAINTENANCE_LEAD_TIME: '600', REBALANCE_DRAIN: 'false',
      EXCLUDE_NODE: 'true', RECHECK_INTERVAL: '30', MAX_CONCURRENT_DRAINS: '16',
    };
    for (const [name, value] of Object.entries(expected)) assert.equal(envValue(env, name), value, name);
    // Unset means: discovered from IMDS and the instance's tags.
    for (const name of ['AWS_REGION', 'CLUSTERNAME', 'VPCID']) assert.equal(env.has(name), false, `${name} should be unset`);
  });

  it('generates a secret, and passes it only by reference', () => {
    const secret = only(objects, 'Secret');
    const value = Buffer.from(secret.data.secret, 'base64').toString('utf8');
    assert.match(value, /^[A-Za-z0-9]{32}$/);
    assert.deepEqual(env.get('SECRET'), { name: 'SECRET', valueFrom: { secretKeyRef: { name: secret.metadata.name, key: 'secret' } } });
    assert.ok(!JSON.stringify(daemonSet).includes(value), 'the secret value appears in the DaemonSet');
  });

  it('mounts the same Secret as the file the agent follows (SECRET_FILE), read-only', () => {
    const secret = only(objects, 'Secret');
    assert.equal(envValue(env, 'SECRET_FILE'), '/etc/hasta-la-vista/secret/secret');
    assert.deepEqual(container.volumeMounts, [{ name: 'api-secret', mountPath: '/etc/hasta-la-vista/secret', readOnly: true }]);
    assert.deepEqual(pod.volumes, [{ name: 'api-secret', secret: { secretName: secret.metadata.name, items: [{ key: 'secret', path: 'secret' }], defaultMode: 0o444 } }]);
  });

  it('accepts pods\' own tokens for audience hasta-la-vista, and listens on every address', () => {
    assert.equal(envValue(env, 'TOKEN_AUDIENCE'), 'hasta-la-vista');
    assert.equal(env.has('BIND_ADDRESS'), false);
  });

  it('a secret generated without cluster access differs at every render (helm template), which NOTES say', () => {
    const generated = () => Buffer.from(only(render(), 'Secret').data.secret, 'base64').toString('utf8');
    assert.notEqual(generated(), generated());
  });

  it('grants exactly: get pods; get, watch, patch nodes; create events; create tokenreviews (pods\' own tokens)', () => {
    const role = only(objects, 'ClusterRole');
    assert.deepEqual(role.rules, [
      { apiGroups: [''], resources: ['pods'], verbs: ['get'] },
      { apiGroups: [''], resources: ['nodes'], verbs: ['get', 'watch', 'patch'] },
      { apiGroups: [''], resources: ['events'], verbs: ['create'] },
      { apiGroups: ['authentication.k8s.io'], resources: ['tokenreviews'], verbs: ['create'] },
    ]);
    const binding = only(objects, 'ClusterRoleBinding');
    const account = only(objects, 'ServiceAccount');
    assert.deepEqual(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: role.metadata.name });
    assert.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: account.metadata.name, namespace: NAMESPACE }]);
    assert.equal(pod.serviceAccountName, account.metadata.name);
    assert.equal(account.metadata.annotations, undefined, 'no IRSA annotation unless a role is given');
  });

  it('grants the coordinator\'s election exactly one Lease in the release namespace (create cannot be limited by name)', () => {
    const role = only(objects, 'Role');
    assert.equal(role.metadata.namespace, NAMESPACE);
    assert.deepEqual(role.rules, [
      { apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['create'] },
      { apiGroups: ['coordination.k8s.io'], resources: ['leases'], resourceNames: ['hasta-la-vista-coordinator'], verbs: ['get', 'update'] },
    ]);
    const binding = only(objects, 'RoleBinding');
    assert.deepEqual(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: role.metadata.name });
    assert.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: only(objects, 'ServiceAccount').metadata.name, namespace: NAMESPACE }]);
    assert.equal(envValue(env, 'COORDINATION'), 'auto');
    assert.deepEqual(env.get('HOST_IP'), { name: 'HOST_IP', valueFrom: { fieldRef: { fieldPath: 'status.hostIP' } } });
  });

  it('with coordination off, grants nothing on Leases and every agent drains alone', () => {
    const off = render('--set', 'config.coordination=off');
    assert.ok(!off.some((o) => o.kind === 'Role' || o.kind === 'RoleBinding'));
    assert.equal(envValue(envOf(agentContainer(off)), 'COORDINATION'), 'off');
  });

  it('lists no EndpointSlices unless local service drains are on', () => {
    const role = only(objects, 'ClusterRole');
    assert.ok(!JSON.stringify(role.rules).includes('endpointslices'));
  });

  it('sets every variable the agent reads from its environment (agent/config.ts)', () => {
    const source = readFileSync(join(ROOT, 'agent', 'config.ts'), 'utf8');
    const read = new Set([...source.matchAll(/\b(?:raw|oneOf|boolean|integer|seconds|matching)\('([A-Z][A-Z0-9_]*)'/g)].map((m) => m[1]!));
    assert.ok(read.size >= 15, `found only ${read.size} variables in agent/config.ts: has its style changed?`);
    // The SDK's own settings, left to the user (extraEnv): the IMDSv1 switch, and IMDS's address.
    read.delete('AWS_EC2_METADATA_V1_DISABLED');
    read.delete('AWS_EC2_METADATA_SERVICE_ENDPOINT');
    const all = envOf(agentContainer(render('-f', VALUES_ALL)));
    const missing = [...read].filter((name) => !all.has(name));
    assert.deepEqual(missing, [], 'the chart does not set these agent variables');
  });
});

describe('chart: every option on (test/fixtures/values-all.yaml)', () => {
  const objects = render('-f', VALUES_ALL);
  const daemonSet = only(objects, 'DaemonSet');
  const pod = daemonSet.spec.template.spec;
  const container = agentContainer(objects);
  const env = envOf(container);

  it('renders valid objects, with a headless Service, a PodMonitor and a ServiceMonitor', () => {
    assert.deepEqual(objects.map((o) => o.kind).sort(), [
      'ClusterRole', 'ClusterRoleBinding', 'DaemonSet', 'PodMonitor', 'Role', 'RoleBinding', 'Secret', 'Service', 'ServiceAccount', 'ServiceMonitor',
    ]);
    validateAll(objects);
  });

  it('sets each config value as its variable', () => {
    const expected: Record<string, string> = {
      AWS_REGION: 'eu-west-1', LOGLEVEL: 'debug', CLUSTERNAME: 'prod-eu-1', VPCID: 'vpc-0123456789abcdef0',
      CLOUDPROVIDER: 'aws', PORT: '9800', POLL_INTERVAL: '1', DRAIN_TIMEOUT: '300', DRY_RUN: 'true',
      SIGTERM_DRAIN: 'always', DEADLINE_MARGIN: '20', MAINTENANCE_LEAD_TIME: '1200', REBALANCE_DRAIN: 'true',
      EXCLUDE_NODE: 'false', RECHECK_INTERVAL: '60', MAX_CONCURRENT_DRAINS: '4', TERMINATION_GRACE_PERIOD: '360',
      TOKEN_AUDIENCE: 'hlv-prod', BIND_ADDRESS: '$(HOST_IP)',
      AWS_STS_REGIONAL_ENDPOINTS: 'regional', AWS_ENDPOINT_URL_EC2: 'https://ec2.eu-west-1.amazonaws.com',
    };
    for (const [name, value] of Object.entries(expected)) assert.equal(envValue(env, name), value, name);
    assert.equal(pod.terminationGracePeriodSeconds, 360);
  });

  it('grants list (it polls; no watch) on EndpointSlices for local service drains, and nothing more', () => {
    const role = only(objects, 'ClusterRole');
    assert.deepEqual(role.rules.at(-1), { apiGroups: ['discovery.k8s.io'], resources: ['endpointslices'], verbs: ['list'] });
    assert.equal(role.rules.length, 5);
  });

  it('moves the API port, hostPort with it', () => {
    assert.deepEqual(container.ports, [{ name: 'http', containerPort: 9800, hostPort: 9800, protocol: 'TCP' }]);
  });

  it('keeps the given secret in the Secret only', () => {
    const secret = only(objects, 'Secret');
    assert.equal(Buffer.from(secret.data.secret, 'base64').toString('utf8'), fixture.secret.value);
    assert.deepEqual(env.get('SECRET')?.valueFrom, { secretKeyRef: { name: secret.metadata.name, key: 'secret' } });
    for (const object of objects.filter((o) => o.kind !== 'Secret')) {
      assert.ok(!JSON.stringify(object).includes(fixture.secret.value), `the secret value appears in ${object.kind}`);
    }
  });

  it('pulls by digest, with pull secrets', () => {
    assert.equal(container.image, 'registry.example.com/mirror/hasta-la-vista@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef');
    assert.equal(container.imagePullPolicy, 'Always');
    assert.deepEqual(pod.imagePullSecrets, [{ name: 'regcred' }]);
  });

  it('annotates the ServiceAccount for IRSA', () => {
    const account = only(objects, 'ServiceAccount');
    assert.equal(account.metadata.name, 'hlv-agent-sa');
    assert.deepEqual(account.metadata.annotations, {
      'eks.amazonaws.com/role-arn': 'arn:aws:iam::123456789012:role/hasta-la-vista',
      'example.com/owner': 'platform',
    });
  });

  it('adds its Linux and non-Fargate requirements to each of the user\'s node terms', () => {
    const terms = pod.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms as { matchExpressions: { key: string }[] }[];
    assert.equal(terms.length, 2);
    for (const term of terms) {
      const keys = term.matchExpressions.map((e) => e.key);
      assert.deepEqual(keys.slice(0, 2), ['kubernetes.io/os', 'eks.amazonaws.com/compute-type']);
    }
    assert.deepEqual(terms.map((t) => t.matchExpressions[2]!.key), ['kubernetes.io/arch', 'karpenter.sh/capacity-type']);
    assert.ok(pod.affinity.podAntiAffinity, 'the rest of the user\'s affinity is kept');
    assert.deepEqual(pod.nodeSelector, { 'node.kubernetes.io/lifecycle': 'spot' });
  });

  it('puts pod labels and annotations on the pods, not in the selector', () => {
    assert.equal(daemonSet.spec.template.metadata.labels['example.com/tier'], 'node-agent');
    assert.equal(daemonSet.spec.template.metadata.annotations['example.com/team'], 'platform');
    assert.equal(daemonSet.spec.selector.matchLabels['example.com/tier'], undefined);
  });

  it('points the monitors at the agent pods', () => {
    const podLabels = daemonSet.spec.template.metadata.labels as Record<string, string>;
    const matches = (selector: Record<string, string>, labels: Record<string, string>) =>
      Object.entries(selector).every(([k, v]) => labels[k] === v);
    const podMonitor = only(objects, 'PodMonitor');
    assert.ok(matches(podMonitor.spec.selector.matchLabels, podLabels), 'PodMonitor does not select the agent pods');
    assert.equal(podMonitor.metadata.labels.release, 'prometheus');
    const service = only(objects, 'Service');
    assert.equal(service.spec.clusterIP, 'None', 'the metrics Service must be headless');
    assert.ok(matches(service.spec.selector, podLabels), 'the Service does not select the agent pods');
    assert.deepEqual(service.spec.ports, [{ name: 'http', port: 9800, targetPort: 'http', protocol: 'TCP' }]);
    const serviceMonitor = only(objects, 'ServiceMonitor');
    assert.ok(matches(serviceMonitor.spec.selector.matchLabels, service.metadata.labels), 'ServiceMonitor does not select the Service');
  });
});

describe('chart: options and their checks', () => {
  it('drops the hostPort when turned off', () => {
    const container = agentContainer(render('--set', 'hostPort.enabled=false'));
    assert.deepEqual(container.ports, [{ name: 'http', containerPort: 9740, protocol: 'TCP' }]);
  });

  it('allows a different hostPort only off the host network', () => {
    const container = agentContainer(render('--set', 'hostNetwork=false', '--set', 'hostPort.port=19740'));
    assert.deepEqual(container.ports, [{ name: 'http', containerPort: 9740, hostPort: 19740, protocol: 'TCP' }]);
    assert.match(renderFails('--set', 'hostPort.port=19740'), /hostPort\.port \(19740\) must equal config\.port \(9740\)/);
  });

  it('uses an existing Secret and key, and creates none: the same at every render', () => {
    const objects = render('--set', 'secret.existingSecret=drain-api', '--set', 'secret.existingSecretKey=token');
    assert.equal(objects.filter((o) => o.kind === 'Secret').length, 0);
    const env = envOf(agentContainer(objects));
    assert.deepEqual(env.get('SECRET'), { name: 'SECRET', valueFrom: { secretKeyRef: { name: 'drain-api', key: 'token' } } });
    const volumes = only(objects, 'DaemonSet').spec.template.spec.volumes;
    assert.deepEqual(volumes[0].secret, { secretName: 'drain-api', items: [{ key: 'token', path: 'secret' }], defaultMode: 0o444 });
    const again = render('--set', 'secret.existingSecret=drain-api', '--set', 'secret.existingSecretKey=token');
    assert.deepEqual(again, objects, 'two renders are identical: nothing for a GitOps sync to change');
  });

  it('karpenter.enabled: no toleration matches karpenter.sh/disrupted, so Karpenter evicts the agent and waits for it; every other going-away taint is tolerated', () => {
    const objects = render('--set', 'karpenter.enabled=true', '--set-json', 'tolerations=[{"operator":"Exists"},{"key":"dedicated","value":"gpu","effect":"NoSchedule"}]');
    validateAll(objects);
    const tolerations = only(objects, 'DaemonSet').spec.template.spec.tolerations as { key?: string; operator?: string; value?: string; effect?: string }[];
    // As Kubernetes matches a toleration to a taint (an empty key with Exists matches every taint).
    const tolerates = (key: string, effect = 'NoSchedule') =>
      tolerations.some((t) => (t.key === undefined || t.key === '' ? t.operator === 'Exists' : t.key === key) && (t.effect === undefined || t.effect === effect));
    assert.ok(!tolerates('karpenter.sh/disrupted'), JSON.stringify(tolerations));
    for (const key of ['ToBeDeletedByClusterAutoscaler', 'node.kubernetes.io/not-ready', 'node.kubernetes.io/unreachable', 'karpenter.sh/unregistered']) assert.ok(tolerates(key), key);
    assert.ok(tolerations.some((t) => t.key === 'dedicated' && t.value === 'gpu'), 'the NodePool\'s own taint, as given');
    assert.equal(only(objects, 'DaemonSet').spec.template.spec.priorityClassName, 'system-node-critical', 'evicted last, after every other pod of the node');
    assert.deepEqual(only(render(), 'DaemonSet').spec.template.spec.tolerations, [{ operator: 'Exists' }], 'without it, every taint');
  });

  it('karpenter.enabled refuses a toleration of Karpenter\'s taint, saying why', () => {
    assert.match(
      renderFails('--set', 'karpenter.enabled=true', '--set-json', 'tolerations=[{"key":"karpenter.sh/disrupted","operator":"Exists"}]'),
      /tolerates karpenter\.sh\/disrupted, which karpenter\.enabled must not: Karpenter would then neither evict this agent nor wait for it/,
    );
  });

  it('webhook: the URL from a Secret, headers from the same Secret as a file; a plain URL as given; no webhook by default', () => {
    const env = envOf(agentContainer(render('-f', VALUES_ALL)));
    assert.deepEqual(env.get('WEBHOOK_URL')?.valueFrom, { secretKeyRef: { name: 'hlv-webhook', key: 'slack-url' } });
    assert.equal(envValue(env, 'WEBHOOK_HEADERS_FILE'), '/etc/hasta-la-vista/webhook/headers');
    const pod = only(render('-f', VALUES_ALL), 'DaemonSet').spec.template.spec;
    assert.deepEqual(pod.volumes.find((v: { name: string }) => v.name === 'webhook-headers').secret, { secretName: 'hlv-webhook', items: [{ key: 'headers', path: 'headers' }], defaultMode: 0o444 });
    assert.equal(envValue(envOf(agentContainer(render('--set', 'webhook.url=https://hooks.example.com/notify'))), 'WEBHOOK_URL'), 'https://hooks.example.com/notify');
    assert.equal(envOf(agentContainer(render())).has('WEBHOOK_URL'), false);
    assert.match(renderFails('--set', 'webhook.url=https://a.example.com', '--set', 'webhook.existingSecret=s'), /webhook\.url and webhook\.existingSecret are both set/);
    assert.match(renderFails('--set', 'webhook.headersKey=h'), /webhook\.headersKey needs webhook\.existingSecret/);
  });

  it('pod tokens off: no TokenReview permission, and the agent refuses tokens', () => {
    const objects = render('--set', 'config.tokenAudience=off');
    assert.ok(!JSON.stringify(only(objects, 'ClusterRole').rules).includes('tokenreviews'));
    assert.equal(envValue(envOf(agentContainer(objects)), 'TOKEN_AUDIENCE'), 'off');
  });

  it('binds the API to the node\'s own address (HOST_IP, expanded by Kubernetes) only with hostNetwork', () => {
    const env = [...envOf(agentContainer(render('--set', 'config.bindHostIP=true'))).keys()];
    assert.equal(envValue(envOf(agentContainer(render('--set', 'config.bindHostIP=true'))), 'BIND_ADDRESS'), '$(HOST_IP)');
    assert.ok(env.indexOf('HOST_IP') < env.indexOf('BIND_ADDRESS'), 'a $(VAR) reference expands only a variable defined before it');
    assert.match(renderFails('--set', 'config.bindHostIP=true', '--set', 'hostNetwork=false'), /config\.bindHostIP needs hostNetwork: true/);
  });

  it('derives the grace period from a longer drain timeout', () => {
    const objects = render('--set', 'config.drainTimeout=600');
    const daemonSet = only(objects, 'DaemonSet');
    assert.equal(daemonSet.spec.template.spec.terminationGracePeriodSeconds, 630);
    assert.equal(envValue(envOf(agentContainer(objects)), 'TERMINATION_GRACE_PERIOD'), '630');
  });

  it('refuses a grace period that is not longer than the drain timeout', () => {
    assert.match(renderFails('--set', 'terminationGracePeriodSeconds=120'), /terminationGracePeriodSeconds \(120\) must be longer than config\.drainTimeout \(120\)/);
    assert.match(renderFails('--set', 'config.drainTimeout=300', '--set', 'terminationGracePeriodSeconds=200'), /must be longer than config\.drainTimeout/);
  });

  it('refuses extraEnv that repeats a variable the chart sets', () => {
    assert.match(renderFails('--set', 'extraEnv[0].name=DRAIN_TIMEOUT', '--set', 'extraEnv[0].value=5'), /extraEnv sets DRAIN_TIMEOUT/);
  });

  it('schema: rejects a wrong type', () => {
    assert.match(renderFails('--set', 'config.pollInterval=abc'), /config\.pollInterval: Invalid type\. Expected: integer, given: string/);
    assert.match(renderFails('--set', 'hostNetwork=maybe'), /hostNetwork: Invalid type/);
    assert.match(renderFails('--set', 'config.logLevel=verbose'), /config\.logLevel/);
  });

  it('schema: rejects unknown keys at the top level and in config', () => {
    assert.match(renderFails('--set', 'pollInterval=5'), /Additional property pollInterval is not allowed/);
    assert.match(renderFails('--set', 'config.pollIntervall=5'), /Additional property pollIntervall is not allowed/);
  });

  it('schema: rejects a short secret', () => {
    assert.match(renderFails('--set', 'secret.value=tooshort'), /secret\.value/);
  });

  it('accepts a parent chart\'s global values (as a dependency)', () => {
    render('--set', 'global.imageRegistry=example.com');
  });
});

describe('chart: NOTES.txt', () => {
  // helm prints NOTES only on install, which needs a cluster; render them as a template of a scratch copy.
  const scratch = mkdtempSync(join(tmpdir(), 'hlv-notes-'));
  after(() => rmSync(scratch, { recursive: true, force: true }));
  const chart = join(scratch, 'hasta-la-vista');
  cpSync(CHART, chart, { recursive: true });
  const notes = readFileSync(join(chart, 'templates', 'NOTES.txt'), 'utf8');
  rmSync(join(chart, 'templates', 'NOTES.txt'));
  writeFileSync(join(chart, 'templates', 'notes.yaml'), `notes: |\n${notes.replace(/^/gm, '  ')}\n`);
  const renderNotes = (...args: string[]): string => {
    const result = helm(['template', RELEASE, chart, '--namespace', NAMESPACE, '--show-only', 'templates/notes.yaml', ...args]);
    assert.equal(result.status, 0, result.stderr);
    return (parseYaml(result.stdout) as { notes: string }).notes;
  };

  it('tells how to get the secret and call /drain on the node, and where metrics are', () => {
    const text = renderNotes();
    assert.ok(text.includes(`kubectl -n ${NAMESPACE} get secret hlv-hasta-la-vista -o jsonpath='{.data.secret}' | base64 -d`), text);
    assert.ok(text.includes('curl -sS -X POST -H "Authorization: Bearer $SECRET" "http://$NODE_IP:9740/drain?wait=true"'), text);
    assert.ok(text.includes('curl -sS http://127.0.0.1:9740/metrics'), text);
  });

  it('shows the preStop hook with the pod\'s own projected token, no Secret in the app\'s namespace', () => {
    const text = renderNotes();
    assert.ok(text.includes('Authorization: Bearer $(cat /var/run/secrets/hasta-la-vista/token)'), text);
    assert.ok(text.includes('serviceAccountToken: { audience: hasta-la-vista, expirationSeconds: 600, path: token }'), text);
    assert.ok(!text.includes('HLV_SECRET'), text);
    const off = renderNotes('--set', 'config.tokenAudience=off');
    assert.ok(off.includes('secretKeyRef: { name: hlv-hasta-la-vista, key: secret }'), off);
  });

  it('says plainly that a generated secret is regenerated by renderers without cluster access, and what to do', () => {
    const text = renderNotes();
    assert.match(text, /a renderer without cluster\s+access \(helm template, as Argo CD renders charts; --dry-run\) writes a new random one at every render/);
    assert.match(text, /Under GitOps, create the Secret yourself and set secret\.existingSecret\./);
    assert.ok(!renderNotes('--set', 'secret.existingSecret=drain-api').includes('writes a new random one'));
    assert.ok(!renderNotes('--set', 'secret.value=a-given-secret-0123456789').includes('writes a new random one'));
  });

  it('follows an existing Secret and a port-forward when the API is on no node port', () => {
    const text = renderNotes('--set', 'secret.existingSecret=drain-api', '--set', 'secret.existingSecretKey=token',
      '--set', 'hostNetwork=false', '--set', 'hostPort.enabled=false');
    assert.ok(text.includes("get secret drain-api -o jsonpath='{.data.token}'"), text);
    assert.ok(text.includes('curl -sS -X POST -H "Authorization: Bearer $SECRET" "http://127.0.0.1:9740/drain?wait=true"'), text);
    assert.ok(!text.includes('NODE_IP'), text);
  });
});

describe('chart: documentation', () => {
  type Schema = { properties?: Record<string, Schema>; additionalProperties?: unknown };
  const schema = JSON.parse(readFileSync(join(CHART, 'values.schema.json'), 'utf8')) as Schema;
  const defaults = parseYaml(readFileSync(join(CHART, 'values.yaml'), 'utf8')) as Record<string, unknown>;

  /** Dotted paths of the values the schema describes one by one (closed objects are walked into). */
  function leaves(node: Schema, prefix = ''): string[] {
    return Object.entries(node.properties ?? {}).flatMap(([key, child]) =>
      child.properties && child.additionalProperties === false ? leaves(child, `${prefix}${key}.`) : [`${prefix}${key}`],
    );
  }
  const paths = leaves(schema).filter((p) => p !== 'global');

  it('has a default in values.yaml for every value in the schema', () => {
    const has = (path: string) => {
      const parts = path.split('.');
      const key = parts.pop()!;
      const parent = parts.reduce<unknown>((o, k) => (o as Record<string, unknown> | undefined)?.[k], defaults);
      return typeof parent === 'object' && parent !== null && key in parent;
    };
    assert.deepEqual(paths.filter((p) => !has(p)), []);
  });

  it('lists every value in the chart README', () => {
    const readme = readFileSync(join(CHART, 'README.md'), 'utf8');
    assert.deepEqual(paths.filter((p) => !readme.includes(`| \`${p}\` |`)), [], 'values missing from the README values table');
  });
});

describe('chart: the lifecycle hook and the node address', () => {
  it('holds no lifecycle hook unless one is named, and passes the name as given', () => {
    assert.equal(envOf(agentContainer(render())).has('ASG_LIFECYCLE_HOOK'), false, 'unset by default: the agent then holds no hook');
    assert.equal(envValue(envOf(agentContainer(render('-f', VALUES_ALL))), 'ASG_LIFECYCLE_HOOK'), 'drain-first');
  });

  it("refuses auto and EKS's own Terminate-LC-Hook, saying why and what to set", () => {
    assert.match(renderFails('--set', 'config.asgLifecycleHook=auto'), /config\.asgLifecycleHook=auto is no longer accepted: .*EKS's own Terminate-LC-Hook.*set the name of a termination hook you created for this agent, or leave it empty/);
    assert.match(renderFails('--set', 'config.asgLifecycleHook=Terminate-LC-Hook'), /config\.asgLifecycleHook=Terminate-LC-Hook is the termination hook EKS puts on its managed node groups/);
  });

  it("passes the node's address from the downward API (HOST_IP), which extraEnv cannot repeat", () => {
    assert.deepEqual(envOf(agentContainer(render())).get('HOST_IP')?.valueFrom, { fieldRef: { fieldPath: 'status.hostIP' } });
    assert.match(renderFails('--set', 'extraEnv[0].name=HOST_IP', '--set', 'extraEnv[0].value=10.0.0.1'), /extraEnv sets HOST_IP/);
  });
});

describe('chart and agent: one rule for every value both check', () => {
  /**
   * A chart value, the variable the chart turns it into, and values on both sides of each limit: the
   * schema (and templates) must take exactly what agent/config.ts takes, or a clean install crash-loops.
   * `with` sets what the value depends on, on both sides.
   */
  interface Rule {
    readonly value: string;
    readonly variable: string;
    readonly accepted: readonly unknown[];
    readonly refused: readonly unknown[];
    readonly with?: { readonly value: string; readonly variable: string; readonly is: unknown };
  }
  const rules: Rule[] = [
    { value: 'config.vpcId', variable: 'VPCID', accepted: ['vpc-01234567', 'vpc-0123456789abcdef0'], refused: ['vpc-012345678', 'vpc-0123456789abcdef', 'vpc-0123456789ABCDEF0', 'vpc-xyz', 'subnet-01234567'] },
    { value: 'config.awsRegion', variable: 'AWS_REGION', accepted: ['us-east-1', 'us-gov-west-1', 'ap-southeast-4'], refused: ['us-east-1a', 'US-EAST-1', 'virginia'] },
    { value: 'config.clusterName', variable: 'CLUSTERNAME', accepted: ['prod', 'Prod-eu.1_a', 'c'.repeat(100)], refused: ['-prod', 'my cluster', 'c'.repeat(101)] },
    { value: 'config.asgLifecycleHook', variable: 'ASG_LIFECYCLE_HOOK', accepted: ['drain-first', 'drain/v2_a', 'off', 'h'.repeat(255)], refused: ['auto', 'AUTO', 'Terminate-LC-Hook', 'my hook', 'h'.repeat(256)] },
    { value: 'config.logLevel', variable: 'LOGLEVEL', accepted: ['debug', 'info', 'warn', 'error'], refused: ['verbose', 'trace'] },
    { value: 'config.sigtermDrain', variable: 'SIGTERM_DRAIN', accepted: ['auto', 'always', 'never'], refused: ['sometimes', 'true'] },
    { value: 'config.cloudProvider', variable: 'CLOUDPROVIDER', accepted: ['aws'], refused: ['gcp'] },
    { value: 'config.port', variable: 'PORT', accepted: [1, 65535], refused: [0, 65536, 80.5] },
    { value: 'config.pollInterval', variable: 'POLL_INTERVAL', accepted: [1, 60], refused: [0, 61, 1.5] },
    { value: 'config.drainTimeout', variable: 'DRAIN_TIMEOUT', accepted: [1, 3600], refused: [0, 3601] },
    { value: 'config.deadlineMargin', variable: 'DEADLINE_MARGIN', accepted: [0, 600], refused: [-1, 601] },
    { value: 'config.maintenanceLeadTime', variable: 'MAINTENANCE_LEAD_TIME', accepted: [0, 604800], refused: [-1, 604801] },
    { value: 'config.recheckInterval', variable: 'RECHECK_INTERVAL', accepted: [5, 3600], refused: [4, 3601] },
    { value: 'config.maxConcurrentDrains', variable: 'MAX_CONCURRENT_DRAINS', accepted: [1, 1000], refused: [0, 1001] },
    { value: 'config.inventoryRefresh', variable: 'INVENTORY_REFRESH', accepted: [0, 86400], refused: [-1, 86401] },
    { value: 'config.coordination', variable: 'COORDINATION', accepted: ['auto', 'off'], refused: ['on', 'true', 'lease'] },
    { value: 'webhook.url', variable: 'WEBHOOK_URL', accepted: ['https://hooks.example.com/services/T0/B0/x', 'http://10.0.0.5:8080/hook?x=1'], refused: ['ftp://files.example.com/x', 'hooks.example.com/x', 'https://', 'http://a b/'] },
    { value: 'config.tokenAudience', variable: 'TOKEN_AUDIENCE', accepted: ['hasta-la-vista', 'off', 'https://kubernetes.default.svc', 'a'.repeat(253)], refused: ['my audience', 'a'.repeat(254)] },
    // The chart also wants the grace period longer than the drain timeout: with a drain timeout of 1 s
    // that relation does not reach the limits tested here.
    {
      value: 'terminationGracePeriodSeconds',
      variable: 'TERMINATION_GRACE_PERIOD',
      accepted: [2, 86400],
      refused: [0, 86401],
      with: { value: 'config.drainTimeout', variable: 'DRAIN_TIMEOUT', is: 1 },
    },
    // Characters are code points on both sides (8 emoji are 16 UTF-16 units); the agent trims whitespace.
    { value: 'secret.value', variable: 'SECRET', accepted: ['a'.repeat(16), '🔑'.repeat(16), ` ${'a'.repeat(16)} `], refused: ['a'.repeat(15), '🔑'.repeat(8), ` ${'a'.repeat(15)} `] },
  ];
  const GOOD_SECRET = 'one-rule-Secret-0123456789';
  const run = promisify(execFile);

  async function chartTakes(values: Record<string, unknown>): Promise<boolean> {
    const sets = Object.entries(values).flatMap(([key, value]) => ['--set-json', `${key}=${JSON.stringify(value)}`]);
    const args = ['template', RELEASE, CHART, '--namespace', NAMESPACE, '--kube-version', KUBE_VERSION, '--show-only', 'templates/daemonset.yaml', ...sets];
    return run(HELM, args, { timeout: 60_000 }).then(
      () => true,
      () => false,
    );
  }

  function agentTakes(env: Record<string, string>): boolean {
    try {
      loadConfig({ SECRET: GOOD_SECRET, ...env }, 'agent');
      return true;
    } catch (error) {
      assert.ok(error instanceof ConfigError, String(error));
      return false;
    }
  }

  for (const rule of rules) {
    it(`${rule.value} and ${rule.variable} take and refuse the same values`, async () => {
      const cases = [...rule.accepted.map((value) => ({ value, expected: true })), ...rule.refused.map((value) => ({ value, expected: false }))];
      const verdicts = await Promise.all(
        cases.map(async ({ value, expected }) => {
          const chart = await chartTakes({ ...(rule.with && { [rule.with.value]: rule.with.is }), [rule.value]: value });
          const agent = agentTakes({ ...(rule.with && { [rule.with.variable]: String(rule.with.is) }), [rule.variable]: String(value) });
          return { value, expected, chart, agent };
        }),
      );
      const wrong = verdicts.filter(({ expected, chart, agent }) => chart !== expected || agent !== expected);
      assert.deepEqual(wrong, [], 'chart and agent must both take the accepted values and both refuse the refused ones');
    });
  }

  it('covers every value the schema constrains that the agent also reads', () => {
    type Node = { properties?: Record<string, Node>; pattern?: string; minimum?: number; maximum?: number; enum?: unknown[] };
    const schema = JSON.parse(readFileSync(join(CHART, 'values.schema.json'), 'utf8')) as Node;
    const constrained = (node: Node) => node.pattern !== undefined || node.minimum !== undefined || node.maximum !== undefined || node.enum !== undefined;
    // The values the chart turns into agent variables: all of config, the secret, the grace period.
    const agentBound = [
      ...Object.entries(schema.properties!['config']!.properties!).map(([key, node]) => [`config.${key}`, node] as const),
      ['secret.value', schema.properties!['secret']!.properties!['value']!] as const,
      ['terminationGracePeriodSeconds', schema.properties!['terminationGracePeriodSeconds']!] as const,
    ];
    const covered = new Set(rules.map((rule) => rule.value));
    assert.deepEqual(agentBound.filter(([key, node]) => constrained(node) && !covered.has(key)).map(([key]) => key), [], 'add these to the rules above');
  });
});
