//! Token keys from a JWKS URL (`--token-jwks-url`): an identity provider's
//! public keys, fetched over http(s) and kept current while chatpipe runs.
//!
//! - **At start** the document is fetched once; a role refuses to start
//!   when it is unreachable, answers other than 2xx, or is not a usable
//!   key set ([`JwksError`]).
//! - **On a cadence** ([`JwksUrlConfig::refresh_interval_ms`], default
//!   5 min) it is fetched again and the keys are replaced whole.
//! - **On an unknown `kid`**: a token naming a key that no key has is
//!   refused, and asks for a refetch, at most one per
//!   [`JwksUrlConfig::unknown_kid_refetch_interval_ms`] (default 30 s), so
//!   a flood of made-up kids costs the identity provider nothing. Once the
//!   refetch has the new key, the client's next attempt verifies.
//! - **A failed refresh** keeps the last good key set; it is logged (the
//!   URL and the error, never a key) and counted in
//!   `chatpipe_token_jwks_refresh_failures_total` ([`JwksMetrics`], on the
//!   ops listener of each role that verifies tokens).
//!
//! The fetch uses `reqwest` (rustls), the HTTP client the search adapter
//! already builds on; the keys are parsed and checked by
//! [`chatpipe_core::auth`], which does no I/O.

use std::sync::Arc;
use std::time::Duration;

use chatpipe_core::auth::{KeySetError, TokenKeys};
use chatpipe_runtime::Shutdown;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Default time between two scheduled fetches: 5 minutes.
pub const DEFAULT_JWKS_REFRESH_INTERVAL_MS: u64 = 300_000;
/// Default shortest time between two fetches asked for by unknown kids.
pub const DEFAULT_JWKS_UNKNOWN_KID_REFETCH_INTERVAL_MS: u64 = 30_000;
/// Default deadline of one fetch (connect, answer and body).
pub const DEFAULT_JWKS_FETCH_TIMEOUT_MS: u64 = 5_000;

/// Where the key set comes from and how often it is fetched again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrlConfig {
    /// An `http://` or `https://` URL that answers with a JWKS document.
    pub url: String,
    /// Time between two scheduled fetches, in milliseconds.
    pub refresh_interval_ms: u64,
    /// Shortest time between two fetches asked for by tokens naming an
    /// unknown `kid`, in milliseconds (counted from the last fetch).
    pub unknown_kid_refetch_interval_ms: u64,
    /// Deadline of one fetch, in milliseconds.
    pub fetch_timeout_ms: u64,
}

impl JwksUrlConfig {
    /// `url` with the default intervals.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            refresh_interval_ms: DEFAULT_JWKS_REFRESH_INTERVAL_MS,
            unknown_kid_refetch_interval_ms: DEFAULT_JWKS_UNKNOWN_KID_REFETCH_INTERVAL_MS,
            fetch_timeout_ms: DEFAULT_JWKS_FETCH_TIMEOUT_MS,
        }
    }
}

/// Why the key set could not be fetched or used.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("the JWKS URL `{url}` is not an http(s) URL")]
    NotHttp { url: String },
    #[error("a refresh interval of 0 ms")]
    ZeroInterval,
    #[error("fetching the JWKS from {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("the JWKS from {url}: {source}")]
    KeySet {
        url: String,
        #[source]
        source: KeySetError,
    },
}

/// What the refresher counts; shared by the registries of every role that
/// verifies tokens (clones count together).
#[derive(Debug, Clone, Default)]
pub struct JwksMetrics {
    /// Fetches whose key set replaced the one in use (the first included).
    pub refreshes: Counter,
    /// Fetches that failed or were refused (the last good set stayed).
    pub refresh_failures: Counter,
    /// Fetches asked for by tokens naming an unknown `kid`.
    pub unknown_kid_refetches: Counter,
    /// Keys in the set in use.
    pub keys: Gauge,
}

impl JwksMetrics {
    /// Registers the counters as `chatpipe_token_jwks_*`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("chatpipe_token_jwks");
        registry.register(
            "refreshes",
            "JWKS fetches whose key set replaced the one in use",
            self.refreshes.clone(),
        );
        registry.register(
            "refresh_failures",
            "JWKS fetches that failed or were refused; the last good key set stayed",
            self.refresh_failures.clone(),
        );
        registry.register(
            "unknown_kid_refetches",
            "JWKS fetches asked for by tokens naming an unknown kid",
            self.unknown_kid_refetches.clone(),
        );
        registry.register("keys", "Keys in the JWKS in use", self.keys.clone());
    }
}

