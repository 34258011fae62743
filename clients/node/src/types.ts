/**
 * The typed surface of the tally commands. `A` is the amount type: `string` by default
 * (canonical decimal strings), or whatever a {@link DecimalCodec} maps them to.
 */

/** Options every mutating command takes. */
export interface OpOptions {
  /**
   * `ID op-id` (1-128 bytes): the same op-id with the same request replays the original
   * reply and changes nothing; with a different request it is a `ConflictError`. Scoped to
   * the command's first key. Use {@link newOpId} / {@link withRetry}.
   */
  opId?: string;
  /** `META text` (UTF-8, at most 4096 bytes), carried into the change log event. */
  meta?: string;
}

/**
 * Field deltas of `ASSET.INCR`, applied all or nothing (at most 64 fields). An object
 * literal, a `Map` or `[field, delta]` pairs; the reply keeps this order, and so does the
 * op-id's request check (mind that an object lists integer-like keys such as `"10"` first:
 * use pairs when such fields must keep another order).
 */
export type Deltas<A, F extends string = string> =
  | Readonly<Record<F, A>>
  | ReadonlyMap<F, A>
  | ReadonlyArray<readonly [F, A]>;

/** Bounds of `ASSET.INCR`: `floor` (default 0) or `noFloor`, and `ceil`. */
export type IncrOptions<A> = OpOptions &
  (
    | {
        /** `FLOOR n`: the lowest balance allowed (default 0); e.g. `'-100'` for credit. */
        floor?: A;
        noFloor?: false;
        /** `CEIL n`: the highest balance allowed (`LimitExceededError` beyond). */
        ceil?: A;
      }
    | {
        floor?: undefined;
        /** `NOFLOOR`: no lower bound. */
        noFloor: true;
        ceil?: A;
      }
  );

/**
 * Balances by field (`ASSET.INCR`'s new balances, `ASSET.GET`'s values; missing = `"0"`),
 * typed by the field names asked for when they are known (`{ BDP, TRAINING }`).
 */
export type Balances<A, F extends string = string> = Record<F, A>;

/** `ASSET.TRANSFER`'s reply: both balances after the move. */
export interface TransferResult<A> {
  from: A;
  to: A;
}

export interface CouponCreateOptions extends OpOptions {
  /** `PERUSER n`: claims one user may hold (default 1, at most 1000). */
  perUser?: number;
  /** `START`: claimable from this instant (inclusive); unix ms or a Date. */
  start?: number | Date;
  /** `END`: claimable until this instant (exclusive); unix ms or a Date. */
  end?: number | Date;
}

/** `COUPON.CLAIM`'s reply: the issue number (from 1, never reused) and the stock left. */
export interface ClaimResult {
  issue: number;
  remaining: number;
}

/** `COUPON.RELEASE`'s reply: the released (and retired) issue number and the stock left. */
export interface ReleaseResult {
  issue: number;
  remaining: number;
}

/** `COUPON.INFO`'s reply. `start`/`end` are unix ms, 0 = unbounded. */
export interface CouponInfo {
  total: number;
  /** Claims and open reservations: `remaining = total - issued`. */
  issued: number;
  /** Open reservations (`COUPON.RESERVE`). */
  reserved: number;
  remaining: number;
  perUser: number;
  start: number;
  end: number;
  lastIssue: number;
}

export type UsagePeriod = 'none' | 'day' | 'month';

export interface UsageLimitOptions extends OpOptions {
  /** `PERIOD`: usage starts again from 0 at each UTC day / month (default `none`). */
  period?: UsagePeriod;
}

/** `USAGE.CONSUME`'s reply. */
export interface ConsumeResult<A> {
  used: A;
  remaining: A;
}

/** `USAGE.GET`'s reply, as of now (a new period reads as 0 used). */
export interface UsageInfo<A> {
  used: A;
  limit: A;
  /** What open reservations (`USAGE.RESERVE`) hold. */
  reserved: A;
  /** `limit - used - reserved`. */
  remaining: A;
  period: UsagePeriod;
  /** `all` for `none`, `2026-12` for `month`, `2026-12-06` style for `day`. */
  periodId: string;
}

// ---- holds (docs/holds.md) -----------------------------------------------------------------

/** `TTL ms` of a hold: required. */
export interface TtlOptions extends OpOptions {
  /** `TTL ms`: the hold expires (gives everything back) after this many milliseconds, 1 to 2,592,000,000 (30 days). */
  ttl: number;
}

/** Options of `ASSET.HOLD`: the `ttl`, and the floor `available` may not go below. */
export type HoldOptions<A> = TtlOptions &
  (
    | {
        /** `FLOOR n`: the lowest `available` allowed after the hold (default 0). */
        floor?: A;
        noFloor?: false;
      }
    | {
        floor?: undefined;
        /** `NOFLOOR`: no lower bound. */
        noFloor: true;
      }
  );

/** Options of `ASSET.SETTLE`. */
export interface SettleOptions<A> extends OpOptions {
  /** The amount to spend, `0 < amount <= held` (default: all of the hold); the rest is released. */
  amount?: A;
}

/** Options of `USAGE.COMMIT`. */
export interface CommitOptions<A> extends OpOptions {
  /** What was really used, `0 <= actual <= reserved` (default: all of the reservation); the rest is released. */
  actual?: A;
}

/** `ASSET.HOLD`'s reply: the hold's id (decimal text, unique per key) and what is available after it. */
export interface HoldResult<A> {
  holdId: string;
  available: A;
}

