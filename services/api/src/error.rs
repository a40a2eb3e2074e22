//! [`ApiError`]: the one place where failures become HTTP responses.
//!
//! Every handler returns `Result<_, ApiError>`; extractor rejections,
//! store and Kafka errors convert into it. The response is always
//! `{"error":{"code","message"}}` with the status of the
//! [`ErrorCode`](chatpipe_core::ErrorCode). `unavailable` and `internal`
//! responses carry a generic message: the detail goes to the log only.

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use chatpipe_cassandra::CassandraError;
use chatpipe_core::ErrorCode;
use chatpipe_core::auth::TokenError;
use chatpipe_core::error::HttpErrorBody;
use chatpipe_core::store::StoreError;
use chatpipe_kafka::KafkaAdapterError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input; the message says what is wrong.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unauthorized(#[from] TokenError),
    /// The caller may not do this (not a member).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// Valid, but refused in the conversation's present state (the last
    /// owner leaving, a conversation at its member cap): 409.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("rate limit exceeded; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The request ran past `request_timeout_ms` and was abandoned; 503
    /// `unavailable` with `Retry-After`, like an engine failure: retry.
    #[error("the request took longer than {after_ms} ms; retry later")]
    TimedOut { after_ms: u64 },
    /// `max_concurrent_requests` requests were already in flight; 503
    /// `unavailable` with `Retry-After` rather than queueing without bound.
    #[error("the server is busy; retry later")]
    Overloaded,
    /// A backing engine (Cassandra, Kafka, the search engine) failed in a
    /// way that may pass; the detail is logged, not returned.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Anything else; the detail is logged, not returned.
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Invalid(_) => ErrorCode::Invalid,
            ApiError::Unauthorized(_) => ErrorCode::Unauthorized,
            ApiError::Forbidden(_) => ErrorCode::Forbidden,
            ApiError::NotFound(_) => ErrorCode::NotFound,
            ApiError::Conflict(_) => ErrorCode::Conflict,
            ApiError::TooLarge(_) => ErrorCode::TooLarge,
            ApiError::RateLimited { .. } => ErrorCode::RateLimited,
            ApiError::Unavailable(_) | ApiError::TimedOut { .. } | ApiError::Overloaded => {
                ErrorCode::Unavailable
            }
            ApiError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// What the client is told.
    fn public_message(&self) -> String {
        match self {
            ApiError::Unavailable(_) => "a backing service is unavailable; retry later".to_owned(),
            ApiError::Internal(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        match &self {
            ApiError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "request failed: unavailable")
            }
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "request failed: internal")
            }
            _ => {}
        }
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (
            status,
            Json(HttpErrorBody::new(code, self.public_message())),
        )
            .into_response();
        match self {
            ApiError::RateLimited { retry_after_secs } => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
            }
            ApiError::TimedOut { .. } | ApiError::Overloaded => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            _ => {}
        }
        if code == ErrorCode::Unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // For the request metrics layer.
        response.extensions_mut().insert(code);
        response
    }
}

impl From<CassandraError> for ApiError {
    fn from(error: CassandraError) -> Self {
        if error.is_retriable() {
            ApiError::Unavailable(format!("cassandra: {error}"))
        } else {
            ApiError::Internal(format!("cassandra: {error}"))
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if error.retriable {
            ApiError::Unavailable(format!("store: {error}"))
        } else {
            ApiError::Internal(format!("store: {error}"))
        }
    }
}

impl From<KafkaAdapterError> for ApiError {
    fn from(error: KafkaAdapterError) -> Self {
        if error.is_retriable() {
            ApiError::Unavailable(format!("kafka: {error}"))
        } else {
            ApiError::Internal(format!("kafka: {error}"))
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge("request body too large".to_owned())
        } else {
            ApiError::Invalid(format!(
                "cannot read the request body: {}",
                rejection.body_text()
            ))
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::Invalid(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::Invalid(rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn every_error_has_the_contract_shape_and_internal_detail_stays_inside() {
        let cases = [
            (
                ApiError::Invalid("limit must be a number".into()),
                400,
                "invalid",
            ),
            (
                ApiError::Unauthorized(TokenError::Expired),
                401,
                "unauthorized",
            ),
            (ApiError::Forbidden("not a member".into()), 403, "forbidden"),
            (
                ApiError::NotFound("no such conversation".into()),
                404,
                "not_found",
            ),
            (
                ApiError::Conflict("the last owner cannot leave".into()),
                409,
                "conflict",
            ),
            (
                ApiError::TooLarge("too many members".into()),
                413,
                "too_large",
            ),
            (
                ApiError::RateLimited {
                    retry_after_secs: 1,
                },
                429,
                "rate_limited",
            ),
            (
                ApiError::Unavailable("cassandra at 10.0.0.7 refused".into()),
                503,
                "unavailable",
            ),
            (ApiError::TimedOut { after_ms: 30_000 }, 503, "unavailable"),
            (ApiError::Overloaded, 503, "unavailable"),
            (
                ApiError::Internal("secret table layout".into()),
                500,
                "internal",
            ),
        ];
        for (error, status, code) in cases {
            let (actual_status, body) = body_of(error).await;
            assert_eq!(actual_status.as_u16(), status);
            assert_eq!(body["error"]["code"], code);
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                !message.contains("10.0.0.7") && !message.contains("secret"),
                "{message}"
            );
        }
    }
}
