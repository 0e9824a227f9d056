//! The console's static files, compiled into the binary: one HTML page,
//! its script and its style sheet (no build chain, nothing fetched from
//! the network), and the API's OpenAPI description.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use super::AdminState;

const INDEX: &str = include_str!("console/index.html");
const DISABLED: &str = include_str!("console/disabled.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");
const OPENAPI: &str = include_str!("console/openapi.json");

pub async fn index(State(state): State<Arc<AdminState>>) -> Html<&'static str> {
    if state.auth.enabled() {
        Html(INDEX)
    } else {
        Html(DISABLED)
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

pub async fn openapi() -> Response {
    asset("application/json", OPENAPI)
}
