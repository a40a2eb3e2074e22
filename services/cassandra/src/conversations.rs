//! Conversations and their membership: `conversations`,
//! `members_by_conversation` and `conversations_by_user`.
//!
//! Membership is written both ways in one *logged* batch per member, so the
//! two directions are applied together or not at all. A new conversation's
//! member rows are written before its `conversations` row, which is the
//! commit point: a creation that fails half-way leaves membership rows of a
//! conversation that does not exist (ignored by every reader, since
//! [`CassandraStore::members`] and listings require the row), never a
//! conversation with half its members.

use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt};
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::CqlValue;

use chatpipe_core::ids::{ConversationId, UserId};
use chatpipe_core::membership::{Headcount, HistoryVisibility, Role};
use chatpipe_core::store::{MembershipStore, ReadableConversation, StoreError};

use crate::bucket::{Bucket, first_bucket_for_creation};
use crate::error::CassandraError;
use crate::store::CassandraStore;

/// Members written per logged batch when creating a conversation (keeps each
/// batch well under Cassandra's batch size limits).
const MEMBERS_PER_BATCH: usize = 25;

/// Conversations whose details are fetched at once when listing a user's.
const LISTING_CONCURRENCY: usize = 16;

/// A conversation's own row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub conversation_id: ConversationId,
    pub title: Option<String>,
    pub created_at_ms: u64,
    pub created_by: UserId,
    /// The oldest history bucket that can hold its messages.
    pub first_bucket: Bucket,
    /// Which messages newcomers see (`shared` for rows written before the
    /// setting existed).
    pub history_visibility: HistoryVisibility,
}

/// One member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: UserId,
    /// The stored role, or for rows written before roles existed: owner
    /// iff the user created the conversation ([`Role::resolve`]).
    pub role: Role,
    /// When the user (last) joined, unix ms.
    pub joined_at_ms: u64,
}

/// A member row as stored, for the conditions of a guarded owner change
/// ([`CassandraStore::take_owner_role`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMember {
    pub member: Member,
    /// The `role` cell itself (`None` in rows written before roles).
    stored_role: Option<String>,
    /// The `added_at` cell itself.
    added_at: Option<i64>,
}

/// A conversation's headcount and its owners, read in one scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerCensus {
    pub headcount: Headcount,
    pub owners: Vec<StoredMember>,
}

impl OwnerCensus {
    /// `user`'s row, when `user` is an owner.
    pub fn owner(&self, user: &UserId) -> Option<&StoredMember> {
        self.owners
            .iter()
            .find(|owner| &owner.member.user_id == user)
    }

    /// An owner other than `user`, when there is one.
    pub fn other_owner(&self, user: &UserId) -> Option<&StoredMember> {
        self.owners
            .iter()
            .find(|owner| &owner.member.user_id != user)
    }
}

/// A conversation to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewConversation {
    pub conversation_id: ConversationId,
    pub title: Option<String>,
    pub created_by: UserId,
    /// Every member; the creator is added if missing, duplicates are ignored.
    pub members: Vec<UserId>,
    pub created_at_ms: u64,
}

/// What [`CassandraStore::create_conversation`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The conversation is new, with exactly these members.
    Created {
        conversation: Conversation,
        members: Vec<UserId>,
    },
    /// A conversation with that id existed already (unchanged).
    AlreadyExists(Conversation),
}

/// One entry of a user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    pub conversation: Conversation,
    pub member_count: u64,
    /// When the user joined (unix ms).
    pub joined_at_ms: u64,
    /// The user's role in it.
    pub role: Role,
}

type ConversationRow = (
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i32>,
    Option<String>,
);

type MemberRow = (String, Option<String>, Option<i64>);

fn decode_member(row: MemberRow, created_by: &UserId) -> Result<Member, CassandraError> {
    let (raw, role, added_at) = row;
    let user_id = parse_user(raw)?;
    Ok(Member {
        role: Role::resolve(role.as_deref(), &user_id, created_by),
        joined_at_ms: added_at.unwrap_or(0).max(0) as u64,
        user_id,
    })
}

