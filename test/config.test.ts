/**
 * The environment a user writes into their manifest, and what they see when it is wrong: every variable's
 * default, accepted and rejected values, the exact problem text, all problems at once, and the secret
 * never echoed. The last suite runs the built binary, as the DaemonSet does.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { buildIfStale } from './helpers/run.ts';
import { ConfigError, describeConfig, loadConfig, type Config, type Mode } from '../agent/config.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BINARY = join(ROOT, 'dist', 'main.js');

/** A secret the agent accepts; distinctive so that a leak is found by a plain substring search. */
const GOOD_SECRET = 'Zq8-good-secret-7xK2pLm9';

type Env = Record<string, string | undefined>;

function load(env: Env, mode: Mode = 'agent'): Config {
  return loadConfig({ SECRET: GOOD_SECRET, ...env }, mode);
}

/** The problems loadConfig reports for `env`; fails when it does not throw a ConfigError. */
function problemsOf(env: Env, mode: Mode = 'agent'): readonly string[] {
  try {
    loadConfig(env, mode);
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${String(error)}`);
    return error.problems;
  }
  assert.fail(`expected a ConfigError for ${JSON.stringify(env)}`);
}

function configError(env: Env, mode: Mode = 'agent'): ConfigError {
  try {
    loadConfig(env, mode);
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${String(error)}`);
    return error;
  }
  assert.fail(`expected a ConfigError for ${JSON.stringify(env)}`);
}

describe('loadConfig: defaults', () => {
  const config = load({});

  const defaults: [keyof Config, unknown][] = [
    ['secret', GOOD_SECRET],
    ['region', undefined],
    ['logLevel', 'info'],
    ['clusterName', undefined],
    ['vpcId', undefined],
    ['cloudProvider', 'aws'],
    ['port', 9740],
    ['pollIntervalMs', 2000],
    ['drainTimeoutMs', 120_000],
    ['dryRun', false],
    ['sigtermDrain', 'auto'],
    ['nodeName', undefined],
    ['podName', undefined],
    ['podNamespace', undefined],
    ['deadlineMarginMs', 15_000],
    ['maintenanceLeadMs', 600_000],
    ['rebalanceDrain', false],
    ['excludeNode', true],
    ['recheckIntervalMs', 30_000],
    ['maxConcurrentDrains', 16],
    ['terminationGracePeriodMs', 30_000],
    ['imdsV1Fallback', true],
    ['imdsEndpoint', undefined],
  ];
  for (const [key, expected] of defaults) {
    it(`${key} defaults to ${String(expected)}`, () => {
      assert.equal(config[key], expected);
    });
  }

  it('treats an empty or blank variable as unset (what a Helm template renders for an empty value)', () => {
    const blank = load({
      PORT: '',
      POLL_INTERVAL: '  ',
      DRAIN_TIMEOUT: '',
      LOGLEVEL: '',
      DRY_RUN: '',
      SIGTERM_DRAIN: ' ',
      CLOUDPROVIDER: '',
      AWS_REGION: '',
      VPCID: '',
      CLUSTERNAME: '',
      NODE_NAME: '',
    });
    assert.equal(blank.port, 9740);
    assert.equal(blank.pollIntervalMs, 2000);
    assert.equal(blank.drainTimeoutMs, 120_000);
    assert.equal(blank.logLevel, 'info');
    assert.equal(blank.dryRun, false);
    assert.equal(blank.sigtermDrain, 'auto');
    assert.equal(blank.region, undefined);
    assert.equal(blank.vpcId, undefined);
    assert.equal(blank.clusterName, undefined);
    assert.equal(blank.nodeName, undefined);
  });

  it('reads only the env it is given, not process.env', () => {
    const saved = process.env['PORT'];
    process.env['PORT'] = 'not-a-port';
    try {
      assert.equal(load({}).port, 9740);
    } finally {
      if (saved === undefined) delete process.env['PORT'];
      else process.env['PORT'] = saved;
    }
  });
});

