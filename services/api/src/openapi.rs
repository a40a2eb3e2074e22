//! The OpenAPI 3 document of the HTTP API (`schemas/openapi.json`, written by
//! hand and embedded), served at `GET /openapi.json`.

use axum::http::header;
use axum::response::IntoResponse;

/// The embedded document.
pub const OPENAPI_JSON: &str = include_str!("../../../schemas/openapi.json");

pub async fn serve_openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}
