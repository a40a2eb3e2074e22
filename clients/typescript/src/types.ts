/**
 * The contract's types, under short names. Everything here comes from the
 * generated files (`src/generated/`, from `schemas/ws/v1` and
 * `schemas/openapi.json`): the SDK adds no wire type of its own.
 */
import type { components } from './generated/api.js';
import type * as Ws from './generated/ws.js';

export type { components, paths, operations } from './generated/api.js';
export type * from './generated/ws.js';

type Schemas = components['schemas'];

/**
 * A message as history, search and the `message` frame carry it (the
 * frame's `mentions`, which history does not return, included).
 */
export type Message = Schemas['Message'] & Pick<Ws.MessageView, 'mentions'>;
export type Conversation = Schemas['Conversation'];
export type ConversationList = Schemas['ConversationList'];
export type ReadState = Schemas['ReadState'];
export type CreateConversationRequest = Schemas['CreateConversationRequest'];
export type CreateConversationResponse = Schemas['CreateConversationResponse'];
export type HistoryPage = Schemas['HistoryPage'];
export type SearchHit = Schemas['SearchHit'];
export type SearchPage = Schemas['SearchPage'];
export type ApiErrorBody = Schemas['Error'];
export type ApiErrorCode = Schemas['Error']['error']['code'];

/** Every frame a client may send. */
export type ClientFrame =
  | Ws.ClientSend
  | Ws.ClientEdit
  | Ws.ClientDelete
  | Ws.ClientReact
  | Ws.ClientUnreact
  | Ws.ClientTyping
  | Ws.ClientRead
  | Ws.ClientAckSeq
  | Ws.ClientPing;
/** Every frame an edge may send (unknown `op`s are ignored by the client). */
export type ServerFrame =
  | Ws.ServerHello
  | Ws.ServerAck
  | Ws.ServerError
  | Ws.ServerPong
  | Ws.ServerReconnect
  | Ws.ServerMessage
  | Ws.ServerTyping
  | Ws.ServerRead
  | Ws.ServerPresence
  | Ws.ServerRefreshed
  | Ws.ServerMessageEdited
  | Ws.ServerMessageDeleted
  | Ws.ServerReaction
  | MembershipFrame;
/** The membership frames: a conversation created, a member added, removed or given a role, settings changed. */
export type MembershipFrame =
  | Ws.ServerConversationCreated
  | Ws.ServerMemberAdded
  | Ws.ServerMemberRemoved
  | Ws.ServerMemberRoleChanged
  | Ws.ServerConversationUpdated;
/** The frames of the session stream: they carry `seq`. */
export type SequencedFrame =
  | Ws.ServerMessage
  | Ws.ServerTyping
  | Ws.ServerRead
  | Ws.ServerPresence
  | Ws.ServerMessageEdited
  | Ws.ServerMessageDeleted
  | Ws.ServerReaction
  | MembershipFrame;
export type WsErrorCode = Ws.ServerError['code'];
