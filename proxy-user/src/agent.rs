//! The agent: sources write into one [`ObjectStore`], a sync task turns what changed into
//! dataplane writes. Nothing is programmed until every source has listed once, and what is
//! installed stays untouched until then.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::sync::Notify;
use tracing::{info, warn};

use crate::{
    dataplane::Dataplane,
    source::{manifest::ManifestDir, store::ObjectStore},
    sync::{SyncSummary, Syncer},
};

/// What the sources and the sync task share.
pub struct Shared {
    store: Mutex<ObjectStore>,
    changed: Notify,
    /// Sources that have not completed their first listing yet.
    unlisted: Mutex<usize>,
}

impl Shared {
    pub fn new(node_name: Option<String>, sources: usize) -> Arc<Self> {
        Arc::new(Self {
            store: Mutex::new(ObjectStore::new(node_name)),
            changed: Notify::new(),
            unlisted: Mutex::new(sources),
        })
    }

    /// Runs `f` on the store and wakes the sync task.
    pub fn update<R>(&self, f: impl FnOnce(&mut ObjectStore) -> R) -> R {
        let result = f(&mut self.lock());
        self.changed.notify_one();
        result
    }

    /// A source has listed everything once.
    pub fn listed(&self) {
        let mut unlisted = self.unlisted.lock().unwrap_or_else(|e| e.into_inner());
        *unlisted = unlisted.saturating_sub(1);
        self.changed.notify_one();
    }

    pub fn is_listed(&self) -> bool {
        *self.unlisted.lock().unwrap_or_else(|e| e.into_inner()) == 0
    }

    pub fn lock(&self) -> MutexGuard<'_, ObjectStore> {
        // A panic while holding the lock leaves the store as it was: keep using it.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the sync loop reports to its observer (metrics, health).
pub enum LoopEvent<'a> {
    Synced(&'a SyncSummary),
    /// The first full sync is in and the dataplane serves traffic from it: the moment to
    /// retire another datapath.
    Activated,
    /// Nothing to do this tick; the loop is alive.
    Idle,
}

/// Syncs whenever the store changes, until `shutdown` resolves. After the first full sync
/// the dataplane is activated; if that fails the loop ends with the error.
pub async fn sync_loop<D: Dataplane + ?Sized>(
    shared: Arc<Shared>,
    dataplane: &mut D,
    shutdown: impl std::future::Future<Output = ()>,
    mut observe: impl FnMut(LoopEvent<'_>),
) -> Result<(), String> {
    let mut syncer = Syncer::default();
    let mut retry = tokio::time::interval(Duration::from_secs(5));
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let mut announced = false;
    let mut activated = false;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = shared.changed.notified() => {}
            _ = retry.tick() => {
                if !syncer.retry_failed(&mut shared.lock()) {
                    observe(LoopEvent::Idle);
                    continue;
                }
            }
        }
        if !shared.is_listed() {
            if !announced {
                info!("waiting for the first complete listing before programming anything");
                announced = true;
            }
            continue;
        }
        let mut store = shared.lock();
        if !syncer.has_work(&store) {
            continue; // woken twice for one change
        }
        let summary = syncer.sync(&mut store, &mut *dataplane);
        let node_addresses = store.node_context().addresses;
        drop(store);
        let first = summary.full && !activated;
        if first {
            dataplane.node_addresses(&node_addresses);
        }
        if summary.full {
            dataplane.activate()?;
            release_free_memory();
        }
        observe(LoopEvent::Synced(&summary));
        if first {
            activated = true;
            observe(LoopEvent::Activated);
        }
    }
    info!("stopping; the datapath stays installed");
    Ok(())
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

/// Polls a manifest directory into the store.
pub async fn watch_manifests(mut dir: ManifestDir, shared: Arc<Shared>, poll: Duration) {
    let mut first = true;
    let mut tick = tokio::time::interval(poll);
    loop {
        tick.tick().await;
        match dir.poll() {
            Ok(snapshot) if snapshot.changed || first => {
                shared.update(|store| store.replace_all(snapshot.objects));
                if first {
                    shared.listed();
                    first = false;
                }
            }
            Ok(_) => {}
            // The directory vanished or is unreadable: keep serving what is installed.
            Err(e) => warn!("{e}; keeping the installed state"),
        }
    }
}
