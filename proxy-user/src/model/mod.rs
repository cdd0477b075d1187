//! The desired state: which frontends exist and which backends each one spreads over, with
//! what weight. Pure functions of the objects a source provides; no kernel, no I/O. Both
//! dataplanes (eBPF maps, iptables rules) are written from this.

mod endpoints;
pub mod input;
mod interned;
pub mod node;
mod object_ref;
mod service;
mod topology;
pub mod weights;

use std::{collections::BTreeMap, fmt, net::IpAddr};

use serde::Serialize;

pub use node::NodeContext;
pub use object_ref::ObjectRef;
pub use service::{parse_cidr, translate_service};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => proxy_common::IPPROTO_TCP,
            Protocol::Udp => proxy_common::IPPROTO_UDP,
        }
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            proxy_common::IPPROTO_TCP => Some(Protocol::Tcp),
            proxy_common::IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// An IP family. A Service is served in each family it has a ClusterIP of, as kube-proxy
/// (one proxier per family) serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Family {
    #[serde(rename = "IPv4")]
    Ipv4,
    #[serde(rename = "IPv6")]
    Ipv6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    pub const fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// As Kubernetes spells it (`ipFamilies`, an EndpointSlice's `addressType`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        }
    }

    /// Whether `ip` is of this family.
    pub const fn holds(self, ip: IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::Ipv4, IpAddr::V4(_)) | (Family::Ipv6, IpAddr::V6(_))
        )
    }
}

/// `ip:port`, IPv6 in brackets: `198.18.1.2:8080`, `[2001:db8::1:2]:8080`.
pub struct HostPort(pub IpAddr, pub u16);

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.1),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.1),
        }
    }
}

/// What a client connects to: ServiceIP:port/protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FrontendAddr {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl FrontendAddr {
    pub const fn family(&self) -> Family {
        Family::of(self.ip)
    }
}

impl fmt::Display for FrontendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            HostPort(self.ip, self.port),
            self.protocol.as_str()
        )
    }
}

/// An endpoint address: pod IP and target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendAddr {
    pub ip: IpAddr,
    pub port: u16,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        HostPort(self.ip, self.port).fmt(f)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WeightedBackend {
    pub addr: BackendAddr,
    /// 0 keeps the backend listed but takes it out of new connections.
    pub weight: u32,
    /// Serving but not chosen for new connections (terminating while ready endpoints
    /// exist, or outside this node's topology hints), weight 0: the UDP flows already on
    /// it stay there, as kube-proxy leaves their conntrack entries to an endpoint that
    /// still serves. The iptables rules do not hold it.
    pub flows_only: bool,
}

impl WeightedBackend {
    /// Whether the flows already on this backend stay there: it takes new connections,
    /// or it still serves.
    pub const fn keeps_flows(&self) -> bool {
        self.weight > 0 || self.flows_only
    }
}

/// How clients reach a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

impl FrontendKind {
    pub const ALL: [FrontendKind; 4] = [
        FrontendKind::ClusterIp,
        FrontendKind::NodePort,
        FrontendKind::ExternalIp,
        FrontendKind::LoadBalancer,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            FrontendKind::ClusterIp => "ClusterIP",
            FrontendKind::NodePort => "NodePort",
            FrontendKind::ExternalIp => "ExternalIP",
            FrontendKind::LoadBalancer => "LoadBalancer",
        }
    }
}

