/**
 * A dying node's drain, handed to the cluster's coordinator: this agent asks it over the authenticated
 * drain API (`POST /drain?id=<self>`) and follows that drain's status (`GET /drain/<id>`) into its own,
 * so the coordinator can batch a whole spot wave into one call per load balancer.
 *
 * Never worse than draining alone: the agent drains by itself when the coordinator does not answer
 * within 2 s (asked once more, for up to 8 s, while the Lease says it still coordinates: busy serving a
 * wave, it accepts every hand-over, only late), stops answering (two polls in a row; a status read
 * that only timed out while the coordinator still renews the Lease is read again, with up to 8 s for
 * the answer, for as long as a successor would be waited for), ends the drain
 * without getting the node out while time is left, has not deregistered anything in time, or steps
 * down before it has. A coordinator that
 * is gone (it stopped answering, refused the connection, or stepped down) is first given a successor's
 * worth of time (up to 30 s, at most a third of the time left): a wave whose coordinator dies is handed
 * to the next one and stays batched, where a hundred agents draining alone at once would spend the
 * account's budget against each other.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { errorCode, errorMessage } from '../aws/errors.ts';
import type { DrainObserver } from '../drain/drain.ts';
import { DrainCanceled, type DrainRunner } from '../drain/drainer.ts';
import { isFinished, type DrainStatus, type HandOverStatus } from '../drain/status.ts';
import { readText, send } from '../http/request.ts';
import { PEER_HEADER } from '../http/server.ts';
import type { Logger } from '../log.ts';
import type { Coordinator } from './coordination.ts';

export interface HandOverTiming {
  /** Each request to the coordinator, the hand-over included, must be answered this fast. */
  readonly answerMs: number;
  /**
   * A hand-over not answered within answerMs is asked once more, with this long for the answer (and at
   * most a third of the time left), while the Lease still names the coordinator: in a wave of 300 on a
   * busy coordinator, every hand-over was accepted, a third of them after 2 s (bench/RESULTS.md), and
   * each follower that gave up at 2 s drained alone against the account's buckets the wave needs. A
   * status read that timed out is read again with this long, while the coordinator renews the Lease.
   */
  readonly slowAnswerMs: number;
  /** Between two reads of the coordinator's status of the drain. */
  readonly pollMs: number;
  /** Polls failing in a row before this agent drains alone. */
  readonly failedPolls: number;
  /**
   * The coordinator must have deregistered something (or finished) this soon after the hand-over, and
   * within a third of the time to the deadline, or this agent drains alone with the rest of the time.
   * Not much less: a coordinator slowed by a wave is still the fastest way out, while followers giving
   * up on it together spend the account's API budget it needs (measured: bench/RESULTS.md, 165 nodes).
   */
  readonly progressWaitMs: number;
  /**
   * How long a follower waits for the next coordinator when its own is gone (and at most a third of the
   * time left): the lease duration (15 s) plus a follower's longest pause between reads (11 s), and a margin.
   */
  readonly successorWaitMs: number;
}

export const HAND_OVER_TIMING: HandOverTiming = { answerMs: 2_000, slowAnswerMs: 8_000, pollMs: 1_000, failedPolls: 2, progressWaitMs: 30_000, successorWaitMs: 30_000 };

export interface HandOverOptions {
  readonly coordinator: Coordinator;
  readonly secret: string;
  /** This agent's pod name. */
  readonly peer: string;
  /** False once the Lease names another holder than `coordinator`, or none. */
  readonly stillCoordinating: (coordinator: Coordinator) => boolean;
  /**
   * True while the Lease, as last read, names `coordinator` and has not expired: it renews the Lease, so
   * it is alive, however late it answers.
   */
  readonly renewing: (coordinator: Coordinator) => boolean;
  /** Another coordinator than `after` once the Lease names one, within `waitMs`; undefined when none does (or without coordination). */
  readonly successor?: (after: Coordinator, waitMs: number, signal: AbortSignal) => Promise<Coordinator | undefined>;
  /** Draining alone, when the coordinator cannot serve. */
  readonly alone: DrainRunner;
  readonly observer?: DrainObserver;
  readonly logger: Logger;
  readonly timing?: HandOverTiming;
}

