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
        "call.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/call.js"),
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

#[utoipa::path(get, path = "/", tag = "pages", security(()),
    responses((status = 200, description = "the chat page", content_type = "text/html")))]
/// The web UI (public: it holds no data).
pub async fn index() -> Response {
    page(INDEX)
}

#[utoipa::path(get, path = "/dashboard", tag = "pages", security(()),
    responses((status = 200, description = "the cluster dashboard", content_type = "text/html")))]
/// The dashboard (public: it holds no data).
pub async fn dashboard() -> Response {
    page(DASHBOARD)
}

#[utoipa::path(get, path = "/ui/{file}", tag = "pages", security(()),
    params(("file" = String, Path, description = "`app.js`, `call.js`, `common.js`, `dashboard.js` or `style.css`")),
    responses((status = 200, description = "the asset", content(
                  (String = "text/javascript"), (String = "text/css"))),
              (status = 404, description = "no such asset", body = skygit_api::ErrorBody)))]
/// The pages' scripts and style.
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