describe('loadConfig: valid values', () => {
  const cases: [string, string, keyof Config, unknown][] = [
    ['PORT', '1', 'port', 1],
    ['PORT', '65535', 'port', 65535],
    ['PORT', ' 8080 ', 'port', 8080],
    ['POLL_INTERVAL', '1', 'pollIntervalMs', 1000],
    ['POLL_INTERVAL', '60', 'pollIntervalMs', 60_000],
    ['DRAIN_TIMEOUT', '1', 'drainTimeoutMs', 1000],
    ['DRAIN_TIMEOUT', '90', 'drainTimeoutMs', 90_000],
    ['DRAIN_TIMEOUT', '3600', 'drainTimeoutMs', 3_600_000],
    ['DEADLINE_MARGIN', '0', 'deadlineMarginMs', 0],
    ['DEADLINE_MARGIN', '600', 'deadlineMarginMs', 600_000],
    ['MAINTENANCE_LEAD_TIME', '0', 'maintenanceLeadMs', 0],
    ['MAINTENANCE_LEAD_TIME', '604800', 'maintenanceLeadMs', 604_800_000],
    ['RECHECK_INTERVAL', '5', 'recheckIntervalMs', 5000],
    ['RECHECK_INTERVAL', '3600', 'recheckIntervalMs', 3_600_000],
    ['MAX_CONCURRENT_DRAINS', '1', 'maxConcurrentDrains', 1],
    ['MAX_CONCURRENT_DRAINS', '1000', 'maxConcurrentDrains', 1000],
    ['TERMINATION_GRACE_PERIOD', '1', 'terminationGracePeriodMs', 1000],
    ['TERMINATION_GRACE_PERIOD', '86400', 'terminationGracePeriodMs', 86_400_000],
    ['LOGLEVEL', 'debug', 'logLevel', 'debug'],
    ['LOGLEVEL', 'warn', 'logLevel', 'warn'],
    ['LOGLEVEL', 'error', 'logLevel', 'error'],
    ['LOGLEVEL', 'DEBUG', 'logLevel', 'debug'],
    ['SIGTERM_DRAIN', 'always', 'sigtermDrain', 'always'],
    ['SIGTERM_DRAIN', 'never', 'sigtermDrain', 'never'],
    ['SIGTERM_DRAIN', 'Always', 'sigtermDrain', 'always'],
    ['AWS_REGION', 'us-east-1', 'region', 'us-east-1'],
    ['AWS_REGION', 'eu-central-1', 'region', 'eu-central-1'],
    ['AWS_REGION', 'us-gov-west-1', 'region', 'us-gov-west-1'],
    ['AWS_REGION', 'cn-north-1', 'region', 'cn-north-1'],
    ['AWS_REGION', 'ap-southeast-4', 'region', 'ap-southeast-4'],
    ['VPCID', 'vpc-12345678', 'vpcId', 'vpc-12345678'],
    ['VPCID', 'vpc-0123456789abcdef0', 'vpcId', 'vpc-0123456789abcdef0'],
    ['CLUSTERNAME', 'prod', 'clusterName', 'prod'],
    ['CLUSTERNAME', 'Prod-eu.1_a', 'clusterName', 'Prod-eu.1_a'],
    ['CLUSTERNAME', 'c'.repeat(100), 'clusterName', 'c'.repeat(100)],
    ['CLOUDPROVIDER', 'aws', 'cloudProvider', 'aws'],
    ['CLOUDPROVIDER', 'AWS', 'cloudProvider', 'aws'],
    ['NODE_NAME', 'ip-10-0-1-5.ec2.internal', 'nodeName', 'ip-10-0-1-5.ec2.internal'],
  ];
  for (const [name, value, key, expected] of cases) {
    it(`${name}=${JSON.stringify(value.length > 24 ? `${value.slice(0, 8)}…` : value)} gives ${key} ${String(expected).slice(0, 24)}`, () => {
      assert.equal(load({ [name]: value })[key], expected);
    });
  }

  it('ASG_LIFECYCLE_HOOK: unset, empty or off holds no hook; a name holds that hook only', () => {
    assert.deepEqual(load({}).lifecycleHook, { kind: 'off' });
    assert.deepEqual(load({ ASG_LIFECYCLE_HOOK: '' }).lifecycleHook, { kind: 'off' });
    assert.deepEqual(load({ ASG_LIFECYCLE_HOOK: 'off' }).lifecycleHook, { kind: 'off' });
    assert.deepEqual(load({ ASG_LIFECYCLE_HOOK: 'OFF' }).lifecycleHook, { kind: 'off' });
    assert.deepEqual(load({ ASG_LIFECYCLE_HOOK: 'drain-first/v2' }).lifecycleHook, { kind: 'named', name: 'drain-first/v2' });
  });

  it('POD_NAME and POD_NAMESPACE together are accepted', () => {
    const config = load({ POD_NAME: 'hasta-la-vista-x7k2p', POD_NAMESPACE: 'kube-system' });
    assert.equal(config.podName, 'hasta-la-vista-x7k2p');
    assert.equal(config.podNamespace, 'kube-system');
  });
});

