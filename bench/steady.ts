/**
 * Table 3: what an agent costs while nothing happens. Start-to-ready time (on a quiet machine), then
 * an idle window: AWS calls, IMDS requests, CPU time and RSS (from /proc), and the size of dist/.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { setTimeout as sleep } from 'node:timers/promises';
import { startFakeImds, type FakeImds } from '../test/fakes/imds.ts';
import { freePort } from '../test/helpers/moto.ts';
import { waitReady } from '../test/helpers/agent-harness.ts';
import { events, isDrainEnd, procSample, SECRET, spawnAgent, spotNotice, stopAgent, waitForLog, type ProcSample } from './lib/agent.ts';
import { CLUSTER, REGION, seedClients, seedCluster, startEndpoint, type Cluster, type Endpoint } from './lib/aws.ts';
import type { BenchOptions, Section } from './lib/report.ts';
import { max, median, min, mmm, ms, num, sum, table } from './lib/stats.ts';

const DIST = fileURLToPath(new URL('../dist/', import.meta.url));

interface Startup {
  readonly toListening: number;
  readonly toReadyLog: number;
  readonly toReadyz: number;
  readonly cpuMs: number;
}

interface Idle {
  readonly label: string;
  readonly windowMs: number;
  readonly awsCalls: Record<string, number>;
  readonly imdsRequests: number;
  readonly imdsTokenRequests: number;
  readonly cpuMs: number;
  readonly rssKiB: number[];
  readonly heapUsedMiB?: number;
}

/** One idle agent's memory, on one runtime, with the cluster's name given or looked up. */
interface Footprint {
  readonly runtime: string;
  readonly clusterName: 'CLUSTERNAME set' | 'looked up in EC2 at start';
  readonly rssKiB: number[];
  readonly rssAnonKiB: number[];
  readonly rssFileKiB: number[];
  /** Sampled over this window, after the agent had been ready for settleMs. */
  readonly windowMs: number;
  readonly settleMs: number;
}

export interface SteadyResults {
  startups: Startup[];
  idle: Idle[];
  /** Absent where the runtimes were not measured (older results). */
  footprints?: Footprint[];
  /** Why a runtime is missing from `footprints`. */
  footprintNote?: string;
}

/** The goal of the agent's idle RSS, on every runtime it is built for. */
const IDLE_RSS_GOAL_MIB = 64;
/** The image's Node major (Dockerfile), fetched the way `npm run test:image-node` does. */
const IMAGE_NODE = 'node@22';

async function world(): Promise<{ endpoint: Endpoint; cluster: Cluster; imds: FakeImds }> {
  const endpoint = await startEndpoint();
  const cluster = await seedCluster(seedClients(endpoint.moto.url), 1);
  const node = cluster.nodes[0]!;
  const imds = await startFakeImds({ instanceId: node.id, region: REGION, vpcId: cluster.vpcId, privateIp: node.ip });
  return { endpoint, cluster, imds };
}

/** Spawn to ready, repeated; run on a quiet machine. */
export async function startupBench(options: BenchOptions): Promise<Startup[]> {
  const { endpoint, imds } = await world();
  const startups: Startup[] = [];
  try {
    for (let rep = 0; rep < (options.smoke ? 1 : 7); rep++) {
      const spawnedAt = Date.now();
      const agent = spawnAgent(await freePort(), { AWS_ENDPOINT_URL: endpoint.proxy.url, AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url, SECRET });
      try {
        // /readyz every 10 ms: the answer is as soon as the agent is ready, within 10 ms.
        for (;;) {
          if (!agent.alive()) throw new Error(`agent exited:\n${agent.stderr()}`);
          try {
            if ((await fetch(`${agent.url}/readyz`, { signal: AbortSignal.timeout(1000) })).status === 200) break;
          } catch {
            // not listening yet
          }
          if (Date.now() - spawnedAt > 30_000) throw new Error(`not ready in 30 s:\n${agent.stderr()}`);
          await sleep(10);
        }
        const toReadyz = Date.now() - spawnedAt;
        const log = events(agent);
        const at = (msg: string) => (log.find((e) => e.msg === msg)?.at ?? NaN) - spawnedAt;
        startups.push({ toListening: at('API listening'), toReadyLog: at('ready: watching IMDS for notices'), toReadyz, cpuMs: procSample(agent.child.pid!).cpuMs });
      } finally {
        await stopAgent(agent);
      }
    }
  } finally {
    await imds.close();
    await endpoint.close();
  }
  options.log(`start to ready: ${mmm(startups.map((s) => s.toReadyz))} (/readyz 200 after spawn)`);
  return startups;
}

