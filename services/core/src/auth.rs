//! Bearer tokens, and the push service's credential.
//!
//! **Tokens** are JSON Web Tokens whose `sub` is the user id. [`TokenKeys`]
//! verifies them (every WebSocket connection, every `refresh` frame, every
//! HTTP call) and signs them (`chatpipe token`):
//!
//! - HS256 with the configured secret, which is also the key that signs.
//!   It may be named by a `kid` ([`TokenKeys::with_kid`]).
//! - Any key of a JWKS document ([`TokenKeys::with_key_set`]): HS256
//!   (`"kty":"oct"`), RS256 (`"kty":"RSA"`) and ES256 (`"kty":"EC"`,
//!   P-256), each selected by the token's `kid`. Rotation keeps the old key
//!   in the set next to the new one, so tokens of both verify; an identity
//!   provider's public keys verify the tokens it issues.
//! - The keys of a JWKS document fetched from a URL and replaced while the
//!   server runs ([`TokenKeys::with_remote_key_set`],
//!   [`TokenKeys::replace_remote_keys`]). This crate does no I/O: the
//!   binary fetches the document, and hears of tokens naming an unknown
//!   `kid` through [`TokenKeys::on_unknown_kid`] so that it can refetch.
//! - A token that names a `kid` is checked against that key only (an
//!   unknown `kid` is refused); a token without one against every key of
//!   its algorithm.
//! - Optional `iss` and `aud` checks, and a server-side maximum lifetime
//!   ([`TokenPolicy`]): a token whose `exp − iat`, or `exp − now`, exceeds
//!   it is refused, so a leaked long-lived token is worth little.
//!
//! **The push key** ([`PushKey`]) is what fan-out workers present to the
//! edges' gRPC push service. By default it is derived from the token secret
//! with a domain-separated HMAC, so a cluster that shares the token secret
//! needs no other setting, and the push key travelling on the internal
//! network reveals nothing that signs tokens.
//!
//! No secret is ever printed: `Debug` redacts them.

use std::sync::{Arc, OnceLock, RwLock};

use hmac::{Hmac, Mac};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::ids::UserId;

/// Secrets that earlier versions of chatpipe shipped built in (a development
/// default). Anyone can read them in the source, so they are refused: a role
/// will not start with one ([`TokenKeys::from_configured_secret`]), and keys
/// made from one verify no token at all.
pub const FORMER_BUILT_IN_SECRETS: &[&str] =
    &["chatpipe-development-secret-do-not-use-in-production"];

/// The default longest token lifetime accepted: one day (also the default
/// lifetime of `chatpipe token`).
pub const DEFAULT_MAX_TOKEN_LIFETIME_SECS: u64 = 86_400;

/// Clock skew tolerated on `exp` (and on the lifetime check).
pub const TOKEN_LEEWAY_SECS: u64 = 5;

/// Shortest accepted push secret (`CHATPIPE_PUSH_SECRET`), in bytes.
pub const MIN_PUSH_SECRET_BYTES: usize = 32;

/// Why a configured token secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the token secret is empty")]
    Empty,
    #[error("the token secret is one that chatpipe once shipped built in; choose a random one")]
    FormerlyBuiltIn,
    #[error("the secret is shorter than {minimum} bytes")]
    TooShort { minimum: usize },
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
    #[error("token names a key (kid) or algorithm this server does not hold")]
    UnknownKey,
    #[error("token expired")]
    Expired,
    #[error("token issuer (iss) is not accepted")]
    WrongIssuer,
    #[error("token audience (aud) is not accepted")]
    WrongAudience,
    #[error("token lifetime exceeds the server's maximum")]
    LifetimeTooLong,
    #[error("token subject is not a valid user id")]
    BadSubject,
    #[error("token signed with a formerly built-in secret")]
    BuiltInSecret,
}

impl TokenError {
    /// A short label for metrics (a closed set).
    pub fn label(&self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed => "malformed",
            TokenError::BadSignature => "bad_signature",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Expired => "expired",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::LifetimeTooLong => "lifetime_too_long",
            TokenError::BadSubject => "bad_subject",
            TokenError::BuiltInSecret => "built_in_secret",
        }
    }
}

