//! The search request as pure functions: parameters and the caller's
//! conversations in, engine request bodies out; engine answers in, a page of
//! hits and the next cursor out. No I/O, so every hostile input is unit
//! tested here.
//!
//! ## Decisions
//!
//! - **Authorization is part of the query.** Every request carries a
//!   `terms` filter on `conversation_id` holding the caller's conversations
//!   (or a `term` filter on the one conversation asked for, after checking
//!   the caller is a member: [`SearchError::Forbidden`] otherwise). It sits
//!   in `bool.filter`, not `post_filter`, so nothing outside the caller's
//!   conversations is ever scored, highlighted or returned.
//! - **History visibility.** A conversation the caller may read only from
//!   a moment on (they joined a conversation whose history visibility is
//!   `joined`) is filtered by `message_id ≥` the first id of that moment,
//!   the same bound history applies ([`plan_search_readable`]).
//! - **Many conversations.** A `terms` filter holds at most 65,536 values
//!   (`index.max_terms_count`). A caller in more than
//!   [`SearchLimits::max_terms_per_query`] conversations (default 10,000)
//!   gets one request per chunk of that many, all with the same sort and
//!   `search_after`; the pages are merged by sort key ([`merge_pages`]),
//!   which is exact because every request returns its own best `limit`
//!   after the same cursor. Beyond [`SearchLimits::max_split_queries`]
//!   chunks (default 10, i.e. 100,000 conversations) the caller must pass
//!   `conversation_id` (400).
//! - **`limit`**: default 20; above 100 it is lowered to 100 (as history
//!   pages do); 0 is a 400.
//! - **User text** goes into `simple_query_string` as a JSON string value,
//!   never into a DSL string: field `body` (or `body.cjk` when the text
//!   holds CJK characters, see `document`),
//!   `default_operator: and`, `lenient: true`, and only the operators
//!   `AND|OR|NOT|PHRASE|PRECEDENCE|WHITESPACE|ESCAPE` (`+ | - "…" ( ) \`).
//!   Prefix (`*`), fuzzy (`~N`), slop and near operators are off, so no
//!   input expands into an unbounded number of terms; there is no regex
//!   syntax in `simple_query_string` at all. `q` is required and at most
//!   [`SearchLimits::max_query_bytes`] (512) bytes.
//! - **`since` / `until`** are unix milliseconds on `ts`: `since`
//!   inclusive, `until` exclusive.
//! - **Sort**: `relevance` (default): `_score` desc, then `message_id` desc;
//!   `newest`: `message_id` desc; `oldest`: `message_id` asc. Message ids
//!   are unique and time-ordered, so every sort ends in a unique tie-breaker.
//! - **Cursor**: opaque base64url of the last hit's sort values (and the
//!   sort it belongs to). Paging is stable while documents are indexed
//!   concurrently: new documents fall before or after the cursor, never
//!   shift it. For `relevance` this needs scores that do not depend on
//!   collection statistics (BM25's IDF and average length change with every
//!   new document, which would move every score relative to a stored
//!   cursor), hence the template's `chat_stable` similarity: BM25's
//!   saturation and length normalization with a fixed average length and no
//!   IDF. A garbled cursor is a 400.
//! - **Highlights**: the `body` fragments (or `body.cjk` when only the CJK
//!   sub-field matched), HTML-encoded with `<em>…</em>` around matches, so
//!   message text can never inject markup.

use std::collections::HashSet;

use chatpipe_core::frames::MessageView;
use chatpipe_core::store::ReadableConversation;
use chatpipe_core::{ConversationId, MessageId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::document::MessageDocument;
use crate::error::{EngineError, SearchError};

/// The order of results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchSort {
    /// Best match first; ties newest first.
    #[default]
    Relevance,
    /// Newest message first.
    Newest,
    /// Oldest message first.
    Oldest,
}

impl SearchSort {
    pub fn as_str(self) -> &'static str {
        match self {
            SearchSort::Relevance => "relevance",
            SearchSort::Newest => "newest",
            SearchSort::Oldest => "oldest",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, SearchError> {
        match raw {
            "relevance" => Ok(SearchSort::Relevance),
            "newest" => Ok(SearchSort::Newest),
            "oldest" => Ok(SearchSort::Oldest),
            _ => Err(SearchError::Invalid(
                "sort must be one of relevance, newest, oldest".to_owned(),
            )),
        }
    }

    fn engine_sort(self) -> Value {
        match self {
            SearchSort::Relevance => json!([{ "_score": "desc" }, { "message_id": "desc" }]),
            SearchSort::Newest => json!([{ "message_id": "desc" }]),
            SearchSort::Oldest => json!([{ "message_id": "asc" }]),
        }
    }
}

/// Bounds on what a caller may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchLimits {
    /// Longest `q`, in bytes of UTF-8.
    pub max_query_bytes: usize,
    pub default_limit: usize,
    pub max_limit: usize,
    /// Conversation ids per `terms` filter (the engine's own cap is
    /// `index.max_terms_count`, 65,536 by default).
    pub max_terms_per_query: usize,
    /// Requests one search may be split into; a caller in more than
    /// `max_terms_per_query × max_split_queries` conversations must name one.
    pub max_split_queries: usize,
    /// Longest accepted cursor, in bytes.
    pub max_cursor_bytes: usize,
}

impl Default for SearchLimits {
    fn default() -> Self {
        Self {
            max_query_bytes: 512,
            default_limit: 20,
            max_limit: 100,
            max_terms_per_query: 10_000,
            max_split_queries: 10,
            max_cursor_bytes: 512,
        }
    }
}

