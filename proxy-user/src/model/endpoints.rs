//! Which endpoints of a Service port receive new connections, as kube-proxy decides it
//! (pkg/proxy/topology.go, CategorizeEndpoints):
//!
//! - cluster traffic: the ready endpoints, narrowed to this node or its zone when topology
//!   hints apply ([`Topology`]); if none is ready, the serving and terminating endpoints;
//! - local traffic (internalTrafficPolicy Local): the ready endpoints on this node; if none,
//!   the serving and terminating ones on this node; if none, nothing (the traffic is dropped).

use super::{
    BackendAddr, Family, Protocol, Rejection,
    input::{EndpointInput, SliceInput},
    node::NodeContext,
    topology::Topology,
};

/// An endpoint of one Service port: its address with the slice port's number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEndpoint<'a> {
    pub addr: BackendAddr,
    pub endpoint: &'a EndpointInput,
}

impl PortEndpoint<'_> {
    fn ready(&self) -> bool {
        self.endpoint.ready
    }

    fn serving_terminating(&self) -> bool {
        self.endpoint.serving && self.endpoint.terminating
    }
}

/// The endpoints of the Service port named `port_name` (empty for an unnamed port) with
/// `protocol`, over the slices of `family`, deduplicated by address. The slice port
/// carries the resolved target port, which is how named targetPorts are honoured.
pub fn port_endpoints<'a>(
    slices: &[&'a SliceInput],
    family: Family,
    port_name: &str,
    protocol: Protocol,
    skipped: &mut Vec<Rejection>,
) -> Vec<PortEndpoint<'a>> {
    let mut found: Vec<PortEndpoint> = Vec::new();
    for slice in slices {
        if slice.family != Some(family) {
            // The other family's slices serve the other family's frontends (or none, when
            // the Service has no ClusterIP of it: kube-proxy ignores them too); FQDN
            // slices are not for proxies. Nothing to report.
            continue;
        }
        let object = || format!("EndpointSlice {}", slice.name);
        let Some(port) = slice
            .ports
            .iter()
            .find(|p| &*p.name == port_name && &*p.protocol == protocol.as_str())
        else {
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
        for endpoint in slice.endpoints.iter() {
            let ip = match &endpoint.address {
                Ok(ip) if family.holds(*ip) => *ip,
                Ok(ip) => {
                    skipped.push(Rejection {
                        object: object(),
                        code: "invalid_endpoint_address",
                        reason: format!(
                            "endpoint address {ip} is not an {} address; endpoint skipped",
                            family.as_str()
                        ),
                    });
                    continue;
                }
                Err(text) => {
                    skipped.push(Rejection {
                        object: object(),
                        code: "invalid_endpoint_address",
                        reason: format!(
                            "endpoint address {text:?} is not an {} address; endpoint skipped",
                            family.as_str()
                        ),
                    });
                    continue;
                }
            };
            let addr = BackendAddr { ip, port: number };
            found.push(PortEndpoint { addr, endpoint });
        }
    }
    // The same address in two slices (during a slice split): the ready copy is kept,
    // else the first. (A stable sort keeps the order of the slices among equals.)
    found.sort_by_key(|e| (e.addr, !e.endpoint.ready));
    found.dedup_by_key(|e| e.addr);
    found
}

/// The endpoints that serve (ready, or serving while terminating), chosen for new
/// connections or not: kube-proxy keeps the UDP flows already on them.
pub fn serving<'a, 'b>(
    endpoints: &'b [PortEndpoint<'a>],
) -> impl Iterator<Item = &'b PortEndpoint<'a>> {
    endpoints
        .iter()
        .filter(|e| e.endpoint.ready || e.endpoint.serving)
}

/// Endpoints for cluster-wide traffic: the ready ones (narrowed by topology hints when
/// they apply), else the serving-terminating ones.
pub fn cluster<'a>(endpoints: &[PortEndpoint<'a>], node: &NodeContext) -> Vec<PortEndpoint<'a>> {
    let topology = Topology::of(endpoints, node);
    ready_else_terminating(endpoints, |e| topology.admits(e), |_| true)
}

/// Endpoints for traffic with a Local policy: the same rule, on this node only.
pub fn local<'a>(endpoints: &[PortEndpoint<'a>], node: &NodeContext) -> Vec<PortEndpoint<'a>> {
    let on_node = |e: &PortEndpoint| node.is_local(e.endpoint.node_name.as_deref());
    ready_else_terminating(endpoints, on_node, on_node)
}

/// kube-proxy's rule for both: the ready endpoints that `ready_filter` keeps; if there are
/// none, the serving and terminating ones that `fallback_filter` keeps. (Topology hints
/// narrow only the ready set, locality both.)
fn ready_else_terminating<'a>(
    endpoints: &[PortEndpoint<'a>],
    ready_filter: impl Fn(&PortEndpoint) -> bool,
    fallback_filter: impl Fn(&PortEndpoint) -> bool,
) -> Vec<PortEndpoint<'a>> {
    let ready: Vec<PortEndpoint> = endpoints
        .iter()
        .filter(|e| e.ready() && ready_filter(e))
        .cloned()
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .iter()
        .filter(|e| e.serving_terminating() && fallback_filter(e))
        .cloned()
        .collect()
}
