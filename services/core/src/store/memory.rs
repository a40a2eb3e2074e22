//! [`MemoryStore`]: the store seams ([`MembershipStore`], [`MessageStore`])
//! held in memory, for unit tests that need no engine. It passes the same
//! behaviour suite as Cassandra (`chatpipe_cassandra::conformance`, run on
//! both), so a role tested against it is tested against the contract of the
//! seam, not against a fake's quirks.
//!
//! Tests set its contents directly ([`MemoryStore::set_members`], …) and may
//! observe or disturb its reads: [`MemoryStore::reads`] counts them,
//! [`MemoryStore::set_unavailable`] makes them fail as an engine outage
//! would, and [`MemoryStore::with_read_hook`] runs a future after a read
//! took its snapshot and before it answers (to interleave a read with a
//! concurrent change). Clones share one store.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{MembershipStore, MessageStore, ReadableConversation, StoreError, StoredMessageFacts};
use crate::ids::{ConversationId, MessageId, UserId};
use crate::membership::Role;

/// Run by every read between its snapshot and its answer.
pub type ReadHook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// One member of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Member {
    role: Role,
    /// Messages before this moment are hidden from the member (a `joined`
    /// history visibility); `None`: all are visible.
    visible_from_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct Contents {
    conversations: BTreeMap<ConversationId, BTreeMap<UserId, Member>>,
    messages: HashMap<(ConversationId, MessageId), StoredMessageFacts>,
    reads: u64,
    unavailable: bool,
}

/// The store seams in memory; clones share the same contents.
#[derive(Clone, Default)]
pub struct MemoryStore {
    contents: Arc<Mutex<Contents>>,
    read_hook: Option<ReadHook>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("MemoryStore")
            .field("contents", &*self.lock())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// This store (sharing its contents) with `hook` run by every read.
    pub fn with_read_hook(&self, hook: ReadHook) -> Self {
        Self {
            contents: self.contents.clone(),
            read_hook: Some(hook),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Contents> {
        // A test that panicked while holding the lock has failed already.
        self.contents
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates `conversation` (if new) with `creator` as its owner and
    /// `members` as members; adding to an existing one keeps the roles it
    /// holds, as Cassandra's idempotent create does.
    pub fn create_conversation(
        &self,
        conversation: &ConversationId,
        creator: &UserId,
        members: &[UserId],
    ) {
        let mut contents = self.lock();
        let existing = contents
            .conversations
            .entry(conversation.clone())
            .or_default();
        existing.entry(creator.clone()).or_insert(Member {
            role: Role::Owner,
            visible_from_ms: None,
        });
        for member in members {
            existing.entry(member.clone()).or_insert(Member {
                role: Role::Member,
                visible_from_ms: None,
            });
        }
    }

    /// Replaces the members of `conversation` (created if new) by `members`,
    /// all with the role `member`. Accepts `&str` ids for brevity in tests.
    pub fn set_members(&self, conversation: &str, members: &[&str]) {
        let conversation = ConversationId::parse(conversation).expect("a valid conversation id");
        let members = members
            .iter()
            .map(|member| {
                let user = UserId::parse(*member).expect("a valid user id");
                let member = Member {
                    role: Role::Member,
                    visible_from_ms: None,
                };
                (user, member)
            })
            .collect();
        self.lock().conversations.insert(conversation, members);
    }

    /// Adds `user` with the role `member` (no change if already a member).
    pub fn add_member(&self, conversation: &ConversationId, user: &UserId) {
        self.lock()
            .conversations
            .entry(conversation.clone())
            .or_default()
            .entry(user.clone())
            .or_insert(Member {
                role: Role::Member,
                visible_from_ms: None,
            });
    }

    /// Removes `user`; the conversation stays, possibly with no members.
    pub fn remove_member(&self, conversation: &ConversationId, user: &UserId) {
        if let Some(members) = self.lock().conversations.get_mut(conversation) {
            members.remove(user);
        }
    }

    /// Sets the role of a member (no change if not a member).
    pub fn set_role(&self, conversation: &ConversationId, user: &UserId, role: Role) {
        self.member_mut(conversation, user, |member| member.role = role);
    }

    /// Hides the messages before `visible_from_ms` from a member, as a
    /// `joined` history visibility does (no change if not a member).
    pub fn set_visible_from(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        visible_from_ms: Option<u64>,
    ) {
        self.member_mut(conversation, user, |member| {
            member.visible_from_ms = visible_from_ms
        });
    }

    fn member_mut(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        change: impl FnOnce(&mut Member),
    ) {
        let mut contents = self.lock();
        if let Some(member) = contents
            .conversations
            .get_mut(conversation)
            .and_then(|members| members.get_mut(user))
        {
            change(member);
        }
    }

    /// Stores what history knows of a message (replacing earlier facts).
    pub fn put_message(
        &self,
        conversation: &ConversationId,
        message_id: MessageId,
        facts: StoredMessageFacts,
    ) {
        self.lock()
            .messages
            .insert((conversation.clone(), message_id), facts);
    }

    /// Reads answered or failed so far, through either trait.
    pub fn reads(&self) -> u64 {
        self.lock().reads
    }

    /// While true, every read fails with a retriable error, as an engine
    /// outage does.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.lock().unavailable = unavailable;
    }

    /// Counts a read and takes its answer from the contents, then runs the
    /// read hook (without the lock) before answering.
    async fn read<T>(&self, answer: impl FnOnce(&Contents) -> T) -> Result<T, StoreError> {
        let snapshot = {
            let mut contents = self.lock();
            contents.reads += 1;
            if contents.unavailable {
                return Err(StoreError::unavailable(
                    "the in-memory store is set unavailable",
                ));
            }
            answer(&contents)
        };
        if let Some(hook) = &self.read_hook {
            hook().await;
        }
        Ok(snapshot)
    }
}

impl Contents {
    fn member(&self, conversation: &ConversationId, user: &UserId) -> Option<&Member> {
        self.conversations.get(conversation)?.get(user)
    }

    fn memberships_of<'a>(
        &'a self,
        user: &'a UserId,
    ) -> impl Iterator<Item = (&'a ConversationId, &'a Member)> {
        self.conversations
            .iter()
            .filter_map(move |(conversation, members)| Some((conversation, members.get(user)?)))
    }
}

impl MembershipStore for MemoryStore {
    async fn is_member(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        self.read(|contents| contents.member(conversation, user).is_some())
            .await
    }

