/**
 * The reliability suites' shared rig: one moto per test file behind the fault-injecting, call-logging
 * proxy, a fresh seeded world and a fresh strict fake IMDS per test, the BUILT agent started against
 * them, and the assertions every scenario ends with: what is still registered, which load balancers
 * were asked to let go, and how often.
 *
 * Numbers for RELIABILITY.md: `record()` appends one JSON line per scenario to the file named by
 * RELIABILITY_REPORT (when set), and always prints them as a test diagnostic.
 */
import assert from 'node:assert/strict';
import { appendFileSync } from 'node:fs';
import type { TestContext } from 'node:test';
import type { DrainStatus } from '../../agent/drain/status.ts';
import { startAwsProxy, type AwsCall, type AwsProxy } from '../fakes/aws-proxy.ts';
import { startFakeImds, type FakeImds } from '../fakes/imds.ts';
import { REGION, registrations, seedWorld, type World } from '../fixtures/world.ts';
import { eventually, spawnAgent, waitReady, type AgentProcess } from './agent-harness.ts';
import { freePort, startMoto, type Moto } from './moto.ts';

export const SECRET = 'rel-Secret-5c1e9a7b3d2f4860';
export const BEARER = { authorization: `Bearer ${SECRET}` } as const;
export const SPOT = 'meta-data/spot/instance-action';
export const ASG = 'meta-data/autoscaling/target-lifecycle-state';

/** The node's memberships a drain of everything must remove: cluster-tagged, in its VPC. */
export const selfInScope = (w: World): string[] => [
  `clb:${w.classic.tagged}:${w.node.id}`,
  `clb:${w.classic.readmeTagged}:${w.node.id}`,
  `tg:viaTaggedAlb:${w.node.id}:30080`,
  `tg:taggedIp:${w.node.secondaryIp}:8080`,
];
export const neighbourInScope = (w: World): string[] => [
  `clb:${w.classic.tagged}:${w.neighbour.id}`,
  `tg:viaTaggedAlb:${w.neighbour.id}:30080`,
  `tg:taggedIp:${w.neighbour.ip}:8080`,
];
/** The names and ARNs a drain of the node may name in a Deregister* call. */
export const selfTargets = (w: World): string[] => [w.classic.tagged, w.classic.readmeTagged, w.groups.viaTaggedAlb, w.groups.taggedIp].sort();

/** "family:name-or-arn:state", sorted. */
export const summary = (status: DrainStatus): string[] => status.loadBalancers.map((lb) => `${lb.family}:${String(lb.name ?? lb.arn)}:${lb.state}`).sort();

export const isDeregister = (call: AwsCall): boolean => call.action === 'DeregisterTargets' || call.action === 'DeregisterInstancesFromLoadBalancer';
/** The load balancer or target group a Deregister* call names. */
export const deregisterTarget = (call: AwsCall): string => call.params.get('LoadBalancerName') ?? call.params.get('TargetGroupArn') ?? '?';
/** The instance ids or target ids a Deregister* call names. */
export const deregisteredIds = (call: AwsCall): string[] =>
  [...call.params.entries()].filter(([key]) => /^(Instances\.member\.\d+\.InstanceId|Targets\.member\.\d+\.Id)$/.test(key)).map(([, value]) => value);

/** `time` of a spot notice: IMDS writes seconds, no fraction. */
export const spotTime = (inMs: number): string => new Date(Date.now() + inMs).toISOString().replace(/\.\d+Z$/, 'Z');

export class Rig {
  moto!: Moto;
  proxy!: AwsProxy;
  world!: World;
  initial!: Set<string>;
  imds!: FakeImds;
  private agents: AgentProcess[] = [];

  /** before(): one moto and one proxy for the file. */
  async open(): Promise<void> {
    this.moto = await startMoto();
    this.proxy = await startAwsProxy(this.moto.url);
  }

  /** beforeEach(): a fresh world and IMDS, no faults, an empty call log. */
  async fresh(): Promise<void> {
    await this.moto.reset();
    this.proxy.clearFaults();
    this.world = await seedWorld(this.moto.url);
    this.initial = await registrations(this.moto.url, this.world);
    this.proxy.calls.length = 0;
    this.imds = await startFakeImds({
      instanceId: this.world.node.id,
      region: REGION,
      availabilityZone: 'us-east-1a',
      vpcId: this.world.clusterVpc,
      privateIp: this.world.node.ip,
      secondaryIps: [this.world.node.secondaryIp],
    });
    this.imds.set(ASG, 'InService');
  }

