/**
 * `ChatClient`: one user's connection to chatpipe, doing the whole client
 * side of the no-loss contract (README, "WebSocket protocol"):
 *
 * - connects with `?token=` (browsers cannot set headers on a WebSocket),
 *   asking the token callback again after a `4001`;
 * - app-level `{"op":"ping"}` (browsers see no WebSocket pings) and a
 *   liveness timeout that drops a silent connection;
 * - acknowledges `seq` in batches (`ack_seq`);
 * - resumes with `?resume=<session_id>&last_seq=N`; after `resumed:false`
 *   buffers live frames, pages history `after=` the last message held in
 *   each conversation, merges, de-duplicates by `message_id`, and repeats
 *   once after the persist lag (until history reaches the first buffered
 *   live message);
 * - follows the close-code policy (`close-policy.ts`);
 * - an outbox with an in-flight cap that retries with the same
 *   `client_msg_id` and `"resend": true` (`outbox.ts`), and an optimistic
 *   local echo reconciled by `client_msg_id` (`store.ts`);
 * - throttled typing, debounced read receipts;
 * - changes to messages: `editMessage`, `deleteMessage`, `react`,
 *   `unreact` go through the same outbox (a request id as
 *   `client_msg_id`, retried until acked; the promise rejects with the
 *   server's error code), and replies and mentions ride on `send`;
 *   `message_edited`, `message_deleted` and `reaction` frames (and the
 *   acks of this user's own changes) are applied to the stored copies,
 *   idempotently (`store.ts`).
 *
 * The result is exposed as one ordered, de-duplicated message list per
 * conversation (`messages(id)`), `message` events for each new one and
 * `messageUpdated` events for each change to one.
 */
import { closeAction, CLOSE, type BackoffOptions } from './close-policy.js';
import { Emitter } from './emitter.js';
import { ApiClient, type TokenProvider } from './http.js';
import { compareMessageIds, isMessageId, maxMessageId, messageIdBefore, newClientMsgId } from './ids.js';
import { Outbox, type OutboxRequest, type SendResult } from './outbox.js';
import { ConversationStore, membershipEffect, type MessageSource, type PendingMessage } from './store.js';
import type {
  ClientFrame,
  MembershipFrame,
  Message,
  ServerError,
  ServerFrame,
  ServerHello,
  ServerPresence,
  ServerRead,
  ServerTyping,
  ServerMessageEdited,
  ServerMessageDeleted,
  ServerReaction,
} from './types.js';

/** The options of `send` beyond the body. */
export interface SendOptions {
  /** The client's id for this send (default: a fresh one): the idempotency key of its retries. */
  clientMsgId?: string;
  /** The `message_id` of a message of the same conversation this one replies to. */
  replyTo?: string;
  /** The users it mentions (at most 20; the server drops duplicates and the sender). */
  mentions?: string[];
}

/** A change to a message, from a frame or from the `ack` of this user's own request. */
type MessageChange =
  | { op: 'edit'; conversation_id: string; message_id: string; body: string; at: number }
  | { op: 'delete'; conversation_id: string; message_id: string }
  | { op: 'reaction'; conversation_id: string; message_id: string; user_id: string; reaction: string; action: 'add' | 'remove' };

/** The subset of the WebSocket API the client uses (browser `WebSocket`, or the `ws` package in Node). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}
export type WebSocketFactory = new (url: string) => WebSocketLike;

/**
 * `idle` before `connect()`; `connecting` until the first `hello`; `open`;
 * `resyncing` while catching up from history after `resumed:false`;
 * `reconnecting` between connections; `offline` after `goOffline()` until
 * `goOnline()`; `stopped` for good (`close()`, a `4009` take-over, repeated
 * `4001`).
 */
export type ConnectionState = 'idle' | 'connecting' | 'open' | 'resyncing' | 'reconnecting' | 'offline' | 'stopped';

export interface ChatClientOptions {
  /** The signed-in user (the token's subject): own messages are matched to pending sends. */
  userId: string;
  /** Edge URL(s) (`ws://host:port/ws`); a list is tried in turn on reconnects, a function gets the attempt number. */
  wsUrl: string | string[] | ((attempt: number) => string);
  /** API base URL (`http://host:port`). */
  apiUrl: string;
  /** The token callback: asked on every (re)connect, with `refresh: true` after a refusal. */
  token: TokenProvider;
  /** WebSocket implementation; default `globalThis.WebSocket`. In Node < 22 pass `WebSocket` from the `ws` package. */
  WebSocket?: WebSocketFactory;
  fetch?: typeof fetch;
  /** App-level ping interval; default half the edge's `heartbeat_ms`. */
  pingIntervalMs?: number;
  /** Send `ack_seq` after this many frames … */
  ackEveryFrames?: number;
  /** … or this long after the first unacknowledged frame. */
  ackDelayMs?: number;
  /** Sends written and not yet acked (the edge allows 64). */
  maxInFlight?: number;
  /** A send not acked within this is written again (marked `resend`). */
  sendTimeoutMs?: number;
  /** The wait before the catch-up's second pass (history trails the ack by the persist lag). */
  persistLagMs?: number;
  /** Most extra passes while history has not reached the first buffered live message. */
  maxCatchUpPasses?: number;
  /**
   * How far before the newest message held a catch-up pages history
   * (de-duplicated by id). Ids come from the edges' clocks, so two sends
   * racing on two edges can reach the conversation's order opposite to
   * their ids; the overlap catches one whose id is a little older than
   * the newest held.
   */
  catchUpOverlapMs?: number;
  /** At most one `typing` per conversation per this interval. */
  typingThrottleMs?: number;
  /** A read receipt is sent once no newer one came for this long. */
  readDebounceMs?: number;
  reconnect?: Partial<BackoffOptions>;
}

