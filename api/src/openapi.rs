//! The OpenAPI 3.1 document, generated from the handlers' annotations, then
//! completed by three modifiers: the bearer scheme, the server errors every
//! `/v1` operation can answer, and the links between operations.
//! `api/openapi.json` is the committed copy (`genq-api openapi`); a test
//! fails when it differs from the served document.

use utoipa::openapi::content::Content;
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::link::LinkBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Ref, RefOr, Response};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::routes::admin::billing as admin_billing;
use crate::routes::admin::{self, dlq, jobs, system, users, webhooks};
use crate::routes::{
    billing, callbacks, credits, dev, events, generations, health, models, video, web,
};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "genq",
        description = "Credit-metered AI video generation.",
        version = "1"
    ),
    components(schemas(
        crate::error::ErrorBody,
        crate::error::ErrorDetail,
        genq_core::webhooks::JobStatusWebhook,
        dlq::DlqState,
        genq_store::ops::HourCount,
    ))
)]
pub struct ApiDoc;

/// Every documented endpoint, routed and described from its handler's
/// `#[utoipa::path]`: a path is written once, in that annotation. Handlers
/// that share a path share a `routes!`.
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(generations::create, generations::list))
        .routes(routes!(generations::get))
        .routes(routes!(generations::cancel))
        .routes(routes!(video::video))
        .routes(routes!(events::job_events))
        .routes(routes!(events::user_events))
        .routes(routes!(events::create_stream_token))
        .routes(routes!(credits::balance))
        .routes(routes!(credits::ledger))
        .routes(routes!(models::models))
        .routes(routes!(admin::credits::add_credits))
        .routes(routes!(users::diagnose))
        .routes(routes!(users::set_limits, users::get_limits))
        .routes(routes!(jobs::jobs))
        .routes(routes!(jobs::job))
        .routes(routes!(jobs::job_ledger))
        .routes(routes!(jobs::job_cancel))
        .routes(routes!(dlq::dlq_list))
        .routes(routes!(dlq::dlq_show))
        .routes(routes!(dlq::dlq_replay))
        .routes(routes!(dlq::dlq_discard))
        .routes(routes!(system::ledger_verification, system::ledger_verify))
        .routes(routes!(system::system))
        .routes(routes!(webhooks::webhook_create, webhooks::webhook_list))
        .routes(routes!(webhooks::webhook_show, webhooks::webhook_delete))
        .routes(routes!(webhooks::webhook_rotate))
        .routes(routes!(webhooks::delivery_list))
        .routes(routes!(webhooks::delivery_show))
        .routes(routes!(webhooks::delivery_replay))
        .routes(routes!(dev::sign_in))
        .routes(routes!(billing::stripe_webhook))
        .routes(routes!(callbacks::provider_callback))
        .routes(routes!(admin_billing::billing_events))
        .routes(routes!(admin_billing::waive))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(web::config))
}

/// The routes' document, completed by the modifiers (which read every
/// operation, so they run once all are in); built once per process, since
/// `/openapi.json` serves it to anyone who asks.
fn base_document() -> &'static serde_json::Value {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        let (_, mut api) = api_routes().split_for_parts();
        for modifier in [&BearerAuth as &dyn Modify, &ServerErrors, &Links] {
            modifier.modify(&mut api);
        }
        serde_json::to_value(api).expect("the OpenAPI document serializes")
    })
}

/// The document of a deployment whose configured models are `models`: the
/// submission's `model` takes exactly those names, and is absent when there
/// are none (any value would be refused), so a client generated from it
/// can't build a request the server refuses.
pub fn document(models: &[&str]) -> serde_json::Value {
    let mut doc = base_document().clone();
    let props = doc
        .pointer_mut("/components/schemas/CreateGeneration/properties")
        .and_then(|p| p.as_object_mut());
    if let Some(props) = props {
        if models.is_empty() {
            props.remove("model");
        } else if let Some(model) = props.get_mut("model").and_then(|m| m.as_object_mut()) {
            model.insert("enum".into(), serde_json::json!(models));
            model.insert("example".into(), serde_json::json!(models[0]));
        }
    }
    describe_event_streams(&mut doc);
    doc["webhooks"] = webhooks_doc();
    doc
}

