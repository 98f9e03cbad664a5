//! The web UI and the dashboard: static pages embedded in the binary
//! (`web/`). They hold no data; they call the API with the secret the
//! user opened them with.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use super::ApiError;

const INDEX: &str = include_str!("../../../web/index.html");
const DASHBOARD: &str = include_str!("../../../web/dashboard.html");

/// The assets below `/ui/`, by name.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/style.css"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/common.js"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/app.js"),
    ),
    (
        "dashboard.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/dashboard.js"),
    ),
];

fn page(html: &'static str) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

pub async fn index() -> Response {
    page(INDEX)
}

pub async fn dashboard() -> Response {
    page(DASHBOARD)
}

pub async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, _, _)| *name == file) {
        Some((_, mime, body)) => (
            [
                (header::CONTENT_TYPE, *mime),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::new(StatusCode::NOT_FOUND, format!("no asset {file:?}")).into_response(),
    }
}
