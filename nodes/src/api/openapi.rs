//! The OpenAPI description, generated from the contract's types
//! (`skygit-api`) and the handlers' `#[utoipa::path]` annotations.
//! `GET /openapi.json` serves it; `skygit openapi` prints it.

use std::sync::OnceLock;

use skygit_api::events::{Hello, Lagged, SettingsChanged, Synced};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{attachments, calls, events, messages, rooms, ui};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "skygit node API",
        description = "The local HTTP API of one skygit node. Every call carries the node's \
                       secret (`Authorization: Bearer <secret>`, printed at start and kept in \
                       `<data-dir>/api-secret`). The `Host` must be a loopback name and a \
                       cross-origin `Origin` is refused (403). Bodies are JSON, at most 65536 \
                       bytes. `?repo=` picks the room when the node serves several. A change \
                       answered 201 or 200 is committed and applied on this node; 503 with \
                       `status: queued` means it waits in the outbox for a leader.",
    ),
    paths(
        rooms::status, rooms::peers,
        messages::list, messages::post, messages::get_one, messages::edit, messages::delete,
        messages::outbox, messages::conversations, messages::create_conversation,
        attachments::upload, attachments::download,
        calls::list, calls::start, calls::accept, calls::decline, calls::hangup,
        calls::recording, calls::alive, calls::signal, calls::ice,
        rooms::repositories, rooms::add_repository, rooms::push, rooms::flushes,
        rooms::settings, rooms::put_settings,
        events::events, super::prometheus, super::openapi,
        ui::index, ui::dashboard, ui::asset,
    ),
    components(schemas(Hello, Synced, SettingsChanged, Lagged, skygit_api::calls::CallSignal)),
    modifiers(&Guards),
    security(("bearer" = [])),
    tags(
        (name = "messages", description = "Messages, the outbox and conversations"),
        (name = "attachments", description = "Files: uploaded, named in posts, read back"),
        (name = "calls", description = "Calls: started, answered, left; signalling between browsers"),
        (name = "rooms", description = "Repositories, push, flushes and settings"),
        (name = "status", description = "How this node and its room stand"),
        (name = "node", description = "The node's own endpoints"),
        (name = "pages", description = "The web UI and the dashboard (public)"),
    ),
)]
pub struct ApiDoc;

/// What the guards in front of every route answer: the bearer secret
/// (401 without it, on every API route) and the Host and Origin checks
/// (403, on every route).
struct Guards;

impl Modify for Guards {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("the node's secret (<data-dir>/api-secret)"))
                    .build(),
            ),
        );
        let refusal = |why: &str| {
            ResponseBuilder::new()
                .description(why)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                // Pages say `security: []` (public); API routes inherit
                // the document's bearer requirement.
                let public = op.security.as_ref().is_some_and(|s| {
                    s.iter()
                        .all(|r| serde_json::to_value(r).is_ok_and(|v| v == serde_json::json!({})))
                });
                if public {
                    op.security = Some(Vec::new());
                } else {
                    op.responses.responses.insert(
                        "401".into(),
                        refusal("the node's secret is missing or wrong").into(),
                    );
                }
                op.responses.responses.insert(
                    "403".into(),
                    refusal("the Host is not a loopback name, or the Origin is another").into(),
                );
            }
        }
    }
}

/// The description as JSON (built once).
pub fn json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        // Serializing the description's own types cannot fail.
        doc.to_pretty_json().unwrap_or_default()
    })
}
