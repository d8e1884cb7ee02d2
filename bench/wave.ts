/**
 * Table 4: a spot wave. N agent processes (each the built dist/main.js, each with its own fake IMDS
 * and its own instance, all registered in the same 4 cluster load balancers) against one moto behind
 * a token-bucket rate limiter shaped like the ELB API's. Every fake IMDS starts serving a spot
 * notice within the same second (a two-minute warning, as AWS gives).
 */
import { freemem } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { startFakeImds, type FakeImds } from '../test/fakes/imds.ts';
import { freePort } from '../test/helpers/moto.ts';
import { waitReady } from '../test/helpers/agent-harness.ts';
import { events, isDrainEnd, procSample, SECRET, spawnAgent, spotNotice, stopAgent, type AgentProcess, type LogEvent } from './lib/agent.ts';

import type { BenchOptions, Section } from './lib/report.ts';
import { max, median, mmm, num, seconds, sum, table } from "./lib/stats.ts";
import { pool, REGION, registerNodes, seedClients, seedCluster, startEndpoint, TokenBuckets, type LimiterSpec } from "./lib/aws.ts";

export const ELB_LIKE_LIMITS: LimiterSpec = {
  describe: { burst: 40, refillPerSecond: 10 },
  mutate: { burst: 20, refillPerSecond: 5 },
  ec2Describe: { burst: 100, refillPerSecond: 20 },
};

const NOTICE_MS = 120_000;

interface Wave {
  readonly nodes: number;
  readonly noticeSpreadMs: number;
  /** Per node, from its notice to its final drain line, ms. */
  readonly outMs: number[];
  readonly lastDeregisterCallMs: number;
  readonly states: Record<string, number>;
  readonly calls: number;
  readonly throttled: number;
  readonly throttledBy: Record<string, number>;
  readonly callsBy: Record<string, number>;
  readonly missedOwnDeadline: number;
  readonly missedTwoMinutes: number;
  readonly idleRssMiB: number[];
  readonly peakRssMiB: number[];
  readonly startAllMs: number;
}

