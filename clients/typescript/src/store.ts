/**
 * The client's view of each conversation: one ordered, de-duplicated list
 * of messages (by `message_id`, ordered as ids sort: by creation time),
 * plus the sends still pending (optimistic local echo), reconciled by
 * `client_msg_id` when the server's copy arrives. Pure: no I/O, no timers.
 */
import { compareMessageIds } from './ids.js';
import type { MembershipFrame, Message } from './types.js';

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
  /** Set when the server acked it (the message frame may come later). */
  message_id?: string;
  error?: string;
}

interface ConversationState {
  /** Ascending by `message_id`. */
  messages: Message[];
  ids: Set<string>;
  pending: Map<string, PendingMessage>;
}

export class ConversationStore {
  private readonly conversations = new Map<string, ConversationState>();

  private state(conversationId: string): ConversationState {
    let state = this.conversations.get(conversationId);
    if (!state) {
      state = { messages: [], ids: new Set(), pending: new Map() };
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

  /**
   * Adds a message unless its id is already held. Returns whether it was
   * new, and the pending send it settled (same `client_msg_id`), if any.
   */
  insert(message: Message): { added: boolean; settled?: PendingMessage } {
    const state = this.state(message.conversation_id);
    const candidate = state.pending.get(message.client_msg_id);
    // client_msg_ids are unique per sender only: another user's may match.
    const settled = candidate && candidate.sender_id === message.sender_id ? candidate : undefined;
    if (settled) state.pending.delete(message.client_msg_id);
    if (state.ids.has(message.message_id)) return { added: false, settled };
    state.ids.add(message.message_id);
    const list = state.messages;
    // Live frames and catch-up pages arrive mostly in order: try the end first.
    if (list.length === 0 || compareMessageIds(list[list.length - 1]!.message_id, message.message_id) < 0) {
      list.push(message);
    } else {
      let low = 0;
      let high = list.length;
      while (low < high) {
        const middle = (low + high) >> 1;
        if (compareMessageIds(list[middle]!.message_id, message.message_id) < 0) low = middle + 1;
        else high = middle;
      }
      list.splice(low, 0, message);
    }
    return { added: true, settled };
  }

  /** Adds or updates a pending send. */
  putPending(pending: PendingMessage): void {
    this.state(pending.conversation_id).pending.set(pending.client_msg_id, pending);
  }

  removePending(conversationId: string, clientMsgId: string): void {
    this.conversations.get(conversationId)?.pending.delete(clientMsgId);
  }
}
