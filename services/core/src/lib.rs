//! # chatpipe-core
//!
//! The bottom layer of chatpipe: every type that more than one service shares,
//! and nothing that does I/O.
//!
//! Layout:
//! - [`ids`]: newtype identifiers (`UserId`, `ConversationId`, `MessageId`, …)
//!   and the Snowflake-style [`ids::MessageIdGenerator`].
//! - [`records`]: the JSON records chatpipe writes to Kafka. Their published
//!   JSON Schemas live in `schemas/kafka/`; every record carries
//!   `schema_version`.
//! - [`frames`]: the WebSocket protocol, a sans-I/O codec from text frames to
//!   typed client frames and back for server frames (schemas in `schemas/ws/`).
//! - [`dedup`]: the send de-duplication rule every consumer applies to
//!   partition order ([`dedup::SendDedupWindow`]).
//! - [`membership`]: roles (owner, admin, member), history visibility, and
//!   the pure rule deciding who may change whose membership.
//! - [`read_state`]: mentions, read markers, unread and mention counts
//!   (the rules that keep them exact without a write per recipient).
//! - [`cursor`]: the opaque cursor codec of paginated routes.
//! - [`auth`]: bearer tokens (HS256 JWT) — signing and verification.
//! - [`error`]: the error codes users see, mapped once to WebSocket codes and
//!   HTTP statuses.
//! - [`debug_fields!`]: the `Debug` of structs that show only some fields.
//!
//! Delivery semantics are not decided here, but the types carry what the
//! pipeline needs for them: a message's id is its idempotency key everywhere
//! (Kafka consumers, Cassandra primary key, search document id).

pub mod auth;
pub mod cursor;
pub mod debug;
pub mod dedup;
pub mod error;
pub mod frames;
pub mod ids;
pub mod membership;
pub mod read_state;
pub mod records;
pub mod store;
pub mod time;

pub use error::ErrorCode;
pub use ids::{ClientMsgId, ConversationId, EdgeId, MessageId, SessionId, UserId};
