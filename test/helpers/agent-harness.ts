/**
 * Runs the BUILT agent (`node dist/main.js`) as a long-lived child process against the fakes, and
 * gives tests what a user has: its HTTP API, its output, its exit code.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DrainStatus } from '../../agent/drain/status.ts';
import { MAIN, cleanEnv } from './run.ts';

export interface AgentProcess {
  readonly port: number;
  readonly url: string;
  readonly child: ChildProcess;
  /** Everything the agent wrote so far. */
  stdout(): string;
  stderr(): string;
  /** stderr as parsed JSON log events (lines that do not parse are skipped here; see nonJsonLines). */
  logs(): Record<string, any>[];
  /** stderr lines that are not JSON objects. */
  nonJsonLines(): string[];
  /** Resolves with the exit code (or the signal's name) once the process has ended. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  alive(): boolean;
  fetch(path: string, init?: RequestInit): Promise<Response>;
}

const running = new Set<AgentProcess>();

/** `node`: the runtime to run it on (benchmarks compare Node versions); this process's by default. */
export function spawnAgent(port: number, env: Record<string, string>, node = process.execPath): AgentProcess {
  const child = spawn(node, [MAIN], { env: cleanEnv({ PORT: String(port), ...env }), stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return agentIn(child, port, { stdout: () => stdout, stderr: () => stderr });
}

/** An agent listening on `port` in `child`, whose output so far `output` gives (the process's, or its share of it). */
export function agentIn(child: ChildProcess, port: number, output: { stdout(): string; stderr(): string }): AgentProcess {
  const { stdout, stderr } = output;
  let ended = child.exitCode !== null || child.signalCode !== null;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    if (ended) return resolve({ code: child.exitCode, signal: child.signalCode });
    child.once('exit', (code, signal) => {
      ended = true;
      resolve({ code, signal });
    });
  });
  const url = `http://127.0.0.1:${port}`;
  const agent: AgentProcess = {
    port,
    url,
    child,
    stdout,
    stderr,
    logs: () =>
      stderr()
        .split('\n')
        .filter((line) => line.trim() !== '')
        .flatMap((line) => {
          try {
            const parsed = JSON.parse(line) as unknown;
            return typeof parsed === 'object' && parsed !== null ? [parsed as Record<string, any>] : [];
          } catch {
            return [];
          }
        }),
    nonJsonLines: () =>
      stderr()
        .split('\n')
        .filter((line) => line.trim() !== '')
        .filter((line) => {
          try {
            const parsed = JSON.parse(line) as unknown;
            return typeof parsed !== 'object' || parsed === null || Array.isArray(parsed);
          } catch {
            return true;
          }
        }),
    exited,
    alive: () => !ended,
    fetch: async (path, init) => {
      const method = init?.method ?? 'GET';
      try {
        return await fetch(url + path, { ...init, signal: init?.signal ?? AbortSignal.timeout(20_000) });
      } catch (error) {
        // A DOMException prints as {} in the test report: say what did not answer.
        const why = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
        throw new Error(`${method} ${path.replace(/pw=[^&]*/, 'pw=…')} got no answer from the agent (${why})`, { cause: error });
      }
    },
  };
  running.add(agent);
  void exited.then(() => running.delete(agent));
  return agent;
}

/** Kills every agent still running (afterEach), and waits until each has gone. */
export async function killAllAgents(): Promise<void> {
  const left = [...running];
  for (const agent of left) agent.child.kill('SIGKILL');
  await Promise.all(left.map((agent) => agent.exited));
}

/**
 * Retries `fn` until it returns something other than undefined/false without throwing, or the time is
 * up; then throws the last assertion error (or says what was awaited).
 */
export async function eventually<T>(fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs: number, what = 'condition'): Promise<T> {
  const until = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await fn();
      if (value !== undefined && value !== false) return value as T;
      lastError = undefined;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() >= until) {
      if (lastError instanceof Error) {
        lastError.message = `not within ${timeoutMs} ms (${what}): ${lastError.message}`;
        throw lastError;
      }
      throw new Error(`${what}: not within ${timeoutMs} ms`);
    }
    await sleep(100);
  }
}

/** GET /drain/<id> (with the secret) until the drain's state is `state`; its status then. */
export async function statusBecomes(agent: AgentProcess, secret: string, instanceId: string, state: DrainStatus['state'], timeoutMs = 15_000): Promise<DrainStatus> {
  return eventually(
    async () => {
      const answer = await agent.fetch(`/drain/${instanceId}`, { headers: { authorization: `Bearer ${secret}` } });
      const body = answer.status === 200 ? ((await answer.json()) as DrainStatus) : undefined;
      assert.equal(body?.state, state, `GET /drain/${instanceId}: ${answer.status} ${JSON.stringify(body)}`);
      return body;
    },
    timeoutMs,
    `drain of ${instanceId} ${state}`,
  );
}

/** Waits for /readyz 200; fails early, with the agent's output, if it exits first. */
export async function waitReady(agent: AgentProcess, timeoutMs = 20_000): Promise<void> {
  await eventually(
    async () => {
      if (!agent.alive()) throw new Error(`the agent exited before it was ready:\n${agent.stderr()}`);
      const answer = await agent.fetch('/readyz', { signal: AbortSignal.timeout(2_000) });
      return answer.status === 200;
    },
    timeoutMs,
    'GET /readyz answers 200',
  ).catch((error: Error) => {
    error.message += `\nagent stderr:\n${agent.stderr().slice(-4000)}`;
    throw error;
  });
}

/** Resolves with the exit, or rejects when the agent has not exited within `timeoutMs`. */
export async function exitWithin(agent: AgentProcess, timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }> {
  const started = Date.now();
  const timer = sleep(timeoutMs).then(() => 'timeout' as const);
  const outcome = await Promise.race([agent.exited, timer]);
  if (outcome === 'timeout') throw new Error(`the agent did not exit within ${timeoutMs} ms:\n${agent.stderr().slice(-4000)}`);
  return { ...outcome, ms: Date.now() - started };
}

/** The value of one Prometheus sample, e.g. sample(text, 'x_total', { trigger: 'api' }); undefined if absent. */
export function metricSample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  let total: number | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!match || match[1] !== name) continue;
    const found: Record<string, string> = {};
    for (const pair of (match[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) found[pair[1]!] = pair[2]!;
    if (Object.entries(labels).every(([key, value]) => found[key] === value)) total = (total ?? 0) + Number(match[4]);
  }
  return total;
}
