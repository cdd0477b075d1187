//! The agent's loop: read the source, translate, diff against what is installed, apply.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use tracing::{error, info, warn};

use crate::{
    dataplane::Dataplane,
    model::{self, ServiceFrontends},
    source::{ObjectRef, ObjectSet, manifest::ManifestDir},
    sync,
};

/// Turns object sets into dataplane changes, remembering the last valid version of each
/// Service so that an edit that breaks a Service does not take its traffic away.
#[derive(Default)]
pub struct Syncer {
    last_good: BTreeMap<ObjectRef, ServiceFrontends>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncSummary {
    pub frontends: usize,
    pub written: usize,
    pub removed: usize,
    pub failed: usize,
    pub rejected: usize,
}

impl Syncer {
    pub fn sync(&mut self, objects: &ObjectSet, dataplane: &mut dyn Dataplane) -> SyncSummary {
        let started = Instant::now();
        let translation = model::translate(objects);
        let mut summary = SyncSummary::default();
        let mut effective: BTreeMap<&ObjectRef, ServiceFrontends> = BTreeMap::new();
        for (key, result) in &translation {
            match result {
                Ok(frontends) => {
                    for warning in &frontends.warnings {
                        warn!("{warning}");
                    }
                    self.last_good.insert(key.clone(), frontends.clone());
                    effective.insert(key, frontends.clone());
                }
                Err(rejection) => {
                    summary.rejected += 1;
                    match self.last_good.get(key) {
                        Some(previous) => {
                            warn!("{rejection}; keeping its last valid version");
                            effective.insert(key, previous.clone());
                        }
                        None => warn!("{rejection}; skipped"),
                    }
                }
            }
        }
        self.last_good
            .retain(|key, _| translation.contains_key(key));

        let (desired, collisions) = model::merge(effective.iter().map(|(k, v)| (*k, v)));
        for rejection in &collisions {
            warn!("{rejection}");
        }
        summary.rejected += collisions.len();
        let changes = sync::diff(dataplane.installed(), &desired);
        let report = dataplane.apply(changes);
        for (addr, service, reason) in &report.failed {
            error!(frontend = %addr, "{service}: not programmed: {reason}; its previous state is kept");
        }
        summary.frontends = desired.len();
        summary.written = report.written;
        summary.removed = report.removed;
        summary.failed = report.failed.len();
        if summary.written + summary.removed + summary.failed > 0 {
            info!(
                frontends = summary.frontends,
                written = summary.written,
                removed = summary.removed,
                failed = summary.failed,
                elapsed_us = started.elapsed().as_micros() as u64,
                "synced"
            );
        }
        summary
    }
}

/// Polls `source` until `shutdown` is set, syncing on every change. Returns when asked to
/// stop; the dataplane stays installed.
pub fn run(
    source: &mut ManifestDir,
    dataplane: &mut dyn Dataplane,
    poll: Duration,
    shutdown: &AtomicBool,
) {
    let mut syncer = Syncer::default();
    let mut first = true;
    while !shutdown.load(Ordering::Relaxed) {
        match source.poll() {
            Ok(snapshot) if snapshot.changed || first => {
                syncer.sync(&snapshot.objects, dataplane);
                first = false;
            }
            Ok(_) => {}
            // The directory vanished or is unreadable: keep serving what is installed.
            Err(e) => warn!("{e}; keeping the installed state"),
        }
        std::thread::sleep(poll);
    }
    info!("stopping; the datapath stays installed");
}