/// A search as the caller asked for it (already split from the query string,
/// not yet validated).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchParams {
    pub q: String,
    pub conversation_id: Option<ConversationId>,
    pub sender_id: Option<UserId>,
    /// Unix ms, inclusive.
    pub since_unix_ms: Option<u64>,
    /// Unix ms, exclusive.
    pub until_unix_ms: Option<u64>,
    pub limit: Option<usize>,
    pub sort: SearchSort,
    /// An opaque cursor from a previous page.
    pub cursor: Option<String>,
}

/// A position in a sort order: the sort values of the last hit of a page.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cursor {
    pub sort: SearchSort,
    /// The hit's `_score` (relevance sort only).
    pub score: Option<f64>,
    pub message_id: u64,
}

#[derive(Serialize, Deserialize)]
struct CursorWire {
    v: u32,
    s: SearchSort,
    a: Vec<Value>,
}

const CURSOR_VERSION: u32 = 1;

impl Cursor {
    pub fn encode(&self) -> String {
        // The score as text (shortest round-trip form): serde_json's default
        // float parsing may land one ULP off (found by the property tests),
        // and a cursor one ULP off skips or repeats hits around it. Rust's
        // `str::parse::<f64>` reads it back exactly.
        let values = match self.score {
            Some(score) => vec![json!(format!("{score:e}")), json!(self.message_id)],
            None => vec![json!(self.message_id)],
        };
        let wire = CursorWire {
            v: CURSOR_VERSION,
            s: self.sort,
            a: values,
        };
        chatpipe_core::cursor::encode_cursor(&wire)
    }

    /// Decodes a cursor of `sort`; anything else is [`SearchError::Invalid`].
    pub fn decode(raw: &str, sort: SearchSort, max_bytes: usize) -> Result<Self, SearchError> {
        let invalid =
            || SearchError::Invalid("cursor is not a cursor returned by this search".to_owned());
        let wire: CursorWire =
            chatpipe_core::cursor::decode_cursor(raw, max_bytes).ok_or_else(invalid)?;
        if wire.v != CURSOR_VERSION {
            return Err(invalid());
        }
        if wire.s != sort {
            return Err(SearchError::Invalid(format!(
                "cursor belongs to sort={}, not sort={}",
                wire.s.as_str(),
                sort.as_str()
            )));
        }
        let positive_id = |value: &Value| {
            value
                .as_u64()
                .filter(|id| *id > 0 && *id <= i64::MAX as u64)
        };
        match (sort, wire.a.as_slice()) {
            (SearchSort::Relevance, [score, id]) => {
                // Text since scores are written exactly; a number from a
                // cursor that an older replica wrote.
                let score = match score {
                    Value::String(text) if text.len() <= 32 => text.parse::<f64>().ok(),
                    Value::Number(number) => number.as_f64(),
                    _ => None,
                }
                .filter(|score| score.is_finite())
                .ok_or_else(invalid)?;
                Ok(Cursor {
                    sort,
                    score: Some(score),
                    message_id: positive_id(id).ok_or_else(invalid)?,
                })
            }
            (SearchSort::Newest | SearchSort::Oldest, [id]) => Ok(Cursor {
                sort,
                score: None,
                message_id: positive_id(id).ok_or_else(invalid)?,
            }),
            _ => Err(invalid()),
        }
    }

    fn search_after(&self) -> Value {
        match self.score {
            Some(score) => json!([score, self.message_id]),
            None => json!([self.message_id]),
        }
    }
}

/// One engine request of a planned search.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRequest {
    /// The `_search` body.
    pub body: Value,
    /// The `routing` parameter (when the search is in one conversation:
    /// only that conversation's shard is asked).
    pub routing: Option<String>,
}

/// A validated search: the engine requests to run and how to merge them.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedSearch {
    /// Empty when the caller has no conversation to search.
    pub requests: Vec<PlannedRequest>,
    pub sort: SearchSort,
    pub limit: usize,
}

/// The operators users may write in `q`.
pub const QUERY_FLAGS: &str = "AND|OR|NOT|PHRASE|PRECEDENCE|WHITESPACE|ESCAPE";

/// Conversations with a visibility floor per engine request: each is a
/// `bool` clause of its own, and engines cap a query's clauses (1,024 by
/// default).
pub const FLOORED_CONVERSATIONS_PER_QUERY: usize = 500;

/// Validates `params` against `limits` and the caller's membership, and
/// builds the engine requests. Pure. Every conversation is searched in
/// full; see [`plan_search_readable`] for conversations whose older
/// messages the caller may not see.
pub fn plan_search(
    params: &SearchParams,
    caller_conversations: &[ConversationId],
    limits: &SearchLimits,
) -> Result<PlannedSearch, SearchError> {
    let readable: Vec<ReadableConversation> = caller_conversations
        .iter()
        .cloned()
        .map(ReadableConversation::whole)
        .collect();
    plan_search_readable(params, &readable, limits)
}

/// The filter of one conversation readable from `floor` (a message id) on.
fn floored_scope(conversation: &str, floor: u64) -> Value {
    json!({ "bool": { "filter": [
        { "term": { "conversation_id": conversation } },
        { "range": { "message_id": { "gte": floor } } }
    ] } })
}

/// The first message id a reader of `readable` may see, if limited.
fn floor_of(readable: &ReadableConversation) -> Option<u64> {
    readable
        .visible_from_ms
        .map(|unix_ms| MessageId::lower_bound_for_unix_ms(unix_ms).as_u64())
}

