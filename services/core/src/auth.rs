//! Bearer tokens: HS256 JSON Web Tokens whose `sub` is the user id.
//!
//! The same [`TokenKeys`] sign (`chatpipe token`) and verify (every WebSocket
//! connection and HTTP call). The secret is never printed: `Debug` redacts it.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// Secrets that earlier versions of chatpipe shipped built in (a development
/// default). Anyone can read them in the source, so they are refused: a role
/// will not start with one ([`TokenKeys::from_configured_secret`]), and keys
/// made from one verify no token at all.
pub const FORMER_BUILT_IN_SECRETS: &[&str] =
    &["chatpipe-development-secret-do-not-use-in-production"];

/// Why a configured token secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the token secret is empty")]
    Empty,
    #[error("the token secret is one that chatpipe once shipped built in; choose a random one")]
    FormerlyBuiltIn,
}

/// True when `secret` is one of [`FORMER_BUILT_IN_SECRETS`] (surrounding
/// whitespace ignored, as a secret read from a file may end in a newline).
pub fn is_former_built_in_secret(secret: &[u8]) -> bool {
    let trimmed = secret.trim_ascii();
    FORMER_BUILT_IN_SECRETS
        .iter()
        .any(|known| known.as_bytes() == trimmed)
}

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
    #[error("token signed with a formerly built-in secret")]
    BuiltInSecret,
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
            TokenError::BuiltInSecret => "built_in_secret",
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
    /// Set when the keys were made from a formerly built-in secret: such keys
    /// verify nothing (defence in depth behind the start-up refusal).
    built_in: bool,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TokenKeys { secret: <redacted> }")
    }
}

impl TokenKeys {
    /// Keys from an operator-configured secret: refuses an empty secret and
    /// every formerly built-in one. Roles start only with keys made here.
    pub fn from_configured_secret(secret: &[u8]) -> Result<Self, SecretError> {
        if secret.trim_ascii().is_empty() {
            return Err(SecretError::Empty);
        }
        if is_former_built_in_secret(secret) {
            return Err(SecretError::FormerlyBuiltIn);
        }
        Ok(Self::from_secret(secret))
    }

    /// Keys from any secret (tests, tools). Keys made from a formerly
    /// built-in secret still sign, but verify no token.
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            built_in: is_former_built_in_secret(secret),
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
        if self.built_in {
            return Err(TokenError::BuiltInSecret);
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
    fn configured_secrets_refuse_empty_and_formerly_built_in_ones() {
        assert_eq!(
            TokenKeys::from_configured_secret(b"").err(),
            Some(SecretError::Empty)
        );
        assert_eq!(
            TokenKeys::from_configured_secret(b" \n").err(),
            Some(SecretError::Empty)
        );
        for former in FORMER_BUILT_IN_SECRETS {
            assert_eq!(
                TokenKeys::from_configured_secret(former.as_bytes()).err(),
                Some(SecretError::FormerlyBuiltIn)
            );
            let with_newline = format!("{former}\n");
            assert_eq!(
                TokenKeys::from_configured_secret(with_newline.as_bytes()).err(),
                Some(SecretError::FormerlyBuiltIn)
            );
        }
        assert!(TokenKeys::from_configured_secret(b"a-random-secret").is_ok());
    }

    #[test]
    fn tokens_signed_with_a_formerly_built_in_secret_are_refused() {
        let alice = UserId::parse("alice").unwrap();
        for former in FORMER_BUILT_IN_SECRETS {
            let old_keys = TokenKeys::from_secret(former.as_bytes());
            let token = old_keys.sign(&alice, now(), 60);
            // By keys of a configured secret: the signature does not match.
            let keys = TokenKeys::from_configured_secret(b"a-random-secret").unwrap();
            assert_eq!(keys.verify(&token), Err(TokenError::BadSignature));
            // Even by keys built from the old string itself.
            assert_eq!(old_keys.verify(&token), Err(TokenError::BuiltInSecret));
        }
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
