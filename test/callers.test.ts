/**
 * The two ways in, unit by unit: the admin secret followed in its file (SecretFile) and the review of
 * pods' tokens (PodTokens), each against a controllable clock; what a reviewed pod may ask
 * (whyPodRefused). End to end, with the built agent: callers.e2e.test.ts.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { REPLACED_SECRET_GRACE_MS, SecretFile } from '../agent/http/api-secret.ts';
import { whyPodRefused } from '../agent/http/pod-permissions.ts';
import { PodTokens, TokenRefusedError, TokenReviewsBusyError, TokenReviewUnavailableError, type PodCaller } from '../agent/http/pod-tokens.ts';
import type { KubePod, TokenReviewStatus } from '../agent/kube/client.ts';
import { ALL } from '../agent/drain/family.ts';
import { createLogger } from '../agent/log.ts';
import { Writable } from 'node:stream';

const dir = mkdtempSync(join(tmpdir(), 'hlv-callers-unit-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function capturingLogger(): { logger: ReturnType<typeof createLogger>; lines: () => Record<string, unknown>[] } {
  let text = '';
  const sink = new Writable({ write: (chunk: Buffer, _encoding, done) => ((text += chunk.toString()), done()) });
  return { logger: createLogger('info', sink), lines: () => text.split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, unknown>) };
}

describe('SecretFile', () => {
  const first = 'first-Secret-value-0001';
  const second = 'second-Secret-value-0002';

  it('follows the file: the new secret as soon as it is written, the replaced one until its grace ends', () => {
    const path = join(dir, 'rotated');
    writeFileSync(path, `${first}\n`);
    let now = 0;
    const { logger } = capturingLogger();
    const secret = new SecretFile(path, first, logger, () => now);
    assert.ok(secret.accepts(first));
    writeFileSync(path, `${second}\n`);
    assert.equal(secret.current(), first, 'what peers are sent is re-read at most once a second');
    assert.ok(secret.accepts(second), 'a secret that does not match has the file read again at once');
    assert.equal(secret.current(), second, 'peers are sent the new one');
    assert.ok(secret.accepts(first), 'the replaced one, within its grace');
    now += REPLACED_SECRET_GRACE_MS;
    assert.ok(!secret.accepts(first), 'the replaced one, after its grace');
    assert.ok(!secret.accepts(undefined) && !secret.accepts('guess-guess-guess-guess'));
  });

  it('keeps the last good secret when the file goes missing or too short, and says so once per cause', () => {
    const path = join(dir, 'broken');
    writeFileSync(path, first);
    let now = 0;
    const { logger, lines } = capturingLogger();
    const secret = new SecretFile(path, first, logger, () => now);
    rmSync(path);
    for (let i = 0; i < 3; i++) {
      now += 1_000;
      assert.ok(secret.accepts(first));
    }
    writeFileSync(path, 'short');
    now += 1_000;
    assert.ok(secret.accepts(first));
    assert.ok(!secret.accepts('short'));
    const errors = lines().filter((line) => line.level === 'error').map((line) => line.msg as string);
    assert.equal(errors.length, 2, errors.join('\n'));
    assert.match(errors[0]!, /cannot be read \(ENOENT\): keeping the secret read before; fix the mounted Secret/);
    assert.match(errors[1]!, /is 5 characters long/);
    assert.ok(!JSON.stringify(lines()).includes(first), 'the secret is in the log');
  });
});

/** A TokenReview answer for pod shop/web-1 on node-a, as the API server writes it. */
function reviewOf(overrides: Partial<TokenReviewStatus> = {}, extra: Record<string, string[]> = { 'authentication.kubernetes.io/pod-name': ['web-1'], 'authentication.kubernetes.io/pod-uid': ['uid-1'], 'authentication.kubernetes.io/node-name': ['node-a'] }): TokenReviewStatus {
  return { authenticated: true, user: { username: 'system:serviceaccount:shop:web', extra }, audiences: ['hasta-la-vista'], ...overrides };
}

