/**
 * The IAM policy of deploy/iam-policy.json (and the README) grants exactly the AWS actions the agent's
 * code calls: a new call without a grant would fail in production with AccessDenied, a grant without a
 * call is a permission nobody needs. Calls are read from the code's SDK imports (each Command and
 * paginator), mapped to IAM actions by client package.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const IAM_PREFIX: Record<string, string> = {
  '@aws-sdk/client-auto-scaling': 'autoscaling',
  '@aws-sdk/client-ec2': 'ec2',
  '@aws-sdk/client-elastic-load-balancing': 'elasticloadbalancing',
  '@aws-sdk/client-elastic-load-balancing-v2': 'elasticloadbalancing',
  '@aws-sdk/client-resource-groups-tagging-api': 'tag',
};

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? sourceFiles(join(dir, entry.name)) : entry.name.endsWith('.ts') ? [join(dir, entry.name)] : [],
  );
}

/** IAM actions behind every Command and paginator the agent imports from an AWS SDK client. */
export function actionsCalledByCode(): Set<string> {
  const actions = new Set<string>();
  // Re-exports count too: the lazily loaded clients' modules (e.g. agent/aws/ec2-sdk.ts) name their commands so.
  const importStatement = /(?:import|export)\s*\{([^}]*)\}\s*from\s*'(@aws-sdk\/client-[a-z0-9-]+)'/g;
  for (const file of sourceFiles(join(ROOT, 'agent'))) {
    for (const [, names, module] of readFileSync(file, 'utf8').matchAll(importStatement)) {
      const prefix = IAM_PREFIX[module!];
      for (const raw of names!.split(',')) {
        const name = raw.trim().split(/\s+as\s+/)[0]!.trim();
        if (name === '' || name.startsWith('type ')) continue;
        const command = /^(\w+)Command$/.exec(name)?.[1] ?? /^paginate(\w+)$/.exec(name)?.[1];
        if (command === undefined) continue;
        assert.ok(prefix, `${file} calls ${name} from ${module}, which this test cannot map to IAM: add it to IAM_PREFIX`);
        actions.add(`${prefix}:${command}`);
      }
    }
  }
  return actions;
}

interface Statement {
  Sid: string;
  Effect: string;
  Action: string[];
  Resource: string;
  Condition?: Record<string, Record<string, string>>;
}

type Policy = { Statement: Statement[] };
const readPolicy = (file: string) => JSON.parse(readFileSync(join(ROOT, 'deploy', file), 'utf8')) as Policy;
/** The policy every installation needs, and the optional ones: holding Auto Scaling terminations, registering back (local services). */
const policy = readPolicy('iam-policy.json');
const asgPolicy = readPolicy('iam-policy-asg.json');
const localServicesPolicy = readPolicy('iam-policy-local-services.json');
const statements = [...policy.Statement, ...asgPolicy.Statement, ...localServicesPolicy.Statement];
const granted = new Set(statements.flatMap((statement) => statement.Action));

describe('the IAM policy', () => {
  test('grants every AWS action the code calls, and nothing else (with the optional statements)', () => {
    const called = actionsCalledByCode();
    assert.ok(called.size >= 10, `found only ${[...called].join(', ')}: is the import scan still working?`);
    assert.deepEqual([...called].filter((action) => !granted.has(action)).sort(), [], 'called but not granted');
    assert.deepEqual([...granted].filter((action) => !called.has(action)).sort(), [], 'granted but never called');
  });

  test('the optional statements hold only their feature\'s actions', () => {
    for (const action of asgPolicy.Statement.flatMap((statement) => statement.Action)) assert.match(action, /^autoscaling:/);
    for (const action of localServicesPolicy.Statement.flatMap((statement) => statement.Action)) assert.match(action, /^elasticloadbalancing:Register/);
  });

  test('the Auto Scaling policy grants exactly what holding a lifecycle hook calls', () => {
    const called = [...actionsCalledByCode()].filter((action) => action.startsWith('autoscaling:')).sort();
    // The group of the own instance (read from IMDS, no tags) comes from DescribeAutoScalingInstances.
    assert.deepEqual(called, [
      'autoscaling:CompleteLifecycleAction',
      'autoscaling:DescribeAutoScalingInstances',
      'autoscaling:DescribeLifecycleHooks',
      'autoscaling:RecordLifecycleActionHeartbeat',
    ]);
    assert.deepEqual(asgPolicy.Statement.flatMap((statement) => statement.Action).sort(), called);
  });

  test('allows the mutating actions only on resources that carry a cluster tag', () => {
    const mutating = [
      'elasticloadbalancing:DeregisterInstancesFromLoadBalancer',
      'elasticloadbalancing:DeregisterTargets',
      'elasticloadbalancing:RegisterInstancesWithLoadBalancer',
      'elasticloadbalancing:RegisterTargets',
    ];
    const conditions: string[] = [];
    for (const statement of statements) {
      const mutates = statement.Action.some((action) => mutating.includes(action) || !/:(Describe|Get)/.test(action));
      if (!mutates) continue;
      assert.ok(statement.Condition, `${statement.Sid} grants ${statement.Action.join(', ')} without a condition`);
      conditions.push(...Object.values(statement.Condition).flatMap((clause) => Object.keys(clause)));
    }
    // the three tag keys of the scope (ARCHITECTURE.md)
    const clusterTags = ['aws:ResourceTag/elbv2.k8s.aws/cluster', 'aws:ResourceTag/kubernetes.io/cluster/CLUSTER_NAME', 'aws:ResourceTag/kubernetes/cluster/CLUSTER_NAME'];
    // deregister and register back each under the three cluster tags; the Auto Scaling group's cluster tag
    assert.deepEqual(conditions.sort(), [...clusterTags, ...clusterTags, 'aws:ResourceTag/kubernetes.io/cluster/CLUSTER_NAME'].sort());
  });

  test('the README gives the same policies', () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const blocks = [...readme.matchAll(/```json\n(\{\n  "Version": "2012-10-17"[\s\S]*?)```/g)].map((match) => JSON.parse(match[1]!) as Policy);
    assert.equal(blocks.length, 3, 'README.md gives the policy and the two optional ones');
    assert.deepEqual(blocks[0], policy);
    assert.deepEqual(blocks[1], asgPolicy);
    assert.deepEqual(blocks[2], localServicesPolicy);
  });
});
