/**
 * The behaviour every adapter must show against a real server, run once per adapter
 * (node-redis.test.ts, ioredis.test.ts). Each test uses its own keys.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import Decimal from 'decimal.js';
import type Redis from 'ioredis';
import {
  BacklogError,
  ClosedError,
  ConflictError,
  DuplicateError,
  HoldLimitError,
  InsufficientError,
  LimitExceededError,
  NoPermError,
  NotFoundError,
  OpIdsError,
  SoldOutError,
  TallyError,
  WrongTypeError,
  newOpId,
  type DecimalCodec,
  type TallyApi,
} from '@tally/client';
import { infoField, startServer, waitFor, xlen, type Server } from './server';

export interface Connected<A> {
  t: TallyApi<A>;
  close(): Promise<void>;
}

export interface AdapterFactory {
  /** A typed client on the server, as `user` when given. */
  connect<A = string>(server: Server, options?: { user?: { name: string; password: string }; codec?: DecimalCodec<A> }): Promise<Connected<A>>;
}

/** The decimal.js adapter README.md documents, tested here as written there. */
export const D40 = Decimal.clone({ precision: 40 });
export const decimalJs: DecimalCodec<Decimal> = {
  encode: (d) => d.toFixed(),
  decode: (s) => new D40(s),
};

/** Asserts `promise` rejects with an instance of `Class` whose code is `code`. */
export async function rejectsWith(promise: Promise<unknown>, Class: new (...a: never[]) => TallyError, code: string): Promise<TallyError> {
  let caught: unknown;
  try {
    await promise;
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof Class, `expected ${Class.name}, got ${String(caught)}`);
  assert.ok(caught instanceof TallyError);
  assert.ok(caught instanceof Error);
  assert.equal(caught.code, code);
  assert.ok(caught.message.startsWith(`${code} `), caught.message);
  return caught;
}

/** A TTL short enough for a test to watch a hold expire (polling, with a deadline). */
export const SHORT_TTL_MS = 100;

/** Asserts `promise` rejects with NOTFOUND about hold `holdId`, for `reason`. */
export async function rejectsNotFound(promise: Promise<unknown>, holdId: string, reason: string): Promise<void> {
  const e = await rejectsWith(promise, NotFoundError, 'NOTFOUND');
  assert.ok(e instanceof NotFoundError);
  assert.deepEqual([e.holdId, e.reason], [holdId, reason], e.message);
}

/** The last event of the standalone change log. */
async function lastEvent(admin: Redis): Promise<Record<string, unknown> & { type: string; hold: Record<string, unknown> }> {
  const entries = (await admin.call('XREVRANGE', 'tally:log', '+', '-', 'COUNT', '1')) as Array<[string, string[]]>;
  const fields = entries[0]?.[1] ?? [];
  return JSON.parse(fields[fields.indexOf('event') + 1] ?? 'null') as Record<string, unknown> & {
    type: string;
    hold: Record<string, unknown>;
  };
}

