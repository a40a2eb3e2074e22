//! `POST /v1/conversations` (the listing, `GET`, is the inbox: see
//! [`crate::inbox`]),
//! `PATCH /v1/conversations/{id}` (settings),
//! `GET /v1/conversations/{id}/members`,
//! `POST /v1/conversations/{id}/members`,
//! `PATCH /v1/conversations/{id}/members/{user_id}` (roles),
//! `DELETE /v1/conversations/{id}/members/{user_id}`.
//!
//! Who may do what is decided by
//! [`chatpipe_core::membership::decide`] (owners, admins, members; see
//! that module); this module reads what the decision needs, maps refusals
//! to 403 and 409, and writes what was allowed.
//!
//! A change that takes the owner role from someone (an owner leaving,
//! stepping down, demoted or removed) is made by
//! [`CassandraStore::take_owner_role`](chatpipe_cassandra::CassandraStore::take_owner_role):
//! a lightweight transaction that applies only while another owner is
//! still one, so two owners leaving at once (through any number of API
//! processes) never leave a group with members but no owner; the one that
//! loses the race reads again and gets 409. Other changes take no
//! transaction.
//!
//! Membership changes are written to Cassandra first, then published as a
//! `MembershipRecord` to the membership topic, keyed by conversation id, and
//! the call answers only once Kafka confirmed (`acks=all`). If publishing
//! fails the call answers 503 and may simply be retried: every change is
//! idempotent, and a retried add, remove or role change publishes its
//! record again.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use chatpipe_cassandra::{Conversation, CreateOutcome, Member, NewConversation, OwnerCensus};
use chatpipe_core::ids::{ConversationId, UserId};
use chatpipe_core::membership::{
    Action, ConversationKind, HistoryVisibility, Refusal, Role, decide,
};
use chatpipe_core::records::{MembershipChange, MembershipRecord, SCHEMA_VERSION};
use chatpipe_core::time::now_unix_ms;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{JsonBody, PathParams, QueryParams};
use crate::member_cap::conversation_full;
use crate::state::ApiState;

/// Members per `GET …/members` page when `limit` is not given.
pub const MEMBERS_DEFAULT_LIMIT: usize = 100;
/// Largest `GET …/members` page; a larger `limit` is lowered to it.
pub const MEMBERS_MAX_LIMIT: usize = 1_000;

