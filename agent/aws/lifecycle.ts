/**
 * Auto Scaling termination, held until the instance is out: while a drain runs, the instance is kept in
 * Terminating:Wait by the termination lifecycle hook named in ASG_LIFECYCLE_HOOK (heartbeats before the
 * hook's timeout), then released with CompleteLifecycleAction CONTINUE, also when the drain timed out or
 * failed: the agent never keeps a node alive longer than its drain may take.
 *
 * Only a hook named by the user is ever held or completed. A group's other hooks belong to someone
 * else: EKS managed node groups carry EKS's own Terminate-LC-Hook, which keeps the instance while EKS
 * evicts its pods under their PodDisruptionBudgets, and completing it would cut that eviction short.
 */
import type { AutoScalingClient } from '@aws-sdk/client-auto-scaling';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DrainHandle } from '../drain/drainer.ts';
import type { Instance } from '../drain/instance.ts';
import type { DrainStatus, LifecycleActionStatus } from '../drain/status.ts';
import type { Logger } from '../log.ts';
import { sdk } from './clients.ts';
import { errorCode, errorMessage } from './errors.ts';

/** ASG_LIFECYCLE_HOOK: hold the termination hook of this name, or leave every hook alone. */
export type HookSetting = { readonly kind: 'off' } | { readonly kind: 'named'; readonly name: string };

export interface HookTarget {
  readonly group: string;
  readonly hook: string;
  readonly heartbeatTimeoutSeconds: number;
}

export const GROUP_TAG = 'aws:autoscaling:groupName';
const TERMINATING = 'autoscaling:EC2_INSTANCE_TERMINATING';
/** What Auto Scaling answers when no action waits (already completed, or the hook belongs to someone who finished). */
const NO_ACTIVE_ACTION = /no active lifecycle action/i;

export class LifecycleHolder {
  private client: Promise<AutoScalingClient> | undefined;

  /** `autoscaling` is called once, when a hook is first looked up: with holding off, the client is never built. */
  constructor(
    private readonly autoscaling: () => Promise<AutoScalingClient>,
    private readonly setting: HookSetting,
    private readonly logger: Logger,
  ) {}

  /** The configured termination hook of the instance's group, if holding is on and the group has it. */
  async hookFor(instance: Instance, signal: AbortSignal): Promise<HookTarget | undefined> {
    if (this.setting.kind === 'off') return undefined;
    const name = this.setting.name;
    const autoscaling = await this.autoscalingClient();
    const group = instance.tags[GROUP_TAG] ?? (await this.groupOf(autoscaling, instance.id, signal));
    if (group === undefined) {
      this.logger.info({ instanceId: instance.id }, 'the instance is in no Auto Scaling group: there is no lifecycle hook to hold');
      return undefined;
    }
    const { DescribeLifecycleHooksCommand } = await sdk.autoscaling();
    const answer = await autoscaling.send(new DescribeLifecycleHooksCommand({ AutoScalingGroupName: group, LifecycleHookNames: [name] }), { abortSignal: signal });
    const hook = (answer.LifecycleHooks ?? []).find((candidate) => candidate.LifecycleHookName === name);
    const log = this.logger.child({ instanceId: instance.id, group, hook: name });
    if (!hook) {
      log.warn(`group ${group} has no lifecycle hook named ${name} (ASG_LIFECYCLE_HOOK): the drain runs without holding the instance; create the hook, or correct the name`);
      return undefined;
    }
    if (hook.LifecycleTransition !== TERMINATING) {
      log.warn({ transition: hook.LifecycleTransition }, `lifecycle hook ${name} (ASG_LIFECYCLE_HOOK) is not a termination hook: the drain runs without holding the instance; name a hook on ${TERMINATING}`);
      return undefined;
    }
    return { group, hook: name, heartbeatTimeoutSeconds: hook.HeartbeatTimeout ?? 3600 };
  }

  private autoscalingClient(): Promise<AutoScalingClient> {
    return (this.client ??= this.autoscaling());
  }

  /**
   * The group of an instance whose tags are not known (the own instance, read from IMDS, comes
   * without them); undefined when it is in none.
   */
  private async groupOf(autoscaling: AutoScalingClient, instanceId: string, signal: AbortSignal): Promise<string | undefined> {
    const { DescribeAutoScalingInstancesCommand } = await sdk.autoscaling();
    const answer = await autoscaling.send(new DescribeAutoScalingInstancesCommand({ InstanceIds: [instanceId] }), { abortSignal: signal });
    return answer.AutoScalingInstances?.find((candidate) => candidate.InstanceId === instanceId)?.AutoScalingGroupName;
  }

