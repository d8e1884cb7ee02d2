/**
 * The container image, without a docker daemon: the Dockerfile is linted (dockerfile-utils) and read,
 * and its build stage is replayed on this machine: the files it COPYs are put in a scratch directory as
 * its WORKDIR, its build RUN is run there, and what the runtime stage COPYs is started with no
 * node_modules anywhere near it. That proves the bundle is self-contained and that the COPY list is
 * enough to build. (A scratch directory, not the real dist/, so tests running dist/main.js at the same
 * time never see a half-written file.)
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, posix } from 'node:path';
import { after, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { validate } from 'dockerfile-utils';
import { parse as parseYaml } from 'yaml';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const DOCKERFILE = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  version: string;
  license: string;
  scripts: Record<string, string>;
};

interface Instruction {
  keyword: string;
  args: string;
  line: number;
}

interface Stage {
  from: string;
  name: string | undefined;
  instructions: Instruction[];
}

/** Instructions with continuation lines joined and comments dropped, grouped by stage. */
function parseDockerfile(text: string): { args: Instruction[]; stages: Stage[] } {
  const instructions: Instruction[] = [];
  let pending: { text: string; line: number } | undefined;
  text.split('\n').forEach((raw, index) => {
    const line = raw.trimEnd();
    // Comment lines (and parser directives) are dropped, also inside a continuation, as docker does.
    if (/^\s*#/.test(line)) return;
    if (pending === undefined && line.trim() === '') return;
    const continued = line.endsWith('\\');
    const body = continued ? line.slice(0, -1) : line;
    pending = pending ? { text: `${pending.text} ${body.trim()}`, line: pending.line } : { text: body.trim(), line: index + 1 };
    if (!continued) {
      const match = /^(\S+)\s*(.*)$/.exec(pending.text)!;
      instructions.push({ keyword: match[1]!.toUpperCase(), args: match[2]!, line: pending.line });
      pending = undefined;
    }
  });
  const args: Instruction[] = [];
  const stages: Stage[] = [];
  for (const instruction of instructions) {
    if (instruction.keyword === 'FROM') {
      const [from, as, name] = instruction.args.split(/\s+/).filter((w) => !w.startsWith('--'));
      stages.push({ from: from!, name: as?.toUpperCase() === 'AS' ? name : undefined, instructions: [] });
    } else if (stages.length === 0) {
      args.push(instruction);
    } else {
      stages.at(-1)!.instructions.push(instruction);
    }
  }
  return { args, stages };
}

function all(stage: Stage, keyword: string): Instruction[] {
  return stage.instructions.filter((i) => i.keyword === keyword);
}

/** COPY's flags and paths: the last path is the destination. */
function copyParts(instruction: Instruction): { flags: Record<string, string>; sources: string[]; destination: string } {
  const words = instruction.args.startsWith('[') ? (JSON.parse(instruction.args) as string[]) : instruction.args.split(/\s+/);
  const flags: Record<string, string> = {};
  while (words[0]?.startsWith('--')) {
    const [flag, value = 'true'] = words.shift()!.slice(2).split('=');
    flags[flag!] = value;
  }
  const destination = words.pop()!;
  return { flags, sources: words, destination };
}

const { args: globalArgs, stages } = parseDockerfile(DOCKERFILE);
const build = stages[0]!;
const runtime = stages.at(-1)!;

describe('Dockerfile: lint and shape', () => {
  it('passes dockerfile-utils validation with no errors or warnings', () => {
    const problems = validate(DOCKERFILE).map((d) => `line ${d.range.start.line + 1}: ${d.message} (severity ${d.severity})`);
    assert.deepEqual(problems, []);
  });

  it('is multi-stage: a node build stage and a distroless runtime of the same Node LTS major', () => {
    assert.ok(stages.length >= 2, 'expected a build stage and a runtime stage');
    assert.deepEqual(globalArgs, [], 'no ARG before FROM: base images are spelled out');
    assert.equal(build.name, 'build');
    const buildMajor = /^node:(\d+)-/.exec(build.from)?.[1];
    const runtimeMajor = /^gcr\.io\/distroless\/nodejs(\d+)-debian\d+:nonroot$/.exec(runtime.from)?.[1];
    assert.ok(buildMajor, `build stage base ${build.from} is not a pinned node major`);
    assert.ok(runtimeMajor, `runtime base ${runtime.from} is not distroless nodejs:nonroot`);
    assert.equal(buildMajor, runtimeMajor, 'build and runtime must use the same Node major');
    assert.ok(['22', '24'].includes(runtimeMajor), `Node ${runtimeMajor} is not a current LTS`);
  });

  it('builds with npm ci and the same build command as the README', () => {
    const runs = all(build, 'RUN').map((i) => i.args);
    const ci = runs.findIndex((r) => /\bnpm ci\b/.test(r));
    const buildRun = runs.findIndex((r) => /\bnpm run build\b/.test(r));
    assert.ok(ci >= 0, 'the build stage does not run npm ci');
    assert.ok(buildRun > ci, 'the build stage does not run npm run build after npm ci');
    assert.ok(pkg.scripts.build, 'package.json has no build script');
    // npm ci needs the lockfile, copied before it runs.
    const lockCopied = build.instructions.findIndex((i) => i.keyword === 'COPY' && copyParts(i).sources.includes('package-lock.json'));
    const ciAt = build.instructions.findIndex((i) => i.keyword === 'RUN' && /\bnpm ci\b/.test(i.args));
    assert.ok(lockCopied >= 0 && lockCopied < ciAt, 'package-lock.json must be copied before npm ci');
  });

  it('builds the way the README says', (t) => {
    const readme = join(ROOT, 'README.md');
    if (!existsSync(readme)) return t.skip('README.md not written yet');
    const text = readFileSync(readme, 'utf8');
    assert.match(text, /npm ci/);
    assert.match(text, /npm run build/);
  });

  it('ships only the build stage\'s dist/, and runs no commands in the runtime image', () => {
    const copies = runtime.instructions.filter((i) => i.keyword === 'COPY' || i.keyword === 'ADD');
    assert.equal(copies.length, 1, 'the runtime stage should copy exactly one thing');
    const { flags, sources, destination } = copyParts(copies[0]!);
    assert.equal(flags.from, build.name);
    const workdir = all(build, 'WORKDIR').at(-1)?.args ?? '/';
    assert.deepEqual(sources.map((s) => posix.normalize(s).replace(/\/$/, '')), [posix.join(workdir, 'dist')]);
    assert.equal(destination, '/app/');
    assert.deepEqual(all(runtime, 'RUN'), [], 'distroless has no shell');
  });

  it('runs as a non-root numeric user, the one the chart sets', () => {
    const user = all(runtime, 'USER').at(-1)?.args;
    assert.match(user ?? '', /^\d+(:\d+)?$/, `USER ${user} must be numeric for runAsNonRoot`);
    const [uid, gid] = user!.split(':').map(Number);
    assert.notEqual(uid, 0);
    assert.notEqual(gid, 0);
    const values = parseYaml(readFileSync(join(ROOT, 'chart', 'hasta-la-vista', 'values.yaml'), 'utf8'));
    assert.equal(values.securityContext.runAsUser, uid);
    assert.equal(values.securityContext.runAsGroup, gid);
  });

  it('has the agent as ENTRYPOINT (exec form) and exposes the API port', () => {
    const entrypoint = all(runtime, 'ENTRYPOINT').at(-1)?.args;
    assert.ok(entrypoint !== undefined && entrypoint.startsWith('['), 'ENTRYPOINT must be in exec form so the agent gets SIGTERM directly');
    const argv = JSON.parse(entrypoint) as string[];
    assert.equal(argv[0], '/nodejs/bin/node');
    assert.equal(argv.at(-1), '/app/main.js');
    assert.deepEqual(all(runtime, 'CMD'), [], 'no CMD: the agent\'s own default is `agent`');
    assert.deepEqual(all(runtime, 'EXPOSE').map((i) => i.args), ['9740']);
  });

  it('carries OCI labels matching package.json', () => {
    const labels = all(runtime, 'LABEL').map((i) => i.args).join(' ');
    for (const key of ['title', 'description', 'source', 'licenses', 'version', 'revision', 'created']) {
      assert.match(labels, new RegExp(`org\\.opencontainers\\.image\\.${key}=`), `missing org.opencontainers.image.${key}`);
    }
    assert.match(labels, new RegExp(`org\\.opencontainers\\.image\\.licenses="${pkg.license}"`));
    const versionArg = all(runtime, 'ARG').find((i) => i.args.startsWith('VERSION='));
    assert.equal(versionArg?.args, `VERSION=${pkg.version}`, 'ARG VERSION must default to the package.json version');
  });

  it('sends the build only what it copies (.dockerignore)', () => {
    const ignore = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim());
    assert.equal(ignore.find((l) => l && !l.startsWith('#')), '*', '.dockerignore should start by excluding everything');
    for (const copy of all(build, 'COPY').filter((i) => !i.args.includes('--from'))) {
      for (const source of copyParts(copy).sources) {
        assert.ok(ignore.includes(`!${source}`), `.dockerignore does not let ${source} through`);
      }
    }
  });
});

