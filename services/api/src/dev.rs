//! Development sign-in: `POST /v1/dev/token {"user_id"}` signs a token for
//! any user name, with no password, so that a developer (and the web app's
//! browser test) can sign in on a local stack without a token command.
//!
//! It exists only when the API is started in development mode
//! ([`ApiConfig::dev_sign_in`], `chatpipe api|all --dev`), and then only on
//! a loopback bind: the role refuses to start otherwise
//! ([`check_dev_sign_in`] before binding, [`ApiRunError::DevSignInNotLoopback`]
//! after), and without development mode the route is not routed at all
//! (the unknown-route 404). Every token it signs is logged (the user, never
//! the token).
//!
//! [`ApiRunError::DevSignInNotLoopback`]: crate::ApiRunError::DevSignInNotLoopback

use std::net::{IpAddr, SocketAddr};

use axum::Json;
use axum::extract::State;
use chatpipe_core::UserId;
use chatpipe_core::time::now_unix_ms;
use serde::{Deserialize, Serialize};

use crate::config::ApiConfig;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::state::ApiState;

/// The route, outside the bearer-token guard (it is how a token is had).
pub const DEV_TOKEN_PATH: &str = "/v1/dev/token";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevTokenRequest {
    pub user_id: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DevTokenResponse {
    /// A bearer token for `user_id`, signed with the deployment's secret.
    pub token: String,
    pub user_id: UserId,
    /// When the token expires, Unix ms.
    pub expires_at: u64,
}

pub async fn issue_token(
    State(state): State<ApiState>,
    JsonBody(request): JsonBody<DevTokenRequest>,
) -> Result<Json<DevTokenResponse>, ApiError> {
    let user = UserId::parse(request.user_id.as_str())
        .map_err(|error| ApiError::Invalid(format!("user_id: {error}")))?;
    let now_secs = now_unix_ms() / 1000;
    let ttl_secs = state.config.dev_token_ttl_secs;
    let token = state.token_keys.sign(&user, now_secs, ttl_secs);
    tracing::warn!(user = %user, "development sign-in: signed a token without a password");
    Ok(Json(DevTokenResponse {
        token,
        user_id: user,
        expires_at: (now_secs + ttl_secs) * 1000,
    }))
}

/// Why development sign-in was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "development sign-in (--dev) hands out tokens without a password: it is only allowed on a loopback listen address, not {address}"
)]
pub struct DevSignInRefused {
    pub address: String,
}

/// Whether `ip` is a loopback address (IPv4 `127.0.0.0/8`, IPv6 `::1`, and
/// `::ffff:127.x.y.z`).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Checks the configured listen address before binding: development mode
/// needs a loopback IP literal or `localhost`. (The bound address is
/// checked again after binding, whatever a name resolved to.)
pub fn check_dev_sign_in(config: &ApiConfig) -> Result<(), DevSignInRefused> {
    if !config.dev_sign_in {
        return Ok(());
    }
    let address = config.listen_addr.as_str();
    let loopback = match address.parse::<SocketAddr>() {
        Ok(socket) => is_loopback(socket.ip()),
        Err(_) => address
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
    };
    if loopback {
        Ok(())
    } else {
        Err(DevSignInRefused {
            address: address.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev_on(listen_addr: &str) -> ApiConfig {
        ApiConfig {
            listen_addr: listen_addr.to_owned(),
            dev_sign_in: true,
            ..ApiConfig::default()
        }
    }

    #[test]
    fn development_sign_in_needs_a_loopback_address() {
        for allowed in [
            "127.0.0.1:8090",
            "127.0.0.2:0",
            "[::1]:8090",
            "localhost:8090",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(check_dev_sign_in(&dev_on(allowed)), Ok(()), "{allowed}");
        }
        for refused in [
            "0.0.0.0:8090",
            "[::]:8090",
            "10.0.0.5:8090",
            "api.example.com:8090",
            "[::ffff:10.0.0.1]:1",
        ] {
            assert!(check_dev_sign_in(&dev_on(refused)).is_err(), "{refused}");
        }
        // Off: any address is fine (the route does not exist).
        let off = ApiConfig {
            listen_addr: "0.0.0.0:8090".into(),
            ..ApiConfig::default()
        };
        assert_eq!(check_dev_sign_in(&off), Ok(()));
    }
}
