/**
 * The commands as driver-independent specs: `build` turns typed arguments (string
 * amounts) into the command's keys and arguments, `parse` turns the raw reply into the typed
 * result. The node-redis command objects and the ioredis adapter both run on these.
 */
import { encodeAmount, stringCodec } from './amount';
import type {
  Availability,
  Balances,
  ClaimResult,
  CommitOptions,
  ConsumeResult,
  CouponCreateOptions,
  CouponInfo,
  Deltas,
  Hold,
  HoldOptions,
  HoldResult,
  IncrOptions,
  OpOptions,
  ReleaseResult,
  SettleOptions,
  SettleResult,
  TransferResult,
  TtlOptions,
  UsageCancelResult,
  UsageInfo,
  UsageLimitOptions,
  UsagePeriod,
  UsageReservation,
  VoidResult,
} from './types';

/** A command ready to send: `name keys... args...`. */
export interface Built {
  keys: string[];
  args: string[];
  /** What `parse` needs besides the reply (ASSET.INCR's field names). */
  preserve?: unknown;
}

export interface Spec<P extends unknown[], R> {
  readonly name: string;
  readonly readOnly: boolean;
  build(...params: P): Built;
  parse(reply: unknown, preserve: unknown): R;
}

/** Option words ASSET.INCR parses its field list up to (case-insensitive). */
const OPTION_WORDS = new Set(['ID', 'META', 'FLOOR', 'NOFLOOR', 'CEIL']);

function amount(value: string, what: string): string {
  return encodeAmount(stringCodec, value, what);
}

function name(value: unknown, what: string): string {
  if (typeof value !== 'string') {
    throw new TypeError(`${what} must be a string, got ${typeof value}`);
  }
  return value;
}

function integer(value: unknown, what: string, min: number, max: number): string {
  if (typeof value !== 'number' || !Number.isSafeInteger(value)) {
    throw new TypeError(`${what} must be an integer, got ${typeof value} ${String(value)}`);
  }
  if (value < min || value > max) {
    throw new RangeError(`${what} must be from ${min} to ${max}, got ${value}`);
  }
  return String(value);
}

function instant(value: number | Date, what: string): string {
  const ms = value instanceof Date ? value.getTime() : value;
  return integer(ms, what, 0, Number.MAX_SAFE_INTEGER);
}

function pushOp(args: string[], options: OpOptions | undefined): void {
  if (options?.opId !== undefined) {
    args.push('ID', name(options.opId, 'opId'));
  }
  if (options?.meta !== undefined) {
    args.push('META', name(options.meta, 'meta'));
  }
}

/** `FLOOR n` or `NOFLOOR` (ASSET.INCR, ASSET.HOLD). */
function pushFloor(args: string[], options: { floor?: string | undefined; noFloor?: boolean | undefined } | undefined): void {
  if (options?.noFloor === true) {
    if (options.floor !== undefined) {
      throw new TypeError('floor and noFloor exclude each other');
    }
    args.push('NOFLOOR');
  } else if (options?.floor !== undefined) {
    args.push('FLOOR', amount(options.floor, 'floor'));
  }
}

/** `TTL ms` of a hold (required), 1 ms to 30 days. */
function pushTtl(args: string[], options: { ttl: number } | undefined): void {
  if (options === undefined || options.ttl === undefined) {
    throw new TypeError('a hold needs options.ttl (milliseconds)');
  }
  args.push('TTL', integer(options.ttl, 'ttl', 1, 2_592_000_000));
}

function entries<A>(deltas: Deltas<A>): Array<readonly [string, A]> {
  if (Array.isArray(deltas)) {
    return deltas as Array<readonly [string, A]>;
  }
  if (deltas instanceof Map) {
    return [...(deltas as ReadonlyMap<string, A>).entries()];
  }
  if (typeof deltas !== 'object' || deltas === null) {
    throw new TypeError(`deltas must be an object, a Map or [field, delta] pairs, got ${typeof deltas}`);
  }
  return Object.entries(deltas as Readonly<Record<string, A>>);
}

/** `[field, delta]` pairs checked: at least one, field names that are not option words. */
export function deltaPairs<A>(deltas: Deltas<A>): Array<readonly [string, A]> {
  const pairs = entries(deltas);
  if (pairs.length === 0) {
    throw new TypeError('ASSET.INCR needs at least one field');
  }
  for (const pair of pairs) {
    if (!Array.isArray(pair) || pair.length !== 2) {
      throw new TypeError('deltas pairs must be [field, delta]');
    }
    const field = name(pair[0], 'a field name');
    if (OPTION_WORDS.has(field.toUpperCase())) {
      throw new TypeError(
        `a field cannot be named ${JSON.stringify(field)}: ASSET.INCR would read it as its option`,
      );
    }
  }
  return pairs;
}