  /**
   * Heartbeats while the drain runs, then completes the action with CONTINUE. Never throws (the client
   * was built when hookFor found the target): what happened is in the returned status.
   */
  async hold(target: HookTarget, instanceId: string, drained: Promise<DrainStatus>): Promise<LifecycleActionStatus> {
    const log = this.logger.child({ instanceId, group: target.group, hook: target.hook });
    // Half the hook's timeout: one lost heartbeat still leaves time for the next.
    const intervalMs = Math.max(1_000, (target.heartbeatTimeoutSeconds * 1000) / 2);
    const status: LifecycleActionStatus = { group: target.group, hook: target.hook, heartbeats: 0, outcome: 'holding' };
    const autoscaling = await this.autoscalingClient();
    const stopped = new AbortController();
    const heartbeats = this.heartbeat(autoscaling, target, instanceId, intervalMs, status, stopped.signal, log);
    const drain = await drained;
    stopped.abort();
    await heartbeats;

    const params = { AutoScalingGroupName: target.group, LifecycleHookName: target.hook, InstanceId: instanceId, LifecycleActionResult: 'CONTINUE' };
    try {
      const { CompleteLifecycleActionCommand } = await sdk.autoscaling();
      await autoscaling.send(new CompleteLifecycleActionCommand(params), { abortSignal: AbortSignal.timeout(10_000) });
      status.outcome = 'completed';
      log.info({ drainState: drain.state, heartbeats: status.heartbeats }, 'lifecycle action completed: CONTINUE');
    } catch (error) {
      if (errorCode(error) === 'ValidationError' && NO_ACTIVE_ACTION.test(errorMessage(error))) {
        status.outcome = 'no-active-action';
        status.reason = 'no lifecycle action was waiting (completed by another tool, or timed out)';
        log.info(status.reason);
      } else {
        status.outcome = 'failed';
        status.reason = `CompleteLifecycleAction: ${errorMessage(error)}; the group releases the instance when the hook times out`;
        log.error({ err: error }, 'could not complete the lifecycle action');
      }
    }
    status.completedAt = new Date().toISOString();
    return status;
  }

  private async heartbeat(
    autoscaling: AutoScalingClient,
    target: HookTarget,
    instanceId: string,
    intervalMs: number,
    status: LifecycleActionStatus,
    stopped: AbortSignal,
    log: Logger,
  ): Promise<void> {
    for (;;) {
      try {
        await sleep(intervalMs, undefined, { signal: stopped });
      } catch {
        return; // the drain finished
      }
      try {
        const { RecordLifecycleActionHeartbeatCommand } = await sdk.autoscaling();
        await autoscaling.send(
          new RecordLifecycleActionHeartbeatCommand({ AutoScalingGroupName: target.group, LifecycleHookName: target.hook, InstanceId: instanceId }),
          { abortSignal: AbortSignal.timeout(Math.min(intervalMs, 10_000)) },
        );
        status.heartbeats++;
        log.debug({ heartbeats: status.heartbeats }, 'lifecycle heartbeat');
      } catch (error) {
        if (errorCode(error) === 'ValidationError' && NO_ACTIVE_ACTION.test(errorMessage(error))) {
          log.info('no lifecycle action waits any more: stopping heartbeats');
          return;
        }
        log.warn({ err: error }, 'lifecycle heartbeat failed; trying again at the next interval');
      }
    }
  }
}

/**
 * A drain of an instance that Auto Scaling is terminating: held by the hook while it runs. Resolves
 * with the drain's final status, the lifecycle action's outcome included.
 */
export async function drainHeldByHook(holder: LifecycleHolder, instance: Instance, handle: DrainHandle, logger: Logger): Promise<DrainStatus> {
  let target: HookTarget | undefined;
  try {
    target = await holder.hookFor(instance, AbortSignal.timeout(10_000));
  } catch (error) {
    logger.warn({ err: error, instanceId: instance.id }, 'could not look up the Auto Scaling lifecycle hook: the drain runs without holding the instance');
  }
  if (!target) return handle.done;
  handle.amend({ lifecycleAction: { group: target.group, hook: target.hook, heartbeats: 0, outcome: 'holding' } });
  const lifecycleAction = await holder.hold(target, instance.id, handle.done);
  handle.amend({ lifecycleAction });
  return handle.status();
}
