//! Topology hints (trafficDistribution PreferSameNode, PreferSameZone, PreferClose), from
//! YAML as a user would write it, checked against kube-proxy's own vectors: the cases of
//! `TestCategorizeEndpoints` in pkg/proxy/topology_test.go, named as kube-proxy names
//! them. Addresses are renumbered into 198.18.0.0/15 (kube-proxy's `10.1.2.N` is
//! `198.18.2.N`, its `10.0.0.N` is `198.18.0.N`); the facts carry over.

use std::fmt::Write as _;

use super::tests::{objects, translate};
use super::*;

/// One endpoint of a vector.
struct Ep {
    ip: &'static str,
    /// kube-proxy's `IsLocal`: on the node the case runs on.
    local: bool,
    ready: bool,
    serving: bool,
    terminating: bool,
    zones: &'static [&'static str],
    nodes: &'static [&'static str],
}

/// A ready endpoint elsewhere, hinted for `zones` and `nodes`.
const fn ready(
    ip: &'static str,
    zones: &'static [&'static str],
    nodes: &'static [&'static str],
) -> Ep {
    Ep {
        ip,
        local: false,
        ready: true,
        serving: true,
        terminating: false,
        zones,
        nodes,
    }
}

impl Ep {
    const fn local(self) -> Self {
        Self {
            local: true,
            ..self
        }
    }

    const fn unready(self) -> Self {
        Self {
            ready: false,
            ..self
        }
    }

    const fn serving_terminating(self) -> Self {
        Self {
            ready: false,
            serving: true,
            terminating: true,
            ..self
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Policy {
    Cluster,
    /// internalTrafficPolicy Local.
    InternalLocal,
    /// externalTrafficPolicy Local.
    ExternalLocal,
}

struct Case {
    /// kube-proxy's name for the case.
    name: &'static str,
    node: &'static str,
    /// The node's `topology.kubernetes.io/zone` label.
    zone: Option<&'static str>,
    policy: Policy,
    endpoints: &'static [Ep],
    /// kube-proxy's `clusterEndpoints`: what cluster-wide traffic reaches.
    cluster: &'static [&'static str],
    /// kube-proxy's `localEndpoints`, for a case with a Local policy.
    local: &'static [&'static str],
}

const fn case(
    name: &'static str,
    zone: &'static str,
    endpoints: &'static [Ep],
    cluster: &'static [&'static str],
) -> Case {
    Case {
        name,
        node: "node-a",
        zone: Some(zone),
        policy: Policy::Cluster,
        endpoints,
        cluster,
        local: &[],
    }
}

const A: &[&str] = &["zone-a"];
const B: &[&str] = &["zone-b"];
const C: &[&str] = &["zone-c"];
const NONE: &[&str] = &[];

/// The four endpoints most of kube-proxy's zone cases share.
const ZONES_ABCA: &[Ep] = &[
    ready("198.18.2.3", A, NONE),
    ready("198.18.2.4", B, NONE),
    ready("198.18.2.5", C, NONE),
    ready("198.18.2.6", A, NONE),
];

/// The four endpoints of kube-proxy's PreferSameNode cases: node hints beside zone hints,
/// as the EndpointSlice controller writes them for `trafficDistribution: PreferSameNode`.
const NODES_1234: &[Ep] = &[
    ready("198.18.2.3", A, &["node-1"]),
    ready("198.18.2.4", B, &["node-2"]),
    ready("198.18.2.5", C, &["node-3"]),
    ready("198.18.2.6", A, &["node-4"]),
];