/// Why a JWKS document cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("not a JWKS document: {0}")]
    Parse(String),
    #[error("key {index} of the set has no `kid` (keys of a set are selected by kid)")]
    MissingKid { index: usize },
    #[error("key `{kid}`: unsupported key type or algorithm (HS256, RS256 and ES256 are)")]
    Unsupported { kid: String },
    #[error("key `{kid}`: {message}")]
    Invalid { kid: String, message: String },
    #[error("key `{kid}` is a formerly built-in secret")]
    FormerlyBuiltIn { kid: String },
    #[error("kid `{kid}` names more than one key")]
    DuplicateKid { kid: String },
    #[error("these keys have no remote key set to replace")]
    NoRemoteSet,
}

/// What a token must satisfy besides its signature and `exp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPolicy {
    /// Accepted `iss` values. Empty: `iss` is not checked; otherwise a
    /// token without an accepted `iss` is refused.
    pub issuers: Vec<String>,
    /// Accepted `aud` values. Empty: `aud` is not checked; otherwise a
    /// token must name one of them.
    pub audiences: Vec<String>,
    /// Longest lifetime accepted, in seconds: both `exp − iat` and
    /// `exp − now` must stay within it. 0 turns the check off.
    pub max_lifetime_secs: u64,
}

impl Default for TokenPolicy {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            audiences: Vec::new(),
            max_lifetime_secs: DEFAULT_MAX_TOKEN_LIFETIME_SECS,
        }
    }
}

impl TokenPolicy {
    /// The library's validation for one algorithm under this policy.
    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = TOKEN_LEEWAY_SECS;
        let mut required = vec!["exp", "sub"];
        if !self.issuers.is_empty() {
            validation.set_issuer(&self.issuers);
            required.push("iss");
        }
        if self.audiences.is_empty() {
            // Nothing configured: an `aud` claim is not ours to judge.
            validation.validate_aud = false;
        } else {
            validation.set_audience(&self.audiences);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    exp: u64,
    // Checked by the library (a string or a list); kept opaque here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aud: Option<serde_json::Value>,
}

/// A token that verified: whose it is and until when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub user: UserId,
    /// The token's `exp`, Unix seconds.
    pub expires_at_unix_s: u64,
}

/// One key that verifies tokens.
#[derive(Clone)]
struct Verifier {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

/// The keys of a JWKS document that the binary refetches: swapped whole,
/// so a verification sees either the old set or the new one.
#[derive(Default)]
struct RemoteKeySet {
    verifiers: RwLock<Arc<Vec<Verifier>>>,
    /// Called when a token names a `kid` that no key has.
    on_unknown_kid: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// Signing and verification keys: the configured secret, plus the keys of
/// an optional JWKS document (a file, or a URL refetched while running).
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    /// The `kid` written into tokens this server signs.
    signing_kid: Option<String>,
    /// The secret's verifier first, then the key set's.
    verifiers: Vec<Verifier>,
    /// Keys replaced while running (a JWKS URL), shared by every clone.
    remote: Option<Arc<RemoteKeySet>>,
    policy: TokenPolicy,
    /// Derived from the secret (see [`PushKey`]).
    push_key: PushKey,
    /// Set when the keys were made from a formerly built-in secret: such keys
    /// verify nothing (defence in depth behind the start-up refusal).
    built_in: bool,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TokenKeys")
            .field("secret", &"<redacted>")
            .field(
                "kids",
                &self
                    .verifiers
                    .iter()
                    .map(|verifier| verifier.kid.as_deref().unwrap_or("-"))
                    .collect::<Vec<_>>(),
            )
            .field("remote_key_set", &self.remote.is_some())
            .field("policy", &self.policy)
            .finish()
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
        let policy = TokenPolicy::default();
        Self {
            encoding: EncodingKey::from_secret(secret),
            signing_kid: None,
            verifiers: vec![Verifier {
                kid: None,
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
                validation: policy.validation(Algorithm::HS256),
            }],
            remote: None,
            policy,
            push_key: PushKey::derive(secret),
            built_in: is_former_built_in_secret(secret),
        }
    }

