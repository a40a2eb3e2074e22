//! The token secret: where every role and `chatpipe token` find it.
//!
//! There is no built-in secret. In order, the secret is
//!
//! 1. `--token-secret` / `CHATPIPE_TOKEN_SECRET`, when set and not empty;
//! 2. the file `token-secret` under the chatpipe home (`CHATPIPE_HOME`,
//!    default `~/.cache/chatpipe`), which the Quickstart's run command
//!    creates on first use with a random value, mode 0600
//!    (`chatpipe secret init`, see [`ensure_secret_file`]);
//! 3. otherwise nothing, and the role refuses to start
//!    ([`SecretLoadError::Missing`]).
//!
//! An empty secret counts as none, and any secret chatpipe once shipped
//! built in is refused (see `chatpipe_core::auth::FORMER_BUILT_IN_SECRETS`).
//!
//! The keys are then configured ([`configure_token_keys`]): the secret's
//! `kid`, a JWKS file of further keys, the issuer, audience and lifetime
//! policy. The push key ([`load_push_key`]) is `CHATPIPE_PUSH_SECRET`'s
//! when set, else derived from the token secret.

use std::io::Write;
use std::path::{Path, PathBuf};

use chatpipe_core::auth::{KeySetError, PushKey, SecretError, TokenKeys, TokenPolicy};

/// Name of the secret file under the chatpipe home.
pub const SECRET_FILE_NAME: &str = "token-secret";

/// Bytes of randomness in a generated secret (written as hex).
const GENERATED_SECRET_BYTES: usize = 32;

/// Where a secret came from (for logs; never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `--token-secret` or `CHATPIPE_TOKEN_SECRET`.
    Configured,
    /// The secret file.
    File(PathBuf),
}

/// Why no usable token secret was found.
#[derive(Debug, thiserror::Error)]
pub enum SecretLoadError {
    #[error(
        "no token secret: set CHATPIPE_TOKEN_SECRET (or --token-secret), or create {} \
         (`chatpipe secret init` writes a random one; topology/run.sh does it on first use)",
        file.display()
    )]
    Missing { file: PathBuf },
    #[error("reading the token secret file {}: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the token secret file {}: {source}", file.display())]
    Write {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token secret from {from}: {source}")]
    Refused {
        from: String,
        #[source]
        source: SecretError,
    },
    #[error("the token key set {}: {source}", file.display())]
    KeySet {
        file: PathBuf,
        #[source]
        source: KeySetError,
    },
}

/// How tokens are verified besides the secret itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenOptions {
    /// The secret's `kid` (empty: none).
    pub kid: Option<String>,
    /// A JWKS document of further keys.
    pub jwks_file: Option<PathBuf>,
    /// Issuers, audiences and the longest lifetime accepted.
    pub policy: TokenPolicy,
}

/// Applies `options` to keys made from the secret: the policy, the
/// secret's `kid`, and the keys of the JWKS file. Empty strings count as
/// unset (an empty environment variable).
pub fn configure_token_keys(
    keys: TokenKeys,
    options: &TokenOptions,
) -> Result<TokenKeys, SecretLoadError> {
    let non_empty = |values: &[String]| -> Vec<String> {
        values
            .iter()
            .map(|value| value.trim().to_owned())
            .filter(|value| !value.is_empty())
            .collect()
    };
    let policy = TokenPolicy {
        issuers: non_empty(&options.policy.issuers),
        audiences: non_empty(&options.policy.audiences),
        max_lifetime_secs: options.policy.max_lifetime_secs,
    };
    let mut keys = keys.with_policy(policy);
    if let Some(kid) = options
        .kid
        .as_deref()
        .map(str::trim)
        .filter(|kid| !kid.is_empty())
    {
        keys = keys.with_kid(kid);
    }
    if let Some(file) = options
        .jwks_file
        .as_ref()
        .filter(|file| !file.as_os_str().is_empty())
    {
        let document = std::fs::read_to_string(file).map_err(|source| SecretLoadError::Read {
            file: file.clone(),
            source,
        })?;
        keys = keys
            .with_key_set(&document)
            .map_err(|source| SecretLoadError::KeySet {
                file: file.clone(),
                source,
            })?;
    }
    Ok(keys)
}

/// The push key: from `CHATPIPE_PUSH_SECRET` / `--push-secret` when set
/// and not empty (at least 32 bytes), else derived from the token secret.
pub fn load_push_key(
    configured: Option<&str>,
    keys: &TokenKeys,
) -> Result<PushKey, SecretLoadError> {
    match configured.filter(|secret| !secret.trim().is_empty()) {
        Some(secret) => PushKey::from_configured_secret(secret.as_bytes()).map_err(|source| {
            SecretLoadError::Refused {
                from: "CHATPIPE_PUSH_SECRET / --push-secret".to_owned(),
                source,
            }
        }),
        None => Ok(keys.derived_push_key()),
    }
}

