//! A cold sync of thousands of Services into the real maps (pinned in a bpffs directory of
//! the test's own, no program attached): what the agent believes it installed is exactly
//! what the kernel holds, read back by a second agent opening the same maps, whether every
//! frontend fits or the services map runs out of room part-way through.

use std::path::{Path, PathBuf};

use integration::{Cgroup, objects, require_privileges, unique};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use proxy_user::{
    dataplane::{
        Dataplane,
        ebpf::{EbpfDataplane, loader},
    },
    source::store::ObjectStore,
    sync::Syncer,
};

/// Enough that the batch writes are split across threads.
const SERVICES: usize = 3_000;
const ENDPOINTS: usize = 5;

fn service(i: usize) -> Service {
    objects::cluster_ip_service(
        "cold",
        &format!("svc-{i}"),
        format!("198.19.{}.{}", i / 250, i % 250 + 1),
    )
}

fn slice(i: usize) -> EndpointSlice {
    objects::ready_slice(
        "cold",
        &format!("svc-{i}"),
        (0..ENDPOINTS).map(|j| format!("198.18.{}.{}", j, i % 250 + 1)),
    )
}

/// Unpins the maps, also when the test fails.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = loader::cleanup(&self.0);
    }
}

fn options(services: u32) -> loader::LoadOptions {
    loader::LoadOptions {
        capacities: loader::Capacities {
            services,
            ..loader::Capacities::default()
        },
        ..loader::LoadOptions::default()
    }
}

fn open(pins: &Path, cgroup: &Cgroup, services: u32) -> EbpfDataplane {
    EbpfDataplane::open(pins, &cgroup.path, options(services), Some(&[]))
        .unwrap_or_else(|e| panic!("opening the maps at {}: {e}", pins.display()))
}

/// A second agent opening the same maps reads back what the first believes it
/// installed, and finds nothing that no frontend owns.
fn assert_kernel_holds_what_the_agent_believes(
    agent: &EbpfDataplane,
    pins: &Path,
    cgroup: &Cgroup,
    services: u32,
) {
    let mut second = open(pins, cgroup, services);
    let believed = agent.installed();
    let held = second.installed();
    assert_eq!(
        believed.keys().collect::<Vec<_>>(),
        held.keys().collect::<Vec<_>>(),
        "frontends believed installed and frontends in the maps differ"
    );
    for (addr, spec) in believed {
        assert!(
            second.unchanged(&held[addr], spec),
            "frontend {addr}: the maps hold {:?}, the agent believes {spec:?}",
            held[addr]
        );
    }
    assert_eq!(
        second.prune().expect("pruning"),
        0,
        "entries no frontend owns were left"
    );
}

fn store() -> ObjectStore {
    let mut store = ObjectStore::new(None);
    store.replace_services((0..SERVICES).map(service));
    store.replace_slices((0..SERVICES).map(slice));
    store
}

#[test]
fn a_cold_sync_installs_every_frontend_exactly() {
    require_privileges!();
    let id = unique("epxcold");
    let cgroup = Cgroup::new(&id);
    let pins = Pins(PathBuf::from("/sys/fs/bpf").join(&id));
    let capacity = loader::Capacities::default().services;
    let mut dataplane = open(&pins.0, &cgroup, capacity);
    let mut store = store();

    let summary = Syncer::default().sync(&mut store, &mut dataplane);

    assert_eq!((summary.written, summary.failed), (SERVICES, 0));
    assert_eq!(dataplane.installed().len(), SERVICES);
    assert_kernel_holds_what_the_agent_believes(&dataplane, &pins.0, &cgroup, capacity);
}

#[test]
fn a_cold_sync_that_does_not_fit_names_each_service_left_out() {
    require_privileges!();
    let id = unique("epxcold");
    let cgroup = Cgroup::new(&id);
    let pins = Pins(PathBuf::from("/sys/fs/bpf").join(&id));
    let capacity = 2_000;
    let mut dataplane = open(&pins.0, &cgroup, capacity);
    let mut store = store();
    let mut syncer = Syncer::default();

    let mut plan = syncer.plan(&mut store, &dataplane);
    let report = dataplane.apply(std::mem::take(&mut plan.changes));

    let fitted = dataplane.installed().len();
    assert!(
        fitted > 0 && fitted <= capacity as usize,
        "{fitted} frontends installed in a map of {capacity}"
    );
    assert_eq!(report.written, fitted);
    assert_eq!(report.failed.len(), SERVICES - fitted);
    for failure in &report.failed {
        assert!(
            failure.service.starts_with("cold/svc-"),
            "a failure names no Service: {failure:?}"
        );
        assert!(
            !dataplane.installed().contains_key(&failure.frontend),
            "{} failed but is believed installed",
            failure.frontend
        );
    }
    syncer.finish(plan, report, &dataplane);
    assert_kernel_holds_what_the_agent_believes(&dataplane, &pins.0, &cgroup, capacity);
}
