/**
 * @tally/client: typed access to tally's ASSET.*, COUPON.* and USAGE.* commands.
 *
 * The driver adapters live in `@tally/client/node-redis` (`tally` command objects,
 * `fromNodeRedis`) and `@tally/client/ioredis` (`fromIoredis`); this entry holds what both
 * share: the types, the amount codec, the error classes and the retry helpers.
 */
export {
  DECIMAL_PATTERN,
  decodeAmount,
  encodeAmount,
  isDecimalString,
  stringCodec,
  type DecimalCodec,
} from './amount';
export { withCodec, type AdapterOptions } from './client';
export {
  BacklogError,
  ClosedError,
  ConflictError,
  DuplicateError,
  ERROR_CLASSES,
  errorFromReply,
  HoldLimitError,
  InsufficientError,
  isServerErrorReply,
  LimitExceededError,
  NoPermError,
  NotFoundError,
  OpIdsError,
  SoldOutError,
  TallyError,
  toTallyError,
  WrongTypeError,
  type HoldReason,
} from './errors';
export { isRetryableError, newOpId, TRANSIENT_REPLY_CODES, withRetry, type RetryOptions } from './retry';
export type {
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
  TallyApi,
  TransferResult,
  TtlOptions,
  UsageCancelResult,
  UsageInfo,
  UsageLimitOptions,
  UsagePeriod,
  UsageReservation,
  VoidResult,
} from './types';