/// Paths whose 200 is a stream of `job` events.
const EVENT_STREAMS: [&str; 2] = ["/v1/events", "/v1/generations/{id}/events"];

/// Before OpenAPI 3.2's `itemSchema`, a `text/event-stream` schema describes
/// each event: its fields as the SSE parser sees them, with `data` a JSON
/// text whose schema is `JobEventView` (so checkers and generators can
/// read it). utoipa has no `contentSchema`, hence the JSON.
fn describe_event_streams(doc: &mut serde_json::Value) {
    use serde_json::json;
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
    {
        schemas.insert(
            "JobEventMessage".into(),
            json!({
                "description": "One Server-Sent Event of a job event stream.",
                "type": "object",
                "required": ["event", "id", "data"],
                "properties": {
                    "event": {"type": "string", "const": "job"},
                    "id": {"type": "string", "pattern": "^[0-9]+$",
                        "description": "The event's id; send it back as Last-Event-ID to resume."},
                    "data": {"type": "string", "contentMediaType": "application/json",
                        "contentSchema": {"$ref": "#/components/schemas/JobEventView"}},
                    "retry": {"type": "integer", "minimum": 0,
                        "description": "Milliseconds to wait before reconnecting."}
                }
            }),
        );
    }
    for path in EVENT_STREAMS {
        let pointer = format!(
            "/paths/{}/get/responses/200/content/text~1event-stream/schema",
            path.replace('/', "~1")
        );
        if let Some(schema) = doc.pointer_mut(&pointer) {
            *schema = json!({"$ref": "#/components/schemas/JobEventMessage"});
        }
    }
}

/// OpenAPI 3.1's `webhooks`: what genq sends to a registered endpoint.
fn webhooks_doc() -> serde_json::Value {
    use genq_core::webhooks::{EVENT_TYPE, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP};
    let header = |name: &str, description: &str, example: &str| {
        serde_json::json!({
            "name": name, "in": "header", "required": true, "description": description,
            "schema": {"type": "string"}, "example": example,
        })
    };
    serde_json::json!({
        EVENT_TYPE: {"post": {
            "operationId": "job_status_webhook",
            "tags": ["webhooks"],
            "summary": "A job's status changed (Standard Webhooks)",
            "description": "Sent to each enabled endpoint registered for the job's user or for every user, \
                once per status change, in order per job. Verify `webhook-signature` before trusting the body: \
                it is `v1,` + base64 HMAC-SHA256, keyed with the base64-decoded part of the secret after `whsec_`, \
                of `{webhook-id}.{webhook-timestamp}.{body}`; several signatures are space-separated (during a \
                secret rotation). A 2xx answer delivers it; 410 Gone disables the endpoint; anything else, a \
                timeout (15 s) or a refused connection is retried after 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and \
                10 h, with jitter, then the delivery has failed (operators can replay it).",
            "parameters": [
                header(HEADER_ID, "The message's ID: the same on every retry and replay; use it to drop duplicates.", "msg_genq_1234"),
                header(HEADER_TIMESTAMP, "Unix seconds of this attempt; refuse one far from your clock.", "1790000000"),
                header(HEADER_SIGNATURE, "Space-separated `v1,<base64>` signatures.", "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="),
            ],
            "requestBody": {"required": true, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/JobStatusWebhook"}}}},
            "responses": {
                "2XX": {"description": "Delivered"},
                "410": {"description": "Gone: genq disables the endpoint"},
                "default": {"description": "Not delivered: retried on the schedule"},
            },
        }}
    })
}

/// The document of a deployment without models, pretty-printed with a final
/// newline: the form of the committed copy `api/openapi.json`.
pub fn document_json() -> String {
    let mut json =
        serde_json::to_string_pretty(&document(&[])).expect("the OpenAPI document serializes");
    json.push('\n');
    json
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Every `/v1` operation reads or writes the database (authentication
/// itself does), so each can answer 503 `unavailable` (no connection) and
/// 500 `internal`; written here once rather than on every handler.
struct ServerErrors;

impl Modify for ServerErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for operation in [&mut item.get, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                for (status, description) in [
                    ("500", "Internal error (no details)"),
                    ("503", "The database is unavailable; try again"),
                ] {
                    operation
                        .responses
                        .responses
                        .entry(status.into())
                        .or_insert_with(|| error_response(description));
                }
            }
        }
    }
}

