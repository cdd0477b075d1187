//! The rules kube-proxy's iptables mode writes, as `iptables-restore` input, rendered per
//! service port (kube-proxy's unit: one KUBE-SVC chain per port name and protocol, shared
//! by the port's ClusterIP, ExternalIPs, LoadBalancer IPs and NodePort). Rules are written
//! exactly as kube-proxy writes them (match order, comments, `%.10f` probabilities), so
//! `iptables-save` output and every tutorial about KUBE-SVC chains applies.
//!
//! Which chains a service port gets follows kube-proxy's `syncProxyRules`:
//! - KUBE-SVC (cluster endpoints) when the internal policy is Cluster or the port is
//!   reachable from outside; KUBE-SVL (this node's endpoints) when a Local policy is used;
//! - KUBE-EXT for NodePort, ExternalIP and LoadBalancer traffic: it masquerades and jumps
//!   to KUBE-SVC (externalTrafficPolicy Cluster), or keeps the source and jumps to
//!   KUBE-SVL, sending pod and node traffic to KUBE-SVC (externalTrafficPolicy Local);
//! - a KUBE-SEP chain per endpoint that any of them uses;
//! - filter rules that REJECT traffic to a port without endpoints and DROP traffic a Local
//!   policy has no endpoint for.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

use super::{
    filter,
    names::{
        endpoint_chain, external_chain, firewall_chain, local_service_chain, protocol_name,
        service_chain,
    },
    probability::probabilities,
};
use crate::model::{
    DesiredState, Family, FrontendAddr, FrontendKind, FrontendSpec, Protocol, WeightedBackend,
};

use super::names::MASQ_MARK;

#[derive(Clone, Debug)]
pub struct RenderOptions {
    /// The family these rules are for: kube-proxy runs one proxier per family, writing
    /// the same chains into iptables and into ip6tables.
    pub family: Family,
    /// The cluster's pod CIDR of this family (kube-proxy's `--cluster-cidr`): traffic to
    /// a ClusterIP from outside it is masqueraded, and pods reaching an
    /// externalTrafficPolicy Local service through an external address use every
    /// endpoint. Without it, neither rule is written.
    pub cluster_cidr: Option<(IpAddr, u8)>,
    /// `MASQUERADE --random-fully`, where the kernel supports it.
    pub random_fully: bool,
    /// NodePorts on 127.0.0.1 too (kube-proxy's `--iptables-localhost-nodeports`, on by
    /// default): the agent sets `route_localnet` (`localnet`) and the filter table gets
    /// KUBE-FIREWALL's rule. Off, the NodePort jump leaves out 127.0.0.0/8. IPv4 only:
    /// kube-proxy's IPv6 proxier never serves NodePorts on ::1.
    pub localhost_node_ports: bool,
}

impl RenderOptions {
    /// Whether the filter table gets KUBE-FIREWALL's localnet rule: with localhost
    /// NodePorts, in IPv4 only (kube-proxy's `!isIPv6 && localhostNodePorts`).
    pub fn writes_localnet_rule(&self) -> bool {
        self.family == Family::Ipv4 && self.localhost_node_ports
    }

    /// The options of the IPv6 proxier that runs beside these (IPv4) ones, as kube-proxy's
    /// `NewDualStackProxier` makes it: the same but for its own cluster CIDR, and without
    /// localhost NodePorts.
    pub fn ipv6(&self, cluster_cidr: Option<(IpAddr, u8)>) -> Self {
        Self {
            family: Family::Ipv6,
            cluster_cidr,
            random_fully: self.random_fully,
            localhost_node_ports: false,
        }
    }
}

impl Default for RenderOptions {
    /// kube-proxy's defaults: no cluster CIDR, localhost NodePorts on.
    fn default() -> Self {
        Self {
            family: Family::Ipv4,
            cluster_cidr: None,
            random_fully: false,
            localhost_node_ports: true,
        }
    }
}

/// A service port: `namespace/name[:port]` and protocol. Its chains share one hash.
pub type PortKey = (std::sync::Arc<str>, Protocol);

/// Every frontend of `state`, grouped by service port.
pub fn by_port(state: &DesiredState) -> BTreeMap<PortKey, Vec<(&FrontendAddr, &FrontendSpec)>> {
    let mut ports: BTreeMap<PortKey, Vec<_>> = BTreeMap::new();
    for (addr, spec) in state {
        ports
            .entry((spec.service.clone(), addr.protocol))
            .or_default()
            .push((addr, spec));
    }
    ports
}

