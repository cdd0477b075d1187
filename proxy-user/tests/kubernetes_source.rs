//! The Kubernetes source end to end, without a cluster: the real kube client and our
//! watchers against an in-process API server that speaks list/watch, feeding the real
//! syncer and an in-memory dataplane.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use proxy_user::{
    agent::{SyncEvent, SyncThread},
    dataplane::{ApplyReport, Change, Dataplane, memory::MemoryDataplane},
    model::{DesiredState, FrontendKind},
    source::{kubernetes, shared::Shared},
};
use serde_json::{Value, json};
use support::fake_apiserver::{FakeApiServer, Kind};

/// Publishes what is installed after every apply, for the test to look at.
struct Observed {
    inner: MemoryDataplane,
    seen: Arc<Mutex<DesiredState>>,
}

impl Dataplane for Observed {
    fn installed(&self) -> &DesiredState {
        self.inner.installed()
    }

    fn apply(&mut self, changes: Vec<Change>) -> ApplyReport {
        let report = self.inner.apply(changes);
        *self.seen.lock().expect("seen") = self.inner.installed().clone();
        report
    }
}

struct Agent {
    seen: Arc<Mutex<DesiredState>>,
    syncs: Arc<Mutex<usize>>,
    thread: Option<SyncThread>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            thread
                .stop()
                .expect("the in-memory dataplane always activates");
        }
    }
}

impl Agent {
    async fn start(api: &FakeApiServer, node: Option<&str>) -> Self {
        let config = kube::Config::new(api.url().parse().expect("url"));
        let client = kube::Client::try_from(config).expect("client");
        let node = node.map(str::to_owned);
        let shared: Arc<Shared> = Shared::new(node.clone(), kubernetes::sources(node.as_deref()));
        kubernetes::watch(client, shared.clone(), node);
        let seen = Arc::new(Mutex::new(DesiredState::new()));
        let syncs = Arc::new(Mutex::new(0));
        let dataplane = Observed {
            inner: MemoryDataplane::default(),
            seen: seen.clone(),
        };
        let (events, mut synced) = tokio::sync::mpsc::unbounded_channel();
        let thread =
            SyncThread::start(shared, Box::new(dataplane), events, || {}).expect("sync thread");
        let counter = syncs.clone();
        tokio::spawn(async move {
            while let Some(event) = synced.recv().await {
                if let SyncEvent::Synced(_) = event {
                    *counter.lock().expect("syncs") += 1;
                }
            }
        });
        Self {
            seen,
            syncs,
            thread: Some(thread),
        }
    }

    fn installed(&self) -> DesiredState {
        self.seen.lock().expect("seen").clone()
    }

    /// `service -> [backend ips]` for every installed frontend, as strings.
    fn summary(&self) -> Vec<String> {
        self.installed()
            .iter()
            .map(|(addr, spec)| {
                let backends: Vec<String> = spec
                    .backends
                    .iter()
                    .map(|b| b.addr.ip.to_string())
                    .collect();
                format!("{} {addr} [{}]", spec.service, backends.join(","))
            })
            .collect()
    }

    async fn wait_for(&self, what: &str, ready: impl Fn(&[String]) -> bool) {
        for _ in 0..1000 {
            if ready(&self.summary()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "timed out waiting for {what}; installed: {:?}",
            self.summary()
        );
    }
}

fn service(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

fn slice(service: &str, ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-1"), "namespace": "shop", "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "endpoints": endpoints})
}

fn count_lists(api: &FakeApiServer, path: &str) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.contains(path) && !r.contains("watch=true"))
        .count()
}

#[tokio::test]
async fn nothing_is_programmed_before_services_and_slices_are_listed() {
    let api = FakeApiServer::start().await;
    api.apply(service("web", "198.19.0.10"));
    api.apply(slice("web", &["198.18.1.2"]));
    api.hold(Kind::EndpointSlice);
    let agent = Agent::start(&api, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        agent.installed().is_empty(),
        "Services listed, EndpointSlices not yet: nothing programmed"
    );
    assert_eq!(
        *agent.syncs.lock().expect("syncs"),
        0,
        "requests: {:#?}\ninstalled: {:?}",
        api.requests(),
        agent.summary()
    );
    api.release(Kind::EndpointSlice);
    agent
        .wait_for("web with its endpoint", |s| {
            s == ["shop/web:http 198.19.0.10:80/TCP [198.18.1.2]"]
        })
        .await;
}

