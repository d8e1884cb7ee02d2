/**
 * For the spot-wave benchmark only: several agents in one process, so that a wave of hundreds of nodes
 * fits the few cores of this machine (a hundred node processes waking at the same moment starve each
 * other and the coordinator for seconds, which a real node with its own cores never sees).
 *
 * Each agent is the agent's own `runAgent` with its own configuration, loaded from its own environment
 * as `main.ts` does (its IMDS, port, node and pod names, Kubernetes access), and its own logger: the
 * code path of a drain is the same as in a process of its own. What the agents share is what a process
 * shares: the loaded modules, the event loop and the AWS SDK's credential chain (the same everywhere).
 *
 * HOSTED_AGENTS: a JSON array of environments, one per agent, each laid over this process's own (which
 * holds what they all share, and what the AWS SDK reads from the process: AWS_ENDPOINT_URL).
 * Every log line of agent i is written to stderr as `i<TAB>line`; bench/lib/agent.ts splits them again.
 */
import { Writable } from 'node:stream';
import { loadConfig } from '../../agent/config.ts';
import { createLogger } from '../../agent/log.ts';
import { runAgent } from '../../agent/agent.ts';
import { routeRuntimeWarnings } from '../../agent/runtime-warnings.ts';

const environments = JSON.parse(process.env.HOSTED_AGENTS ?? '[]') as Record<string, string>[];
// Each agent listens for SIGTERM and SIGINT once, twice after its first signal.
process.setMaxListeners(4 * environments.length + 10);

function prefixed(index: number): Writable {
  return new Writable({
    write(chunk: Buffer, _encoding, done) {
      process.stderr.write(chunk.toString().replace(/^(?=.)/gm, `${index}\t`), () => done());
    },
  });
}

const runs = environments.map((own, index) => {
  const env = { ...process.env, ...own };
  const config = loadConfig(env, 'agent');
  const logger = createLogger(config.logLevel, prefixed(index));
  if (index === 0) routeRuntimeWarnings(logger);
  return runAgent(config, logger, 'bench-hosted', env);
});
process.on('unhandledRejection', (reason) => {
  process.stderr.write(`host\tunhandled rejection: ${String(reason)}\n`);
  process.exit(70);
});
const codes = await Promise.all(runs);
process.exitCode = Math.max(0, ...codes);
