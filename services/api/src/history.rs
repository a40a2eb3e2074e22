//! `GET /v1/conversations/{id}/messages?before=&after=&limit=`.
//!
//! Newest first; cursors are message ids (decimal strings). Without
//! `after` the page is the newest `limit` messages older than `before` (or
//! the newest of all): scrolling back, the next page is
//! `before=<last message id>`. With `after` it is the `limit` messages right
//! after `after` (and older than `before` when given), still newest first:
//! catching up, the next page is `after=<first message id>`. Pages cross
//! the store's time buckets transparently. Each message carries its
//! reactions counted per reaction, the caller's own marked `me`; an edited
//! one its `edited_at`; a deleted one is a tombstone (`deleted`, no body).
//! In a conversation whose history visibility is `joined`, a member's
//! history starts at the moment they joined: older messages are left out
//! as if they did not exist.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};

use chatpipe_cassandra::{HistoryQuery, StoredMessage};
use chatpipe_core::ids::{ConversationId, MessageId};
use chatpipe_core::time::now_unix_ms;

use crate::auth::Caller;
use crate::conversations::{parse_conversation_id, require_member};
use crate::error::ApiError;
use crate::extract::{PathParams, QueryParams};
use crate::state::ApiState;

/// The raw query string; every field is checked by hand for useful 400s.
#[derive(Debug, Default, Deserialize)]
pub struct HistoryParams {
    pub before: Option<String>,
    pub after: Option<String>,
    pub limit: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryResponse {
    pub conversation_id: ConversationId,
    /// Newest first.
    pub messages: Vec<serde_json::Value>,
    /// More messages exist in the direction read.
    pub has_more: bool,
    /// Cursor of the next (older) page, when scrolling back and there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<MessageId>,
    /// Cursor of the next (newer) page, when catching up and there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<MessageId>,
}

fn parse_cursor(name: &str, raw: Option<&str>) -> Result<Option<MessageId>, ApiError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => MessageId::parse(text).map(Some).map_err(|_| {
            ApiError::Invalid(format!(
                "{name} must be a message id (a positive decimal number), got {text:?}"
            ))
        }),
    }
}

/// Validates the query: bad cursors and limits are 400; a limit above the
/// maximum is lowered to it.
pub fn parse_history_query(
    params: &HistoryParams,
    default_limit: usize,
    max_limit: usize,
) -> Result<HistoryQuery, ApiError> {
    let before = parse_cursor("before", params.before.as_deref())?;
    let after = parse_cursor("after", params.after.as_deref())?;
    let limit = match params.limit.as_deref().map(str::trim) {
        None | Some("") => default_limit,
        Some(text) => match text.parse::<usize>() {
            Ok(0) | Err(_) => {
                return Err(ApiError::Invalid(format!(
                    "limit must be a whole number from 1 to {max_limit}, got {text:?}"
                )));
            }
            Ok(limit) => limit,
        },
    };
    if let (Some(before), Some(after)) = (before, after)
        && after >= before
    {
        return Err(ApiError::Invalid(
            "after must be older than before".to_owned(),
        ));
    }
    Ok(HistoryQuery {
        before,
        after,
        limit: limit.min(max_limit),
    })
}

fn message_json(message: &StoredMessage) -> serde_json::Value {
    serde_json::to_value(message).unwrap_or(serde_json::Value::Null)
}