#[derive(Debug, Deserialize)]
pub struct CreateConversationRequest {
    /// The other members (the caller is always added).
    pub members: Vec<UserId>,
    #[serde(default)]
    pub title: Option<String>,
    /// Which messages newcomers see; `shared` when absent.
    #[serde(default)]
    pub history_visibility: Option<HistoryVisibility>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateConversationResponse {
    pub conversation_id: ConversationId,
    /// `false` when the 1:1 conversation of these two users existed already.
    pub created: bool,
}

#[derive(Debug, Deserialize)]
pub struct AddMemberRequest {
    pub user_id: UserId,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberView {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub role: Role,
}

/// `PATCH /v1/conversations/{id}/members/{user_id}`.
#[derive(Debug, Deserialize)]
pub struct SetRoleRequest {
    pub role: Role,
}

/// `PATCH /v1/conversations/{id}`: the settings to change (at least one).
#[derive(Debug, Deserialize)]
pub struct UpdateConversationRequest {
    #[serde(default)]
    pub history_visibility: Option<HistoryVisibility>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConversationSettingsView {
    pub conversation_id: ConversationId,
    pub history_visibility: HistoryVisibility,
}

/// The raw query of `GET …/members`; checked by hand for useful 400s.
#[derive(Debug, Default, Deserialize)]
pub struct MemberListParams {
    pub after: Option<String>,
    pub limit: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberEntry {
    pub user_id: UserId,
    pub role: Role,
    /// When the member (last) joined, unix ms.
    pub joined_at: u64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberList {
    pub conversation_id: ConversationId,
    /// In user id order.
    pub members: Vec<MemberEntry>,
    /// Cursor of the next page (`after=`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<UserId>,
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

fn parse_user_id(raw: String) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|error| ApiError::Invalid(format!("user id: {error}")))
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

/// The answer, to a member, about a user who is not a member.
fn not_a_member(user: &UserId) -> ApiError {
    ApiError::NotFound(format!("{user} is not a member of this conversation"))
}

/// Whether a conversation is a 1:1: only [`direct_conversation_id`] makes
/// `dm-` ids (groups get `c-`), and a 1:1 has fixed membership.
pub fn is_direct(conversation: &ConversationId) -> bool {
    conversation.as_str().starts_with("dm-")
}

fn kind_of(conversation: &ConversationId) -> ConversationKind {
    if is_direct(conversation) {
        ConversationKind::Direct
    } else {
        ConversationKind::Group
    }
}

/// The HTTP answer to a refused membership change.
pub fn refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Forbidden(message) => ApiError::Forbidden(message.to_owned()),
        Refusal::Conflict(message) => ApiError::Conflict(message.to_owned()),
    }
}

/// A conversation and the caller's membership of it.
#[derive(Debug, Clone)]
pub(crate) struct MemberOf {
    pub conversation: Conversation,
    pub member: Member,
}

impl MemberOf {
    /// The oldest message id the member may read (their join time, in a
    /// conversation whose history visibility is `joined`).
    pub fn visible_from(&self) -> Option<chatpipe_core::ids::MessageId> {
        self.conversation
            .history_visibility
            .visible_from_ms(self.member.joined_at_ms)
            .map(chatpipe_core::ids::MessageId::lower_bound_for_unix_ms)
    }
}

/// The headcount passed to decisions that do not depend on it (only taking
/// the owner role does, and reads it in [`take_owner_role`]): one that no
/// rule can fall short of, so the store is not read.
const NOT_COUNTED: chatpipe_core::membership::Headcount = chatpipe_core::membership::Headcount {
    owners: u64::MAX,
    members: u64::MAX,
};

/// The conversation and the caller's membership, when `user` is a member;
/// otherwise (unknown, or not a member) 404 with
/// [`CONVERSATION_NOT_FOUND`].
pub(crate) async fn require_member(
    state: &ApiState,
    conversation: &ConversationId,
    user: &UserId,
) -> Result<MemberOf, ApiError> {
    match state
        .store
        .conversation_with_member(conversation, user)
        .await?
    {
        Some((row, Some(member))) => Ok(MemberOf {
            conversation: row,
            member,
        }),
        _ => Err(conversation_not_found()),
    }
}

/// Attempts at a guarded owner change before answering 409: each lost
/// race means another owner change applied in between, so a few suffice.
const OWNER_CHANGE_ATTEMPTS: usize = 3;

/// What [`take_owner_role`] did.
enum OwnerChange {
    /// `user` is no longer an owner (now `to`).
    Taken,
    /// Nothing guarded was needed: `user` is not an owner (any more), or
    /// is the conversation's only member; the caller writes as usual.
    Unguarded,
}

/// Takes the owner role from `user` (gives `to`) if `allowed` by the
/// headcount read for it, serialised with every other owner change of the
/// conversation (see the module doc). Lost races are read again, then
/// answered 409.
async fn take_owner_role(
    state: &ApiState,
    conversation: &Conversation,
    user: &UserId,
    to: Role,
    allowed: impl Fn(OwnerCensus) -> Result<(), ApiError>,
) -> Result<OwnerChange, ApiError> {
    for _ in 0..OWNER_CHANGE_ATTEMPTS {
        let census = state.store.owner_census(conversation).await?;
        let owner = census.owner(user).cloned();
        let witness = census.other_owner(user).cloned();
        let alone = census.headcount.members <= 1;
        allowed(census)?;
        let Some(owner) = owner else {
            return Ok(OwnerChange::Unguarded);
        };
        let Some(witness) = witness else {
            if alone {
                return Ok(OwnerChange::Unguarded);
            }
            // `allowed` lets the last owner of a group with others go
            // nowhere; refuse rather than write unguarded.
            return Err(ApiError::Conflict(
                "the last owner cannot give up ownership while others remain".into(),
            ));
        };
        if state
            .store
            .take_owner_role(&conversation.conversation_id, &owner, to, &witness)
            .await?
        {
            return Ok(OwnerChange::Taken);
        }
        tracing::debug!(conversation = %conversation.conversation_id, user = %user, "owner change lost a race; reading again");
    }
    Err(ApiError::Conflict(
        "the conversation's owners changed at the same time; retry".into(),
    ))
}

/// Decides `action` for the caller.
fn decide_for(caller: &MemberOf, action: Action) -> Result<(), ApiError> {
    decide(
        kind_of(&caller.conversation.conversation_id),
        caller.member.role,
        action,
    )
    .map_err(refused)
}

/// `POST /v1/conversations`: 201 with the new id; for a 1:1 conversation
/// (exactly two distinct users, no title) that exists already, 200 with its
/// id. The caller becomes the owner; `history_visibility` is `shared`
/// unless asked otherwise.
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
    let cap = state.member_cap.max_members();
    if members.len() as u64 > cap {
        return Err(conversation_full(cap));
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
    let history_visibility = request.history_visibility.unwrap_or_default();
    let outcome = state
        .store
        .create_conversation_with(
            &NewConversation {
                conversation_id: conversation_id.clone(),
                title: title.clone(),
                created_by: caller.clone(),
                members,
                created_at_ms: now_unix_ms(),
            },
            history_visibility,
        )
        .await?;
    match outcome {
        CreateOutcome::Created { members, .. } => {
            publish(
                &state,
                &conversation_id,
                &caller,
                MembershipChange::Created {
                    members,
                    title,
                    // Absent means the default, as for older records.
                    history_visibility: (history_visibility != HistoryVisibility::default())
                        .then_some(history_visibility),
                },
            )
            .await?;
            tracing::info!(conversation = %conversation_id, creator = %caller, direct, %history_visibility, "conversation created");
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

/// `PATCH /v1/conversations/{id}` `{"history_visibility"}`: owners and
/// admins of a group change its settings; 200 with the settings. Members
/// get 403, outsiders 404.
pub async fn update_conversation(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathParams(raw_id): PathParams<String>,
    JsonBody(request): JsonBody<UpdateConversationRequest>,
) -> Result<Json<ConversationSettingsView>, ApiError> {
    let conversation = parse_conversation_id(raw_id)?;
    let Some(history_visibility) = request.history_visibility else {
        return Err(ApiError::Invalid(
            "nothing to change: give history_visibility (shared or joined)".to_owned(),
        ));
    };
    let caller_membership = require_member(&state, &conversation, &caller).await?;
    decide_for(&caller_membership, Action::ChangeSettings)?;
    if !state
        .store
        .set_history_visibility(&conversation, history_visibility)
        .await?
    {
        return Err(conversation_not_found());
    }
    publish(
        &state,
        &conversation,
        &caller,
        MembershipChange::SettingsChanged { history_visibility },
    )
    .await?;
    tracing::info!(conversation = %conversation, actor = %caller, %history_visibility, "conversation settings changed");
    Ok(Json(ConversationSettingsView {
        conversation_id: conversation,
        history_visibility,
    }))
}

/// Validates `GET …/members` paging: a bad cursor or limit is 400, a
/// limit above the maximum is lowered to it.
pub fn parse_member_list_params(
    params: &MemberListParams,
) -> Result<(Option<UserId>, usize), ApiError> {
    let after = match params.after.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            UserId::parse(raw)
                .map_err(|error| ApiError::Invalid(format!("after must be a user id: {error}")))?,
        ),
    };
    let limit = match params.limit.as_deref().map(str::trim) {
        None | Some("") => MEMBERS_DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if limit > 0 => limit.min(MEMBERS_MAX_LIMIT),
            _ => {
                return Err(ApiError::Invalid(format!(
                    "limit must be a whole number from 1 to {MEMBERS_MAX_LIMIT}, got {text:?}"
                )));
            }
        },
    };
    Ok((after, limit))
}

/// `GET /v1/conversations/{id}/members?after=&limit=`: the members and
/// their roles, in user id order, for members only.
pub async fn list_members(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathParams(raw_id): PathParams<String>,
    QueryParams(params): QueryParams<MemberListParams>,
) -> Result<Json<MemberList>, ApiError> {
    let conversation = parse_conversation_id(raw_id)?;
    let (after, limit) = parse_member_list_params(&params)?;
    let caller_membership = require_member(&state, &conversation, &caller).await?;
    // One more than asked, to know whether a next page exists.
    let mut page = state
        .store
        .members_page(&caller_membership.conversation, after.as_ref(), limit + 1)
        .await?;
    let next_after = if page.len() > limit {
        page.truncate(limit);
        page.last().map(|member| member.user_id.clone())
    } else {
        None
    };
    Ok(Json(MemberList {
        conversation_id: conversation,
        members: page
            .into_iter()
            .map(|member| MemberEntry {
                user_id: member.user_id,
                role: member.role,
                joined_at: member.joined_at_ms,
            })
            .collect(),
        next_after,
    }))
}

/// `POST /v1/conversations/{id}/members`: owners and admins of a group add
/// anyone; 200 (also when the user was a member already: their role and
/// join time stay as they were). Outsiders get 404; plain members and a
/// 1:1 conversation 403; a conversation at `max_members_per_conversation`
/// 409.
pub async fn add_member(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathParams(raw_id): PathParams<String>,
    JsonBody(request): JsonBody<AddMemberRequest>,
) -> Result<Json<MemberView>, ApiError> {
    let conversation = parse_conversation_id(raw_id)?;
    let caller_membership = require_member(&state, &conversation, &caller).await?;
    let existing = state
        .store
        .member(&caller_membership.conversation, &request.user_id)
        .await?;
    decide_for(
        &caller_membership,
        Action::Add {
            target: existing.as_ref().map(|member| member.role),
        },
    )?;
    let role = match &existing {
        // Already in: writing again would reset the role and join time.
        // The record is still published, so that a retry after a failed
        // publish completes the change.
        Some(member) => member.role,
        None => {
            state
                .member_cap
                .reserve(&state.store, &conversation)
                .await?;
            let written = state
                .store
                .add_member(&conversation, &request.user_id, &caller, now_unix_ms())
                .await;
            if let Err(error) = written {
                state.member_cap.release(&conversation).await;
                return Err(error.into());
            }
            Role::Member
        }
    };
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
        role,
    }))
}

