/**
 * Tables 1 and 2: how fast a spot notice becomes deregistration, and how many AWS calls a drain
 * makes, with more and more other load balancers in the region.
 *
 * One moto behind the counting proxy. The node is registered in the cluster's 4 load balancers (2
 * classic ELBs, a target group behind a tagged ALB, a tagged ip target group). For each run a fresh
 * agent starts (LOGLEVEL=debug), becomes ready, and after a random part of one poll interval (so the
 * notice lands at a random phase of the polling, as a real one does) the fake IMDS starts serving a
 * spot notice. The agent's log lines and the proxy's arrival times give the breakdown.
 */
import { DescribeTargetHealthCommand } from '@aws-sdk/client-elastic-load-balancing-v2';
import { setTimeout as sleep } from 'node:timers/promises';
import { startFakeImds } from '../test/fakes/imds.ts';
import { freePort } from '../test/helpers/moto.ts';
import { events, isDrainEnd, SECRET, spawnAgent, spotNotice, stopAgent, waitForLog } from './lib/agent.ts';
import { waitReady } from '../test/helpers/agent-harness.ts';
import { REGION, registerNodes, seedClients, seedCluster, seedOthers, startEndpoint, type Cluster, type Endpoint, type SeedClients } from './lib/aws.ts';
import type { BenchOptions, Section } from './lib/report.ts';
import { max, median, min, mmm, ms, num, seconds, sum, table } from './lib/stats.ts';

interface Run {
  readonly size: number;
  readonly poll: number;
  readonly fallback: boolean;
  /** All relative to the moment the notice appeared in IMDS, ms. */
  readonly seen: number;
  readonly drainStarted: number;
  readonly discovered: number;
  readonly lastDeregisterCall: number;
  readonly lastDeregistered: number;
  readonly allOut: number;
  readonly state: string;
  readonly loadBalancers: number;
  /** As the agent counted them (status.awsCalls): what it asked for. */
  readonly agentCalls: Record<string, number>;
  /** As the proxy saw them arrive between notice and the end of the drain (includes SDK retries). */
  readonly proxyCalls: Record<string, number>;
}

export async function regionBench(options: BenchOptions): Promise<Section[]> {
  const timingSizes = options.smoke ? [0, 20] : [0, 100, 1000];
  const callSizes = options.smoke ? [0, 20] : [0, 100, 1000, 5000];
  const polls = options.smoke ? [1] : [1, 2];
  const reps = options.smoke ? 1 : 5;

  const endpoint = await startEndpoint();
  const runs: Run[] = [];
  const rtts: Record<number, number[]> = {};
  const seeding: Record<number, number> = {};
  try {
    const aws = seedClients(endpoint.moto.url);
    const cluster = await seedCluster(aws, 1);
    const node = cluster.nodes[0]!;
    let seeded = 0;
    for (const size of [...new Set([...timingSizes, ...callSizes])].sort((a, b) => a - b)) {
      const t = Date.now();
      await seedOthers(aws, cluster, seeded, size);
      seeding[size] = Date.now() - t;
      seeded = size;
      options.log(`region: ${size} other load balancers and target groups (seeded in ${seconds(seeding[size]!)})`);
      rtts[size] = await roundTrips(endpoint, cluster);

      const timed = timingSizes.includes(size);
      for (const poll of timed ? polls : [2]) {
        for (let rep = 0; rep < (timed ? reps : options.smoke ? 1 : 2); rep++) {
          const run = await drainOnce(endpoint, aws, cluster, node, size, poll, false);
          runs.push(run);
          options.log(
            `  P=${poll}s run ${rep + 1}: seen ${ms(run.seen)}, last deregister call ${ms(run.lastDeregisterCall)}, all out ${ms(run.allOut)}, ${sum(Object.values(run.agentCalls))} calls (${run.state})`,
          );
        }
      }
      if (callSizes.includes(size)) {
        endpoint.denyTagging = true;
        try {
          const run = await drainOnce(endpoint, aws, cluster, node, size, 1, true);
          runs.push(run);
          options.log(`  fallback (tag:GetResources denied): all out ${ms(run.allOut)}, ${sum(Object.values(run.agentCalls))} calls (${run.state})`);
        } finally {
          endpoint.denyTagging = false;
        }
      }
    }
  } finally {
    await endpoint.close();
  }
  return [latencySection(runs, rtts, timingSizes, polls, reps), callsSection(runs, callSizes, seeding)];
}

/** The cost of one API round trip from a Node.js SDK client through the proxy to moto, ms. */
async function roundTrips(endpoint: Endpoint, cluster: Cluster): Promise<number[]> {
  const { elbv2 } = seedClients(endpoint.proxy.url);
  const times: number[] = [];
  for (let i = 0; i < 12; i++) {
    const t = performance.now();
    await elbv2.send(new DescribeTargetHealthCommand({ TargetGroupArn: cluster.groups[0]!.arn }));
    times.push(performance.now() - t);
  }
  elbv2.destroy();
  return times.slice(2); // the first calls open connections
}

