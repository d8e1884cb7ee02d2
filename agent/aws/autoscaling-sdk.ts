/**
 * The part of the Auto Scaling SDK the agent uses. Only ever imported dynamically, like every AWS SDK
 * module (see clients.ts): loaded when a lifecycle hook is first looked up.
 */
export {
  AutoScalingClient,
  CompleteLifecycleActionCommand,
  DescribeAutoScalingInstancesCommand,
  DescribeLifecycleHooksCommand,
  RecordLifecycleActionHeartbeatCommand,
} from '@aws-sdk/client-auto-scaling';
