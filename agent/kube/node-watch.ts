/**
 * Follows this agent's own Node as the API server changes it, so the kubelet's "node is shutting down"
 * (written while the application pods are still stopping, long before the agent's own SIGTERM), an
 * autoscaler's taint or the Node's deletion reach the decision the moment they happen.
 *
 * A read, then a watch from the version read; when the server ends the watch it is opened again from
 * the last version seen; a version the server no longer holds (410) means reading the Node again. On
 * errors it retries with jittered backoff, so a restarted API server is not hit by every node at once.
 */
import { errorMessage } from '../aws/errors.ts';
import { backoff } from '../drain/retry.ts';
import type { Logger } from '../log.ts';
import { KubeApiError, type KubeClient, type KubeNode } from './client.ts';

/** What the watch sees of the Node: as it is now, or gone (deleted from the API). */
export type NodeSeen = { readonly kind: 'present'; readonly node: KubeNode } | { readonly kind: 'gone' };

export interface NodeWatchOptions {
  readonly kube: KubeClient;
  readonly nodeName: string;
  readonly onNode: (seen: NodeSeen) => void;
  readonly logger: Logger;
  /** First and longest wait between failed attempts. */
  readonly retryBaseMs?: number;
  readonly retryCapMs?: number;
}

/** A watch the server ends sooner than this without a word is waited after, so the loop cannot spin. */
const SHORTEST_HEALTHY_WATCH_MS = 1_000;
const QUICK_ENDS_BEFORE_WARNING = 3;

export class NodeWatch {
  private readonly stopping = new AbortController();
  private loop: Promise<void> | undefined;

  constructor(private readonly options: NodeWatchOptions) {}

  start(): void {
    this.loop ??= this.follow();
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    await this.loop;
  }

  private async follow(): Promise<void> {
    const { kube, nodeName, onNode, logger, retryBaseMs = 1_000, retryCapMs = 30_000 } = this.options;
    const signal = this.stopping.signal;
    let version: string | undefined;
    let seenOnce = false;
    let failures = 0;
    let quickEnds = 0;
    let lastCause: string | undefined;
    while (!signal.aborted) {
      try {
        if (version === undefined) {
          const node = await kube.getNode(nodeName);
          seenOnce = true;
          version = node.metadata.resourceVersion ?? '0';
          onNode({ kind: 'present', node });
        }
        const opened = Date.now();
        let events = 0;
        version = await kube.watchNode(nodeName, {
          resourceVersion: version,
          signal,
          onOpen: () => {
            if (lastCause !== undefined) logger.info({ node: nodeName }, 'watching the Node again');
            lastCause = undefined;
          },
          onEvent: (event) => {
            events++;
            if (event.type === 'DELETED') onNode({ kind: 'gone' });
            else if (event.type !== 'BOOKMARK') onNode({ kind: 'present', node: event.node });
          },
        });
        if (events === 0 && Date.now() - opened < SHORTEST_HEALTHY_WATCH_MS && !signal.aborted) {
          // Once is a server going away; every time is something in between that does not stream.
          if (++quickEnds >= QUICK_ENDS_BEFORE_WARNING) throw new Error('the API server ends every watch at once: is a proxy in between that does not stream?');
          await backoff(quickEnds, signal, retryBaseMs, retryCapMs).catch(() => undefined);
          continue;
        }
        quickEnds = 0;
        failures = 0;
      } catch (error) {
        if (signal.aborted) break;
        if (error instanceof KubeApiError && error.status === 410) {
          // Expired: the server compacted the version away. Read the Node again, at once.
          version = undefined;
          continue;
        }
        if (error instanceof KubeApiError && error.status === 404 && seenOnce) {
          // Deleted between a watch and the next read.
          onNode({ kind: 'gone' });
        }
        const cause = describe(error, nodeName, seenOnce);
        // Once per change of cause: a long outage is one line, not one per retry.
        if (cause !== lastCause) logger.warn({ node: nodeName, err: error }, `cannot watch the Node (retrying with backoff): ${cause}`);
        lastCause = cause;
        await backoff(failures++, signal, retryBaseMs, retryCapMs).catch(() => undefined);
      }
    }
  }
}

function describe(error: unknown, nodeName: string, seenOnce: boolean): string {
  if (error instanceof KubeApiError && error.status === 404 && !seenOnce) {
    return `no Node named "${nodeName}": NODE_NAME must be the Node's name (the chart sets it from spec.nodeName)`;
  }
  if (error instanceof KubeApiError && error.status === 404) return `the Node "${nodeName}" is gone`;
  return errorMessage(error);
}
