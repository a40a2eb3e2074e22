/**
 * Message ids are 64-bit integers sent as decimal strings: a JavaScript
 * number keeps only 53 bits, so ids stay strings here and are compared as
 * BigInt (never `Number(id)`).
 */

const MESSAGE_ID = /^[1-9][0-9]{0,18}$/;
const MAX_MESSAGE_ID = (1n << 63n) - 1n;

/** Whether `value` is a message id as the server writes it. */
export function isMessageId(value: unknown): value is string {
  return typeof value === 'string' && MESSAGE_ID.test(value) && BigInt(value) <= MAX_MESSAGE_ID;
}

/** Orders two message ids (ids sort by creation time): negative, 0 or positive. */
export function compareMessageIds(a: string, b: string): number {
  // Same-length decimal strings without leading zeros compare like numbers;
  // this avoids allocating BigInts on the hot path of every insert.
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The larger of two ids (`undefined` counts as smaller than any id). */
export function maxMessageId(a: string | undefined, b: string | undefined): string | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return compareMessageIds(a, b) >= 0 ? a : b;
}

/** Bits below the millisecond timestamp in a message id (worker and sequence). */
const TIMESTAMP_SHIFT = 22n;

/**
 * The smallest id `ms` milliseconds older than `id` (at least 1): ids carry
 * their creation time above 22 bits, so this moves a cursor back in time.
 */
export function messageIdBefore(id: string, ms: number): string {
  const moved = messageIdToBigInt(id) - (BigInt(Math.max(0, Math.floor(ms))) << TIMESTAMP_SHIFT);
  return (moved > 0n ? moved : 1n).toString();
}

/** A message id as a BigInt, for callers that want arithmetic. */
export function messageIdToBigInt(id: string): bigint {
  if (!isMessageId(id)) throw new TypeError(`not a message id: ${id}`);
  return BigInt(id);
}

/** A fresh `client_msg_id`: unique per user, within the server's 1..128 `[A-Za-z0-9_.:@-]`. */
export function newClientMsgId(): string {
  const random = globalThis.crypto?.randomUUID?.() ?? `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  return `c-${random}`;
}
