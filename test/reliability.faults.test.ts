/**
 * Faults during a drain. The BUILT agent runs against moto behind the fault-injecting proxy and a
 * strict fake IMDS; each scenario injects one class of fault, triggers a drain, and checks what a user
 * relies on: the instance leaves every load balancer it can reach before the deadline, what it could
 * not leave is reported with the cause, and nothing outside scope is asked to let go (proxy call log).
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DrainStatus } from '../agent/drain/status.ts';
import type { AwsCall, Fault } from './fakes/aws-proxy.ts';
import { eventually } from './helpers/agent-harness.ts';
import { startGate } from './helpers/reliability-gate.ts';
import { finished, record, Rig, SECRET, selfInScope, selfTargets, summary } from './helpers/reliability-rig.ts';

const rig = new Rig();
before(() => rig.open());
after(() => rig.close());
beforeEach(() => rig.fresh());
afterEach(() => rig.cleanup());

/** Every action a drain of the node makes (no EC2: its addresses come from IMDS). */
const DRAIN_ACTIONS = [
  'GetResources',
  'DescribeLoadBalancers',
  'DescribeTargetGroups',
  'DescribeTargetHealth',
  'DescribeInstanceHealth',
  'DeregisterInstancesFromLoadBalancer',
  'DeregisterTargets',
];

/** The throttling error each service really answers with. */
function throttle(call: AwsCall): Fault {
  if (call.service === 'ec2') return { kind: 'error', status: 503, code: 'RequestLimitExceeded', message: 'Request limit exceeded.' };
  if (call.service === 'tagging') return { kind: 'error', status: 400, code: 'ThrottlingException', message: 'Rate exceeded' };
  return { kind: 'error', status: 400, code: 'Throttling', message: 'Rate exceeded' };
}

/** A rule that answers `fault` to the first `times` calls of every action, counting what it injected. */
function firstCalls(times: number, fault: (call: AwsCall, nth: number) => Fault | undefined) {
  const seen = new Map<string, number>();
  const injected: Record<string, number> = {};
  const rule = (call: AwsCall): Fault | undefined => {
    const nth = (seen.get(call.action) ?? 0) + 1;
    seen.set(call.action, nth);
    if (nth > times) return undefined;
    const answer = fault(call, nth);
    if (answer) injected[call.action] = (injected[call.action] ?? 0) + 1;
    return answer;
  };
  return { rule, injected };
}

const total = (counts: Record<string, number>): number => Object.values(counts).reduce((sum, n) => sum + n, 0);

/** Asserts a successful drain of the node, finished before its deadline, touching nothing else. */
async function assertCleanDrain(status: DrainStatus): Promise<void> {
  assert.equal(status.state, 'deregistered', JSON.stringify(status));
  assert.deepEqual(summary(status), selfTargets(rig.world).map((id) => `${id.startsWith('arn:') ? 'target-group' : 'classic'}:${id}:out`).sort());
  assert.ok(Date.parse(status.finishedAt!) <= Date.parse(status.deadline), `finished ${status.finishedAt}, deadline ${status.deadline}`);
  rig.assertOnlyInScopeDeregistered();
  await rig.assertLeftExactly(selfInScope(rig.world));
}