fn decode_conversation(row: ConversationRow) -> Result<Conversation, CassandraError> {
    let (id, title, created_at, created_by, first_bucket, history_visibility) = row;
    let conversation_id = ConversationId::parse(id)
        .map_err(|error| CassandraError::InvalidData(error.to_string()))?;
    let created_by = created_by
        .ok_or_else(|| {
            CassandraError::InvalidData(format!("conversation {conversation_id} has no creator"))
        })
        .and_then(|raw| {
            UserId::parse(raw).map_err(|error| CassandraError::InvalidData(error.to_string()))
        })?;
    let created_at_ms = created_at.unwrap_or(0).max(0) as u64;
    Ok(Conversation {
        first_bucket: first_bucket.unwrap_or_else(|| first_bucket_for_creation(created_at_ms)),
        conversation_id,
        title,
        created_at_ms,
        created_by,
        history_visibility: HistoryVisibility::resolve(history_visibility.as_deref()),
    })
}

fn parse_user(raw: String) -> Result<UserId, CassandraError> {
    UserId::parse(raw).map_err(|error| CassandraError::InvalidData(error.to_string()))
}

impl CassandraStore {
    /// Creates a conversation with its members (the creator as its owner,
    /// everyone else as members) and the default settings, or reports that
    /// its id is taken. Idempotent for a given `NewConversation`.
    pub async fn create_conversation(
        &self,
        new: &NewConversation,
    ) -> Result<CreateOutcome, CassandraError> {
        self.create_conversation_with(new, HistoryVisibility::default())
            .await
    }

    /// [`Self::create_conversation`] with a history visibility.
    pub async fn create_conversation_with(
        &self,
        new: &NewConversation,
        history_visibility: HistoryVisibility,
    ) -> Result<CreateOutcome, CassandraError> {
        let statements = &self.inner.statements;
        let mut members: Vec<UserId> = Vec::with_capacity(new.members.len() + 1);
        let mut seen = BTreeSet::new();
        for member in std::iter::once(&new.created_by).chain(new.members.iter()) {
            if seen.insert(member.clone()) {
                members.push(member.clone());
            }
        }
        let created_at = new.created_at_ms as i64;
        for chunk in members.chunks(MEMBERS_PER_BATCH) {
            let mut batch = Batch::new(BatchType::Logged);
            batch.set_is_idempotent(true);
            let mut values: Vec<Vec<CqlValue>> = Vec::with_capacity(chunk.len() * 2);
            for member in chunk {
                let role = if *member == new.created_by {
                    Role::Owner
                } else {
                    Role::Member
                };
                batch.append_statement(statements.insert_member.clone());
                values.push(vec![
                    CqlValue::Text(new.conversation_id.as_str().to_owned()),
                    CqlValue::Text(member.as_str().to_owned()),
                    CqlValue::BigInt(created_at),
                    CqlValue::Text(new.created_by.as_str().to_owned()),
                    CqlValue::Text(role.as_str().to_owned()),
                ]);
                batch.append_statement(statements.insert_user_conversation.clone());
                values.push(vec![
                    CqlValue::Text(member.as_str().to_owned()),
                    CqlValue::Text(new.conversation_id.as_str().to_owned()),
                    CqlValue::BigInt(created_at),
                ]);
            }
            self.inner.session.batch(&batch, values).await?;
        }
        let first_bucket = first_bucket_for_creation(new.created_at_ms);
        let result = self
            .inner
            .session
            .execute_unpaged(
                &statements.insert_conversation_if_absent,
                (
                    new.conversation_id.as_str(),
                    new.title.as_deref(),
                    created_at,
                    new.created_by.as_str(),
                    first_bucket,
                    history_visibility.as_str(),
                ),
            )
            .await?;
        if lwt_applied(result)? {
            return Ok(CreateOutcome::Created {
                conversation: Conversation {
                    conversation_id: new.conversation_id.clone(),
                    title: new.title.clone(),
                    created_at_ms: new.created_at_ms,
                    created_by: new.created_by.clone(),
                    first_bucket,
                    history_visibility,
                },
                members,
            });
        }
        match self.conversation(&new.conversation_id).await? {
            Some(existing) => Ok(CreateOutcome::AlreadyExists(existing)),
            None => Err(CassandraError::Decode(format!(
                "conversation {} reported as existing but not found",
                new.conversation_id
            ))),
        }
    }

    /// The conversation's row, or `None` if it does not exist.
    pub async fn conversation(
        &self,
        conversation: &ConversationId,
    ) -> Result<Option<Conversation>, CassandraError> {
        let rows = self
            .inner
            .session
            .execute_unpaged(
                &self.inner.statements.select_conversation,
                (conversation.as_str(),),
            )
            .await?
            .into_rows_result()?;
        match rows.maybe_first_row::<ConversationRow>() {
            Ok(Some(row)) => decode_conversation(row).map(Some),
            Ok(None) => Ok(None),
            Err(error) => Err(CassandraError::Decode(error.to_string())),
        }
    }

