/**
 * The examples run as child processes against a real server; what they leave in Redis is
 * checked here (balances, the campaign, the counter, and the events in tally:log).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type Redis from 'ioredis';
import { packageRoot, startServer, xlen, type Server } from './helpers/server';

let server: Server;
let admin: Redis;

before(async () => {
  server = await startServer();
  admin = server.admin();
});
after(async () => {
  await server?.stop();
});

interface Outcome {
  code: number | null;
  stdout: string;
  stderr: string;
}

function example(name: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Outcome> {
  const script = join(packageRoot(), 'dist', 'examples', `${name}.js`);
  return new Promise((res) => {
    execFile(
      process.execPath,
      [script, ...args],
      { env: { ...process.env, TALLY_REDIS_URL: '', ...env }, timeout: 120_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
        res({ code, stdout, stderr });
      },
    );
  });
}

function assertExit0(o: Outcome): void {
  assert.equal(o.code, 0, `exit ${String(o.code)}\nstdout: ${o.stdout}\nstderr: ${o.stderr}`);
}

test('currency.ts: two fields at once, 5200 + 10.43 = 5210.43, concurrent grants both count', async () => {
  const events = await xlen(admin);
  assertExit0(await example('currency', [server.url, '42']));
  assert.deepEqual(await admin.hgetall('user.asset.42'), { BDP: '5210.43', TRAINING: '21.5' });
  assert.equal(await xlen(admin), events + 4, 'one event per grant');
  // The URL from TALLY_REDIS_URL, a user of its own: four more events.
  assertExit0(await example('currency', [], { TALLY_REDIS_URL: server.url }));
  assert.equal(await xlen(admin), events + 8);
});

test('coupon-race.ts: 1,000 concurrent users, 100 coupons, exactly 100 win', async () => {
  const events = await xlen(admin);
  assertExit0(await example('coupon-race', [server.url, 'spring-sale']));
  const info = (await admin.call('COUPON.INFO', 'spring-sale')) as unknown[];
  assert.deepEqual(info, [
    'total', 100, 'issued', 100, 'reserved', 0, 'remaining', 0, 'peruser', 1, 'start', 0, 'end', 0, 'last_issue', 100,
  ]);
  const holders = Object.entries(await admin.hgetall('spring-sale')).filter(([f]) => f.startsWith('c:'));
  assert.equal(holders.length, 100);
  assert.ok(holders.every(([, count]) => count === '1'));
  assert.equal(await xlen(admin), events + 101, 'the create and 100 claims');
  // Run again on the same campaign: the create is a replay of its op-id, every claim is
  // SOLDOUT, nothing changes, and the example reports the wrong outcome with exit code 2.
  const again = await example('coupon-race', [server.url, 'spring-sale']);
  assert.equal(again.code, 2, again.stderr);
  assert.equal(await xlen(admin), events + 101);
});

test('usage-quota.ts: 150 calls at once on a quota of 100, exactly 100 pass', async () => {
  const events = await xlen(admin);
  assertExit0(await example('usage-quota', [], { TALLY_REDIS_URL: server.url }));
  const counters = await admin.keys('api:acme:*');
  assert.equal(counters.length, 1);
  const usage = (await admin.call('USAGE.GET', counters[0] as string)) as string[];
  assert.deepEqual(usage.slice(0, 10), ['used', '100', 'limit', '100', 'reserved', '0', 'remaining', '0', 'period', 'month']);
  assert.equal(await xlen(admin), events + 101, 'the limit and 100 consumes');
});
