//! The API role's configuration.

use serde::Deserialize;

/// How the HTTP API listens and what it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// `host:port` to listen on (`:0` picks a free port).
    pub listen_addr: String,
    /// Largest accepted request body; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Most members in one `POST /v1/conversations`; more gets 413.
    pub max_members_per_request: usize,
    /// Longest conversation title, in characters; longer gets 400.
    pub max_title_chars: usize,
    /// History page size when `limit` is not given.
    pub history_default_limit: usize,
    /// Largest history page; a larger `limit` is lowered to it.
    pub history_max_limit: usize,
    /// Sustained requests per second allowed per user (token bucket refill).
    pub rate_limit_per_second: u32,
    /// Requests a user may make in a burst above the sustained rate.
    pub rate_limit_burst: u32,
    /// Deadline for Kafka to confirm a membership record.
    pub kafka_send_timeout_ms: u64,
    /// Deadline for a whole request; past it the request is abandoned and
    /// answered 503 `unavailable` (`Retry-After: 1`). Above
    /// `kafka_send_timeout_ms` so a slow Kafka still gets its own, more
    /// precise, 503. `0` turns the deadline off.
    pub request_timeout_ms: u64,
    /// Requests handled at once by this replica; one more is answered 503
    /// `unavailable` at once (shed, not queued) so a flood cannot pile up
    /// work and memory behind slow engines. `0` turns the limit off.
    pub max_concurrent_requests: usize,
    /// Development mode: `POST /v1/dev/token` hands out a token for any
    /// user name, with no password. Only for a developer's own machine: the
    /// role refuses to start with it unless `listen_addr` is a loopback
    /// address, and without it the route does not exist (404).
    pub dev_sign_in: bool,
    /// Lifetime of the tokens `POST /v1/dev/token` signs, in seconds.
    pub dev_token_ttl_secs: u64,
    /// A directory of static files (the web app's build, `clients/web/dist`)
    /// served under `/app/`; `None`: no `/app/` route.
    pub app_dir: Option<String>,
    /// The WebSocket URL the web app connects to, served as
    /// `/app/config.json` (`{"ws_url"}`) with `app_dir`; `None`: the app
    /// guesses from its own address.
    pub app_ws_url: Option<String>,
    /// Origins allowed to call the API from a browser (CORS), e.g.
    /// `http://localhost:5173`; `*` allows any. Empty: no CORS headers (the
    /// API is then usable from pages of its own origin, like `/app/`).
    pub cors_allowed_origins: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen_addr: "127.0.0.1:8090".to_owned(),
            max_body_bytes: 64 * 1024,
            max_members_per_request: 500,
            max_title_chars: 200,
            history_default_limit: 50,
            history_max_limit: 200,
            rate_limit_per_second: 50,
            rate_limit_burst: 100,
            kafka_send_timeout_ms: 10_000,
            request_timeout_ms: 15_000,
            max_concurrent_requests: 1_024,
            dev_sign_in: false,
            dev_token_ttl_secs: 86_400,
            app_dir: None,
            app_ws_url: None,
            cors_allowed_origins: Vec::new(),
        }
    }
}