/**
 * Idle RSS on this machine's Node and on the image's, each with CLUSTERNAME set (no AWS call, so no AWS
 * SDK module is ever loaded) and without (one ec2:DescribeInstances at start loads the EC2 client).
 */
export async function footprintBench(options: BenchOptions): Promise<Pick<SteadyResults, 'footprints' | 'footprintNote'>> {
  const settleMs = options.smoke ? 1_000 : 15_000;
  const windowMs = options.smoke ? 2_000 : 60_000;
  const runtimes = [{ label: `Node ${process.versions.node} (this machine)`, node: process.execPath }];
  let footprintNote: string | undefined;
  try {
    const node = execFileSync('npm', ['exec', '--yes', `--package=${IMAGE_NODE}`, '--', 'node', '-p', 'process.execPath'], { encoding: 'utf8', timeout: 300_000 }).trim();
    const version = execFileSync(node, ['-p', 'process.versions.node'], { encoding: 'utf8' }).trim();
    if (version !== process.versions.node) runtimes.push({ label: `Node ${version} (the image's major)`, node });
  } catch (error) {
    footprintNote = `${IMAGE_NODE} could not be fetched with npm (${String(error).split('\n')[0]}): measured on this machine's Node only.`;
  }
  const { endpoint, imds } = await world();
  const footprints: Footprint[] = [];
  try {
    for (const runtime of runtimes) {
      for (const clusterName of ['CLUSTERNAME set', 'looked up in EC2 at start'] as const) {
        const env = { AWS_ENDPOINT_URL: endpoint.proxy.url, AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url, SECRET, ...(clusterName === 'CLUSTERNAME set' ? { CLUSTERNAME: CLUSTER } : {}) };
        const agent = spawnAgent(await freePort(), env, runtime.node);
        try {
          await waitReady(agent, 30_000);
          await sleep(settleMs);
          const samples: ProcSample[] = [procSample(agent.child.pid!)];
          const until = Date.now() + windowMs;
          while (Date.now() < until) {
            await sleep(Math.min(5_000, until - Date.now()));
            samples.push(procSample(agent.child.pid!));
          }
          footprints.push({ runtime: runtime.label, clusterName, rssKiB: samples.map((x) => x.rssKiB), rssAnonKiB: samples.map((x) => x.rssAnonKiB), rssFileKiB: samples.map((x) => x.rssFileKiB), windowMs, settleMs });
          options.log(`idle RSS, ${runtime.label}, ${clusterName}: ${num(median(samples.map((x) => x.rssKiB)) / 1024, 1)} MiB`);
        } finally {
          await stopAgent(agent);
        }
      }
    }
  } finally {
    await imds.close();
    await endpoint.close();
  }
  return { footprints, ...(footprintNote ? { footprintNote } : {}) };
}

