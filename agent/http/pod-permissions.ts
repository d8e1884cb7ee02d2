/**
 * What a pod may ask with its own token: a scoped drain of the node it runs on, from a Service of its
 * own namespace, on its own behalf. That is what a preStop hook of an externalTrafficPolicy: Local
 * Service needs, and nothing more: every other request stays with the admin secret.
 */
import type { DrainRequest } from './server.ts';
import type { PodCaller } from './pod-tokens.ts';

/** Why the pod may not ask this, naming what it may do instead; undefined: it may. */
export function whyPodRefused(caller: PodCaller, request: DrainRequest, nodeName: string): string | undefined {
  const own = `a pod token may only drain the node its pod runs on from a Service of its own namespace: POST /drain?service=${caller.namespace}/<service>`;
  if (caller.node !== nodeName) {
    return `the token's pod ${caller.namespace}/${caller.pod} runs on node ${caller.node}, not on ${nodeName}: call the agent on the pod's own node (status.hostIP)`;
  }
  if (request.target !== undefined) return `${own}, with no id= or ip=`;
  if (request.scope.kind !== 'service') return `${own}; a drain of every load balancer needs the admin secret`;
  if (request.scope.namespace !== caller.namespace) return `${own}, not ${request.scope.namespace}/${request.scope.name}`;
  if (request.asg) return `${own}; asg=true needs the admin secret`;
  if (request.pod !== undefined && request.pod !== caller.pod) return `pod=${request.pod} is not the token's pod ${caller.pod}: leave out pod=, the token names the pod`;
  return undefined;
}