describe('Dockerfile: the build stage, replayed', () => {
  const scratch = mkdtempSync(join(tmpdir(), 'hlv-image-'));
  after(() => rmSync(scratch, { recursive: true, force: true }));
  const src = join(scratch, 'src');
  const app = join(scratch, 'app');

  it('builds from exactly the files the Dockerfile copies', () => {
    cpSync(ROOT, src, {
      recursive: true,
      // Only the top level is filtered; what is inside a copied directory comes along.
      filter: (path) => path === ROOT || dirname(path) !== ROOT || copiedFromContext().has(path.slice(ROOT.length + 1)),
    });
    // Stands in for `npm ci`, which would take minutes: the same lockfile's packages.
    symlinkSync(join(ROOT, 'node_modules'), join(src, 'node_modules'), 'dir');
    const buildRuns = all(build, 'RUN').filter((i) => !/\bnpm ci\b/.test(i.args));
    assert.ok(buildRuns.length > 0);
    for (const run of buildRuns) {
      const result = spawnSync('/bin/sh', ['-c', run.args], { cwd: src, encoding: 'utf8', timeout: 120_000 });
      assert.equal(result.status, 0, `RUN ${run.args} failed:\n${result.stdout}\n${result.stderr}`);
    }
    assert.ok(existsSync(join(src, 'dist', 'main.js')), 'the build did not write dist/main.js');
  });

  it('starts from the runtime stage\'s files alone, with no node_modules', () => {
    assert.ok(existsSync(join(src, 'dist', 'main.js')), 'the build step above failed');
    cpSync(join(src, 'dist'), app, { recursive: true });
    assert.equal(findNodeModules(app), undefined, 'a node_modules directory is visible from the app directory');
    const version = node(app, '--version');
    assert.equal(version.status, 0, version.stderr);
    assert.ok(version.stdout.includes(pkg.version), `--version printed ${JSON.stringify(version.stdout)}`);
    assert.doesNotMatch(version.stderr, /Warning/, 'node warned while loading the bundle');
    const help = node(app, '--help');
    assert.equal(help.status, 0, help.stderr);
    assert.match(help.stdout + help.stderr, /drain/);
  });

  it('bundles only the AWS SDK shapes of the commands the agent sends (each loaded chunk is parsed and kept by every agent)', () => {
    const chunks = join(src, 'dist', 'chunks');
    const ec2 = readdirSync(chunks).find((name) => name.startsWith('ec2-sdk-') && name.endsWith('.js'));
    assert.ok(ec2, 'no EC2 chunk in dist/chunks');
    const code = readFileSync(join(chunks, ec2), 'utf8');
    // Shapes of what the agent sends are there; those of commands it never sends are not.
    assert.match(code, /"DescribeInstancesRequest"/);
    assert.match(code, /"DescribeNetworkInterfacesResult"/);
    for (const unused of ['AcceptAddressTransferRequest', 'RunInstancesRequest', 'CreateVpcResult']) {
      assert.doesNotMatch(code, new RegExp(`"${unused}"`), `the EC2 chunk carries the shape ${unused}`);
    }
  });

  it('leaves the AWS SDK and the YAML parser out of main.js, which every agent loads at start (chunks, loaded on first use), and the parts of prom-client it never uses out of the build', () => {
    const main = readFileSync(join(src, 'dist', 'main.js'), 'utf8');
    const chunks = join(src, 'dist', 'chunks');
    const inChunks = readdirSync(chunks)
      .filter((name) => name.endsWith('.js'))
      .map((name) => readFileSync(join(chunks, name), 'utf8'))
      .join('\n');
    // A marker of each: the SDK's request signing (its core, which every client loads), the parser's node kinds.
    for (const [what, marker] of [
      ['the AWS SDK', 'X-Amz-Date'],
      ['the YAML parser', 'yaml.alias'],
    ] as const) {
      assert.ok(inChunks.includes(marker), `${what} is not in any chunk: is the marker "${marker}" still right?`);
      assert.ok(!main.includes(marker), `main.js carries ${what}: something imports it statically`);
    }
    // prom-client without the parts the agent never uses (the build's prom-client-parts plugin).
    assert.match(main, /collectDefaultMetrics/);
    for (const unused of ['Pushgateway', 'AggregatorRegistry']) assert.ok(!main.includes(unused), `main.js carries prom-client's ${unused}`);
  });

  it('also starts as a bare copy of dist/ without a package.json (module syntax detection)', () => {
    const bare = join(scratch, 'bare');
    cpSync(join(src, 'dist'), bare, { recursive: true, filter: (p) => !p.endsWith('package.json') });
    const version = node(bare, '--version');
    assert.equal(version.status, 0, version.stderr);
    assert.ok(version.stdout.includes(pkg.version), `--version printed ${JSON.stringify(version.stdout)}`);
  });
});

/** Top-level names the build stage COPYs from the build context. */
function copiedFromContext(): Set<string> {
  return new Set(
    all(build, 'COPY')
      .filter((i) => !i.args.includes('--from'))
      .flatMap((i) => copyParts(i).sources.map((s) => s.replace(/\/$/, ''))),
  );
}

function node(cwd: string, ...args: string[]) {
  return spawnSync(process.execPath, ['main.js', ...args], {
    cwd,
    encoding: 'utf8',
    timeout: 30_000,
    // Nothing from the test run may help the bundle find modules.
    env: { PATH: process.env.PATH ?? '', HOME: cwd },
  });
}

function findNodeModules(start: string): string | undefined {
  for (let dir = start; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'node_modules'))) return join(dir, 'node_modules');
    if (dirname(dir) === dir) return undefined;
  }
}