/// [`plan_search`] over the conversations the caller may read, each from
/// its visibility floor on (a newcomer of a conversation whose history
/// visibility is `joined` finds nothing sent before they joined, exactly
/// as history hides it). Conversations readable in full share `terms`
/// filters as before; each floored one is a `term` and a `message_id`
/// range, [`FLOORED_CONVERSATIONS_PER_QUERY`] per request.
pub fn plan_search_readable(
    params: &SearchParams,
    readable: &[ReadableConversation],
    limits: &SearchLimits,
) -> Result<PlannedSearch, SearchError> {
    let text = params.q.trim();
    if text.is_empty() {
        return Err(SearchError::Invalid(
            "q is required and must not be blank".to_owned(),
        ));
    }
    if params.q.len() > limits.max_query_bytes {
        return Err(SearchError::Invalid(format!(
            "q is longer than {} bytes",
            limits.max_query_bytes
        )));
    }
    // Like history pages: a larger limit is lowered to the maximum.
    let limit = params
        .limit
        .unwrap_or(limits.default_limit)
        .min(limits.max_limit);
    if limit == 0 {
        return Err(SearchError::Invalid(format!(
            "limit must be between 1 and {}",
            limits.max_limit
        )));
    }
    if let (Some(since), Some(until)) = (params.since_unix_ms, params.until_unix_ms)
        && since >= until
    {
        return Err(SearchError::Invalid(
            "since must be before until".to_owned(),
        ));
    }
    let cursor = params
        .cursor
        .as_deref()
        .map(|raw| Cursor::decode(raw, params.sort, limits.max_cursor_bytes))
        .transpose()?;

    let scopes: Vec<Value> = match &params.conversation_id {
        Some(conversation) => {
            let Some(entry) = readable
                .iter()
                .find(|entry| entry.conversation_id == *conversation)
            else {
                return Err(SearchError::Forbidden(conversation.clone()));
            };
            match floor_of(entry) {
                None => vec![json!({ "term": { "conversation_id": conversation.as_str() } })],
                Some(floor) => vec![floored_scope(conversation.as_str(), floor)],
            }
        }
        None => {
            let mut conversations: Vec<&str> = Vec::with_capacity(readable.len());
            let mut floored: Vec<(&str, u64)> = Vec::new();
            for entry in readable {
                match floor_of(entry) {
                    None => conversations.push(entry.conversation_id.as_str()),
                    Some(floor) => floored.push((entry.conversation_id.as_str(), floor)),
                }
            }
            conversations.sort_unstable();
            conversations.dedup();
            floored.sort_unstable();
            floored.dedup();
            let chunk_size = limits.max_terms_per_query.max(1);
            let requests_needed = conversations.len().div_ceil(chunk_size)
                + floored.len().div_ceil(FLOORED_CONVERSATIONS_PER_QUERY);
            if requests_needed > limits.max_split_queries {
                return Err(SearchError::Invalid(format!(
                    "you are a member of {} conversations, more than one search covers ({}); pass conversation_id",
                    conversations.len() + floored.len(),
                    chunk_size * limits.max_split_queries
                )));
            }
            conversations
                .chunks(chunk_size)
                .map(|chunk| json!({ "terms": { "conversation_id": chunk } }))
                .chain(
                    floored
                        .chunks(FLOORED_CONVERSATIONS_PER_QUERY)
                        .map(|chunk| {
                            let each: Vec<Value> = chunk
                                .iter()
                                .map(|(conversation, floor)| floored_scope(conversation, *floor))
                                .collect();
                            json!({ "bool": { "should": each, "minimum_should_match": 1 } })
                        }),
                )
                .collect()
        }
    };

    let mut common_filters = Vec::new();
    if let Some(sender) = &params.sender_id {
        common_filters.push(json!({ "term": { "sender_id": sender.as_str() } }));
    }
    if params.since_unix_ms.is_some() || params.until_unix_ms.is_some() {
        let mut range = serde_json::Map::new();
        range.insert("format".to_owned(), json!("epoch_millis"));
        if let Some(since) = params.since_unix_ms {
            range.insert("gte".to_owned(), json!(since));
        }
        if let Some(until) = params.until_unix_ms {
            range.insert("lt".to_owned(), json!(until));
        }
        common_filters.push(json!({ "range": { "ts": range } }));
    }

    let routing = params
        .conversation_id
        .as_ref()
        .map(|conversation| conversation.as_str().to_owned());
    let requests = scopes
        .into_iter()
        .map(|scope| {
            let mut filters = vec![scope];
            filters.extend(common_filters.iter().cloned());
            PlannedRequest {
                body: search_body(text, filters, params.sort, limit, cursor.as_ref()),
                routing: routing.clone(),
            }
        })
        .collect();
    Ok(PlannedSearch {
        requests,
        sort: params.sort,
        limit,
    })
}

/// Whether `character` is written without spaces between words (Han,
/// Hiragana, Katakana, Hangul), so that the standard analyzer's single
/// characters would match far too much.
fn is_cjk(character: char) -> bool {
    matches!(character as u32,
        0x1100..=0x11FF | 0x3040..=0x30FF | 0x3100..=0x312F | 0x3130..=0x318F | 0x31F0..=0x31FF
        | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xA960..=0xA97F | 0xAC00..=0xD7AF | 0xF900..=0xFAFF
        | 0xFF66..=0xFF9F | 0x20000..=0x2FA1F)
}

/// The field a query text is matched against: `body.cjk` (bigrams) when
/// the text holds CJK characters, `body` otherwise. Pure.
pub fn text_field(text: &str) -> &'static str {
    if text.chars().any(is_cjk) {
        "body.cjk"
    } else {
        "body"
    }
}

