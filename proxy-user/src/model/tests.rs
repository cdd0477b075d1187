//! Translation of Services and EndpointSlices, from YAML as a user would write it.

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use super::*;
use crate::source::{
    ObjectSet,
    manifest::{Parsed, parse_documents},
    store::ObjectStore,
};

/// Translates every Service the way the syncer does: through the store, whose index finds
/// each Service's slices.
pub(super) fn translate(
    objects: &ObjectSet,
    node: &NodeContext,
) -> BTreeMap<ObjectRef, Result<ServiceFrontends, Rejection>> {
    let mut store = ObjectStore::new(node.name.clone());
    store.replace_all(objects.clone());
    store
        .service_keys()
        .filter_map(|key| {
            let service = store.service(key)?;
            translate_service(key, service, &store.slices(key), node).map(|r| (key.clone(), r))
        })
        .collect()
}

pub(super) fn objects(yaml: &str) -> ObjectSet {
    crate::source::manifest::object_set(yaml)
}

pub(super) fn one(yaml: &str) -> Result<ServiceFrontends, Rejection> {
    let t = translate(&objects(yaml), &NodeContext::default());
    assert!(t.len() <= 1, "{t:?}");
    t.into_values().next().expect("the service is translated")
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

const SLICE: &str = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- {addresses: [198.18.1.2], targetRef: {name: web-0}, conditions: {ready: true}}
- {addresses: [198.18.1.3], targetRef: {name: web-1}, conditions: {ready: true}}
- {addresses: [198.18.1.4], targetRef: {name: web-2}, conditions: {ready: false, serving: true, terminating: true}}
";

fn service(extra_meta: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n{extra_meta}spec:\n{spec}---\n{SLICE}"
    )
}

const PORTS: &str = "  clusterIP: 198.19.0.10\n  ports:\n  - {name: http, port: 80, targetPort: web, protocol: TCP}\n  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}\n";

#[test]
fn ports_named_target_ports_and_ready_endpoints() {
    let out = one(&service("", PORTS)).expect("valid");
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    let (addr, spec) = &out.frontends[0];
    assert_eq!(
        *addr,
        FrontendAddr {
            ip: ip("198.19.0.10"),
            port: 80,
            protocol: Protocol::Tcp
        }
    );
    assert_eq!(&*spec.service, "shop/web:http");
    // The named targetPort `web` is resolved by the slice port of the same name: 8080.
    let backends: Vec<String> = spec.backends.iter().map(|b| b.addr.to_string()).collect();
    assert_eq!(
        backends,
        ["198.18.1.2:8080", "198.18.1.3:8080"],
        "the terminating endpoint is not used while others are ready"
    );
    let (addr, spec) = &out.frontends[1];
    assert_eq!((addr.port, addr.protocol), (53, Protocol::Udp));
    assert_eq!(spec.backends[0].addr.port, 5353);
    assert_eq!(spec.affinity_timeout_s, 0);
}

