//! Bearer JWT authentication (HS256) and the caller's identity; a user is
//! created on their first authenticated call.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap};
use genq_shared::store::{self, Identity};
use jsonwebtoken::{decode, encode, Algorithm, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// The claims genq reads. `sub` is the identity provider's user ID.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Set on genq's own narrow tokens: [`STREAM_SCOPE`] opens event streams only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

pub const ADMIN_ROLE: &str = "admin";
/// An operator who may read every admin endpoint and change nothing.
pub const VIEWER_ROLE: &str = "viewer";

/// The scope of a stream token: accepted by the event streams (as
/// `?access_token=`, since `EventSource` can't send headers) and refused
/// everywhere else, so one that leaks from a URL into a log opens nothing more.
pub const STREAM_SCOPE: &str = "genq:stream";

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub id: Uuid,
    pub external_id: String,
    pub is_admin: bool,
    /// The token's `role` claim, as sent (for the refusal's message).
    pub role: Option<String>,
}

impl AuthUser {
    /// How this caller is named in audit entries and timelines.
    pub fn actor(&self) -> String {
        let kind = if self.is_admin { "admin" } else { "user" };
        format!("{kind}:{}", self.external_id)
    }
}

/// An authenticated caller with the admin role: may call every admin
/// endpoint, including the ones that change something.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

/// An authenticated caller with the admin or the viewer role: may call the
/// admin endpoints that only read.
#[derive(Debug, Clone)]
pub struct AdminViewer(pub AuthUser);

fn validation(leeway_secs: u64) -> Validation {
    // Only HS256: `alg: none` and every other algorithm are refused.
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = leeway_secs;
    v.set_required_spec_claims(&["exp", "sub"]);
    v.validate_exp = true;
    v
}

/// Checks an API token and returns its claims; every failure is a 401.
pub fn verify(token: &str, state: &AppState) -> Result<Claims, ApiError> {
    let claims = verify_any(token, state)?;
    if claims.scope.as_deref() == Some(STREAM_SCOPE) {
        return Err(ApiError::Unauthorized(
            "A stream token only opens event streams; send an API token.".into(),
        ));
    }
    Ok(claims)
}

/// Checks a stream token (see [`STREAM_SCOPE`]); every failure is a 401.
pub fn verify_stream(token: &str, state: &AppState) -> Result<Claims, ApiError> {
    let claims = verify_any(token, state)?;
    if claims.scope.as_deref() != Some(STREAM_SCOPE) {
        return Err(ApiError::Unauthorized(
            "access_token must be a stream token (POST /v1/stream-tokens); send an API token as Authorization: Bearer instead.".into(),
        ));
    }
    Ok(claims)
}

/// Signature, expiry and the shape of the claims, whatever the scope.
fn verify_any(token: &str, state: &AppState) -> Result<Claims, ApiError> {
    let data = decode::<Claims>(
        token,
        &state.jwt_key,
        &validation(state.settings.auth.leeway_secs),
    )
    .map_err(|e| {
        use jsonwebtoken::errors::ErrorKind;
        let why = match e.kind() {
            ErrorKind::ExpiredSignature => "The token has expired.",
            ErrorKind::InvalidSignature => "The token's signature is invalid.",
            ErrorKind::MissingRequiredClaim(_) => "The token lacks a required claim (sub, exp).",
            ErrorKind::InvalidAlgorithm => "The token's algorithm is not accepted.",
            _ => "The token is malformed.",
        };
        ApiError::Unauthorized(why.into())
    })?;
    let claims = data.claims;
    let bounded = |v: &Option<String>, max: usize| {
        v.as_ref()
            .is_none_or(|s| s.chars().count() <= max && !s.chars().any(char::is_control))
    };
    if claims.sub.trim().is_empty()
        || claims.sub.len() > 255
        || claims.sub.chars().any(char::is_control)
        || !bounded(&claims.email, 320)
        || !bounded(&claims.name, 200)
    {
        return Err(ApiError::Unauthorized(
            "The token's claims are invalid.".into(),
        ));
    }
    Ok(claims)
}

