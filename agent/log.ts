import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';
import { isoTimestamp } from './utc-time.ts';

export type { Logger };

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/**
 * JSON logs, one event a line, on stderr (stdout belongs to the one-shot command's result).
 * Anything that may carry the API secret is redacted here, once, for every logger.
 */
export function createLogger(level: LogLevel, destination: NodeJS.WritableStream = process.stderr): Logger {
  return pino(
    {
      level,
      base: { app: 'hasta-la-vista' },
      // pino's isoTime, without toISOString (utc-time.ts says why).
      timestamp: () => `,"time":"${isoTimestamp(Date.now())}"`,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: ['secret', '*.secret', 'config.secret', 'headers.authorization', 'req.headers.authorization'], censor: '[redacted]' },
    },
    destination as pino.DestinationStream,
  );
}

/** A logger that writes nowhere, for tests and library use. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

const NOT_SHOWN_AS_FIELDS = new Set(['level', 'time', 'msg', 'app', 'pid', 'hostname']);

/**
 * For a person at a terminal (the one-shot command's stderr): each JSON event as
 * "10:00:00 info drain started instanceId=i-0abc trigger=cli". Logs stay pino events underneath.
 */
export function humanReadable(out: NodeJS.WritableStream): NodeJS.WritableStream {
  let pending = '';
  return new Writable({
    write(chunk: Buffer, _encoding, done) {
      pending += chunk.toString();
      let newline;
      while ((newline = pending.indexOf('\n')) >= 0) {
        out.write(formatLine(pending.slice(0, newline)) + '\n');
        pending = pending.slice(newline + 1);
      }
      done();
    },
  });
}

function formatLine(line: string): string {
  let event: Record<string, unknown>;
  try {
    event = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  const time = typeof event.time === 'string' ? event.time.slice(11, 19) : '';
  const fields = Object.entries(event)
    .filter(([key]) => !NOT_SHOWN_AS_FIELDS.has(key))
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
  return [time, event.level, event.msg, ...fields].filter((part) => part !== undefined && part !== '').join(' ');
}
