//! Extractors whose rejections are [`ApiError`]s, so malformed input gets
//! the contract's JSON error body with a useful message.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body (any content type), limited by the router's body
/// limit: too large → 413, not JSON or wrong shape → 400 saying where.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|error| ApiError::Invalid(format!("invalid request body: {error}")))
    }
}

/// Path parameters; a rejection (a segment that is not UTF-8 after
/// percent-decoding, say) is the contract's JSON 400, not axum's plain text.
#[derive(Debug, Clone, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct PathParams<T>(pub T);

/// The query string; a rejection (`?limit=1&limit=2`: a duplicate field, found
/// by fuzzing the API against its OpenAPI document) is the contract's JSON
/// 400, not axum's plain text.
#[derive(Debug, Clone, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct QueryParams<T>(pub T);

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use serde::Deserialize;
    use tower::ServiceExt;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Params {
        #[allow(dead_code)]
        limit: Option<String>,
    }

    async fn answer(app: Router, uri: &str) -> (StatusCode, serde_json::Value) {
        let response = app
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    /// Found by schemathesis (`benches/fuzz-api.sh`): axum's own rejections
    /// were plain text, outside the documented error body.
    #[tokio::test]
    async fn query_and_path_rejections_are_the_contract_error_body() {
        let app = Router::new()
            .route(
                "/q",
                get(|QueryParams(_params): QueryParams<Params>| async { "ok" }),
            )
            .route(
                "/p/{id}",
                get(|PathParams(id): PathParams<String>| async move { id }),
            );
        let (status, body) = answer(app.clone(), "/q?limit=1&limit=2").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("limit"));
        let (status, body) = answer(app.clone(), "/p/%FF").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "invalid", "{body}");
        assert_eq!(answer(app, "/q?limit=3").await.0, StatusCode::OK);
    }
}
