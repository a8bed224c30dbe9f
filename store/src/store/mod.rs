//! The store: every SQL statement of genq's core, one module per concept.
//! Each change of credits or job status is one conditional statement, so
//! repeats and races change nothing twice.
//!
//! - [`users`]: who the caller is, and users named by operators
//! - [`credits`]: accounts and the ledger; the one reserve and settle path
//! - [`billing`]: payments credited, refunds and disputes reversed, what is owed
//! - [`jobs`]: submit, read, list, and the sweeper's queries
//! - [`transition`]: a job's conditional status change with its settlement
//! - [`cancel`]: a user's or an operator's cancel, refunded at once
//! - [`locks`]: advisory locks for work one process does at a time
//! - [`lots`]: credit lots with their expiry; what each ledger move took from which
//! - [`named`]: statements with named parameters, bound by name
//! - [`gate`]: who may start under providers' caps and users' limits, the
//!   lines the others wait in, and the dispatcher that grants freed slots
//! - [`outbox`]: every outbox query, and the doorbells that wake listeners
//! - [`events`]: reading the job-event stream after a position
//! - [`rate`]: the per-user submission limit shared by every API process
//! - [`dead_letters`]: the archive of dead letters, replay and discard
//! - [`webhooks`]: webhook endpoints, their deliveries and attempts

pub mod billing;
pub mod cancel;
pub mod credits;
pub mod dead_letters;
pub mod events;
pub mod gate;
pub mod jobs;
pub mod locks;
pub mod lots;
pub mod named;
pub mod outbox;
pub mod rate;
pub mod transition;
pub mod users;
pub mod webhooks;

pub use cancel::{cancel_job, CancelOutcome};
pub use credits::{account, add_credits, Account, CreditGrant, GrantOutcome, LedgerEntry};
pub use events::{of_job as job_events, JobEvent};
pub use jobs::{
    advance_poll, get_job, list_jobs, mark_provider_canceled, record_event, submit, submit_batch,
    wake_on_callback, Advanced, CallbackWake, Job, JobCursor, NewSubmission, SubmitOutcome,
    JOB_COLS,
};
pub use transition::{transition, transition_batch, Note, Settlement, Transition};
pub use users::{ensure_user, find_user, find_user_by_id, Identity, User, UserRef};

/// Every statement composed from parts that other statements share (the
/// rate allowance, the reserve and settle steps, the outbox insert), and
/// the relay's, by name: a test prepares each against the migrated schema,
/// so a part that no longer fits fails in seconds, not in an end-to-end
/// test; `genq-api print-sql NAME` prints one for the benchmark.
pub fn composed_statements() -> [(&'static str, &'static named::Named); 7] {
    [
        ("submit", jobs::accept_statement()),
        ("submit-batch", jobs::accept_batch_statement()),
        ("transition", transition::statement()),
        ("transition-batch", transition::batch_statement()),
        ("replay", dead_letters::replay_statement()),
        ("outbox-claim", outbox::claim_statement()),
        ("outbox-mark", outbox::mark_statement()),
    ]
}

/// The actor recorded for changes genq makes on its own.
pub const SYSTEM_ACTOR: &str = "system";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Whether `e` is the violation of the named constraint or index.
pub fn is_violation(e: &sqlx::Error, constraint: &str) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.constraint() == Some(constraint))
}

/// Cuts `limit + 1` rows to a page and the cursor of the row that ends it.
pub(crate) fn page<T, C>(
    mut rows: Vec<T>,
    limit: i64,
    cursor: impl Fn(&T) -> C,
) -> (Vec<T>, Option<C>) {
    if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        let next = rows.last().map(cursor);
        (rows, next)
    } else {
        (rows, None)
    }
}
