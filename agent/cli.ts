/** The command line: which command, which options, and the help text that documents them all. */
import { parseArgs } from 'node:util';
import { ipFamily } from './drain/addresses.ts';
import type { Scope } from './drain/family.ts';
import type { InstanceRef } from './drain/instance.ts';

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export type DrainTarget = InstanceRef | { readonly self: true };

export type Command =
  | { readonly kind: 'help' }
  | { readonly kind: 'version' }
  | { readonly kind: 'agent' }
  | {
      readonly kind: 'drain';
      /** `{ self: true }`: the instance the command runs on, from IMDS (--self); never implied by leaving --id and --ip out. */
      readonly target: DrainTarget;
      readonly scope: Scope;
      readonly timeoutSeconds: number | undefined;
      readonly dryRun: boolean;
      /** Hold the instance with its Auto Scaling termination hook while draining, then complete it. */
      readonly asg: boolean;
    };

export const INSTANCE_ID = /^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$/;
/** A Service as namespace/name, each a DNS-1123 label. */
const SERVICE = /^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)\/([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$/;

export function parseInstanceRef(id: string | undefined, ip: string | undefined): InstanceRef | undefined {
  if (id !== undefined && ip !== undefined) throw new UsageError('give an instance id or an IP, not both');
  if (id !== undefined) {
    if (!INSTANCE_ID.test(id)) throw new UsageError(`${JSON.stringify(id)} is not an instance id: expected i- and 8 or 17 hex digits`);
    return { id };
  }
  if (ip !== undefined) {
    if (!ipFamily(ip)) throw new UsageError(`${JSON.stringify(ip)} is not an IPv4 address such as 10.0.1.23, nor an IPv6 address such as 2600:1f18::1c`);
    return { ip };
  }
  return undefined;
}

/** A drain's timeout as the command line (`--timeout `) or the API (`timeout=`) gives it. */
export function parseTimeoutSeconds(text: string, spelledAs: string): number {
  const seconds = Number(text);
  if (!/^\d+$/.test(text) || seconds < 1 || seconds > 3600) {
    throw new UsageError(`${spelledAs}${JSON.stringify(text)} is not a whole number of seconds from 1 to 3600`);
  }
  return seconds;
}

export function parseScope(service: string | undefined): Scope {
  if (service === undefined) return { kind: 'all' };
  const match = SERVICE.exec(service);
  if (!match) throw new UsageError(`${JSON.stringify(service)} is not a Service: expected <namespace>/<name>, lower-case DNS labels`);
  return { kind: 'service', namespace: match[1]!, name: match[3]! };
}

const OPTIONS = {
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'v' },
  id: { type: 'string' },
  ip: { type: 'string' },
  self: { type: 'boolean' },
  service: { type: 'string' },
  timeout: { type: 'string' },
  'dry-run': { type: 'boolean' },
  asg: { type: 'boolean' },
} as const;

const DRAIN_OPTIONS = ['id', 'ip', 'self', 'service', 'timeout', 'dry-run', 'asg'] as const;

/**
 * The command a command line asks for, even one parseCommand refuses (`drain --bogus` is still the
 * one-shot command, whose every run answers with JSON on stdout).
 */
export function commandName(argv: readonly string[]): string {
  return parseArgs({ args: [...argv], allowPositionals: true, strict: false, options: OPTIONS }).positionals[0] ?? 'agent';
}

export function parseCommand(argv: readonly string[]): Command {
  let parsed;
  try {
    parsed = parseArgs({ args: [...argv], allowPositionals: true, strict: true, options: OPTIONS });
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message : String(error));
  }
  const { values, positionals } = parsed;
  if (values.help) return { kind: 'help' };
  if (values.version) return { kind: 'version' };
  const [name = 'agent', ...extra] = positionals;
  if (extra.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(extra[0])}`);
  if (name === 'agent') {
    const stray = DRAIN_OPTIONS.filter((option) => option in values);
    if (stray.length > 0) throw new UsageError(`--${stray[0]} belongs to the drain command, not the agent`);
    return { kind: 'agent' };
  }
  if (name !== 'drain') throw new UsageError(`unknown command ${JSON.stringify(name)}: expected agent or drain`);

  return {
    kind: 'drain',
    target: drainTarget(values.id, values.ip, values.self ?? false),
    scope: parseScope(values.service),
    timeoutSeconds: values.timeout === undefined ? undefined : parseTimeoutSeconds(values.timeout, '--timeout '),
    dryRun: values['dry-run'] ?? false,
    asg: values.asg ?? false,
  };
}

/** Which instance a drain is for: said out loud, so that typing the bare command only shows how to use it. */
function drainTarget(id: string | undefined, ip: string | undefined, self: boolean): DrainTarget {
  const ref = parseInstanceRef(id, ip);
  if (self && ref !== undefined) throw new UsageError(`--self drains this instance: give it without ${id !== undefined ? '--id' : '--ip'}`);
  if (self) return { self: true };
  if (ref === undefined) throw new UsageError('drain needs an instance: give --id i-…, --ip ADDRESS, or --self for the instance this runs on');
  return ref;
}

export function helpText(version: string): string {
  return `hasta-la-vista ${version}: takes a dying EC2 node out of every Kubernetes load balancer, and waits until it is out.

Usage:
  hasta-la-vista [agent]            run the agent (a DaemonSet pod) until SIGTERM
  hasta-la-vista drain (--id i-… | --ip ADDRESS | --self) [drain options]
                                    drain one instance once; one JSON document on stdout, log on stderr
  hasta-la-vista --help | --version

drain options (one of --id, --ip and --self is required: a bare "drain" changes nothing and exits 2):
  --id i-…            the instance to drain
  --ip ADDRESS        or any address of it: private IPv4 (10.0.1.23) or IPv6 (2600:1f18::1c), primary,
                      secondary, or inside a delegated prefix
  --self              the instance this command runs on, as IMDS names it
  --service NS/NAME   only the load balancers of this Kubernetes Service
  --timeout S         seconds to wait until out (default DRAIN_TIMEOUT)
  --dry-run           find and report, change nothing
  --asg               the instance's Auto Scaling group is terminating it: hold it with the termination
                      lifecycle hook named in ASG_LIFECYCLE_HOOK while draining, then complete the action
                      (CONTINUE); without ASG_LIFECYCLE_HOOK, --asg is refused (exit 2)

drain output: every run prints exactly one JSON document on stdout, failures included; --help and
--version print text. A drain that ran prints its status, as GET /drain/<id> answers it:
  {"instanceId", "trigger": "cli", "scope", "state", "reason"?, "dryRun", "startedAt", "deadline",
   "triggers", "finishedAt", "awsCalls", "loadBalancers": [...], "lifecycleAction"?, "handOver"?}
with state deregistered (out of every load balancer in scope), skipped (a dry run), timed_out or failed.
A run that failed before any drain began prints {"state": "failed", "error": {...}}, with "instanceId",
"trigger", "scope" and "dryRun" where they are known. Every run that does not exit 0 has
"error": {"code", "message"}; the code says which exit it is.

drain exit codes: 0 out of every load balancer in scope (or a dry run reported), 2 bad usage [usage]
or configuration [config], 3 timed out [timed_out], 4 instance not found in the VPC [not_found], 5 no
AWS credentials [credentials] or AWS refused or failed [aws], 130 stopped by Ctrl-C or SIGTERM
[interrupted], 1 internal error [internal]; in brackets, the error.code of each.

Environment:
  SECRET                 admin secret of the /drain API (agent: SECRET or SECRET_FILE required)
  SECRET_FILE            a file holding the admin secret (a mounted Secret), re-read when it changes;
                         the secret it replaced is accepted for 2 more minutes. Takes precedence over SECRET
  TOKEN_AUDIENCE         the audience of the projected ServiceAccount tokens pods may present for a scoped
                         drain of their own node, from a Service of their own namespace (TokenReview); off:
                         pods need the secret (default hasta-la-vista)
  BIND_ADDRESS           the one address the API listens on (default: all of them)
  WEBHOOK_URL            http(s) URL that gets a JSON POST when a drain of this node starts and when it
                         ends, retried with backoff, never delaying the drain (unset: none)
  WEBHOOK_HEADERS_FILE   a file of "Name: value" lines (a mounted Secret) sent with each webhook POST
  AWS_REGION             region (default: IMDS placement/region)
  LOGLEVEL               debug, info, warn, error (default info)
  CLUSTERNAME            cluster name for tag matching (default: the instance's kubernetes.io/cluster/<name>
                         or eks:cluster-name tag)
  VPCID                  only load balancers in this VPC (default: IMDS, the primary interface's VPC)
  CLOUDPROVIDER          aws (the only one)
  PORT                   port of the API, health and metrics (default 9740)
  POLL_INTERVAL          seconds between IMDS polls (default 2)
  DRAIN_TIMEOUT          seconds a drain may wait when nothing gives a sooner deadline (default 120)
  DRY_RUN                true: find and report, change nothing (default false)
  SIGTERM_DRAIN          auto (drain only when the node is going away), always, never (default auto)
  NODE_NAME, POD_NAME, POD_NAMESPACE
                         this node and pod, from the downward API (unset: no Kubernetes calls)
  DEADLINE_MARGIN        seconds kept back from a notice's deadline (default 15)
  MAINTENANCE_LEAD_TIME  seconds before a scheduled maintenance event to drain (default 600)
  REBALANCE_DRAIN        true: also drain on a rebalance recommendation (default false)
  EXCLUDE_NODE           true: label the own Node exclude-from-external-load-balancers on a self-drain
                         (default true)
  RECHECK_INTERVAL       seconds between checks that a drained node stays out (default 30)
  MAX_CONCURRENT_DRAINS  drains that may run at once (default 16)
  TERMINATION_GRACE_PERIOD
                         the pod's grace period in seconds: bounds a drain started by SIGTERM (default 30)
  INVENTORY_REFRESH      seconds between refreshes of the kept list of cluster load balancers, which a drain
                         starts from without waiting for the tagging API; 0 keeps none (default 1800)
  LOCAL_SERVICE_DRAIN    true: a scoped drain of this node (--service, ?service=) waits for the Service's last
                         ready local endpoint, and the node is registered back when one is ready again
                         (default false)
  ASG_LIFECYCLE_HOOK     the name of a termination lifecycle hook you created for this agent: on an Auto
                         Scaling termination (and with drain --asg) the instance is held with that hook while
                         it drains, then that hook, and only that one, is completed (CONTINUE). Unset (or
                         off): no lifecycle API is ever called. Never EKS's own Terminate-LC-Hook of managed
                         node groups: EKS evicts the pods with it, and completing it would cut that short
  COORDINATION           auto: the agents elect a coordinator (a Lease in POD_NAMESPACE) that drains a spot
                         wave's nodes together; off: every agent drains its own node alone (default auto)
  HOST_IP                the node's address, where peers reach this agent's API when it coordinates
                         (downward API status.hostIP; unset: this agent drains alone)
  The AWS SDK's own variables (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_<SERVICE>, the credential chain,
  AWS_EC2_METADATA_SERVICE_ENDPOINT, AWS_EC2_METADATA_V1_DISABLED) and KUBECONFIG work as usual.
`;
}
