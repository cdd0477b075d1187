use super::*;
use crate::{dataplane::memory::MemoryDataplane, source::manifest::object_set};

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

/// A syncer, its store and an in-memory dataplane, as an agent has them.
#[derive(Default)]
struct Harness {
    syncer: Syncer,
    store: ObjectStore,
    dp: MemoryDataplane,
}

impl Harness {
    fn new() -> Self {
        Self {
            store: ObjectStore::new(None),
            ..Self::default()
        }
    }

    /// The manifests now say `yaml`: sync.
    fn sync(&mut self, yaml: &str) -> SyncSummary {
        self.store.replace_all(object_set(yaml));
        self.syncer.sync(&mut self.store, &mut self.dp)
    }

    fn installed_services(&self) -> Vec<&str> {
        self.dp.installed().values().map(|s| &*s.service).collect()
    }
}

#[test]
fn a_broken_edit_keeps_the_last_valid_version() {
    let mut h = Harness::new();
    h.sync(&(svc("a", "198.19.0.1") + &svc("b", "198.19.0.2")));
    assert_eq!(h.dp.installed().len(), 2);
    let summary = h.sync(&(svc("a", "198.19.0.999") + &svc("b", "198.19.0.2")));
    assert_eq!(summary.rejections, ["invalid_cluster_ip"]);
    assert_eq!(
        h.dp.installed().len(),
        2,
        "ns/a keeps serving on its last valid address"
    );
    assert_eq!(
        h.dp.log,
        ["written ns/a", "written ns/b"],
        "nothing rewritten"
    );
    // Deleting the Service really removes it, even though its last version was kept.
    h.sync(&svc("b", "198.19.0.2"));
    assert_eq!(h.installed_services(), ["ns/b"]);
}

#[test]
fn a_change_to_one_service_recomputes_and_rewrites_only_it() {
    let mut h = Harness::new();
    assert!(
        h.sync(&(svc("a", "198.19.0.1") + &svc("b", "198.19.0.2")))
            .full
    );
    h.dp.log.clear();
    let summary =
        h.sync(&(svc("a", "198.19.0.1") + &svc("b", "198.19.0.2") + &slice("b", "198.18.1.2")));
    assert!(!summary.full);
    assert_eq!(summary.services, 1, "only ns/b was translated again");
    assert_eq!(h.dp.log, ["written ns/b"]);
}

#[test]
fn a_failed_write_is_retried() {
    let mut h = Harness::new();
    h.dp.refuse = ["ns/b".to_string()].into();
    let summary =
        h.sync(&(svc("a", "198.19.0.1") + &svc("b", "198.19.0.2") + &svc("c", "198.19.0.3")));
    assert_eq!((summary.written, summary.failed), (2, 1));
    assert_eq!(h.dp.log, ["written ns/a", "written ns/c"]);
    h.dp.refuse.clear();
    assert!(h.syncer.retry_failed(&mut h.store));
    let retry = h.syncer.sync(&mut h.store, &mut h.dp);
    assert_eq!((retry.services, retry.written), (1, 1));
    assert!(
        !h.syncer.retry_failed(&mut h.store),
        "nothing left to retry"
    );
}

#[test]
fn the_first_claimant_keeps_a_frontend_and_the_other_waits() {
    let mut h = Harness::new();
    let summary = h.sync(&(svc("a", "198.19.0.1") + &svc("z", "198.19.0.1")));
    assert_eq!(summary.rejections, ["frontend_conflict"]);
    assert_eq!(h.installed_services(), ["ns/a"]);
    // When ns/a lets go, ns/z takes the frontend in the same sync.
    h.sync(&svc("z", "198.19.0.1"));
    assert_eq!(h.installed_services(), ["ns/z"]);
}

#[test]
fn a_restart_removes_frontends_of_services_deleted_while_down() {
    let mut h = Harness::new();
    h.sync(&(svc("a", "198.19.0.1") + &svc("b", "198.19.0.2")));
    // A new agent: fresh syncer and store, the dataplane as the kernel keeps it.
    let mut restarted = Harness {
        dp: std::mem::take(&mut h.dp),
        ..Harness::new()
    };
    restarted.dp.log.clear();
    let summary = restarted.sync(&svc("a", "198.19.0.1"));
    assert_eq!(
        (summary.written, summary.removed),
        (0, 1),
        "ns/a untouched, ns/b removed"
    );
    assert_eq!(restarted.dp.log, ["removed 198.19.0.2:80/TCP"]);
}
