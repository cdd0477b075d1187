//! One Service and its EndpointSlices -> its frontends.
//!
//! Every frontend here is reached by sockets on this node (pods or host processes), which
//! is what the socket programs see. kube-proxy sends such traffic to *external* frontends
//! (NodePort, ExternalIPs, LoadBalancer IPs) through the cluster-wide endpoint set even when
//! externalTrafficPolicy is Local ("pod traffic for external destinations", "route LOCAL
//! traffic"), so those frontends use cluster endpoints; externalTrafficPolicy Local governs
//! traffic arriving from outside the node, which the tc programs handle. A ClusterIP with
//! internalTrafficPolicy Local uses this node's endpoints only.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use super::ObjectRef;
use super::{
    FrontendAddr, FrontendKind, FrontendSpec, HealthCheck, Protocol, Rejection, ServiceFrontends,
    SourceRanges, WeightedBackend,
    endpoints::{self, PortEndpoint, port_endpoints},
    input::{PortInput, ServiceInput, SliceInput},
    node::NodeContext,
    weights::{ANNOTATION, Weights},
};

pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

/// Translates one Service. `None` when the Service is not ours to serve (headless,
/// ExternalName, another proxy's label); `Err` when it cannot be used at all.
pub fn translate_service(
    key: &ObjectRef,
    service: &ServiceInput,
    slices: &[&SliceInput],
    node: &NodeContext,
) -> Option<Result<ServiceFrontends, Rejection>> {
    let reject = |code: &'static str, reason: String| Rejection {
        object: format!("Service {key}"),
        code,
        reason,
    };
    if service.other_proxy || &*service.type_ == "ExternalName" {
        return None;
    }
    let cluster_ip = match cluster_ip(service) {
        Ok(Some(ip)) => ip,
        Ok(None) => return None, // headless: DNS only
        Err((code, reason)) => return Some(Err(reject(code, reason))),
    };
    let affinity_timeout_s = match affinity_timeout(service) {
        Ok(t) => t,
        Err(reason) => return Some(Err(reject("invalid_affinity_timeout", reason))),
    };

    let mut out = ServiceFrontends::default();
    let weights = match service.weights() {
        None => Weights::default(),
        Some(text) => Weights::parse(text).unwrap_or_else(|reason| {
            out.warnings.push(reject(
                "malformed_weights",
                format!("annotation {ANNOTATION} is malformed ({reason}); using equal weights"),
            ));
            Weights::default()
        }),
    };
    let external = external_addresses(service, &mut out.warnings, &reject);
    let node_ports = matches!(&*service.type_, "NodePort" | "LoadBalancer");
    // Ready endpoints on this node, over all ports: what the health check node port counts.
    let mut local_ready: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let health_check_node_port = health_check_node_port(service, &mut out.warnings, &reject);
    let source_ranges = source_ranges(service, node, &mut out.warnings, &reject);

    for port in service.ports.iter() {
        let Some((protocol, number)) = checked_port(key, port, &mut out.warnings) else {
            continue;
        };
        let all = port_endpoints(slices, &port.name, protocol, &mut out.warnings);
        if health_check_node_port.is_some() {
            local_ready.extend(
                all.iter()
                    .filter(|e| e.endpoint.ready && node.is_local(e.endpoint.node_name.as_deref()))
                    .map(|e| e.addr.ip),
            );
        }
        let weigh = |chosen: Vec<PortEndpoint>| -> Vec<WeightedBackend> {
            let mut backends: Vec<WeightedBackend> = chosen
                .iter()
                .map(|e| WeightedBackend {
                    addr: e.addr,
                    weight: weights.of(e.endpoint.target_name.as_deref(), e.addr.ip),
                })
                .collect();
            backends.sort();
            backends
        };
        let mut cluster_backends = weigh(endpoints::cluster(&all, node));
        let serving_anywhere = cluster_backends.iter().any(|b| b.weight > 0);
        // One name for all of the port's frontends (and every copy of them).
        let name: Arc<str> = if port.name.is_empty() {
            key.to_string().into()
        } else {
            format!("{key}:{}", port.name).into()
        };
        let external_local = service
            .external_traffic_local
            .then(|| weigh(endpoints::local(&all, node)));
        let frontend = |kind, backends, local_only| FrontendSpec {
            service: name.clone(),
            kind,
            affinity_timeout_s,
            local_only,
            backends,
            serving_anywhere,
            external_local: if kind == FrontendKind::ClusterIp {
                None
            } else {
                external_local.clone()
            },
            source_ranges: if kind == FrontendKind::LoadBalancer {
                source_ranges.clone()
            } else {
                None
            },
            health_check_node_port,
        };

        let node_port = port.node_port.filter(|p| node_ports && *p != 0);
        // The cluster endpoints go to the ClusterIP itself only when no other frontend
        // needs them: then they are moved, not copied.
        let clusterip_backends = if service.internal_traffic_local {
            weigh(endpoints::local(&all, node))
        } else if external.is_empty()
            && (node_port.is_none() || (node.addresses.is_empty() && !node.localhost_node_ports))
        {
            std::mem::take(&mut cluster_backends)
        } else {
            cluster_backends.clone()
        };
        out.frontends.push((
            FrontendAddr {
                ip: cluster_ip,
                port: number,
                protocol,
            },
            frontend(
                FrontendKind::ClusterIp,
                clusterip_backends,
                service.internal_traffic_local,
            ),
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
        if let Some(node_port) = node_port {
            let Some(node_port) = u16::try_from(node_port).ok() else {
                out.warnings.push(reject(
                    "port_out_of_range",
                    format!("nodePort {node_port} is out of range; skipped"),
                ));
                continue;
            };
            // kube-proxy's localhost NodePorts (`--iptables-localhost-nodeports`, on by
            // default): the node's own sockets reach a NodePort on 127.0.0.1 too.
            let localhost = node.localhost_node_ports.then_some(&Ipv4Addr::LOCALHOST);
            for ip in node.addresses.iter().chain(localhost) {
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
    }
    out.health_check = health_check_node_port.map(|node_port| HealthCheck {
        node_port,
        local_endpoints: local_ready.len(),
    });
    // The same slice problem is found once per port; report it once.
    let mut seen = BTreeSet::new();
    out.warnings.retain(|w| seen.insert(w.to_string()));
    // Kept for as long as the Service is (the syncer's last good version): without this,
    // a Service of one or two frontends holds room for four (48 MB at 100,000 Services).
    out.frontends.shrink_to_fit();
    Some(Ok(out))
}

/// The IPv4 ClusterIP, `None` for a headless Service.
fn cluster_ip(service: &ServiceInput) -> Result<Option<Ipv4Addr>, (&'static str, String)> {
    let cluster_ip = &*service.cluster_ip;
    if cluster_ip == "None" {
        return Ok(None);
    }
    if cluster_ip.is_empty() {
        return Err(("no_cluster_ip", "has no clusterIP yet".into()));
    }
    // Dual-stack Services list both families in clusterIPs; we serve the IPv4 one.
    let ips: Vec<&str> = if service.cluster_ips.is_empty() {
        vec![cluster_ip]
    } else {
        service.cluster_ips.iter().map(|ip| &**ip).collect()
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

/// The health check node port of a LoadBalancer Service with externalTrafficPolicy Local.
fn health_check_node_port(
    service: &ServiceInput,
    warnings: &mut Vec<Rejection>,
    reject: &dyn Fn(&'static str, String) -> Rejection,
) -> Option<u16> {
    if &*service.type_ != "LoadBalancer" || !service.external_traffic_local {
        return None;
    }
    let port = service.health_check_node_port?;
    match u16::try_from(port) {
        Ok(port) if port != 0 => Some(port),
        _ => {
            warnings.push(reject(
                "port_out_of_range",
                format!("healthCheckNodePort {port} is out of range; no health check is served"),
            ));
            None
        }
    }
}

/// loadBalancerSourceRanges of a LoadBalancer Service, IPv4 ones. A range of another
/// family or that does not parse is skipped with a warning; if none is left, the
/// frontend accepts nobody from outside (closed, not open).
fn source_ranges(
    service: &ServiceInput,
    node: &NodeContext,
    warnings: &mut Vec<Rejection>,
    reject: &dyn Fn(&'static str, String) -> Rejection,
) -> Option<SourceRanges> {
    if &*service.type_ != "LoadBalancer" || service.load_balancer_source_ranges().is_empty() {
        return None;
    }
    let mut cidrs = Vec::new();
    for text in service.load_balancer_source_ranges() {
        match parse_cidr(text.trim()) {
            Some(cidr) => cidrs.push(cidr),
            None => warnings.push(reject(
                "invalid_source_range",
                format!("loadBalancerSourceRanges entry {text:?} is not an IPv4 CIDR; skipped"),
            )),
        }
    }
    if cidrs.is_empty() {
        warnings.push(reject(
            "invalid_source_range",
            "no loadBalancerSourceRanges entry is an IPv4 CIDR: the load balancer IPs accept no traffic from outside the node".into(),
        ));
    }
    cidrs.sort();
    cidrs.dedup();
    let allow_node = node
        .addresses
        .iter()
        .any(|ip| cidrs.iter().any(|cidr| contains(*cidr, *ip)));
    Some(SourceRanges { cidrs, allow_node })
}

/// `203.0.113.0/25` -> (203.0.113.0, 25); the address is masked to the prefix.
pub fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, bits) = text.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok().filter(|b| *b <= 32)?;
    let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
    Some((Ipv4Addr::from(u32::from(ip) & mask), bits))
}

fn contains((net, bits): (Ipv4Addr, u8), ip: Ipv4Addr) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net)
}

/// ExternalIPs and LoadBalancer ingress IPs (IPv4; `ipMode: Proxy` ingress is left to the
/// load balancer, as kube-proxy does, and was dropped on ingest).
fn external_addresses(
    service: &ServiceInput,
    warnings: &mut Vec<Rejection>,
    reject: &dyn Fn(&'static str, String) -> Rejection,
) -> Vec<(Ipv4Addr, FrontendKind)> {
    let load_balancer: &[Box<str>] = if &*service.type_ == "LoadBalancer" {
        service.load_balancer_ips()
    } else {
        &[]
    };
    let candidates = service
        .external_ips()
        .iter()
        .map(|ip| (ip, FrontendKind::ExternalIp, "externalIP"))
        .chain(
            load_balancer
                .iter()
                .map(|ip| (ip, FrontendKind::LoadBalancer, "load balancer ingress IP")),
        );
    let mut out = Vec::new();
    for (text, kind, what) in candidates {
        match text.parse::<Ipv4Addr>() {
            Ok(ip) => out.push((ip, kind)),
            Err(_) if text.parse::<Ipv6Addr>().is_ok() => {}
            Err(_) => warnings.push(reject(
                "invalid_external_ip",
                format!("{what} {text:?} is not an IP address; skipped"),
            )),
        }
    }
    out.sort();
    out.dedup();
    out
}

fn checked_port(
    key: &ObjectRef,
    port: &PortInput,
    warnings: &mut Vec<Rejection>,
) -> Option<(Protocol, u16)> {
    // Named only when something is wrong with it.
    let label = || {
        if port.name.is_empty() {
            port.port.to_string()
        } else {
            port.name.to_string()
        }
    };
    let mut skip = |code: &'static str, reason: String| {
        warnings.push(Rejection {
            object: format!("Service {key} port {}", label()),
            code,
            reason,
        });
    };
    let protocol = match &*port.protocol {
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
    Some((protocol, number))
}

fn affinity_timeout(service: &ServiceInput) -> Result<u32, String> {
    if !service.client_ip_affinity {
        return Ok(0);
    }
    match service.affinity_timeout {
        None => Ok(DEFAULT_AFFINITY_TIMEOUT_S),
        Some(t) if (1..=MAX_AFFINITY_TIMEOUT_S as i32).contains(&t) => Ok(t as u32),
        Some(t) => Err(format!(
            "sessionAffinityConfig.clientIP.timeoutSeconds {t} is outside 1..={MAX_AFFINITY_TIMEOUT_S}"
        )),
    }
}
