//! `GET /v1/conversations` (the inbox) and
//! `GET /v1/conversations/{id}/read-state`.
//!
//! The inbox lists the caller's conversations by **last activity**, newest
//! first: a conversation's newest message, or the caller's join time when
//! that is later (a conversation one was just added to comes first). Each
//! item carries the last message (a tombstone when it was deleted), the
//! caller's role, read marker, and unread and mention counts. Pages are
//! cut with an opaque cursor (`next_cursor`, handed back as `cursor=`).
//!
//! Cost: one read of the caller's conversation list, one `IN` read of
//! last activities per 100 conversations (to sort), then, for the page
//! only, a handful of reads per conversation (its row, role, marker, last
//! message, counts). Counts are counted here, not stored per recipient
//! (see `chatpipe_core::read_state`).
//!
//! Paging is over a snapshot of the order: a conversation whose activity
//! changes between two pages moves to the top, and a client that wants it
//! re-reads the first page (as new activity is also announced live).

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use chatpipe_cassandra::{HistoryQuery, StoredMessage};
use chatpipe_core::cursor::{decode_cursor, encode_cursor};
use chatpipe_core::ids::{ConversationId, MessageId, UserId};
use chatpipe_core::membership::{HistoryVisibility, Role};
use chatpipe_core::read_state::{CappedCount, effective_marker};
use chatpipe_core::time::now_unix_ms;

use crate::auth::Caller;
use crate::conversations::{parse_conversation_id, require_member};
use crate::error::ApiError;
use crate::extract::{PathParams, QueryParams};
use crate::state::ApiState;

/// Conversations per inbox page when `limit` is not given.
pub const INBOX_DEFAULT_LIMIT: usize = 50;
/// Largest inbox page; a larger `limit` is lowered to it.
pub const INBOX_MAX_LIMIT: usize = 200;
/// Most of a user's conversations the inbox sorts and lists: the most
/// recently joined ones when a user has more.
pub const INBOX_MAX_CONVERSATIONS: usize = 5_000;
/// Longest cursor accepted (a cursor the API hands out is far shorter).
const MAX_CURSOR_BYTES: usize = 256;
/// Page entries whose details are read at once.
const DETAIL_CONCURRENCY: usize = 16;
/// Version of the cursor document.
const CURSOR_VERSION: u32 = 1;

/// The raw query of `GET /v1/conversations`; checked by hand for useful 400s.
#[derive(Debug, Default, Deserialize)]
pub struct InboxParams {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// Where a page starts: after the entry at `activity` (a position in
/// message-id space) and `conversation_id`, in inbox order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxCursor {
    v: u32,
    /// The last listed entry's activity position.
    a: u64,
    /// The last listed entry's conversation.
    c: ConversationId,
}

impl InboxCursor {
    fn after(entry: &InboxEntry) -> Self {
        Self {
            v: CURSOR_VERSION,
            a: entry.activity.as_u64(),
            c: entry.conversation_id.clone(),
        }
    }

    pub fn encode(&self) -> String {
        encode_cursor(self)
    }

    pub fn decode(raw: &str) -> Result<Self, ApiError> {
        decode_cursor::<Self>(raw, MAX_CURSOR_BYTES)
            .filter(|cursor| cursor.v == CURSOR_VERSION)
            .ok_or_else(|| {
                ApiError::Invalid("cursor is not a cursor returned by this listing".to_owned())
            })
    }
}

/// A validated inbox query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxQuery {
    pub limit: usize,
    pub cursor: Option<InboxCursor>,
}

/// Validates `limit` (1 to [`INBOX_MAX_LIMIT`], larger is lowered) and
/// `cursor`: anything else is 400.
pub fn parse_inbox_params(params: &InboxParams) -> Result<InboxQuery, ApiError> {
    let limit = match params.limit.as_deref().map(str::trim) {
        None | Some("") => INBOX_DEFAULT_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(limit) if limit > 0 => limit.min(INBOX_MAX_LIMIT),
            _ => {
                return Err(ApiError::Invalid(format!(
                    "limit must be a whole number from 1 to {INBOX_MAX_LIMIT}, got {text:?}"
                )));
            }
        },
    };
    let cursor = match params.cursor.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => Some(InboxCursor::decode(raw)?),
    };
    Ok(InboxQuery { limit, cursor })
}