/// Mints a token; for development and tests (`genq-api token`).
pub fn mint(secret: &[u8], claims: &Claims) -> anyhow::Result<String> {
    Ok(encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )?)
}

impl Claims {
    /// Claims for `sub` valid for `ttl_secs` from now (negative: already expired).
    pub fn new(sub: impl Into<String>, ttl_secs: i64) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Self {
            sub: sub.into(),
            exp: now.saturating_add(ttl_secs).max(0) as u64,
            email: None,
            name: None,
            role: None,
            scope: None,
        }
    }

    pub fn email(mut self, email: Option<&str>) -> Self {
        self.email = email.map(str::to_owned);
        self
    }

    pub fn name(mut self, name: Option<&str>) -> Self {
        self.name = name.map(str::to_owned);
        self
    }

    pub fn role(mut self, role: Option<&str>) -> Self {
        self.role = role.map(str::to_owned);
        self
    }

    /// A stream token for the same caller, valid for `ttl_secs`.
    pub fn for_stream(&self, ttl_secs: i64) -> Self {
        Self {
            scope: Some(STREAM_SCOPE.into()),
            ..Self::new(self.sub.clone(), ttl_secs)
                .email(self.email.as_deref())
                .name(self.name.as_deref())
                .role(self.role.as_deref())
        }
    }

    /// The signed token (HS256 with `secret`).
    pub fn mint(&self, secret: &[u8]) -> anyhow::Result<String> {
        mint(secret, self)
    }
}

/// The bearer token of a request, if it sent `Authorization: Bearer`.
pub fn bearer(headers: &HeaderMap) -> Option<Result<&str, ApiError>> {
    let value = headers.get(header::AUTHORIZATION)?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| ApiError::Unauthorized("Send Authorization: Bearer <token>.".into())),
    )
}

impl AuthUser {
    /// The caller the verified `claims` name (created on first sight).
    pub async fn from_claims(claims: Claims, state: &AppState) -> Result<Self, ApiError> {
        let identity = Identity {
            external_id: claims.sub.clone(),
            email: claims.email.clone(),
            name: claims.name.clone(),
        };
        let id = match state.users.get(&identity.external_id) {
            Some((known, id)) if known == identity => id,
            _ => {
                let id = store::ensure_user(&state.pool, &identity, state.settings.credits.initial)
                    .await?;
                state
                    .users
                    .insert(identity.external_id.clone(), (identity, id));
                id
            }
        };
        tracing::Span::current().record("user_id", tracing::field::display(id));
        Ok(AuthUser {
            id,
            external_id: claims.sub,
            is_admin: claims.role.as_deref() == Some(ADMIN_ROLE),
            role: claims.role,
        })
    }
}

/// The verified claims of an API token sent as `Authorization: Bearer`.
pub struct BearerClaims(pub Claims);

impl FromRequestParts<AppState> for BearerClaims {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers).unwrap_or_else(|| {
            Err(ApiError::Unauthorized(
                "Send Authorization: Bearer <token>.".into(),
            ))
        })?;
        verify(token, state).map(Self)
    }
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let BearerClaims(claims) = BearerClaims::from_request_parts(parts, state).await?;
        Self::from_claims(claims, state).await
    }
}

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        match user.role.as_deref() {
            Some(ADMIN_ROLE) => Ok(AdminUser(user)),
            Some(VIEWER_ROLE) => Err(ApiError::ForbiddenFor(
                "The viewer role reads and changes nothing: this action needs the admin role."
                    .into(),
            )),
            _ => Err(ApiError::Forbidden),
        }
    }
}

impl FromRequestParts<AppState> for AdminViewer {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        match user.role.as_deref() {
            Some(ADMIN_ROLE | VIEWER_ROLE) => Ok(AdminViewer(user)),
            _ => Err(ApiError::ForbiddenFor(
                "This endpoint needs the admin or the viewer role.".into(),
            )),
        }
    }
}
