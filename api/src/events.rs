//! The live job-event feed of one API process: one task tails `job_events`
//! in id order (woken by NOTIFY, with a safety-net interval) and fans each
//! event out to this process's streams; and the bounds on open streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use genq_store::store::events::{self, JobEvent, JOB_EVENTS_CHANNEL};
use genq_store::store::outbox::OUTBOX_CHANNEL;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::error::ApiError;

/// Events read per query.
const BATCH: i64 = 500;
/// Events buffered per stream before it is told it lagged (and re-reads the
/// database from where it was).
const FANOUT_CAPACITY: usize = 4_096;
/// How long the feed waits for a missing id below newer ones: a transaction
/// that took an id and has not committed yet. Ids never fill when such a
/// transaction rolls back, so the wait is bounded.
const HOLE_WAIT: Duration = Duration::from_secs(2);
/// How soon the feed looks again while it waits for a hole.
const HOLE_RECHECK: Duration = Duration::from_millis(25);

/// This process's feed and its stream bounds; cheap to clone.
#[derive(Clone)]
pub struct EventFeed {
    tx: broadcast::Sender<Arc<JobEvent>>,
    /// Every event up to this id has been sent (or given up on); -1 until
    /// the feed has started.
    position: Arc<AtomicI64>,
    /// Cancelled when the API shuts down: every stream ends.
    closing: CancellationToken,
    slots: Arc<Semaphore>,
    per_user: Arc<Mutex<HashMap<Uuid, u32>>>,
    max_per_user: u32,
}

/// An open stream's share of the bounds, given back on drop.
pub struct StreamSlot {
    _process: OwnedSemaphorePermit,
    user: Uuid,
    per_user: Arc<Mutex<HashMap<Uuid, u32>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut map = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.user);
            }
        }
        metrics::gauge!("genq_event_streams_open").decrement(1.0);
    }
}

impl EventFeed {
    pub fn new(max_streams: u32, max_per_user: u32) -> Self {
        Self {
            tx: broadcast::channel(FANOUT_CAPACITY).0,
            position: Arc::new(AtomicI64::new(-1)),
            closing: CancellationToken::new(),
            slots: Arc::new(Semaphore::new(max_streams as usize)),
            per_user: Arc::default(),
            max_per_user,
        }
    }

    /// Takes a stream slot for `user`, or refuses: 429 when the user has too
    /// many streams open here, 503 when this process has.
    pub fn open(&self, user: Uuid) -> Result<StreamSlot, ApiError> {
        let process = self.slots.clone().try_acquire_owned().map_err(|_| {
            ApiError::Unavailable(anyhow::anyhow!("every event stream slot is taken"))
        })?;
        let mut map = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(user).or_insert(0);
        if *n >= self.max_per_user {
            return Err(ApiError::TooManyStreams {
                limit: self.max_per_user,
            });
        }
        *n += 1;
        metrics::gauge!("genq_event_streams_open").increment(1.0);
        Ok(StreamSlot {
            _process: process,
            user,
            per_user: self.per_user.clone(),
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<JobEvent>> {
        self.tx.subscribe()
    }

    /// Every event up to this id has been fanned out; `None` before the
    /// feed's first read.
    pub fn position(&self) -> Option<i64> {
        Some(self.position.load(Ordering::Acquire)).filter(|p| *p >= 0)
    }

    /// Fires when the API is shutting down.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Tails `job_events` until `stop`, then ends every stream. Database
    /// errors are waited out; streams keep their place and catch up from
    /// the database when they lag.
    pub async fn run(self, pool: PgPool, interval: Duration, stop: CancellationToken) {
        let closing = self.closing.clone();
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = self.tail(&pool, interval, &stop) => {}
        }
        closing.cancel();
    }

    async fn tail(&self, pool: &PgPool, interval: Duration, stop: &CancellationToken) {
        let mut cursor = loop {
            match events::latest_id(pool).await {
                Ok(id) => break id,
                Err(e) => {
                    tracing::warn!(error = %e, "the event feed cannot start yet");
                    tokio::time::sleep(interval).await;
                }
            }
        };
        self.position.store(cursor, Ordering::Release);
        let mut hole_since: Option<Instant> = None;
        let mut listener: Option<PgListener> = None;
        loop {
            if stop.is_cancelled() {
                return;
            }
            if listener.is_none() {
                listener = listen(pool).await;
            }
            let mut full = false;
            match events::all_after(pool, cursor, BATCH).await {
                Ok(rows) => {
                    full = rows.len() as i64 == BATCH;
                    for row in rows {
                        if row.id != cursor + 1 {
                            let since = *hole_since.get_or_insert_with(Instant::now);
                            if since.elapsed() < HOLE_WAIT {
                                full = false;
                                break;
                            }
                            metrics::counter!("genq_event_feed_holes_skipped_total").increment(1);
                        }
                        hole_since = None;
                        cursor = row.id;
                        // No receivers is fine: nobody is streaming.
                        let _ = self.tx.send(Arc::new(row));
                    }
                    self.position.store(cursor, Ordering::Release);
                }
                Err(e) => tracing::warn!(error = %e, "reading job events failed; retrying"),
            }
            if full {
                continue;
            }
            let wait = if hole_since.is_some() {
                HOLE_RECHECK
            } else {
                interval
            };
            match listener.as_mut() {
                Some(l) => tokio::select! {
                    n = l.recv() => if n.is_err() { listener = None },
                    _ = tokio::time::sleep(wait) => {}
                },
                None => tokio::time::sleep(wait).await,
            }
        }
    }
}

/// Listens for new job events (worker transitions) and new outbox rows
/// (submissions and cancels of every API process); `None` when the
/// database is unreachable (the interval covers it).
async fn listen(pool: &PgPool) -> Option<PgListener> {
    let attempt = async {
        let mut l = PgListener::connect_with(pool).await?;
        l.listen_all([JOB_EVENTS_CHANNEL, OUTBOX_CHANNEL]).await?;
        Ok::<_, sqlx::Error>(l)
    };
    match attempt.await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::debug!(error = %e, "the event feed cannot listen yet");
            None
        }
    }
}
