//! The HTTP API (`/v1/…`, bearer token on every call, JSON in and out,
//! errors as `{"error":{"code","message"}}`).
//!
//! [`ApiClient::send`] makes one attempt and returns the status with the
//! JSON body whatever the status, for callers that assert on refusals (the
//! tests). [`ApiClient::send_retrying`] retries what a polite client
//! retries — 429 and 5xx (honouring `Retry-After`) and transport errors —
//! with a jittered backoff until a deadline, and turns any other status
//! into an error (the load generator).

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

pub use reqwest::{Method, StatusCode};

/// One call of the API: method, path (under the base URL), query
/// parameters (encoded when sent) and an optional JSON body.
#[derive(Debug, Clone)]
pub struct ApiRequest<'a> {
    pub method: Method,
    pub path: &'a str,
    pub query: &'a [(&'a str, &'a str)],
    pub body: Option<&'a Value>,
}

impl<'a> ApiRequest<'a> {
    pub fn new(method: Method, path: &'a str) -> Self {
        Self {
            method,
            path,
            query: &[],
            body: None,
        }
    }

    pub fn get(path: &'a str) -> Self {
        Self::new(Method::GET, path)
    }

    pub fn post(path: &'a str, body: &'a Value) -> Self {
        Self::new(Method::POST, path).body(body)
    }

    pub fn patch(path: &'a str, body: &'a Value) -> Self {
        Self::new(Method::PATCH, path).body(body)
    }

    pub fn delete(path: &'a str) -> Self {
        Self::new(Method::DELETE, path)
    }

    pub fn body(self, body: &'a Value) -> Self {
        Self {
            body: Some(body),
            ..self
        }
    }

    pub fn query(self, query: &'a [(&'a str, &'a str)]) -> Self {
        Self { query, ..self }
    }
}

/// A status and its JSON body (`Null` when the body is empty).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiResponse {
    pub status: StatusCode,
    pub body: Value,
}

/// Why a call gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("the API did not answer: {0}")]
    Transport(#[from] reqwest::Error),
    /// A body that is neither empty nor JSON.
    #[error("HTTP {status}, not JSON: {text}")]
    NotJson { status: StatusCode, text: String },
    /// A status that retrying does not change (4xx other than 429), from
    /// [`ApiClient::send_retrying`]; `text` is the start of the body.
    #[error("HTTP {status}: {text}")]
    Status { status: StatusCode, text: String },
    /// Still 429, 5xx or unreachable when the deadline came.
    #[error("gave up at the deadline, after retries")]
    Deadline,
}

impl HttpError {
    /// The status when the API answered one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            HttpError::NotJson { status, .. } | HttpError::Status { status, .. } => Some(*status),
            HttpError::Transport(error) => error.status(),
            HttpError::Deadline => None,
        }
    }
}

/// A page of `GET /v1/conversations/{id}/messages`: newest first, with the
/// cursors of the next pages.
#[derive(Debug, Clone, Deserialize)]
pub struct HistoryPage {
    pub messages: Vec<Value>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub next_before: Option<String>,
    #[serde(default)]
    pub next_after: Option<String>,
}

/// `/v1/conversations/{id}/messages?limit=N[&before=|&after=]`.
pub fn history_path(conversation_id: &str, limit: u32, cursor: HistoryCursor) -> String {
    let path = format!("/v1/conversations/{conversation_id}/messages?limit={limit}");
    match cursor {
        HistoryCursor::Newest => path,
        HistoryCursor::Before(message_id) => format!("{path}&before={message_id}"),
        HistoryCursor::After(message_id) => format!("{path}&after={message_id}"),
    }
}

/// Where a history page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryCursor {
    /// The newest messages.
    Newest,
    /// Older than this message id (scrolling back).
    Before(u64),
    /// Newer than this message id (catching up).
    After(u64),
}