/// A UDP port keeps the endpoint that serves while terminating, weight 0, for the flows
/// already on it (kube-proxy leaves their conntrack entries); a TCP port does not list it.
#[test]
fn a_udp_port_keeps_its_serving_terminating_endpoint_for_existing_flows() {
    let out = one(&service("", PORTS)).expect("valid");
    let listed = |i: usize| -> Vec<(String, u32, bool)> {
        out.frontends[i]
            .1
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.weight, b.flows_only))
            .collect()
    };
    assert_eq!(
        listed(1),
        [
            ("198.18.1.2:5353".into(), 1, false),
            ("198.18.1.3:5353".into(), 1, false),
            ("198.18.1.4:5353".into(), 0, true),
        ]
    );
    assert_eq!(listed(0).len(), 2, "TCP: {:?}", listed(0));
    // No longer serving: gone from the list.
    let not_serving = service("", PORTS).replace(
        "{ready: false, serving: true, terminating: true}",
        "{ready: false, serving: false, terminating: true}",
    );
    let out = one(&not_serving).expect("valid");
    assert_eq!(out.frontends[1].1.backends.len(), 2);
    // Drained with weight 0 by the annotation: its flows go too.
    let drained = service(
        "  annotations: {ebpf-proxy.dev/weights: \"web-2=0\"}\n",
        PORTS,
    );
    let out = one(&drained).expect("valid");
    assert!(
        out.frontends[1].1.backends.iter().all(|b| !b.flows_only),
        "{:?}",
        out.frontends[1].1.backends
    );
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    let yaml = service("", PORTS).replace(
        "conditions: {ready: true}",
        "conditions: {ready: false, serving: false, terminating: true}",
    );
    let out = one(&yaml).expect("valid");
    let backends: Vec<String> = out.frontends[0]
        .1
        .backends
        .iter()
        .map(|b| b.addr.to_string())
        .collect();
    assert_eq!(
        backends,
        ["198.18.1.4:8080"],
        "only the serving+terminating endpoint"
    );
    let none = yaml.replace(
        "{ready: false, serving: true, terminating: true}",
        "{ready: false, serving: false, terminating: true}",
    );
    assert!(
        one(&none).expect("valid").frontends[0]
            .1
            .backends
            .is_empty(),
        "no usable endpoint: refuse"
    );
}

#[test]
fn endpoints_across_slices_are_merged_and_deduplicated() {
    let second = SLICE
        .replace("name: web-1,", "name: web-2,")
        .replace("198.18.1.2", "198.18.1.9");
    let yaml = format!("{}---\n{second}", service("", PORTS));
    let out = one(&yaml).expect("valid");
    let backends: Vec<String> = out.frontends[0]
        .1
        .backends
        .iter()
        .map(|b| b.addr.ip.to_string())
        .collect();
    assert_eq!(backends, ["198.18.1.2", "198.18.1.3", "198.18.1.9"]);
}

#[test]
fn weights_by_pod_name_or_ip() {
    let meta = "  annotations: {ebpf-proxy.dev/weights: \"web-0=3,198.18.1.3=0\"}\n";
    let out = one(&service(meta, PORTS)).expect("valid");
    let weights: Vec<u32> = out.frontends[0]
        .1
        .backends
        .iter()
        .map(|b| b.weight)
        .collect();
    assert_eq!(weights, [3, 0]);
    assert_eq!(out.frontends[0].1.usable().count(), 1);
}

#[test]
fn malformed_weights_fall_back_to_equal_weights_with_a_warning() {
    let meta = "  annotations: {ebpf-proxy.dev/weights: \"web-0=three\"}\n";
    let out = one(&service(meta, PORTS)).expect("a bad annotation is never fatal");
    assert!(out.frontends[0].1.backends.iter().all(|b| b.weight == 1));
    assert_eq!(out.warnings.len(), 1);
    assert_eq!(
        out.warnings[0].to_string(),
        "Service shop/web: annotation ebpf-proxy.dev/weights is malformed (weight \"three\" of \"web-0\" is not a whole number); using equal weights"
    );
}

#[test]
fn client_ip_affinity_timeouts() {
    let with = |cfg: &str| {
        one(&service(
            "",
            &format!("{PORTS}  sessionAffinity: ClientIP\n{cfg}"),
        ))
    };
    assert_eq!(
        with("").expect("valid").frontends[0].1.affinity_timeout_s,
        10_800,
        "kube-proxy's default"
    );
    let custom = with("  sessionAffinityConfig: {clientIP: {timeoutSeconds: 2}}\n").expect("valid");
    assert_eq!(custom.frontends[0].1.affinity_timeout_s, 2);
    let bad = with("  sessionAffinityConfig: {clientIP: {timeoutSeconds: 90000}}\n")
        .expect_err("out of range");
    assert_eq!(
        bad.to_string(),
        "Service shop/web: sessionAffinityConfig.clientIP.timeoutSeconds 90000 is outside 1..=86400"
    );
}