/// Fetches the key set of `config.url` once (an error when that fails:
/// the caller does not start), adds it to `keys`, and keeps it current
/// until `shutdown` is cancelled. The returned keys verify with it; every
/// clone of them sees each replacement.
pub async fn start(
    keys: TokenKeys,
    config: &JwksUrlConfig,
    shutdown: &Shutdown,
) -> Result<(TokenKeys, JwksMetrics), JwksError> {
    if !(config.url.starts_with("http://") || config.url.starts_with("https://")) {
        return Err(JwksError::NotHttp {
            url: config.url.clone(),
        });
    }
    if config.refresh_interval_ms == 0 {
        return Err(JwksError::ZeroInterval);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(config.fetch_timeout_ms))
        .build()
        .map_err(|error| JwksError::Fetch {
            url: config.url.clone(),
            message: error.to_string(),
        })?;
    let keys = keys.with_remote_key_set();
    let metrics = JwksMetrics::default();
    let count = fetch_into(&client, &config.url, &keys).await?;
    metrics.refreshes.inc();
    metrics.keys.set(count as i64);
    tracing::info!(url = %config.url, keys = count, "token keys fetched from the JWKS URL");

    let unknown_kid = Arc::new(Notify::new());
    keys.on_unknown_kid({
        let unknown_kid = unknown_kid.clone();
        move || unknown_kid.notify_one()
    });
    let refresher = Refresher {
        client,
        config: config.clone(),
        keys: keys.clone(),
        metrics: metrics.clone(),
        unknown_kid,
    };
    let stop = shutdown.clone();
    shutdown.spawn(async move { refresher.run(stop).await });
    Ok((keys, metrics))
}

/// Fetches `url` and replaces the remote keys of `keys` with its set; the
/// number of keys.
async fn fetch_into(
    client: &reqwest::Client,
    url: &str,
    keys: &TokenKeys,
) -> Result<usize, JwksError> {
    let fetch_error = |error: reqwest::Error| JwksError::Fetch {
        url: url.to_owned(),
        message: error.to_string(),
    };
    let document = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(fetch_error)?
        .text()
        .await
        .map_err(fetch_error)?;
    keys.replace_remote_keys(&document)
        .map_err(|source| JwksError::KeySet {
            url: url.to_owned(),
            source,
        })
}

/// The task that keeps the key set current.
struct Refresher {
    client: reqwest::Client,
    config: JwksUrlConfig,
    keys: TokenKeys,
    metrics: JwksMetrics,
    unknown_kid: Arc<Notify>,
}

impl Refresher {
    async fn run(self, shutdown: Shutdown) {
        let interval = Duration::from_millis(self.config.refresh_interval_ms);
        let unknown_kid_interval =
            Duration::from_millis(self.config.unknown_kid_refetch_interval_ms);
        let mut last_fetch = Instant::now();
        loop {
            let next_scheduled = last_fetch + interval;
            let reason = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next_scheduled) => "scheduled",
                () = self.unknown_kid.notified() => {
                    // Kids seen meanwhile coalesce into this one fetch.
                    let allowed_at = last_fetch + unknown_kid_interval;
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep_until(allowed_at) => {}
                    }
                    self.metrics.unknown_kid_refetches.inc();
                    "unknown_kid"
                }
            };
            last_fetch = Instant::now();
            match fetch_into(&self.client, &self.config.url, &self.keys).await {
                Ok(count) => {
                    self.metrics.refreshes.inc();
                    self.metrics.keys.set(count as i64);
                    tracing::debug!(url = %self.config.url, keys = count, reason, "JWKS refreshed");
                }
                Err(error) => {
                    self.metrics.refresh_failures.inc();
                    tracing::warn!(
                        url = %self.config.url,
                        %error,
                        reason,
                        "JWKS refresh failed; the last good key set stays in use"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_http_urls_and_a_nonzero_interval_are_accepted() {
        let shutdown = Shutdown::new();
        let keys = TokenKeys::from_secret(b"s");
        let refused = start(
            keys.clone(),
            &JwksUrlConfig::new("file:///etc/jwks"),
            &shutdown,
        )
        .await;
        assert!(
            matches!(refused, Err(JwksError::NotHttp { .. })),
            "{refused:?}"
        );
        let config = JwksUrlConfig {
            refresh_interval_ms: 0,
            ..JwksUrlConfig::new("http://127.0.0.1:1/jwks")
        };
        let refused = start(keys.clone(), &config, &shutdown).await;
        assert!(
            matches!(refused, Err(JwksError::ZeroInterval)),
            "{refused:?}"
        );
        // Nothing listens on port 1: the start is refused.
        let refused = start(
            keys,
            &JwksUrlConfig::new("http://127.0.0.1:1/jwks"),
            &shutdown,
        )
        .await;
        assert!(
            matches!(refused, Err(JwksError::Fetch { .. })),
            "{refused:?}"
        );
    }
}
