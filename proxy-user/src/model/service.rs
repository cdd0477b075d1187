//! One Service and its EndpointSlices -> its frontends.

use std::net::Ipv4Addr;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{
    FrontendAddr, FrontendSpec, Protocol, Rejection, ServiceFrontends, WeightedBackend,
    endpoints::{port_endpoints, usable},
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
) -> Option<Result<ServiceFrontends, Rejection>> {
    let reject = |reason: String| Rejection {
        object: format!("Service {key}"),
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
    let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
    if cluster_ip == "None" {
        return None; // headless: DNS only
    }
    if cluster_ip.is_empty() {
        return Some(Err(reject("has no clusterIP yet".into())));
    }
    // Dual-stack Services list both families in clusterIPs; we serve the IPv4 one.
    let ips: Vec<&str> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => vec![cluster_ip],
    };
    let ip = match ips.iter().find_map(|ip| ip.parse::<Ipv4Addr>().ok()) {
        Some(ip) => ip,
        None if ips
            .iter()
            .all(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()) =>
        {
            return Some(Err(reject(format!(
                "clusterIP {cluster_ip} is IPv6; this node serves IPv4 only"
            ))));
        }
        None => {
            return Some(Err(reject(format!(
                "clusterIP {cluster_ip:?} is not an IP address"
            ))));
        }
    };

    let affinity_timeout_s = match affinity_timeout(service) {
        Ok(t) => t,
        Err(reason) => return Some(Err(reject(reason))),
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
            out.warnings.push(reject(format!(
                "annotation {ANNOTATION} is malformed ({reason}); using equal weights"
            )));
            Weights::default()
        }),
    };

    for port in spec.ports.iter().flatten() {
        let port_name = port.name.as_deref().unwrap_or("");
        let port_label = if port_name.is_empty() {
            port.port.to_string()
        } else {
            port_name.to_owned()
        };
        let port_reject = |reason: String| Rejection {
            object: format!("Service {key} port {port_label}"),
            reason,
        };
        let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                out.warnings.push(port_reject(format!(
                    "protocol {other} is not supported; port skipped"
                )));
                continue;
            }
        };
        let Some(number) = u16::try_from(port.port).ok().filter(|p| *p != 0) else {
            out.warnings.push(port_reject(format!(
                "port {} is out of range; port skipped",
                port.port
            )));
            continue;
        };
        let endpoints = usable(port_endpoints(
            slices,
            port_name,
            protocol,
            &mut out.warnings,
        ));
        let mut backends: Vec<WeightedBackend> = endpoints
            .iter()
            .map(|e| WeightedBackend {
                addr: e.addr,
                weight: weights.of(e.target_name.as_deref(), &e.addr.ip.to_string()),
            })
            .collect();
        backends.sort();
        let name = if port_name.is_empty() {
            key.to_string()
        } else {
            format!("{key}:{port_name}")
        };
        out.frontends.push((
            FrontendAddr {
                ip,
                port: number,
                protocol,
            },
            FrontendSpec {
                service: name,
                affinity_timeout_s,
                backends,
            },
        ));
    }
    Some(Ok(out))
}

fn affinity_timeout(service: &Service) -> Result<u32, String> {
    let spec = service.spec.as_ref();
    if spec.and_then(|s| s.session_affinity.as_deref()) != Some("ClientIP") {
        return Ok(0);
    }
    let configured = spec
        .and_then(|s| s.session_affinity_config.as_ref())
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
