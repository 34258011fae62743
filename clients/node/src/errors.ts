/**
 * An error reply from the server, as a class per tally error code. The server's reply starts
 * with a stable code and then a sentence (`INSUFFICIENT balance 10 cannot cover 1000 (floor
 * 0)`); the code picks the class, and `message` keeps the whole reply.
 *
 * Every rejected tally command changed nothing and appended nothing to the change log.
 */
export class TallyError extends Error {
  /** The first word of the error reply: `INSUFFICIENT`, `ERR`, `CROSSSLOT`, ... */
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }

  override get name(): string {
    return this.constructor.name;
  }
}

/** `INSUFFICIENT`: a balance would end below its floor. */
export class InsufficientError extends TallyError {}
/** `SOLDOUT`: no coupon stock remains. */
export class SoldOutError extends TallyError {}
/** `DUPLICATE`: the user already holds `PERUSER` claims. */
export class DuplicateError extends TallyError {}
/** Why a hold is not open ({@link NotFoundError.reason}). */
export type HoldReason = 'unknown' | 'settled' | 'voided' | 'expired';

const HOLD_NOT_FOUND = /^NOTFOUND hold (\S+) of this key (is unknown|was settled|was voided|expired)$/;

/**
 * `NOTFOUND`: no such campaign / usage counter / claim to release, or a hold (a coupon or
 * usage reservation) that is not open; then `holdId` and `reason` say which and why.
 */
export class NotFoundError extends TallyError {
  /** The id of the hold that is not open (a coupon reservation's: its issue number); `undefined` when the error is not about a hold. */
  readonly holdId: string | undefined;
  /**
   * Why the hold is not open: `settled`, `voided` (voided or cancelled), `expired`, or
   * `unknown` (never opened on this key, or closed longer ago than `tally.hold-tombstone-ms`);
   * `undefined` when the error is not about a hold.
   */
  readonly reason: HoldReason | undefined;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
    const m = HOLD_NOT_FOUND.exec(message);
    this.holdId = m?.[1];
    this.reason = m ? (m[2]?.split(' ').pop() as HoldReason) : undefined;
  }
}
/** `CLOSED`: outside the campaign's window. */
export class ClosedError extends TallyError {}
/** `LIMIT`: the usage quota or the `CEIL` of a balance would be exceeded. */
export class LimitExceededError extends TallyError {}
/** `CONFLICT`: the op-id was already used with different arguments. */
export class ConflictError extends TallyError {}
/** `BACKLOG`: the change log holds `tally.max-backlog` unshipped entries; retry later. */
export class BacklogError extends TallyError {}
/** `OPIDS`: the node keeps `tally.max-op-ids` op-id records; a new op-id waits. */
export class OpIdsError extends TallyError {}
/** `HOLDLIMIT`: the key has `tally.max-holds-per-key` open holds. */
export class HoldLimitError extends TallyError {}
/** `WRONGTYPE`: the key (or a stored value) is not what the command needs. */
export class WrongTypeError extends TallyError {}
/** `NOPERM`: the ACL user may not do what the command amounts to. */
export class NoPermError extends TallyError {}

/** The error classes by code; any other code (`ERR`, ...) is a plain {@link TallyError}. */
export const ERROR_CLASSES: Readonly<Record<string, new (code: string, message: string, options?: { cause?: unknown }) => TallyError>> =
  Object.freeze({
    INSUFFICIENT: InsufficientError,
    SOLDOUT: SoldOutError,
    DUPLICATE: DuplicateError,
    NOTFOUND: NotFoundError,
    CLOSED: ClosedError,
    LIMIT: LimitExceededError,
    CONFLICT: ConflictError,
    BACKLOG: BacklogError,
    OPIDS: OpIdsError,
    HOLDLIMIT: HoldLimitError,
    WRONGTYPE: WrongTypeError,
    NOPERM: NoPermError,
  });

/** The error class's names in the prototype chain of `err` (node-redis sets no `name`). */
function classNames(err: object): string[] {
  const names: string[] = [];
  for (let p: unknown = Object.getPrototypeOf(err); p && p !== Object.prototype; p = Object.getPrototypeOf(p)) {
    const ctor = (p as { constructor?: { name?: unknown } }).constructor;
    if (ctor && typeof ctor.name === 'string') {
      names.push(ctor.name);
    }
  }
  return names;
}

/**
 * True for an error reply the server sent (node-redis `ErrorReply`, ioredis `ReplyError`),
 * as opposed to a connection, timeout or client-side error.
 */
export function isServerErrorReply(err: unknown): boolean {
  if (!(err instanceof Error)) {
    return false;
  }
  const names = classNames(err);
  return names.includes('ErrorReply') || names.includes('ReplyError');
}

/** The {@link TallyError} for an error reply text (`"SOLDOUT no coupons remain"`). */
export function errorFromReply(text: string, cause?: unknown): TallyError {
  const space = text.indexOf(' ');
  const code = space < 0 ? text : text.slice(0, space);
  const Class = Object.prototype.hasOwnProperty.call(ERROR_CLASSES, code) ? ERROR_CLASSES[code] : undefined;
  const options = cause === undefined ? undefined : { cause };
  return Class ? new Class(code, text, options) : new TallyError(code, text, options);
}

/**
 * A server error reply as a {@link TallyError} (kept as `cause`); anything else (connection
 * errors, timeouts, `TypeError`s of bad arguments) is returned unchanged.
 */
export function toTallyError(err: unknown): unknown {
  if (err instanceof TallyError || !isServerErrorReply(err)) {
    return err;
  }
  return errorFromReply((err as Error).message, err);
}
