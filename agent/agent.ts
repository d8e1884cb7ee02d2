/**
 * The long-running agent (a DaemonSet pod): wires the sources of evidence (IMDS notices, the Node watch,
 * SIGTERM) to the one decision about the node (NodeFate), and that decision to the actions: drain the
 * node and keep it out while it is going away, give it back when the signs pass. It serves the API.
 */
import type { Server } from 'node:http';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage } from './aws/errors.ts';
import { drainHeldByHook, type LifecycleHolder } from './aws/lifecycle.ts';
import type { TaggedInventory } from './aws/inventory.ts';
import { createAwsProvider, PlacementError } from './aws/provider.ts';
import { LONGEST_SPOT_SAFE_DELAY_SECONDS } from './aws/deregistration-delays.ts';
import { describeConfig, type Config } from './config.ts';
import type { DrainHandle, DrainRunner } from './drain/drainer.ts';
import { Drainer } from './drain/drainer.ts';
import { instanceHoldsAddress } from './drain/addresses.ts';
import { ALL, type LoadBalancerFamily, type Scope } from './drain/family.ts';
import type { Instance } from './drain/instance.ts';
import { backoff } from './drain/retry.ts';
import { Coordination } from './coordinator/coordination.ts';
import { HAND_OVER_TIMING, handOverTo, releaseBy, stillKeptOutBy } from './coordinator/hand-over.ts';
import { PeerRecheck } from './coordinator/peer-recheck.ts';
import type { DrainStatus, Trigger } from './drain/status.ts';
import { ExitCode } from './exit-codes.ts';
import { fixedSecret, SecretFile, type ApiSecret } from './http/api-secret.ts';
import { PodTokens } from './http/pod-tokens.ts';
import { createApiServer, NotReadyError, RefusedRequestError, type AgentApi, type DrainRequest, type Readiness } from './http/server.ts';
import type { ImdsClient, InstanceIdentity } from './imds/client.ts';
import { NoticesWatcher } from './imds/notices.ts';
import { OwnInstance } from './imds/own-instance.ts';
import { fromNode, fromNotice, NODE_DELETED } from './decision/evidence.ts';
import { NodeFate, type VerdictChange } from './decision/node-fate.ts';
import { decideOnSigterm } from './decision/sigterm.ts';
import { NodeAnnotationMemory, isTakenOut } from './memory/taken-out.ts';
import { TAKEN_OUT_ANNOTATION, WholeNodeMemory } from './memory/whole-node.ts';
import { createKubeClient, type KubeClient } from './kube/client.ts';
import { loadKubeAccess, type KubeAccess } from './kube/config.ts';
import { AUTOSCALER_DELETING_TAINT, NodeDrainMarks } from './kube/drain-marks.ts';
import { NodeKeeper } from './kube/keep-out.ts';
import { NodeWatch } from './kube/node-watch.ts';
import { Webhook } from './notify/webhook.ts';
import type { Logger } from './log.ts';
import { Metrics } from './metrics.ts';
import { imdsFor, resolvePlacement, type Resolved } from './placement.ts';
import { LocalServices } from './services/local-services.ts';

/** Start-up retries IMDS and AWS at least this often while they fail: a fixed cause is noticed within this time. */
const START_RETRY_CAP_MS = 30_000;
/** How long a drain started by the Cluster Autoscaler's taint waits for its hold to be on the Node. */
const HOLD_FIRST_MS = 2_000;
/** How long notices still under way may take at shutdown. */
const WEBHOOK_CLOSE_MS = 5_000;
/** Kept back from the pod's grace period, to close the server and exit before SIGKILL. */
const EXIT_MARGIN_MS = 3_000;
/** Pods' addresses come with the interfaces the VPC CNI attaches: read them again this often between drains. */
const OWN_ADDRESSES_REFRESH_MS = 60_000;

/** What exists once the agent has found out where it runs. */
interface Running {
  readonly resolved: Resolved;
  readonly self: InstanceIdentity;
  readonly drainer: Drainer;
  readonly watcher: NoticesWatcher;
  readonly lifecycle: LifecycleHolder;
  readonly inventory: TaggedInventory;
  /** With LOCAL_SERVICE_DRAIN and Kubernetes access: scoped drains of this node, and putting them back. */
  readonly services: LocalServices | undefined;
  /** What drains of the whole node took out, to give back. */
  readonly takenOut: WholeNodeMemory;
  /** This instance's addresses, from IMDS: a self-drain never waits for EC2. */
  readonly own: OwnInstance;
  /** With NODE_NAME and Kubernetes access: the Node's changes, as they happen. */
  readonly nodeWatch: NodeWatch | undefined;
  /** With COORDINATION=auto, Kubernetes access, POD_NAME and HOST_IP: the election of the cluster's coordinator. */
  readonly coordination: Coordination | undefined;
  /** While this agent coordinates: the keep-out re-check of the peers whose drains it served. */
  readonly peerRecheck: PeerRecheck;
}

/**
 * `env`: where Kubernetes access is looked up (the service account, KUBECONFIG); the process's own
 * environment, except for a benchmark that hosts several agents in one process.
 */
