/**
 * The part of the EC2 SDK the agent uses. Only ever imported dynamically (`sdk.ec2()` in clients.ts),
 * so the build puts it in a chunk of its own, loaded the first time the agent calls EC2; naming each
 * export, instead of importing the package as a whole, lets the bundler leave out the hundreds of
 * commands the agent never sends.
 */
export { DescribeInstancesCommand, DescribeNetworkInterfacesCommand, EC2Client, paginateDescribeNetworkInterfaces } from '@aws-sdk/client-ec2';
