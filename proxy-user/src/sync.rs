//! From dirty Services to dataplane changes. Only Services marked dirty in the store are
//! translated again, so one endpoint change costs the same at 10 Services as at 10,000.
//!
//! The syncer also decides who owns a frontend: the first Service to claim an address:port
//! keeps it; a later claimant is rejected and waits, and is tried again when the frontend is
//! released. A Service that becomes unusable keeps its last valid version, so a bad edit
//! never takes traffic away; a deleted Service really goes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::{Duration, Instant, SystemTime},
};

use tracing::{error, info, warn};

use crate::{
    dataplane::{ApplyReport, Change, Dataplane, MapUsage},
    model::{
        FrontendAddr, FrontendSpec, HealthCheck, NodeContext, ObjectRef, Rejection,
        translate_service,
    },
    source::store::{ChangeCounts, ObjectStore},
};

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncSummary {
    /// Every Service was recomputed.
    pub full: bool,
    pub services: usize,
    pub frontends: usize,
    pub written: usize,
    pub removed: usize,
    pub failed: usize,
    /// Reason codes of everything rejected in this sync.
    pub rejections: Vec<&'static str>,
    pub elapsed: Duration,
    /// From each endpoint change's trigger time to its frontends being programmed.
    pub programming_latencies: Vec<Duration>,
    /// Cumulative change counters of the store.
    pub changes: ChangeCounts,
    /// Services with a Local internal policy and no local endpoint.
    pub no_local_endpoints: usize,
    pub usage: Vec<MapUsage>,
    /// Every health check node port to serve, when the set or a count changed.
    pub health_checks: Option<BTreeMap<u16, ServiceHealth>>,
}

/// What one health check node port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    pub service: ObjectRef,
    pub local_endpoints: usize,
}

/// What one sync decided under the store lock.
pub struct Plan {
    /// The writes to make, outside the lock.
    pub changes: Vec<Change>,
    /// Every frontend the sync looked at.
    touched: Vec<FrontendAddr>,
    /// Endpoint changes and when they happened, for the programming latency.
    triggers: Vec<(ObjectRef, SystemTime)>,
    summary: SyncSummary,
    started: Instant,
}

impl Plan {
    /// Whether this sync reconciles every Service (the first, or one after a relist).
    pub fn is_full(&self) -> bool {
        self.summary.full
    }
}

#[derive(Default)]
pub struct Syncer {
    /// The frontends of each Service's last valid version, served while it is invalid.
    last_good: HashMap<ObjectRef, Vec<(FrontendAddr, FrontendSpec)>>,
    /// Each Service's installed frontends, sorted: a boxed slice, not a BTreeSet, whose
    /// first node takes 100 bytes for one or two addresses (10 MB at 100,000 Services).
    owned: HashMap<ObjectRef, Box<[FrontendAddr]>>,
    owners: BTreeMap<FrontendAddr, ObjectRef>,
    waiting: BTreeMap<FrontendAddr, BTreeSet<ObjectRef>>,
    /// Services whose last write failed: retried by [`Syncer::retry_failed`].
    failed: BTreeSet<ObjectRef>,
    /// Whether a full sync has reconciled the dataplane with the store yet.
    reconciled: bool,
    /// Installed frontends with a Local policy and no endpoint, and their Service.
    no_local: BTreeMap<FrontendAddr, std::sync::Arc<str>>,
    /// Services with a health check node port, and whether that set changed this sync.
    health: BTreeMap<ObjectRef, HealthCheck>,
    health_changed: bool,
}

impl Syncer {
    /// Plans, applies and finishes one sync in one go (with the store held throughout).
    pub fn sync<D: Dataplane + ?Sized>(
        &mut self,
        store: &mut ObjectStore,
        dataplane: &mut D,
    ) -> SyncSummary {
        let mut plan = self.plan(store, &*dataplane);
        let report = dataplane.apply(std::mem::take(&mut plan.changes));
        self.finish(plan, report, &*dataplane)
    }

