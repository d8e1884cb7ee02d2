/**
 * Entry point: parses the command line, loads the configuration, runs the agent or the one-shot drain,
 * and turns the outcome into an exit code. Errors a user can cause end here with a message that says
 * what to fix; anything else is logged, never swallowed. A run of the one-shot command also answers
 * every failure with its one JSON document on stdout (agent/oneshot.ts).
 */
import { commandName, helpText, parseCommand, UsageError } from './cli.ts';
import { errorMessage } from './aws/errors.ts';
import { ConfigError, loadConfig } from './config.ts';
import { PlacementError } from './aws/provider.ts';
import { KubeConfigError } from './kube/config.ts';
import { ExitCode } from './exit-codes.ts';
import { createLogger, humanReadable } from './log.ts';
import { failed, knownFields, ResultWriter, runOneShot } from './oneshot.ts';
import { routeRuntimeWarnings } from './runtime-warnings.ts';
import { runAgent } from './agent.ts';

declare const AGENT_VERSION: string | undefined;
export const VERSION = typeof AGENT_VERSION === 'string' ? AGENT_VERSION : 'dev';

async function main(argv: readonly string[]): Promise<ExitCode> {
  const result = new ResultWriter(process.stdout);
  let command;
  try {
    command = parseCommand(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    process.stderr.write(`hasta-la-vista: ${error.message}\nTry hasta-la-vista --help.\n`);
    if (commandName(argv) === 'drain') result.write(failed(error));
    return ExitCode.usage;
  }
  if (command.kind === 'help') {
    process.stdout.write(helpText(VERSION));
    return ExitCode.ok;
  }
  if (command.kind === 'version') {
    process.stdout.write(`${VERSION}\n`);
    return ExitCode.ok;
  }

  let config;
  try {
    config = loadConfig(process.env, command.kind === 'agent' ? 'agent' : 'oneshot');
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`hasta-la-vista: ${error.message}\n`);
    if (command.kind === 'drain') result.write(failed(error, knownFields(command)));
    return ExitCode.usage;
  }

  const logger = createLogger(config.logLevel, command.kind === 'drain' ? humanReadable(process.stderr) : process.stderr);
  routeRuntimeWarnings(logger);
  process.on('unhandledRejection', (reason) => {
    // A bug: say so loudly and let the orchestrator restart us rather than run in an unknown state.
    logger.fatal({ err: reason }, 'unhandled promise rejection');
    if (command.kind === 'drain') result.write({ state: 'failed', error: { code: 'internal', message: `unhandled promise rejection: ${errorMessage(reason)}` } });
    process.exit(ExitCode.internal);
  });
  if (command.kind === 'drain') return runOneShot(command, config, logger, result);
  try {
    return await runAgent(config, logger, VERSION);
  } catch (error) {
    if (error instanceof PlacementError || error instanceof KubeConfigError) {
      logger.error(error.message);
      return ExitCode.usage;
    }
    logger.fatal({ err: error }, `unexpected error: ${errorMessage(error)}`);
    return ExitCode.internal;
  }
}

process.exitCode = await main(process.argv.slice(2));