// ---- replies ------------------------------------------------------------------------------

function unexpected(command: string, reply: unknown): Error {
  let shown: string;
  try {
    shown = JSON.stringify(reply) ?? String(reply);
  } catch {
    shown = String(reply);
  }
  return new Error(`tally: unexpected reply to ${command}: ${shown.slice(0, 200)}`);
}

function text(command: string, value: unknown): string {
  if (typeof value === 'string') {
    return value;
  }
  if (Buffer.isBuffer(value)) {
    return value.toString('utf8');
  }
  throw unexpected(command, value);
}

function int(command: string, value: unknown): number {
  let n: number;
  if (typeof value === 'number') {
    n = value;
  } else if (typeof value === 'bigint') {
    n = Number(value);
  } else if (typeof value === 'string' || Buffer.isBuffer(value)) {
    const s = value.toString();
    n = /^-?[0-9]+$/.test(s) ? Number(s) : NaN;
  } else {
    n = NaN;
  }
  if (!Number.isSafeInteger(n)) {
    throw unexpected(command, value);
  }
  return n;
}

function list(command: string, reply: unknown, length?: number): unknown[] {
  if (!Array.isArray(reply) || (length !== undefined && reply.length !== length)) {
    throw unexpected(command, reply);
  }
  return reply;
}

/** A `[name, value, ...]` reply (or a RESP3 map) as [name, value] pairs. */
function pairs(command: string, reply: unknown): Array<[string, unknown]> {
  if (reply instanceof Map) {
    return [...reply.entries()].map(([k, v]) => [text(command, k), v]);
  }
  if (Array.isArray(reply)) {
    if (reply.length % 2 !== 0) {
      throw unexpected(command, reply);
    }
    const out: Array<[string, unknown]> = [];
    for (let i = 0; i < reply.length; i += 2) {
      out.push([text(command, reply[i]), reply[i + 1]]);
    }
    return out;
  }
  if (typeof reply === 'object' && reply !== null && !Buffer.isBuffer(reply)) {
    return Object.entries(reply);
  }
  throw unexpected(command, reply);
}

function record(command: string, reply: unknown, names: readonly string[]): Map<string, unknown> {
  const map = new Map(pairs(command, reply));
  for (const n of names) {
    if (!map.has(n)) {
      throw unexpected(command, reply);
    }
  }
  return map;
}

function ok(command: string, reply: unknown): void {
  if (text(command, reply) !== 'OK') {
    throw unexpected(command, reply);
  }
}

/** An object with an own property per field (`__proto__` included), in reply order. */
function ownProperties<V>(fields: readonly string[], values: readonly V[]): Record<string, V> {
  const out: Record<string, V> = {};
  fields.forEach((f, i) => {
    Object.defineProperty(out, f, { value: values[i], enumerable: true, writable: true, configurable: true });
  });
  return out;
}

/** A balances object: an own property per field, in reply order. */
function balances(fields: readonly string[], values: readonly string[]): Balances<string> {
  return ownProperties(fields, values);
}

// ---- the commands ---------------------------------------------------------------------------

export const assetIncr: Spec<[key: string, deltas: Deltas<string>, options?: IncrOptions<string>], Balances<string>> = {
  name: 'ASSET.INCR',
  readOnly: false,
  build(key, deltas, options) {
    const fields: string[] = [];
    const args: string[] = [];
    for (const [field, delta] of deltaPairs(deltas)) {
      fields.push(field);
      args.push(field, amount(delta, `the delta of ${JSON.stringify(field)}`));
    }
    pushOp(args, options);
    pushFloor(args, options);
    if (options?.ceil !== undefined) {
      args.push('CEIL', amount(options.ceil, 'ceil'));
    }
    return { keys: [name(key, 'key')], args, preserve: fields };
  },
  parse(reply, preserve) {
    const fields = preserve as string[];
    const values = list('ASSET.INCR', reply, fields.length).map((v) => text('ASSET.INCR', v));
    return balances(fields, values);
  },
};

