//! FLUSH requests of every connection of one export, served by as few syncs as possible.
//!
//! A FLUSH must make durable what was written before it arrived; one sync that *starts*
//! after it arrived does that for every FLUSH waiting at that moment. So syncs run one at a
//! time, and a FLUSH that finds a sync completed which started after it arrived answers at
//! once instead of starting another. A thousand FLUSHes queued by a flood cost a handful of
//! `fdatasync`s, not a thousand, and the waiting is done by tasks, not by blocking threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::export::{Export, NbdError};
use super::proto;

/// The syncs of one export.
#[derive(Default)]
pub struct Flushes {
    /// Syncs started so far (numbered from 1).
    started: AtomicU64,
    /// The last sync that completed, held while one runs.
    last: tokio::sync::Mutex<Completed>,
}

#[derive(Default)]
struct Completed {
    number: u64,
    ok: bool,
}

impl Flushes {
    /// Syncs started so far.
    pub fn syncs(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    /// Makes durable everything written to `export` before this call.
    pub async fn flush(&self, export: &Arc<Export>) -> Result<(), NbdError> {
        let export = export.clone();
        self.run(move || export.flush()).await
    }

    /// Runs `sync` on a blocking thread, unless a sync that started after this call has
    /// completed meanwhile.
    pub async fn run<F>(&self, sync: F) -> Result<(), NbdError>
    where
        F: FnOnce() -> Result<(), NbdError> + Send + 'static,
    {
        // Any sync numbered above this one starts after now.
        let arrived = self.started.load(Ordering::Acquire);
        let mut last = self.last.lock().await;
        if last.number > arrived && last.ok {
            return Ok(());
        }
        let number = self.started.fetch_add(1, Ordering::AcqRel) + 1;
        let result = tokio::task::spawn_blocking(sync)
            .await
            .unwrap_or_else(|e| Err(NbdError::new(proto::EIO, e.to_string())));
        // Cancelled before this point (the connection closed), `last` stays as it was and
        // the next FLUSH syncs again: never an answer that was not earned.
        *last = Completed {
            number,
            ok: result.is_ok(),
        };
        result
    }
}
