/** The JSON status of a drain: the body of every /drain answer, the one-shot command's stdout, the final log line. */

export type Trigger =
  | 'spot-interruption'
  | 'asg-termination'
  | 'asg-warm-pool'
  | 'scheduled-maintenance'
  | 'rebalance-recommendation'
  | 'node-shutdown'
  | 'node-removal'
  | 'sigterm'
  | 'api'
  | 'cli'
  | 'recheck';

/** `deregistered` is the only success: out of everything in scope, seen, not assumed. */
export type DrainState = 'draining' | 'deregistered' | 'timed_out' | 'failed' | 'skipped';

export type LoadBalancerState = 'out' | 'draining' | 'failed';

export interface LoadBalancerStatus {
  readonly family: string;
  /** The family's own fields: { name } for a classic ELB, { arn, targets } for a target group. */
  readonly [field: string]: unknown;
  state: LoadBalancerState;
  reason?: string;
  deregisteredAt?: string;
  outAt?: string;
  /** The load balancer's deregistration delay (connection draining), when it is known. */
  deregistrationDelaySeconds?: number;
  /** When the delay ends after the deregistration: when it should be out at the latest. */
  expectedOutAt?: string;
}

export interface DrainStatus {
  readonly instanceId: string;
  readonly trigger: Trigger;
  readonly scope: string;
  state: DrainState;
  reason?: string;
  readonly dryRun: boolean;
  readonly startedAt: string;
  /** Moves when the signs behind the drain change (a spot notice's time moved, a sooner notice came). */
  deadline: string;
  /** Every trigger behind the drain, the one it started with first. */
  triggers: Trigger[];
  finishedAt: string | null;
  /** AWS calls this drain made, by action. */
  awsCalls: Record<string, number>;
  loadBalancers: LoadBalancerStatus[];
  /** When Auto Scaling terminates the instance: how its lifecycle hook held it during the drain. */
  lifecycleAction?: LifecycleActionStatus;
  /** When this node's drain was handed to the cluster's coordinator: who served it, or why this agent drained alone. */
  handOver?: HandOverStatus;
}

export interface HandOverStatus {
  /** The coordinator's identity (its pod name). */
  readonly coordinator: string;
  /** `following` while the coordinator drains; `drained-alone` when this agent took over (see `reason`). */
  outcome: 'following' | 'served' | 'drained-alone';
  reason?: string;
  /** Coordinators this drain was handed to before `coordinator`, each left because it was gone (oldest first). */
  previous?: { readonly coordinator: string; readonly reason: string }[];
}

export interface LifecycleActionStatus {
  readonly group: string;
  readonly hook: string;
  heartbeats: number;
  /** `holding` while the drain runs; `no-active-action` is success too (nothing was waiting). */
  outcome: 'holding' | 'completed' | 'no-active-action' | 'failed';
  reason?: string;
  completedAt?: string;
}

export function isFinished(status: DrainStatus): boolean {
  return status.state !== 'draining';
}