const KUBE_PROXY_CASES: &[Case] = &[
    case(
        "normal endpoint filtering",
        "zone-a",
        ZONES_ABCA,
        &["198.18.2.3", "198.18.2.6"],
    ),
    Case {
        policy: Policy::ExternalLocal,
        endpoints: &[
            ready("198.18.2.3", A, NONE).local(),
            ready("198.18.2.4", B, NONE).local(),
            ready("198.18.2.5", C, NONE),
            ready("198.18.2.6", A, NONE),
        ],
        local: &["198.18.2.3", "198.18.2.4"],
        ..case(
            "externalTrafficPolicy: Local, topology ignored for Local endpoints",
            "zone-a",
            &[],
            &["198.18.2.3", "198.18.2.6"],
        )
    },
    Case {
        policy: Policy::InternalLocal,
        endpoints: &[
            ready("198.18.2.3", A, NONE).local(),
            ready("198.18.2.4", B, NONE).local(),
            ready("198.18.2.5", C, NONE),
            ready("198.18.2.6", A, NONE),
        ],
        local: &["198.18.2.3", "198.18.2.4"],
        ..case(
            "internalTrafficPolicy: Local, topology ignored for Local endpoints",
            "zone-a",
            &[],
            &["198.18.2.3", "198.18.2.6"],
        )
    },
    Case {
        zone: None,
        ..case(
            "empty node labels",
            "",
            &[ready("198.18.2.3", A, NONE)],
            &["198.18.2.3"],
        )
    },
    case(
        "empty zone label",
        "",
        &[ready("198.18.2.3", A, NONE)],
        &["198.18.2.3"],
    ),
    case(
        "node in different zone, no endpoint filtering",
        "zone-b",
        &[ready("198.18.2.3", A, NONE), ready("198.18.2.5", C, NONE)],
        &["198.18.2.3", "198.18.2.5"],
    ),
    case(
        "unready endpoint",
        "zone-a",
        &[
            ready("198.18.2.3", A, NONE),
            ready("198.18.2.4", B, NONE),
            ready("198.18.2.5", C, NONE),
            ready("198.18.2.6", A, NONE).unready(),
        ],
        &["198.18.2.3"],
    ),
    case(
        "only unready endpoints in same zone (should not filter)",
        "zone-a",
        &[
            ready("198.18.2.3", A, NONE).unready(),
            ready("198.18.2.4", B, NONE),
            ready("198.18.2.5", C, NONE),
            ready("198.18.2.6", A, NONE).unready(),
        ],
        &["198.18.2.4", "198.18.2.5"],
    ),
    case(
        "missing hints, no filtering applied",
        "zone-a",
        &[
            ready("198.18.2.3", A, NONE),
            ready("198.18.2.4", B, NONE),
            ready("198.18.2.5", NONE, NONE),
            ready("198.18.2.6", A, NONE),
        ],
        &["198.18.2.3", "198.18.2.4", "198.18.2.5", "198.18.2.6"],
    ),
    case(
        "multiple hints per endpoint, filtering includes any endpoint with zone included",
        "zone-c",
        &[
            ready("198.18.2.3", &["zone-a", "zone-b", "zone-c"], NONE),
            ready("198.18.2.4", &["zone-b", "zone-c"], NONE),
            ready("198.18.2.5", &["zone-b", "zone-d"], NONE),
            ready("198.18.2.6", C, NONE),
        ],
        &["198.18.2.3", "198.18.2.4", "198.18.2.6"],
    ),
    Case {
        policy: Policy::ExternalLocal,
        endpoints: &[
            ready("198.18.0.10", A, NONE).local(),
            ready("198.18.0.11", B, NONE).local(),
            ready("198.18.0.12", A, NONE),
            ready("198.18.0.13", B, NONE),
        ],
        local: &["198.18.0.10", "198.18.0.11"],
        ..case(
            "conflicting topology and localness require merging allEndpoints",
            "zone-a",
            &[],
            &["198.18.0.10", "198.18.0.12"],
        )
    },
    Case {
        node: "node-1",
        ..case(
            "PreferSameNode available",
            "zone-a",
            NODES_1234,
            &["198.18.2.3"],
        )
    },
    Case {
        node: "node-1",
        ..case(
            "PreferSameNode ignored if some endpoints unhinted",
            "zone-a",
            &[
                ready("198.18.2.3", A, &["node-1"]),
                ready("198.18.2.4", NONE, NONE),
                ready("198.18.2.5", C, &["node-3"]),
                ready("198.18.2.6", A, &["node-4"]),
            ],
            &["198.18.2.3", "198.18.2.4", "198.18.2.5", "198.18.2.6"],
        )
    },
    Case {
        node: "node-0",
        ..case(
            "PreferSameNode falls back to PreferSameZone if no endpoint for node",
            "zone-a",
            NODES_1234,
            &["198.18.2.3", "198.18.2.6"],
        )
    },
    // "PreferSameNode falls back to same-zone when feature gate disabled": not a case in
    // 1.35, where PreferSameTrafficDistribution is GA and always on.
    case(
        "Cluster traffic policy, all endpoints are terminating",
        "zone-a",
        &[
            ready("198.18.0.10", NONE, NONE).serving_terminating(),
            ready("198.18.0.11", NONE, NONE).serving_terminating(),
        ],
        &["198.18.0.10", "198.18.0.11"],
    ),
];