fn search_body(
    text: &str,
    filters: Vec<Value>,
    sort: SearchSort,
    limit: usize,
    cursor: Option<&Cursor>,
) -> Value {
    let mut body = json!({
        // One more than asked, to know whether a next page exists.
        "size": limit + 1,
        "track_total_hits": false,
        "track_scores": true,
        "_source": ["message_id", "conversation_id", "sender_id", "client_msg_id", "body", "ts"],
        "query": {
            "bool": {
                "must": [{
                    "simple_query_string": {
                        "query": text,
                        "fields": [text_field(text)],
                        "default_operator": "and",
                        "flags": QUERY_FLAGS,
                        "lenient": true,
                        "analyze_wildcard": false,
                        "auto_generate_synonyms_phrase_query": false
                    }
                }],
                "filter": filters
            }
        },
        "sort": sort.engine_sort(),
        "highlight": {
            "encoder": "html",
            "pre_tags": ["<em>"],
            "post_tags": ["</em>"],
            "fragment_size": 150,
            "number_of_fragments": 3,
            "fields": { "body": {}, "body.cjk": {} }
        }
    });
    if let Some(cursor) = cursor {
        body["search_after"] = cursor.search_after();
    }
    body
}

/// One result: the message, its highlighted fragments, its score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchHit {
    pub message: MessageView,
    pub highlights: Vec<String>,
    /// The relevance score (also computed for time sorts; `null` if the
    /// engine did not give one).
    pub score: Option<f64>,
    #[serde(skip)]
    sort_score: f64,
}

impl SearchHit {
    fn cursor(&self, sort: SearchSort) -> Cursor {
        Cursor {
            sort,
            score: (sort == SearchSort::Relevance).then_some(self.sort_score),
            message_id: self.message.message_id.as_u64(),
        }
    }

    fn order(&self, other: &Self, sort: SearchSort) -> std::cmp::Ordering {
        let by_id = self.message.message_id.cmp(&other.message.message_id);
        match sort {
            SearchSort::Relevance => other
                .sort_score
                .total_cmp(&self.sort_score)
                .then(by_id.reverse()),
            SearchSort::Newest => by_id.reverse(),
            SearchSort::Oldest => by_id,
        }
    }
}

/// A page of results; `next_cursor` is `None` on the last page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    pub next_cursor: Option<String>,
}

