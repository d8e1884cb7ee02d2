/**
 * A cluster of agent processes, one per node (each the built dist/main.js with its own fake IMDS and its
 * own instance), optionally sharing one fake Kubernetes API (Lease, Nodes, Pods) so that they coordinate:
 * then one more agent, on a node of its own that no test gives a notice, starts first and holds the Lease.
 */
import { mkdtempSync } from 'node:fs';
import { freemem, setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startFakeImds, type FakeImds } from '../../test/fakes/imds.ts';
import { makeNode, makePod, startFakeKube, type FakeKube } from '../../test/fakes/kube.ts';
import { freePort } from '../../test/helpers/moto.ts';
import { waitReady } from '../../test/helpers/agent-harness.ts';
import { SECRET, spawnAgent, spawnHostedAgents, stopAgent, type AgentProcess } from './agent.ts';
import { REGION, registerNodes, seedClients, seedCluster, startEndpoint, type Cluster, type Endpoint, type SeedClients } from './aws.ts';
import { chunks, pool } from '../../agent/aws/batches.ts';

/** Where every plan runs: one moto behind the rate-limiting endpoint, seeded once for the largest plan. */
export interface PlanWorld {
  readonly endpoint: Endpoint;
  readonly aws: SeedClients;
  readonly cluster: Cluster;
}

/**
 * Runs each plan in turn, each with as many of its nodes as this machine's free memory holds at
 * `agentMiB` per agent, or HOSTED_AGENT_MIB for a plan that hosts several agents to a process (keeping
 * 1.5 GiB for moto, the fakes and the benchmark): `skipped` says which plans were measured smaller, and why.
 */
export async function runPlans<P extends { readonly nodes: number; readonly label: string; readonly agentsPerProcess?: number }, R>(
  plans: readonly P[],
  agentMiB: number,
  log: (line: string) => void,
  run: (world: PlanWorld, plan: P) => Promise<R>,
): Promise<{ results: R[]; skipped: string[] }> {
  const endpoint = await startEndpoint();
  const results: R[] = [];
  const skipped: string[] = [];
  try {
    const aws = seedClients(endpoint.moto.url);
    // More nodes than the largest plan: the coordinator's and the standbys'.
    const cluster = await seedCluster(aws, Math.max(...plans.map((plan) => plan.nodes)) + 1 + MAX_STANDBYS);
    for (const plan of plans) {
      const perAgent = (plan.agentsPerProcess ?? 1) > 1 ? HOSTED_AGENT_MIB : agentMiB;
      const size = Math.min(plan.nodes, Math.floor((freemem() - 1.5 * 2 ** 30) / (perAgent * 2 ** 20)) - 1);
      if (size < plan.nodes) {
        skipped.push(`${plan.nodes} nodes (${plan.label}) would need about ${plan.nodes * perAgent} MiB at ${perAgent} MiB an agent, ${Math.round(freemem() / 2 ** 20)} MiB are free: measured ${size} instead`);
        log(skipped.at(-1)!);
      }
      if (size >= 1) results.push(await run({ endpoint, aws, cluster }, { ...plan, nodes: size }));
    }
  } finally {
    await endpoint.close();
  }
  return { results, skipped };
}

/**
 * Waves and idle clusters of 300 do not fit this machine with a process per node (2 cores, 75–100 MiB
 * an agent): those rows run the nodes' agents this many to a process (bench/lib/agent-host.ts, the same
 * agent code with a configuration each), at about this much memory an agent (generously; measured 19).
 */
export const HOSTED_AGENTS_PER_PROCESS = 10;
export const HOSTED_AGENT_MIB = 30;

/** At most this many standby agents (see launchCluster). */
export const MAX_STANDBYS = 2;

export const NAMESPACE = 'kube-system';
export const LEASE = 'hasta-la-vista-coordinator';

export interface RunningCluster {
  /** The agents of the nodes that may get notices, in node order. */
  readonly nodes: readonly AgentProcess[];
  readonly imdses: readonly FakeImds[];
  /** With a fake Kubernetes API only. */
  readonly coordinator?: AgentProcess;
  /** Agents on nodes that stay, which may take over from the coordinator. */
  readonly standbys: readonly AgentProcess[];
  readonly kube?: FakeKube;
  /** From the first spawn until every agent was ready. */
  readonly startAllMs: number;
  stop(): Promise<void>;
}