export function defineAdapterSuite(label: string, factory: AdapterFactory): void {
  describe(label, () => {
    let server: Server;
    let admin: Redis;
    let t: TallyApi;
    let close: () => Promise<void>;

    before(async () => {
      server = await startServer();
      admin = server.admin();
      ({ t, close } = await factory.connect(server));
    });
    after(async () => {
      await close?.();
      await server?.stop();
    });

    test('assetIncr: two fields at once, atomically; 5200 + 10.43 = 5210.43', async () => {
      await t.assetIncr('user.asset.42', { BDP: '5200' });
      const before = await xlen(admin);
      const r = await t.assetIncr('user.asset.42', { BDP: '10.43', TRAINING: '3' }, { meta: 'daily bonus' });
      assert.deepEqual(r, { BDP: '5210.43', TRAINING: '3' });
      assert.deepEqual(Object.keys(r), ['BDP', 'TRAINING']);
      assert.equal(await admin.hget('user.asset.42', 'BDP'), '5210.43');
      assert.equal(await admin.hget('user.asset.42', 'TRAINING'), '3');
      assert.equal(await xlen(admin), before + 1, 'one event for both fields');
      // All or nothing: a second field that would go below 0 stops the first one too.
      await rejectsWith(t.assetIncr('user.asset.42', { BDP: '1', TRAINING: '-4' }), InsufficientError, 'INSUFFICIENT');
      assert.deepEqual(await t.assetGet('user.asset.42'), { BDP: '5210.43', TRAINING: '3' });
      assert.equal(await xlen(admin), before + 1);
    });

    test('0.1 + 0.2 is read back as 0.3', async () => {
      await t.assetIncr('float.trap', { x: '0.1' });
      assert.deepEqual(await t.assetIncr('float.trap', { x: '0.2' }), { x: '0.3' });
      assert.deepEqual(await t.assetGet('float.trap', ['x']), { x: '0.3' });
      assert.equal(await admin.hget('float.trap', 'x'), '0.3');
      await t.usageLimit('float.quota', '1');
      await t.usageConsume('float.quota', '0.1');
      assert.deepEqual(await t.usageConsume('float.quota', '0.2'), { used: '0.3', remaining: '0.7' });
    });

    test('20-digit amounts round-trip exactly; beyond is ERR', async () => {
      const big = '99999999999999999999';
      const precise = '12345678901234567890.123456789012345678';
      assert.deepEqual(await t.assetIncr('big', [['a', big], ['b', precise]]), { a: big, b: precise });
      assert.deepEqual(await t.assetGet('big', ['a', 'b']), { a: big, b: precise });
      assert.equal(await admin.hget('big', 'b'), precise);
      assert.deepEqual(await t.assetIncr('big', { b: '-12345678901234567890.123456789012345677' }), { b: '0.000000000000000001' });
      const e = await rejectsWith(t.assetIncr('big', { a: '1' }), TallyError, 'ERR');
      assert.ok(!(e instanceof InsufficientError));
      assert.equal(await admin.hget('big', 'a'), big);
      await t.usageLimit('big.quota', big);
      assert.deepEqual(await t.usageConsume('big.quota', '0.000000000000000001'), {
        used: '0.000000000000000001',
        remaining: '99999999999999999998.999999999999999999',
      });
    });

    test('a number is refused at run time, before anything is sent', async () => {
      const before = await xlen(admin);
      const asString = (v: unknown): string => v as string;
      await assert.rejects(t.assetIncr('numbers', { x: asString(0.1) }), TypeError);
      await assert.rejects(t.assetIncr('numbers', [['x', asString(5)]]), TypeError);
      await assert.rejects(t.assetIncr('numbers', { x: '1' }, { floor: asString(-100) }), TypeError);
      await assert.rejects(t.assetIncr('numbers', { x: '1' }, { ceil: asString(10) }), TypeError);
      await assert.rejects(t.assetTransfer('numbers', 'numbers2', 'x', asString(1)), TypeError);
      await assert.rejects(t.usageLimit('numbers.q', asString(10)), TypeError);
      await assert.rejects(t.usageConsume('numbers.q', asString(1)), TypeError);
      await assert.rejects(t.assetIncr('numbers', { x: asString(10n) }), TypeError);
      await assert.rejects(t.assetIncr('numbers', { x: '1e3' }), TypeError);
      await assert.rejects(t.assetIncr('numbers', { x: 'NaN' }), TypeError);
      await assert.rejects(t.assetIncr('numbers', { x: ' 1' }), TypeError);
      // An option word as a field would be read by the server as that option: refused.
      await assert.rejects(t.assetIncr('numbers', { x: '1', META: '2' }), TypeError);
      await assert.rejects(t.assetIncr('numbers', {}), TypeError);
      assert.equal(await xlen(admin), before);
      assert.equal(await admin.exists('numbers', 'numbers2', 'numbers.q'), 0);
    });

    test('assetIncr bounds: floor, noFloor, ceil', async () => {
      await rejectsWith(t.assetIncr('bounds', { x: '-1' }), InsufficientError, 'INSUFFICIENT');
      assert.deepEqual(await t.assetIncr('bounds', { x: '-100' }, { floor: '-100' }), { x: '-100' });
      await rejectsWith(t.assetIncr('bounds', { x: '-0.01' }, { floor: '-100' }), InsufficientError, 'INSUFFICIENT');
      assert.deepEqual(await t.assetIncr('bounds', { x: '-1000000' }, { noFloor: true }), { x: '-1000100' });
      // A deposit into an overdrawn account is always accepted.
      assert.deepEqual(await t.assetIncr('bounds', { x: '100' }), { x: '-1000000' });
      assert.deepEqual(await t.assetIncr('bounds', { y: '50' }, { ceil: '50' }), { y: '50' });
      await rejectsWith(t.assetIncr('bounds', { y: '0.000000000000000001' }, { ceil: '50' }), LimitExceededError, 'LIMIT');
      await assert.rejects(
        t.assetIncr('bounds', { x: '1' }, { floor: '0', noFloor: true } as unknown as { noFloor: true }),
        TypeError,
      );
      assert.deepEqual(await t.assetGet('bounds'), { x: '-1000000', y: '50' });
    });

    test('assetGet: named fields in order, missing as 0, every field sorted', async () => {
      await admin.hset('get.me', 'b', '100.50', 'a', '2');
      // Replies use the canonical form (100.50 -> 100.5), in the order asked.
      assert.deepEqual(Object.entries(await t.assetGet('get.me', ['b', 'missing', 'a'])), [
        ['b', '100.5'],
        ['missing', '0'],
        ['a', '2'],
      ]);
      assert.deepEqual(Object.entries(await t.assetGet('get.me')), [
        ['a', '2'],
        ['b', '100.5'],
      ]);
      assert.deepEqual(await t.assetGet('no.such.key'), {});
      assert.deepEqual(await t.assetGet('no.such.key', ['x']), { x: '0' });
      await admin.hset('get.bad', 'x', 'abc');
      await rejectsWith(t.assetGet('get.bad'), WrongTypeError, 'WRONGTYPE');
    });

    test('assetTransfer: both balances; INSUFFICIENT leaves both', async () => {
      await t.assetIncr('{u1}.wallet', { gold: '10.5' });
      assert.deepEqual(await t.assetTransfer('{u1}.wallet', '{u1}.vault', 'gold', '0.25', { meta: 'save' }), {
        from: '10.25',
        to: '0.25',
      });
      await rejectsWith(t.assetTransfer('{u1}.wallet', '{u1}.vault', 'gold', '11'), InsufficientError, 'INSUFFICIENT');
      assert.deepEqual(await t.assetGet('{u1}.wallet', ['gold']), { gold: '10.25' });
      assert.deepEqual(await t.assetGet('{u1}.vault', ['gold']), { gold: '0.25' });
    });

    test('coupons: create, claim, DUPLICATE, SOLDOUT, release, NOTFOUND, info', async () => {
      await t.couponCreate('spring', 2, { meta: 'spring sale' });
      await rejectsWith(t.couponCreate('spring', 5), TallyError, 'ERR');
      assert.deepEqual(await t.couponClaim('spring', 'alice'), { issue: 1, remaining: 1 });
      await rejectsWith(t.couponClaim('spring', 'alice'), DuplicateError, 'DUPLICATE');
      assert.deepEqual(await t.couponClaim('spring', 'bob'), { issue: 2, remaining: 0 });
      await rejectsWith(t.couponClaim('spring', 'carol'), SoldOutError, 'SOLDOUT');
      assert.deepEqual(await t.couponRelease('spring', 'alice'), { issue: 1, remaining: 1 });
      await rejectsWith(t.couponRelease('spring', 'alice'), NotFoundError, 'NOTFOUND');
      assert.deepEqual(await t.couponClaim('spring', 'carol'), { issue: 3, remaining: 0 });
      assert.deepEqual(await t.couponInfo('spring'), {
        total: 2,
        issued: 2,
        reserved: 0,
        remaining: 0,
        perUser: 1,
        start: 0,
        end: 0,
        lastIssue: 3,
      });
      await rejectsWith(t.couponClaim('no-such-campaign', 'alice'), NotFoundError, 'NOTFOUND');
      await rejectsWith(t.couponInfo('no-such-campaign'), NotFoundError, 'NOTFOUND');
      await t.couponCreate('multi', 10, { perUser: 2 });
      assert.deepEqual(await t.couponClaim('multi', 'dave'), { issue: 1, remaining: 9 });
      assert.deepEqual(await t.couponClaim('multi', 'dave'), { issue: 2, remaining: 8 });
      await rejectsWith(t.couponClaim('multi', 'dave'), DuplicateError, 'DUPLICATE');
    });

    test('coupons: the window, CLOSED before START and at END', async () => {
      const now = Date.now();
      await t.couponCreate('later', 10, { start: new Date(now + 3_600_000) });
      await rejectsWith(t.couponClaim('later', 'alice'), ClosedError, 'CLOSED');
      await t.couponCreate('over', 10, { start: now - 7_200_000, end: now - 3_600_000 });
      await rejectsWith(t.couponClaim('over', 'alice'), ClosedError, 'CLOSED');
      await t.couponCreate('open', 10, { start: now - 3_600_000, end: new Date(now + 3_600_000) });
      assert.deepEqual(await t.couponClaim('open', 'alice'), { issue: 1, remaining: 9 });
      const info = await t.couponInfo('open');
      assert.equal(info.start, now - 3_600_000);
      assert.equal(info.end, now + 3_600_000);
    });

    test('usage: limit, consume, LIMIT, get, NOTFOUND, periods', async () => {
      await t.usageLimit('api:acme', '10', { period: 'month', opId: newOpId() });
      assert.deepEqual(await t.usageConsume('api:acme', '2.5'), { used: '2.5', remaining: '7.5' });
      await rejectsWith(t.usageConsume('api:acme', '8'), LimitExceededError, 'LIMIT');
      assert.deepEqual(await t.usageConsume('api:acme', '7.5'), { used: '10', remaining: '0' });
      const g = await t.usageGet('api:acme');
      const month = new Date().toISOString().slice(0, 7);
      assert.deepEqual(g, { used: '10', limit: '10', reserved: '0', remaining: '0', period: 'month', periodId: month });
      await t.usageLimit('api:acme', '12');
      assert.deepEqual(await t.usageGet('api:acme'), { used: '10', limit: '12', reserved: '0', remaining: '2', period: 'none', periodId: 'all' });
      await rejectsWith(t.usageConsume('api:nobody', '1'), NotFoundError, 'NOTFOUND');
      await rejectsWith(t.usageGet('api:nobody'), NotFoundError, 'NOTFOUND');
      await t.usageLimit('api:daily', '5', { period: 'day' });
      const day = await t.usageGet('api:daily');
      assert.equal(day.period, 'day');
      assert.match(day.periodId, /^[0-9]{4}-[0-9]{2}-[0-9]{2}$/);
      assert.deepEqual(await t.usageConsume('api:daily', '5'), { used: '5', remaining: '0' });
      await rejectsWith(t.usageConsume('api:daily', '0.000000000000000001'), LimitExceededError, 'LIMIT');
    });

    test('op-id: a replay returns the original reply and changes nothing; other args: CONFLICT', async () => {
      const opId = newOpId();
      const first = await t.assetIncr('replay', { gold: '7', silver: '1' }, { opId, meta: 'grant' });
      const before = await xlen(admin);
      const replays = Number(await infoField(admin, 'tally_idempotent_replays'));
      // Same request, other spelling of the same numbers: still the same operation.
      assert.deepEqual(await t.assetIncr('replay', { gold: '7.0', silver: '+1' }, { opId, meta: 'grant' }), first);
      assert.deepEqual(await t.assetIncr('replay', { gold: '7', silver: '1' }, { opId, meta: 'grant' }), first);
      assert.deepEqual(await t.assetGet('replay'), { gold: '7', silver: '1' });
      assert.equal(await xlen(admin), before);
      assert.equal(Number(await infoField(admin, 'tally_idempotent_replays')), replays + 2);
      await rejectsWith(t.assetIncr('replay', { gold: '8', silver: '1' }, { opId, meta: 'grant' }), ConflictError, 'CONFLICT');
      await rejectsWith(t.assetIncr('replay', { silver: '1', gold: '7' }, { opId, meta: 'grant' }), ConflictError, 'CONFLICT');
      // Coupons: the retry of a claim gets the same issue number, not a second coupon.
      await t.couponCreate('replay-c', 5);
      const claimId = newOpId();
      const c1 = await t.couponClaim('replay-c', 'erin', { opId: claimId });
      assert.deepEqual(await t.couponClaim('replay-c', 'erin', { opId: claimId }), c1);
      await rejectsWith(t.couponClaim('replay-c', 'frank', { opId: claimId }), ConflictError, 'CONFLICT');
      assert.equal((await t.couponInfo('replay-c')).issued, 1);
      // Usage: a retried consume counts once.
      await t.usageLimit('replay-q', '3');
      const useId = newOpId();
      const u1 = await t.usageConsume('replay-q', '2', { opId: useId });
      assert.deepEqual(await t.usageConsume('replay-q', '2', { opId: useId }), u1);
      assert.equal((await t.usageGet('replay-q')).used, '2');
      await rejectsWith(t.usageConsume('replay-q', '1', { opId: useId }), ConflictError, 'CONFLICT');
      // A transfer's op-id and a release's too.
      await t.assetIncr('{r}.a', { x: '5' });
      const moveId = newOpId();
      const m1 = await t.assetTransfer('{r}.a', '{r}.b', 'x', '2', { opId: moveId });
      assert.deepEqual(await t.assetTransfer('{r}.a', '{r}.b', 'x', '2', { opId: moveId }), m1);
      assert.deepEqual(await t.assetGet('{r}.a', ['x']), { x: '3' });
      const relId = newOpId();
      const r1 = await t.couponRelease('replay-c', 'erin', { opId: relId });
      assert.deepEqual(await t.couponRelease('replay-c', 'erin', { opId: relId }), r1);
      const createId = newOpId();
      await t.couponCreate('replay-c2', 5, { opId: createId });
      await t.couponCreate('replay-c2', 5, { opId: createId });
      await rejectsWith(t.couponCreate('replay-c2', 6, { opId: createId }), ConflictError, 'CONFLICT');
    });

    test('holds: a hold lowers available, not the balance; partial settle; void; holds list', async () => {
      await t.assetIncr('hold.w', { gold: '100', silver: '5' });
      const startedAt = Date.now();
      const h = await t.assetHold('hold.w', 'gold', '30.5', { ttl: 60_000, meta: 'order 17' });
      assert.deepEqual(h, { holdId: '1', available: '69.5' });
      assert.deepEqual(await t.assetGet('hold.w', ['gold']), { gold: '100' });
      assert.deepEqual(await t.assetAvailable('hold.w', ['gold', 'none']), {
        gold: { balance: '100', held: '30.5', available: '69.5' },
        none: { balance: '0', held: '0', available: '0' },
      });
      assert.deepEqual(Object.keys(await t.assetAvailable('hold.w')), ['gold', 'silver']);
      const holds = await t.assetHolds('hold.w');
      assert.equal(holds.length, 1);
      assert.deepEqual({ ...holds[0], expires: 0 }, { holdId: '1', field: 'gold', amount: '30.5', expires: 0 });
      assert.ok((holds[0]?.expires ?? 0) >= startedAt + 60_000 && (holds[0]?.expires ?? 0) <= Date.now() + 60_000);
      const ev = await lastEvent(admin);
      assert.deepEqual([ev.type, ev.meta, ev.hold.status], ['asset.hold', 'order 17', 'open']);
      // Held funds cannot be spent twice.
      await rejectsWith(t.assetIncr('hold.w', { gold: '-70' }), InsufficientError, 'INSUFFICIENT');
      await rejectsWith(t.assetHold('hold.w', 'gold', '70', { ttl: 60_000 }), InsufficientError, 'INSUFFICIENT');
      assert.deepEqual(await t.assetHold('hold.w', 'gold', '70', { ttl: 60_000, floor: '-0.5' }), { holdId: '2', available: '-0.5' });
      assert.deepEqual(await t.assetHold('hold.w', 'gold', '1', { ttl: 60_000, noFloor: true }), { holdId: '3', available: '-1.5' });
      // Partial settle: spends 25 of hold 1, releases the other 5.5.
      assert.deepEqual(await t.assetSettle('hold.w', '1', { amount: '25', meta: 'shipped' }), { settled: '25', balance: '75' });
      const settled = await lastEvent(admin);
      assert.deepEqual([settled.type, settled.hold.settled], ['asset.settle', '25']);
      assert.deepEqual(await t.assetVoid('hold.w', '2'), { released: '70', available: '74' });
      assert.deepEqual(await t.assetSettle('hold.w', '3'), { settled: '1', balance: '74' });
      assert.deepEqual(await t.assetHolds('hold.w'), []);
      assert.deepEqual(await t.assetAvailable('hold.w', ['gold']), { gold: { balance: '74', held: '0', available: '74' } });
      // More than held, or nothing: ERR, the hold stays open.
      const h4 = await t.assetHold('hold.w', 'gold', '1', { ttl: 60_000 });
      await rejectsWith(t.assetSettle('hold.w', h4.holdId, { amount: '1.5' }), TallyError, 'ERR');
      await rejectsWith(t.assetSettle('hold.w', h4.holdId, { amount: '0' }), TallyError, 'ERR');
      assert.deepEqual((await t.assetHolds('hold.w')).map((x) => x.holdId), [h4.holdId]);
    });

    test('holds: expiry gives the funds back; NOTFOUND says settled, voided, expired, unknown', async () => {
      await t.assetIncr('hold.x', { gold: '100' });
      const settled = (await t.assetHold('hold.x', 'gold', '1', { ttl: 60_000 })).holdId;
      await t.assetSettle('hold.x', settled);
      const voided = (await t.assetHold('hold.x', 'gold', '1', { ttl: 60_000 })).holdId;
      await t.assetVoid('hold.x', voided);
      const short = await t.assetHold('hold.x', 'gold', '99', { ttl: SHORT_TTL_MS });
      assert.equal(short.available, '0');
      await waitFor('the hold to expire', async () => (await t.assetHolds('hold.x')).length === 0, 10_000);
      assert.deepEqual(await t.assetAvailable('hold.x', ['gold']), { gold: { balance: '99', held: '0', available: '99' } });
      for (const [id, reason] of [[settled, 'settled'], [voided, 'voided'], [short.holdId, 'expired'], ['999', 'unknown']] as const) {
        await rejectsNotFound(t.assetSettle('hold.x', id), id, reason);
        await rejectsNotFound(t.assetVoid('hold.x', id), id, reason);
      }
      const other = await rejectsWith(t.couponInfo('hold.no-such-campaign'), NotFoundError, 'NOTFOUND');
      assert.ok(other instanceof NotFoundError);
      assert.equal(other.reason, undefined);
      assert.equal(other.holdId, undefined);
      assert.deepEqual(await t.assetGet('hold.x', ['gold']), { gold: '99' });
    });

    test('holds: an op-id replay returns the same hold; other args: CONFLICT', async () => {
      await t.assetIncr('hold.r', { gold: '100' });
      const before = await xlen(admin);
      const opId = newOpId();
      const first = await t.assetHold('hold.r', 'gold', '30', { ttl: 60_000, opId });
      assert.deepEqual(await t.assetHold('hold.r', 'gold', '30.0', { ttl: 60_000, opId }), first);
      assert.deepEqual(first, { holdId: '1', available: '70' });
      assert.deepEqual((await t.assetHolds('hold.r')).map((h) => h.holdId), ['1']);
      assert.equal(await xlen(admin), before + 1);
      await rejectsWith(t.assetHold('hold.r', 'gold', '31', { ttl: 60_000, opId }), ConflictError, 'CONFLICT');
      const settleId = newOpId();
      const s1 = await t.assetSettle('hold.r', '1', { amount: '10', opId: settleId });
      assert.deepEqual(await t.assetSettle('hold.r', '1', { amount: '10', opId: settleId }), s1);
      assert.deepEqual(await t.assetGet('hold.r', ['gold']), { gold: '90' });
    });

    test('holds: HOLDLIMIT beyond tally.max-holds-per-key', async () => {
      await t.assetIncr('hold.l', { gold: '10' });
      await admin.call('CONFIG', 'SET', 'tally.max-holds-per-key', '2');
      try {
        await t.assetHold('hold.l', 'gold', '1', { ttl: 60_000 });
        await t.assetHold('hold.l', 'gold', '1', { ttl: 60_000 });
        const e = await rejectsWith(t.assetHold('hold.l', 'gold', '1', { ttl: 60_000 }), HoldLimitError, 'HOLDLIMIT');
        assert.match(e.message, /tally\.max-holds-per-key is 2/);
        await t.assetVoid('hold.l', '1');
        assert.equal((await t.assetHold('hold.l', 'gold', '1', { ttl: 60_000 })).holdId, '3');
      } finally {
        await admin.call('CONFIG', 'SET', 'tally.max-holds-per-key', '1000');
      }
    });

    test('holds: arguments checked before sending (number amounts, ttl)', async () => {
      const before = await xlen(admin);
      const asString = (v: unknown): string => v as string;
      const noTtl = {} as unknown as { ttl: number };
      await assert.rejects(t.assetHold('hold.a', 'gold', asString(1), { ttl: 1000 }), TypeError);
      await assert.rejects(t.assetHold('hold.a', 'gold', '1', noTtl), TypeError);
      await assert.rejects(t.assetHold('hold.a', 'gold', '1', { ttl: 1.5 }), TypeError);
      await assert.rejects(t.assetHold('hold.a', 'gold', '1', { ttl: 0 }), RangeError);
      await assert.rejects(t.assetHold('hold.a', 'gold', '1', { ttl: 1000, floor: asString(-1) }), TypeError);
      await assert.rejects(t.assetSettle('hold.a', '1', { amount: asString(1) }), TypeError);
      await assert.rejects(t.usageReserve('hold.a', asString(1), { ttl: 1000 }), TypeError);
      await assert.rejects(t.usageCommit('hold.a', '1', { actual: asString(1) }), TypeError);
      await assert.rejects(t.couponReserve('hold.a', 'u', { ttl: 2_592_000_001 }), RangeError);
      await assert.rejects(t.couponConfirm('hold.a', 'u', asString('1') as unknown as number), TypeError);
      assert.equal(await xlen(admin), before);
    });

    test('coupons: reserve then confirm is a claim; cancel and expiry give the stock back', async () => {
      await t.couponCreate('hold.c', 2);
      assert.deepEqual(await t.couponReserve('hold.c', 'alice', { ttl: 60_000 }), { issue: 1, remaining: 1 });
      const info = await t.couponInfo('hold.c');
      assert.deepEqual([info.issued, info.reserved, info.remaining], [1, 1, 1]);
      assert.equal(await admin.hget('hold.c', 'c:alice'), null, 'a reservation is no claim yet');
      await rejectsWith(t.couponClaim('hold.c', 'alice'), DuplicateError, 'DUPLICATE');
      assert.deepEqual(await t.couponConfirm('hold.c', 'alice', 1, { meta: 'paid' }), { issue: 1, remaining: 1 });
      assert.equal(await admin.hget('hold.c', 'c:alice'), '1', 'the claim row COUPON.CLAIM writes');
      assert.equal((await t.couponInfo('hold.c')).reserved, 0);
      await rejectsNotFound(t.couponConfirm('hold.c', 'alice', 1), '1', 'settled');
      // Cancel: the stock gets it back, the number stays retired.
      const opId = newOpId();
      const r = await t.couponReserve('hold.c', 'bob', { ttl: 60_000, opId });
      assert.deepEqual(r, { issue: 2, remaining: 0 });
      assert.deepEqual(await t.couponReserve('hold.c', 'bob', { ttl: 60_000, opId }), r);
      await rejectsWith(t.couponReserve('hold.c', 'carol', { ttl: 60_000 }), SoldOutError, 'SOLDOUT');
      await rejectsWith(t.couponCancel('hold.c', 'carol', 2), NotFoundError, 'NOTFOUND');
      assert.deepEqual(await t.couponCancel('hold.c', 'bob', 2), { issue: 2, remaining: 1 });
      await rejectsNotFound(t.couponConfirm('hold.c', 'bob', 2), '2', 'voided');
      // Expiry.
      await t.couponReserve('hold.c', 'dave', { ttl: SHORT_TTL_MS });
      await waitFor('the reservation to expire', async () => (await t.couponInfo('hold.c')).reserved === 0, 10_000);
      assert.equal((await t.couponInfo('hold.c')).remaining, 1);
      await rejectsNotFound(t.couponConfirm('hold.c', 'dave', 3), '3', 'expired');
      assert.deepEqual(await t.couponClaim('hold.c', 'dave'), { issue: 4, remaining: 0 });
    });

    test('usage: reserve then commit part; cancel and expiry release the quota', async () => {
      await t.usageLimit('hold.q', '10');
      const r = await t.usageReserve('hold.q', '4', { ttl: 60_000 });
      assert.deepEqual(r, { reservationId: '1', used: '0', reserved: '4', remaining: '6' });
      const g = await t.usageGet('hold.q');
      assert.deepEqual([g.used, g.reserved, g.remaining], ['0', '4', '6']);
      await rejectsWith(t.usageConsume('hold.q', '7'), LimitExceededError, 'LIMIT');
      assert.deepEqual(await t.usageCommit('hold.q', r.reservationId, { actual: '2.5' }), { used: '2.5', remaining: '7.5' });
      const ev = await lastEvent(admin);
      assert.deepEqual([ev.type, ev.hold.amount, ev.hold.settled], ['usage.commit', '4', '2.5']);
      const g2 = await t.usageGet('hold.q');
      assert.deepEqual([g2.used, g2.reserved, g2.remaining], ['2.5', '0', '7.5']);
      await rejectsNotFound(t.usageCommit('hold.q', r.reservationId), r.reservationId, 'settled');
      await rejectsWith(t.usageReserve('hold.q', '7.6', { ttl: 60_000 }), LimitExceededError, 'LIMIT');
      const opId = newOpId();
      const r2 = await t.usageReserve('hold.q', '3', { ttl: 60_000, opId });
      assert.deepEqual(await t.usageReserve('hold.q', '3', { ttl: 60_000, opId }), r2);
      assert.deepEqual(await t.usageCancel('hold.q', r2.reservationId), { released: '3', remaining: '7.5' });
      await rejectsNotFound(t.usageCancel('hold.q', r2.reservationId), r2.reservationId, 'voided');
      const r3 = await t.usageReserve('hold.q', '7.5', { ttl: SHORT_TTL_MS });
      await waitFor('the reservation to expire', async () => (await t.usageGet('hold.q')).reserved === '0', 10_000);
      assert.equal((await t.usageGet('hold.q')).remaining, '7.5');
      await rejectsNotFound(t.usageCommit('hold.q', r3.reservationId), r3.reservationId, 'expired');
      assert.deepEqual(await t.usageCommit('hold.q', (await t.usageReserve('hold.q', '1', { ttl: 60_000 })).reservationId), {
        used: '3.5',
        remaining: '6.5',
      });
    });

    test('WRONGTYPE: an asset command on a campaign, a coupon command on a string', async () => {
      await t.couponCreate('typed', 3);
      await rejectsWith(t.assetIncr('typed', { issued: '-2' }), WrongTypeError, 'WRONGTYPE');
      await rejectsWith(t.assetGet('typed'), WrongTypeError, 'WRONGTYPE');
      await admin.set('a-string', 'v');
      await rejectsWith(t.couponClaim('a-string', 'alice'), WrongTypeError, 'WRONGTYPE');
      await rejectsWith(t.usageConsume('typed', '1'), WrongTypeError, 'WRONGTYPE');
      assert.equal((await t.couponInfo('typed')).issued, 0);
    });

    test('NOPERM: a read-only ACL user cannot mutate', async () => {
      await admin.call('ACL', 'SETUSER', 'reader', 'on', '>s3cret', '~*', '+@all', '-@write');
      const ro = await factory.connect(server, { user: { name: 'reader', password: 's3cret' } });
      try {
        const before = await xlen(admin);
        await rejectsWith(ro.t.assetIncr('perm', { x: '1' }), NoPermError, 'NOPERM');
        await rejectsWith(ro.t.couponCreate('perm-c', 1), NoPermError, 'NOPERM');
        assert.deepEqual(await ro.t.assetGet('perm', ['x']), { x: '0' });
        assert.equal(await xlen(admin), before);
      } finally {
        await ro.close();
      }
    });

    test('BACKLOG: a full change log refuses mutations', async () => {
      await t.assetIncr('backlog', { x: '1' });
      const len = await xlen(admin);
      await admin.call('CONFIG', 'SET', 'tally.max-backlog', String(len));
      try {
        await rejectsWith(t.assetIncr('backlog', { x: '1' }), BacklogError, 'BACKLOG');
        await rejectsWith(t.couponCreate('backlog-c', 1), BacklogError, 'BACKLOG');
        assert.deepEqual(await t.assetGet('backlog', ['x']), { x: '1' });
      } finally {
        await admin.call('CONFIG', 'SET', 'tally.max-backlog', '1000000');
      }
      assert.deepEqual(await t.assetIncr('backlog', { x: '1' }), { x: '2' });
    });

    test('OPIDS: no new op-id beyond tally.max-op-ids; replays still run', async () => {
      const kept = newOpId();
      const first = await t.assetIncr('opids', { x: '1' }, { opId: kept });
      const counted = await infoField(admin, 'tally_op_ids_counted');
      assert.ok(Number(counted) >= 1);
      await admin.call('CONFIG', 'SET', 'tally.max-op-ids', counted);
      try {
        await rejectsWith(t.assetIncr('opids', { x: '1' }, { opId: newOpId() }), OpIdsError, 'OPIDS');
        assert.deepEqual(await t.assetIncr('opids', { x: '1' }, { opId: kept }), first);
        assert.deepEqual(await t.assetIncr('opids', { x: '1' }), { x: '2' });
      } finally {
        await admin.call('CONFIG', 'SET', 'tally.max-op-ids', '10000000');
      }
    });

    test('ERR: a plain TallyError (e.g. too many fractional digits, a bad op-id)', async () => {
      const e = await rejectsWith(t.assetIncr('err', { x: '0.0000000000000000001' }), TallyError, 'ERR');
      assert.equal(e.constructor, TallyError);
      await rejectsWith(t.assetIncr('err', { x: '1' }, { opId: '' }), TallyError, 'ERR');
      await t.couponCreate('err-c', 1);
      await rejectsWith(t.couponClaim('err-c', 'a,b'), TallyError, 'ERR');
    });

    test('a decimal type through a codec (decimal.js)', async () => {
      const dc = await factory.connect(server, { codec: decimalJs });
      try {
        const r = await dc.t.assetIncr('dec', { x: new D40('0.1') });
        assert.ok(r.x instanceof Decimal);
        const r2 = await dc.t.assetIncr('dec', { x: new D40('0.2'), y: new D40('99999999999999999999.999999999999999999') });
        assert.equal(r2.x?.toFixed(), '0.3');
        assert.equal(r2.y?.toFixed(), '99999999999999999999.999999999999999999');
        assert.ok(r2.x?.equals(new D40('0.1').plus('0.2')));
        assert.equal(await admin.hget('dec', 'y'), '99999999999999999999.999999999999999999');
        const sum = (r2.y as Decimal).plus(r2.x as Decimal);
        assert.equal(sum.toFixed(), '100000000000000000000.299999999999999999');
        await dc.t.usageLimit('dec.q', new D40('1.5'));
        const c = await dc.t.usageConsume('dec.q', new D40('0.5'));
        assert.equal(c.remaining.toFixed(), '1');
        const g = await dc.t.usageGet('dec.q');
        assert.ok(g.limit instanceof Decimal && g.limit.equals(new D40('1.5')));
        const tr = await dc.t.assetTransfer('dec', 'dec2', 'x', new D40('0.1'));
        assert.ok(tr.from instanceof Decimal);
        await assert.rejects(dc.t.assetIncr('dec', { x: 0.1 as unknown as Decimal }), TypeError);
        const h = await dc.t.assetHold('dec', 'y', new D40('0.000000000000000001'), { ttl: 60_000, floor: new D40('-1') });
        assert.ok(h.available instanceof Decimal && h.available.equals(new D40('99999999999999999999.999999999999999998')));
        const [held] = await dc.t.assetHolds('dec');
        assert.ok(held?.amount instanceof Decimal);
        const av = await dc.t.assetAvailable('dec', ['y']);
        assert.ok(av.y?.held instanceof Decimal && av.y.held.equals(new D40('0.000000000000000001')));
        const st = await dc.t.assetSettle('dec', h.holdId, { amount: new D40('0.000000000000000001') });
        assert.equal(st.balance.toFixed(), '99999999999999999999.999999999999999998');
        const ur = await dc.t.usageReserve('dec.q', new D40('0.25'), { ttl: 60_000 });
        assert.ok(ur.reserved instanceof Decimal && (await dc.t.usageGet('dec.q')).reserved.equals(new D40('0.25')));
        assert.equal((await dc.t.usageCommit('dec.q', ur.reservationId, { actual: new D40('0.1') })).used.toFixed(), '0.6');
      } finally {
        await dc.close();
      }
    });
  });
}