export async function runAgent(config: Config, logger: Logger, version: string, env: NodeJS.ProcessEnv = process.env): Promise<ExitCode> {
  const access = config.nodeName ? await loadKubeAccess(env) : undefined;
  return new Agent(config, logger, version, access).run();
}

class Agent implements AgentApi {
  private readonly metrics = new Metrics();
  private readonly imds: ImdsClient;
  private readonly kube: KubeClient | undefined;
  private readonly keeper: NodeKeeper | undefined;
  /** The drain's state and the Cluster Autoscaler's hold, on the own Node (not in a dry run, which changes nothing). */
  private readonly marks: NodeDrainMarks | undefined;
  /** WEBHOOK_URL: told when a drain of this node starts and ends. */
  private readonly webhook: Webhook | undefined;
  /** The admin secret as it is now: SECRET_FILE is followed as kubelet rewrites it. */
  private readonly secret: ApiSecret;
  private running: Running | undefined;
  private notReadyBecause = 'starting: finding the instance, VPC and cluster';
  private shuttingDown = false;
  /** The one decision about this node: going away or not. */
  private readonly fate = new NodeFate();
  /** Keys of the notices active at the last report: each counted once while it lasts. */
  private noticesSeen = new Set<string>();
  /** Once this node is being drained from everything, nothing registers it back (until it is given back). */
  private wholeDrainStarted = false;
  /** The latest drain of the whole node, running or finished. */
  private wholeDrain: DrainHandle | undefined;
  /** One give-back at a time; a sign arriving meanwhile stops it. */
  private givingBack: Promise<void> | undefined;
  private recheck: NodeJS.Timeout | undefined;
  /** Events and labels still being written: shutdown lets them finish before closing the clients. */
  private readonly sideEffects = new Set<Promise<unknown>>();
  /** Drains held by an Auto Scaling lifecycle hook, by instance: one hold per instance, however many ask. */
  private readonly holds = new Map<string, DrainHandle>();
  private readonly stop = new AbortController();

  constructor(
    private readonly config: Config,
    private readonly logger: Logger,
    private readonly version: string,
    access: KubeAccess | undefined,
  ) {
    this.imds = imdsFor(config, logger);
    if (config.nodeName && !access) logger.warn('NODE_NAME is set but no Kubernetes access was found (no service account, no KUBECONFIG): no label, no events');
    this.kube = access ? createKubeClient(access, { logger: logger.child({ component: 'kube' }) }) : undefined;
    this.keeper =
      this.kube && config.nodeName ? new NodeKeeper(this.kube, config.nodeName, config.podName ?? 'hasta-la-vista', logger.child({ component: 'keep-out' })) : undefined;
    this.marks = this.kube && config.nodeName && !config.dryRun ? new NodeDrainMarks(this.kube, config.nodeName, logger.child({ component: 'node-marks' })) : undefined;
    this.webhook = config.webhook
      ? new Webhook({
          url: config.webhook.url,
          headersFile: config.webhook.headersFile,
          nodeName: config.nodeName,
          logger: logger.child({ component: 'webhook' }),
          count: (event, outcome) => this.metrics.webhookNotices.inc({ event, outcome }),
        })
      : undefined;
    this.secret = config.secretFile ? new SecretFile(config.secretFile, config.secret!, logger.child({ component: 'api' })) : fixedSecret(config.secret!);
  }

  /** Pods' own tokens, for their scoped drains: with TOKEN_AUDIENCE, Kubernetes access and NODE_NAME. */
  private podTokens(): { tokens: PodTokens; nodeName: string } | undefined {
    const { tokenAudience, nodeName } = this.config;
    return this.kube && nodeName && tokenAudience ? { tokens: new PodTokens(this.kube, tokenAudience), nodeName } : undefined;
  }

  async run(): Promise<ExitCode> {
    this.logger.info({ version: this.version, config: describeConfig(this.config) }, 'hasta-la-vista starting');
    const podTokens = this.podTokens();
    const server = createApiServer({ secret: this.secret, podTokens, agent: this, metrics: this.metrics, logger: this.logger.child({ component: 'api' }) });
    await listen(server, this.config.port, this.config.bindAddress);
    this.logger.info({ port: this.config.port, address: this.config.bindAddress ?? 'all', podTokens: podTokens ? { audience: podTokens.tokens.audience } : 'refused' }, 'API listening');

    const signalled = new Promise<NodeJS.Signals>((resolve) => {
      process.once('SIGTERM', () => resolve('SIGTERM'));
      process.once('SIGINT', () => resolve('SIGINT'));
    });
    const started = this.start().catch((error: unknown) => error);
    const first = await Promise.race([signalled, started]);
    if (first instanceof Error) {
      this.logger.fatal({ err: first }, `could not start: ${first.message}`);
      await this.close(server);
      return ExitCode.usage;
    }
    const signal = await signalled;
    return this.shutdown(signal, server);
  }

  // ---- start-up