#[test]
fn services_that_are_not_ours_are_ignored() {
    for (meta, spec) in [
        ("", "  clusterIP: None\n  ports: [{name: http, port: 80}]\n"),
        ("", "  type: ExternalName\n  externalName: example.org\n"),
        (
            "  labels: {service.kubernetes.io/service-proxy-name: other}\n",
            PORTS,
        ),
    ] {
        assert!(
            translate(&objects(&service(meta, spec)), &NodeContext::default()).is_empty(),
            "{meta}{spec}"
        );
    }
}

#[test]
fn bad_objects_are_rejected_with_the_object_and_the_reason() {
    let cases = [
        (
            "  clusterIP: 198.19.0.300\n  ports: [{port: 80}]\n",
            "Service shop/web: clusterIP \"198.19.0.300\" is not an IP address",
        ),
        (
            "  ports: [{port: 80}]\n",
            "Service shop/web: has no clusterIP yet",
        ),
    ];
    for (spec, message) in cases {
        assert_eq!(
            one(&service("", spec)).expect_err(spec).to_string(),
            message
        );
    }
}

#[test]
fn unusable_ports_are_skipped_and_the_rest_served() {
    let spec = "  clusterIP: 198.19.0.10\n  ports:\n  - {name: sctp, port: 9, protocol: SCTP}\n  - {name: http, port: 80, targetPort: 8080}\n  - {name: big, port: 70000}\n";
    let out = one(&service("", spec)).expect("valid");
    assert_eq!(out.frontends.len(), 1);
    let warnings: Vec<String> = out.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "Service shop/web port sctp: protocol SCTP is not supported; port skipped",
            "Service shop/web port big: port 70000 is out of range; port skipped",
        ]
    );
}

#[test]
fn invalid_endpoint_addresses_are_skipped_and_named() {
    let yaml = service("", PORTS).replace("[198.18.1.3]", "[not-an-ip]");
    let out = one(&yaml).expect("valid");
    assert_eq!(out.frontends[0].1.backends.len(), 1);
    assert!(out.warnings.iter().any(|w| w.to_string() == "EndpointSlice shop/web-1: endpoint address \"not-an-ip\" is not an IPv4 address; endpoint skipped"), "{:?}", out.warnings);
}

// ---- Frontends beyond the ClusterIP, traffic policies and topology ----

pub(super) fn node(zone: Option<&str>) -> NodeContext {
    let zone_label = zone
        .map(|z| format!("  labels: {{topology.kubernetes.io/zone: {z}}}\n"))
        .unwrap_or_default();
    let yaml = format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n{zone_label}status:\n  addresses:\n  - {{type: InternalIP, address: 198.18.0.5}}\n  - {{type: ExternalIP, address: 198.18.0.6}}\n  - {{type: InternalIP, address: \"2001:db8::5\"}}\n  - {{type: Hostname, address: node-a}}\n"
    );
    let parsed = parse_documents(Path::new("node.yaml"), &yaml).expect("parses");
    let Some(Parsed::Node(n)) = parsed.into_iter().next() else {
        panic!("a Node")
    };
    NodeContext::new(Some("node-a"), Some(&n.input))
}

/// Two endpoints on node-a (one terminating), one on node-b.
const NODES_SLICE: &str = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [198.18.1.2], nodeName: node-a, conditions: {ready: true}, hints: {forZones: [{name: z1}]}}
- {addresses: [198.18.1.3], nodeName: node-b, conditions: {ready: true}, hints: {forZones: [{name: z2}]}}
- {addresses: [198.18.1.4], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
";

pub(super) fn frontends_on(yaml: &str, node: &NodeContext) -> Vec<(FrontendAddr, FrontendSpec)> {
    let set = objects(yaml);
    let t = translate(&set, node);
    let out = t.into_values().next().expect("translated").expect("valid");
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    out.frontends
}

fn web(spec: &str, slice: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  clusterIP: 198.19.0.10\n  ports: [{{name: http, port: 80, nodePort: 30080}}]\n{spec}---\n{slice}"
    )
}

