//! Domain types parsed at the edge, so the core never sees an unchecked value.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Longest prompt accepted, in characters.
pub const PROMPT_MAX_CHARS: usize = 2_000;
pub const DURATION_MIN_SECS: u32 = 1;
pub const DURATION_MAX_SECS: u32 = 60;
pub const DURATION_DEFAULT_SECS: u32 = 5;

/// Why a value from outside was refused: the field and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidInput {
    pub field: String,
    pub message: String,
}

impl InvalidInput {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The longest email, and so the longest way to name a user (an email, a
/// `sub` or an ID), accepted anywhere.
pub const EMAIL_MAX: usize = 320;

/// A short piece of text from outside (a reason, a reference, an email, an
/// ID): trimmed, 1 to `max` characters, no control characters (Postgres
/// can't store NUL, and nobody means to send the others).
pub fn check_text(field: &str, raw: &str, max: usize) -> Result<String, InvalidInput> {
    let v = raw.trim();
    if v.is_empty() || v.chars().count() > max {
        return Err(InvalidInput::new(
            field,
            format!("{field} must have 1 to {max} characters."),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(InvalidInput::new(
            field,
            format!("{field} must not contain control characters."),
        ));
    }
    Ok(v.to_owned())
}

/// A video prompt: trimmed, non-empty, at most [`PROMPT_MAX_CHARS`] characters,
/// no control characters other than newlines and tabs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Prompt(String);

impl Prompt {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(InvalidInput::new("prompt", "The prompt must not be empty."));
        }
        let chars = trimmed.chars().count();
        if chars > PROMPT_MAX_CHARS {
            return Err(InvalidInput::new(
                "prompt",
                format!(
                    "The prompt has {chars} characters; at most {PROMPT_MAX_CHARS} are allowed."
                ),
            ));
        }
        if trimmed
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
        {
            return Err(InvalidInput::new(
                "prompt",
                "The prompt must not contain control characters.",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The frame of the video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub enum AspectRatio {
    #[default]
    #[serde(rename = "16:9")]
    Landscape,
    #[serde(rename = "9:16")]
    Portrait,
    #[serde(rename = "1:1")]
    Square,
}

impl AspectRatio {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        match raw {
            "16:9" => Ok(Self::Landscape),
            "9:16" => Ok(Self::Portrait),
            "1:1" => Ok(Self::Square),
            _ => Err(InvalidInput::new(
                "aspect_ratio",
                "The aspect ratio must be one of \"16:9\", \"9:16\", \"1:1\".",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Landscape => "16:9",
            Self::Portrait => "9:16",
            Self::Square => "1:1",
        }
    }
}

/// Whether a job goes ahead: within its user's line, and between users of
/// the same standing. Only a user given the right may ask for `high`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    #[default]
    Normal,
    High,
}

impl Priority {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        match raw {
            "normal" => Ok(Self::Normal),
            "high" => Ok(Self::High),
            _ => Err(InvalidInput::new(
                "priority",
                "The priority must be \"normal\" or \"high\".",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

/// Length of the video in seconds, within the provider's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurationSeconds(u32);

impl DurationSeconds {
    pub fn parse(raw: i64) -> Result<Self, InvalidInput> {
        if (DURATION_MIN_SECS as i64..=DURATION_MAX_SECS as i64).contains(&raw) {
            Ok(Self(raw as u32))
        } else {
            Err(InvalidInput::new(
                "duration_seconds",
                format!("The duration must be between {DURATION_MIN_SECS} and {DURATION_MAX_SECS} seconds."),
            ))
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// A checked request for one video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoRequest {
    pub prompt: Prompt,
    pub duration: DurationSeconds,
    pub aspect_ratio: AspectRatio,
    /// The configured model asked for; `None` is the deployment's default.
    pub model: Option<String>,
    pub priority: Priority,
}

/// What the provider needs besides the prompt, stored as the job's `params`.
/// A field missing from a stored row takes the request's default, so the
/// defaults live in one place ([`DurationSeconds`], [`AspectRatio`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobParams {
    #[serde(default = "default_duration")]
    pub duration_seconds: u32,
    #[serde(default)]
    pub aspect_ratio: AspectRatio,
}

fn default_duration() -> u32 {
    DurationSeconds::default().get()
}

impl Default for JobParams {
    fn default() -> Self {
        Self {
            duration_seconds: default_duration(),
            aspect_ratio: AspectRatio::default(),
        }
    }
}

impl Default for DurationSeconds {
    fn default() -> Self {
        Self(DURATION_DEFAULT_SECS)
    }
}

impl VideoRequest {
    pub fn params(&self) -> JobParams {
        JobParams {
            duration_seconds: self.duration.get(),
            aspect_ratio: self.aspect_ratio,
        }
    }

    /// A stable digest of the request, to tell an idempotent replay from a
    /// different request reusing the same key.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut canonical = serde_json::json!({
            "prompt": self.prompt.as_str(),
            "duration_seconds": self.duration.get(),
            "aspect_ratio": self.aspect_ratio.as_str(),
        });
        // Only when named, so a request without a model keeps the
        // fingerprint it had before models existed.
        if let Some(model) = &self.model {
            canonical["model"] = model.as_str().into();
        }
        if self.priority == Priority::High {
            canonical["priority"] = self.priority.as_str().into();
        }
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// An amount of credits: never negative once parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Credits(i64);

/// Largest single grant or purchase, to keep sums far from overflow.
pub const CREDITS_MAX_GRANT: i64 = 1_000_000_000;

impl Credits {
    pub fn parse_grant(raw: i64, field: &str) -> Result<Self, InvalidInput> {
        if raw <= 0 || raw > CREDITS_MAX_GRANT {
            return Err(InvalidInput::new(
                field,
                format!("The amount must be between 1 and {CREDITS_MAX_GRANT}."),
            ));
        }
        Ok(Self(raw))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// Where a job is in its life. `rejected` was never reserved; the other
/// terminal states other than `succeeded` carry a refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Rejected,
    Queued,
    Submitting,
    Running,
    Succeeded,
    Failed,
    Canceled,
    Dead,
}

impl JobStatus {
    pub const ALL: [JobStatus; 8] = [
        Self::Rejected,
        Self::Queued,
        Self::Submitting,
        Self::Running,
        Self::Succeeded,
        Self::Failed,
        Self::Canceled,
        Self::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Queued => "queued",
            Self::Submitting => "submitting",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Dead => "dead",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Waiting, being sent to the provider or at it: a job holding its
    /// reservation. The one list of them; SQL gets it from [`Self::sql_list`].
    pub const OPEN: [JobStatus; 3] = [Self::Queued, Self::Submitting, Self::Running];
    /// Being sent to the provider or at it: what a provider's concurrency cap counts.
    pub const AT_PROVIDER: [JobStatus; 2] = [Self::Submitting, Self::Running];
    /// Done: the job never moves again.
    pub const TERMINAL: [JobStatus; 5] = [
        Self::Rejected,
        Self::Succeeded,
        Self::Failed,
        Self::Canceled,
        Self::Dead,
    ];

    pub fn is_terminal(self) -> bool {
        Self::TERMINAL.contains(&self)
    }

    /// Submitting or running: holding a slot of the provider's cap and of
    /// the user's limit.
    pub fn is_at_provider(self) -> bool {
        Self::AT_PROVIDER.contains(&self)
    }

    pub fn is_open(self) -> bool {
        Self::OPEN.contains(&self)
    }

    /// `('queued','submitting','running')`: `statuses` as a list for SQL's
    /// `IN`. Written into the statement rather than bound, so that the
    /// planner can match the partial indexes on open jobs.
    pub fn sql_list(statuses: &[JobStatus]) -> String {
        let quoted: Vec<String> = statuses.iter().map(|s| format!("'{s}'")).collect();
        format!("({})", quoted.join(","))
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Stores an enum as its text; a value the code does not know is a decoding
/// error, never silently some other value.
macro_rules! stored_as_text {
    ($ty:ty, $what:literal, $parse:expr) => {
        impl sqlx::Type<sqlx::Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $ty {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let raw = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                let parse: fn(&str) -> Option<$ty> = $parse;
                parse(raw).ok_or_else(|| format!(concat!("unknown ", $what, " {:?}"), raw).into())
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }
    };
}

stored_as_text!(JobStatus, "job status", JobStatus::parse);
stored_as_text!(Priority, "priority", |raw| Priority::parse(raw).ok());

/// What one job event records: a change of status, or a note on the way
/// (stored in `job_events.kind`; shown as text in a job's timeline and its
/// streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The job's status changed (`from_status` → `to_status`).
    Status,
    /// A transient provider error, retried later.
    Retry,
    /// Something the provider said (a queue position, throttling, a cancel).
    Provider,
    /// The job waits for a provider's cap to free a slot.
    Waiting,
    /// The sweeper re-drove or closed the job.
    Sweeper,
    /// genq kept its copy of the video.
    Archived,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        Self::Status,
        Self::Retry,
        Self::Provider,
        Self::Waiting,
        Self::Sweeper,
        Self::Archived,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Retry => "retry",
            Self::Provider => "provider",
            Self::Waiting => "waiting",
            Self::Sweeper => "sweeper",
            Self::Archived => "archived",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A kind of credit ledger entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    Grant,
    Purchase,
    Reserve,
    Commit,
    Refund,
    Adjust,
    /// Unspent credits of a refunded or disputed payment, taken back.
    Reversal,
    /// What a reversal could not take back: owed, no balance moves.
    Owe,
    /// Owed credits paid from a later purchase.
    Repay,
    /// Owed credits an operator pardoned.
    Waive,
}

impl LedgerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grant => "grant",
            Self::Purchase => "purchase",
            Self::Reserve => "reserve",
            Self::Commit => "commit",
            Self::Refund => "refund",
            Self::Adjust => "adjust",
            Self::Reversal => "reversal",
            Self::Owe => "owe",
            Self::Repay => "repay",
            Self::Waive => "waive",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_read_back_as_written() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::parse("provider_submitted"), None);
    }

    /// The schema's own lists (a CHECK, two partial indexes, the webhook
    /// trigger's failure statuses) are the constants', written out once when
    /// the migrations were: a changed constant fails here, not in production.
    #[test]
    fn the_schema_lists_the_statuses_the_code_defines() {
        let squash = |s: &str| s.split_whitespace().collect::<String>();
        let schema = squash(concat!(
            include_str!("../../migrations/20261126000001_init.sql"),
            include_str!("../../migrations/20261126000006_models_and_caps.sql"),
            include_str!("../../migrations/20261127000007_webhooks.sql"),
        ));
        let failed: Vec<JobStatus> = JobStatus::TERMINAL
            .into_iter()
            .filter(|s| *s != JobStatus::Succeeded)
            .collect();
        for (what, list) in [
            ("CHECK(statusIN", JobStatus::sql_list(&JobStatus::ALL)),
            ("WHEREstatusIN", JobStatus::sql_list(&JobStatus::OPEN)),
            (
                "WHEREstatusIN",
                JobStatus::sql_list(&JobStatus::AT_PROVIDER),
            ),
            ("WHENNEW.to_statusIN", JobStatus::sql_list(&failed)),
        ] {
            let expected = format!("{what}{list}");
            assert!(schema.contains(&expected), "the schema lacks {expected}");
        }
        assert_eq!(
            JobStatus::OPEN.len() + JobStatus::TERMINAL.len(),
            JobStatus::ALL.len()
        );
        for s in JobStatus::ALL {
            assert_ne!(s.is_open(), s.is_terminal(), "{s}");
        }
        // The pages' list (web/src/status.ts) is the same.
        let page = squash(include_str!("../../web/src/status.ts"));
        let open: Vec<String> = JobStatus::OPEN.iter().map(|s| format!("'{s}'")).collect();
        let expected = format!("OPEN_STATUSES:readonlyJobStatus[]=[{}]", open.join(","));
        assert!(
            page.contains(&expected),
            "web/src/status.ts lacks {expected}"
        );
    }

    #[test]
    fn prompt_is_trimmed_and_bounded() {
        assert_eq!(Prompt::parse("  a cat  ").unwrap().as_str(), "a cat");
        assert_eq!(Prompt::parse("   ").unwrap_err().field, "prompt");
        assert!(Prompt::parse(&"x".repeat(PROMPT_MAX_CHARS)).is_ok());
        assert!(Prompt::parse(&"x".repeat(PROMPT_MAX_CHARS + 1)).is_err());
        assert!(Prompt::parse("a\u{0}b").is_err());
        assert!(Prompt::parse("line\nnext").is_ok());
    }

    #[test]
    fn aspect_ratio_and_duration_are_checked() {
        assert_eq!(AspectRatio::parse("9:16").unwrap(), AspectRatio::Portrait);
        assert!(AspectRatio::parse("4:3").is_err());
        assert!(DurationSeconds::parse(0).is_err());
        assert!(DurationSeconds::parse(61).is_err());
        assert_eq!(DurationSeconds::parse(60).unwrap().get(), 60);
    }

    #[test]
    fn fingerprint_depends_on_every_field() {
        let a = VideoRequest {
            prompt: Prompt::parse("a cat").unwrap(),
            duration: DurationSeconds::default(),
            aspect_ratio: AspectRatio::Landscape,
            model: None,
            priority: Priority::Normal,
        };
        let mut b = a.clone();
        assert_eq!(a.fingerprint(), b.fingerprint());
        // The digest of a request without a model, as stored before models.
        assert_eq!(
            a.fingerprint(),
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                r#"{"aspect_ratio":"16:9","duration_seconds":5,"prompt":"a cat"}"#
            ))
        );
        b.aspect_ratio = AspectRatio::Square;
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut c = a.clone();
        c.model = Some("fast".into());
        assert_ne!(a.fingerprint(), c.fingerprint());
        let mut d = a.clone();
        d.priority = Priority::High;
        assert_ne!(a.fingerprint(), d.fingerprint());
    }

    #[test]
    fn text_is_trimmed_bounded_and_free_of_controls() {
        assert_eq!(check_text("reason", "  ok ", 10).unwrap(), "ok");
        assert!(check_text("reason", "", 10).is_err());
        assert!(check_text("reason", "a\u{0}b", 10).is_err());
        assert!(check_text("reason", "a\u{98}b", 10).is_err());
        assert!(check_text("reason", &"x".repeat(11), 10).is_err());
    }

    #[test]
    fn grants_are_positive_and_bounded() {
        assert!(Credits::parse_grant(0, "amount").is_err());
        assert!(Credits::parse_grant(-5, "amount").is_err());
        assert!(Credits::parse_grant(i64::MAX, "amount").is_err());
        assert_eq!(Credits::parse_grant(10, "amount").unwrap().get(), 10);
    }

    #[test]
    fn stored_params_take_the_request_defaults() {
        let empty: JobParams = serde_json::from_str("{}").unwrap();
        assert_eq!(empty, JobParams::default());
        assert_eq!(empty.duration_seconds, DURATION_DEFAULT_SECS);
        assert_eq!(empty.aspect_ratio, AspectRatio::Landscape);
    }
}