/** A token-shaped string whose payload says when it expires. */
function token(expSeconds: number, salt = 'x'): string {
  const part = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'RS256' })}.${part({ exp: expSeconds, salt })}.c2ln`;
}

function fakeKube(answer: () => Promise<TokenReviewStatus>, pod?: Partial<KubePod>) {
  const calls = { reviews: 0, pods: 0 };
  return {
    calls,
    kube: {
      reviewToken: async () => (calls.reviews++, answer()),
      getPod: async () => (calls.pods++, { metadata: { name: 'web-1', namespace: 'shop', uid: 'uid-1' }, spec: { nodeName: 'node-b' }, ...pod }) as KubePod,
    },
  };
}

describe('PodTokens', () => {
  it('names the pod, its namespace, service account and node, from the review', async () => {
    const { kube } = fakeKube(async () => reviewOf());
    assert.deepEqual(await new PodTokens(kube, 'hasta-la-vista').callerOf(token(2e9)), { namespace: 'shop', pod: 'web-1', serviceAccount: 'web', node: 'node-a' });
  });

  it('keeps an answer until the token expires, at most 10 minutes', async () => {
    let now = 1_000_000_000;
    const { kube, calls } = fakeKube(async () => reviewOf());
    const tokens = new PodTokens(kube, 'hasta-la-vista', () => now);
    const shortLived = token(now / 1000 + 60);
    await tokens.callerOf(shortLived);
    await tokens.callerOf(shortLived);
    assert.equal(calls.reviews, 1);
    now += 60_000;
    await tokens.callerOf(shortLived);
    assert.equal(calls.reviews, 2, 'asked again once expired');

    const longLived = token(now / 1000 + 3600, 'long');
    await tokens.callerOf(longLived);
    now += 9 * 60_000;
    await tokens.callerOf(longLived);
    assert.equal(calls.reviews, 3);
    now += 60_000;
    await tokens.callerOf(longLived);
    assert.equal(calls.reviews, 4, 'asked again after 10 minutes: a deleted pod loses its token by then');
  });

  it('one review for the same token asked for at once; too many different ones at once are turned away', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const { kube, calls } = fakeKube(async () => (await gate, reviewOf()));
    const tokens = new PodTokens(kube, 'hasta-la-vista');
    const same = [tokens.callerOf(token(2e9)), tokens.callerOf(token(2e9))];
    const others = Array.from({ length: 15 }, (_, i) => tokens.callerOf(token(2e9, `other-${i}`)));
    await assert.rejects(tokens.callerOf(token(2e9, 'one-too-many')), TokenReviewsBusyError);
    release();
    await Promise.all([...same, ...others]);
    assert.equal(calls.reviews, 16);
  });

  it('refuses what is not a pod-bound ServiceAccount token for this audience', async () => {
    const cases: [TokenReviewStatus, RegExp][] = [
      [{ authenticated: false, error: '[invalid bearer token, service account token has expired]' }, /service account token has expired\]; present the pod's projected ServiceAccount token with audience "hasta-la-vista"/],
      [reviewOf({ audiences: [] }), /not valid for audience "hasta-la-vista"/],
      [reviewOf({ user: { username: 'alice@example.com' } }), /belongs to "alice@example.com", not to a ServiceAccount/],
      [reviewOf({}, {}), /not bound to a pod/],
    ];
    for (const [status, reason] of cases) {
      const { kube } = fakeKube(async () => status);
      await assert.rejects(new PodTokens(kube, 'hasta-la-vista').callerOf(token(2e9)), (error: Error) => error instanceof TokenRefusedError && reason.test(error.message));
    }
  });

  it('reads the pod for its node when the review does not say, refusing a replaced pod', async () => {
    const podOnly = { 'authentication.kubernetes.io/pod-name': ['web-1'], 'authentication.kubernetes.io/pod-uid': ['uid-1'] };
    assert.equal((await new PodTokens(fakeKube(async () => reviewOf({}, podOnly)).kube, 'hasta-la-vista').callerOf(token(2e9))).node, 'node-b');
    const replaced = fakeKube(async () => reviewOf({}, podOnly), { metadata: { name: 'web-1', namespace: 'shop', uid: 'uid-2' } });
    await assert.rejects(new PodTokens(replaced.kube, 'hasta-la-vista').callerOf(token(2e9)), /has been replaced by another of the same name/);
  });

  it('an API server that cannot answer fails closed, and the failure is not remembered', async () => {
    let fail = true;
    const { kube, calls } = fakeKube(async () => {
      if (fail) throw new Error('create a tokenreview: 403 Forbidden');
      return reviewOf();
    });
    const tokens = new PodTokens(kube, 'hasta-la-vista');
    await assert.rejects(tokens.callerOf(token(2e9)), (error: Error) => error instanceof TokenReviewUnavailableError && /403 Forbidden/.test(error.message));
    fail = false;
    assert.equal((await tokens.callerOf(token(2e9))).pod, 'web-1');
    assert.equal(calls.reviews, 2);
  });
});

describe('whyPodRefused', () => {
  const caller: PodCaller = { namespace: 'shop', pod: 'web-1', serviceAccount: 'web', node: 'node-a' };
  const scoped = { target: undefined, scope: { kind: 'service', namespace: 'shop', name: 'web' }, timeoutMs: undefined, asg: false } as const;

  it('allows its own node, its own namespace, as itself', () => {
    assert.equal(whyPodRefused(caller, scoped, 'node-a'), undefined);
    assert.equal(whyPodRefused(caller, { ...scoped, pod: 'web-1' }, 'node-a'), undefined);
  });

  it('refuses everything else, each with its reason', () => {
    assert.match(whyPodRefused(caller, scoped, 'node-b')!, /runs on node node-a, not on node-b/);
    assert.match(whyPodRefused(caller, { ...scoped, scope: ALL }, 'node-a')!, /a drain of every load balancer needs the admin secret/);
    assert.match(whyPodRefused(caller, { ...scoped, scope: { kind: 'service', namespace: 'bank', name: 'web' } }, 'node-a')!, /not bank\/web/);
    assert.match(whyPodRefused(caller, { ...scoped, target: { id: 'i-0123456789abcdef0' } }, 'node-a')!, /no id= or ip=/);
    assert.match(whyPodRefused(caller, { ...scoped, asg: true }, 'node-a')!, /asg=true needs the admin secret/);
    assert.match(whyPodRefused(caller, { ...scoped, pod: 'web-2' }, 'node-a')!, /pod=web-2 is not the token's pod web-1/);
  });
});
