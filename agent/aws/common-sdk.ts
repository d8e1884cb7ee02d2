/**
 * What every AWS SDK client of the agent shares: the credential chain and the HTTP handler. Only ever
 * imported dynamically, with the first client (see clients.ts).
 */
export { fromNodeProviderChain } from '@aws-sdk/credential-providers';
export { NodeHttpHandler } from '@smithy/node-http-handler';
