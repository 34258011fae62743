/**
 * tally for node-redis v5 (`redis` / `@redis/client` 5.x): command objects, added the way
 * `@redis/json` adds its commands.
 *
 * ```ts
 * import { createClient } from 'redis';
 * import { tally, fromNodeRedis } from '@tally/client/node-redis';
 * const client = await createClient({ url, modules: { tally } }).connect();
 * const t = fromNodeRedis(client);              // typed errors, optional decimal codec
 * await t.couponClaim('spring-sale', 'user:1001', { opId });
 * await client.tally.couponClaim('spring-sale', 'user:1002');  // the raw commands work too
 * ```
 *
 * The same module works with `createCluster({ rootNodes, modules: { tally } })`: every
 * command declares its keys, so the cluster client routes it to the key's node.
 */
import type { CommandParser } from '@redis/client';
import type { AdapterOptions } from './client';
import { withCodec } from './client';
import {
  assetAvailable,
  assetGet,
  assetHold,
  assetHolds,
  assetIncr,
  assetSettle,
  assetTransfer,
  assetVoid,
  couponCancel,
  couponClaim,
  couponConfirm,
  couponCreate,
  couponInfo,
  couponRelease,
  couponReserve,
  usageCancel,
  usageCommit,
  usageConsume,
  usageGet,
  usageLimit,
  usageReserve,
  type Spec,
} from './spec';
import type { TallyApi } from './types';

/**
 * A node-redis command object for a spec. `parseCommand` pushes the keys with `pushKey`
 * (cluster routing, `COMMAND GETKEYS` agreement) and keeps what `transformReply` needs in
 * `parser.preserve`.
 */
function command<P extends unknown[], R>(spec: Spec<P, R>) {
  return {
    IS_READ_ONLY: spec.readOnly,
    parseCommand(this: void, parser: CommandParser, ...params: P): void {
      const built = spec.build(...params);
      parser.push(spec.name);
      for (const key of built.keys) {
        parser.pushKey(key);
      }
      parser.push(...built.args);
      parser.preserve = built.preserve;
    },
    transformReply(this: void, reply: unknown, preserve?: unknown): R {
      return spec.parse(reply, preserve);
    },
  } as const;
}

/**
 * The tally module for `createClient({ modules: { tally } })` / `createCluster(...)`:
 * `client.tally.assetIncr(...)` and the others, amounts as decimal strings. Their
 * error replies are node-redis `ErrorReply`s; {@link fromNodeRedis} (or `toTallyError`) turns
 * them into the tally error classes.
 */
export const tally = {
  assetIncr: command(assetIncr),
  assetGet: command(assetGet),
  assetTransfer: command(assetTransfer),
  couponCreate: command(couponCreate),
  couponClaim: command(couponClaim),
  couponRelease: command(couponRelease),
  couponInfo: command(couponInfo),
  usageLimit: command(usageLimit),
  usageConsume: command(usageConsume),
  usageGet: command(usageGet),
  assetHold: command(assetHold),
  assetSettle: command(assetSettle),
  assetVoid: command(assetVoid),
  assetHolds: command(assetHolds),
  assetAvailable: command(assetAvailable),
  couponReserve: command(couponReserve),
  couponConfirm: command(couponConfirm),
  couponCancel: command(couponCancel),
  usageReserve: command(usageReserve),
  usageCommit: command(usageCommit),
  usageCancel: command(usageCancel),
} as const;

type Methods = { [K in keyof TallyApi<string>]: (...args: never[]) => Promise<unknown> };

/** A node-redis client or cluster created with `modules: { tally }`. */
export interface NodeRedisWithTally {
  readonly tally: Methods;
}

/**
 * The typed tally client over a node-redis client or cluster created with
 * `modules: { tally }`: the tally error classes, and amounts through `options.codec`.
 */
export function fromNodeRedis<D = string>(client: NodeRedisWithTally, options: AdapterOptions<D> = {}): TallyApi<D> {
  const ns = (client as { tally?: unknown }).tally;
  if (typeof ns !== 'object' || ns === null || typeof (ns as Methods).assetIncr !== 'function') {
    throw new TypeError('fromNodeRedis needs a client created with createClient({ modules: { tally } }) (or createCluster)');
  }
  return withCodec(ns as unknown as TallyApi<string>, options.codec);
}
