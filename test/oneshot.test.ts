/**
 * `hasta-la-vista drain` as a script sees it: every run prints exactly one JSON document on stdout,
 * failures included, and its `error.code` says which exit it is; the words for a person go to stderr.
 * Runs the one-shot in this process against moto (through a fault-injecting proxy) and a fake IMDS;
 * test/cli.test.ts runs the built binary for what happens before the configuration is read.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, beforeEach, describe, test } from 'node:test';
import { parseCommand, UsageError } from '../agent/cli.ts';
import { ConfigError, loadConfig } from '../agent/config.ts';
import { PlacementError } from '../agent/aws/provider.ts';
import { InstanceNotFoundError } from '../agent/drain/instance.ts';
import { ExitCode } from '../agent/exit-codes.ts';
import { createLogger, humanReadable, type LogLevel } from '../agent/log.ts';
import { EXIT_CODES, failed, knownFields, ResultWriter, runError, runOneShot, type DrainCommand, type OneShotResult } from '../agent/oneshot.ts';
import { routeRuntimeWarnings } from '../agent/runtime-warnings.ts';
import { startAwsProxy, type AwsProxy } from './fakes/aws-proxy.ts';
import { startFakeImds, type FakeImds } from './fakes/imds.ts';
import { CLUSTER, REGION, seedWorld, type World } from './fixtures/world.ts';
import { freePort, startMoto, type Moto } from './helpers/moto.ts';

/** Collects what is written, as text. */
class Sink extends Writable {
  text = '';
  override _write(chunk: Buffer, _encoding: BufferEncoding, done: () => void): void {
    this.text += chunk.toString();
    done();
  }
}

// This process runs the SDK too: its warnings follow the project's rule, as in the command itself.
routeRuntimeWarnings(createLogger('info', process.stderr));
// Nothing from the developer's own AWS setup may reach the SDK in this process.
for (const name of Object.keys(process.env)) if (name.startsWith('AWS_')) delete process.env[name];
const CREDENTIALS = { AWS_ACCESS_KEY_ID: 'test', AWS_SECRET_ACCESS_KEY: 'test' };
Object.assign(process.env, CREDENTIALS, { AWS_SHARED_CREDENTIALS_FILE: '/nonexistent/credentials', AWS_CONFIG_FILE: '/nonexistent/config', AWS_EC2_METADATA_DISABLED: 'true' });

let moto: Moto;
let proxy: AwsProxy;
let world: World;

interface Run {
  readonly code: ExitCode;
  readonly result: OneShotResult;
  readonly stderr: string;
}

/** One run of `hasta-la-vista drain <args>` with this environment, as main runs it after parsing. */
async function drain(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const command = parseCommand(['drain', ...args]) as DrainCommand;
  const config = loadConfig({ AWS_REGION: REGION, VPCID: world.clusterVpc, CLUSTERNAME: CLUSTER, ...env }, 'oneshot');
  const stdout = new Sink();
  const stderr = new Sink();
  const code = await runOneShot(command, config, createLogger(config.logLevel, humanReadable(stderr)), new ResultWriter(stdout));
  // Exactly one document: the whole of stdout parses as one JSON value.
  const result = JSON.parse(stdout.text) as OneShotResult;
  return { code, result, stderr: stderr.text };
}

const deregisterCalls = () => proxy.count('DeregisterInstancesFromLoadBalancer') + proxy.count('DeregisterTargets');

