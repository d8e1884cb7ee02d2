/**
 * Restarts and concurrent triggers. The BUILT agent is SIGKILLed in the middle of a drain (the
 * proxy holds some Deregister* calls so that the kill lands between them) and started again while the
 * spot notice is still there: the drain is finished, nothing is forgotten, nothing is refused. Then a
 * notice, an API call and SIGTERM arriving together give one drain, not three.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DrainStatus } from '../agent/drain/status.ts';
import { eventually, exitWithin } from './helpers/agent-harness.ts';
import { deregisterTarget, finished, record, Rig, SECRET, selfInScope, selfTargets } from './helpers/reliability-rig.ts';
import { registrations } from './fixtures/world.ts';

const rig = new Rig();
before(() => rig.open());
after(() => rig.close());
beforeEach(() => rig.fresh());
afterEach(() => rig.cleanup());

describe('restarts', () => {
  test('SIGKILL in the middle of a drain, restarted while the spot notice is still there: the drain is finished, nothing forgotten, nothing refused', async (t) => {
    const { world } = rig;
    // clb-readme-tagged goes through; clb-tagged is accepted by AWS only after the kill (slow);
    // both target groups' DeregisterTargets never reach AWS while the first agent lives.
    let holding = true;
    rig.proxy.addFault((call) => {
      if (!holding || !call.action.startsWith('Deregister')) return undefined;
      const target = deregisterTarget(call);
      if (target === world.classic.tagged) return { kind: 'delay', ms: 1_500 };
      if (target === world.groups.viaTaggedAlb || target === world.groups.taggedIp) return { kind: 'hang' };
      return undefined;
    });
    const first = await rig.startAgent();
    rig.spotNotice(60_000);
    await eventually(() => rig.deregisteredFrom().length === 4, 10_000, 'the first agent asked all four to let go');
    await eventually(async () => !(await registrations(rig.moto.url, world)).has(`clb:${world.classic.readmeTagged}:${world.node.id}`), 5_000, 'one is out');
    const before = await registrations(rig.moto.url, world);
    assert.ok(before.has(`tg:viaTaggedAlb:${world.node.id}:30080`) && before.has(`tg:taggedIp:${world.node.secondaryIp}:8080`), 'killed half-way');
    first.child.kill('SIGKILL');
    const exit = await first.exited;
    assert.equal(exit.signal, 'SIGKILL');
    const callsByFirst = rig.deregisterCalls().length;

    // The slow call still lands at AWS after the kill, as a real request in flight would.
    await sleep(1_800);
    holding = false;

    const second = await rig.startAgent();
    const status = await finished(second, world.node.id, 20_000);
    assert.equal(status.trigger, 'spot-interruption');
    assert.equal(status.state, 'deregistered', JSON.stringify(status));
    for (const lb of status.loadBalancers) assert.equal(lb.state, 'out', JSON.stringify(lb));
    // Nothing refused: no Deregister* failed, in either agent.
    for (const agent of [first, second]) {
      assert.deepEqual(agent.logs().filter((line) => line.step === 'deregister'), [], 'no deregister call failed');
    }
    // Nothing forgotten, nothing else touched.
    rig.assertOnlyInScopeDeregistered();
    await rig.assertLeftExactly(selfInScope(world));
    // The second agent only had the target groups left to do, and did each once.
    const counts = rig.deregisterCounts();
    assert.equal(counts[world.classic.readmeTagged], 1);
    assert.equal(counts[world.classic.tagged], 1);
    assert.equal(counts[world.groups.viaTaggedAlb], 2);
    assert.equal(counts[world.groups.taggedIp], 2);
    record(t, { kills: 1, deregisterCallsBeforeKill: callsByFirst, deregisterCallsAfterRestart: rig.deregisterCalls().length - callsByFirst, drainsCompleted: 1, lost: 0 });
  });

  test('SIGKILLed three times at random moments of the drain: the fourth agent finishes it', async (t) => {
    const { world } = rig;
    // While agents are being killed, every Deregister* is slow and half never reach AWS, so each
    // agent dies somewhere in the middle with work left for the next.
    let killing = true;
    rig.proxy.addFault((call) => {
      if (!killing || !call.action.startsWith('Deregister')) return undefined;
      return Math.random() < 0.5 ? { kind: 'hang' } : { kind: 'delay', ms: 700 };
    });
    rig.spotNotice(60_000);
    const kills: number[] = [];
    for (let round = 0; round < 3; round++) {
      const agent = await rig.startAgent();
      const callsBefore = rig.deregisterCalls().length;
      // Killed between 0 and 600 ms after this agent's first Deregister* call.
      const seen = await eventually(() => rig.deregisterCalls().length > callsBefore || !agent.alive() || undefined, 3_000, 'this agent deregistering').catch(() => false);
      const at = Math.floor(Math.random() * 600);
      if (seen) await sleep(at);
      agent.child.kill('SIGKILL');
      await agent.exited;
      kills.push(at);
    }
    await sleep(800);
    killing = false;
    const last = await rig.startAgent();
    const status = await finished(last, world.node.id, 20_000);
    assert.equal(status.state, 'deregistered', JSON.stringify(status));
    rig.assertOnlyInScopeDeregistered();
    await rig.assertLeftExactly(selfInScope(world));
    record(t, { kills: kills.length, killedAfterMs: kills, deregisterCalls: rig.deregisterCalls().length, drainsCompleted: 1, lost: 0 });
  });
});

describe('concurrent triggers', () => {
  test('a spot notice, POST /drain and SIGTERM at once: one drain, one Deregister* per load balancer, the process exits 0 once it is done', async (t) => {
    const { world } = rig;
    const agent = await rig.startAgent({ TERMINATION_GRACE_PERIOD: '30' });
    // Slow enough that all three triggers arrive while the drain runs.
    rig.proxy.addFault((call) => (call.action.startsWith('Deregister') ? { kind: 'delay', ms: 2_000 } : undefined));

    rig.spotNotice(60_000);
    const [answer] = await Promise.all([
      agent.fetch(`/drain?pw=${SECRET}`, { method: 'POST' }),
      eventually(() => agent.logs().some((line) => line.msg === 'drain started'), 5_000, 'a drain started'),
    ]);
    assert.equal(answer.status, 202);
    const accepted = (await answer.json()) as DrainStatus;
    assert.equal(accepted.state, 'draining');
    await eventually(() => agent.logs().some((line) => /the node is going away/.test(String(line.msg))), 5_000, 'the notice seen');
    agent.child.kill('SIGTERM');

    const exit = await exitWithin(agent, 20_000);
    assert.equal(exit.code, 0, agent.stderr().slice(-3000));
    const started = agent.logs().filter((line) => line.msg === 'drain started');
    assert.equal(started.length, 1, `one drain: ${JSON.stringify(started.map((line) => line.trigger))}`);
    const counts = rig.deregisterCounts();
    for (const target of selfTargets(world)) assert.equal(counts[target], 1, `one Deregister* for ${target}: ${JSON.stringify(counts)}`);
    assert.equal(rig.deregisterCalls().length, 4);
    rig.assertOnlyInScopeDeregistered();
    await rig.assertLeftExactly(selfInScope(world));
    const verdict = agent.logs().find((line) => line.signal === 'SIGTERM' && line.drain !== undefined);
    assert.equal(verdict?.drain, true, 'SIGTERM with a notice present drains (joins)');
    const final = agent.logs().find((line) => line.status?.state === 'deregistered');
    assert.ok(final, 'the drain finished before the process exited');
    record(t, { triggers: 3, drainsStarted: started.length, deregisterCalls: rig.deregisterCalls().length, lost: 0 });
  });

  test('twenty concurrent POST /drain for the node while a notice drain runs: all join it', async (t) => {
    const { world } = rig;
    const agent = await rig.startAgent();
    rig.proxy.addFault((call) => (call.action.startsWith('Deregister') ? { kind: 'delay', ms: 1_000 } : undefined));
    rig.spotNotice(60_000);
    await eventually(() => agent.logs().some((line) => line.msg === 'drain started'), 5_000, 'a drain started');
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, i) => agent.fetch(i % 2 ? `/drain?wait=true&pw=${SECRET}` : `/drain?id=${world.node.id}&wait=true&pw=${SECRET}`, { method: 'POST' })),
    );
    const bodies = (await Promise.all(answers.map((a) => a.json()))) as DrainStatus[];
    assert.deepEqual(new Set(answers.map((a) => a.status)), new Set([200]));
    assert.deepEqual(new Set(bodies.map((b) => b.trigger)), new Set(['spot-interruption']), 'every request joined the notice\'s drain');
    assert.equal(agent.logs().filter((line) => line.msg === 'drain started').length, 1);
    for (const target of selfTargets(world)) assert.equal(rig.deregisterCounts()[target], 1);
    await rig.assertLeftExactly(selfInScope(world));
    record(t, { requests: 20, drainsStarted: 1, deregisterCalls: rig.deregisterCalls().length, lost: 0 });
  });
});
