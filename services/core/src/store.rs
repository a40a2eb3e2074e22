//! The seams between the roles and the stores they read, as traits.
//!
//! Roles are generic over these traits; `chatpipe-cassandra` implements them
//! for Cassandra/ScyllaDB and [`memory::MemoryStore`] in memory, and one
//! behaviour test suite (`chatpipe_cassandra::conformance`) runs against
//! both. Unit tests of the roles use the in-memory store: no engine.

use std::future::Future;

use crate::ids::{ConversationId, MessageId, UserId};

pub mod memory;

/// A store failure. Retriable failures (timeouts, an engine that is down)
/// become `unavailable` for users; others become `internal`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StoreError {
    pub retriable: bool,
    pub message: String,
}

impl StoreError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retriable: true,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            retriable: false,
            message: message.into(),
        }
    }
}

/// Who is in which conversation.
pub trait MembershipStore: Clone + Send + Sync + 'static {
    /// Whether `user` is a member of `conversation` (false for an unknown
    /// conversation).
    fn is_member(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every member of `conversation`, or `None` if it does not exist.
    fn members(
        &self,
        conversation: &ConversationId,
    ) -> impl Future<Output = Result<Option<Vec<UserId>>, StoreError>> + Send;

    /// Every conversation `user` is a member of.
    fn conversations_of(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Vec<ConversationId>, StoreError>> + Send;

    /// Every conversation `user` may read, with the oldest moment each lets
    /// them read from (their join time in a conversation whose
    /// [`HistoryVisibility`](crate::membership::HistoryVisibility) is
    /// `joined`). What search filters on: a store must not leave the floor
    /// out, or newcomers would find what history hides from them.
    fn readable_conversations(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Vec<ReadableConversation>, StoreError>> + Send;
}

/// A conversation a user may read, and from when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadableConversation {
    pub conversation_id: ConversationId,
    /// Messages before this moment (unix ms) are hidden from the user;
    /// `None`: every message is visible.
    pub visible_from_ms: Option<u64>,
}

impl ReadableConversation {
    /// A conversation readable in full.
    pub fn whole(conversation_id: ConversationId) -> Self {
        Self {
            conversation_id,
            visible_from_ms: None,
        }
    }
}

/// What the edge needs to know about a stored message to authorize a
/// change to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessageFacts {
    pub sender_id: UserId,
    /// Unix ms of the message (a change's `ts` must be later).
    pub ts: u64,
    /// The latest edit's time, if edited (a new edit's `ts` must be later).
    pub edited_at: Option<u64>,
    pub deleted: bool,
}

/// Messages as stored history sees them, read to authorize edits and
/// deletes (never on the plain send path).
pub trait MessageStore: Clone + Send + Sync + 'static {
    /// The facts of message `message_id` in `conversation`, or `None` when
    /// history does not hold it (yet).
    fn message_facts(
        &self,
        conversation: &ConversationId,
        message_id: MessageId,
    ) -> impl Future<Output = Result<Option<StoredMessageFacts>, StoreError>> + Send;

    /// Whether `user` may delete any message of `conversation` (its owner
    /// or an admin).
    fn is_moderator(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Everything an edge reads: membership for every frame, messages for
/// edits and deletes.
pub trait EdgeStore: MembershipStore + MessageStore {}

impl<S: MembershipStore + MessageStore> EdgeStore for S {}
