//! `[events]`: the API's live event streams (Server-Sent Events) — how many
//! may be open, how often they are kept alive, and their stream tokens.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsSettings {
    /// Streams one API process serves at once; more are refused with a 503.
    pub max_streams: u32,
    /// Streams one user may hold open on one API process; more are refused
    /// with a 429.
    pub max_streams_per_user: u32,
    /// Seconds between heartbeat comments on an idle stream, so proxies
    /// don't cut it.
    pub heartbeat_secs: u64,
    /// Milliseconds a client should wait before reconnecting (`retry:`).
    pub retry_ms: u64,
    /// Lifetime of a stream token (`POST /v1/stream-tokens`). Checked when a
    /// stream opens, so it only needs to outlive a reconnect.
    pub stream_token_ttl_secs: u64,
    /// Safety-net interval of each process's event feed; NOTIFY wakes it
    /// sooner.
    pub poll_interval_ms: u64,
    /// Seconds after which the server ends a stream; the client reconnects
    /// (with `Last-Event-ID`, so nothing is lost) and is authenticated again.
    pub max_stream_secs: u64,
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            max_streams: 1_000,
            max_streams_per_user: 8,
            heartbeat_secs: 15,
            retry_ms: 3_000,
            stream_token_ttl_secs: 300,
            poll_interval_ms: 1_000,
            max_stream_secs: 3_600,
        }
    }
}

impl EventsSettings {
    /// The first key whose value can't work, and why.
    pub(super) fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.max_streams == 0 {
            return Err(("events.max_streams", "must be more than 0"));
        }
        if self.max_streams_per_user == 0 {
            return Err(("events.max_streams_per_user", "must be more than 0"));
        }
        if !(1..=300).contains(&self.heartbeat_secs) {
            return Err(("events.heartbeat_secs", "must be between 1 and 300"));
        }
        if !(10..=3_600).contains(&self.stream_token_ttl_secs) {
            return Err((
                "events.stream_token_ttl_secs",
                "must be between 10 and 3600",
            ));
        }
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            return Err(("events.poll_interval_ms", "must be between 10 and 60000"));
        }
        if !(1..=86_400).contains(&self.max_stream_secs) {
            return Err(("events.max_stream_secs", "must be between 1 and 86400"));
        }
        if self.retry_ms > 600_000 {
            return Err(("events.retry_ms", "must be at most 600000"));
        }
        Ok(())
    }
}
