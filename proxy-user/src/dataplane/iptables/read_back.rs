//! What our chains hold, as the model's frontends: the iptables dataplane starts from it,
//! so that what the agent believes is installed is what the kernel holds (and a Service
//! deleted while the agent was down is removed at the first sync). Pure: it reads the
//! views of [`InstalledRules`], so a round trip (spec -> rendered rules -> spec) checks it
//! without a kernel.
//!
//! The rules do not hold every field of a [`FrontendSpec`] as the model does (weights
//! become probabilities, a frontend without endpoints is one REJECT rule, a NodePort
//! matches every local address); [`unchanged`] compares what they hold, and says why for
//! each field it leaves out.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use super::{
    installed::{EndpointView, FrontendView, InstalledRules, Verdict},
    probability::probabilities,
    saved::Table,
};
use crate::model::{
    BackendAddr, DesiredState, Family, FrontendAddr, FrontendKind, FrontendSpec, Protocol,
    SourceRanges, WeightedBackend, parse_cidr,
};

/// The address a NodePort frontend is read back at. Its rule matches the port on every
/// local address (`-m addrtype --dst-type LOCAL`): which node addresses the model listed
/// is not in the kernel, so the first sync replaces this entry with those addresses.
/// The unspecified address of the family whose tables were read (`0.0.0.0`, `::`).
pub const fn node_port_address(family: Family) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::Ipv6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// The prefix length of one address of `ip`'s family (32, 128).
const fn host_bits(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// Totals tried when turning shares back into whole weights (see [`weights_of`]).
const WEIGHT_SEARCH_LIMIT: u64 = 1_000;

/// Every frontend our chains hold (the caller checks that they are ours: the owner marker),
/// read from the tables of `family` (iptables or ip6tables).
pub fn desired_state(rules: &InstalledRules, family: Family) -> DesiredState {
    let views = rules.frontends();
    let health_checks = health_check_node_ports(rules);
    let mut state = DesiredState::new();
    for view in &views {
        let addr = FrontendAddr {
            ip: view.ip.unwrap_or(node_port_address(family)),
            port: view.port,
            protocol: view.protocol,
        };
        let mut spec = match view.kind {
            FrontendKind::ClusterIp => cluster_ip_spec(rules, view),
            _ => external_spec(rules, view, &views),
        };
        spec.health_check_node_port = health_checks.get(view.service.as_str()).copied();
        state.insert(addr, spec);
    }
    state
}

/// A spec with what every frontend has, from its view.
fn base_spec(view: &FrontendView) -> FrontendSpec {
    FrontendSpec {
        service: view.service.as_str().into(),
        kind: view.kind,
        affinity_timeout_s: view.affinity_timeout_s,
        local_only: false,
        backends: Default::default(),
        // A nat jump exists only when some endpoint serves; without one, the filter
        // rule says which: "has no local endpoints" (DROP) or "has no endpoints" (REJECT).
        serving_anywhere: view.chain.is_some() || matches!(view.verdict, Some((Verdict::Drop, _))),
        external_local: None,
        source_ranges: None,
        health_check_node_port: None,
    }
}

/// A ClusterIP: KUBE-SVC (every endpoint) or KUBE-SVL (internalTrafficPolicy Local), or a
/// DROP when the Local policy has no endpoint here.
fn cluster_ip_spec(rules: &InstalledRules, view: &FrontendView) -> FrontendSpec {
    let mut spec = base_spec(view);
    match &view.chain {
        Some(chain) => {
            spec.local_only = chain.starts_with("KUBE-SVL-");
            spec.backends = weights_of(&view.endpoints).into();
        }
        None => spec.local_only = matches!(view.verdict, Some((Verdict::Drop, _))),
    }
    spec.affinity_timeout_s = view
        .chain
        .as_deref()
        .map_or(0, |c| rules.affinity_timeout(c));
    spec
}

/// A NodePort, external IP or load balancer IP: KUBE-EXT (through KUBE-FW with source
/// ranges), which masquerades and reaches KUBE-SVC (externalTrafficPolicy Cluster), or
/// keeps the source and reaches KUBE-SVL, node traffic going to KUBE-SVC (Local).
fn external_spec(
    rules: &InstalledRules,
    view: &FrontendView,
    views: &[FrontendView],
) -> FrontendSpec {
    let mut spec = base_spec(view);
    let Some(chain) = &view.chain else {
        // No endpoint serves: only the filter rule is left.
        if matches!(view.verdict, Some((Verdict::Drop, _))) {
            spec.external_local = Some(Vec::new());
        }
        return spec;
    };
    let firewall = chain.strip_prefix("KUBE-FW-");
    // The KUBE-EXT chain of the same hash: a KUBE-FW chain that lets no range through
    // (closed source ranges) jumps to it from no rule, yet it says where the port goes.
    let mut reached = FrontendView {
        chain: Some(firewall.map_or_else(|| chain.clone(), |hash| format!("KUBE-EXT-{hash}"))),
        endpoints: Vec::new(),
        local_traffic_chain: None,
        masquerade: false,
        affinity_timeout_s: 0,
        source_ranges: Vec::new(),
        ..view.clone()
    };
    rules.follow(&mut reached);
    spec.affinity_timeout_s = reached.affinity_timeout_s;
    let external = reached
        .chain
        .as_deref()
        .is_some_and(|c| c.starts_with("KUBE-EXT-"));
    if external && !reached.masquerade {
        spec.external_local = Some(weights_of(&reached.endpoints));
        spec.backends = reached
            .local_traffic_chain
            .as_deref()
            .map(|c| weights_of(&rules.resolve(c)))
            .unwrap_or_default()
            .into();
    } else {
        spec.backends = weights_of(&reached.endpoints).into();
    }
    if firewall.is_some() {
        spec.source_ranges = Some(Box::new(source_ranges(view, views)));
    }
    spec
}

/// The allowed ranges of a KUBE-FW chain. kube-proxy lets the node's own traffic to its
/// load balancer IPs through with one rule per IP after the ranges (`allow_node`): a
/// tail of exactly the port's load balancer IPs, in their order, is read as that.
fn source_ranges(view: &FrontendView, views: &[FrontendView]) -> SourceRanges {
    let mut cidrs: Vec<(IpAddr, u8)> = view
        .source_ranges
        .iter()
        .filter_map(|text| match text.contains('/') {
            true => parse_cidr(text),
            false => text.parse().ok().map(|ip| (ip, host_bits(ip))),
        })
        .collect();
    let mut lb_ips: Vec<IpAddr> = views
        .iter()
        .filter(|v| {
            v.service == view.service
                && v.protocol == view.protocol
                && v.kind == FrontendKind::LoadBalancer
        })
        .filter_map(|v| v.ip)
        .collect();
    lb_ips.sort();
    let tail: Vec<(IpAddr, u8)> = lb_ips.iter().map(|ip| (*ip, host_bits(*ip))).collect();
    let allow_node = !tail.is_empty() && cidrs.ends_with(&tail);
    if allow_node {
        cidrs.truncate(cidrs.len() - tail.len());
    }
    SourceRanges { cidrs, allow_node }
}

/// Health check node ports by service port, from the filter KUBE-NODEPORTS ACCEPT rules.
fn health_check_node_ports(rules: &InstalledRules) -> HashMap<&str, u16> {
    rules
        .rules_in(Table::Filter, "KUBE-NODEPORTS")
        .iter()
        .filter(|r| r.target() == Some("ACCEPT"))
        .filter_map(|r| {
            let service = r.comment()?.strip_suffix(" health check node port")?;
            Some((service, r.value("--dport")?.parse().ok()?))
        })
        .collect()
}

/// The probability a statistic match holds, as the kernel stores it (xt_statistic keeps
/// `lround(p * 2^31)`; iptables-save prints that back, `0.3333333333` as `0.33333333349`).
fn kernel_probability(p: f64) -> u32 {
    (p * f64::from(1u32 << 31)).round() as u32
}

/// Each usable backend with the probability its rule holds (`None`: the last one, taken
/// unconditionally), in rule order.
fn held_probabilities(backends: &[WeightedBackend]) -> Vec<(BackendAddr, Option<u32>)> {
    let usable: Vec<&WeightedBackend> = backends.iter().filter(|b| b.weight > 0).collect();
    let weights: Vec<u32> = usable.iter().map(|b| b.weight).collect();
    usable
        .iter()
        .zip(probabilities(&weights))
        .map(|(b, p)| {
            let p = p
                .and_then(|p| p.parse::<f64>().ok())
                .map(kernel_probability);
            (b.addr, p)
        })
        .collect()
}

/// Whole weights for the endpoints of a policy chain: the smallest ones whose rules hold
/// the same probabilities (3:1 comes back as 3:1, 2:2 as 1:1). Shares that no total up to
/// [`WEIGHT_SEARCH_LIMIT`] reproduces come back as parts per million: close, and
/// [`unchanged`] then has the first sync rewrite them.
fn weights_of(endpoints: &[EndpointView]) -> Vec<WeightedBackend> {
    let mut endpoints: Vec<&EndpointView> = endpoints.iter().collect();
    endpoints.sort_by_key(|e| e.addr);
    let with = |weights: Vec<u32>| -> Vec<WeightedBackend> {
        endpoints
            .iter()
            .zip(weights)
            .map(|(e, weight)| WeightedBackend {
                flows_only: false,
                addr: e.addr,
                weight,
            })
            .collect()
    };
    let scaled = |total: u64| -> Vec<u32> {
        endpoints
            .iter()
            .map(|e| ((e.share * total as f64).round() as u32).max(1))
            .collect()
    };
    let observed = held_probabilities_of_shares(&endpoints);
    let first = (endpoints.len() as u64).max(1);
    for total in first..=WEIGHT_SEARCH_LIMIT.max(first) {
        let candidate = with(scaled(total));
        if held_probabilities(&candidate) == observed {
            return candidate;
        }
    }
    with(scaled(1_000_000))
}

/// The probabilities that give these shares, as the kernel holds them.
fn held_probabilities_of_shares(endpoints: &[&EndpointView]) -> Vec<(BackendAddr, Option<u32>)> {
    let mut remaining = 1.0_f64;
    let last = endpoints.len().saturating_sub(1);
    endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let p = (i < last && remaining > 0.0).then(|| kernel_probability(e.share / remaining));
            remaining -= e.share;
            (e.addr, p)
        })
        .collect()
}

