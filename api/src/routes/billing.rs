//! `POST /v1/billing/stripe/webhook`: Stripe's events, verified against the
//! exact bytes received and applied once each (by event ID, and by session,
//! charge or dispute whichever event carries it).

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;

use axum::Json;
use genq_core::config::MAX_ACTIVE_MAX;
use genq_store::store::billing::{
    self, Applied, Clawback, ClawbackKind, PaidCheckout, PlanCredits,
};
use genq_store::store::users;
use secrecy::ExposeSecret;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::stripe::{self, Charge, CheckoutSession, Dispute, Event, Invoice};

/// Largest event body read: Stripe's events are a few KiB.
const BODY_MAX: usize = 256 * 1024;

/// What genq did with an event (Stripe only needs the 200).
#[derive(Debug, Serialize, ToSchema)]
pub struct StripeWebhookAnswer {
    pub received: bool,
    /// `credited`, `reversed`, `recorded`, `duplicate`, `ignored` or
    /// `needs_attention`.
    pub outcome: String,
    pub detail: String,
}

/// Receive a Stripe event (configure this URL as the endpoint in Stripe).
#[utoipa::path(
    post, path = "/v1/billing/stripe/webhook", tag = "billing", operation_id = "stripe_webhook",
    request_body(content = Object, content_type = "application/json",
        description = "A Stripe event, exactly as Stripe sends it (the signature is over these bytes)"),
    params(("Stripe-Signature" = String, Header,
        description = "`t=<unix seconds>,v1=<hex HMAC-SHA256>`, as Stripe signs every event")),
    responses(
        (status = 200, description = "Received: applied, a duplicate, ignored, or recorded for an operator's attention", body = StripeWebhookAnswer),
        (status = 400, description = "A missing, malformed, non-matching or stale signature (`field`: `Stripe-Signature`), or a body over 256 KiB or not an event: nothing changed", body = ErrorBody),
        (status = 404, description = "Stripe is not configured here (`billing.stripe.webhook_secret`)", body = ErrorBody),
    )
)]
#[tracing::instrument(skip_all, fields(event_id, event_type))]
pub async fn stripe_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<StripeWebhookAnswer>, ApiError> {
    let settings = &state.settings.billing.stripe;
    // No signature is a malformed request here, configured or not.
    let Some(signature) = headers.get("stripe-signature") else {
        return Err(ApiError::invalid(
            "Stripe-Signature",
            stripe::SignatureError::Missing.to_string(),
        ));
    };
    let Some(secret) = &settings.webhook_secret else {
        return Err(ApiError::NotFound("not found".into()));
    };
    let body = axum::body::to_bytes(body, BODY_MAX).await.map_err(|_| {
        ApiError::invalid(
            "body",
            format!("The body must be at most {BODY_MAX} bytes."),
        )
    })?;
    stripe::verify(
        Some(signature.to_str().unwrap_or("")),
        &body,
        secret.expose_secret(),
        Duration::from_secs(settings.tolerance_secs),
        SystemTime::now(),
    )
    .map_err(|e| {
        metrics::counter!("genq_billing_events_total", "outcome" => "bad_signature").increment(1);
        tracing::warn!(error = %e, "Stripe event refused");
        ApiError::invalid("Stripe-Signature", e.to_string())
    })?;
    let event: Event = serde_json::from_slice(&body)
        .map_err(|_| ApiError::invalid("body", "The body is not a Stripe event."))?;
    if !stripe::plausible_id(&event.id) || !stripe::plausible_id(&event.kind) {
        return Err(ApiError::invalid(
            "body",
            "The event's id or type is not valid.",
        ));
    }
    let span = tracing::Span::current();
    span.record("event_id", event.id.as_str());
    span.record("event_type", event.kind.as_str());
    let action = prepare(&state, &event).await?;
    let mut tx = state.pool.begin().await?;
    let applied = if billing::claim_event(&mut tx, &event.id, &event.kind).await? {
        let applied = match action {
            Action::Credit(c) => billing::credit_checkout(&mut tx, &c.as_ref()).await?,
            Action::Clawback(c) => billing::record_clawback(&mut tx, &c.as_ref()).await?,
            Action::Plan(p) => billing::credit_plan(&mut tx, &p.as_ref()).await?,
            Action::Note(applied) => applied,
        };
        billing::finish_event(&mut tx, &event.id, &applied).await?;
        tx.commit().await?;
        applied
    } else {
        tx.rollback().await?;
        Applied::new("duplicate", "this event was received before")
    };
    metrics::counter!("genq_billing_events_total", "outcome" => applied.outcome).increment(1);
    if applied.needs_attention() {
        tracing::warn!(detail = %applied.detail, "Stripe event needs an operator");
    } else {
        tracing::info!(outcome = applied.outcome, detail = %applied.detail, "Stripe event");
    }
    Ok(Json(StripeWebhookAnswer {
        received: true,
        outcome: applied.outcome.into(),
        detail: applied.detail,
    }))
}

