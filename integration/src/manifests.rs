//! Service and EndpointSlice YAML for tests and the demo, of either address family or both:
//! a Service whose ClusterIP is IPv6 is IPv6-only, one given a second ClusterIP
//! ([`ServiceOpts::second_cluster_ip`]) is dual-stack, and endpoints are written as one
//! slice per family (`addressType: IPv4` / `IPv6`), as the EndpointSlice controller does.

use std::fmt::Write as _;

pub struct Port<'a> {
    pub name: &'a str,
    pub port: u16,
    pub target: u16,
    pub protocol: &'a str,
    /// Set for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
}

pub const HTTP: Port<'static> = Port {
    name: "http",
    port: 80,
    target: 8080,
    protocol: "TCP",
    node_port: None,
};
pub const DNS: Port<'static> = Port {
    name: "dns",
    port: 53,
    target: 5353,
    protocol: "UDP",
    node_port: None,
};

#[derive(Default)]
pub struct ServiceOpts<'a> {
    pub affinity_timeout: Option<u32>,
    pub weights: Option<&'a str>,
    /// `spec.type`; ClusterIP when unset.
    pub type_: Option<&'a str>,
    /// More `spec` fields, each line indented by two spaces
    /// (`  externalIPs: [198.19.5.5]\n`).
    pub spec_extra: &'a str,
    /// A `status:` section (`status: {loadBalancer: ...}\n`).
    pub status: &'a str,
    /// A second ClusterIP, of the other family: the Service is dual-stack
    /// (`ipFamilyPolicy: RequireDualStack`, `ipFamilies` in the order of its addresses).
    pub second_cluster_ip: Option<&'a str>,
}

/// The Kubernetes address family of `ip` (`IPv4` or `IPv6`), as `ipFamilies` and an
/// EndpointSlice's `addressType` name it.
pub fn address_type(ip: &str) -> &'static str {
    if ip.contains(':') { "IPv6" } else { "IPv4" }
}

pub fn service(name: &str, cluster_ip: &str, ports: &[Port], opts: &ServiceOpts) -> String {
    let mut y =
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\n");
    if let Some(w) = opts.weights {
        let _ = write!(y, "  annotations:\n    ebpf-proxy.dev/weights: \"{w}\"\n");
    }
    let _ = write!(
        y,
        "spec:\n  type: {}\n  clusterIP: {cluster_ip}\n",
        opts.type_.unwrap_or("ClusterIP")
    );
    // An IPv4-only Service is written as before: the API server defaults these fields.
    if address_type(cluster_ip) == "IPv6" || opts.second_cluster_ip.is_some() {
        let ips: Vec<&str> = std::iter::once(cluster_ip)
            .chain(opts.second_cluster_ip)
            .collect();
        let families: Vec<&str> = ips.iter().map(|ip| address_type(ip)).collect();
        let policy = match ips.len() {
            1 => "SingleStack",
            _ => "RequireDualStack",
        };
        let _ = write!(
            y,
            "  clusterIPs: [{}]\n  ipFamilies: [{}]\n  ipFamilyPolicy: {policy}\n",
            ips.join(", "),
            families.join(", ")
        );
    }
    y.push_str("  ports:\n");
    for p in ports {
        let _ = write!(
            y,
            "  - name: {}\n    port: {}\n    targetPort: {}\n    protocol: {}\n",
            p.name, p.port, p.target, p.protocol
        );
        if let Some(node_port) = p.node_port {
            let _ = writeln!(y, "    nodePort: {node_port}");
        }
    }
    if let Some(t) = opts.affinity_timeout {
        let _ = write!(
            y,
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {t}\n"
        );
    }
    y.push_str(opts.spec_extra);
    y.push_str(opts.status);
    y
}

/// One endpoint: address, pod name, and its conditions.
#[derive(Clone)]
pub struct Endpoint<'a> {
    pub ip: &'a str,
    pub pod: &'a str,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `nodeName`, which decides whether the endpoint is local to the agent's node.
    pub node: Option<&'a str>,
    /// `hints.forZones`, as the EndpointSlice controller writes them for
    /// `trafficDistribution: PreferSameZone` (or PreferClose, or PreferSameNode).
    pub zone_hints: &'a [&'a str],
    /// `hints.forNodes`, as it writes them for `trafficDistribution: PreferSameNode`.
    pub node_hints: &'a [&'a str],
}

