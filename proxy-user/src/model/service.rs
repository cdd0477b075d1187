//! One Service and its EndpointSlices -> its frontends.
//!
//! Every frontend here is reached by sockets on this node (pods or host processes), which
//! is what the socket programs see. kube-proxy sends such traffic to *external* frontends
//! (NodePort, ExternalIPs, LoadBalancer IPs) through the cluster-wide endpoint set even when
//! externalTrafficPolicy is Local ("pod traffic for external destinations", "route LOCAL
//! traffic"), so those frontends use cluster endpoints; externalTrafficPolicy Local governs
//! traffic arriving from outside the node, which the tc programs handle. A ClusterIP with
//! internalTrafficPolicy Local uses this node's endpoints only.

use std::net::{Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort, ServiceSpec},
    discovery::v1::EndpointSlice,
};

use super::{
    FrontendAddr, FrontendKind, FrontendSpec, Protocol, Rejection, ServiceFrontends,
    WeightedBackend,
    endpoints::{self, PortEndpoint, port_endpoints},
    node::NodeContext,
    weights::{ANNOTATION, Weights},
};
use crate::source::ObjectRef;

/// Services with this label belong to another proxy (kube-proxy ignores them too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

/// Translates one Service. `None` when the Service is not ours to serve (headless,
/// ExternalName, another proxy's label); `Err` when it cannot be used at all.
pub fn translate_service(
    key: &ObjectRef,
    service: &Service,
    slices: &[&EndpointSlice],
    node: &NodeContext,
) -> Option<Result<ServiceFrontends, Rejection>> {
    let reject = |code: &'static str, reason: String| Rejection {
        object: format!("Service {key}"),
        code,
        reason,
    };
    if service
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
    {
        return None;
    }
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let cluster_ip = match cluster_ip(spec) {
        Ok(Some(ip)) => ip,
        Ok(None) => return None, // headless: DNS only
        Err((code, reason)) => return Some(Err(reject(code, reason))),
    };
    let affinity_timeout_s = match affinity_timeout(spec) {
        Ok(t) => t,
        Err(reason) => return Some(Err(reject("invalid_affinity_timeout", reason))),
    };

    let mut out = ServiceFrontends::default();
    let weights = match service
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION))
    {
        None => Weights::default(),
        Some(text) => Weights::parse(text).unwrap_or_else(|reason| {
            out.warnings.push(reject(
                "malformed_weights",
                format!("annotation {ANNOTATION} is malformed ({reason}); using equal weights"),
            ));
            Weights::default()
        }),
    };
    let external = external_addresses(service, spec, &mut out.warnings, &reject);
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let node_ports = matches!(
        spec.type_.as_deref(),
        Some("NodePort") | Some("LoadBalancer")
    );

    for port in spec.ports.iter().flatten() {
        let Some((protocol, number, port_name)) = checked_port(key, port, &mut out.warnings) else {
            continue;
        };
        let all = port_endpoints(slices, port_name, protocol, &mut out.warnings);
        let weigh = |chosen: Vec<PortEndpoint>| -> Vec<WeightedBackend> {
            let mut backends: Vec<WeightedBackend> = chosen
                .iter()
                .map(|e| WeightedBackend {
                    addr: e.addr,
                    weight: weights.of(e.target_name.as_deref(), &e.addr.ip.to_string()),
                })
                .collect();
            backends.sort();
            backends
        };
        let cluster_backends = weigh(endpoints::cluster(&all, node));
        let name = if port_name.is_empty() {
            key.to_string()
        } else {
            format!("{key}:{port_name}")
        };
        let frontend = |kind, backends, local_only| FrontendSpec {
            service: name.clone(),
            kind,
            affinity_timeout_s,
            local_only,
            backends,
        };

        let clusterip_backends = if internal_local {
            weigh(endpoints::local(&all, node))
        } else {
            cluster_backends.clone()
        };
        out.frontends.push((
            FrontendAddr {
                ip: cluster_ip,
                port: number,
                protocol,
            },
            frontend(FrontendKind::ClusterIp, clusterip_backends, internal_local),
        ));
        for (ip, kind) in &external {
            out.frontends.push((
                FrontendAddr {
                    ip: *ip,
                    port: number,
                    protocol,
                },
                frontend(*kind, cluster_backends.clone(), false),
            ));
        }
        match port.node_port {
            Some(node_port) if node_ports && node_port != 0 => {
                let Some(node_port) = u16::try_from(node_port).ok() else {
                    out.warnings.push(reject(
                        "port_out_of_range",
                        format!("nodePort {node_port} is out of range; skipped"),
                    ));
                    continue;
                };
                for ip in &node.addresses {
                    out.frontends.push((
                        FrontendAddr {
                            ip: *ip,
                            port: node_port,
                            protocol,
                        },
                        frontend(FrontendKind::NodePort, cluster_backends.clone(), false),
                    ));
                }
            }
            _ => {}
        }
    }
    // The same slice problem is found once per port; report it once.
    let mut seen = std::collections::BTreeSet::new();
    out.warnings.retain(|w| seen.insert(w.to_string()));
    Some(Ok(out))
}

