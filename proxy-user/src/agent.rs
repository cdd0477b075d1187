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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        dataplane::ApplyReport,
        model::DesiredState,
        source::manifest::{Parsed, object_ref, parse_documents},
        sync::Change,
    };

    /// Records what it is asked to do; fails writes for services listed in `full`.
    #[derive(Default)]
    struct FakeDataplane {
        installed: DesiredState,
        writes: Vec<String>,
        full: Vec<String>,
    }

    impl Dataplane for FakeDataplane {
        fn installed(&self) -> &DesiredState {
            &self.installed
        }

        fn apply(&mut self, changes: Vec<Change>) -> ApplyReport {
            let mut report = ApplyReport::default();
            for change in changes {
                match change {
                    Change::Upsert(addr, spec) if self.full.contains(&spec.service) => {
                        report.failed.push((
                            addr,
                            spec.service.clone(),
                            "the EPX_SLOT_V1 map is full".into(),
                        ));
                    }
                    Change::Upsert(addr, spec) => {
                        self.writes.push(spec.service.clone());
                        self.installed.insert(addr, spec);
                        report.written += 1;
                    }
                    Change::Remove(addr) => {
                        self.installed.remove(&addr);
                        report.removed += 1;
                    }
                }
            }
            report
        }
    }

    fn objects(yaml: &str) -> ObjectSet {
        let mut set = ObjectSet::default();
        for parsed in parse_documents(Path::new("t.yaml"), yaml).expect("parses") {
            if let Parsed::Service(s) = parsed {
                set.services.insert(object_ref(&s.metadata), *s);
            }
        }
        set
    }

    fn svc(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n---\n"
        )
    }

    #[test]
    fn a_broken_edit_keeps_the_last_valid_version() {
        let mut dp = FakeDataplane::default();
        let mut syncer = Syncer::default();
        syncer.sync(
            &objects(&(svc("a", "198.19.0.1") + &svc("b", "198.19.0.2"))),
            &mut dp,
        );
        assert_eq!(dp.installed.len(), 2);
        let summary = syncer.sync(
            &objects(&(svc("a", "198.19.0.999") + &svc("b", "198.19.0.2"))),
            &mut dp,
        );
        assert_eq!(summary.rejected, 1);
        assert_eq!(
            dp.installed.len(),
            2,
            "ns/a keeps serving on its last valid address"
        );
        assert_eq!(dp.writes, ["ns/a", "ns/b"], "nothing rewritten");
        // Deleting the Service really removes it, even though its last version was kept.
        syncer.sync(&objects(&svc("b", "198.19.0.2")), &mut dp);
        assert_eq!(dp.installed.len(), 1);
    }

    #[test]
    fn a_change_to_one_service_rewrites_only_it() {
        let mut dp = FakeDataplane::default();
        let mut syncer = Syncer::default();
        syncer.sync(
            &objects(&(svc("a", "198.19.0.1") + &svc("b", "198.19.0.2"))),
            &mut dp,
        );
        dp.writes.clear();
        syncer.sync(
            &objects(&(svc("a", "198.19.0.1") + &svc("b", "198.19.0.3"))),
            &mut dp,
        );
        assert_eq!(dp.writes, ["ns/b"]);
    }

    #[test]
    fn a_failed_write_is_counted_and_the_others_proceed() {
        let mut dp = FakeDataplane {
            full: vec!["ns/b".into()],
            ..Default::default()
        };
        let summary = Syncer::default().sync(
            &objects(&(svc("a", "198.19.0.1") + &svc("b", "198.19.0.2") + &svc("c", "198.19.0.3"))),
            &mut dp,
        );
        assert_eq!((summary.written, summary.failed), (2, 1));
        assert_eq!(dp.writes, ["ns/a", "ns/c"]);
    }
}
