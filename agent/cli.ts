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

export type Command =
  | { readonly kind: 'help' }
  | { readonly kind: 'version' }
  | { readonly kind: 'agent' }
  | {
      readonly kind: 'drain';
      /** Undefined: this instance, from IMDS. */
      readonly target: InstanceRef | undefined;
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

export function parseCommand(argv: readonly string[]): Command {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      allowPositionals: true,
      strict: true,
      options: {
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'v' },
        id: { type: 'string' },
        ip: { type: 'string' },
        service: { type: 'string' },
        timeout: { type: 'string' },
        'dry-run': { type: 'boolean' },
        asg: { type: 'boolean' },
      },
    });
  } catch (error) {
    throw new UsageError(error instanceof Error ? error.message : String(error));
  }
  const { values, positionals } = parsed;
  if (values.help) return { kind: 'help' };
  if (values.version) return { kind: 'version' };
  const [name = 'agent', ...extra] = positionals;
  if (extra.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(extra[0])}`);
  if (name === 'agent') {
    const stray = ['id', 'ip', 'service', 'timeout', 'dry-run', 'asg'].filter((option) => option in values);
    if (stray.length > 0) throw new UsageError(`--${stray[0]} belongs to the drain command, not the agent`);
    return { kind: 'agent' };
  }
  if (name !== 'drain') throw new UsageError(`unknown command ${JSON.stringify(name)}: expected agent or drain`);

  return {
    kind: 'drain',
    target: parseInstanceRef(values.id, values.ip),
    scope: parseScope(values.service),
    timeoutSeconds: values.timeout === undefined ? undefined : parseTimeoutSeconds(values.timeout, '--timeout '),
    dryRun: values['dry-run'] ?? false,
    asg: values.asg ?? false,
  };
}

export function helpText(version: string): string {
  return `hasta-la-vista ${version}: takes a dying EC2 node out of every Kubernetes load balancer, and waits until it is out.

Usage:
  hasta-la-vista [agent]            run the agent (a DaemonSet pod) until SIGTERM
  hasta-la-vista drain [--id i-… | --ip 10.…] [--service NS/NAME] [--timeout S] [--dry-run] [--asg]
                                    drain one instance once; JSON status on stdout, log on stderr
  hasta-la-vista --help | --version

drain options:
  --id i-…            the instance to drain
  --ip 10.…|2600:…    or any address of it: private IPv4 or IPv6, secondary and prefix addresses too
                      (neither: this instance, from IMDS)
  --service NS/NAME   only the load balancers of this Kubernetes Service
  --timeout S         seconds to wait until out (default DRAIN_TIMEOUT)
  --dry-run           find and report, change nothing
  --asg               the instance's Auto Scaling group is terminating it: hold it with the group's
                      termination lifecycle hook while draining, then complete the action (CONTINUE)

drain exit codes: 0 out of every load balancer in scope (or a dry run reported), 2 bad usage or
configuration, 3 timed out, 4 instance not found in the VPC, 5 AWS refused or failed, 130 interrupted
(Ctrl-C), 1 internal error.

Environment:
  SECRET                 secret of the /drain API (agent: required)
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
  ASG_LIFECYCLE_HOOK     on an Auto Scaling termination, hold the instance with the group's termination
                         lifecycle hook while draining: auto (find it), off, or the hook's name (default auto)
  The AWS SDK's own variables (AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_<SERVICE>, the credential chain,
  AWS_EC2_METADATA_SERVICE_ENDPOINT, AWS_EC2_METADATA_V1_DISABLED) and KUBECONFIG work as usual.
`;
}
