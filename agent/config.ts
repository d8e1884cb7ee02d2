/**
 * The environment, parsed once into a validated, frozen Config.
 *
 * Every problem is collected and reported together, so a user fixes their manifest once, not once per
 * variable. Messages name the variable, the bad value (never the secret's) and what is accepted.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { ipFamily } from './drain/addresses.ts';
import type { HookSetting } from './aws/lifecycle.ts';
import type { LogLevel } from './log.ts';
import { readHeaders } from './notify/webhook.ts';

export type SigtermPolicy = 'auto' | 'always' | 'never';

export interface Config {
  /** The admin secret of the API as it was at start-up; absent only for the one-shot command, which serves no API. */
  readonly secret: string | undefined;
  /** SECRET_FILE: where the secret is read from, and re-read when it changes (a mounted Secret); it takes precedence over SECRET. */
  readonly secretFile: string | undefined;
  /**
   * TOKEN_AUDIENCE: the audience of the projected ServiceAccount tokens pods may present (checked with a
   * TokenReview) for a scoped drain of their own node; undefined (`off`): pod tokens are refused.
   */
  readonly tokenAudience: string | undefined;
  /** BIND_ADDRESS: the one address the API listens on; undefined: all of them. */
  readonly bindAddress: string | undefined;
  /** Unset: taken from IMDS at start-up. */
  readonly region: string | undefined;
  readonly logLevel: LogLevel;
  /** Unset: taken from the instance's own cluster tag at start-up. */
  readonly clusterName: string | undefined;
  /** Unset: taken from IMDS (the primary interface's VPC) at start-up. */
  readonly vpcId: string | undefined;
  readonly cloudProvider: 'aws';
  readonly port: number;
  readonly pollIntervalMs: number;
  readonly drainTimeoutMs: number;
  readonly dryRun: boolean;
  readonly sigtermDrain: SigtermPolicy;
  readonly nodeName: string | undefined;
  readonly podName: string | undefined;
  readonly podNamespace: string | undefined;
  /** Taken off a notice's deadline, so the drain finishes before the instance goes. */
  readonly deadlineMarginMs: number;
  /** How long before a scheduled maintenance event's NotBefore the node is drained. */
  readonly maintenanceLeadMs: number;
  readonly rebalanceDrain: boolean;
  /** Label the own Node exclude-from-external-load-balancers on a self-drain. */
  readonly excludeNode: boolean;
  /** How often a drained instance is checked for load balancers that took it back. */
  readonly recheckIntervalMs: number;
  readonly maxConcurrentDrains: number;
  /** The pod's terminationGracePeriodSeconds: the bound on a drain started by SIGTERM. */
  readonly terminationGracePeriodMs: number;
  /**
   * LOCAL_SERVICE_DRAIN: a scoped drain of this node first checks the Service's EndpointSlices (skipped
   * while another local endpoint is ready), and the node is registered back when one is ready again.
   */
  readonly localServiceDrain: boolean;
  /** INVENTORY_REFRESH: how often the kept inventory of cluster load balancers is refreshed; 0 keeps none. */
  readonly inventoryRefreshMs: number;
  /** ASG_LIFECYCLE_HOOK: the termination hook, named by the user, that holds the instance while it drains; or none. */
  readonly lifecycleHook: HookSetting;
  /**
   * COORDINATION: `auto` elects a coordinator among the agents (a Lease in POD_NAMESPACE) that drains the
   * nodes of a spot wave together, when the agent has Kubernetes access, POD_NAME and HOST_IP; `off`:
   * every agent drains its own node alone.
   */
  readonly coordination: 'auto' | 'off';
  /** HOST_IP: the node's address, where peers reach this agent's API when it coordinates. */
  readonly hostIp: string | undefined;
  /** WEBHOOK_URL, with WEBHOOK_HEADERS_FILE: where a drain of this node is told when it starts and ends. */
  readonly webhook: { readonly url: URL; readonly headersFile: string | undefined } | undefined;
  /** IMDSv1 fallback is allowed unless the SDK's own switch forbids it. */
  readonly imdsV1Fallback: boolean;
  /** AWS_EC2_METADATA_SERVICE_ENDPOINT, as the AWS SDK reads it; absent: IMDS at 169.254.169.254. */
  readonly imdsEndpoint: string | undefined;
}

export type Mode = 'agent' | 'oneshot';

