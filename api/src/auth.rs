//! Bearer JWT authentication and the caller's identity: user tokens from an
//! identity provider's JWKS (`auth.jwks_url`) or, without one, HS256 with
//! `auth.jwt_secret`; genq's own tokens (stream tokens, the development
//! sign-in) always HS256 with that secret. A user is created on their first
//! authenticated call.

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts, HeaderMap};
use genq_core::domain::EMAIL_MAX;
use genq_store::store::{self, Identity};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{decode, decode_header, encode, Algorithm, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::ApiError;
use crate::jwks::KeyError;
use crate::state::AppState;

/// The claims genq reads. `sub` is the identity provider's user ID.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    /// genq's own tokens say which kind they are: [`STREAM_ISSUER`] or [`DEV_ISSUER`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Whether the identity provider checked that `email` is the user's;
    /// an unverified email is kept but never names the user to an operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
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
/// The issuer of genq's stream tokens.
pub const STREAM_ISSUER: &str = "genq";
/// The issuer of the development sign-in's tokens: refused whenever
/// `web.dev_sign_in` is off, so turning it off ends every such session.
pub const DEV_ISSUER: &str = "genq-dev-sign-in";

/// Longest `sub` and `name` accepted (an email: [`EMAIL_MAX`]).
pub(crate) const SUB_MAX: usize = 255;
const NAME_MAX: usize = 200;

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

/// Checks an API token and returns its claims; every failure is a 401.
pub async fn verify(token: &str, state: &AppState) -> Result<Claims, ApiError> {
    let claims = verify_any(token, state).await?;
    if claims.scope.as_deref() == Some(STREAM_SCOPE) {
        return Err(ApiError::Unauthorized(
            "A stream token only opens event streams; send an API token.".into(),
        ));
    }
    Ok(claims)
}

/// Checks a stream token (see [`STREAM_SCOPE`]); every failure is a 401.
pub async fn verify_stream(token: &str, state: &AppState) -> Result<Claims, ApiError> {
    let claims = verify_any(token, state).await?;
    if claims.scope.as_deref() != Some(STREAM_SCOPE) {
        return Err(ApiError::Unauthorized(
            "access_token must be a stream token (POST /v1/stream-tokens); send an API token as Authorization: Bearer instead.".into(),
        ));
    }
    Ok(claims)
}

fn unauthorized(why: &str) -> ApiError {
    ApiError::Unauthorized(why.into())
}

/// Signature, issuer, audience, times and the shape of the claims,
/// whatever the scope.
async fn verify_any(token: &str, state: &AppState) -> Result<Claims, ApiError> {
    let auth = &state.settings.auth;
    let head = decode_header(token).map_err(|_| unauthorized("The token is malformed."))?;
    let mut validation = Validation::new(head.alg);
    validation.leeway = auth.leeway_secs;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "sub"]);
    let (payload, own) = if head.alg == Algorithm::HS256 {
        // genq's own secret; with a JWKS it signs only genq's own tokens
        // (checked below, once the claims say which kind this is).
        let data = decode::<Value>(token, &state.jwt_key, &validation).map_err(refusal)?;
        (data.claims, true)
    } else {
        let Some(jwks) = &state.jwks else {
            return Err(unauthorized("The token's algorithm is not accepted."));
        };
        let Some(kid) = head
            .kid
            .as_deref()
            .filter(|k| !k.is_empty() && k.len() <= 256)
        else {
            return Err(unauthorized("The token names no signing key (kid)."));
        };
        let key = jwks.key(kid, head.alg).await.map_err(|e| match e {
            KeyError::UnknownKid => {
                unauthorized("The token's signing key (kid) is not one of the identity provider's.")
            }
            KeyError::WrongAlgorithm => unauthorized("The token's algorithm is not accepted."),
        })?;
        validation.set_issuer(&[auth.issuer.trim()]);
        validation.set_audience(&auth.audiences());
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        let data = decode::<Value>(token, &key, &validation).map_err(refusal)?;
        (data.claims, false)
    };
    // genq's own tokens keep the role at `role`; user tokens at `auth.role_claim`.
    let genq_issued = own
        && matches!(
            payload.get("iss").and_then(Value::as_str),
            Some(STREAM_ISSUER | DEV_ISSUER)
        );
    let claims = read_claims(&payload, genq_issued, &auth.role_claim)?;
    if own {
        let iss = claims.iss.as_deref();
        let stream = claims.scope.as_deref() == Some(STREAM_SCOPE);
        if iss == Some(DEV_ISSUER) && !state.settings.web.dev_sign_in {
            return Err(unauthorized(
                "Development sign-in is off (web.dev_sign_in); its tokens are no longer accepted.",
            ));
        }
        if stream && iss != Some(STREAM_ISSUER) {
            return Err(unauthorized("The token's claims are invalid."));
        }
        if auth.uses_jwks() && !stream && iss != Some(DEV_ISSUER) {
            return Err(unauthorized(
                "User tokens come from the identity provider (auth.jwks_url); a token signed with genq's own secret is not one.",
            ));
        }
    }
    Ok(claims)
}

