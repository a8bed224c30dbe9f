//! The delays between attempts to reach a dependency again (Postgres at
//! start, the broker after a lost connection).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Exponential from 200 ms up to `max_delay`, with jitter (so processes that
/// lost a dependency together don't return together), without end.
pub fn reconnect(max_delay: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(max_delay)
        .with_jitter()
        .without_max_times()
        .build()
}
