//! # chatpipe-cassandra
//!
//! The one place chatpipe talks to Cassandra / ScyllaDB (through the
//! `scylla` driver): the history store written by the persist role and read
//! by the API, and membership (read by edges, fan-out and the API). Sends
//! are de-duplicated from Kafka partition order, not here (see
//! `chatpipe_core::dedup`).
//!
//! Layout:
//! - [`config`]: [`CassandraConfig`] (contact points, keyspace, timeouts,
//!   the keyspace's [`Replication`], the [`ConsistencyLevel`] of every
//!   request).
//! - [`schema`]: `schemas/cql/chatpipe.cql`, embedded, and an idempotent
//!   [`apply_schema`](schema::apply_schema) that reports what it created.
//! - [`store`]: [`CassandraStore`], a session plus prepared statements.
//! - [`conversations`]: conversations and membership both ways; implements
//!   [`MembershipStore`](chatpipe_core::store::MembershipStore).
//! - [`messages`]: history, partitioned by `(conversation_id, bucket)` with
//!   [`bucket`] a 10-day window derived from the message id (Discord's
//!   layout); idempotent batch writes, edits and deletes (tombstones), and
//!   cursor pages across buckets; implements
//!   [`MessageStore`](chatpipe_core::store::MessageStore) for the edge.
//! - [`read_state`]: read markers, mention rows and last activity (written
//!   by persist in batches), and the unread and mention counts the inbox
//!   reads; nothing is written per recipient.
//! - [`conformance`]: the behaviour suites of the store traits, generic
//!   over any implementation.
//!
//! Delivery semantics: every write is idempotent (primary keys end in the
//! message id, user id or conversation id it stands for; message writes use
//! the message's own time as write timestamp), so the at-least-once
//! consumers above may replay freely. Every error is a
//! [`CassandraError`] that says whether retrying may help; at the trait
//! seam it becomes a `StoreError` with the same classification.

pub mod bucket;
pub mod config;
pub mod conformance;
pub mod conversations;
pub mod error;
pub mod messages;
pub mod read_state;
pub mod schema;
pub mod store;

pub use config::{
    CassandraConfig, ConsistencyLevel, Replication, SerialConsistencyLevel, SettingError,
};
pub use conversations::{
    Conversation, ConversationSummary, CreateOutcome, Member, NewConversation, OwnerCensus,
    StoredMember,
};
pub use error::CassandraError;
pub use messages::{
    DELETE_WRITE_TIMESTAMP_US, HistoryPage, HistoryQuery, ReactionCount, StoredMessage, WriteReport,
};
pub use read_state::ReadCounts;
pub use schema::{OnReplicationMismatch, SchemaReport, apply_schema, apply_schema_with};
pub use store::CassandraStore;
