//! The behaviour every implementation of the store seams must have, written
//! once and generic over the traits of `chatpipe_core::store` (the tansu
//! pattern). `tests/store_behaviour.rs` runs it against Cassandra, and the
//! unit tests below against chatpipe-core's in-memory
//! [`MemoryStore`], which the roles' engine-free unit tests use.
//!
//! The suites panic on the first violated expectation. `unique` must differ
//! per run (a uuid): every id the suites create is derived from it, so runs
//! on a shared engine never see each other's data.

use std::future::Future;

use chatpipe_core::ids::{ConversationId, UserId};
use chatpipe_core::store::memory::MemoryStore;
use chatpipe_core::store::{MembershipStore, StoreError};
use chatpipe_core::time::now_unix_ms;

use crate::conversations::NewConversation;
use crate::store::CassandraStore;

/// Writes the membership a [`MembershipStore`] reads, so the read-only trait
/// can be tested.
pub trait MembershipFixture: MembershipStore {
    fn create_conversation_for_test(
        &self,
        conversation: &ConversationId,
        creator: &UserId,
        members: &[UserId],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn add_member_for_test(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        actor: &UserId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn remove_member_for_test(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

impl MembershipFixture for CassandraStore {
    async fn create_conversation_for_test(
        &self,
        conversation: &ConversationId,
        creator: &UserId,
        members: &[UserId],
    ) -> Result<(), StoreError> {
        self.create_conversation(&NewConversation {
            conversation_id: conversation.clone(),
            title: Some("conformance".into()),
            created_by: creator.clone(),
            members: members.to_vec(),
            created_at_ms: now_unix_ms(),
        })
        .await?;
        Ok(())
    }

    async fn add_member_for_test(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        actor: &UserId,
    ) -> Result<(), StoreError> {
        Ok(self
            .add_member(conversation, user, actor, now_unix_ms())
            .await?)
    }

    async fn remove_member_for_test(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<(), StoreError> {
        Ok(self.remove_member(conversation, user).await?)
    }
}

impl MembershipFixture for MemoryStore {
    async fn create_conversation_for_test(
        &self,
        conversation: &ConversationId,
        creator: &UserId,
        members: &[UserId],
    ) -> Result<(), StoreError> {
        self.create_conversation(conversation, creator, members);
        Ok(())
    }

    async fn add_member_for_test(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        _actor: &UserId,
    ) -> Result<(), StoreError> {
        self.add_member(conversation, user);
        Ok(())
    }

    async fn remove_member_for_test(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<(), StoreError> {
        self.remove_member(conversation, user);
        Ok(())
    }
}

fn user(unique: &str, name: &str) -> UserId {
    UserId::parse(format!("{name}-{unique}")).expect("valid test user id")
}

fn conversation(unique: &str, name: &str) -> ConversationId {
    ConversationId::parse(format!("{name}-{unique}")).expect("valid test conversation id")
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

/// Membership is visible both ways after create, add and remove; unknown
/// conversations have no members.
pub async fn membership_suite<S: MembershipFixture>(store: &S, unique: &str) {
    let alice = user(unique, "alice");
    let bob = user(unique, "bob");
    let carol = user(unique, "carol");
    let group = conversation(unique, "group");
    let other = conversation(unique, "other");
    let unknown = conversation(unique, "unknown");

    assert_eq!(
        store.members(&unknown).await.unwrap(),
        None,
        "unknown conversation"
    );
    assert!(!store.is_member(&unknown, &alice).await.unwrap());
    assert!(store.conversations_of(&alice).await.unwrap().is_empty());

    store
        .create_conversation_for_test(&group, &alice, std::slice::from_ref(&bob))
        .await
        .unwrap();
    store
        .create_conversation_for_test(&other, &bob, &[])
        .await
        .unwrap();
    assert_eq!(
        sorted(store.members(&group).await.unwrap().expect("group exists")),
        sorted(vec![alice.clone(), bob.clone()]),
        "the creator is a member"
    );
    assert!(store.is_member(&group, &alice).await.unwrap());
    assert!(store.is_member(&group, &bob).await.unwrap());
    assert!(!store.is_member(&group, &carol).await.unwrap());
    assert_eq!(
        store.conversations_of(&alice).await.unwrap(),
        vec![group.clone()]
    );
    assert_eq!(
        sorted(store.conversations_of(&bob).await.unwrap()),
        sorted(vec![group.clone(), other.clone()])
    );

    store
        .add_member_for_test(&group, &carol, &alice)
        .await
        .unwrap();
    store
        .add_member_for_test(&group, &carol, &alice)
        .await
        .unwrap();
    assert!(store.is_member(&group, &carol).await.unwrap());
    assert_eq!(
        store.conversations_of(&carol).await.unwrap(),
        vec![group.clone()]
    );
    assert_eq!(
        store.members(&group).await.unwrap().unwrap().len(),
        3,
        "adding twice adds once"
    );

    store.remove_member_for_test(&group, &bob).await.unwrap();
    store.remove_member_for_test(&group, &bob).await.unwrap();
    assert!(!store.is_member(&group, &bob).await.unwrap());
    assert_eq!(
        store.conversations_of(&bob).await.unwrap(),
        vec![other.clone()]
    );
    assert_eq!(
        sorted(store.members(&group).await.unwrap().unwrap()),
        sorted(vec![alice.clone(), carol.clone()])
    );

    // A conversation everyone left still exists, with no members.
    store.remove_member_for_test(&other, &bob).await.unwrap();
    assert_eq!(store.members(&other).await.unwrap(), Some(vec![]));
    assert!(store.conversations_of(&bob).await.unwrap().is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-memory store behaves as Cassandra does (no engine needed).
    #[tokio::test]
    async fn the_memory_store_passes_the_membership_suite() {
        membership_suite(&MemoryStore::new(), "memory").await;
    }
}
