//! Graceful shutdown: one signal to say "stop accepting and finish", and a tracker that knows
//! when every connection task has ended.

use std::time::Duration;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Cheap to clone; every listener and connection task holds one.
#[derive(Debug, Clone, Default)]
pub struct Drain {
    signal: CancellationToken,
    tasks: TaskTracker,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts draining: listeners stop accepting, HTTP connections send GOAWAY / close when idle.
    pub fn start(&self) {
        self.signal.cancel();
    }

    pub fn is_draining(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// Resolves once draining has begun.
    pub async fn signaled(&self) {
        self.signal.cancelled().await
    }

    pub fn token(&self) -> CancellationToken {
        self.signal.clone()
    }

    /// Runs a connection task that draining waits for.
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(fut);
    }

    /// Waits until every tracked task has finished, or `grace` has passed. Returns how many
    /// tasks were still running when it gave up (0 when all finished).
    pub async fn wait(&self, grace: Duration) -> usize {
        self.tasks.close();
        match tokio::time::timeout(grace, self.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tasks.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_tasks_then_gives_up_at_the_grace_period() {
        let d = Drain::new();
        let d2 = d.clone();
        d.spawn(async move {
            d2.signaled().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        d.spawn(std::future::pending());
        d.start();
        let t0 = tokio::time::Instant::now();
        assert_eq!(d.wait(Duration::from_secs(30)).await, 1);
        assert_eq!(t0.elapsed(), Duration::from_secs(30));

        let d = Drain::new();
        d.spawn(async { tokio::time::sleep(Duration::from_secs(5)).await });
        d.start();
        assert_eq!(d.wait(Duration::from_secs(30)).await, 0);
    }
}