describe('AWS faults during a drain', () => {
  test('throttling on every call type (each action\'s first call), and every Deregister* throttled 3 times in a row (beyond the SDK\'s retries, so the drainer retries): out of everything before the deadline', async (t) => {
    // Cold: no kept inventory, so the drain itself calls the tagging API and describes the target groups.
    const agent = await rig.startAgent({ INVENTORY_REFRESH: '0' });
    const { rule, injected } = firstCalls(1, (call) => (call.action.startsWith('Deregister') ? undefined : throttle(call)));
    // One classic ELB and one target group refuse their first three Deregister* calls.
    const stubborn = [rig.world.classic.tagged, rig.world.groups.viaTaggedAlb];
    const deregisterThrottles: Record<string, number> = {};
    rig.proxy.addFault((call) => {
      if (!call.action.startsWith('Deregister')) return undefined;
      const target = call.params.get('LoadBalancerName') ?? call.params.get('TargetGroupArn') ?? '?';
      deregisterThrottles[target] = (deregisterThrottles[target] ?? 0) + 1;
      return stubborn.includes(target) && deregisterThrottles[target]! <= 3 ? throttle(call) : undefined;
    });
    rig.proxy.addFault(rule);
    const deadline = rig.spotNotice(40_000);
    const status = await finished(agent, rig.world.node.id, 38_000);
    for (const action of DRAIN_ACTIONS.filter((a) => !a.startsWith('Deregister'))) assert.equal(injected[action], 1, `${action} was throttled: ${JSON.stringify(injected)}`);
    // The stubborn ones failed 3 times (one SDK call given up), then the drainer retried them; the others went through at once.
    for (const target of selfTargets(rig.world)) assert.equal(rig.deregisterCounts()[target], stubborn.includes(target) ? 4 : 1, JSON.stringify(rig.deregisterCounts()));
    await assertCleanDrain(status);
    const faults = total(injected) + 2 * 3;
    record(t, { faultsInjected: faults, awsCalls: rig.proxy.calls.length, drainMs: Date.parse(status.finishedAt!) - Date.parse(status.startedAt), deadline: deadline.toISOString(), lost: 0 });
  });

  test(
    'EC2 DescribeInstances throttled for good (a spot wave): the self-drain never asks it, and the ip target is still found',
    async (t) => {
      const agent = await rig.startAgent();
      let throttled = 0;
      rig.proxy.addFault((call) => (call.action === 'DescribeInstances' ? (throttled++, throttle(call)) : undefined));
      rig.spotNotice(30_000);
      const status = await finished(agent, rig.world.node.id, 28_000);
      assert.equal(throttled, 0, 'no DescribeInstances during the drain');
      assert.equal(status.awsCalls.DescribeInstances, undefined);
      await assertCleanDrain(status);
      record(t, { faultsInjected: throttled, lost: 0 });
    },
  );

  test('5xx (500 InternalFailure, 503 ServiceUnavailable) on every call type, and a DeregisterTargets that never answers (SDK timeout): out of everything before the deadline', async (t) => {
    // Cold: no kept inventory, so the drain itself calls the tagging API and describes the target groups.
    const agent = await rig.startAgent({ INVENTORY_REFRESH: '0' });
    const { rule, injected } = firstCalls(2, (call, nth) =>
      nth === 1 ? { kind: 'error', status: 500, code: 'InternalFailure', message: 'internal' } : { kind: 'error', status: 503, code: 'ServiceUnavailable', message: 'unavailable' },
    );
    let hung = 0;
    rig.proxy.addFault((call) => {
      if (call.action === 'DeregisterTargets' && call.params.get('TargetGroupArn') === rig.world.groups.taggedIp && hung === 0) {
        hung++;
        return { kind: 'hang' };
      }
      return undefined;
    });
    rig.proxy.addFault(rule);
    rig.spotNotice(40_000);
    const status = await finished(agent, rig.world.node.id, 38_000);
    for (const action of DRAIN_ACTIONS) assert.ok((injected[action] ?? 0) >= 1, `${action} got a 5xx: ${JSON.stringify(injected)}`);
    assert.equal(hung, 1);
    await assertCleanDrain(status);
    // The hung call was given up on and retried.
    assert.ok(rig.deregisterCounts()[rig.world.groups.taggedIp]! >= 2, JSON.stringify(rig.deregisterCounts()));
    record(t, { faultsInjected: total(injected) + hung, hangs: hung, awsCalls: rig.proxy.calls.length, drainMs: Date.parse(status.finishedAt!) - Date.parse(status.startedAt), lost: 0 });
  });

  test('one target group denies DeregisterTargets for good (AccessDenied): it is failed with the cause, the others are out, at once', async (t) => {
    const agent = await rig.startAgent();
    let denied = 0;
    rig.proxy.addFault((call) => {
      if (call.action !== 'DeregisterTargets' || call.params.get('TargetGroupArn') !== rig.world.groups.viaTaggedAlb) return undefined;
      denied++;
      return { kind: 'error', status: 403, code: 'AccessDenied', message: 'User: arn:aws:sts::123456789012:assumed-role/hlv is not authorized to perform: elasticloadbalancing:DeregisterTargets' };
    });
    const started = Date.now();
    const answer = await agent.fetch(`/drain?wait=true&timeout=30&pw=${SECRET}`, { method: 'POST' });
    const status = (await answer.json()) as DrainStatus;
    assert.equal(answer.status, 502, JSON.stringify(status));
    assert.equal(status.state, 'failed');
    assert.match(String(status.reason), /1 load balancer\(s\) failed/);
    const failed = status.loadBalancers.find((lb) => lb.arn === rig.world.groups.viaTaggedAlb);
    assert.equal(failed?.state, 'failed');
    assert.match(String(failed?.reason), /AccessDenied/);
    assert.match(String(failed?.reason), /IAM/);
    for (const lb of status.loadBalancers.filter((lb) => lb !== failed)) assert.equal(lb.state, 'out', JSON.stringify(lb));
    // A permanent error is not retried until the deadline.
    assert.equal(denied, 1);
    assert.ok(Date.now() - started < 10_000, `answered after ${Date.now() - started} ms`);
    rig.assertOnlyInScopeDeregistered();
    await rig.assertLeftExactly(selfInScope(rig.world).filter((m) => !m.startsWith('tg:viaTaggedAlb:')));
    record(t, { faultsInjected: denied, loadBalancersOut: 3, loadBalancersFailed: 1, lost: 0 });
  });

  test('one target group whose DeregisterTargets never answers: the others are out, the drain ends at its deadline as timed_out, saying so', async (t) => {
    const agent = await rig.startAgent();
    let hangs = 0;
    rig.proxy.addFault((call) => {
      if (call.action !== 'DeregisterTargets' || call.params.get('TargetGroupArn') !== rig.world.groups.taggedIp) return undefined;
      hangs++;
      return { kind: 'hang' };
    });
    const started = Date.now();
    const answer = await agent.fetch(`/drain?wait=true&timeout=5&pw=${SECRET}`, { method: 'POST', signal: AbortSignal.timeout(12_000) });
    const status = (await answer.json()) as DrainStatus;
    const ms = Date.now() - started;
    assert.equal(answer.status, 504);
    assert.equal(status.state, 'timed_out');
    assert.match(String(status.reason), /deadline passed with 1 load balancer\(s\) not yet out/);
    assert.ok(ms >= 4_500 && ms < 8_000, `answered after ${ms} ms for a 5 s deadline`);
    const stuck = status.loadBalancers.find((lb) => lb.arn === rig.world.groups.taggedIp);
    assert.equal(stuck?.state, 'draining');
    for (const lb of status.loadBalancers.filter((lb) => lb !== stuck)) assert.equal(lb.state, 'out', JSON.stringify(lb));
    rig.assertOnlyInScopeDeregistered();
    await rig.assertLeftExactly(selfInScope(rig.world).filter((m) => !m.startsWith('tg:taggedIp:')));
    record(t, { faultsInjected: hangs, drainMs: ms, loadBalancersOut: 3, loadBalancersTimedOut: 1, lost: 0 });
  });

  test(
    'one target group whose health never answers (discovery included): the other load balancers are still left before the deadline',
    async (t) => {
      const agent = await rig.startAgent();
      let hangs = 0;
      rig.proxy.addFault((call) => {
        if (call.action !== 'DescribeTargetHealth' || !call.body.includes(encodeURIComponent(rig.world.groups.taggedIp))) return undefined;
        hangs++;
        return { kind: 'hang' };
      });
      const answer = await agent.fetch(`/drain?wait=true&timeout=3&pw=${SECRET}`, { method: 'POST', signal: AbortSignal.timeout(15_000) });
      const status = (await answer.json()) as DrainStatus;
      assert.notEqual(status.state, 'deregistered');
      const byId = new Map(status.loadBalancers.map((lb) => [String(lb.name ?? lb.arn), lb.state]));
      assert.equal(byId.get(rig.world.groups.viaTaggedAlb), 'out', `the reachable target group is left: ${JSON.stringify(status)}`);
      assert.equal(byId.get(rig.world.classic.tagged), 'out');
      assert.equal(byId.get(rig.world.classic.readmeTagged), 'out');
      rig.assertOnlyInScopeDeregistered();
      await rig.assertLeftExactly(selfInScope(rig.world).filter((m) => !m.startsWith('tg:taggedIp:')));
      record(t, { faultsInjected: hangs, lost: 0 });
    },
  );
});

