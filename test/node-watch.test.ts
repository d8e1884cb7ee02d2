/**
 * The watch of the agent's own Node, through the real Kubernetes client against the fake API server:
 * what the decision hears, and how the watch survives the server ending it, compaction and RBAC gaps.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import { createKubeClient, type KubeClient } from '../agent/kube/client.ts';
import { loadKubeAccess } from '../agent/kube/config.ts';
import { NodeWatch, type NodeSeen } from '../agent/kube/node-watch.ts';
import { createLogger } from '../agent/log.ts';
import { makeNode, startFakeKube, type FakeKube } from './fakes/kube.ts';

const NODE = 'ip-10-0-1-23.ec2.internal';
const SHUTTING_DOWN = { type: 'Ready', status: 'False', reason: 'KubeletNotReady', message: 'node is shutting down' };

describe('the Node watch', () => {
  let dir: string;
  let fake: FakeKube;
  let client: KubeClient;
  let seen: NodeSeen[];
  let logLines: Record<string, unknown>[];
  let watch: NodeWatch;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'hlv-node-watch-'));
    fake = await startFakeKube({ token: 'watch-token' });
    client = createKubeClient((await loadKubeAccess({ KUBECONFIG: fake.writeKubeconfig(join(dir, 'kubeconfig')) }))!, { logger: createLogger('error') });
  });
  after(async () => {
    await client.close();
    await fake.close();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeEach(() => {
    fake.setNode(makeNode(NODE));
    seen = [];
    logLines = [];
    const sink = new Writable({
      write(chunk: Buffer, _encoding, done) {
        for (const line of chunk.toString().split('\n').filter(Boolean)) logLines.push(JSON.parse(line) as Record<string, unknown>);
        done();
      },
    });
    watch = new NodeWatch({ kube: client, nodeName: NODE, onNode: (node) => seen.push(node), logger: createLogger('info', sink), retryBaseMs: 20, retryCapMs: 50 });
  });
  afterEach(async () => {
    await watch.stop();
    await until('the stopped watch is closed', () => fake.openWatches() === 0);
    fake.deleteNode(NODE);
    fake.requests.length = 0;
  });

  /** The Ready condition's message each time the watch reported the Node ('gone' once deleted). */
  const readyMessages = () => seen.map((s) => (s.kind === 'gone' ? 'gone' : (s.node.status?.conditions?.find((c) => c.type === 'Ready')?.message ?? 'ready')));

  async function until(what: string, check: () => boolean): Promise<void> {
    for (let i = 0; i < 200 && !check(); i++) await sleep(10);
    assert.ok(check(), `timed out waiting until ${what}; saw ${JSON.stringify(readyMessages())}`);
  }

  it('reports the Node as read, then the kubelet\'s "node is shutting down" the moment it is written', async () => {
    watch.start();
    await until('the first read', () => seen.length === 1);
    await until('the watch is open', () => fake.openWatches() === 1);
    const node = fake.node(NODE)!;
    fake.setNode({ ...node, status: { conditions: [SHUTTING_DOWN] } });
    await until('the shutdown is seen', () => readyMessages().includes('node is shutting down'));
    assert.deepEqual(readyMessages(), ['ready', 'node is shutting down']);
    const watches = fake.requests.filter((r) => r.path === '/api/v1/nodes');
    assert.equal(watches.length, 1, 'one watch, not a poll');
  });

  it('when the server ends the watch, watches again from the last version without reading the Node again, and misses nothing', async () => {
    watch.start();
    await until('the watch is open', () => fake.openWatches() === 1);
    const gets = () => fake.requests.filter((r) => r.method === 'GET' && r.path === `/api/v1/nodes/${NODE}`).length;
    assert.equal(gets(), 1);
    fake.endWatches();
    // A change while no watch is open: the next watch, from the last version seen, still delivers it.
    fake.setNode({ ...fake.node(NODE)!, spec: { taints: [{ key: 'karpenter.sh/disrupted', effect: 'NoSchedule' }] } });
    await until('the taint is seen', () => seen.some((s) => s.kind === 'present' && (s.node.spec.taints ?? []).length > 0));
    await until('the watch is open again', () => fake.openWatches() === 1);
    assert.equal(gets(), 1, 'no read of the Node while the version still holds');
  });

  it('after the version is compacted away (410 Expired), reads the Node again and goes on watching', async () => {
    watch.start();
    await until('the watch is open', () => fake.openWatches() === 1);
    fake.endWatches();
    fake.setNode({ ...fake.node(NODE)!, status: { conditions: [SHUTTING_DOWN] } });
    fake.compact();
    await until('the shutdown is seen by a fresh read', () => readyMessages().includes('node is shutting down'));
    await until('the watch is open again', () => fake.openWatches() === 1);
    assert.ok(fake.requests.filter((r) => r.method === 'GET' && r.path === `/api/v1/nodes/${NODE}`).length >= 2);
    assert.deepEqual(logLines.filter((line) => line.level === 'warn').map((line) => line.msg), [], 'a 410 is routine, not a warning');
  });

  it('reports the Node gone when it is deleted', async () => {
    watch.start();
    await until('the watch is open', () => fake.openWatches() === 1);
    fake.deleteNode(NODE);
    await until('the deletion is seen', () => seen.at(-1)?.kind === 'gone');
  });

  it('without RBAC watch on nodes: says which rule to add, once, and keeps trying', async () => {
    fake.forbid('nodes', 'watch');
    try {
      watch.start();
      await until('several attempts', () => fake.requests.filter((r) => r.path === '/api/v1/nodes').length >= 4);
      const warnings = logLines.filter((line) => line.level === 'warn');
      assert.equal(warnings.length, 1, 'one line per cause, not one per retry');
      assert.match(String(warnings[0]!.msg), /cannot watch the Node .*grant watch on nodes .*verbs: \["watch"\]/);
    } finally {
      fake.allow('nodes', 'watch');
    }
    await until('the watch is open once allowed', () => fake.openWatches() === 1);
    await until('the recovery is logged', () => logLines.some((line) => line.msg === 'watching the Node again'));

  });

  it('a NODE_NAME that names no Node: says so and what to set, and reports nothing', async () => {
    fake.deleteNode(NODE);
    watch.start();
    await until('the warning', () => logLines.some((line) => line.level === 'warn'));
    assert.match(String(logLines.find((line) => line.level === 'warn')!.msg), /no Node named "ip-10-0-1-23\.ec2\.internal": NODE_NAME must be the Node's name/);
    assert.deepEqual(seen, [], 'a Node never seen is not a Node deleted');
    fake.setNode(makeNode(NODE));
  });
});
