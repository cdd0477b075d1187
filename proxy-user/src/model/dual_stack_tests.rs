//! IPv6 and dual-stack Services: each family the Service has a ClusterIP of is served
//! with that family's endpoints, node addresses, external IPs and source ranges, as
//! kube-proxy's per-family proxiers serve it.

use super::tests::{frontends_on, ip, ips, node, objects, translate};
use super::*;

const SLICE_V4: &str = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [198.18.1.2], nodeName: node-a, conditions: {ready: true}}
- {addresses: [198.18.1.3], nodeName: node-b, conditions: {ready: true}}
";

const SLICE_V6: &str = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [\"2001:db8:1::2\"], nodeName: node-a, conditions: {ready: true}}
- {addresses: [\"2001:db8:1::3\"], nodeName: node-b, conditions: {ready: true}}
";

const V4: &str = "[198.19.0.10]";
const V6: &str = "[\"2001:db8::a\"]";
const DUAL: &str = "[198.19.0.10, \"2001:db8::a\"]";

/// Service shop/web with `clusterIPs`, one port (nodePort 30080), `spec` added, and both
/// slices.
fn web(cluster_ips: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\nspec:\n  clusterIPs: {cluster_ips}\n  ports: [{{name: http, port: 80, nodePort: 30080}}]\n{spec}---\n{SLICE_V4}---\n{SLICE_V6}"
    )
}

/// `frontend kind -> backends`, one line each.
fn shown(frontends: &[(FrontendAddr, FrontendSpec)]) -> Vec<String> {
    frontends
        .iter()
        .map(|(a, s)| {
            let backends: Vec<String> = s.backends.iter().map(|b| b.addr.to_string()).collect();
            format!("{a} {} -> {}", s.kind.as_str(), backends.join(" "))
        })
        .collect()
}

fn translated(yaml: &str, node: &NodeContext) -> ServiceFrontends {
    translate(&objects(yaml), node)
        .into_values()
        .next()
        .expect("translated")
        .expect("valid")
}

fn warnings(out: &ServiceFrontends) -> Vec<String> {
    out.warnings.iter().map(ToString::to_string).collect()
}

#[test]
fn addresses_show_ipv6_in_brackets() {
    let addr = FrontendAddr {
        ip: ip("2001:db8::a"),
        port: 80,
        protocol: Protocol::Tcp,
    };
    assert_eq!(addr.to_string(), "[2001:db8::a]:80/TCP");
    assert_eq!(addr.family(), Family::Ipv6);
    assert_eq!(addr.family().as_str(), "IPv6");
    let v4 = FrontendAddr {
        ip: ip("198.19.0.10"),
        ..addr
    };
    assert_eq!(
        (v4.to_string(), v4.family()),
        ("198.19.0.10:80/TCP".into(), Family::Ipv4)
    );
    let backend = BackendAddr {
        ip: ip("2001:db8::1:2"),
        port: 8080,
    };
    assert_eq!(backend.to_string(), "[2001:db8::1:2]:8080");
}

#[test]
fn an_ipv6_only_service_is_served_from_its_ipv6_slice() {
    let frontends = frontends_on(&web(V6, ""), &node(None));
    assert_eq!(
        shown(&frontends),
        ["[2001:db8::a]:80/TCP ClusterIP -> [2001:db8:1::2]:8080 [2001:db8:1::3]:8080"],
        "the IPv4 slice serves no frontend"
    );
    // `clusterIP` alone (no `clusterIPs`) says the same.
    let yaml = web(V6, "").replace(
        "clusterIPs: [\"2001:db8::a\"]",
        "clusterIP: \"2001:db8::a\"",
    );
    assert_eq!(frontends_on(&yaml, &node(None)), frontends);
}

#[test]
fn a_dual_stack_service_has_frontends_in_both_families_each_with_its_own_backends() {
    let frontends = frontends_on(&web(DUAL, ""), &node(None));
    assert_eq!(
        shown(&frontends),
        [
            "198.19.0.10:80/TCP ClusterIP -> 198.18.1.2:8080 198.18.1.3:8080",
            "[2001:db8::a]:80/TCP ClusterIP -> [2001:db8:1::2]:8080 [2001:db8:1::3]:8080",
        ]
    );
    assert!(
        frontends
            .iter()
            .all(|(_, s)| &*s.service == "shop/web:http"),
        "one name in both families, as kube-proxy's"
    );
    // Traffic policies apply per family: internalTrafficPolicy Local keeps node-a's.
    let local = frontends_on(&web(DUAL, "  internalTrafficPolicy: Local\n"), &node(None));
    let local: Vec<Vec<String>> = local.iter().map(|(_, s)| ips(s)).collect();
    assert_eq!(local, [vec!["198.18.1.2"], vec!["2001:db8:1::2"]]);
}

#[test]
fn an_ipv4_only_service_ignores_an_ipv6_slice() {
    let out = translated(&web(V4, ""), &node(None));
    assert_eq!(
        shown(&out.frontends),
        ["198.19.0.10:80/TCP ClusterIP -> 198.18.1.2:8080 198.18.1.3:8080"]
    );
    assert!(
        out.warnings.is_empty(),
        "kube-proxy ignores it silently: {:?}",
        out.warnings
    );
}

#[test]
fn an_address_of_the_other_family_in_a_slice_is_skipped_and_named() {
    let yaml = web(V6, "").replace("\"2001:db8:1::3\"", "198.18.1.9");
    let out = translated(&yaml, &node(None));
    assert_eq!(ips(&out.frontends[0].1), ["2001:db8:1::2"]);
    assert_eq!(
        warnings(&out),
        [
            "EndpointSlice shop/web-v6: endpoint address 198.18.1.9 is not an IPv6 address; endpoint skipped"
        ]
    );
}

#[test]
fn node_ports_on_a_dual_stack_node_follow_the_services_families() {
    // node-a: 198.18.0.5, 198.18.0.6 and 2001:db8::5.
    let kinds = |cluster_ips: &str| -> Vec<String> {
        frontends_on(&web(cluster_ips, "  type: NodePort\n"), &node(None))
            .iter()
            .filter(|(_, s)| s.kind == FrontendKind::NodePort)
            .map(|(a, s)| format!("{a} -> {}", ips(s).join(" ")))
            .collect()
    };
    assert_eq!(
        kinds(V4),
        [
            "198.18.0.5:30080/TCP -> 198.18.1.2 198.18.1.3",
            "198.18.0.6:30080/TCP -> 198.18.1.2 198.18.1.3",
            "127.0.0.1:30080/TCP -> 198.18.1.2 198.18.1.3",
        ]
    );
    assert_eq!(
        kinds(V6),
        ["[2001:db8::5]:30080/TCP -> 2001:db8:1::2 2001:db8:1::3"],
        "the node's IPv6 address; no localhost NodePort in IPv6, as in kube-proxy"
    );
    assert_eq!(
        kinds(DUAL),
        [
            "198.18.0.5:30080/TCP -> 198.18.1.2 198.18.1.3",
            "198.18.0.6:30080/TCP -> 198.18.1.2 198.18.1.3",
            "127.0.0.1:30080/TCP -> 198.18.1.2 198.18.1.3",
            "[2001:db8::5]:30080/TCP -> 2001:db8:1::2 2001:db8:1::3",
        ]
    );
    // A node without an IPv6 address serves an IPv6-only NodePort nowhere (but its
    // ClusterIP still).
    let v4_node = NodeContext {
        addresses: vec![ip("198.18.0.5")],
        ..node(None)
    };
    let frontends = frontends_on(&web(V6, "  type: NodePort\n"), &v4_node);
    assert_eq!(
        shown(&frontends),
        ["[2001:db8::a]:80/TCP ClusterIP -> [2001:db8:1::2]:8080 [2001:db8:1::3]:8080"]
    );
}

/// A LoadBalancer with an externalIP and an ingress IP of each family.
const EXTERNAL: &str = "  type: LoadBalancer\n  externalIPs: [198.19.1.1, \"2001:db8:2::1\"]\nstatus:\n  loadBalancer:\n    ingress: [{ip: 198.19.2.1}, {ip: \"2001:db8:3::1\"}]\n";

fn external_frontends(out: &ServiceFrontends) -> Vec<String> {
    out.frontends
        .iter()
        .filter(|(_, s)| {
            matches!(
                s.kind,
                FrontendKind::ExternalIp | FrontendKind::LoadBalancer
            )
        })
        .map(|(a, s)| format!("{a} {} -> {}", s.kind.as_str(), ips(s).join(" ")))
        .collect()
}

#[test]
fn external_ips_of_a_family_the_service_is_not_served_in_are_skipped_with_a_warning() {
    let out = translated(&web(V4, EXTERNAL), &NodeContext::default());
    assert_eq!(
        external_frontends(&out),
        [
            "198.19.1.1:80/TCP ExternalIP -> 198.18.1.2 198.18.1.3",
            "198.19.2.1:80/TCP LoadBalancer -> 198.18.1.2 198.18.1.3",
        ]
    );
    assert_eq!(
        warnings(&out),
        [
            "Service shop/web: externalIP 2001:db8:2::1 is IPv6 and the Service has no IPv6 ClusterIP; skipped",
            "Service shop/web: load balancer ingress IP 2001:db8:3::1 is IPv6 and the Service has no IPv6 ClusterIP; skipped",
        ]
    );
    assert!(out.warnings.iter().all(|w| w.code == "ip_family_mismatch"));

    let out = translated(&web(V6, EXTERNAL), &NodeContext::default());
    assert_eq!(
        external_frontends(&out),
        [
            "[2001:db8:2::1]:80/TCP ExternalIP -> 2001:db8:1::2 2001:db8:1::3",
            "[2001:db8:3::1]:80/TCP LoadBalancer -> 2001:db8:1::2 2001:db8:1::3",
        ]
    );
    assert_eq!(
        warnings(&out),
        [
            "Service shop/web: externalIP 198.19.1.1 is IPv4 and the Service has no IPv4 ClusterIP; skipped",
            "Service shop/web: load balancer ingress IP 198.19.2.1 is IPv4 and the Service has no IPv4 ClusterIP; skipped",
        ]
    );

    let out = translated(&web(DUAL, EXTERNAL), &NodeContext::default());
    assert_eq!(
        external_frontends(&out).len(),
        4,
        "each family takes its own"
    );
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
}

#[test]
fn source_ranges_are_split_per_family() {
    let lb = |ranges: &str| {
        let spec = EXTERNAL.replace(
            "status:",
            &format!("  loadBalancerSourceRanges: {ranges}\nstatus:"),
        );
        translated(&web(DUAL, &spec), &node(None))
    };
    let ranges_of = |out: &ServiceFrontends, lb_ip: &str| {
        out.frontends
            .iter()
            .find(|(a, _)| a.ip == ip(lb_ip))
            .and_then(|(_, s)| s.source_ranges.as_deref().cloned())
            .expect("a firewalled LoadBalancer frontend")
    };
    let out = lb("[198.18.0.0/24, \"2001:db8::/64\", 203.0.113.0/25]");
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert_eq!(
        ranges_of(&out, "198.19.2.1"),
        SourceRanges {
            cidrs: vec![(ip("198.18.0.0"), 24), (ip("203.0.113.0"), 25)],
            allow_node: true,
        },
        "IPv4 ranges only; 198.18.0.0/24 holds the node's 198.18.0.5"
    );
    assert_eq!(
        ranges_of(&out, "2001:db8:3::1"),
        SourceRanges {
            cidrs: vec![(ip("2001:db8::"), 64)],
            allow_node: true,
        },
        "IPv6 ranges only; 2001:db8::/64 holds the node's 2001:db8::5"
    );
    // Masked to the prefix, node not in range.
    let out = lb("[198.18.0.0/24, \"2001:db8:9::7/48\"]");
    assert_eq!(
        ranges_of(&out, "2001:db8:3::1"),
        SourceRanges {
            cidrs: vec![(ip("2001:db8:9::"), 48)],
            allow_node: false,
        }
    );
    // IPv4 ranges only: the IPv6 load balancer IP has no firewall, as kube-proxy's IPv6
    // proxier (which keeps only IPv6 ranges) has none; said so. The IPv4 one keeps its.
    let out = lb("[198.18.0.0/24]");
    let frontend = |lb_ip: &str| {
        out.frontends
            .iter()
            .find(|(a, _)| a.ip == ip(lb_ip))
            .map(|(_, s)| s.source_ranges.clone())
            .expect("the LoadBalancer frontend")
    };
    assert_eq!(frontend("2001:db8:3::1"), None);
    assert!(frontend("198.19.2.1").is_some());
    assert_eq!(
        warnings(&out),
        [
            "Service shop/web: no loadBalancerSourceRanges entry is an IPv6 CIDR: the IPv6 load balancer IPs accept every client, as kube-proxy's IPv6 proxier does"
        ]
    );
}

#[test]
fn weights_and_health_checks_count_both_families() {
    let yaml = web(
        DUAL,
        "  type: LoadBalancer\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32000\n",
    )
    .replace("metadata: {name: web, namespace: shop}", "metadata:\n  name: web\n  namespace: shop\n  annotations: {ebpf-proxy.dev/weights: \"2001:db8:1::3=0,198.18.1.3=4\"}");
    let out = translated(&yaml, &node(None));
    let weights: Vec<String> = out
        .frontends
        .iter()
        .filter(|(_, s)| s.kind == FrontendKind::ClusterIp)
        .flat_map(|(_, s)| {
            s.backends
                .iter()
                .map(|b| format!("{} {}", b.addr, b.weight))
        })
        .collect();
    assert_eq!(
        weights,
        [
            "198.18.1.2:8080 1",
            "198.18.1.3:8080 4",
            "[2001:db8:1::2]:8080 1",
            "[2001:db8:1::3]:8080 0",
        ]
    );
    // node-a has 198.18.1.2 and 2001:db8:1::2 ready: two distinct local addresses.
    assert_eq!(out.health_check.map(|h| h.local_endpoints), Some(2));
}

#[test]
fn a_cluster_ip_that_does_not_parse_beside_one_that_does_is_skipped_with_a_warning() {
    let out = translated(&web("[198.19.0.10, \"2001:db8::zz\"]", ""), &node(None));
    assert_eq!(out.frontends.len(), 1);
    assert_eq!(
        warnings(&out),
        ["Service shop/web: clusterIPs entry \"2001:db8::zz\" is not an IP address; skipped"]
    );
    assert_eq!(out.warnings[0].code, "invalid_cluster_ip");
}
