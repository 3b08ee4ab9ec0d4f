//! What follows an apply, on the control thread: the memory its decoding used is given back to
//! the system, and the metric series of services gone from the table are forgotten
//! ([`Metrics::prune`]).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{metrics::Metrics, table::SharedTable};

/// How long after an apply the memory its decoding used is offered back to the system: past
/// the allocator's purge delay (mimalloc's: 1 s).
const RELEASE_AFTER: Duration = Duration::from_millis(1500);
/// A block larger than the allocator's largest pooled size (512 KiB): it gets a page of its
/// own, which is returned when it is freed, and that return is when the allocator gives back
/// the free memory whose delay has passed.
const RELEASE_BLOCK: usize = 1 << 20;
/// How often a publish also prunes the metric series of services gone from the table: in a
/// mesh that changes more often than [`RELEASE_AFTER`], the pruning after the last apply of a
/// burst would never come.
const PRUNE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(super) struct Settle {
    /// The pending release ([`Settle::applied`]).
    releasing: Option<tokio::task::JoinHandle<()>>,
    /// When metric series were last pruned at a publish.
    pruned: Instant,
}

impl Default for Settle {
    fn default() -> Self {
        Settle {
            releasing: None,
            pruned: Instant::now(),
        }
    }
}

impl Settle {
    /// Once the last apply is [`RELEASE_AFTER`] old: forgets the metric series of the
    /// services the table no longer has (by then the tables that held them have usually been
    /// let go), then allocates and frees one [`RELEASE_BLOCK`] on this (the control) thread.
    /// mimalloc returns freed memory to the system only when it next frees a page after its
    /// purge delay; an idle sidecar frees none, and would keep what decoding a large
    /// configuration used (10–20 MiB at 10,000 services) for ever. Each apply puts the pending
    /// one off (the one before is dropped), so it always comes after the last.
    pub(super) fn applied(&mut self, table: &SharedTable, metrics: &Arc<Metrics>) {
        if let Some(before) = self.releasing.take() {
            before.abort();
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (table, metrics) = (table.clone(), metrics.clone());
        self.releasing = Some(rt.spawn(async move {
            tokio::time::sleep(RELEASE_AFTER).await;
            prune(&table, &metrics);
            drop(std::hint::black_box(Vec::<u8>::with_capacity(
                RELEASE_BLOCK,
            )));
        }));
    }

    /// After a new table is in force: prunes the series of the services gone at earlier
    /// updates, at most every [`PRUNE_EVERY`].
    pub(super) fn published(&mut self, table: &SharedTable, metrics: &Metrics) {
        if self.pruned.elapsed() >= PRUNE_EVERY {
            self.pruned = Instant::now();
            prune(table, metrics);
        }
    }
}

fn prune(table: &SharedTable, metrics: &Metrics) {
    let t = table.load();
    metrics.prune(|service| t.service(service).is_none());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{metrics::Direction, table::Table};

    #[tokio::test(start_paused = true)]
    async fn gone_services_are_pruned_after_the_last_apply_and_at_a_publish_every_ten_seconds() {
        let metrics = Metrics::new();
        let table: SharedTable = Arc::new(arc_swap::ArcSwap::from_pointee(Table::empty()));
        let gone: Arc<str> = Arc::from("gone.test:80");
        let count = || metrics.target(Direction::Outbound, &gone).request();
        let kept = || metrics.render().contains(r#"target="gone.test:80""#);
        count();
        assert!(kept());
        let mut settle = Settle::default();
        // A publish within 10 s of the last pruning leaves the series.
        settle.published(&table, &metrics);
        assert!(kept());
        // Each apply puts the pruning off until the last is 1.5 s old.
        settle.applied(&table, &metrics);
        tokio::time::sleep(Duration::from_secs(1)).await;
        settle.applied(&table, &metrics);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(kept(), "1 s after the last apply");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!kept(), "2 s after the last apply");
        // Applies that never stop: a publish prunes once 10 s have passed.
        count();
        settle.published(&table, &metrics);
        assert!(kept());
        settle.pruned = Instant::now().checked_sub(PRUNE_EVERY).unwrap();
        settle.published(&table, &metrics);
        assert!(!kept());
    }
}
