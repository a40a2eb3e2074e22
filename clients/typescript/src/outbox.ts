/**
 * The outbox: sends, and changes to messages (edit, delete, react,
 * unreact), waiting for their `ack`, in the order they were made. Each is
 * keyed by its `client_msg_id` (a change's request id), which the `ack`
 * echoes and an `error` names as `ref`.
 *
 * - At most `maxInFlight` sends are written and not yet acked (the edge
 *   allows 64 per connection and answers `rate_limited` beyond).
 * - A send that is not acked (connection lost, `unavailable`,
 *   `rate_limited`, no answer within the timeout) is written again with the
 *   same `client_msg_id` and `"resend": true`, so the server acks it with
 *   the original `message_id` and the message exists once. A change is
 *   written again as it was: repeating an edit, delete or reaction is
 *   harmless on the server.
 * - `invalid`, `forbidden` and `too_large` are final: the send fails.
 *
 * Pure state: the client asks it which frames to write and tells it what
 * happened; no sockets, no timers.
 */
import type { ClientDelete, ClientEdit, ClientReact, ClientSend, ClientUnreact, WsErrorCode } from './types.js';

/** A frame the outbox writes until acked: a send, or a change to a message. */
export type OutboxFrame = ClientSend | ClientEdit | ClientDelete | ClientReact | ClientUnreact;
/** What `enqueue` takes: the frame without `client_msg_id` (the key) and `resend` (the outbox's). */
export type OutboxRequest =
  | Omit<ClientSend, 'client_msg_id' | 'resend'>
  | Omit<ClientEdit, 'client_msg_id'>
  | Omit<ClientDelete, 'client_msg_id'>
  | Omit<ClientReact, 'client_msg_id'>
  | Omit<ClientUnreact, 'client_msg_id'>;

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
  /** The frame's fields (its `op` says whether it is a send or a change). */
  readonly request: OutboxRequest;
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

  /** Queues a plain send; its `done` settles with the ack or a final error. */
  enqueue(conversationId: string, clientMsgId: string, body: string): OutboxEntry {
    return this.enqueueRequest(clientMsgId, { op: 'send', conversation_id: conversationId, body });
  }

  /** Queues a send (with any of its options) or a change to a message, keyed by `clientMsgId`. */
  enqueueRequest(clientMsgId: string, request: OutboxRequest): OutboxEntry {
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
      conversation_id: request.conversation_id,
      client_msg_id: clientMsgId,
      request,
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
  takeSendable(now: number): Array<OutboxFrame & { resend?: boolean }> {
    let room = this.options.maxInFlight - this.inFlight();
    const frames: Array<OutboxFrame & { resend?: boolean }> = [];
    for (const entry of this.entries.values()) {
      if (room <= 0) break;
      if (entry.state !== 'queued' || entry.notBefore > now) continue;
      const frame = { ...entry.request, client_msg_id: entry.client_msg_id } as OutboxFrame;
      if (frame.op === 'send' && entry.attempts > 0) frame.resend = true;
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