/// What an event asks for, parsed and checked before its transaction.
enum Action {
    Credit(OwnedCheckout),
    Clawback(OwnedClawback),
    Plan(OwnedPlan),
    Note(Applied),
}

struct OwnedPlan {
    invoice_id: String,
    user_id: uuid::Uuid,
    credits: i64,
    expires_at: chrono::DateTime<chrono::Utc>,
    limits: genq_store::store::gate::LimitsChange,
}

impl OwnedPlan {
    fn as_ref(&self) -> PlanCredits<'_> {
        PlanCredits {
            invoice_id: &self.invoice_id,
            user_id: self.user_id,
            credits: self.credits,
            expires_at: self.expires_at,
            limits: self.limits.clone(),
        }
    }
}

struct OwnedCheckout {
    session_id: String,
    payment_intent: Option<String>,
    user_id: uuid::Uuid,
    credits: i64,
    amount: Option<i64>,
    currency: Option<String>,
}

impl OwnedCheckout {
    fn as_ref(&self) -> PaidCheckout<'_> {
        PaidCheckout {
            session_id: &self.session_id,
            payment_intent: self.payment_intent.as_deref(),
            user_id: self.user_id,
            credits: self.credits,
            amount: self.amount,
            currency: self.currency.as_deref(),
        }
    }
}

struct OwnedClawback {
    payment_intent: String,
    amount: Option<i64>,
    currency: Option<String>,
    kind: ClawbackKind,
    taken: i64,
}

impl OwnedClawback {
    fn as_ref(&self) -> Clawback<'_> {
        Clawback {
            payment_intent: &self.payment_intent,
            amount: self.amount,
            currency: self.currency.as_deref(),
            kind: self.kind,
            taken: self.taken,
        }
    }
}

fn attention(detail: impl Into<String>, object: Option<&str>) -> Action {
    Action::Note(
        Applied::new("needs_attention", detail).object(object.filter(|o| stripe::plausible_id(o))),
    )
}

/// Reads the event's object. A paid session's user is created here when
/// unknown (as a first sign-in would), outside the event's transaction:
/// creating a user twice is harmless, crediting twice is not.
async fn prepare(state: &AppState, event: &Event) -> Result<Action, ApiError> {
    let object = &event.data.object;
    let object_id = object.get("id").and_then(|v| v.as_str());
    Ok(match event.kind.as_str() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            let Ok(session) = serde_json::from_value::<CheckoutSession>(object.clone()) else {
                return Ok(attention(
                    "the checkout session could not be read",
                    object_id,
                ));
            };
            checkout(state, session).await?
        }
        "charge.refunded" => {
            let Ok(charge) = serde_json::from_value::<Charge>(object.clone()) else {
                return Ok(attention("the charge could not be read", object_id));
            };
            let Some(pi) = charge.payment_intent.as_ref().map(|p| p.id().to_owned()) else {
                return Ok(attention(
                    format!(
                        "charge {} has no payment intent: reverse by hand if it bought credits",
                        charge.id
                    ),
                    Some(&charge.id),
                ));
            };
            if !stripe::plausible_id(&pi) || charge.amount <= 0 || charge.amount_refunded < 0 {
                return Ok(attention(
                    "the charge's payment intent or amounts are not valid",
                    Some(&charge.id),
                ));
            }
            Action::Clawback(OwnedClawback {
                payment_intent: pi,
                amount: Some(charge.amount),
                currency: charge.currency,
                kind: ClawbackKind::Refund,
                taken: charge.amount_refunded,
            })
        }
        "charge.dispute.created" => {
            let Ok(dispute) = serde_json::from_value::<Dispute>(object.clone()) else {
                return Ok(attention("the dispute could not be read", object_id));
            };
            let Some(pi) = dispute.payment_intent.as_ref().map(|p| p.id().to_owned()) else {
                return Ok(attention(
                    format!(
                        "dispute {} has no payment intent: reverse by hand if it bought credits",
                        dispute.id
                    ),
                    Some(&dispute.id),
                ));
            };
            if !stripe::plausible_id(&pi) || dispute.amount <= 0 {
                return Ok(attention(
                    "the dispute's payment intent or amount is not valid",
                    Some(&dispute.id),
                ));
            }
            Action::Clawback(OwnedClawback {
                payment_intent: pi,
                amount: None,
                currency: dispute.currency,
                kind: ClawbackKind::Dispute,
                taken: dispute.amount,
            })
        }
        "invoice.paid" => {
            let Ok(invoice) = serde_json::from_value::<Invoice>(object.clone()) else {
                return Ok(attention("the invoice could not be read", object_id));
            };
            plan(state, invoice).await?
        }
        _ => Action::Note(
            Applied::new("ignored", "genq does not use this event type")
                .object(object_id.filter(|o| stripe::plausible_id(o))),
        ),
    })
}