/// A message id as the API writes it (a decimal string), or as a number.
pub fn message_id_of(value: &Value) -> Option<u64> {
    match value {
        Value::String(text) => text.parse().ok(),
        Value::Number(number) => number.as_u64(),
        _ => None,
    }
}

/// A client of one API base URL (`http://127.0.0.1:8090`); cheap to clone.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        Self::with_http(base, reqwest::Client::new())
    }

    /// With an HTTP client of the caller's (pool sizes, timeouts).
    pub fn with_http(base: &str, http: reqwest::Client) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn builder(&self, token: &str, request: &ApiRequest<'_>) -> reqwest::RequestBuilder {
        let mut builder = self
            .http
            .request(
                request.method.clone(),
                format!("{}{}", self.base, request.path),
            )
            .bearer_auth(token);
        if !request.query.is_empty() {
            builder = builder.query(request.query);
        }
        if let Some(body) = request.body {
            builder = builder.json(body);
        }
        builder
    }

    /// One attempt as the holder of `token`: the status and the JSON body,
    /// whatever the status.
    pub async fn send(
        &self,
        token: &str,
        request: &ApiRequest<'_>,
    ) -> Result<ApiResponse, HttpError> {
        let response = self.builder(token, request).send().await?;
        let status = response.status();
        let text = response.text().await?;
        Ok(ApiResponse {
            status,
            body: json_body(status, text)?,
        })
    }

    pub async fn get(&self, token: &str, path: &str) -> Result<ApiResponse, HttpError> {
        self.send(token, &ApiRequest::get(path)).await
    }

    pub async fn post(
        &self,
        token: &str,
        path: &str,
        body: &Value,
    ) -> Result<ApiResponse, HttpError> {
        self.send(token, &ApiRequest::post(path, body)).await
    }

    pub async fn delete(&self, token: &str, path: &str) -> Result<ApiResponse, HttpError> {
        self.send(token, &ApiRequest::delete(path)).await
    }

    /// `request` until it succeeds (2xx: its JSON body) or fails for good:
    /// 429, 5xx and transport errors are retried, after `Retry-After` when
    /// given, else a backoff from 50 ms doubling to 2 s (plus jitter), until
    /// `deadline`.
    pub async fn send_retrying(
        &self,
        token: &str,
        request: &ApiRequest<'_>,
        deadline: Instant,
    ) -> Result<Value, HttpError> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let retry_in = match self.builder(token, request).send().await {
                Ok(response) if response.status().is_success() => {
                    let status = response.status();
                    return json_body(status, response.text().await?);
                }
                Ok(response)
                    if response.status() == StatusCode::TOO_MANY_REQUESTS
                        || response.status().is_server_error() =>
                {
                    retry_after(&response).unwrap_or(backoff)
                }
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    return Err(HttpError::Status {
                        status,
                        text: text.chars().take(300).collect(),
                    });
                }
                Err(error) if Instant::now() >= deadline => return Err(error.into()),
                Err(_) => backoff,
            };
            if Instant::now() + retry_in >= deadline {
                return Err(HttpError::Deadline);
            }
            // Jitter spreads the retries of many clients refused at once.
            let jitter =
                Duration::from_millis(rand::random_range(0..=backoff.as_millis() as u64 / 2));
            tokio::time::sleep(retry_in + jitter).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