fn error_response(description: &str) -> RefOr<Response> {
    let mut response = Response::new(description);
    response.content.insert(
        "application/json".into(),
        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
    );
    RefOr::T(response)
}

/// OpenAPI links: which operation's answer names the identifiers another
/// operation takes, so that readers and stateful testers can follow a job's
/// life (submit → get → cancel) and an operator's (grant → diagnosis,
/// dead-letter list → show → replay or discard, dead letter → its user's
/// diagnosis).
/// (source path, method, status, link name, target operationId, parameter, runtime expression)
#[rustfmt::skip]
const LINKS: &[(&str, &str, &str, &str, &str, &str, &str)] = &[
    ("/v1/generations", "post", "202", "GetJob", "get_generation", "id", "$response.body#/id"),
    ("/v1/generations", "post", "202", "CancelJob", "cancel_generation", "id", "$response.body#/id"),
    ("/v1/generations", "post", "402", "GetRejectedJob", "get_generation", "id", "$response.body#/error/job_id"),
    ("/v1/generations", "get", "200", "GetFirstJob", "get_generation", "id", "$response.body#/items/0/id"),
    ("/v1/generations/{id}", "get", "200", "CancelJob", "cancel_generation", "id", "$response.body#/id"),
    ("/v1/generations/{id}/cancel", "post", "200", "GetJob", "get_generation", "id", "$response.body#/id"),
    ("/v1/admin/credits", "post", "200", "DiagnoseUser", "diagnose_user", "user", "$response.body#/user_id"),
    ("/v1/admin/jobs", "get", "200", "GetFirstJob", "admin_get_job", "id", "$response.body#/0/id"),
    ("/v1/admin/dlq", "get", "200", "ShowFirstDeadLetter", "get_dead_letter", "id", "$response.body#/0/id"),
    ("/v1/admin/dlq", "get", "200", "ReplayFirstDeadLetter", "replay_dead_letter", "id", "$response.body#/0/id"),
    ("/v1/admin/dlq", "get", "200", "DiscardFirstDeadLetter", "discard_dead_letter", "id", "$response.body#/0/id"),
    ("/v1/admin/dlq", "get", "200", "DiagnoseFirstUser", "diagnose_user", "user", "$response.body#/0/user_id"),
    ("/v1/admin/dlq/{id}", "get", "200", "ReplayDeadLetter", "replay_dead_letter", "id", "$response.body#/id"),
    ("/v1/admin/dlq/{id}", "get", "200", "DiscardDeadLetter", "discard_dead_letter", "id", "$response.body#/id"),
    ("/v1/admin/dlq/{id}", "get", "200", "DiagnoseUser", "diagnose_user", "user", "$response.body#/user_id"),
    ("/v1/admin/dlq/{id}/replay", "post", "200", "ShowDeadLetter", "get_dead_letter", "id", "$response.body#/id"),
    ("/v1/admin/dlq/{id}/discard", "post", "200", "ShowDeadLetter", "get_dead_letter", "id", "$response.body#/id"),
    ("/v1/admin/webhooks", "post", "201", "GetWebhook", "get_webhook", "id", "$response.body#/id"),
    ("/v1/admin/webhooks", "post", "201", "RotateWebhook", "rotate_webhook_secret", "id", "$response.body#/id"),
    ("/v1/admin/webhooks", "post", "201", "DeleteWebhook", "delete_webhook", "id", "$response.body#/id"),
    ("/v1/admin/webhooks", "post", "201", "ListWebhookDeliveries", "list_webhook_deliveries", "endpoint_id", "$response.body#/id"),
    ("/v1/admin/webhooks", "get", "200", "GetFirstWebhook", "get_webhook", "id", "$response.body#/0/id"),
    ("/v1/admin/webhooks/{id}", "get", "200", "RotateWebhook", "rotate_webhook_secret", "id", "$response.body#/id"),
    ("/v1/admin/webhooks/{id}", "get", "200", "DeleteWebhook", "delete_webhook", "id", "$response.body#/id"),
    ("/v1/admin/webhooks/{id}/rotate", "post", "200", "GetWebhook", "get_webhook", "id", "$response.body#/id"),
    ("/v1/admin/webhook-deliveries", "get", "200", "ShowFirstDelivery", "get_webhook_delivery", "id", "$response.body#/0/id"),
    ("/v1/admin/webhook-deliveries", "get", "200", "ReplayFirstDelivery", "replay_webhook_delivery", "id", "$response.body#/0/id"),
    ("/v1/admin/webhook-deliveries/{id}", "get", "200", "ReplayDelivery", "replay_webhook_delivery", "id", "$response.body#/id"),
    ("/v1/admin/webhook-deliveries/{id}", "get", "200", "GetJob", "admin_get_job", "id", "$response.body#/job_id"),
    ("/v1/admin/webhook-deliveries/{id}/replay", "post", "200", "ShowDelivery", "get_webhook_delivery", "id", "$response.body#/id"),
];

