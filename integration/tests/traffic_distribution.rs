//! `trafficDistribution` with real sockets, in both modes: PreferSameNode and
//! PreferSameZone as kube-proxy 1.35 applies them, from the hints the EndpointSlice
//! controller writes (`forNodes`, `forZones`), with the fallbacks to this zone and then to
//! every endpoint when nothing is hinted for this node or zone.
//!
//! The test's client namespace plays node-a, in zone-1: the agent runs there with
//! `--node-name node-a`, and node-a's Node object carries the zone label. Backends web-0,
//! web-1 and web-2 play pods on whichever node and zone an EndpointSlice says.

use std::time::{Duration, Instant};

use integration::{
    Agent, Topology,
    manifests::{Endpoint, HTTP, ServiceOpts, service_with_endpoints},
    scaled,
};

const NODE: &str = "node-a";
const ZONE: &str = "zone-1";
const VIP: &str = "198.19.0.10";

#[derive(Clone, Copy, Debug)]
enum Mode {
    Ebpf,
    Iptables,
}

struct Node {
    agent: Agent,
    t: Topology,
    mode: Mode,
}

impl Node {
    fn new(mode: Mode) -> Self {
        let t = Topology::new(3);
        t.route_service_range();
        let mut agent = Agent::new(&t);
        agent.mode = match mode {
            Mode::Ebpf => "ebpf",
            Mode::Iptables => "iptables",
        };
        agent.extra_args = vec!["--node-name".into(), NODE.into()];
        agent.write(
            "node.yaml",
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE}, labels: {{topology.kubernetes.io/zone: {ZONE}}}}}\n"
            ),
        );
        Self { agent, t, mode }
    }

    /// Writes demo/web with `trafficDistribution` and one endpoint per backend, web-i at
    /// `placed[i]` = (node, zone), hinted as the controller hints them: for its zone, and
    /// for its node too under PreferSameNode.
    fn serve(&mut self, distribution: &str, placed: &[(&'static str, &'static str)]) {
        let endpoints: Vec<Endpoint> = self
            .t
            .backends
            .iter()
            .zip(placed)
            .map(|(b, (node, zone))| Endpoint {
                node: Some(*node),
                zone_hints: std::slice::from_ref(zone),
                node_hints: if distribution == "PreferSameNode" {
                    std::slice::from_ref(node)
                } else {
                    &[]
                },
                ..Endpoint::ready(&b.ip, &b.name)
            })
            .collect();
        let spec = format!("  trafficDistribution: {distribution}\n");
        let opts = ServiceOpts {
            spec_extra: &spec,
            ..Default::default()
        };
        self.agent.write(
            "web.yaml",
            &service_with_endpoints("web", VIP, &[HTTP], &opts, &endpoints),
        );
        if !self.agent.running() {
            self.agent.start();
        }
    }

    /// The backends 60 connections to the ClusterIP reach; every one must succeed.
    fn reached(&self) -> Vec<String> {
        let report = self
            .t
            .probe(&["--to", &format!("{VIP}:80"), "--count", "60"]);
        assert!(
            report.errors.is_empty(),
            "{:?}: {report:?}\n{}",
            self.mode,
            self.agent.log()
        );
        report.answers.into_keys().collect()
    }

    /// Waits until connections reach exactly `expected` (the update applied), then
    /// checks that 60 more reach exactly those.
    fn assert_reaches(&self, expected: &[&str], why: &str) {
        self.agent.wait_backends("demo/web:http", expected.len());
        let start = Instant::now();
        while start.elapsed() < scaled(Duration::from_secs(10)) {
            let report = self
                .t
                .probe(&["--to", &format!("{VIP}:80"), "--count", "30"]);
            if report.errors.is_empty() && report.answers.keys().eq(expected.iter()) {
                assert_eq!(self.reached(), expected, "{:?}: {why}", self.mode);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{:?}: {why}: never reached exactly {expected:?}; last: {:?}\n{}",
            self.mode,
            self.reached(),
            self.agent.log()
        );
    }
}

fn prefer_same_node(mode: Mode) {
    let mut node = Node::new(mode);
    node.serve(
        "PreferSameNode",
        &[(NODE, ZONE), ("node-b", ZONE), ("node-c", "zone-2")],
    );
    node.assert_reaches(
        &["web-0"],
        "the endpoint on this node takes every connection",
    );

    // web-0 leaves this node: nothing is hinted for node-a, so the zone hints the
    // controller writes beside the node hints apply.
    node.serve(
        "PreferSameNode",
        &[("node-d", "zone-2"), ("node-b", ZONE), ("node-c", "zone-2")],
    );
    node.assert_reaches(&["web-1"], "no endpoint on this node: this zone's");

    // Nothing on this node nor in its zone: every endpoint.
    node.serve(
        "PreferSameNode",
        &[
            ("node-d", "zone-2"),
            ("node-b", "zone-2"),
            ("node-c", "zone-2"),
        ],
    );
    node.assert_reaches(
        &["web-0", "web-1", "web-2"],
        "no endpoint on this node or in its zone: all",
    );
}

fn prefer_same_zone(mode: Mode) {
    let mut node = Node::new(mode);
    // web-0 is on this node but that earns it nothing: the zone is what counts.
    node.serve(
        "PreferSameZone",
        &[(NODE, ZONE), ("node-b", ZONE), ("node-c", "zone-2")],
    );
    node.assert_reaches(&["web-0", "web-1"], "this zone's endpoints");

    // No endpoint in this zone: every endpoint.
    node.serve(
        "PreferSameZone",
        &[
            ("node-d", "zone-2"),
            ("node-b", "zone-3"),
            ("node-c", "zone-2"),
        ],
    );
    node.assert_reaches(
        &["web-0", "web-1", "web-2"],
        "no endpoint in this zone: all",
    );

    // PreferClose, the older name, is the same thing.
    node.serve(
        "PreferClose",
        &[("node-d", ZONE), ("node-b", "zone-3"), ("node-c", ZONE)],
    );
    node.assert_reaches(&["web-0", "web-2"], "PreferClose: this zone's endpoints");
}

macro_rules! in_both_modes {
    ($($scenario:ident),* $(,)?) => {
        in_both_modes!(@mode ebpf, Ebpf, $($scenario),*);
        in_both_modes!(@mode iptables, Iptables, $($scenario),*);
    };
    (@mode $module:ident, $mode:ident, $($scenario:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $scenario() {
                    integration::require_privileges!();
                    super::$scenario(super::Mode::$mode);
                }
            )*
        }
    };
}

in_both_modes!(prefer_same_node, prefer_same_zone);
