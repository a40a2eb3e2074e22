//! # chatpipe-api
//!
//! The HTTP API role (axum): conversations, membership and history over
//! Cassandra, membership events to Kafka, and (mounted by
//! [`ApiServer::mount_v1`]) search. Stateless: run as many replicas as
//! needed behind a load balancer.
//!
//! | route | what |
//! |---|---|
//! | `POST /v1/conversations` | create (1:1 or group) → `{"conversation_id"}` |
//! | `GET /v1/conversations` | the inbox: the caller's conversations by last activity, with role, last message, read marker, unread and mention counts, paged ([`inbox`]) |
//! | `PATCH /v1/conversations/{id}` | settings (`history_visibility`; owners and admins) |
//! | `GET /v1/conversations/{id}/members` | members and their roles, paged |
//! | `POST /v1/conversations/{id}/members` | add a member (owners and admins of a group) |
//! | `PATCH /v1/conversations/{id}/members/{user_id}` | change a member's role (owners) |
//! | `DELETE /v1/conversations/{id}/members/{user_id}` | owners and admins remove; anyone leaves (the last owner hands over first) |
//! | `GET /v1/conversations/{id}/messages` | history pages, newest first |
//! | `GET /v1/conversations/{id}/read-state` | the caller's read marker, unread and mention counts ([`inbox`]) |
//! | `GET /openapi.json` | the OpenAPI document (`schemas/openapi.json`) |
//! | `POST /v1/dev/token` | development mode only (`dev_sign_in`, loopback bind): a token for a user name ([`dev`]) |
//! | `GET /app/…` | the web app's files, with `app_dir` ([`app`]) |
//!
//! Every `/v1` call needs `Authorization: Bearer <token>` and is charged to
//! the caller's rate limit. A conversation the caller is not in answers
//! exactly like one that does not exist (404), on every route. Errors are `{"error":{"code","message"}}`,
//! mapped in one place ([`ApiError`]).
//!
//! Metrics and health are not served here: the API's port serves only
//! `/v1/…`, `/openapi.json` and (when configured) `/app/…`. Whoever starts the role (the `chatpipe`
//! library) serves the registry and [`Health`] given to
//! [`ApiServer::new`] / [`BoundApi::serve`] on the role's ops listener.
//!
//! Delivery semantics: membership changes are written to Cassandra first,
//! then published as `MembershipRecord`s keyed by conversation id; a call
//! succeeds only when both are confirmed, and every call is idempotent, so
//! clients retry 503s. History reads what the persist role wrote: a message
//! is in history shortly after it was acked, not at the same instant.

pub mod app;
pub mod auth;
pub mod config;
pub mod conversations;
pub mod dev;
pub mod error;
pub mod extract;
pub mod history;
pub mod inbox;
pub mod limits;
pub mod member_cap;
pub mod metrics;
pub mod openapi;
pub mod search;
pub mod state;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::middleware::from_fn_with_state;
use axum::routing::{MethodRouter, delete, get, patch, post};
use chatpipe_runtime::health::ComponentState;
use chatpipe_runtime::{Health, Shutdown};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use auth::Caller;
pub use config::ApiConfig;
pub use error::ApiError;
pub use metrics::ApiMetrics;
pub use state::{ApiDeps, ApiState};

/// One route of the API: the table both the router and the OpenAPI test
/// are built from.
pub struct RouteSpec {
    pub method: Method,
    /// axum 0.8 / OpenAPI path template (`{id}`).
    pub path: &'static str,
    handler: MethodRouter<ApiState>,
}

impl std::fmt::Debug for RouteSpec {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{} {}", self.method, self.path)
    }
}

fn spec(method: Method, path: &'static str, handler: MethodRouter<ApiState>) -> RouteSpec {
    RouteSpec {
        method,
        path,
        handler,
    }
}

/// The authenticated `/v1` routes.
pub fn v1_routes() -> Vec<RouteSpec> {
    vec![
        spec(
            Method::POST,
            "/v1/conversations",
            post(conversations::create_conversation),
        ),
        spec(
            Method::GET,
            "/v1/conversations",
            get(inbox::list_conversations),
        ),
        spec(
            Method::PATCH,
            "/v1/conversations/{id}",
            patch(conversations::update_conversation),
        ),
        spec(
            Method::GET,
            "/v1/conversations/{id}/members",
            get(conversations::list_members),
        ),
        spec(
            Method::POST,
            "/v1/conversations/{id}/members",
            post(conversations::add_member),
        ),
        spec(
            Method::PATCH,
            "/v1/conversations/{id}/members/{user_id}",
            patch(conversations::set_member_role),
        ),
        spec(
            Method::DELETE,
            "/v1/conversations/{id}/members/{user_id}",
            delete(conversations::remove_member),
        ),
        spec(
            Method::GET,
            "/v1/conversations/{id}/messages",
            get(history::list_messages),
        ),
        spec(
            Method::GET,
            "/v1/conversations/{id}/read-state",
            get(inbox::read_state),
        ),
    ]
}

