/**
 * Amounts travel as decimal strings, in and out: a JavaScript `number` is a binary float
 * (0.1 + 0.2 !== 0.3, and integers beyond 2^53 lose digits), so this client refuses one
 * wherever an amount goes, at the type level (the parameters are `string`, or the type of
 * the codec you pick) and at run time (a `TypeError` before anything is sent).
 */

/**
 * The wire grammar of an amount the client accepts: optional sign, digits, optional `.` and
 * digits. The server decides the limits (at most 20 integer digits, at most 18 fractional
 * digits that are not trailing zeros) and replies `ERR` beyond them; the client checks the
 * syntax only, so nothing that is not a plain decimal (`1e3`, `0x10`, ` 1`, `NaN`,
 * `Infinity`, `.5`) is ever sent.
 */
export const DECIMAL_PATTERN = /^[+-]?[0-9]+(?:\.[0-9]+)?$/;

/** True when `text` is a string in the wire grammar of {@link DECIMAL_PATTERN}. */
export function isDecimalString(text: unknown): text is string {
  return typeof text === 'string' && DECIMAL_PATTERN.test(text);
}

/**
 * How amounts of a decimal type `D` cross the wire. The default is {@link stringCodec}
 * (`D = string`); a decimal library plugs in with two functions, e.g. decimal.js:
 *
 * ```ts
 * import Decimal from 'decimal.js';
 * const D = Decimal.clone({ precision: 40 }); // 20 integer + 18 fractional digits fit
 * const decimalJs: DecimalCodec<Decimal> = {
 *   encode: (d) => d.toFixed(),   // never exponent notation
 *   decode: (s) => new D(s),
 * };
 * ```
 */
export interface DecimalCodec<D> {
  /** The decimal string sent for `value` (checked against {@link DECIMAL_PATTERN}). */
  encode(value: D): string;
  /** The value for a canonical decimal string the server replied (`"5210.43"`). */
  decode(text: string): D;
}

/** The default codec: amounts are the server's canonical decimal strings, unchanged. */
export const stringCodec: DecimalCodec<string> = Object.freeze({
  encode(value: string): string {
    if (typeof value !== 'string') {
      throw new TypeError(`an amount must be a decimal string, got ${describe(value)}`);
    }
    return value;
  },
  decode(text: string): string {
    return text;
  },
});

/**
 * The wire string for an amount: refuses a `number` (or anything but what the codec
 * encodes into the decimal grammar) with a `TypeError` naming `what`.
 */
export function encodeAmount<D>(codec: DecimalCodec<D>, value: D, what: string): string {
  if (typeof value === 'number' || typeof value === 'bigint') {
    throw new TypeError(
      `${what}: amounts are decimal strings, never numbers (got the ${typeof value} ` +
        `${String(value)}); pass '${String(value)}' only if that text is exactly what you mean`,
    );
  }
  if (value === null || value === undefined) {
    throw new TypeError(`${what}: an amount is required, got ${String(value)}`);
  }
  let text: unknown;
  try {
    text = codec.encode(value);
  } catch (err) {
    if (err instanceof TypeError) {
      throw new TypeError(`${what}: ${err.message}`);
    }
    throw err;
  }
  if (!isDecimalString(text)) {
    throw new TypeError(
      `${what}: ${describe(text)} is not a decimal string (sign, digits, optional '.' and digits)`,
    );
  }
  return text;
}

/** The codec's value for a decimal string the server replied. */
export function decodeAmount<D>(codec: DecimalCodec<D>, text: string): D {
  return codec.decode(text);
}

function describe(value: unknown): string {
  if (typeof value === 'string') {
    return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}...` : value);
  }
  if (typeof value === 'object' && value !== null) {
    return `an object (${Object.prototype.toString.call(value)})`;
  }
  return `the ${typeof value} ${String(value)}`;
}
