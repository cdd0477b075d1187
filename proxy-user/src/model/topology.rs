//! Which topology hints narrow a Service port's cluster-wide endpoints on this node, as
//! kube-proxy 1.35 decides it (pkg/proxy/topology.go, `topologyModeFromHints` and
//! `availableForTopology`).
//!
//! The proxy reads the hints, never `spec.trafficDistribution` itself: the EndpointSlice
//! controller turns `PreferSameNode` into `hints.forNodes` (and `forZones`), and
//! `PreferSameZone`, its older name `PreferClose` and the `topology-mode: Auto`
//! annotation into `hints.forZones`. From the ready endpoints:
//!
//! - every one has node hints and one is hinted for this node: only those hinted for
//!   this node;
//! - else every one has zone hints and one is hinted for this node's zone: only those
//!   hinted for this zone;
//! - else all of them. A half-hinted slice (hints being rolled out) or a node nobody
//!   hinted for never blackholes traffic.
//!
//! Unready endpoints play no part; the serving-terminating fallback (used when nothing is
//! ready) ignores topology, as kube-proxy's does.

use super::{endpoints::PortEndpoint, node::NodeContext};

/// How the hints narrow the ready endpoints of one Service port on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology<'a> {
    /// No narrowing: every ready endpoint.
    Any,
    /// The endpoints hinted for this node (PreferSameNode).
    SameNode(&'a str),
    /// The endpoints hinted for this node's zone (PreferSameZone, PreferClose).
    SameZone(&'a str),
}

impl<'a> Topology<'a> {
    /// kube-proxy's choice for `endpoints` on `node`.
    pub fn of(endpoints: &[PortEndpoint], node: &'a NodeContext) -> Self {
        let name = node.name.as_deref();
        let zone = node.zone.as_deref();
        let mut any_ready = false;
        let (mut all_node_hinted, mut one_for_node) = (true, false);
        let (mut all_zone_hinted, mut one_for_zone) = (true, false);
        for e in endpoints.iter().filter(|e| e.endpoint.ready) {
            any_ready = true;
            let nodes = e.endpoint.node_hints();
            all_node_hinted &= !nodes.is_empty();
            one_for_node |= name.is_some_and(|n| nodes.iter().any(|h| &**h == n));
            let zones = e.endpoint.zone_hints();
            all_zone_hinted &= !zones.is_empty();
            one_for_zone |= zone.is_some_and(|z| zones.iter().any(|h| &**h == z));
        }
        match (name, zone) {
            (Some(name), _) if any_ready && all_node_hinted && one_for_node => Self::SameNode(name),
            (_, Some(zone)) if any_ready && all_zone_hinted && one_for_zone => Self::SameZone(zone),
            _ => Self::Any,
        }
    }

    /// Whether `endpoint` takes this node's cluster-wide traffic under this choice.
    pub fn admits(&self, endpoint: &PortEndpoint) -> bool {
        let hinted = |hints: &[std::sync::Arc<str>], want: &str| hints.iter().any(|h| &**h == want);
        match *self {
            Self::Any => true,
            Self::SameNode(name) => hinted(endpoint.endpoint.node_hints(), name),
            Self::SameZone(zone) => hinted(endpoint.endpoint.zone_hints(), zone),
        }
    }
}
