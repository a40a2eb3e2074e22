//! `GET /v1/search`: full-text search over the caller's conversations.
//!
//! Mounted under the `/v1` guard with [`crate::ApiServer::mount_v1`]
//! (`api.mount_v1(search::router(searcher, store, SearchRouteConfig::default()))`),
//! so it has the same bearer authentication, rate limit, metrics and error
//! body as every other route.
//!
//! - The caller's memberships come from the [`MembershipStore`]
//!   (`readable_conversations`: each conversation with the moment the caller
//!   may read it from, their join time where the conversation's history
//!   visibility is `joined`, so search hides exactly what history hides),
//!   cached per user for
//!   [`SearchRouteConfig::membership_cache_ttl_ms`] (2 s by default) to spare
//!   Cassandra a read per keystroke. A user removed from a conversation may
//!   thus find its messages for up to that long; a user just *added* is
//!   never refused: a `conversation_id` missing from the cached list is
//!   checked against the store (`is_member`) before answering 404.
//! - The query itself (authorization filter, user text as a JSON value,
//!   cursor, limits) is built by `chatpipe_search::query`.
//! - Errors: bad or missing parameters → 400 with a message saying which;
//!   `conversation_id` the caller is not in, or that does not exist → 404
//!   `not_found` with the same text as every other route; the engine or Cassandra
//!   down → 503; never 500 for user input.
//!
//! Response: `{"hits":[{"message":{…},"highlights":["…<em>…</em>…"],"score":…}],"next_cursor":"…"|null}`.
//! Empty parameters (`?q=x&conversation_id=&since=`) count as absent.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use chatpipe_core::store::{MembershipStore, ReadableConversation};
use chatpipe_core::{ConversationId, UserId};
use chatpipe_search::{MessageSearcher, SearchError, SearchPage, SearchParams, SearchSort};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::ApiError;

/// How the search route caches memberships.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchRouteConfig {
    /// How long a user's conversation list is reused, in ms (0: never cached).
    pub membership_cache_ttl_ms: u64,
    /// Capacity of the cache, counted in conversation ids (a user in 5,000
    /// conversations weighs 5,000).
    pub membership_cache_max_ids: u64,
}

impl Default for SearchRouteConfig {
    fn default() -> Self {
        Self {
            membership_cache_ttl_ms: 2_000,
            membership_cache_max_ids: 1_000_000,
        }
    }
}

struct SearchState<M> {
    searcher: MessageSearcher,
    store: M,
    memberships: Option<moka::future::Cache<UserId, Arc<Vec<ReadableConversation>>>>,
}

/// The `/v1/search` route, its state applied (mount it with
/// [`crate::ApiServer::mount_v1`]).
pub fn router<M: MembershipStore>(
    searcher: MessageSearcher,
    store: M,
    config: SearchRouteConfig,
) -> Router {
    let memberships = (config.membership_cache_ttl_ms > 0).then(|| {
        moka::future::Cache::builder()
            .max_capacity(config.membership_cache_max_ids)
            .weigher(
                |_user: &UserId, conversations: &Arc<Vec<ReadableConversation>>| {
                    u32::try_from(conversations.len())
                        .unwrap_or(u32::MAX)
                        .max(1)
                },
            )
            .time_to_live(Duration::from_millis(config.membership_cache_ttl_ms))
            .build()
    });
    let state = Arc::new(SearchState {
        searcher,
        store,
        memberships,
    });
    Router::new()
        .route("/v1/search", get(search::<M>))
        .with_state(state)
}

/// The query string as sent; parsed by [`RawSearchQuery::into_params`] so
/// every malformed value gets a message naming it.
#[derive(Debug, Default, Deserialize)]
pub struct RawSearchQuery {
    q: Option<String>,
    conversation_id: Option<String>,
    sender_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    sort: Option<String>,
    cursor: Option<String>,
}

fn present(value: Option<String>) -> Option<String> {
    value.filter(|text| !text.is_empty())
}

fn unix_ms(name: &str, value: Option<String>) -> Result<Option<u64>, ApiError> {
    present(value)
        .map(|text| {
            text.parse::<u64>().map_err(|_| {
                ApiError::Invalid(format!(
                    "{name} must be a time in unix milliseconds (a non-negative integer)"
                ))
            })
        })
        .transpose()
}

