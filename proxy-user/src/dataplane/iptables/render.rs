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

/// The nat table, `*nat` to `COMMIT`, for every ClusterIP frontend in `state`.
pub fn nat_table(state: &DesiredState, options: &RenderOptions) -> String {
    let mut chains: Vec<String> = [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ]
    .map(str::to_owned)
    .to_vec();
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

    let cluster_ips: Vec<(&FrontendAddr, &FrontendSpec)> = state
        .iter()
        .filter(|(_, spec)| spec.kind == FrontendKind::ClusterIp && spec.usable().next().is_some())
        .collect();
    for (addr, spec) in &cluster_ips {
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -m comment --comment {} {} -j {}",
            arg(&format!("{} cluster IP", spec.service)),
            destination(addr),
            service_chain(&spec.service, addr.protocol)
        );
    }
    let _ = writeln!(
        rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    for (addr, spec) in &cluster_ips {
        service_rules(&mut chains, &mut rules, addr, spec, options);
    }

    let mut out = String::from("*nat\n");
    for chain in &chains {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str(&rules);
    out.push_str("COMMIT\n");
    out
}

/// `-m tcp -p tcp -d IP --dport PORT`, kube-proxy's order.
fn destination(addr: &FrontendAddr) -> String {
    let proto = protocol_name(addr.protocol);
    format!("-m {proto} -p {proto} -d {} --dport {}", addr.ip, addr.port)
}

/// The KUBE-SVC chain of one frontend and the KUBE-SEP chains of its endpoints.
fn service_rules(
    chains: &mut Vec<String>,
    rules: &mut String,
    addr: &FrontendAddr,
    spec: &FrontendSpec,
    options: &RenderOptions,
) {
    let svc = service_chain(&spec.service, addr.protocol);
    chains.push(svc.clone());
    if let Some((net, bits)) = options.cluster_cidr {
        let _ = writeln!(
            rules,
            "-A {svc} -m comment --comment {} {} ! -s {net}/{bits} -j KUBE-MARK-MASQ",
            arg(&format!("{} cluster IP", spec.service)),
            destination(addr)
        );
    }
    let endpoints: Vec<_> = spec.usable().collect();
    let seps: Vec<String> = endpoints
        .iter()
        .map(|b| endpoint_chain(&spec.service, addr.protocol, &b.addr))
        .collect();
    let to = |b: &crate::model::WeightedBackend| arg(&format!("{} -> {}", spec.service, b.addr));
    if spec.affinity_timeout_s > 0 {
        for (b, sep) in endpoints.iter().zip(&seps) {
            let _ = writeln!(
                rules,
                "-A {svc} -m comment --comment {} -m recent --name {sep} --rcheck --seconds {} --reap -j {sep}",
                to(b),
                spec.affinity_timeout_s
            );
        }
    }
    let weights: Vec<u32> = endpoints.iter().map(|b| b.weight).collect();
    for ((b, sep), p) in endpoints.iter().zip(&seps).zip(probabilities(&weights)) {
        let statistic = p
            .map(|p| format!(" -m statistic --mode random --probability {p}"))
            .unwrap_or_default();
        let _ = writeln!(
            rules,
            "-A {svc} -m comment --comment {}{statistic} -j {sep}",
            to(b)
        );
    }
    let proto = protocol_name(addr.protocol);
    for (b, sep) in endpoints.iter().zip(&seps) {
        chains.push(sep.clone());
        let comment = arg(&spec.service);
        // Hairpin: a backend reaching itself through the service is masqueraded.
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment {comment} -s {} -j KUBE-MARK-MASQ",
            b.addr.ip
        );
        let recent = if spec.affinity_timeout_s > 0 {
            format!(" -m recent --name {sep} --set")
        } else {
            String::new()
        };
        let _ = writeln!(
            rules,
            "-A {sep} -m comment --comment {comment}{recent} -m {proto} -p {proto} -j DNAT --to-destination {}",
            b.addr
        );
    }
}

#[cfg(test)]
mod tests;
