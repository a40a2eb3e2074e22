//! The per-conversation member cap (`max_members_per_conversation`).
//!
//! Counting a conversation's members is a read of its whole member
//! partition (15,000 rows for the benchmarks' broadcast group), too much to
//! repeat on every add. So each replica keeps, per conversation it recently
//! added to, the count read from the store (at most
//! [`COUNT_TTL`] old) plus its own adds since, and reserves a slot before
//! writing: adds through one replica never overshoot the cap. Adds through
//! several replicas at the same moment may overshoot by what the others
//! added within that second; the next count corrects it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chatpipe_cassandra::CassandraStore;
use chatpipe_core::ids::ConversationId;

use crate::error::ApiError;

/// How long a count read from the store is trusted.
pub const COUNT_TTL: Duration = Duration::from_secs(1);

/// Conversations whose counts are kept at once.
const MAX_TRACKED: u64 = 100_000;

/// Member counts of recently changed conversations, and the cap.
#[derive(Clone)]
pub struct MemberCap {
    max_members: u64,
    counts: moka::future::Cache<ConversationId, Arc<AtomicU64>>,
}

chatpipe_core::debug_fields!(MemberCap { max_members });

/// The refusal text: says the cap, so a client knows why.
pub fn conversation_full(max_members: u64) -> ApiError {
    ApiError::Conflict(format!(
        "the conversation has reached its limit of {max_members} members"
    ))
}

impl MemberCap {
    pub fn new(max_members: u64) -> Self {
        Self {
            max_members,
            counts: moka::future::Cache::builder()
                .max_capacity(MAX_TRACKED)
                .time_to_live(COUNT_TTL)
                .build(),
        }
    }

    pub fn max_members(&self) -> u64 {
        self.max_members
    }

    /// Takes one member slot of `conversation`, or refuses with 409 when
    /// it is full. Give the slot back with [`Self::release`] if the add
    /// then fails.
    pub async fn reserve(
        &self,
        store: &CassandraStore,
        conversation: &ConversationId,
    ) -> Result<(), ApiError> {
        let count = self
            .counts
            .try_get_with(conversation.clone(), async {
                let members = store.member_count(conversation).await?;
                Ok::<_, ApiError>(Arc::new(AtomicU64::new(members)))
            })
            .await
            .map_err(|error| match error.as_ref() {
                ApiError::Unavailable(detail) => ApiError::Unavailable(detail.clone()),
                other => ApiError::Internal(other.to_string()),
            })?;
        let max = self.max_members;
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |members| {
                (members < max).then_some(members + 1)
            })
            .map(|_| ())
            .map_err(|_| conversation_full(max))
    }

    /// Returns a slot taken by [`Self::reserve`] for an add that failed.
    pub async fn release(&self, conversation: &ConversationId) {
        if let Some(count) = self.counts.get(conversation).await {
            let _ = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |members| {
                members.checked_sub(1)
            });
        }
    }

    /// Forgets `conversation`'s count (after a removal), so the next add
    /// counts afresh.
    pub async fn forget(&self, conversation: &ConversationId) {
        self.counts.invalidate(conversation).await;
    }
}