/// The 401 of a token the JWT library refused.
fn refusal(e: jsonwebtoken::errors::Error) -> ApiError {
    unauthorized(match e.kind() {
        ErrorKind::ExpiredSignature => "The token has expired.",
        ErrorKind::ImmatureSignature => "The token is not valid yet (nbf).",
        ErrorKind::InvalidSignature => "The token's signature is invalid.",
        ErrorKind::InvalidIssuer => "The token's issuer (iss) is not accepted.",
        ErrorKind::InvalidAudience => "The token's audience (aud) is not accepted.",
        ErrorKind::MissingRequiredClaim(_) => {
            "The token lacks a required claim (sub, exp; from the identity provider also iss, aud)."
        }
        ErrorKind::InvalidAlgorithm => "The token's algorithm is not accepted.",
        _ => "The token is malformed.",
    })
}

/// The claims genq uses, read from a verified payload. The role is at
/// `role_claim` (a name, or a JSON pointer) in a user token, and at `role`
/// in genq's own (`genq_issued`).
fn read_claims(payload: &Value, genq_issued: bool, role_claim: &str) -> Result<Claims, ApiError> {
    let invalid = || unauthorized("The token's claims are invalid.");
    let text = |v: Option<&Value>, max: usize| -> Result<Option<String>, ApiError> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s))
                if s.chars().count() <= max && !s.chars().any(char::is_control) =>
            {
                Ok(Some(s.clone()))
            }
            Some(_) => Err(invalid()),
        }
    };
    let sub = text(payload.get("sub"), SUB_MAX)?
        .filter(|s| !s.trim().is_empty() && s.len() <= SUB_MAX)
        .ok_or_else(invalid)?;
    let exp = payload
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(invalid)?;
    let role_at = if genq_issued {
        "role"
    } else {
        role_claim.trim()
    };
    let role = if role_at.starts_with('/') {
        payload.pointer(role_at)
    } else {
        payload.get(role_at)
    };
    // A role that is not one short string (a list, say) is no role.
    let role = match role {
        Some(Value::String(r)) if r.len() <= 64 => Some(r.clone()),
        _ => None,
    };
    let email_verified = match payload.get("email_verified") {
        Some(Value::Bool(b)) => Some(*b),
        // Some providers (Cognito) send it as text.
        Some(Value::String(s)) => Some(s == "true"),
        _ => None,
    };
    Ok(Claims {
        sub,
        exp,
        iss: text(payload.get("iss"), SUB_MAX).unwrap_or(None),
        email: text(payload.get("email"), EMAIL_MAX)?,
        email_verified,
        name: text(payload.get("name"), NAME_MAX)?,
        role,
        scope: text(payload.get("scope"), 200).unwrap_or(None),
    })
}

/// Mints a token; for development and tests (`genq-api token`).
pub fn mint(secret: &[u8], claims: &Claims) -> anyhow::Result<String> {
    Ok(encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )?)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Claims {
    /// Claims for `sub` valid for `ttl_secs` from now (negative: already expired).
    pub fn new(sub: impl Into<String>, ttl_secs: i64) -> Self {
        Self {
            sub: sub.into(),
            exp: now_secs().saturating_add(ttl_secs).max(0) as u64,
            iss: None,
            email: None,
            email_verified: None,
            name: None,
            role: None,
            scope: None,
        }
    }

    pub fn email(mut self, email: Option<&str>) -> Self {
        self.email = email.map(str::to_owned);
        self
    }

    /// Marks the email as checked by whoever issues the token.
    pub fn email_verified(mut self, verified: bool) -> Self {
        self.email_verified = Some(verified);
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

    pub fn issuer(mut self, iss: &str) -> Self {
        self.iss = Some(iss.to_owned());
        self
    }

    /// A stream token for the same caller, valid for `ttl_secs` but never
    /// past the token it comes from.
    pub fn for_stream(&self, ttl_secs: i64) -> Self {
        let mut stream = Self::new(self.sub.clone(), ttl_secs)
            .email(self.email.as_deref())
            .name(self.name.as_deref())
            .role(self.role.as_deref())
            .issuer(STREAM_ISSUER);
        stream.email_verified = self.email_verified;
        stream.exp = stream.exp.min(self.exp);
        stream.scope = Some(STREAM_SCOPE.into());
        stream
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
            email_verified: claims.email.is_some() && claims.email_verified == Some(true),
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
        verify(token, state).await.map(Self)
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
