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
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use super::ObjectRef;
use super::{
    Family, FrontendAddr, FrontendKind, FrontendSpec, HealthCheck, Protocol, Rejection,
    ServiceFrontends, SourceRanges, WeightedBackend,
    endpoints::{self, PortEndpoint, port_endpoints},
    input::{PortInput, ServiceInput, SliceInput},
    node::NodeContext,
    weights::{ANNOTATION, Weights},
};

pub const DEFAULT_AFFINITY_TIMEOUT_S: u32 = 10_800;
pub const MAX_AFFINITY_TIMEOUT_S: u32 = 86_400;

type Reject<'a> = &'a dyn Fn(&'static str, String) -> Rejection;

/// Translates one Service. `None` when the Service is not ours to serve (headless,
/// ExternalName, another proxy's label); `Err` when it cannot be used at all.
///
/// A Service is served in each family it has a ClusterIP of, as kube-proxy's per-family
/// proxiers serve it: that family's frontends take only that family's endpoints (the
/// slices of its addressType), node addresses, external IPs and source ranges.
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
    let mut out = ServiceFrontends::default();
    let cluster_ips = match cluster_ips(service, &mut out.warnings, &reject) {
        Ok(Some(ips)) => ips,
        Ok(None) => return None, // headless: DNS only
        Err((code, reason)) => return Some(Err(reject(code, reason))),
    };
    let affinity_timeout_s = match affinity_timeout(service) {
        Ok(t) => t,
        Err(reason) => return Some(Err(reject("invalid_affinity_timeout", reason))),
    };

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
    let families: Vec<Family> = cluster_ips.iter().map(|ip| Family::of(*ip)).collect();
    let external = external_addresses(service, &families, &mut out.warnings, &reject);
    let node_ports = matches!(&*service.type_, "NodePort" | "LoadBalancer");
    // Ready endpoints on this node, over all ports and families: what the health check
    // node port counts.
    let mut local_ready: BTreeSet<IpAddr> = BTreeSet::new();
    let health_check_node_port = health_check_node_port(service, &mut out.warnings, &reject);
    let source_cidrs = source_cidrs(service, &mut out.warnings, &reject);
    let ports: Vec<(&PortInput, Protocol, u16)> = service
        .ports
        .iter()
        .filter_map(|port| {
            checked_port(key, port, &mut out.warnings).map(|(protocol, n)| (port, protocol, n))
        })
        .collect();

    for cluster_ip in cluster_ips {
        let family = Family::of(cluster_ip);
        let external: Vec<(IpAddr, FrontendKind)> = external
            .iter()
            .copied()
            .filter(|(ip, _)| family.holds(*ip))
            .collect();
        let source_ranges = source_cidrs.as_ref().and_then(|cidrs| {
            family_source_ranges(cidrs, family, node, &external, &mut out.warnings, &reject)
        });
        // kube-proxy's localhost NodePorts (`--iptables-localhost-nodeports`, on by
        // default): the node's own sockets reach a NodePort on 127.0.0.1 too. IPv4 only.
        let localhost = (node.localhost_node_ports && family == Family::Ipv4)
            .then_some(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let node_addresses: Vec<IpAddr> = node
            .addresses
            .iter()
            .copied()
            .filter(|ip| family.holds(*ip))
            .chain(localhost)
            .collect();

        for &(port, protocol, number) in &ports {
            let all = port_endpoints(slices, family, &port.name, protocol, &mut out.warnings);
            if health_check_node_port.is_some() {
                local_ready.extend(
                    all.iter()
                        .filter(|e| {
                            e.endpoint.ready && node.is_local(e.endpoint.node_name.as_deref())
                        })
                        .map(|e| e.addr.ip),
                );
            }
            let weigh = |chosen: Vec<PortEndpoint>| -> Vec<WeightedBackend> {
                let mut backends: Vec<WeightedBackend> = chosen
                    .iter()
                    .map(|e| WeightedBackend {
                        flows_only: false,
                        addr: e.addr,
                        weight: weights.of(e.endpoint.target_name.as_deref(), e.addr.ip),
                    })
                    .collect();
                backends.sort();
                backends
            };
            // A UDP port's endpoints that serve but take no new connections stay listed
            // (weight 0, `flows_only`): the flows already on them are not stale.
            let keep_serving = |mut backends: Vec<WeightedBackend>,
                                keep: &dyn Fn(&PortEndpoint) -> bool|
             -> Vec<WeightedBackend> {
                if protocol != Protocol::Udp {
                    return backends;
                }
                let chosen = backends.len();
                for e in endpoints::serving(&all).filter(|e| keep(e)) {
                    let drained = weights.of(e.endpoint.target_name.as_deref(), e.addr.ip) == 0;
                    if !drained && !backends[..chosen].iter().any(|b| b.addr == e.addr) {
                        backends.push(WeightedBackend {
                            addr: e.addr,
                            weight: 0,
                            flows_only: true,
                        });
                    }
                }
                backends.sort();
                backends
            };
            let on_node = |e: &PortEndpoint| node.is_local(e.endpoint.node_name.as_deref());
            // One list for every frontend of the port that uses them (Arc clones).
            let cluster_backends: Arc<[WeightedBackend]> =
                keep_serving(weigh(endpoints::cluster(&all, node)), &|_| true).into();
            let serving_anywhere = cluster_backends.iter().any(|b| b.weight > 0);
            // One name for all of the port's frontends (and every copy of them), in both
            // families, as kube-proxy names it.
            let name: Arc<str> = if port.name.is_empty() {
                key.to_string().into()
            } else {
                format!("{key}:{}", port.name).into()
            };
            let external_local = service
                .external_traffic_local
                .then(|| weigh(endpoints::local(&all, node)));
            let frontend = |kind, backends: Arc<[WeightedBackend]>, local_only| FrontendSpec {
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
                    source_ranges.clone().map(Box::new)
                } else {
                    None
                },
                health_check_node_port,
            };

            let node_port = port.node_port.filter(|p| node_ports && *p != 0);
            let clusterip_backends = if service.internal_traffic_local {
                keep_serving(weigh(endpoints::local(&all, node)), &on_node).into()
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
                for ip in &node_addresses {
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

/// The ClusterIPs, at most one per family, in the Service's order (`spec.clusterIPs`, else
/// `spec.clusterIP`); `None` for a headless Service. An entry that does not parse beside
/// one that does is skipped with a warning.
fn cluster_ips(
    service: &ServiceInput,
    warnings: &mut Vec<Rejection>,
    reject: Reject,
) -> Result<Option<Vec<IpAddr>>, (&'static str, String)> {
    let cluster_ip = &*service.cluster_ip;
    if cluster_ip == "None" {
        return Ok(None);
    }
    let texts: Vec<&str> = if service.cluster_ips.is_empty() {
        vec![cluster_ip]
    } else {
        service.cluster_ips.iter().map(|ip| &**ip).collect()
    };
    if texts.iter().all(|t| t.is_empty()) {
        return Err(("no_cluster_ip", "has no clusterIP yet".into()));
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    let mut bad: Vec<&str> = Vec::new();
    for text in texts {
        match text.parse::<IpAddr>() {
            Ok(ip) if !ips.iter().any(|i| Family::of(*i) == Family::of(ip)) => ips.push(ip),
            Ok(_) => {} // a second one of a family: the API server allows none
            Err(_) => bad.push(text),
        }
    }
    if ips.is_empty() {
        let shown = if bad.len() == 1 {
            format!("{:?}", bad[0])
        } else {
            format!("{bad:?}")
        };
        return Err((
            "invalid_cluster_ip",
            format!("clusterIP {shown} is not an IP address"),
        ));
    }
    for text in bad {
        warnings.push(reject(
            "invalid_cluster_ip",
            format!("clusterIPs entry {text:?} is not an IP address; skipped"),
        ));
    }
    Ok(Some(ips))
}

/// The health check node port of a LoadBalancer Service with externalTrafficPolicy Local.
fn health_check_node_port(
    service: &ServiceInput,
    warnings: &mut Vec<Rejection>,
    reject: Reject,
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

/// loadBalancerSourceRanges of a LoadBalancer Service that has some, of both families.
/// One that does not parse is skipped with a warning.
fn source_cidrs(
    service: &ServiceInput,
    warnings: &mut Vec<Rejection>,
    reject: Reject,
) -> Option<Vec<(IpAddr, u8)>> {
    if &*service.type_ != "LoadBalancer" || service.load_balancer_source_ranges().is_empty() {
        return None;
    }
    let mut cidrs = Vec::new();
    for text in service.load_balancer_source_ranges() {
        match parse_cidr(text.trim()) {
            Some(cidr) => cidrs.push(cidr),
            None => warnings.push(reject(
                "invalid_source_range",
                format!("loadBalancerSourceRanges entry {text:?} is not a CIDR; skipped"),
            )),
        }
    }
    cidrs.sort();
    cidrs.dedup();
    Some(cidrs)
}

/// The source ranges of `family`'s LoadBalancer frontends: the ranges of that family
/// (kube-proxy filters them per family). `None` (open) when valid ranges were given but
/// none of this family, as kube-proxy's per-family proxier sees it; when no range given
/// was valid, closed (nobody from outside), not open.
fn family_source_ranges(
    cidrs: &[(IpAddr, u8)],
    family: Family,
    node: &NodeContext,
    external: &[(IpAddr, FrontendKind)],
    warnings: &mut Vec<Rejection>,
    reject: Reject,
) -> Option<SourceRanges> {
    let valid_given = !cidrs.is_empty();
    let cidrs: Vec<(IpAddr, u8)> = cidrs
        .iter()
        .copied()
        .filter(|(ip, _)| family.holds(*ip))
        .collect();
    let has_load_balancer = external
        .iter()
        .any(|(_, kind)| *kind == FrontendKind::LoadBalancer);
    if cidrs.is_empty() && valid_given {
        // kube-proxy's per-family proxier keeps its own family's ranges, and an empty list
        // is no firewall at all.
        if has_load_balancer {
            warnings.push(reject(
                "source_ranges_other_family",
                format!(
                    "no loadBalancerSourceRanges entry is an {0} CIDR: the {0} load balancer IPs accept every client, as kube-proxy's {0} proxier does",
                    family.as_str()
                ),
            ));
        }
        return None;
    }
    let allow_node = node
        .addresses
        .iter()
        .any(|ip| cidrs.iter().any(|cidr| contains(*cidr, *ip)));
    Some(SourceRanges { cidrs, allow_node })
}

/// `203.0.113.0/25` -> (203.0.113.0, 25), `2001:db8::1/64` -> (2001:db8::, 64); the
/// address is masked to the prefix.
pub fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (ip, bits) = text.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let bits: u8 = bits.parse().ok().filter(|b| *b <= max_prefix(ip))?;
    Some((masked(ip, bits), bits))
}

const fn max_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `ip` with the bits beyond the first `bits` cleared.
fn masked(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(ip) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(ip) & mask))
        }
        IpAddr::V6(ip) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(ip) & mask))
        }
    }
}

fn contains((net, bits): (IpAddr, u8), ip: IpAddr) -> bool {
    Family::of(net) == Family::of(ip) && masked(ip, bits) == net
}

/// ExternalIPs and LoadBalancer ingress IPs of the families the Service is served in
/// (`ipMode: Proxy` ingress is left to the load balancer, as kube-proxy does, and was
/// dropped on ingest). One of another family is skipped with a warning.
fn external_addresses(
    service: &ServiceInput,
    families: &[Family],
    warnings: &mut Vec<Rejection>,
    reject: Reject,
) -> Vec<(IpAddr, FrontendKind)> {
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
        match text.parse::<IpAddr>() {
            Ok(ip) if families.contains(&Family::of(ip)) => out.push((ip, kind)),
            Ok(ip) => warnings.push(reject(
                "ip_family_mismatch",
                format!(
                    "{what} {ip} is {} and the Service has no {0} ClusterIP; skipped",
                    Family::of(ip).as_str()
                ),
            )),
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