describe('loadConfig: booleans', () => {
  const variables: [string, keyof Config][] = [
    ['DRY_RUN', 'dryRun'],
    ['REBALANCE_DRAIN', 'rebalanceDrain'],
    ['EXCLUDE_NODE', 'excludeNode'],
  ];
  const truthy = ['true', 'TRUE', 'True', '1', 'yes', 'YES', 'Yes'];
  const falsy = ['false', 'FALSE', 'False', '0', 'no', 'NO', 'No'];
  for (const [name, key] of variables) {
    it(`${name} accepts true/1/yes and false/0/no in any case`, () => {
      for (const value of truthy) assert.equal(load({ [name]: value })[key], true, `${name}=${value}`);
      for (const value of falsy) assert.equal(load({ [name]: value })[key], false, `${name}=${value}`);
    });
  }

  it('AWS_EC2_METADATA_SERVICE_ENDPOINT says where IMDS is, as the AWS SDK reads it', () => {
    assert.equal(load({ AWS_EC2_METADATA_SERVICE_ENDPOINT: 'http://127.0.0.1:1338' }).imdsEndpoint, 'http://127.0.0.1:1338');
  });

  it('AWS_EC2_METADATA_V1_DISABLED=true turns the IMDSv1 fallback off, false or unset leaves it on', () => {
    assert.equal(load({}).imdsV1Fallback, true);
    assert.equal(load({ AWS_EC2_METADATA_V1_DISABLED: 'true' }).imdsV1Fallback, false);
    assert.equal(load({ AWS_EC2_METADATA_V1_DISABLED: 'false' }).imdsV1Fallback, true);
  });

  // The AWS SDK (@smithy/credential-provider-imds) treats every non-empty value except exactly "false" as
  // "disabled", and ARCHITECTURE.md says the SDK's variables are honoured as the SDK defines them. config.ts
  // reads the variable as a yes/no boolean instead, so "0"/"no"/"FALSE" leave the agent's own IMDS
  // client falling back to v1 while the SDK's credential provider refuses v1.
  it('AWS_EC2_METADATA_V1_DISABLED follows the SDK: any value but "false" disables v1', () => {
    for (const value of ['0', 'no', 'FALSE', 'disabled']) {
      assert.equal(load({ AWS_EC2_METADATA_V1_DISABLED: value }).imdsV1Fallback, false, `AWS_EC2_METADATA_V1_DISABLED=${value}`);
    }
  });
});