    async fn members(
        &self,
        conversation: &ConversationId,
    ) -> Result<Option<Vec<UserId>>, StoreError> {
        self.read(|contents| {
            let members = contents.conversations.get(conversation)?;
            Some(members.keys().cloned().collect())
        })
        .await
    }

    async fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, StoreError> {
        self.read(|contents| {
            contents
                .memberships_of(user)
                .map(|(conversation, _)| conversation.clone())
                .collect()
        })
        .await
    }

    async fn readable_conversations(
        &self,
        user: &UserId,
    ) -> Result<Vec<ReadableConversation>, StoreError> {
        self.read(|contents| {
            contents
                .memberships_of(user)
                .map(|(conversation, member)| ReadableConversation {
                    conversation_id: conversation.clone(),
                    visible_from_ms: member.visible_from_ms,
                })
                .collect()
        })
        .await
    }
}

impl MessageStore for MemoryStore {
    async fn message_facts(
        &self,
        conversation: &ConversationId,
        message_id: MessageId,
    ) -> Result<Option<StoredMessageFacts>, StoreError> {
        self.read(|contents| {
            contents
                .messages
                .get(&(conversation.clone(), message_id))
                .cloned()
        })
        .await
    }

    async fn is_moderator(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        self.read(|contents| {
            contents
                .member(conversation, user)
                .is_some_and(|member| matches!(member.role, Role::Owner | Role::Admin))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    //! What the conformance suite (in chatpipe-cassandra) does not cover:
    //! the test controls and the message facts.

    use std::future::Future;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// Polls a future that never waits (every read here is ready at once).
    fn ready<T>(future: impl Future<Output = T>) -> T {
        let mut future = std::pin::pin!(future);
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(value) => value,
            Poll::Pending => panic!("an in-memory read waited"),
        }
    }

    fn ids(conversation: &str, user: &str) -> (ConversationId, UserId) {
        (
            ConversationId::parse(conversation).unwrap(),
            UserId::parse(user).unwrap(),
        )
    }

    #[test]
    fn the_creator_owns_and_owners_and_admins_moderate() {
        let store = MemoryStore::new();
        let (conversation, owner) = ids("c1", "owner");
        let (_, member) = ids("c1", "member");
        store.create_conversation(&conversation, &owner, std::slice::from_ref(&member));
        assert!(ready(store.is_moderator(&conversation, &owner)).unwrap());
        assert!(!ready(store.is_moderator(&conversation, &member)).unwrap());
        store.set_role(&conversation, &member, Role::Admin);
        assert!(ready(store.is_moderator(&conversation, &member)).unwrap());
        store.create_conversation(&conversation, &owner, std::slice::from_ref(&member));
        assert!(
            ready(store.is_moderator(&conversation, &member)).unwrap(),
            "a repeated create keeps roles"
        );
    }

    #[test]
    fn message_facts_are_read_back() {
        let store = MemoryStore::new();
        let (conversation, sender) = ids("c1", "u1");
        let facts = StoredMessageFacts {
            sender_id: sender,
            ts: 10,
            edited_at: None,
            deleted: false,
        };
        store.put_message(&conversation, MessageId::from_u64(7), facts.clone());
        assert_eq!(
            ready(store.message_facts(&conversation, MessageId::from_u64(7))).unwrap(),
            Some(facts)
        );
        assert_eq!(
            ready(store.message_facts(&conversation, MessageId::from_u64(8))).unwrap(),
            None
        );
    }

    #[test]
    fn readable_conversations_carry_the_visibility_floor() {
        let store = MemoryStore::new();
        store.set_members("c1", &["u1"]);
        store.set_members("c2", &["u1", "u2"]);
        let (c2, u1) = ids("c2", "u1");
        store.set_visible_from(&c2, &u1, Some(500));
        assert_eq!(
            ready(store.readable_conversations(&u1)).unwrap(),
            vec![
                ReadableConversation::whole(ConversationId::parse("c1").unwrap()),
                ReadableConversation {
                    conversation_id: c2,
                    visible_from_ms: Some(500),
                },
            ]
        );
    }

    #[test]
    fn reads_are_counted_and_fail_while_unavailable() {
        let store = MemoryStore::new();
        store.set_members("c1", &["u1"]);
        let (conversation, user) = ids("c1", "u1");
        assert!(ready(store.is_member(&conversation, &user)).unwrap());
        store.set_unavailable(true);
        let error = ready(store.members(&conversation)).unwrap_err();
        assert!(error.retriable);
        store.set_unavailable(false);
        assert_eq!(
            ready(store.conversations_of(&user)).unwrap(),
            vec![conversation]
        );
        assert_eq!(store.reads(), 3);
    }

    #[test]
    fn the_read_hook_runs_after_the_snapshot() {
        let store = MemoryStore::new();
        store.set_members("c1", &["a", "b"]);
        let hooked = Arc::new(AtomicU64::new(0));
        let seen = hooked.clone();
        let changer = store.clone();
        let hooked_store = store.with_read_hook(Arc::new(move || {
            seen.fetch_add(1, Ordering::SeqCst);
            // A change made while the read is in flight is not in its answer.
            changer.set_members("c1", &["a"]);
            Box::pin(async {})
        }));
        let conversation = ConversationId::parse("c1").unwrap();
        let answer = ready(hooked_store.members(&conversation)).unwrap().unwrap();
        assert_eq!(answer.len(), 2);
        assert_eq!(hooked.load(Ordering::SeqCst), 1);
        assert_eq!(
            ready(store.members(&conversation)).unwrap().unwrap().len(),
            1
        );
    }
}