async function drainOnce(endpoint: Endpoint, aws: SeedClients, cluster: Cluster, node: Cluster['nodes'][number], size: number, poll: number, fallback: boolean): Promise<Run> {
  await registerNodes(aws, cluster, [node]);
  const imds = await startFakeImds({ instanceId: node.id, region: REGION, vpcId: cluster.vpcId, privateIp: node.ip });
  const agent = spawnAgent(await freePort(), {
    AWS_ENDPOINT_URL: endpoint.proxy.url,
    AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url,
    SECRET,
    POLL_INTERVAL: String(poll),
    LOGLEVEL: 'debug',
  });
  try {
    await waitReady(agent, 30_000);
    await sleep(200 + Math.random() * poll * 1000);
    const offset = agent.stderr().length;
    const mark = endpoint.stamps.length;
    imds.set('meta-data/spot/instance-action', spotNotice(120_000));
    const t0 = Date.now();
    const end = await waitForLog(agent, isDrainEnd, '"msg":"drain ', 90_000, offset);
    const log = events(agent, offset);
    const at = (msg: string) => log.filter((e) => e.msg === msg).map((e) => e.at - t0);
    const calls = endpoint.stamps.slice(mark).filter((s) => s.at <= end.at + 5);
    const deregisterCalls = calls.filter((c) => c.action.startsWith('Deregister')).map((c) => c.at - t0);
    const proxyCalls: Record<string, number> = {};
    for (const call of calls) proxyCalls[`${call.service}:${call.action}`] = (proxyCalls[`${call.service}:${call.action}`] ?? 0) + 1;
    return {
      size,
      poll,
      fallback,
      seen: min(at('termination notice: draining this node')),
      drainStarted: min(at('drain started')),
      discovered: max(at('memberships found')),
      lastDeregisterCall: max(deregisterCalls),
      lastDeregistered: max(at('deregistered')),
      allOut: end.at - t0,
      state: end.status.state,
      loadBalancers: end.status.loadBalancers.length,
      agentCalls: end.status.awsCalls,
      proxyCalls,
    };
  } finally {
    await stopAgent(agent);
    await imds.close();
  }
}

function latencySection(runs: Run[], rtts: Record<number, number[]>, sizes: number[], polls: number[], reps: number): Section {
  const timed = runs.filter((r) => !r.fallback && sizes.includes(r.size) && polls.includes(r.poll));
  const rows: string[][] = [];
  const breakdown: string[][] = [];
  const headline: string[] = [];
  for (const poll of polls) {
    for (const size of sizes) {
      const group = timed.filter((r) => r.size === size && r.poll === poll);
      if (group.length === 0) continue;
      const rtt = median(rtts[size] ?? []);
      const expectedFloor = (poll * 1000) / 2 + rtt;
      const worstFloor = poll * 1000 + rtt;
      const toDeregister = group.map((r) => r.lastDeregisterCall);
      rows.push([
        `${poll} s`,
        String(size),
        mmm(toDeregister),
        mmm(group.map((r) => r.allOut)),
        `${ms(expectedFloor)} / ${ms(worstFloor)}`,
        `${ms(median(toDeregister) - expectedFloor)}`,
        `${ms(max(toDeregister) - worstFloor)}`,
        ms(rtt),
        group.every((r) => r.state === 'deregistered') ? `all ${group.length} deregistered` : group.map((r) => r.state).join(', '),
      ]);
      breakdown.push([
        `${poll} s`,
        String(size),
        mmm(group.map((r) => r.seen)),
        mmm(group.map((r) => r.drainStarted - r.seen)),
        mmm(group.map((r) => r.discovered - r.drainStarted)),
        mmm(group.map((r) => r.lastDeregisterCall - r.discovered)),
        mmm(group.map((r) => r.allOut - r.lastDeregisterCall)),
        mmm(group.map((r) => r.lastDeregisterCall - r.seen)),
      ]);
      if (size === 0 || size === 1000) {
        headline.push(
          `POLL_INTERVAL ${poll} s, ${size} other load balancers: notice → last Deregister call ${ms(median(toDeregister))} median (max ${ms(max(toDeregister))}), → all out ${ms(median(group.map((r) => r.allOut)))}`,
        );
      }
    }
  }
  const body = [
    `Each row: ${reps} drain(s), each with a fresh agent, the notice landing at a random phase of the IMDS polling. Times from the moment the fake IMDS starts serving the spot notice. "Last Deregister call" is its arrival at the endpoint (the proxy in front of moto); "all out" is the agent's final \`drain deregistered\` line, after DescribeInstanceHealth / DescribeTargetHealth confirmed every one of the 4 load balancers (moto has no deregistration delay, so this is the agent's own overhead, not connection draining).`,
    '',
    table(
      ['POLL_INTERVAL', 'other LBs + TGs', 'notice → last Deregister call', 'notice → all out', 'floor: expected / worst', 'median above expected floor', 'max above worst floor', 'one round trip', 'outcome'],
      rows,
    ),
    '',
    'Floor: a notice lands at a random moment of the polling, so the agent cannot see it sooner than half a poll interval on average (a whole one at worst), plus one API round trip for the Deregister call itself. "One round trip" is the median of 10 DescribeTargetHealth calls from a Node.js SDK client through the same proxy to moto, measured before the runs of each row.',
    '',
    '**Where the time goes** (median, min–max; each phase from the agent\'s own log lines at LOGLEVEL=debug, the last Deregister call from the proxy):',
    '',
    table(
      ['POLL_INTERVAL', 'other LBs + TGs', 'detection (notice → `termination notice`)', 'lookup (→ `drain started`: DescribeInstances)', 'discovery (→ last `memberships found`)', 'deregister (→ last Deregister call arrives)', 'confirm (→ `drain deregistered`)', 'agent total after detection'],
      breakdown,
    ),
  ].join('\n');
  return { id: 'latency', title: '1. Detection to deregistration', body, raw: { runs: timed, rtts }, headline };
}