describe('loadConfig: invalid values, the exact message a user sees', () => {
  const cases: [string, string, string][] = [
    ['PORT', 'abc', 'PORT="abc" is not a whole number from 1 to 65535'],
    ['PORT', '0', 'PORT="0" is not a whole number from 1 to 65535'],
    ['PORT', '65536', 'PORT="65536" is not a whole number from 1 to 65535'],
    ['PORT', '-1', 'PORT="-1" is not a whole number from 1 to 65535'],
    ['PORT', '80.5', 'PORT="80.5" is not a whole number from 1 to 65535'],
    ['PORT', '0x50', 'PORT="0x50" is not a whole number from 1 to 65535'],
    ['POLL_INTERVAL', '0', 'POLL_INTERVAL="0" is not a whole number of seconds from 1 to 60'],
    ['POLL_INTERVAL', '61', 'POLL_INTERVAL="61" is not a whole number of seconds from 1 to 60'],
    ['POLL_INTERVAL', '1.5', 'POLL_INTERVAL="1.5" is not a whole number of seconds from 1 to 60'],
    ['POLL_INTERVAL', '2s', 'POLL_INTERVAL="2s" is not a whole number of seconds from 1 to 60'],
    ['DRAIN_TIMEOUT', '0', 'DRAIN_TIMEOUT="0" is not a whole number of seconds from 1 to 3600'],
    ['DRAIN_TIMEOUT', '3601', 'DRAIN_TIMEOUT="3601" is not a whole number of seconds from 1 to 3600'],
    ['DRAIN_TIMEOUT', '2m', 'DRAIN_TIMEOUT="2m" is not a whole number of seconds from 1 to 3600'],
    ['DEADLINE_MARGIN', '601', 'DEADLINE_MARGIN="601" is not a whole number of seconds from 0 to 600'],
    ['DEADLINE_MARGIN', '-1', 'DEADLINE_MARGIN="-1" is not a whole number of seconds from 0 to 600'],
    ['MAINTENANCE_LEAD_TIME', '604801', 'MAINTENANCE_LEAD_TIME="604801" is not a whole number of seconds from 0 to 604800'],
    ['RECHECK_INTERVAL', '4', 'RECHECK_INTERVAL="4" is not a whole number of seconds from 5 to 3600'],
    ['RECHECK_INTERVAL', '3601', 'RECHECK_INTERVAL="3601" is not a whole number of seconds from 5 to 3600'],
    ['MAX_CONCURRENT_DRAINS', '0', 'MAX_CONCURRENT_DRAINS="0" is not a whole number from 1 to 1000'],
    ['MAX_CONCURRENT_DRAINS', '1001', 'MAX_CONCURRENT_DRAINS="1001" is not a whole number from 1 to 1000'],
    ['TERMINATION_GRACE_PERIOD', '0', 'TERMINATION_GRACE_PERIOD="0" is not a whole number of seconds from 1 to 86400'],
    ['TERMINATION_GRACE_PERIOD', '30s', 'TERMINATION_GRACE_PERIOD="30s" is not a whole number of seconds from 1 to 86400'],
    ['ASG_LIFECYCLE_HOOK', 'my hook', 'ASG_LIFECYCLE_HOOK="my hook" is not off, or the name of a lifecycle hook you created for this agent (letters, digits, "-", "_", "/"; up to 255)'],
    // auto took the group's first termination hook: on EKS managed node groups, EKS's own.
    [
      'ASG_LIFECYCLE_HOOK',
      'auto',
      `ASG_LIFECYCLE_HOOK="auto" is no longer accepted: it took the group's first termination hook, which on EKS managed node groups is EKS's own Terminate-LC-Hook, and completing it cuts EKS's PodDisruptionBudget-respecting eviction of the pods short; set the name of a termination hook you created for this agent, or leave ASG_LIFECYCLE_HOOK unset to hold none`,
    ],
    [
      'ASG_LIFECYCLE_HOOK',
      'AUTO',
      `ASG_LIFECYCLE_HOOK="AUTO" is no longer accepted: it took the group's first termination hook, which on EKS managed node groups is EKS's own Terminate-LC-Hook, and completing it cuts EKS's PodDisruptionBudget-respecting eviction of the pods short; set the name of a termination hook you created for this agent, or leave ASG_LIFECYCLE_HOOK unset to hold none`,
    ],
    [
      'ASG_LIFECYCLE_HOOK',
      'Terminate-LC-Hook',
      `ASG_LIFECYCLE_HOOK="Terminate-LC-Hook" is the termination hook EKS puts on its managed node groups, and completing it cuts EKS's PodDisruptionBudget-respecting eviction of the pods short; set the name of a termination hook you created for this agent, or leave ASG_LIFECYCLE_HOOK unset to hold none`,
    ],
    ['ASG_LIFECYCLE_HOOK', 'h'.repeat(256), `ASG_LIFECYCLE_HOOK="${'h'.repeat(256)}" is not off, or the name of a lifecycle hook you created for this agent (letters, digits, "-", "_", "/"; up to 255)`],
    ['LOGLEVEL', 'verbose', 'LOGLEVEL="verbose" is not one of debug, info, warn, error'],
    ['LOGLEVEL', 'trace', 'LOGLEVEL="trace" is not one of debug, info, warn, error'],
    ['SIGTERM_DRAIN', 'sometimes', 'SIGTERM_DRAIN="sometimes" is not one of auto, always, never'],
    ['SIGTERM_DRAIN', 'true', 'SIGTERM_DRAIN="true" is not one of auto, always, never'],
    ['DRY_RUN', 'maybe', 'DRY_RUN="maybe" is not a boolean: use true or false (or 1/0, yes/no)'],
    ['DRY_RUN', 'on', 'DRY_RUN="on" is not a boolean: use true or false (or 1/0, yes/no)'],
    ['REBALANCE_DRAIN', '2', 'REBALANCE_DRAIN="2" is not a boolean: use true or false (or 1/0, yes/no)'],
    ['EXCLUDE_NODE', 'y', 'EXCLUDE_NODE="y" is not a boolean: use true or false (or 1/0, yes/no)'],
    ['AWS_REGION', 'us-east-1a', 'AWS_REGION="us-east-1a" is not an AWS region name such as us-east-1'],
    ['AWS_REGION', 'US-EAST-1', 'AWS_REGION="US-EAST-1" is not an AWS region name such as us-east-1'],
    ['AWS_REGION', 'virginia', 'AWS_REGION="virginia" is not an AWS region name such as us-east-1'],
    ['VPCID', 'vpc-xyz', 'VPCID="vpc-xyz" is not a VPC id such as vpc-0123456789abcdef0'],
    ['VPCID', '0123456789abcdef0', 'VPCID="0123456789abcdef0" is not a VPC id such as vpc-0123456789abcdef0'],
    ['VPCID', 'subnet-0123456789abcdef0', 'VPCID="subnet-0123456789abcdef0" is not a VPC id such as vpc-0123456789abcdef0'],
    ['CLUSTERNAME', 'my cluster', 'CLUSTERNAME="my cluster" is not a cluster name (letters, digits, ".", "_", "-"; up to 100)'],
    ['CLUSTERNAME', '-prod', 'CLUSTERNAME="-prod" is not a cluster name (letters, digits, ".", "_", "-"; up to 100)'],
    ['CLUSTERNAME', 'c'.repeat(101), `CLUSTERNAME="${'c'.repeat(101)}" is not a cluster name (letters, digits, ".", "_", "-"; up to 100)`],
    ['CLOUDPROVIDER', 'gcp', 'CLOUDPROVIDER="gcp" is not supported: the only provider is aws'],
    ['CLOUDPROVIDER', 'azure', 'CLOUDPROVIDER="azure" is not supported: the only provider is aws'],
    ['BIND_ADDRESS', 'localhost', 'BIND_ADDRESS="localhost" is not an IPv4 or IPv6 address of this host (the chart\'s config.bindAddress; $(HOST_IP) for the node\'s own), or unset for all of them'],
    // What a chart renders when HOST_IP is not defined before BIND_ADDRESS: Kubernetes leaves it as written.
    ['BIND_ADDRESS', '$(HOST_IP)', 'BIND_ADDRESS="$(HOST_IP)" is not an IPv4 or IPv6 address of this host (the chart\'s config.bindAddress; $(HOST_IP) for the node\'s own), or unset for all of them'],
    ['TOKEN_AUDIENCE', 'my audience', 'TOKEN_AUDIENCE="my audience" is not off, or the audience of the projected ServiceAccount tokens that pods present (printable ASCII, no spaces; up to 253)'],
  ];
  for (const [name, value, message] of cases) {
    it(`${name}=${JSON.stringify(value.length > 24 ? `${value.slice(0, 8)}…` : value)} is rejected: ${message.length > 70 ? `${message.slice(0, 70)}…` : message}`, () => {
      const error = configError({ SECRET: GOOD_SECRET, [name]: value });
      // Exactly this one problem: a bad variable does not drag spurious complaints along.
      assert.deepEqual(error.problems, [message]);
      assert.equal(error.message, `invalid configuration:\n  - ${message}`);
      assert.equal(error.name, 'ConfigError');
      assert.ok(error instanceof Error);
    });
  }

  it('POD_NAME without POD_NAMESPACE is rejected, and the other way round', () => {
    const message = 'POD_NAME and POD_NAMESPACE go together: set both from the downward API, or neither';
    assert.deepEqual(problemsOf({ SECRET: GOOD_SECRET, POD_NAME: 'hasta-la-vista-x7k2p' }), [message]);
    assert.deepEqual(problemsOf({ SECRET: GOOD_SECRET, POD_NAMESPACE: 'kube-system' }), [message]);
  });

  it('NODE_NAME alone is fine (no pod: only the node is known)', () => {
    assert.equal(load({ NODE_NAME: 'ip-10-0-1-5.ec2.internal' }).nodeName, 'ip-10-0-1-5.ec2.internal');
  });
});

