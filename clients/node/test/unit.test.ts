/**
 * What needs no server: the amount grammar, the arguments each command sends, the error
 * mapping, the retry policy, and (checked by `tsc --noEmit`, via @ts-expect-error) that a
 * `number` amount does not type-check.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  BacklogError,
  ClosedError,
  ConflictError,
  DuplicateError,
  errorFromReply,
  HoldLimitError,
  InsufficientError,
  isDecimalString,
  isRetryableError,
  LimitExceededError,
  newOpId,
  NoPermError,
  NotFoundError,
  OpIdsError,
  SoldOutError,
  TallyError,
  toTallyError,
  withCodec,
  withRetry,
  WrongTypeError,
  type TallyApi,
} from '@tally/client';
import { ioredisCommands } from '@tally/client/ioredis';
import { fromNodeRedis, tally } from '@tally/client/node-redis';

/** An ioredis stand-in that records what `call` is given and replies `reply`. */
function recorder(reply: unknown, keyPrefix?: string) {
  const calls: Array<[string, unknown[]]> = [];
  const client = {
    options: { keyPrefix },
    async call(command: string, args: Array<string | Buffer | number>): Promise<unknown> {
      calls.push([command, args]);
      return reply;
    },
  };
  return { calls, client };
}

describe('amounts', () => {
  test('the decimal grammar', () => {
    for (const ok of ['0', '-0', '+5', '0005', '5210.43', '-0.000000000000000001', '99999999999999999999']) {
      assert.ok(isDecimalString(ok), ok);
    }
    for (const bad of ['', '.5', '5.', '1e3', '1E3', '0x10', ' 1', '1 ', 'NaN', 'Infinity', '-', '1,5', '١', 5, null]) {
      assert.ok(!isDecimalString(bad), String(bad));
    }
  });

  test('a number, a bigint or a non-decimal string never reaches the driver', async () => {
    const { calls, client } = recorder(['1']);
    const t = withCodec(ioredisCommands(client));
    const sneak = (v: unknown): string => v as string;
    for (const bad of [0.1, 1, 10n, NaN, Infinity, '1e3', '', null, undefined, { toString: () => '1' }]) {
      await assert.rejects(t.assetIncr('k', { x: sneak(bad) }), TypeError, String(bad));
      await assert.rejects(t.usageConsume('k', sneak(bad)), TypeError, String(bad));
    }
    assert.equal(calls.length, 0);
  });

  test('type level: number amounts do not compile', () => {
    const t = null as unknown as TallyApi;
    const never = false as boolean;
    if (never) {
      // @ts-expect-error a number is not an amount
      void t.assetIncr('k', { x: 0.1 });
      // @ts-expect-error a number is not an amount (pairs)
      void t.assetIncr('k', [['x', 5]]);
      // @ts-expect-error floor is an amount
      void t.assetIncr('k', { x: '1' }, { floor: -100 });
      // @ts-expect-error floor and noFloor exclude each other
      void t.assetIncr('k', { x: '1' }, { floor: '-1', noFloor: true });
      // @ts-expect-error a number is not an amount
      void t.assetTransfer('a', 'b', 'x', 1);
      // @ts-expect-error a number is not an amount
      void t.usageLimit('k', 10);
      // @ts-expect-error a number is not an amount
      void t.usageConsume('k', 1);
      // @ts-expect-error no such period
      void t.usageLimit('k', '10', { period: 'week' });
      // @ts-expect-error a hold needs a ttl
      void t.assetHold('k', 'x', '1', {});
      // @ts-expect-error a number is not an amount
      void t.assetHold('k', 'x', 1, { ttl: 1000 });
      // @ts-expect-error floor and noFloor exclude each other
      void t.assetHold('k', 'x', '1', { ttl: 1000, floor: '-1', noFloor: true });
      // @ts-expect-error a number is not an amount
      void t.assetSettle('k', '1', { amount: 1 });
      // @ts-expect-error a number is not an amount
      void t.usageReserve('k', 1, { ttl: 1000 });
      // @ts-expect-error a number is not an amount
      void t.usageCommit('k', '1', { actual: 1 });
      // @ts-expect-error a coupon reservation needs a ttl
      void t.couponReserve('c', 'u');
    }
    assert.ok(true);
  });
});

