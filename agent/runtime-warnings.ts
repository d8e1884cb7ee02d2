/**
 * Which of Node's runtime warnings are shown, decided here once for every entry point (the agent, the
 * one-shot command, the demo): each warning becomes one log event, never Node's own multi-line print
 * or a stack trace in the middle of a JSON log or a timeline.
 */
import type { Logger } from './log.ts';

/**
 * The AWS SDK's notice that its releases after January 2027 need Node >= 22. On Node 20, which this
 * project supports, it is expected and asks nothing of the user today, so it is kept at debug.
 * The SDK emits it as plain text, so Node names it `Warning`; the text starts with its real name.
 */
export function isSdkNodeVersionNotice(warning: Error): boolean {
  return warning.name === 'NodeVersionSupportWarning' || warning.message.startsWith('NodeVersionSupportWarning:');
}

/**
 * Replaces Node's default warning printer for the whole process: the SDK's Node-version notice goes to
 * `logger` at debug, any other warning at warn, each on one line; a warning repeated with the same text
 * is logged once, so a warning raised in a loop cannot flood the log.
 */
export function routeRuntimeWarnings(logger: Logger): void {
  const seen = new Set<string>();
  process.removeAllListeners('warning');
  process.on('warning', (warning) => {
    const key = `${warning.name}\n${warning.message}`;
    if (seen.has(key)) return;
    seen.add(key);
    const message = warning.message.replace(/\s+/g, ' ').trim();
    if (isSdkNodeVersionNotice(warning)) {
      logger.debug({ warning: 'NodeVersionSupportWarning' }, message.replace(/^NodeVersionSupportWarning: /, ''));
    } else {
      logger.warn({ warning: warning.name, code: (warning as NodeJS.ErrnoException).code }, message);
    }
  });
}
