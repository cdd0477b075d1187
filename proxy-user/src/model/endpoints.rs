//! Which endpoints of a Service port receive new connections, as kube-proxy decides it for
//! ClusterIP traffic (pkg/proxy/topology.go): the ready endpoints; if there are none, the
//! endpoints that are serving and terminating.

use std::{collections::BTreeMap, net::Ipv4Addr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{BackendAddr, Protocol, Rejection};

/// An endpoint of one Service port, after matching its slice port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEndpoint {
    pub addr: BackendAddr,
    pub target_name: Option<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// The endpoints of the Service port named `port_name` (empty for an unnamed port) with
/// `protocol`, over all slices, deduplicated by address. The slice port carries the
/// resolved target port, which is how named targetPorts are honoured.
pub fn port_endpoints(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    skipped: &mut Vec<Rejection>,
) -> Vec<PortEndpoint> {
    let mut by_addr: BTreeMap<BackendAddr, PortEndpoint> = BTreeMap::new();
    for slice in slices {
        let slice_name = slice.metadata.name.as_deref().unwrap_or("<unnamed>");
        if slice.address_type != "IPv4" {
            // IPv6 and FQDN slices are normal in dual-stack clusters; nothing to report.
            continue;
        }
        let Some(port) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == protocol.as_str()
        }) else {
            continue;
        };
        let Some(number) = port.port else { continue };
        let Ok(number) = u16::try_from(number) else {
            skipped.push(Rejection {
                object: format!("EndpointSlice {}", slice_name),
                reason: format!("port {number} is out of range"),
            });
            continue;
        };
        if number == 0 {
            skipped.push(Rejection {
                object: format!("EndpointSlice {}", slice_name),
                reason: "port 0 is out of range".into(),
            });
            continue;
        }
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            // The API says: nil ready and nil serving mean true; nil terminating means false.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let target_name = endpoint.target_ref.as_ref().and_then(|r| r.name.clone());
            // kube-proxy uses the first address of an endpoint.
            let Some(address) = endpoint.addresses.first() else {
                continue;
            };
            let Ok(ip) = address.parse::<Ipv4Addr>() else {
                skipped.push(Rejection {
                    object: format!("EndpointSlice {}", slice_name),
                    reason: format!(
                        "endpoint address {address:?} is not an IPv4 address; endpoint skipped"
                    ),
                });
                continue;
            };
            let addr = BackendAddr { ip, port: number };
            let candidate = PortEndpoint {
                addr,
                target_name,
                ready,
                serving,
                terminating,
            };
            // The same address in two slices (during a slice split): prefer the ready copy.
            by_addr
                .entry(addr)
                .and_modify(|e| {
                    if candidate.ready && !e.ready {
                        *e = candidate.clone();
                    }
                })
                .or_insert(candidate);
        }
    }
    by_addr.into_values().collect()
}

/// kube-proxy's choice for Cluster traffic policy.
pub fn usable(endpoints: Vec<PortEndpoint>) -> Vec<PortEndpoint> {
    if endpoints.iter().any(|e| e.ready) {
        endpoints.into_iter().filter(|e| e.ready).collect()
    } else {
        endpoints
            .into_iter()
            .filter(|e| e.serving && e.terminating)
            .collect()
    }
}
