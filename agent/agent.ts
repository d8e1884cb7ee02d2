import type { Config } from './config.ts';
import { ExitCode } from './exit-codes.ts';
import type { Logger } from './log.ts';

export async function runAgent(_config: Config, logger: Logger, _version: string): Promise<ExitCode> {
  logger.error('the agent is not built yet');
  return ExitCode.internal;
}
