//! The filter table: a frontend without a usable endpoint is rejected, as kube-proxy does
//! ("has no endpoints"), so a client sees ECONNREFUSED at once instead of a timeout. A
//! frontend whose Local policy has no local endpoint is dropped ("has no local
//! endpoints"). KUBE-FORWARD lets masqueraded service traffic through a FORWARD chain
//! whose policy is DROP. The per-port REJECT/DROP rules come from `render`.

use std::fmt::Write as _;

use super::names::MASQ_MARK;

/// The filter chains kube-proxy writes whole on every sync.
pub const FILTER_CHAINS: [&str; 5] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
];

/// The filter table, `*filter` to `COMMIT`, with the given REJECT/DROP rules.
pub fn filter_table<'a>(port_rules: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from("*filter\n");
    for chain in FILTER_CHAINS {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    for rule in port_rules {
        let _ = writeln!(out, "{rule}");
    }
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = writeln!(
        out,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    out.push_str("COMMIT\n");
    out
}