/// One of the caller's conversations, placed in inbox order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    pub conversation_id: ConversationId,
    pub joined_at_ms: u64,
    /// The newest message, when the conversation has one.
    pub last_message_id: Option<MessageId>,
    /// `max(last message, join time)` in message-id space: the sort key.
    pub activity: MessageId,
}

/// Places `entries` (`(conversation, joined_at)`) in inbox order with their
/// last messages: by activity, newest first, then by conversation id.
/// Keeps the [`INBOX_MAX_CONVERSATIONS`] most recently joined. Pure.
pub fn order_inbox(
    mut entries: Vec<(ConversationId, u64)>,
    last_messages: &HashMap<ConversationId, MessageId>,
) -> Vec<InboxEntry> {
    if entries.len() > INBOX_MAX_CONVERSATIONS {
        entries.sort_by(|left, right| right.1.cmp(&left.1).then_with(|| left.0.cmp(&right.0)));
        entries.truncate(INBOX_MAX_CONVERSATIONS);
    }
    let mut ordered: Vec<InboxEntry> = entries
        .into_iter()
        .map(|(conversation_id, joined_at_ms)| {
            let last_message_id = last_messages.get(&conversation_id).copied();
            let joined = MessageId::lower_bound_for_unix_ms(joined_at_ms);
            InboxEntry {
                activity: last_message_id.map_or(joined, |last| last.max(joined)),
                conversation_id,
                joined_at_ms,
                last_message_id,
            }
        })
        .collect();
    ordered.sort_by(|left, right| {
        right
            .activity
            .cmp(&left.activity)
            .then_with(|| left.conversation_id.cmp(&right.conversation_id))
    });
    ordered
}

/// The page of `ordered` after `cursor` (from the start without one), at
/// most `limit` entries, and the cursor of the next page when there is
/// more. Pure.
pub fn inbox_page<'a>(
    ordered: &'a [InboxEntry],
    cursor: Option<&InboxCursor>,
    limit: usize,
) -> (&'a [InboxEntry], Option<InboxCursor>) {
    let start = cursor.map_or(0, |cursor| {
        ordered.partition_point(|entry| {
            let position = entry.activity.as_u64();
            position > cursor.a || (position == cursor.a && entry.conversation_id <= cursor.c)
        })
    });
    let rest = &ordered[start..];
    let page = &rest[..rest.len().min(limit.max(1))];
    let next = (rest.len() > page.len())
        .then(|| page.last().map(InboxCursor::after))
        .flatten();
    (page, next)
}

/// The caller's read marker and counts in a conversation (flattened into
/// both [`ReadStateView`] and [`InboxItem`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadCountsView {
    /// The newest message the caller has read (absent: never read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_marker: Option<MessageId>,
    /// Messages of others after the marker (from the caller's join on),
    /// not deleted; at most 100.
    pub unread_count: u64,
    /// `false` when there are more than `unread_count`.
    pub unread_count_exact: bool,
    /// Messages after the marker that mention the caller; at most 100.
    pub mention_count: u64,
    pub mention_count_exact: bool,
}

impl ReadCountsView {
    fn new(read_marker: Option<MessageId>, unread: CappedCount, mentions: CappedCount) -> Self {
        Self {
            read_marker,
            unread_count: unread.count,
            unread_count_exact: unread.exact,
            mention_count: mentions.count,
            mention_count_exact: mentions.exact,
        }
    }
}

/// `GET /v1/conversations/{id}/read-state`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadStateView {
    pub conversation_id: ConversationId,
    #[serde(flatten)]
    pub counts: ReadCountsView,
}

/// One inbox item: the conversation (the fields the listing always had),
/// its last message and the caller's read state.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InboxItem {
    pub conversation_id: ConversationId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub member_count: u64,
    pub created_at: u64,
    pub created_by: UserId,
    pub joined_at: u64,
    /// The caller's role.
    pub role: Role,
    pub history_visibility: HistoryVisibility,
    /// Unix ms of the last activity (the newest message, or the caller's
    /// join when later): the inbox's order.
    pub last_activity_at: u64,
    /// The newest message the caller may see, as history returns it (a
    /// tombstone when deleted); absent when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<serde_json::Value>,
    #[serde(flatten)]
    pub counts: ReadCountsView,
}

