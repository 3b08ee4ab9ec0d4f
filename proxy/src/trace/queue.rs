//! Spans waiting for export. A finished request's span is encoded straight into the batch its
//! thread is filling (`per_thread`): no allocation, no channel and no hand-off to another
//! thread for each span. A full batch ([`MAX_BATCH`] spans) goes to the exporter at once; the
//! exporter takes the batches still filling every [`BATCH_DELAY`], and at once when asked to
//! flush.
//!
//! Bound: `--trace-queue` spans accepted and not yet exported (or given up on), wherever they
//! are (filling, full and waiting, being sent); beyond, a span is not made, and is counted.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::sync::{Notify, mpsc};

use super::wire::Batch;
use crate::per_thread::PerThread;

/// Spans sent in one export at most: at most about 6 KiB each encoded, an export stays under
/// 2 MiB, well under the 4 MiB a gRPC server (the Collector's included) takes by default.
pub const MAX_BATCH: usize = 256;
/// How long a span waits for its batch to fill at most (before the export itself).
pub const BATCH_DELAY: Duration = Duration::from_secs(1);
/// Takes back a span counted as waiting, unless forgotten.
struct Uncount<'a>(&'a AtomicUsize);

impl Drop for Uncount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The room a batch is given when its first span comes: a full batch of typical spans (500
/// to 700 bytes), so that filling it seldom moves it. A thread that makes no span holds none.
const BATCH_BYTES: usize = MAX_BATCH * 768;

#[derive(Debug)]
pub struct Queue {
    filling: PerThread<Batch>,
    full: mpsc::UnboundedSender<Batch>,
    /// Spans accepted and not yet exported or given up on: what is bounded, and what a flush
    /// waits for.
    waiting: AtomicUsize,
    limit: usize,
    /// Told when a thread's batch gets its first span: the exporter, idle, waits for it.
    pub(super) filled: Notify,
}

impl Queue {
    /// A queue holding `limit` spans at most; full batches come out of the receiver (which
    /// holds no more than `limit` spans, as the count says).
    pub fn new(limit: usize) -> (Queue, mpsc::UnboundedReceiver<Batch>) {
        let (full, rx) = mpsc::unbounded_channel();
        let q = Queue {
            filling: PerThread::default(),
            full,
            waiting: AtomicUsize::new(0),
            limit: limit.max(1),
            filled: Notify::new(),
        };
        (q, rx)
    }

    /// Adds a span, whose fields `write` writes, to this thread's batch; `false`, and nothing
    /// written, when the queue holds its limit.
    pub fn push(&self, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.limit {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        // Counted back if `write` panics (its span is cut off by the next push).
        let counted = Uncount(&self.waiting);
        let mut batch = self.filling.mine();
        let first = batch.spans() == 0;
        if first {
            batch.reserve(BATCH_BYTES);
        }
        batch.push(write);
        std::mem::forget(counted);
        if batch.spans() >= MAX_BATCH {
            let mut full = std::mem::take(&mut *batch);
            drop(batch);
            full.trim();
            // The exporter lives as long as the process; if it is gone, so are the spans.
            let _ = self.full.send(full);
        } else if first {
            drop(batch);
            self.filled.notify_one();
        }
        true
    }

    /// The batches being filled, as one (`None` when none has a span), for the exporter.
    pub fn take_filling(&self) -> Option<Batch> {
        let mut taken: Option<Batch> = None;
        self.filling.each(|b| {
            if b.spans() > 0 {
                let b = std::mem::take(b);
                match &mut taken {
                    Some(t) => t.append(b),
                    None => taken = Some(b),
                }
            }
        });
        taken.map(|mut t| {
            t.trim();
            t
        })
    }

    /// `n` spans exported or given up on.
    pub fn done(&self, n: usize) {
        self.waiting.fetch_sub(n, Ordering::AcqRel);
    }

    /// Spans accepted and not yet exported or given up on.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::decoded;

    /// A span whose only field is its span id, `i`.
    fn span(i: u64) -> impl FnOnce(&mut Vec<u8>) {
        move |out| {
            out.extend_from_slice(&[2 << 3 | 2, 8]);
            out.extend_from_slice(&i.to_be_bytes());
        }
    }

    fn ids(b: &Batch) -> Vec<u64> {
        decoded(b)
            .iter()
            .map(|s| u64::from_be_bytes(s.span_id[..].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn a_full_batch_goes_at_once_and_the_rest_when_taken() {
        let (q, mut rx) = Queue::new(1000);
        for i in 0..300 {
            assert!(q.push(span(i)));
        }
        let full = rx.try_recv().expect("a full batch");
        assert_eq!(ids(&full), (0..256).collect::<Vec<_>>());
        assert!(rx.try_recv().is_err(), "one full batch");
        let filling = q.take_filling().expect("a batch filling");
        assert_eq!(ids(&filling), (256..300).collect::<Vec<_>>());
        assert!(q.take_filling().is_none(), "taken");
        assert_eq!(q.waiting(), 300, "not exported yet");
        q.done(256);
        q.done(44);
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn the_limit_holds_across_threads() {
        let (q, _rx) = Queue::new(150);
        let accepted: usize = std::thread::scope(|s| {
            let q = &q;
            let threads: Vec<_> = (0..3)
                .map(|t| s.spawn(move || (0..100).filter(|i| q.push(span(t * 1000 + i))).count()))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        assert_eq!(accepted, 150, "the limit, whichever thread asked");
        let mut all: Vec<u64> = ids(&q.take_filling().expect("batches filling"));
        assert_eq!(all.len(), 150);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 150, "each span once");
        // Spans done make room again.
        assert!(!q.push(span(9)));
        q.done(150);
        assert!(q.push(span(9)));
        // A span whose encoding panicked is not counted.
        let broken = std::panic::catch_unwind(|| q.push(|_| panic!("encoding failed")));
        assert!(broken.is_err());
        assert_eq!(q.waiting(), 1);
    }
}