/// The IPv4 ClusterIP, `None` for a headless Service.
fn cluster_ip(spec: &ServiceSpec) -> Result<Option<Ipv4Addr>, (&'static str, String)> {
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    if cluster_ip == "None" {
        return Ok(None);
    }
    if cluster_ip.is_empty() {
        return Err(("no_cluster_ip", "has no clusterIP yet".into()));
    }
    // Dual-stack Services list both families in clusterIPs; we serve the IPv4 one.
    let ips: Vec<&str> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => vec![cluster_ip],
    };
    if let Some(ip) = ips.iter().find_map(|ip| ip.parse::<Ipv4Addr>().ok()) {
        return Ok(Some(ip));
    }
    if ips.iter().all(|ip| ip.parse::<Ipv6Addr>().is_ok()) {
        return Err((
            "ipv6_only",
            format!("clusterIP {cluster_ip} is IPv6; this node serves IPv4 only"),
        ));
    }
    Err((
        "invalid_cluster_ip",
        format!("clusterIP {cluster_ip:?} is not an IP address"),
    ))
}

/// ExternalIPs and LoadBalancer ingress IPs (IPv4; `ipMode: Proxy` ingress is left to the
/// load balancer, as kube-proxy does).
fn external_addresses(
    service: &Service,
    spec: &ServiceSpec,
    warnings: &mut Vec<Rejection>,
    reject: &dyn Fn(&'static str, String) -> Rejection,
) -> Vec<(Ipv4Addr, FrontendKind)> {
    let mut out = Vec::new();
    for text in spec.external_ips.iter().flatten() {
        match text.parse::<Ipv4Addr>() {
            Ok(ip) => out.push((ip, FrontendKind::ExternalIp)),
            Err(_) if text.parse::<Ipv6Addr>().is_ok() => {}
            Err(_) => warnings.push(reject(
                "invalid_external_ip",
                format!("externalIP {text:?} is not an IP address; skipped"),
            )),
        }
    }
    if spec.type_.as_deref() == Some("LoadBalancer") {
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        for entry in ingress.into_iter().flatten() {
            if entry.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            let Some(text) = entry.ip.as_deref() else {
                continue;
            };
            match text.parse::<Ipv4Addr>() {
                Ok(ip) => out.push((ip, FrontendKind::LoadBalancer)),
                Err(_) if text.parse::<Ipv6Addr>().is_ok() => {}
                Err(_) => warnings.push(reject(
                    "invalid_external_ip",
                    format!("load balancer ingress IP {text:?} is not an IP address; skipped"),
                )),
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn checked_port<'p>(
    key: &ObjectRef,
    port: &'p ServicePort,
    warnings: &mut Vec<Rejection>,
) -> Option<(Protocol, u16, &'p str)> {
    let port_name = port.name.as_deref().unwrap_or("");
    let label = if port_name.is_empty() {
        port.port.to_string()
    } else {
        port_name.to_owned()
    };
    let mut skip = |code: &'static str, reason: String| {
        warnings.push(Rejection {
            object: format!("Service {key} port {label}"),
            code,
            reason,
        });
    };
    let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        other => {
            skip(
                "unsupported_protocol",
                format!("protocol {other} is not supported; port skipped"),
            );
            return None;
        }
    };
    let Some(number) = u16::try_from(port.port).ok().filter(|p| *p != 0) else {
        skip(
            "port_out_of_range",
            format!("port {} is out of range; port skipped", port.port),
        );
        return None;
    };
    Some((protocol, number, port_name))
}

fn affinity_timeout(spec: &ServiceSpec) -> Result<u32, String> {
    if spec.session_affinity.as_deref() != Some("ClientIP") {
        return Ok(0);
    }
    let configured = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    match configured {
        None => Ok(DEFAULT_AFFINITY_TIMEOUT_S),
        Some(t) if (1..=MAX_AFFINITY_TIMEOUT_S as i32).contains(&t) => Ok(t as u32),
        Some(t) => Err(format!(
            "sessionAffinityConfig.clientIP.timeoutSeconds {t} is outside 1..={MAX_AFFINITY_TIMEOUT_S}"
        )),
    }
}
