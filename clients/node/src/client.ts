import { decodeAmount, encodeAmount, stringCodec, type DecimalCodec } from './amount';
import { toTallyError } from './errors';
import { deltaPairs } from './spec';
import type { Balances, Deltas, IncrOptions, TallyApi } from './types';

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

function decodeAll<D>(codec: DecimalCodec<D>, values: Balances<string>): Balances<D> {
  const out: Balances<D> = {};
  for (const [field, text] of Object.entries(values)) {
    Object.defineProperty(out, field, {
      value: decodeAmount(codec, text),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return out;
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
  const api: TallyApi<D> = {
    assetIncr<F extends string>(key: string, deltas: Deltas<D, F>, options?: IncrOptions<D>): Promise<Balances<D, F>> {
      return mapped(async () => {
        const pairs = deltaPairs(deltas).map(
          ([field, delta]) => [field, enc(delta, `the delta of ${JSON.stringify(field)}`)] as const,
        );
        const { floor, ceil, ...rest } = options ?? {};
        const opts = {
          ...rest,
          ...(floor === undefined ? {} : { floor: enc(floor, 'floor') }),
          ...(ceil === undefined ? {} : { ceil: enc(ceil, 'ceil') }),
        } as IncrOptions<string>;
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
        return { ...r, used: dec(r.used), limit: dec(r.limit), remaining: dec(r.remaining) };
      });
    },
  };
  return Object.freeze(api);
}