/**
 * `size` nodes' agents, ready; with `coordinated`, the Lease held by the extra node's agent first, and
 * `standbys` more agents on nodes that stay (up to MAX_STANDBYS), candidates to take over from it.
 */
export async function launchCluster(
  endpoint: Endpoint,
  aws: SeedClients,
  cluster: Cluster,
  {
    size,
    coordinated,
    standbys = 0,
    env = {},
    agentsPerProcess = 1,
    node = process.execPath,
  }: {
    size: number;
    coordinated: boolean;
    standbys?: number;
    env?: Record<string, string>;
    /** The runtime every agent runs on (benchmarks compare Node versions); this process's by default. */
    node?: string;
    /** The dying nodes' agents, this many to a process (bench/lib/agent-host.ts); the coordinator and standbys each run alone. */
    agentsPerProcess?: number;
  },
): Promise<RunningCluster> {
  if (standbys > MAX_STANDBYS || (standbys > 0 && !coordinated)) throw new Error(`launchCluster: ${standbys} standbys (at most ${MAX_STANDBYS}, and only coordinated)`);
  const nodes = cluster.nodes.slice(0, size + (coordinated ? 1 + standbys : 0));
  await registerNodes(aws, cluster, nodes);
  const kube = coordinated ? await startFakeKube({ token: 'bench-kube-token' }) : undefined;
  const kubeconfig = kube?.writeKubeconfig(join(mkdtempSync(join(tmpdir(), 'hlv-cluster-')), 'kubeconfig'));
  const names = nodes.map((_node, i) => ({ node: `ip-bench-${i}.ec2.internal`, pod: `hasta-la-vista-${String(i).padStart(5, '0')}` }));
  for (const [i, node] of nodes.entries()) {
    kube?.setNode(makeNode(names[i]!.node, { providerID: `aws:///us-east-1a/${node.id}` }));
    kube?.setPod(makePod(NAMESPACE, names[i]!.pod, { nodeName: names[i]!.node }));
  }
  const imdses = await Promise.all(nodes.map((node) => startFakeImds({ instanceId: node.id, region: REGION, vpcId: cluster.vpcId, privateIp: node.ip })));
  const ports = await Promise.all(nodes.map(() => freePort()));
  const all: AgentProcess[] = [];
  const envOf = (i: number): Record<string, string> => ({
    PORT: String(ports[i]!),
    AWS_ENDPOINT_URL: endpoint.proxy.url,
    AWS_EC2_METADATA_SERVICE_ENDPOINT: imdses[i]!.url,
    SECRET,
    LOGLEVEL: 'info',
    ...(kube ? { KUBECONFIG: kubeconfig!, NODE_NAME: names[i]!.node, POD_NAME: names[i]!.pod, POD_NAMESPACE: NAMESPACE, HOST_IP: '127.0.0.1' } : {}),
    ...env,
  });
  const spawn = (i: number) => (all[i] = spawnAgent(ports[i]!, envOf(i), node));
  const stop = async () => {
    await Promise.all(all.filter(Boolean).map(stopAgent));
    await Promise.all(imdses.map((imds) => imds.close()));
    await kube?.close();
  };
  try {
    const startedAt = Date.now();
    if (kube) {
      await waitReady(spawn(size), 60_000);
      while (kube.lease(NAMESPACE, LEASE)?.spec?.holderIdentity !== names[size]!.pod) await sleep(100);
      for (let i = size + 1; i <= size + standbys; i++) await waitReady(spawn(i), 60_000);
    }
    // Start-up is CPU-bound (loading the bundle): a few at a time, so none of them times out. Here all
    // the agents share this machine's few cores, where in a cluster each has its own node's: with a
    // coordinator, the others run at a lower priority so that it is not starved by a hundred of them.
    const groups = chunks([...Array(size).keys()], agentsPerProcess);
    await pool(groups, 6, async (group) => {
      const agents = agentsPerProcess === 1 ? [spawn(group[0]!)] : spawnHostedAgents(group.map(envOf), node);
      for (const [j, agent] of agents.entries()) all[group[j]!] = agent;
      if (coordinated) setPriority(agents[0]!.child.pid!, 10);
      for (const agent of agents) await waitReady(agent, 60_000);
    });
    return { nodes: all.slice(0, size), imdses: imdses.slice(0, size), coordinator: kube ? all[size] : undefined, standbys: all.slice(size + 1), kube, startAllMs: Date.now() - startedAt, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}
