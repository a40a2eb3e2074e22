//! The HTTP API as the load generator uses it: creating conversations,
//! adding members, reading history and searching — each call retried on
//! 429/5xx and transport errors until a deadline, as a polite client would
//! ([`chatpipe_client::ApiClient::send_retrying`]), as the user it acts for.

use std::time::{Duration, Instant};

use chatpipe_client::http::{ApiRequest, HistoryCursor, HistoryPage, history_path, message_id_of};
use chatpipe_core::UserId;
use chatpipe_core::auth::TokenKeys;
use serde_json::{Value, json};

/// An API client that signs a token for whichever user it acts as.
#[derive(Clone)]
pub struct ApiClient {
    http: chatpipe_client::ApiClient,
    keys: TokenKeys,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "ApiClient({})", self.http.base())
    }
}

/// One history item, as far as verification needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    pub message_id: u64,
    pub sender_id: String,
    /// Empty for a tombstone.
    pub body: String,
    /// `edited_at` is set.
    pub edited: bool,
    /// A tombstone (`deleted: true`).
    pub deleted: bool,
    /// `(reaction, count)` pairs.
    pub reactions: Vec<(String, u32)>,
}

/// Token keys from a secret; when empty, from the secret file the roles read
/// (`$CHATPIPE_HOME/token-secret`, default `~/.cache/chatpipe`). There is no
/// built-in secret: without either, tokens are signed with an empty key and
/// every connection is refused, which the run reports.
pub fn token_keys(secret: &str) -> TokenKeys {
    if !secret.is_empty() {
        return TokenKeys::from_secret(secret.as_bytes());
    }
    let home = std::env::var_os("CHATPIPE_HOME")
        .filter(|home| !home.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/chatpipe")
        });
    let from_file = std::fs::read(home.join("token-secret")).unwrap_or_default();
    TokenKeys::from_secret(from_file.trim_ascii())
}

pub fn token_for(keys: &TokenKeys, user: &str) -> String {
    let user = UserId::parse(user).expect("load generator user ids are valid");
    keys.sign(&user, crate::now_unix_us() / 1_000_000, 6 * 3600)
}

impl ApiClient {
    pub fn new(base: &str, secret: &str) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client builds");
        Self {
            http: chatpipe_client::ApiClient::with_http(base, http),
            keys: token_keys(secret),
        }
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// `request` as `user`, retried until `deadline`.
    async fn call(
        &self,
        user: &str,
        deadline: Instant,
        request: &ApiRequest<'_>,
    ) -> anyhow::Result<Value> {
        let token = token_for(&self.keys, user);
        Ok(self.http.send_retrying(&token, request, deadline).await?)
    }

    /// A membership change as `actor`, retried for up to two minutes.
    async fn change(&self, actor: &str, request: &ApiRequest<'_>) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        self.call(actor, deadline, request).await?;
        Ok(())
    }

    /// `POST /v1/conversations` as `creator` with `others` (≤ the API's
    /// per-request limit) and an optional title; returns the id.
    pub async fn create_conversation(
        &self,
        creator: &str,
        others: &[String],
        title: Option<&str>,
    ) -> anyhow::Result<String> {
        let mut body = json!({ "members": others });
        if let Some(title) = title {
            body["title"] = json!(title);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let answer = self
            .call(
                creator,
                deadline,
                &ApiRequest::post("/v1/conversations", &body),
            )
            .await?;
        answer["conversation_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no conversation_id in {answer}"))
    }

    /// `PATCH /v1/conversations/{id}/members/{user}` as owner `actor`:
    /// gives member `user` the role `role` (`admin`, `owner`, `member`).
    pub async fn set_role(
        &self,
        actor: &str,
        conversation: &str,
        user: &str,
        role: &str,
    ) -> anyhow::Result<()> {
        let path = format!("/v1/conversations/{conversation}/members/{user}");
        self.change(actor, &ApiRequest::patch(&path, &json!({ "role": role })))
            .await
    }

