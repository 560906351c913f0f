//! Supervised tasks: every long-lived task of the relay is spawned through [`Tasks`], which
//! names it, gives it a tracing span, reports a panic instead of losing it silently, and lets
//! shutdown wait for all of them within a grace period.

use std::future::Future;
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// Spawns named, instrumented tasks and keeps track of them for shutdown.
#[derive(Debug, Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
}

impl Tasks {
    /// Spawns `future` as task `name`; a panic is logged with the task's name.
    pub fn spawn<F>(&self, name: &str, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let span = tracing::info_span!("task", name = %name);
        let handle = tokio::spawn(future.instrument(span));
        let name = name.to_owned();
        self.tracker.spawn(async move {
            if let Err(err) = handle.await
                && err.is_panic()
            {
                tracing::error!(task = %name, "task panicked");
            }
        });
    }

    /// Waits up to `grace` for every task to end; whether they all did.
    pub async fn wait(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}