describe('the arguments sent', () => {
  test('every command, every option, keys first (ioredis call)', async () => {
    const cases: Array<[(t: TallyApi) => Promise<unknown>, unknown, string, unknown[]]> = [
      [
        (t) => t.assetIncr('user.asset.42', { BDP: '10.43', TRAINING: '1' }, { opId: 'op-1', meta: 'bonus', floor: '-100', ceil: '1000' }),
        ['5210.43', '4'],
        'ASSET.INCR',
        ['user.asset.42', 'BDP', '10.43', 'TRAINING', '1', 'ID', 'op-1', 'META', 'bonus', 'FLOOR', '-100', 'CEIL', '1000'],
      ],
      [(t) => t.assetIncr('k', new Map([['b', '1'], ['a', '2']]), { noFloor: true }), ['1', '2'], 'ASSET.INCR', ['k', 'b', '1', 'a', '2', 'NOFLOOR']],
      [(t) => t.assetGet('k'), [], 'ASSET.GET', ['k']],
      [(t) => t.assetGet('k', ['a', 'b']), ['0', '0'], 'ASSET.GET', ['k', 'a', 'b']],
      [(t) => t.assetTransfer('{u}a', '{u}b', 'gold', '1.5', { opId: 'o' }), ['1', '2'], 'ASSET.TRANSFER', ['{u}a', '{u}b', 'gold', '1.5', 'ID', 'o']],
      [
        (t) => t.couponCreate('c', 100, { perUser: 2, start: new Date(1000), end: 2000, opId: 'o', meta: 'm' }),
        'OK',
        'COUPON.CREATE',
        ['c', '100', 'PERUSER', '2', 'START', '1000', 'END', '2000', 'ID', 'o', 'META', 'm'],
      ],
      [(t) => t.couponClaim('c', 'user:1', { opId: 'o' }), [1, 99], 'COUPON.CLAIM', ['c', 'user:1', 'ID', 'o']],
      [(t) => t.couponRelease('c', 'user:1', { meta: 'm' }), [1, 100], 'COUPON.RELEASE', ['c', 'user:1', 'META', 'm']],
      [
        (t) => t.couponInfo('c'),
        ['total', 2, 'issued', 1, 'remaining', 1, 'peruser', 1, 'start', 0, 'end', 0, 'last_issue', 1],
        'COUPON.INFO',
        ['c'],
      ],
      [(t) => t.usageLimit('q', '10', { period: 'month', opId: 'o' }), 'OK', 'USAGE.LIMIT', ['q', '10', 'PERIOD', 'month', 'ID', 'o']],
      [(t) => t.usageConsume('q', '0.5'), ['0.5', '9.5'], 'USAGE.CONSUME', ['q', '0.5']],
      [
        (t) => t.usageGet('q'),
        ['used', '0', 'limit', '1', 'remaining', '1', 'period', 'none', 'period_id', 'all'],
        'USAGE.GET',
        ['q'],
      ],
      [
        (t) => t.assetHold('w', 'gold', '30', { ttl: 60_000, floor: '-5', opId: 'o', meta: 'm' }),
        ['1', '70'],
        'ASSET.HOLD',
        ['w', 'gold', '30', 'TTL', '60000', 'FLOOR', '-5', 'ID', 'o', 'META', 'm'],
      ],
      [(t) => t.assetHold('w', 'gold', '30', { ttl: 1, noFloor: true }), ['1', '70'], 'ASSET.HOLD', ['w', 'gold', '30', 'TTL', '1', 'NOFLOOR']],
      [(t) => t.assetSettle('w', '7', { amount: '2.5', opId: 'o' }), ['2.5', '97.5'], 'ASSET.SETTLE', ['w', '7', '2.5', 'ID', 'o']],
      [(t) => t.assetSettle('w', '7'), ['3', '97'], 'ASSET.SETTLE', ['w', '7']],
      [(t) => t.assetVoid('w', '7', { meta: 'm' }), ['3', '100'], 'ASSET.VOID', ['w', '7', 'META', 'm']],
      [(t) => t.assetHolds('w'), ['7', 'gold', '3', 1796589431190], 'ASSET.HOLDS', ['w']],
      [(t) => t.assetAvailable('w', ['gold']), ['gold', '100', '3', '97'], 'ASSET.AVAILABLE', ['w', 'gold']],
      [(t) => t.assetAvailable('w'), [], 'ASSET.AVAILABLE', ['w']],
      [(t) => t.couponReserve('c', 'user:1', { ttl: 900_000, opId: 'o' }), [3, 97], 'COUPON.RESERVE', ['c', 'user:1', 'TTL', '900000', 'ID', 'o']],
      [(t) => t.couponConfirm('c', 'user:1', 3, { meta: 'm' }), [3, 97], 'COUPON.CONFIRM', ['c', 'user:1', '3', 'META', 'm']],
      [(t) => t.couponCancel('c', 'user:1', 3), [3, 98], 'COUPON.CANCEL', ['c', 'user:1', '3']],
      [(t) => t.usageReserve('q', '4', { ttl: 5000, opId: 'o' }), ['1', '0', '4', '6'], 'USAGE.RESERVE', ['q', '4', 'TTL', '5000', 'ID', 'o']],
      [(t) => t.usageCommit('q', '1', { actual: '0', meta: 'm' }), ['0', '10'], 'USAGE.COMMIT', ['q', '1', '0', 'META', 'm']],
      [(t) => t.usageCommit('q', '1'), ['4', '6'], 'USAGE.COMMIT', ['q', '1']],
      [(t) => t.usageCancel('q', '1', { opId: 'o' }), ['4', '10'], 'USAGE.CANCEL', ['q', '1', 'ID', 'o']],
    ];
    for (const [run, reply, command, args] of cases) {
      const { calls, client } = recorder(reply);
      await run(withCodec(ioredisCommands(client)));
      assert.deepEqual(calls, [[command, args]]);
    }
  });

  test('hold replies are typed; reserved defaults to 0 before holds existed', async () => {
    const parsed = async (reply: unknown, run: (t: TallyApi) => Promise<unknown>): Promise<unknown> =>
      run(withCodec(ioredisCommands(recorder(reply).client)));
    assert.deepEqual(await parsed(['7', 'gold', '3', 1796589431190, '8', 'x:y', '0.5', '1796589431191'], (t) => t.assetHolds('w')), [
      { holdId: '7', field: 'gold', amount: '3', expires: 1796589431190 },
      { holdId: '8', field: 'x:y', amount: '0.5', expires: 1796589431191 },
    ]);
    const av = (await parsed(['__proto__', '1', '0', '1'], (t) => t.assetAvailable('w'))) as object;
    assert.deepEqual(Object.keys(av), ['__proto__']);
    assert.equal(Object.getPrototypeOf(av), Object.prototype);
    assert.deepEqual(await parsed(['1', '0', '4', '6'], (t) => t.usageReserve('q', '4', { ttl: 1 })), {
      reservationId: '1',
      used: '0',
      reserved: '4',
      remaining: '6',
    });
    const info = (await parsed(['total', 2, 'issued', 1, 'remaining', 1, 'peruser', 1, 'start', 0, 'end', 0, 'last_issue', 1], (t) =>
      t.couponInfo('c'),
    )) as { reserved: number };
    assert.equal(info.reserved, 0);
    const usage = (await parsed(['used', '0', 'limit', '1', 'remaining', '1', 'period', 'none', 'period_id', 'all'], (t) => t.usageGet('q'))) as {
      reserved: string;
    };
    assert.equal(usage.reserved, '0');
    await assert.rejects(parsed(['1', 'gold', '3'], (t) => t.assetHolds('w')), /unexpected reply to ASSET.HOLDS/);
  });

  test("ioredis's keyPrefix is applied to the keys (not to fields or users)", async () => {
    const { calls, client } = recorder(['1', '2'], 'app:');
    await withCodec(ioredisCommands(client)).assetTransfer('{u}a', '{u}b', 'gold', '1');
    assert.deepEqual(calls, [['ASSET.TRANSFER', ['app:{u}a', 'app:{u}b', 'gold', '1']]]);
  });

  test('node-redis command objects: keys pushed as keys, replies transformed', () => {
    const pushed: string[] = [];
    const keys: string[] = [];
    const parser = {
      preserve: undefined as unknown,
      push: (...a: string[]) => pushed.push(...a),
      pushKey: (k: string) => {
        keys.push(k);
        pushed.push(k);
      },
    };
    tally.assetIncr.parseCommand(parser as never, 'user.asset.42', { BDP: '10.43', TRAINING: '1' }, { opId: 'o' });
    assert.deepEqual(pushed, ['ASSET.INCR', 'user.asset.42', 'BDP', '10.43', 'TRAINING', '1', 'ID', 'o']);
    assert.deepEqual(keys, ['user.asset.42']);
    assert.deepEqual(tally.assetIncr.transformReply(['5210.43', Buffer.from('4')], parser.preserve), { BDP: '5210.43', TRAINING: '4' });
    assert.equal(tally.assetGet.IS_READ_ONLY, true);
    assert.equal(tally.couponInfo.IS_READ_ONLY, true);
    assert.equal(tally.usageGet.IS_READ_ONLY, true);
    assert.equal(tally.assetHolds.IS_READ_ONLY, true);
    assert.equal(tally.assetAvailable.IS_READ_ONLY, true);
    assert.equal(tally.assetHold.IS_READ_ONLY, false);
    assert.equal(tally.couponClaim.IS_READ_ONLY, false);
    assert.throws(() => fromNodeRedis({} as never), TypeError);
  });

  test('a field named like an option is refused (the server would read it as the option)', async () => {
    const { calls, client } = recorder(['1']);
    const t = withCodec(ioredisCommands(client));
    for (const word of ['ID', 'meta', 'Floor', 'NOFLOOR', 'ceil']) {
      await assert.rejects(t.assetIncr('k', { [word]: '1' }), TypeError);
    }
    await assert.rejects(t.couponCreate('c', 0), RangeError);
    await assert.rejects(t.couponCreate('c', 1.5), TypeError);
    await assert.rejects(t.couponCreate('c', 10, { perUser: 1001 }), RangeError);
    assert.equal(calls.length, 0);
  });

  test('a field named __proto__ is an own property of the result', async () => {
    const { client } = recorder(['1']);
    const r = await withCodec(ioredisCommands(client)).assetIncr('k', [['__proto__', '1']]);
    assert.deepEqual(Object.keys(r), ['__proto__']);
    assert.equal(Object.getPrototypeOf(r), Object.prototype);
  });
});