impl<'a> Endpoint<'a> {
    pub fn ready(ip: &'a str, pod: &'a str) -> Self {
        Self {
            ip,
            pod,
            ready: true,
            serving: true,
            terminating: false,
            node: None,
            zone_hints: &[],
            node_hints: &[],
        }
    }
}

/// A slice of `endpoints`, whose `addressType` is their family (IPv4 when there are
/// none); they must all be of one family.
pub fn endpoint_slice(
    service: &str,
    slice: &str,
    ports: &[Port],
    endpoints: &[Endpoint],
) -> String {
    let family = endpoints.first().map_or("IPv4", |e| address_type(e.ip));
    endpoint_slice_of(family, service, slice, ports, endpoints)
}

/// A slice of `addressType: family` (`IPv4` or `IPv6`).
pub fn endpoint_slice_of(
    family: &str,
    service: &str,
    slice: &str,
    ports: &[Port],
    endpoints: &[Endpoint],
) -> String {
    assert!(
        endpoints.iter().all(|e| address_type(e.ip) == family),
        "slice {slice}: every endpoint must be {family}"
    );
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  namespace: demo\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: {family}\nports:\n"
    );
    for p in ports {
        let _ = write!(
            y,
            "- name: {}\n  port: {}\n  protocol: {}\n",
            p.name, p.target, p.protocol
        );
    }
    y.push_str("endpoints:\n");
    for e in endpoints {
        let _ = write!(
            y,
            "- addresses: [\"{}\"]\n  conditions: {{ready: {}, serving: {}, terminating: {}}}\n  targetRef: {{kind: Pod, name: {}, namespace: demo}}\n",
            e.ip, e.ready, e.serving, e.terminating, e.pod
        );
        if let Some(node) = e.node {
            let _ = writeln!(y, "  nodeName: {node}");
        }
        if !e.zone_hints.is_empty() || !e.node_hints.is_empty() {
            let names = |list: &[&str]| -> String {
                let names: Vec<String> = list.iter().map(|n| format!("{{name: {n}}}")).collect();
                names.join(", ")
            };
            let _ = writeln!(
                y,
                "  hints: {{forZones: [{}], forNodes: [{}]}}",
                names(e.zone_hints),
                names(e.node_hints)
            );
        }
    }
    y
}