    /// Adds `user` as a plain member, joining now. Writing a member again
    /// resets their role and join time: callers that must keep them check
    /// [`Self::member`] first (the API does).
    pub async fn add_member(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        added_by: &UserId,
        now_ms: u64,
    ) -> Result<(), CassandraError> {
        let statements = &self.inner.statements;
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_is_idempotent(true);
        batch.append_statement(statements.insert_member.clone());
        batch.append_statement(statements.insert_user_conversation.clone());
        let now = now_ms as i64;
        self.inner
            .session
            .batch(
                &batch,
                (
                    (
                        conversation.as_str(),
                        user.as_str(),
                        now,
                        added_by.as_str(),
                        Role::Member.as_str(),
                    ),
                    (user.as_str(), conversation.as_str(), now),
                ),
            )
            .await?;
        Ok(())
    }

    /// Removes `user` (idempotent).
    pub async fn remove_member(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<(), CassandraError> {
        let statements = &self.inner.statements;
        let mut batch = Batch::new(BatchType::Logged);
        batch.set_is_idempotent(true);
        batch.append_statement(statements.delete_member.clone());
        batch.append_statement(statements.delete_user_conversation.clone());
        self.inner
            .session
            .batch(
                &batch,
                (
                    (conversation.as_str(), user.as_str()),
                    (user.as_str(), conversation.as_str()),
                ),
            )
            .await?;
        Ok(())
    }

    /// How many members `conversation` has.
    pub async fn member_count(&self, conversation: &ConversationId) -> Result<u64, CassandraError> {
        let rows = self
            .inner
            .session
            .execute_unpaged(
                &self.inner.statements.count_members,
                (conversation.as_str(),),
            )
            .await?
            .into_rows_result()?;
        let (count,) = rows
            .single_row::<(i64,)>()
            .map_err(|error| CassandraError::Decode(error.to_string()))?;
        Ok(count.max(0) as u64)
    }

    /// The `(conversation, joined_at)` entries of `user`, in id order,
    /// including any left over from a failed creation (whose
    /// [`Self::summary`] is `None`).
    pub async fn user_conversation_entries(
        &self,
        user: &UserId,
    ) -> Result<Vec<(ConversationId, u64)>, CassandraError> {
        let mut rows = self
            .inner
            .session
            .execute_iter(
                self.inner.statements.select_user_conversations.clone(),
                (user.as_str(),),
            )
            .await?
            .rows_stream::<(String, Option<i64>)>()
            .map_err(|error| CassandraError::Decode(error.to_string()))?;
        let mut entries = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let (raw, joined_at) = row;
            let conversation = ConversationId::parse(raw)
                .map_err(|error| CassandraError::InvalidData(error.to_string()))?;
            entries.push((conversation, joined_at.unwrap_or(0).max(0) as u64));
        }
        Ok(entries)
    }