/// An argument as iptables-restore reads it: quoted when it holds a space.
fn arg(text: &str) -> String {
    if text.contains(char::is_whitespace) {
        format!("\"{text}\"")
    } else {
        text.to_owned()
    }
}

/// The nat chains kube-proxy always writes whole, and their fixed rules.
pub const FIXED_CHAINS: [&str; 4] = [
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];

/// The rules of one service port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortRules {
    /// nat KUBE-SERVICES: one jump per ClusterIP, ExternalIP and LoadBalancer IP served.
    pub services: Vec<String>,
    /// nat KUBE-NODEPORTS: the NodePort jump.
    pub nodeports: Vec<String>,
    /// filter KUBE-SERVICES / KUBE-EXTERNAL-SERVICES: REJECT and DROP rules.
    pub filter: Vec<String>,
    /// The port's own nat chains (KUBE-SVC/SVL/EXT/SEP), each with its rules in order.
    pub chains: Vec<(String, Vec<String>)>,
}

/// `-m tcp -p tcp`, kube-proxy's order.
fn proto_match(protocol: Protocol) -> String {
    let proto = protocol_name(protocol);
    format!("-m {proto} -p {proto}")
}

/// `-m tcp -p tcp -d IP --dport PORT`, kube-proxy's order.
fn destination(addr: &FrontendAddr) -> String {
    format!(
        "{} -d {} --dport {}",
        proto_match(addr.protocol),
        addr.ip,
        addr.port
    )
}

/// The endpoint sets of a service port, as kube-proxy categorises them.
struct Endpoints<'a> {
    cluster: Vec<&'a WeightedBackend>,
    local: Vec<&'a WeightedBackend>,
    internal_local: bool,
    external_local: bool,
    externally_accessible: bool,
}

impl<'a> Endpoints<'a> {
    fn of(frontends: &[(&'a FrontendAddr, &'a FrontendSpec)]) -> Self {
        let cluster_ip = frontends
            .iter()
            .find(|(_, s)| s.kind == FrontendKind::ClusterIp)
            .map(|(_, s)| *s);
        let external = frontends
            .iter()
            .find(|(_, s)| s.kind != FrontendKind::ClusterIp)
            .map(|(_, s)| *s);
        let internal_local = cluster_ip.is_some_and(|s| s.local_only);
        let external_local = external.is_some_and(|s| s.external_local.is_some());
        let usable = |b: &'a [WeightedBackend]| b.iter().filter(|b| b.weight > 0).collect();
        // The ClusterIP frontend carries the local set under internalTrafficPolicy Local;
        // external frontends always carry the cluster set (what node sockets reach), and
        // the local set under externalTrafficPolicy Local.
        let cluster = match (cluster_ip, external) {
            (Some(c), _) if !c.local_only => usable(&c.backends),
            (_, Some(e)) => usable(&e.backends),
            _ => Vec::new(),
        };
        let local = match (
            cluster_ip,
            external.and_then(|e| e.external_local.as_deref()),
        ) {
            (Some(c), _) if c.local_only => usable(&c.backends),
            (_, Some(local)) => usable(local),
            _ => Vec::new(),
        };
        Self {
            cluster,
            local,
            internal_local,
            external_local,
            externally_accessible: external.is_some(),
        }
    }

    /// kube-proxy's UsesClusterEndpoints: even with externalTrafficPolicy Local, traffic
    /// from pods and from the node to external addresses uses the cluster endpoints.
    fn uses_cluster(&self) -> bool {
        !self.internal_local || self.externally_accessible
    }

    fn uses_local(&self) -> bool {
        self.internal_local || (self.external_local && self.externally_accessible)
    }

    /// Every endpoint some chain jumps to, sorted by address, once each.
    fn reachable(&self) -> Vec<&'a WeightedBackend> {
        let mut all: Vec<&WeightedBackend> = Vec::new();
        if self.uses_cluster() {
            all.extend(&self.cluster);
        }
        if self.uses_local() {
            all.extend(&self.local);
        }
        all.sort_by_key(|b| b.addr);
        all.dedup_by_key(|b| b.addr);
        all
    }
}

