import { randomUUID } from 'node:crypto';
import { isServerErrorReply, TallyError } from './errors';

/**
 * A fresh op-id (a random UUID, 36 bytes; the server takes 1-128 bytes). Give one to each
 * logical operation and send it again with every retry of that operation: the server applies
 * it once and replays the original reply to the retries (for `tally.op-ttl-ms`, 24 h by
 * default).
 */
export function newOpId(): string {
  return randomUUID();
}

/**
 * Server replies after which the command did not run and a retry can succeed: a cluster
 * mid-failover or resharding, a server loading its data, a replica that was a primary.
 */
export const TRANSIENT_REPLY_CODES: ReadonlySet<string> = new Set([
  'TRYAGAIN',
  'CLUSTERDOWN',
  'LOADING',
  'MASTERDOWN',
  'READONLY',
]);

const CONNECTION_ERROR_CLASSES = new Set([
  // node-redis
  'SocketClosedUnexpectedlyError',
  'ConnectionTimeoutError',
  'SocketTimeoutError',
  'ClientOfflineError',
  'TimeoutError',
  'ReconnectStrategyError',
  // ioredis
  'MaxRetriesPerRequestError',
  'ClusterAllFailedError',
]);

const CONNECTION_ERROR_MESSAGES = new Set(['Connection is closed.', 'Command timed out']);

const SYSTEM_ERROR_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTCONN',
  'EAI_AGAIN',
]);

/**
 * True when the command may or may not have reached the server and a retry with the same
 * op-id is the way to find out: a connection lost, refused or timed out (node-redis and
 * ioredis errors), or a {@link TRANSIENT_REPLY_CODES} reply. False for every tally error
 * reply (`INSUFFICIENT`, `CONFLICT`, ...: the server decided) and for argument errors.
 */
export function isRetryableError(err: unknown): boolean {
  if (err instanceof TallyError) {
    return TRANSIENT_REPLY_CODES.has(err.code);
  }
  if (!(err instanceof Error)) {
    return false;
  }
  if (isServerErrorReply(err)) {
    const code = err.message.split(' ', 1)[0] ?? '';
    return TRANSIENT_REPLY_CODES.has(code);
  }
  for (let p: unknown = Object.getPrototypeOf(err); p && p !== Error.prototype; p = Object.getPrototypeOf(p)) {
    const name = (p as { constructor?: { name?: unknown } }).constructor?.name;
    if (typeof name === 'string' && CONNECTION_ERROR_CLASSES.has(name)) {
      return true;
    }
  }
  if (CONNECTION_ERROR_MESSAGES.has(err.message)) {
    return true;
  }
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && SYSTEM_ERROR_CODES.has(code)) {
    return true;
  }
  return err.cause !== undefined && err.cause !== err && isRetryableError(err.cause);
}

export interface RetryOptions {
  /** How many times `fn` runs at most, the first call included (default 5). */
  attempts?: number;
  /** The wait before the 2nd attempt; doubled before each next one (default 50 ms). */
  backoffMs?: number;
  /** The longest wait between two attempts (default 2000 ms). */
  maxBackoffMs?: number;
  /** The op-id every attempt gets (default: {@link newOpId}). */
  opId?: string;
  /** Which errors are retried (default {@link isRetryableError}). */
  retryOn?: (err: unknown) => boolean;
  /** Stops waiting and retrying: the promise rejects with the signal's reason. */
  signal?: AbortSignal;
}

/**
 * Runs `fn(opId)` and, when it fails with a connection error, runs it again with the SAME
 * op-id, up to `attempts` times with exponential backoff. The server applies the operation
 * at most once: a retry of an attempt that did reach it gets the original reply.
 *
 * ```ts
 * const r = await withRetry((opId) => t.couponClaim('spring-sale', 'user:1001', { opId }));
 * ```
 *
 * Errors `retryOn` refuses (every tally error code) are thrown at once; after the last
 * attempt the last error is thrown.
 */
export async function withRetry<T>(fn: (opId: string) => Promise<T>, options: RetryOptions = {}): Promise<T> {
  const attempts = options.attempts ?? 5;
  if (!Number.isSafeInteger(attempts) || attempts < 1) {
    throw new RangeError(`attempts must be a positive integer, got ${String(attempts)}`);
  }
  const opId = options.opId ?? newOpId();
  const retryOn = options.retryOn ?? isRetryableError;
  const maxBackoff = options.maxBackoffMs ?? 2000;
  let wait = options.backoffMs ?? 50;
  for (let attempt = 1; ; attempt++) {
    options.signal?.throwIfAborted();
    try {
      return await fn(opId);
    } catch (err) {
      if (attempt >= attempts || !retryOn(err)) {
        throw err;
      }
    }
    await sleep(Math.min(wait, maxBackoff), options.signal);
    wait *= 2;
  }
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
