/**
 * Table 5: the HTTP API under load, from a small in-process load generator on loopback only, with a
 * bounded number of requests and a time bound. Rejected requests are measured twice: from one
 * address (which the agent answers with 429 after 10 failures) and spread over many loopback
 * addresses (127.0.0.0/8), so the 401 path itself is measured too.
 */
import { Agent as HttpAgent, request } from 'node:http';
import { startFakeImds } from '../test/fakes/imds.ts';
import { freePort } from '../test/helpers/moto.ts';
import { waitReady } from '../test/helpers/agent-harness.ts';
import { procSample, SECRET, spawnAgent, stopAgent } from './lib/agent.ts';
import { REGION, seedClients, seedCluster, startEndpoint } from './lib/aws.ts';
import type { BenchOptions, Section } from './lib/report.ts';
import { median, mmm, num, percentile, table } from './lib/stats.ts';

interface Load {
  readonly requests: number;
  readonly seconds: number;
  readonly rps: number;
  readonly p50: number;
  readonly p99: number;
  readonly codes: Record<string, number>;
  readonly agentCpuMs: number;
}

interface Scenario {
  readonly name: string;
  readonly runs: Load[];
  /** Legitimate reads measured at the same time (the flood scenario). */
  readonly alongside?: Load[];
}

interface LoadSpec {
  readonly path: (i: number) => string;
  readonly headers?: Record<string, string>;
  readonly concurrency: number;
  readonly maxRequests: number;
  readonly maxMs: number;
  /** Source address of request i (loopback), to look like many clients. */
  readonly localAddress?: (i: number) => string;
  /** false: a new connection for every request, as many distinct clients would open. */
  readonly keepAlive?: boolean;
}