/// `GET /v1/conversations`'s answer.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InboxPage {
    pub conversations: Vec<InboxItem>,
    /// Cursor of the next page (`cursor=`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The caller's marker and counts in `conversation`, whose row and the
/// caller's join time are known.
async fn read_counts_of(
    state: &ApiState,
    caller: &UserId,
    conversation: &chatpipe_cassandra::Conversation,
    joined_at_ms: u64,
) -> Result<ReadCountsView, ApiError> {
    let marker = state
        .store
        .read_marker(caller, &conversation.conversation_id)
        .await?;
    let counts = state
        .store
        .read_counts(
            conversation,
            caller,
            effective_marker(marker, joined_at_ms),
            now_unix_ms(),
        )
        .await?;
    Ok(ReadCountsView::new(marker, counts.unread, counts.mentions))
}

/// The details of one page entry; `None` when the conversation is gone
/// or the caller left it meanwhile.
async fn inbox_item(
    state: &ApiState,
    caller: &UserId,
    entry: &InboxEntry,
) -> Result<Option<InboxItem>, ApiError> {
    let Some(summary) = state
        .store
        .summary(caller, entry.conversation_id.clone(), entry.joined_at_ms)
        .await?
    else {
        return Ok(None);
    };
    let conversation = &summary.conversation;
    let last_message = match entry.last_message_id {
        Some(last) => {
            let visible_from = conversation
                .history_visibility
                .visible_from_ms(summary.joined_at_ms)
                .map(MessageId::lower_bound_for_unix_ms);
            let page = state
                .store
                .read_history_visible(
                    conversation,
                    &HistoryQuery {
                        before: Some(MessageId::from_u64(last.as_u64().saturating_add(1))),
                        after: None,
                        limit: 1,
                    },
                    visible_from,
                    now_unix_ms(),
                )
                .await?;
            page.messages.first().map(message_json)
        }
        None => None,
    };
    let counts = read_counts_of(state, caller, conversation, summary.joined_at_ms).await?;
    Ok(Some(InboxItem {
        conversation_id: conversation.conversation_id.clone(),
        title: conversation.title.clone(),
        member_count: summary.member_count,
        created_at: conversation.created_at_ms,
        created_by: conversation.created_by.clone(),
        joined_at: summary.joined_at_ms,
        role: summary.role,
        history_visibility: conversation.history_visibility,
        last_activity_at: entry.activity.unix_ms(),
        last_message,
        counts,
    }))
}

fn message_json(message: &StoredMessage) -> serde_json::Value {
    serde_json::to_value(message).unwrap_or(serde_json::Value::Null)
}

/// `GET /v1/conversations?limit=&cursor=`: the caller's inbox (see the
/// module doc); a bad `limit` or `cursor` is 400.
pub async fn list_conversations(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    QueryParams(params): QueryParams<InboxParams>,
) -> Result<Json<InboxPage>, ApiError> {
    let query = parse_inbox_params(&params)?;
    let entries = state.store.user_conversation_entries(&caller).await?;
    let ids: Vec<ConversationId> = entries.iter().map(|(id, _)| id.clone()).collect();
    let last_messages = state.store.last_activities(&ids).await?;
    let ordered = order_inbox(entries, &last_messages);
    let (page, next) = inbox_page(&ordered, query.cursor.as_ref(), query.limit);
    let lookups: Vec<_> = page
        .iter()
        .map(|entry| inbox_item(&state, &caller, entry))
        .collect();
    let items: Vec<Option<InboxItem>> = futures::stream::iter(lookups)
        .buffered(DETAIL_CONCURRENCY)
        .try_collect()
        .await?;
    Ok(Json(InboxPage {
        conversations: items.into_iter().flatten().collect(),
        next_cursor: next.map(|cursor| cursor.encode()),
    }))
}