export class ConfigError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(`invalid configuration:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
  }
}

type Env = Readonly<Record<string, string | undefined>>;

/** Collects problems while each variable is read, so all of them are reported at once. */
class EnvReader {
  readonly problems: string[] = [];
  constructor(private readonly env: Env) {}

  raw(name: string): string | undefined {
    const value = this.env[name]?.trim();
    return value === '' ? undefined : value;
  }

  oneOf<T extends string>(name: string, allowed: readonly T[], fallback: T): T {
    const value = this.raw(name);
    if (value === undefined) return fallback;
    const lower = value.toLowerCase() as T;
    if (allowed.includes(lower)) return lower;
    this.problems.push(`${name}=${JSON.stringify(value)} is not one of ${allowed.join(', ')}`);
    return fallback;
  }

  boolean(name: string, fallback: boolean): boolean {
    const value = this.raw(name);
    if (value === undefined) return fallback;
    const lower = value.toLowerCase();
    if (['true', '1', 'yes'].includes(lower)) return true;
    if (['false', '0', 'no'].includes(lower)) return false;
    this.problems.push(`${name}=${JSON.stringify(value)} is not a boolean: use true or false (or 1/0, yes/no)`);
    return fallback;
  }

  /** A whole number in [min, max]; `unit` only words the message. */
  integer(name: string, fallback: number, min: number, max: number, unit = ''): number {
    const value = this.raw(name);
    if (value === undefined) return fallback;
    const number = Number(value);
    if (/^\d+$/.test(value) && number >= min && number <= max) return number;
    const range = `a whole number${unit ? ` of ${unit}` : ''} from ${min} to ${max}`;
    this.problems.push(`${name}=${JSON.stringify(value)} is not ${range}`);
    return fallback;
  }

  seconds(name: string, fallbackSeconds: number, min: number, max: number): number {
    return this.integer(name, fallbackSeconds, min, max, 'seconds') * 1000;
  }

  matching(name: string, pattern: Pick<RegExp, 'test'>, expected: string): string | undefined {
    const value = this.raw(name);
    if (value === undefined || pattern.test(value)) return value;
    this.problems.push(`${name}=${JSON.stringify(value)} is not ${expected}`);
    return undefined;
  }
}

const REGION = /^[a-z]{2}(-[a-z]+)+-\d+$/;
/** A VPC id as AWS writes it: the agent's VPCID and a peer's hand-over follow the same rule. */
export const VPC_ID = /^vpc-(?:[0-9a-f]{8}|[0-9a-f]{17})$/;
// Tag values allow more, but a cluster name is a DNS-ish label in every installer we know of.
const CLUSTER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
const MIN_SECRET_LENGTH = 16;
/** What the chart's projected token volume asks for, and the agent expects unless told otherwise. */
const DEFAULT_TOKEN_AUDIENCE = 'hasta-la-vista';
// What Auto Scaling allows in a lifecycle hook's name.
const HOOK = /^[A-Za-z0-9_/-]{1,255}$/;
/** EKS managed node groups' own termination hook: EKS holds the instance with it while it evicts the pods. */
const EKS_HOOK = 'Terminate-LC-Hook';

function hookSetting(read: EnvReader): HookSetting {
  const value = read.matching('ASG_LIFECYCLE_HOOK', HOOK, 'off, or the name of a lifecycle hook you created for this agent (letters, digits, "-", "_", "/"; up to 255)');
  if (value === undefined || value.toLowerCase() === 'off') return { kind: 'off' };
  const refused = whyHookRefused(value);
  if (refused === undefined) return { kind: 'named', name: value };
  read.problems.push(`ASG_LIFECYCLE_HOOK=${JSON.stringify(value)} ${refused}; set the name of a termination hook you created for this agent, or leave ASG_LIFECYCLE_HOOK unset to hold none`);
  return { kind: 'off' };
}

/** Names that would have the agent complete a hook someone else waits on. */
function whyHookRefused(name: string): string | undefined {
  const harm = "completing it cuts EKS's PodDisruptionBudget-respecting eviction of the pods short";
  if (name.toLowerCase() === 'auto') return `is no longer accepted: it took the group's first termination hook, which on EKS managed node groups is EKS's own ${EKS_HOOK}, and ${harm}`;
  if (name === EKS_HOOK) return `is the termination hook EKS puts on its managed node groups, and ${harm}`;
  return undefined;
}

/** SECRET_FILE if set (read now, to report a problem at once; the agent follows it afterwards), else SECRET. */
function adminSecret(read: EnvReader, file: string | undefined): string | undefined {
  if (file === undefined) {
    const value = read.raw('SECRET');
    const problem = secretProblem(value, 'SECRET');
    if (problem !== undefined) read.problems.push(value === undefined ? `${problem} (the Helm chart generates one), or set SECRET_FILE to a file that holds it` : problem);
    return value;
  }
  const found = readSecretFile(file);
  if ('problem' in found) {
    read.problems.push(found.unreadable ? `${found.problem}: mount the Secret there, or correct the path` : found.problem);
    return undefined;
  }
  return found.value;
}

/**
 * The secret a file holds (its text without the surrounding whitespace, a trailing newline say), or what
 * is wrong with it; read at start-up here, and again by the agent whenever the file may have changed.
 */
export function readSecretFile(path: string): { readonly value: string } | { readonly problem: string; readonly unreadable: boolean } {
  let value: string;
  try {
    value = readFileSync(path, 'utf8').trim();
  } catch (error) {
    return { problem: `SECRET_FILE=${JSON.stringify(path)} cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`, unreadable: true };
  }
  const problem = secretProblem(value, `the secret in SECRET_FILE=${JSON.stringify(path)}`);
  return problem === undefined ? { value } : { problem, unreadable: false };
}

/** What is wrong with an admin secret, if anything; the value itself is never part of the message. */
function secretProblem(value: string | undefined, what: string): string | undefined {
  if (value === undefined || value === '') return `${what} is not set: the /drain API needs a shared secret`;
  const length = characters(value);
  if (length < MIN_SECRET_LENGTH) return `${what} is ${length} characters long: use at least ${MIN_SECRET_LENGTH} random characters`;
  return undefined;
}

/** The audience a pod's projected token must carry: unset is `hasta-la-vista`; `off` accepts no pod tokens. */
function tokenAudience(read: EnvReader): string | undefined {
  const value = read.matching('TOKEN_AUDIENCE', /^[!-~]{1,253}$/, 'off, or the audience of the projected ServiceAccount tokens that pods present (printable ASCII, no spaces; up to 253)') ?? DEFAULT_TOKEN_AUDIENCE;
  return value.toLowerCase() === 'off' ? undefined : value;
}

/** The webhook's URL, never echoed (it may carry a credential), and its headers file, read once now to report a problem at once. */
function webhookSetting(read: EnvReader): Config['webhook'] {
  const text = read.raw('WEBHOOK_URL');
  const headersFile = read.raw('WEBHOOK_HEADERS_FILE');
  if (text === undefined) {
    if (headersFile !== undefined) read.problems.push('WEBHOOK_HEADERS_FILE is set without WEBHOOK_URL: set the URL to notify, or unset the headers file');
    return undefined;
  }
  let url: URL | undefined;
  try {
    url = new URL(text);
  } catch {
    url = undefined;
  }
  if (url === undefined || (url.protocol !== 'http:' && url.protocol !== 'https:')) {
    read.problems.push('WEBHOOK_URL is not an http:// or https:// URL (its value is not shown: it may hold a credential)');
    return undefined;
  }
  if (headersFile !== undefined) {
    try {
      readHeaders(headersFile);
    } catch (error) {
      read.problems.push(`WEBHOOK_HEADERS_FILE=${JSON.stringify(headersFile)} cannot be used (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}): mount the Secret there, one "Name: value" a line`);
    }
  }
  return { url, headersFile };
}

/** 0.0.0.0 or ::, which listen on every address, HOST_IP included. */
function isUnspecified(address: string): boolean {
  return address === '0.0.0.0' || /^[0:]+$/.test(address);
}

/** Characters as the chart's schema counts them (code points), not UTF-16 units: one rule on both sides. */
function characters(text: string): number {
  return [...text].length;
}

export function loadConfig(env: Env, mode: Mode): Config {
  const read = new EnvReader(env);

  const secretFile = read.raw('SECRET_FILE');
  const secret = mode === 'agent' ? adminSecret(read, secretFile) : read.raw('SECRET');

  const cloudProvider = read.raw('CLOUDPROVIDER') ?? 'aws';
  if (cloudProvider.toLowerCase() !== 'aws') {
    read.problems.push(`CLOUDPROVIDER=${JSON.stringify(cloudProvider)} is not supported: the only provider is aws`);
  }

  const drainTimeoutMs = read.seconds('DRAIN_TIMEOUT', 120, 1, 3600);
  const config: Config = {
    secret,
    secretFile,
    tokenAudience: tokenAudience(read),
    bindAddress: read.matching('BIND_ADDRESS', { test: (text: string) => isIP(text) !== 0 }, 'an IPv4 or IPv6 address of this host (the chart\'s config.bindAddress; $(HOST_IP) for the node\'s own), or unset for all of them'),
    region: read.matching('AWS_REGION', REGION, 'an AWS region name such as us-east-1'),
    logLevel: read.oneOf('LOGLEVEL', ['debug', 'info', 'warn', 'error'] as const, 'info'),
    clusterName: read.matching('CLUSTERNAME', CLUSTER_NAME, 'a cluster name (letters, digits, ".", "_", "-"; up to 100)'),
    vpcId: read.matching('VPCID', VPC_ID, 'a VPC id such as vpc-0123456789abcdef0'),
    cloudProvider: 'aws',
    port: read.integer('PORT', 9740, 1, 65535),
    pollIntervalMs: read.seconds('POLL_INTERVAL', 2, 1, 60),
    drainTimeoutMs,
    dryRun: read.boolean('DRY_RUN', false),
    sigtermDrain: read.oneOf('SIGTERM_DRAIN', ['auto', 'always', 'never'] as const, 'auto'),
    nodeName: read.raw('NODE_NAME'),
    podName: read.raw('POD_NAME'),
    podNamespace: read.raw('POD_NAMESPACE'),
    deadlineMarginMs: read.seconds('DEADLINE_MARGIN', 15, 0, 600),
    maintenanceLeadMs: read.seconds('MAINTENANCE_LEAD_TIME', 600, 0, 7 * 24 * 3600),
    rebalanceDrain: read.boolean('REBALANCE_DRAIN', false),
    excludeNode: read.boolean('EXCLUDE_NODE', true),
    recheckIntervalMs: read.seconds('RECHECK_INTERVAL', 30, 5, 3600),
    maxConcurrentDrains: read.integer('MAX_CONCURRENT_DRAINS', 16, 1, 1000),
    terminationGracePeriodMs: read.seconds('TERMINATION_GRACE_PERIOD', 30, 1, 24 * 3600),
    localServiceDrain: read.boolean('LOCAL_SERVICE_DRAIN', false),
    inventoryRefreshMs: read.seconds('INVENTORY_REFRESH', 1800, 0, 86_400),
    lifecycleHook: hookSetting(read),
    coordination: read.oneOf('COORDINATION', ['auto', 'off'] as const, 'auto'),
    webhook: webhookSetting(read),
    hostIp: read.matching('HOST_IP', { test: (text: string) => ipFamily(text) !== undefined }, 'an IPv4 or IPv6 address (the chart sets it from the downward API, status.hostIP)'),
    // As the AWS SDK reads it: any value but "false" disables IMDSv1.
    imdsV1Fallback: (read.raw('AWS_EC2_METADATA_V1_DISABLED') ?? 'false') === 'false',
    imdsEndpoint: read.raw('AWS_EC2_METADATA_SERVICE_ENDPOINT'),
  };

  if ((config.podName === undefined) !== (config.podNamespace === undefined)) {
    read.problems.push('POD_NAME and POD_NAMESPACE go together: set both from the downward API, or neither');
  }

  const { bindAddress, hostIp } = config;
  if (bindAddress !== undefined && hostIp !== undefined && bindAddress !== hostIp && config.coordination === 'auto' && !isUnspecified(bindAddress)) {
    read.problems.push(
      `BIND_ADDRESS=${bindAddress} leaves out HOST_IP (${hostIp}), where the other agents reach this one when it coordinates: set BIND_ADDRESS to HOST_IP (the chart's $(HOST_IP)) or leave it unset, or set COORDINATION=off`,
    );
  }

  if (read.problems.length > 0) throw new ConfigError(read.problems);
  return Object.freeze(config);
}

/** The configuration for the start-up log line: the secret is never part of it. */
export function describeConfig(config: Config): Record<string, unknown> {
  const { secret, webhook, ...rest } = config;
  return { ...rest, secret: secret === undefined ? 'unset' : '[redacted]', webhook: webhook ? { origin: webhook.url.origin, headersFile: webhook.headersFile } : 'unset' };
}