  private async start(): Promise<void> {
    const resolved = await this.untilDone('resolve placement', () => resolvePlacement(this.config, { client: this.imds, for: 'self' }, this.logger));
    const self = resolved.self!;
    this.metrics.countAwsCalls(resolved.clients.calls);
    this.metrics.countDrainsInFlight(() => this.running?.drainer.running() ?? 0);
    const provider = createAwsProvider(resolved.clients, resolved.placement, this.config.lifecycleHook, this.logger, {
      read: (delays) => this.metrics.showDeregistrationDelays(delays),
      tooLong: (delay, fix) => {
        const said = `${delay.name}'s deregistration delay is ${delay.seconds} s, longer than a spot notice allows (${LONGEST_SPOT_SAFE_DELAY_SECONDS} s): a drain from it cannot be out in time; ${fix}`;
        this.logger.warn({ loadBalancer: delay.name, deregistrationDelaySeconds: delay.seconds }, said);
        this.track(this.keeper?.event('LongDeregistrationDelay', said, 'Warning'));
      },
    });
    const drainer = new Drainer({
      ...provider,
      calls: resolved.clients.calls,
      logger: this.logger.child({ component: 'drainer' }),
      maxConcurrent: this.config.maxConcurrentDrains,
      observer: this.metrics.drainObserver(),
    });
    const watcher = new NoticesWatcher({
      imds: this.imds,
      pollIntervalMs: this.config.pollIntervalMs,
      drainOnRebalance: this.config.rebalanceDrain,
      maintenanceLeadMs: this.config.maintenanceLeadMs,
      deadlineMarginMs: this.config.deadlineMarginMs,
      logger: this.logger.child({ component: 'notices' }),
      onNotices: (active) => {
        for (const notice of active) if (!this.noticesSeen.has(notice.key)) this.metrics.noticesSeen.inc({ kind: notice.kind });
        this.noticesSeen = new Set(active.map((notice) => notice.key));
        this.fate.report('imds', active.map(fromNotice));
      },
      onPollError: () => this.metrics.imdsErrors.inc(),
    });
    const services = this.localServices(provider.families, self);
    const store = this.kube && this.config.nodeName ? new NodeAnnotationMemory(this.kube, this.config.nodeName, TAKEN_OUT_ANNOTATION, isTakenOut, this.logger) : undefined;
    const takenOut = new WholeNodeMemory(store, provider.families, this.logger.child({ component: 'give-back' }));
    const own = new OwnInstance({
      imds: this.imds,
      instanceId: self.instanceId,
      vpcId: resolved.placement.vpcId,
      privateIp: self.privateIp,
      logger: this.logger.child({ component: 'own-instance' }),
    });
    const { kube } = this;
    const nodeName = this.config.nodeName;
    const nodeWatch =
      kube && nodeName
        ? new NodeWatch({
            kube,
            nodeName,
            onNode: (seen) => {
              if (seen.kind !== 'gone') this.track(this.marks?.observe(seen.node));
              this.fate.report('node', seen.kind === 'gone' ? [NODE_DELETED] : fromNode(seen.node));
            },
            logger: this.logger.child({ component: 'node-watch' }),
          })
        : undefined;
    const keepInventory = () => {
      if (this.config.inventoryRefreshMs > 0 && !this.shuttingDown) provider.inventory.refreshEvery(this.config.inventoryRefreshMs);
    };
    const peerRecheck = new PeerRecheck({
      drainer,
      intervalMs: this.config.recheckIntervalMs,
      drainTimeoutMs: this.config.drainTimeoutMs,
      dryRun: this.config.dryRun,
      onCaught: (instance, found) => {
        for (const membership of found) this.metrics.reRegistrations.inc({ family: membership.family });
        this.logger.warn({ instanceId: instance.id, found }, 'a served peer was registered again: taking it out again');
      },
      logger: this.logger.child({ component: 'peer-recheck' }),
    });
    const coordination = this.coordination(() => {
      keepInventory();
      return () => {
        provider.inventory.stop();
        peerRecheck.stop();
      };
    }, keepInventory);
    // A signal may come at any await of start-up: shutdown then owns what exists, and nothing more starts.
    if (this.stop.signal.aborted) return resolved.clients.destroy();
    this.running = { resolved, self, drainer, watcher, lifecycle: provider.lifecycle, inventory: provider.inventory, services, takenOut, nodeWatch, own, coordination, peerRecheck };
    this.logger.info({ instanceId: self.instanceId, ...resolved.placement }, 'placement resolved');
    // With a coordinator, only it keeps the cluster's inventory: the idle cost does not grow with the nodes.
    if (!coordination) keepInventory();

    await own.read();
    own.refreshEvery(OWN_ADDRESSES_REFRESH_MS);
    if (this.stop.signal.aborted) return;
    await this.settleOnStart(watcher, takenOut);
    await services?.load().catch((error: unknown) => this.logger.warn({ err: error }, 'could not read the scoped deregistrations to put back'));
    if (this.stop.signal.aborted) return;
    services?.start();
    this.fate.onChange((change) => {
      coordination?.reconsider();
      this.follow(change);
    });
    watcher.start();
    nodeWatch?.start();
    coordination?.start();
    this.logger.info({ instanceId: self.instanceId, watchingNode: nodeWatch !== undefined }, 'ready: watching IMDS for notices');
  }