async fn checkout(state: &AppState, session: CheckoutSession) -> Result<Action, ApiError> {
    if !stripe::plausible_id(&session.id) {
        return Ok(attention("the session's id is not valid", None));
    }
    let sid = Some(session.id.as_str());
    match session.payment_status.as_deref() {
        Some("paid" | "no_payment_required") => {}
        other => {
            return Ok(Action::Note(
                Applied::new(
                    "ignored",
                    format!(
                        "payment_status is {}: not paid yet (an asynchronous payment is credited on checkout.session.async_payment_succeeded)",
                        other.unwrap_or("absent")
                    ),
                )
                .object(sid),
            ))
        }
    }
    let Some(sub) = stripe::user_sub(session.client_reference_id.as_deref()) else {
        return Ok(attention(
            format!(
                "session {} is paid but names no user (client_reference_id): not credited",
                session.id
            ),
            sid,
        ));
    };
    let stripe_settings = &state.settings.billing.stripe;
    let has_metadata = session
        .metadata
        .as_ref()
        .is_some_and(|m| m.contains_key("genq_credits"));
    let credits = if !has_metadata && !stripe_settings.prices.is_empty() {
        // Stripe not answering is for Stripe to retry (a 503), not a guess.
        let items = stripe::line_items(&state.http, stripe_settings, &session.id)
            .await
            .map_err(ApiError::Unavailable)?;
        stripe::credits_of_items(stripe_settings, &items)
    } else {
        stripe::credits_of(&session).map_err(str::to_owned)
    };
    let credits = match credits {
        Ok(c) => c,
        Err(why) => {
            return Ok(attention(
                format!("session {} is paid but {why}: not credited", session.id),
                sid,
            ))
        }
    };
    let payment_intent = session.payment_intent.as_ref().map(|p| p.id().to_owned());
    if payment_intent
        .as_deref()
        .is_some_and(|p| !stripe::plausible_id(p))
    {
        return Ok(attention("the session's payment intent is not valid", sid));
    }
    let user_id =
        users::ensure_external_id(&state.pool, sub, state.settings.credits.initial).await?;
    Ok(Action::Credit(OwnedCheckout {
        session_id: session.id,
        payment_intent,
        user_id,
        credits,
        amount: session.amount_total.filter(|a| *a >= 0),
        currency: session.currency.filter(|c| c.len() <= 10),
    }))
}

/// A subscription's paid invoice: `genq_plan_credits` for the user
/// `genq_user` (the identity provider's `sub`), from the invoice's or its
/// subscription's metadata, expiring when the period it pays for ends. An
/// invoice without `genq_plan_credits` is not a genq plan (ignored).
async fn plan(state: &AppState, invoice: Invoice) -> Result<Action, ApiError> {
    if !stripe::plausible_id(&invoice.id) {
        return Ok(attention("the invoice's id is not valid", None));
    }
    let iid = Some(invoice.id.as_str());
    let Some(raw) = invoice.meta("genq_plan_credits") else {
        return Ok(Action::Note(
            Applied::new(
                "ignored",
                "the invoice has no genq_plan_credits: not a genq plan",
            )
            .object(iid),
        ));
    };
    let Some(credits) = stripe::credits_value(raw) else {
        return Ok(attention(
            format!("invoice {} is paid but genq_plan_credits is not a positive whole number: not credited", invoice.id),
            iid,
        ));
    };
    let Some(sub) = stripe::user_sub(invoice.meta("genq_user").and_then(|v| v.as_str())) else {
        return Ok(attention(
            format!(
                "invoice {} is paid but names no user (metadata genq_user): not credited",
                invoice.id
            ),
            iid,
        ));
    };
    let end = invoice
        .period_end()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .filter(|t| *t > chrono::Utc::now());
    let Some(expires_at) = end else {
        return Ok(attention(
            format!(
                "invoice {} is paid but its period has no end in the future: not credited",
                invoice.id
            ),
            iid,
        ));
    };
    let Some(limits) = plan_limits(&invoice) else {
        return Ok(attention(
            format!(
                "invoice {} is paid but genq_plan_max_active (a whole number from 0 to {MAX_ACTIVE_MAX}) or genq_plan_priority (true or false) can't be read: not credited",
                invoice.id
            ),
            iid,
        ));
    };
    let user_id =
        users::ensure_external_id(&state.pool, sub, state.settings.credits.initial).await?;
    Ok(Action::Plan(OwnedPlan {
        invoice_id: invoice.id,
        user_id,
        credits,
        expires_at,
        limits,
    }))
}

/// What a plan gives besides credits: `genq_plan_max_active` (a whole
/// number, 0 for no limit) and `genq_plan_priority` (`true`/`false`), each
/// optional; `None` when one is present but can't be read.
fn plan_limits(invoice: &Invoice) -> Option<genq_store::store::gate::LimitsChange> {
    let max_active = match invoice.meta("genq_plan_max_active") {
        None => None,
        Some(v) => {
            let n =
                stripe::whole_number(v).filter(|n| (0..=i64::from(MAX_ACTIVE_MAX)).contains(n))?;
            Some(Some(n as i32))
        }
    };
    let priority = match invoice.meta("genq_plan_priority") {
        None => None,
        Some(v) => Some(stripe::flag_value(v)?),
    };
    Some(genq_store::store::gate::LimitsChange {
        max_active,
        priority,
    })
}