export interface MessageEvent {
  conversationId: string;
  message: Message;
  source: MessageSource;
}

export interface ChatEvents {
  state: { state: ConnectionState; reason?: string };
  hello: ServerHello;
  /** A message new to this client, in arrival order (the list in `messages()` is the ordered view). */
  message: MessageEvent;
  /** A pending send changed (queued, sending, failed, or settled: `pending` undefined). */
  pending: { conversationId: string; clientMsgId: string; pending: PendingMessage | undefined };
  typing: ServerTyping;
  /** A read receipt of another member, or of this user from another device (then `readMarker` follows). */
  read: ServerRead;
  /** This user's read marker moved forward on another device: `readPosition()` now says so. */
  readMarker: { conversationId: string; messageId: string };
  presence: ServerPresence;
  /** A message's body was edited (by its sender). */
  messageEdited: ServerMessageEdited;
  /** A message was deleted: drop its body, keep a placeholder. */
  messageDeleted: ServerMessageDeleted;
  /** A user added or removed a reaction. */
  reaction: ServerReaction;
  /**
   * A held message changed (edited, deleted, a reaction counted) — by a
   * frame, the ack of this user's own change, or a newer history copy.
   * `message` is the new copy, as `messages()` now returns it.
   */
  messageUpdated: { conversationId: string; message: Message };
  /**
   * A conversation this client had not seen appeared: it was created with
   * this user, this user was added to it (`via: 'membership'`), or a
   * message of it arrived first (`via: 'message'`: a message sent at the
   * moment of the add may overtake `member_added`). Emitted before the
   * frame that revealed it; fetch the conversation to show it.
   */
  conversation: { conversationId: string; via: 'membership' | 'message' };
  /**
   * A membership frame. When it removes this user, the store has already
   * dropped the conversation (no further message of it is delivered).
   */
  membership: MembershipFrame;
  /** An `error` frame not tied to a send, or a catch-up failure. */
  error: ServerError | { op: 'client_error'; message: string };
  /** A catch-up finished. */
  caughtUp: { conversations: number; messages: number };
}

const OPEN = 1;

export class ChatClient extends Emitter<ChatEvents> {
  readonly api: ApiClient;
  readonly store = new ConversationStore();
  readonly userId: string;
  private readonly options: Required<Omit<ChatClientOptions, 'reconnect' | 'pingIntervalMs' | 'fetch' | 'WebSocket'>> & {
    pingIntervalMs?: number;
  };
  private readonly WebSocketImpl: WebSocketFactory;
  private readonly backoff: BackoffOptions;
  private readonly outbox: Outbox;

  private socket: WebSocketLike | undefined;
  private connectionState: ConnectionState = 'idle';
  private sessionId: string | undefined;
  /** Highest `seq` received in the current session. */
  private lastSeq = 0;
  private lastAckedSeq = 0;
  private helloReceived = false;
  private attempt = 0;
  private unauthorizedInARow = 0;
  private refreshToken = false;
  private urlIndex = 0;

  private offline = false;
  private catchingUp = false;
  private catchUpNeeded = false;
  private catchUpAgain = false;
  private liveBuffer: Message[] = [];
  /** Changes to messages that came during a catch-up: applied, in order, after the buffered messages. */
  private changeBuffer: MessageChange[] = [];

  private readonly timers = new Set<ReturnType<typeof setTimeout>>();
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;
  private livenessTimer: ReturnType<typeof setTimeout> | undefined;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private tickTimer: ReturnType<typeof setInterval> | undefined;
  private livenessMs = 30_000;

  private readonly typingSentAt = new Map<string, number>();
  private readonly readWanted = new Map<string, string>();
  private readonly readSent = new Map<string, string>();
  private readonly readTimers = new Map<string, ReturnType<typeof setTimeout>>();
  /** Conversations to catch up after `resumed:false` even if nothing is held yet. */
  private readonly tracked = new Set<string>();