export async function waveBench(options: BenchOptions): Promise<Section[]> {
  const sizes = options.smoke ? [4] : [25, 50, 100];
  const endpoint = await startEndpoint();
  const waves: Wave[] = [];
  const skipped: string[] = [];
  try {
    const aws = seedClients(endpoint.moto.url);
    const cluster = await seedCluster(aws, Math.max(...sizes));
    for (const planned of sizes) {
      // An agent's RSS peaks near 175 MiB; keep 1.5 GiB for moto and this process.
      const fits = Math.floor((freemem() - 1.5 * 2 ** 30) / (180 * 2 ** 20));
      const size = Math.min(planned, fits);
      if (size < planned) {
        skipped.push(`${planned} nodes would need about ${planned * 180} MiB for the agents, ${Math.round(freemem() / 2 ** 20)} MiB are free: measured ${size} instead`);
        options.log(`wave: ${skipped.at(-1)}`);
      }
      if (size < 1) continue;
      const nodes = cluster.nodes.slice(0, size);
      await registerNodes(aws, cluster, nodes);
      const imdses: FakeImds[] = await Promise.all(nodes.map((node) => startFakeImds({ instanceId: node.id, region: REGION, vpcId: cluster.vpcId, privateIp: node.ip })));
      const ports = await Promise.all(nodes.map(() => freePort()));
      const agents: AgentProcess[] = [];
      try {
        // Start-up is CPU-bound (loading the bundle): a few at a time, so none of them times out.
        const startedAt = Date.now();
        await pool(nodes, 6, async (_node, i) => {
          const agent = spawnAgent(ports[i]!, {
            AWS_ENDPOINT_URL: endpoint.proxy.url,
            AWS_EC2_METADATA_SERVICE_ENDPOINT: imdses[i]!.url,
            SECRET,
            LOGLEVEL: 'info',
          });
          agents[i] = agent;
          await waitReady(agent, 60_000);
        });
        const startAllMs = Date.now() - startedAt;
        const idleRssMiB = agents.map((a) => procSample(a.child.pid!).rssKiB / 1024);
        options.log(`wave of ${size}: all agents ready in ${seconds(startAllMs)}, idle RSS ${num(median(idleRssMiB))} MiB each (sum ${num(sum(idleRssMiB))} MiB)`);
        await sleep(3_000); // let the buckets be full and every agent be in its steady poll

        const limiter = new TokenBuckets(ELB_LIKE_LIMITS);
        endpoint.setLimiter(limiter);
        const mark = endpoint.stamps.length;
        const offsets = agents.map((a) => a.stderr().length);
        const noticeAt: number[] = [];
        const t0 = Date.now();
        for (const [i, imds] of imdses.entries()) {
          imds.set('meta-data/spot/instance-action', spotNotice(NOTICE_MS));
          noticeAt[i] = Date.now();
        }
        const noticeSpreadMs = Date.now() - t0;

        const ends: (LogEvent | undefined)[] = agents.map(() => undefined);
        const peak = agents.map(() => 0);
        const until = t0 + NOTICE_MS + 10_000;
        while (ends.some((e) => e === undefined) && Date.now() < until) {
          await sleep(250);
          for (const [i, agent] of agents.entries()) {
            if (agent.alive()) peak[i] = Math.max(peak[i]!, procSample(agent.child.pid!).rssKiB / 1024);
            if (ends[i] || !agent.stderr().includes('"msg":"drain ', offsets[i])) continue;
            ends[i] = events(agent, offsets[i]).find(isDrainEnd);
          }
        }
        endpoint.setLimiter(undefined);
        const calls = endpoint.stamps.slice(mark);
        const outMs = ends.map((e, i) => (e ? e.at - noticeAt[i]! : NaN));
        const states: Record<string, number> = {};
        for (const e of ends) states[e?.status.state ?? 'no final line'] = (states[e?.status.state ?? 'no final line'] ?? 0) + 1;
        const callsBy: Record<string, number> = {};
        const throttledBy: Record<string, number> = {};
        for (const c of calls) {
          const key = `${c.service}:${c.action}`;
          callsBy[key] = (callsBy[key] ?? 0) + 1;
          if (c.throttled) throttledBy[key] = (throttledBy[key] ?? 0) + 1;
        }
        const wave: Wave = {
          nodes: size,
          noticeSpreadMs,
          outMs,
          lastDeregisterCallMs: max(calls.filter((c) => c.action.startsWith('Deregister') && !c.throttled).map((c) => c.at - t0)),
          states,
          calls: calls.length,
          throttled: calls.filter((c) => c.throttled).length,
          throttledBy,
          callsBy,
          missedOwnDeadline: ends.filter((e) => e?.status.state !== 'deregistered').length,
          missedTwoMinutes: outMs.filter((t) => !(t <= NOTICE_MS)).length,
          idleRssMiB,
          peakRssMiB: peak,
          startAllMs,
        };
        waves.push(wave);
        options.log(
          `  every node out after ${seconds(max(outMs))} (median node ${seconds(median(outMs))}); ${wave.calls} calls, ${wave.throttled} throttled; states ${JSON.stringify(states)}`,
        );
      } finally {
        endpoint.setLimiter(undefined);
        await Promise.all(agents.filter(Boolean).map(stopAgent));
        await Promise.all(imdses.map((imds) => imds.close()));
      }
    }
  } finally {
    await endpoint.close();
  }
  return [section(waves, skipped)];
}

export function waveSection(raw: { waves: Wave[]; skipped?: string[] }): Section {
  return section(raw.waves, raw.skipped ?? []);
}