  /**
   * The election, when this agent can take part: `whileLeading` runs when it starts coordinating and
   * returns what to do when that ends; `alone` when the election stopped for good.
   */
  private coordination(whileLeading: () => () => void, alone: () => void): Coordination | undefined {
    const { coordination, podName, podNamespace, hostIp, port } = this.config;
    if (coordination === 'off') return undefined;
    const missing = [!this.kube && 'Kubernetes access', !podName && 'POD_NAME', !podNamespace && 'POD_NAMESPACE', !hostIp && 'HOST_IP'].filter(Boolean);
    if (!this.kube || !podName || !podNamespace || !hostIp) {
      this.logger.info({ missing }, `no coordinator: this agent drains its own node alone (coordination needs ${missing.join(', ')}; the chart sets them)`);
      return undefined;
    }
    return new Coordination({
      leases: this.kube.leases,
      namespace: podNamespace,
      identity: podName,
      hostIp,
      port,
      mayLead: () => !this.shuttingDown && !this.fate.now().goingAway,
      onLeading: (signal) => {
        this.logger.info('coordinating: this agent drains the dying nodes of the cluster together and keeps the inventory');
        const stop = whileLeading();
        signal.addEventListener('abort', stop, { once: true });
      },
      onAlone: alone,
      logger: this.logger.child({ component: 'coordination' }),
    });
  }

  private localServices(families: readonly LoadBalancerFamily[], self: InstanceIdentity): LocalServices | undefined {
    if (!this.config.localServiceDrain) return undefined;
    if (!this.kube || !this.config.nodeName) {
      this.logger.warn('LOCAL_SERVICE_DRAIN needs NODE_NAME and Kubernetes access: scoped drains will not check EndpointSlices or register back');
      return undefined;
    }
    return new LocalServices({
      kube: this.kube,
      nodeName: this.config.nodeName,
      families,
      instance: () => this.running!.own.read(),
      blockedBecause: () => (this.shuttingDown ? 'shutting down' : this.wholeDrainStarted ? 'this node was drained from every load balancer' : undefined),
      onRegistered: (entry) => {
        this.metrics.registeredBack.inc({ family: entry.family });
        this.track(this.keeper?.event('RegisteredBack', `A pod of ${entry.service} is ready on this node again: registered ${self.instanceId} back into ${String(entry.summary.name ?? entry.summary.arn)}`, 'Normal'));
      },
      pollIntervalMs: this.config.pollIntervalMs,
      logger: this.logger.child({ component: 'local-services' }),
    });
  }

  /**
   * Tries until it works or the agent stops. A DaemonSet pod that exits on an unreachable IMDS or a missing
   * permission crash-loops, and CrashLoopBackOff hides the cause; a pod that keeps trying says the cause in
   * its log (once each time it changes) and in /readyz, and starts as soon as someone fixes it.
   */
  private async untilDone<T>(what: string, work: () => Promise<T>): Promise<T> {
    let lastCause: string | undefined;
    for (let attempt = 0; ; attempt++) {
      try {
        const result = await work();
        this.stop.signal.throwIfAborted();
        if (lastCause !== undefined) this.logger.info({ attempts: attempt + 1 }, `${what}: done after ${attempt} failed attempts`);
        return result;
      } catch (error) {
        if (this.stop.signal.aborted) throw error;
        const cause = error instanceof PlacementError ? error.message : errorMessage(error);
        this.notReadyBecause = `${what}: ${cause}`;
        if (cause !== lastCause) this.logger.error({ attempt }, `${what} failed; retrying with backoff until it works: ${cause}`);
        lastCause = cause;
        await backoff(attempt, this.stop.signal, 1_000, START_RETRY_CAP_MS);
      }
    }
  }

  /**
   * What an earlier run left (a label, deregistrations to undo), with no sign of going away now: a false
   * alarm, a canceled event or a finished reboot. The node is given back; with any sign, it stays out
   * and the watchers' first reports drain it again.
   */
  private async settleOnStart(watcher: NoticesWatcher, takenOut: WholeNodeMemory): Promise<void> {
    try {
      await takenOut.load();
      const notices = await watcher.check();
      const node = this.kube && this.config.nodeName ? await this.kube.getNode(this.config.nodeName) : undefined;
      if (node) await this.marks?.observe(node);
      const signs = [...notices.map(fromNotice), ...(node ? fromNode(node) : [])];
      if (signs.length > 0) {
        this.logger.info({ signs: signs.map((sign) => sign.reason) }, 'going away on start: the node stays out');
        return;
      }
      await this.giveBack('no sign of going away on start');
    } catch (error) {
      this.logger.warn({ err: error }, 'could not check whether to give back what an earlier run took out; leaving the node as it is');
    }
  }

  // ---- acting on the decision