/** `ASSET.SETTLE`'s reply: the amount spent from the balance, and the balance after. */
export interface SettleResult<A> {
  settled: A;
  balance: A;
}

/** `ASSET.VOID`'s reply: the amount given back, and what is available after. */
export interface VoidResult<A> {
  released: A;
  available: A;
}

/** One open hold of `ASSET.HOLDS`; `expires` is its deadline in unix ms. */
export interface Hold<A> {
  holdId: string;
  field: string;
  amount: A;
  expires: number;
}

/** One field of `ASSET.AVAILABLE`: `available = balance - held`. */
export interface Availability<A> {
  balance: A;
  held: A;
  available: A;
}

/** `USAGE.RESERVE`'s reply: the reservation's id, `used` (unchanged), what open reservations hold now, and `limit - used - reserved`. */
export interface UsageReservation<A> {
  reservationId: string;
  used: A;
  reserved: A;
  remaining: A;
}

/** `USAGE.CANCEL`'s reply: the amount released and the remaining quota after. */
export interface UsageCancelResult<A> {
  released: A;
  remaining: A;
}

/** One typed method per tally command; see the repository README's "Command reference". */
export interface TallyApi<A = string> {
  /** `ASSET.INCR`: adds signed deltas to fields of one hash, all or nothing. */
  assetIncr<F extends string>(key: string, deltas: Deltas<A, F>, options?: IncrOptions<A>): Promise<Balances<A, F>>;
  /** `ASSET.GET` with no field: every field of the hash, sorted by name. */
  assetGet(key: string): Promise<Balances<A>>;
  /** `ASSET.GET`: the named balances in order (missing = `"0"`; no field = every field). */
  assetGet<F extends string>(key: string, fields: readonly F[]): Promise<Balances<A, F>>;
  /** `ASSET.TRANSFER`: moves a positive amount of `field` (same slot in a cluster). */
  assetTransfer(
    from: string,
    to: string,
    field: string,
    amount: A,
    options?: OpOptions,
  ): Promise<TransferResult<A>>;
  /** `COUPON.CREATE`: a campaign with a fixed stock `total` (1 to 10^9). */
  couponCreate(campaign: string, total: number, options?: CouponCreateOptions): Promise<void>;
  /** `COUPON.CLAIM`: exactly `total` claims succeed under any concurrency. */
  couponClaim(campaign: string, user: string, options?: OpOptions): Promise<ClaimResult>;
  /** `COUPON.RELEASE`: gives the user's most recent claim back to the stock. */
  couponRelease(campaign: string, user: string, options?: OpOptions): Promise<ReleaseResult>;
  /** `COUPON.INFO`. */
  couponInfo(campaign: string): Promise<CouponInfo>;
  /** `USAGE.LIMIT`: sets or changes the quota of a metered counter. */
  usageLimit(key: string, limit: A, options?: UsageLimitOptions): Promise<void>;
  /** `USAGE.CONSUME`: succeeds only if `used + amount <= limit`. */
  usageConsume(key: string, amount: A, options?: OpOptions): Promise<ConsumeResult<A>>;
  /** `USAGE.GET`. */
  usageGet(key: string): Promise<UsageInfo<A>>;
  /** `ASSET.HOLD`: takes a positive amount of `field` out of reach until settled, voided or expired (`InsufficientError` below the floor, `HoldLimitError`). */
  assetHold(key: string, field: string, amount: A, options: HoldOptions<A>): Promise<HoldResult<A>>;
  /** `ASSET.SETTLE`: spends `amount` of the hold (default: all of it) from the balance, releases the rest. */
  assetSettle(key: string, holdId: string, options?: SettleOptions<A>): Promise<SettleResult<A>>;
  /** `ASSET.VOID`: gives the hold back to the available balance. */
  assetVoid(key: string, holdId: string, options?: OpOptions): Promise<VoidResult<A>>;
  /** `ASSET.HOLDS`: the open holds of `key`, in id order. */
  assetHolds(key: string): Promise<Array<Hold<A>>>;
  /** `ASSET.AVAILABLE` with no field: every field with a balance or a hold, sorted by name. */
  assetAvailable(key: string): Promise<Record<string, Availability<A>>>;
  /** `ASSET.AVAILABLE`: balance, held and available of the named fields, in order. */
  assetAvailable<F extends string>(key: string, fields: readonly F[]): Promise<Record<F, Availability<A>>>;
  /** `COUPON.RESERVE`: takes one coupon from the stock for `user` (counts against `perUser`); `issue` is the reservation's id. */
  couponReserve(campaign: string, user: string, options: TtlOptions): Promise<ClaimResult>;
  /** `COUPON.CONFIRM`: the reservation becomes a claim. */
  couponConfirm(campaign: string, user: string, issue: number, options?: OpOptions): Promise<ClaimResult>;
  /** `COUPON.CANCEL`: the stock gets the reservation back (its number stays retired). */
  couponCancel(campaign: string, user: string, issue: number, options?: OpOptions): Promise<ReleaseResult>;
  /** `USAGE.RESERVE`: holds `amount` of the quota without moving `used` (`LimitExceededError`). */
  usageReserve(key: string, amount: A, options: TtlOptions): Promise<UsageReservation<A>>;
  /** `USAGE.COMMIT`: adds `actual` (default: all of the reservation) to `used`, releases the rest. */
  usageCommit(key: string, reservationId: string, options?: CommitOptions<A>): Promise<ConsumeResult<A>>;
  /** `USAGE.CANCEL`: releases the reservation. */
  usageCancel(key: string, reservationId: string, options?: OpOptions): Promise<UsageCancelResult<A>>;
}
