/**
 * The part of the ELBv2 SDK the agent uses. Only ever imported dynamically, like every AWS SDK module
 * (see clients.ts): an agent waiting for a notice loads none of them.
 */
export {
  DeregisterTargetsCommand,
  DescribeTagsCommand,
  DescribeTargetGroupAttributesCommand,
  DescribeTargetGroupsCommand,
  DescribeTargetHealthCommand,
  ElasticLoadBalancingV2Client,
  paginateDescribeLoadBalancers,
  paginateDescribeTargetGroups,
  RegisterTargetsCommand,
} from '@aws-sdk/client-elastic-load-balancing-v2';
