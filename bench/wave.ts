/**
 * Table 4: a spot wave. N agent processes (each the built dist/main.js, each with its own fake IMDS
 * and its own instance, all registered in the same 4 cluster load balancers) against one moto behind
 * token buckets shaped like AWS's, sharing one fake Kubernetes API (Lease, Nodes, Pods) when they
 * coordinate. Every fake IMDS starts serving a spot notice within the same second (a two-minute
 * warning, as AWS gives).
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { events, isDrainEnd, rssShareMiB, spotNotice, type LogEvent } from './lib/agent.ts';
import { HOSTED_AGENTS_PER_PROCESS, launchCluster, MAX_STANDBYS, runPlans, type PlanWorld, type RunningCluster } from './lib/cluster.ts';
import type { BenchOptions, Section } from './lib/report.ts';
import { max, median, mmm, num, seconds, sum, table } from './lib/stats.ts';
import { TokenBuckets, type LimiterSpec } from './lib/aws.ts';

/** AWS's documented buckets where there are any (ELB and EC2 non-mutating), the issue's assumptions where not. */
export const AWS_LIKE_LIMITS: LimiterSpec = {
  describe: { burst: 40, refillPerSecond: 10 },
  mutate: { burst: 20, refillPerSecond: 4 },
  ec2Describe: { burst: 100, refillPerSecond: 20 },
  tagging: { burst: 20, refillPerSecond: 5 },
};
/** AWS does not document the tagging API's bucket: the same wave with it twice as large. */
const LARGER_TAGGING: LimiterSpec = { ...AWS_LIKE_LIMITS, tagging: { burst: 40, refillPerSecond: 10 } };

const NOTICE_MS = 120_000;
/** An agent's RSS in a wave of 100: 68 MiB at the median, 83 at most (node 20); memory for one agent process each. */
const AGENT_MIB = 75;

/**
 * `alone`: no Kubernetes, every agent drains its own node (as before the coordinator). `coordinated`:
 * one more agent, on a node that is not going away, holds the Lease; the dying nodes hand their drains
 * to it. `coordinator killed`: the same, with two standby agents on nodes that stay (candidates to take
 * over), and the coordinator SIGKILLed as its first deregistration goes out.
 */
const MODES = ['alone', 'coordinated', 'coordinator killed'] as const;
type Mode = (typeof MODES)[number];

function waveMode(name: string): Mode {
  const mode = MODES.find((m) => m === name);
  if (!mode) throw new Error(`WAVE_SMOKE_MODE=${name}: one of ${MODES.join(', ')}`);
  return mode;
}

interface Plan {
  readonly nodes: number;
  readonly mode: Mode;
  readonly limits: LimiterSpec;
  /** The dying nodes' agents, this many to a process; 1: a process each, as in a cluster. */
  readonly agentsPerProcess?: number;
}