fn json_body(status: StatusCode, text: String) -> Result<Value, HttpError> {
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|_| HttpError::NotJson { status, text })
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn history_paths_carry_their_cursor() {
        assert_eq!(
            history_path("c1", 200, HistoryCursor::Newest),
            "/v1/conversations/c1/messages?limit=200"
        );
        assert_eq!(
            history_path("c1", 50, HistoryCursor::Before(9)),
            "/v1/conversations/c1/messages?limit=50&before=9"
        );
        assert_eq!(
            history_path("c1", 50, HistoryCursor::After(3)),
            "/v1/conversations/c1/messages?limit=50&after=3"
        );
    }

    #[test]
    fn message_ids_are_strings_or_numbers() {
        assert_eq!(message_id_of(&json!("42")), Some(42));
        assert_eq!(message_id_of(&json!(42)), Some(42));
        assert_eq!(message_id_of(&json!("x")), None);
        assert_eq!(message_id_of(&Value::Null), None);
    }

    #[test]
    fn bodies_are_json_or_null() {
        assert_eq!(
            json_body(StatusCode::OK, String::new()).unwrap(),
            Value::Null
        );
        assert_eq!(
            json_body(StatusCode::OK, r#"{"a":1}"#.into()).unwrap(),
            json!({"a":1})
        );
        assert!(matches!(
            json_body(StatusCode::BAD_GATEWAY, "<html>".into()),
            Err(HttpError::NotJson {
                status: StatusCode::BAD_GATEWAY,
                ..
            })
        ));
    }

    /// An HTTP/1.1 server on 127.0.0.1:0 that answers the n-th connection
    /// with `answers[n]`, returns each request's head, and counts.
    async fn server(
        answers: Vec<String>,
    ) -> (
        String,
        Arc<AtomicUsize>,
        tokio::task::JoinHandle<Vec<String>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let counter = count.clone();
        let task = tokio::spawn(async move {
            let mut heads = Vec::new();
            while heads.len() < answers.len() {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut buffer = vec![0u8; 8192];
                let read = stream.read(&mut buffer).await.unwrap();
                heads.push(String::from_utf8_lossy(&buffer[..read]).into_owned());
                let answer = &answers[counter.fetch_add(1, Ordering::SeqCst)];
                stream.write_all(answer.as_bytes()).await.unwrap();
                stream.shutdown().await.unwrap();
            }
            heads
        });
        (base, count, task)
    }

    /// A whole HTTP/1.1 answer that closes its connection.
    fn answer(status_line: &str, extra_headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn busy() -> String {
        answer("503 Service Unavailable", "retry-after: 0\r\n", "")
    }

    fn created() -> String {
        answer("201 Created", "", r#"{"conversation_id":"c"}"#)
    }

    fn not_found() -> String {
        answer(
            "404 Not Found",
            "",
            r#"{"error":{"code":"not_found","message":"no such"}}"#,
        )
    }

    #[tokio::test]
    async fn one_attempt_returns_any_status_with_its_body() {
        let (base, _, heads) = server(vec![not_found()]).await;
        let client = ApiClient::new(&format!("{base}/"));
        let answer = client
            .post("tok", "/v1/conversations", &json!({"members":["b"]}))
            .await
            .unwrap();
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        assert_eq!(answer.body["error"]["code"], "not_found");
        let head = &heads.await.unwrap()[0];
        assert!(
            head.starts_with("POST /v1/conversations HTTP/1.1"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("authorization: bearer tok"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn busy_answers_are_retried_until_success() {
        let (base, count, heads) = server(vec![busy(), busy(), created()]).await;
        let client = ApiClient::new(&base);
        let query = [("q", "a b")];
        let request = ApiRequest::get("/v1/search").query(&query);
        let answer = client
            .send_retrying("tok", &request, Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(answer["conversation_id"], "c");
        assert_eq!(count.load(Ordering::SeqCst), 3);
        assert!(heads.await.unwrap()[2].starts_with("GET /v1/search?q=a+b HTTP/1.1"));
    }

    #[tokio::test]
    async fn refusals_are_not_retried() {
        let (base, count, _heads) = server(vec![not_found(), created()]).await;
        let client = ApiClient::new(&base);
        let error = client
            .send_retrying(
                "tok",
                &ApiRequest::get("/v1/conversations"),
                Instant::now() + Duration::from_secs(10),
            )
            .await
            .unwrap_err();
        assert_eq!(error.status(), Some(StatusCode::NOT_FOUND));
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
