//! The seams between the roles and the stores they read, as traits.
//!
//! Roles are generic over these traits; `chatpipe-cassandra` implements them
//! for Cassandra/ScyllaDB, and one behaviour test suite (in that crate) runs
//! against the real engine. Unit tests of the roles use in-memory fakes.

use std::future::Future;

use crate::ids::{ClientMsgId, ConversationId, MessageId, UserId};

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

/// A send already seen for a `(user, client_msg_id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeenSend {
    pub message_id: MessageId,
    pub ts: u64,
    /// Kafka confirmed the record (false: the first attempt may have failed,
    /// and the retry must produce the same record again).
    pub acked: bool,
}

/// The outcome of claiming a `(user, client_msg_id)` for a new send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendClaim {
    /// First time seen: the caller owns this send and its message id.
    Claimed,
    /// Seen before (on any edge): reuse its message id.
    Existing(SeenSend),
}

/// Cross-edge de-duplication of client sends, within a retention window.
pub trait SendDedupStore: Clone + Send + Sync + 'static {
    /// Atomically claims the key for `message_id`, or returns what claimed it.
    fn claim(
        &self,
        user: &UserId,
        client_msg_id: &ClientMsgId,
        conversation: &ConversationId,
        message_id: MessageId,
        ts: u64,
    ) -> impl Future<Output = Result<SendClaim, StoreError>> + Send;

    /// Records that Kafka confirmed the send.
    fn mark_acked(
        &self,
        user: &UserId,
        client_msg_id: &ClientMsgId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
