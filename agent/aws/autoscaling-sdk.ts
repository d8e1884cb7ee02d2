/**
 * The Auto Scaling client, only ever imported dynamically, so the build puts it in a chunk of its own,
 * loaded when a lifecycle hook is first looked up.
 */
export { AutoScalingClient } from '@aws-sdk/client-auto-scaling';
