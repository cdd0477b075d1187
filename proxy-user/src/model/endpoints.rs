//! Which endpoints of a Service port receive new connections, as kube-proxy decides it
//! (pkg/proxy/topology.go, CategorizeEndpoints):
//!
//! - cluster traffic: the ready endpoints, narrowed to the node's zone when topology hints
//!   apply; if none is ready, the serving and terminating endpoints;
//! - local traffic (internalTrafficPolicy Local): the ready endpoints on this node; if none,
//!   the serving and terminating ones on this node; if none, nothing (the traffic is dropped).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{BackendAddr, Protocol, Rejection, node::NodeContext};

/// An endpoint of one Service port, after matching its slice port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEndpoint {
    pub addr: BackendAddr,
    pub target_name: Option<String>,
    pub node_name: Option<String>,
    /// Zones this endpoint is hinted for; empty when the slice carries no hints.
    pub zone_hints: BTreeSet<String>,
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
        let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
        let object = || format!("EndpointSlice {namespace}/{slice_name}");
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
        let Some(number) = u16::try_from(number).ok().filter(|n| *n != 0) else {
            skipped.push(Rejection {
                object: object(),
                code: "port_out_of_range",
                reason: format!("port {number} is out of range"),
            });
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            // The API says: nil ready and nil serving mean true; nil terminating means false.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            // kube-proxy uses the first address of an endpoint.
            let Some(address) = endpoint.addresses.first() else {
                continue;
            };
            let Ok(ip) = address.parse::<Ipv4Addr>() else {
                skipped.push(Rejection {
                    object: object(),
                    code: "invalid_endpoint_address",
                    reason: format!(
                        "endpoint address {address:?} is not an IPv4 address; endpoint skipped"
                    ),
                });
                continue;
            };
            let addr = BackendAddr { ip, port: number };
            let candidate = PortEndpoint {
                addr,
                target_name: endpoint.target_ref.as_ref().and_then(|r| r.name.clone()),
                node_name: endpoint.node_name.clone(),
                zone_hints: endpoint
                    .hints
                    .as_ref()
                    .and_then(|h| h.for_zones.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|z| z.name.clone())
                    .collect(),
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

/// Endpoints for cluster-wide traffic.
pub fn cluster(endpoints: &[PortEndpoint], node: &NodeContext) -> Vec<PortEndpoint> {
    let zone = node
        .zone
        .as_deref()
        .filter(|_| use_topology(endpoints, node));
    let ready: Vec<PortEndpoint> = endpoints
        .iter()
        .filter(|e| e.ready && zone.is_none_or(|z| e.zone_hints.contains(z)))
        .cloned()
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(|e| e.serving && e.terminating)
        .cloned()
        .collect()
}

/// Endpoints for traffic with a Local policy: on this node only.
pub fn local(endpoints: &[PortEndpoint], node: &NodeContext) -> Vec<PortEndpoint> {
    let on_node = |e: &&PortEndpoint| node.is_local(e.node_name.as_deref());
    let ready: Vec<PortEndpoint> = endpoints
        .iter()
        .filter(on_node)
        .filter(|e| e.ready)
        .cloned()
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(on_node)
        .filter(|e| e.serving && e.terminating)
        .cloned()
        .collect()
}

/// kube-proxy's canUseTopology: hints are used only when every ready endpoint has zone
/// hints and at least one is hinted for this node's zone; otherwise all endpoints are used
/// (so a half-hinted slice never blackholes a zone).
fn use_topology(endpoints: &[PortEndpoint], node: &NodeContext) -> bool {
    let Some(zone) = node.zone.as_deref() else {
        return false;
    };
    let mut for_zone = false;
    for e in endpoints.iter().filter(|e| e.ready) {
        if e.zone_hints.is_empty() {
            return false;
        }
        for_zone |= e.zone_hints.contains(zone);
    }
    for_zone
}