#[tokio::test]
async fn watch_events_are_applied() {
    let api = FakeApiServer::start().await;
    api.apply(service("web", "198.19.0.10"));
    let agent = Agent::start(&api, None).await;
    agent
        .wait_for("web without endpoints", |s| {
            s == ["shop/web:http 198.19.0.10:80/TCP []"]
        })
        .await;
    api.apply(slice("web", &["198.18.1.2"]));
    agent
        .wait_for("one endpoint", |s| {
            s == ["shop/web:http 198.19.0.10:80/TCP [198.18.1.2]"]
        })
        .await;
    api.apply(slice("web", &["198.18.1.2", "198.18.1.3"]));
    agent
        .wait_for("two endpoints", |s| {
            s == ["shop/web:http 198.19.0.10:80/TCP [198.18.1.2,198.18.1.3]"]
        })
        .await;
    api.delete(Kind::Service, "shop", "web");
    agent.wait_for("web gone", |s| s.is_empty()).await;
}

#[tokio::test]
async fn an_outage_keeps_the_state_and_the_relist_catches_deletions() {
    let mut api = FakeApiServer::start().await;
    api.apply(service("a", "198.19.0.1"));
    api.apply(service("b", "198.19.0.2"));
    api.apply(slice("a", &["198.18.1.2"]));
    let agent = Agent::start(&api, None).await;
    agent.wait_for("a and b", |s| s.len() == 2).await;
    let before = agent.summary();

    api.go_down();
    // Changes the agent cannot see: b deleted, a's endpoint replaced.
    api.delete(Kind::Service, "shop", "b");
    api.apply(slice("a", &["198.18.1.9"]));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        agent.summary(),
        before,
        "unreachable API server: installed state untouched"
    );

    // History is gone by the time it returns: the watch gets 410 and relists.
    api.compact();
    api.come_back().await;
    agent
        .wait_for("b removed and a updated after the relist", |s| {
            s == ["shop/a:http 198.19.0.1:80/TCP [198.18.1.9]"]
        })
        .await;
    assert!(
        count_lists(&api, "/api/v1/services") >= 2,
        "relisted: {:?}",
        api.requests()
    );
}

#[tokio::test]
async fn a_410_mid_watch_leads_to_a_relist_not_a_crash() {
    let api = FakeApiServer::start().await;
    api.apply(service("a", "198.19.0.1"));
    let agent = Agent::start(&api, None).await;
    agent.wait_for("a", |s| s.len() == 1).await;
    let lists = count_lists(&api, "/api/v1/services");
    api.compact(); // every open watch receives ERROR 410 Expired
    api.apply(service("c", "198.19.0.3"));
    agent.wait_for("c after the relist", |s| s.len() == 2).await;
    assert!(
        count_lists(&api, "/api/v1/services") > lists,
        "a relist followed the 410"
    );
    api.apply(service("d", "198.19.0.4"));
    agent
        .wait_for("d through the new watch", |s| s.len() == 3)
        .await;
}

#[tokio::test]
async fn dropped_watches_resume_from_their_resource_version() {
    let api = FakeApiServer::start().await;
    api.apply(service("a", "198.19.0.1"));
    let agent = Agent::start(&api, None).await;
    agent.wait_for("a", |s| s.len() == 1).await;
    api.bookmark();
    let lists = count_lists(&api, "/api/v1/services");
    api.drop_watches();
    api.apply(service("e", "198.19.0.5"));
    agent
        .wait_for("e, sent while no watch was open", |s| s.len() == 2)
        .await;
    assert_eq!(
        count_lists(&api, "/api/v1/services"),
        lists,
        "resumed from the resourceVersion without relisting"
    );
}

