//! Reloads the table file on SIGHUP and when its content changes, and swaps the new table in.
//! An invalid file is logged and counted; the table in force stays. When an endpoint host name
//! resolves to new addresses, the table in force is compiled again from the same file.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::signal::unix::Signal;
use tokio_util::sync::CancellationToken;

use super::{SharedTable, load_text};
use crate::{metrics::Metrics, resolve::Resolver};

/// Watches one table file.
pub struct FileWatch {
    pub path: PathBuf,
    pub table: SharedTable,
    pub metrics: Arc<Metrics>,
    /// 0 turns polling off.
    pub poll_interval: Duration,
    /// The text of the last file that was read (good or bad), to notice changes.
    pub last_text: String,
    pub resolver: Arc<Resolver>,
}

impl FileWatch {
    /// Runs until `stop` is cancelled. `hup` is the SIGHUP stream, registered by the caller
    /// before the proxy reports ready (so an early SIGHUP cannot kill the process).
    pub async fn run(mut self, mut hup: Signal, stop: CancellationToken) {
        let poll = !self.poll_interval.is_zero();
        let mut tick = tokio::time::interval(if poll {
            self.poll_interval
        } else {
            Duration::from_secs(3600)
        });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut dns = self.resolver.subscribe();
        loop {
            let forced = tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = hup.recv() => true,
                _ = tick.tick(), if poll => false,
                Ok(()) = dns.changed() => {
                    self.recompile();
                    continue;
                }
            };
            self.check(forced).await;
        }
    }

    /// Compiles the table in force again, from its file as it was loaded, against the latest
    /// answers for its host names.
    fn recompile(&self) {
        let current = self.table.load_full();
        let generation = current.generation + 1;
        match current.recompile(generation, &self.metrics, &self.resolver.resolved()) {
            Ok(t) => {
                let services = t.service_count();
                self.table.store(Arc::new(t));
                self.metrics
                    .table_loaded(&current.version, generation, services);
                tracing::info!(version = %current.version, generation, "routing table recompiled: endpoint addresses changed");
            }
            Err((field, message)) => {
                tracing::error!(%field, %message, "routing table recompile failed; keeping the table in force");
            }
        }
    }

    /// Reads the file; reloads if `forced` or if it changed since last read.
    pub async fn check(&mut self, forced: bool) {
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(t) => t,
            Err(e) => {
                if forced || !self.last_text.is_empty() {
                    tracing::error!(file = %self.path.display(), error = %e, "table reload failed: cannot read the file; keeping the table in force");
                    self.metrics.table_reload_failed();
                    self.last_text.clear();
                }
                return;
            }
        };
        if !forced && text == self.last_text {
            return;
        }
        let generation = self.table.load().generation + 1;
        match load_text(
            &self.path,
            &text,
            generation,
            &self.metrics,
            &self.resolver.resolved(),
            &self.table.load(),
        ) {
            Ok(t) => {
                let (version, services) = (t.version.clone(), t.service_count());
                // The series of services gone in an earlier reload, no longer held by then.
                self.metrics.prune(|service| t.service(service).is_none());
                self.table.store(Arc::new(t));
                self.resolver.table_changed();
                self.metrics.table_loaded(&version, generation, services);
                tracing::info!(%version, generation, services, "routing table reloaded");
            }
            Err(e) => {
                let current = self.table.load().version.clone();
                tracing::error!(error = %e, version_in_force = %current, "table reload failed; keeping the table in force");
                self.metrics.table_reload_failed();
            }
        }
        self.last_text = text;
    }
}
