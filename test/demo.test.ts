/** `npm run demo` as a newcomer runs it: the timeline shows the node out of the cluster's load balancers only. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

test('the demo drains the node from the tagged load balancers only, and says so', () => {
  const run = spawnSync(process.execPath, ['--import', 'tsx', 'scripts/demo.ts'], { cwd: ROOT, encoding: 'utf8', timeout: 90_000 });
  assert.equal(run.status, 0, run.stderr);
  const lines = run.stdout.split('\n');
  const out = lines.filter((line) => line.includes('out (confirmed by')).map((line) => line.replace(/^.*: /, '')).sort();
  assert.deepEqual(out, ['clb-readme-tagged', 'clb-tagged', 'target group tg-tagged-ip', 'target group tg-via-alb']);

  const kept = lines.slice(lines.findIndex((line) => line.includes('still registered'))).filter((line) => /^\+\s*[\d.]+s {4}/.test(line));
  assert.deepEqual(kept.map((line) => line.trim().replace(/^\+\s*[\d.]+s\s+/, '').replace(/ \(.*\)$/, '')).sort(), [
    'classic ELB clb-other-cluster',
    'classic ELB clb-untagged',
    'target group tg-other-cluster',
    'target group tg-untagged',
  ]);
  assert.match(run.stdout, /spot interruption notice appears in IMDS/);
  assert.match(run.stdout, /drain \(spot-interruption\) finished: out of 4 load balancer\(s\)/);
  assert.match(run.stdout, /answers 200: state deregistered/);
  assert.match(run.stdout, /done: everything stopped/);
});