    /// Translates what changed in `store` into the writes that make `dataplane` match it.
    /// Runs under the store lock; the writes themselves happen outside it
    /// ([`Dataplane::apply`]), then [`Syncer::finish`] records their outcome.
    pub fn plan<D: Dataplane + ?Sized>(&mut self, store: &mut ObjectStore, dataplane: &D) -> Plan {
        let started = Instant::now();
        let dirty = store.take_dirty();
        let full = dirty.all || !self.reconciled;
        let mut queue: BTreeSet<ObjectRef> = if full {
            store
                .service_keys()
                .cloned()
                .chain(self.owned.keys().cloned())
                .collect()
        } else {
            dirty.services
        };
        if full {
            // Room for every Service at once, not grown step by step (a tenth of the
            // plan at 100,000 Services); a relist, which finds them there, adds none.
            self.last_good
                .reserve(queue.len().saturating_sub(self.last_good.len()));
            self.owned
                .reserve(queue.len().saturating_sub(self.owned.len()));
        }
        let mut summary = SyncSummary {
            full,
            services: queue.len(),
            ..SyncSummary::default()
        };
        let node = store.node_context();
        // What each touched frontend should become: Some(spec), or None for "remove".
        let mut pending: BTreeMap<FrontendAddr, Option<FrontendSpec>> = BTreeMap::new();
        let mut triggers: Vec<(ObjectRef, SystemTime)> = Vec::new();

        while let Some(key) = queue.pop_first() {
            if let Some(trigger) = store.take_trigger(&key) {
                triggers.push((key.clone(), trigger));
            }
            let wanted = self.wanted(&key, store, &node, &mut summary);
            let owned = self.owned.remove(&key).unwrap_or_default();
            for addr in owned
                .iter()
                .filter(|a| !wanted.iter().any(|(w, _)| w == *a))
            {
                self.owners.remove(addr);
                pending.insert(*addr, None);
                // Services waiting for this frontend get their chance now.
                queue.extend(self.waiting.remove(addr).unwrap_or_default());
            }
            let mut now_owned = Vec::new();
            for (addr, spec) in wanted {
                match self.owners.get(&addr) {
                    Some(owner) if *owner != key => {
                        summary.rejections.push("frontend_conflict");
                        warn!(
                            "{}",
                            Rejection {
                                object: format!("Service {key}"),
                                code: "frontend_conflict",
                                reason: format!(
                                    "frontend {addr} is already served by Service {owner}; this port is skipped"
                                ),
                            }
                        );
                        self.waiting.entry(addr).or_default().insert(key.clone());
                    }
                    _ => {
                        self.owners.insert(addr, key.clone());
                        now_owned.push(addr);
                        pending.insert(addr, Some(spec));
                    }
                }
            }
            if !now_owned.is_empty() {
                now_owned.sort();
                now_owned.dedup();
                self.owned.insert(key.clone(), now_owned.into_boxed_slice());
            }
        }
        if full {
            // Installed by an earlier run for Services that no longer exist.
            for addr in dataplane
                .installed()
                .keys()
                .chain(dataplane.left_out().keys())
                .filter(|a| !self.owners.contains_key(*a))
            {
                pending.entry(*addr).or_insert(None);
            }
            self.reconciled = true;
        }

        let touched: Vec<FrontendAddr> = pending.keys().copied().collect();
        let installed = dataplane.installed();
        let left_out = dataplane.left_out();
        let changes: Vec<Change> = pending
            .into_iter()
            .filter_map(|(addr, spec)| match spec {
                Some(spec)
                    if !installed
                        .get(&addr)
                        .is_some_and(|i| dataplane.unchanged(i, &spec))
                        && left_out.get(&addr) != Some(&spec) =>
                {
                    Some(Change::Upsert(addr, spec))
                }
                None if installed.contains_key(&addr) || left_out.contains_key(&addr) => {
                    Some(Change::Remove(addr))
                }
                _ => None,
            })
            .collect();
        summary.changes = store.changes;
        Plan {
            changes,
            touched,
            triggers,
            summary,
            started,
        }
    }