function section(waves: Wave[], skipped: string[]): Section {
  // The nodes that missed end at their deadline, after every node that got out: the first ones are those out.
  const outOf = (w: Wave) => [...w.outMs].filter(Number.isFinite).sort((a, b) => a - b).slice(0, w.nodes - w.missedOwnDeadline);
  const everyOut = (w: Wave) => (w.missedOwnDeadline === 0 ? seconds(max(w.outMs)) : `**not all: ${w.nodes - w.missedOwnDeadline} of ${w.nodes} out by the deadline**`);
  const rows = waves.map((w) => [
    String(w.nodes),
    everyOut(w),
    w.missedOwnDeadline === 0 ? mmm(w.outMs, seconds) : `${mmm(outOf(w), seconds)} (the ${w.nodes - w.missedOwnDeadline} that got out)`,
    seconds(w.lastDeregisterCallMs),
    String(w.calls),
    `${w.throttled} (${num((100 * w.throttled) / Math.max(1, w.calls))} %)`,
    num(w.calls / w.nodes, 1),
    String(w.missedOwnDeadline),
    `${num(median(w.idleRssMiB))} / ${num(median(w.peakRssMiB))} (max ${num(max(w.peakRssMiB))}); sum ${num(sum(w.peakRssMiB))}`,
  ]);
  const actions = [...new Set(waves.flatMap((w) => Object.keys(w.callsBy)))].sort();
  const byAction = actions.map((a) => [a, ...waves.map((w) => `${w.callsBy[a] ?? 0} (${w.throttledBy[a] ?? 0} throttled)`)]);
  const last = waves.at(-1);
  const headline = last
    ? [
        last.missedOwnDeadline === 0
          ? `Spot wave of ${last.nodes} nodes against ELB-like rate limits: every node out after ${seconds(max(last.outMs))} (median node ${seconds(median(last.outMs))}), ${last.throttled} throttled calls, no node missed its deadline`
          : `Spot wave of ${last.nodes} nodes against ELB-like rate limits: **${last.missedOwnDeadline} of ${last.nodes} nodes missed their deadline** (${last.throttled} of ${last.calls} calls throttled)`,
      ]
    : [];
  const body = [
    `One wave per size: every node's fake IMDS starts serving a two-minute spot notice within ${mmm(waves.map((w) => w.noticeSpreadMs), (n) => `${Math.round(n)} ms`)} of each other; each agent's deadline is the notice's time less DEADLINE_MARGIN (15 s), so 105 s. Rate limiter in front of moto (token buckets per API, a throttled call takes no token, answered \`400 Throttling: Rate exceeded\`): ELB and ELBv2 describe calls ${ELB_LIKE_LIMITS.describe.refillPerSecond}/s refill, burst ${ELB_LIKE_LIMITS.describe.burst} (ELB's documented non-mutating bucket); register/deregister ${ELB_LIKE_LIMITS.mutate.refillPerSecond}/s, burst ${ELB_LIKE_LIMITS.mutate.burst} (assumed: lower than describe); tag:GetResources as ELB describe (assumed); EC2 DescribeInstances ${ELB_LIKE_LIMITS.ec2Describe.refillPerSecond}/s, burst ${ELB_LIKE_LIMITS.ec2Describe.burst} (EC2's documented non-mutating bucket). Per-node times are the distribution over the wave's nodes (median, min–max), from each agent's final \`drain …\` line; one wave per size, not repeated.`,
    '',
    table(
      ['nodes', 'every node out', 'per node: notice → out', 'last Deregister call accepted', 'AWS calls', 'throttled', 'calls per node', 'nodes not out by their deadline (105 s), so still registered when the instance dies at 120 s', 'RSS per agent MiB: idle / peak (median), sum of peaks'],
      rows,
    ),
    ...(skipped.length ? ['', `Not measured as planned: ${skipped.join('; ')}.`] : []),
    '',
    'Calls by API and action (throttled ones included in the count):',
    '',
    table(['API:action', ...waves.map((w) => `${w.nodes} nodes`)], byAction),
  ].join('\n');
  return { id: 'wave', title: '4. Spot wave', body, raw: { limits: ELB_LIKE_LIMITS, waves, skipped }, headline };
}
