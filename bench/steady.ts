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
import { events, isDrainEnd, procSample, SECRET, spawnAgent, spotNotice, stopAgent, waitForLog, type AgentProcess, type ProcSample } from './lib/agent.ts';
import { CLUSTER, REGION, registerNodes, seedClients, seedCluster, startEndpoint, type Cluster, type Endpoint } from './lib/aws.ts';
import { launchCluster } from './lib/cluster.ts';
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

/**
 * What an agent keeps while it waits decides what it has loaded: an agent alone (no Kubernetes access)
 * and a coordinator keep the cluster's inventory, so the AWS SDK and its ELB, ELBv2 and tagging clients
 * are loaded; a follower (every node but one in a coordinated cluster, the chart's default) keeps none.
 */
type Role = 'alone' | 'follower' | 'coordinator';

const ROLE_LABELS: Record<Role, string> = {
  alone: 'alone (no Kubernetes access): keeps its own inventory',
  follower: "follower: every node but the coordinator's, in a coordinated cluster (the chart's default)",
  coordinator: "coordinator: holds the Lease, keeps the cluster's inventory",
};

/** CLUSTERNAME empty (the chart's default) has every agent read it from its instance's tags at start, with the EC2 client. */
type ClusterName = 'looked up in EC2 at start' | 'CLUSTERNAME set';

/** One idle agent's memory, on one runtime, in one role. */
interface Footprint {
  readonly runtime: string;
  readonly role: Role;
  readonly clusterName: ClusterName;
  readonly rssKiB: number[];
  readonly rssAnonKiB: number[];
  readonly rssFileKiB: number[];
  /** Sampled over this window, after the agent had been ready for settleMs. */
  readonly windowMs: number;
  readonly settleMs: number;
}

export interface IdleResults {
  /** Made between start and the first window: the cluster's name, and the inventory an agent alone keeps. */
  startupAwsCalls: Record<string, number>;
  windows: Idle[];
}

