/**
 * Table 6: a cluster waiting for notices. 10 nodes' agents and as many more as this machine holds (up to
 * 300), coordinated through one fake Kubernetes API, none with a notice: what the whole cluster asks of
 * AWS and of the Kubernetes API per hour while nothing happens, and whether that grows with the nodes.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { rssShareMiB } from './lib/agent.ts';
import { HOSTED_AGENTS_PER_PROCESS, launchCluster, runPlans } from './lib/cluster.ts';
import type { BenchOptions, Section } from './lib/report.ts';
import { median, num, seconds, sum, table } from './lib/stats.ts';

/** For the measure only (1800 s by default): a window of a few minutes then holds several refreshes. */
const INVENTORY_REFRESH_S = 60;
const DEFAULT_INVENTORY_REFRESH_S = 1800;
/** An idle agent's RSS is 60–80 MiB (table 3); keep 1.5 GiB for moto, the fakes and this process. */
const AGENT_MIB = 100;

interface IdleCluster {
  readonly nodes: number;
  readonly coordinated: boolean;
  /** Absent in older results: a process each. */
  readonly agentsPerProcess?: number;
  readonly windowMs: number;
  readonly startAllMs: number;
  readonly awsCallsBy: Record<string, number>;
  /** Kubernetes API requests in the window, by what they were for. */
  readonly kubeRequestsBy: Record<string, number>;
  readonly rssMiB: number[];
}

export async function idleClusterBench(options: BenchOptions): Promise<Section[]> {
  const plans: { nodes: number; coordinated: boolean; agentsPerProcess?: number }[] = options.smoke
    ? [{ nodes: 3, coordinated: true }]
    : [
        { nodes: 10, coordinated: false },
        { nodes: 10, coordinated: true },
        { nodes: 100, coordinated: true },
        { nodes: 300, coordinated: true, agentsPerProcess: HOSTED_AGENTS_PER_PROCESS },
      ];
  const windowMs = options.smoke ? 3_000 : 180_000;
  const { results, skipped } = await runPlans(
    plans.map((plan) => ({ ...plan, label: plan.coordinated ? 'coordinated' : 'alone' })),
    AGENT_MIB,
    options.log,
    async ({ endpoint, aws, cluster }, plan): Promise<IdleCluster> => {
      const agentsPerProcess = plan.agentsPerProcess ?? 1;
      const running = await launchCluster(endpoint, aws, cluster, { size: plan.nodes, coordinated: plan.coordinated, agentsPerProcess, env: { INVENTORY_REFRESH: String(INVENTORY_REFRESH_S) } });
      try {
        // Past start-up: every agent's first inventory (if it keeps one) is behind it.
        await sleep(options.smoke ? 500 : 10_000);
        const awsMark = endpoint.stamps.length;
        const kubeMark = running.kube?.requests.length ?? 0;
        const from = Date.now();
        await sleep(windowMs);
        const measuredMs = Date.now() - from;
        const awsCallsBy = countBy(endpoint.stamps.slice(awsMark).map((call) => `${call.service}:${call.action}`));
        const kubeRequestsBy = countBy((running.kube?.requests.slice(kubeMark) ?? []).map((request) => `${request.method} ${kubeResource(request.path)}`));
        const rssMiB = running.nodes.map(rssShareMiB);
        options.log(`idle cluster of ${plan.nodes} (${plan.label}): ${sum(Object.values(awsCallsBy))} AWS calls, ${sum(Object.values(kubeRequestsBy))} Kubernetes API requests in ${seconds(measuredMs)}`);
        return { nodes: plan.nodes, coordinated: plan.coordinated, ...(agentsPerProcess > 1 ? { agentsPerProcess } : {}), windowMs: measuredMs, startAllMs: running.startAllMs, awsCallsBy, kubeRequestsBy, rssMiB };
      } finally {
        await running.stop();
      }
    },
  );
  return [section(results, skipped)];
}

export function idleClusterSection(raw: { results: IdleCluster[]; skipped: string[] }): Section {
  return section(raw.results, raw.skipped);
}

