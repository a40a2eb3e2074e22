//! What the API counts, under `chatpipe_api_*`, and the layer that counts
//! every request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use chatpipe_core::ErrorCode;
use chatpipe_runtime::metrics::{
    Counter, CounterByReason, Family, Histogram, ReasonLabel, latency_histogram,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::Registry;

/// The `method` label: the request's method when it is one of HTTP's
/// standard ones, `other` for anything else. The method is client input
/// (any token is a valid method), so using it raw would let a client grow
/// the registry without bound.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// The `route` label: the matched route template, or `unmatched` (never the
/// raw path, which is client input).
pub fn route_label(matched: Option<&MatchedPath>) -> String {
    matched.map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// [`method_label`]: a standard method or `other`.
    pub method: String,
    /// The route template (`/v1/conversations/{id}/messages`), or
    /// `unmatched`, so label cardinality stays bounded.
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The API's metrics; clones share the same counters.
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    /// Requests by method, route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Seconds from request to response, by method and route.
    pub latency: LatencyFamily,
    /// Requests refused with a 4xx, by error code (`invalid`,
    /// `unauthorized`, `forbidden`, `not_found`, `too_large`,
    /// `rate_limited`).
    pub rejects: CounterByReason,
    /// Token refusals by reason (`missing`, `expired`, `bad_signature`, …).
    pub auth_failures: CounterByReason,
    /// Membership records published to Kafka.
    pub membership_records: Counter,
}

impl ApiMetrics {
    pub fn new() -> Self {
        Self {
            requests: Family::default(),
            latency: LatencyFamily::new_with_constructor(latency_histogram),
            rejects: CounterByReason::default(),
            auth_failures: CounterByReason::default(),
            membership_records: Counter::default(),
        }
    }

    /// Registers everything into `registry` (give it the role's `chatpipe_api`
    /// sub-registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "HTTP requests by method, route and status",
            self.requests.clone(),
        );
        registry.register(
            "request_latency_seconds",
            "HTTP request latency by method and route",
            self.latency.clone(),
        );
        registry.register(
            "rejects",
            "Requests refused with a 4xx, by error code",
            self.rejects.clone(),
        );
        registry.register(
            "auth_failures",
            "Bearer tokens refused, by reason",
            self.auth_failures.clone(),
        );
        registry.register(
            "membership_records",
            "Membership records published to Kafka",
            self.membership_records.clone(),
        );
    }

    /// Requests counted so far for one route and status (for tests).
    pub fn request_count(&self, method: &str, route: &str, status: u16) -> u64 {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status: status.to_string(),
            })
            .get()
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Middleware: counts and times every request.
pub async fn track_requests(
    State(metrics): State<ApiMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method()).to_owned();
    let route = route_label(request.extensions().get::<MatchedPath>());
    let response = next.run(request).await;
    let status = response.status();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.clone(),
            route: route.clone(),
            status: status.as_u16().to_string(),
        })
        .inc();
    metrics
        .latency
        .get_or_create(&RouteLabels { method, route })
        .observe(started.elapsed().as_secs_f64());
    if status.is_client_error() {
        let code = response
            .extensions()
            .get::<ErrorCode>()
            .map(|code| code.as_str())
            .unwrap_or("other");
        metrics.rejects.get_or_create(&ReasonLabel::new(code)).inc();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_come_from_a_closed_set() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
        let mut labels = std::collections::BTreeSet::new();
        for index in 0..200 {
            let random = Method::from_bytes(format!("X{index}Y").as_bytes()).unwrap();
            labels.insert(method_label(&random));
        }
        assert_eq!(labels.into_iter().collect::<Vec<_>>(), vec!["other"]);
        assert_eq!(route_label(None), "unmatched");
    }
}