/// Reads the hits of one `_search` answer. Pure.
pub fn parse_hits(answer: &Value, sort: SearchSort) -> Result<Vec<SearchHit>, EngineError> {
    let hits = answer
        .pointer("/hits/hits")
        .and_then(Value::as_array)
        .ok_or_else(|| EngineError::Protocol("search answer without hits".to_owned()))?;
    let mut parsed = Vec::with_capacity(hits.len());
    for hit in hits {
        let source = hit
            .get("_source")
            .cloned()
            .ok_or_else(|| EngineError::Protocol("search hit without _source".to_owned()))?;
        let document: MessageDocument = match serde_json::from_value(source) {
            Ok(document) => document,
            Err(error) => {
                // Not written by chatpipe (or by an incompatible version):
                // skip it rather than fail the whole page.
                tracing::warn!(id = ?hit.get("_id"), %error, "skipping a search hit that is not a message document");
                continue;
            }
        };
        let Some(message) = document.into_view() else {
            continue;
        };
        let score = hit.get("_score").and_then(Value::as_f64);
        let sort_score = match sort {
            SearchSort::Relevance => hit
                .pointer("/sort/0")
                .and_then(Value::as_f64)
                .or(score)
                .ok_or_else(|| EngineError::Protocol("relevance hit without a score".to_owned()))?,
            SearchSort::Newest | SearchSort::Oldest => 0.0,
        };
        let fragments = |field: &str| -> Vec<String> {
            hit.get("highlight")
                .and_then(|highlight| highlight.get(field))
                .and_then(Value::as_array)
                .map(|fragments| {
                    fragments
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut highlights = fragments("body");
        if highlights.is_empty() {
            highlights = fragments("body.cjk");
        }
        parsed.push(SearchHit {
            message,
            highlights,
            score,
            sort_score,
        });
    }
    Ok(parsed)
}

/// Merges the hits of a split search into one page of `limit`: ordered by
/// the sort, de-duplicated by message id (a record re-delivered across a
/// rollover lives in two backing indices), with the next cursor if more
/// hits exist. Pure.
pub fn merge_pages(pages: Vec<Vec<SearchHit>>, sort: SearchSort, limit: usize) -> SearchPage {
    let mut hits: Vec<SearchHit> = pages.into_iter().flatten().collect();
    hits.sort_by(|left, right| left.order(right, sort));
    let mut seen = HashSet::new();
    hits.retain(|hit| seen.insert(hit.message.message_id));
    let next_cursor = if hits.len() > limit {
        hits.truncate(limit);
        hits.last().map(|hit| hit.cursor(sort).encode())
    } else {
        None
    };
    SearchPage { hits, next_cursor }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn conversation(raw: &str) -> ConversationId {
        ConversationId::parse(raw).unwrap()
    }

    fn params(q: &str) -> SearchParams {
        SearchParams {
            q: q.to_owned(),
            ..SearchParams::default()
        }
    }

    fn mine() -> Vec<ConversationId> {
        vec![conversation("c1"), conversation("c2")]
    }

    fn plan(params: &SearchParams) -> Result<PlannedSearch, SearchError> {
        plan_search(params, &mine(), &SearchLimits::default())
    }

    fn only_body(plan: &PlannedSearch) -> &Value {
        assert_eq!(plan.requests.len(), 1);
        &plan.requests[0].body
    }

    #[test]
    fn the_authorization_filter_is_inside_the_query() {
        let planned = plan(&params("hello world")).unwrap();
        let body = only_body(&planned);
        assert_eq!(
            body["query"]["bool"]["filter"][0],
            json!({"terms": {"conversation_id": ["c1", "c2"]}})
        );
        assert!(body.get("post_filter").is_none());
        let text = &body["query"]["bool"]["must"][0]["simple_query_string"];
        assert_eq!(text["query"], "hello world");
        assert_eq!(text["default_operator"], "and");
        assert_eq!(text["lenient"], true);
        assert_eq!(text["flags"], QUERY_FLAGS);
        assert_eq!(body["size"], 21);
        assert_eq!(
            body["sort"],
            json!([{"_score": "desc"}, {"message_id": "desc"}])
        );
        assert_eq!(planned.requests[0].routing, None);
    }

    #[test]
    fn one_conversation_needs_membership_and_routes() {
        let mut asked = params("x");
        asked.conversation_id = Some(conversation("c2"));
        let planned = plan(&asked).unwrap();
        assert_eq!(
            only_body(&planned)["query"]["bool"]["filter"][0],
            json!({"term": {"conversation_id": "c2"}})
        );
        assert_eq!(planned.requests[0].routing.as_deref(), Some("c2"));
        asked.conversation_id = Some(conversation("someone-elses"));
        assert_eq!(
            plan(&asked),
            Err(SearchError::Forbidden(conversation("someone-elses")))
        );
    }

    #[test]
    fn conversations_readable_from_a_moment_on_are_filtered_by_message_id() {
        let joined_at = MessageId::EPOCH_UNIX_MS + 60_000;
        let floor = MessageId::lower_bound_for_unix_ms(joined_at).as_u64();
        let readable = vec![
            ReadableConversation::whole(conversation("c1")),
            ReadableConversation {
                conversation_id: conversation("c2"),
                visible_from_ms: Some(joined_at),
            },
        ];
        let limits = SearchLimits::default();
        let planned = plan_search_readable(&params("x"), &readable, &limits).unwrap();
        assert_eq!(planned.requests.len(), 2);
        let floored = json!({"bool": {"filter": [
            {"term": {"conversation_id": "c2"}},
            {"range": {"message_id": {"gte": floor}}}
        ]}});
        assert_eq!(
            planned.requests[0].body["query"]["bool"]["filter"][0],
            json!({"terms": {"conversation_id": ["c1"]}})
        );
        assert_eq!(
            planned.requests[1].body["query"]["bool"]["filter"][0],
            json!({"bool": {"should": [floored.clone()], "minimum_should_match": 1}})
        );
        // Named: the floor still applies.
        let mut asked = params("x");
        asked.conversation_id = Some(conversation("c2"));
        let planned = plan_search_readable(&asked, &readable, &limits).unwrap();
        assert_eq!(only_body(&planned)["query"]["bool"]["filter"][0], floored);
        // Floored conversations are chunked so no request exceeds the
        // engine's clause cap, and they count towards the split limit.
        let many: Vec<ReadableConversation> = (0..FLOORED_CONVERSATIONS_PER_QUERY + 1)
            .map(|index| ReadableConversation {
                conversation_id: conversation(&format!("f{index}")),
                visible_from_ms: Some(joined_at),
            })
            .collect();
        let planned = plan_search_readable(&params("x"), &many, &limits).unwrap();
        assert_eq!(planned.requests.len(), 2);
        let one_request = SearchLimits {
            max_split_queries: 1,
            ..SearchLimits::default()
        };
        assert!(matches!(
            plan_search_readable(&params("x"), &many, &one_request),
            Err(SearchError::Invalid(_))
        ));
    }

    #[test]
    fn no_conversations_means_no_request() {
        let planned = plan_search(&params("x"), &[], &SearchLimits::default()).unwrap();
        assert!(planned.requests.is_empty());
        assert_eq!(
            merge_pages(vec![], planned.sort, planned.limit).hits,
            vec![]
        );
    }

    #[test]
    fn filters_and_ranges() {
        let mut asked = params("x");
        asked.sender_id = Some(UserId::parse("bob").unwrap());
        asked.since_unix_ms = Some(10);
        asked.until_unix_ms = Some(20);
        let planned = plan(&asked).unwrap();
        let filters = &only_body(&planned)["query"]["bool"]["filter"];
        assert_eq!(filters[1], json!({"term": {"sender_id": "bob"}}));
        assert_eq!(
            filters[2],
            json!({"range": {"ts": {"format": "epoch_millis", "gte": 10, "lt": 20}}})
        );
        asked.until_unix_ms = Some(10);
        assert!(matches!(plan(&asked), Err(SearchError::Invalid(_))));
    }

    #[test]
    fn q_and_limit_are_validated() {
        assert!(matches!(plan(&params("")), Err(SearchError::Invalid(_))));
        assert!(matches!(
            plan(&params("   \t")),
            Err(SearchError::Invalid(_))
        ));
        assert!(
            matches!(plan(&params(&"a".repeat(513))), Err(SearchError::Invalid(message)) if message.contains("512"))
        );
        assert!(plan(&params(&"a".repeat(512))).is_ok());
        // A multi-byte string is measured in bytes.
        assert!(matches!(
            plan(&params(&"語".repeat(200))),
            Err(SearchError::Invalid(_))
        ));
        let mut asked = params("x");
        asked.limit = Some(0);
        assert!(matches!(plan(&asked), Err(SearchError::Invalid(_))));
        for (limit, size) in [(1, 2), (100, 101), (101, 101), (usize::MAX, 101)] {
            asked.limit = Some(limit);
            assert_eq!(
                only_body(&plan(&asked).unwrap())["size"],
                size,
                "limit {limit}"
            );
        }
    }

    #[test]
    fn hostile_text_stays_a_json_string_value() {
        let hostile = [
            "\"unbalanced quote",
            "((((((((",
            "{\"query\":{\"match_all\":{}}}",
            "/.*.*.*.*/",
            "*",
            "a~10 b~ \"c d\"~100",
            "\\",
            "\u{0000}\u{202e}",
            "'; DROP TABLE messages; --",
        ];
        for text in hostile {
            let planned = plan(&params(text)).unwrap();
            let body = only_body(&planned);
            assert_eq!(
                body["query"]["bool"]["must"][0]["simple_query_string"]["query"],
                json!(text.trim())
            );
            // The user's text appears nowhere else in the request.
            let serialized = serde_json::to_string(body).unwrap();
            assert_eq!(
                serialized
                    .matches(&serde_json::to_string(text.trim()).unwrap()[..])
                    .count(),
                1
            );
            assert!(body["query"]["bool"].get("should").is_none());
            assert_eq!(
                body["query"]["bool"]["filter"][0]["terms"]["conversation_id"],
                json!(["c1", "c2"])
            );
        }
        // Fuzzy, prefix, near and slop operators are not enabled.
        for operator in ["FUZZY", "PREFIX", "NEAR", "SLOP", "ALL"] {
            assert!(!QUERY_FLAGS.contains(operator));
        }
        // Huge input is refused before it reaches the engine.
        assert!(plan(&params(&"(".repeat(100_000))).is_err());
    }

    #[test]
    fn cjk_text_goes_to_the_bigram_field() {
        assert_eq!(text_field("hello world"), "body");
        assert_eq!(text_field("Привет"), "body");
        assert_eq!(text_field("東京 tower"), "body.cjk");
        assert_eq!(text_field("カタカナ"), "body.cjk");
        assert_eq!(text_field("안녕하세요"), "body.cjk");
        let planned = plan(&params("東京")).unwrap();
        assert_eq!(
            only_body(&planned)["query"]["bool"]["must"][0]["simple_query_string"]["fields"],
            json!(["body.cjk"])
        );
    }

    #[test]
    fn many_conversations_split_into_several_requests() {
        let limits = SearchLimits {
            max_terms_per_query: 3,
            max_split_queries: 3,
            ..SearchLimits::default()
        };
        let many: Vec<ConversationId> = (0..8)
            .map(|index| conversation(&format!("c{index}")))
            .collect();
        let planned = plan_search(&params("x"), &many, &limits).unwrap();
        assert_eq!(planned.requests.len(), 3);
        let mut covered: Vec<Value> = planned
            .requests
            .iter()
            .flat_map(|request| {
                request.body["query"]["bool"]["filter"][0]["terms"]["conversation_id"]
                    .as_array()
                    .unwrap()
                    .clone()
            })
            .collect();
        covered.sort_by_key(|value| value.as_str().unwrap().to_owned());
        assert_eq!(covered.len(), 8);
        let too_many: Vec<ConversationId> = (0..10)
            .map(|index| conversation(&format!("c{index}")))
            .collect();
        assert!(
            matches!(plan_search(&params("x"), &too_many, &limits), Err(SearchError::Invalid(message)) if message.contains("conversation_id"))
        );
        // Naming one conversation always works.
        let mut one = params("x");
        one.conversation_id = Some(conversation("c9"));
        assert_eq!(
            plan_search(&one, &too_many, &limits)
                .unwrap()
                .requests
                .len(),
            1
        );
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_invalid() {
        for cursor in [
            Cursor {
                sort: SearchSort::Relevance,
                score: Some(3.3016572),
                message_id: 9_007_199_254_740_993,
            },
            Cursor {
                sort: SearchSort::Newest,
                score: None,
                message_id: 42,
            },
            Cursor {
                sort: SearchSort::Oldest,
                score: None,
                message_id: 42,
            },
        ] {
            let encoded = cursor.encode();
            assert!(
                encoded
                    .chars()
                    .all(|character| character.is_ascii_alphanumeric()
                        || character == '-'
                        || character == '_')
            );
            assert_eq!(Cursor::decode(&encoded, cursor.sort, 512).unwrap(), cursor);
        }
        let newest = Cursor {
            sort: SearchSort::Newest,
            score: None,
            message_id: 42,
        }
        .encode();
        assert!(
            matches!(Cursor::decode(&newest, SearchSort::Relevance, 512), Err(SearchError::Invalid(message)) if message.contains("sort=newest"))
        );
        let wire = |json: &str| URL_SAFE_NO_PAD.encode(json);
        for garbage in [
            "".to_owned(),
            "!!!".to_owned(),
            "bm90IGpzb24".to_owned(),
            wire(r#"{"v":2,"s":"newest","a":[1]}"#),
            wire(r#"{"v":1,"s":"newest","a":[]}"#),
            wire(r#"{"v":1,"s":"newest","a":[-1]}"#),
            wire(r#"{"v":1,"s":"newest","a":["1"]}"#),
            wire(r#"{"v":1,"s":"newest","a":[1,2]}"#),
            wire(r#"{"v":1,"s":"relevance","a":["x",1]}"#),
            "A".repeat(10_000),
        ] {
            assert!(
                matches!(
                    Cursor::decode(&garbage, SearchSort::Newest, 512),
                    Err(SearchError::Invalid(_))
                ),
                "{garbage}"
            );
        }
        let mut asked = params("x");
        asked.cursor = Some("garbage".to_owned());
        assert!(matches!(plan(&asked), Err(SearchError::Invalid(_))));
        asked.sort = SearchSort::Newest;
        asked.cursor = Some(newest);
        assert_eq!(
            only_body(&plan(&asked).unwrap())["search_after"],
            json!([42])
        );
    }

    #[test]
    fn cursor_scores_round_trip_exactly() {
        // Found by the property tests: as a JSON number this score came
        // back as 2.0368568537889783e30.
        let cursor = Cursor {
            sort: SearchSort::Relevance,
            score: Some(2.0368568537889785e30),
            message_id: 1,
        };
        assert_eq!(
            Cursor::decode(&cursor.encode(), SearchSort::Relevance, 512),
            Ok(cursor)
        );
        // Cursors written with the score as a number are still read.
        let older = URL_SAFE_NO_PAD.encode(r#"{"v":1,"s":"relevance","a":[1.5,7]}"#);
        assert_eq!(
            Cursor::decode(&older, SearchSort::Relevance, 512).map(|cursor| cursor.score),
            Ok(Some(1.5))
        );
        for garbage in [
            r#"["inf",7]"#,
            r#"["NaN",7]"#,
            r#"["1e400",7]"#,
            r#"["",7]"#,
        ] {
            let raw = URL_SAFE_NO_PAD.encode(format!(r#"{{"v":1,"s":"relevance","a":{garbage}}}"#));
            assert!(
                Cursor::decode(&raw, SearchSort::Relevance, 512).is_err(),
                "{garbage}"
            );
        }
    }

    fn answer_hit(id: u64, score: f64, sort: Value) -> Value {
        json!({
            "_id": id.to_string(),
            "_score": score,
            "_source": {"message_id": id, "conversation_id": "c1", "sender_id": "alice", "client_msg_id": format!("m{id}"), "body": "hello", "ts": 1_700_000_000_000u64},
            "highlight": {"body": ["<em>hello</em>"]},
            "sort": sort
        })
    }

    #[test]
    fn pages_merge_by_sort_dedupe_and_cursor() {
        let first = json!({"hits": {"hits": [answer_hit(5, 2.0, json!([2.0, 5])), answer_hit(3, 1.0, json!([1.0, 3]))]}});
        let second = json!({"hits": {"hits": [answer_hit(4, 2.0, json!([2.0, 4])), answer_hit(5, 2.0, json!([2.0, 5])), answer_hit(1, 0.5, json!([0.5, 1]))]}});
        let pages = vec![
            parse_hits(&first, SearchSort::Relevance).unwrap(),
            parse_hits(&second, SearchSort::Relevance).unwrap(),
        ];
        let page = merge_pages(pages, SearchSort::Relevance, 3);
        let ids: Vec<u64> = page
            .hits
            .iter()
            .map(|hit| hit.message.message_id.as_u64())
            .collect();
        assert_eq!(ids, vec![5, 4, 3]);
        assert_eq!(page.hits[0].highlights, vec!["<em>hello</em>".to_owned()]);
        let cursor = Cursor::decode(
            page.next_cursor.as_deref().unwrap(),
            SearchSort::Relevance,
            512,
        )
        .unwrap();
        assert_eq!((cursor.score, cursor.message_id), (Some(1.0), 3));
        let last = merge_pages(
            vec![parse_hits(&first, SearchSort::Relevance).unwrap()],
            SearchSort::Relevance,
            3,
        );
        assert_eq!(last.next_cursor, None);
        let json = serde_json::to_value(&page).unwrap();
        assert_eq!(json["hits"][0]["message"]["message_id"], "5");
        assert_eq!(json["hits"][0]["score"], 2.0);
        assert!(json["hits"][0].get("sort_score").is_none());
    }

    #[test]
    fn foreign_documents_are_skipped_not_fatal() {
        let answer = json!({"hits": {"hits": [{"_id": "x", "_source": {"message_id": "nope"}, "sort": [1]}, answer_hit(2, 1.0, json!([2]))]}});
        let hits = parse_hits(&answer, SearchSort::Newest).unwrap();
        assert_eq!(hits.len(), 1);
        assert!(parse_hits(&json!({"error": "x"}), SearchSort::Newest).is_err());
    }
}

/// Property tests of the query builder and the cursor codec: short pass in
/// every `cargo test`, long pass in `benches/fuzz.sh`.
#[cfg(test)]
mod properties {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use proptest::prelude::*;

    use super::*;

    fn sort() -> impl Strategy<Value = SearchSort> {
        prop::sample::select(vec![
            SearchSort::Relevance,
            SearchSort::Newest,
            SearchSort::Oldest,
        ])
    }

    fn cursor() -> impl Strategy<Value = Cursor> {
        (
            sort(),
            prop_oneof![
                any::<f64>(),
                // Scores as the engine writes them: f32 values.
                any::<f32>().prop_map(f64::from),
                (0u32..100_000).prop_map(|score| f64::from(score) / 1000.0),
            ],
            1..=i64::MAX as u64,
        )
            .prop_map(|(sort, score, message_id)| Cursor {
                sort,
                score: (sort == SearchSort::Relevance).then_some(if score.is_finite() {
                    score
                } else {
                    1.0
                }),
                message_id,
            })
    }

    fn conversation_ids() -> impl Strategy<Value = Vec<ConversationId>> {
        prop::collection::vec(
            "[a-c][0-9]{0,2}".prop_map(|raw| ConversationId::parse(raw).unwrap()),
            0..12,
        )
    }

    /// Raw cursors: valid ones, base64 of arbitrary JSON, arbitrary text.
    fn raw_cursor() -> impl Strategy<Value = String> {
        prop_oneof![
            cursor().prop_map(|cursor| cursor.encode()),
            (
                0u32..3,
                prop::collection::vec(
                    prop_oneof![
                        any::<i64>().prop_map(|number| json!(number)),
                        any::<f64>().prop_map(|number| json!(number)),
                        "[0-9a-z]{0,4}".prop_map(|text| json!(text)),
                    ],
                    0..4
                ),
                prop::sample::select(vec!["relevance", "newest", "oldest", "x"])
            )
                .prop_map(|(version, values, sort)| {
                    URL_SAFE_NO_PAD
                        .encode(json!({"v": version, "s": sort, "a": values}).to_string())
                }),
            "[A-Za-z0-9_=-]{0,80}",
            any::<String>(),
        ]
    }

    fn params() -> impl Strategy<Value = SearchParams> {
        (
            prop_oneof![any::<String>(), "[ a-z\"()|+\\\\*~-]{0,40}", "\\PC{0,600}"],
            prop::option::of("[a-c][0-9]{0,2}".prop_map(|raw| ConversationId::parse(raw).unwrap())),
            prop::option::of("[a-z]{1,8}".prop_map(|raw| UserId::parse(raw).unwrap())),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
            prop::option::of(prop_oneof![0usize..300, any::<usize>()]),
            sort(),
            prop::option::of(raw_cursor()),
        )
            .prop_map(
                |(q, conversation_id, sender_id, since, until, limit, sort, cursor)| SearchParams {
                    q,
                    conversation_id,
                    sender_id,
                    since_unix_ms: since,
                    until_unix_ms: until,
                    limit,
                    sort,
                    cursor,
                },
            )
    }

    proptest! {
        #[test]
        fn cursors_round_trip(cursor in cursor()) {
            let encoded = cursor.encode();
            prop_assert!(encoded.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'));
            let decoded = Cursor::decode(&encoded, cursor.sort, 512);
            prop_assert_eq!(&decoded, &Ok(cursor));
            // A parsed cursor re-serializes to itself.
            prop_assert_eq!(decoded.unwrap().encode(), encoded);
        }

        /// Any text as a cursor: a 400, or a position that re-encodes to a
        /// cursor of the same position.
        #[test]
        fn any_cursor_text_is_a_position_or_invalid(raw in raw_cursor(), sort in sort()) {
            match Cursor::decode(&raw, sort, 512) {
                Ok(cursor) => {
                    prop_assert_eq!(cursor.sort, sort);
                    prop_assert!(cursor.message_id >= 1 && cursor.message_id <= i64::MAX as u64);
                    prop_assert_eq!(cursor.score.is_some(), sort == SearchSort::Relevance);
                    prop_assert!(cursor.score.is_none_or(f64::is_finite));
                    prop_assert_eq!(Cursor::decode(&cursor.encode(), sort, 512), Ok(cursor));
                }
                Err(error) => prop_assert!(matches!(error, SearchError::Invalid(_))),
            }
        }

        /// Any search: refused as invalid (400) or forbidden (404), or a
        /// plan whose every request keeps the user's text a JSON string
        /// value, is limited to the caller's conversations, and asks for
        /// one more hit than the page size.
        #[test]
        fn any_search_is_planned_within_its_bounds_or_refused(
            params in params(),
            mine in conversation_ids(),
        ) {
            let limits = SearchLimits {
                max_terms_per_query: 4,
                max_split_queries: 2,
                ..SearchLimits::default()
            };
            match plan_search(&params, &mine, &limits) {
                Ok(plan) => {
                    prop_assert!((1..=limits.max_limit).contains(&plan.limit));
                    prop_assert!(params.q.len() <= limits.max_query_bytes && !params.q.trim().is_empty());
                    if let Some(asked) = &params.conversation_id {
                        prop_assert!(mine.contains(asked));
                        prop_assert_eq!(plan.requests.len(), 1);
                    } else {
                        let distinct: HashSet<&ConversationId> = mine.iter().collect();
                        prop_assert_eq!(plan.requests.len(), distinct.len().div_ceil(4));
                    }
                    let mut covered = HashSet::new();
                    for request in &plan.requests {
                        let body = &request.body;
                        prop_assert_eq!(&body["size"], &json!(plan.limit + 1));
                        let text = &body["query"]["bool"]["must"][0]["simple_query_string"];
                        prop_assert_eq!(&text["query"], &json!(params.q.trim()));
                        prop_assert_eq!(&text["flags"], &json!(QUERY_FLAGS));
                        let scope = &body["query"]["bool"]["filter"][0];
                        let scoped: Vec<&str> = match (&scope["terms"]["conversation_id"], &scope["term"]["conversation_id"]) {
                            (Value::Array(ids), _) => ids.iter().filter_map(Value::as_str).collect(),
                            (_, Value::String(id)) => vec![id.as_str()],
                            _ => Vec::new(),
                        };
                        prop_assert!(!scoped.is_empty());
                        for id in scoped {
                            prop_assert!(mine.iter().any(|own| own.as_str() == id), "{} is not the caller's", id);
                            covered.insert(id.to_owned());
                        }
                        prop_assert_eq!(body.get("search_after").is_some(), params.cursor.is_some());
                    }
                    if params.conversation_id.is_none() {
                        prop_assert_eq!(covered.len(), mine.iter().collect::<HashSet<_>>().len());
                    }
                }
                Err(SearchError::Invalid(message)) => prop_assert!(!message.is_empty()),
                Err(SearchError::Forbidden(conversation)) => {
                    prop_assert_eq!(Some(&conversation), params.conversation_id.as_ref());
                    prop_assert!(!mine.contains(&conversation));
                }
                Err(other) => prop_assert!(false, "user input gave {:?}", other),
            }
        }
    }
}