function section(results: IdleCluster[], skipped: string[]): Section {
  const perHour = (count: number, r: IdleCluster) => (count * 3_600_000) / r.windowMs;
  const list = (by: Record<string, number>, r: IdleCluster) =>
    Object.entries(by)
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([what, n]) => `${what} ${num(perHour(n, r))}`)
      .join(', ') || 'none';
  const rows = results.map((r) => {
    const aws = perHour(sum(Object.values(r.awsCallsBy)), r);
    const kube = perHour(sum(Object.values(r.kubeRequestsBy)), r);
    return [
      String(r.nodes),
      `${r.coordinated ? 'coordinated' : 'alone'}${(r.agentsPerProcess ?? 1) > 1 ? `, ${r.agentsPerProcess} agents per process` : ''}`,
      `**${num(aws)}** (${list(r.awsCallsBy, r)})`,
      `**${num((aws * INVENTORY_REFRESH_S) / DEFAULT_INVENTORY_REFRESH_S, 1)}**`,
      r.coordinated ? `**${num(kube)}** (${list(r.kubeRequestsBy, r)})` : 'n/a (no Kubernetes)',
      r.coordinated ? num(kube / r.nodes) : 'n/a',
      `${num(median(r.rssMiB))} MiB`,
    ];
  });
  const coordinated = results.filter((r) => r.coordinated);
  const awsPerHour = (r: IdleCluster) => (perHour(sum(Object.values(r.awsCallsBy)), r) * INVENTORY_REFRESH_S) / DEFAULT_INVENTORY_REFRESH_S;
  const headline = coordinated.length
    ? [
        `Idle cluster, coordinated: ${coordinated.map((r) => `${r.nodes} nodes ${num(awsPerHour(r), 1)} AWS calls per hour`).join(', ')} (at the default INVENTORY_REFRESH); Kubernetes API ${coordinated.map((r) => `${num(perHour(sum(Object.values(r.kubeRequestsBy)), r) / r.nodes)} requests per node per hour`).join(', ')}`,
      ]
    : [];
  const body = [
    `The agents of N nodes (plus the coordinator's node when coordinated), all ready and none given a notice, over a window of ${seconds(results[0]?.windowMs ?? NaN)} that starts 10 s after the last one was ready; counts are extrapolated to an hour. AWS calls are counted at the endpoint in front of moto (no rate limits), Kubernetes API requests at the fake API server. For the measure INVENTORY_REFRESH is ${INVENTORY_REFRESH_S} s, so the window holds a few refreshes; the column "at the default" scales the AWS calls to its default of ${DEFAULT_INVENTORY_REFRESH_S} s (only inventory refreshes call AWS while idle). *alone*: no Kubernetes, so every agent keeps its own inventory; *coordinated*: only the coordinator keeps one. The Kubernetes requests are the Lease (the holder renews it, every other agent reads it to know who coordinates and to take over when it expires) and each agent's watch of its own Node. A row *N agents per process* runs the nodes' agents N to a process (\`bench/lib/agent-host.ts\`, the same agent code with its own configuration each; the coordinator runs alone): its RSS column is each process's shared among its agents.`,
    '',
    table(
      ['nodes', 'mode', `AWS calls per hour, INVENTORY_REFRESH ${INVENTORY_REFRESH_S} s (by action)`, `AWS calls per hour at the default ${DEFAULT_INVENTORY_REFRESH_S} s`, 'Kubernetes API requests per hour (by request)', 'per node', 'RSS per agent (median)'],
      rows,
    ),
    ...(skipped.length ? ['', `Not measured as planned: ${skipped.join('; ')}.`] : []),
  ].join('\n');
  return { id: 'idle-cluster', title: '6. Idle cluster', body, raw: { results, skipped }, headline };
}

function countBy(keys: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const key of keys) counts[key] = (counts[key] ?? 0) + 1;
  return counts;
}

/** `/apis/coordination.k8s.io/v1/namespaces/x/leases/y` → `lease`; a watch is named as one. */
function kubeResource(path: string): string {
  const [route = '', query = ''] = path.split('?');
  const resource = /\/(leases|nodes|pods|events|endpointslices)(\/|$)/.exec(route)?.[1] ?? route;
  return /(^|&)watch=(1|true)/.test(query) ? `watch ${resource}` : resource;
}