impl SecretLoadError {
    /// Every variant needs an operator to act; retrying changes nothing.
    pub fn is_retriable(&self) -> bool {
        false
    }
}

/// The chatpipe home: `CHATPIPE_HOME`, else `$HOME/.cache/chatpipe` (the
/// same directory `topology/engines.sh` keeps the engines in).
pub fn chatpipe_home() -> PathBuf {
    match std::env::var_os("CHATPIPE_HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home),
        _ => {
            let user_home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
            PathBuf::from(user_home).join(".cache").join("chatpipe")
        }
    }
}

/// The secret file under `home`.
pub fn secret_file(home: &Path) -> PathBuf {
    home.join(SECRET_FILE_NAME)
}

/// Token keys from the configured secret, else from the secret file under
/// `home`; refuses when there is neither, or when the secret is empty or
/// formerly built in.
pub fn load_token_keys(
    configured: Option<&str>,
    home: &Path,
) -> Result<(TokenKeys, SecretSource), SecretLoadError> {
    if let Some(secret) = configured.filter(|secret| !secret.trim().is_empty()) {
        let keys = TokenKeys::from_configured_secret(secret.as_bytes()).map_err(|source| {
            SecretLoadError::Refused {
                from: "CHATPIPE_TOKEN_SECRET / --token-secret".to_owned(),
                source,
            }
        })?;
        return Ok((keys, SecretSource::Configured));
    }
    let file = secret_file(home);
    let contents = match std::fs::read(&file) {
        Ok(contents) => contents,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(SecretLoadError::Missing { file });
        }
        Err(source) => return Err(SecretLoadError::Read { file, source }),
    };
    // A trailing newline (an editor, `echo >`) is not part of the secret.
    let secret = contents.trim_ascii();
    if secret.is_empty() {
        return Err(SecretLoadError::Missing { file });
    }
    warn_if_readable_by_others(&file);
    let keys =
        TokenKeys::from_configured_secret(secret).map_err(|source| SecretLoadError::Refused {
            from: file.display().to_string(),
            source,
        })?;
    Ok((keys, SecretSource::File(file)))
}

