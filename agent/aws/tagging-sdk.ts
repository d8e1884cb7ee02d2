/**
 * The part of the Resource Groups Tagging SDK the agent uses. Only ever imported dynamically, like every
 * AWS SDK module (see clients.ts): an agent waiting for a notice loads none of them.
 */
export { GetResourcesCommand, ResourceGroupsTaggingAPIClient } from '@aws-sdk/client-resource-groups-tagging-api';