    /// `POST /v1/conversations/{id}/members` as `actor`, an owner or admin.
    pub async fn add_member(
        &self,
        actor: &str,
        conversation: &str,
        user: &str,
    ) -> anyhow::Result<()> {
        let path = format!("/v1/conversations/{conversation}/members");
        self.change(actor, &ApiRequest::post(&path, &json!({ "user_id": user })))
            .await
    }

    /// Every message of `conversation` newer than `after` (all when `None`),
    /// oldest first, read as the client's catch-up does (`after=` pages).
    pub async fn catch_up(
        &self,
        user: &str,
        conversation: &str,
        after: Option<u64>,
    ) -> anyhow::Result<Vec<HistoryItem>> {
        let deadline = Instant::now() + Duration::from_secs(120);
        self.pages(
            user,
            conversation,
            HistoryCursor::After(after.unwrap_or(1)),
            deadline,
        )
        .await
    }

    /// The whole history of `conversation`, exactly as the API returns it:
    /// newest first, scrolling back with `before=`.
    pub async fn full_history(
        &self,
        user: &str,
        conversation: &str,
    ) -> anyhow::Result<Vec<HistoryItem>> {
        let deadline = Instant::now() + Duration::from_secs(300);
        self.pages(user, conversation, HistoryCursor::Newest, deadline)
            .await
    }

    /// History pages from `start` on, following `after=` cursors (items
    /// oldest first: pages come newest first and are reversed) or else
    /// `before=` cursors (items newest first, as the API returns them).
    async fn pages(
        &self,
        user: &str,
        conversation: &str,
        start: HistoryCursor,
        deadline: Instant,
    ) -> anyhow::Result<Vec<HistoryItem>> {
        let forward = matches!(start, HistoryCursor::After(_));
        let mut cursor = start;
        let mut items = Vec::new();
        loop {
            let path = history_path(conversation, 200, cursor);
            let answer = self.call(user, deadline, &ApiRequest::get(&path)).await?;
            let page: HistoryPage = serde_json::from_value(answer)?;
            let mut page_items = parse_items(&page.messages);
            if forward {
                page_items.reverse();
            }
            // The last item is the newest (forward) or the oldest (back).
            let last = page_items.last().map(|item| item.message_id);
            items.extend(page_items);
            let next_cursor = if forward {
                &page.next_after
            } else {
                &page.next_before
            };
            let next = next_cursor
                .as_deref()
                .and_then(|text| text.parse().ok())
                .or(last);
            let next = match next {
                Some(id) if forward => HistoryCursor::After(id),
                Some(id) => HistoryCursor::Before(id),
                None => return Ok(items),
            };
            if !page.has_more || next == cursor {
                return Ok(items);
            }
            cursor = next;
        }
    }

    /// Message ids found by `GET /v1/search?q=&conversation_id=` (first page).
    pub async fn search(
        &self,
        user: &str,
        query: &str,
        conversation: &str,
    ) -> anyhow::Result<Vec<u64>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let params = [
            ("q", query),
            ("conversation_id", conversation),
            ("limit", "50"),
        ];
        let answer = self
            .call(
                user,
                deadline,
                &ApiRequest::get("/v1/search").query(&params),
            )
            .await?;
        let hits = answer["hits"].as_array().cloned().unwrap_or_default();
        Ok(hits
            .iter()
            .filter_map(|hit| message_id_of(&hit["message"]["message_id"]))
            .collect())
    }
}

fn parse_items(messages: &[Value]) -> Vec<HistoryItem> {
    messages
        .iter()
        .filter_map(|message| {
            Some(HistoryItem {
                message_id: message_id_of(&message["message_id"])?,
                sender_id: message["sender_id"].as_str().unwrap_or_default().to_owned(),
                body: message["body"].as_str().unwrap_or_default().to_owned(),
                edited: !message["edited_at"].is_null(),
                deleted: message["deleted"].as_bool().unwrap_or(false),
                reactions: message["reactions"]
                    .as_array()
                    .map(|reactions| {
                        reactions
                            .iter()
                            .filter_map(|reaction| {
                                Some((
                                    reaction["reaction"].as_str()?.to_owned(),
                                    reaction["count"].as_u64()? as u32,
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}
