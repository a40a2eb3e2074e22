//! The web app's files and cross-origin access.
//!
//! With [`ApiConfig::app_dir`] the API serves that directory (the build of
//! `clients/web`) under `/app/`, and `/app/config.json` tells the app where
//! the WebSocket edge is and whether development sign-in is on: the
//! Quickstart's `chatpipe all` then gives a working chat at
//! `http://127.0.0.1:8090/app/`. Nothing else is served from the
//! directory's parent, and `/app/` is absent without `app_dir`.
//!
//! With [`ApiConfig::cors_allowed_origins`] browsers on those origins may
//! call `/v1/…` (an app served elsewhere, e.g. a dev server); the
//! WebSocket needs no CORS.

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, Method};
use axum::response::Redirect;
use axum::routing::get;
use serde::Serialize;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::services::ServeDir;

use crate::config::ApiConfig;

/// Where the app is served.
pub const APP_PATH: &str = "/app";

/// `/app/config.json`: what the app needs to know about this deployment.
#[derive(Debug, Clone, Serialize)]
pub struct AppConfig {
    /// The edge's WebSocket URL; absent: the app derives one from its own address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_url: Option<String>,
    /// Whether `POST /v1/dev/token` exists.
    pub dev_sign_in: bool,
}

/// `/app` (a redirect to `/app/`), `/app/config.json` and the files of
/// `config.app_dir`; `None` without an app directory.
pub fn app_routes<S: Clone + Send + Sync + 'static>(config: &ApiConfig) -> Option<Router<S>> {
    let directory = config.app_dir.as_ref()?;
    let app_config = AppConfig {
        ws_url: config.app_ws_url.clone(),
        dev_sign_in: config.dev_sign_in,
    };
    // Relative asset paths in index.html need the trailing slash.
    let files = ServeDir::new(directory).append_index_html_on_directories(true);
    Some(
        Router::new()
            .route(APP_PATH, get(|| async { Redirect::permanent("/app/") }))
            .route(
                "/app/config.json",
                get(move || {
                    let app_config = app_config.clone();
                    async move { Json(app_config) }
                }),
            )
            .nest_service("/app/", files),
    )
}

/// Why a CORS origin was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CORS origin {0:?} is not an origin (scheme://host[:port], or *)")]
pub struct BadOrigin(pub String);

/// The CORS layer for `origins` (`*` = any); `None` when the list is empty.
pub fn cors_layer(origins: &[String]) -> Result<Option<CorsLayer>, BadOrigin> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|origin| {
                let valid = (origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.trim_end_matches('/').contains(['?', '#'])
                    && origin.matches('/').count() == 2;
                match HeaderValue::from_str(origin) {
                    Ok(value) if valid => Ok(value),
                    _ => Err(BadOrigin(origin.clone())),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([AUTHORIZATION, CONTENT_TYPE])
            .expose_headers([RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_are_checked() {
        assert!(cors_layer(&[]).unwrap().is_none());
        assert!(cors_layer(&["*".into()]).unwrap().is_some());
        assert!(
            cors_layer(&[
                "http://localhost:5173".into(),
                "https://chat.example".into()
            ])
            .unwrap()
            .is_some()
        );
        for bad in [
            "localhost:5173",
            "http://a/b",
            "ftp://x",
            "http://bad\nheader",
        ] {
            assert_eq!(
                cors_layer(&[bad.to_owned()]).unwrap_err(),
                BadOrigin(bad.to_owned()),
                "{bad}"
            );
        }
    }
}