/// A Service and its slices in one multi-document file: one slice per family among
/// `endpoints` (IPv4 first, named `<name>-1`, then IPv6, `<name>-2`), or one empty slice
/// of the ClusterIP's family when there are none.
pub fn service_with_endpoints(
    name: &str,
    cluster_ip: &str,
    ports: &[Port],
    opts: &ServiceOpts,
    endpoints: &[Endpoint],
) -> String {
    let mut y = service(name, cluster_ip, ports, opts);
    let mut slices = 0;
    for family in ["IPv4", "IPv6"] {
        let of_family: Vec<Endpoint> = endpoints
            .iter()
            .filter(|e| address_type(e.ip) == family)
            .cloned()
            .collect();
        let empty_service = endpoints.is_empty() && family == address_type(cluster_ip);
        if of_family.is_empty() && !empty_service {
            continue;
        }
        slices += 1;
        y.push_str("---\n");
        y.push_str(&endpoint_slice_of(
            family,
            name,
            &format!("{name}-{slices}"),
            ports,
            &of_family,
        ));
    }
    y
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

    use super::*;

    /// The documents of a multi-document file, parsed as (Service, slices).
    fn parse(text: &str) -> (Service, Vec<EndpointSlice>) {
        let mut docs = text.split("---\n");
        let service = yaml_serde::from_str(docs.next().expect("a Service")).expect("Service");
        let slices = docs
            .map(|d| yaml_serde::from_str(d).expect("EndpointSlice"))
            .collect();
        (service, slices)
    }

    fn addresses(slice: &EndpointSlice) -> Vec<String> {
        slice
            .endpoints
            .iter()
            .flatten()
            .flat_map(|e| e.addresses.clone())
            .collect()
    }

    #[test]
    fn topology_hints_are_written_as_the_controller_writes_them() {
        let eps = [
            Endpoint {
                zone_hints: &["zone-1"],
                node_hints: &["node-a"],
                ..Endpoint::ready("198.18.1.2", "web-0")
            },
            Endpoint::ready("198.18.2.2", "web-1"),
        ];
        let (_, slices) = parse(&service_with_endpoints(
            "web",
            "198.19.0.10",
            &[HTTP],
            &ServiceOpts::default(),
            &eps,
        ));
        let hints: Vec<Option<(Vec<String>, Vec<String>)>> = slices[0]
            .endpoints
            .iter()
            .flatten()
            .map(|e| {
                let h = e.hints.as_ref()?;
                Some((
                    h.for_zones
                        .iter()
                        .flatten()
                        .map(|z| z.name.clone())
                        .collect(),
                    h.for_nodes
                        .iter()
                        .flatten()
                        .map(|n| n.name.clone())
                        .collect(),
                ))
            })
            .collect();
        assert_eq!(
            hints,
            [
                Some((vec!["zone-1".to_string()], vec!["node-a".to_string()])),
                None
            ]
        );
    }

    #[test]
    fn an_ipv4_service_is_written_as_before() {
        let text = service("web", "198.19.0.10", &[HTTP], &ServiceOpts::default());
        assert!(!text.contains("ipFamilies"), "{text}");
        assert!(!text.contains("clusterIPs"), "{text}");
    }

    #[test]
    fn an_ipv6_service_is_single_stack_ipv6_with_an_ipv6_slice() {
        let eps = [
            Endpoint::ready("2001:db8:18:1::2", "web-0"),
            Endpoint::ready("2001:db8:18:2::2", "web-1"),
        ];
        let (svc, slices) = parse(&service_with_endpoints(
            "web",
            "2001:db8:19::a",
            &[HTTP, DNS],
            &ServiceOpts::default(),
            &eps,
        ));
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("2001:db8:19::a"));
        assert_eq!(spec.cluster_ips, Some(vec!["2001:db8:19::a".to_string()]));
        assert_eq!(spec.ip_families, Some(vec!["IPv6".to_string()]));
        assert_eq!(spec.ip_family_policy.as_deref(), Some("SingleStack"));
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].address_type, "IPv6");
        assert_eq!(
            addresses(&slices[0]),
            ["2001:db8:18:1::2", "2001:db8:18:2::2"]
        );
    }

    #[test]
    fn an_ipv6_service_without_endpoints_has_an_empty_ipv6_slice() {
        let (_, slices) = parse(&service_with_endpoints(
            "web",
            "2001:db8:19::a",
            &[HTTP],
            &ServiceOpts::default(),
            &[],
        ));
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].address_type, "IPv6");
        assert!(addresses(&slices[0]).is_empty());
    }

    #[test]
    fn a_dual_stack_service_has_both_cluster_ips_and_a_slice_per_family() {
        let eps = [
            Endpoint::ready("198.18.1.2", "web-0"),
            Endpoint::ready("2001:db8:18:1::2", "web-0"),
        ];
        let (svc, slices) = parse(&service_with_endpoints(
            "web",
            "198.19.0.10",
            &[HTTP],
            &ServiceOpts {
                second_cluster_ip: Some("2001:db8:19::a"),
                ..Default::default()
            },
            &eps,
        ));
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.cluster_ip.as_deref(), Some("198.19.0.10"));
        assert_eq!(
            spec.cluster_ips,
            Some(vec![
                "198.19.0.10".to_string(),
                "2001:db8:19::a".to_string()
            ])
        );
        assert_eq!(
            spec.ip_families,
            Some(vec!["IPv4".to_string(), "IPv6".to_string()])
        );
        assert_eq!(spec.ip_family_policy.as_deref(), Some("RequireDualStack"));
        let kinds: Vec<(&str, Vec<String>)> = slices
            .iter()
            .map(|s| (s.address_type.as_str(), addresses(s)))
            .collect();
        assert_eq!(
            kinds,
            [
                ("IPv4", vec!["198.18.1.2".to_string()]),
                ("IPv6", vec!["2001:db8:18:1::2".to_string()])
            ]
        );
        let names: Vec<_> = slices.iter().map(|s| s.metadata.name.clone()).collect();
        assert_eq!(
            names,
            [Some("web-1".to_string()), Some("web-2".to_string())]
        );
    }
}
