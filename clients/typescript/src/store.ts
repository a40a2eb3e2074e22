/**
 * The client's view of each conversation: one ordered, de-duplicated list
 * of messages (by `message_id`, ordered as ids sort: by creation time),
 * plus the sends still pending (optimistic local echo), reconciled by
 * `client_msg_id` when the server's copy arrives. Pure: no I/O, no timers.
 *
 * Later changes to a message are applied to its copy, idempotently, since
 * every frame may arrive twice (resume replays, an `ack` then the frame):
 * - an edit replaces the body only when its `edited_at` is newer than the
 *   copy's (a replay, or an older edit arriving late, changes nothing);
 * - a delete leaves a tombstone (`deleted: true`, no body, no reactions),
 *   as history returns it; nothing changes a tombstone afterwards;
 * - reactions are kept as history returns them (`{reaction, count, me}`,
 *   most used first). A frame moves a count only when it changes what the
 *   store knows of that user: this user's state is the `me` flag, other
 *   users' the last frame seen from them, so a replayed frame counts once.
 *   (A frame the history copy already counted, read in the same instant,
 *   can still count twice; the next history read corrects it.)
 * Changed messages are replaced by new objects, never mutated, so views
 * may compare by identity.
 */
import { compareMessageIds } from './ids.js';
import type { MembershipFrame, Message } from './types.js';

/** One reaction of a message as history returns it. */
export type ReactionCount = NonNullable<Message['reactions']>[number];

/**
 * What a membership frame means to the client of `userId`: it is now a
 * member (`joined`), it is not any more (`left`), or the change concerns
 * other members or the settings (`changed`).
 */
export function membershipEffect(frame: MembershipFrame, userId: string): 'joined' | 'left' | 'changed' {
  switch (frame.op) {
    case 'conversation_created':
      return 'joined';
    case 'member_added':
      return frame.user_id === userId ? 'joined' : 'changed';
    case 'member_removed':
      return frame.user_id === userId ? 'left' : 'changed';
    default:
      return 'changed';
  }
}

/** Where a message entered the store. */
export type MessageSource = 'live' | 'history' | 'catch-up' | 'ack';

/** A send not yet seen as a server message (shown greyed until then). */
export interface PendingMessage {
  client_msg_id: string;
  conversation_id: string;
  sender_id: string;
  body: string;
  /** Local time of the first attempt, Unix ms. */
  created_at: number;
  status: 'queued' | 'sending' | 'failed';
  /** The message this one replies to. */
  reply_to?: string;
  /** The users it mentions. */
  mentions?: string[];
  /** Set when the server acked it (the message frame may come later). */
  message_id?: string;
  error?: string;
}

interface ConversationState {
  /** Ascending by `message_id`. */
  messages: Message[];
  ids: Set<string>;
  pending: Map<string, PendingMessage>;
  /** Other users' reactions seen in frames: message → reaction → user → added. */
  reactors: Map<string, Map<string, Map<string, boolean>>>;
}

export class ConversationStore {
  private readonly conversations = new Map<string, ConversationState>();

  private state(conversationId: string): ConversationState {
    let state = this.conversations.get(conversationId);
    if (!state) {
      state = { messages: [], ids: new Set(), pending: new Map(), reactors: new Map() };
      this.conversations.set(conversationId, state);
    }
    return state;
  }

  /** Whether the store holds anything (messages or pending sends) for a conversation. */
  holds(conversationId: string): boolean {
    return this.conversations.has(conversationId);
  }

  /** Drops everything held for a conversation (the user left it). */
  forget(conversationId: string): void {
    this.conversations.delete(conversationId);
  }

  /** Conversations the store holds anything for. */
  conversationIds(): string[] {
    return [...this.conversations.keys()];
  }

  /** The messages of a conversation, oldest first, each once. */
  messages(conversationId: string): readonly Message[] {
    return this.conversations.get(conversationId)?.messages ?? [];
  }

  /** Pending sends of a conversation, oldest first. */
  pending(conversationId: string): PendingMessage[] {
    return [...(this.conversations.get(conversationId)?.pending.values() ?? [])];
  }

  has(conversationId: string, messageId: string): boolean {
    return this.conversations.get(conversationId)?.ids.has(messageId) ?? false;
  }

  /** The newest message id held, the `after=` of a catch-up. */
  lastMessageId(conversationId: string): string | undefined {
    const messages = this.conversations.get(conversationId)?.messages;
    return messages && messages.length > 0 ? messages[messages.length - 1]!.message_id : undefined;
  }

  /** The oldest message id held, the `before=` of a scroll-back. */
  firstMessageId(conversationId: string): string | undefined {
    return this.conversations.get(conversationId)?.messages[0]?.message_id;
  }

  /** The held copy of a message. */
  get(conversationId: string, messageId: string): Message | undefined {
    const state = this.conversations.get(conversationId);
    if (!state?.ids.has(messageId)) return undefined;
    return state.messages[position(state.messages, messageId)];
  }

  /**
   * Adds a message unless its id is already held. Returns whether it was
   * new, and the pending send it settled (same `client_msg_id`), if any.
   * A copy of a held message updates it when it is newer (an edit, a
   * delete); a `snapshot` copy (from history) also brings its reactions.
   */
  insert(message: Message, snapshot = false): { added: boolean; settled?: PendingMessage; updated?: Message } {
    const state = this.state(message.conversation_id);
    const candidate = state.pending.get(message.client_msg_id);
    // client_msg_ids are unique per sender only: another user's may match.
    const settled = candidate && candidate.sender_id === message.sender_id ? candidate : undefined;
    if (settled) state.pending.delete(message.client_msg_id);
    if (state.ids.has(message.message_id)) return { added: false, settled, updated: this.merge(state, message, snapshot) };
    state.ids.add(message.message_id);
    const list = state.messages;
    // Live frames and catch-up pages arrive mostly in order: try the end first.
    if (list.length === 0 || compareMessageIds(list[list.length - 1]!.message_id, message.message_id) < 0) {
      list.push(message);
    } else {
      list.splice(position(list, message.message_id), 0, message);
    }
    return { added: true, settled };
  }

