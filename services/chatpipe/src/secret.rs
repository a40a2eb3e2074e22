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

use std::io::Write;
use std::path::{Path, PathBuf};

use chatpipe_core::auth::{SecretError, TokenKeys};

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
        let token = from_file.sign(&alice, 1_700_000_000, 10_000_000_000);
        let by_hand = TokenKeys::from_secret(written.trim().as_bytes());
        assert_eq!(by_hand.verify(&token), Ok(alice.clone()));
        let (configured, source) = load_token_keys(Some("from-the-environment"), &home).unwrap();
        assert_eq!(source, SecretSource::Configured);
        assert!(configured.verify(&token).is_err());
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
