//! `POST /v1/conversations`, `GET /v1/conversations`,
//! `POST /v1/conversations/{id}/members`,
//! `DELETE /v1/conversations/{id}/members/{user_id}`.
//!
//! Membership changes are written to Cassandra first, then published as a
//! `MembershipRecord` to the membership topic, keyed by conversation id, and
//! the call answers only once Kafka confirmed (`acks=all`). If publishing
//! fails the call answers 503 and may simply be retried: every change is
//! idempotent, and a retried add or remove publishes its record again.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use chatpipe_cassandra::{CreateOutcome, NewConversation};
use chatpipe_core::ids::{ConversationId, UserId};
use chatpipe_core::records::{MembershipChange, MembershipRecord, SCHEMA_VERSION};
use chatpipe_core::store::MembershipStore;
use chatpipe_core::time::now_unix_ms;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParams};
use crate::state::ApiState;

#[derive(Debug, Deserialize)]
pub struct CreateConversationRequest {
    /// The other members (the caller is always added).
    pub members: Vec<UserId>,
    #[serde(default)]
    pub title: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateConversationResponse {
    pub conversation_id: ConversationId,
    /// `false` when the 1:1 conversation of these two users existed already.
    pub created: bool,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConversationView {
    pub conversation_id: ConversationId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub member_count: u64,
    pub created_at: u64,
    pub created_by: UserId,
    pub joined_at: u64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConversationList {
    pub conversations: Vec<ConversationView>,
}

#[derive(Debug, Deserialize)]
pub struct AddMemberRequest {
    pub user_id: UserId,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberView {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
}

/// The id of the 1:1 conversation of two users: the same whoever creates
/// it, so asking again returns the existing one. A hash keeps it within the
/// 64-byte id limit whatever the user ids.
pub fn direct_conversation_id(first: &UserId, second: &UserId) -> ConversationId {
    let (low, high) = if first <= second {
        (first, second)
    } else {
        (second, first)
    };
    let mut hasher = Sha256::new();
    hasher.update(b"chatpipe-dm\0");
    hasher.update(low.as_str().as_bytes());
    hasher.update(b"\0");
    hasher.update(high.as_str().as_bytes());
    let digest = hasher.finalize();
    let hex: String = digest[..20]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    ConversationId::parse(format!("dm-{hex}")).expect("dm- plus hex is a valid conversation id")
}

pub(crate) fn parse_conversation_id(raw: String) -> Result<ConversationId, ApiError> {
    ConversationId::parse(raw)
        .map_err(|error| ApiError::Invalid(format!("conversation id: {error}")))
}

async fn publish(
    state: &ApiState,
    conversation: &ConversationId,
    actor: &UserId,
    change: MembershipChange,
) -> Result<(), ApiError> {
    let record = MembershipRecord {
        schema_version: SCHEMA_VERSION,
        conversation_id: conversation.clone(),
        change,
        actor_id: actor.clone(),
        ts: now_unix_ms(),
    };
    state
        .producer
        .send_json(
            &state.topics.membership,
            conversation.as_str(),
            &record,
            Duration::from_millis(state.config.kafka_send_timeout_ms),
        )
        .await?;
    state.metrics.membership_records.inc();
    Ok(())
}

/// What every route answers when the caller may not see a conversation,
/// whether it exists or not: one status and one text, so an outsider cannot
/// tell an existing conversation (a computable `dm-` id, say) from an
/// unknown one.
pub const CONVERSATION_NOT_FOUND: &str = "conversation not found";

/// The error for a conversation the caller is not in or that does not exist.
pub fn conversation_not_found() -> ApiError {
    ApiError::NotFound(CONVERSATION_NOT_FOUND.to_owned())
}

/// Whether a conversation is a 1:1: only [`direct_conversation_id`] makes
/// `dm-` ids (groups get `c-`), and a 1:1 has fixed membership.
pub fn is_direct(conversation: &ConversationId) -> bool {
    conversation.as_str().starts_with("dm-")
}

/// The conversation, when `user` is a member; otherwise (unknown, or not a
/// member) 404 with [`CONVERSATION_NOT_FOUND`].
pub(crate) async fn require_member(
    state: &ApiState,
    conversation: &ConversationId,
    user: &UserId,
) -> Result<chatpipe_cassandra::Conversation, ApiError> {
    let (row, member) = futures::try_join!(
        async {
            state
                .store
                .conversation(conversation)
                .await
                .map_err(ApiError::from)
        },
        async {
            state
                .store
                .is_member(conversation, user)
                .await
                .map_err(ApiError::from)
        },
    )?;
    match row {
        Some(row) if member => Ok(row),
        _ => Err(conversation_not_found()),
    }
}

/// Who may change whose membership: members see the conversation at all
/// (outsiders were answered 404 before this), anyone may leave, a 1:1 has
/// fixed membership, and only the owner removes others. The store has no
/// role column yet, so the owner is the creator (`created_by`).
pub fn check_membership_change(
    conversation: &chatpipe_cassandra::Conversation,
    caller: &UserId,
    change: &MembershipChange,
) -> Result<(), ApiError> {
    let direct = is_direct(&conversation.conversation_id);
    match change {
        MembershipChange::Removed { user_id } if user_id == caller => Ok(()),
        MembershipChange::Added { .. } | MembershipChange::Removed { .. } if direct => Err(
            ApiError::Forbidden("a 1:1 conversation has fixed membership".to_owned()),
        ),
        MembershipChange::Removed { .. } if *caller != conversation.created_by => {
            Err(ApiError::Forbidden(
                "only the conversation's owner may remove other members".to_owned(),
            ))
        }
        _ => Ok(()),
    }
}

/// `POST /v1/conversations`: 201 with the new id; for a 1:1 conversation
/// (exactly two distinct users, no title) that exists already, 200 with its
/// id.
pub async fn create_conversation(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    JsonBody(request): JsonBody<CreateConversationRequest>,
) -> Result<(StatusCode, Json<CreateConversationResponse>), ApiError> {
    let max_members = state.config.max_members_per_request;
    if request.members.len() > max_members {
        return Err(ApiError::TooLarge(format!(
            "at most {max_members} members per request"
        )));
    }
    let title = request.title.filter(|title| !title.trim().is_empty());
    if let Some(title) = &title {
        let max_chars = state.config.max_title_chars;
        if title.chars().count() > max_chars {
            return Err(ApiError::Invalid(format!(
                "title is longer than {max_chars} characters"
            )));
        }
        if title.chars().any(char::is_control) {
            return Err(ApiError::Invalid(
                "title must not contain control characters".to_owned(),
            ));
        }
    }
    let mut seen = BTreeSet::from([caller.clone()]);
    let mut members = vec![caller.clone()];
    for member in request.members {
        if seen.insert(member.clone()) {
            members.push(member);
        }
    }
    let direct = members.len() == 2 && title.is_none();
    let conversation_id = if direct {
        direct_conversation_id(&members[0], &members[1])
    } else {
        parse_conversation_id(format!("c-{}", uuid::Uuid::new_v4().simple()))?
    };
    if direct && state.store.conversation(&conversation_id).await?.is_some() {
        return Ok((
            StatusCode::OK,
            Json(CreateConversationResponse {
                conversation_id,
                created: false,
            }),
        ));
    }
    let outcome = state
        .store
        .create_conversation(&NewConversation {
            conversation_id: conversation_id.clone(),
            title: title.clone(),
            created_by: caller.clone(),
            members,
            created_at_ms: now_unix_ms(),
        })
        .await?;
    match outcome {
        CreateOutcome::Created { members, .. } => {
            publish(
                &state,
                &conversation_id,
                &caller,
                MembershipChange::Created { members, title },
            )
            .await?;
            tracing::info!(conversation = %conversation_id, creator = %caller, direct, "conversation created");
            Ok((
                StatusCode::CREATED,
                Json(CreateConversationResponse {
                    conversation_id,
                    created: true,
                }),
            ))
        }
        // Another request created the same 1:1 conversation meanwhile.
        CreateOutcome::AlreadyExists(_) => Ok((
            StatusCode::OK,
            Json(CreateConversationResponse {
                conversation_id,
                created: false,
            }),
        )),
    }
}

/// `GET /v1/conversations`: the caller's conversations, most recently
/// joined first.
pub async fn list_conversations(
    State(state): State<ApiState>,
    Caller(caller): Caller,
) -> Result<Json<ConversationList>, ApiError> {
    let mut summaries = state.store.list_conversations(&caller).await?;
    summaries.sort_by(|left, right| {
        right.joined_at_ms.cmp(&left.joined_at_ms).then_with(|| {
            left.conversation
                .conversation_id
                .cmp(&right.conversation.conversation_id)
        })
    });
    let conversations = summaries
        .into_iter()
        .map(|summary| ConversationView {
            conversation_id: summary.conversation.conversation_id,
            title: summary.conversation.title,
            member_count: summary.member_count,
            created_at: summary.conversation.created_at_ms,
            created_by: summary.conversation.created_by,
            joined_at: summary.joined_at_ms,
        })
        .collect();
    Ok(Json(ConversationList { conversations }))
}

/// `POST /v1/conversations/{id}/members`: members of a group may add
/// anyone; 200 (also when the user was a member already). Outsiders get
/// 404, a 1:1 conversation 403 (fixed membership).
pub async fn add_member(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathParams(raw_id): PathParams<String>,
    JsonBody(request): JsonBody<AddMemberRequest>,
) -> Result<Json<MemberView>, ApiError> {
    let conversation = parse_conversation_id(raw_id)?;
    let row = require_member(&state, &conversation, &caller).await?;
    check_membership_change(
        &row,
        &caller,
        &MembershipChange::Added {
            user_id: request.user_id.clone(),
        },
    )?;
    state
        .store
        .add_member(&conversation, &request.user_id, &caller, now_unix_ms())
        .await?;
    publish(
        &state,
        &conversation,
        &caller,
        MembershipChange::Added {
            user_id: request.user_id.clone(),
        },
    )
    .await?;
    tracing::info!(conversation = %conversation, user = %request.user_id, actor = %caller, "member added");
    Ok(Json(MemberView {
        conversation_id: conversation,
        user_id: request.user_id,
    }))
}

/// `DELETE /v1/conversations/{id}/members/{user_id}`: anyone may remove
/// themselves (leave); only the owner removes others, and never in a 1:1.
/// 204. Outsiders, a caller leaving a conversation they are not in
/// included, get 404 and nothing is published.
///
/// Unlike an add, the record is published *before* the Cassandra delete:
/// a retry must find the caller still a member (or it would be a 404 and
/// the record would never go out), and when one of the two fails the
/// failure errs towards taking access away, not keeping it.
pub async fn remove_member(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathParams((raw_id, raw_user)): PathParams<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let conversation = parse_conversation_id(raw_id)?;
    let user =
        UserId::parse(raw_user).map_err(|error| ApiError::Invalid(format!("user id: {error}")))?;
    let row = require_member(&state, &conversation, &caller).await?;
    let change = MembershipChange::Removed {
        user_id: user.clone(),
    };
    check_membership_change(&row, &caller, &change)?;
    publish(&state, &conversation, &caller, change).await?;
    state.store.remove_member(&conversation, &user).await?;
    tracing::info!(conversation = %conversation, user = %user, actor = %caller, "member removed");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_ids_do_not_depend_on_who_asks() {
        let alice = UserId::parse("alice").unwrap();
        let bob = UserId::parse("bob").unwrap();
        let carol = UserId::parse("carol").unwrap();
        assert_eq!(
            direct_conversation_id(&alice, &bob),
            direct_conversation_id(&bob, &alice)
        );
        assert_ne!(
            direct_conversation_id(&alice, &bob),
            direct_conversation_id(&alice, &carol)
        );
        let long = UserId::parse("x".repeat(64)).unwrap();
        assert!(direct_conversation_id(&long, &alice).as_str().len() <= ConversationId::MAX_LEN);
    }

    fn conversation(id: &str, created_by: &UserId) -> chatpipe_cassandra::Conversation {
        chatpipe_cassandra::Conversation {
            conversation_id: ConversationId::parse(id).unwrap(),
            title: None,
            created_at_ms: 1,
            created_by: created_by.clone(),
            first_bucket: 0,
        }
    }

    #[test]
    fn only_the_owner_removes_others_anyone_leaves_and_a_dm_is_fixed() {
        let owner = UserId::parse("owner").unwrap();
        let member = UserId::parse("member").unwrap();
        let newcomer = UserId::parse("newcomer").unwrap();
        let group = conversation("c-1", &owner);
        let dm = conversation(direct_conversation_id(&owner, &member).as_str(), &owner);
        let added = |user: &UserId| MembershipChange::Added {
            user_id: user.clone(),
        };
        let removed = |user: &UserId| MembershipChange::Removed {
            user_id: user.clone(),
        };
        let allowed = |row, caller, change| check_membership_change(row, caller, &change).is_ok();
        // Groups: members add, the owner removes, everyone leaves.
        assert!(allowed(&group, &member, added(&newcomer)));
        assert!(allowed(&group, &owner, removed(&member)));
        assert!(allowed(&group, &member, removed(&member)));
        assert!(allowed(&group, &owner, removed(&owner)));
        assert!(!allowed(&group, &member, removed(&owner)));
        assert!(!allowed(&group, &member, removed(&newcomer)));
        // 1:1: nobody adds or removes the other side; leaving stays possible.
        assert!(!allowed(&dm, &member, added(&newcomer)));
        assert!(!allowed(&dm, &owner, added(&newcomer)));
        assert!(!allowed(&dm, &owner, removed(&member)));
        assert!(allowed(&dm, &member, removed(&member)));
        assert!(matches!(
            check_membership_change(&dm, &member, &added(&newcomer)),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            conversation_not_found(),
            ApiError::NotFound(message) if message == CONVERSATION_NOT_FOUND
        ));
    }
}