/// Service shop/web (NodePort 30080, the case's traffic policy) and one slice of the
/// case's endpoints; `spec_extra` and `meta_extra` add lines to the Service.
fn yaml(case: &Case, meta_extra: &str, spec_extra: &str) -> String {
    let policy = match case.policy {
        Policy::Cluster => "",
        Policy::InternalLocal => "  internalTrafficPolicy: Local\n",
        Policy::ExternalLocal => "  externalTrafficPolicy: Local\n",
    };
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n{meta_extra}spec:\n  type: NodePort\n  clusterIP: 198.19.0.10\n  ports: [{{name: http, port: 80, nodePort: 30080}}]\n{policy}{spec_extra}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n"
    );
    let names = |list: &[&str]| {
        list.iter()
            .map(|n| format!("{{name: \"{n}\"}}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for e in case.endpoints {
        let node = if e.local { case.node } else { "node-elsewhere" };
        let _ = write!(
            y,
            "- addresses: [{}]\n  nodeName: {node}\n  conditions: {{ready: {}, serving: {}, terminating: {}}}\n",
            e.ip, e.ready, e.serving, e.terminating
        );
        if !e.zones.is_empty() || !e.nodes.is_empty() {
            let _ = writeln!(
                y,
                "  hints: {{forZones: [{}], forNodes: [{}]}}",
                names(e.zones),
                names(e.nodes)
            );
        }
    }
    y
}

fn node_of(case: &Case) -> NodeContext {
    NodeContext {
        name: Some(case.node.to_owned()),
        zone: case.zone.map(str::to_owned),
        addresses: vec!["198.18.0.5".parse().expect("ip")],
        localhost_node_ports: false,
    }
}

/// (cluster, local) backends as kube-proxy's vectors state them: cluster-wide traffic is
/// what the NodePort serves to sockets on the node; a Local policy's endpoints are what
/// the ClusterIP serves (internalTrafficPolicy) or outside traffic to the NodePort reaches
/// (externalTrafficPolicy).
fn chosen(case: &Case, yaml: &str) -> (Vec<String>, Vec<String>) {
    let out = translate(&objects(yaml), &node_of(case))
        .into_values()
        .next()
        .expect("translated")
        .expect("valid");
    assert!(out.warnings.is_empty(), "{}: {:?}", case.name, out.warnings);
    let of = |kind| {
        out.frontends
            .iter()
            .find(|(_, s)| s.kind == kind)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| panic!("{}: no {kind:?} frontend", case.name))
    };
    let ips = |backends: &[WeightedBackend]| -> Vec<String> {
        backends.iter().map(|b| b.addr.ip.to_string()).collect()
    };
    let node_port = of(FrontendKind::NodePort);
    let local = match case.policy {
        Policy::Cluster => Vec::new(),
        Policy::InternalLocal => ips(&of(FrontendKind::ClusterIp).backends),
        Policy::ExternalLocal => ips(node_port.external_local.as_deref().unwrap_or_default()),
    };
    (ips(&node_port.backends), local)
}

#[test]
fn kube_proxys_topology_vectors() {
    for case in KUBE_PROXY_CASES {
        let (cluster, local) = chosen(case, &yaml(case, "", ""));
        assert_eq!(cluster, case.cluster, "{}: cluster endpoints", case.name);
        assert_eq!(local, case.local, "{}: local endpoints", case.name);
    }
}

