/**
 * `npm run demo` as a newcomer runs it: the timeline shows the node out of the cluster's load balancers
 * only, nothing but the timeline lands in it, and the demo ends when it is done.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/**
 * Loaded into the demo before it starts: once the demo has printed its last line and that turn of the
 * event loop is over, it says how many timers still keep the process alive. One left running keeps the
 * demo sitting idle after it is done.
 */
const COUNT_TIMERS_AFTER_LAST_LINE = `
const write = process.stdout.write.bind(process.stdout);
process.stdout.write = (chunk, ...rest) => {
  if (String(chunk).includes('done: everything stopped')) {
    setImmediate(() => process.stderr.write('timers left after the last line: ' + process.getActiveResourcesInfo().filter((kind) => kind === 'Timeout').length + '\\n'));
  }
  return write(chunk, ...rest);
};`;

test('the demo drains the node from the tagged load balancers only, says so, and ends when it is done', () => {
  const preload = `data:text/javascript,${encodeURIComponent(COUNT_TIMERS_AFTER_LAST_LINE)}`;
  const run = spawnSync(process.execPath, ['--import', 'tsx', '--import', preload, 'scripts/demo.ts'], { cwd: ROOT, encoding: 'utf8', timeout: 90_000 });
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
  assert.match(run.stdout, /done: everything stopped\n$/);

  // Every line of the timeline is a timeline line: no warning of the AWS SDK, of the demo or of the agent, no stack trace.
  assert.deepEqual(lines.filter((line) => line !== '' && !/^\+\s*[\d.]+s {2}/.test(line)), []);
  assert.doesNotMatch(`${run.stdout}${run.stderr}`, /NodeVersionSupportWarning|^\s+at /m);
  // The demo shows whatever the agent writes that is not a JSON log event as "agent: <line>".
  assert.deepEqual(lines.filter((line) => / {2}agent: /.test(line)), []);

  // Nothing but the exit is left once the last line is out: the process ends by itself, at once.
  assert.match(run.stderr, /^timers left after the last line: 0$/m);

  // The README shows what the demo prints: the same lines, whatever the times, dates, ids and counts.
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const sample = /prints a timeline:\n\n```\n([\s\S]*?)\n```/.exec(readme)?.[1];
  assert.ok(sample, 'the README has a sample timeline after "prints a timeline:"');
  assert.deepEqual(shape(sample.split('\n')), shape(lines.filter((line) => line !== '')), 'the README\'s sample timeline is not what the demo prints: paste a fresh run');
});

/** Timeline lines without their times, dates, ids and counts, sorted (drains of two families interleave either way). */
function shape(lines: string[]): string[] {
  return lines
    .map((line) =>
      line
        .replace(/^\+\s*[\d.]+s/, '+')
        .replace(/\d{4}-\d\d-\d\dT[\d:.]+Z/g, 'TIME')
        .replace(/\b(i|vpc)-[0-9a-f]+/g, '$1-ID')
        .replace(/\d+/g, 'N'),
    )
    .sort();
}
