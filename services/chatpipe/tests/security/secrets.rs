//! The binary and the token secret (no engines needed): there is no
//! built-in secret, `chatpipe secret init` creates a private random one,
//! `chatpipe token` signs with it, and roles refuse to start without a
//! usable one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chatpipe_core::UserId;
use chatpipe_core::auth::{FORMER_BUILT_IN_SECRETS, TokenError, TokenKeys};

fn scratch_home() -> PathBuf {
    let home = std::env::temp_dir().join(format!("chatpipe-home-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&home).unwrap();
    home
}

/// `chatpipe ARGS` with `home` as CHATPIPE_HOME and no secret in the
/// environment. Engine addresses point at closed ports: a role that got as
/// far as the engines would fail differently (and slowly).
fn chatpipe(home: &Path, secret: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatpipe"));
    command
        .args(args)
        .env("CHATPIPE_HOME", home)
        .env_remove("CHATPIPE_TOKEN_SECRET")
        .env("CHATPIPE_KAFKA_BROKERS", "127.0.0.1:1")
        .env("CHATPIPE_CASSANDRA", "127.0.0.1:1")
        .env("CHATPIPE_ELASTICSEARCH_URL", "http://127.0.0.1:1");
    if let Some(secret) = secret {
        command.env("CHATPIPE_TOKEN_SECRET", secret);
    }
    command.output().expect("the chatpipe binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const ROLE_COMMANDS: &[&[&str]] = &[
    &[
        "edge",
        "--listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
        "--push-listen",
        "127.0.0.1:0",
    ],
    &["fanout", "--ops-listen", "127.0.0.1:0"],
    &["persist", "--ops-listen", "127.0.0.1:0"],
    &["index", "--ops-listen", "127.0.0.1:0"],
    &[
        "api",
        "--api-listen",
        "127.0.0.1:0",
        "--api-ops-listen",
        "127.0.0.1:0",
    ],
    &["all", "--skip-topology"],
];

#[test]
fn every_role_refuses_to_start_without_a_secret() {
    let home = scratch_home();
    for args in ROLE_COMMANDS {
        for secret in [None, Some("")] {
            let output = chatpipe(&home, secret, args);
            assert!(
                !output.status.success(),
                "{args:?} started without a secret"
            );
            assert!(
                stderr(&output).contains("no token secret"),
                "{args:?}: {}",
                stderr(&output)
            );
        }
    }
    let output = chatpipe(&home, None, &["token", "--user", "alice"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("no token secret"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn formerly_built_in_secrets_are_refused_at_start() {
    let home = scratch_home();
    for former in FORMER_BUILT_IN_SECRETS {
        for args in ROLE_COMMANDS
            .iter()
            .chain([&["token", "--user", "alice"][..]].iter())
        {
            let output = chatpipe(&home, Some(former), args);
            assert!(
                !output.status.success(),
                "{args:?} accepted a built-in secret"
            );
            assert!(
                stderr(&output).contains("built in"),
                "{args:?}: {}",
                stderr(&output)
            );
        }
        std::fs::write(home.join("token-secret"), format!("{former}\n")).unwrap();
        let output = chatpipe(&home, None, &["token", "--user", "alice"]);
        assert!(!output.status.success());
        assert!(stderr(&output).contains("built in"), "{}", stderr(&output));
    }
}

#[test]
fn secret_init_writes_a_private_file_that_token_signs_with() {
    let home = scratch_home().join("home");
    let output = chatpipe(&home, None, &["secret", "init"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let file = home.join("token-secret");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        file.display().to_string()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the secret file is private");
    }
    let secret = std::fs::read_to_string(&file).unwrap();
    assert!(secret.trim().len() >= 32);
    // A second init keeps the secret.
    assert!(chatpipe(&home, None, &["secret", "init"]).status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), secret);

    let output = chatpipe(&home, None, &["token", "--user", "alice"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let token = String::from_utf8(output.stdout).unwrap();
    let keys = TokenKeys::from_configured_secret(secret.trim().as_bytes()).unwrap();
    assert_eq!(
        keys.verify(token.trim()),
        Ok(UserId::parse("alice").unwrap())
    );

    // CHATPIPE_TOKEN_SECRET overrides the file.
    let output = chatpipe(
        &home,
        Some("an-operator-secret"),
        &["token", "--user", "alice"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let token = String::from_utf8(output.stdout).unwrap();
    assert_eq!(keys.verify(token.trim()), Err(TokenError::BadSignature));
    let operator = TokenKeys::from_configured_secret(b"an-operator-secret").unwrap();
    assert!(operator.verify(token.trim()).is_ok());
}