/// Renders one service port from all its frontends.
pub fn port_rules(
    service: &str,
    protocol: Protocol,
    frontends: &[(&FrontendAddr, &FrontendSpec)],
    options: &RenderOptions,
) -> PortRules {
    let mut out = PortRules::default();
    let eps = Endpoints::of(frontends);
    let reachable = eps.reachable();
    // kube-proxy's hasEndpoints: any endpoint serves, here or elsewhere.
    let has_endpoints = !reachable.is_empty() || frontends.iter().any(|(_, s)| s.serving_anywhere);
    let has_internal = if eps.internal_local {
        !eps.local.is_empty()
    } else {
        has_endpoints
    };
    let has_external = if eps.external_local {
        !eps.local.is_empty()
    } else {
        has_endpoints
    };
    let svc = service_chain(service, protocol);
    let svl = local_service_chain(service, protocol);
    let ext = external_chain(service, protocol);
    let internal_chain = if eps.internal_local { &svl } else { &svc };
    let (internal_verdict, external_verdict) = if !has_endpoints {
        let reject = (format!("{service} has no endpoints"), "REJECT");
        (Some(reject.clone()), Some(reject))
    } else {
        let drop = (format!("{service} has no local endpoints"), "DROP");
        (
            (!has_internal).then(|| drop.clone()),
            (!has_external).then_some(drop),
        )
    };
    let affinity = frontends
        .first()
        .map_or(0, |(_, spec)| spec.affinity_timeout_s);
    let proto = proto_match(protocol);

    // kube-proxy's order: the ClusterIP, the ExternalIPs, the LoadBalancer IPs.
    let mut ordered = frontends.to_vec();
    ordered.sort_by_key(|(addr, spec)| {
        let rank = match spec.kind {
            FrontendKind::ClusterIp => 0,
            FrontendKind::ExternalIp => 1,
            FrontendKind::LoadBalancer => 2,
            FrontendKind::NodePort => 3,
        };
        (rank, **addr)
    });
    let mut internal_rules = Vec::new();
    let mut node_port = None;
    // kube-proxy's usesFWChain: the LB IPs' traffic goes through KUBE-FW, which lets the
    // source ranges through to KUBE-EXT; KUBE-PROXY-FIREWALL drops the rest.
    let firewall = frontends
        .iter()
        .find_map(|(_, s)| s.source_ranges.as_ref())
        .filter(|_| has_endpoints);
    let fw = firewall_chain(service, protocol);
    let mut lb_ips = Vec::new();
    if let Some(hcnp) = frontends.iter().find_map(|(_, s)| s.health_check_node_port) {
        out.filter.push(format!(
            "-A KUBE-NODEPORTS -m comment --comment {} -m tcp -p tcp --dport {hcnp} -j ACCEPT",
            arg(&format!("{service} health check node port"))
        ));
    }
    for (addr, spec) in ordered {
        match spec.kind {
            FrontendKind::ClusterIp => {
                let comment = arg(&format!("{service} cluster IP"));
                if has_internal {
                    out.services.push(format!(
                        "-A KUBE-SERVICES -m comment --comment {comment} {} -j {internal_chain}",
                        destination(addr)
                    ));
                    if let Some((net, bits)) = options.cluster_cidr {
                        internal_rules.push(format!(
                            "-A {internal_chain} -m comment --comment {comment} {} ! -s {net}/{bits} -j KUBE-MARK-MASQ",
                            destination(addr)
                        ));
                    }
                } else if let Some((comment, verdict)) = &internal_verdict {
                    out.filter.push(format!(
                        "-A KUBE-SERVICES -m comment --comment {} {} -j {verdict}",
                        arg(comment),
                        destination(addr)
                    ));
                }
            }
            FrontendKind::ExternalIp | FrontendKind::LoadBalancer => {
                let what = if spec.kind == FrontendKind::ExternalIp {
                    "external IP"
                } else {
                    "loadbalancer IP"
                };
                let firewalled = firewall.is_some() && spec.kind == FrontendKind::LoadBalancer;
                if has_endpoints {
                    out.services.push(format!(
                        "-A KUBE-SERVICES -m comment --comment {} {} -j {}",
                        arg(&format!("{service} {what}")),
                        destination(addr),
                        if firewalled { &fw } else { &ext }
                    ));
                }
                if firewalled {
                    lb_ips.push(addr.ip);
                    out.filter.push(format!(
                        "-A KUBE-PROXY-FIREWALL -m comment --comment {} {} -j DROP",
                        arg(&format!("{service} traffic not accepted by {fw}")),
                        destination(addr)
                    ));
                }
                if let Some((comment, verdict)) = &external_verdict {
                    out.filter.push(format!(
                        "-A KUBE-EXTERNAL-SERVICES -m comment --comment {} {} -j {verdict}",
                        arg(comment),
                        destination(addr)
                    ));
                }
            }
            // One rule for the port on every local address, however many node
            // addresses the model lists.
            FrontendKind::NodePort => node_port = Some(addr.port),
        }
    }
    if let Some(port) = node_port {
        if has_endpoints {
            out.nodeports.push(format!(
                "-A KUBE-NODEPORTS -m comment --comment {} {proto} --dport {port} -j {ext}",
                arg(service)
            ));
        }
        if let Some((comment, verdict)) = &external_verdict {
            out.filter.push(format!(
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment {} -m addrtype --dst-type LOCAL {proto} --dport {port} -j {verdict}",
                arg(comment)
            ));
        }
    }

    if has_endpoints && eps.externally_accessible {
        out.chains.push((
            ext.clone(),
            external_rules(service, protocol, &eps, options, has_external),
        ));
    }
    if let Some(ranges) = firewall.filter(|_| !lb_ips.is_empty()) {
        let comment = arg(&format!("{service} loadbalancer IP"));
        let mut rules: Vec<String> = ranges
            .cidrs
            .iter()
            .map(|(net, bits)| {
                format!("-A {fw} -m comment --comment {comment} -s {net}/{bits} -j {ext}")
            })
            .collect();
        if ranges.allow_node {
            rules.extend(
                lb_ips
                    .iter()
                    .map(|ip| format!("-A {fw} -m comment --comment {comment} -s {ip} -j {ext}")),
            );
        }
        rules.push(format!(
            "-A {fw} -m comment --comment {}",
            arg(&format!(
                "other traffic to {service} will be dropped by KUBE-PROXY-FIREWALL"
            ))
        ));
        out.chains.push((fw.clone(), rules));
    }
    let mut policy_chains = Vec::new();
    if eps.uses_cluster() && !eps.cluster.is_empty() {
        policy_chains.push((&svc, &eps.cluster));
    }
    if eps.uses_local() && !eps.local.is_empty() {
        policy_chains.push((&svl, &eps.local));
    }
    for (chain, endpoints) in policy_chains {
        let mut rules = if chain == internal_chain {
            std::mem::take(&mut internal_rules)
        } else {
            Vec::new()
        };
        endpoint_jumps(&mut rules, service, protocol, chain, endpoints, affinity);
        out.chains.push((chain.clone(), rules));
    }
    for b in reachable {
        out.chains
            .push(endpoint_rules(service, protocol, b, affinity));
    }
    out
}

