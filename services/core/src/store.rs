//! The seams between the roles and the stores they read, as traits.
//!
//! Roles are generic over these traits; `chatpipe-cassandra` implements them
//! for Cassandra/ScyllaDB, and one behaviour test suite (in that crate) runs
//! against the real engine. Unit tests of the roles use in-memory fakes.

use std::future::Future;

use crate::ids::{ConversationId, UserId};

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