  /** afterEach(): every agent of the test killed, IMDS closed, each agent's stderr JSON only. */
  async cleanup(): Promise<void> {
    for (const agent of this.agents) if (agent.alive()) agent.child.kill('SIGKILL');
    await Promise.all(this.agents.map((agent) => agent.exited));
    await this.imds?.close();
    const agents = this.agents;
    this.agents = [];
    for (const agent of agents) assert.deepEqual(agent.nonJsonLines(), [], 'every stderr line of the agent is JSON');
  }

  /** after(). */
  async close(): Promise<void> {
    await this.proxy?.close();
    await this.moto?.stop();
  }

  /** The built agent against this rig's AWS and IMDS, ready (its first IMDS poll done). */
  async startAgent(extra: Record<string, string> = {}, options: { port?: number; ready?: boolean } = {}): Promise<AgentProcess> {
    const agent = spawnAgent(options.port ?? (await freePort()), {
      AWS_ENDPOINT_URL: this.proxy.url,
      AWS_EC2_METADATA_SERVICE_ENDPOINT: this.imds.url,
      SECRET,
      POLL_INTERVAL: '1',
      DEADLINE_MARGIN: '0',
      ...extra,
    });
    this.agents.push(agent);
    if (options.ready !== false) await waitReady(agent);
    return agent;
  }

  deregisterCalls(): AwsCall[] {
    return this.proxy.calls.filter(isDeregister);
  }

  /** Sorted distinct load balancers and target groups named in Deregister* calls. */
  deregisteredFrom(): string[] {
    return [...new Set(this.deregisterCalls().map(deregisterTarget))].sort();
  }

  /** Deregister* calls per load balancer or target group. */
  deregisterCounts(): Record<string, number> {
    const counts: Record<string, number> = {};
    for (const call of this.deregisterCalls()) counts[deregisterTarget(call)] = (counts[deregisterTarget(call)] ?? 0) + 1;
    return counts;
  }

  /** Nothing outside the node's in-scope load balancers was asked to let go, and only the node's ids. */
  assertOnlyInScopeDeregistered(): void {
    const allowed = new Set(selfTargets(this.world));
    const ids = new Set([this.world.node.id, this.world.node.secondaryIp, this.world.node.ip]);
    for (const call of this.deregisterCalls()) {
      assert.ok(allowed.has(deregisterTarget(call)), `Deregister* on ${deregisterTarget(call)}, which is out of scope`);
      for (const id of deregisteredIds(call)) assert.ok(ids.has(id), `Deregister* of ${id}, which is not the node`);
    }
  }

  /** Registrations now are exactly the initial ones less `gone`. */
  async assertLeftExactly(gone: string[]): Promise<void> {
    for (const membership of gone) assert.ok(this.initial.has(membership), `fixture: ${membership} was registered at the start`);
    const expected = [...this.initial].filter((membership) => !gone.includes(membership)).sort();
    assert.deepEqual([...(await registrations(this.moto.url, this.world))].sort(), expected);
  }

  /** A spot interruption notice for `inMs` from now; returns the notice's time. */
  spotNotice(inMs: number): Date {
    const time = spotTime(inMs);
    this.imds.set(SPOT, JSON.stringify({ action: 'terminate', time }));
    return new Date(time);
  }
}

/** GET /drain/<id> until the drain has finished (any state but draining). */
export async function finished(agent: AgentProcess, instanceId: string, timeoutMs: number): Promise<DrainStatus> {
  return eventually(
    async () => {
      const answer = await agent.fetch(`/drain/${instanceId}`, { headers: BEARER, signal: AbortSignal.timeout(3_000) });
      if (answer.status !== 200) return undefined;
      const body = (await answer.json()) as DrainStatus;
      return body.state === 'draining' ? undefined : body;
    },
    timeoutMs,
    `the drain of ${instanceId} finished`,
  );
}

/** Numbers for RELIABILITY.md: a diagnostic line, and a JSON line in $RELIABILITY_REPORT. */
export function record(t: TestContext, numbers: Record<string, unknown>): void {
  const line = { test: t.fullName, ...numbers };
  t.diagnostic(JSON.stringify(numbers));
  if (process.env.RELIABILITY_REPORT) appendFileSync(process.env.RELIABILITY_REPORT, `${JSON.stringify(line)}\n`);
}