/// A [`FrontendSpec`] as far as iptables rules hold it.
#[derive(Debug, PartialEq)]
struct Held<'a> {
    service: &'a str,
    /// Without endpoints, an external IP and a load balancer IP get the same REJECT rule
    /// in KUBE-EXTERNAL-SERVICES: a LoadBalancer then counts as an ExternalIP.
    kind: FrontendKind,
    /// The timeout is in the policy chains' `--rcheck` rules: without an endpoint to
    /// reach there are none, and it counts as 0.
    affinity_timeout_s: u32,
    /// internalTrafficPolicy Local shows as KUBE-SVL or a "no local endpoints" DROP; with
    /// no endpoint anywhere both policies REJECT alike.
    local_only: bool,
    /// Weights become probabilities: what is compared is each usable backend with the
    /// probability its rule holds, not raw weights (2:2 and 1:1 are the same rules), and
    /// weight-0 backends get no rule.
    backends: Vec<(BackendAddr, Option<u32>)>,
    /// Held only as REJECT ("has no endpoints") against DROP or a nat jump: whether the
    /// frontend has an endpoint here or anywhere.
    serving_anywhere: bool,
    /// externalTrafficPolicy Local is the shape of KUBE-EXT, which exists only when some
    /// endpoint serves.
    external_local: Option<Vec<(BackendAddr, Option<u32>)>>,
    /// KUBE-FW is written only when some endpoint serves.
    source_ranges: Option<&'a SourceRanges>,
    health_check_node_port: Option<u16>,
}

