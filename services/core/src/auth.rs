//! Bearer tokens: HS256 JSON Web Tokens whose `sub` is the user id.
//!
//! The same [`TokenKeys`] sign (`chatpipe token`) and verify (every WebSocket
//! connection and HTTP call). The secret is never printed: `Debug` redacts it.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// The development secret used when none is configured. Never use it in
/// production: `chatpipe` logs a warning when it is in force.
pub const DEVELOPMENT_SECRET: &str = "chatpipe-development-secret-do-not-use-in-production";

/// Why a token was refused. Each variant is counted separately by the edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token subject is not a valid user id")]
    BadSubject,
}

impl TokenError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::Expired => "expired",
            TokenError::BadSubject => "bad_subject",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iat: u64,
    exp: u64,
}

/// Signing and verification keys derived from one shared secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TokenKeys { secret: <redacted> }")
    }
}

impl TokenKeys {
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Signs a token for `user` valid for `ttl_secs` from `now_unix_s`.
    pub fn sign(&self, user: &UserId, now_unix_s: u64, ttl_secs: u64) -> String {
        let claims = Claims {
            sub: user.as_str().to_owned(),
            iat: now_unix_s,
            exp: now_unix_s + ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Verifies signature and expiry and returns the user.
    pub fn verify(&self, token: &str) -> Result<UserId, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Malformed,
            })?;
        UserId::parse(data.claims.sub).map_err(|_| TokenError::BadSubject)
    }
}

/// Extracts the token from an `Authorization: Bearer …` header value.
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        crate::time::now_unix_ms() / 1000
    }

    #[test]
    fn round_trip() {
        let keys = TokenKeys::from_secret(b"secret");
        let alice = UserId::parse("alice").unwrap();
        let token = keys.sign(&alice, now(), 60);
        assert_eq!(keys.verify(&token), Ok(alice));
    }

    #[test]
    fn refusals_are_classified() {
        let keys = TokenKeys::from_secret(b"secret");
        let other = TokenKeys::from_secret(b"other");
        let alice = UserId::parse("alice").unwrap();
        assert_eq!(keys.verify(""), Err(TokenError::Missing));
        assert_eq!(keys.verify("not.a.token"), Err(TokenError::Malformed));
        assert_eq!(
            keys.verify(&other.sign(&alice, now(), 60)),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            keys.verify(&keys.sign(&alice, now() - 3600, 60)),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let keys = TokenKeys::from_secret(b"super-secret-value");
        assert!(!format!("{keys:?}").contains("super-secret"));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
    }
}