/** A connection refused or reset: no agent listens at the coordinator's endpoint any more. */
const GONE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET']);

/** Thrown for an answer that is not a drain status: the coordinator cannot serve this drain. */
class CoordinatorError extends Error {}

/** Who asks the coordinator, and how long an answer may take. */
export interface Asker {
  readonly secret: string;
  /** This agent's pod name. */
  readonly peer: string;
  readonly answerMs: number;
}

/** One request to the coordinator's drain API; a drain status, or a CoordinatorError saying what came instead. */
async function askCoordinator(coordinator: Coordinator, { secret, peer, answerMs }: Asker, method: 'GET' | 'POST' | 'DELETE', path: string, payload?: unknown): Promise<DrainStatus> {
  const signal = AbortSignal.timeout(answerMs);
  const answer = await send({
    method,
    url: `http://${coordinator.endpoint}${path}`,
    headers: { authorization: `Bearer ${secret}`, [PEER_HEADER]: peer, ...(payload ? { 'content-type': 'application/json' } : {}) },
    body: payload ? JSON.stringify(payload) : undefined,
    signal,
  });
  const body = parseJson(await readText(answer.body, signal)) as (DrainStatus & { error?: string }) | undefined;
  if ((answer.status === 200 || answer.status === 202) && body?.instanceId) return body;
  throw new CoordinatorError(`answered ${answer.status}${body?.error ? `: ${body.error}` : ''}`);
}

/**
 * Tells `coordinator` that this instance was given back: it ends the drain it serves, if it still runs,
 * and stops keeping the instance out (its re-check would otherwise take it out again). Resolves with the
 * drain's final status there; undefined when it could not be told, or knew no such drain.
 */
export async function releaseBy(coordinator: Coordinator, instanceId: string, asker: Asker): Promise<DrainStatus | undefined> {
  return askCoordinator(coordinator, asker, 'DELETE', `/drain/${instanceId}`).catch(() => undefined);
}

/**
 * True while `coordinator` still knows this instance's drain as deregistered: then its keep-out re-check
 * of the peers it served covers the instance. A coordinator that restarted (same pod, same name) has
 * forgotten it and answers 404, as does one that cannot be reached: then the follower checks itself.
 */
export async function stillKeptOutBy(coordinator: Coordinator, instanceId: string, asker: Asker): Promise<boolean> {
  try {
    const status = await askCoordinator(coordinator, asker, 'GET', `/drain/${instanceId}`);
    return status.instanceId === instanceId && status.state === 'deregistered';
  } catch {
    return false;
  }
}