describe('hasta-la-vista drain against moto', () => {
  before(async () => {
    moto = await startMoto();
    proxy = await startAwsProxy(moto.url);
    process.env.AWS_ENDPOINT_URL = proxy.url;
  });
  after(async () => {
    await proxy.close();
    await moto.stop();
  });
  beforeEach(async () => {
    await moto.reset();
    proxy.clearFaults();
    world = await seedWorld(moto.url);
    proxy.calls.length = 0;
  });

  describe('a drain that ran prints its status', () => {
    test('out of everything: exit 0, the status as GET /drain answers it, and no error', async () => {
      const { code, result } = await drain(['--id', world.node.id]);
      assert.equal(code, ExitCode.ok);
      assert.equal(result.state, 'deregistered');
      assert.equal(result.instanceId, world.node.id);
      assert.equal(result.trigger, 'cli');
      assert.ok('loadBalancers' in result && result.loadBalancers.length > 0, JSON.stringify(result));
      assert.equal('error' in result, false);
    });

    test('--self drains the instance IMDS names', async () => {
      const imds: FakeImds = await startFakeImds({ instanceId: world.node.id, region: REGION, vpcId: world.clusterVpc, privateIp: world.node.ip, secondaryIps: [world.node.secondaryIp] });
      try {
        const { code, result } = await drain(['--self', '--dry-run'], { AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url });
        assert.equal(code, ExitCode.ok);
        assert.equal(result.instanceId, world.node.id);
        assert.equal(result.state, 'skipped');
        assert.ok(imds.count('meta-data/instance-id') > 0, 'IMDS was not asked which instance this is');
      } finally {
        await imds.close();
      }
    });

    test('past its deadline with load balancers still draining: exit 3, the status and error timed_out', async () => {
      proxy.addFault((call) => (call.action === 'DescribeInstanceHealth' || call.action === 'DescribeTargetHealth' ? { kind: 'hang' } : undefined));
      const { code, result } = await drain(['--id', world.node.id, '--timeout', '1']);
      assert.equal(code, ExitCode.timedOut);
      assert.equal(result.state, 'timed_out');
      assert.equal(result.error?.code, 'timed_out');
      assert.ok('reason' in result && result.reason !== undefined, JSON.stringify(result));
      assert.equal(result.error?.message, result.reason);
      assert.ok(result.loadBalancers.length > 0);
    });
  });

  describe('a run that failed before any drain began prints { state: "failed", error } and what it knew', () => {
    test('no such instance: exit 4, error not_found, the id it looked for, nothing changed', async () => {
      const missing = 'i-0fedcba9876543210';
      const { code, result, stderr } = await drain(['--id', missing]);
      assert.equal(code, ExitCode.notFound);
      assert.deepEqual(result, {
        instanceId: missing,
        trigger: 'cli',
        scope: 'all',
        dryRun: false,
        state: 'failed',
        error: { code: 'not_found', message: `instance ${missing} was not found in ${world.clusterVpc}` },
      });
      assert.match(stderr, /was not found/);
      assert.equal(deregisterCalls(), 0);
    });

    test('no instance at that address: exit 4, and no instanceId is invented', async () => {
      const { code, result } = await drain(['--ip', '10.0.9.9', '--service', 'default/web']);
      assert.equal(code, ExitCode.notFound);
      assert.equal(result.error?.code, 'not_found');
      assert.equal(result.scope, 'service:default/web');
      assert.equal('instanceId' in result, false);
    });

    test('no AWS credentials: exit 5, error credentials, saying where credentials come from', async () => {
      delete process.env.AWS_ACCESS_KEY_ID;
      delete process.env.AWS_SECRET_ACCESS_KEY;
      try {
        const { code, result, stderr } = await drain(['--id', world.node.id]);
        assert.equal(code, ExitCode.aws);
        assert.equal(result.state, 'failed');
        assert.equal(result.error?.code, 'credentials');
        assert.match(String(result.error?.message), /no AWS credentials.*AWS_ACCESS_KEY_ID/);
        assert.match(stderr, /no AWS credentials/);
        assert.equal(proxy.calls.length, 0);
      } finally {
        Object.assign(process.env, CREDENTIALS);
      }
    });

    test('AWS refuses the lookup: exit 5, error aws with AWS\'s code and the IAM hint', async () => {
      proxy.addFault((call) => (call.action === 'DescribeInstances' ? { kind: 'error', status: 403, code: 'UnauthorizedOperation', message: 'not allowed' } : undefined));
      const { code, result } = await drain(['--id', world.node.id]);
      assert.equal(code, ExitCode.aws);
      assert.equal(result.error?.code, 'aws');
      assert.match(String(result.error?.message), /UnauthorizedOperation.*IAM policy/);
    });

    test('a lookup that does not answer within --timeout: exit 3, error timed_out, nothing changed', async () => {
      proxy.addFault((call) => (call.action === 'DescribeInstances' ? { kind: 'hang' } : undefined));
      const { code, result } = await drain(['--id', world.node.id, '--timeout', '1']);
      assert.equal(code, ExitCode.timedOut);
      assert.equal(result.state, 'failed');
      assert.deepEqual(result.error, { code: 'timed_out', message: 'the instance could not be looked up within 1 s: nothing was changed' });
      assert.equal(deregisterCalls(), 0);
    });

    test('Ctrl-C while looking up: exit 130, error interrupted, nothing changed', async () => {
      proxy.addFault((call) => (call.action === 'DescribeInstances' ? { kind: 'hang' } : undefined));
      const run = drain(['--id', world.node.id]);
      while (proxy.count('DescribeInstances') === 0) await new Promise((resolve) => setTimeout(resolve, 20));
      process.emit('SIGINT');
      const { code, result } = await run;
      assert.equal(code, ExitCode.interrupted);
      assert.deepEqual(result.error, { code: 'interrupted', message: 'interrupted before the drain began: nothing was changed' });
      assert.equal(deregisterCalls(), 0);
    });

    test('where it runs cannot be known (no IMDS, no AWS_REGION): exit 2, error config', async () => {
      const nowhere = `http://127.0.0.1:${await freePort()}`;
      const command = parseCommand(['drain', '--id', world.node.id]) as DrainCommand;
      const stdout = new Sink();
      const code = await runOneShot(command, loadConfig({ AWS_EC2_METADATA_SERVICE_ENDPOINT: nowhere }, 'oneshot'), createLogger('error', humanReadable(new Sink())), new ResultWriter(stdout));
      const result = JSON.parse(stdout.text) as OneShotResult;
      assert.equal(code, ExitCode.usage);
      assert.equal(result.error?.code, 'config');
      assert.match(String(result.error?.message), /IMDS did not answer/);
      assert.equal(result.instanceId, world.node.id);
    });

    test('--self without IMDS, AWS_REGION, VPCID and CLUSTERNAME set: exit 2, the error says the instance needs IMDS, not to set them', async () => {
      const nowhere = `http://127.0.0.1:${await freePort()}`;
      const command = parseCommand(['drain', '--self']) as DrainCommand;
      const stdout = new Sink();
      const config = loadConfig({ AWS_REGION: REGION, VPCID: world.clusterVpc, CLUSTERNAME: CLUSTER, AWS_EC2_METADATA_SERVICE_ENDPOINT: nowhere }, 'oneshot');
      const code = await runOneShot(command, config, createLogger('error', humanReadable(new Sink())), new ResultWriter(stdout));
      const result = JSON.parse(stdout.text) as OneShotResult;
      assert.equal(code, ExitCode.usage);
      assert.equal(result.error?.code, 'config');
      assert.match(String(result.error?.message), /^IMDS did not answer \(.+\): this instance's id and addresses come only from IMDS/);
      assert.doesNotMatch(String(result.error?.message), /set AWS_REGION|outside EC2/);
    });

    test('--asg without ASG_LIFECYCLE_HOOK: exit 2, error usage naming the fix, before any AWS call', async () => {
      for (const env of [{}, { ASG_LIFECYCLE_HOOK: 'off' }] as Record<string, string>[]) {
        const { code, result, stderr } = await drain(['--id', world.node.id, '--asg'], env);
        assert.equal(code, ExitCode.usage);
        assert.equal(result.error?.code, 'usage');
        assert.match(String(result.error?.message), /set ASG_LIFECYCLE_HOOK to the name of the termination hook/);
        assert.match(stderr, /ASG_LIFECYCLE_HOOK/);
      }
      assert.equal(proxy.calls.length, 0);
    });
  });
});

describe('the document of a failure, by cause', () => {
  test('a usage error (the bare "drain") knows nothing but what went wrong', () => {
    let error: unknown;
    try {
      parseCommand(['drain']);
    } catch (caught) {
      error = caught;
    }
    assert.deepEqual(failed(error), {
      state: 'failed',
      error: { code: 'usage', message: 'drain needs an instance: give --id i-…, --ip ADDRESS, or --self for the instance this runs on' },
    });
  });

  test('a configuration error keeps what the command line said', () => {
    const command = parseCommand(['drain', '--id', 'i-0123456789abcdef0', '--dry-run', '--service', 'default/web']) as DrainCommand;
    assert.deepEqual(failed(new ConfigError(['PORT="x" is not a whole number', 'LOGLEVEL="loud" is not one of debug, info, warn, error']), knownFields(command)), {
      instanceId: 'i-0123456789abcdef0',
      trigger: 'cli',
      scope: 'service:default/web',
      dryRun: true,
      state: 'failed',
      error: { code: 'config', message: 'invalid configuration: PORT="x" is not a whole number; LOGLEVEL="loud" is not one of debug, info, warn, error' },
    });
  });

  test('each cause has its code, and each code its exit', () => {
    const sdkError = (name: string) => Object.assign(new Error(`${name} happened`), { name, $metadata: { httpStatusCode: 400 } });
    const cases: [unknown, string, ExitCode][] = [
      [new UsageError('bad'), 'usage', ExitCode.usage],
      [new ConfigError(['bad']), 'config', ExitCode.usage],
      [new PlacementError('VPCID is not set'), 'config', ExitCode.usage],
      [new InstanceNotFoundError({ id: 'i-0123abcd' }, 'vpc-0123abcd'), 'not_found', ExitCode.notFound],
      [Object.assign(new Error('Could not load credentials from any providers'), { name: 'CredentialsProviderError' }), 'credentials', ExitCode.aws],
      [sdkError('Throttling'), 'aws', ExitCode.aws],
      [Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9'), { code: 'ECONNREFUSED', $metadata: {} }), 'aws', ExitCode.aws],
      [new TypeError('x is not a function'), 'internal', ExitCode.internal],
      ['a string', 'internal', ExitCode.internal],
    ];
    for (const [error, code, exit] of cases) {
      const described = runError(error);
      assert.equal(described.code, code, String(error));
      assert.equal(EXIT_CODES[described.code], exit, String(error));
    }
  });

  test('a run prints one document, however many things try', () => {
    const stdout = new Sink();
    const writer = new ResultWriter(stdout);
    assert.equal(writer.write(failed(new UsageError('first'))), ExitCode.usage);
    assert.equal(writer.written, true);
    writer.write(failed(new TypeError('second')));
    assert.equal((JSON.parse(stdout.text) as OneShotResult).error?.message, 'first');
  });
});

describe('runtime warnings, as the one-shot shows them on stderr', () => {
  const SDK_NOTICE = `NodeVersionSupportWarning: The AWS SDK for JavaScript (v3)
versions published after the first week of January 2027
will require node >=22. You are running node v20.20.2.`;

  function routed(level: LogLevel): Sink {
    const stderr = new Sink();
    routeRuntimeWarnings(createLogger(level, humanReadable(stderr)));
    return stderr;
  }
  /** Node delivers a warning on the next tick. */
  const delivered = () => new Promise((resolve) => setImmediate(resolve));

  test("the AWS SDK's Node-version notice is not shown at info, and is one debug line, once, at debug", async () => {
    const info = routed('info');
    process.emitWarning(SDK_NOTICE);
    await delivered();
    assert.equal(info.text, '');

    const debug = routed('debug');
    process.emitWarning(SDK_NOTICE);
    process.emitWarning(SDK_NOTICE);
    await delivered();
    const lines = debug.text.trimEnd().split('\n');
    assert.equal(lines.length, 1, debug.text);
    assert.match(lines[0]!, /debug The AWS SDK for JavaScript \(v3\) versions published after .* will require node >=22\. .* warning=NodeVersionSupportWarning$/);
  });

  test('any other warning is one warn line with its name, never a stack', async () => {
    const stderr = routed('info');
    process.emitWarning('something odd\nacross two lines', { type: 'OddWarning', code: 'ODD01' });
    await delivered();
    assert.match(stderr.text, /^\S* ?warn something odd across two lines warning=OddWarning code=ODD01\n$/);
  });
});
