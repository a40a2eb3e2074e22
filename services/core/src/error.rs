//! The error vocabulary users see, in one place.
//!
//! Every library error in chatpipe converts into an [`ErrorCode`] at the edge
//! of a service; this module alone decides how a code looks on the
//! WebSocket (`"code"` of an `error` frame) and over HTTP (status and
//! `{"error":{"code","message"}}`).

use serde::{Deserialize, Serialize};

/// A user-visible error class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed input: bad JSON, unknown `op`, missing or invalid fields.
    Invalid,
    /// Missing, malformed, expired or wrongly signed token.
    Unauthorized,
    /// The caller is not a member of the conversation.
    Forbidden,
    /// Unknown conversation, member or route.
    NotFound,
    /// The request is valid but the conversation's present state refuses
    /// it (the last owner leaving, a conversation at its member cap).
    /// HTTP only.
    Conflict,
    /// The body or request exceeds a size limit.
    TooLarge,
    /// A rate limit refused the request; retry later.
    RateLimited,
    /// A backing engine did not answer in time; retry later.
    Unavailable,
    /// Anything else. Its message never carries internal detail.
    Internal,
}

impl ErrorCode {
    /// The `code` string, the same on the WebSocket and over HTTP.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "invalid",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Invalid => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }

    /// Whether the same request may succeed if simply tried again later.
    pub fn is_retriable(self) -> bool {
        matches!(self, ErrorCode::RateLimited | ErrorCode::Unavailable)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The JSON error body of the HTTP API: `{"error":{"code","message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpErrorBody {
    pub error: HttpErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpErrorDetail {
    pub code: ErrorCode,
    pub message: String,
}

impl HttpErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: HttpErrorDetail {
                code,
                message: message.into(),
            },
        }
    }
}
