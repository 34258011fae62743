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
import { infoField, startServer, xlen, type Server } from './server';

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
      assert.deepEqual(g, { used: '10', limit: '10', remaining: '0', period: 'month', periodId: month });
      await t.usageLimit('api:acme', '12');
      assert.deepEqual(await t.usageGet('api:acme'), { used: '10', limit: '12', remaining: '2', period: 'none', periodId: 'all' });
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
      } finally {
        await dc.close();
      }
    });
  });
}