  constructor(options: ChatClientOptions) {
    super();
    this.userId = options.userId;
    this.options = {
      userId: options.userId,
      wsUrl: options.wsUrl,
      apiUrl: options.apiUrl,
      token: options.token,
      pingIntervalMs: options.pingIntervalMs,
      ackEveryFrames: options.ackEveryFrames ?? 32,
      ackDelayMs: options.ackDelayMs ?? 1_000,
      maxInFlight: options.maxInFlight ?? 16,
      sendTimeoutMs: options.sendTimeoutMs ?? 10_000,
      persistLagMs: options.persistLagMs ?? 500,
      maxCatchUpPasses: options.maxCatchUpPasses ?? 10,
      catchUpOverlapMs: options.catchUpOverlapMs ?? 5_000,
      typingThrottleMs: options.typingThrottleMs ?? 3_000,
      readDebounceMs: options.readDebounceMs ?? 500,
    };
    const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketFactory }).WebSocket;
    if (!WebSocketImpl) throw new Error('no WebSocket implementation: pass options.WebSocket (e.g. from the `ws` package)');
    this.WebSocketImpl = WebSocketImpl;
    this.backoff = { minDelayMs: 250, maxDelayMs: 10_000, ...options.reconnect };
    this.outbox = new Outbox({ maxInFlight: this.options.maxInFlight, retryDelayMs: 500, maxRetryDelayMs: 10_000 });
    this.api = new ApiClient({ baseUrl: options.apiUrl, token: options.token, fetch: options.fetch });
  }

  get state(): ConnectionState {
    return this.connectionState;
  }

  /** The current session id (after the first `hello`). */
  get session(): string | undefined {
    return this.sessionId;
  }

  /** Opens the connection; reconnects by itself until `close()`. */
  connect(): void {
    if (this.connectionState !== 'idle' && this.connectionState !== 'stopped') return;
    this.setState('connecting');
    this.tickTimer = setInterval(() => this.tick(), 1_000);
    void this.open();
  }

  /** Closes for good; pending sends are cancelled. */
  close(): void {
    this.setState('stopped', 'closed_by_client');
    this.stopTimers();
    const socket = this.socket;
    this.socket = undefined;
    if (socket) {
      this.detach(socket);
      socket.close(CLOSE.NORMAL, 'client closed');
    }
    this.outbox.cancelAll('client closed');
  }

  /** Drops the connection as a network failure would: the client reconnects and resumes. */
  dropConnection(): void {
    this.socket?.close(4000, 'dropped by client');
  }

  /**
   * The device went offline (the browser's `offline` event): close the
   * connection and stop reconnecting; sends stay queued. The session stays
   * resumable on the edge for its resume window.
   */
  goOffline(): void {
    if (this.connectionState === 'stopped' || this.connectionState === 'idle') return;
    this.offline = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    const socket = this.socket;
    this.socket = undefined;
    if (socket) {
      this.detach(socket);
      socket.close(CLOSE.NORMAL, 'offline');
    }
    this.clearConnectionTimers();
    this.outbox.disconnected();
    this.setState('offline');
  }

  /** Back online: reconnect at once and resume. */
  goOnline(): void {
    if (!this.offline || this.connectionState === 'stopped') return;
    this.offline = false;
    this.attempt = 0;
    this.setState('reconnecting', 'online');
    void this.open();
  }

  // ------------------------------------------------------------ reading --

  /** A conversation's messages, oldest first, each once. */
  messages(conversationId: string): readonly Message[] {
    return this.store.messages(conversationId);
  }

  /** A conversation's sends not yet confirmed (optimistic echo). */
  pending(conversationId: string): PendingMessage[] {
    return this.store.pending(conversationId);
  }

  /**
   * Loads one page of older history into the store (scroll-back); returns
   * how many messages were new, 0 at the beginning of the conversation.
   */
  async loadOlder(conversationId: string, pageSize = 50): Promise<number> {
    this.tracked.add(conversationId);
    const before = this.store.firstMessageId(conversationId);
    const iterator = this.api.history(conversationId, { before, pageSize });
    const first = await iterator.next();
    await iterator.return?.();
    if (first.done) return 0;
    let added = 0;
    // Newest first, so each insert lands at the front without reshuffling
    // what the reader already saw.
    for (const message of [...first.value].reverse()) if (this.accept(message, 'history')) added++;
    return added;
  }

  /** Marks a conversation for catch-up after a reconnect even before it holds a message. */
  track(conversationId: string): void {
    this.tracked.add(conversationId);
  }

  // ------------------------------------------------------------ writing --

  /**
   * Sends a message: shown at once as pending (optimistic echo), written
   * when the connection is up, retried with the same `client_msg_id` until
   * acked. `done` settles with the ack (or a final error). The third
   * argument is the `client_msg_id`, or options: a reply (`replyTo`) and
   * `mentions`.
   */
  send(conversationId: string, body: string, options: string | SendOptions = {}): { clientMsgId: string; done: Promise<SendResult> } {
    if (this.connectionState === 'stopped') throw new Error('client is closed');
    const { clientMsgId = newClientMsgId(), replyTo, mentions } = typeof options === 'string' ? { clientMsgId: options } : options;
    if (replyTo !== undefined && !isMessageId(replyTo)) throw new TypeError(`not a message id: ${replyTo}`);
    this.tracked.add(conversationId);
    const request: OutboxRequest = { op: 'send', conversation_id: conversationId, body };
    if (replyTo !== undefined) request.reply_to = replyTo;
    if (mentions !== undefined && mentions.length > 0) request.mentions = [...new Set(mentions)];
    const entry = this.outbox.enqueueRequest(clientMsgId, request);
    const pending: PendingMessage = {
      client_msg_id: clientMsgId,
      conversation_id: conversationId,
      sender_id: this.userId,
      body,
      created_at: Date.now(),
      status: 'queued',
      ...(request.reply_to === undefined ? {} : { reply_to: request.reply_to }),
      ...(request.mentions === undefined ? {} : { mentions: request.mentions }),
    };
    this.store.putPending(pending);
    this.emit('pending', { conversationId, clientMsgId, pending });
    entry.done.then(
      // Settled by `onAck`.
      () => {},
      (error: Error) => {
        const failed: PendingMessage = { ...pending, status: 'failed', error: error.message };
        this.store.putPending(failed);
        this.emit('pending', { conversationId, clientMsgId, pending: failed });
      },
    );
    this.pump();
    return { clientMsgId, done: entry.done };
  }

  /**
   * Replaces the body of one of this user's messages. Resolves with the
   * ack (`ts`: the edit's time) once the edit is durable; the stored copy
   * is updated then. Rejects with `SendFailed` (its `code` the server's:
   * `forbidden` when not the sender or the message is deleted, `invalid`,
   * `too_large`). Queued while offline and retried until acked (repeating
   * an edit is harmless).
   */
  editMessage(conversationId: string, messageId: string, body: string): Promise<SendResult> {
    return this.change({ op: 'edit', conversation_id: conversationId, message_id: messageId, body });
  }

  /** Deletes a message (this user's own; owners and admins any): it becomes a tombstone. Settles like `editMessage`. */
  deleteMessage(conversationId: string, messageId: string): Promise<SendResult> {
    return this.change({ op: 'delete', conversation_id: conversationId, message_id: messageId });
  }

  /** Adds this user's `reaction` (an emoji or a short name) to a message. Settles like `editMessage`. */
  react(conversationId: string, messageId: string, reaction: string): Promise<SendResult> {
    return this.change({ op: 'react', conversation_id: conversationId, message_id: messageId, reaction });
  }

  /** Takes back this user's `reaction` to a message. Settles like `editMessage`. */
  unreact(conversationId: string, messageId: string, reaction: string): Promise<SendResult> {
    return this.change({ op: 'unreact', conversation_id: conversationId, message_id: messageId, reaction });
  }

  /** Adds `reaction` if this user has not reacted so, else takes it back. */
  toggleReaction(conversationId: string, messageId: string, reaction: string): Promise<SendResult> {
    const mine = this.store.get(conversationId, messageId)?.reactions?.some((item) => item.reaction === reaction && item.me) ?? false;
    return mine ? this.unreact(conversationId, messageId, reaction) : this.react(conversationId, messageId, reaction);
  }

  private change(request: OutboxRequest & { op: 'edit' | 'delete' | 'react' | 'unreact' }): Promise<SendResult> {
    if (this.connectionState === 'stopped') return Promise.reject(new Error('client is closed'));
    if (!isMessageId(request.message_id)) return Promise.reject(new TypeError(`not a message id: ${request.message_id}`));
    // The request id: the ack echoes it, an error names it as `ref`.
    const entry = this.outbox.enqueueRequest(newClientMsgId(), request);
    this.pump();
    return entry.done;
  }

  /** Says the user is typing; at most one frame per conversation per `typingThrottleMs`. */
  typing(conversationId: string): void {
    const now = Date.now();
    const last = this.typingSentAt.get(conversationId);
    if (last !== undefined && now - last < this.options.typingThrottleMs) return;
    if (this.write({ op: 'typing', conversation_id: conversationId })) this.typingSentAt.set(conversationId, now);
  }

  /** Marks a conversation read up to `messageId`; debounced, only ever moves forward. */
  markRead(conversationId: string, messageId: string): void {
    if (!isMessageId(messageId)) throw new TypeError(`not a message id: ${messageId}`);
    const wanted = maxMessageId(this.readWanted.get(conversationId), messageId)!;
    this.readWanted.set(conversationId, wanted);
    const previous = this.readTimers.get(conversationId);
    if (previous) clearTimeout(previous);
    this.readTimers.set(
      conversationId,
      setTimeout(() => {
        this.readTimers.delete(conversationId);
        this.flushRead(conversationId);
      }, this.options.readDebounceMs),
    );
  }

  /** The last read position this client sent (or wants to send) for a conversation. */
  readPosition(conversationId: string): string | undefined {
    return this.readWanted.get(conversationId);
  }

  /** A `read` frame: another member's receipt, or this user's marker from another device. */
  private onRead(frame: ServerRead): void {
    this.emit('read', frame);
    if (frame.user_id !== this.userId) return;
    const known = this.readWanted.get(frame.conversation_id);
    // Markers only move forward: an older one (it may overtake a newer one) changes nothing.
    if (known !== undefined && compareMessageIds(frame.message_id, known) <= 0) return;
    this.readWanted.set(frame.conversation_id, frame.message_id);
    // Already stored by the server: nothing to send for it.
    this.readSent.set(frame.conversation_id, maxMessageId(this.readSent.get(frame.conversation_id), frame.message_id)!);
    this.emit('readMarker', { conversationId: frame.conversation_id, messageId: frame.message_id });
  }

  private flushRead(conversationId: string): void {
    const wanted = this.readWanted.get(conversationId);
    if (wanted === undefined) return;
    const sent = this.readSent.get(conversationId);
    if (sent !== undefined && compareMessageIds(wanted, sent) <= 0) return;
    if (this.write({ op: 'read', conversation_id: conversationId, message_id: wanted })) this.readSent.set(conversationId, wanted);
  }

  // --------------------------------------------------------- connection --

  private nextUrl(): string {
    const source = this.options.wsUrl;
    if (typeof source === 'function') return source(this.attempt);
    if (typeof source === 'string') return source;
    const url = source[this.urlIndex % source.length]!;
    return url;
  }

  /** Stopped for good, or offline until `goOnline()`: no connection is made. */
  private isParked(): boolean {
    return this.connectionState === 'stopped' || this.offline;
  }

  private async open(): Promise<void> {
    if (this.isParked()) return;
    let token: string;
    try {
      token = await this.options.token({ refresh: this.refreshToken });
    } catch (error) {
      this.emit('error', { op: 'client_error', message: `token callback failed: ${String(error)}` });
      this.scheduleReconnect(this.backoffDelayNow());
      return;
    }
    // The token callback may have taken a while: closed or offline meanwhile?
    if (this.isParked()) return;
    this.refreshToken = false;
    const url = new URL(this.nextUrl());
    url.searchParams.set('token', token);
    if (this.sessionId !== undefined) {
      url.searchParams.set('resume', this.sessionId);
      url.searchParams.set('last_seq', String(this.lastSeq));
    }
    this.helloReceived = false;
    let socket: WebSocketLike;
    try {
      socket = new this.WebSocketImpl(url.toString());
    } catch (error) {
      this.emit('error', { op: 'client_error', message: `cannot open ${url.origin}: ${String(error)}` });
      this.onClose(CLOSE.ABNORMAL, '');
      return;
    }
    this.socket = socket;
    socket.onmessage = (event) => {
      if (this.socket !== socket) return;
      this.onText(typeof event.data === 'string' ? event.data : String(event.data));
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.socket = undefined;
      this.onClose(event.code, event.reason ?? '');
    };
    socket.onerror = () => {
      // Followed by `close`, which decides what to do.
    };
    this.armLiveness();
  }

  private detach(socket: WebSocketLike): void {
    socket.onmessage = null;
    socket.onclose = null;
    // Not null: Node's `ws` throws an 'error' event nobody listens to.
    socket.onerror = () => {};
  }

  private onClose(code: number, reason: string): void {
    const hadHello = this.helloReceived;
    this.clearConnectionTimers();
    this.outbox.disconnected();
    if (this.connectionState === 'stopped' || this.offline) return;
    if (!hadHello) this.attempt++;
    this.unauthorizedInARow = code === CLOSE.UNAUTHORIZED ? this.unauthorizedInARow + 1 : 0;
    const action = closeAction(code, reason, hadHello ? 0 : this.attempt, this.unauthorizedInARow, this.backoff);
    if (action.kind === 'stop') {
      this.setState('stopped', action.reason);
      this.stopTimers();
      this.outbox.cancelAll(action.reason);
      return;
    }
    if (action.kind === 'resync') {
      // The edge lost frames for this session: a new one, then history.
      this.sessionId = undefined;
      this.lastSeq = 0;
    } else {
      this.refreshToken = action.refreshToken;
    }
    // A failed connection tries the next edge of the list.
    if (!hadHello || code === CLOSE.GOING_AWAY || code === CLOSE.ABNORMAL) this.urlIndex++;
    this.setState('reconnecting', `close ${code}${reason ? `: ${reason}` : ''}`);
    this.scheduleReconnect(action.delayMs);
  }

  private scheduleReconnect(delayMs: number): void {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      void this.open();
    }, delayMs);
    this.timers.add(timer);
  }

  private backoffDelayNow(): number {
    this.attempt++;
    return Math.min(this.backoff.maxDelayMs, this.backoff.minDelayMs * 2 ** Math.min(this.attempt, 10));
  }

  private onText(text: string): void {
    this.armLiveness();
    let frame: ServerFrame;
    try {
      frame = JSON.parse(text) as ServerFrame;
    } catch {
      this.emit('error', { op: 'client_error', message: 'unreadable frame from the edge' });
      return;
    }
    switch (frame.op) {
      case 'hello':
        this.onHello(frame);
        return;
      case 'ack':
        // An ack without `client_msg_id` answers an edit, delete or
        // reaction sent without a request id: nothing to settle.
        if (frame.client_msg_id !== undefined) this.onAck(frame.client_msg_id, frame.message_id, frame.ts);
        return;
      case 'refreshed':
        return;
      case 'error':
        this.onError(frame);
        return;
      case 'pong':
        return;
      case 'reconnect':
        // The close (1001) follows; nothing to do until then.
        return;
      case 'message':
      case 'typing':
      case 'read':
      case 'presence':
      case 'message_edited':
      case 'message_deleted':
      case 'reaction':
      case 'conversation_created':
      case 'member_added':
      case 'member_removed':
      case 'member_role_changed':
      case 'conversation_updated':
        if (!this.sequenced(frame.seq)) return;
        if (frame.op === 'message') this.onMessage(frame.message);
        else if (frame.op === 'typing') this.emit('typing', frame);
        else if (frame.op === 'read') this.onRead(frame);
        else if (frame.op === 'presence') this.emit('presence', frame);
        else if (frame.op === 'message_edited') {
          this.emit('messageEdited', frame);
          this.onChange({ op: 'edit', conversation_id: frame.conversation_id, message_id: frame.message_id, body: frame.body, at: frame.edited_at });
        } else if (frame.op === 'message_deleted') {
          this.emit('messageDeleted', frame);
          this.onChange({ op: 'delete', conversation_id: frame.conversation_id, message_id: frame.message_id });
        } else if (frame.op === 'reaction') {
          this.emit('reaction', frame);
          this.onChange({ op: 'reaction', ...pick(frame) });
        }
        else this.onMembership(frame);
        return;
      default:
        // A newer edge's frame: ignore (additive protocol changes).
        return;
    }
  }

  private onHello(hello: ServerHello): void {
    const resumed = hello.resumed && hello.session_id === this.sessionId;
    const hadSession = this.sessionId !== undefined || this.store.conversationIds().length > 0 || this.tracked.size > 0;
    this.helloReceived = true;
    this.attempt = 0;
    this.unauthorizedInARow = 0;
    if (!resumed) {
      this.lastSeq = 0;
      this.lastAckedSeq = 0;
    } else {
      this.lastAckedSeq = this.lastSeq;
    }
    this.sessionId = hello.session_id;
    this.startPing(hello.heartbeat_ms);
    this.emit('hello', hello);
    if ((!resumed && hadSession) || this.catchUpNeeded) {
      void this.catchUp();
    } else if (!this.catchingUp) {
      this.setState('open');
    }
    for (const conversationId of this.readWanted.keys()) this.flushRead(conversationId);
    this.pump();
  }

  /**
   * An `ack` carries everything the message is: it settles the echo at
   * once (the `message` frame or history copy that follows is a
   * duplicate). During a catch-up it waits in the live buffer like a live
   * frame, so it cannot move the catch-up's `after=` past messages of
   * others not read yet.
   */
  private onAck(clientMsgId: string, messageId: string, ts: number): void {
    const entry = this.outbox.ack(clientMsgId, { message_id: messageId, ts });
    const request = entry?.request;
    if (request && isMessageId(messageId)) {
      const conversationId = request.conversation_id;
      if (request.op === 'send') {
        const message: Message = {
          message_id: messageId,
          conversation_id: conversationId,
          sender_id: this.userId,
          client_msg_id: clientMsgId,
          body: request.body,
          ts,
        };
        if (request.reply_to !== undefined) message.reply_to = request.reply_to;
        // As the server stores them: never the sender; absent when none.
        const mentions = request.mentions?.filter((user) => user !== this.userId) ?? [];
        if (mentions.length > 0) message.mentions = mentions;
        if (this.catchingUp) this.liveBuffer.push(message);
        else this.accept(message, 'ack');
      } else {
        // The change is durable: show it now; its frame, when it comes, repeats it.
        const target = { conversation_id: conversationId, message_id: request.message_id };
        if (request.op === 'edit') this.onChange({ op: 'edit', ...target, body: request.body, at: ts });
        else if (request.op === 'delete') this.onChange({ op: 'delete', ...target });
        else this.onChange({ op: 'reaction', ...target, user_id: this.userId, reaction: request.reaction, action: request.op === 'react' ? 'add' : 'remove' });
      }
    }
    this.pump();
  }

  /** A change to a message: applied to the held copy (after the catch-up, during one). */
  private onChange(change: MessageChange): void {
    if (this.catchingUp) {
      this.changeBuffer.push(change);
      return;
    }
    this.applyChange(change);
  }

  private applyChange(change: MessageChange): void {
    const { conversation_id: conversationId, message_id: messageId } = change;
    // A message not held (not loaded yet) needs nothing: its history copy carries the change.
    const updated =
      change.op === 'edit'
        ? this.store.applyEdit(conversationId, messageId, change.body, change.at)
        : change.op === 'delete'
          ? this.store.applyDelete(conversationId, messageId)
          : this.store.applyReaction(conversationId, messageId, change.user_id, change.reaction, change.action, this.userId);
    if (updated) this.emit('messageUpdated', { conversationId, message: updated });
  }

  private onError(error: ServerError): void {
    if (error.ref !== undefined && this.outbox.get(error.ref)) {
      const entry = this.outbox.get(error.ref)!;
      const outcome = this.outbox.error(error.ref, error.code, error.message, Date.now());
      if (outcome === 'retry') {
        if (entry.request.op === 'send') this.store.putPending({ ...this.pendingOf(entry.conversation_id, error.ref), status: 'queued' });
        this.scheduleRetry();
      }
      return;
    }
    this.emit('error', error);
  }

  private pendingOf(conversationId: string, clientMsgId: string): PendingMessage {
    return this.store.pending(conversationId).find((pending) => pending.client_msg_id === clientMsgId)!;
  }

  /** Tracks `seq`; false for a frame already seen (a replay overlap). */
  private sequenced(seq: number): boolean {
    if (seq <= this.lastSeq) return false;
    this.lastSeq = seq;
    if (this.lastSeq - this.lastAckedSeq >= this.options.ackEveryFrames) this.flushAckSeq();
    else if (this.ackTimer === undefined) {
      this.ackTimer = setTimeout(() => {
        this.ackTimer = undefined;
        this.flushAckSeq();
      }, this.options.ackDelayMs);
    }
    return true;
  }

  private flushAckSeq(): void {
    if (this.ackTimer !== undefined) {
      clearTimeout(this.ackTimer);
      this.ackTimer = undefined;
    }
    if (this.lastSeq > this.lastAckedSeq && this.write({ op: 'ack_seq', seq: this.lastSeq })) this.lastAckedSeq = this.lastSeq;
  }

  private onMembership(frame: MembershipFrame): void {
    const effect = membershipEffect(frame, this.userId);
    if (effect === 'joined') {
      this.discovered(frame.conversation_id, 'membership');
    } else if (effect === 'left') {
      this.tracked.delete(frame.conversation_id);
      this.store.forget(frame.conversation_id);
    }
    this.emit('membership', frame);
  }

  /**
   * Emits `conversation` the first time a conversation shows up, and
   * tracks it (caught up after a reconnect like the others).
   */
  private discovered(conversationId: string, via: 'membership' | 'message'): void {
    if (this.tracked.has(conversationId) || this.store.holds(conversationId)) return;
    this.tracked.add(conversationId);
    this.emit('conversation', { conversationId, via });
  }

  private onMessage(message: Message): void {
    if (!isMessageId(message.message_id)) {
      this.emit('error', { op: 'client_error', message: `message with an unreadable id ${String(message.message_id)}` });
      return;
    }
    this.discovered(message.conversation_id, 'message');
    if (this.catchingUp) {
      this.liveBuffer.push(message);
      return;
    }
    this.accept(message, 'live');
  }

  /** Puts a message in the store; emits it when new, or its new copy when it updated a held one. */
  private accept(message: Message, source: MessageSource): boolean {
    const { added, settled, updated } = this.store.insert(message, source === 'history' || source === 'catch-up');
    if (settled) this.emit('pending', { conversationId: message.conversation_id, clientMsgId: settled.client_msg_id, pending: undefined });
    if (added) this.emit('message', { conversationId: message.conversation_id, message, source });
    if (updated) this.emit('messageUpdated', { conversationId: message.conversation_id, message: updated });
    return added;
  }

  // ----------------------------------------------------------- catch-up --

  /**
   * After `resumed:false`: buffer live frames, page history after the last
   * message held in each conversation, merge and de-duplicate, then pass
   * again after the persist lag (until history reaches the first buffered
   * live message of each conversation), then release the buffer.
   */
  private async catchUp(): Promise<void> {
    if (this.catchingUp) {
      this.catchUpAgain = true;
      return;
    }
    this.catchingUp = true;
    this.catchUpNeeded = false;
    this.setState('resyncing');
    let added = 0;
    let conversations = 0;
    try {
      do {
        this.catchUpAgain = false;
        const listed = await this.api.listConversations();
        // The conversations this client follows and the user is still in.
        const ids = new Set<string>([...this.tracked, ...this.store.conversationIds()]);
        const member = new Set(listed.map((conversation) => conversation.conversation_id));
        const targets = [...ids].filter((id) => member.has(id));
        conversations = targets.length;
        added += await this.catchUpPass(targets);
        for (let pass = 0; pass < this.options.maxCatchUpPasses; pass++) {
          await this.sleep(this.options.persistLagMs);
          if (this.connectionState === 'stopped') return;
          added += await this.catchUpPass(targets);
          // Done once history holds the first buffered live message of every
          // conversation that has one (nothing can hide between the two).
          if (this.historyReachedBuffer()) break;
        }
      } while (this.catchUpAgain && this.connectionState !== 'stopped');
    } catch (error) {
      // Done on the next hello if the retry below does not get to it first.
      this.catchUpNeeded = true;
      this.emit('error', { op: 'client_error', message: `catch-up failed: ${String(error)}` });
      // Try again shortly: the buffer is released meanwhile so live traffic flows.
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        if (this.connectionState !== 'stopped') void this.catchUp();
      }, 2_000);
      this.timers.add(timer);
    } finally {
      const buffered = this.liveBuffer;
      const changes = this.changeBuffer;
      this.liveBuffer = [];
      this.changeBuffer = [];
      this.catchingUp = false;
      for (const message of buffered) this.accept(message, 'live');
      // A change follows its message in the conversation's order.
      for (const change of changes) this.applyChange(change);
      if (this.connectionState !== 'stopped' && !this.offline) this.setState(this.socket && this.helloReceived ? 'open' : 'reconnecting');
    }
    this.emit('caughtUp', { conversations, messages: added });
  }

  private async catchUpPass(conversationIds: string[]): Promise<number> {
    let added = 0;
    for (const conversationId of conversationIds) {
      const after = this.store.lastMessageId(conversationId);
      const messages =
        after === undefined
          ? ((await this.api.history(conversationId, { pageSize: 200 }).next()).value ?? [])
          : await this.api.messagesAfter(conversationId, messageIdBefore(after, this.options.catchUpOverlapMs));
      for (const message of messages) if (this.accept(message, 'catch-up')) added++;
    }
    return added;
  }

  private historyReachedBuffer(): boolean {
    const firstBuffered = new Map<string, string>();
    for (const message of this.liveBuffer) {
      const known = firstBuffered.get(message.conversation_id);
      if (known === undefined || compareMessageIds(message.message_id, known) < 0) firstBuffered.set(message.conversation_id, message.message_id);
    }
    for (const [conversationId, messageId] of firstBuffered) {
      if (!this.store.has(conversationId, messageId)) return false;
    }
    return true;
  }

  // ------------------------------------------------------------ plumbing --

  private write(frame: ClientFrame): boolean {
    const socket = this.socket;
    if (!socket || socket.readyState !== OPEN || !this.helloReceived) return false;
    socket.send(JSON.stringify(frame));
    return true;
  }

  /** Writes what the outbox allows. */
  private pump(): void {
    if (!this.socket || !this.helloReceived) return;
    for (const frame of this.outbox.takeSendable(Date.now())) {
      if (!this.write(frame)) {
        this.outbox.disconnected();
        return;
      }
      if (frame.op !== 'send') continue;
      const pending = this.pendingOf(frame.conversation_id, frame.client_msg_id);
      if (pending) {
        const sending: PendingMessage = { ...pending, status: 'sending' };
        this.store.putPending(sending);
        this.emit('pending', { conversationId: frame.conversation_id, clientMsgId: frame.client_msg_id, pending: sending });
      }
    }
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    const at = this.outbox.nextRetryAt(Date.now());
    if (at === undefined) return;
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.pump();
    }, Math.max(0, at - Date.now()));
  }

  /** Once a second: sends past their timeout are written again. */
  private tick(): void {
    if (this.outbox.expire(Date.now(), this.options.sendTimeoutMs) > 0) this.pump();
  }

  private startPing(heartbeatMs: number): void {
    if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
    const interval = this.options.pingIntervalMs ?? Math.min(25_000, Math.max(1_000, Math.floor(heartbeatMs / 2)));
    // Two pings without any frame back: the connection is dead.
    this.livenessMs = 2 * interval + 2_000;
    this.pingTimer = setInterval(() => this.write({ op: 'ping' }), interval);
    this.armLiveness();
  }

  private armLiveness(): void {
    if (this.livenessTimer !== undefined) clearTimeout(this.livenessTimer);
    const socket = this.socket;
    this.livenessTimer = setTimeout(() => {
      if (this.socket === socket && socket) {
        // Treat as a network failure: forget this socket now, it may never close.
        this.detach(socket);
        this.socket = undefined;
        try {
          socket.close(4000, 'no answer');
        } catch {
          // Already closing.
        }
        this.onClose(CLOSE.ABNORMAL, 'liveness timeout');
      }
    }, this.livenessMs);
  }

  private clearConnectionTimers(): void {
    if (this.pingTimer !== undefined) clearInterval(this.pingTimer);
    if (this.livenessTimer !== undefined) clearTimeout(this.livenessTimer);
    if (this.ackTimer !== undefined) clearTimeout(this.ackTimer);
    this.pingTimer = this.livenessTimer = this.ackTimer = undefined;
    this.helloReceived = false;
  }

  private stopTimers(): void {
    this.clearConnectionTimers();
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    for (const timer of this.readTimers.values()) clearTimeout(timer);
    this.readTimers.clear();
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    if (this.tickTimer !== undefined) clearInterval(this.tickTimer);
    this.retryTimer = this.tickTimer = undefined;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        resolve();
      }, ms);
      this.timers.add(timer);
    });
  }

  private setState(state: ConnectionState, reason?: string): void {
    if (this.connectionState === state) return;
    if (this.connectionState === 'stopped' && state !== 'connecting') return;
    this.connectionState = state;
    this.emit('state', { state, reason });
  }
}

/** The fields of a `reaction` frame that a change needs. */
function pick(frame: ServerReaction): Omit<Extract<MessageChange, { op: 'reaction' }>, 'op'> {
  return { conversation_id: frame.conversation_id, message_id: frame.message_id, user_id: frame.user_id, reaction: frame.reaction, action: frame.action };
}