/// `GET /v1/conversations/{id}/read-state`: the caller's read marker and
/// counts in one conversation; not a member or unknown → 404.
pub async fn read_state(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathParams(raw_id): PathParams<String>,
) -> Result<Json<ReadStateView>, ApiError> {
    let conversation_id = parse_conversation_id(raw_id)?;
    let membership = require_member(&state, &conversation_id, &caller).await?;
    let counts = read_counts_of(
        &state,
        &caller,
        &membership.conversation,
        membership.member.joined_at_ms,
    )
    .await?;
    Ok(Json(ReadStateView {
        conversation_id,
        counts,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: &str) -> ConversationId {
        ConversationId::parse(raw).unwrap()
    }

    const T0: u64 = MessageId::EPOCH_UNIX_MS + 1_000_000;

    fn entries() -> Vec<InboxEntry> {
        let last = HashMap::from([
            (id("quiet"), MessageId::lower_bound_for_unix_ms(T0 + 10)),
            (id("busy"), MessageId::lower_bound_for_unix_ms(T0 + 500)),
            // Its last message is older than the caller's join.
            (
                id("joined-late"),
                MessageId::lower_bound_for_unix_ms(T0 + 1),
            ),
        ]);
        order_inbox(
            vec![
                (id("quiet"), T0),
                (id("busy"), T0),
                (id("joined-late"), T0 + 300),
                (id("empty-a"), T0 + 100),
                (id("empty-b"), T0 + 100),
            ],
            &last,
        )
    }

    #[test]
    fn the_inbox_is_ordered_by_last_activity_then_id() {
        let ordered = entries();
        let names: Vec<&str> = ordered
            .iter()
            .map(|entry| entry.conversation_id.as_str())
            .collect();
        assert_eq!(
            names,
            ["busy", "joined-late", "empty-a", "empty-b", "quiet"]
        );
        assert_eq!(ordered[0].activity.unix_ms(), T0 + 500);
        assert_eq!(ordered[1].activity.unix_ms(), T0 + 300);
        assert_eq!(ordered[2].last_message_id, None);
    }

    #[test]
    fn pages_cover_every_entry_once_whatever_the_limit() {
        let ordered = entries();
        for limit in 1..=6 {
            let mut seen: Vec<ConversationId> = Vec::new();
            let mut cursor: Option<InboxCursor> = None;
            loop {
                let (page, next) = inbox_page(&ordered, cursor.as_ref(), limit);
                assert!(page.len() <= limit);
                seen.extend(page.iter().map(|entry| entry.conversation_id.clone()));
                match next {
                    // Through the wire form, as a client hands it back.
                    Some(next) => cursor = Some(InboxCursor::decode(&next.encode()).unwrap()),
                    None => break,
                }
            }
            let all: Vec<ConversationId> = ordered
                .iter()
                .map(|entry| entry.conversation_id.clone())
                .collect();
            assert_eq!(seen, all, "limit {limit}");
        }
    }

    #[test]
    fn queries_are_validated() {
        let params = |limit: Option<&str>, cursor: Option<&str>| InboxParams {
            limit: limit.map(str::to_owned),
            cursor: cursor.map(str::to_owned),
        };
        assert_eq!(
            parse_inbox_params(&params(None, None)).unwrap(),
            InboxQuery {
                limit: INBOX_DEFAULT_LIMIT,
                cursor: None
            }
        );
        assert_eq!(
            parse_inbox_params(&params(Some("100000"), Some("")))
                .unwrap()
                .limit,
            INBOX_MAX_LIMIT
        );
        let cursor = InboxCursor::after(&entries()[1]).encode();
        assert_eq!(
            parse_inbox_params(&params(Some("2"), Some(&cursor)))
                .unwrap()
                .cursor
                .unwrap()
                .c,
            id("joined-late")
        );
        for (limit, cursor) in [
            (Some("0"), None),
            (Some("-1"), None),
            (Some("ten"), None),
            (None, Some("garbage")),
            (
                None,
                Some(&*encode_cursor(
                    &serde_json::json!({"v": 2, "a": 1, "c": "x"}),
                )),
            ),
        ] {
            assert!(
                matches!(
                    parse_inbox_params(&params(limit, cursor)),
                    Err(ApiError::Invalid(_))
                ),
                "{limit:?} {cursor:?}"
            );
        }
    }
}
