//! State each data-plane thread fills on its own, for another thread to take now and then (the
//! spans, written by the thread that served the request), with no channel, allocation or
//! hand-off between threads for each one. Each thread uses the slot its
//! number picks (threads are numbered as they first use any; past [`SLOTS`] threads share,
//! behind the slot's lock), and each slot has a cache line of its own, so threads filling
//! theirs never touch each other's lines. The taker locks each slot briefly.

use std::sync::{
    Mutex, MutexGuard, PoisonError,
    atomic::{AtomicUsize, Ordering},
};

/// Slots: one per thread, for up to this many threads.
const SLOTS: usize = 8;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot<T>(Mutex<T>);

/// A `T` for each thread (up to [`SLOTS`]).
#[derive(Debug, Default)]
pub struct PerThread<T> {
    slots: [Slot<T>; SLOTS],
}

impl<T> PerThread<T> {
    /// This thread's `T`, locked. A thread that panicked while holding it does not stop the
    /// others: the `T` must stay whole whatever its user did (`trace::wire::Batch` does).
    pub fn mine(&self) -> MutexGuard<'_, T> {
        self.slots[index()]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Each thread's `T`, locked in turn.
    pub fn each(&self, mut f: impl FnMut(&mut T)) {
        for s in &self.slots {
            f(&mut s.0.lock().unwrap_or_else(PoisonError::into_inner));
        }
    }
}

/// This thread's number, modulo [`SLOTS`].
fn index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }
    INDEX.with(|i| *i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_each_fill_their_own_and_the_taker_sees_them_all() {
        let p: PerThread<Vec<usize>> = PerThread::default();
        std::thread::scope(|s| {
            for t in 0..3 {
                let p = &p;
                s.spawn(move || (0..100).for_each(|i| p.mine().push(t * 1000 + i)));
            }
        });
        let mut filled = Vec::new();
        p.each(|v| {
            if !v.is_empty() {
                filled.push(std::mem::take(v));
            }
        });
        // Three threads numbered one after another have three slots (a slot is shared only
        // when other threads were numbered in between, which tests running at once may do).
        assert!(filled.len() > 1, "{filled:?}");
        for v in &filled {
            for t in 0..3 {
                let mine: Vec<_> = v.iter().filter(|i| *i / 1000 == t).collect();
                assert!(mine.is_sorted(), "a thread's in its order");
            }
        }
        assert_eq!(filled.iter().map(Vec::len).sum::<usize>(), 300);
    }
}
