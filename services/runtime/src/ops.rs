//! The operational HTTP endpoints of every role, served on the role's own
//! ops listener (bound by the `chatpipe` library, loopback by default),
//! never on a public port.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::health::Health;
use crate::metrics::MetricsRegistry;

#[derive(Clone, Debug)]
struct OpsState {
    health: Health,
    metrics: MetricsRegistry,
}

/// `/metrics` (Prometheus text), `/healthz` (liveness) and `/readyz`
/// (readiness, with each component's state as JSON).
pub fn router(health: Health, metrics: MetricsRegistry) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(liveness))
        .route("/readyz", get(readiness))
        .with_state(OpsState { health, metrics })
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn liveness(State(state): State<OpsState>) -> Response {
    let status = if state.health.is_live() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(state.health.snapshot())).into_response()
}

async fn readiness(State(state): State<OpsState>) -> Response {
    let status = if state.health.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(state.health.snapshot())).into_response()
}
