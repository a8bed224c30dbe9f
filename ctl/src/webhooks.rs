//! `genqctl webhooks`: register, list, remove and rotate webhook endpoints,
//! list deliveries (the failed ones) and replay one — the same store calls
//! as the admin API's `/v1/admin/webhooks`, audited with the operator.

use std::fmt::Write as _;
use std::time::Duration;

use genq_core::config::Settings;
use genq_store::store::webhooks::{self as hooks, DeliveryFilter, DeliveryStatus, Endpoint};
use genq_store::store::{self, outbox, StoreError};
use serde_json::json;
use sqlx::PgPool;

use crate::{actor, age, fail, ok, table, ts, Outcome, WebhooksCmd};

pub(crate) async fn webhooks(
    json_out: bool,
    settings: &Settings,
    pool: &PgPool,
    cmd: &WebhooksCmd,
) -> anyhow::Result<Outcome> {
    match cmd {
        WebhooksCmd::Add {
            url,
            user,
            actor: a,
        } => {
            let url = match genq_core::webhooks::check_url(url, settings.webhooks.allow_private) {
                Ok(url) => url,
                Err(e) => return fail(2, e.message),
            };
            let user_id = match user.to_ref() {
                None => None,
                Some(by) => match store::find_user(pool, &by).await? {
                    Some(u) => Some(u.id),
                    None => return fail(2, "No such user.".into()),
                },
            };
            let (endpoint, secret) =
                hooks::create_endpoint(pool, url.as_str(), user_id, &actor(a)).await?;
            if json_out {
                return ok(serde_json::to_string_pretty(
                    &json!({"id": endpoint.id, "secret": secret.expose(), "endpoint": endpoint}),
                )?);
            }
            ok(format!(
                "Registered webhook endpoint {} → {} ({}).\nSecret (shown only now; verify each delivery's webhook-signature with it):\n  {}",
                endpoint.id,
                endpoint.url,
                whose(&endpoint),
                secret.expose()
            ))
        }
        WebhooksCmd::List { all } => {
            let endpoints = hooks::list_endpoints(pool, *all, 10_000).await?;
            if json_out {
                return ok(serde_json::to_string_pretty(&endpoints)?);
            }
            let mut t = table(&["id", "url", "events of", "state", "created", "by"]);
            for e in &endpoints {
                let state = match &e.disabled_reason {
                    Some(why) => format!("{} ({why})", state_word(e)),
                    None => state_word(e),
                };
                t.add_row(vec![
                    e.id.to_string(),
                    e.url.clone(),
                    whose(e),
                    state,
                    ts(e.created_at),
                    e.created_by.clone(),
                ]);
            }
            ok(format!("{t}\n{} endpoint(s)", endpoints.len()))
        }
        WebhooksCmd::Remove { id, actor: a } => {
            match hooks::delete_endpoint(pool, *id, &actor(a)).await? {
                Some(e) if json_out => ok(serde_json::to_string_pretty(&e)?),
                Some(e) => ok(format!(
                    "Deleted webhook endpoint {} ({}); its pending deliveries are dropped.",
                    e.id, e.url
                )),
                None => fail(2, format!("No webhook endpoint {id} (or deleted already).")),
            }
        }
        WebhooksCmd::Rotate { id, actor: a } => {
            let overlap = Duration::from_secs(settings.webhooks.rotation_overlap_secs);
            let Some((e, secret)) = hooks::rotate_secret(pool, *id, overlap, &actor(a)).await?
            else {
                return fail(2, format!("No webhook endpoint {id} (or deleted)."));
            };
            if json_out {
                return ok(serde_json::to_string_pretty(&json!({
                    "id": e.id, "secret": secret.expose(),
                    "previous_secret_expires_at": e.previous_secret_expires_at, "endpoint": e,
                }))?);
            }
            let until = e
                .previous_secret_expires_at
                .map(|t| format!("until {} UTC", ts(t)))
                .unwrap_or_else(|| "no longer (no overlap configured)".into());
            ok(format!(
                "New secret for {} (shown only now):\n  {}\nThe previous secret signs too {until}.",
                e.id,
                secret.expose()
            ))
        }
        WebhooksCmd::Deliveries {
            status,
            endpoint,
            job,
            limit,
        } => {
            let status = match status.as_deref().map(DeliveryStatus::parse) {
                Some(None) => {
                    return fail(
                        2,
                        "--status is one of pending, delivered, failed, disabled.".into(),
                    )
                }
                Some(s) => s,
                None => None,
            };
            let filter = DeliveryFilter {
                status,
                endpoint_id: *endpoint,
                job_id: *job,
            };
            let deliveries =
                hooks::list_deliveries(pool, &filter, (*limit).clamp(1, 10_000)).await?;
            if json_out {
                return ok(serde_json::to_string_pretty(&deliveries)?);
            }
            let mut t = table(&[
                "id", "job", "to", "status", "attempts", "last", "ms", "error", "age",
            ]);
            for d in &deliveries {
                t.add_row(vec![
                    d.id.to_string(),
                    d.job_id.to_string(),
                    d.to_status.clone().unwrap_or_default(),
                    d.status.as_str().to_owned(),
                    d.attempts.to_string(),
                    d.last_status_code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    d.last_response_ms
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into()),
                    d.last_error.clone().unwrap_or_default(),
                    age(d.created_at),
                ]);
            }
            ok(format!("{t}\n{} deliverie(s)", deliveries.len()))
        }
        WebhooksCmd::Replay { id, actor: a } => {
            match hooks::replay_delivery(pool, *id, &actor(a)).await {
                Ok(d) => {
                    // Wake the relays; without it they pick the row up on their timer.
                    let _ = outbox::wake_relays(pool).await;
                    if json_out {
                        return ok(serde_json::to_string_pretty(&d)?);
                    }
                    let mut out = String::new();
                    writeln!(
                        out,
                        "Delivery {} ({} of job {}) is pending again; it is sent shortly.",
                        d.id, d.msg_id, d.job_id
                    )?;
                    ok(out)
                }
                Err(StoreError::NotFound) => fail(2, format!("No webhook delivery {id}.")),
                Err(StoreError::Conflict(why)) => {
                    fail(1, format!("Delivery {id} can't be replayed: {why}."))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn whose(e: &Endpoint) -> String {
    match (e.user_id, &e.user_email) {
        (None, _) => "every user".into(),
        (Some(_), Some(email)) => email.clone(),
        (Some(id), None) => id.to_string(),
    }
}

fn state_word(e: &Endpoint) -> String {
    serde_json::to_value(e.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
