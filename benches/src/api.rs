//! The HTTP API as the load generator uses it: creating conversations,
//! adding members, reading history and searching — each call retried on
//! 429/503 and transport errors until a deadline, as a polite client would.

use std::time::{Duration, Instant};

use chatpipe_core::UserId;
use chatpipe_core::auth::TokenKeys;
use serde::Deserialize;
use serde_json::{Value, json};

/// An API client that signs a token for whichever user it acts as.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    keys: TokenKeys,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "ApiClient({})", self.base)
    }
}

/// One history item, as far as verification needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    pub message_id: u64,
    pub sender_id: String,
    pub body: String,
}

#[derive(Deserialize)]
struct HistoryPage {
    messages: Vec<Value>,
    #[serde(default)]
    has_more: bool,
    #[serde(default)]
    next_before: Option<String>,
    #[serde(default)]
    next_after: Option<String>,
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

fn message_id_of(value: &Value) -> Option<u64> {
    match value {
        Value::String(text) => text.parse().ok(),
        Value::Number(number) => number.as_u64(),
        _ => None,
    }
}

impl ApiClient {
    pub fn new(base: &str, secret: &str) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client builds");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            keys: token_keys(secret),
        }
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }

    /// Sends a request built by `build` as `user`, retrying 429, 5xx and
    /// transport errors (honouring `Retry-After`) until `deadline`.
    async fn call(
        &self,
        user: &str,
        deadline: Instant,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<Value> {
        let token = token_for(&self.keys, user);
        let mut backoff = Duration::from_millis(50);
        loop {
            let outcome = build(&self.http).bearer_auth(&token).send().await;
            let retry_in = match outcome {
                Ok(response) if response.status().is_success() => {
                    let text = response.text().await?;
                    return Ok(if text.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_str(&text)?
                    });
                }
                Ok(response)
                    if response.status().as_u16() == 429 || response.status().is_server_error() =>
                {
                    response
                        .headers()
                        .get("retry-after")
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.parse::<u64>().ok())
                        .map(Duration::from_secs)
                        .unwrap_or(backoff)
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    anyhow::bail!(
                        "HTTP {status}: {}",
                        text.chars().take(300).collect::<String>()
                    );
                }
                Err(error) if Instant::now() >= deadline => return Err(error.into()),
                Err(_) => backoff,
            };
            if Instant::now() + retry_in >= deadline {
                anyhow::bail!("gave up after retries (deadline)");
            }
            let jitter =
                Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 2));
            tokio::time::sleep(retry_in + jitter).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// `POST /v1/conversations` as `creator` with `others` (≤ the API's
    /// per-request limit) and an optional title; returns the id.
    pub async fn create_conversation(
        &self,
        creator: &str,
        others: &[String],
        title: Option<&str>,
    ) -> anyhow::Result<String> {
        let url = format!("{}/v1/conversations", self.base);
        let mut body = json!({ "members": others });
        if let Some(title) = title {
            body["title"] = json!(title);
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let answer = self
            .call(creator, deadline, |http| http.post(&url).json(&body))
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
        let url = format!(
            "{}/v1/conversations/{conversation}/members/{user}",
            self.base
        );
        let body = json!({ "role": role });
        let deadline = Instant::now() + Duration::from_secs(120);
        self.call(actor, deadline, |http| http.patch(&url).json(&body))
            .await?;
        Ok(())
    }

    /// `POST /v1/conversations/{id}/members` as `actor`, an owner or admin.
    pub async fn add_member(
        &self,
        actor: &str,
        conversation: &str,
        user: &str,
    ) -> anyhow::Result<()> {
        let url = format!("{}/v1/conversations/{conversation}/members", self.base);
        let body = json!({ "user_id": user });
        let deadline = Instant::now() + Duration::from_secs(120);
        self.call(actor, deadline, |http| http.post(&url).json(&body))
            .await?;
        Ok(())
    }

    /// Every message of `conversation` newer than `after` (all when `None`),
    /// oldest first, read as the client's catch-up does (`after=` pages).
    pub async fn catch_up(
        &self,
        user: &str,
        conversation: &str,
        after: Option<u64>,
    ) -> anyhow::Result<Vec<HistoryItem>> {
        let mut cursor = after;
        let mut items = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut url = format!(
                "{}/v1/conversations/{conversation}/messages?limit=200",
                self.base
            );
            if let Some(after) = cursor {
                url.push_str(&format!("&after={after}"));
            } else {
                url.push_str("&after=1");
            }
            let answer = self.call(user, deadline, |http| http.get(&url)).await?;
            let page: HistoryPage = serde_json::from_value(answer)?;
            let mut page_items = parse_items(&page.messages);
            // Pages are newest first; a catch-up consumes them oldest first.
            page_items.reverse();
            let newest = page_items.last().map(|item| item.message_id);
            items.extend(page_items);
            let next = page
                .next_after
                .as_deref()
                .and_then(|text| text.parse().ok())
                .or(newest);
            if !page.has_more || next.is_none() || next == cursor {
                return Ok(items);
            }
            cursor = next;
        }
    }

    /// The whole history of `conversation`, exactly as the API returns it:
    /// newest first, scrolling back with `before=`.
    pub async fn full_history(
        &self,
        user: &str,
        conversation: &str,
    ) -> anyhow::Result<Vec<HistoryItem>> {
        let mut cursor: Option<u64> = None;
        let mut items = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let mut url = format!(
                "{}/v1/conversations/{conversation}/messages?limit=200",
                self.base
            );
            if let Some(before) = cursor {
                url.push_str(&format!("&before={before}"));
            }
            let answer = self.call(user, deadline, |http| http.get(&url)).await?;
            let page: HistoryPage = serde_json::from_value(answer)?;
            let page_items = parse_items(&page.messages);
            let oldest = page_items.last().map(|item| item.message_id);
            items.extend(page_items);
            let next = page
                .next_before
                .as_deref()
                .and_then(|text| text.parse().ok())
                .or(oldest);
            if !page.has_more || next.is_none() || next == cursor {
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
        let url = format!("{}/v1/search", self.base);
        let deadline = Instant::now() + Duration::from_secs(60);
        let params = [
            ("q", query),
            ("conversation_id", conversation),
            ("limit", "50"),
        ];
        let answer = self
            .call(user, deadline, |http| http.get(&url).query(&params))
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
            })
        })
        .collect()
}
