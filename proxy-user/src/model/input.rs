//! What the model reads of a Service or an EndpointSlice, extracted once when the object
//! arrives. The store keeps these instead of the API objects: a Service or a slice is a
//! tenth of the size (no managedFields, no unused fields, addresses already parsed), which
//! is what keeps the agent small at 10,000 Services.

use std::{net::IpAddr, sync::Arc};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::{Family, interned::interned, weights::ANNOTATION as WEIGHTS_ANNOTATION};

/// Services with this label belong to another proxy (kube-proxy ignores them too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInput {
    /// Labelled `service.kubernetes.io/service-proxy-name`: another proxy's.
    pub other_proxy: bool,
    /// `spec.type`, `ClusterIP` when unset. The repeated strings of these inputs (types,
    /// protocols, port names, node names, zones) are shared ([`interned`]).
    pub type_: Arc<str>,
    pub cluster_ip: Box<str>,
    pub cluster_ips: Box<[Box<str>]>,
    pub ports: Box<[PortInput]>,
    pub client_ip_affinity: bool,
    pub affinity_timeout: Option<i32>,
    pub internal_traffic_local: bool,
    pub external_traffic_local: bool,
    pub health_check_node_port: Option<i32>,
    /// What most Services leave empty, in a box of its own (`None` when all of it is
    /// empty): 56 bytes less for each Service that does (5.6 MB at 100,000).
    pub uncommon: Option<Box<UncommonServiceInput>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UncommonServiceInput {
    pub external_ips: Box<[Box<str>]>,
    /// LoadBalancer ingress IPs whose ipMode is not Proxy.
    pub load_balancer_ips: Box<[Box<str>]>,
    pub load_balancer_source_ranges: Box<[Box<str>]>,
    pub weights: Option<Box<str>>,
}

impl ServiceInput {
    pub fn external_ips(&self) -> &[Box<str>] {
        self.uncommon.as_ref().map_or(&[], |u| &u.external_ips)
    }

    pub fn load_balancer_ips(&self) -> &[Box<str>] {
        self.uncommon.as_ref().map_or(&[], |u| &u.load_balancer_ips)
    }

    pub fn load_balancer_source_ranges(&self) -> &[Box<str>] {
        self.uncommon
            .as_ref()
            .map_or(&[], |u| &u.load_balancer_source_ranges)
    }