export function handOverTo(options: HandOverOptions): DrainRunner {
  const { coordinator, secret, peer, stillCoordinating, renewing, alone, observer, timing = HAND_OVER_TIMING } = options;
  return async (instance, drainOptions, status, signal) => {
    const started = Date.now();
    const log = options.logger.child({ instanceId: instance.id, coordinator: coordinator.identity, endpoint: coordinator.endpoint });
    const handOver: HandOverStatus = { coordinator: coordinator.identity, outcome: 'following', ...(status.handOver?.previous ? { previous: status.handOver.previous } : {}) };
    status.handOver = handOver;
    const timeLeftMs = () => Date.parse(status.deadline) - Date.now();
    /** `ms`, or a third of the time left if less: every wait on the coordinator leaves two thirds for draining alone. */
    const withinThirdLeft = (ms: number) => Math.min(ms, Math.max(0, timeLeftMs()) / 3);

    const drainAlone = async (why: string): Promise<void> => {
      handOver.outcome = 'drained-alone';
      handOver.reason = why;
      // What the coordinator reported is where this agent starts; its status is what it does itself.
      const reported = status.loadBalancers;
      status.loadBalancers = [];
      log.warn({ why, startingFrom: reported.length }, 'the coordinator cannot serve this drain: draining alone');
      await alone(instance, { ...drainOptions, startFrom: reported }, status, signal);
    };

    /** The coordinator is gone: hand the drain to its successor if one is elected in time, else drain alone. */
    const toSuccessorOrAlone = async (why: string): Promise<void> => {
      const waitMs = withinThirdLeft(timing.successorWaitMs);
      if (!options.successor || signal.aborted) return drainAlone(why);
      log.warn({ why, waitMs }, 'the coordinator is gone: waiting for the next one');
      const next = await options.successor(coordinator, waitMs, signal);
      if (!next || signal.aborted) return drainAlone(`${why}; no other coordinator within ${Math.round(waitMs / 1000)} s`);
      status.handOver = { ...handOver, previous: [...(handOver.previous ?? []), { coordinator: coordinator.identity, reason: why }] };
      return handOverTo({ ...options, coordinator: next })(instance, drainOptions, status, signal);
    };

    const finish = (state: DrainStatus['state'], reason: string | undefined, remote: DrainStatus | undefined): void => {
      if (remote) status.loadBalancers = remote.loadBalancers;
      status.state = state;
      if (reason === undefined) delete status.reason;
      else status.reason = reason;
      status.finishedAt = new Date().toISOString();
      const durationMs = Date.now() - started;
      observer?.finished?.(structuredClone(status), durationMs);
      // The same final line as a drain of its own (the coordinator is named in the line's fields).
      log[state === 'deregistered' ? 'info' : 'warn']({ durationMs, status }, `drain ${state}`);
    };

    /** Asking again joins the drain the first ask started, if it got there. */
    const askToServe = (answerMs: number): Promise<DrainStatus> => {
      const timeout = Math.min(3600, Math.max(1, Math.floor(timeLeftMs() / 1000)));
      // The instance as this agent's IMDS describes it: the coordinator need not find it in EC2.
      const { vpcId, privateIps, ipv4Prefixes, ipv6Addresses, ipv6Prefixes } = instance;
      const payload = { instance: { vpcId, privateIps, ipv4Prefixes, ipv6Addresses, ipv6Prefixes } };
      return askCoordinator(coordinator, { secret, peer, answerMs }, 'POST', `/drain?id=${instance.id}&timeout=${timeout}`, payload);
    };

    log.info({ deadline: status.deadline }, 'drain handed to the coordinator');
    let remote: DrainStatus;
    try {
      remote = await askToServe(timing.answerMs).catch(async (error: unknown) => {
        const slowMs = withinThirdLeft(timing.slowAnswerMs);
        if (!isTimeout(error) || !stillCoordinating(coordinator) || slowMs <= timing.answerMs || signal.aborted) throw error;
        log.warn({ answerMs: timing.answerMs, slowAnswerMs: Math.round(slowMs) }, 'the coordinator did not accept the hand-over in time but still holds the Lease: asking once more');
        return askToServe(slowMs).catch((again: unknown) => {
          if (!isTimeout(again)) throw again;
          throw new Error(`${errorMessage(error)}; asked once more, no answer within ${Math.round(slowMs)} ms either: ${errorMessage(again)}`, { cause: again });
        });
      });
    } catch (error) {
      const why = `the hand-over was not accepted within ${timing.answerMs} ms: ${errorMessage(error)}`;
      // Refused or reset: nothing listens there any more. A timeout or an HTTP answer: it is there, but cannot serve.
      return GONE_CODES.has(errorCode(error) ?? '') ? toSuccessorOrAlone(why) : drainAlone(why);
    }

    const progressBy = started + withinThirdLeft(timing.progressWaitMs);
    let failedPolls = 0;
    let answeredAt = Date.now();
    let pollAnswerMs = timing.answerMs;
    for (;;) {
      status.loadBalancers = remote.loadBalancers;
      const progressed = isFinished(remote) || remote.loadBalancers.some((lb) => lb.deregisteredAt !== undefined);
      if (remote.state === 'deregistered') {
        handOver.outcome = 'served';
        return finish(remote.state, remote.reason, remote);
      }
      if (isFinished(remote)) {
        const why = `the coordinator's drain ended ${remote.state}${remote.reason ? ` (${remote.reason})` : ''}`;
        if (timeLeftMs() > timing.answerMs && !signal.aborted) return drainAlone(why);
        handOver.reason = why;
        return finish(remote.state, remote.reason, remote);
      }
      if (signal.aborted && signal.reason instanceof DrainCanceled) {
        // The node was given back: the coordinator must stop, and stop keeping it out, before what it
        // took out is registered again from its final status.
        const final = await releaseBy(coordinator, instance.id, { secret, peer, answerMs: timing.answerMs });
        return finish('failed', `interrupted: ${signal.reason.message}${final ? '; the coordinator stopped its drain' : '; the coordinator could not be told to stop'}`, final ?? remote);
      }
      if (signal.aborted) {
        const reason = signal.reason as Error | undefined;
        const notOut = remote.loadBalancers.filter((lb) => lb.state !== 'out').length;
        if (reason?.name === 'TimeoutError') return finish('timed_out', `deadline passed while the coordinator drained, with ${notOut} load balancer(s) not yet out`, remote);
        return finish('failed', `interrupted: ${reason?.message ?? 'the agent stopped the drain'} while the coordinator drained, with ${notOut} load balancer(s) not yet out`, remote);
      }
      if (!progressed && Date.now() >= progressBy) return drainAlone(`the coordinator deregistered nothing within ${Math.round((Date.now() - started) / 1000)} s`);
      if (!progressed && !stillCoordinating(coordinator)) return toSuccessorOrAlone('the coordinator stepped down before deregistering this node');

      await sleep(timing.pollMs, undefined, { signal }).catch(() => undefined);
      if (signal.aborted) continue;
      try {
        remote = await askCoordinator(coordinator, { secret, peer, answerMs: pollAnswerMs }, 'GET', `/drain/${instance.id}`);
        failedPolls = 0;
        answeredAt = Date.now();
        pollAnswerMs = timing.answerMs;
      } catch (error) {
        // Late, not gone: it still renews the Lease (a wave keeps it busy). Waiting for it is what waiting
        // for a successor would cost, with the drain still batched; a 300-node wave had a follower wait
        // 30 s for a successor of a coordinator that was serving all along, then drain alone.
        const patienceMs = withinThirdLeft(timing.successorWaitMs);
        const slowMs = withinThirdLeft(timing.slowAnswerMs);
        if (isTimeout(error) && renewing(coordinator) && Date.now() - answeredAt < patienceMs && slowMs > timing.answerMs) {
          if (pollAnswerMs === timing.answerMs) log.warn({ answerMs: pollAnswerMs, slowAnswerMs: Math.round(slowMs) }, 'the coordinator did not answer a status read in time but still renews the Lease: reading again, with longer to answer');
          pollAnswerMs = slowMs;
          continue;
        }
        if (++failedPolls >= timing.failedPolls) return toSuccessorOrAlone(`the coordinator stopped answering: ${errorMessage(error)}`);
      }
    }
  };
}

/** No answer in time: the request's own timeout (a TimeoutError, from AbortSignal.timeout). */
function isTimeout(error: unknown): boolean {
  return error instanceof Error && (error.name === 'TimeoutError' || (error.cause instanceof Error && error.cause.name === 'TimeoutError'));
}

/** An answer that is not JSON (a proxy's error page) carries no status: `undefined`, so the caller says what it got. */
function parseJson(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}