describe('loadConfig: SECRET', () => {
  it('is required by the agent, with a message that says why', () => {
    assert.deepEqual(problemsOf({}, 'agent'), [
      'SECRET is not set: the /drain API needs a shared secret (the Helm chart generates one), or set SECRET_FILE to a file that holds it',
    ]);
  });

  it('is not required by the one-shot command, which serves no API', () => {
    const config = loadConfig({}, 'oneshot');
    assert.equal(config.secret, undefined);
    assert.equal(config.port, 9740);
  });

  it('blank counts as unset', () => {
    assert.deepEqual(problemsOf({ SECRET: '   ' }, 'agent'), [
      'SECRET is not set: the /drain API needs a shared secret (the Helm chart generates one), or set SECRET_FILE to a file that holds it',
    ]);
  });

  it('shorter than 16 characters is rejected by its length, never its value', () => {
    const secret = 'Hunt3r2-pw!';
    const error = configError({ SECRET: secret, PORT: 'abc', CLOUDPROVIDER: 'gcp' }, 'agent');
    assert.ok(error.problems.includes(`SECRET is ${secret.length} characters long: use at least 16 random characters`), error.message);
    for (const text of [error.message, String(error), error.stack ?? '', JSON.stringify(error), JSON.stringify(error.problems), ...error.problems]) {
      assert.ok(!text.includes(secret), `the secret leaked into: ${text}`);
    }
  });

  it('exactly 16 characters is accepted', () => {
    assert.equal(loadConfig({ SECRET: 'a'.repeat(16) }, 'agent').secret, 'a'.repeat(16));
    assert.deepEqual(problemsOf({ SECRET: 'a'.repeat(15) }, 'agent'), ['SECRET is 15 characters long: use at least 16 random characters']);
  });

  it('counts characters as the chart\'s schema does: one emoji is one character, surrounding whitespace none', () => {
    // 8 emoji are 16 UTF-16 units but 8 characters.
    assert.deepEqual(problemsOf({ SECRET: '🔑'.repeat(8) }, 'agent'), ['SECRET is 8 characters long: use at least 16 random characters']);
    assert.equal(loadConfig({ SECRET: '🔑'.repeat(16) }, 'agent').secret, '🔑'.repeat(16));
    assert.deepEqual(problemsOf({ SECRET: ` ${'a'.repeat(15)} ` }, 'agent'), ['SECRET is 15 characters long: use at least 16 random characters']);
  });

  it('a short SECRET does not stop the one-shot command', () => {
    assert.equal(loadConfig({ SECRET: 'short' }, 'oneshot').secret, 'short');
  });
});