  /** A held message seen again: keep the newer edit, a delete, and a snapshot's reactions. */
  private merge(state: ConversationState, copy: Message, snapshot: boolean): Message | undefined {
    if (copy.deleted) return this.applyDelete(copy.conversation_id, copy.message_id);
    let updated: Message | undefined;
    if (copy.edited_at !== undefined && copy.body !== undefined) updated = this.applyEdit(copy.conversation_id, copy.message_id, copy.body, copy.edited_at);
    if (snapshot) {
      const held = this.get(copy.conversation_id, copy.message_id)!;
      if (!held.deleted && !sameReactions(held.reactions, copy.reactions)) {
        updated = withReactions(held, copy.reactions ?? []);
        this.replace(state, updated);
      }
    }
    return updated;
  }

  /**
   * Applies an edit: the new body, unless the message is deleted or its
   * copy already has this edit or a newer one. Returns the new copy when
   * it changed (undefined: not held, or nothing to do).
   */
  applyEdit(conversationId: string, messageId: string, body: string, editedAt: number): Message | undefined {
    const state = this.conversations.get(conversationId);
    const held = this.get(conversationId, messageId);
    if (!state || !held || held.deleted) return undefined;
    if (held.edited_at !== undefined && held.edited_at >= editedAt) return undefined;
    const updated: Message = { ...held, body, edited_at: editedAt };
    this.replace(state, updated);
    return updated;
  }

  /** Applies a delete: a tombstone without body and reactions. Returns it when it changed. */
  applyDelete(conversationId: string, messageId: string): Message | undefined {
    const state = this.conversations.get(conversationId);
    const held = this.get(conversationId, messageId);
    if (!state || !held || held.deleted) return undefined;
    const { body: _body, reactions: _reactions, ...rest } = held;
    const tombstone: Message = { ...rest, deleted: true };
    this.replace(state, tombstone);
    state.reactors.delete(messageId);
    return tombstone;
  }

  /**
   * Applies one user's reaction change (`self`: the signed-in user, whose
   * state is the `me` flag). Returns the new copy when a count moved; a
   * frame that repeats what is known (a replay) changes nothing.
   */
  applyReaction(
    conversationId: string,
    messageId: string,
    userId: string,
    reaction: string,
    action: 'add' | 'remove',
    self: string,
  ): Message | undefined {
    const state = this.conversations.get(conversationId);
    const held = this.get(conversationId, messageId);
    if (!state || !held || held.deleted) return undefined;
    const add = action === 'add';
    const reactions = held.reactions ?? [];
    const current = reactions.find((item) => item.reaction === reaction);
    if (userId === self) {
      if ((current?.me ?? false) === add) return undefined;
    } else {
      let byReaction = state.reactors.get(messageId);
      if (!byReaction) state.reactors.set(messageId, (byReaction = new Map()));
      let users = byReaction.get(reaction);
      if (!users) byReaction.set(reaction, (users = new Map()));
      const known = users.get(userId);
      if (known === add) return undefined;
      if (known === undefined && !add) {
        // Taking back a reaction this store never saw added: only a history
        // count can hold it, and only if users unknown here are counted (the
        // server relays a remove even when there was nothing to remove).
        let seen = current?.me ? 1 : 0;
        for (const added of users.values()) if (added) seen++;
        if ((current?.count ?? 0) <= seen) {
          users.set(userId, false);
          return undefined;
        }
      }
      users.set(userId, add);
    }
    const count = Math.max(0, (current?.count ?? 0) + (add ? 1 : -1));
    const me = userId === self ? add : (current?.me ?? false);
    const others = reactions.filter((item) => item.reaction !== reaction);
    const next = count > 0 ? [...others, { reaction, count, me }] : others;
    const updated = withReactions(held, next);
    this.replace(state, updated);
    return updated;
  }

  private replace(state: ConversationState, message: Message): void {
    state.messages[position(state.messages, message.message_id)] = message;
  }

  /** Adds or updates a pending send. */
  putPending(pending: PendingMessage): void {
    this.state(pending.conversation_id).pending.set(pending.client_msg_id, pending);
  }

  removePending(conversationId: string, clientMsgId: string): void {
    this.conversations.get(conversationId)?.pending.delete(clientMsgId);
  }
}

/** Where `messageId` is, or would be inserted, in an ascending list. */
function position(list: readonly Message[], messageId: string): number {
  let low = 0;
  let high = list.length;
  while (low < high) {
    const middle = (low + high) >> 1;
    if (compareMessageIds(list[middle]!.message_id, messageId) < 0) low = middle + 1;
    else high = middle;
  }
  return low;
}

/** A copy with these reactions, most used first (ties by name, for a stable order); none: no field. */
function withReactions(message: Message, reactions: readonly ReactionCount[]): Message {
  const { reactions: _old, ...rest } = message;
  if (reactions.length === 0) return rest;
  const sorted = [...reactions].sort((a, b) => b.count - a.count || (a.reaction < b.reaction ? -1 : a.reaction > b.reaction ? 1 : 0));
  return { ...rest, reactions: sorted };
}

function sameReactions(a: readonly ReactionCount[] | undefined, b: readonly ReactionCount[] | undefined): boolean {
  const left = a ?? [];
  const right = b ?? [];
  if (left.length !== right.length) return false;
  return left.every((item) => right.some((other) => other.reaction === item.reaction && other.count === item.count && other.me === item.me));
}
