/** Whether a load balancer's target address is this instance's: IPv4 and IPv6, prefixes, any spelling. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { cidrContains, instanceHoldsAddress } from '../agent/drain/addresses.ts';
import type { Instance } from '../agent/drain/instance.ts';

const node: Instance = {
  id: 'i-0123456789abcdef0',
  vpcId: 'vpc-01234567',
  privateIps: ['10.0.1.10', '10.0.1.11'],
  ipv4Prefixes: ['10.0.1.32/28'],
  ipv6Addresses: ['2600:1f18:4a1:8a00::1c'],
  ipv6Prefixes: ['2600:1f18:4a1:8a01:1e4f::/80'],
  tags: {},
};

describe('target addresses', () => {
  it('an IPv6 target matches however it is spelled, and inside the delegated /80', () => {
    assert.ok(instanceHoldsAddress(node, '2600:1f18:4a1:8a00:0:0:0:1c'));
    assert.ok(instanceHoldsAddress(node, '2600:1F18:04A1:8A00::001C'));
    assert.ok(instanceHoldsAddress(node, '2600:1f18:4a1:8a01:1e4f:0:0:7'), 'a pod address from the prefix');
    assert.ok(!instanceHoldsAddress(node, '2600:1f18:4a1:8a01:1e50::7'), 'just outside the prefix');
    assert.ok(!instanceHoldsAddress(node, '2600:1f18:4a1:8a00::1d'));
  });

  it('IPv4: own addresses and the delegated prefix, nothing next to them', () => {
    assert.ok(instanceHoldsAddress(node, '10.0.1.11'));
    assert.ok(instanceHoldsAddress(node, '10.0.1.47'));
    assert.ok(!instanceHoldsAddress(node, '10.0.1.48'));
    assert.ok(!instanceHoldsAddress(node, '10.0.1.12'));
  });

  it('never matches what is not an address', () => {
    for (const text of ['i-0123456789abcdef0', '', 'fe80::1%eth0', '10.0.1.10/32']) assert.ok(!instanceHoldsAddress(node, text), text);
  });

  it('a malformed prefix contains nothing', () => {
    assert.ok(!cidrContains('10.0.1.0/33', '10.0.1.1'));
    assert.ok(!cidrContains('10.0.1.0', '10.0.1.0'));
    assert.ok(!cidrContains('2600::/129', '2600::1'));
    assert.ok(cidrContains('2600::/16', '2600:ffff::1'));
  });
});
