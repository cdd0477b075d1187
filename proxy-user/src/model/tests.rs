//! Translation of Services and EndpointSlices, from YAML as a user would write it.

use std::{net::Ipv4Addr, path::Path};

use super::*;
use crate::source::manifest::{Parsed, object_ref, parse_documents};

fn objects(yaml: &str) -> ObjectSet {
    let mut set = ObjectSet::default();
    for parsed in parse_documents(Path::new("test.yaml"), yaml).expect("parses") {
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

fn one(yaml: &str) -> Result<ServiceFrontends, Rejection> {
    let t = translate(&objects(yaml), &NodeContext::default());
    assert!(t.len() <= 1, "{t:?}");
    t.into_values().next().expect("the service is translated")
}

fn ip(s: &str) -> Ipv4Addr {
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
    assert_eq!(spec.service, "shop/web:http");
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
            "  clusterIP: fd00::10\n  ports: [{port: 80}]\n",
            "Service shop/web: clusterIP fd00::10 is IPv6; this node serves IPv4 only",
        ),
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
fn dual_stack_services_use_their_ipv4_address() {
    let spec = "  clusterIP: fd00::10\n  clusterIPs: [fd00::10, 198.19.0.10]\n  ports: [{name: http, port: 80}]\n";
    assert_eq!(
        one(&service("", spec)).expect("valid").frontends[0].0.ip,
        ip("198.19.0.10")
    );
}

#[test]
fn invalid_endpoint_addresses_are_skipped_and_named() {
    let yaml = service("", PORTS).replace("[198.18.1.3]", "[not-an-ip]");
    let out = one(&yaml).expect("valid");
    assert_eq!(out.frontends[0].1.backends.len(), 1);
    assert!(out.warnings.iter().any(|w| w.to_string() == "EndpointSlice shop/web-1: endpoint address \"not-an-ip\" is not an IPv4 address; endpoint skipped"), "{:?}", out.warnings);
}