export const assetGet: Spec<[key: string, fields?: readonly string[]], Balances<string>> = {
  name: 'ASSET.GET',
  readOnly: true,
  build(key, fields) {
    const args = (fields ?? []).map((f) => name(f, 'a field name'));
    return { keys: [name(key, 'key')], args, preserve: fields === undefined ? null : args };
  },
  parse(reply, preserve) {
    if (preserve === null || (preserve as string[]).length === 0) {
      const all = pairs('ASSET.GET', reply);
      return balances(
        all.map(([f]) => f),
        all.map(([, v]) => text('ASSET.GET', v)),
      );
    }
    const fields = preserve as string[];
    const values = list('ASSET.GET', reply, fields.length).map((v) => text('ASSET.GET', v));
    return balances(fields, values);
  },
};

export const assetTransfer: Spec<
  [from: string, to: string, field: string, amount: string, options?: OpOptions],
  TransferResult<string>
> = {
  name: 'ASSET.TRANSFER',
  readOnly: false,
  build(from, to, field, value, options) {
    const args = [name(field, 'field'), amount(value, 'amount')];
    pushOp(args, options);
    return { keys: [name(from, 'from'), name(to, 'to')], args };
  },
  parse(reply) {
    const [from, to] = list('ASSET.TRANSFER', reply, 2).map((v) => text('ASSET.TRANSFER', v));
    return { from: from as string, to: to as string };
  },
};

export const couponCreate: Spec<[campaign: string, total: number, options?: CouponCreateOptions], void> = {
  name: 'COUPON.CREATE',
  readOnly: false,
  build(campaign, total, options) {
    const args = [integer(total, 'total', 1, 1_000_000_000)];
    if (options?.perUser !== undefined) {
      args.push('PERUSER', integer(options.perUser, 'perUser', 1, 1000));
    }
    if (options?.start !== undefined) {
      args.push('START', instant(options.start, 'start'));
    }
    if (options?.end !== undefined) {
      args.push('END', instant(options.end, 'end'));
    }
    pushOp(args, options);
    return { keys: [name(campaign, 'campaign')], args };
  },
  parse(reply) {
    ok('COUPON.CREATE', reply);
  },
};

function claimLike(command: string, reply: unknown): ClaimResult {
  const [issue, remaining] = list(command, reply, 2).map((v) => int(command, v));
  return { issue: issue as number, remaining: remaining as number };
}

export const couponClaim: Spec<[campaign: string, user: string, options?: OpOptions], ClaimResult> = {
  name: 'COUPON.CLAIM',
  readOnly: false,
  build(campaign, user, options) {
    const args = [name(user, 'user')];
    pushOp(args, options);
    return { keys: [name(campaign, 'campaign')], args };
  },
  parse(reply) {
    return claimLike('COUPON.CLAIM', reply);
  },
};

export const couponRelease: Spec<[campaign: string, user: string, options?: OpOptions], ReleaseResult> = {
  name: 'COUPON.RELEASE',
  readOnly: false,
  build(campaign, user, options) {
    const args = [name(user, 'user')];
    pushOp(args, options);
    return { keys: [name(campaign, 'campaign')], args };
  },
  parse(reply) {
    return claimLike('COUPON.RELEASE', reply);
  },
};

const INFO_FIELDS = ['total', 'issued', 'remaining', 'peruser', 'start', 'end', 'last_issue'];

/** `reserved` of COUPON.INFO / USAGE.GET: absent from a module without holds, where none can be open. */
function reservedOf(m: Map<string, unknown>): unknown {
  return m.has('reserved') ? m.get('reserved') : '0';
}

export const couponInfo: Spec<[campaign: string], CouponInfo> = {
  name: 'COUPON.INFO',
  readOnly: true,
  build(campaign) {
    return { keys: [name(campaign, 'campaign')], args: [] };
  },
  parse(reply) {
    const m = record('COUPON.INFO', reply, INFO_FIELDS);
    const get = (f: string): number => int('COUPON.INFO', m.get(f));
    return {
      total: get('total'),
      issued: get('issued'),
      reserved: int('COUPON.INFO', reservedOf(m)),
      remaining: get('remaining'),
      perUser: get('peruser'),
      start: get('start'),
      end: get('end'),
      lastIssue: get('last_issue'),
    };
  },
};

const PERIODS: ReadonlySet<string> = new Set(['none', 'day', 'month']);