interface Wave {
  readonly nodes: number;
  readonly mode?: Mode;
  readonly limits?: LimiterSpec;
  /** Absent in older results: a process each. */
  readonly agentsPerProcess?: number;
  readonly noticeSpreadMs: number;
  /** Per node, from its notice to its final drain line, ms. */
  readonly outMs: number[];
  readonly lastDeregisterCallMs: number;
  readonly states: Record<string, number>;
  /** How the dying nodes' drains went: served by the coordinator, drained alone after a hand-over, or alone from the start. */
  readonly handOvers?: Record<string, number>;
  readonly whyAlone?: Record<string, number>;
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
  const plans: Plan[] = options.smoke
    ? // One wave; WAVE_SMOKE_NODES and WAVE_SMOKE_MODE measure a single row of the table on its own.
      [{ nodes: Number(process.env.WAVE_SMOKE_NODES ?? 4), mode: waveMode(process.env.WAVE_SMOKE_MODE ?? 'coordinated'), limits: AWS_LIKE_LIMITS, agentsPerProcess: Number(process.env.WAVE_SMOKE_HOSTED ?? 2) }]
    : [
        { nodes: 50, mode: 'alone', limits: AWS_LIKE_LIMITS },
        { nodes: 100, mode: 'coordinated', limits: AWS_LIKE_LIMITS },
        { nodes: 100, mode: 'coordinated', limits: LARGER_TAGGING },
        { nodes: 100, mode: 'coordinator killed', limits: AWS_LIKE_LIMITS },
        { nodes: 300, mode: 'coordinated', limits: AWS_LIKE_LIMITS },
        // Beyond about 150 nodes a process per node does not fit this machine's 2 cores (the agents, moto
        // and the proxy starve each other; the table says what was seen): the same waves, hosted.
        { nodes: 100, mode: 'coordinated', limits: AWS_LIKE_LIMITS, agentsPerProcess: HOSTED_AGENTS_PER_PROCESS },
        { nodes: 300, mode: 'coordinated', limits: AWS_LIKE_LIMITS, agentsPerProcess: HOSTED_AGENTS_PER_PROCESS },
        { nodes: 300, mode: 'coordinated', limits: LARGER_TAGGING, agentsPerProcess: HOSTED_AGENTS_PER_PROCESS },
        { nodes: 300, mode: 'coordinator killed', limits: AWS_LIKE_LIMITS, agentsPerProcess: HOSTED_AGENTS_PER_PROCESS },
      ];
  const { results: waves, skipped } = await runPlans(
    plans.map((plan) => ({ ...plan, label: plan.mode })),
    AGENT_MIB,
    (line) => options.log(`wave: ${line}`),
    (world, plan) => runWave(world, plan, options),
  );
  return [section(waves, skipped)];
}

