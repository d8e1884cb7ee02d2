/**
 * `npm run demo`: the whole story on one machine, in about ten seconds. Starts moto (AWS) and a fake
 * IMDS, seeds a small cluster world (two VPCs, classic ELBs and target groups, tagged and not), starts
 * the real agent, fires a spot interruption notice, and prints a timeline of what left which load
 * balancer and when. Then it shuts everything down.
 */
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { createLogger } from '../agent/log.ts';
import { routeRuntimeWarnings } from '../agent/runtime-warnings.ts';
import { startFakeImds } from '../test/fakes/imds.ts';
import { CLUSTER, REGION, registrations, seedWorld, type World } from '../test/fixtures/world.ts';
import { freePort, startMoto } from '../test/helpers/moto.ts';
import { cleanEnv, MAIN } from '../test/helpers/run.ts';

// This process seeds moto with the AWS SDK too: its warnings follow the agent's rules, off the timeline.
routeRuntimeWarnings(createLogger('info', process.stderr));

const SECRET = 'demo-secret-0123456789';
const t0 = Date.now();
const stamp = (at = Date.now()) => `+${((at - t0) / 1000).toFixed(3).padStart(7)}s`;
const say = (text: string, at?: number) => console.log(`${stamp(at)}  ${text}`);

say('starting moto (AWS emulator) and a fake instance metadata service');
const moto = await startMoto();
const world = await seedWorld(moto.url);
const name = nameOf(world);
const imds = await startFakeImds({ instanceId: world.node.id, region: REGION, vpcId: world.clusterVpc, privateIp: world.node.ip, secondaryIps: [world.node.secondaryIp] });
say(`seeded cluster "${CLUSTER}": node ${world.node.id} (${world.node.ip}, secondary ${world.node.secondaryIp}) in ${world.clusterVpc}`);
for (const entry of [...(await registrations(moto.url, world))].filter((e) => e.includes(world.node.id) || e.includes(world.node.secondaryIp)).sort()) {
  say(`  registered: ${name(entry)}`);
}

const port = await freePort();
const agent = spawn(process.execPath, [MAIN], {
  env: cleanEnv({ AWS_ENDPOINT_URL: moto.url, AWS_EC2_METADATA_SERVICE_ENDPOINT: imds.url, SECRET, PORT: String(port), POLL_INTERVAL: '1' }),
  stdio: ['ignore', 'inherit', 'pipe'],
});
const finished = new Promise<void>((resolve) => {
  createInterface({ input: agent.stderr! }).on('line', (line) => {
    let event: Record<string, unknown>;
    try {
      event = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return say(`agent: ${line}`);
    }
    const at = Date.parse(String(event.time));
    const lb = typeof event.loadBalancer === 'string' ? String(event.loadBalancer).replace(/^.*:targetgroup\/([^/]+)\/.*$/, 'target group $1') : '';
    switch (event.msg) {
      case 'ready: watching IMDS for notices':
        return say(`agent ready on port ${port}, polling IMDS every second`, at);
      case 'termination notice: draining this node':
        return say(`agent saw the notice: draining, deadline ${String(event.deadline)}`, at);
      case 'deregistered':
        return say(`  deregister call accepted: ${lb}`, at);
      case 'out':
        return say(`  out (confirmed by ${event.family === 'classic' ? 'DescribeInstanceHealth' : 'DescribeTargetHealth'}): ${lb}`, at);
      case 'drain deregistered': {
        const status = event.status as { trigger: string; loadBalancers: unknown[]; awsCalls: Record<string, number> };
        const calls = Object.values(status.awsCalls).reduce((a, b) => a + b, 0);
        say(`drain (${status.trigger}) finished: out of ${status.loadBalancers.length} load balancer(s) in ${String(event.durationMs)} ms, ${calls} AWS calls`, at);
        return resolve();
      }
      case 'node excluded from external load balancers':
        return say('node labelled node.kubernetes.io/exclude-from-external-load-balancers', at);
    }
  });
});

await waitForReady(port);
const time = new Date(Date.now() + 120_000).toISOString().replace(/\.\d+Z$/, 'Z');
imds.set('meta-data/spot/instance-action', JSON.stringify({ action: 'terminate', time }));
say(`spot interruption notice appears in IMDS: terminate at ${time}`);
if (!(await settlesWithin(finished, 30_000))) {
  say('the drain did not finish within 30 s; its status follows');
  process.exitCode = 1;
}

const status = await fetch(`http://127.0.0.1:${port}/drain/${world.node.id}`, { headers: { authorization: `Bearer ${SECRET}` } });
say(`GET /drain/${world.node.id} answers ${status.status}: state ${((await status.json()) as { state: string }).state}`);
const left = [...(await registrations(moto.url, world))].filter((e) => e.includes(world.node.id) || e.includes(world.node.secondaryIp)).sort();
say('still registered (not this cluster\'s, so left alone by design):');
for (const entry of left) say(`  ${name(entry)}`);

say('SIGTERM to the agent (the node is shutting down): it checks once more that nothing is left, then exits');
agent.kill('SIGTERM');
await new Promise((resolve) => agent.once('exit', resolve));
await imds.close();
await moto.stop();
say('done: everything stopped');

/** Whether `promise` settles within `ms`; the timer ends with the wait, or it would hold the demo open after its last line. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  const gaveUp = new AbortController();
  try {
    return await Promise.race([promise.then(() => true), sleep(ms, false, { signal: gaveUp.signal })]);
  } finally {
    gaveUp.abort();
  }
}

async function waitForReady(port: number): Promise<void> {
  for (let attempt = 0; attempt < 100; attempt++) {
    try {
      if ((await fetch(`http://127.0.0.1:${port}/readyz`)).ok) return;
    } catch {
      // not listening yet
    }
    await sleep(100);
  }
  throw new Error('the agent did not become ready');
}

function nameOf(w: World): (entry: string) => string {
  const groups = Object.fromEntries(Object.entries(w.groups).map(([key, arn]) => [key, arn.replace(/^.*:targetgroup\/([^/]+)\/.*$/, '$1')]));
  return (entry) => {
    const [kind, key, id, port] = entry.split(':');
    return kind === 'clb' ? `classic ELB ${key}` : `target group ${groups[key!]} (${id}:${port})`;
  };
}