impl RawSearchQuery {
    pub fn into_params(self) -> Result<SearchParams, ApiError> {
        let q = self
            .q
            .ok_or_else(|| ApiError::Invalid("q is required".to_owned()))?;
        let conversation_id = present(self.conversation_id)
            .map(|raw| {
                ConversationId::parse(raw)
                    .map_err(|error| ApiError::Invalid(format!("conversation_id: {error}")))
            })
            .transpose()?;
        let sender_id = present(self.sender_id)
            .map(|raw| {
                UserId::parse(raw).map_err(|error| ApiError::Invalid(format!("sender_id: {error}")))
            })
            .transpose()?;
        let limit = present(self.limit)
            .map(|raw| {
                raw.parse::<usize>()
                    .map_err(|_| ApiError::Invalid("limit must be a positive integer".to_owned()))
            })
            .transpose()?;
        let sort = match present(self.sort) {
            Some(raw) => SearchSort::parse(&raw).map_err(search_error)?,
            None => SearchSort::default(),
        };
        Ok(SearchParams {
            q,
            conversation_id,
            sender_id,
            since_unix_ms: unix_ms("since", self.since)?,
            until_unix_ms: unix_ms("until", self.until)?,
            limit,
            sort,
            cursor: present(self.cursor),
        })
    }
}

fn search_error(error: SearchError) -> ApiError {
    let public = error.public_message();
    match error {
        SearchError::Invalid(_) => ApiError::Invalid(public),
        // The conversation is not the caller's: the same 404 as every other
        // route gives for it, whether it exists or not (no existence oracle).
        SearchError::Forbidden(_) => crate::conversations::conversation_not_found(),
        SearchError::Unavailable(detail) => {
            ApiError::Unavailable(format!("search engine: {detail}"))
        }
        SearchError::Internal(detail) => ApiError::Internal(format!("search: {detail}")),
    }
}

impl<M: MembershipStore> SearchState<M> {
    async fn conversations_of(
        &self,
        user: &UserId,
    ) -> Result<Arc<Vec<ReadableConversation>>, ApiError> {
        let Some(cache) = &self.memberships else {
            return Ok(Arc::new(self.store.readable_conversations(user).await?));
        };
        if let Some(cached) = cache.get(user).await {
            return Ok(cached);
        }
        let fresh = Arc::new(self.store.readable_conversations(user).await?);
        cache.insert(user.clone(), fresh.clone()).await;
        Ok(fresh)
    }

    /// The caller's conversations, fresh from the store if the cached list
    /// lacks the one asked for and the store says the caller is a member.
    async fn scope(
        &self,
        user: &UserId,
        asked: Option<&ConversationId>,
    ) -> Result<Arc<Vec<ReadableConversation>>, ApiError> {
        let conversations = self.conversations_of(user).await?;
        let Some(conversation) = asked else {
            return Ok(conversations);
        };
        let known = conversations
            .iter()
            .any(|entry| entry.conversation_id == *conversation);
        if known || !self.store.is_member(conversation, user).await? {
            return Ok(conversations);
        }
        let fresh = Arc::new(self.store.readable_conversations(user).await?);
        if let Some(cache) = &self.memberships {
            cache.insert(user.clone(), fresh.clone()).await;
        }
        Ok(fresh)
    }
}

async fn search<M: MembershipStore>(
    State(state): State<Arc<SearchState<M>>>,
    Caller(user): Caller,
    query: Result<Query<RawSearchQuery>, QueryRejection>,
) -> Result<Json<SearchPage>, ApiError> {
    let Query(raw) = query?;
    let params = raw.into_params()?;
    let conversations = state.scope(&user, params.conversation_id.as_ref()).await?;
    let page = state
        .searcher
        .search_readable(&params, &conversations)
        .await
        .map_err(search_error)?;
    Ok(Json(page))
}

/// Property tests of the search query string: whatever a client sends,
/// the answer is a plan or a 400/404, never a 5xx. Short pass in every
/// `cargo test`, long pass in `benches/fuzz.sh`.
#[cfg(test)]
mod properties {
    use axum::http::Uri;
    use chatpipe_search::SearchLimits;
    use chatpipe_search::query::plan_search;
    use proptest::prelude::*;

    use super::*;

    const NAMES: [&str; 9] = [
        "q",
        "conversation_id",
        "sender_id",
        "since",
        "until",
        "limit",
        "sort",
        "cursor",
        "other",
    ];