describe('errors', () => {
  test('the class follows the first word of the reply', () => {
    const cases: Array<[string, new (...a: never[]) => TallyError]> = [
      ['INSUFFICIENT balance 10 cannot cover 1000 (floor 0)', InsufficientError],
      ['SOLDOUT no coupons remain', SoldOutError],
      ['DUPLICATE the user already holds 1 claim(s), the limit per user', DuplicateError],
      ['NOTFOUND no such campaign', NotFoundError],
      ['CLOSED the campaign is not open', ClosedError],
      ['LIMIT balance would exceed the ceiling 50', LimitExceededError],
      ['CONFLICT this op-id was already used with different arguments', ConflictError],
      ['BACKLOG the log holds 5 entries', BacklogError],
      ['OPIDS too many op-ids', OpIdsError],
      ['WRONGTYPE Operation against a key holding the wrong kind of value', WrongTypeError],
      ['NOPERM User reader has no permissions', NoPermError],
    ];
    for (const [text, Class] of cases) {
      const e = errorFromReply(text);
      assert.ok(e instanceof Class && e instanceof TallyError && e instanceof Error, text);
      assert.equal(e.code, text.split(' ')[0]);
      assert.equal(e.message, text);
      assert.equal(e.name, Class.name);
    }
    const limit = errorFromReply('HOLDLIMIT this key has 2 open holds (tally.max-holds-per-key is 2)');
    assert.ok(limit instanceof HoldLimitError && limit.code === 'HOLDLIMIT');
    for (const [why, reason] of [
      ['is unknown', 'unknown'],
      ['was settled', 'settled'],
      ['was voided', 'voided'],
      ['expired', 'expired'],
    ]) {
      const nf = errorFromReply(`NOTFOUND hold 17 of this key ${why}`);
      assert.ok(nf instanceof NotFoundError);
      assert.deepEqual([nf.holdId, nf.reason], ['17', reason]);
    }
    const nf = errorFromReply('NOTFOUND no such campaign');
    assert.ok(nf instanceof NotFoundError);
    assert.deepEqual([nf.holdId, nf.reason], [undefined, undefined]);
    const err = errorFromReply('ERR syntax error');
    assert.equal(err.constructor, TallyError);
    assert.equal(err.code, 'ERR');
    assert.equal(errorFromReply('LIMITED x').constructor, TallyError);
  });

  test('toTallyError maps server replies of both drivers, nothing else', () => {
    class ErrorReply extends Error {}
    class SimpleError extends ErrorReply {}
    class ReplyError extends Error {}
    const nr = toTallyError(new SimpleError('SOLDOUT no coupons remain'));
    assert.ok(nr instanceof SoldOutError);
    assert.ok(nr.cause instanceof SimpleError);
    assert.ok(toTallyError(new ReplyError('NOTFOUND no such campaign')) instanceof NotFoundError);
    const plain = new Error('Connection is closed.');
    assert.equal(toTallyError(plain), plain);
  });
});

