//! Files compiled into the binary: the countdown page and the OpenAPI document.

use axum::http::{header, HeaderValue};
use axum::response::{Html, IntoResponse, Response};

/// The countdown page served at `GET /`.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
/// The OpenAPI 3.1 document served at `GET /openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("../assets/openapi.json");

/// `GET /`: the countdown page.
pub async fn index() -> Response {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))],
        Html(INDEX_HTML),
    )
        .into_response()
}

/// `GET /openapi.json`: the API description.
pub async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI_JSON,
    )
        .into_response()
}