describe('loadConfig: SECRET_FILE', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hlv-config-'));
  const file = (name: string, text: string) => {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  };

  it('is read at start, without the trailing newline a mounted Secret may carry, and takes precedence over SECRET', () => {
    const path = file('secret', 'Secret-from-a-file-0042\n');
    const config = loadConfig({ SECRET_FILE: path, SECRET: GOOD_SECRET }, 'agent');
    assert.equal(config.secret, 'Secret-from-a-file-0042');
    assert.equal(config.secretFile, path);
  });

  it('an unreadable or short file is a problem naming the file, never the value', () => {
    const missing = join(dir, 'missing');
    assert.deepEqual(problemsOf({ SECRET_FILE: missing }), [`SECRET_FILE=${JSON.stringify(missing)} cannot be read (ENOENT): mount the Secret there, or correct the path`]);
    const short = file('short', 'Hunt3r2-pw!');
    assert.deepEqual(problemsOf({ SECRET_FILE: short }), [`the secret in SECRET_FILE=${JSON.stringify(short)} is 11 characters long: use at least 16 random characters`]);
    const empty = file('empty', '\n');
    assert.deepEqual(problemsOf({ SECRET_FILE: empty }), [`the secret in SECRET_FILE=${JSON.stringify(empty)} is not set: the /drain API needs a shared secret`]);
  });
});

describe('loadConfig: WEBHOOK_URL and WEBHOOK_HEADERS_FILE', () => {
  const dir = mkdtempSync(join(tmpdir(), 'hlv-webhook-'));

  it('an http(s) URL is taken; anything else is refused without echoing it (it may hold a credential)', () => {
    assert.equal(load({ WEBHOOK_URL: 'https://hooks.example.com/services/T0/B0/x' }).webhook?.url.href, 'https://hooks.example.com/services/T0/B0/x');
    assert.equal(load({}).webhook, undefined);
    for (const value of ['ftp://user:Hunter2-x@files.example.com/', 'hooks.example.com/Hunter2-x']) {
      const error = configError({ SECRET: GOOD_SECRET, WEBHOOK_URL: value });
      assert.deepEqual(error.problems, ['WEBHOOK_URL is not an http:// or https:// URL (its value is not shown: it may hold a credential)']);
      assert.ok(!error.message.includes('Hunter2'));
    }
  });

  it('the headers file: checked at start, naming the line, never a value; it needs the URL', () => {
    const good = join(dir, 'good');
    writeFileSync(good, '# comment\nAuthorization: Bearer x\n\n');
    assert.equal(load({ WEBHOOK_URL: 'https://h.example.com/', WEBHOOK_HEADERS_FILE: good }).webhook?.headersFile, good);
    const bad = join(dir, 'bad');
    writeFileSync(bad, 'Authorization: Bearer x\nBearer Hunter2-x\n');
    assert.deepEqual(problemsOf({ SECRET: GOOD_SECRET, WEBHOOK_URL: 'https://h.example.com/', WEBHOOK_HEADERS_FILE: bad }), [
      `WEBHOOK_HEADERS_FILE=${JSON.stringify(bad)} cannot be used (line 2 is not "Name: value"): mount the Secret there, one "Name: value" a line`,
    ]);
    assert.deepEqual(problemsOf({ SECRET: GOOD_SECRET, WEBHOOK_HEADERS_FILE: good }), ['WEBHOOK_HEADERS_FILE is set without WEBHOOK_URL: set the URL to notify, or unset the headers file']);
  });

  it('the start-up log line shows the webhook\'s origin only', () => {
    const described = describeConfig(load({ WEBHOOK_URL: 'https://user:Hunter2-x@hooks.example.com/services/Hunter2-y?token=Hunter2-z' }));
    assert.deepEqual(described['webhook'], { origin: 'https://hooks.example.com', headersFile: undefined });
    assert.ok(!JSON.stringify(described).includes('Hunter2'));
  });
});

