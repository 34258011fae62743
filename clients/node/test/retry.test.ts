/**
 * Retries across a lost connection, for real: a proxy forwards ASSET.INCR to the server,
 * waits for its reply (the command is applied) and cuts the connection instead of passing
 * the reply on. withRetry's next attempt carries the same op-id and gets the original reply.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import Redis from 'ioredis';
import { createClient } from 'redis';
import { InsufficientError, withRetry, type TallyApi } from '@tally/client';
import { fromIoredis } from '@tally/client/ioredis';
import { fromNodeRedis, tally } from '@tally/client/node-redis';
import { startProxy, type DroppingProxy } from './helpers/proxy';
import { infoField, startServer, xlen, type Server } from './helpers/server';

let server: Server;
let admin: Redis;
let proxy: DroppingProxy;

before(async () => {
  server = await startServer();
  admin = server.admin();
  proxy = await startProxy(server.port);
});
after(async () => {
  await proxy?.close();
  await server?.stop();
});

async function appliedOnce(t: TallyApi, key: string): Promise<void> {
  const events = await xlen(admin);
  const replays = Number(await infoField(admin, 'tally_idempotent_replays'));
  const dropped = proxy.dropped;
  const seen: string[] = [];
  proxy.arm('ASSET.INCR');
  const r = await withRetry(
    (opId) => {
      seen.push(opId);
      return t.assetIncr(key, { gold: '5', silver: '0.5' }, { opId });
    },
    { attempts: 5, backoffMs: 20 },
  );
  assert.equal(proxy.dropped, dropped + 1, 'the first reply was dropped');
  assert.equal(seen.length, 2, 'two attempts');
  assert.equal(seen[0], seen[1], 'the same op-id');
  assert.deepEqual(r, { gold: '5', silver: '0.5' });
  assert.deepEqual(await admin.hgetall(key), { gold: '5', silver: '0.5' });
  assert.equal(await xlen(admin), events + 1, 'one event');
  assert.equal(Number(await infoField(admin, 'tally_idempotent_replays')), replays + 1, 'the retry was a replay');
}

describe('withRetry across a dropped reply', () => {
  test('node-redis: the retry with the same op-id is applied once', async () => {
    const client = createClient({ socket: { host: '127.0.0.1', port: proxy.port }, modules: { tally } });
    client.on('error', () => {});
    await client.connect();
    try {
      await appliedOnce(fromNodeRedis(client), 'retry.nr');
    } finally {
      client.destroy();
    }
  });

  test('ioredis (maxRetriesPerRequest 0): the retry with the same op-id is applied once', async () => {
    const client = new Redis({ host: '127.0.0.1', port: proxy.port, maxRetriesPerRequest: 0 });
    client.on('error', () => {});
    await client.ping();
    try {
      await appliedOnce(fromIoredis(client), 'retry.io');
    } finally {
      client.disconnect();
    }
  });

  test('a tally error is not retried', async () => {
    const client = new Redis({ host: '127.0.0.1', port: server.port });
    try {
      const t = fromIoredis(client);
      let calls = 0;
      await assert.rejects(
        withRetry((opId) => {
          calls++;
          return t.assetIncr('retry.none', { x: '-1' }, { opId });
        }),
        InsufficientError,
      );
      assert.equal(calls, 1);
    } finally {
      client.disconnect();
    }
  });
});

describe("ioredis's own resend after a reconnect (autoResendUnfulfilledCommands, its default)", () => {
  test('with an op-id the resent command is a replay: applied once', async () => {
    const client = new Redis({ host: '127.0.0.1', port: proxy.port });
    client.on('error', () => {});
    await client.ping();
    try {
      const t = fromIoredis(client);
      const events = await xlen(admin);
      proxy.arm('ASSET.INCR');
      assert.deepEqual(await t.assetIncr('resend.with', { gold: '5' }, { opId: 'resend-1' }), { gold: '5' });
      assert.equal(await admin.hget('resend.with', 'gold'), '5');
      assert.equal(await xlen(admin), events + 1);
    } finally {
      client.disconnect();
    }
  });

  test('without an op-id it is applied twice (why every mutation should carry one)', async () => {
    const client = new Redis({ host: '127.0.0.1', port: proxy.port });
    client.on('error', () => {});
    await client.ping();
    try {
      const t = fromIoredis(client);
      const events = await xlen(admin);
      const dropped = proxy.dropped;
      proxy.arm('ASSET.INCR');
      assert.deepEqual(await t.assetIncr('resend.without', { gold: '5' }), { gold: '10' });
      assert.equal(proxy.dropped, dropped + 1);
      assert.equal(await admin.hget('resend.without', 'gold'), '10');
      assert.equal(await xlen(admin), events + 2);
    } finally {
      client.disconnect();
    }
  });
});