    /// Names the secret's key `kid`: tokens this server signs carry it, and
    /// tokens naming it verify with the secret.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        let kid = kid.into();
        self.signing_kid = Some(kid.clone());
        self.verifiers[0].kid = Some(kid);
        self
    }

    /// Applies `policy` to every key (issuers, audiences, lifetime).
    pub fn with_policy(mut self, policy: TokenPolicy) -> Self {
        for verifier in &mut self.verifiers {
            verifier.validation = policy.validation(verifier.algorithm);
        }
        self.policy = policy;
        self
    }

    /// Adds the keys of a JWKS document (`{"keys":[…]}`); each needs a
    /// `kid` unique among all keys. Keys marked `"use":"enc"` are skipped.
    pub fn with_key_set(mut self, jwks_json: &str) -> Result<Self, KeySetError> {
        let parsed = self.parse_key_set(jwks_json)?;
        self.verifiers.extend(parsed);
        Ok(self)
    }

    /// Adds an empty set of keys that [`TokenKeys::replace_remote_keys`]
    /// fills and replaces while the keys are in use (every clone sees the
    /// same set). Apply the policy before: the remote keys take it when
    /// they are replaced.
    pub fn with_remote_key_set(mut self) -> Self {
        self.remote = Some(Arc::new(RemoteKeySet::default()));
        self
    }

    /// Replaces the remote keys with those of `jwks_json`, whole: when the
    /// document is refused, the keys in use stay. The number of keys.
    pub fn replace_remote_keys(&self, jwks_json: &str) -> Result<usize, KeySetError> {
        let Some(remote) = &self.remote else {
            return Err(KeySetError::NoRemoteSet);
        };
        let parsed = self.parse_key_set(jwks_json)?;
        let count = parsed.len();
        *remote
            .verifiers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(parsed);
        Ok(count)
    }

    /// Calls `hook` (once per token) when a token names a `kid` that no
    /// key has, so that the remote set can be refetched. The first hook
    /// set stays; without a remote set there is nothing to call.
    pub fn on_unknown_kid(&self, hook: impl Fn() + Send + Sync + 'static) {
        if let Some(remote) = &self.remote {
            let _ = remote.on_unknown_kid.set(Box::new(hook));
        }
    }

    /// The verifiers of a JWKS document under this policy; each `kid` must
    /// be unique in the document and among the static keys.
    fn parse_key_set(&self, jwks_json: &str) -> Result<Vec<Verifier>, KeySetError> {
        let set: JwkSet = serde_json::from_str(jwks_json)
            .map_err(|error| KeySetError::Parse(error.to_string()))?;
        let mut parsed: Vec<Verifier> = Vec::new();
        for (index, jwk) in set.keys.iter().enumerate() {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let kid = jwk
                .common
                .key_id
                .clone()
                .ok_or(KeySetError::MissingKid { index })?;
            if self
                .verifiers
                .iter()
                .chain(parsed.iter())
                .any(|verifier| verifier.kid.as_deref() == Some(kid.as_str()))
            {
                return Err(KeySetError::DuplicateKid { kid });
            }
            let Some(algorithm) = signature_algorithm(jwk) else {
                return Err(KeySetError::Unsupported { kid });
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|error| KeySetError::Invalid {
                kid: kid.clone(),
                message: error.to_string(),
            })?;
            if algorithm == Algorithm::HS256 && is_former_built_in_secret(key.as_bytes()) {
                return Err(KeySetError::FormerlyBuiltIn { kid });
            }
            parsed.push(Verifier {
                kid: Some(kid),
                algorithm,
                key,
                validation: self.policy.validation(algorithm),
            });
        }
        Ok(parsed)
    }

    /// The policy tokens are checked against.
    pub fn policy(&self) -> &TokenPolicy {
        &self.policy
    }

    /// The push key derived from the secret (see [`PushKey::derive`]).
    pub fn derived_push_key(&self) -> PushKey {
        self.push_key.clone()
    }

    /// Signs a token for `user` valid for `ttl_secs` from `now_unix_s`,
    /// with the secret's `kid` and the policy's first issuer and audience.
    pub fn sign(&self, user: &UserId, now_unix_s: u64, ttl_secs: u64) -> String {
        let claims = Claims {
            sub: user.as_str().to_owned(),
            iat: Some(now_unix_s),
            exp: now_unix_s + ttl_secs,
            iss: self.policy.issuers.first().cloned().map(Into::into),
            aud: self.policy.audiences.first().cloned().map(Into::into),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = self.signing_kid.clone();
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Verifies signature, expiry and policy, and returns the user.
    pub fn verify(&self, token: &str) -> Result<UserId, TokenError> {
        self.verify_token(token).map(|verified| verified.user)
    }

    /// Verifies signature, expiry and policy, and returns the user and the
    /// token's expiry.
    pub fn verify_token(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if self.built_in {
            return Err(TokenError::BuiltInSecret);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let remote_verifiers = self.remote.as_ref().map(|remote| {
            remote
                .verifiers
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        });
        let all_verifiers = self.verifiers.iter().chain(
            remote_verifiers
                .iter()
                .flat_map(|verifiers| verifiers.iter()),
        );
        if let (Some(named), Some(remote)) = (&header.kid, &self.remote) {
            let known = all_verifiers
                .clone()
                .any(|verifier| verifier.kid.as_deref() == Some(named.as_str()));
            if !known {
                if let Some(hook) = remote.on_unknown_kid.get() {
                    hook();
                }
                return Err(TokenError::UnknownKey);
            }
        }
        let candidates = all_verifiers.filter(|verifier| {
            verifier.algorithm == header.alg
                && match (&header.kid, &verifier.kid) {
                    (Some(named), Some(own)) => named == own,
                    // A token naming a key is checked against that key only.
                    (Some(_), None) => false,
                    (None, _) => true,
                }
        });
        let mut refusal = TokenError::UnknownKey;
        for verifier in candidates {
            match jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation) {
                Ok(data) => return self.accept(data.claims, crate::time::now_unix_ms() / 1000),
                // Another key of the same algorithm may have signed it.
                Err(error) if matches!(error.kind(), ErrorKind::InvalidSignature) => {
                    refusal = TokenError::BadSignature;
                }
                // The signature verified (or the token is broken whatever
                // the key): the claims decide.
                Err(error) => return Err(classify(error.kind())),
            }
        }
        Err(refusal)
    }

    /// Checks a verified token's subject and lifetime.
    fn accept(&self, claims: Claims, now_unix_s: u64) -> Result<VerifiedToken, TokenError> {
        let max = self.policy.max_lifetime_secs;
        if max > 0 {
            let issued_too_long = claims
                .iat
                .is_some_and(|iat| claims.exp.saturating_sub(iat) > max);
            let left_too_long = claims.exp.saturating_sub(now_unix_s) > max + TOKEN_LEEWAY_SECS;
            if issued_too_long || left_too_long {
                return Err(TokenError::LifetimeTooLong);
            }
        }
        let user = UserId::parse(claims.sub).map_err(|_| TokenError::BadSubject)?;
        Ok(VerifiedToken {
            user,
            expires_at_unix_s: claims.exp,
        })
    }
}

/// The library's refusal, as ours.
fn classify(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm => TokenError::UnknownKey,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => TokenError::WrongIssuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => TokenError::WrongAudience,
        _ => TokenError::Malformed,
    }
}

