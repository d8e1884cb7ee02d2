/**
 * `hasta-la-vista drain`: drain one instance once and exit by outcome. Every run prints exactly one JSON
 * document on stdout, failures included, so a script can always parse it: the drain's status (as
 * `GET /drain/<id>` answers it) once a drain ran, else `{ state: "failed", error }` with the status
 * fields already known. Any run that does not exit 0 carries `error: { code, message }`, and the code
 * names the exit (EXIT_CODES). The log, for a person, goes to stderr.
 */
import { errorMessage, isPermissionError } from './aws/errors.ts';
import { drainHeldByHook } from './aws/lifecycle.ts';
import { createAwsProvider, PlacementError } from './aws/provider.ts';
import type { AwsClients } from './aws/clients.ts';
import { UsageError, type Command } from './cli.ts';
import { ConfigError, type Config } from './config.ts';
import { Drainer } from './drain/drainer.ts';
import { describeScope } from './drain/family.ts';
import { InstanceNotFoundError } from './drain/instance.ts';
import type { DrainStatus } from './drain/status.ts';
import { ExitCode } from './exit-codes.ts';
import type { Logger } from './log.ts';
import { imdsFor, resolvePlacement } from './placement.ts';

export type DrainCommand = Extract<Command, { kind: 'drain' }>;

/** Why a run did not exit 0. */
export type FailureCode = 'usage' | 'config' | 'timed_out' | 'not_found' | 'credentials' | 'aws' | 'interrupted' | 'internal';

export interface RunError {
  readonly code: FailureCode;
  readonly message: string;
}

export const EXIT_CODES: Readonly<Record<FailureCode, ExitCode>> = {
  usage: ExitCode.usage,
  config: ExitCode.usage,
  timed_out: ExitCode.timedOut,
  not_found: ExitCode.notFound,
  credentials: ExitCode.aws,
  aws: ExitCode.aws,
  interrupted: ExitCode.interrupted,
  internal: ExitCode.internal,
};

/** The status fields a run knows before any drain began. */
export type KnownFields = Partial<Pick<DrainStatus, 'instanceId' | 'trigger' | 'scope' | 'dryRun'>>;

/** The one document a run prints: a drain's status (with `error` unless it exits 0), or a failure before any drain. */
export type OneShotResult = (DrainStatus & { readonly error?: RunError }) | (KnownFields & { readonly state: 'failed'; readonly error: RunError });

/** Prints a run's one document: whatever tries to print a second one (a late unhandled rejection) is dropped. */
export class ResultWriter {
  private printed = false;

  constructor(private readonly out: NodeJS.WritableStream) {}

  get written(): boolean {
    return this.printed;
  }

  /** Prints `result` unless a document was printed already, and answers the exit code it stands for. */
  write(result: OneShotResult): ExitCode {
    if (!this.printed) {
      this.printed = true;
      this.out.write(JSON.stringify(result, null, 2) + '\n');
    }
    return result.error === undefined ? ExitCode.ok : EXIT_CODES[result.error.code];
  }
}

/** A failure before any drain began, as printed. */
export function failed(error: unknown, known: KnownFields = {}): OneShotResult {
  return { ...known, state: 'failed', error: runError(error) };
}

/** What the command line alone says about the drain. */
export function knownFields(command: DrainCommand): KnownFields {
  return {
    ...('id' in command.target ? { instanceId: command.target.id } : {}),
    trigger: 'cli',
    scope: describeScope(command.scope),
    dryRun: command.dryRun,
  };
}

/** An error as the document names it: what a user can fix has its own code; anything else is a bug. */
export function runError(error: unknown): RunError {
  if (error instanceof UsageError) return { code: 'usage', message: error.message };
  if (error instanceof ConfigError) return { code: 'config', message: `invalid configuration: ${error.problems.join('; ')}` };
  if (error instanceof PlacementError) return { code: 'config', message: error.message };
  if (error instanceof InstanceNotFoundError) return { code: 'not_found', message: error.message };
  if (error instanceof Error && error.name === 'CredentialsProviderError') {
    return {
      code: 'credentials',
      message: `no AWS credentials (${error.message}): give them as the AWS SDK looks for them, e.g. AWS_PROFILE, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a web identity (IRSA), EKS Pod Identity or an instance profile`,
    };
  }
  // The SDK puts $metadata on what AWS answered and on network failures on the way there.
  if (typeof error === 'object' && error !== null && '$metadata' in error) {
    return { code: 'aws', message: `AWS call failed: ${errorMessage(error)}${isPermissionError(error) ? ' (see the README for the IAM policy)' : ''}` };
  }
  return { code: 'internal', message: `unexpected error: ${errorMessage(error)} (a bug; the log on stderr has the stack)` };
}