/// The KUBE-EXT chain: what traffic to a NodePort, ExternalIP or LoadBalancer IP does
/// before its policy chain.
fn external_rules(
    service: &str,
    protocol: Protocol,
    eps: &Endpoints,
    options: &RenderOptions,
    has_external: bool,
) -> Vec<String> {
    let svc = service_chain(service, protocol);
    let ext = external_chain(service, protocol);
    let mut rules = Vec::new();
    if !eps.external_local {
        rules.push(format!(
            "-A {ext} -m comment --comment {} -j KUBE-MARK-MASQ",
            arg(&format!(
                "masquerade traffic for {service} external destinations"
            ))
        ));
    } else {
        if let Some((net, bits)) = options.cluster_cidr {
            rules.push(format!(
                "-A {ext} -m comment --comment {} -s {net}/{bits} -j {svc}",
                arg(&format!("pod traffic for {service} external destinations"))
            ));
        }
        rules.push(format!(
            "-A {ext} -m comment --comment {} -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
            arg(&format!(
                "masquerade LOCAL traffic for {service} external destinations"
            ))
        ));
        rules.push(format!(
            "-A {ext} -m comment --comment {} -m addrtype --src-type LOCAL -j {svc}",
            arg(&format!(
                "route LOCAL traffic for {service} external destinations"
            ))
        ));
    }
    // Anything else goes to the policy chain, if it has endpoints; otherwise it falls
    // through un-NATed and the filter table drops it.
    if has_external {
        let policy = if eps.external_local {
            local_service_chain(service, protocol)
        } else {
            svc
        };
        rules.push(format!("-A {ext} -j {policy}"));
    }
    rules
}

/// The load-balancing rules of a KUBE-SVC or KUBE-SVL chain: affinity checks first, then
/// one statistic rule per endpoint, the last taken unconditionally.
fn endpoint_jumps(
    rules: &mut Vec<String>,
    service: &str,
    protocol: Protocol,
    chain: &str,
    endpoints: &[&WeightedBackend],
    affinity: u32,
) {
    let to = |b: &WeightedBackend| arg(&format!("{service} -> {}", b.addr));
    let seps: Vec<String> = endpoints
        .iter()
        .map(|b| endpoint_chain(service, protocol, &b.addr))
        .collect();
    if affinity > 0 {
        for (b, sep) in endpoints.iter().zip(&seps) {
            rules.push(format!(
                "-A {chain} -m comment --comment {} -m recent --name {sep} --rcheck --seconds {affinity} --reap -j {sep}",
                to(b)
            ));
        }
    }
    let weights: Vec<u32> = endpoints.iter().map(|b| b.weight).collect();
    for ((b, sep), p) in endpoints.iter().zip(&seps).zip(probabilities(&weights)) {
        let statistic = p
            .map(|p| format!(" -m statistic --mode random --probability {p}"))
            .unwrap_or_default();
        rules.push(format!(
            "-A {chain} -m comment --comment {}{statistic} -j {sep}",
            to(b)
        ));
    }
}