/// The signature algorithm of a JWKS key: its `alg` when given (HS256,
/// RS256 or ES256), else what its key type implies.
fn signature_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    let declared = jwk.common.key_algorithm;
    match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_)
            if matches!(declared, None | Some(KeyAlgorithm::HS256)) =>
        {
            Some(Algorithm::HS256)
        }
        AlgorithmParameters::RSA(_) if matches!(declared, None | Some(KeyAlgorithm::RS256)) => {
            Some(Algorithm::RS256)
        }
        AlgorithmParameters::EllipticCurve(params)
            if matches!(params.curve, EllipticCurve::P256)
                && matches!(declared, None | Some(KeyAlgorithm::ES256)) =>
        {
            Some(Algorithm::ES256)
        }
        _ => None,
    }
}

/// Extracts the token from an `Authorization: Bearer …` header value.
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// What makes a push key from a secret: a fixed label, so the key is bound
/// to this one use (domain separation) and no other chatpipe key equals it.
const PUSH_KEY_LABEL: &[u8] = b"chatpipe/edge-push/v1";

/// The credential of the edges' gRPC push service: fan-out workers send it
/// as `authorization: Bearer <hex>`, edges compare it in constant time.
///
/// It is `HMAC-SHA256(secret, "chatpipe/edge-push/v1")`, where `secret` is
/// `CHATPIPE_PUSH_SECRET` when configured, else the token secret (see
/// [`TokenKeys::derived_push_key`]). Deriving it, instead of sending the
/// secret itself, means that whoever reads the push traffic (plain h2c on
/// the internal network) learns a key that opens the push port only, and
/// cannot sign tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct PushKey([u8; 32]);