    /// Records what [`Dataplane::apply`] did with a plan's changes.
    pub fn finish<D: Dataplane + ?Sized>(
        &mut self,
        plan: Plan,
        report: ApplyReport,
        dataplane: &D,
    ) -> SyncSummary {
        let Plan {
            touched,
            triggers,
            mut summary,
            started,
            ..
        } = plan;
        let full = summary.full;
        for left_out in &report.left_out {
            warn!("{left_out}");
            summary.rejections.push(left_out.code);
        }
        for failure in &report.failed {
            error!(
                "{}; its previous state is kept",
                crate::logging::error_chain(failure)
            );
            if let Some(owner) = self.owners.get(&failure.frontend) {
                self.failed.insert(owner.clone());
            }
        }
        let now = SystemTime::now();
        summary.programming_latencies = triggers
            .iter()
            .filter(|(key, _)| !self.failed.contains(key))
            .filter_map(|(_, trigger)| now.duration_since(*trigger).ok())
            .collect();
        summary.frontends = dataplane.installed().len();
        summary.usage = dataplane.usage();
        // Only the frontends this sync touched can have changed state.
        for addr in &touched {
            match dataplane.installed().get(addr) {
                Some(spec) if spec.local_only && spec.backends.iter().all(|b| b.flows_only) => {
                    self.no_local.insert(*addr, spec.service.clone());
                }
                _ => {
                    self.no_local.remove(addr);
                }
            }
        }
        summary.no_local_endpoints = self.no_local.values().collect::<BTreeSet<_>>().len();
        if self.health_changed || full {
            summary.health_checks = Some(self.health_checks());
            self.health_changed = false;
        }
        summary.written = report.written;
        summary.removed = report.removed;
        summary.failed = report.failed.len();
        summary.elapsed = started.elapsed();
        if summary.written + summary.removed + summary.failed > 0 || full {
            info!(
                full,
                services = summary.services,
                frontends = summary.frontends,
                written = summary.written,
                removed = summary.removed,
                failed = summary.failed,
                elapsed_us = summary.elapsed.as_micros() as u64,
                "synced"
            );
        }
        summary
    }

    /// Health check node ports by port. Two Services claiming one port (the API server
    /// forbids it; a manifest directory may not): the first by name keeps it.
    fn health_checks(&self) -> BTreeMap<u16, ServiceHealth> {
        let mut ports: BTreeMap<u16, ServiceHealth> = BTreeMap::new();
        for (service, check) in &self.health {
            match ports.get(&check.node_port) {
                Some(first) => warn!(
                    "{}",
                    Rejection {
                        object: format!("Service {service}"),
                        code: "frontend_conflict",
                        reason: format!(
                            "healthCheckNodePort {} is already served for Service {}; not served",
                            check.node_port, first.service
                        ),
                    }
                ),
                None => {
                    ports.insert(
                        check.node_port,
                        ServiceHealth {
                            service: service.clone(),
                            local_endpoints: check.local_endpoints,
                        },
                    );
                }
            }
        }
        ports
    }

    fn set_health(&mut self, key: &ObjectRef, check: Option<HealthCheck>) {
        let changed = match check {
            Some(check) => self.health.insert(key.clone(), check) != Some(check),
            None => self.health.remove(key).is_some(),
        };
        self.health_changed |= changed;
    }

    /// Whether a sync would do anything: something changed, or nothing was synced yet.
    pub fn has_work(&self, store: &ObjectStore) -> bool {
        !self.reconciled || store.is_dirty()
    }

    /// Marks Services whose write failed (a full map, say) for another attempt.
    pub fn retry_failed(&mut self, store: &mut ObjectStore) -> bool {
        if self.failed.is_empty() {
            return false;
        }
        store.mark_dirty(std::mem::take(&mut self.failed));
        true
    }

    /// The frontends `key` should have now.
    fn wanted(
        &mut self,
        key: &ObjectRef,
        store: &ObjectStore,
        node: &NodeContext,
        summary: &mut SyncSummary,
    ) -> Vec<(FrontendAddr, FrontendSpec)> {
        let Some(service) = store.service(key) else {
            self.last_good.remove(key);
            self.set_health(key, None);
            return Vec::new();
        };
        match translate_service(key, service, &store.slices(key), node) {
            None => {
                self.last_good.remove(key);
                self.set_health(key, None);
                Vec::new()
            }
            Some(Ok(frontends)) => {
                self.set_health(key, frontends.health_check);
                for warning in &frontends.warnings {
                    warn!("{warning}");
                    summary.rejections.push(warning.code);
                }
                let wanted = frontends.frontends.clone();
                self.last_good.insert(key.clone(), frontends.frontends);
                wanted
            }
            Some(Err(rejection)) => {
                summary.rejections.push(rejection.code);
                match self.last_good.get(key) {
                    Some(previous) => {
                        warn!("{rejection}; keeping its last valid version");
                        previous.clone()
                    }
                    None => {
                        warn!("{rejection}; skipped");
                        Vec::new()
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
