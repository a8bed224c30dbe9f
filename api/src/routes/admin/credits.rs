//! `POST /v1/admin/credits`: credit grants and purchases (admin role).

use axum::extract::State;
use axum::Json;
use genq_core::domain::{Credits, LedgerKind};
use genq_store::store::{self, CreditGrant, GrantOutcome, UserRef};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AdminUser;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::routes::credits::{credits_view, CreditsView};
use crate::state::AppState;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    Grant,
    Purchase,
}

/// Credits to add to one user, named by exactly one of `email` or `user_id`
/// (genq's ID or the identity provider's `sub`). Documented as
/// [`AdminCreditRequestDoc`]; parsed as one object so that a bad body is
/// refused naming its field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminCreditRequest {
    pub email: Option<String>,
    pub user_id: Option<String>,
    #[serde(deserialize_with = "crate::extract::integer")]
    pub amount: i64,
    pub reason: String,
    pub kind: GrantKind,
    pub reference: Option<String>,
    #[serde(default, deserialize_with = "crate::extract::opt_integer")]
    pub expires_in_secs: Option<i64>,
}

// The schema of `AdminCreditRequest`: `oneOf` the two ways of naming the
// user, so that a generated client can't send both or neither.
/// Credits to add to one user, named by exactly one of `email` or `user_id`
/// (genq's ID or the identity provider's `sub`).
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[schema(as = AdminCreditRequest)]
#[allow(dead_code)] // documents the body; it is parsed as AdminCreditRequest
pub enum AdminCreditRequestDoc {
    ByEmail(AdminCreditByEmail),
    ByUserId(AdminCreditByUserId),
}

/// Credits for the user with this email.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct AdminCreditByEmail {
    #[schema(schema_with = email_schema)]
    email: String,
    /// Absent or null: the user is named by `email`.
    #[schema(schema_with = absent, required = false)]
    user_id: Option<String>,
    /// 1 to 1,000,000,000.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    amount: i64,
    #[schema(schema_with = reason_schema)]
    reason: String,
    kind: GrantKind,
    #[schema(schema_with = reference_schema, required = false)]
    reference: Option<String>,
    /// The credits expire this many seconds from now (1 to 315,360,000,
    /// ten years); absent: they last.
    #[schema(required = false, minimum = 1, maximum = 315_360_000)]
    expires_in_secs: Option<i64>,
}

/// Credits for the user with this genq ID or identity provider `sub`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct AdminCreditByUserId {
    #[schema(schema_with = user_id_schema)]
    user_id: String,
    /// Absent or null: the user is named by `user_id`.
    #[schema(schema_with = absent, required = false)]
    email: Option<String>,
    /// 1 to 1,000,000,000.
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    amount: i64,
    #[schema(schema_with = reason_schema)]
    reason: String,
    kind: GrantKind,
    #[schema(schema_with = reference_schema, required = false)]
    reference: Option<String>,
    /// The credits expire this many seconds from now (1 to 315,360,000,
    /// ten years); absent: they last.
    #[schema(required = false, minimum = 1, maximum = 315_360_000)]
    expires_in_secs: Option<i64>,
}

/// The schema of a field that must be absent or null.
fn absent() -> Object {
    ObjectBuilder::new().schema_type(Type::Null).build()
}

/// Text as `genq_core::domain::check_text` takes it: not blank, at most
/// `max` characters once the white space at its ends is trimmed, and no
/// control characters but that white space. (Explicit character classes
/// rather than `\s`, whose meaning differs between regex dialects.)
const TEXT_PATTERN: &str = concat!(
    r"^[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*",
    r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]",
    r"([^\x00-\x1f\x7f-\x9f]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?",
    r"[\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$",
);

pub(crate) fn text(max: usize, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(TEXT_PATTERN))
        .description(Some(description))
}

fn email_schema() -> Object {
    text(genq_core::domain::EMAIL_MAX, "The user's email.").build()
}