/// `PATCH /v1/conversations/{id}/members/{user_id}` `{"role"}`: owners
/// promote members to admin or owner (handing over ownership), and demote;
/// 200 with the member's role. Outsiders get 404; a user who is not a
/// member 404 (saying so); admins, members and 1:1 conversations 403; the
/// last owner stepping down 409.
pub async fn set_member_role(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathParams((raw_id, raw_user)): PathParams<(String, String)>,
    JsonBody(request): JsonBody<SetRoleRequest>,
) -> Result<Json<MemberView>, ApiError> {
    let conversation = parse_conversation_id(raw_id)?;
    let user = parse_user_id(raw_user)?;
    let caller_membership = require_member(&state, &conversation, &caller).await?;
    let target = if user == caller {
        Some(caller_membership.member.clone())
    } else {
        state
            .store
            .member(&caller_membership.conversation, &user)
            .await?
    };
    // Outsiders were answered above: only members learn who is not one.
    let Some(target) = target else {
        return Err(not_a_member(&user));
    };
    let target_is_self = user == caller;
    let decide_with = |headcount| {
        decide_for(
            &caller_membership,
            Action::SetRole {
                target: target.role,
                to: request.role,
                target_is_self,
                headcount,
            },
        )
    };
    // Taking the owner role away is guarded (and then depends on the
    // headcount); anything else is decided and written as it is.
    let change = if target.role == Role::Owner && request.role != Role::Owner {
        take_owner_role(
            &state,
            &caller_membership.conversation,
            &user,
            request.role,
            |census| decide_with(census.headcount),
        )
        .await?
    } else {
        decide_with(NOT_COUNTED)?;
        OwnerChange::Unguarded
    };
    if matches!(change, OwnerChange::Unguarded)
        && !state
            .store
            .set_role(&conversation, &user, request.role)
            .await?
    {
        // Removed between the read and the write.
        return Err(not_a_member(&user));
    }
    publish(
        &state,
        &conversation,
        &caller,
        MembershipChange::RoleChanged {
            user_id: user.clone(),
            role: request.role,
        },
    )
    .await?;
    tracing::info!(conversation = %conversation, user = %user, actor = %caller, role = %request.role, "member role changed");
    Ok(Json(MemberView {
        conversation_id: conversation,
        user_id: user,
        role: request.role,
    }))
}

