//! `/v1/admin/webhooks` and `/v1/admin/webhook-deliveries` (admin role):
//! register, list, delete and rotate webhook endpoints; list, show and
//! replay their deliveries. Each change is audited with the admin as actor.
//! The same operations are `genqctl webhooks`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use genq_store::store::webhooks::{
    self as hooks, Attempt, Delivery, DeliveryFilter, DeliveryStatus, Endpoint,
};
use genq_store::store::{self, StoreError, UserRef};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::credits::text;
use crate::auth::{AdminUser, AdminViewer};
use crate::error::{ApiError, ErrorBody};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::routes::page_limit;
use crate::state::AppState;

/// A URL of a named host, as [`genq_core::webhooks::check_url`] accepts
/// it whatever the configuration: http(s), a host name whose last label
/// starts with a letter, an optional port, a path and query of RFC 3986's
/// characters (others percent-encoded), no `#`. (Hosts given as IP addresses are accepted too when public,
/// or with `webhooks.allow_private`; the pattern leaves them out because
/// whether one is accepted depends on the deployment.)
const URL_PATTERN: &str = concat!(
    r"^[Hh][Tt][Tt][Pp][Ss]?://",
    r"([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z]([A-Za-z0-9-]*[A-Za-z0-9])?",
    r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?",
    r"([/?](%[0-9A-Fa-f]{2}|[A-Za-z0-9._~!$&'()*+,;=:@/?-])*)?$",
);

fn url_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(utoipa::openapi::SchemaFormat::Custom("uri".into())))
        .min_length(Some(8))
        .max_length(Some(genq_core::webhooks::URL_MAX))
        .pattern(Some(URL_PATTERN))
        .description(Some(
            "Where deliveries go: http or https, without credentials or fragment. A host that \
             is (or, when sending, resolves to) a private, loopback, link-local or otherwise \
             non-public address is refused unless the deployment sets webhooks.allow_private.",
        ))
        .build()
}

fn user_schema() -> Object {
    text(
        genq_core::domain::EMAIL_MAX,
        "The user whose job events go there: an email (with an @), genq's user ID or the \
         identity provider's `sub`. Absent or null: every user's job events.",
    )
    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
    .build()
}

/// An endpoint to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    #[schema(schema_with = url_schema, example = "https://hooks.example.com/genq")]
    pub url: String,
    #[schema(schema_with = user_schema, required = false)]
    pub user: Option<String>,
}

/// A registered endpoint and its signing secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookCreated {
    pub id: Uuid,
    /// `whsec_` + base64 of the key: verify each delivery's `webhook-signature` with it.
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")]
    pub secret: String,
    pub endpoint: Endpoint,
}

/// A new secret, shown this once; the previous one signs too until
/// `previous_secret_expires_at`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookRotated {
    pub id: Uuid,
    pub secret: String,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub endpoint: Endpoint,
}

/// The user an operator names: an email (with an @), genq's ID or the `sub`.
async fn find_user(state: &AppState, raw: &str) -> Result<Uuid, ApiError> {
    let name = genq_core::domain::check_text("user", raw, genq_core::domain::EMAIL_MAX)?;
    let by = if name.contains('@') {
        UserRef::Email(name)
    } else {
        UserRef::from_id(&name)
    };
    store::find_user(&state.pool, &by)
        .await?
        .map(|u| u.id)
        .ok_or_else(|| ApiError::NotFound("No such user.".into()))
}

fn endpoint_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound("No such webhook endpoint.".into()))
}

fn no_endpoint() -> ApiError {
    ApiError::NotFound("No such webhook endpoint.".into())
}

