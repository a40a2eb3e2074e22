//! Who receives what: a bounded, self-invalidating cache in front of the
//! [`MembershipStore`].
//!
//! Two caches: members per conversation (messages, typing, read receipts)
//! and conversations per user (presence). Both are bounded by weight (a
//! 10,000-member conversation weighs 10,000) and expire after a TTL as a
//! safety net. The real invalidation is the membership topic: the API writes
//! the store first and then publishes a `MembershipRecord`; every worker
//! tails that topic and evicts the conversation (and the users it names) as
//! soon as the record arrives, so a removed member stops receiving within
//! the tail's latency (milliseconds), not the TTL.
//!
//! A read that started before an eviction never puts its stale answer back:
//! both caches are `chatpipe_membership::InvalidatingCache`s.
//!
//! A removal needs one more rule. The API publishes `removed` *before* it
//! deletes the member from the store (so that a failure errs towards
//! taking access away), so a read right after the eviction can still find
//! the removed member, and would cache them for the whole TTL. Removed
//! members are therefore remembered per conversation for
//! [`REMOVAL_GRACE`] and left out of every recipient list served meanwhile
//! ([`MembershipCache::recipients`])
//! (a later `added` of the same user in the same conversation, which
//! comes after it in the topic, forgets it).

use std::sync::Arc;
use std::time::Duration;

use chatpipe_core::records::{MembershipChange, MembershipRecord};
use chatpipe_core::store::{MembershipStore, StoreError};
use chatpipe_core::{ConversationId, UserId};
use chatpipe_membership::{InvalidatingCache, Lookup};
use moka::future::Cache;

use crate::config::FanoutConfig;
use crate::metrics::FanoutMetrics;

/// Members of a conversation, shared without copying.
pub type Members = Arc<[UserId]>;

/// How long a removed member is left out of member lists whatever the
/// store says: far longer than the API takes between publishing a removal
/// and deleting the row.
pub const REMOVAL_GRACE: Duration = Duration::from_secs(60);

/// Conversations with removals remembered at once (beyond it, the oldest
/// go first; each is a handful of ids).
const REMOVALS_MAX_CONVERSATIONS: u64 = 100_000;

/// The membership cache of one worker. Cheap to clone (shared state).
#[derive(Clone)]
pub struct MembershipCache<M> {
    store: M,
    members: InvalidatingCache<ConversationId, Members>,
    conversations: InvalidatingCache<UserId, Arc<[ConversationId]>>,
    /// Members removed within [`REMOVAL_GRACE`], per conversation.
    removed: Cache<ConversationId, Members>,
    metrics: FanoutMetrics,
}

impl<M> std::fmt::Debug for MembershipCache<M> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MembershipCache")
            .field("conversations_cached", &self.members.entry_count())
            .field("users_cached", &self.conversations.entry_count())
            .finish()
    }
}

fn weight_of(length: usize) -> u32 {
    u32::try_from(length).unwrap_or(u32::MAX).max(1)
}

impl<M: MembershipStore> MembershipCache<M> {
    pub fn new(store: M, config: &FanoutConfig, metrics: FanoutMetrics) -> Self {
        let members = Cache::builder()
            .max_capacity(config.membership_cache_max_members)
            .weigher(|_conversation: &ConversationId, members: &Members| weight_of(members.len()))
            .time_to_live(config.membership_cache_ttl())
            .build();
        let conversations = Cache::builder()
            .max_capacity(config.user_conversations_cache_max_entries)
            .weigher(|_user: &UserId, conversations: &Arc<[ConversationId]>| {
                weight_of(conversations.len())
            })
            .time_to_live(config.membership_cache_ttl())
            .build();
        Self {
            store,
            members: InvalidatingCache::new(members),
            conversations: InvalidatingCache::new(conversations),
            removed: Cache::builder()
                .max_capacity(REMOVALS_MAX_CONVERSATIONS)
                .time_to_live(REMOVAL_GRACE)
                .build(),
            metrics,
        }
    }

