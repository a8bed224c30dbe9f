//! `genqctl dlq`: list, show, replay and discard dead letters (moving what
//! waits on the broker into the archive first).

use std::fmt::Write as _;

use genq_broker::dead_letters::sync_from_broker;
use genq_core::config::Settings;
use genq_store::store::dead_letters as dlq;
use genq_store::store::{self, outbox};
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::PgPool;

use crate::{actor, age, fail, job_text, ok, table, DlqCmd, Outcome};

pub(crate) async fn dead_letters(
    json_out: bool,
    settings: &Settings,
    pool: &PgPool,
    cmd: &DlqCmd,
) -> anyhow::Result<Outcome> {
    match cmd {
        DlqCmd::List { all } => {
            // New letters still on the broker are moved in first; if the
            // broker is away the archive is shown as it is.
            let note = match sync_from_broker(settings, pool).await {
                Ok(_) => String::new(),
                Err(e) => format!("(the broker is unreachable, showing the archive only: {e:#})\n"),
            };
            let letters = dlq::list(pool, *all, 10_000).await?;
            if json_out {
                return ok(serde_json::to_string_pretty(&letters)?);
            }
            let mut t = table(&["id", "job", "user", "reason", "attempts", "age", "state"]);
            for l in &letters {
                t.add_row(vec![
                    l.id.to_string(),
                    l.job_id
                        .map(|j| j.to_string())
                        .unwrap_or_else(|| "-".into()),
                    l.user_email
                        .clone()
                        .or(l.user_id.map(|u| u.to_string()))
                        .unwrap_or_else(|| "-".into()),
                    l.reason.clone(),
                    l.attempts
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "-".into()),
                    age(l.received_at),
                    l.state.clone(),
                ]);
            }
            ok(format!("{note}{t}\n{} dead letter(s)", letters.len()))
        }
        DlqCmd::Show { id } => {
            let Some(l) = dlq::get(pool, *id).await? else {
                return fail(2, format!("No dead letter {id}."));
            };
            if json_out {
                return ok(serde_json::to_string_pretty(&l)?);
            }
            let mut out = format!(
                "DEAD LETTER {}  ({})\n  reason   {}\n  from     {} queue, {} ago\n  user     {}\n  message  {}\n",
                l.id, l.state, l.reason, l.source_queue, age(l.received_at),
                l.user_email.clone().unwrap_or_else(|| "-".into()), l.body_text()
            );
            if let Some(job_id) = l.job_id {
                if let Some(job) = store::get_job(pool, job_id).await? {
                    out.push_str(&job_text(&job, &store::job_events(pool, job_id).await?)?);
                }
            }
            ok(out)
        }
        DlqCmd::Replay(target) | DlqCmd::Discard(target) => {
            let replay = matches!(cmd, DlqCmd::Replay(_));
            let who = actor(&target.actor);
            let ids: Vec<i64> = match target.id {
                Some(id) => vec![id],
                None => {
                    let _ = sync_from_broker(settings, pool).await;
                    dlq::list(pool, false, 100_000)
                        .await?
                        .into_iter()
                        .map(|l| l.id)
                        .collect()
                }
            };
            let bar = ProgressBar::new(ids.len() as u64);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}").expect("template"),
            );
            if ids.len() < 2 {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let mut results = vec![];
            for id in ids {
                let r = if replay {
                    dlq::replay(pool, id, &who).await
                } else {
                    dlq::discard(pool, id, &who).await
                };
                match r {
                    Ok(r) => results.push(r),
                    Err(store::StoreError::NotFound) => {
                        return fail(2, format!("No dead letter {id}."))
                    }
                    Err(e) => return Err(e.into()),
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            if replay && results.iter().any(|r| r.done) {
                // Wake the relays; without it they pick the rows up on their timer.
                let _ = outbox::wake_relays(pool).await;
            }
            let failed = results.iter().filter(|r| !r.done).count();
            let code = if failed > 0 { 1 } else { 0 };
            if json_out {
                return fail(code, serde_json::to_string_pretty(&results)?);
            }
            let mut out = String::new();
            for r in &results {
                writeln!(
                    out,
                    "{} {}: {}",
                    if r.done { "ok  " } else { "SKIP" },
                    r.id,
                    r.message
                )?;
            }
            writeln!(out, "{} done, {} not done", results.len() - failed, failed)?;
            fail(code, out)
        }
    }
}