/** Keep-alive connections per source address; requests issued by `concurrency` loops. */
async function load(port: number, spec: LoadSpec, pid: number): Promise<Load> {
  const agents = new Map<string, HttpAgent>();
  const agentFor = (address: string) => {
    let agent = agents.get(address);
    if (!agent) agents.set(address, (agent = new HttpAgent({ keepAlive: spec.keepAlive ?? true, maxSockets: spec.concurrency, localAddress: address })));
    return agent;
  };
  const latencies: number[] = [];
  const codes: Record<string, number> = {};
  let issued = 0;
  const cpuBefore = procSample(pid).cpuMs;
  const started = performance.now();
  const until = started + spec.maxMs;
  await Promise.all(
    Array.from({ length: spec.concurrency }, async () => {
      while (issued < spec.maxRequests && performance.now() < until) {
        const i = issued++;
        const address = spec.localAddress?.(i) ?? '127.0.0.1';
        const t = performance.now();
        const code = await new Promise<string>((resolve) => {
          const req = request({ host: '127.0.0.1', port, path: spec.path(i), headers: spec.headers, agent: agentFor(address), timeout: 10_000 }, (res) => {
            res.resume();
            res.on('end', () => resolve(String(res.statusCode)));
          });
          req.on('error', (error) => resolve(`error ${(error as NodeJS.ErrnoException).code ?? error.message}`));
          req.on('timeout', () => req.destroy(new Error('timeout')));
          req.end();
        });
        latencies.push(performance.now() - t);
        codes[code] = (codes[code] ?? 0) + 1;
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  for (const agent of agents.values()) agent.destroy();
  return {
    requests: latencies.length,
    seconds,
    rps: latencies.length / seconds,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    codes,
    agentCpuMs: procSample(pid).cpuMs - cpuBefore,
  };
}

export async function apiBench(options: BenchOptions): Promise<Section[]> {
  const reps = options.smoke ? 1 : 3;
  const maxRequests = options.smoke ? 300 : 20_000;
  const maxMs = options.smoke ? 2_000 : 8_000;
  const endpoint = await startEndpoint();
  const cluster = await seedCluster(seedClients(endpoint.moto.url), 1);
  const node = cluster.nodes[0]!;
  const imds = await startFakeImds({ instanceId: node.id, region: REGION, vpcId: cluster.vpcId, privateIp: node.ip });
  const port = await freePort();
  const agent = spawnAgent(port, { AWS_ENDPOINT_URL: endpoint.proxy.url, AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url, SECRET });
  const scenarios: Scenario[] = [];
  // A fresh block of loopback addresses for every run: the agent remembers failures per address.
  let block = 0;
  const manyAddresses = (i: number) => {
    const n = block * 2000 + Math.floor(i / 10); // 10 requests per address: all within its allowance
    return `127.${1 + Math.floor(n / 250) % 250}.${1 + (n % 250)}.${2 + block}`;
  };
  try {
    await waitReady(agent, 30_000);
    const drained = await agent.fetch(`/drain?id=${node.id}&wait=true`, { method: 'POST', headers: { authorization: `Bearer ${SECRET}` } });
    if (drained.status !== 200) throw new Error(`setup drain answered ${drained.status}: ${await drained.text()}`);
    const pid = agent.child.pid!;
    const authed = { path: () => `/drain/${node.id}`, headers: { authorization: `Bearer ${SECRET}` } };
    const wrong = { path: () => `/drain/${node.id}`, headers: { authorization: 'Bearer wrong-secret-0123456789' } };

    const run = async (name: string, spec: Omit<LoadSpec, 'maxRequests' | 'maxMs'>) => {
      const runs: Load[] = [];
      for (let rep = 0; rep < reps; rep++) {
        runs.push(await load(port, { ...spec, maxRequests, maxMs }, pid));
        block++;
      }
      scenarios.push({ name, runs });
      options.log(`api: ${name}: ${mmm(runs.map((r) => r.rps), (n) => num(n))} req/s, p99 ${mmm(runs.map((r) => r.p99), (n) => `${num(n, 2)} ms`)}, ${JSON.stringify(runs[0]!.codes)}`);
    };
    await run('authenticated `GET /drain/<id>` (200)', { ...authed, concurrency: 16 });
    await run('wrong secret, one client address (10 × 401, then 429)', { ...wrong, concurrency: 16, localAddress: () => `127.0.0.${100 + block}` });
    await run('wrong secret, spread over many loopback addresses (10 each: all 401; a new connection per request)', { ...wrong, concurrency: 16, localAddress: manyAddresses, keepAlive: false });

    // The attack case: a flood of wrong guesses from many addresses while the node's own preStop
    // hook (another address) reads its status.
    const flood: Load[] = [];
    const legit: Load[] = [];
    for (let rep = 0; rep < reps; rep++) {
      const [f, l] = await Promise.all([
        load(port, { ...wrong, concurrency: 16, localAddress: manyAddresses, keepAlive: false, maxRequests, maxMs }, pid),
        load(port, { ...authed, concurrency: 1, localAddress: () => '127.0.0.50', maxRequests: Math.floor(maxRequests / 10), maxMs }, pid),
      ]);
      flood.push(f);
      legit.push(l);
      block++;
    }
    scenarios.push({ name: 'flood of wrong secrets (many addresses) …', runs: flood, alongside: legit });
    options.log(`api: under flood: legit p99 ${mmm(legit.map((r) => r.p99), (n) => `${num(n, 2)} ms`)}`);
  } finally {
    await stopAgent(agent);
    await imds.close();
    await endpoint.close();
  }
  return [section(scenarios, reps)];
}

function section(scenarios: Scenario[], reps: number): Section {
  const f2 = (n: number) => num(n, 2);
  const codes = (runs: Load[]) =>
    Object.entries(runs[0]!.codes)
      .map(([code, n]) => `${code}: ${n}`)
      .join(', ');
  const row = (name: string, runs: Load[]) => [
    name,
    mmm(runs.map((r) => r.rps), (n) => num(n)),
    mmm(runs.map((r) => r.p50), f2),
    mmm(runs.map((r) => r.p99), f2),
    `${mmm(runs.map((r) => r.requests), (n) => num(n))} in ${mmm(runs.map((r) => r.seconds), (n) => `${num(n, 1)} s`)}`,
    codes(runs),
    mmm(runs.map((r) => (100 * r.agentCpuMs) / (r.seconds * 1000)), (n) => `${num(n)} %`),
  ];
  const rows: string[][] = [];
  for (const s of scenarios) {
    rows.push(row(s.alongside ? `${s.name} (16 connections)` : `${s.name}, 16 connections`, s.runs));
    if (s.alongside) rows.push(row('… and, at the same time, authenticated `GET /drain/<id>` from another address, 1 connection', s.alongside));
  }
  const authed = scenarios[0]!;
  const flood = scenarios.find((s) => s.alongside);
  const headline = [
    `HTTP API: ${num(median(authed.runs.map((r) => r.rps)))} authenticated status reads/s (p99 ${f2(median(authed.runs.map((r) => r.p99)))} ms)` +
      (flood ? `; under a flood of ${num(median(flood.runs.map((r) => r.rps)))} wrong-secret requests/s a legitimate read still answers with p99 ${f2(median(flood.alongside!.map((r) => r.p99)))} ms` : ''),
  ];
  const body = [
    `In-process load generator (node:http, keep-alive) on loopback against the agent's port; each run bounded to 20 000 requests or 8 s; ${reps} runs per row (median, min–max). Both processes share the machine's 2 cores, so these are lower bounds for the agent. "Agent CPU" is the agent process's CPU time during the run from /proc (100 % = one core). The agent answers ten failed attempts per client address with 401, then 429 for that address (one more attempt every 6 s); the many-address rows use a fresh 127.x.y.z source address for every 10 requests, so they measure the 401 path (SHA-256 and a constant-time comparison) itself, with a new connection for every request (as distinct clients would; keeping ~2000 idle keep-alive connections open from as many addresses made the agent reset connections in an earlier run, see the report).`,
    '',
    table(['requests', 'req/s', 'p50 ms', 'p99 ms', 'requests in', 'answers (first run)', 'agent CPU'], rows),
  ].join('\n');
  return { id: 'api', title: '5. HTTP API', body, raw: scenarios, headline };
}