struct Links;

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for &(path, method, status, name, target, parameter, expression) in LINKS {
            let response = operation_mut(openapi, path, method)
                .and_then(|op| op.responses.responses.get_mut(status))
                .and_then(|r| match r {
                    RefOr::T(response) => Some(response),
                    RefOr::Ref(_) => None,
                })
                .unwrap_or_else(|| panic!("no response {status} of {method} {path} to link from"));
            // utoipa 5.5 serializes `Link::operation_id` as `operation_id`;
            // OpenAPI's key is `operationId`, so it is written as an extra key.
            let link = LinkBuilder::new()
                .parameter(parameter, expression)
                .extensions(Some(Extensions::from_iter([("operationId", target)])))
                .build();
            response.links.insert(name.into(), link.into());
        }
    }
}

fn operation_mut<'a>(
    openapi: &'a mut utoipa::openapi::OpenApi,
    path: &str,
    method: &str,
) -> Option<&'a mut Operation> {
    let item = openapi.paths.paths.get_mut(path)?;
    match method {
        "get" => item.get.as_mut(),
        "post" => item.post.as_mut(),
        "delete" => item.delete.as_mut(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every link, as served, names an existing operation (by `operationId`)
    /// and only parameters of it.
    #[test]
    fn links_resolve() {
        let doc = base_document().clone();
        let operations: Vec<&serde_json::Value> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .collect();
        let links: Vec<(&String, &serde_json::Value)> = operations
            .iter()
            .flat_map(|op| op["responses"].as_object().unwrap().values())
            .filter_map(|response| response["links"].as_object())
            .flatten()
            .collect();
        assert_eq!(links.len(), LINKS.len());
        for (name, link) in links {
            assert_eq!(link.as_object().unwrap().len(), 2, "link {name}: {link}");
            let target = &link["operationId"];
            let op = operations
                .iter()
                .find(|op| &op["operationId"] == target)
                .unwrap_or_else(|| panic!("link {name}: no operation {target}"));
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for parameter in link["parameters"].as_object().unwrap().keys() {
                assert!(
                    params.iter().any(|p| &p["name"] == parameter),
                    "link {name}: {target} has no parameter {parameter}"
                );
            }
        }
    }

    /// The admin credits body is exactly one of two objects, each requiring its own key.
    #[test]
    fn admin_credits_body_is_one_of() {
        let doc = base_document().clone();
        let schemas = &doc["components"]["schemas"];
        let one_of = schemas["AdminCreditRequest"]["oneOf"].as_array().unwrap();
        assert_eq!(one_of.len(), 2);
        for (variant, key, other) in [
            (&one_of[0], "email", "user_id"),
            (&one_of[1], "user_id", "email"),
        ] {
            let name = variant["$ref"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap();
            let schema = &schemas[name];
            assert_eq!(schema["type"], "object");
            let required = schema["required"].as_array().unwrap();
            assert!(required.contains(&key.into()) && !required.contains(&other.into()));
            assert_eq!(schema["properties"][other]["type"], "null");
            assert_eq!(schema["additionalProperties"], false);
        }
    }
}
