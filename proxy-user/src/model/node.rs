//! What the model needs to know about the node it runs on: its name (which endpoints are
//! local), its zone (topology hints) and its addresses of both families (NodePort
//! frontends).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeContext {
    pub name: Option<String>,
    pub zone: Option<String>,
    /// Addresses a NodePort is served on, from the Node's status (InternalIP, ExternalIP).
    pub addresses: Vec<IpAddr>,
    /// NodePorts served on 127.0.0.1 to the node's own sockets too (kube-proxy's
    /// `--iptables-localhost-nodeports`, on by default; `--localhost-nodeports`). IPv4
    /// only, as in kube-proxy (there is no IPv6 route_localnet).
    pub localhost_node_ports: bool,
}

impl Default for NodeContext {
    fn default() -> Self {
        Self {
            name: None,
            zone: None,
            addresses: Vec::new(),
            localhost_node_ports: true,
        }
    }
}

/// What the model reads of a Node object (a Node's status alone, its images listed, runs
/// to tens of kilobytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInput {
    pub zone: Option<String>,
    /// InternalIP and ExternalIP addresses of both families, sorted, without duplicates.
    pub addresses: Vec<IpAddr>,
}

impl From<&Node> for NodeInput {
    fn from(node: &Node) -> Self {
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .cloned();
        let mut addresses: Vec<IpAddr> = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse().ok())
            .collect();
        addresses.sort();
        addresses.dedup();
        Self { zone, addresses }
    }
}

impl NodeContext {
    /// The context of `name`, from its Node object when there is one.
    pub fn new(name: Option<&str>, node: Option<&NodeInput>) -> Self {
        Self {
            name: name.map(str::to_owned),
            zone: node.and_then(|n| n.zone.clone()),
            addresses: node.map(|n| n.addresses.clone()).unwrap_or_default(),
            localhost_node_ports: true,
        }
    }

    pub fn is_local(&self, node_name: Option<&str>) -> bool {
        self.name.is_some() && self.name.as_deref() == node_name
    }
}
