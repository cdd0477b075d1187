//! The nat table kube-proxy's iptables mode writes, for ClusterIP frontends, as
//! `iptables-restore` input. Rules are written exactly as kube-proxy writes them (match
//! order, comments, `%.10f` probabilities), so `iptables-save` output and every tutorial
//! about KUBE-SVC chains applies.

use std::{fmt::Write as _, net::Ipv4Addr};

use super::{
    names::{endpoint_chain, protocol_name, service_chain},
    probability::probabilities,
};
use crate::model::{DesiredState, FrontendAddr, FrontendKind, FrontendSpec};

/// kube-proxy's masquerade mark, bit 14.
pub const MASQ_MARK: &str = "0x4000";

#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// Traffic to a ClusterIP from outside this CIDR is masqueraded (kube-proxy's
    /// `--cluster-cidr`); without it, no such rule is written.
    pub cluster_cidr: Option<(Ipv4Addr, u8)>,
    /// `MASQUERADE --random-fully`, where the kernel supports it.
    pub random_fully: bool,
}

/// An argument as iptables-restore reads it: quoted when it holds a space.
fn arg(text: &str) -> String {
    if text.contains(char::is_whitespace) {
        format!("\"{text}\"")
    } else {
        text.to_owned()
    }
}

/// The chains kube-proxy always writes whole, and their fixed rules.
pub const FIXED_CHAINS: [&str; 4] = [
    "KUBE-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
];

/// The nat rules of one frontend: its KUBE-SERVICES rule and its own chains (KUBE-SVC and
/// KUBE-SEP), each with its rules in order. A frontend kube-proxy writes no rules for
/// (not a ClusterIP, or without a usable endpoint) has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendRules {
    pub services_rule: Option<String>,
    pub chains: Vec<(String, Vec<String>)>,
}

pub fn frontend_rules(
    addr: &FrontendAddr,
    spec: &FrontendSpec,
    options: &RenderOptions,
) -> FrontendRules {
    if spec.kind != FrontendKind::ClusterIp || spec.usable().next().is_none() {
        return FrontendRules::default();
    }
    let svc = service_chain(&spec.service, addr.protocol);
    let services_rule = format!(
        "-A KUBE-SERVICES -m comment --comment {} {} -j {svc}",
        arg(&format!("{} cluster IP", spec.service)),
        destination(addr)
    );
    FrontendRules {
        services_rule: Some(services_rule),
        chains: service_chains(addr, spec, options),
    }
}

/// The fixed rules, then every frontend's KUBE-SERVICES rule, then the NodePort jump that
/// must stay last.
pub fn fixed_rules<'a>(
    services_rules: impl Iterator<Item = &'a str>,
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
    for rule in services_rules {
        let _ = writeln!(rules, "{rule}");
    }
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    rules
}

/// The nat table, `*nat` to `COMMIT`, for every frontend in `state`.
pub fn nat_table(state: &DesiredState, options: &RenderOptions) -> String {
    let per_frontend: Vec<FrontendRules> = state
        .iter()
        .map(|(addr, spec)| frontend_rules(addr, spec, options))
        .collect();
    let mut out = String::from("*nat\n");
    for chain in FIXED_CHAINS.iter().map(|c| c.to_string()).chain(
        per_frontend
            .iter()
            .flat_map(|f| f.chains.iter().map(|(name, _)| name.clone())),
    ) {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str(&fixed_rules(
        per_frontend
            .iter()
            .filter_map(|f| f.services_rule.as_deref()),
        options,
    ));
    for (_, rules) in per_frontend.iter().flat_map(|f| &f.chains) {
        for rule in rules {
            let _ = writeln!(out, "{rule}");
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// `-m tcp -p tcp -d IP --dport PORT`, kube-proxy's order.
fn destination(addr: &FrontendAddr) -> String {
    let proto = protocol_name(addr.protocol);
    format!("-m {proto} -p {proto} -d {} --dport {}", addr.ip, addr.port)
}

/// The KUBE-SVC chain of one frontend and the KUBE-SEP chains of its endpoints.
fn service_chains(
    addr: &FrontendAddr,
    spec: &FrontendSpec,
    options: &RenderOptions,
) -> Vec<(String, Vec<String>)> {
    let svc = service_chain(&spec.service, addr.protocol);
    let mut svc_rules = Vec::new();
    if let Some((net, bits)) = options.cluster_cidr {
        svc_rules.push(format!(
            "-A {svc} -m comment --comment {} {} ! -s {net}/{bits} -j KUBE-MARK-MASQ",
            arg(&format!("{} cluster IP", spec.service)),
            destination(addr)
        ));
    }
    let endpoints: Vec<_> = spec.usable().collect();
    let seps: Vec<String> = endpoints
        .iter()
        .map(|b| endpoint_chain(&spec.service, addr.protocol, &b.addr))
        .collect();
    let to = |b: &crate::model::WeightedBackend| arg(&format!("{} -> {}", spec.service, b.addr));
    if spec.affinity_timeout_s > 0 {
        for (b, sep) in endpoints.iter().zip(&seps) {
            svc_rules.push(format!(
                "-A {svc} -m comment --comment {} -m recent --name {sep} --rcheck --seconds {} --reap -j {sep}",
                to(b),
                spec.affinity_timeout_s
            ));
        }
    }
    let weights: Vec<u32> = endpoints.iter().map(|b| b.weight).collect();
    for ((b, sep), p) in endpoints.iter().zip(&seps).zip(probabilities(&weights)) {
        let statistic = p
            .map(|p| format!(" -m statistic --mode random --probability {p}"))
            .unwrap_or_default();
        svc_rules.push(format!(
            "-A {svc} -m comment --comment {}{statistic} -j {sep}",
            to(b)
        ));
    }
    let mut chains = vec![(svc, svc_rules)];
    let proto = protocol_name(addr.protocol);
    for (b, sep) in endpoints.iter().zip(&seps) {
        let comment = arg(&spec.service);
        let recent = if spec.affinity_timeout_s > 0 {
            format!(" -m recent --name {sep} --set")
        } else {
            String::new()
        };
        chains.push((
            sep.clone(),
            vec![
                // Hairpin: a backend reaching itself through the service is masqueraded.
                format!("-A {sep} -m comment --comment {comment} -s {} -j KUBE-MARK-MASQ", b.addr.ip),
                format!("-A {sep} -m comment --comment {comment}{recent} -m {proto} -p {proto} -j DNAT --to-destination {}", b.addr),
            ],
        ));
    }
    chains
}

#[cfg(test)]
mod tests;
