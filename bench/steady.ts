/**
 * Table 3: what an agent costs while nothing happens. Start-to-ready time (on a quiet machine), then
 * an idle window: AWS calls, IMDS requests, CPU time and RSS (from /proc), and the size of dist/.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { setTimeout as sleep } from 'node:timers/promises';
import { startFakeImds, type FakeImds } from '../test/fakes/imds.ts';
import { freePort } from '../test/helpers/moto.ts';
import { waitReady } from '../test/helpers/agent-harness.ts';
import { events, isDrainEnd, procSample, SECRET, spawnAgent, spotNotice, stopAgent, waitForLog, type ProcSample } from './lib/agent.ts';
import { REGION, seedClients, seedCluster, startEndpoint, type Cluster, type Endpoint } from './lib/aws.ts';
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

export interface SteadyResults {
  startups: Startup[];
  idle: Idle[];
}

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

function distSizes(): { files: { name: string; bytes: number }[]; total: number; mainGzip: number } {
  const files = readdirSync(DIST).map((name) => ({ name, bytes: statSync(join(DIST, name)).size }));
  return { files, total: sum(files.map((f) => f.bytes)), mainGzip: gzipSync(readFileSync(join(DIST, 'main.js'))).length };
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
        `Idle: ${num(sum(Object.values(idle.awsCalls)) / (idle.windowMs / 3_600_000))} AWS calls per node per hour, ${num(idle.imdsRequests / (idle.windowMs / 60_000))} IMDS requests per minute, ${num((100 * idle.cpuMs) / idle.windowMs, 2)} % of a core, ${num(median(idle.rssKiB) / 1024)} MiB RSS; ready ${ms(median(s.map((x) => x.toReadyz)))} after start; dist/ ${mib(dist.total)} (main.js ${mib(dist.files.find((f) => f.name === 'main.js')?.bytes ?? NaN)})`,
      ]
    : [];
  const body = [
    `One agent (\`node dist/main.js\`, defaults: POLL_INTERVAL 2 s, LOGLEVEL info) against moto and a fake IMDS. AWS calls are counted at the endpoint and **extrapolated** from the window to an hour; IMDS requests are counted by the fake IMDS; CPU is utime+stime from /proc/<pid>/stat over the window, RSS is VmRSS from /proc/<pid>/status sampled every 5 s. ${concurrentNote}`,
    '',
    table(['state', 'window', 'AWS calls in window → per node per hour', 'IMDS requests per minute', 'CPU', 'RSS median (min–max)', 'JS heap used (/metrics)'], rows),
    '',
    `Start to ready (${s.length} starts on a quiet machine; from spawning the process to …): "API listening" log line ${mmm(s.map((x) => x.toListening))}; "ready: watching IMDS for notices" log line ${mmm(s.map((x) => x.toReadyLog))}; first \`GET /readyz\` 200 (polled every 10 ms) **${mmm(s.map((x) => x.toReadyz))}**. CPU time used by then: ${mmm(s.map((x) => x.cpuMs))}. Start-up reads the identity from IMDS and makes one AWS call (ec2:DescribeInstances, for the cluster tag, because CLUSTERNAME is not set).`,
    '',
    `Size of what the image ships (\`dist/\` only; no node_modules: everything is bundled): ${dist.files.map((f) => `\`${f.name}\` ${kib(f.bytes)}`).join(', ')}; **total ${mib(dist.total)}**; main.js gzipped ${mib(dist.mainGzip)}. Of the bundle, the EC2 client alone is about 2.3 MiB (the agent uses two of its actions); a minified build is about 2.5 MiB (measured with esbuild, not what the build does today).`,
  ].join('\n');
  return { id: 'steady', title: '3. Steady state', body, raw: { ...results, dist }, headline };
}
