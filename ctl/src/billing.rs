//! `genqctl billing events` (what each payment event did) and `genqctl
//! credits waive` (pardon what a user owes) — the same store calls as the
//! admin API's, audited with the operator.

use genq_store::store::{self, billing};
use serde_json::json;
use sqlx::PgPool;

use crate::{actor, age, fail, ok, table, UserArg};

pub(crate) async fn events(
    json_out: bool,
    pool: &PgPool,
    attention: bool,
    limit: i64,
) -> anyhow::Result<crate::Outcome> {
    let events = billing::events(pool, limit.clamp(1, 500), attention).await?;
    if json_out {
        return ok(serde_json::to_string_pretty(&events)?);
    }
    let mut t = table(&[
        "event", "type", "received", "outcome", "user", "about", "detail",
    ]);
    for e in &events {
        t.add_row(vec![
            e.id.clone(),
            e.kind.clone(),
            age(e.received_at) + " ago",
            e.outcome.clone(),
            e.user_id.map(|u| u.to_string()).unwrap_or_default(),
            e.object_id.clone().unwrap_or_default(),
            e.detail.clone(),
        ]);
    }
    let needing = events.iter().filter(|e| e.needs_attention).count();
    ok(format!(
        "{t}\n{} event(s), {needing} needing attention",
        events.len()
    ))
}

pub(crate) async fn waive(
    json_out: bool,
    pool: &PgPool,
    user: &UserArg,
    amount: Option<i64>,
    reason: &str,
    who: &Option<String>,
) -> anyhow::Result<crate::Outcome> {
    anyhow::ensure!(!reason.trim().is_empty(), "--reason must not be empty");
    anyhow::ensure!(
        amount.is_none_or(|a| (1..=1_000_000_000).contains(&a)),
        "--amount must be between 1 and 1000000000"
    );
    let Some(target) = store::find_user(pool, &user.to_ref()).await? else {
        return fail(2, "No such user.".into());
    };
    let waived = billing::waive_owed(pool, target.id, amount, &actor(who), reason.trim()).await?;
    let account = store::account(pool, target.id).await?;
    if json_out {
        return ok(serde_json::to_string_pretty(
            &json!({"waived": waived, "credits": account}),
        )?);
    }
    ok(format!(
        "Waived {waived} owed credits of {}; still owed: {}.",
        target.external_id, account.owed
    ))
}