export const usageLimit: Spec<[key: string, limit: string, options?: UsageLimitOptions], void> = {
  name: 'USAGE.LIMIT',
  readOnly: false,
  build(key, limit, options) {
    const args = [amount(limit, 'limit')];
    if (options?.period !== undefined) {
      if (!PERIODS.has(options.period)) {
        throw new TypeError(`period must be 'none', 'day' or 'month', got ${String(options.period)}`);
      }
      args.push('PERIOD', options.period);
    }
    pushOp(args, options);
    return { keys: [name(key, 'key')], args };
  },
  parse(reply) {
    ok('USAGE.LIMIT', reply);
  },
};

export const usageConsume: Spec<[key: string, amount: string, options?: OpOptions], ConsumeResult<string>> = {
  name: 'USAGE.CONSUME',
  readOnly: false,
  build(key, value, options) {
    const args = [amount(value, 'amount')];
    pushOp(args, options);
    return { keys: [name(key, 'key')], args };
  },
  parse(reply) {
    const [used, remaining] = list('USAGE.CONSUME', reply, 2).map((v) => text('USAGE.CONSUME', v));
    return { used: used as string, remaining: remaining as string };
  },
};

export const usageGet: Spec<[key: string], UsageInfo<string>> = {
  name: 'USAGE.GET',
  readOnly: true,
  build(key) {
    return { keys: [name(key, 'key')], args: [] };
  },
  parse(reply) {
    const m = record('USAGE.GET', reply, ['used', 'limit', 'remaining', 'period', 'period_id']);
    const get = (f: string): string => text('USAGE.GET', m.get(f));
    const period = get('period');
    if (!PERIODS.has(period)) {
      throw unexpected('USAGE.GET', reply);
    }
    return {
      used: get('used'),
      limit: get('limit'),
      reserved: text('USAGE.GET', reservedOf(m)),
      remaining: get('remaining'),
      period: period as UsagePeriod,
      periodId: get('period_id'),
    };
  },
};

// ---- holds (docs/holds.md) -----------------------------------------------------------------

/** A two-element reply of decimal strings. */
function decimalPair(command: string, reply: unknown): [string, string] {
  const [a, b] = list(command, reply, 2).map((v) => text(command, v));
  return [a as string, b as string];
}

/**
 * A command on an open hold, `key hold-id [amount] [ID op-id] [META text]` (ASSET.SETTLE/VOID,
 * USAGE.COMMIT/CANCEL): `amountOf` picks the optional amount from the options; the reply is
 * two decimals, named `names`.
 */
function closeHold<O extends OpOptions, K1 extends string, K2 extends string>(
  command: string,
  idWhat: string,
  amountOf: (options: O | undefined) => string | undefined,
  names: readonly [K1, K2],
): Spec<[key: string, holdId: string, options?: O], Record<K1 | K2, string>> {
  return {
    name: command,
    readOnly: false,
    build(key, holdId, options) {
      const args = [name(holdId, idWhat)];
      const value = amountOf(options);
      if (value !== undefined) {
        args.push(amount(value, 'amount'));
      }
      pushOp(args, options);
      return { keys: [name(key, 'key')], args };
    },
    parse(reply) {
      const [a, b] = decimalPair(command, reply);
      return { [names[0]]: a, [names[1]]: b } as Record<K1 | K2, string>;
    },
  };
}

export const assetHold: Spec<[key: string, field: string, amount: string, options: HoldOptions<string>], HoldResult<string>> = {
  name: 'ASSET.HOLD',
  readOnly: false,
  build(key, field, value, options) {
    const args = [name(field, 'field'), amount(value, 'amount')];
    pushTtl(args, options);
    pushFloor(args, options);
    pushOp(args, options);
    return { keys: [name(key, 'key')], args };
  },
  parse(reply) {
    const [holdId, available] = decimalPair('ASSET.HOLD', reply);
    return { holdId, available };
  },
};

export const assetSettle: Spec<[key: string, holdId: string, options?: SettleOptions<string>], SettleResult<string>> =
  closeHold('ASSET.SETTLE', 'holdId', (o: SettleOptions<string> | undefined) => o?.amount, ['settled', 'balance']);

export const assetVoid: Spec<[key: string, holdId: string, options?: OpOptions], VoidResult<string>> =
  closeHold('ASSET.VOID', 'holdId', () => undefined, ['released', 'available']);

