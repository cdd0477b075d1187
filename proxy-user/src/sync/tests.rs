use std::path::Path;

use super::*;
use crate::{
    dataplane::memory::MemoryDataplane as FakeDataplane,
    source::{
        ObjectSet,
        manifest::{Parsed, object_ref, parse_documents},
    },
};

fn objects(yaml: &str) -> ObjectSet {
    let mut set = ObjectSet::default();
    for parsed in parse_documents(Path::new("t.yaml"), yaml).expect("parses") {
        match parsed {
            Parsed::Service(s) => {
                set.services.insert(object_ref(&s.metadata), *s);
            }
            Parsed::EndpointSlice(s) => {
                set.endpoint_slices.insert(object_ref(&s.metadata), *s);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    set
}

fn svc(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n---\n"
    )
}

fn slice(service: &str, ip: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}-1, namespace: ns, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{port: 8080}}]\nendpoints: [{{addresses: [{ip}]}}]\n---\n"
    )
}

fn sync(
    syncer: &mut Syncer,
    store: &mut ObjectStore,
    dp: &mut FakeDataplane,
    yaml: &str,
) -> SyncSummary {
    store.replace_all(objects(yaml));
    syncer.sync(store, dp)
}

#[test]
fn a_broken_edit_keeps_the_last_valid_version() {
    let (mut syncer, mut store, mut dp) = (
        Syncer::default(),
        ObjectStore::new(None),
        FakeDataplane::default(),
    );
    sync(
        &mut syncer,
        &mut store,
        &mut dp,
        &(svc("a", "198.19.0.1") + &svc("b", "198.19.0.2")),
    );
    assert_eq!(dp.installed().len(), 2);
    let summary = sync(
        &mut syncer,
        &mut store,
        &mut dp,
        &(svc("a", "198.19.0.999") + &svc("b", "198.19.0.2")),
    );
    assert_eq!(summary.rejections, ["invalid_cluster_ip"]);
    assert_eq!(
        dp.installed().len(),
        2,
        "ns/a keeps serving on its last valid address"
    );
    assert_eq!(
        dp.log,
        ["written ns/a", "written ns/b"],
        "nothing rewritten"
    );
    // Deleting the Service really removes it, even though its last version was kept.
    sync(&mut syncer, &mut store, &mut dp, &svc("b", "198.19.0.2"));
    assert_eq!(dp.installed().len(), 1);
}

#[test]
fn a_change_to_one_service_recomputes_and_rewrites_only_it() {
    let (mut syncer, mut store, mut dp) = (
        Syncer::default(),
        ObjectStore::new(None),
        FakeDataplane::default(),
    );
    let first = sync(
        &mut syncer,
        &mut store,
        &mut dp,
        &(svc("a", "198.19.0.1") + &svc("b", "198.19.0.2")),
    );
    assert!(first.full);
    dp.log.clear();
    let summary = sync(
        &mut syncer,
        &mut store,
        &mut dp,
        &(svc("a", "198.19.0.1") + &svc("b", "198.19.0.2") + &slice("b", "198.18.1.2")),
    );
    assert!(!summary.full);
    assert_eq!(summary.services, 1, "only ns/b was translated again");
    assert_eq!(dp.log, ["written ns/b"]);
}

#[test]
fn a_failed_write_is_retried() {
    let (mut syncer, mut store, mut dp) = (
        Syncer::default(),
        ObjectStore::new(None),
        FakeDataplane::default(),
    );
    dp.refuse = ["ns/b".to_string()].into();
    let summary = sync(
        &mut syncer,
        &mut store,
        &mut dp,
        &(svc("a", "198.19.0.1") + &svc("b", "198.19.0.2") + &svc("c", "198.19.0.3")),
    );
    assert_eq!((summary.written, summary.failed), (2, 1));
    assert_eq!(dp.log, ["written ns/a", "written ns/c"]);
    dp.refuse.clear();
    assert!(syncer.retry_failed(&mut store));
    let retry = syncer.sync(&mut store, &mut dp);
    assert_eq!((retry.services, retry.written), (1, 1));
    assert!(!syncer.retry_failed(&mut store), "nothing left to retry");
}

#[test]
fn the_first_claimant_keeps_a_frontend_and_the_other_waits() {
    let (mut syncer, mut store, mut dp) = (
        Syncer::default(),
        ObjectStore::new(None),
        FakeDataplane::default(),
    );
    let summary = sync(
        &mut syncer,
        &mut store,
        &mut dp,
        &(svc("a", "198.19.0.1") + &svc("z", "198.19.0.1")),
    );
    assert_eq!(summary.rejections, ["frontend_conflict"]);
    assert_eq!(
        dp.installed()
            .values()
            .map(|s| s.service.as_str())
            .collect::<Vec<_>>(),
        ["ns/a"]
    );
    // When ns/a lets go, ns/z takes the frontend in the same sync.
    sync(&mut syncer, &mut store, &mut dp, &svc("z", "198.19.0.1"));
    assert_eq!(
        dp.installed()
            .values()
            .map(|s| s.service.as_str())
            .collect::<Vec<_>>(),
        ["ns/z"]
    );
}

#[test]
fn a_restart_removes_frontends_of_services_deleted_while_down() {
    let (mut syncer, mut store, mut dp) = (
        Syncer::default(),
        ObjectStore::new(None),
        FakeDataplane::default(),
    );
    sync(
        &mut syncer,
        &mut store,
        &mut dp,
        &(svc("a", "198.19.0.1") + &svc("b", "198.19.0.2")),
    );
    // A new agent: fresh syncer and store, the dataplane as the kernel keeps it.
    dp.log.clear();
    let (mut syncer, mut store) = (Syncer::default(), ObjectStore::new(None));
    let summary = sync(&mut syncer, &mut store, &mut dp, &svc("a", "198.19.0.1"));
    assert_eq!(
        (summary.written, summary.removed),
        (0, 1),
        "ns/a untouched, ns/b removed"
    );
    assert_eq!(dp.log, ["removed 198.19.0.2:80/TCP"]);
}
