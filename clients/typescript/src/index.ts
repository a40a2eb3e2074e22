/**
 * @chatpipe/client — a TypeScript client for chatpipe (ESM, no framework).
 *
 * ```ts
 * import { ChatClient, devSignIn } from '@chatpipe/client';
 * const { token } = await devSignIn('http://127.0.0.1:8090', 'alice');
 * const client = new ChatClient({
 *   userId: 'alice', apiUrl: 'http://127.0.0.1:8090', wsUrl: 'ws://127.0.0.1:8080/ws',
 *   token: () => token,
 * });
 * client.on('message', ({ message }) => console.log(message.sender_id, message.body));
 * client.connect();
 * const { conversation_id } = await client.api.createConversation(['bob']);
 * await client.send(conversation_id, 'hi').done;
 * ```
 */
export { ChatClient } from './client.js';
export type { ChatClientOptions, ChatEvents, ConnectionState, MessageEvent, SendOptions, WebSocketFactory, WebSocketLike } from './client.js';
export { ApiClient, ApiError, devSignIn } from './http.js';
export type { ApiClientOptions, HistoryOptions, SearchOptions, TokenProvider } from './http.js';
export { Outbox, SendFailed } from './outbox.js';
export type { OutboxEntry, OutboxFrame, OutboxOptions, OutboxRequest, SendResult } from './outbox.js';
export { ConversationStore, membershipEffect } from './store.js';
export type { MessageSource, PendingMessage, ReactionCount } from './store.js';
export { CLOSE, backoffDelay, closeAction, retryAfterMs } from './close-policy.js';
export type { BackoffOptions, CloseAction } from './close-policy.js';
export { compareMessageIds, isMessageId, maxMessageId, messageIdBefore, messageIdToBigInt, newClientMsgId } from './ids.js';
export { highlightToHtml } from './highlight.js';
export type * from './types.js';
