/**
 * A Redis Cluster of three primaries with the module on each (slots assigned with CLUSTER
 * ADDSLOTSRANGE, joined with CLUSTER MEET), driven through node-redis `createCluster` and
 * ioredis `Cluster`.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import Redis, { Cluster } from 'ioredis';
import { createCluster } from 'redis';
import { newOpId, SoldOutError, TallyError, type TallyApi } from '@tally/client';
import { fromIoredis } from '@tally/client/ioredis';
import { fromNodeRedis, tally } from '@tally/client/node-redis';
import { rejectsWith } from './helpers/suite';
import { startCluster, waitFor, type ClusterNodes } from './helpers/server';

let cluster: ClusterNodes;
const admins = new Map<number, Redis>();

before(async () => {
  cluster = await startCluster();
  for (const n of cluster.nodes) {
    admins.set(n.port, n.admin());
  }
});
after(async () => {
  await cluster?.stop();
});

async function adminFor(key: string): Promise<Redis> {
  return admins.get((await cluster.nodeFor(key)).port) as Redis;
}

/** Events in every node's change log streams (`tally:log:{tag}`, one per slot). */
async function allEvents(): Promise<number> {
  let sum = 0;
  for (const a of admins.values()) {
    const streams = (await a.call('KEYS', 'tally:log*')) as string[];
    for (const s of streams) {
      sum += Number(await a.call('XLEN', s));
    }
  }
  return sum;
}