/// kube-proxy reads the hints, not the Service: the EndpointSlice controller writes them
/// from `trafficDistribution` (and from the `topology-mode` annotation, which kube-proxy
/// itself stopped reading in 1.31). So PreferClose is PreferSameZone, and a Service that
/// asks for PreferSameNode but whose slices carry no hints (the controller has not
/// written them yet) uses every endpoint.
#[test]
fn the_hints_decide_not_the_services_fields() {
    let zones = case("zones", "zone-a", ZONES_ABCA, &["198.18.2.3", "198.18.2.6"]);
    for spec in [
        "",
        "  trafficDistribution: PreferClose\n",
        "  trafficDistribution: PreferSameZone\n",
        "  trafficDistribution: PreferSameNode\n",
    ] {
        for meta in [
            "",
            "  annotations: {service.kubernetes.io/topology-mode: Disabled}\n",
        ] {
            let (cluster, _) = chosen(&zones, &yaml(&zones, meta, spec));
            assert_eq!(cluster, zones.cluster, "{spec} {meta}");
        }
    }
    const UNHINTED: &[Ep] = &[
        ready("198.18.2.3", NONE, NONE),
        ready("198.18.2.4", NONE, NONE),
    ];
    let prefer_node = Case {
        node: "node-1",
        ..case(
            "no hints",
            "zone-a",
            UNHINTED,
            &["198.18.2.3", "198.18.2.4"],
        )
    };
    let (cluster, _) = chosen(
        &prefer_node,
        &yaml(&prefer_node, "", "  trafficDistribution: PreferSameNode\n"),
    );
    assert_eq!(cluster, prefer_node.cluster);
}

/// The same rules for endpoints hinted for nodes: an unready endpoint hinted for this node
/// does not count, and the serving-terminating fallback ignores hints.
#[test]
fn node_hints_count_only_ready_endpoints() {
    const UNREADY_HERE: &[Ep] = &[
        ready("198.18.2.3", A, &["node-1"]).unready(),
        ready("198.18.2.4", B, &["node-2"]),
        ready("198.18.2.5", A, &["node-3"]),
    ];
    const TERMINATING: &[Ep] = &[
        ready("198.18.2.3", A, &["node-1"]).serving_terminating(),
        ready("198.18.2.4", B, &["node-2"]).serving_terminating(),
    ];
    let unready_here = Case {
        node: "node-1",
        ..case(
            "only an unready endpoint for this node",
            "zone-a",
            UNREADY_HERE,
            &["198.18.2.5"],
        )
    };
    let terminating = Case {
        node: "node-1",
        ..case(
            "nothing ready: every serving-terminating endpoint",
            "zone-a",
            TERMINATING,
            &["198.18.2.3", "198.18.2.4"],
        )
    };
    for case in [unready_here, terminating] {
        let (cluster, _) = chosen(&case, &yaml(&case, "", ""));
        assert_eq!(cluster, case.cluster, "{}", case.name);
    }
}

/// An agent started without `--node-name` matches no node hint: zone hints, if they
/// apply, else every endpoint.
#[test]
fn without_a_node_name_node_hints_never_apply() {
    let nameless = case(
        "no node name",
        "zone-a",
        NODES_1234,
        &["198.18.2.3", "198.18.2.6"],
    );
    let node = NodeContext {
        name: None,
        ..node_of(&nameless)
    };
    let out = translate(&objects(&yaml(&nameless, "", "")), &node)
        .into_values()
        .next()
        .expect("translated")
        .expect("valid");
    let (_, cluster_ip) = out
        .frontends
        .iter()
        .find(|(_, s)| s.kind == FrontendKind::ClusterIp)
        .expect("a ClusterIP frontend");
    let ips: Vec<String> = cluster_ip
        .backends
        .iter()
        .map(|b| b.addr.ip.to_string())
        .collect();
    assert_eq!(ips, nameless.cluster);
}
