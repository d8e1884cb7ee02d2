/**
 * The world an end-to-end test file runs the built agent in: one moto (behind the call-logging,
 * fault-injecting proxy) per file; per test a fresh seeded world, a fake IMDS for its node, and a fake
 * Kubernetes API holding that Node and the agent's Pod, with a kubeconfig for it.
 *
 * `useCluster()` registers the node:test hooks and returns an object whose fields each test reads after
 * they ran; `agentEnv()` is the environment the agent needs to reach all of it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach } from 'node:test';
import { startAwsProxy, type AwsProxy } from '../fakes/aws-proxy.ts';
import { startFakeImds, type FakeImds } from '../fakes/imds.ts';
import { makeNode, makePod, startFakeKube, type FakeKube } from '../fakes/kube.ts';
import { REGION, seedWorld, type World } from '../fixtures/world.ts';
import { killAllAgents } from './agent-harness.ts';
import { startMoto, type Moto } from './moto.ts';

export interface ClusterOptions {
  /** The agent's Node, whose providerID names the world's node instance. */
  readonly node: string;
  readonly pod: { readonly namespace: string; readonly name: string };
  /** Runs after the world is seeded, before the proxy's call log is cleared: tags, attributes, Pods. */
  readonly prepare?: (cluster: E2eCluster) => Promise<void> | void;
}

export interface E2eCluster {
  moto: Moto;
  proxy: AwsProxy;
  world: World;
  imds: FakeImds;
  kube: FakeKube;
  kubeconfig: string;
  /** A scratch directory for the file, removed after it. */
  tmp: string;
  /** What the agent needs to reach the fakes as this node's agent, with `extra` on top. */
  agentEnv(extra?: Record<string, string>): Record<string, string>;
}

export function useCluster(options: ClusterOptions): E2eCluster {
  const cluster = {
    agentEnv(extra: Record<string, string> = {}): Record<string, string> {
      return {
        AWS_ENDPOINT_URL: cluster.proxy.url,
        AWS_EC2_METADATA_SERVICE_ENDPOINT: cluster.imds.url,
        POLL_INTERVAL: '1',
        NODE_NAME: options.node,
        POD_NAME: options.pod.name,
        POD_NAMESPACE: options.pod.namespace,
        KUBECONFIG: cluster.kubeconfig,
        ...extra,
      };
    },
  } as E2eCluster;

  before(async () => {
    cluster.moto = await startMoto();
    cluster.proxy = await startAwsProxy(cluster.moto.url);
    cluster.tmp = mkdtempSync(join(tmpdir(), 'hlv-e2e-'));
  });
  after(async () => {
    await cluster.proxy?.close();
    await cluster.moto?.stop();
    if (cluster.tmp) rmSync(cluster.tmp, { recursive: true, force: true });
  });
  beforeEach(async () => {
    const { moto, proxy } = cluster;
    await moto.reset();
    proxy.clearFaults();
    cluster.world = await seedWorld(moto.url);
    const { world } = cluster;
    cluster.imds = await startFakeImds({ instanceId: world.node.id, region: REGION, availabilityZone: 'us-east-1a', vpcId: world.clusterVpc, privateIp: world.node.ip, secondaryIps: [world.node.secondaryIp] });
    cluster.kube = await startFakeKube({ token: 'e2e-cluster-token' });
    cluster.kube.setNode(makeNode(options.node, { providerID: `aws:///us-east-1a/${world.node.id}` }));
    cluster.kube.setPod(makePod(options.pod.namespace, options.pod.name, { nodeName: options.node }));
    cluster.kubeconfig = cluster.kube.writeKubeconfig(join(cluster.tmp, 'kubeconfig'));
    await options.prepare?.(cluster);
    proxy.calls.length = 0;
  });
  afterEach(async () => {
    await killAllAgents();
    await cluster.imds.close();
    await cluster.kube.close();
  });
  return cluster;
}
