//! The filter table: a frontend without a usable endpoint is rejected, as kube-proxy does
//! ("has no endpoints"), so a client sees ECONNREFUSED at once instead of a timeout. A
//! frontend whose Local policy has no local endpoint is dropped ("has no local
//! endpoints"). KUBE-FORWARD lets masqueraded service traffic through a FORWARD chain
//! whose policy is DROP. KUBE-FIREWALL closes the hole `route_localnet` opens (see
//! [`LOCALNET_RULE`]). The per-port REJECT/DROP rules come from `render`.

use std::fmt::Write as _;

use super::names::MASQ_MARK;

/// kubelet's firewall chain, which kube-proxy duplicates (`kubeletFirewallChain`): its one
/// rule is [`LOCALNET_RULE`]. Shared with kubelet, so it is neither ours to delete nor are
/// its jumps (`install::is_ours`, `Iptables::cleanup`).
pub const KUBELET_FIREWALL: &str = "KUBE-FIREWALL";

/// With `route_localnet=1` (set for 127.0.0.1:<NodePort>, see `localnet`), the kernel
/// routes packets to 127.0.0.0/8 that came from elsewhere; this drops those that were not
/// DNATed there by us (https://issue.k8s.io/90259), as kube-proxy writes it.
pub const LOCALNET_RULE: &str = "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP";

/// The filter chains kube-proxy writes whole on every sync, in its order; KUBE-FIREWALL
/// too, after them, with localhost NodePorts.
pub const FILTER_CHAINS: [&str; 5] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
];

/// The filter chains the built-in chains jump to, created at start when missing.
pub const JUMPED_TO: [&str; 6] = [
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-FORWARD",
    "KUBE-NODEPORTS",
    "KUBE-PROXY-FIREWALL",
    KUBELET_FIREWALL,
];

/// The filter table, `*filter` to `COMMIT`, with the given REJECT/DROP rules, and
/// KUBE-FIREWALL written whole when `localhost_node_ports`.
pub fn filter_table<'a>(
    port_rules: impl Iterator<Item = &'a str>,
    localhost_node_ports: bool,
) -> String {
    let mut out = String::from("*filter\n");
    for chain in FILTER_CHAINS {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    if localhost_node_ports {
        let _ = writeln!(out, ":{KUBELET_FIREWALL} - [0:0]");
        let _ = writeln!(out, "{LOCALNET_RULE}");
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
