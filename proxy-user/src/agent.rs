//! The agent's sync thread: sources write into the [`Shared`] store from the async runtime,
//! and a thread of its own turns what changed into dataplane writes. Translation happens
//! under the store lock, the writes (an `iptables-restore` of seconds, or map updates)
//! outside it, so neither the sources nor anything served on the runtime (/healthz,
//! /metrics, health check node ports) ever waits for the kernel.
//!
//! Nothing is programmed until every source has listed once, and what is installed stays
//! untouched until then.

use std::{
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::mpsc::UnboundedSender;
use tracing::{info, warn};

use crate::{
    dataplane::{ActivateError, Dataplane},
    source::shared::{Shared, Wake},
    sync::{SyncSummary, Syncer},
};

/// How often the sync thread does its periodic work.
#[derive(Clone, Copy, Debug)]
pub struct Periods {
    /// Services whose write failed are tried again.
    pub retry: Duration,
    /// The dataplane looks for entries nothing owns (written by hand, or left by a crash
    /// between two writes) when idle this long since it last looked.
    pub prune: Duration,
}

impl Default for Periods {
    fn default() -> Self {
        Self {
            retry: Duration::from_secs(5),
            prune: Duration::from_secs(60),
        }
    }
}

/// What the sync thread reports to the runtime (metrics, health check servers).
#[derive(Debug)]
pub enum SyncEvent {
    Synced(SyncSummary),
    /// The first full sync is in and the dataplane serves traffic from it.
    Activated,
    /// Nothing to do this period; the thread is alive.
    Idle,
}

/// Why the sync thread ended other than by [`SyncThread::stop`].
#[derive(Debug, thiserror::Error)]
pub enum SyncThreadError {
    #[error("a full sync could not be activated")]
    Activate(#[from] ActivateError),
    #[error("the sync thread panicked")]
    Panicked,
}

/// The sync thread. Dropping the handle does not stop it: call [`SyncThread::stop`].
pub struct SyncThread {
    shared: Arc<Shared>,
    thread: JoinHandle<Result<(), ActivateError>>,
}

impl SyncThread {
    /// Starts syncing `shared` into `dataplane`. `on_activated` runs on the sync thread once
    /// the first full sync serves traffic: the moment to retire another datapath (slow work
    /// that must not run on the runtime either).
    pub fn start(
        shared: Arc<Shared>,
        dataplane: Box<dyn Dataplane + Send>,
        events: UnboundedSender<SyncEvent>,
        on_activated: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<Self> {
        Self::with_periods(shared, dataplane, events, on_activated, Periods::default())
    }

    /// [`SyncThread::start`] with other periods.
    pub fn with_periods(
        shared: Arc<Shared>,
        dataplane: Box<dyn Dataplane + Send>,
        events: UnboundedSender<SyncEvent>,
        on_activated: impl FnOnce() + Send + 'static,
        periods: Periods,
    ) -> std::io::Result<Self> {
        let worker = Worker {
            shared: shared.clone(),
            dataplane,
            events,
            syncer: Syncer::default(),
            periods,
        };
        let thread = std::thread::Builder::new()
            .name("sync".into())
            .spawn(move || worker.run(on_activated))?;
        Ok(Self { shared, thread })
    }

    /// Whether the thread has ended (an activation failed, or it was stopped).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Lets the current sync finish, then ends the thread; its outcome.
    pub fn stop(self) -> Result<(), SyncThreadError> {
        self.shared.stop();
        match self.thread.join() {
            Ok(outcome) => Ok(outcome?),
            // The panic message was printed when it happened.
            Err(_) => Err(SyncThreadError::Panicked),
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    dataplane: Box<dyn Dataplane + Send>,
    events: UnboundedSender<SyncEvent>,
    syncer: Syncer,
    periods: Periods,
}

impl Worker {
    fn run(mut self, on_activated: impl FnOnce()) -> Result<(), ActivateError> {
        let mut on_activated = Some(on_activated);
        let mut announced = false;
        let mut retry_at = Instant::now() + self.periods.retry;
        let mut prune_at = Instant::now() + self.periods.prune;
        loop {
            let wait = retry_at.saturating_duration_since(Instant::now());
            if self.shared.wait(wait) == Wake::Stop {
                break;
            }
            // Periodic work goes by the clock, however often changes arrive.
            if Instant::now() >= retry_at {
                retry_at = Instant::now() + self.periods.retry;
                // Services whose write failed are marked dirty again: synced below.
                self.syncer.retry_failed(&mut self.shared.lock());
                if on_activated.is_none() && Instant::now() >= prune_at {
                    self.prune();
                    prune_at = Instant::now() + self.periods.prune;
                }
            }
            if !self.shared.is_listed() {
                if !announced {
                    info!("waiting for the first complete listing before programming anything");
                    announced = true;
                }
                self.report(SyncEvent::Idle);
                continue;
            }
            let Some(summary) = self.sync_once()? else {
                // Nothing to do: the thread is alive all the same (/livez).
                self.report(SyncEvent::Idle);
                continue;
            };
            let full = summary.full;
            self.report(SyncEvent::Synced(summary));
            if full && let Some(activated) = on_activated.take() {
                activated();
                self.report(SyncEvent::Activated);
            }
        }
        info!("stopping; the datapath stays installed");
        Ok(())
    }

    /// One sync, if there is anything to do: plan under the store lock, write outside it.
    /// An activation that fails ends the thread: nothing serves from the new dataplane,
    /// and the agent must not pretend otherwise.
    fn sync_once(&mut self) -> Result<Option<SyncSummary>, ActivateError> {
        let (mut plan, node_addresses) = {
            let mut store = self.shared.lock();
            self.shared.take_in_hand();
            if !self.syncer.has_work(&store) {
                // Woken twice for one change, or a change that changed nothing.
                self.shared.sync_ended(false);
                return Ok(None);
            }
            let plan = self.syncer.plan(&mut store, &*self.dataplane);
            (plan, store.node_context().addresses)
        };
        if plan.is_full() {
            self.dataplane.node_addresses(&node_addresses);
        }
        let report = self.dataplane.apply(std::mem::take(&mut plan.changes));
        let summary = self.syncer.finish(plan, report, &*self.dataplane);
        self.shared.sync_ended(summary.failed > 0);
        if summary.full {
            self.dataplane.activate()?;
            release_free_memory();
        }
        Ok(Some(summary))
    }

    fn prune(&mut self) {
        // What was removed, the dataplane logs itself.
        if let Err(e) = self.dataplane.prune() {
            warn!(
                "looking for entries no frontend owns: {}",
                crate::logging::error_chain(&e)
            );
        }
    }

    fn report(&self, event: SyncEvent) {
        // The runtime is gone only when the agent is exiting.
        let _ = self.events.send(event);
    }
}

/// A full sync follows a (re)list, during which the API objects were held whole before
/// being reduced to what the model needs; give the freed memory back to the system.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests;