export const assetHolds: Spec<[key: string], Array<Hold<string>>> = {
  name: 'ASSET.HOLDS',
  readOnly: true,
  build(key) {
    return { keys: [name(key, 'key')], args: [] };
  },
  parse(reply) {
    const items = list('ASSET.HOLDS', reply);
    if (items.length % 4 !== 0) {
      throw unexpected('ASSET.HOLDS', reply);
    }
    const out: Array<Hold<string>> = [];
    for (let i = 0; i < items.length; i += 4) {
      out.push({
        holdId: text('ASSET.HOLDS', items[i]),
        field: text('ASSET.HOLDS', items[i + 1]),
        amount: text('ASSET.HOLDS', items[i + 2]),
        expires: int('ASSET.HOLDS', items[i + 3]),
      });
    }
    return out;
  },
};

export const assetAvailable: Spec<[key: string, fields?: readonly string[]], Record<string, Availability<string>>> = {
  name: 'ASSET.AVAILABLE',
  readOnly: true,
  build(key, fields) {
    return { keys: [name(key, 'key')], args: (fields ?? []).map((f) => name(f, 'a field name')) };
  },
  parse(reply) {
    const items = list('ASSET.AVAILABLE', reply).map((v) => text('ASSET.AVAILABLE', v));
    if (items.length % 4 !== 0) {
      throw unexpected('ASSET.AVAILABLE', reply);
    }
    const fields: string[] = [];
    const rows: Array<Availability<string>> = [];
    for (let i = 0; i < items.length; i += 4) {
      fields.push(items[i] as string);
      rows.push({ balance: items[i + 1] as string, held: items[i + 2] as string, available: items[i + 3] as string });
    }
    return ownProperties(fields, rows);
  },
};

export const couponReserve: Spec<[campaign: string, user: string, options: TtlOptions], ClaimResult> = {
  name: 'COUPON.RESERVE',
  readOnly: false,
  build(campaign, user, options) {
    const args = [name(user, 'user')];
    pushTtl(args, options);
    pushOp(args, options);
    return { keys: [name(campaign, 'campaign')], args };
  },
  parse(reply) {
    return claimLike('COUPON.RESERVE', reply);
  },
};

function reservation(campaign: string, user: string, issue: number, options: OpOptions | undefined): Built {
  const args = [name(user, 'user'), integer(issue, 'issue', 1, Number.MAX_SAFE_INTEGER)];
  pushOp(args, options);
  return { keys: [name(campaign, 'campaign')], args };
}

export const couponConfirm: Spec<[campaign: string, user: string, issue: number, options?: OpOptions], ClaimResult> = {
  name: 'COUPON.CONFIRM',
  readOnly: false,
  build: reservation,
  parse(reply) {
    return claimLike('COUPON.CONFIRM', reply);
  },
};

export const couponCancel: Spec<[campaign: string, user: string, issue: number, options?: OpOptions], ReleaseResult> = {
  name: 'COUPON.CANCEL',
  readOnly: false,
  build: reservation,
  parse(reply) {
    return claimLike('COUPON.CANCEL', reply);
  },
};

export const usageReserve: Spec<[key: string, amount: string, options: TtlOptions], UsageReservation<string>> = {
  name: 'USAGE.RESERVE',
  readOnly: false,
  build(key, value, options) {
    const args = [amount(value, 'amount')];
    pushTtl(args, options);
    pushOp(args, options);
    return { keys: [name(key, 'key')], args };
  },
  parse(reply) {
    const [reservationId, used, reserved, remaining] = list('USAGE.RESERVE', reply, 4).map((v) => text('USAGE.RESERVE', v));
    return { reservationId: reservationId as string, used: used as string, reserved: reserved as string, remaining: remaining as string };
  },
};

export const usageCommit: Spec<[key: string, reservationId: string, options?: CommitOptions<string>], ConsumeResult<string>> =
  closeHold('USAGE.COMMIT', 'reservationId', (o: CommitOptions<string> | undefined) => o?.actual, ['used', 'remaining']);

export const usageCancel: Spec<[key: string, reservationId: string, options?: OpOptions], UsageCancelResult<string>> =
  closeHold('USAGE.CANCEL', 'reservationId', () => undefined, ['released', 'remaining']);

/** Every command's spec, by method name. */
export const SPECS = {
  assetIncr,
  assetGet,
  assetTransfer,
  couponCreate,
  couponClaim,
  couponRelease,
  couponInfo,
  usageLimit,
  usageConsume,
  usageGet,
  assetHold,
  assetSettle,
  assetVoid,
  assetHolds,
  assetAvailable,
  couponReserve,
  couponConfirm,
  couponCancel,
  usageReserve,
  usageCommit,
  usageCancel,
} as const;

export type MethodName = keyof typeof SPECS;
