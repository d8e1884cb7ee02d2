/**
 * `npm run bench`: every benchmark of issue 5, on this machine, against moto, fake IMDS servers and
 * the built agent (dist/main.js); writes bench/RESULTS.md and bench/results.json.
 * `npm run bench:smoke` (--smoke): a tiny version of each, for CI; it fails only when something
 * crashes, never on numbers, and writes to a temporary file instead of RESULTS.md.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, freemem, release, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { killAllAgents } from '../test/helpers/agent-harness.ts';
import { apiBench } from './api.ts';
import { idleClusterBench, idleClusterSection } from './idle-cluster.ts';
import { closeAllEndpoints } from './lib/aws.ts';
import { comparison } from './comparison.ts';
import type { BenchOptions, Section } from './lib/report.ts';
import { regionBench } from './region.ts';
import { footprintBench, idleBench, startupBench, steadySection } from './steady.ts';
import { waveBench, waveSection } from './wave.ts';

// This process seeds moto with the AWS SDK; its note about Node versions says nothing about the numbers.
process.removeAllListeners('warning');
process.on('warning', (warning) => warning.name === 'NodeVersionSupportWarning' || /node >=22/.test(warning.message) || console.warn(warning));

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    console.error(`${signal}: stopping the agents and moto servers this benchmark started`);
    void Promise.all([killAllAgents(), closeAllEndpoints()]).finally(() => process.exit(130));
  });
}

const smoke = process.argv.includes('--smoke');
const onlyArg = process.argv.find((arg) => arg.startsWith('--only='));
const only = onlyArg ? new Set(onlyArg.slice('--only='.length).split(',')) : undefined;
const wanted = (id: string) => only === undefined || only.has(id);
const root = fileURLToPath(new URL('..', import.meta.url));
const started = Date.now();
const log = (line: string) => console.log(`[${((Date.now() - started) / 1000).toFixed(0).padStart(4)} s] ${line}`);
const options: BenchOptions = { smoke, log };

if (!existsSync(join(root, 'dist/main.js'))) {
  console.error('dist/main.js is missing: run `npm run build` first (npm run bench does)');
  process.exit(1);
}

const sections: Section[] = [];
if (process.argv.includes('--render')) {
  const saved = JSON.parse(readFileSync(join(root, 'bench/results.json'), 'utf8')) as { date: string; sections: Section[] };
  const rerender: Record<string, (raw: never) => Section> = { wave: waveSection, 'idle-cluster': idleClusterSection };
  const again = saved.sections.map((s) => rerender[s.id]?.(s.raw as never) ?? s);
  writeFileSync(join(root, 'bench/RESULTS.md'), render(again, Number(/in ([\d.]+) minutes/.exec(readFileSync(join(root, 'bench/RESULTS.md'), 'utf8'))?.[1] ?? 0) * 60, undefined, saved.date));
  writeFileSync(join(root, 'bench/results.json'), JSON.stringify({ ...saved, sections: again }, null, 1) + '\n');
  log('re-rendered bench/RESULTS.md from bench/results.json');
  process.exit(0);
}
const startupResults = wanted('steady') ? await startupBench(options) : undefined;
// The idle agent is measured while the region benchmark runs (it would otherwise add minutes of
// waiting): its AWS calls, IMDS requests and CPU time are its own, counted per process and per fake.
const [idle, footprints, region] = await Promise.all([
  wanted('steady') ? idleBench(options) : undefined,
  wanted('steady') ? footprintBench(options) : undefined,
  wanted('latency') || wanted('calls') ? regionBench(options) : [],
]);
sections.push(...region);
if (startupResults && idle) {
  sections.push(
    steadySection(
      { startups: startupResults, idle, ...footprints },
      'The idle windows ran at the same time as the benchmarks of tables 1 and 2 (other agents and moto busy on the same 2 cores): the counts are per process and per fake, so they are unaffected, and the CPU time is this process\'s own, though a busy machine can make it a little higher.',
    ),
  );
}
if (wanted('wave')) sections.push(...(await waveBench(options)));
if (wanted('idle-cluster')) sections.push(...(await idleClusterBench(options)));
if (wanted('api')) sections.push(...(await apiBench(options)));
sections.sort((a, b) => order(a.id) - order(b.id));

// With --only, the other tables are kept from the last full run (bench/results.json).
const jsonPath = join(root, 'bench/results.json');
let kept: { date?: string; sections?: Section[] } = {};
if (only !== undefined && !smoke && existsSync(jsonPath)) {
  kept = JSON.parse(readFileSync(jsonPath, 'utf8')) as typeof kept;
  for (const old of kept.sections ?? []) if (!sections.some((s) => s.id === old.id)) sections.push(old);
  sections.sort((a, b) => order(a.id) - order(b.id));
}
const elapsed = (Date.now() - started) / 1000;
const note = only !== undefined && kept.sections ? `Tables ${[...only].join(', ')} re-run on ${new Date().toISOString()} (\`--only\`); the others are from the run of ${kept.date ?? 'unknown'}.` : undefined;
const markdown = render(sections, elapsed, note);
const out = smoke ? join(tmpdir(), 'hasta-la-vista-bench-smoke.md') : join(root, 'bench/RESULTS.md');
writeFileSync(out, markdown);
if (!smoke) {
  writeFileSync(jsonPath, JSON.stringify({ date: only === undefined ? new Date().toISOString() : (kept.date ?? new Date().toISOString()), machine: machine(), sections }, null, 1) + '\n');
}
log(`done in ${elapsed.toFixed(0)} s: ${out}`);
for (const section of sections) for (const line of section.headline) console.log(`  ${line}`);
process.exit(0);

function order(id: string): number {
  return ['latency', 'calls', 'steady', 'wave', 'api', 'idle-cluster'].indexOf(id);
}

function machine(): Record<string, string> {
  const cpu = cpus();
  let moto = 'unknown';
  try {
    moto = execFileSync('python3', ['-c', 'import moto; print(moto.__version__)']).toString().trim();
  } catch {
    // reported as unknown
  }
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['-C', root, 'rev-parse', '--short', 'HEAD']).toString().trim();
    const dirty = execFileSync('git', ['-C', root, 'status', '--porcelain', '--', 'agent', 'package.json', 'scripts']).toString().trim();
    if (dirty) commit += ' plus uncommitted changes to agent/';
  } catch {
    // not a git checkout
  }
  return {
    cpu: `${cpu.length} × ${cpu[0]?.model ?? 'unknown'}`,
    memory: `${(totalmem() / 2 ** 30).toFixed(1)} GiB (free at start ${(freemem() / 2 ** 30).toFixed(1)} GiB)`,
    os: `Linux ${release()}`,
    node: process.version,
    moto,
    commit,
  };
}

function render(sections: Section[], elapsedSeconds: number, note: string | undefined, date = new Date().toISOString()): string {
  const m = machine();
  return [
    '# Benchmarks',
    '',
    smoke ? '**Smoke run (tiny sizes, single runs): these numbers mean nothing; it only proves the benchmarks run.**\n' : '',
    `Written by \`${smoke ? 'npm run bench:smoke' : 'npm run bench'}\` (\`node --import tsx bench/run.ts${smoke ? ' --smoke' : ''}\`) on ${date}, in ${(elapsedSeconds / 60).toFixed(1)} minutes.`,
    '',
    `Machine: ${m.cpu}; ${m.memory}; ${m.os}; Node.js ${m.node}; moto ${m.moto}; agent at commit ${m.commit}.`,
    '',
    ...(note ? [note, ''] : []),
    'Everything runs on this one machine, on loopback only: moto (the AWS emulator) behind the project\'s call-counting proxy (`test/fakes/aws-proxy.ts`), fake IMDSv2 servers (`test/fakes/imds.ts`), and the agent as it ships, `node dist/main.js`, one process per node. **Measured** here: every number in the tables. **Read** (from other projects\' code, documentation and issues, not measured): the comparison at the end. Rate limits and draining delays of real AWS are not emulated except where a table says so (table 4 puts a token-bucket limiter in front of moto). Each table says how many runs it summarises; "median (min–max)" throughout.',
    '',
    '## Headline',
    '',
    ...sections.flatMap((s) => s.headline.map((line) => `- ${line}`)),
    '',
    ...sections.flatMap((s) => [`## ${s.title}`, '', s.body, '']),
    analysis(sections),
    '',
    comparison(sections),
    '',
  ].join('\n');
}

function analysis(sections: Section[]): string {
  const wave = sections.find((s) => s.id === 'wave')?.raw as
    | { waves: { nodes: number; mode?: string; agentsPerProcess?: number; outMs: number[]; throttled: number; calls: number; missedOwnDeadline: number }[] }
    | undefined;
  const lines = ['## Analysis', ''];
  lines.push(
    '- **Detection dominates.** After the agent sees the notice, the lookup, discovery, deregistration and confirmation take a few hundred milliseconds on moto (table 1, "agent total after detection"), most of it in the three parallel `tag:GetResources` calls, which moto answers slowly because it scans every resource of every service. The rest is the polling: on average half of `POLL_INTERVAL`, at worst all of it. `POLL_INTERVAL=1` halves that for twice the IMDS requests, which are free and local.',
    '- **The region\'s size does not change the work** on the default path (table 2): the tagging API returns only the cluster\'s resources. The fallback for a role without `tag:GetResources` is the one path whose calls grow with the region (one DescribeTags per 20 load balancers or target groups).',
    '- **Idle costs few AWS calls.** A waiting agent polls IMDS (table 3); the one that keeps the inventory (the coordinator, or each agent alone) refreshes it every `INVENTORY_REFRESH`, so a coordinated cluster\'s idle AWS calls do not grow with its nodes (table 6). Every agent reads the cluster\'s name at start with one `ec2:DescribeInstances` unless `CLUSTERNAME` is set, which also spares a follower the AWS SDK\'s memory (table 3). After an agent drained its own node alone, its keep-out re-check costs a discovery every `RECHECK_INTERVAL` until the node is gone; the nodes a coordinator served are re-checked by the coordinator, in one pass for all of them.',
  );
  if (wave) {
    const alone = wave.waves.find((w) => (w.mode ?? 'alone') === 'alone');
    const served = wave.waves.filter((w) => w.mode === 'coordinated' && w.missedOwnDeadline === 0).sort((a, b) => b.nodes - a.nodes)[0];
    const summary = (w: NonNullable<typeof alone>) =>
      `${w.nodes} nodes made ${w.calls} calls (${(w.calls / w.nodes).toFixed(1)} a node), ${(100 * w.throttled / Math.max(1, w.calls)).toFixed(0)} % of them throttled, ` +
      (w.missedOwnDeadline === 0 ? `and the last node was out after ${(Math.max(...w.outMs) / 1000).toFixed(1)} s` : `and ${w.missedOwnDeadline} were not out by their deadline`);
    if (alone && served) {
      lines.push(
        `- **The spot wave** (table 4). Alone, every dying node discovers the same load balancers and deregisters itself against the account's buckets: ${summary(alone)}. Coordinated, ${summary(served)}: the coordinator knows the memberships already, and one DeregisterTargets per target group and one describe per load balancer serve every node whose hand-over arrived in the same 200 ms window, so the calls of a wave no longer grow with nodes × load balancers. Rows with a process per node beyond about 150 nodes measure this machine, not the design (the table says why).`,
      );
    }
  }
  return lines.join('\n');
}