describe('loadConfig: TOKEN_AUDIENCE and BIND_ADDRESS', () => {
  it('pod tokens are accepted for audience hasta-la-vista unless told otherwise; off refuses them', () => {
    assert.equal(load({}).tokenAudience, 'hasta-la-vista');
    assert.equal(load({ TOKEN_AUDIENCE: 'hlv-prod' }).tokenAudience, 'hlv-prod');
    assert.equal(load({ TOKEN_AUDIENCE: 'off' }).tokenAudience, undefined);
    assert.equal(load({ TOKEN_AUDIENCE: 'OFF' }).tokenAudience, undefined);
  });

  it('the API listens on every address unless BIND_ADDRESS names one', () => {
    assert.equal(load({}).bindAddress, undefined);
    assert.equal(load({ BIND_ADDRESS: '10.0.1.23' }).bindAddress, '10.0.1.23');
    assert.equal(load({ BIND_ADDRESS: 'fd00::17' }).bindAddress, 'fd00::17');
  });

  it('a BIND_ADDRESS that leaves out HOST_IP is refused while coordinating: the other agents could not reach this one', () => {
    assert.deepEqual(problemsOf({ SECRET: GOOD_SECRET, BIND_ADDRESS: '127.0.0.1', HOST_IP: '10.0.1.23' }), [
      "BIND_ADDRESS=127.0.0.1 leaves out HOST_IP (10.0.1.23), where the other agents reach this one when it coordinates: set BIND_ADDRESS to HOST_IP (the chart's $(HOST_IP)) or leave it unset, or set COORDINATION=off",
    ]);
    for (const env of [{ BIND_ADDRESS: '10.0.1.23' }, { BIND_ADDRESS: '0.0.0.0' }, { BIND_ADDRESS: '::' }, { BIND_ADDRESS: '127.0.0.1', COORDINATION: 'off' }]) {
      assert.equal(load({ HOST_IP: '10.0.1.23', ...env }).bindAddress, env.BIND_ADDRESS);
    }
  });
});

describe('loadConfig: all problems at once', () => {
  it('reports every bad variable in one ConfigError, one problem a line', () => {
    const error = configError(
      { PORT: 'abc', POLL_INTERVAL: '0', DRY_RUN: 'maybe', LOGLEVEL: 'loud', CLOUDPROVIDER: 'gcp', VPCID: 'vpc-nope', POD_NAME: 'p' },
      'agent',
    );
    const expected = [
      'SECRET is not set: the /drain API needs a shared secret (the Helm chart generates one), or set SECRET_FILE to a file that holds it',
      'PORT="abc" is not a whole number from 1 to 65535',
      'POLL_INTERVAL="0" is not a whole number of seconds from 1 to 60',
      'DRY_RUN="maybe" is not a boolean: use true or false (or 1/0, yes/no)',
      'LOGLEVEL="loud" is not one of debug, info, warn, error',
      'CLOUDPROVIDER="gcp" is not supported: the only provider is aws',
      'VPCID="vpc-nope" is not a VPC id such as vpc-0123456789abcdef0',
      'POD_NAME and POD_NAMESPACE go together: set both from the downward API, or neither',
    ];
    assert.deepEqual([...error.problems].sort(), [...expected].sort());
    const lines = error.message.split('\n');
    assert.equal(lines[0], 'invalid configuration:');
    assert.deepEqual(lines.slice(1).sort(), expected.map((problem) => `  - ${problem}`).sort());
  });

  it('every variable wrong at once gives one problem per variable', () => {
    const bad: Env = {
      SECRET: 'short',
      AWS_REGION: 'moon',
      LOGLEVEL: 'loud',
      CLUSTERNAME: 'a b',
      VPCID: 'vpc',
      CLOUDPROVIDER: 'gcp',
      PORT: 'x',
      POLL_INTERVAL: 'x',
      DRAIN_TIMEOUT: 'x',
      DRY_RUN: 'x',
      SIGTERM_DRAIN: 'x',
      POD_NAME: 'p',
      DEADLINE_MARGIN: 'x',
      MAINTENANCE_LEAD_TIME: 'x',
      REBALANCE_DRAIN: 'x',
      EXCLUDE_NODE: 'x',
      RECHECK_INTERVAL: 'x',
      MAX_CONCURRENT_DRAINS: 'x',
      TERMINATION_GRACE_PERIOD: 'x',
      ASG_LIFECYCLE_HOOK: 'x y',
      BIND_ADDRESS: 'x',
      TOKEN_AUDIENCE: 'x y',
      WEBHOOK_URL: 'x',
    };
    const problems = problemsOf(bad, 'agent');
    // POD_NAME's problem names POD_NAMESPACE as well; every other variable is the first word of its problem.
    const named = new Set(problems.map((problem) => /^[A-Z][A-Z0-9_]*/.exec(problem)?.[0]));
    for (const name of Object.keys(bad)) assert.ok(named.has(name), `no problem names ${name}:\n${problems.join('\n')}`);
    assert.equal(problems.length, Object.keys(bad).length);
  });
});