/// `GET /v1/conversations/{id}/messages`: members only (from their join
/// time on when the conversation's history visibility is `joined`); not a
/// member or unknown conversation → the same 404; bad cursor or limit 400.
pub async fn list_messages(
    State(state): State<ApiState>,
    Caller(caller): Caller,
    PathParams(raw_id): PathParams<String>,
    QueryParams(params): QueryParams<HistoryParams>,
) -> Result<Json<HistoryResponse>, ApiError> {
    let conversation_id = parse_conversation_id(raw_id)?;
    let query = parse_history_query(
        &params,
        state.config.history_default_limit,
        state.config.history_max_limit,
    )?;
    let membership = require_member(&state, &conversation_id, &caller).await?;
    let mut page = state
        .store
        .read_history_visible(
            &membership.conversation,
            &query,
            membership.visible_from(),
            now_unix_ms(),
        )
        .await?;
    state
        .store
        .attach_relations(&conversation_id, &mut page, &caller)
        .await?;
    let catching_up = query.after.is_some();
    let next_before = (!catching_up && page.has_more)
        .then(|| page.messages.last().map(|message| message.message_id))
        .flatten();
    let next_after = (catching_up && page.has_more)
        .then(|| page.messages.first().map(|message| message.message_id))
        .flatten();
    Ok(Json(HistoryResponse {
        conversation_id,
        messages: page.messages.iter().map(message_json).collect(),
        has_more: page.has_more,
        next_before,
        next_after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(before: Option<&str>, after: Option<&str>, limit: Option<&str>) -> HistoryParams {
        HistoryParams {
            before: before.map(str::to_owned),
            after: after.map(str::to_owned),
            limit: limit.map(str::to_owned),
        }
    }

    #[test]
    fn queries_are_validated_and_limits_clamped() {
        let query = parse_history_query(&params(None, None, None), 50, 200).unwrap();
        assert_eq!((query.before, query.after, query.limit), (None, None, 50));
        assert_eq!(
            parse_history_query(&params(None, None, Some("1000")), 50, 200)
                .unwrap()
                .limit,
            200
        );
        let query =
            parse_history_query(&params(Some("900"), Some("100"), Some("7")), 50, 200).unwrap();
        assert_eq!(query.before, Some(MessageId::from_u64(900)));
        assert_eq!(query.after, Some(MessageId::from_u64(100)));
        for bad in [
            params(Some("abc"), None, None),
            params(None, Some("-5"), None),
            params(Some("0"), None, None),
            params(None, None, Some("0")),
            params(None, None, Some("ten")),
            params(Some("100"), Some("900"), None),
        ] {
            assert!(
                matches!(
                    parse_history_query(&bad, 50, 200),
                    Err(ApiError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
    }
}

/// Property tests of the history cursors (`before=` / `after=` message ids)
/// and `limit`: short pass in every `cargo test`, long pass in
/// `benches/fuzz.sh`.
#[cfg(test)]
mod properties {
    use axum::extract::Query;
    use axum::http::Uri;
    use proptest::prelude::*;

    use super::*;

    /// The cursor pattern the OpenAPI document publishes (`MessageId`).
    fn matches_documented_pattern(text: &str) -> bool {
        let bytes = text.as_bytes();
        (1..=19).contains(&bytes.len()) && bytes[0] != b'0' && bytes.iter().all(u8::is_ascii_digit)
    }

    fn cursor_text() -> impl Strategy<Value = String> {
        prop_oneof![
            (1..=i64::MAX as u64).prop_map(|id| id.to_string()),
            "[ +-]?0{0,2}[0-9]{0,21} ?",
            any::<String>(),
        ]
    }

    proptest! {
        /// Any `before`, `after` and `limit`: a query within the documented
        /// bounds, or a 400 (`Invalid`); never a panic or another error.
        #[test]
        fn any_history_query_is_valid_or_a_400(
            before in prop::option::of(cursor_text()),
            after in prop::option::of(cursor_text()),
            limit in prop::option::of(prop_oneof![
                any::<u64>().prop_map(|limit| limit.to_string()),
                "[ +-]?[0-9]{0,22}",
                any::<String>(),
            ]),
        ) {
            let params = HistoryParams { before: before.clone(), after: after.clone(), limit };
            match parse_history_query(&params, 50, 200) {
                Ok(query) => {
                    prop_assert!((1..=200).contains(&query.limit));
                    for (parsed, raw) in [(query.before, &before), (query.after, &after)] {
                        let trimmed = raw.as_deref().map(str::trim).filter(|text| !text.is_empty());
                        prop_assert_eq!(parsed.is_some(), trimmed.is_some());
                        if let (Some(id), Some(text)) = (parsed, trimmed) {
                            // The id is the number written, in range.
                            prop_assert_eq!(text.trim_start_matches('0').parse::<u64>().ok(), Some(id.as_u64()));
                            prop_assert!(id.as_u64() >= 1 && id.as_u64() <= i64::MAX as u64);
                            // A parsed cursor re-serializes to itself when it
                            // was written the documented way.
                            if matches_documented_pattern(text) {
                                prop_assert_eq!(id.to_string(), text);
                            }
                        }
                    }
                    if let (Some(before), Some(after)) = (query.before, query.after) {
                        prop_assert!(after < before);
                    }
                }
                Err(error) => prop_assert!(matches!(error, ApiError::Invalid(_)), "{:?}", error),
            }
        }

        /// Every cursor the API hands out (`next_before`, `next_after`, a
        /// message's id) is accepted back as the same position, and is
        /// written as the OpenAPI pattern says.
        #[test]
        fn cursors_handed_out_are_accepted_back(
            raw_id in 1..=i64::MAX as u64,
            catching_up in any::<bool>(),
        ) {
            let id = MessageId::from_u64(raw_id);
            let page = HistoryResponse {
                conversation_id: ConversationId::parse("c1").unwrap(),
                messages: Vec::new(),
                has_more: true,
                next_before: (!catching_up).then_some(id),
                next_after: catching_up.then_some(id),
            };
            let json = serde_json::to_value(&page).unwrap();
            let field = if catching_up { "next_after" } else { "next_before" };
            let text = json[field].as_str().expect("a cursor is a string").to_owned();
            prop_assert!(matches_documented_pattern(&text), "{}", text);
            prop_assert_eq!(serde_json::from_value::<HistoryResponse>(json).unwrap(), page);
            // Through the query string, as a client sends it back.
            let uri: Uri = format!("/v1/conversations/c1/messages?{}={text}&limit=7", if catching_up { "after" } else { "before" })
                .parse()
                .unwrap();
            let Query(params) = Query::<HistoryParams>::try_from_uri(&uri).unwrap();
            let query = parse_history_query(&params, 50, 200).unwrap();
            let position = if catching_up { query.after } else { query.before };
            prop_assert_eq!(position, Some(id));
            prop_assert_eq!(query.limit, 7);
        }
    }
}