describe('IMDS faults around a notice', () => {
  /** IMDS misbehaves for `faultMs` from the moment the spot notice appears; the drain must still finish in time. */
  async function noticeThroughFault(
    t: TestContext,
    start: () => Promise<void> | void,
    stop: () => Promise<void> | void,
    extra: Record<string, string> = {},
    faultMs = 3_000,
  ): Promise<{ status: DrainStatus; failedPolls: number; causes: string }> {
    const agent = await rig.startAgent(extra);
    await start();
    const notice = rig.spotNotice(faultMs + 25_000);
    const until = Date.now() + faultMs;
    let healthChecks = 0;
    while (Date.now() < until) {
      const health = await agent.fetch('/healthz', { signal: AbortSignal.timeout(2_000) });
      assert.equal(health.status, 200, 'alive while IMDS misbehaves');
      healthChecks++;
      await sleep(250);
    }
    await stop();
    const status = await finished(agent, rig.world.node.id, 20_000);
    assert.equal(status.trigger, 'spot-interruption');
    assert.equal(status.deadline, notice.toISOString());
    await assertCleanDrain(status);
    const failedPolls = agent.logs().filter((line) => /IMDS poll (failed|still failing)/.test(String(line.msg))).length;
    record(t, { faultMs, healthChecks, failedPollsLogged: failedPolls, imdsRequests: rig.imds.requests, drainMs: Date.parse(status.finishedAt!) - Date.parse(status.startedAt), lost: 0 });
    const causes = agent
      .logs()
      .filter((line) => /IMDS poll (failed|still failing)/.test(String(line.msg)))
      .map((line) => JSON.stringify(line.err ?? {}))
      .join('\n');
    return { status, failedPolls, causes };
  }

  test('IMDS answering 500: the notice is caught once IMDS answers, the drain finishes before the deadline, the failure is logged with its cause', async (t) => {
    const { causes } = await noticeThroughFault(
      t,
      () => void (rig.imds.fault = 'error500'),
      () => void (rig.imds.fault = 'none'),
    );
    assert.match(causes, /IMDS answered 500/, 'the log gives the cause');
  });

  test('IMDS hanging: the same, and /healthz keeps answering', async (t) => {
    const { causes } = await noticeThroughFault(
      t,
      () => void (rig.imds.fault = 'hang'),
      () => void (rig.imds.fault = 'none'),
      {},
      // Longer than one poll's three timed-out attempts (3 x the 3 s default timeout), so a failed poll is logged.
      10_000,
    );
    assert.match(causes, /no answer within|did not answer/, 'the log gives the cause');
  });

  test('IMDS revoking every token again and again: new tokens are fetched, the notice is caught', async (t) => {
    let revoker: NodeJS.Timeout | undefined;
    const tokensBefore = rig.imds.tokenRequests;
    await noticeThroughFault(
      t,
      () => void (revoker = setInterval(() => rig.imds.revokeTokens(), 200)),
      () => clearInterval(revoker),
    );
    assert.ok(rig.imds.tokenRequests - tokensBefore >= 2, `tokens fetched again: ${rig.imds.tokenRequests - tokensBefore}`);
  });

  test('IMDS disappearing (its port closed, connections cut) and coming back on the same port: the notice is caught', async (t) => {
    const gate = await startGate(rig.imds.url);
    try {
      const { failedPolls, causes } = await noticeThroughFault(
        t,
        () => gate.down(),
        () => gate.up(),
        { AWS_EC2_METADATA_SERVICE_ENDPOINT: gate.url },
        Number(process.env.RELIABILITY_IMDS_OUTAGE_MS ?? 5_000),
      );
      assert.ok(failedPolls >= 1, 'the outage was noticed and logged');
      assert.match(causes, /ECONNREFUSED|ECONNRESET|other side closed|socket/i, 'the log gives the cause');
      assert.ok(gate.connections > 0);
    } finally {
      await gate.close();
    }
  });

  test('IMDS failing in the middle of a drain (hang, then 500, then revoked tokens): the drain does not depend on it and finishes', async (t) => {
    const agent = await rig.startAgent();
    // Deregistration is slow, so the drain is surely running while IMDS fails.
    rig.proxy.addFault((call) => (call.action.startsWith('Deregister') ? { kind: 'delay', ms: 1_000 } : undefined));
    rig.spotNotice(30_000);
    await eventually(() => rig.deregisterCalls().length > 0, 10_000, 'the drain is deregistering');
    rig.imds.fault = 'hang';
    await sleep(1_000);
    rig.imds.fault = 'error500';
    rig.imds.revokeTokens();
    const status = await finished(agent, rig.world.node.id, 25_000);
    assert.equal((await agent.fetch('/healthz')).status, 200);
    rig.imds.fault = 'none';
    await assertCleanDrain(status);
    record(t, { imdsFaults: 3, drainMs: Date.parse(status.finishedAt!) - Date.parse(status.startedAt), lost: 0 });
  });
});

