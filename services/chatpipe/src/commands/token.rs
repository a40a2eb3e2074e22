//! `chatpipe token --user <id>`: prints a bearer token signed with the
//! configured secret (see [`chatpipe::secret`]), and `chatpipe secret init`.

use chatpipe_core::UserId;
use chatpipe_core::time::now_unix_ms;

use crate::cli::{CommonArgs, SecretAction, TokenArgs};
use crate::commands::engines::token_keys;

pub fn run(common: &CommonArgs, args: &TokenArgs) -> anyhow::Result<()> {
    let user =
        UserId::parse(args.user.as_str()).map_err(|error| anyhow::anyhow!("--user: {error}"))?;
    let keys = token_keys(common)?;
    let max = keys.policy().max_lifetime_secs;
    if max > 0 && args.ttl_secs > max {
        anyhow::bail!(
            "--ttl-secs {} exceeds the longest token lifetime accepted ({max} s, --token-max-lifetime-secs)",
            args.ttl_secs
        );
    }
    let token = keys.sign(&user, now_unix_ms() / 1000, args.ttl_secs);
    println!("{token}");
    Ok(())
}

pub fn secret(action: &SecretAction) -> anyhow::Result<()> {
    match action {
        SecretAction::Init => {
            let (file, created) =
                chatpipe::secret::ensure_secret_file(&chatpipe::secret::chatpipe_home())?;
            if created {
                tracing::info!(file = %file.display(), "created a random token secret");
            }
            println!("{}", file.display());
            Ok(())
        }
    }
}
