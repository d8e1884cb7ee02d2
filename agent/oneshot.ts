/** `hasta-la-vista drain`: drain one instance once, print its JSON status, exit by outcome. */
import { errorCode, errorMessage, isPermissionError } from './aws/errors.ts';
import { drainHeldByHook } from './aws/lifecycle.ts';
import { createAwsProvider } from './aws/provider.ts';
import type { Command } from './cli.ts';
import type { Config } from './config.ts';
import { Drainer } from './drain/drainer.ts';
import { InstanceNotFoundError } from './drain/instance.ts';
import type { DrainStatus } from './drain/status.ts';
import { ExitCode } from './exit-codes.ts';
import type { Logger } from './log.ts';
import { imdsFor, resolvePlacement } from './placement.ts';

type DrainCommand = Extract<Command, { kind: 'drain' }>;

export async function runOneShot(command: DrainCommand, config: Config, logger: Logger, stdout: NodeJS.WritableStream): Promise<ExitCode> {
  const needsImds = command.target === undefined || config.region === undefined || config.vpcId === undefined || config.clusterName === undefined;
  const imds = needsImds ? imdsFor(config, logger) : undefined;
  const { placement, clients, self } = await resolvePlacement(config, imds, logger).finally(() => imds?.close());
  const target = command.target ?? { id: self!.instanceId };
  const provider = createAwsProvider(clients, placement, config.lifecycleHook, logger);
  const drainer = new Drainer({ ...provider, calls: clients.calls, logger, maxConcurrent: 1 });

  const timeoutMs = (command.timeoutSeconds ?? config.drainTimeoutMs / 1000) * 1000;
  const deadline = new Date(Date.now() + timeoutMs);
  // Ctrl-C ends the drain where it is; the status then says how far it got.
  let interrupted = false;
  const lookup = new AbortController();
  const interrupt = () => {
    interrupted = true;
    lookup.abort(new DOMException('interrupted', 'AbortError'));
    void drainer.abortAll();
  };
  process.once('SIGINT', interrupt).once('SIGTERM', interrupt);
  try {
    const lookupTimer = setTimeout(() => lookup.abort(new DOMException('the lookup passed the deadline', 'TimeoutError')), timeoutMs);
    const instance = await drainer.find(target, lookup.signal).finally(() => clearTimeout(lookupTimer));
    const dryRun = command.dryRun || config.dryRun;
    const handle = drainer.start(instance, { trigger: 'cli', scope: command.scope, deadline, dryRun });
    const status = command.asg && !dryRun ? await drainHeldByHook(provider.lifecycle, instance, handle, logger) : await handle.done;
    stdout.write(JSON.stringify(status, null, 2) + '\n');
    return interrupted ? ExitCode.interrupted : exitCodeOf(status);
  } catch (error) {
    if (error instanceof InstanceNotFoundError) {
      logger.error(error.message);
      return ExitCode.notFound;
    }
    if (interrupted) {
      logger.error('interrupted before the drain began: nothing was changed');
      return ExitCode.interrupted;
    }
    if (lookup.signal.aborted) {
      logger.error(`the instance could not be looked up within ${timeoutMs / 1000} s: nothing was changed`);
      return ExitCode.timedOut;
    }
    // Only AWS's own errors carry a code; anything else is a bug, for main to report as one.
    if (errorCode(error) === undefined) throw error;
    logger.error({ err: error }, `drain failed: ${errorMessage(error)}${isPermissionError(error) ? ' (see the README for the IAM policy)' : ''}`);
    return ExitCode.aws;
  } finally {
    process.off('SIGINT', interrupt).off('SIGTERM', interrupt);
    clients.destroy();
  }
}

function exitCodeOf(status: DrainStatus): ExitCode {
  switch (status.state) {
    case 'deregistered':
    case 'skipped':
      return ExitCode.ok;
    case 'timed_out':
      return ExitCode.timedOut;
    case 'failed':
    case 'draining':
      return ExitCode.aws;
  }
}