fn held(spec: &FrontendSpec) -> Held<'_> {
    let local: Option<Vec<(BackendAddr, Option<u32>)>> =
        spec.external_local.as_deref().map(held_probabilities);
    let backends = held_probabilities(&spec.backends);
    let reaches = !backends.is_empty() || local.as_ref().is_some_and(|l| !l.is_empty());
    let has_endpoints = spec.serving_anywhere || reaches;
    Held {
        service: &spec.service,
        kind: match spec.kind {
            FrontendKind::LoadBalancer if !has_endpoints => FrontendKind::ExternalIp,
            kind => kind,
        },
        affinity_timeout_s: if reaches { spec.affinity_timeout_s } else { 0 },
        local_only: has_endpoints && spec.local_only,
        backends,
        serving_anywhere: has_endpoints,
        external_local: local.filter(|_| has_endpoints),
        source_ranges: spec.source_ranges.as_deref().filter(|_| has_endpoints),
        health_check_node_port: spec.health_check_node_port,
    }
}

/// Whether `installed` (read back, or written by this agent) already is `wanted` as far as
/// iptables rules hold it; each field left out, and why, is said on [`Held`].
pub fn unchanged(installed: &FrontendSpec, wanted: &FrontendSpec) -> bool {
    held(installed) == held(wanted)
}

/// The service ports (service, protocol) of a read-back state, for the log.
pub fn service_ports(state: &DesiredState) -> usize {
    let mut ports: Vec<(&str, Protocol)> = state
        .iter()
        .map(|(addr, spec)| (&*spec.service, addr.protocol))
        .collect();
    ports.sort();
    ports.dedup();
    ports.len()
}

#[cfg(test)]
mod tests;
