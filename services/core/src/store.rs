//! The seams between the roles and the stores they read, as traits.
//!
//! Roles are generic over these traits; `chatpipe-cassandra` implements them
//! for Cassandra/ScyllaDB, and one behaviour test suite (in that crate) runs
//! against the real engine. Unit tests of the roles use in-memory fakes.

use std::future::Future;

use crate::ids::{ConversationId, MessageId, UserId};

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