/// `DELETE /v1/conversations/{id}/members/{user_id}`: anyone may remove
/// themselves (leave), except the last owner of a group with other members
/// (409: hand over first); owners remove anyone, admins plain members,
/// never in a 1:1 (403). 204. Outsiders, a caller leaving a conversation
/// they are not in included, get 404 and nothing is published.
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
    let user = parse_user_id(raw_user)?;
    let caller_membership = require_member(&state, &conversation, &caller).await?;
    let group = kind_of(&conversation) == ConversationKind::Group;
    if user == caller {
        // A group owner's leave depends on the headcount, and takes the
        // owner role first, guarded; then it is a member's leave.
        if group && caller_membership.member.role == Role::Owner {
            take_owner_role(
                &state,
                &caller_membership.conversation,
                &user,
                Role::Member,
                |census| {
                    decide_for(
                        &caller_membership,
                        Action::Leave {
                            headcount: census.headcount,
                        },
                    )
                },
            )
            .await?;
        } else {
            decide_for(
                &caller_membership,
                Action::Leave {
                    headcount: NOT_COUNTED,
                },
            )?;
        }
    } else {
        let target = state
            .store
            .member(&caller_membership.conversation, &user)
            .await?;
        let target_role = target.map(|member| member.role);
        decide_for(
            &caller_membership,
            Action::Remove {
                target: target_role,
            },
        )?;
        // Removing an owner takes their owner role first, guarded.
        if group && target_role == Some(Role::Owner) {
            take_owner_role(
                &state,
                &caller_membership.conversation,
                &user,
                Role::Member,
                |_| Ok(()),
            )
            .await?;
        }
    }
    let change = MembershipChange::Removed {
        user_id: user.clone(),
    };
    publish(&state, &conversation, &caller, change).await?;
    state.store.remove_member(&conversation, &user).await?;
    state.member_cap.forget(&conversation).await;
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

    fn membership(id: &str, created_by: &UserId, caller: &UserId, role: Role) -> MemberOf {
        MemberOf {
            conversation: Conversation {
                conversation_id: ConversationId::parse(id).unwrap(),
                title: None,
                created_at_ms: 1,
                created_by: created_by.clone(),
                first_bucket: 0,
                history_visibility: HistoryVisibility::Joined,
            },
            member: Member {
                user_id: caller.clone(),
                role,
                joined_at_ms: chatpipe_core::ids::MessageId::EPOCH_UNIX_MS + 5,
            },
        }
    }

    /// The rules themselves are tested exhaustively in
    /// `chatpipe_core::membership`; this checks how the API applies them:
    /// the kind from the id, refusals as 403 and 409.
    #[test]
    fn refusals_map_to_403_and_409_and_a_dm_is_fixed() {
        let owner = UserId::parse("owner").unwrap();
        let member = UserId::parse("member").unwrap();
        let group = membership("c-1", &owner, &member, Role::Member);
        let dm_id = direct_conversation_id(&owner, &member);
        let dm = membership(dm_id.as_str(), &owner, &owner, Role::Owner);
        assert!(matches!(
            decide_for(&group, Action::Add { target: None }),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            decide_for(&dm, Action::Add { target: None }),
            Err(ApiError::Forbidden(message)) if message.contains("1:1")
        ));
        let sole_owner = membership("c-1", &owner, &owner, Role::Owner);
        let headcount = chatpipe_core::membership::Headcount {
            owners: 1,
            members: 3,
        };
        assert!(matches!(
            decide_for(&sole_owner, Action::Leave { headcount }),
            Err(ApiError::Conflict(message)) if message.contains("owner")
        ));
        // Either side of a 1:1 leaves, the owner included.
        assert!(decide_for(&dm, Action::Leave { headcount }).is_ok());
        assert!(matches!(
            conversation_not_found(),
            ApiError::NotFound(message) if message == CONVERSATION_NOT_FOUND
        ));
    }

    #[test]
    fn a_joined_conversation_hides_what_came_before_the_member_joined() {
        let owner = UserId::parse("owner").unwrap();
        let joined = membership("c-1", &owner, &owner, Role::Owner);
        let floor = joined.visible_from().unwrap();
        assert_eq!(
            floor.unix_ms(),
            chatpipe_core::ids::MessageId::EPOCH_UNIX_MS + 5
        );
        let mut shared = joined.clone();
        shared.conversation.history_visibility = HistoryVisibility::Shared;
        assert_eq!(shared.visible_from(), None);
    }

    #[test]
    fn member_pages_are_validated_and_limits_clamped() {
        let params = |after: Option<&str>, limit: Option<&str>| MemberListParams {
            after: after.map(str::to_owned),
            limit: limit.map(str::to_owned),
        };
        assert_eq!(
            parse_member_list_params(&params(None, None)).unwrap(),
            (None, MEMBERS_DEFAULT_LIMIT)
        );
        assert_eq!(
            parse_member_list_params(&params(Some("bob"), Some("100000"))).unwrap(),
            (Some(UserId::parse("bob").unwrap()), MEMBERS_MAX_LIMIT)
        );
        for (after, limit) in [(None, Some("0")), (None, Some("ten")), (Some("a b"), None)] {
            assert!(matches!(
                parse_member_list_params(&params(after, limit)),
                Err(ApiError::Invalid(_))
            ));
        }
    }
}