pub(super) fn ips(spec: &FrontendSpec) -> Vec<String> {
    spec.backends
        .iter()
        .map(|b| b.addr.ip.to_string())
        .collect()
}

#[test]
fn node_ports_are_served_on_the_node_addresses() {
    let frontends = frontends_on(&web("  type: NodePort\n", NODES_SLICE), &node(None));
    let shown: Vec<String> = frontends
        .iter()
        .map(|(a, s)| format!("{a} {}", s.kind.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            "198.19.0.10:80/TCP ClusterIP",
            "198.18.0.5:30080/TCP NodePort",
            "198.18.0.6:30080/TCP NodePort",
            "127.0.0.1:30080/TCP NodePort"
        ],
        "the node's addresses, and 127.0.0.1 for the node's own sockets (kube-proxy's \
         localhost NodePorts)"
    );
    assert_eq!(ips(&frontends[1].1), ["198.18.1.2", "198.18.1.3"]);
    // A ClusterIP Service ignores a stray nodePort.
    assert_eq!(frontends_on(&web("", NODES_SLICE), &node(None)).len(), 1);
    // `--localhost-nodeports false`: the node's addresses only.
    let without_localhost = NodeContext {
        localhost_node_ports: false,
        ..node(None)
    };
    let frontends = frontends_on(&web("  type: NodePort\n", NODES_SLICE), &without_localhost);
    assert!(
        frontends.iter().all(|(a, _)| !a.ip.is_loopback()),
        "{frontends:?}"
    );
    assert_eq!(frontends.len(), 3);
}

#[test]
fn external_ips_and_load_balancer_ingress() {
    let yaml = web(
        "  type: LoadBalancer\n  externalIPs: [198.19.1.1]\nstatus:\n  loadBalancer:\n    ingress:\n    - {ip: 198.19.2.1}\n    - {ip: 198.19.2.2, ipMode: Proxy}\n    - {hostname: lb.example.org}\n",
        NODES_SLICE,
    );
    let frontends = frontends_on(&yaml, &NodeContext::default());
    let shown: Vec<String> = frontends
        .iter()
        .map(|(a, s)| format!("{a} {}", s.kind.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            "198.19.0.10:80/TCP ClusterIP",
            "198.19.1.1:80/TCP ExternalIP",
            "198.19.2.1:80/TCP LoadBalancer",
            "127.0.0.1:30080/TCP NodePort"
        ],
        "ipMode Proxy and hostnames are left to the load balancer; no node addresses, so the \
         NodePort only on 127.0.0.1"
    );
}

#[test]
fn bad_external_ips_are_named() {
    let set = objects(&web("  externalIPs: [bogus]\n", NODES_SLICE));
    let out = translate(&set, &NodeContext::default())
        .into_values()
        .next()
        .expect("t")
        .expect("valid");
    assert_eq!(
        out.warnings[0].to_string(),
        "Service shop/web: externalIP \"bogus\" is not an IP address; skipped"
    );
}

#[test]
fn internal_traffic_policy_local_uses_this_nodes_endpoints() {
    let frontends = frontends_on(
        &web(
            "  type: NodePort\n  internalTrafficPolicy: Local\n",
            NODES_SLICE,
        ),
        &node(None),
    );
    let (_, clusterip) = &frontends[0];
    assert!(clusterip.local_only);
    assert_eq!(ips(clusterip), ["198.18.1.2"], "ready and local");
    // NodePort traffic from this node's sockets is not internal traffic: all endpoints.
    assert!(!frontends[1].1.local_only);
    assert_eq!(ips(&frontends[1].1), ["198.18.1.2", "198.18.1.3"]);
}

