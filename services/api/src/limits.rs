//! Operational guards around every request: a deadline
//! ([`ApiConfig::request_timeout_ms`](crate::ApiConfig::request_timeout_ms))
//! and a cap on requests in flight
//! ([`ApiConfig::max_concurrent_requests`](crate::ApiConfig::max_concurrent_requests)).
//!
//! Both answer with the contract's JSON error (503 `unavailable`,
//! `Retry-After: 1`), which is why they are one small middleware rather than
//! tower's `TimeoutLayer` / `ConcurrencyLimitLayer`: the former answers an
//! empty 408, the latter queues excess requests without bound instead of
//! shedding them.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::config::ApiConfig;
use crate::error::ApiError;

/// The guards' state, shared by every request of one router.
#[derive(Clone, Debug)]
pub struct RequestLimits {
    timeout: Option<Duration>,
    in_flight: Option<Arc<Semaphore>>,
}

impl RequestLimits {
    /// `0` in either field turns that guard off.
    pub fn new(request_timeout_ms: u64, max_concurrent_requests: usize) -> Self {
        Self {
            timeout: (request_timeout_ms > 0).then(|| Duration::from_millis(request_timeout_ms)),
            in_flight: (max_concurrent_requests > 0)
                .then(|| Arc::new(Semaphore::new(max_concurrent_requests))),
        }
    }

    pub fn from_config(config: &ApiConfig) -> Self {
        Self::new(config.request_timeout_ms, config.max_concurrent_requests)
    }
}

/// Middleware: sheds the request when the replica is full, abandons it at
/// the deadline (dropping the handler's future cancels its engine calls).
pub async fn enforce(
    State(limits): State<RequestLimits>,
    request: Request,
    next: Next,
) -> Response {
    // Held until the response is built; dropped (released) on every path.
    let _permit = match &limits.in_flight {
        Some(semaphore) => match semaphore.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => return ApiError::Overloaded.into_response(),
        },
        None => None,
    };
    let Some(timeout) = limits.timeout else {
        return next.run(request).await;
    };
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::TimedOut {
            after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        }
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::middleware::from_fn_with_state;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app(limits: RequestLimits) -> Router {
        Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    "done"
                }),
            )
            .route("/fast", get(|| async { "done" }))
            .layer(from_fn_with_state(limits, enforce))
    }

    async fn call(app: &Router, path: &str) -> (StatusCode, Option<String>, serde_json::Value) {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, retry_after, body)
    }

    #[tokio::test]
    async fn a_request_past_its_deadline_is_a_json_503() {
        let app = app(RequestLimits::new(50, 0));
        let started = std::time::Instant::now();
        let (status, retry_after, body) = call(&app, "/slow").await;
        assert!(started.elapsed() < Duration::from_millis(350));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(body["error"]["code"], "unavailable");
        assert!(
            body["error"]["message"].as_str().unwrap().contains("50 ms"),
            "{body}"
        );
        // Off: the slow request completes.
        let (status, _, _) = call(&self::app(RequestLimits::new(0, 0)), "/slow").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn requests_over_the_concurrency_limit_are_shed_not_queued() {
        let app = app(RequestLimits::new(0, 2));
        let first = tokio::spawn({
            let app = app.clone();
            async move { call(&app, "/slow").await.0 }
        });
        let second = tokio::spawn({
            let app = app.clone();
            async move { call(&app, "/slow").await.0 }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        let (status, retry_after, body) = call(&app, "/fast").await;
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "shed at once"
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(body["error"]["code"], "unavailable");
        assert_eq!(first.await.unwrap(), StatusCode::OK);
        assert_eq!(second.await.unwrap(), StatusCode::OK);
        // The permits came back.
        assert_eq!(call(&app, "/fast").await.0, StatusCode::OK);
    }
}