    /// Every member of `conversation`, or `None` if it does not exist
    /// (unknown conversations are not cached: they may be created next).
    pub async fn members(
        &self,
        conversation: &ConversationId,
    ) -> Result<Option<Members>, StoreError> {
        let lookup = self
            .members
            .get_or_load(conversation, || async {
                let loaded = self.store.members(conversation).await.inspect_err(|_| {
                    self.metrics.membership_store_errors.inc();
                })?;
                Ok::<_, StoreError>(loaded.map(Members::from))
            })
            .await?;
        self.count(&lookup);
        Ok(lookup.into_value())
    }

    /// [`MembershipCache::members`] less the members removed within
    /// [`REMOVAL_GRACE`]: whom the conversation's frames go to.
    pub async fn recipients(
        &self,
        conversation: &ConversationId,
    ) -> Result<Option<Members>, StoreError> {
        let Some(members) = self.members(conversation).await? else {
            return Ok(None);
        };
        // Only conversations with a recent removal pay for this.
        match self.removed.get(conversation).await {
            Some(removed) if members.iter().any(|member| removed.contains(member)) => Ok(Some(
                members
                    .iter()
                    .filter(|member| !removed.contains(member))
                    .cloned()
                    .collect(),
            )),
            _ => Ok(Some(members)),
        }
    }

    /// Remembers (`removed`) or forgets (re-added) a removal of `user`.
    async fn note_removal(&self, conversation: &ConversationId, user: &UserId, removed: bool) {
        let earlier = self.removed.get(conversation).await;
        let mut list: Vec<UserId> = earlier
            .iter()
            .flat_map(|earlier| earlier.iter())
            .filter(|held| *held != user)
            .cloned()
            .collect();
        if removed {
            list.push(user.clone());
        }
        if list.is_empty() {
            if earlier.is_some() {
                self.removed.invalidate(conversation).await;
            }
        } else {
            self.removed
                .insert(conversation.clone(), Members::from(list))
                .await;
        }
    }

    fn count<V>(&self, lookup: &Lookup<V>) {
        if lookup.is_hit() {
            self.metrics.membership_cache_hits.inc();
        } else {
            self.metrics.membership_cache_misses.inc();
        }
    }

    /// Every conversation `user` is a member of.
    pub async fn conversations_of(
        &self,
        user: &UserId,
    ) -> Result<Arc<[ConversationId]>, StoreError> {
        let lookup = self
            .conversations
            .get_or_load(user, || async {
                let list = self.store.conversations_of(user).await.inspect_err(|_| {
                    self.metrics.membership_store_errors.inc();
                })?;
                Ok::<_, StoreError>(Some(Arc::<[ConversationId]>::from(list)))
            })
            .await?;
        self.count(&lookup);
        Ok(lookup.into_value().unwrap_or_else(|| Arc::from([])))
    }

    /// Evicts `conversation`'s members.
    pub async fn invalidate_conversation(&self, conversation: &ConversationId) {
        self.members.invalidate(conversation).await;
    }

    /// Evicts `user`'s conversation list.
    pub async fn invalidate_user(&self, user: &UserId) {
        self.conversations.invalidate(user).await;
    }

    /// Applies one membership record: evicts the conversation and every
    /// user the change names. A `Created` record carries the whole member
    /// list (the API wrote it to the store before publishing), so it fills
    /// the cache instead: the conversation's first messages need no store
    /// read. Records of one conversation arrive in order, so a later
    /// `Added` or `Removed` evicts this entry again.
    pub async fn apply_record(&self, record: &MembershipRecord) {
        if self.apply_change(record).await {
            self.metrics.membership_invalidations.inc();
        }
    }