fn user_id_schema() -> Object {
    text(
        255,
        "genq's ID of the user, or the identity provider's `sub`.",
    )
    .build()
}

pub(crate) fn reason_schema() -> Object {
    text(500, "Why, for the ledger and the audit log.").build()
}

/// An optional reason (absent or null: none given).
pub(crate) fn optional_reason_schema() -> Object {
    text(500, "Why, for the audit log.")
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .build()
}

fn reference_schema() -> Object {
    text(
        200,
        "A payment ID; a reference already applied is not applied again.",
    )
    .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
    .build()
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AdminCreditResponse {
    /// False when the reference had already been applied: nothing changed.
    pub applied: bool,
    pub user_id: Uuid,
    pub entry: store::LedgerEntry,
    pub credits: CreditsView,
}

fn bounded_text(value: &str, field: &str, max: usize) -> Result<String, ApiError> {
    Ok(genq_core::domain::check_text(field, value, max)?)
}

/// Add credits to a user (grant or purchase), audited with the admin as actor.
#[utoipa::path(
    post, path = "/v1/admin/credits", tag = "admin", operation_id = "add_credits",
    request_body(content = AdminCreditRequestDoc, example = json!(
        {"email": "viewer@example.com", "amount": 10, "reason": "support ticket 1", "kind": "grant"}
    )),
    responses(
        (status = 200, description = "Applied, or already applied for this reference", body = AdminCreditResponse),
        (status = 400, description = "Invalid request, or neither or both of email and user_id", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin (the viewer role only reads)", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "Ambiguous email, or reference used for another user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(actor = %admin.0.external_id))]
pub async fn add_credits(
    State(state): State<AppState>,
    admin: AdminUser,
    ApiJson(body): ApiJson<AdminCreditRequest>,
) -> Result<Json<AdminCreditResponse>, ApiError> {
    let target = match (&body.email, &body.user_id) {
        (Some(email), None) => {
            UserRef::Email(bounded_text(email, "email", genq_core::domain::EMAIL_MAX)?)
        }
        // A UUID as given is genq's ID; anything else is checked as an external ID.
        (None, Some(id)) => match UserRef::from_id(id) {
            UserRef::ExternalId(_) => UserRef::ExternalId(bounded_text(id, "user_id", 255)?),
            by_id => by_id,
        },
        _ => {
            return Err(ApiError::invalid(
                "email",
                "Name the user by exactly one of email or user_id.",
            ))
        }
    };
    let amount = Credits::parse_grant(body.amount, "amount")?;
    let reason = bounded_text(&body.reason, "reason", 500)?;
    let reference = body
        .reference
        .as_deref()
        .map(|r| bounded_text(r, "reference", 200))
        .transpose()?;
    let expires_at = match body.expires_in_secs {
        Some(secs) if !(1..=315_360_000).contains(&secs) => {
            return Err(ApiError::invalid(
                "expires_in_secs",
                "expires_in_secs must be between 1 and 315360000 (ten years).",
            ))
        }
        Some(secs) => Some(chrono::Utc::now() + chrono::Duration::seconds(secs)),
        None => None,
    };
    let user = store::find_user(&state.pool, &target)
        .await?
        .ok_or_else(|| ApiError::NotFound("No such user.".into()))?;
    let grant = CreditGrant {
        user_id: user.id,
        kind: match body.kind {
            GrantKind::Grant => LedgerKind::Grant,
            GrantKind::Purchase => LedgerKind::Purchase,
        },
        amount: amount.get(),
        reason,
        reference,
        actor: admin.0.actor(),
        expires_at,
    };
    let (applied, entry) = match store::add_credits(&state.pool, &grant).await? {
        GrantOutcome::Applied(e) => (true, e),
        GrantOutcome::AlreadyApplied(e) => (false, e),
    };
    tracing::info!(user_id = %user.id, amount = grant.amount, applied, "credits added");
    Ok(Json(AdminCreditResponse {
        applied,
        user_id: user.id,
        entry,
        credits: credits_view(&state, user.id).await?,
    }))
}
