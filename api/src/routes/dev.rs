//! `POST /v1/dev/sign-in`: a user token for `dev:<name>` without an identity
//! provider, when `web.dev_sign_in` is on (development and the browser
//! tests); otherwise the endpoint does not exist (404). Its tokens carry
//! their own issuer, refused once the flag is off; the API refuses to start
//! with the flag on a non-loopback address.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Claims, DEV_ISSUER};
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiJson;
use crate::state::AppState;

/// How long a development token lasts.
const DEV_TOKEN_TTL_SECS: i64 = 8 * 60 * 60;
/// Longest name accepted.
const NAME_MAX: usize = 64;

/// Who to sign in as.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevSignIn {
    /// 1 to 64 letters, digits, `.`, `_` or `-`; the token's subject is `dev:<name>`.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9._-]+$",
        example = "ada"
    )]
    pub name: String,
}

/// A bearer token for the API, like one from the identity provider.
#[derive(Debug, Serialize, ToSchema)]
pub struct DevToken {
    pub token: String,
    /// The user's external ID, `dev:<name>`.
    #[schema(example = "dev:ada")]
    pub sub: String,
    pub expires_at: DateTime<Utc>,
}

/// Sign in as `dev:<name>` (only when `web.dev_sign_in` is on).
#[utoipa::path(
    post, path = "/v1/dev/sign-in", tag = "web", operation_id = "dev_sign_in",
    request_body = DevSignIn,
    responses(
        (status = 200, description = "A user token (HS256, auth.jwt_secret, issuer `genq-dev-sign-in`) for `dev:<name>`, accepted only while development sign-in is on", body = DevToken),
        (status = 400, description = "Invalid name (`field` names it)", body = ErrorBody),
        (status = 404, description = "Development sign-in is off (`web.dev_sign_in`)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all)]
pub async fn sign_in(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<DevSignIn>,
) -> Result<Json<DevToken>, ApiError> {
    if !state.settings.web.dev_sign_in {
        return Err(ApiError::NotFound("No such endpoint.".into()));
    }
    let name = body.name;
    let valid = !name.is_empty()
        && name.len() <= NAME_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !valid {
        return Err(ApiError::invalid(
            "name",
            format!("The name must be 1 to {NAME_MAX} letters, digits, '.', '_' or '-'."),
        ));
    }
    let sub = format!("dev:{name}");
    let claims = Claims::new(sub.clone(), DEV_TOKEN_TTL_SECS)
        .name(Some(&name))
        .issuer(DEV_ISSUER);
    let token = claims
        .mint(state.settings.auth.jwt_secret.expose_secret().as_bytes())
        .map_err(ApiError::internal)?;
    let expires_at = DateTime::from_timestamp(claims.exp as i64, 0).unwrap_or_else(Utc::now);
    tracing::info!(%sub, "development sign-in");
    Ok(Json(DevToken {
        token,
        sub,
        expires_at,
    }))
}