  private follow(change: VerdictChange): void {
    if (this.shuttingDown) return;
    const { verdict } = change;
    if (!verdict.goingAway) {
      if (change.givenBack) this.track((this.givingBack ??= this.giveBack(change.why).finally(() => (this.givingBack = undefined))));
      return;
    }
    const deadline = verdict.deadline ?? new Date(Date.now() + this.config.drainTimeoutMs);
    const triggers = verdict.evidence.map((sign) => sign.trigger);
    this.logger.warn({ signs: verdict.evidence.map((sign) => sign.reason), deadline: deadline.toISOString() }, `the node is going away: ${change.why}`);
    const running = this.wholeDrain;
    if (running && running.status().state === 'draining') {
      running.reschedule(deadline, triggers);
      return;
    }
    // Out already, and kept out by the re-check: nothing to do for one more sign.
    if (running?.status().state === 'deregistered' && this.wholeDrainStarted) return;
    // The Cluster Autoscaler's hold goes on the Node before the first deregistration.
    const autoscaler = verdict.evidence.some((sign) => sign.key === `node:taint:${AUTOSCALER_DELETING_TAINT}`);
    (autoscaler && this.marks ? this.marks.written(HOLD_FIRST_MS) : Promise.resolve())
      .then(() => this.drainSelf(verdict.evidence[0]!.trigger, deadline, ALL))
      .then((handle) => handle.reschedule(deadline, triggers))
      .catch((error: unknown) => this.logger.error({ err: error }, 'could not start the drain of this node'));
  }

  /**
   * The signs passed: end a drain still running, stop the re-check, register the instance again where
   * the drains took it out, and remove the label this agent set. Stops as soon as a sign comes back.
   */
  private async giveBack(why: string): Promise<void> {
    const { takenOut, self } = this.running!;
    const staying = () => !this.fate.now().goingAway && !this.shuttingDown;
    const drain = this.wholeDrain;
    if (drain && drain.status().state === 'draining') {
      drain.cancel(`the node was given back (${why})`);
      await drain.done;
    }
    // A coordinator that served the drain keeps the node out until told: it must let go before the node goes back in.
    const served = drain?.status().handOver;
    if (served?.outcome === 'served') await this.releaseFrom(served.coordinator, this.running!.self.instanceId);
    if (!staying()) return;
    await this.marks?.givenBack();
    clearInterval(this.recheck);
    this.recheck = undefined;
    const labelled = this.keeper ? await this.keeper.liftOwnExclusion(() => (staying() ? undefined : 'a sign of going away came back'), `Given back (${why})`) : false;
    if (takenOut.pending().length === 0 && !labelled && !this.wholeDrainStarted) return;
    this.wholeDrainStarted = false;
    const instance = await this.running!.own.read();
    const { registered, left } = await takenOut.putBack(instance, staying);
    for (const entry of registered) this.metrics.givenBack.inc({ family: entry.family });
    const summary = `${registered.length} load balancer(s) registered again${left.length > 0 ? `, ${left.length} still out (see the log; tried again on the next start)` : ''}`;
    this.logger.info({ instanceId: self.instanceId, why, registered: registered.length, left: left.length }, `node given back: ${summary}`);
    await this.keeper?.event('GivenBack', `${self.instanceId} given back (${why}): ${summary}`, left.length > 0 ? 'Warning' : 'Normal');
  }

  /** The API's way in. */
  async drain(request: DrainRequest, signal: AbortSignal): Promise<DrainHandle> {
    const running = this.running;
    if (!running || this.shuttingDown) throw new NotReadyError(this.shuttingDown ? 'shutting down' : this.notReadyBecause);
    if (request.asg && this.config.lifecycleHook.kind === 'off') {
      // Holding nothing while the caller believes the instance is held would be worse than saying so.
      throw new RefusedRequestError(
        'asg=true asks to hold the instance with its Auto Scaling termination hook, but ASG_LIFECYCLE_HOOK names no hook: set it to the name of the hook this agent owns (chart value config.asgLifecycleHook), or leave out asg=true',
      );
    }
    const deadline = new Date(Date.now() + (request.timeoutMs ?? this.config.drainTimeoutMs));
    const target = request.target;
    // This instance, named by id or by one of its own addresses: no EC2 lookup.
    if (target === undefined || ('id' in target ? target.id === running.self.instanceId : instanceHoldsAddress(running.own.last(), target.ip))) {
      return this.drainSelf('api', deadline, request.scope, request);
    }
    // A dying peer handing its drain over describes its own instance (from its IMDS): a spot wave at the
    // coordinator waits for no EC2 lookup. One of another VPC is looked up, and not found.
    const described = request.peer?.instance;
    const instance = described && described.vpcId === running.resolved.placement.vpcId ? described : await running.drainer.find(target, signal);
    if (instance.id === running.self.instanceId) return this.drainSelf('api', deadline, request.scope, request);
    // A dying peer handing its drain to this coordinator is served, however many arrive together.
    const handOver = request.peer !== undefined && running.coordination?.isCoordinator() === true;
    if (handOver) this.logger.info({ instanceId: instance.id, peer: request.peer!.name, described: described !== undefined }, 'serving a peer\'s drain');
    const handle = running.drainer.start(instance, { trigger: 'api', scope: request.scope, deadline, dryRun: this.config.dryRun }, { capped: !handOver });
    if (handOver && request.scope.kind === 'all') {
      this.track(handle.done.then((status) => {
        // The follower leaves its keep-out re-check to this coordinator while it coordinates.
        if (status.state === 'deregistered' && running.coordination?.isCoordinator()) running.peerRecheck.add(instance);
      }));
    }
    return request.asg ? this.heldByHook(instance, handle) : handle;
  }