describe('loadConfig: the result', () => {
  it('is frozen: nothing can change the configuration after start-up', () => {
    const config = load({ PORT: '8080' });
    assert.ok(Object.isFrozen(config));
    assert.throws(() => {
      (config as { port: number }).port = 1;
    }, TypeError);
    assert.equal(config.port, 8080);
  });
});

describe('describeConfig', () => {
  it('never contains the secret, and says it is set', () => {
    const config = load({ PORT: '8080', CLUSTERNAME: 'prod', DRY_RUN: 'true' });
    const described = describeConfig(config);
    const serialized = JSON.stringify(described);
    assert.ok(!serialized.includes(GOOD_SECRET), serialized);
    assert.equal(described['secret'], '[redacted]');
    assert.equal(described['port'], 8080);
    assert.equal(described['clusterName'], 'prod');
    assert.equal(described['dryRun'], true);
  });

  it('keeps every other setting for the start-up log line', () => {
    const config = load({});
    const described = describeConfig(config);
    for (const key of Object.keys(config)) assert.ok(key in described, `describeConfig dropped ${key}`);
  });

  it('says "unset" when the one-shot command has no secret', () => {
    assert.equal(describeConfig(loadConfig({}, 'oneshot'))['secret'], 'unset');
  });

  it('does not change the config it describes', () => {
    const config = load({});
    describeConfig(config);
    assert.equal(config.secret, GOOD_SECRET);
  });
});


/** Runs the binary with exactly `env` (plus PATH), so nothing from the test's own environment leaks in. */
function run(args: string[], env: Env) {
  return spawnSync(process.execPath, [BINARY, ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 30_000,
    env: { PATH: process.env['PATH'], ...env },
  });
}

describe('the built binary with a bad environment', () => {
  // `npm test` builds first, so this only builds when the sources changed since.
  before(buildIfStale);

  it('the agent exits 2 and prints every problem on stderr', () => {
    const result = run([], { PORT: 'abc', POLL_INTERVAL: '0' });
    assert.equal(result.status, 2, result.stderr);
    assert.equal(result.stdout, '');
    assert.match(result.stderr, /invalid configuration/);
    assert.ok(result.stderr.includes('PORT="abc" is not a whole number from 1 to 65535'), result.stderr);
    assert.ok(result.stderr.includes('POLL_INTERVAL="0" is not a whole number of seconds from 1 to 60'), result.stderr);
    assert.ok(result.stderr.includes('SECRET is not set'), result.stderr);
  });

  it('a short SECRET is reported on stderr without its value', () => {
    const secret = 'Sh0rt-S3cret';
    const result = run(['agent'], { SECRET: secret, DRAIN_TIMEOUT: '0' });
    assert.equal(result.status, 2, result.stderr);
    assert.ok(result.stderr.includes(`SECRET is ${secret.length} characters long`), result.stderr);
    assert.ok(result.stderr.includes('DRAIN_TIMEOUT="0"'), result.stderr);
    assert.ok(!result.stderr.includes(secret) && !result.stdout.includes(secret), `the secret leaked:\n${result.stderr}`);
  });

  it('the one-shot drain exits 2 on a bad variable but does not ask for SECRET', () => {
    const result = run(['drain', '--id', 'i-0123456789abcdef0'], { CLOUDPROVIDER: 'gcp', SIGTERM_DRAIN: 'sometimes' });
    assert.equal(result.status, 2, result.stderr);
    assert.equal(JSON.parse(result.stdout).error.code, 'config');
    assert.ok(result.stderr.includes('CLOUDPROVIDER="gcp" is not supported: the only provider is aws'), result.stderr);
    assert.ok(result.stderr.includes('SIGTERM_DRAIN="sometimes" is not one of auto, always, never'), result.stderr);
    assert.ok(!result.stderr.includes('SECRET'), result.stderr);
  });
});