const ASG_NEEDS_A_HOOK =
  "--asg holds the instance with the lifecycle hook named in ASG_LIFECYCLE_HOOK, and none is set: set ASG_LIFECYCLE_HOOK to the name of the termination hook you created for this agent (never EKS's Terminate-LC-Hook), or leave --asg out";

/** Runs the drain and prints its one document through `out`; never throws, answers the exit code. */
export async function runOneShot(command: DrainCommand, config: Config, logger: Logger, out: ResultWriter): Promise<ExitCode> {
  const dryRun = command.dryRun || config.dryRun;
  let known: KnownFields = { ...knownFields(command), dryRun };
  const fail = (error: RunError, cause?: unknown): ExitCode => {
    if (error.code === 'internal') logger.fatal({ err: cause }, error.message);
    else logger.error(cause === undefined ? {} : { err: cause }, error.message);
    return out.write({ ...known, state: 'failed', error });
  };
  if (command.asg && config.lifecycleHook.kind !== 'named') return fail({ code: 'usage', message: ASG_NEEDS_A_HOOK });

  const timeoutMs = (command.timeoutSeconds ?? config.drainTimeoutMs / 1000) * 1000;
  // Ctrl-C ends the drain where it is; the status then says how far it got. A second Ctrl-C kills at once.
  let interrupted = false;
  let drainer: Drainer | undefined;
  const lookup = new AbortController();
  const interrupt = () => {
    interrupted = true;
    lookup.abort(new DOMException('interrupted', 'AbortError'));
    void drainer?.abortAll();
  };
  process.once('SIGINT', interrupt).once('SIGTERM', interrupt);
  let clients: AwsClients | undefined;
  try {
    const forSelf = 'self' in command.target;
    const needsImds = forSelf || config.region === undefined || config.vpcId === undefined || config.clusterName === undefined;
    const imds = needsImds ? imdsFor(config, logger) : undefined;
    const use = imds && ({ client: imds, for: forSelf ? 'self' : 'placement' } as const);
    const resolved = await resolvePlacement(config, use, logger).finally(() => imds?.close());
    clients = resolved.clients;
    const target = 'self' in command.target ? { id: resolved.self!.instanceId } : command.target;
    if ('id' in target) known = { ...known, instanceId: target.id };
    const provider = createAwsProvider(clients, resolved.placement, config.lifecycleHook, logger);
    drainer = new Drainer({ ...provider, calls: clients.calls, logger, maxConcurrent: 1 });

    const deadline = new Date(Date.now() + timeoutMs);
    const lookupTimer = setTimeout(() => lookup.abort(new DOMException('the lookup passed the deadline', 'TimeoutError')), timeoutMs);
    const instance = await drainer.find(target, lookup.signal).finally(() => clearTimeout(lookupTimer));
    const handle = drainer.start(instance, { trigger: 'cli', scope: command.scope, deadline, dryRun });
    const status = command.asg && !dryRun ? await drainHeldByHook(provider.lifecycle, instance, handle, logger) : await handle.done;
    return out.write(outcome(status, interrupted));
  } catch (error) {
    if (error instanceof InstanceNotFoundError) return fail(runError(error));
    if (interrupted) return fail({ code: 'interrupted', message: 'interrupted before the drain began: nothing was changed' });
    if (lookup.signal.aborted) return fail({ code: 'timed_out', message: `the instance could not be looked up within ${timeoutMs / 1000} s: nothing was changed` });
    const described = runError(error);
    // What AWS answered, or a bug, is worth the error's details; a missing setting needs only its message.
    return fail(described, described.code === 'aws' || described.code === 'internal' ? error : undefined);
  } finally {
    process.off('SIGINT', interrupt).off('SIGTERM', interrupt);
    clients?.destroy();
  }
}

/** A finished drain's status, with the error its exit stands for. */
function outcome(status: DrainStatus, interrupted: boolean): OneShotResult {
  if (interrupted) {
    return { ...status, error: { code: 'interrupted', message: `Ctrl-C or SIGTERM stopped the drain (${status.state}${status.reason ? `: ${status.reason}` : ''})` } };
  }
  switch (status.state) {
    case 'deregistered':
    case 'skipped':
      return status;
    case 'timed_out':
      return { ...status, error: { code: 'timed_out', message: status.reason ?? 'the deadline passed before every load balancer was seen out' } };
    case 'failed':
    case 'draining':
      return { ...status, error: { code: 'aws', message: status.reason ?? 'the drain did not finish' } };
  }
}