  /** The drain, held by the instance's Auto Scaling termination hook: `done` settles once the action is completed. */
  private heldByHook(instance: Instance, handle: DrainHandle): DrainHandle {
    if (this.config.dryRun) return handle;
    const holding = this.holds.get(instance.id);
    if (holding) return holding;
    const done = drainHeldByHook(this.running!.lifecycle, instance, handle, this.logger);
    const held: DrainHandle = { ...handle, done };
    this.holds.set(instance.id, held);
    this.track(done.finally(() => this.holds.delete(instance.id)));
    return held;
  }

  /**
   * Drains this instance; a drain of everything also labels the node and starts the keep-out re-check.
   * `asg`: hold it with the lifecycle hook (an ASG termination always is); `pod`: the caller of a scoped
   * drain, not counted as another ready endpoint.
   */
  private async drainSelf(
    trigger: Trigger,
    deadline: Date,
    scope: Scope,
    { asg = trigger === 'asg-termination', pod, caller }: { asg?: boolean; pod?: string; caller?: string } = {},
  ): Promise<DrainHandle> {
    const { drainer, services, own } = this.running!;
    const instance = await own.read();
    if (scope.kind === 'service' && services) return this.drainSelfFromService(instance, trigger, deadline, scope, services, { pod, caller });
    const whole = scope.kind === 'all' && !this.config.dryRun;
    const handle = drainer.start(instance, { trigger, scope, deadline, dryRun: this.config.dryRun }, { capped: false, run: whole ? this.handOver() : undefined });
    if (whole) this.wholeDrainStarted = true;
    if (whole && !handle.joined) this.wholeDrain = handle;
    if (whole && !handle.joined && this.keeper && this.config.excludeNode) {
      this.track(this.keeper.exclude(trigger).catch((error: unknown) => this.logger.error({ err: error }, 'could not label the node: controllers may register it again')));
    }
    if (!handle.joined) {
      this.drainStarted(trigger, scope, deadline, caller);
      if (whole) {
        this.track(this.marks?.drainChanged(handle.status()));
        this.webhook?.notify('drain.started', handle.status());
      }
      this.track(
        handle.done.then(async (status) => {
          if (whole) {
            this.webhook?.notify('drain.ended', status);
            await this.marks?.drainChanged(status);
            await this.running!.takenOut.remember(status).catch((error: unknown) => this.logger.error({ err: error }, 'could not remember what the drain took out: it will not be given back by itself'));
            // Given back meanwhile (the drain was canceled for it): nothing to keep out.
            if (this.wholeDrainStarted) this.startRecheck(instance, status.handOver?.outcome === 'served' ? status.handOver.coordinator : undefined);
          }
          await this.reportOutcome(status);
        }),
      );
    }
    return asg ? this.heldByHook(instance, handle) : handle;
  }

  /** The node's Event for a drain of it that starts, naming who asked when a pod did. */
  private drainStarted(trigger: Trigger, scope: Scope, deadline: Date, caller: string | undefined): void {
    const from = scope.kind === 'all' ? 'its load balancers' : `the load balancers of Service ${scope.namespace}/${scope.name}`;
    const asked = caller ? `, asked by ${caller}` : '';
    this.track(this.keeper?.event('DrainStarted', `Draining ${this.running!.self.instanceId} (${trigger}) from ${from} until ${deadline.toISOString()}${asked}`, 'Normal'));
  }

  /** Hands this node's drain to the coordinator, when another agent coordinates; undefined: drain alone. */
  private handOver(): DrainRunner | undefined {
    const { coordination, drainer } = this.running!;
    const coordinator = coordination?.coordinator();
    if (!coordination || !coordinator) return undefined;
    return handOverTo({
      coordinator,
      secret: this.secret.current(),
      peer: this.config.podName!,
      stillCoordinating: (current) => !coordination.replaced(current),
      renewing: (current) => coordination.renewing(current),
      successor: (after, waitMs, signal) => coordination.successor(after, waitMs, signal),
      alone: drainer.alone,
      observer: this.metrics.drainObserver(),
      logger: this.logger.child({ component: 'hand-over' }),
    });
  }