export interface SteadyResults {
  startups: Startup[];
  idle: IdleResults;
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
 * Idle RSS on this machine's Node and on the image's, in each role, with the chart's default
 * configuration (CLUSTERNAME empty: one ec2:DescribeInstances at start reads it from the instance's tags),
 * and a coordinated cluster again with CLUSTERNAME set. A coordinator and its follower share a fake
 * Kubernetes API and are sampled over the same window.
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
  const endpoint = await startEndpoint();
  const aws = seedClients(endpoint.moto.url);
  // A node alone, and a coordinator's with a follower's.
  const cluster = await seedCluster(aws, 3);
  const footprints: Footprint[] = [];
  /** Samples each agent (by role) over one window, after it has settled. */
  const sample = async (runtime: string, clusterName: ClusterName, agents: Partial<Record<Role, AgentProcess>>): Promise<void> => {
    await sleep(settleMs);
    const sampled = Object.entries(agents).map(([role, agent]) => ({ role: role as Role, pid: agent.child.pid!, samples: [] as ProcSample[] }));
    const until = Date.now() + windowMs;
    for (;;) {
      for (const agent of sampled) agent.samples.push(procSample(agent.pid));
      if (Date.now() >= until) break;
      await sleep(Math.min(5_000, until - Date.now()));
    }
    for (const { role, samples } of sampled) {
      footprints.push({ runtime, role, clusterName, rssKiB: samples.map((x) => x.rssKiB), rssAnonKiB: samples.map((x) => x.rssAnonKiB), rssFileKiB: samples.map((x) => x.rssFileKiB), windowMs, settleMs });
      options.log(`idle RSS, ${runtime}, ${role}, ${clusterName}: ${num(median(samples.map((x) => x.rssKiB)) / 1024, 1)} MiB`);
    }
  };
  try {
    for (const runtime of runtimes) {
      const node = cluster.nodes.at(-1)!;
      await registerNodes(aws, cluster, [node]);
      const imds = await startFakeImds({ instanceId: node.id, region: REGION, vpcId: cluster.vpcId, privateIp: node.ip });
      const alone = spawnAgent(await freePort(), { AWS_ENDPOINT_URL: endpoint.proxy.url, AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url, SECRET }, runtime.node);
      try {
        await waitReady(alone, 30_000);
        await sample(runtime.label, 'looked up in EC2 at start', { alone });
      } finally {
        await stopAgent(alone);
        await imds.close();
      }
      for (const clusterName of ['looked up in EC2 at start', 'CLUSTERNAME set'] as const) {
        const env: Record<string, string> = clusterName === 'CLUSTERNAME set' ? { CLUSTERNAME: CLUSTER } : {};
        const coordinated = await launchCluster(endpoint, aws, cluster, { size: 1, coordinated: true, node: runtime.node, env });
        try {
          await sample(runtime.label, clusterName, { coordinator: coordinated.coordinator!, follower: coordinated.nodes[0]! });
        } finally {
          await coordinated.stop();
        }
      }
    }
  } finally {
    await endpoint.close();
  }
  return { footprints, ...(footprintNote ? { footprintNote } : {}) };
}

/** An idle agent over a window; then the same agent after draining its own node (the keep-out re-check runs). */
/** Calls counted by `service:action`. */
function byAction(calls: readonly { readonly service: string; readonly action: string }[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const call of calls) counts[`${call.service}:${call.action}`] = (counts[`${call.service}:${call.action}`] ?? 0) + 1;
  return counts;
}

export async function idleBench(options: BenchOptions): Promise<IdleResults> {
  const windowMs = options.smoke ? 4_000 : 180_000;
  const drainedWindowMs = options.smoke ? 4_000 : 65_000;
  const { endpoint, imds } = await world();
  const results: Idle[] = [];
  let startupAwsCalls: Record<string, number> = {};
  const agent = spawnAgent(await freePort(), { AWS_ENDPOINT_URL: endpoint.proxy.url, AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url, SECRET });
  try {
    await waitReady(agent, 30_000);
    await sleep(options.smoke ? 500 : 5_000);
    startupAwsCalls = byAction(endpoint.stamps);
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
  return { startupAwsCalls, windows: results };

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
    const awsCalls = byAction(endpoint.stamps.slice(mark));
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
  const rows = results.idle.windows.map((idle) => {
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
  const idle = results.idle.windows[0];
  const startupCalls = results.idle.startupAwsCalls;
  const startupCallList = `${sum(Object.values(startupCalls))} (${Object.entries(startupCalls).map(([a, n]) => `${a} ${n}`).join(', ')})`;
  const headline = idle
    ? [
        `Idle (an agent alone): ${sum(Object.values(startupCalls))} AWS calls at start (the cluster's name, the inventory it keeps), ${num(sum(Object.values(idle.awsCalls)) / (idle.windowMs / 3_600_000))} extrapolated per hour while waiting (the inventory's refresh every INVENTORY_REFRESH excepted: table 6), ${num(idle.imdsRequests / (idle.windowMs / 60_000))} IMDS requests per minute, ${num((100 * idle.cpuMs) / idle.windowMs, 2)} % of a core, ${num(median(idle.rssKiB) / 1024)} MiB RSS; ready ${ms(median(s.map((x) => x.toReadyz)))} after start; dist/ ${mib(dist.total)} (main.js ${mib(dist.mainJs)})`,
        ...(results.footprints?.length ? [`Idle RSS by runtime and role (goal ≤ ${IDLE_RSS_GOAL_MIB} MiB): ${results.footprints.map((f) => `${f.runtime.replace(/ \(.*\)$/, '')} ${f.role}${f.clusterName === 'CLUSTERNAME set' ? ' (CLUSTERNAME set)' : ''} ${num(median(f.rssKiB) / 1024, 1)} MiB`).join(', ')}`] : []),
      ]
    : [];
  const footprintRows = (results.footprints ?? []).map((f) => {
    const rss = median(f.rssKiB) / 1024;
    return [
      f.runtime,
      ROLE_LABELS[f.role],
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
        `Idle RSS by runtime and role: agents waiting for a notice, with the chart's default configuration (CLUSTERNAME empty, so one ec2:DescribeInstances at start reads the cluster's name, loading the AWS SDK's core and the EC2 client for good), then a coordinated cluster with CLUSTERNAME set; sampled every 5 s over ${num((results.footprints[0]?.windowMs ?? NaN) / 1000)} s after ${num((results.footprints[0]?.settleMs ?? NaN) / 1000)} s of settling (VmRSS, and its two parts RssAnon and RssFile from /proc/<pid>/status). An agent alone and a coordinator keep the cluster's inventory, so they hold the AWS SDK with its ELB, ELBv2 and tagging clients; a follower keeps none. These agents reach the fake Kubernetes API through a kubeconfig and so load the YAML parser, which an agent in a pod (its service account) never does (about 1 MiB less there); but they speak plain HTTP to it and to AWS (moto), where in a cluster both are TLS: one kept-alive HTTPS connection with its CA costs about 0.7 MiB more than HTTP on Node 20 and 1.9 MiB on Node 22 (measured apart from the agent), so an agent in a pod uses about as much as these, or up to 1 MiB more. File-backed pages are mostly the node binary's own (an idle Node process with an HTTP server and nothing else: Node 20 44 MiB RSS, 37 MiB of it file-backed; Node 22 50 MiB, 41 MiB file-backed); they are shared by every process running that binary and can be reclaimed under pressure, but count in RSS. Goal: ${IDLE_RSS_GOAL_MIB} MiB.${results.footprintNote ? ` ${results.footprintNote}` : ''}`,
        '',
        table(['runtime', 'role', 'cluster name', 'RSS median (min–max)', 'anonymous', 'file-backed', `≤ ${IDLE_RSS_GOAL_MIB} MiB`], footprintRows),
      ]
    : [];
  const body = [
    `One agent (\`node dist/main.js\`, defaults: POLL_INTERVAL 2 s, LOGLEVEL info) against moto and a fake IMDS. AWS calls are counted at the endpoint and **extrapolated** from the window to an hour; IMDS requests are counted by the fake IMDS; CPU is utime+stime from /proc/<pid>/stat over the window, RSS is VmRSS from /proc/<pid>/status sampled every 5 s. ${concurrentNote}`,
    '',
    table(['state', 'window', 'AWS calls in window → per node per hour', 'IMDS requests per minute', 'CPU', 'RSS median (min–max)', 'JS heap used (/metrics)'], rows),
    '',
    `Before the first window, from start until ready and settled: ${startupCallList} AWS calls: the cluster's name (CLUSTERNAME is not set) and the inventory an agent alone keeps, with each load balancer's deregistration delay. It refreshes that inventory every INVENTORY_REFRESH (30 min by default), beyond these windows, so their per-hour figures leave it out: table 6 measures what it costs per node and hour, alone and coordinated.`,
    ...footprints,
    '',
    `Start to ready (${s.length} starts on a quiet machine; from spawning the process to …): "API listening" log line ${mmm(s.map((x) => x.toListening))}; "ready: watching IMDS for notices" log line ${mmm(s.map((x) => x.toReadyLog))}; first \`GET /readyz\` 200 (polled every 10 ms) **${mmm(s.map((x) => x.toReadyz))}**. CPU time used by then: ${mmm(s.map((x) => x.cpuMs))}. Start-up reads the identity from IMDS and makes one AWS call (ec2:DescribeInstances, for the cluster tag, because CLUSTERNAME is not set).`,
    '',
    `Size of what the image ships (\`dist/\` only; no node_modules: everything is bundled and minified): \`main.js\`, which every agent loads at start, ${kib(dist.mainJs)} (gzipped ${kib(dist.mainGzip)}); the chunks loaded on first use (each AWS SDK client with the SDK's core, the credential providers) ${kib(dist.chunksJs)}; source maps and licence notices ${mib(dist.other)}; **total ${mib(dist.total)}**.`,
  ].join('\n');
  return { id: 'steady', title: '3. Steady state', body, raw: { ...results, dist }, headline };
}
