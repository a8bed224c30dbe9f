//! Group commit: requests that concurrent tasks have ready at the same
//! moment are handed to one batch (one statement), and each task gets its
//! own answer back.
//!
//! No request waits for a batch to fill: a batch leaves as soon as one of
//! `in_flight` slots is free, with whatever is ready then (at most `max`).
//! Requests pile up only while every slot is busy, so a lone request goes
//! at once and a busy process makes fewer, larger batches. Two requests
//! with the same key never share a batch: the later one goes in the next,
//! so each key's requests keep their order.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::Instrument;
use uuid::Uuid;

/// Requests waiting for a slot, at most; a full queue makes the callers
/// wait (back-pressure), it drops nothing.
const QUEUE: usize = 4096;

/// What runs a batch.
pub trait Grouped: Send + Sync + 'static {
    type Item: Send + 'static;
    type Answer: Send + 'static;
    /// The metric label of this kind of batch (`genq_batch_size{batch}`).
    const NAME: &'static str;

    /// Items of one key never share a batch.
    fn key(item: &Self::Item) -> Uuid;

    /// Runs one batch: an answer per item, in order.
    fn run(
        self: Arc<Self>,
        items: Vec<Self::Item>,
    ) -> impl Future<Output = Vec<Self::Answer>> + Send;
}

/// The handle requests go through; cheap to clone. The batching task ends
/// when every handle is dropped.
pub struct GroupCommit<G: Grouped> {
    queue: mpsc::Sender<Request<G>>,
    batches: Arc<AtomicU64>,
}

impl<G: Grouped> Clone for GroupCommit<G> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            batches: self.batches.clone(),
        }
    }
}

struct Request<G: Grouped> {
    item: G::Item,
    answer: oneshot::Sender<G::Answer>,
    /// The caller's span: a batch of one runs in it, a larger batch links it.
    span: tracing::Span,
}

impl<G: Grouped> GroupCommit<G> {
    /// Starts batching for `runner`: batches of at most `max` items,
    /// `in_flight` at once.
    pub fn spawn(runner: Arc<G>, max: usize, in_flight: usize) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let batches = Arc::<AtomicU64>::default();
        tokio::spawn(run(
            runner,
            rx,
            max.max(1),
            in_flight.max(1),
            batches.clone(),
        ));
        Self { queue, batches }
    }

    /// `item`'s answer, from the batch it joined; `Err(Gone)` when the
    /// batching task is gone (the runtime is shutting down).
    pub async fn request(&self, item: G::Item) -> Result<G::Answer, Gone> {
        let (answer, answered) = oneshot::channel();
        self.queue
            .send(Request {
                item,
                answer,
                span: tracing::Span::current(),
            })
            .await
            .map_err(|_| Gone)?;
        answered.await.map_err(|_| Gone)
    }

    /// The batches run so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

/// The batching task stopped before answering.
#[derive(Debug, thiserror::Error)]
#[error("the batching task is gone")]
pub struct Gone;

async fn run<G: Grouped>(
    runner: Arc<G>,
    mut rx: mpsc::Receiver<Request<G>>,
    max: usize,
    in_flight: usize,
    batches: Arc<AtomicU64>,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    // Requests whose key was already in the batch being formed.
    let mut held: VecDeque<Request<G>> = VecDeque::new();
    loop {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let first = match held.pop_front() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        let mut keys = HashSet::from([G::key(&first.item)]);
        let mut batch = vec![first];
        let mut later = VecDeque::new();
        while batch.len() < max {
            let next = match held.pop_front() {
                Some(r) => r,
                None => match rx.try_recv() {
                    Ok(r) => r,
                    Err(_) => break,
                },
            };
            if keys.insert(G::key(&next.item)) {
                batch.push(next);
            } else {
                later.push_back(next);
            }
        }
        // Put back ahead of what was held and not reached: they came first.
        later.append(&mut held);
        held = later;
        batches.fetch_add(1, Ordering::Relaxed);
        metrics::histogram!("genq_batch_size", "batch" => G::NAME).record(batch.len() as f64);
        let runner = runner.clone();
        tokio::spawn(async move {
            // Alone, the request's work is part of its own trace; together,
            // the batch is a trace of its own linked to each request's.
            let span = match batch.as_slice() {
                [one] => one.span.clone(),
                _ => {
                    let span = tracing::debug_span!(
                        "batch",
                        otel.name = %format!("{} batch", G::NAME),
                        genq.batch_size = batch.len(),
                    );
                    for r in &batch {
                        crate::trace::link(&span, &r.span);
                    }
                    span
                }
            };
            let (items, answers): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|r| (r.item, r.answer)).unzip();
            let results = runner.run(items).instrument(span).await;
            debug_assert_eq!(results.len(), answers.len());
            for (answer, result) in answers.into_iter().zip(results) {
                // A caller that stopped waiting (its task aborted) is gone.
                let _ = answer.send(result);
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records its batches; answers each item with itself doubled.
    #[derive(Default)]
    struct Recorder {
        batches: Mutex<Vec<Vec<(Uuid, u32)>>>,
    }

    impl Grouped for Recorder {
        type Item = (Uuid, u32);
        type Answer = u32;
        const NAME: &'static str = "test";

        fn key(item: &Self::Item) -> Uuid {
            item.0
        }

        async fn run(self: Arc<Self>, items: Vec<Self::Item>) -> Vec<u32> {
            // Long enough for the others to pile up behind it.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let answers = items.iter().map(|(_, n)| n * 2).collect();
            self.batches.lock().unwrap().push(items);
            answers
        }
    }

    #[tokio::test]
    async fn ready_requests_share_batches_and_each_key_keeps_its_order() {
        let recorder = Arc::new(Recorder::default());
        let group = GroupCommit::spawn(recorder.clone(), 8, 1);
        let keys: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        // 40 requests at once, ten per key.
        let answers = futures::future::join_all((0..40u32).map(|n| {
            let group = group.clone();
            let key = keys[(n % 4) as usize];
            async move { group.request((key, n)).await.unwrap() }
        }))
        .await;
        assert_eq!(answers, (0..40u32).map(|n| n * 2).collect::<Vec<_>>());
        let batches = recorder.batches.lock().unwrap().clone();
        assert!(batches.len() < 40, "every request alone");
        assert!(batches.iter().all(|b| b.len() <= 8));
        for b in &batches {
            let mut seen: Vec<Uuid> = b.iter().map(|(k, _)| *k).collect();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), b.len(), "a key twice in one batch: {b:?}");
        }
        // Each key's items in the order they were requested.
        for key in &keys {
            let order: Vec<u32> = batches
                .iter()
                .flatten()
                .filter(|(k, _)| k == key)
                .map(|(_, n)| *n)
                .collect();
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(order, sorted, "out of order for one key");
        }
        assert_eq!(group.batches(), batches.len() as u64);
    }
}
