/**
 * Tells a webhook receiver (Slack, a chat bridge, an incident tool) when a drain of this node starts and
 * when it ends: one JSON POST each, with the drain's status fields, the node, and a `text` line such
 * receivers show as is.
 *
 * A delivery never delays the drain: it runs beside it. It is tried again with jittered backoff (on no
 * answer, a timeout, 408, 429 or 5xx; another 4xx says the receiver refuses it, so it is not) until it is
 * delivered or its time is up: the drain's deadline, and at least a minute. A failure is logged once per
 * cause and counted. The URL is never logged whole: a Slack-style URL carries its credential in the
 * path, others in the user part or the query, so only its origin appears.
 */
import { readFileSync } from 'node:fs';
import { errorMessage } from '../aws/errors.ts';
import type { DrainStatus } from '../drain/status.ts';
import { backoff } from '../drain/retry.ts';
import { readText, send } from '../http/request.ts';
import type { Logger } from '../log.ts';

export type WebhookEvent = 'drain.started' | 'drain.ended';

export interface WebhookOptions {
  readonly url: URL;
  /** A file of `Name: value` lines (a mounted Secret), read at each delivery; undefined: no extra headers. */
  readonly headersFile?: string;
  readonly nodeName: string | undefined;
  readonly logger: Logger;
  /** Counts each delivery's outcome and each failed attempt. */
  readonly count?: (event: WebhookEvent, outcome: 'delivered' | 'given_up' | 'attempt_failed') => void;
}

const ATTEMPT_TIMEOUT_MS = 5_000;
/** However close the deadline, a notice gets this long to arrive. */
const MIN_TRYING_MS = 60_000;

export class Webhook {
  private readonly pending = new Set<Promise<void>>();
  private readonly stop = new AbortController();
  /** The causes logged already, so a receiver that stays down is said once, not at every attempt. */
  private readonly logged = new Set<string>();

  constructor(private readonly options: WebhookOptions) {}

  /** Where deliveries go, as it may be logged. */
  get origin(): string {
    return this.options.url.origin;
  }

  /** Starts delivering; returns at once. */
  notify(event: WebhookEvent, status: DrainStatus): void {
    const body = JSON.stringify({ event, node: this.options.nodeName ?? null, text: textOf(event, status, this.options.nodeName), ...status });
    const until = Math.max(Date.parse(status.deadline), Date.now() + MIN_TRYING_MS);
    const delivery = this.deliver(event, body, until).finally(() => this.pending.delete(delivery));
    this.pending.add(delivery);
  }

  /** Gives the deliveries under way until `graceMs` to arrive, then stops trying. */
  async close(graceMs: number): Promise<void> {
    const timer = setTimeout(() => this.stop.abort(), graceMs);
    await Promise.allSettled([...this.pending]);
    clearTimeout(timer);
  }

  private async deliver(event: WebhookEvent, body: string, until: number): Promise<void> {
    const { logger, count } = this.options;
    for (let attempt = 0; ; attempt++) {
      const cause = await this.attempt(body);
      if (cause === undefined) {
        count?.(event, 'delivered');
        logger.info({ event, webhook: this.origin, attempts: attempt + 1 }, 'webhook notified');
        return;
      }
      count?.(event, 'attempt_failed');
      if (!this.logged.has(cause.text)) {
        this.logged.add(cause.text);
        logger.warn({ event, webhook: this.origin, cause: cause.text }, `webhook delivery failed: ${cause.text}${cause.retry ? '; trying again' : ''}`);
      }
      try {
        if (!cause.retry || Date.now() >= until) throw new Error('out of time');
        await backoff(attempt, AbortSignal.any([this.stop.signal, AbortSignal.timeout(Math.max(1, until - Date.now()))]), 1_000, 30_000);
      } catch {
        count?.(event, 'given_up');
        logger.warn({ event, webhook: this.origin, attempts: attempt + 1, cause: cause.text }, 'webhook notice given up');
        return;
      }
    }
  }

  /** One POST; undefined when delivered, else why not and whether another try may work. */
  private async attempt(body: string): Promise<{ text: string; retry: boolean } | undefined> {
    let headers: Record<string, string>;
    try {
      headers = this.options.headersFile ? readHeaders(this.options.headersFile) : {};
    } catch (error) {
      return { text: `WEBHOOK_HEADERS_FILE cannot be used (${errorMessage(error)}): mount the Secret there, one "Name: value" a line`, retry: true };
    }
    const signal = AbortSignal.any([this.stop.signal, AbortSignal.timeout(ATTEMPT_TIMEOUT_MS)]);
    try {
      const answer = await send({ method: 'POST', url: this.options.url, headers: { 'user-agent': 'hasta-la-vista', ...headers, 'content-type': 'application/json' }, body, signal });
      await readText(answer.body, signal).catch(() => undefined);
      if (answer.status >= 200 && answer.status < 300) return undefined;
      const retry = answer.status === 408 || answer.status === 429 || answer.status >= 500;
      return { text: `the receiver answered ${answer.status}`, retry };
    } catch (error) {
      const timedOut = signal.aborted && !this.stop.signal.aborted;
      return { text: timedOut ? `no answer within ${ATTEMPT_TIMEOUT_MS / 1000} s` : `the receiver could not be reached (${(error as NodeJS.ErrnoException).code ?? errorMessage(error)})`, retry: true };
    }
  }
}

/** `Name: value` lines; blank lines and `#` comments are skipped. Throws on any other line, naming its number only (values are secret). */
export function readHeaders(path: string): Record<string, string> {
  const headers: Record<string, string> = {};
  readFileSync(path, 'utf8')
    .split('\n')
    .forEach((raw, index) => {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) return;
      const match = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):\s*(.*)$/.exec(line);
      if (!match) throw new Error(`line ${index + 1} is not "Name: value"`);
      headers[match[1]!.toLowerCase()] = match[2]!;
    });
  return headers;
}

/** The line a chat receiver shows. */
export function textOf(event: WebhookEvent, status: DrainStatus, nodeName: string | undefined): string {
  const who = `${status.instanceId}${nodeName ? ` (node ${nodeName})` : ''}`;
  const total = status.loadBalancers.length;
  const out = status.loadBalancers.filter((lb) => lb.state === 'out').length;
  if (event === 'drain.started') return `hasta-la-vista: draining ${who} from its load balancers (${status.trigger}), until ${status.deadline}`;
  const seconds = status.finishedAt ? ((Date.parse(status.finishedAt) - Date.parse(status.startedAt)) / 1000).toFixed(1) : '?';
  switch (status.state) {
    case 'deregistered':
      return `hasta-la-vista: ${who} is out of ${total === 1 ? 'its load balancer' : `all ${total} load balancers`} after ${seconds} s (${status.trigger})`;
    case 'timed_out':
      return `hasta-la-vista: the drain of ${who} timed out after ${seconds} s: ${out} of ${total} load balancers out${status.reason ? ` (${status.reason})` : ''}`;
    default:
      return `hasta-la-vista: the drain of ${who} ${status.state}: ${out} of ${total} load balancers out${status.reason ? ` (${status.reason})` : ''}`;
  }
}
