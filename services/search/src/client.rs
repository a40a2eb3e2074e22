//! A thin JSON/NDJSON transport over the `elasticsearch` crate.
//!
//! Requests are written as plain paths and JSON bodies rather than through
//! the crate's typed builders: the typed builders follow Elasticsearch's
//! latest API (parameters OpenSearch does not know), while the handful of
//! calls chatpipe makes are the ones both engines share. Every failure
//! becomes an [`EngineError`] that says whether a retry may help.

use std::time::Duration;

use elasticsearch::Elasticsearch;
pub use elasticsearch::http::Method;
use elasticsearch::http::Url;
use elasticsearch::http::headers::{CONTENT_TYPE, HeaderMap, HeaderValue};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use serde_json::Value;

use crate::config::SearchEngineConfig;
use crate::error::EngineError;

/// A cheaply clonable client of one engine endpoint.
#[derive(Clone)]
pub struct EsClient {
    inner: Elasticsearch,
    timeout: Duration,
}

chatpipe_core::debug_fields!(EsClient { timeout });

/// An answer of the engine: HTTP status and JSON body (`Null` when empty).
#[derive(Debug, Clone)]
pub struct EngineResponse {
    pub status: u16,
    pub body: Value,
}

impl EngineResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `Ok(body)` for a 2xx answer, the classified error otherwise.
    pub fn into_result(self) -> Result<Value, EngineError> {
        if self.is_success() {
            return Ok(self.body);
        }
        let (kind, reason) = error_type_and_reason(&self.body);
        Err(EngineError::from_status(self.status, &kind, &reason))
    }
}

/// An error and its sources on one line (reqwest's own message omits the
/// cause, e.g. "connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `error.type` and `error.reason` of an error answer (either shape: the
/// object form, or a bare string as some 404s have).
pub fn error_type_and_reason(body: &Value) -> (String, String) {
    match body.get("error") {
        Some(Value::Object(error)) => (
            error
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            error
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ),
        Some(Value::String(reason)) => (String::new(), reason.clone()),
        _ => (String::new(), String::new()),
    }
}

impl EsClient {
    /// A client of `config.url`. Fails only on a malformed URL.
    pub fn new(config: &SearchEngineConfig) -> Result<Self, EngineError> {
        let url = Url::parse(&config.url).map_err(|error| {
            EngineError::Protocol(format!("invalid engine url {:?}: {error}", config.url))
        })?;
        let timeout = Duration::from_millis(config.request_timeout_ms.max(1));
        let transport = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .disable_proxy()
            .enable_meta_header(false)
            .timeout(timeout)
            .build()
            .map_err(|error| {
                EngineError::Protocol(format!("building the engine client: {error}"))
            })?;
        Ok(Self {
            inner: Elasticsearch::new(transport),
            timeout,
        })
    }

    /// Sends one request with a JSON body (or none) and returns the answer,
    /// whatever its status. Errors only when no answer came.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<EngineResponse, EngineError> {
        let bytes = match body {
            Some(json) => Some(
                serde_json::to_vec(json)
                    .map_err(|error| EngineError::Protocol(error.to_string()))?,
            ),
            None => None,
        };
        self.request_bytes(method, path, query, bytes, "application/json")
            .await
    }

    /// Like [`EsClient::request`], with a ready-made body (NDJSON for `_bulk`).
    pub async fn request_bytes(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Vec<u8>>,
        content_type: &'static str,
    ) -> Result<EngineResponse, EngineError> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        let query_string = (!query.is_empty()).then_some(query);
        let response = self
            .inner
            .send(
                method,
                path,
                headers,
                query_string,
                body,
                Some(self.timeout),
            )
            .await
            .map_err(|error| EngineError::Unreachable(error_chain(&error)))?;
        let status = response.status_code().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|error| EngineError::Unreachable(format!("reading the answer: {error}")))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(json) => json,
                // A proxy's HTML error page, a truncated answer: retriable
                // when the status says so, a protocol error otherwise.
                Err(error) if status >= 500 || status == 429 => Value::String(error.to_string()),
                Err(error) => {
                    return Err(EngineError::Protocol(format!(
                        "HTTP {status}, body is not JSON: {error}"
                    )));
                }
            }
        };
        Ok(EngineResponse { status, body })
    }

    /// Whether the engine answers at all (for readiness).
    pub async fn ping(&self) -> Result<(), EngineError> {
        self.request(Method::Get, "/", &[], None)
            .await?
            .into_result()
            .map(drop)
    }

    /// Makes everything written to `target` so far visible to searches.
    pub async fn refresh(&self, target: &str) -> Result<(), EngineError> {
        self.request(Method::Post, &format!("/{target}/_refresh"), &[], None)
            .await?
            .into_result()
            .map(drop)
    }

    /// Documents visible through `target` (an index or alias).
    pub async fn count(&self, target: &str) -> Result<u64, EngineError> {
        let answer = self
            .request(Method::Get, &format!("/{target}/_count"), &[], None)
            .await?
            .into_result()?;
        answer
            .get("count")
            .and_then(Value::as_u64)
            .ok_or_else(|| EngineError::Protocol("count answer without count".to_owned()))
    }
}