  /**
   * A scoped drain of this node (a preStop hook of an externalTrafficPolicy: Local Service): skipped while
   * another local endpoint of the Service is ready, remembered so the node goes back in later.
   */
  private async drainSelfFromService(
    instance: Instance,
    trigger: Trigger,
    deadline: Date,
    scope: Extract<Scope, { kind: 'service' }>,
    services: LocalServices,
    { pod: callerPod, caller }: { pod?: string; caller?: string },
  ): Promise<DrainHandle> {
    const { drainer } = this.running!;
    const service = `${scope.namespace}/${scope.name}`;
    const options = { trigger, scope, deadline, dryRun: this.config.dryRun };
    try {
      // The caller (a preStop hook) may still be listed as ready: the EndpointSlice controller lags.
      const others = await services.readyHere(scope.namespace, scope.name, callerPod);
      if (others > 0) return drainer.skip(instance, options, `${others} other ready endpoint(s) of ${service} still run on this node: not deregistering`);
    } catch (error) {
      // Better a drain that is put back later than traffic sent to a pod that is stopping.
      this.logger.warn({ err: error, service }, 'could not read the Service\'s EndpointSlices: draining anyway');
    }
    const handle = drainer.start(instance, options, { capped: false });
    if (!handle.joined) this.drainStarted(trigger, scope, deadline, caller);
    if (handle.joined || this.config.dryRun) return handle;
    // Answered only once the memory is on the Node: a crash right after the answer forgets nothing.
    const done = handle.done.then(async (status) => {
      await services
        .remember(service, status)
        .catch((error: unknown) => this.logger.error({ err: error, service }, 'could not remember the scoped deregistration: the node will not be put back by itself'));
      return status;
    });
    this.track(done);
    return { ...handle, done };
  }

  /** Side work (events, labels, memory) that shutdown waits for; a failure is logged, never unhandled. */
  private track(work: Promise<unknown> | undefined): void {
    if (!work) return;
    const settled = work.catch((error: unknown) => this.logger.error({ err: error }, 'side work failed')).finally(() => this.sideEffects.delete(settled));
    this.sideEffects.add(settled);
  }

  private async reportOutcome(status: DrainStatus): Promise<void> {
    const summary = `${status.state}: ${status.loadBalancers.filter((lb) => lb.state === 'out').length} of ${status.loadBalancers.length} load balancer(s) out${status.reason ? ` (${status.reason})` : ''}`;
    const kind = status.state === 'timed_out' ? 'DrainTimedOut' : status.state === 'failed' ? 'DrainFailed' : 'DrainFinished';
    await this.keeper?.event(kind, `Drain of ${status.instanceId} ${summary}`, kind === 'DrainFinished' ? 'Normal' : 'Warning');
  }

  /**
   * Until the process ends, a drained node is checked now and then for load balancers that took it back;
   * by the coordinator that served its drain while that one still coordinates (one pass for all its
   * peers), else by this agent.
   */
  private startRecheck(instance: Instance, servedBy: string | undefined): void {
    if (this.recheck || this.shuttingDown) return;
    const { drainer } = this.running!;
    if (servedBy) this.logger.info({ instanceId: instance.id, coordinator: servedBy }, 'the coordinator re-checks that this node stays out while it coordinates');
    this.recheck = setInterval(() => {
      void (async () => {
        try {
          if (servedBy && (await this.keptOutBy(servedBy, instance))) return;
          const found = await drainer.servingMemberships(instance, ALL, AbortSignal.timeout(this.config.recheckIntervalMs));
          if (found.length === 0 || this.shuttingDown) return;
          for (const membership of found) this.metrics.reRegistrations.inc({ family: membership.family });
          this.logger.warn({ instanceId: instance.id, found }, 'drained node was registered again: taking it out again');
          await this.keeper?.event('ReRegistrationCaught', `Registered again in ${found.map((m) => m.id).join(', ')}: deregistering`, 'Warning');
          await this.drainSelf('recheck', new Date(Date.now() + this.config.drainTimeoutMs), ALL);
        } catch (error) {
          this.logger.warn({ err: error }, 'keep-out re-check failed; trying again at the next interval');
        }
      })();
    }, this.config.recheckIntervalMs);
  }

  /** True while the coordinator that served this node's drain still coordinates and still knows that drain. */
  private async releaseFrom(servedBy: string, instanceId: string): Promise<void> {
    const current = this.running?.coordination?.coordinator();
    // Another coordinator since, or none: the one that served it no longer coordinates, nor keeps peers out.
    if (current?.identity !== servedBy) return;
    const released = await releaseBy(current, instanceId, { secret: this.secret.current(), peer: this.config.podName!, answerMs: HAND_OVER_TIMING.answerMs });
    if (!released) this.logger.warn({ coordinator: servedBy }, 'could not tell the coordinator that this node was given back: its keep-out re-check may take it out again within an hour');
  }

  private async keptOutBy(servedBy: string, instance: Instance): Promise<boolean> {
    const current = this.running?.coordination?.coordinator();
    if (current?.identity !== servedBy) return false;
    return stillKeptOutBy(current, instance.id, { secret: this.secret.current(), peer: this.config.podName!, answerMs: HAND_OVER_TIMING.answerMs });
  }

  // ---- the API's view

  alive(): boolean {
    const watcher = this.running?.watcher;
    const lastTick = watcher?.lastTickAt();
    if (!watcher || lastTick === undefined || this.shuttingDown) return true;
    // A poll takes at most a few IMDS timeouts; a watcher silent for much longer has stalled.
    return Date.now() - lastTick < 3 * this.config.pollIntervalMs + 20_000;
  }

