//! Typed errors of the search adapter; each says whether a retry may help.

use chatpipe_core::{ConversationId, ErrorCode};

/// A failed request to the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// No answer: connection refused or reset, DNS, or the request deadline.
    #[error("search engine unreachable: {0}")]
    Unreachable(String),
    /// The engine answered with a status that a later retry may fix
    /// (429, 5xx, an index or alias not (yet) there, a read-only block).
    #[error("search engine busy or unavailable (HTTP {status}): {reason}")]
    Unavailable { status: u16, reason: String },
    /// The engine refused the request itself (HTTP 400 and the like).
    #[error("search engine rejected the request (HTTP {status}, {kind}): {reason}")]
    Rejected {
        status: u16,
        kind: String,
        reason: String,
    },
    /// The engine answered something this code does not understand.
    #[error("unexpected search engine response: {0}")]
    Protocol(String),
}

impl EngineError {
    /// Whether trying the same request again later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            EngineError::Unreachable(_) | EngineError::Unavailable { .. }
        )
    }

    /// Classifies an error answer from its status and `error.type`.
    pub fn from_status(status: u16, kind: &str, reason: &str) -> Self {
        if is_retriable_status(status, kind) {
            EngineError::Unavailable {
                status,
                reason: format!("{kind}: {reason}"),
            }
        } else {
            EngineError::Rejected {
                status,
                kind: kind.to_owned(),
                reason: reason.to_owned(),
            }
        }
    }
}

/// Statuses a later retry may fix: overload (429), server errors (5xx), a
/// missing index or alias (404, an operator or `apply_template` fixes it),
/// cluster blocks such as a disk-full read-only index (403, and 408 for
/// timeouts). Anything else — above all 400 — is a fault of the request.
pub fn is_retriable_status(status: u16, kind: &str) -> bool {
    match status {
        429 | 408 | 403 => true,
        404 => kind.contains("index_not_found") || kind.is_empty(),
        status => status >= 500,
    }
}

/// Why a search could not be answered; [`SearchError::error_code`] maps it
/// to what users see (never `internal` for bad user input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    /// A parameter is missing or malformed (message says which).
    #[error("{0}")]
    Invalid(String),
    /// The caller asked for a conversation the caller is not a member of.
    #[error("not a member of conversation {0}")]
    Forbidden(ConversationId),
    /// The engine is down or overloaded.
    #[error("search is unavailable: {0}")]
    Unavailable(String),
    /// Anything else; the message is for logs, not for users.
    #[error("search failed: {0}")]
    Internal(String),
}

impl SearchError {
    pub fn error_code(&self) -> ErrorCode {
        match self {
            SearchError::Invalid(_) => ErrorCode::Invalid,
            SearchError::Forbidden(_) => ErrorCode::Forbidden,
            SearchError::Unavailable(_) => ErrorCode::Unavailable,
            SearchError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn is_retriable(&self) -> bool {
        self.error_code().is_retriable()
    }

    /// The message safe to show users.
    pub fn public_message(&self) -> String {
        match self {
            SearchError::Invalid(message) => message.clone(),
            SearchError::Forbidden(conversation) => {
                format!("you are not a member of conversation {conversation}")
            }
            SearchError::Unavailable(_) => {
                "search is temporarily unavailable; retry later".to_owned()
            }
            SearchError::Internal(_) => "internal error".to_owned(),
        }
    }
}

impl From<EngineError> for SearchError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::Unreachable(_) | EngineError::Unavailable { .. } => {
                SearchError::Unavailable(error.to_string())
            }
            // The query is built from user input; a 400 from the engine for
            // it means the input could not be run (too many clauses, a
            // value out of range), never a server fault.
            EngineError::Rejected { status: 400, .. } => SearchError::Invalid(
                "the search query could not be executed; simplify it".to_owned(),
            ),
            EngineError::Rejected { .. } | EngineError::Protocol(_) => {
                SearchError::Internal(error.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        assert!(
            EngineError::from_status(429, "es_rejected_execution_exception", "").is_retriable()
        );
        assert!(EngineError::from_status(503, "unavailable_shards_exception", "").is_retriable());
        assert!(EngineError::from_status(404, "index_not_found_exception", "").is_retriable());
        assert!(EngineError::from_status(403, "cluster_block_exception", "").is_retriable());
        assert!(!EngineError::from_status(400, "mapper_parsing_exception", "").is_retriable());
        assert!(!EngineError::from_status(404, "resource_not_found_exception", "").is_retriable());
    }

    #[test]
    fn user_visible_codes() {
        let rejected: SearchError =
            EngineError::from_status(400, "search_phase_execution_exception", "x").into();
        assert_eq!(rejected.error_code(), ErrorCode::Invalid);
        let down: SearchError = EngineError::Unreachable("refused".into()).into();
        assert_eq!(down.error_code(), ErrorCode::Unavailable);
        assert!(!down.public_message().contains("refused"));
    }
}
