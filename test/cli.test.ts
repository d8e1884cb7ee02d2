/**
 * The command line a user types: which command runs, what a typo says, and a --help that documents every
 * option and every environment variable the agent reads. The last suite runs the built binary.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { buildIfStale } from './helpers/run.ts';
import { commandName, helpText, parseCommand, parseInstanceRef, parseScope, UsageError, type Command } from '../agent/cli.ts';
import { loadConfig, type Config } from '../agent/config.ts';
import { ExitCode } from '../agent/exit-codes.ts';
import { EXIT_CODES, type OneShotResult } from '../agent/oneshot.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BINARY = join(ROOT, 'dist', 'main.js');
const ID = 'i-0123456789abcdef0';

function usageError(argv: string[]): UsageError {
  try {
    parseCommand(argv);
  } catch (error) {
    assert.ok(error instanceof UsageError, `expected a UsageError for ${JSON.stringify(argv)}, got ${String(error)}`);
    return error;
  }
  assert.fail(`expected a UsageError for ${JSON.stringify(argv)}`);
}

function drain(argv: string[]): Extract<Command, { kind: 'drain' }> {
  const command = parseCommand(argv);
  assert.equal(command.kind, 'drain');
  return command as Extract<Command, { kind: 'drain' }>;
}

describe('parseCommand: commands', () => {
  it('no arguments runs the agent (the DaemonSet runs the image without arguments)', () => {
    assert.deepEqual(parseCommand([]), { kind: 'agent' });
  });

  it('"agent" runs the agent', () => {
    assert.deepEqual(parseCommand(['agent']), { kind: 'agent' });
  });

  it('"drain" alone drains nothing: it asks for --id, --ip or --self (someone looking for the usage must not drain the node)', () => {
    assert.equal(usageError(['drain']).message, 'drain needs an instance: give --id i-…, --ip ADDRESS, or --self for the instance this runs on');
    for (const argv of [['drain', '--dry-run'], ['drain', '--service', 'default/web'], ['drain', '--asg', '--timeout', '30']]) {
      assert.match(usageError(argv).message, /give --id i-…, --ip ADDRESS, or --self/, argv.join(' '));
    }
  });

  it('"drain --self" drains this instance, every load balancer, default timeout, for real', () => {
    assert.deepEqual(parseCommand(['drain', '--self']), {
      kind: 'drain',
      target: { self: true },
      scope: { kind: 'all' },
      timeoutSeconds: undefined,
      dryRun: false,
      asg: false,
    });
  });

  it('--self with --id or --ip is refused: one instance, named one way', () => {
    assert.equal(usageError(['drain', '--self', '--id', ID]).message, '--self drains this instance: give it without --id');
    assert.equal(usageError(['drain', '--ip', '10.0.1.5', '--self']).message, '--self drains this instance: give it without --ip');
  });

  it('--help and -h ask for help, before or after a command', () => {
    for (const argv of [['--help'], ['-h'], ['drain', '--help'], ['agent', '-h'], ['drain', '--id', ID, '--help']]) {
      assert.deepEqual(parseCommand(argv), { kind: 'help' }, argv.join(' '));
    }
  });

  it('--version and -v ask for the version', () => {
    for (const argv of [['--version'], ['-v'], ['drain', '--version']]) {
      assert.deepEqual(parseCommand(argv), { kind: 'version' }, argv.join(' '));
    }
  });

  it('an unknown command says which commands exist', () => {
    assert.equal(usageError(['deregister']).message, 'unknown command "deregister": expected agent or drain');
    assert.equal(usageError(['Drain']).message, 'unknown command "Drain": expected agent or drain');
  });

  it('an extra argument is refused, not ignored (a forgotten --id must not drain this node)', () => {
    assert.equal(usageError(['drain', ID]).message, `unexpected argument "${ID}"`);
    assert.equal(usageError(['agent', 'now']).message, 'unexpected argument "now"');
  });

  it('an unknown option is refused and named', () => {
    for (const argv of [['--bogus'], ['drain', '--bogus'], ['drain', '--id', ID, '--force'], ['drain', '--dryrun']]) {
      const error = usageError(argv);
      assert.match(error.message, new RegExp(`'${argv.at(-1)}'`), argv.join(' '));
    }
  });

  it('an option without its value is refused and named', () => {
    for (const option of ['--id', '--ip', '--service', '--timeout']) {
      assert.match(usageError(['drain', option]).message, new RegExp(option), option);
    }
    // A flag where the value should be is not taken as the value.
    assert.match(usageError(['drain', '--id', '--dry-run']).message, /--id/);
  });

  for (const [option, value] of [['--id', ID], ['--ip', '10.0.1.5'], ['--self', undefined], ['--service', 'default/web'], ['--timeout', '90'], ['--dry-run', undefined], ['--asg', undefined]] as const) {
    it(`${option} belongs to drain: given to the agent it is refused`, () => {
      const args = value === undefined ? [option] : [option, value];
      const message = `${option} belongs to the drain command, not the agent`;
      assert.equal(usageError(['agent', ...args]).message, message);
      // Without a command the agent runs, so the same applies.
      assert.equal(usageError(args).message, message);
    });
  }

  it('commandName tells the one-shot command apart even on a command line parseCommand refuses', () => {
    for (const argv of [['drain'], ['drain', '--bogus'], ['--bogus', 'drain'], ['--timeout', '5', 'drain', '--id'], ['drain', ID, 'extra']]) {
      assert.equal(commandName(argv), 'drain', argv.join(' '));
    }
    assert.equal(commandName([]), 'agent');
    assert.equal(commandName(['--bogus']), 'agent');
    assert.equal(commandName(['deregister']), 'deregister');
    // `drain` as the value of an option is not the command.
    assert.equal(commandName(['--id', 'drain']), 'agent');
  });

  it('UsageError is an Error named UsageError', () => {
    const error = usageError(['nope']);
    assert.ok(error instanceof Error);
    assert.equal(error.name, 'UsageError');
  });
});

describe('parseCommand: drain', () => {
  it('--id gives the instance', () => {
    assert.deepEqual(drain(['drain', '--id', ID]).target, { id: ID });
    assert.deepEqual(drain(['drain', `--id=${ID}`]).target, { id: ID });
  });

  it('--ip gives the address, IPv4 or IPv6', () => {
    assert.deepEqual(drain(['drain', '--ip', '10.0.1.5']).target, { ip: '10.0.1.5' });
    assert.deepEqual(drain(['drain', '--ip', '2600:1f18:4a1:8a00::1c']).target, { ip: '2600:1f18:4a1:8a00::1c' });
  });

  it('--id and --ip together are refused', () => {
    assert.equal(usageError(['drain', '--id', ID, '--ip', '10.0.1.5']).message, 'give an instance id or an IP, not both');
  });

  it('a malformed --id or --ip says what is wrong', () => {
    assert.equal(usageError(['drain', '--id', 'i-xyz']).message, '"i-xyz" is not an instance id: expected i- and 8 or 17 hex digits');
    assert.equal(usageError(['drain', '--ip', '10.0.1.256']).message, '"10.0.1.256" is not an IPv4 address such as 10.0.1.23, nor an IPv6 address such as 2600:1f18::1c');
  });

  it('--service gives the Service scope', () => {
    assert.deepEqual(drain(['drain', '--self', '--service', 'kube-system/ingress-nginx']).scope, {
      kind: 'service',
      namespace: 'kube-system',
      name: 'ingress-nginx',
    });
  });

  it('a malformed --service says what is expected', () => {
    assert.equal(
      usageError(['drain', '--self', '--service', 'web']).message,
      '"web" is not a Service: expected <namespace>/<name>, lower-case DNS labels',
    );
  });

  it('--timeout gives whole seconds from 1 to 3600', () => {
    assert.equal(drain(['drain', '--self', '--timeout', '1']).timeoutSeconds, 1);
    assert.equal(drain(['drain', '--self', '--timeout', '90']).timeoutSeconds, 90);
    assert.equal(drain(['drain', '--self', '--timeout=3600']).timeoutSeconds, 3600);
  });

  for (const value of ['0', '3601', '1.5', '90s', 'abc', '', '-5', '1e3', ' 90']) {
    it(`--timeout ${JSON.stringify(value)} is refused with the accepted range`, () => {
      assert.equal(
        usageError(['drain', '--self', `--timeout=${value}`]).message,
        `--timeout ${JSON.stringify(value)} is not a whole number of seconds from 1 to 3600`,
      );
    });
  }

  it('--dry-run is a dry run', () => {
    assert.equal(drain(['drain', '--self', '--dry-run']).dryRun, true);
    assert.equal(drain(['drain', '--self']).dryRun, false);
  });

  it('every option together, in any order', () => {
    assert.deepEqual(parseCommand(['--dry-run', '--timeout', '30', 'drain', '--asg', '--service', 'default/web', '--ip', '10.0.1.5']), {
      kind: 'drain',
      target: { ip: '10.0.1.5' },
      scope: { kind: 'service', namespace: 'default', name: 'web' },
      timeoutSeconds: 30,
      dryRun: true,
      asg: true,
    });
  });
});

describe('parseInstanceRef', () => {
  it('neither id nor ip means this instance', () => {
    assert.equal(parseInstanceRef(undefined, undefined), undefined);
  });

  it('accepts old (8 hex digits) and new (17 hex digits) instance ids', () => {
    assert.deepEqual(parseInstanceRef('i-0123abcd', undefined), { id: 'i-0123abcd' });
    assert.deepEqual(parseInstanceRef(ID, undefined), { id: ID });
  });

  for (const id of ['i-xyz', 'i-0123abc', 'i-0123456789abcdef01', 'I-0123456789abcdef0', 'i-0123456789ABCDEF0', '0123456789abcdef0', 'i_0123456789abcdef0', '', ' i-0123abcd']) {
    it(`refuses the id ${JSON.stringify(id)}, saying what an id looks like`, () => {
      assert.throws(() => parseInstanceRef(id, undefined), {
        name: 'UsageError',
        message: `${JSON.stringify(id)} is not an instance id: expected i- and 8 or 17 hex digits`,
      });
    });
  }

  // INSTANCE_ID in agent/cli.ts is /^i-[0-9a-f]{8,17}$/, so 9 to 16 digits pass although the message
  // (and AWS) say 8 or 17.
  it('refuses ids of 9 to 16 hex digits, as its message says', () => {
    for (const id of ['i-012345678', 'i-0123456789', 'i-0123456789abcdef']) {
      assert.throws(() => parseInstanceRef(id, undefined), UsageError, id);
    }
  });

  it('accepts IPv4 and IPv6 addresses (an IPv6 cluster\'s ip targets)', () => {
    for (const ip of ['10.0.1.5', '192.168.0.1', '172.31.255.255', '0.0.0.0', '255.255.255.255', '2600:1f18:4a1:8a00::1c', 'fd00::1', '::1']) {
      assert.deepEqual(parseInstanceRef(undefined, ip), { ip }, ip);
    }
  });

  for (const ip of ['10.0.1.256', '10.0.1', '10.0.1.5.6', 'abc', '10.0.1.5/32', '2600:1f18::/80', 'fe80::1%eth0', '2600:1f18::1::2', '010.0.1.5', '10.0.1.-1', '', ' 10.0.1.5']) {
    it(`refuses the ip ${JSON.stringify(ip)}, saying what an address looks like`, () => {
      assert.throws(() => parseInstanceRef(undefined, ip), {
        name: 'UsageError',
        message: `${JSON.stringify(ip)} is not an IPv4 address such as 10.0.1.23, nor an IPv6 address such as 2600:1f18::1c`,
      });
    });
  }

  it('refuses both, even when both are well-formed', () => {
    assert.throws(() => parseInstanceRef(ID, '10.0.1.5'), { name: 'UsageError', message: 'give an instance id or an IP, not both' });
  });
});

describe('parseScope', () => {
  it('no service means every load balancer in scope', () => {
    assert.deepEqual(parseScope(undefined), { kind: 'all' });
  });

  const label63 = `a${'b'.repeat(61)}c`;
  for (const [text, namespace, name] of [
    ['default/web', 'default', 'web'],
    ['kube-system/ingress-nginx', 'kube-system', 'ingress-nginx'],
    ['a/b', 'a', 'b'],
    ['ns1/svc-2', 'ns1', 'svc-2'],
    ['0ns/9svc', '0ns', '9svc'],
    [`${label63}/${label63}`, label63, label63],
  ] as const) {
    it(`accepts ${text.length > 30 ? 'two 63-character labels' : text}`, () => {
      assert.deepEqual(parseScope(text), { kind: 'service', namespace, name });
    });
  }

  for (const text of ['web', 'Default/web', 'default/Web', 'a/b/c', '/web', 'default/', '-ns/web', 'ns/web-', 'ns/we_b', 'ns/web.x', 'ns /web', '', `${label63}d/web`]) {
    it(`refuses ${JSON.stringify(text.length > 30 ? `${text.slice(0, 10)}…` : text)}, saying what a Service looks like`, () => {
      assert.throws(() => parseScope(text), {
        name: 'UsageError',
        message: `${JSON.stringify(text)} is not a Service: expected <namespace>/<name>, lower-case DNS labels`,
      });
    });
  }
});

/** The environment variables agent/config.ts reads, straight from its source: `read.xxx('NAME'`. */
function configVariables(): string[] {
  const source = readFileSync(join(ROOT, 'agent', 'config.ts'), 'utf8');
  const names = [...source.matchAll(/\bread\.\w+\(\s*['"]([A-Z][A-Z0-9_]*)['"]/g)].map((match) => match[1]!);
  return [...new Set(names)];
}

/** The Environment section of the help, one entry per variable, wrapped lines joined. */
function helpEntries(help: string): Map<string, string> {
  const section = help.split(/^Environment:\n/m)[1];
  assert.ok(section !== undefined, 'the help has no Environment: section');
  const entries = new Map<string, string>();
  let current: string[] = [];
  let text = '';
  const flush = (): void => {
    for (const name of current) entries.set(name, text);
  };
  for (const line of section.split('\n')) {
    const head = /^ {2}([A-Z][A-Z0-9_]*(?:, [A-Z][A-Z0-9_]*)*)(?: +(.*))?$/.exec(line);
    if (head) {
      flush();
      current = head[1]!.split(', ');
      text = head[2] ?? '';
    } else {
      text += ` ${line.trim()}`;
    }
  }
  flush();
  return entries;
}

describe('helpText', () => {
  const help = helpText('9.8.7');

  it('starts with the name and the version it is given', () => {
    assert.match(help, /^hasta-la-vista 9\.8\.7\b/);
  });

  it('shows both commands', () => {
    assert.match(help, /hasta-la-vista \[agent\]/);
    assert.match(help, /hasta-la-vista drain /);
  });

  for (const option of ['--id', '--ip', '--self', '--service', '--timeout', '--dry-run', '--asg', '--help', '--version']) {
    it(`documents ${option}`, () => {
      assert.match(help, new RegExp(`${option}(?![-\\w])`));
    });
  }

  it('documents every exit code of the drain command', () => {
    const paragraph = /exit codes:([\s\S]*?)\n\n/.exec(help)?.[1];
    assert.ok(paragraph, 'the help has no exit codes paragraph');
    for (const [name, code] of Object.entries(ExitCode)) {
      assert.match(paragraph, new RegExp(`(^|[\\s,])${code} `), `exit code ${code} (${name}) is not documented`);
    }
  });

  it('says a bare drain changes nothing, and that --ip takes IPv6 too', () => {
    assert.match(help, /a bare "drain" changes nothing and exits 2/);
    assert.match(help, /--ip ADDRESS .*IPv6/);
  });

  it('documents the one JSON document on stdout, its failure shape and every error code', () => {
    assert.match(help, /every run prints exactly one JSON document on stdout, failures included/);
    assert.match(help, /\{"state": "failed", "error": \{\.\.\.\}\}/);
    for (const [code, exit] of Object.entries(EXIT_CODES)) {
      assert.match(help, new RegExp(`(^|[\\s,])${exit} [^,;]*\\[${code}\\]`), `error code ${code} (exit ${exit}) is not documented with its exit code`);
    }
  });

  it('says ASG_LIFECYCLE_HOOK unset calls no lifecycle API, and a name holds only that hook, never EKS\'s', () => {
    const entry = helpEntries(help).get('ASG_LIFECYCLE_HOOK') ?? '';
    assert.match(entry, /Unset \(or off\): no lifecycle API is ever called/);
    assert.match(entry, /that hook, and only that one, is completed/);
    assert.match(entry, /Never EKS's own Terminate-LC-Hook/);
  });

  const variables = configVariables();

  it('finds the variables in agent/config.ts (the pattern still matches its source)', () => {
    for (const name of ['SECRET', 'PORT', 'POLL_INTERVAL', 'DRAIN_TIMEOUT', 'CLOUDPROVIDER', 'POD_NAMESPACE']) {
      assert.ok(variables.includes(name), `${name} not found by the read.xxx('NAME' pattern; found ${variables.join(', ')}`);
    }
  });

  for (const name of variables) {
    it(`documents ${name}, which agent/config.ts reads`, () => {
      assert.match(help, new RegExp(`\\b${name}\\b`), `${name} is read by agent/config.ts but not in --help`);
    });
  }

  for (const name of ['AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_<SERVICE>', 'AWS_EC2_METADATA_SERVICE_ENDPOINT', 'AWS_EC2_METADATA_V1_DISABLED', 'KUBECONFIG']) {
    it(`mentions ${name}, which ARCHITECTURE.md says is honoured`, () => {
      assert.ok(help.includes(name), `${name} is not in --help`);
    });
  }

  // The defaults --help states are the defaults the agent uses.
  const config = loadConfig({ SECRET: 'x'.repeat(32) }, 'agent');
  const stated: [string, (c: Config) => string][] = [
    ['PORT', (c) => String(c.port)],
    ['POLL_INTERVAL', (c) => String(c.pollIntervalMs / 1000)],
    ['DRAIN_TIMEOUT', (c) => String(c.drainTimeoutMs / 1000)],
    ['LOGLEVEL', (c) => c.logLevel],
    ['DRY_RUN', (c) => String(c.dryRun)],
    ['SIGTERM_DRAIN', (c) => c.sigtermDrain],
    ['DEADLINE_MARGIN', (c) => String(c.deadlineMarginMs / 1000)],
    ['MAINTENANCE_LEAD_TIME', (c) => String(c.maintenanceLeadMs / 1000)],
    ['REBALANCE_DRAIN', (c) => String(c.rebalanceDrain)],
    ['EXCLUDE_NODE', (c) => String(c.excludeNode)],
    ['RECHECK_INTERVAL', (c) => String(c.recheckIntervalMs / 1000)],
    ['MAX_CONCURRENT_DRAINS', (c) => String(c.maxConcurrentDrains)],
    ['TERMINATION_GRACE_PERIOD', (c) => String(c.terminationGracePeriodMs / 1000)],
  ];
  const entries = helpEntries(help);
  for (const [name, actual] of stated) {
    it(`states ${name}'s real default`, () => {
      const entry = entries.get(name);
      assert.ok(entry !== undefined, `${name} has no entry of its own in the Environment section`);
      const documented = /\(default ([^):]+)\)/.exec(entry)?.[1];
      assert.equal(documented, actual(config), `--help says ${name} defaults to ${documented}: ${entry}`);
    });
  }
});


/** Runs the binary with PATH only, so no SECRET or AWS variable of the test's environment leaks in. */
function run(args: string[]) {
  return spawnSync(process.execPath, [BINARY, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 30_000, env: { PATH: process.env['PATH'] } });
}

describe('the built binary', () => {
  // `npm test` builds first, so this only builds when the sources changed since.
  before(buildIfStale);
  const { version } = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string };

  it('--help exits 0 and shows the drain command and the package version', () => {
    const result = run(['--help']);
    assert.equal(result.status, 0, result.stderr);
    assert.match(result.stdout, /\bdrain\b/);
    assert.match(result.stdout, /--id/);
    assert.ok(result.stdout.startsWith(`hasta-la-vista ${version}`), result.stdout.slice(0, 100));
  });

  it('--version prints the package.json version', () => {
    const result = run(['--version']);
    assert.equal(result.status, 0, result.stderr);
    assert.equal(result.stdout, `${version}\n`);
  });

  it('an unknown flag exits 2, names it and points at --help', () => {
    const result = run(['--bogus']);
    assert.equal(result.status, 2, result.stderr);
    assert.equal(result.stdout, '');
    assert.match(result.stderr, /--bogus/);
    assert.match(result.stderr, /Try hasta-la-vista --help/);
  });

  it('an unknown command exits 2', () => {
    const result = run(['deregister']);
    assert.equal(result.status, 2, result.stderr);
    assert.match(result.stderr, /unknown command "deregister": expected agent or drain/);
  });

  it('drain with a malformed id exits 2, says what is wrong on stderr and as JSON on stdout, before touching AWS', () => {
    const result = run(['drain', '--id', 'i-xyz']);
    assert.equal(result.status, 2, result.stderr);
    assert.match(result.stderr, /"i-xyz" is not an instance id/);
    assert.deepEqual(JSON.parse(result.stdout), {
      state: 'failed',
      error: { code: 'usage', message: '"i-xyz" is not an instance id: expected i- and 8 or 17 hex digits' },
    });
  });

  it('a bare drain drains nothing: exit 2, the usage on stderr, one JSON failure on stdout', () => {
    const result = run(['drain']);
    assert.equal(result.status, 2, result.stderr);
    assert.match(result.stderr, /drain needs an instance: give --id i-…, --ip ADDRESS, or --self/);
    assert.match(result.stderr, /Try hasta-la-vista --help/);
    const document = JSON.parse(result.stdout) as OneShotResult;
    assert.equal(document.state, 'failed');
    assert.equal(document.error?.code, 'usage');
  });

  it('an unknown option of drain is a usage failure as JSON too', () => {
    const result = run(['drain', '--bogus']);
    assert.equal(result.status, 2, result.stderr);
    assert.equal((JSON.parse(result.stdout) as OneShotResult).error?.code, 'usage');
  });

  it('drain --asg without ASG_LIFECYCLE_HOOK exits 2 and names the fix, in the log and the JSON', () => {
    const result = run(['drain', '--id', ID, '--asg']);
    assert.equal(result.status, 2, result.stderr);
    assert.match(result.stderr, /set ASG_LIFECYCLE_HOOK/);
    assert.match(String((JSON.parse(result.stdout) as OneShotResult).error?.message), /set ASG_LIFECYCLE_HOOK/);
  });

  it('drain with both --id and --ip exits 2', () => {
    const result = run(['drain', '--id', ID, '--ip', '10.0.1.5']);
    assert.equal(result.status, 2, result.stderr);
    assert.match(result.stderr, /give an instance id or an IP, not both/);
    assert.equal((JSON.parse(result.stdout) as OneShotResult).error?.code, 'usage');
  });
});