  readiness(): Readiness {
    if (this.shuttingDown) return { ready: false, reason: 'shutting down' };
    if (!this.running) return { ready: false, reason: this.notReadyBecause };
    if (this.running.watcher.lastTickAt() === undefined) return { ready: false, reason: 'waiting for the first IMDS poll' };
    const imds = this.running.watcher.health();
    if (!imds.ok) return { ready: false, reason: imds.reason };
    return { ready: true };
  }

  statusOf(instanceId: string): DrainStatus | undefined {
    return this.running?.drainer.statusOf(instanceId);
  }

  async cancelDrain(instanceId: string, by: string): Promise<DrainStatus | undefined> {
    const running = this.running;
    if (!running) throw new NotReadyError(this.notReadyBecause);
    if (instanceId === running.self.instanceId) {
      throw new RefusedRequestError(`${instanceId} is this agent's own node, whose drain follows the signs of its going away and ends when they pass: cancel drains of other instances only`);
    }
    running.peerRecheck.remove(instanceId);
    this.logger.info({ instanceId, by }, 'drain canceled');
    return running.drainer.cancel(instanceId, `canceled by ${by}`);
  }

  // ---- shutdown

  private async shutdown(signal: NodeJS.Signals, server: Server): Promise<ExitCode> {
    const graceEnds = Date.now() + this.config.terminationGracePeriodMs - EXIT_MARGIN_MS;
    this.shuttingDown = true;
    this.stop.abort();
    clearInterval(this.recheck);
    this.running?.services?.stop();
    this.running?.inventory.stop();
    this.running?.own.stop();
    // Given up at once, so another agent coordinates while this one drains its own node.
    const released = this.running?.coordination?.stop();
    // A second signal means: stop now.
    const again = () => {
      this.logger.warn('second signal: abandoning running drains');
      void this.running?.drainer.abortAll();
    };
    process.once('SIGTERM', again).once('SIGINT', again);

    const running = this.running;
    if (running) {
      await Promise.all([running.watcher.stop(), running.nodeWatch?.stop()]);
      await this.givingBack;
      const { kube, config } = this;
      const { nodeName, podName, podNamespace } = config;
      const known = this.fate.now();
      const verdict = await decideOnSigterm({
        policy: config.sigtermDrain,
        known: known.goingAway ? known.evidence : [],
        notices: () => running.watcher.check(),
        node: kube && nodeName ? () => kube.getNode(nodeName) : undefined,
        pod: kube && podName && podNamespace ? () => kube.getPod(podNamespace, podName) : undefined,
      });
      this.logger.info({ signal, drain: verdict.drain, reason: verdict.reason }, verdict.drain ? `${signal}: the node is going away, draining it` : `${signal}: not draining`);
      if (!verdict.drain && verdict.kubernetesReadable) this.track(this.keeper?.event('NotDraining', `${signal}: not draining: ${verdict.reason}`, 'Normal'));
      // A pod restart or an uninstall: the autoscaler must not wait for a drain nobody will run.
      if (!verdict.drain) this.track(this.marks?.stopping());
      // Out already (a notice or the Node watch drained it): a second drain would only cost AWS calls.
      const out = this.wholeDrainStarted && this.wholeDrain?.status().state === 'deregistered';
      if (verdict.drain && out) this.logger.info({ instanceId: running.self.instanceId }, `${signal}: this node is out of its load balancers already`);
      if (verdict.drain && !out) {
        try {
          const handle = await this.drainSelf('sigterm', new Date(graceEnds), ALL);
          // Just after the drain's own deadline, which then reports timed_out itself.
          const timer = sleep(Math.max(0, graceEnds - Date.now()) + 500, undefined, { ref: false }).then(() => running.drainer.abortAll());
          await Promise.race([handle.done, timer]);
        } catch (error) {
          this.logger.error({ err: error }, 'could not drain this node on SIGTERM');
        }
      }
      await running.drainer.abortAll();
    } else {
      this.logger.warn({ signal, notReadyBecause: this.notReadyBecause }, `${signal} before start-up finished: this instance is not known yet, so nothing was drained`);
    }
    await released;
    // Notices under way get what is left of the grace period, a few seconds at most.
    await this.webhook?.close(Math.max(0, Math.min(WEBHOOK_CLOSE_MS, graceEnds - Date.now())));
    await this.close(server);
    this.logger.info({ signal }, 'stopped');
    return ExitCode.ok;
  }

  private async close(server: Server): Promise<void> {
    clearInterval(this.recheck);
    // Each side effect is bounded by the Kubernetes client's own timeout.
    await Promise.allSettled([...this.sideEffects]);
    server.close();
    server.closeAllConnections();
    await Promise.allSettled([this.imds.close(), this.kube?.close()]);
    this.running?.resolved.clients.destroy();
  }
}

async function listen(server: Server, port: number, address: string | undefined): Promise<void> {
  server.listen(port, address);
  try {
    await once(server, 'listening');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') throw new Error(`PORT ${port} is already in use on this host: set PORT (and the chart's hostPort) to a free port`);
    if (code === 'EADDRNOTAVAIL') throw new Error(`BIND_ADDRESS ${address} is not an address of this host: set one it has (the chart's $(HOST_IP)), or leave it unset`);
    throw new Error(String(error));
  }
}