    use chatpipe_testkit::percent_encode as encode;

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{0,21}",
            "[a-c][0-9]?",
            prop::sample::select(vec!["relevance", "newest", "oldest", "", "-1", "0"])
                .prop_map(str::to_owned),
            "[ -~]{0,30}",
            any::<String>(),
        ]
    }

    fn query_string() -> impl Strategy<Value = String> {
        prop_oneof![
            // Well-formed pairs (duplicates included) with hostile values.
            prop::collection::vec((prop::sample::select(NAMES.to_vec()), value()), 0..8).prop_map(
                |pairs| {
                    pairs
                        .iter()
                        .map(|(name, value)| format!("{name}={}", encode(value)))
                        .collect::<Vec<_>>()
                        .join("&")
                }
            ),
            // Raw text, percent signs and all.
            "[!-~]{0,80}",
        ]
    }

    proptest! {
        #[test]
        fn any_search_query_string_is_planned_or_a_client_error(
            query in query_string(),
            mine in prop::collection::vec("[a-c][0-9]?", 0..5),
        ) {
            let Ok(uri) = format!("/v1/search?{query}").parse::<Uri>() else {
                return Ok(());
            };
            let mine: Vec<ConversationId> = mine
                .into_iter()
                .map(|raw| ConversationId::parse(raw).unwrap())
                .collect();
            let outcome = Query::<RawSearchQuery>::try_from_uri(&uri)
                .map_err(ApiError::from)
                .and_then(|Query(raw)| raw.into_params())
                .and_then(|params| {
                    plan_search(&params, &mine, &SearchLimits::default()).map_err(search_error)
                });
            if let Err(error) = outcome {
                let status = error.code().http_status();
                prop_assert!(status == 400 || status == 404, "{:?} for {}", error, query);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The route with the in-memory membership store; the engine is the real
    //! one on `CHATPIPE_ELASTICSEARCH_URL` (default http://127.0.0.1:9200), except for
    //! the outage case.

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use chatpipe_core::store::memory::MemoryStore;
    use chatpipe_search::bulk::BulkSinkSettings;
    use chatpipe_search::template::{apply_template, delete_deployment};
    use chatpipe_search::{
        BulkDoc, BulkMetrics, EsBulkSink, EsClient, MessageDocument, SearchEngineConfig,
        SearchLimits, SearchMetrics,
    };
    use serde_json::Value;
    use tower::ServiceExt;

    use super::*;

    /// Adds `user` to `conversation` in the in-memory store.
    fn add(store: &MemoryStore, conversation: &str, user: &str) {
        store.add_member(
            &ConversationId::parse(conversation).unwrap(),
            &UserId::parse(user).unwrap(),
        );
    }

    fn engine_config(prefix: String, url: Option<&str>) -> SearchEngineConfig {
        SearchEngineConfig {
            url: url
                .map(str::to_owned)
                .or_else(|| std::env::var("CHATPIPE_ELASTICSEARCH_URL").ok())
                .unwrap_or_else(|| "http://127.0.0.1:9200".to_owned()),
            index_prefix: prefix,
            number_of_shards: 1,
            request_timeout_ms: 3_000,
            ..SearchEngineConfig::default()
        }
    }

    fn searcher(config: &SearchEngineConfig) -> MessageSearcher {
        MessageSearcher::new(
            EsClient::new(config).unwrap(),
            &config.layout(),
            SearchLimits::default(),
            SearchMetrics::default(),
        )
    }

    async fn get_as(app: &Router, user: &str, uri: &str) -> (StatusCode, Value) {
        let mut request = Request::get(uri).body(Body::empty()).unwrap();
        request
            .extensions_mut()
            .insert(Caller(UserId::parse(user).unwrap()));
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    use chatpipe_testkit::message_record as record;

    #[tokio::test]
    async fn search_over_http_honours_membership_and_validates_input() {
        let unique = uuid::Uuid::new_v4().simple().to_string();
        let config = engine_config(format!("t{unique}-chat-messages"), None);
        let client = EsClient::new(&config).unwrap();
        apply_template(&client, &config)
            .await
            .expect("the search engine must be reachable");
        let sink = EsBulkSink::new(
            client.clone(),
            config.layout().write_alias,
            BulkSinkSettings::default(),
            BulkMetrics::default(),
        );
        let records = [
            record(1, "room-a", "alice", "the <b>quarterly</b> report is late"),
            record(2, "room-a", "bob", "which quarterly report?"),
            record(3, "room-b", "carol", "quarterly numbers, carol only"),
        ];
        let docs: Vec<BulkDoc> = records
            .iter()
            .map(|record| BulkDoc::from_document(&MessageDocument::from_record(record)))
            .collect();
        assert_eq!(sink.write(&docs).await.unwrap().indexed, 3);
        client.refresh(&config.layout().search_alias).await.unwrap();

        let store = MemoryStore::new();
        add(&store, "room-a", "alice");
        add(&store, "room-a", "bob");
        add(&store, "room-b", "carol");
        let app = router(
            searcher(&config),
            store.clone(),
            SearchRouteConfig::default(),
        );

        let (status, body) = get_as(&app, "alice", "/v1/search?q=quarterly&limit=1").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["hits"].as_array().unwrap().len(), 1);
        let cursor = body["next_cursor"].as_str().unwrap().to_owned();
        let (status, next) = get_as(
            &app,
            "alice",
            &format!("/v1/search?q=quarterly&limit=1&cursor={cursor}"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(next["next_cursor"], Value::Null);
        let mut found = vec![
            body["hits"][0]["message"]["message_id"]
                .as_str()
                .unwrap()
                .to_owned(),
            next["hits"][0]["message"]["message_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        ];
        found.sort();
        assert_eq!(found, vec!["1", "2"]);

        // The contract's query string with empty optional parameters.
        let (status, body) = get_as(
            &app,
            "alice",
            "/v1/search?q=report&conversation_id=&sender_id=&since=&until=&limit=&cursor=",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let hit = &body["hits"][0];
        assert_eq!(hit["message"]["conversation_id"], "room-a");
        assert!(hit["score"].is_number());
        let highlight = hit["highlights"][0].as_str().unwrap();
        assert!(highlight.contains("<em>report</em>"), "{highlight}");
        assert!(
            !highlight.contains("<b>"),
            "message markup is escaped: {highlight}"
        );

        // Carol's conversation: invisible to alice, and by name the same 404
        // as a conversation that does not exist (no existence oracle).
        let (status, body) = get_as(&app, "alice", "/v1/search?q=carol").await;
        assert_eq!(
            (status, body["hits"].as_array().unwrap().len()),
            (StatusCode::OK, 0)
        );
        let (status, body) = get_as(
            &app,
            "alice",
            "/v1/search?q=quarterly&conversation_id=room-b",
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"]["code"], "not_found");
        let (unknown_status, unknown_body) = get_as(
            &app,
            "alice",
            "/v1/search?q=quarterly&conversation_id=no-such-room",
        )
        .await;
        assert_eq!((unknown_status, unknown_body), (status, body));
        let (status, body) = get_as(&app, "mallory", "/v1/search?q=quarterly").await;
        assert_eq!(
            (status, body["hits"].as_array().unwrap().len()),
            (StatusCode::OK, 0)
        );

        // Added a moment ago: not refused because of the cached list.
        add(&store, "room-b", "alice");
        let (status, body) = get_as(
            &app,
            "alice",
            "/v1/search?q=quarterly&conversation_id=room-b",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["hits"][0]["message"]["message_id"], "3");

        let hostile = [
            "/v1/search",
            "/v1/search?q=",
            "/v1/search?q=%20%20",
            "/v1/search?q=x&limit=abc",
            "/v1/search?q=x&limit=0",
            "/v1/search?q=x&limit=-1",
            "/v1/search?q=x&since=yesterday",
            "/v1/search?q=x&since=20&until=10",
            "/v1/search?q=x&sort=random",
            "/v1/search?q=x&cursor=not-a-cursor",
            "/v1/search?q=x&conversation_id=bad%20id",
            "/v1/search?q=x&sender_id=%00",
        ];
        for uri in hostile {
            let (status, body) = get_as(&app, "alice", uri).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
            assert_eq!(body["error"]["code"], "invalid", "{uri}");
            assert!(!body["error"]["message"].as_str().unwrap().is_empty());
        }
        let long = format!("/v1/search?q={}", "a".repeat(513));
        assert_eq!(
            get_as(&app, "alice", &long).await.0,
            StatusCode::BAD_REQUEST
        );
        let dsl = "/v1/search?q=%7B%22query%22%3A%7B%22match_all%22%3A%7B%7D%7D%7D";
        let (status, body) = get_as(&app, "alice", dsl).await;
        assert_eq!(
            (status, body["hits"].as_array().unwrap().len()),
            (StatusCode::OK, 0)
        );
        for text in ["%22unbalanced", "%2F.*.*.*.*%2F", "*", "((((", "a~10"] {
            let (status, body) = get_as(&app, "alice", &format!("/v1/search?q={text}")).await;
            assert!(
                status == StatusCode::OK || status == StatusCode::BAD_REQUEST,
                "{text}: {status} {body}"
            );
        }
        delete_deployment(&client, &config.layout()).await.unwrap();
    }

    #[tokio::test]
    async fn an_engine_that_is_down_is_a_503() {
        let config = engine_config("chat-messages".to_owned(), Some("http://127.0.0.1:1"));
        let store = MemoryStore::new();
        add(&store, "room-a", "alice");
        let app = router(
            searcher(&config),
            store.clone(),
            SearchRouteConfig::default(),
        );
        let (status, body) = get_as(&app, "alice", "/v1/search?q=anything").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["error"]["code"], "unavailable");
        assert!(
            !body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("127.0.0.1")
        );
        // Input errors are still 400, whatever the engine's state.
        assert_eq!(
            get_as(&app, "alice", "/v1/search?q=x&limit=nope").await.0,
            StatusCode::BAD_REQUEST
        );
        // Memberships were read once and cached.
        get_as(&app, "alice", "/v1/search?q=again").await;
        assert_eq!(store.reads(), 1);
    }
}