/// Creates the secret file under `home` with a random secret, mode 0600,
/// unless it already holds one. Returns the file and whether it was created.
pub fn ensure_secret_file(home: &Path) -> Result<(PathBuf, bool), SecretLoadError> {
    let file = secret_file(home);
    match std::fs::read(&file) {
        Ok(contents) if !contents.trim_ascii().is_empty() => return Ok((file, false)),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(SecretLoadError::Read { file, source }),
    }
    let write_error = |source| SecretLoadError::Write {
        file: file.clone(),
        source,
    };
    std::fs::create_dir_all(home).map_err(write_error)?;
    let mut bytes = [0u8; GENERATED_SECRET_BYTES];
    rand::fill(&mut bytes);
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    // Written to a private temporary file, then renamed: the secret is never
    // readable by others, not even half-written.
    let temporary = home.join(format!(".{SECRET_FILE_NAME}.{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut writer = options.open(&temporary).map_err(write_error)?;
    writer
        .write_all(format!("{hex}\n").as_bytes())
        .and_then(|()| writer.sync_all())
        .map_err(write_error)?;
    std::fs::rename(&temporary, &file).map_err(write_error)?;
    Ok((file, true))
}

#[cfg(unix)]
fn warn_if_readable_by_others(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(file)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(file = %file.display(), "the token secret file is readable by other users; chmod 600 it");
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_file: &Path) {}

#[cfg(test)]
mod tests {
    use chatpipe_core::UserId;
    use chatpipe_core::auth::FORMER_BUILT_IN_SECRETS;

    use super::*;

    fn scratch_home() -> PathBuf {
        let home = std::env::temp_dir().join(format!("chatpipe-secret-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&home).unwrap();
        home
    }

    #[test]
    fn without_a_configured_secret_or_a_file_nothing_loads() {
        let home = scratch_home();
        for configured in [None, Some(""), Some("  ")] {
            assert!(matches!(
                load_token_keys(configured, &home),
                Err(SecretLoadError::Missing { .. })
            ));
        }
        std::fs::write(secret_file(&home), "\n").unwrap();
        assert!(matches!(
            load_token_keys(None, &home),
            Err(SecretLoadError::Missing { .. })
        ));
    }

    #[test]
    fn the_generated_file_is_private_random_and_kept() {
        let home = scratch_home().join("nested");
        let (file, created) = ensure_secret_file(&home).unwrap();
        assert!(created);
        let first = std::fs::read_to_string(&file).unwrap();
        assert_eq!(first.trim().len(), GENERATED_SECRET_BYTES * 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (_, created_again) = ensure_secret_file(&home).unwrap();
        assert!(!created_again);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), first);
        let other_home = scratch_home();
        ensure_secret_file(&other_home).unwrap();
        assert_ne!(
            std::fs::read_to_string(secret_file(&other_home)).unwrap(),
            first
        );
    }

    #[test]
    fn the_file_signs_and_the_configured_secret_overrides_it() {
        let home = scratch_home();
        ensure_secret_file(&home).unwrap();
        let (from_file, source) = load_token_keys(None, &home).unwrap();
        assert_eq!(source, SecretSource::File(secret_file(&home)));
        let written = std::fs::read_to_string(secret_file(&home)).unwrap();
        let alice = UserId::parse("alice").unwrap();
        let now = chatpipe_core::time::now_unix_ms() / 1000;
        let token = from_file.sign(&alice, now, 3600);
        let by_hand = TokenKeys::from_secret(written.trim().as_bytes());
        assert_eq!(by_hand.verify(&token), Ok(alice.clone()));
        let (configured, source) = load_token_keys(Some("from-the-environment"), &home).unwrap();
        assert_eq!(source, SecretSource::Configured);
        assert!(configured.verify(&token).is_err());
    }

    #[test]
    fn token_options_name_the_secret_add_a_key_set_and_set_the_policy() {
        let home = scratch_home();
        let jwks = home.join("jwks.json");
        // "old-secret" as a JWK `k` (base64url).
        std::fs::write(
            &jwks,
            r#"{"keys":[{"kty":"oct","kid":"old","k":"b2xkLXNlY3JldA"}]}"#,
        )
        .unwrap();
        let options = TokenOptions {
            kid: Some("new".into()),
            jwks_file: Some(jwks.clone()),
            policy: TokenPolicy {
                issuers: vec![String::new()],
                audiences: vec![" chatpipe ".into()],
                max_lifetime_secs: 600,
            },
        };
        let keys = configure_token_keys(TokenKeys::from_secret(b"new-secret"), &options).unwrap();
        assert_eq!(
            keys.policy().issuers,
            Vec::<String>::new(),
            "empty means unset"
        );
        assert_eq!(keys.policy().audiences, vec!["chatpipe".to_owned()]);
        let alice = UserId::parse("alice").unwrap();
        let now = chatpipe_core::time::now_unix_ms() / 1000;
        assert_eq!(keys.verify(&keys.sign(&alice, now, 600)), Ok(alice.clone()));
        assert!(keys.verify(&keys.sign(&alice, now, 601)).is_err());
        // A token of the old key verifies through the key set.
        let old = configure_token_keys(
            TokenKeys::from_secret(b"old-secret"),
            &TokenOptions {
                kid: Some("old".into()),
                policy: keys.policy().clone(),
                ..TokenOptions::default()
            },
        )
        .unwrap();
        assert_eq!(keys.verify(&old.sign(&alice, now, 60)), Ok(alice));
        // A broken or missing key set stops the role.
        std::fs::write(&jwks, "{").unwrap();
        assert!(matches!(
            configure_token_keys(TokenKeys::from_secret(b"s"), &options),
            Err(SecretLoadError::KeySet { .. })
        ));
        std::fs::remove_file(&jwks).unwrap();
        assert!(matches!(
            configure_token_keys(TokenKeys::from_secret(b"s"), &options),
            Err(SecretLoadError::Read { .. })
        ));
    }

    #[test]
    fn the_push_key_is_derived_unless_a_push_secret_is_configured() {
        let keys = TokenKeys::from_secret(b"token-secret");
        for unset in [None, Some(""), Some("  ")] {
            assert_eq!(
                load_push_key(unset, &keys).unwrap(),
                keys.derived_push_key()
            );
        }
        let configured = "p".repeat(chatpipe_core::auth::MIN_PUSH_SECRET_BYTES);
        let separate = load_push_key(Some(&configured), &keys).unwrap();
        assert_ne!(separate, keys.derived_push_key());
        assert!(matches!(
            load_push_key(Some("too-short"), &keys),
            Err(SecretLoadError::Refused { .. })
        ));
    }

    #[test]
    fn formerly_built_in_secrets_are_refused_from_every_source() {
        let home = scratch_home();
        for former in FORMER_BUILT_IN_SECRETS {
            assert!(matches!(
                load_token_keys(Some(former), &home),
                Err(SecretLoadError::Refused { .. })
            ));
            std::fs::write(secret_file(&home), format!("{former}\n")).unwrap();
            assert!(matches!(
                load_token_keys(None, &home),
                Err(SecretLoadError::Refused { .. })
            ));
        }
    }
}