/** An idle agent over a window; then the same agent after draining its own node (the keep-out re-check runs). */
export async function idleBench(options: BenchOptions): Promise<Idle[]> {
  const windowMs = options.smoke ? 4_000 : 180_000;
  const drainedWindowMs = options.smoke ? 4_000 : 65_000;
  const { endpoint, imds } = await world();
  const results: Idle[] = [];
  const agent = spawnAgent(await freePort(), { AWS_ENDPOINT_URL: endpoint.proxy.url, AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url, SECRET });
  try {
    await waitReady(agent, 30_000);
    await sleep(options.smoke ? 500 : 5_000);
    results.push(await watch('idle, waiting for a notice (POLL_INTERVAL 2 s, the default)', windowMs));

    const offset = agent.stderr().length;
    imds.set('meta-data/spot/instance-action', spotNotice(3_600_000));
    await waitForLog(agent, isDrainEnd, '"msg":"drain ', 30_000, offset);
    results.push(await watch('after draining its own node (keep-out re-check every RECHECK_INTERVAL, 30 s)', drainedWindowMs));
  } finally {
    await stopAgent(agent);
    await imds.close();
    await endpoint.close();
  }
  return results;

  async function watch(label: string, ms: number): Promise<Idle> {
    const mark = endpoint.stamps.length;
    const imdsBefore = imds.requests;
    const tokensBefore = imds.tokenRequests;
    const first: ProcSample = procSample(agent.child.pid!);
    const rss: number[] = [first.rssKiB];
    const until = Date.now() + ms;
    while (Date.now() < until) {
      await sleep(Math.min(5_000, until - Date.now()));
      rss.push(procSample(agent.child.pid!).rssKiB);
    }
    const last = procSample(agent.child.pid!);
    const awsCalls: Record<string, number> = {};
    for (const call of endpoint.stamps.slice(mark)) awsCalls[`${call.service}:${call.action}`] = (awsCalls[`${call.service}:${call.action}`] ?? 0) + 1;
    const metrics = await (await agent.fetch('/metrics')).text();
    const heap = /^hasta_la_vista_nodejs_heap_size_used_bytes (\S+)$/m.exec(metrics)?.[1];
    const idle: Idle = {
      label,
      windowMs: last.at - first.at,
      awsCalls,
      imdsRequests: imds.requests - imdsBefore,
      imdsTokenRequests: imds.tokenRequests - tokensBefore,
      cpuMs: last.cpuMs - first.cpuMs,
      rssKiB: rss,
      ...(heap ? { heapUsedMiB: Number(heap) / 1048576 } : {}),
    };
    options.log(`${label}: ${sum(Object.values(awsCalls))} AWS calls, ${idle.imdsRequests} IMDS requests, CPU ${num(idle.cpuMs)} ms over ${num(idle.windowMs / 1000)} s`);
    return idle;
  }
}

/** What the image ships: main.js (every agent loads it at start), the chunks (loaded on first use), source maps and notices. */
function distSizes(): { mainJs: number; mainGzip: number; chunksJs: number; other: number; total: number } {
  const files = (dir: string): { name: string; bytes: number }[] =>
    readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
      entry.isDirectory() ? files(join(dir, entry.name)).map((f) => ({ ...f, name: `${entry.name}/${f.name}` })) : [{ name: entry.name, bytes: statSync(join(dir, entry.name)).size }],
    );
  const all = files(DIST);
  const mainJs = all.find((f) => f.name === 'main.js')?.bytes ?? NaN;
  const chunksJs = sum(all.filter((f) => f.name.startsWith('chunks/') && f.name.endsWith('.js')).map((f) => f.bytes));
  const total = sum(all.map((f) => f.bytes));
  return { mainJs, mainGzip: gzipSync(readFileSync(join(DIST, 'main.js'))).length, chunksJs, other: total - mainJs - chunksJs, total };
}

