//! Acknowledgements of one channel's deliveries, coalesced: deliveries that
//! finish together are acked with one `multiple` ack.
//!
//! A `multiple` ack of tag N acks every unacked delivery of the channel up
//! to N, so it is sent only for a run of finished deliveries with nothing
//! unfinished below it. A delivery that finishes while an earlier one is
//! still working (a slow provider call) is acked on its own at once: it
//! never waits behind the slow one, so the prefetch window never fills with
//! finished work. A nack is sent before its tag is forgotten, so no
//! `multiple` ack can cover a delivery that is being handed back.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lapin::options::BasicAckOptions;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The acks of one channel; cheap to clone.
#[derive(Clone)]
pub struct Acker {
    inner: Arc<Inner>,
}

struct Inner {
    channel: lapin::Channel,
    state: Mutex<State>,
    wake: Notify,
    /// Deliveries acked (read by tests).
    acked: Arc<AtomicU64>,
    /// Test hook: the next flush crashes the worker instead of acking, as
    /// a crash between a batch's commit and its ack would.
    crash_before_ack: Arc<AtomicBool>,
    kill: CancellationToken,
}

#[derive(Default)]
struct State {
    /// Delivered and neither acked nor handed back.
    open: BTreeSet<u64>,
    /// Of those, the ones finished and waiting for their ack.
    done: BTreeSet<u64>,
}

impl Acker {
    /// The acker of `channel`, and the task that sends its acks (it acks
    /// what finished and ends when `stop` is cancelled).
    pub fn start(
        channel: lapin::Channel,
        acked: Arc<AtomicU64>,
        crash_before_ack: Arc<AtomicBool>,
        kill: CancellationToken,
        stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let acker = Self {
            inner: Arc::new(Inner {
                channel,
                state: Mutex::default(),
                wake: Notify::new(),
                acked,
                crash_before_ack,
                kill,
            }),
        };
        let task = tokio::spawn(acker.clone().run(stop));
        (acker, task)
    }

    /// Notes a delivery as it arrives, before it is handed to a task.
    pub fn delivered(&self, tag: u64) {
        self.inner
            .state
            .lock()
            .expect("not poisoned")
            .open
            .insert(tag);
    }

    /// The delivery is finished: ack it (soon, with its neighbours).
    pub fn ack(&self, tag: u64) {
        self.inner
            .state
            .lock()
            .expect("not poisoned")
            .done
            .insert(tag);
        self.inner.wake.notify_one();
    }

    /// The delivery was handed back (nacked): call after the nack was sent.
    pub fn forget(&self, tag: u64) {
        let mut state = self.inner.state.lock().expect("not poisoned");
        state.open.remove(&tag);
        state.done.remove(&tag);
        drop(state);
        // What waited above it may go now.
        self.inner.wake.notify_one();
    }

    async fn run(self, stop: CancellationToken) {
        loop {
            let last = tokio::select! {
                // A crash: nothing more is sent (the broker redelivers).
                _ = self.inner.kill.cancelled() => return,
                // The session is over (its deliveries drained): what
                // finished is acked before the channel closes.
                _ = stop.cancelled() => true,
                _ = self.inner.wake.notified() => false,
            };
            // Deliveries finishing in the same instant (a batch's answers)
            // get their turn to join this flush.
            tokio::task::yield_now().await;
            self.flush().await;
            if last {
                return;
            }
        }
    }

    /// Sends the acks of what has finished.
    async fn flush(&self) {
        if self.inner.crash_before_ack.load(Ordering::SeqCst) {
            let finished = !self
                .inner
                .state
                .lock()
                .expect("not poisoned")
                .done
                .is_empty();
            if finished {
                tracing::warn!("test hook: crashing before the ack");
                self.inner.kill.cancel();
                return;
            }
        }
        let (upto, alone) = self.take();
        let mut acked = 0;
        if let Some((tag, n)) = upto {
            let multiple = BasicAckOptions { multiple: true };
            match self.inner.channel.basic_ack(tag, multiple).await {
                Ok(()) => acked += n,
                Err(e) => {
                    tracing::warn!(error = %e, "ack failed; the messages will be redelivered")
                }
            }
            metrics::counter!("genq_acks_sent_total", "kind" => "multiple").increment(1);
        }
        for tag in alone {
            match self
                .inner
                .channel
                .basic_ack(tag, BasicAckOptions::default())
                .await
            {
                Ok(()) => acked += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "ack failed; the message will be redelivered")
                }
            }
            metrics::counter!("genq_acks_sent_total", "kind" => "single").increment(1);
        }
        metrics::counter!("genq_deliveries_acked_total").increment(acked);
        self.inner.acked.fetch_add(acked, Ordering::Relaxed);
    }

    /// Takes what can be acked now: the highest tag of the finished run at
    /// the bottom (and how many it covers), and the finished tags above
    /// the first unfinished one, to be acked one by one.
    fn take(&self) -> (Option<(u64, u64)>, Vec<u64>) {
        let mut state = self.inner.state.lock().expect("not poisoned");
        let State { open, done } = &mut *state;
        let mut upto = None;
        let mut n = 0;
        while let Some(&lowest) = open.first() {
            if !done.remove(&lowest) {
                break;
            }
            open.remove(&lowest);
            upto = Some(lowest);
            n += 1;
        }
        let alone: Vec<u64> = std::mem::take(done).into_iter().collect();
        for tag in &alone {
            open.remove(tag);
        }
        (upto.map(|t| (t, n)), alone)
    }
}