/// Every route the API serves without a token.
pub fn public_routes() -> Vec<(Method, &'static str)> {
    vec![(Method::GET, "/openapi.json")]
}

/// Routes that exist only in development mode ([`ApiConfig::dev_sign_in`]).
pub fn dev_routes() -> Vec<(Method, &'static str)> {
    vec![(Method::POST, dev::DEV_TOKEN_PATH)]
}

async fn unknown_route() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

/// The whole router: `/v1` routes behind authentication and the rate limit
/// (including `extra_v1`, already stated routers such as search), the
/// OpenAPI document, in development mode the token route ([`dev`]), the
/// web app's files ([`app`]), a JSON 404 for unknown routes (`/metrics` and
/// the health checks included: they live on the ops listener), the request
/// deadline and concurrency limit ([`limits`]), request metrics, the body
/// limit and CORS (outermost, so preflights are answered before anything).
///
/// Panics on an invalid CORS origin: [`ApiServer::bind`] refuses those first.
pub fn router(state: ApiState, extra_v1: Vec<Router>) -> Router {
    let mut v1: Router<ApiState> = Router::new();
    for route in v1_routes() {
        v1 = v1.route(route.path, route.handler);
    }
    // SEARCH: `GET /v1/search` (services/api/src/search.rs) is mounted here,
    // through `ApiServer::mount_v1(search::router(...))`, so it gets the same
    // authentication, rate limit, metrics and body limit as every /v1 route.
    for extra in extra_v1 {
        v1 = v1.merge(extra.with_state::<ApiState>(()));
    }
    let v1 = v1.route_layer(from_fn_with_state(state.clone(), auth::authenticate));
    let mut public = Router::new()
        .merge(v1)
        .route("/openapi.json", get(openapi::serve_openapi));
    if state.config.dev_sign_in {
        // Outside the bearer-token guard: this is how a token is had.
        public = public.route(dev::DEV_TOKEN_PATH, post(dev::issue_token));
    }
    if let Some(app) = app::app_routes(&state.config) {
        public = public.merge(app);
    }
    let cors = app::cors_layer(&state.config.cors_allowed_origins)
        .expect("CORS origins are checked before the router is built");
    let router = public
        .fallback(unknown_route)
        // Inside the metrics layer, so shed and timed-out requests are
        // counted (503) like any other.
        .layer(from_fn_with_state(
            limits::RequestLimits::from_config(&state.config),
            limits::enforce,
        ))
        .layer(from_fn_with_state(
            state.metrics.clone(),
            metrics::track_requests,
        ))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// Why the API could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ApiRunError {
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("http server failed: {0}")]
    Serve(#[source] std::io::Error),
    /// Development sign-in asked for on an address that is not loopback.
    #[error(transparent)]
    DevSignInNotLoopback(#[from] dev::DevSignInRefused),
    #[error(transparent)]
    BadCorsOrigin(#[from] app::BadOrigin),
}

/// The API role: built with its metrics registered, then bound and served.
///
/// ```text
/// let mut registry = Registry::default();
/// let api = ApiServer::new(config, deps, &mut registry);
/// let bound = api.bind().await?;            // bound.local_addr()
/// bound.serve(health, shutdown).await?;    // ops: registry and health elsewhere
/// ```
#[derive(Debug)]
pub struct ApiServer {
    state: ApiState,
    extra_v1: Vec<Router>,
}

impl ApiServer {
    /// Registers the API's metrics under `chatpipe_api_*` in `registry`.
    pub fn new(config: ApiConfig, deps: ApiDeps, registry: &mut Registry) -> Self {
        let metrics = ApiMetrics::new();
        metrics.register(registry.sub_registry_with_prefix("chatpipe_api"));
        Self {
            state: ApiState::new(config, deps, metrics),
            extra_v1: Vec::new(),
        }
    }

    /// Adds routes (with their state applied) under the `/v1` guard:
    /// authentication ([`Caller`] extractor), rate limit, metrics.
    pub fn mount_v1(mut self, routes: Router) -> Self {
        self.extra_v1.push(routes);
        self
    }

    pub fn state(&self) -> &ApiState {
        &self.state
    }

    pub fn metrics(&self) -> ApiMetrics {
        self.state.metrics.clone()
    }

    /// Binds `config.listen_addr`. Refuses development sign-in on any
    /// address but loopback (checked on the configured address, then on the
    /// bound one whatever a name resolved to) and invalid CORS origins.
    pub async fn bind(self) -> Result<BoundApi, ApiRunError> {
        let config = &self.state.config;
        dev::check_dev_sign_in(config)?;
        app::cors_layer(&config.cors_allowed_origins)?;
        let address = config.listen_addr.clone();
        let listener = TcpListener::bind(&address)
            .await
            .map_err(|source| ApiRunError::Bind { address, source })?;
        if config.dev_sign_in {
            let bound = listener.local_addr().map_err(|source| ApiRunError::Bind {
                address: config.listen_addr.clone(),
                source,
            })?;
            if !dev::is_loopback(bound.ip()) {
                return Err(dev::DevSignInRefused {
                    address: bound.to_string(),
                }
                .into());
            }
        }
        Ok(BoundApi {
            server: self,
            listener,
        })
    }
}

/// An [`ApiServer`] holding its listening socket.
#[derive(Debug)]
pub struct BoundApi {
    server: ApiServer,
    listener: TcpListener,
}

impl BoundApi {
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Serves until `shutdown`, then finishes in-flight requests. `health`
    /// gets the `api-http` component.
    pub async fn serve(self, health: Health, shutdown: Shutdown) -> Result<(), ApiRunError> {
        let component = health.component("api-http");
        let state = self.server.state.clone();
        let app = router(self.server.state, self.server.extra_v1);
        let limiter = state.rate_limiter.clone();
        let housekeeping_shutdown = shutdown.clone();
        shutdown.spawn(async move {
            // Forget idle users' buckets so the limiter's memory follows the
            // active users, not every user ever seen.
            let mut interval = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    biased;
                    _ = housekeeping_shutdown.cancelled() => break,
                    _ = interval.tick() => {
                        limiter.retain_recent();
                        limiter.shrink_to_fit();
                    }
                }
            }
        });
        tracing::info!(address = %self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "api listening");
        component.set(ComponentState::Ready);
        let signal_shutdown = shutdown.clone();
        let outcome = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move {
                signal_shutdown.cancelled().await;
            })
            .await;
        component.set(ComponentState::Stopped);
        outcome.map_err(ApiRunError::Serve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn documented() -> serde_json::Value {
        serde_json::from_str(openapi::OPENAPI_JSON).expect("schemas/openapi.json is JSON")
    }

    #[test]
    fn every_route_of_the_router_is_in_the_openapi_document() {
        let document = documented();
        assert!(document["openapi"].as_str().unwrap().starts_with("3."));
        let routes = v1_routes()
            .into_iter()
            .map(|route| (route.method, route.path))
            .chain(public_routes())
            .chain(dev_routes());
        for (method, path) in routes {
            let operation = &document["paths"][path][method.as_str().to_ascii_lowercase()];
            assert!(
                operation.is_object(),
                "{method} {path} is missing from schemas/openapi.json"
            );
            assert!(
                operation["responses"].is_object(),
                "{method} {path} has no responses"
            );
        }
        // Mounted by the search engineer, documented here already; a
        // conversation_id that is not the caller's is a 404, never a 403.
        let search = &document["paths"]["/v1/search"]["get"]["responses"];
        assert!(search["404"].is_object() && !search["403"].is_object());
    }

    #[test]
    fn every_authenticated_operation_documents_every_error_it_can_return() {
        let document = documented();
        for route in v1_routes() {
            let responses = &document["paths"][route.path]
                [route.method.as_str().to_ascii_lowercase()]["responses"];
            for status in ["400", "401", "429", "500", "503"] {
                assert!(
                    responses[status].is_object(),
                    "{route:?} does not document {status}"
                );
            }
            // Every route naming a conversation can say 404 (unknown, or
            // not the caller's: the same answer); only changes (membership,
            // roles, settings) can say 403 (a 1:1, or not an owner or
            // admin), and no read may document it: a 403 would tell an
            // outsider the id exists. Only changes may say 409 (the last
            // owner, a full conversation).
            if route.path.contains("{id}") {
                assert!(
                    responses["404"].is_object(),
                    "{route:?} does not document 404"
                );
                let change = route.method != Method::GET;
                assert_eq!(
                    responses["403"].is_object(),
                    change,
                    "{route:?}: 403 only for changes"
                );
                if !change {
                    assert!(
                        !responses["409"].is_object(),
                        "{route:?}: reads never conflict"
                    );
                }
            }
        }
        // Every `$ref` resolves.
        let text = openapi::OPENAPI_JSON;
        for piece in text.split("\"$ref\": \"#/").skip(1) {
            let pointer = format!("/{}", &piece[..piece.find('"').unwrap()]);
            assert!(
                document.pointer(&pointer).is_some(),
                "dangling $ref {pointer}"
            );
        }
    }
}