#[test]
fn local_policy_falls_back_to_local_terminating_then_drops() {
    let not_ready = NODES_SLICE.replacen(
        "nodeName: node-a, conditions: {ready: true}",
        "nodeName: node-a, conditions: {ready: false, serving: false}",
        1,
    );
    let frontends = frontends_on(
        &web("  internalTrafficPolicy: Local\n", &not_ready),
        &node(None),
    );
    assert_eq!(
        ips(&frontends[0].1),
        ["198.18.1.4"],
        "the local serving-terminating endpoint"
    );
    let none_local = not_ready.replace(
        "node-a, conditions: {ready: false, serving: true",
        "node-b, conditions: {ready: false, serving: true",
    );
    let frontends = frontends_on(
        &web("  internalTrafficPolicy: Local\n", &none_local),
        &node(None),
    );
    assert!(
        frontends[0].1.backends.is_empty() && frontends[0].1.local_only,
        "no local endpoint: dropped"
    );
}

#[test]
fn external_traffic_policy_local_does_not_narrow_socket_traffic() {
    let frontends = frontends_on(
        &web(
            "  type: NodePort\n  externalTrafficPolicy: Local\n",
            NODES_SLICE,
        ),
        &node(None),
    );
    assert!(
        frontends
            .iter()
            .all(|(_, s)| ips(s) == ["198.18.1.2", "198.18.1.3"] && !s.local_only)
    );
    // Traffic from outside the node (tc, or PREROUTING in iptables mode) is narrowed.
    for (addr, spec) in &frontends {
        let outside: Option<Vec<String>> = spec
            .external_local
            .as_ref()
            .map(|b| b.iter().map(|b| b.addr.ip.to_string()).collect());
        match spec.kind {
            FrontendKind::ClusterIp => assert_eq!(outside, None, "{addr}"),
            _ => assert_eq!(outside, Some(vec!["198.18.1.2".to_string()]), "{addr}"),
        }
    }
    let cluster_policy = frontends_on(&web("  type: NodePort\n", NODES_SLICE), &node(None));
    assert!(
        cluster_policy
            .iter()
            .all(|(_, s)| s.external_local.is_none())
    );
}

#[test]
fn topology_hints_narrow_to_the_nodes_zone_when_every_endpoint_has_them() {
    let frontends = frontends_on(&web("", NODES_SLICE), &node(Some("z1")));
    assert_eq!(ips(&frontends[0].1), ["198.18.1.2"], "hinted for z1");
    let frontends = frontends_on(&web("", NODES_SLICE), &node(Some("z9")));
    assert_eq!(
        ips(&frontends[0].1),
        ["198.18.1.2", "198.18.1.3"],
        "no endpoint for this zone: all"
    );
    let half = NODES_SLICE.replace(", hints: {forZones: [{name: z2}]}", "");
    let frontends = frontends_on(&web("", &half), &node(Some("z1")));
    assert_eq!(
        ips(&frontends[0].1),
        ["198.18.1.2", "198.18.1.3"],
        "an endpoint without hints: all"
    );
    let frontends = frontends_on(&web("", NODES_SLICE), &node(None));
    assert_eq!(
        ips(&frontends[0].1),
        ["198.18.1.2", "198.18.1.3"],
        "a node without a zone: all"
    );
}

#[test]
fn the_same_port_on_tcp_and_udp_is_two_frontends() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: kube-system}\nspec:\n  clusterIP: 198.19.0.53\n  ports:\n  - {name: dns, port: 53, protocol: UDP}\n  - {name: dns-tcp, port: 53, protocol: TCP}\n";
    let out = one(yaml).expect("valid");
    let shown: Vec<String> = out
        .frontends
        .iter()
        .map(|(a, s)| format!("{a} {}", s.service))
        .collect();
    assert_eq!(
        shown,
        [
            "198.19.0.53:53/UDP kube-system/dns:dns",
            "198.19.0.53:53/TCP kube-system/dns:dns-tcp"
        ]
    );
}

