import { decodeAmount, encodeAmount, stringCodec, type DecimalCodec } from './amount';
import { toTallyError } from './errors';
import { deltaPairs } from './spec';
import type { Availability, Balances, CommitOptions, Deltas, HoldOptions, IncrOptions, SettleOptions, TallyApi } from './types';

/** Options of the driver adapters (`fromNodeRedis`, `fromIoredis`). */
export interface AdapterOptions<D> {
  /** The amount type's codec (default {@link stringCodec}: canonical decimal strings). */
  codec?: DecimalCodec<D>;
}

async function mapped<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    throw toTallyError(err);
  }
}

/** `values` with each value mapped, as own properties (a field named `__proto__` too), in order. */
function mapValues<V, W>(values: Record<string, V>, map: (value: V) => W): Record<string, W> {
  const out: Record<string, W> = {};
  for (const [field, value] of Object.entries(values)) {
    Object.defineProperty(out, field, {
      value: map(value),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
}

function decodeAll<D>(codec: DecimalCodec<D>, values: Balances<string>): Balances<D> {
  return mapValues(values, (text) => decodeAmount(codec, text));
}

/**
 * The typed client over a string-level implementation of the commands (a driver adapter's):
 * amounts encoded with `codec` (a `number` refused) before anything is sent, replies
 * decoded, and every server error reply thrown as its {@link TallyError} class. Argument
 * errors are thrown as `TypeError`/`RangeError` in the returned promise.
 */
export function withCodec<D = string>(core: TallyApi<string>, codec?: DecimalCodec<D>): TallyApi<D> {
  const c = (codec ?? stringCodec) as DecimalCodec<D>;
  const enc = (value: D, what: string): string => encodeAmount(c, value, what);
  const dec = (text: string): D => decodeAmount(c, text);
  /** `options` with its amount options `names` encoded (an absent one stays absent). */
  const encOptions = (options: object | undefined, names: readonly string[]): object => {
    const out: Record<string, unknown> = { ...options };
    for (const n of names) {
      if (out[n] === undefined) {
        delete out[n];
      } else {
        out[n] = enc(out[n] as D, n);
      }
    }
    return out;
  };
  const api: TallyApi<D> = {
    assetIncr<F extends string>(key: string, deltas: Deltas<D, F>, options?: IncrOptions<D>): Promise<Balances<D, F>> {
      return mapped(async () => {
        const pairs = deltaPairs(deltas).map(
          ([field, delta]) => [field, enc(delta, `the delta of ${JSON.stringify(field)}`)] as const,
        );
        const opts = encOptions(options, ['floor', 'ceil']) as IncrOptions<string>;
        return decodeAll(c, await core.assetIncr(key, pairs, opts)) as Balances<D, F>;
      });
    },
    assetGet(key: string, fields?: readonly string[]): Promise<Balances<D>> {
      return mapped(async () => decodeAll(c, await core.assetGet(key, fields ?? [])));
    },
    assetTransfer(from, to, field, amount, options) {
      return mapped(async () => {
        const r = await core.assetTransfer(from, to, field, enc(amount, 'amount'), options);
        return { from: dec(r.from), to: dec(r.to) };
      });
    },
    couponCreate(campaign, total, options) {
      return mapped(() => core.couponCreate(campaign, total, options));
    },
    couponClaim(campaign, user, options) {
      return mapped(() => core.couponClaim(campaign, user, options));
    },
    couponRelease(campaign, user, options) {
      return mapped(() => core.couponRelease(campaign, user, options));
    },
    couponInfo(campaign) {
      return mapped(() => core.couponInfo(campaign));
    },
    usageLimit(key, limit, options) {
      return mapped(() => core.usageLimit(key, enc(limit, 'limit'), options));
    },
    usageConsume(key, amount, options) {
      return mapped(async () => {
        const r = await core.usageConsume(key, enc(amount, 'amount'), options);
        return { used: dec(r.used), remaining: dec(r.remaining) };
      });
    },
    usageGet(key) {
      return mapped(async () => {
        const r = await core.usageGet(key);
        return { ...r, used: dec(r.used), limit: dec(r.limit), reserved: dec(r.reserved), remaining: dec(r.remaining) };
      });
    },
    assetHold(key, field, amount, options) {
      return mapped(async () => {
        const opts = encOptions(options, ['floor']) as HoldOptions<string>;
        const r = await core.assetHold(key, field, enc(amount, 'amount'), opts);
        return { holdId: r.holdId, available: dec(r.available) };
      });
    },
    assetSettle(key, holdId, options) {
      return mapped(async () => {
        const r = await core.assetSettle(key, holdId, encOptions(options, ['amount']) as SettleOptions<string>);
        return { settled: dec(r.settled), balance: dec(r.balance) };
      });
    },
    assetVoid(key, holdId, options) {
      return mapped(async () => {
        const r = await core.assetVoid(key, holdId, options);
        return { released: dec(r.released), available: dec(r.available) };
      });
    },
    assetHolds(key) {
      return mapped(async () => (await core.assetHolds(key)).map((h) => ({ ...h, amount: dec(h.amount) })));
    },
    assetAvailable(key: string, fields?: readonly string[]): Promise<Record<string, Availability<D>>> {
      return mapped(async () =>
        mapValues(await core.assetAvailable(key, fields ?? []), (a) => ({
          balance: dec(a.balance),
          held: dec(a.held),
          available: dec(a.available),
        })),
      );
    },
    couponReserve(campaign, user, options) {
      return mapped(() => core.couponReserve(campaign, user, options));
    },
    couponConfirm(campaign, user, issue, options) {
      return mapped(() => core.couponConfirm(campaign, user, issue, options));
    },
    couponCancel(campaign, user, issue, options) {
      return mapped(() => core.couponCancel(campaign, user, issue, options));
    },
    usageReserve(key, amount, options) {
      return mapped(async () => {
        const r = await core.usageReserve(key, enc(amount, 'amount'), options);
        return { reservationId: r.reservationId, used: dec(r.used), reserved: dec(r.reserved), remaining: dec(r.remaining) };
      });
    },
    usageCommit(key, reservationId, options) {
      return mapped(async () => {
        const r = await core.usageCommit(key, reservationId, encOptions(options, ['actual']) as CommitOptions<string>);
        return { used: dec(r.used), remaining: dec(r.remaining) };
      });
    },
    usageCancel(key, reservationId, options) {
      return mapped(async () => {
        const r = await core.usageCancel(key, reservationId, options);
        return { released: dec(r.released), remaining: dec(r.remaining) };
      });
    },
  };
  return Object.freeze(api);
}