export function steadySection(results: SteadyResults, concurrentNote: string): Section {
  const kib = (n: number) => `${num(n / 1024, 0)} KiB`;
  const mib = (n: number) => `${num(n / 1048576, 1)} MiB`;
  const dist = distSizes();
  const rows = results.idle.map((idle) => {
    const hours = idle.windowMs / 3_600_000;
    const calls = sum(Object.values(idle.awsCalls));
    const minutes = idle.windowMs / 60_000;
    return [
      idle.label,
      `${num(idle.windowMs / 1000)} s`,
      `${calls}${calls ? ` (${Object.entries(idle.awsCalls).map(([a, n]) => `${a} ${n}`).join(', ')})` : ''} → **${num(calls / hours)} per hour**`,
      `${num(idle.imdsRequests / minutes, 1)} (of which token PUTs ${num(idle.imdsTokenRequests / minutes, 2)})`,
      `${num((100 * idle.cpuMs) / idle.windowMs, 2)} % of one core (${num(idle.cpuMs)} ms)`,
      `${num(median(idle.rssKiB) / 1024, 1)} MiB (${num(min(idle.rssKiB) / 1024, 1)}–${num(max(idle.rssKiB) / 1024, 1)})`,
      idle.heapUsedMiB === undefined ? 'n/a' : `${num(idle.heapUsedMiB, 1)} MiB`,
    ];
  });
  const s = results.startups;
  const idle = results.idle[0];
  const headline = idle
    ? [
        `Idle: ${num(sum(Object.values(idle.awsCalls)) / (idle.windowMs / 3_600_000))} AWS calls per node per hour, ${num(idle.imdsRequests / (idle.windowMs / 60_000))} IMDS requests per minute, ${num((100 * idle.cpuMs) / idle.windowMs, 2)} % of a core, ${num(median(idle.rssKiB) / 1024)} MiB RSS; ready ${ms(median(s.map((x) => x.toReadyz)))} after start; dist/ ${mib(dist.total)} (main.js ${mib(dist.mainJs)})`,
        ...(results.footprints?.length ? [`Idle RSS by runtime (goal ≤ ${IDLE_RSS_GOAL_MIB} MiB): ${results.footprints.map((f) => `${f.runtime.replace(/ \(.*\)$/, '')}, ${f.clusterName}: ${num(median(f.rssKiB) / 1024, 1)} MiB`).join('; ')}`] : []),
      ]
    : [];
  const footprintRows = (results.footprints ?? []).map((f) => {
    const rss = median(f.rssKiB) / 1024;
    return [
      f.runtime,
      f.clusterName,
      `**${num(rss, 1)} MiB** (${num(min(f.rssKiB) / 1024, 1)}–${num(max(f.rssKiB) / 1024, 1)})`,
      `${num(median(f.rssAnonKiB) / 1024, 1)} MiB`,
      `${num(median(f.rssFileKiB) / 1024, 1)} MiB`,
      rss <= IDLE_RSS_GOAL_MIB ? 'yes' : `no, ${num(rss - IDLE_RSS_GOAL_MIB, 1)} MiB over`,
    ];
  });
  const footprints = results.footprints
    ? [
        '',
        `Idle RSS by runtime: the same agent, waiting for a notice, sampled every 5 s over ${num((results.footprints[0]?.windowMs ?? NaN) / 1000)} s after ${num((results.footprints[0]?.settleMs ?? NaN) / 1000)} s of settling (VmRSS, and its two parts RssAnon and RssFile from /proc/<pid>/status). With CLUSTERNAME set the agent makes no AWS call until a drain, so no AWS SDK module is loaded; without it, one ec2:DescribeInstances at start reads the cluster's name from the instance's tags and loads the EC2 client and the SDK's core for good. File-backed pages are mostly the node binary's own (an empty Node 20 process has about 40 MiB RSS, Node 22 about 42 MiB); they are shared by every process running that binary and can be reclaimed under pressure, but count in RSS. Goal: ${IDLE_RSS_GOAL_MIB} MiB.${results.footprintNote ? ` ${results.footprintNote}` : ''}`,
        '',
        table(['runtime', 'cluster name', 'RSS median (min–max)', 'anonymous', 'file-backed', `≤ ${IDLE_RSS_GOAL_MIB} MiB`], footprintRows),
      ]
    : [];
  const body = [
    `One agent (\`node dist/main.js\`, defaults: POLL_INTERVAL 2 s, LOGLEVEL info) against moto and a fake IMDS. AWS calls are counted at the endpoint and **extrapolated** from the window to an hour; IMDS requests are counted by the fake IMDS; CPU is utime+stime from /proc/<pid>/stat over the window, RSS is VmRSS from /proc/<pid>/status sampled every 5 s. ${concurrentNote}`,
    '',
    table(['state', 'window', 'AWS calls in window → per node per hour', 'IMDS requests per minute', 'CPU', 'RSS median (min–max)', 'JS heap used (/metrics)'], rows),
    ...footprints,
    '',
    `Start to ready (${s.length} starts on a quiet machine; from spawning the process to …): "API listening" log line ${mmm(s.map((x) => x.toListening))}; "ready: watching IMDS for notices" log line ${mmm(s.map((x) => x.toReadyLog))}; first \`GET /readyz\` 200 (polled every 10 ms) **${mmm(s.map((x) => x.toReadyz))}**. CPU time used by then: ${mmm(s.map((x) => x.cpuMs))}. Start-up reads the identity from IMDS and makes one AWS call (ec2:DescribeInstances, for the cluster tag, because CLUSTERNAME is not set).`,
    '',
    `Size of what the image ships (\`dist/\` only; no node_modules: everything is bundled and minified): \`main.js\`, which every agent loads at start, ${kib(dist.mainJs)} (gzipped ${kib(dist.mainGzip)}); the chunks loaded on first use (each AWS SDK client with the SDK's core, the credential providers) ${kib(dist.chunksJs)}; source maps and licence notices ${mib(dist.other)}; **total ${mib(dist.total)}**.`,
  ].join('\n');
  return { id: 'steady', title: '3. Steady state', body, raw: { ...results, dist }, headline };
}