async function runWave({ endpoint, aws, cluster }: PlanWorld, plan: Plan, options: BenchOptions): Promise<Wave> {
  const size = plan.nodes;
  const agentsPerProcess = plan.agentsPerProcess ?? 1;
  const label = `wave of ${size} (${plan.mode}${plan.limits === AWS_LIKE_LIMITS ? '' : ', tagging 40 +10/s'}${agentsPerProcess > 1 ? `, ${agentsPerProcess} agents per process` : ''})`;
  const killed = plan.mode === 'coordinator killed';
  const running = await launchCluster(endpoint, aws, cluster, { size, coordinated: plan.mode !== 'alone', standbys: killed ? MAX_STANDBYS : 0, agentsPerProcess });
  const { nodes: dying, imdses, startAllMs } = running;
  try {
    const idleRssMiB = dying.map(rssShareMiB);
    options.log(`${label}: all agents ready in ${seconds(startAllMs)}, idle RSS ${num(median(idleRssMiB))} MiB each (sum ${num(sum(idleRssMiB))} MiB)`);
    await sleep(3_000); // let the buckets be full and every agent be in its steady poll

    endpoint.setLimiter(new TokenBuckets(plan.limits));
    const mark = endpoint.stamps.length;
    const offsets = dying.map((a) => a.stderr().length);
    const noticeAt: number[] = [];
    const t0 = Date.now();
    for (const [i, imds] of imdses.entries()) {
      imds.set('meta-data/spot/instance-action', spotNotice(NOTICE_MS));
      noticeAt[i] = Date.now();
    }
    const noticeSpreadMs = Date.now() - t0;

    let coordinatorKilled = !killed;
    const ends: (LogEvent | undefined)[] = dying.map(() => undefined);
    const peak = dying.map(() => 0);
    let nextRssAt = 0;
    const until = t0 + NOTICE_MS + 10_000;
    while (ends.some((e) => e === undefined) && Date.now() < until) {
      await sleep(coordinatorKilled ? 250 : 10);
      if (!coordinatorKilled && endpoint.stamps.slice(mark).some((c) => c.action.startsWith('Deregister') && !c.throttled)) {
        running.coordinator!.child.kill('SIGKILL');
        coordinatorKilled = true;
        options.log(`  coordinator killed ${seconds(Date.now() - t0)} after the notices, as its first deregistration went out`);
      }
      // The memory every quarter of a second, and once per process: reading /proc for 300 agents every
      // 10 ms would take a core from the agents being measured.
      const sampleRss = Date.now() >= nextRssAt;
      if (sampleRss) nextRssAt = Date.now() + 250;
      const shares = new Map<number | undefined, number>();
      for (const [i, agent] of dying.entries()) {
        if (sampleRss && agent.alive()) {
          if (!shares.has(agent.child.pid)) shares.set(agent.child.pid, rssShareMiB(agent));
          peak[i] = Math.max(peak[i]!, shares.get(agent.child.pid)!);
        }
        if (ends[i] || !agent.stderr().includes('"msg":"drain ', offsets[i])) continue;
        ends[i] = events(agent, offsets[i]).find(isDrainEnd);
      }
    }
    endpoint.setLimiter(undefined);
    const calls = endpoint.stamps.slice(mark);
    const outMs = ends.map((e, i) => (e ? e.at - noticeAt[i]! : NaN));
    const count = (keys: string[]) => keys.reduce<Record<string, number>>((acc, key) => ({ ...acc, [key]: (acc[key] ?? 0) + 1 }), {});
    const states = count(ends.map((e) => e?.status.state ?? 'no final line'));
    const handOvers = count(ends.map((e) => e?.status.handOver?.outcome ?? 'alone from the start'));
    // Why a follower drained alone, with the numbers taken out so that like reasons count together.
    const whyAlone = count(ends.flatMap((e) => (e?.status.handOver?.outcome === 'drained-alone' ? [String(e.status.handOver.reason).replace(/\d+/g, 'N')] : [])));
    const callsBy: Record<string, number> = {};
    const throttledBy: Record<string, number> = {};
    for (const c of calls) {
      const key = `${c.service}:${c.action}`;
      callsBy[key] = (callsBy[key] ?? 0) + 1;
      if (c.throttled) throttledBy[key] = (throttledBy[key] ?? 0) + 1;
    }
    const wave: Wave = {
      nodes: size,
      mode: plan.mode,
      limits: plan.limits,
      ...(agentsPerProcess > 1 ? { agentsPerProcess } : {}),
      noticeSpreadMs,
      outMs,
      lastDeregisterCallMs: max(calls.filter((c) => c.action.startsWith('Deregister') && !c.throttled).map((c) => c.at - t0)),
      states,
      handOvers,
      whyAlone,
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
    options.log(
      `  every node out after ${seconds(max(outMs))} (median node ${seconds(median(outMs))}); ${wave.calls} calls, ${wave.throttled} throttled; states ${JSON.stringify(states)}; ${JSON.stringify(handOvers)}${Object.keys(whyAlone).length ? `; drained alone because ${JSON.stringify(whyAlone)}` : ''}`,
    );
    return wave;
  } finally {
    endpoint.setLimiter(undefined);
    if (process.env.WAVE_LOGS) keepLogs(process.env.WAVE_LOGS, label, running);
    await running.stop();
  }
}

/** WAVE_LOGS=<dir>: every agent's log of the wave, for a look at what happened (coordinator.log, node-<i>.log). */
function keepLogs(dir: string, label: string, running: RunningCluster): void {
  const waveDir = join(dir, label.replace(/[^a-z0-9]+/gi, '-'));
  mkdirSync(waveDir, { recursive: true });
  if (running.coordinator) writeFileSync(join(waveDir, 'coordinator.log'), running.coordinator.stderr());
  for (const [i, agent] of running.standbys.entries()) writeFileSync(join(waveDir, `standby-${i}.log`), agent.stderr());
  for (const [i, agent] of running.nodes.entries()) writeFileSync(join(waveDir, `node-${i}.log`), agent.stderr());
}

/**
 * What a wave with a process per node beyond this machine's size shows, read from its agents' logs
 * (WAVE_LOGS) on 2026-12-07: it measures the machine, not the design.
 */
function machineLimited(waves: Wave[]): string[] {
  const limited = waves.filter((w) => (w.agentsPerProcess ?? 1) === 1 && w.mode !== 'alone' && w.nodes > 150 && w.missedOwnDeadline > 0);
  return limited.map(
    (w) =>
      `\n${w.nodes} nodes with a process each is beyond this machine: ${w.nodes} Node processes, moto and the rate-limiting proxy share ${availableParallelism()} cores, and the emulated endpoint answered the coordinator's own calls after the SDK's request timeout (its logs: thousands of "could not list … TimeoutError", and hundreds of deregistrations retried), so it deregistered nothing within 30 s, the followers drained alone, and their calls met the same starved endpoint. The same waves with ${HOSTED_AGENTS_PER_PROCESS} agents to a process, whose agents run the same code, are served in seconds (the rows after it).`,
  );
}

export function waveSection(raw: { waves: Wave[]; skipped?: string[] }): Section {
  return section(raw.waves, raw.skipped ?? []);
}

function section(waves: Wave[], skipped: string[]): Section {
  // The nodes that missed end at their deadline, after every node that got out: the first ones are those out.
  const outOf = (w: Wave) => [...w.outMs].filter(Number.isFinite).sort((a, b) => a - b).slice(0, w.nodes - w.missedOwnDeadline);
  const everyOut = (w: Wave) => (w.missedOwnDeadline === 0 ? seconds(max(w.outMs)) : `**not all: ${w.nodes - w.missedOwnDeadline} of ${w.nodes} out by the deadline**`);
  const modeOf = (w: Wave) =>
    `${w.mode ?? 'alone'}${w.limits && w.limits.tagging.refillPerSecond !== AWS_LIKE_LIMITS.tagging.refillPerSecond ? `, tagging ${w.limits.tagging.burst} +${w.limits.tagging.refillPerSecond}/s` : ''}${(w.agentsPerProcess ?? 1) > 1 ? `, ${w.agentsPerProcess} agents per process` : ''}`;
  const handOvers = (w: Wave) => (w.handOvers ? Object.entries(w.handOvers).map(([outcome, n]) => `${n} ${outcome}`).join(', ') : 'all alone');
  const rows = waves.map((w) => [
    String(w.nodes),
    modeOf(w),
    everyOut(w),
    w.missedOwnDeadline === 0 ? mmm(w.outMs, seconds) : `${mmm(outOf(w), seconds)} (the ${w.nodes - w.missedOwnDeadline} that got out)`,
    seconds(w.lastDeregisterCallMs),
    String(w.calls),
    `${w.throttled} (${num((100 * w.throttled) / Math.max(1, w.calls))} %)`,
    num(w.calls / w.nodes, 1),
    String(w.missedOwnDeadline),
    handOvers(w),
    `${num(median(w.idleRssMiB))} / ${num(median(w.peakRssMiB))} (max ${num(max(w.peakRssMiB))}); sum ${num(sum(w.peakRssMiB))}`,
  ]);
  const actions = [...new Set(waves.flatMap((w) => Object.keys(w.callsBy)))].sort();
  const byAction = actions.map((a) => [a, ...waves.map((w) => `${w.callsBy[a] ?? 0} (${w.throttledBy[a] ?? 0} throttled)`)]);
  // The best and the worst measured wave, side by side: a headline never hides a node that missed.
  const describe = (w: Wave) =>
    w.missedOwnDeadline === 0
      ? `${w.nodes} nodes (${modeOf(w)}): every node out after ${seconds(max(w.outMs))} (median ${seconds(median(w.outMs))}), ${w.throttled} of ${w.calls} calls throttled`
      : `${w.nodes} nodes (${modeOf(w)}): **${w.missedOwnDeadline} of ${w.nodes} nodes missed their deadline** (${w.throttled} of ${w.calls} calls throttled)`;
  const rank = (w: Wave) => w.missedOwnDeadline * 1e9 + max(w.outMs.map((t) => (Number.isFinite(t) ? t : 1e8)));
  const ranked = [...waves].sort((a, b) => rank(a) - rank(b) || b.nodes - a.nodes);
  const best = ranked[0];
  const worst = ranked.at(-1);
  const headline = best && worst ? [`Spot waves against AWS-like rate limits: best ${describe(best)}${worst !== best ? `; worst ${describe(worst)}` : ''}`] : [];
  const body = [
    `Every dying node's fake IMDS starts serving a two-minute spot notice within ${mmm(waves.map((w) => w.noticeSpreadMs), (n) => `${Math.round(n)} ms`)} of each other; each agent's deadline is the notice's time less DEADLINE_MARGIN (15 s), so 105 s. Modes: *alone*, no Kubernetes, so every agent drains its own node (as before the coordinator); *coordinated*, one more agent, on a node that is not going away, holds the Lease in a fake Kubernetes API all agents share, and the dying nodes hand their drains to it; *coordinator killed*, the same with two more agents on nodes that stay (candidates to take over) and the coordinator SIGKILLed the moment its first deregistration is accepted. All agents share this machine's ${availableParallelism()} cores (in a cluster each has its own node's), so with a coordinator the dying nodes' agents run at nice 10: otherwise a hundred of them waking at the notice starve the coordinator for seconds. Rows marked *N agents per process* run the dying nodes' agents N to a process (\`bench/lib/agent-host.ts\`: the agent's own \`runAgent\`, each with its own configuration, IMDS, port, Kubernetes identity and logger), because beyond about 150 nodes a process each starves the coordinator on this machine however low their priority; the coordinator and the standbys always run the built agent in a process of their own. Their RSS column is each process's RSS shared among its agents. Rate limiter in front of moto (token buckets per API, a throttled call takes no token, answered \`400 Throttling: Rate exceeded\`): ELB and ELBv2 describe calls burst ${AWS_LIKE_LIMITS.describe.burst}, ${AWS_LIKE_LIMITS.describe.refillPerSecond}/s refill (ELB's documented non-mutating bucket); register/deregister ${AWS_LIKE_LIMITS.mutate.burst} +${AWS_LIKE_LIMITS.mutate.refillPerSecond}/s (assumed); tag:GetResources ${AWS_LIKE_LIMITS.tagging.burst} +${AWS_LIKE_LIMITS.tagging.refillPerSecond}/s (assumed; AWS does not document it, hence a row with twice that); EC2 DescribeInstances ${AWS_LIKE_LIMITS.ec2Describe.burst} +${AWS_LIKE_LIMITS.ec2Describe.refillPerSecond}/s (EC2's documented non-mutating bucket). Per-node times are the distribution over the wave's dying nodes (median, min–max), from each agent's final \`drain …\` line; one wave per row, not repeated.`,
    '',
    table(
      ['nodes', 'mode', 'every node out', 'per node: notice → out', 'last Deregister call accepted', 'AWS calls', 'throttled', 'calls per node', 'nodes not out by their deadline (105 s), so still registered when the instance dies at 120 s', 'drains', 'RSS per agent MiB: idle / peak (median), sum of peaks'],
      rows,
    ),
    ...(skipped.length ? ['', `Not measured as planned: ${skipped.join('; ')}.`] : []),
    ...machineLimited(waves),
    '',
    'Calls by API and action (throttled ones included in the count):',
    '',
    table(['API:action', ...waves.map((w) => `${w.nodes} nodes, ${modeOf(w)}`)], byAction),
  ].join('\n');
  return { id: 'wave', title: '4. Spot wave', body, raw: { limits: AWS_LIKE_LIMITS, waves, skipped }, headline };
}
