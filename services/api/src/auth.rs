//! Bearer tokens and the per-user rate limit, applied to every `/v1` route.
//!
//! The middleware verifies `Authorization: Bearer <token>` with the shared
//! [`TokenKeys`](chatpipe_core::auth::TokenKeys), charges the user's token
//! bucket (`governor`, keyed by user id), and leaves the caller in the
//! request's extensions, where handlers take it with the [`Caller`]
//! extractor. Tokens are never logged.

use std::num::NonZeroU32;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chatpipe_core::UserId;
use chatpipe_core::auth::{TokenError, bearer_token};
use chatpipe_runtime::metrics::ReasonLabel;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;
use crate::state::ApiState;

/// The authenticated user of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub UserId);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or(ApiError::Unauthorized(TokenError::Missing))
    }
}

/// Per-user token buckets.
pub type UserRateLimiter = DefaultKeyedRateLimiter<UserId>;

/// `per_second` sustained, `burst` at once (both at least 1).
pub fn user_rate_limiter(per_second: u32, burst: u32) -> UserRateLimiter {
    let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(per_second);
    RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst))
}

/// Middleware: 401 without a valid token, 429 over the user's rate.
pub async fn authenticate(
    State(state): State<ApiState>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
        .unwrap_or("");
    let user = match state.token_keys.verify(token) {
        Ok(user) => user,
        Err(error) => {
            state
                .metrics
                .auth_failures
                .get_or_create(&ReasonLabel::new(error.label()))
                .inc();
            return ApiError::Unauthorized(error).into_response();
        }
    };
    if let Err(not_until) = state.rate_limiter.check_key(&user) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        tracing::debug!(user = %user, wait_ms = wait.as_millis() as u64, "rate limited");
        return ApiError::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil() as u64,
        }
        .into_response();
    }
    request.extensions_mut().insert(Caller(user));
    next.run(request).await
}