function callsSection(runs: Run[], sizes: number[], seeding: Record<number, number>): Section {
  const actions = [...new Set(runs.flatMap((r) => Object.keys(r.proxyCalls)))].sort();
  const normal = (size: number) => runs.filter((r) => r.size === size && !r.fallback);
  const fallback = (size: number) => runs.filter((r) => r.size === size && r.fallback);
  const perAction = (group: Run[], action: string) => {
    if (group.length === 0) return 'n/a';
    const values = group.map((r) => r.proxyCalls[action] ?? 0);
    return min(values) === max(values) ? String(values[0] ?? 0) : mmm(values, (n) => num(n));
  };
  const total = (group: Run[]) => mmm(group.map((r) => sum(Object.values(r.proxyCalls))), (n) => num(n));
  const header = ['API:action', ...sizes.map((s) => `${s} others`), ...sizes.map((s) => `${s} others, tag:GetResources denied`)];
  const rows = actions.map((action) => [action, ...sizes.map((s) => perAction(normal(s), action)), ...sizes.map((s) => perAction(fallback(s), action))]);
  rows.push(['**total**', ...sizes.map((s) => `**${total(normal(s))}**`), ...sizes.map((s) => `**${total(fallback(s))}**`)]);
  rows.push(['runs', ...sizes.map((s) => String(normal(s).length)), ...sizes.map((s) => String(fallback(s).length))]);
  rows.push(['drain time on moto (notice seen → all out)', ...sizes.map((s) => mmm(normal(s).map((r) => r.allOut - r.seen))), ...sizes.map((s) => mmm(fallback(s).map((r) => r.allOut - r.seen)))]);
  const consistent = runs.every((r) => sum(Object.values(r.proxyCalls)) === sum(Object.values(r.agentCalls)) + 1);
  const big = Math.max(...sizes);
  const headline = [
    `AWS calls per drain: ${total(normal(0))} with 0 other load balancers and target groups in the region, ${total(normal(big))} with ${big} (with tag:GetResources denied, the fallback: ${total(fallback(0))} → ${total(fallback(big))})`,
  ];
  const body = [
    'Calls that reached the endpoint (the proxy in front of moto) from the moment the notice appeared until the drain\'s final log line, for one drain of the node\'s own instance (4 memberships), by API and action. ' +
      (consistent
        ? 'In every run this is exactly the drain status\'s `awsCalls` plus one: the `ec2:DescribeInstances` lookup of the node\'s addresses, made just before the drain starts. '
        : 'The drain status\'s `awsCalls` counts the same calls except the `ec2:DescribeInstances` lookup made before the drain starts (and any SDK retries). ') +
      '"Others": half classic ELBs, half target groups in the node\'s VPC, alternately untagged and tagged for another cluster; none is this cluster\'s. `elb:DescribeLoadBalancers` 3 = one batch for discovery, and one per classic ELB to confirm "out" (moto answers DescribeInstanceHealth for a deregistered instance with `Unknown`, which the agent double-checks).',
    '',
    table(header, rows),
    '',
    `The default path asks the Resource Groups Tagging API for the three cluster tag keys (three GetResources calls, one page each here), so the region's size does not change the count. Where \`tag:GetResources\` is denied, the agent falls back to listing everything and reading tags 20 at a time: that path grows with the region, as the right-hand columns show (the agent logs a warning saying so). Seeding moto took ${sizes.map((s) => `${seconds(seeding[s] ?? NaN)} to reach ${s}`).join(', ')} (parallel raw SDK calls, 24 at a time). Drain times on moto grow with the region because moto's GetResources and DescribeTags scan every resource on each call; that is the emulator's cost, not a call count.`,
  ].join('\n');
  return { id: 'calls', title: '2. AWS calls per drain', body, raw: { runs: runs.map(({ size, fallback, agentCalls, proxyCalls }) => ({ size, fallback, agentCalls, proxyCalls })) }, headline };
}