    /// The conversations `user` is a member of, with titles and member
    /// counts, in conversation id order.
    pub async fn list_conversations(
        &self,
        user: &UserId,
    ) -> Result<Vec<ConversationSummary>, CassandraError> {
        let entries = self.user_conversation_entries(user).await?;
        let lookups: Vec<_> = entries
            .into_iter()
            .map(|(conversation_id, joined_at_ms)| {
                self.summary(user, conversation_id, joined_at_ms)
            })
            .collect();
        let summaries: Vec<Option<ConversationSummary>> = futures::stream::iter(lookups)
            .buffered(LISTING_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(summaries.into_iter().flatten().collect())
    }

    /// One entry of `user`'s conversation list: the conversation's row,
    /// its member count and `user`'s role; `None` when the conversation
    /// does not exist or `user` is not a member.
    pub async fn summary(
        &self,
        user: &UserId,
        conversation_id: ConversationId,
        joined_at_ms: u64,
    ) -> Result<Option<ConversationSummary>, CassandraError> {
        let (conversation, member_count, row) = futures::try_join!(
            self.conversation(&conversation_id),
            self.member_count(&conversation_id),
            self.member_row(&conversation_id, user)
        )?;
        let (Some(conversation), Some(row)) = (conversation, row) else {
            return Ok(None);
        };
        let member = decode_member(row, &conversation.created_by)?;
        Ok(Some(ConversationSummary {
            conversation,
            member_count,
            joined_at_ms,
            role: member.role,
        }))
    }

    /// The conversations `user` may read and from when (see
    /// [`MembershipStore::readable_conversations`]).
    async fn readable_entries(
        &self,
        user: &UserId,
    ) -> Result<Vec<ReadableConversation>, CassandraError> {
        let entries = self.user_conversation_entries(user).await?;
        let lookups: Vec<_> = entries
            .into_iter()
            .map(|(conversation_id, joined_at_ms)| async move {
                let row = self.conversation(&conversation_id).await?;
                Ok::<_, CassandraError>(row.map(|row| ReadableConversation {
                    visible_from_ms: row.history_visibility.visible_from_ms(joined_at_ms),
                    conversation_id,
                }))
            })
            .collect();
        let readable: Vec<Option<ReadableConversation>> = futures::stream::iter(lookups)
            .buffered(LISTING_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(readable.into_iter().flatten().collect())
    }

    async fn member_row(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<Option<MemberRow>, CassandraError> {
        let rows = self
            .inner
            .session
            .execute_unpaged(
                &self.inner.statements.select_member,
                (conversation.as_str(), user.as_str()),
            )
            .await?
            .into_rows_result()?;
        rows.maybe_first_row::<MemberRow>()
            .map_err(|error| CassandraError::Decode(error.to_string()))
    }

    /// `user`'s membership of `conversation` (role, join time), or `None`
    /// when not a member.
    pub async fn member(
        &self,
        conversation: &Conversation,
        user: &UserId,
    ) -> Result<Option<Member>, CassandraError> {
        self.member_row(&conversation.conversation_id, user)
            .await?
            .map(|row| decode_member(row, &conversation.created_by))
            .transpose()
    }

    /// The conversation's row and `user`'s membership of it, read at once
    /// (one round trip of latency): `None` when the conversation does not
    /// exist, `Some((row, None))` when `user` is not a member.
    pub async fn conversation_with_member(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<Option<(Conversation, Option<Member>)>, CassandraError> {
        let (row, member) = futures::try_join!(
            self.conversation(conversation),
            self.member_row(conversation, user)
        )?;
        let Some(row) = row else {
            return Ok(None);
        };
        let member = member
            .map(|member| decode_member(member, &row.created_by))
            .transpose()?;
        Ok(Some((row, member)))
    }

    /// Up to `limit` members in user id order, after `after` (exclusive).
    pub async fn members_page(
        &self,
        conversation: &Conversation,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Vec<Member>, CassandraError> {
        let rows = self
            .inner
            .session
            .execute_unpaged(
                &self.inner.statements.select_member_page,
                (
                    conversation.conversation_id.as_str(),
                    after.map_or("", UserId::as_str),
                    i32::try_from(limit).unwrap_or(i32::MAX),
                ),
            )
            .await?
            .into_rows_result()?;
        let mut members = Vec::with_capacity(limit);
        for row in rows.rows::<MemberRow>()? {
            let row = row.map_err(|error| CassandraError::Decode(error.to_string()))?;
            members.push(decode_member(row, &conversation.created_by)?);
        }
        Ok(members)
    }

    /// How many members and owners `conversation` has. Reads every member
    /// row: meant for the rare decisions that need it (an owner leaving or
    /// stepping down), not for every request.
    pub async fn headcount(
        &self,
        conversation: &Conversation,
    ) -> Result<Headcount, CassandraError> {
        Ok(self.owner_census(conversation).await?.headcount)
    }

    /// [`Self::headcount`], with every owner's row as stored.
    pub async fn owner_census(
        &self,
        conversation: &Conversation,
    ) -> Result<OwnerCensus, CassandraError> {
        let mut rows = self
            .inner
            .session
            .execute_iter(
                self.inner.statements.select_member_roles.clone(),
                (conversation.conversation_id.as_str(),),
            )
            .await?
            .rows_stream::<MemberRow>()
            .map_err(|error| CassandraError::Decode(error.to_string()))?;
        let mut census = OwnerCensus {
            headcount: Headcount {
                owners: 0,
                members: 0,
            },
            owners: Vec::new(),
        };
        while let Some(row) = rows.try_next().await? {
            census.headcount.members += 1;
            let (stored_role, added_at) = (row.1.clone(), row.2);
            let member = decode_member(row, &conversation.created_by)?;
            if member.role == Role::Owner {
                census.headcount.owners += 1;
                census.owners.push(StoredMember {
                    member,
                    stored_role,
                    added_at,
                });
            }
        }
        Ok(census)
    }

    /// Takes the owner role from `owner` (gives it `to`), only while both
    /// `owner` and `witness`, another owner, are stored exactly as read:
    /// one conditional batch on the conversation's membership partition,
    /// so two such changes never both pass on the strength of each other.
    /// Whatever the interleaving, the last change to apply saw its witness
    /// still an owner, and no later change took that role away: a group
    /// whose owners change only through here keeps one. False (nothing
    /// written) when either row changed since it was read.
    pub async fn take_owner_role(
        &self,
        conversation: &ConversationId,
        owner: &StoredMember,
        to: Role,
        witness: &StoredMember,
    ) -> Result<bool, CassandraError> {
        debug_assert_ne!(owner.member.user_id, witness.member.user_id);
        debug_assert_ne!(to, Role::Owner);
        let statement = &self.inner.statements.update_role_if_unchanged;
        let mut batch = Batch::new(BatchType::Logged);
        batch.append_statement(statement.clone());
        batch.append_statement(statement.clone());
        // The witness keeps its role; writing it also materialises the
        // owner role of a row that predates roles.
        let result = self
            .inner
            .session
            .batch(
                &batch,
                (
                    (
                        to.as_str(),
                        conversation.as_str(),
                        owner.member.user_id.as_str(),
                        owner.added_at,
                        owner.stored_role.as_deref(),
                    ),
                    (
                        Role::Owner.as_str(),
                        conversation.as_str(),
                        witness.member.user_id.as_str(),
                        witness.added_at,
                        witness.stored_role.as_deref(),
                    ),
                ),
            )
            .await?;
        lwt_applied(result)
    }

    /// Gives member `user` the role `role`; false (and nothing written)
    /// when `user` is not a member.
    pub async fn set_role(
        &self,
        conversation: &ConversationId,
        user: &UserId,
        role: Role,
    ) -> Result<bool, CassandraError> {
        let result = self
            .inner
            .session
            .execute_unpaged(
                &self.inner.statements.update_role_if_member,
                (role.as_str(), conversation.as_str(), user.as_str()),
            )
            .await?;
        lwt_applied(result)
    }

    /// Sets the conversation's history visibility; false when it does not
    /// exist.
    pub async fn set_history_visibility(
        &self,
        conversation: &ConversationId,
        history_visibility: HistoryVisibility,
    ) -> Result<bool, CassandraError> {
        let result = self
            .inner
            .session
            .execute_unpaged(
                &self.inner.statements.update_history_visibility_if_exists,
                (history_visibility.as_str(), conversation.as_str()),
            )
            .await?;
        lwt_applied(result)
    }

    async fn member_ids(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<UserId>, CassandraError> {
        let mut rows = self
            .inner
            .session
            .execute_iter(
                self.inner.statements.select_members.clone(),
                (conversation.as_str(),),
            )
            .await?
            .rows_stream::<(String,)>()
            .map_err(|error| CassandraError::Decode(error.to_string()))?;
        let mut members = Vec::new();
        while let Some((raw,)) = rows.try_next().await? {
            members.push(parse_user(raw)?);
        }
        Ok(members)
    }

    async fn is_member_now(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<bool, CassandraError> {
        Ok(self.member_row(conversation, user).await?.is_some())
    }
}

/// Whether a lightweight transaction applied (its first column,
/// `[applied]`).
pub(crate) fn lwt_applied(
    result: scylla::response::query_result::QueryResult,
) -> Result<bool, CassandraError> {
    let rows = result.into_rows_result()?;
    let row = rows
        .first_row::<scylla::value::Row>()
        .map_err(|error| CassandraError::Decode(error.to_string()))?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(applied))) => Ok(*applied),
        other => Err(CassandraError::Decode(format!(
            "LWT result without [applied]: {other:?}"
        ))),
    }
}

impl MembershipStore for CassandraStore {
    async fn is_member(
        &self,
        conversation: &ConversationId,
        user: &UserId,
    ) -> Result<bool, StoreError> {
        Ok(self.is_member_now(conversation, user).await?)
    }

    async fn members(
        &self,
        conversation: &ConversationId,
    ) -> Result<Option<Vec<UserId>>, StoreError> {
        let (row, members) = futures::try_join!(
            self.conversation(conversation),
            self.member_ids(conversation)
        )?;
        Ok(row.map(|_| members))
    }

    async fn conversations_of(&self, user: &UserId) -> Result<Vec<ConversationId>, StoreError> {
        let entries = self.user_conversation_entries(user).await?;
        Ok(entries
            .into_iter()
            .map(|(conversation, _)| conversation)
            .collect())
    }

    async fn readable_conversations(
        &self,
        user: &UserId,
    ) -> Result<Vec<ReadableConversation>, StoreError> {
        Ok(self.readable_entries(user).await?)
    }
}