/// One frontend as it should be programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendSpec {
    /// `namespace/name:port` (`:port` only for a named port), as kube-proxy names it.
    /// Shared by the port's frontends and every copy of them.
    pub service: std::sync::Arc<str>,
    pub kind: FrontendKind,
    /// ClientIP affinity timeout; 0 for none.
    pub affinity_timeout_s: u32,
    /// Only this node's endpoints are used (internalTrafficPolicy Local); when there are
    /// none the traffic is dropped rather than rejected (it still fails at once).
    pub local_only: bool,
    /// Sorted by address, no duplicates. What sockets on this node reach. Shared: a port's
    /// frontends (ClusterIP, NodePorts, external IPs) hold one list, and so do the
    /// syncer's last good copy and the dataplane's installed one (at 100,000 Services the
    /// copies cost tens of megabytes).
    pub backends: std::sync::Arc<[WeightedBackend]>,
    /// Some endpoint anywhere in the cluster takes new connections (ready, or serving and
    /// terminating, with a non-zero weight). Under a Local policy without a local
    /// endpoint, kube-proxy drops the traffic if so ("has no local endpoints") and rejects
    /// it if not ("has no endpoints").
    pub serving_anywhere: bool,
    /// externalTrafficPolicy Local, on a NodePort, ExternalIP or LoadBalancer frontend:
    /// traffic arriving from outside the node keeps its source address and reaches only
    /// these endpoints (this node's; none means it is dropped). `None` for the Cluster
    /// policy, where outside traffic is masqueraded and reaches `backends` like the rest.
    /// Sockets on the node are never subject to it (kube-proxy's "route LOCAL traffic").
    pub external_local: Option<Vec<WeightedBackend>>,
    /// loadBalancerSourceRanges, on a LoadBalancer frontend: who may reach it from
    /// outside the node. `None`: anyone.
    pub source_ranges: Option<Box<SourceRanges>>,
    /// The Service's health check node port (a LoadBalancer with externalTrafficPolicy
    /// Local), on each of its frontends.
    pub health_check_node_port: Option<u16>,
}

/// The clients a LoadBalancer frontend accepts from outside the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceRanges {
    /// Networks (address, prefix length) of the frontend's own family. Empty: nobody
    /// (every range given was of another family or invalid: closed rather than open).
    pub cidrs: Vec<(IpAddr, u8)>,
    /// A range holds one of the node's addresses: traffic the node sends to its own load
    /// balancer IP (which arrives from that IP) is let through too, as kube-proxy does.
    pub allow_node: bool,
}

impl FrontendSpec {
    /// Backends that new connections can reach.
    pub fn usable(&self) -> impl Iterator<Item = &WeightedBackend> {
        self.backends.iter().filter(|b| b.weight > 0)
    }

    /// The backends whose flows go stale when this frontend becomes `next` (`None`: it is
    /// removed): each kept its flows here and does not there (deleted, no longer serving,
    /// weight 0). Both dataplanes act on them: the iptables mode deletes their UDP
    /// conntrack entries, the eBPF mode destroys their connected sockets.
    pub fn left_for(&self, next: Option<&FrontendSpec>) -> Vec<BackendAddr> {
        let kept = |b: &WeightedBackend| {
            next.is_some_and(|n| {
                n.backends
                    .iter()
                    .any(|k| k.addr == b.addr && k.keeps_flows())
            })
        };
        self.backends
            .iter()
            .filter(|b| b.keeps_flows() && !kept(b))
            .map(|b| b.addr)
            .collect()
    }
}

/// Every frontend of the node.
pub type DesiredState = BTreeMap<FrontendAddr, FrontendSpec>;

/// Why an object, or a part of it, could not be used. `object` names it the way an
/// operator would look it up: `Service default/web`, `Service default/web port dns`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub object: String,
    /// A stable, low-cardinality code for metrics: `invalid_cluster_ip`, `ip_family_mismatch`...
    pub code: &'static str,
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}

/// A LoadBalancer Service with externalTrafficPolicy Local: the node port where load
/// balancers ask this node whether it has endpoints, and how many ready ones it has (the
/// number kube-proxy reports: distinct local endpoint addresses over all ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub node_port: u16,
    pub local_endpoints: usize,
}

/// The frontends of one Service, plus what was wrong with the parts that were skipped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceFrontends {
    pub frontends: Vec<(FrontendAddr, FrontendSpec)>,
    /// Its health check node port, when it has one.
    pub health_check: Option<HealthCheck>,
    /// Problems that did not stop the Service from being served (a malformed weights
    /// annotation, one unsupported port among several).
    pub warnings: Vec<Rejection>,
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod dual_stack_tests;

#[cfg(test)]
mod topology_tests;