impl std::fmt::Debug for PushKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PushKey(<redacted>)")
    }
}

impl PushKey {
    /// The key derived from `secret` (surrounding whitespace ignored, as
    /// for token secrets read from a file).
    pub fn derive(secret: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.trim_ascii())
            .expect("HMAC accepts keys of any length");
        mac.update(PUSH_KEY_LABEL);
        let mut key = [0u8; 32];
        key.copy_from_slice(&mac.finalize().into_bytes());
        Self(key)
    }

    /// The key from an operator-configured push secret: at least
    /// [`MIN_PUSH_SECRET_BYTES`] bytes, never a formerly built-in string.
    pub fn from_configured_secret(secret: &[u8]) -> Result<Self, SecretError> {
        let trimmed = secret.trim_ascii();
        if trimmed.is_empty() {
            return Err(SecretError::Empty);
        }
        if is_former_built_in_secret(trimmed) {
            return Err(SecretError::FormerlyBuiltIn);
        }
        if trimmed.len() < MIN_PUSH_SECRET_BYTES {
            return Err(SecretError::TooShort {
                minimum: MIN_PUSH_SECRET_BYTES,
            });
        }
        Ok(Self::derive(trimmed))
    }

    /// The bearer value sent in `authorization` (lowercase hex).
    pub fn bearer(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Whether `presented` (the bearer value a caller sent) is this key,
    /// compared in constant time.
    pub fn accepts(&self, presented: &str) -> bool {
        self.bearer().as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use jsonwebtoken::jwk::Jwk;

    use super::*;

    fn now() -> u64 {
        crate::time::now_unix_ms() / 1000
    }

    /// A P-256 private key (PKCS#8 DER) made for these tests only.
    const ES256_TEST_KEY_PKCS8: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg0TG9PFBVEgrbN/rqbl7UMia3G861sdg1KZ1nU0Sz/l2hRANCAAQEhPOMp/SRYsV6sl7EbPKMNctZwNoxZzjDJevMiY0GZM0kjIHZOucHlSx3/vhq1VhXvHeELXFpZqGZu0M99P3c";

    fn claims(sub: &str, iat: u64, exp: u64) -> Claims {
        Claims {
            sub: sub.into(),
            iat: Some(iat),
            exp,
            iss: None,
            aud: None,
        }
    }

    fn sign_with(
        key: &EncodingKey,
        algorithm: Algorithm,
        kid: Option<&str>,
        claims: &Claims,
    ) -> String {
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    #[test]
    fn round_trip() {
        let keys = TokenKeys::from_secret(b"secret");
        let alice = UserId::parse("alice").unwrap();
        let issued = now();
        let token = keys.sign(&alice, issued, 60);
        assert_eq!(keys.verify(&token), Ok(alice.clone()));
        assert_eq!(
            keys.verify_token(&token),
            Ok(VerifiedToken {
                user: alice,
                expires_at_unix_s: issued + 60
            })
        );
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
    fn tokens_outliving_the_maximum_lifetime_are_refused() {
        let keys = TokenKeys::from_secret(b"secret");
        let alice = UserId::parse("alice").unwrap();
        // Exactly the maximum (the default of `chatpipe token`) is fine.
        assert!(
            keys.verify(&keys.sign(&alice, now(), DEFAULT_MAX_TOKEN_LIFETIME_SECS))
                .is_ok()
        );
        assert_eq!(
            keys.verify(&keys.sign(&alice, now(), DEFAULT_MAX_TOKEN_LIFETIME_SECS + 60)),
            Err(TokenError::LifetimeTooLong)
        );
        // Without `iat`, what is left of it counts.
        let secret = EncodingKey::from_secret(b"secret");
        let mut no_iat = claims("alice", 0, now() + 30 * 86_400);
        no_iat.iat = None;
        assert_eq!(
            keys.verify(&sign_with(&secret, Algorithm::HS256, None, &no_iat)),
            Err(TokenError::LifetimeTooLong)
        );
        no_iat.exp = now() + 600;
        assert!(
            keys.verify(&sign_with(&secret, Algorithm::HS256, None, &no_iat))
                .is_ok()
        );
        // A configured maximum replaces the default; 0 turns it off.
        let strict = keys.clone().with_policy(TokenPolicy {
            max_lifetime_secs: 300,
            ..TokenPolicy::default()
        });
        assert_eq!(
            strict.verify(&keys.sign(&alice, now(), 600)),
            Err(TokenError::LifetimeTooLong)
        );
        let unbounded = keys.clone().with_policy(TokenPolicy {
            max_lifetime_secs: 0,
            ..TokenPolicy::default()
        });
        assert!(
            unbounded
                .verify(&keys.sign(&alice, now(), 400 * 86_400))
                .is_ok()
        );
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let policy = TokenPolicy {
            issuers: vec!["https://id.example".into()],
            audiences: vec!["chatpipe".into()],
            ..TokenPolicy::default()
        };
        let keys = TokenKeys::from_secret(b"secret").with_policy(policy);
        let alice = UserId::parse("alice").unwrap();
        // What this server signs carries both.
        assert_eq!(
            keys.verify(&keys.sign(&alice, now(), 60)),
            Ok(alice.clone())
        );
        let secret = EncodingKey::from_secret(b"secret");
        let mut token = claims("alice", now(), now() + 60);
        token.iss = Some("https://id.example".into());
        token.aud = Some(serde_json::json!(["other", "chatpipe"]));
        assert!(
            keys.verify(&sign_with(&secret, Algorithm::HS256, None, &token))
                .is_ok()
        );
        token.iss = Some("https://evil.example".into());
        assert_eq!(
            keys.verify(&sign_with(&secret, Algorithm::HS256, None, &token)),
            Err(TokenError::WrongIssuer)
        );
        token.iss = Some("https://id.example".into());
        token.aud = Some("someone-else".into());
        assert_eq!(
            keys.verify(&sign_with(&secret, Algorithm::HS256, None, &token)),
            Err(TokenError::WrongAudience)
        );
        token.aud = None;
        assert_eq!(
            keys.verify(&sign_with(&secret, Algorithm::HS256, None, &token)),
            Err(TokenError::WrongAudience)
        );
        token.aud = Some("chatpipe".into());
        token.iss = None;
        assert_eq!(
            keys.verify(&sign_with(&secret, Algorithm::HS256, None, &token)),
            Err(TokenError::WrongIssuer)
        );
        // Unconfigured, neither claim is judged.
        let plain = TokenKeys::from_secret(b"secret");
        token.iss = Some("anyone".into());
        token.aud = Some("anything".into());
        assert!(
            plain
                .verify(&sign_with(&secret, Algorithm::HS256, None, &token))
                .is_ok()
        );
    }

    #[test]
    fn rotated_keys_are_selected_by_kid() {
        let old_secret = b"the-old-secret-0123456789abcdef!";
        let jwks = serde_json::json!({"keys": [{
            "kty": "oct",
            "kid": "2025-old",
            "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(old_secret),
        }]})
        .to_string();
        let keys = TokenKeys::from_secret(b"the-new-secret")
            .with_kid("2026-new")
            .with_key_set(&jwks)
            .unwrap();
        let alice = UserId::parse("alice").unwrap();
        // New tokens carry the new kid and verify.
        let fresh = keys.sign(&alice, now(), 60);
        assert_eq!(
            jsonwebtoken::decode_header(&fresh).unwrap().kid.as_deref(),
            Some("2026-new")
        );
        assert_eq!(keys.verify(&fresh), Ok(alice.clone()));
        // Tokens of the old key still verify, by kid or without one.
        let old = EncodingKey::from_secret(old_secret);
        let token = claims("alice", now(), now() + 60);
        assert_eq!(
            keys.verify(&sign_with(&old, Algorithm::HS256, Some("2025-old"), &token)),
            Ok(alice.clone())
        );
        assert_eq!(
            keys.verify(&sign_with(&old, Algorithm::HS256, None, &token)),
            Ok(alice.clone())
        );
        // A kid names one key: the old key under the new kid does not verify.
        assert_eq!(
            keys.verify(&sign_with(&old, Algorithm::HS256, Some("2026-new"), &token)),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            keys.verify(&sign_with(&old, Algorithm::HS256, Some("unknown"), &token)),
            Err(TokenError::UnknownKey)
        );
        // Rotation done: without the old key in the set, its tokens fail.
        let rotated = TokenKeys::from_secret(b"the-new-secret").with_kid("2026-new");
        assert_eq!(
            rotated.verify(&sign_with(&old, Algorithm::HS256, Some("2025-old"), &token)),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn remote_keys_are_replaced_whole_and_unknown_kids_are_reported() {
        let oct = |kid: &str, secret: &[u8]| {
            serde_json::json!({"keys": [{
                "kty": "oct",
                "kid": kid,
                "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
            }]})
            .to_string()
        };
        let first_secret = b"the-first-remote-secret-01234567";
        let second_secret = b"the-second-remote-secret-0123456";
        let keys = TokenKeys::from_secret(b"local").with_remote_key_set();
        let reported = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        keys.on_unknown_kid({
            let reported = reported.clone();
            move || {
                reported.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let token = claims("alice", now(), now() + 60);
        let first = sign_with(
            &EncodingKey::from_secret(first_secret),
            Algorithm::HS256,
            Some("r1"),
            &token,
        );
        let second = sign_with(
            &EncodingKey::from_secret(second_secret),
            Algorithm::HS256,
            Some("r2"),
            &token,
        );
        let alice = UserId::parse("alice").unwrap();
        assert_eq!(keys.verify(&first), Err(TokenError::UnknownKey));
        assert_eq!(reported.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A clone shares the set: what one replaces, every clone verifies.
        let clone = keys.clone();
        assert_eq!(keys.replace_remote_keys(&oct("r1", first_secret)), Ok(1));
        assert_eq!(clone.verify(&first), Ok(alice.clone()));
        assert_eq!(clone.verify(&second), Err(TokenError::UnknownKey));
        assert_eq!(reported.load(std::sync::atomic::Ordering::SeqCst), 2);

        // A refused document keeps the keys in use.
        assert!(matches!(
            keys.replace_remote_keys("{"),
            Err(KeySetError::Parse(_))
        ));
        assert_eq!(keys.verify(&first), Ok(alice.clone()));

        // Rotated: the new kid verifies, the old one is gone.
        assert_eq!(keys.replace_remote_keys(&oct("r2", second_secret)), Ok(1));
        assert_eq!(keys.verify(&second), Ok(alice));
        assert_eq!(keys.verify(&first), Err(TokenError::UnknownKey));
        assert_eq!(
            TokenKeys::from_secret(b"local").replace_remote_keys(&oct("r1", first_secret)),
            Err(KeySetError::NoRemoteSet)
        );
    }

    #[test]
    fn public_keys_of_a_key_set_verify_es256_tokens() {
        let der = base64::engine::general_purpose::STANDARD
            .decode(ES256_TEST_KEY_PKCS8)
            .unwrap();
        let private = EncodingKey::from_ec_der(&der);
        let mut public = Jwk::from_encoding_key(&private, Algorithm::ES256).unwrap();
        public.common.key_id = Some("idp-1".into());
        let jwks = serde_json::json!({ "keys": [public] }).to_string();
        assert!(
            !jwks.contains("\"d\""),
            "only the public part is in the set"
        );
        let keys = TokenKeys::from_secret(b"secret")
            .with_key_set(&jwks)
            .unwrap();
        let token = claims("bob", now(), now() + 60);
        assert_eq!(
            keys.verify(&sign_with(
                &private,
                Algorithm::ES256,
                Some("idp-1"),
                &token
            )),
            Ok(UserId::parse("bob").unwrap())
        );
        // The algorithm is the key's: an HS256 token naming it is refused
        // (no algorithm confusion with the public key as an HMAC secret).
        let forged = sign_with(
            &EncodingKey::from_secret(jwks.as_bytes()),
            Algorithm::HS256,
            Some("idp-1"),
            &token,
        );
        assert_eq!(keys.verify(&forged), Err(TokenError::UnknownKey));
    }

    #[test]
    fn bad_key_sets_are_refused_with_a_reason() {
        let keys = TokenKeys::from_secret(b"secret").with_kid("main");
        assert!(matches!(
            keys.clone().with_key_set("[]"),
            Err(KeySetError::Parse(_))
        ));
        assert_eq!(
            keys.clone()
                .with_key_set(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#)
                .err(),
            Some(KeySetError::MissingKid { index: 0 })
        );
        assert_eq!(
            keys.clone()
                .with_key_set(r#"{"keys":[{"kty":"oct","kid":"main","k":"c2VjcmV0"}]}"#)
                .err(),
            Some(KeySetError::DuplicateKid { kid: "main".into() })
        );
        assert_eq!(
            keys.clone()
                .with_key_set(r#"{"keys":[{"kty":"oct","kid":"x","alg":"HS512","k":"c2VjcmV0"}]}"#)
                .err(),
            Some(KeySetError::Unsupported { kid: "x".into() })
        );
        let former = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(FORMER_BUILT_IN_SECRETS[0].as_bytes());
        let jwks = format!(r#"{{"keys":[{{"kty":"oct","kid":"old","k":"{former}"}}]}}"#);
        assert_eq!(
            keys.with_key_set(&jwks).err(),
            Some(KeySetError::FormerlyBuiltIn { kid: "old".into() })
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
        let push = keys.derived_push_key();
        assert!(!format!("{push:?}").contains(&push.bearer()));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
    }

    #[test]
    fn the_push_key_is_derived_separated_and_checked() {
        let keys = TokenKeys::from_secret(b"token-secret");
        let push = keys.derived_push_key();
        // Stable for one secret (every role derives the same), different
        // for another, and never the secret itself.
        assert_eq!(push, PushKey::derive(b"token-secret\n"));
        assert_ne!(push, PushKey::derive(b"another-secret"));
        assert_eq!(push.bearer().len(), 64);
        assert!(
            !push.bearer().contains(
                &"token-secret"
                    .bytes()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            )
        );
        assert!(push.accepts(&push.bearer()));
        assert!(!push.accepts(""));
        assert!(!push.accepts(&PushKey::derive(b"another-secret").bearer()));
        assert!(!push.accepts(&push.bearer()[..63]));
        // A configured push secret: long enough, never a former default.
        assert_eq!(
            PushKey::from_configured_secret(b"short").err(),
            Some(SecretError::TooShort {
                minimum: MIN_PUSH_SECRET_BYTES
            })
        );
        assert_eq!(
            PushKey::from_configured_secret(b"  ").err(),
            Some(SecretError::Empty)
        );
        let configured =
            PushKey::from_configured_secret(b"0123456789abcdef0123456789abcdef").unwrap();
        assert_ne!(configured, push);
    }
}
