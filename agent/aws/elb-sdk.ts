/**
 * The part of the classic ELB SDK the agent uses. Only ever imported dynamically, like every AWS SDK
 * module (see clients.ts): an agent waiting for a notice loads none of them.
 */
export {
  DeregisterInstancesFromLoadBalancerCommand,
  DescribeInstanceHealthCommand,
  DescribeLoadBalancerAttributesCommand,
  DescribeLoadBalancersCommand,
  DescribeTagsCommand,
  ElasticLoadBalancingClient,
  paginateDescribeLoadBalancers,
  RegisterInstancesWithLoadBalancerCommand,
} from '@aws-sdk/client-elastic-load-balancing';
