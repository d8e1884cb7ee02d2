/** Running the built agent (dist/main.js) for the benchmarks, and reading its logs and /proc. */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { agentIn, spawnAgent, type AgentProcess } from '../../test/helpers/agent-harness.ts';
import { cleanEnv } from '../../test/helpers/run.ts';

export { spawnAgent, type AgentProcess };

const HOST = fileURLToPath(new URL('./agent-host.ts', import.meta.url));
/** How many agents share each hosted agent's process (1 for an agent of its own). */
const sharing = new WeakMap<AgentProcess, number>();

/**
 * Several agents in one process (bench/lib/agent-host.ts: the same runAgent, each with its own
 * configuration and logger), `envs[i]` laid over the common test environment for agent i, which
 * listens on its own PORT. What every agent has alike is the process's own environment, which the AWS
 * SDK reads (AWS_ENDPOINT_URL). Each returned agent's stderr holds its own log lines only (and whatever
 * the process itself printed); its `child` is the shared process.
 */
export function spawnHostedAgents(envs: readonly Record<string, string>[], node = process.execPath): AgentProcess[] {
  const shared = Object.fromEntries(Object.entries(envs[0] ?? {}).filter(([key, value]) => envs.every((env) => env[key] === value)));
  const own = envs.map((env) => Object.fromEntries(Object.entries(env).filter(([key]) => !(key in shared))));
  const child = spawn(node, ['--import', 'tsx', HOST], { env: cleanEnv({ ...shared, HOSTED_AGENTS: JSON.stringify(own) }), stdio: ['ignore', 'pipe', 'pipe'] });
  const stderr = envs.map(() => '');
  let stdout = '';
  let partial = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => {
    const lines = (partial + chunk.toString()).split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      const tab = line.indexOf('\t');
      const index = tab > 0 ? Number(line.slice(0, tab)) : NaN;
      if (Number.isInteger(index) && stderr[index] !== undefined) stderr[index] += `${line.slice(tab + 1)}\n`;
      else for (const i of stderr.keys()) stderr[i] += `${line}\n`;
    }
  });
  return envs.map((env, i) => {
    const agent = agentIn(child, Number(env.PORT), { stdout: () => stdout, stderr: () => stderr[i]! });
    sharing.set(agent, envs.length);
    return agent;
  });
}

/** An agent's share of its process's resident memory, MiB: all of it for an agent of its own. */
export function rssShareMiB(agent: AgentProcess): number {
  return procSample(agent.child.pid!).rssKiB / 1024 / (sharing.get(agent) ?? 1);
}

export const SECRET = 'bench-secret-0123456789abcdef';

export interface LogEvent {
  readonly msg: string;
  readonly at: number;
  readonly [field: string]: any;
}

/** The agent's JSON log lines from `offset` on (stderr), with their time as epoch ms. */
export function events(agent: AgentProcess, offset = 0): LogEvent[] {
  return agent
    .stderr()
    .slice(offset)
    .split('\n')
    .flatMap((line) => {
      if (!line.startsWith('{')) return [];
      try {
        const event = JSON.parse(line) as Record<string, any>;
        return [{ ...event, msg: String(event.msg), at: Date.parse(String(event.time)) }];
      } catch {
        return [];
      }
    });
}

/** Waits until a log line matches; cheap: it looks at the raw text before parsing. */
export async function waitForLog(agent: AgentProcess, test: (event: LogEvent) => boolean, needle: string, timeoutMs: number, offset = 0): Promise<LogEvent> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    if (agent.stderr().includes(needle, offset)) {
      const found = events(agent, offset).find(test);
      if (found) return found;
    }
    if (!agent.alive()) throw new Error(`agent exited while waiting for "${needle}":\n${agent.stderr().slice(-3000)}`);
    if (Date.now() > until) throw new Error(`no "${needle}" within ${timeoutMs} ms:\n${agent.stderr().slice(-3000)}`);
    await sleep(20);
  }
}

/** The final line of a drain: "drain deregistered", "drain timed_out", "drain failed". */
export const isDrainEnd = (event: LogEvent): boolean => /^drain (deregistered|timed_out|failed|skipped)$/.test(event.msg) && event.status !== undefined;

export async function stopAgent(agent: AgentProcess): Promise<void> {
  if (!agent.alive()) return;
  agent.child.kill('SIGKILL');
  await agent.exited;
}

let clockTicks: number | undefined;
function ticksPerSecond(): number {
  clockTicks ??= Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
  return clockTicks;
}

export interface ProcSample {
  readonly at: number;
  /** User plus system CPU time so far, ms. */
  readonly cpuMs: number;
  readonly rssKiB: number;
  /** Of the RSS: anonymous memory (heaps, stacks), the process's own. */
  readonly rssAnonKiB: number;
  /** Of the RSS: pages of mapped files, mostly the node binary itself, shared by every process that runs it. */
  readonly rssFileKiB: number;
}

/** CPU time and RSS of a process, from /proc/<pid>/stat and /proc/<pid>/status. */
export function procSample(pid: number): ProcSample {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (field: string) => Number(new RegExp(`${field}:\\s+(\\d+)`).exec(status)?.[1] ?? NaN);
  return { at: Date.now(), cpuMs: ((utime + stime) / ticksPerSecond()) * 1000, rssKiB: kib('VmRSS'), rssAnonKiB: kib('RssAnon'), rssFileKiB: kib('RssFile') };
}

/** The spot notice exactly as IMDS serves it. */
export function spotNotice(inMs: number): string {
  return JSON.stringify({ action: 'terminate', time: new Date(Date.now() + inMs).toISOString().replace(/\.\d+Z$/, 'Z') });
}
