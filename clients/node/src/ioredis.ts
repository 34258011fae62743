/**
 * tally over ioredis (standalone `Redis` or `Cluster`), through `call`.
 *
 * ```ts
 * import Redis from 'ioredis';
 * import { fromIoredis } from '@tally/client/ioredis';
 * const t = fromIoredis(new Redis(url));
 * await t.assetIncr('user.asset.42', { BDP: '10.43', TRAINING: '1' }, { opId });
 * ```
 */
import type { AdapterOptions } from './client';
import { withCodec } from './client';
import { SPECS, type Spec } from './spec';
import type { TallyApi } from './types';

/** What the adapter needs of an ioredis `Redis` or `Cluster`. */
export interface IoredisLike {
  call(command: string, args: Array<string | Buffer | number>): Promise<unknown>;
  readonly options?: { keyPrefix?: unknown };
}

/**
 * The string-level commands over `client.call` (no codec, raw error replies). ioredis's
 * `keyPrefix` option, which it applies only to commands it knows, is applied here to the
 * keys of tally commands too.
 */
export function ioredisCommands(client: IoredisLike): TallyApi<string> {
  const prefix = client.options?.keyPrefix;
  if (prefix !== undefined && prefix !== null && typeof prefix !== 'string') {
    throw new TypeError('fromIoredis supports a string keyPrefix only');
  }
  const run = <P extends unknown[], R>(spec: Spec<P, R>) =>
    async (...params: P): Promise<R> => {
      const built = spec.build(...params);
      const keys = prefix ? built.keys.map((k) => prefix + k) : built.keys;
      const reply = await client.call(spec.name, [...keys, ...built.args]);
      return spec.parse(reply, built.preserve);
    };
  return {
    assetIncr: run(SPECS.assetIncr),
    assetGet: run(SPECS.assetGet),
    assetTransfer: run(SPECS.assetTransfer),
    couponCreate: run(SPECS.couponCreate),
    couponClaim: run(SPECS.couponClaim),
    couponRelease: run(SPECS.couponRelease),
    couponInfo: run(SPECS.couponInfo),
    usageLimit: run(SPECS.usageLimit),
    usageConsume: run(SPECS.usageConsume),
    usageGet: run(SPECS.usageGet),
    assetHold: run(SPECS.assetHold),
    assetSettle: run(SPECS.assetSettle),
    assetVoid: run(SPECS.assetVoid),
    assetHolds: run(SPECS.assetHolds),
    assetAvailable: run(SPECS.assetAvailable),
    couponReserve: run(SPECS.couponReserve),
    couponConfirm: run(SPECS.couponConfirm),
    couponCancel: run(SPECS.couponCancel),
    usageReserve: run(SPECS.usageReserve),
    usageCommit: run(SPECS.usageCommit),
    usageCancel: run(SPECS.usageCancel),
  };
}

/**
 * The typed tally client over an ioredis `Redis` or `Cluster`.
 *
 * Mind ioredis's own resending: by default (`autoResendUnfulfilledCommands: true`) a command
 * in flight when the connection drops is sent again after the reconnect, which applies a
 * mutation twice unless it carries an op-id. Give every mutation an `opId` (or use
 * {@link withRetry}).
 *
 * A `Cluster` does not know the tally commands' keys, so it sends each to some node and
 * follows the `MOVED` redirect (refreshing its slot map); the reply is the same.
 */
export function fromIoredis<D = string>(client: IoredisLike, options: AdapterOptions<D> = {}): TallyApi<D> {
  return withCodec(ioredisCommands(client), options.codec);
}