    pub fn weights(&self) -> Option<&str> {
        self.uncommon.as_ref().and_then(|u| u.weights.as_deref())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInput {
    pub name: Arc<str>,
    pub port: i32,
    pub protocol: Arc<str>,
    pub node_port: Option<i32>,
}

impl From<&Service> for ServiceInput {
    fn from(service: &Service) -> Self {
        let spec = service.spec.clone().unwrap_or_default();
        let boxed =
            |v: Option<Vec<String>>| v.unwrap_or_default().into_iter().map(Into::into).collect();
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        let uncommon = UncommonServiceInput {
            external_ips: boxed(spec.external_ips),
            load_balancer_ips: ingress
                .into_iter()
                .flatten()
                .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
                .filter_map(|i| i.ip.as_deref().map(Into::into))
                .collect(),
            load_balancer_source_ranges: boxed(spec.load_balancer_source_ranges),
            weights: service
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(WEIGHTS_ANNOTATION))
                .map(|w| w.as_str().into()),
        };
        Self {
            other_proxy: service
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL)),
            type_: interned(spec.type_.as_deref().unwrap_or("ClusterIP")),
            cluster_ip: spec.cluster_ip.unwrap_or_default().into(),
            cluster_ips: boxed(spec.cluster_ips),
            ports: spec
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| PortInput {
                    name: interned(p.name.as_deref().unwrap_or_default()),
                    port: p.port,
                    protocol: interned(p.protocol.as_deref().unwrap_or("TCP")),
                    node_port: p.node_port,
                })
                .collect(),
            client_ip_affinity: spec.session_affinity.as_deref() == Some("ClientIP"),
            affinity_timeout: spec
                .session_affinity_config
                .and_then(|c| c.client_ip)
                .and_then(|c| c.timeout_seconds),
            internal_traffic_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
            external_traffic_local: spec.external_traffic_policy.as_deref() == Some("Local"),
            health_check_node_port: spec.health_check_node_port,
            uncommon: (uncommon != UncommonServiceInput::default()).then(|| Box::new(uncommon)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInput {
    /// `namespace/name`, for messages.
    pub name: Box<str>,
    /// addressType IPv4 or IPv6; `None` for FQDN (not ours to serve, as for kube-proxy).
    pub family: Option<Family>,
    pub ports: Box<[SlicePort]>,
    pub endpoints: Box<[EndpointInput]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    pub name: Arc<str>,
    pub port: Option<i32>,
    pub protocol: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointInput {
    /// The first address (the one kube-proxy uses), parsed; the text if it is not an IP
    /// address.
    pub address: Result<IpAddr, Box<str>>,
    pub target_name: Option<Box<str>>,
    pub node_name: Option<Arc<str>>,
    /// `hints`, boxed: `None` when it names no zone and no node, as for every endpoint
    /// of a Service without a trafficDistribution (8 bytes where two lists take 32).
    pub hints: Option<Box<EndpointHints>>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// The topology hints the EndpointSlice controller writes for a Service's
/// `trafficDistribution` (or its `service.kubernetes.io/topology-mode: Auto` annotation):
/// the zones (`forZones`) and nodes (`forNodes`, PreferSameNode) whose traffic the
/// endpoint should take.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointHints {
    pub for_zones: Box<[Arc<str>]>,
    pub for_nodes: Box<[Arc<str>]>,
}

impl EndpointInput {
    /// The zones it is hinted for (`hints.forZones`); empty when it has none.
    pub fn zone_hints(&self) -> &[Arc<str>] {
        self.hints.as_ref().map_or(&[], |h| &h.for_zones)
    }

    /// The nodes it is hinted for (`hints.forNodes`); empty when it has none.
    pub fn node_hints(&self) -> &[Arc<str>] {
        self.hints.as_ref().map_or(&[], |h| &h.for_nodes)
    }
}

impl From<&k8s_openapi::api::discovery::v1::EndpointHints> for EndpointHints {
    fn from(hints: &k8s_openapi::api::discovery::v1::EndpointHints) -> Self {
        Self {
            for_zones: hints
                .for_zones
                .iter()
                .flatten()
                .map(|z| interned(&z.name))
                .collect(),
            for_nodes: hints
                .for_nodes
                .iter()
                .flatten()
                .map(|n| interned(&n.name))
                .collect(),
        }
    }
}

impl From<&EndpointSlice> for SliceInput {
    fn from(slice: &EndpointSlice) -> Self {
        let meta = &slice.metadata;
        Self {
            name: format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or("default"),
                meta.name.as_deref().unwrap_or("<unnamed>")
            )
            .into(),
            family: match slice.address_type.as_str() {
                "IPv4" => Some(Family::Ipv4),
                "IPv6" => Some(Family::Ipv6),
                _ => None,
            },
            ports: slice
                .ports
                .iter()
                .flatten()
                .map(|p| SlicePort {
                    name: interned(p.name.as_deref().unwrap_or("")),
                    port: p.port,
                    protocol: interned(p.protocol.as_deref().unwrap_or("TCP")),
                })
                .collect(),
            endpoints: slice
                .endpoints
                .iter()
                .flatten()
                .filter_map(|e| {
                    let first = e.addresses.first()?;
                    let conditions = e.conditions.as_ref();
                    // The API says: nil ready and nil serving mean true; nil terminating false.
                    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                    Some(EndpointInput {
                        address: first.parse().map_err(|_| first.as_str().into()),
                        target_name: e
                            .target_ref
                            .as_ref()
                            .and_then(|r| r.name.as_deref())
                            .map(Into::into),
                        node_name: e.node_name.as_deref().map(interned),
                        hints: e
                            .hints
                            .as_ref()
                            .map(EndpointHints::from)
                            .filter(|h| *h != EndpointHints::default())
                            .map(Box::new),
                        ready,
                        serving: conditions.and_then(|c| c.serving).unwrap_or(ready),
                        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
                    })
                })
                .collect(),
        }
    }
}
