//! `genqctl users limit`: one user's limits (jobs at the provider at once,
//! the right to high priority) — the same store call as the admin API's,
//! audited with the operator.

use genq_core::config::{Settings, MAX_ACTIVE_MAX};
use genq_store::store::{self, gate};
use serde_json::json;
use sqlx::PgPool;

use crate::{actor, fail, ok, UserArg};

/// `--max-active`: a number (0: no limit), or `default`.
fn parse_max_active(raw: &str) -> anyhow::Result<Option<i32>> {
    if raw == "default" {
        return Ok(None);
    }
    let n: u32 = raw.parse().map_err(|_| {
        anyhow::anyhow!(
            "--max-active must be a number from 0 (no limit) to {MAX_ACTIVE_MAX}, or \"default\""
        )
    })?;
    anyhow::ensure!(
        n <= MAX_ACTIVE_MAX,
        "--max-active must be at most {MAX_ACTIVE_MAX}"
    );
    Ok(Some(n as i32))
}

pub(crate) struct LimitArgs<'a> {
    pub user: &'a UserArg,
    pub max_active: Option<&'a str>,
    pub priority: Option<bool>,
    pub reason: Option<&'a str>,
    pub who: &'a Option<String>,
}

/// Sets what is given and prints the limits that apply; with nothing to
/// set, only prints them.
pub(crate) async fn limit(
    json_out: bool,
    settings: &Settings,
    pool: &PgPool,
    args: LimitArgs<'_>,
) -> anyhow::Result<crate::Outcome> {
    let max_active = args.max_active.map(parse_max_active).transpose()?;
    let Some(target) = store::find_user(pool, &args.user.to_ref()).await? else {
        return fail(2, "No such user.".into());
    };
    let limits = if max_active.is_some() || args.priority.is_some() {
        let reason = args.reason.map(str::trim).filter(|r| !r.is_empty());
        let change = gate::LimitsChange {
            max_active,
            priority: args.priority,
        };
        Some(gate::set_user_limits(pool, target.id, &change, &actor(args.who), reason).await?)
    } else {
        gate::user_limits(pool, target.id).await?
    };
    let own = limits.as_ref().and_then(|l| l.max_active);
    let effective = gate::Rules::from_settings(settings).user_limit(own);
    let priority = limits.as_ref().is_some_and(|l| l.priority);
    if json_out {
        return ok(serde_json::to_string_pretty(&json!({
            "user_id": target.id,
            "max_active": own,
            "effective_max_active": effective,
            "priority": priority,
        }))?);
    }
    let at_once = match (own, effective) {
        (_, 0) => "no limit".to_owned(),
        (Some(_), n) => format!("{n} at once (the user's own)"),
        (None, n) => format!("{n} at once (the deployment's limits.max_active_per_user)"),
    };
    ok(format!(
        "{}: {at_once}; high priority {}.",
        target.external_id,
        if priority { "allowed" } else { "not allowed" }
    ))
}