#[test]
fn health_check_node_port_counts_ready_local_endpoints() {
    let check = |spec: &str| {
        let set = objects(&web(spec, NODES_SLICE));
        let t = translate(&set, &node(None));
        let out = t.into_values().next().expect("translated").expect("valid");
        out.health_check
    };
    // node-a has 198.18.1.2 ready and 198.18.1.4 terminating: kube-proxy counts 1.
    assert_eq!(
        check(
            "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n"
        ),
        Some(HealthCheck {
            node_port: 32_000,
            local_endpoints: 1
        })
    );
    // Only LoadBalancer Services with the Local policy have one.
    assert_eq!(
        check("  type: LoadBalancer\n  healthCheckNodePort: 32000\n"),
        None
    );
    assert_eq!(
        check("  type: NodePort\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n"),
        None
    );
    // A node without endpoints of the Service reports 0 (and answers 503).
    let set = objects(&web(
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n",
        NODES_SLICE,
    ));
    let elsewhere = NodeContext::new(Some("node-c"), None);
    let out = translate(&set, &elsewhere)
        .into_values()
        .next()
        .expect("translated")
        .expect("valid");
    assert_eq!(out.health_check.map(|h| h.local_endpoints), Some(0));
}

#[test]
fn load_balancer_source_ranges_are_cidrs_on_the_load_balancer_frontends() {
    let lb = |ranges: &str| {
        let set = objects(&web(
            &format!(
                "  type: LoadBalancer\n  loadBalancerSourceRanges: {ranges}\nstatus:\n  loadBalancer:\n    ingress: [{{ip: 198.19.2.1}}]\n"
            ),
            NODES_SLICE,
        ));
        translate(&set, &node(None))
            .into_values()
            .next()
            .expect("translated")
            .expect("valid")
    };
    let out = lb("[\"203.0.113.7/25\", \"2001:db8::/64\", \"198.18.0.0/24\", bogus]");
    let ranges: Vec<_> = out
        .frontends
        .iter()
        .map(|(a, s)| (a.to_string(), s.source_ranges.clone()))
        .collect();
    let expected = SourceRanges {
        // Masked to the prefix; 198.18.0.0/24 holds the node's address 198.18.0.5.
        cidrs: vec![(ip("198.18.0.0"), 24), (ip("203.0.113.0"), 25)],
        allow_node: true,
    };
    for (addr, r) in &ranges {
        if addr.starts_with("198.19.2.1:") {
            assert_eq!(r.as_deref(), Some(&expected), "{addr}");
        } else {
            assert_eq!(r, &None, "only the LoadBalancer IP is firewalled: {addr}");
        }
    }
    assert!(
        out.warnings
            .iter()
            .any(|w| w.to_string().contains("\"bogus\" is not a CIDR; skipped")),
        "{:?}",
        out.warnings
    );
    // Only ranges of the other family: no firewall for this family's frontend, as
    // kube-proxy's IPv4 proxier (which keeps IPv4 ranges only) has none; said so.
    let open = lb("[\"2001:db8::/64\"]");
    let lb_spec = open
        .frontends
        .iter()
        .find(|(a, _)| a.ip == ip("198.19.2.1"))
        .map(|(_, s)| s.source_ranges.clone());
    assert_eq!(lb_spec, Some(None));
    assert!(
        open.warnings
            .iter()
            .any(|w| w.code == "source_ranges_other_family"),
        "{:?}",
        open.warnings
    );
    // Nothing usable at all: closed, not open.
    let closed = lb("[\"bogus\"]");
    let lb_spec = closed
        .frontends
        .iter()
        .find(|(a, _)| a.ip == ip("198.19.2.1"))
        .map(|(_, s)| s.source_ranges.clone());
    assert_eq!(
        lb_spec,
        Some(Some(Box::new(SourceRanges {
            cidrs: vec![],
            allow_node: false
        })))
    );
}