#[tokio::test]
async fn the_node_object_gives_node_ports_and_locality() {
    let api = FakeApiServer::start().await;
    api.apply(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.5"}]}}),
    );
    api.apply(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.7"}]}}),
    );
    let mut svc = service("web", "198.19.0.10");
    svc["spec"]["type"] = json!("NodePort");
    svc["spec"]["internalTrafficPolicy"] = json!("Local");
    svc["spec"]["ports"][0]["nodePort"] = json!(30080);
    api.apply(svc);
    let mut eps = slice("web", &["198.18.1.2", "198.18.1.3"]);
    eps["endpoints"][0]["nodeName"] = json!("node-a");
    eps["endpoints"][1]["nodeName"] = json!("node-b");
    api.apply(eps);
    let agent = Agent::start(&api, Some("node-a")).await;
    agent
        .wait_for("ClusterIP with the local endpoint and the NodePort", |s| {
            s == [
                "shop/web:http 127.0.0.1:30080/TCP [198.18.1.2,198.18.1.3]",
                "shop/web:http 198.18.0.5:30080/TCP [198.18.1.2,198.18.1.3]",
                "shop/web:http 198.19.0.10:80/TCP [198.18.1.2]",
            ]
        })
        .await;
    let installed = agent.installed();
    assert!(installed.values().any(|s| s.kind == FrontendKind::NodePort));
    assert!(
        api.requests()
            .iter()
            .any(|r| r.contains("/api/v1/nodes") && r.contains("node-a")),
        "watches only its own Node"
    );
    // The node's address changes: the NodePort frontend moves.
    api.apply(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.6"}]}}),
    );
    agent
        .wait_for("NodePort on the new address", |s| {
            s.iter().any(|l| l.contains("198.18.0.6:30080"))
        })
        .await;
    assert!(!agent.summary().iter().any(|l| l.contains("198.18.0.5")));
}

/// trafficDistribution as the API server delivers it: the EndpointSlice controller's
/// `hints.forNodes` and `hints.forZones`, and the zone from this node's Node object.
#[tokio::test]
async fn topology_hints_prefer_this_node_then_its_zone() {
    let api = FakeApiServer::start().await;
    api.apply(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a",
        "labels": {"topology.kubernetes.io/zone": "zone-1"}}}),
    );
    let mut svc = service("web", "198.19.0.10");
    svc["spec"]["trafficDistribution"] = json!("PreferSameNode");
    api.apply(svc);
    // As the controller writes them for PreferSameNode: each endpoint hinted for its own
    // node and zone.
    let hinted = |node: &str, zone: &str| json!({"forNodes": [{"name": node}], "forZones": [{"name": zone}]});
    let mut eps = slice("web", &["198.18.1.2", "198.18.1.3", "198.18.1.4"]);
    eps["endpoints"][0]["hints"] = hinted("node-a", "zone-1");
    eps["endpoints"][1]["hints"] = hinted("node-b", "zone-1");
    eps["endpoints"][2]["hints"] = hinted("node-c", "zone-2");
    api.apply(eps.clone());
    let agent = Agent::start(&api, Some("node-a")).await;
    agent
        .wait_for("this node's endpoint alone", |s| {
            s == ["shop/web:http 198.19.0.10:80/TCP [198.18.1.2]"]
        })
        .await;

    // No endpoint on this node any more: its zone's.
    eps["endpoints"][0]["hints"] = hinted("node-d", "zone-2");
    api.apply(eps.clone());
    agent
        .wait_for("this zone's endpoint", |s| {
            s == ["shop/web:http 198.19.0.10:80/TCP [198.18.1.3]"]
        })
        .await;

    // Nor in its zone: every endpoint.
    eps["endpoints"][1]["hints"] = hinted("node-b", "zone-2");
    api.apply(eps);
    agent
        .wait_for("every endpoint", |s| {
            s == ["shop/web:http 198.19.0.10:80/TCP [198.18.1.2,198.18.1.3,198.18.1.4]"]
        })
        .await;
}