describe('retry policy', () => {
  class SocketClosedUnexpectedlyError extends Error {}
  class ErrorReply extends Error {}

  test('isRetryableError: connection errors and transient replies, never a tally error', () => {
    assert.ok(isRetryableError(new SocketClosedUnexpectedlyError('Socket closed unexpectedly')));
    assert.ok(isRetryableError(new Error('Connection is closed.')));
    assert.ok(isRetryableError(new Error('Command timed out')));
    assert.ok(isRetryableError(Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' })));
    assert.ok(isRetryableError(errorFromReply('TRYAGAIN Multiple keys request during rehashing of slot')));
    assert.ok(isRetryableError(new ErrorReply('LOADING Redis is loading the dataset in memory')));
    assert.ok(!isRetryableError(errorFromReply('INSUFFICIENT balance')));
    assert.ok(!isRetryableError(errorFromReply('CONFLICT op-id')));
    assert.ok(!isRetryableError(new ErrorReply('ERR syntax error')));
    assert.ok(!isRetryableError(new TypeError('an amount must be a decimal string')));
    assert.ok(!isRetryableError('a string'));
  });

  test('withRetry: the same op-id every attempt, backoff, then the last error', async () => {
    const seen: string[] = [];
    const started = Date.now();
    const failure = new SocketClosedUnexpectedlyError('Socket closed unexpectedly');
    await assert.rejects(
      withRetry(
        async (opId) => {
          seen.push(opId);
          throw failure;
        },
        { attempts: 4, backoffMs: 10 },
      ),
      (e) => e === failure,
    );
    assert.equal(seen.length, 4);
    assert.equal(new Set(seen).size, 1);
    assert.match(seen[0] ?? '', /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.ok(Date.now() - started >= 10 + 20 + 40 - 5, 'exponential backoff waited');
  });

  test('withRetry: succeeds on a later attempt; given op-id; custom retryOn; abort', async () => {
    let n = 0;
    const r = await withRetry(
      async (opId) => {
        if (++n < 3) {
          throw new Error('Connection is closed.');
        }
        return opId;
      },
      { opId: 'fixed', backoffMs: 1 },
    );
    assert.equal(r, 'fixed');
    assert.equal(n, 3);
    let m = 0;
    await assert.rejects(
      withRetry(
        async () => {
          m++;
          throw errorFromReply('BACKLOG full');
        },
        { attempts: 3, backoffMs: 1, retryOn: (e) => e instanceof BacklogError },
      ),
      BacklogError,
    );
    assert.equal(m, 3);
    // Aborted while the first attempt runs: no wait, no second attempt.
    const ac = new AbortController();
    const abortedAt = Date.now();
    const p = withRetry(
      async () => {
        throw new Error('Connection is closed.');
      },
      { backoffMs: 60_000, signal: ac.signal },
    );
    ac.abort(new Error('stop'));
    await assert.rejects(p, /stop/);
    assert.ok(Date.now() - abortedAt < 1000, 'the abort ended the wait');
    // Aborted during the wait.
    const ac2 = new AbortController();
    let calls = 0;
    const p2 = withRetry(
      async () => {
        calls++;
        throw new Error('Connection is closed.');
      },
      { backoffMs: 60_000, signal: ac2.signal },
    );
    setTimeout(() => ac2.abort(new Error('stop2')), 20);
    await assert.rejects(p2, /stop2/);
    assert.equal(calls, 1);
    assert.notEqual(newOpId(), newOpId());
  });
});
