//! The one API error type: maps every failure to the stable JSON shape
//! `{"error": {"code", "message", ...}}` and keeps internals out of responses.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use genq_core::domain::InvalidInput;
use genq_store::store::StoreError;
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("this endpoint needs the admin role")]
    Forbidden,
    /// A 403 that says which role the caller lacks.
    #[error("{0}")]
    ForbiddenFor(String),
    /// A 403 about one field of the request (`field` names it): the
    /// caller may not ask for that value.
    #[error("{}", .0.message)]
    ForbiddenField(InvalidInput),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(#[from] InvalidInput),
    #[error("A video needs {required} credits; you have {available}.")]
    InsufficientCredits {
        required: i64,
        available: i64,
        job_id: Uuid,
    },
    #[error("You owe {owed} credits: a payment was refunded or disputed after its credits were spent. Buying credits repays them first.")]
    CreditsOwed { owed: i64, job_id: Uuid },
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyConflict,
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("The requested range is outside the video.")]
    RangeNotSatisfiable,
    #[error("Too many submissions; try again in {retry_after_secs} s.")]
    RateLimited { retry_after_secs: u64 },
    #[error("You have {limit} event streams open here; close one first.")]
    TooManyStreams { limit: u32 },
    #[error("the service is temporarily unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// The documented error body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// `code` is stable and meant for programs; `message` is for people.
/// Some codes add fields: `field` (invalid_request; forbidden about one
/// field of the request), `required`,
/// `available` and `job_id` (insufficient_credits).
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    /// With `credits_owed`: what the caller owes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owed: Option<i64>,
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(InvalidInput::new(field, message))
    }

    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::Internal(e.into())
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden | Self::ForbiddenFor(_) | Self::ForbiddenField(_) => {
                (StatusCode::FORBIDDEN, "forbidden")
            }
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::InsufficientCredits { .. } => {
                (StatusCode::PAYMENT_REQUIRED, "insufficient_credits")
            }
            Self::CreditsOwed { .. } => (StatusCode::PAYMENT_REQUIRED, "credits_owed"),
            Self::IdempotencyConflict => (StatusCode::CONFLICT, "idempotency_conflict"),
            Self::InvalidState(_) => (StatusCode::CONFLICT, "invalid_state"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::RangeNotSatisfiable => {
                (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable")
            }
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::TooManyStreams { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_streams"),
            Self::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound("not found".into()),
            StoreError::Conflict(m) => Self::Conflict(m),
            StoreError::Db(e) => e.into(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            // The pool could not hand out a connection: Postgres is down or saturated.
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
                Self::Unavailable(e.into())
            }
            // Named constraints that a client can trip map to client errors.
            // Text Postgres can't store (a NUL byte) that slipped past validation.
            sqlx::Error::Database(d) if matches!(d.code().as_deref(), Some("22021" | "22P05")) => {
                Self::invalid(
                    "body",
                    "The request contains characters that can't be stored.",
                )
            }
            sqlx::Error::Database(d) => match d.constraint() {
                Some("credit_accounts_available_nonnegative") => {
                    Self::Conflict("not enough credits for this change".into())
                }
                Some("credit_ledger_reference_key") => {
                    Self::Conflict("this reference was already applied".into())
                }
                Some("jobs_user_idempotency_key") => Self::IdempotencyConflict,
                _ => Self::Internal(e.into()),
            },
            _ => Self::Internal(e.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        // Logged here, once; the client sees only the public message.
        match &self {
            Self::Internal(e) => tracing::error!(error = ?e, "request failed"),
            Self::Unavailable(e) => tracing::warn!(error = %e, "dependency unavailable"),
            _ => tracing::debug!(%code, message = %self, "request refused"),
        }
        let mut detail = ErrorDetail {
            code: code.into(),
            message: self.to_string(),
            field: None,
            required: None,
            available: None,
            job_id: None,
            owed: None,
        };
        match &self {
            Self::Invalid(i) | Self::ForbiddenField(i) => {
                detail.field = Some(i.field.clone());
                detail.message = i.message.clone();
            }
            Self::InsufficientCredits {
                required,
                available,
                job_id,
            } => {
                detail.required = Some(*required);
                detail.available = Some(*available);
                detail.job_id = Some(*job_id);
            }
            Self::CreditsOwed { owed, job_id } => {
                detail.owed = Some(*owed);
                detail.job_id = Some(*job_id);
            }
            _ => {}
        }
        let mut response = (status, Json(ErrorBody { error: detail })).into_response();
        if let Self::RateLimited { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The error body as a JSON value, for places outside handlers (panics).
pub fn error_json(code: &str, message: &str) -> Value {
    let mut detail = Map::new();
    detail.insert("code".into(), json!(code));
    detail.insert("message".into(), json!(message));
    json!({ "error": detail })
}