function clusterSuite(label: string, connect: () => Promise<{ t: TallyApi; close(): Promise<void> }>): void {
  describe(label, () => {
    const p = `${label.split(' ')[0]}:`;
    let t: TallyApi;
    let close: () => Promise<void>;
    before(async () => {
      ({ t, close } = await connect());
    });
    after(async () => {
      await close?.();
    });

    test('every node serves its keys: assetIncr, assetGet, one event per command', async () => {
      const keys: string[] = [];
      const ports = new Set<number>();
      for (let i = 0; ports.size < 3 || keys.length < 6; i++) {
        const key = `${p}user.asset.${i}`;
        keys.push(key);
        ports.add((await cluster.nodeFor(key)).port);
      }
      const events = await allEvents();
      for (const key of keys) {
        assert.deepEqual(await t.assetIncr(key, { BDP: '5200', TRAINING: '0.1' }), { BDP: '5200', TRAINING: '0.1' });
        assert.deepEqual(await t.assetIncr(key, { BDP: '10.43', TRAINING: '0.2' }), { BDP: '5210.43', TRAINING: '0.3' });
      }
      for (const key of keys) {
        assert.deepEqual(await t.assetGet(key), { BDP: '5210.43', TRAINING: '0.3' });
        const owner = await adminFor(key);
        assert.equal(await owner.hget(key, 'BDP'), '5210.43', `${key} on its own node`);
      }
      assert.equal(await allEvents(), events + 2 * keys.length);
    });

    test('op-id replay on any node; CONFLICT', async () => {
      for (let i = 0; i < 6; i++) {
        const key = `${p}replay.${i}`;
        const opId = newOpId();
        const first = await t.assetIncr(key, { x: '1.5' }, { opId });
        assert.deepEqual(await t.assetIncr(key, { x: '1.5' }, { opId }), first);
        await rejectsWith(t.assetIncr(key, { x: '2' }, { opId }), TallyError, 'CONFLICT');
        assert.equal(await (await adminFor(key)).hget(key, 'x'), '1.5');
      }
    });

    test('assetTransfer within one slot (hash tag); across slots CROSSSLOT', async () => {
      const from = `{${p}u42}.wallet`;
      const to = `{${p}u42}.vault`;
      await t.assetIncr(from, { gold: '10' });
      assert.deepEqual(await t.assetTransfer(from, to, 'gold', '2.5'), { from: '7.5', to: '2.5' });
      const a = `${p}x.0`;
      let b = `${p}x.1`;
      for (let i = 1; (await cluster.nodeFor(a)).port === (await cluster.nodeFor(b)).port; i++) {
        b = `${p}x.${i + 1}`;
      }
      await t.assetIncr(a, { gold: '1' });
      const e = await rejectsWith(t.assetTransfer(a, b, 'gold', '1'), TallyError, 'CROSSSLOT');
      assert.equal(e.constructor, TallyError);
    });

    test('coupons: 40 concurrent claims on 10 coupons, exactly 10 win', async () => {
      const campaign = `${p}flash`;
      await t.couponCreate(campaign, 10);
      const results = await Promise.allSettled(
        Array.from({ length: 40 }, (_, i) => t.couponClaim(campaign, `user:${i}`, { opId: newOpId() })),
      );
      const won = results.filter((r) => r.status === 'fulfilled');
      const lost = results.filter((r) => r.status === 'rejected');
      assert.equal(won.length, 10);
      assert.ok(lost.every((r) => r.status === 'rejected' && r.reason instanceof SoldOutError));
      const issues = won.map((r) => (r.status === 'fulfilled' ? r.value.issue : 0)).sort((x, y) => x - y);
      assert.deepEqual(issues, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      assert.deepEqual(await t.couponInfo(campaign), {
        total: 10, issued: 10, reserved: 0, remaining: 0, perUser: 1, start: 0, end: 0, lastIssue: 10,
      });
      assert.equal(await (await adminFor(campaign)).hget(campaign, 'issued'), '10');
    });

    test('holds on every node: hold, replay, partial settle, expiry; coupon and usage reservations', async () => {
      const keys: string[] = [];
      const ports = new Set<number>();
      for (let i = 0; ports.size < 3; i++) {
        const key = `${p}hold.${i}`;
        keys.push(key);
        ports.add((await cluster.nodeFor(key)).port);
      }
      for (const key of keys) {
        await t.assetIncr(key, { gold: '100' });
        const opId = newOpId();
        assert.deepEqual(await t.assetHold(key, 'gold', '30', { ttl: 60_000, opId }), { holdId: '1', available: '70' });
        assert.deepEqual(await t.assetHold(key, 'gold', '30', { ttl: 60_000, opId }), { holdId: '1', available: '70' });
        assert.deepEqual(await t.assetSettle(key, '1', { amount: '10' }), { settled: '10', balance: '90' });
        await t.assetHold(key, 'gold', '90', { ttl: 100 });
        await waitFor(`the hold on ${key} to expire`, async () => (await t.assetHolds(key)).length === 0, 10_000);
        assert.deepEqual(await t.assetAvailable(key, ['gold']), { gold: { balance: '90', held: '0', available: '90' } });
        assert.equal(await (await adminFor(key)).hget(key, 'gold'), '90', `${key} on its own node`);
      }
      const campaign = `${p}hold.camp`;
      await t.couponCreate(campaign, 1);
      assert.deepEqual(await t.couponReserve(campaign, 'alice', { ttl: 60_000 }), { issue: 1, remaining: 0 });
      assert.deepEqual(await t.couponConfirm(campaign, 'alice', 1), { issue: 1, remaining: 0 });
      assert.equal((await t.couponInfo(campaign)).reserved, 0);
      const quota = `${p}hold.quota`;
      await t.usageLimit(quota, '5');
      const r = await t.usageReserve(quota, '3', { ttl: 60_000 });
      assert.deepEqual(await t.usageCommit(quota, r.reservationId, { actual: '1' }), { used: '1', remaining: '4' });
    });

    test('usage: limit, consume, get', async () => {
      const key = `${p}api:acme`;
      await t.usageLimit(key, '3', { period: 'day' });
      assert.deepEqual(await t.usageConsume(key, '1'), { used: '1', remaining: '2' });
      const g = await t.usageGet(key);
      assert.equal(g.used, '1');
      assert.equal(g.period, 'day');
    });
  });
}

clusterSuite('node-redis createCluster', async () => {
  const first = cluster.nodes[0];
  assert.ok(first);
  const c = createCluster({ rootNodes: [{ url: first.url }], modules: { tally } });
  c.on('error', () => {});
  await c.connect();
  return {
    t: fromNodeRedis(c),
    async close() {
      c.destroy();
    },
  };
});

clusterSuite('ioredis Cluster', async () => {
  const first = cluster.nodes[0];
  assert.ok(first);
  const c = new Cluster([{ host: '127.0.0.1', port: first.port }]);
  c.on('error', () => {});
  await new Promise<void>((res, rej) => {
    c.once('ready', () => res());
    c.once('error', rej);
  });
  return {
    t: fromIoredis(c),
    async close() {
      c.disconnect();
    },
  };
});