    /// [`Self::apply_record`] without counting it: what the consumer group
    /// does for the changes it delivers (the tail counts each record once).
    /// Returns whether the change touched the member lists.
    pub async fn apply_change(&self, record: &MembershipRecord) -> bool {
        // Role and settings changes leave the member list as it is: keep
        // the cached list (a large group's would cost a full re-read).
        if !record.change.changes_members() {
            return false;
        }
        match &record.change {
            MembershipChange::Created { members, .. } => {
                // A load that started earlier cannot overwrite this list.
                self.members
                    .replace(
                        record.conversation_id.clone(),
                        Arc::from(members.as_slice()),
                    )
                    .await;
                for member in members {
                    self.invalidate_user(member).await;
                }
            }
            MembershipChange::Added { user_id } | MembershipChange::Removed { user_id } => {
                let removed = matches!(record.change, MembershipChange::Removed { .. });
                self.note_removal(&record.conversation_id, user_id, removed)
                    .await;
                self.invalidate_conversation(&record.conversation_id).await;
                self.invalidate_user(user_id).await;
            }
            MembershipChange::RoleChanged { .. } | MembershipChange::SettingsChanged { .. } => {}
        }
        true
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use chatpipe_core::records::SCHEMA_VERSION;
    use chatpipe_core::store::memory::MemoryStore;
    use tokio::sync::Notify;

    use super::*;

    /// A cache over `store` with the default settings.
    fn cache_of(store: &MemoryStore) -> MembershipCache<MemoryStore> {
        MembershipCache::new(
            store.clone(),
            &FanoutConfig::default(),
            FanoutMetrics::new(),
        )
    }

    fn names(members: &[UserId]) -> Vec<&str> {
        members.iter().map(UserId::as_str).collect()
    }

    /// A store holding `conversations`, and a cache over it.
    fn cache_over(
        conversations: &[(&str, &[&str])],
    ) -> (MemoryStore, MembershipCache<MemoryStore>) {
        let store = MemoryStore::new();
        for (conversation, members) in conversations {
            store.set_members(conversation, members);
        }
        let cache = cache_of(&store);
        (store, cache)
    }

    fn removed(conversation: &str, user: &str) -> MembershipRecord {
        MembershipRecord {
            schema_version: SCHEMA_VERSION,
            conversation_id: ConversationId::parse(conversation).unwrap(),
            change: MembershipChange::Removed {
                user_id: UserId::parse(user).unwrap(),
            },
            actor_id: UserId::parse("admin").unwrap(),
            ts: 0,
        }
    }

    #[tokio::test]
    async fn a_created_record_fills_the_cache_and_a_later_change_evicts_it() {
        let (store, cache) = cache_over(&[("c1", &["a", "b"])]);
        let conversation = ConversationId::parse("c1").unwrap();
        cache
            .apply_record(&MembershipRecord {
                schema_version: SCHEMA_VERSION,
                conversation_id: conversation.clone(),
                change: MembershipChange::Created {
                    members: vec![UserId::parse("a").unwrap(), UserId::parse("b").unwrap()],
                    title: None,
                    history_visibility: None,
                },
                actor_id: UserId::parse("a").unwrap(),
                ts: 0,
            })
            .await;
        assert_eq!(
            names(&cache.members(&conversation).await.unwrap().unwrap()),
            vec!["a", "b"]
        );
        assert_eq!(store.reads(), 0, "served from the record");

        store.set_members("c1", &["a"]);
        cache.apply_record(&removed("c1", "b")).await;
        assert_eq!(
            names(&cache.members(&conversation).await.unwrap().unwrap()),
            vec!["a"]
        );
        assert_eq!(store.reads(), 1, "reloaded after the removal");
    }

    #[tokio::test]
    async fn a_removed_member_is_left_out_even_before_the_store_forgets_them() {
        let (_store, cache) = cache_over(&[("c1", &["a", "b"])]);
        let conversation = ConversationId::parse("c1").unwrap();
        // The API published the removal; its store delete has not landed.
        cache.apply_record(&removed("c1", "b")).await;
        for _ in 0..2 {
            assert_eq!(
                names(&cache.recipients(&conversation).await.unwrap().unwrap()),
                vec!["a"]
            );
        }
        assert_eq!(
            names(&cache.members(&conversation).await.unwrap().unwrap()),
            vec!["a", "b"],
            "the store still lists b"
        );
        // Added back: the removal is forgotten.
        cache
            .apply_record(&MembershipRecord {
                change: MembershipChange::Added {
                    user_id: UserId::parse("b").unwrap(),
                },
                ..removed("c1", "b")
            })
            .await;
        assert_eq!(
            names(&cache.recipients(&conversation).await.unwrap().unwrap()),
            vec!["a", "b"]
        );
    }

    #[tokio::test]
    async fn caches_until_a_membership_record_evicts() {
        let store = MemoryStore::new();
        store.set_members("c1", &["a", "b"]);
        let metrics = FanoutMetrics::new();
        let cache = MembershipCache::new(store.clone(), &FanoutConfig::default(), metrics.clone());
        let conversation = ConversationId::parse("c1").unwrap();
        let first = cache.members(&conversation).await.unwrap().unwrap();
        let second = cache.members(&conversation).await.unwrap().unwrap();
        assert_eq!(
            (names(&first), names(&second)),
            (vec!["a", "b"], vec!["a", "b"])
        );
        assert_eq!(
            (
                metrics.membership_cache_misses.get(),
                metrics.membership_cache_hits.get()
            ),
            (1, 1)
        );

        store.set_members("c1", &["a"]);
        assert_eq!(
            cache
                .conversations_of(&UserId::parse("b").unwrap())
                .await
                .unwrap()
                .len(),
            0
        );
        cache.apply_record(&removed("c1", "b")).await;
        assert_eq!(
            names(&cache.members(&conversation).await.unwrap().unwrap()),
            vec!["a"]
        );
        assert_eq!(store.reads(), 3);
        assert!(
            cache
                .members(&ConversationId::parse("nope").unwrap())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_read_racing_an_eviction_does_not_cache_the_stale_answer() {
        let gate = Arc::new((Notify::new(), Notify::new()));
        // Every read waits, after its snapshot, until the test releases it.
        let hook_gate = gate.clone();
        let store = MemoryStore::new().with_read_hook(Arc::new(move || {
            let gate = hook_gate.clone();
            Box::pin(async move {
                gate.0.notify_one();
                gate.1.notified().await;
            })
        }));
        store.set_members("c1", &["a", "b"]);
        let cache = cache_of(&store);
        let conversation = ConversationId::parse("c1").unwrap();
        let reader = {
            let cache = cache.clone();
            let conversation = conversation.clone();
            tokio::spawn(async move { cache.members(&conversation).await })
        };
        // The read took its snapshot {a, b}; now b is removed and evicted.
        gate.0.notified().await;
        store.set_members("c1", &["a"]);
        cache.apply_record(&removed("c1", "b")).await;
        gate.1.notify_one();
        let stale = reader.await.unwrap().unwrap().unwrap();
        assert_eq!(
            names(&stale),
            vec!["a", "b"],
            "the racing read itself answers what it read"
        );
        let fresh_reader = {
            let cache = cache.clone();
            let conversation = conversation.clone();
            tokio::spawn(async move { cache.members(&conversation).await })
        };
        gate.0.notified().await;
        gate.1.notify_one();
        let fresh = fresh_reader.await.unwrap().unwrap().unwrap();
        assert_eq!(names(&fresh), vec!["a"], "the stale answer was not cached");
    }

    #[tokio::test]
    async fn store_failures_are_counted_and_returned() {
        let store = MemoryStore::new();
        store.set_unavailable(true);
        let metrics = FanoutMetrics::new();
        let cache = MembershipCache::new(store, &FanoutConfig::default(), metrics.clone());
        let error = cache
            .members(&ConversationId::parse("c").unwrap())
            .await
            .unwrap_err();
        assert!(error.retriable);
        assert_eq!(metrics.membership_store_errors.get(), 1);
    }
}
