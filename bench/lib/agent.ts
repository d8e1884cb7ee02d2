/** Running the built agent (dist/main.js) for the benchmarks, and reading its logs and /proc. */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { spawnAgent, type AgentProcess } from '../../test/helpers/agent-harness.ts';

export { spawnAgent, type AgentProcess };

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