/// The KUBE-SEP chain of one endpoint: hairpin masquerade, affinity update, DNAT.
fn endpoint_rules(
    service: &str,
    protocol: Protocol,
    b: &WeightedBackend,
    affinity: u32,
) -> (String, Vec<String>) {
    let sep = endpoint_chain(service, protocol, &b.addr);
    let comment = arg(service);
    let recent = if affinity > 0 {
        format!(" -m recent --name {sep} --set")
    } else {
        String::new()
    };
    let proto = proto_match(protocol);
    let rules = vec![
        // Hairpin: a backend reaching itself through the service is masqueraded.
        format!(
            "-A {sep} -m comment --comment {comment} -s {} -j KUBE-MARK-MASQ",
            b.addr.ip
        ),
        format!(
            "-A {sep} -m comment --comment {comment}{recent} {proto} -j DNAT --to-destination {}",
            b.addr
        ),
    ];
    (sep, rules)
}

/// The fixed nat rules, then every KUBE-SERVICES jump, the NodePort jump that must stay
/// last, and the KUBE-NODEPORTS rules.
pub fn fixed_rules<'a>(
    services: impl Iterator<Item = &'a str>,
    nodeports: impl Iterator<Item = &'a str>,
    options: &RenderOptions,
) -> String {
    let mut rules = String::new();
    let masquerade = if options.random_fully {
        "-j MASQUERADE --random-fully"
    } else {
        "-j MASQUERADE"
    };
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(rules, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    let _ = writeln!(
        rules,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" {masquerade}"
    );
    let _ = writeln!(rules, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    for rule in services {
        let _ = writeln!(rules, "{rule}");
    }
    // Without localhost NodePorts, kube-proxy keeps 127.0.0.0/8 out of the jump; ::1
    // always (IPv6 has no route_localnet).
    let not_localhost = match (options.family, options.localhost_node_ports) {
        (Family::Ipv6, _) => " ! -d ::1/128",
        (Family::Ipv4, true) => "",
        (Family::Ipv4, false) => " ! -d 127.0.0.0/8",
    };
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL{not_localhost} -j KUBE-NODEPORTS"
    );
    for rule in nodeports {
        let _ = writeln!(rules, "{rule}");
    }
    rules
}

/// Every service port of `state`, rendered.
pub fn render_all(state: &DesiredState, options: &RenderOptions) -> BTreeMap<PortKey, PortRules> {
    by_port(state)
        .into_iter()
        .map(|((service, protocol), frontends)| {
            let rules = port_rules(&service, protocol, &frontends, options);
            ((service, protocol), rules)
        })
        .collect()
}

/// The nat table, `*nat` to `COMMIT`, for every frontend in `state`.
pub fn nat_table(state: &DesiredState, options: &RenderOptions) -> String {
    let ports = render_all(state, options);
    let mut out = String::from("*nat\n");
    let declared: BTreeSet<&str> = ports
        .values()
        .flat_map(|p| p.chains.iter().map(|(name, _)| name.as_str()))
        .collect();
    for chain in FIXED_CHAINS.iter().copied().chain(declared) {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str(&fixed_rules(
        ports.values().flat_map(|p| &p.services).map(String::as_str),
        ports
            .values()
            .flat_map(|p| &p.nodeports)
            .map(String::as_str),
        options,
    ));
    for rule in ports
        .values()
        .flat_map(|p| &p.chains)
        .flat_map(|(_, rules)| rules)
    {
        let _ = writeln!(out, "{rule}");
    }
    out.push_str("COMMIT\n");
    out
}

/// The filter table, `*filter` to `COMMIT`, for every frontend in `state`.
pub fn filter_table(state: &DesiredState, options: &RenderOptions) -> String {
    let ports = render_all(state, options);
    filter::filter_table(
        ports.values().flat_map(|p| &p.filter).map(String::as_str),
        options.writes_localnet_rule(),
    )
}

#[cfg(test)]
mod tests;
