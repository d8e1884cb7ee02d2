/** Exit codes of both commands, so scripts can tell outcomes apart (the one-shot's JSON names each as error.code). */
export const ExitCode = {
  /** The agent stopped cleanly; the one-shot drain saw the instance out of everything in scope (or a dry run reported). */
  ok: 0,
  /** A bug or an unexpected error: the log says what. */
  internal: 1,
  /** Bad command line or configuration: the message names what to fix. */
  usage: 2,
  /** The deadline passed before every load balancer was seen out. */
  timedOut: 3,
  /** No such instance in the VPC. */
  notFound: 4,
  /** No AWS credentials, or AWS refused or failed (permissions, a load balancer that could not be drained). */
  aws: 5,
  /** Stopped by Ctrl-C (SIGINT) or SIGTERM before the drain finished; the status says how far it got. */
  interrupted: 130,
} as const;

export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];
