/**
 * The outbox: sends waiting for their `ack`, in the order they were made.
 *
 * - At most `maxInFlight` sends are written and not yet acked (the edge
 *   allows 64 per connection and answers `rate_limited` beyond).
 * - A send that is not acked (connection lost, `unavailable`,
 *   `rate_limited`, no answer within the timeout) is written again with the
 *   same `client_msg_id` and `"resend": true`, so the server acks it with
 *   the original `message_id` and the message exists once.
 * - `invalid`, `forbidden` and `too_large` are final: the send fails.
 *
 * Pure state: the client asks it which frames to write and tells it what
 * happened; no sockets, no timers.
 */
import type { ClientSend, WsErrorCode } from './types.js';

export interface SendResult {
  message_id: string;
  ts: number;
}

export class SendFailed extends Error {
  constructor(
    readonly clientMsgId: string,
    readonly code: WsErrorCode | 'cancelled',
    message: string,
  ) {
    super(`${code}: ${message}`);
    this.name = 'SendFailed';
  }
}

export interface OutboxEntry {
  readonly conversation_id: string;
  readonly client_msg_id: string;
  readonly body: string;
  /** How many times it was written to a socket. */
  attempts: number;
  state: 'queued' | 'in_flight';
  /** Not written again before this time (Unix ms): retry backoff. */
  notBefore: number;
  /** When the current attempt was written. */
  sentAt: number;
  readonly done: Promise<SendResult>;
  resolve(result: SendResult): void;
  reject(error: SendFailed): void;
}

export interface OutboxOptions {
  maxInFlight: number;
  /** Delay before retrying after `unavailable` / `rate_limited`, grows per attempt. */
  retryDelayMs: number;
  maxRetryDelayMs: number;
}

const FINAL_ERRORS: ReadonlySet<string> = new Set(['invalid', 'forbidden', 'too_large']);

export class Outbox {
  private readonly entries = new Map<string, OutboxEntry>();

  constructor(private readonly options: OutboxOptions) {}

  get size(): number {
    return this.entries.size;
  }

  inFlight(): number {
    let count = 0;
    for (const entry of this.entries.values()) if (entry.state === 'in_flight') count++;
    return count;
  }

  get(clientMsgId: string): OutboxEntry | undefined {
    return this.entries.get(clientMsgId);
  }

  /** Queues a send; its `done` settles with the ack or a final error. */
  enqueue(conversationId: string, clientMsgId: string, body: string): OutboxEntry {
    if (this.entries.has(clientMsgId)) throw new Error(`client_msg_id ${clientMsgId} is already in the outbox`);
    let resolve!: (result: SendResult) => void;
    let reject!: (error: SendFailed) => void;
    const done = new Promise<SendResult>((ok, fail) => {
      resolve = ok;
      reject = fail;
    });
    // Nobody may await it (fire and forget): do not report it as unhandled.
    done.catch(() => {});
    const entry: OutboxEntry = {
      conversation_id: conversationId,
      client_msg_id: clientMsgId,
      body,
      attempts: 0,
      state: 'queued',
      notBefore: 0,
      sentAt: 0,
      done,
      resolve,
      reject,
    };
    this.entries.set(clientMsgId, entry);
    return entry;
  }

  /**
   * The frames to write now, oldest first, within the in-flight cap; they
   * are marked in flight. A send written before carries `resend: true`.
   */
  takeSendable(now: number): ClientSend[] {
    let room = this.options.maxInFlight - this.inFlight();
    const frames: ClientSend[] = [];
    for (const entry of this.entries.values()) {
      if (room <= 0) break;
      if (entry.state !== 'queued' || entry.notBefore > now) continue;
      const frame: ClientSend = {
        op: 'send',
        conversation_id: entry.conversation_id,
        client_msg_id: entry.client_msg_id,
        body: entry.body,
      };
      if (entry.attempts > 0) frame.resend = true;
      entry.attempts++;
      entry.state = 'in_flight';
      entry.sentAt = now;
      frames.push(frame);
      room--;
    }
    return frames;
  }

  /** An `ack`: the send is done. */
  ack(clientMsgId: string, result: SendResult): OutboxEntry | undefined {
    const entry = this.entries.get(clientMsgId);
    if (!entry) return undefined;
    this.entries.delete(clientMsgId);
    entry.resolve(result);
    return entry;
  }

  /** An `error` for a send: retried later, or failed for good. */
  error(clientMsgId: string, code: WsErrorCode, message: string, now: number): 'retry' | 'failed' | 'unknown' {
    const entry = this.entries.get(clientMsgId);
    if (!entry) return 'unknown';
    if (FINAL_ERRORS.has(code)) {
      this.entries.delete(clientMsgId);
      entry.reject(new SendFailed(clientMsgId, code, message));
      return 'failed';
    }
    entry.state = 'queued';
    entry.notBefore = now + this.retryDelay(entry.attempts);
    return 'retry';
  }

  /** The connection is gone: everything in flight is written again (marked) on the next one. */
  disconnected(): void {
    for (const entry of this.entries.values()) if (entry.state === 'in_flight') entry.state = 'queued';
  }

  /** Sends in flight for longer than `timeoutMs` are queued again (marked). Returns how many. */
  expire(now: number, timeoutMs: number): number {
    let count = 0;
    for (const entry of this.entries.values()) {
      if (entry.state === 'in_flight' && now - entry.sentAt >= timeoutMs) {
        entry.state = 'queued';
        count++;
      }
    }
    return count;
  }

  /** Gives up on everything still queued (the client was closed). */
  cancelAll(reason: string): void {
    for (const entry of this.entries.values()) entry.reject(new SendFailed(entry.client_msg_id, 'cancelled', reason));
    this.entries.clear();
  }

  /** The earliest `notBefore` of a queued entry in the future, to schedule a retry. */
  nextRetryAt(now: number): number | undefined {
    let earliest: number | undefined;
    for (const entry of this.entries.values()) {
      if (entry.state === 'queued' && entry.notBefore > now) {
        earliest = earliest === undefined ? entry.notBefore : Math.min(earliest, entry.notBefore);
      }
    }
    return earliest;
  }

  private retryDelay(attempts: number): number {
    return Math.min(this.options.maxRetryDelayMs, this.options.retryDelayMs * 2 ** Math.max(0, attempts - 1));
  }
}