/// Register a webhook endpoint for one user's job events, or every user's.
#[utoipa::path(
    post, path = "/v1/admin/webhooks", tag = "webhooks", operation_id = "create_webhook",
    request_body(content = CreateWebhook, example = json!(
        {"url": "https://hooks.example.com/genq", "user": "viewer@example.com"}
    )),
    responses(
        (status = 201, description = "Registered; the secret is shown only here", body = WebhookCreated),
        (status = 400, description = "Invalid request (`field` names it: a URL that is not http(s), has credentials or names a refused address)", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin (the viewer role only reads)", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "Ambiguous email", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(actor = %admin.0.external_id))]
pub async fn webhook_create(
    State(state): State<AppState>,
    admin: AdminUser,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> Result<impl IntoResponse, ApiError> {
    let url = genq_core::webhooks::check_url(&body.url, state.settings.webhooks.allow_private)?;
    let user_id = match body.user.as_deref() {
        Some(raw) => Some(find_user(&state, raw).await?),
        None => None,
    };
    let (endpoint, secret) =
        hooks::create_endpoint(&state.pool, url.as_str(), user_id, &admin.0.actor()).await?;
    tracing::info!(endpoint = %endpoint.id, ?user_id, "webhook endpoint registered");
    Ok((
        StatusCode::CREATED,
        Json(WebhookCreated {
            id: endpoint.id,
            secret: secret.expose().to_owned(),
            endpoint,
        }),
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WebhookListParams {
    /// Include deleted endpoints.
    pub all: Option<bool>,
    /// 1 to 100; 20 when absent.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// Webhook endpoints, newest first (never their secrets).
#[utoipa::path(
    get, path = "/v1/admin/webhooks", tag = "webhooks", operation_id = "list_webhooks",
    params(WebhookListParams),
    responses(
        (status = 200, description = "Endpoints", body = Vec<Endpoint>),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither the admin nor the viewer role", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn webhook_list(
    State(state): State<AppState>,
    _admin: AdminViewer,
    ApiQuery(p): ApiQuery<WebhookListParams>,
) -> Result<Json<Vec<Endpoint>>, ApiError> {
    let limit = page_limit(p.limit)?;
    Ok(Json(
        hooks::list_endpoints(&state.pool, p.all.unwrap_or(false), limit).await?,
    ))
}

/// One webhook endpoint (not a deleted one).
#[utoipa::path(
    get, path = "/v1/admin/webhooks/{id}", tag = "webhooks", operation_id = "get_webhook",
    params(("id" = Uuid, Path, description = "The endpoint's ID")),
    responses(
        (status = 200, description = "The endpoint", body = Endpoint),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither the admin nor the viewer role", body = ErrorBody),
        (status = 404, description = "No such endpoint, or deleted", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn webhook_show(
    State(state): State<AppState>,
    _admin: AdminViewer,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Endpoint>, ApiError> {
    hooks::get_endpoint(&state.pool, endpoint_id(&id)?)
        .await?
        .map(Json)
        .ok_or_else(no_endpoint)
}

/// Delete a webhook endpoint: nothing more is sent there, and its pending
/// deliveries are dropped (kept, as `disabled`, for the record).
#[utoipa::path(
    delete, path = "/v1/admin/webhooks/{id}", tag = "webhooks", operation_id = "delete_webhook",
    params(("id" = Uuid, Path, description = "The endpoint's ID")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin (the viewer role only reads)", body = ErrorBody),
        (status = 404, description = "No such endpoint, or deleted already", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(actor = %admin.0.external_id))]
pub async fn webhook_delete(
    State(state): State<AppState>,
    admin: AdminUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = endpoint_id(&id)?;
    hooks::delete_endpoint(&state.pool, id, &admin.0.actor())
        .await?
        .ok_or_else(no_endpoint)?;
    tracing::info!(endpoint = %id, "webhook endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Give an endpoint a new secret. Until `previous_secret_expires_at`
/// (`webhooks.rotation_overlap_secs` from now) deliveries carry a signature
/// by each secret, so the receiver can switch without losing any.
#[utoipa::path(
    post, path = "/v1/admin/webhooks/{id}/rotate", tag = "webhooks", operation_id = "rotate_webhook_secret",
    params(("id" = Uuid, Path, description = "The endpoint's ID")),
    responses(
        (status = 200, description = "Rotated; the new secret is shown only here", body = WebhookRotated),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin (the viewer role only reads)", body = ErrorBody),
        (status = 404, description = "No such endpoint, or deleted", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(actor = %admin.0.external_id))]
pub async fn webhook_rotate(
    State(state): State<AppState>,
    admin: AdminUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookRotated>, ApiError> {
    let overlap = std::time::Duration::from_secs(state.settings.webhooks.rotation_overlap_secs);
    let (endpoint, secret) =
        hooks::rotate_secret(&state.pool, endpoint_id(&id)?, overlap, &admin.0.actor())
            .await?
            .ok_or_else(no_endpoint)?;
    tracing::info!(endpoint = %endpoint.id, "webhook secret rotated");
    Ok(Json(WebhookRotated {
        id: endpoint.id,
        secret: secret.expose().to_owned(),
        previous_secret_expires_at: endpoint.previous_secret_expires_at,
        endpoint,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryListParams {
    /// Only deliveries in this status (`failed`: the ones that gave up).
    #[param(value_type = Option<DeliveryStatus>)]
    pub status: Option<String>,
    /// Only deliveries to this endpoint.
    pub endpoint_id: Option<Uuid>,
    /// Only deliveries of this job's status changes.
    pub job_id: Option<Uuid>,
    /// 1 to 100; 20 when absent.
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// Webhook deliveries, newest first.
#[utoipa::path(
    get, path = "/v1/admin/webhook-deliveries", tag = "webhooks", operation_id = "list_webhook_deliveries",
    params(DeliveryListParams),
    responses(
        (status = 200, description = "Deliveries", body = Vec<Delivery>),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither the admin nor the viewer role", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delivery_list(
    State(state): State<AppState>,
    _admin: AdminViewer,
    ApiQuery(p): ApiQuery<DeliveryListParams>,
) -> Result<Json<Vec<Delivery>>, ApiError> {
    let status = p
        .status
        .as_deref()
        .map(|s| {
            DeliveryStatus::parse(s).ok_or_else(|| {
                ApiError::invalid(
                    "status",
                    "status is one of pending, delivered, failed, disabled.",
                )
            })
        })
        .transpose()?;
    let filter = DeliveryFilter {
        status,
        endpoint_id: p.endpoint_id,
        job_id: p.job_id,
    };
    Ok(Json(
        hooks::list_deliveries(&state.pool, &filter, page_limit(p.limit)?).await?,
    ))
}

/// A delivery with its attempts.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookDeliveryDetail {
    #[serde(flatten)]
    pub delivery: Delivery,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<Attempt>,
}

fn delivery_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound("No such webhook delivery.".into()))
}

/// One webhook delivery with every attempt.
#[utoipa::path(
    get, path = "/v1/admin/webhook-deliveries/{id}", tag = "webhooks", operation_id = "get_webhook_delivery",
    params(("id" = i64, Path, description = "The delivery's ID")),
    responses(
        (status = 200, description = "The delivery", body = WebhookDeliveryDetail),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Neither the admin nor the viewer role", body = ErrorBody),
        (status = 404, description = "No such delivery", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn delivery_show(
    State(state): State<AppState>,
    _admin: AdminViewer,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<WebhookDeliveryDetail>, ApiError> {
    let id = delivery_id(&id)?;
    let delivery = hooks::get_delivery(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::NotFound("No such webhook delivery.".into()))?;
    let attempt_log = hooks::attempts(&state.pool, id).await?;
    Ok(Json(WebhookDeliveryDetail {
        delivery,
        attempt_log,
    }))
}

/// Send a delivery again now (a failed one, say, or a pending one without
/// waiting for its next retry), with the same `webhook-id`, from the start
/// of the retry schedule.
#[utoipa::path(
    post, path = "/v1/admin/webhook-deliveries/{id}/replay", tag = "webhooks", operation_id = "replay_webhook_delivery",
    params(("id" = i64, Path, description = "The delivery's ID")),
    responses(
        (status = 200, description = "Pending again; sent shortly", body = Delivery),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin (the viewer role only reads)", body = ErrorBody),
        (status = 404, description = "No such delivery", body = ErrorBody),
        (status = 409, description = "An attempt is under way, or its endpoint is disabled or deleted (`invalid_state`)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(actor = %admin.0.external_id))]
pub async fn delivery_replay(
    State(state): State<AppState>,
    admin: AdminUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Delivery>, ApiError> {
    let id = delivery_id(&id)?;
    match hooks::replay_delivery(&state.pool, id, &admin.0.actor()).await {
        Ok(delivery) => {
            state.outbox_bell.ring();
            tracing::info!(delivery = id, "webhook delivery replayed");
            Ok(Json(delivery))
        }
        Err(StoreError::NotFound) => Err(ApiError::NotFound("No such webhook delivery.".into())),
        Err(StoreError::Conflict(why)) => Err(ApiError::InvalidState(format!(
            "This delivery can't be replayed: {why}."
        ))),
        Err(e) => Err(e.into()),
    }
}
