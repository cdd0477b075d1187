//! What kube-proxy's chains, as our agent writes them in iptables mode, say is installed:
//! read from the text of `iptables-save -c -t nat` and `iptables-save -c -t filter`
//! (through [`super::saved`]), it answers which frontends exist, which backends each one
//! leads to with what share of new connections, and which chains belong to a service
//! port. `proxyctl` presents these views; `read_back` turns them into the desired state
//! the agent starts from. Pure: the caller runs iptables-save. A line that cannot be read
//! is skipped and reported by [`InstalledRules::skipped`].

use std::{
    collections::{HashSet, VecDeque},
    net::IpAddr,
};

use super::saved::{Chain, Rule, SavedTable, SkippedLine, Table};
use crate::model::{BackendAddr, FrontendKind, Protocol};

/// How the filter table answers traffic to a frontend without (local) endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// "has no endpoints": the client gets ICMP port unreachable at once.
    Reject,
    /// "has no local endpoints": externalTrafficPolicy Local with none on this node.
    Drop,
}

impl Verdict {
    pub const fn as_str(self) -> &'static str {
        match self {
            Verdict::Reject => "REJECT",
            Verdict::Drop => "DROP",
        }
    }
}

/// One backend a policy chain leads to.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointView {
    /// The KUBE-SEP chain.
    pub chain: String,
    pub addr: BackendAddr,
    /// Share of new connections (affinity aside), 0..=1.
    pub share: f64,
}

/// One frontend as installed.
#[derive(Clone, Debug, PartialEq)]
pub struct FrontendView {
    /// `namespace/name` or `namespace/name:port`.
    pub service: String,
    pub kind: FrontendKind,
    /// `None` for a NodePort (every local address).
    pub ip: Option<IpAddr>,
    pub port: u16,
    pub protocol: Protocol,
    /// The chain the nat jump goes to; `None` when only a filter rule exists.
    pub chain: Option<String>,
    /// The nat jump's packet counter. nat rules see the first packet of each connection
    /// only, so this counts connections translated.
    pub packets: u64,
    /// The filter REJECT/DROP rule for this frontend, with its packet counter.
    pub verdict: Option<(Verdict, u64)>,
    /// ClientIP affinity timeout of the chain `endpoints` come from, 0 when none.
    pub affinity_timeout_s: u32,
    /// The EXT chain masquerades all its traffic (externalTrafficPolicy Cluster).
    pub masquerade: bool,
    /// Allowed source CIDRs, from a KUBE-FW chain.
    pub source_ranges: Vec<String>,
    /// What a new connection arriving at this frontend reaches: the KUBE-SVC/SVL chain
    /// jumped to, or for KUBE-EXT (and KUBE-FW -> KUBE-EXT) the chain of its final
    /// unconditional jump (traffic from outside the node). Empty if none.
    pub endpoints: Vec<EndpointView>,
    /// For a KUBE-EXT chain with externalTrafficPolicy Local: the "route LOCAL traffic"
    /// target, what sockets on the node reach (see [`InstalledRules::resolve`]).
    pub local_traffic_chain: Option<String>,
}

/// The nat and filter tables as iptables-save printed them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstalledRules {
    nat: SavedTable,
    filter: SavedTable,
    skipped: Vec<SkippedLine>,
    /// The iptables backend they were read from (`nft`, `legacy`), when known.
    pub backend: Option<&'static str>,
}

const MARK_MASQ: &str = "KUBE-MARK-MASQ";
/// Prefixes of the chains kube-proxy keeps per service port.
const PORT_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

fn is_external_chain(chain: &str) -> bool {
    chain.starts_with("KUBE-EXT-")
}

impl InstalledRules {
    /// Parses `iptables-save [-c] -t nat` and `iptables-save [-c] -t filter` output. Each
    /// text may also be a whole `iptables-save`: only its `*nat` (respectively `*filter`)
    /// section is read, and lines before any `*table` line count as that table.
    pub fn parse(nat: &str, filter: &str) -> Self {
        let mut skipped = Vec::new();
        let nat = SavedTable::read_table(Table::Nat, nat, &mut skipped);
        let filter = SavedTable::read_table(Table::Filter, filter, &mut skipped);
        Self {
            nat,
            filter,
            skipped,
            backend: None,
        }
    }

    /// The version of the agent that wrote the chains, from the owner marker's rule.
    pub fn agent_version(&self) -> Option<String> {
        use crate::dataplane::iptables::install::{MARKER_COMMENT_PREFIX, OWNER_MARKER};
        self.nat
            .rules(OWNER_MARKER)
            .iter()
            .find_map(|r| r.comment()?.strip_prefix(MARKER_COMMENT_PREFIX))
            .map(str::to_owned)
    }

    /// Jumps from the built-in chains into ours: (table, built-in chain, our chain).
    pub fn hooks(&self) -> Vec<(&'static str, String, String)> {
        use crate::dataplane::iptables::install::is_ours;
        let mut out = Vec::new();
        for table in [Table::Nat, Table::Filter] {
            for chain in self.chains(table).iter().filter(|c| c.policy.is_some()) {
                for rule in &chain.rules {
                    if let Some(target) = rule.target().filter(|t| is_ours(t)) {
                        out.push((table.as_str(), chain.name.clone(), target.to_owned()));
                    }
                }
            }
        }
        out
    }

    /// (table, chains, rules) over the chains ebpf-proxy owns, per table.
    pub fn chain_counts(&self) -> Vec<(&'static str, usize, usize)> {
        use crate::dataplane::iptables::install::is_ours;
        [Table::Nat, Table::Filter]
            .into_iter()
            .map(|table| {
                let ours: Vec<&Chain> = self
                    .chains(table)
                    .iter()
                    .filter(|c| is_ours(&c.name))
                    .collect();
                let rules = ours.iter().map(|c| c.rules.len()).sum();
                (table.as_str(), ours.len(), rules)
            })
            .collect()
    }

    /// Lines left out because they could not be read.
    pub fn skipped(&self) -> &[SkippedLine] {
        &self.skipped
    }

    /// Every chain of `table`, in printed order.
    pub fn chains(&self, table: Table) -> &[Chain] {
        self.table(table).chains()
    }

    /// The rules of one nat chain, as printed; empty if there is no such chain.
    pub fn chain_rules(&self, chain: &str) -> &[Rule] {
        self.nat.rules(chain)
    }

    /// The rules of one chain of `table` (KUBE-SERVICES exists in both).
    pub fn rules_in(&self, table: Table, chain: &str) -> &[Rule] {
        self.table(table).rules(chain)
    }

    /// One of the two tables, as read.
    pub fn table(&self, table: Table) -> &SavedTable {
        match table {
            Table::Nat => &self.nat,
            Table::Filter => &self.filter,
        }
    }

    /// Every frontend: the nat jumps of KUBE-SERVICES and KUBE-NODEPORTS, and the filter
    /// REJECT/DROP rules (merged into the nat frontend they belong to, if any). Sorted by
    /// service, then kind, IP, port and protocol.
    ///
    /// A filter-only rule for an address in KUBE-EXTERNAL-SERVICES does not say whether
    /// the address is an external IP or a load balancer IP (kube-proxy writes both alike);
    /// it is reported as [`FrontendKind::ExternalIp`].
    pub fn frontends(&self) -> Vec<FrontendView> {
        let mut views: Vec<FrontendView> = Vec::new();
        for rule in self.nat.rules("KUBE-SERVICES") {
            let Some(comment) = rule.comment() else {
                continue;
            };
            let Some((service, kind)) = [
                (" cluster IP", FrontendKind::ClusterIp),
                (" external IP", FrontendKind::ExternalIp),
                (" loadbalancer IP", FrontendKind::LoadBalancer),
            ]
            .into_iter()
            .find_map(|(suffix, kind)| comment.strip_suffix(suffix).map(|s| (s, kind))) else {
                continue;
            };
            let Some(ip) = rule.value("-d").and_then(parse_host) else {
                continue;
            };
            if let Some(view) = nat_view(rule, service, kind, Some(ip)) {
                views.push(view);
            }
        }
        for rule in self.nat.rules("KUBE-NODEPORTS") {
            let Some(service) = rule.comment().filter(|c| !c.contains(' ')) else {
                continue;
            };
            let ip = rule.value("-d").and_then(parse_host);
            if let Some(view) = nat_view(rule, service, FrontendKind::NodePort, ip) {
                views.push(view);
            }
        }
        for chain in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"] {
            for rule in self.filter.rules(chain) {
                merge_filter_rule(&mut views, chain, rule);
            }
        }
        for view in &mut views {
            self.follow(view);
        }
        views.sort_by(|a, b| {
            (&a.service, a.kind, a.ip, a.port, a.protocol)
                .cmp(&(&b.service, b.kind, b.ip, b.port, b.protocol))
        });
        views
    }

    /// Fills in what the frontend's nat chain leads to: FW -> EXT -> SVC/SVL -> SEP.
    pub(super) fn follow(&self, view: &mut FrontendView) {
        let Some(mut current) = view.chain.clone() else {
            return;
        };
        let mut policy = None;
        // FW -> EXT -> policy at most; the bound only guards against odd input.
        for _ in 0..4 {
            if current.starts_with("KUBE-FW-") {
                let allowed: Vec<&Rule> = self
                    .chain_rules(&current)
                    .iter()
                    .filter(|r| {
                        r.value("-s").is_some()
                            && r.target().is_some_and(|t| {
                                PORT_CHAIN_PREFIXES.iter().any(|p| t.starts_with(p))
                            })
                    })
                    .collect();
                view.source_ranges = allowed
                    .iter()
                    .filter_map(|r| r.value("-s"))
                    .map(str::to_owned)
                    .collect();
                match allowed.first().and_then(|r| r.target()) {
                    Some(next) => current = next.to_owned(),
                    None => break,
                }
            } else if is_external_chain(&current) {
                let rules = self.chain_rules(&current);
                view.masquerade = rules
                    .iter()
                    .any(|r| r.is_unconditional() && r.target() == Some(MARK_MASQ));
                view.local_traffic_chain = rules
                    .iter()
                    .find(|r| {
                        r.value("--src-type") == Some("LOCAL")
                            && r.target().is_some_and(|t| t != MARK_MASQ)
                    })
                    .and_then(|r| r.target())
                    .map(str::to_owned);
                policy = rules
                    .iter()
                    .rev()
                    .find(|r| r.is_unconditional() && r.target().is_some_and(|t| t != MARK_MASQ))
                    .and_then(|r| r.target())
                    .map(str::to_owned);
                break;
            } else {
                policy = Some(current);
                break;
            }
        }
        if let Some(policy) = &policy {
            view.endpoints = self.resolve(policy);
            view.affinity_timeout_s = self.affinity_timeout(policy);
        } else if let Some(local) = &view.local_traffic_chain {
            view.affinity_timeout_s = self.affinity_timeout(local);
        }
    }

    /// The endpoints a KUBE-SVC/SVL chain spreads new connections over, in rule order, with
    /// their shares: endpoint i gets P_i × Π_{j<i}(1 − P_j), P = 1 without a statistic
    /// match. Masquerade and affinity (`--rcheck`) rules are not load balancing and are
    /// left out; so is a jump to a chain without a DNAT rule.
    pub fn resolve(&self, policy_chain: &str) -> Vec<EndpointView> {
        let mut remaining = 1.0_f64;
        let mut out = Vec::new();
        for rule in self.chain_rules(policy_chain) {
            let Some(target) = rule.target() else {
                continue;
            };
            if target == MARK_MASQ || rule.has("--rcheck") || rule.has("--update") {
                continue;
            }
            let probability = match rule.value("--probability") {
                Some(p) => match p.parse::<f64>() {
                    Ok(p) if (0.0..=1.0).contains(&p) => p,
                    _ => continue,
                },
                None => 1.0,
            };
            let share = remaining * probability;
            remaining -= share;
            if let Some(addr) = self.endpoint_addr(target) {
                out.push(EndpointView {
                    chain: target.to_owned(),
                    addr,
                    share,
                });
            }
        }
        out
    }

    /// The ClientIP affinity timeout of a KUBE-SVC/SVL chain (`--rcheck --seconds T`), 0
    /// when it has none.
    pub fn affinity_timeout(&self, policy_chain: &str) -> u32 {
        self.chain_rules(policy_chain)
            .iter()
            .filter(|r| r.has("--rcheck"))
            .find_map(|r| r.value("--seconds").and_then(|s| s.parse().ok()))
            .unwrap_or(0)
    }

    /// The backend a KUBE-SEP chain DNATs to.
    pub fn endpoint_addr(&self, sep_chain: &str) -> Option<BackendAddr> {
        self.chain_rules(sep_chain)
            .iter()
            .filter(|r| r.target() == Some("DNAT"))
            .find_map(|r| r.value("--to-destination").and_then(parse_backend))
    }

    /// Every nat chain of a service port (`namespace/name[:port]`): the SVC/SVL/EXT/FW
    /// chains its frontends jump to (and those jump to), then the SEP chains they jump to,
    /// each once, in the order they are reached from the sorted frontends.
    pub fn service_chains(&self, service: &str) -> Vec<String> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut queue: VecDeque<String> = self
            .frontends()
            .into_iter()
            .filter(|f| f.service == service)
            .filter_map(|f| f.chain)
            .filter(|chain| seen.insert(chain.clone()))
            .collect();
        let (mut port_chains, mut endpoint_chains) = (Vec::new(), Vec::new());
        while let Some(chain) = queue.pop_front() {
            if chain.starts_with("KUBE-SEP-") {
                endpoint_chains.push(chain);
                continue;
            }
            for target in self.chain_rules(&chain).iter().filter_map(Rule::target) {
                if PORT_CHAIN_PREFIXES.iter().any(|p| target.starts_with(p))
                    && seen.insert(target.to_owned())
                {
                    queue.push_back(target.to_owned());
                }
            }
            port_chains.push(chain);
        }
        port_chains.extend(endpoint_chains);
        port_chains
    }
}

/// Attaches a filter REJECT/DROP rule to its nat frontend, or adds a filter-only one.
fn merge_filter_rule(views: &mut Vec<FrontendView>, chain: &str, rule: &Rule) {
    let Some(comment) = rule.comment() else {
        return;
    };
    let Some(service) = comment
        .strip_suffix(" has no endpoints")
        .or_else(|| comment.strip_suffix(" has no local endpoints"))
    else {
        return;
    };
    let verdict = match rule.target() {
        Some("REJECT") => Verdict::Reject,
        Some("DROP") => Verdict::Drop,
        _ => return,
    };
    let (Some(protocol), Some(port)) = (
        rule.value("-p").and_then(parse_protocol),
        rule.value("--dport").and_then(|p| p.parse::<u16>().ok()),
    ) else {
        return;
    };
    let ip = match rule.value("-d") {
        Some(d) => match parse_host(d) {
            Some(ip) => Some(ip),
            None => return,
        },
        None => None,
    };
    let kinds: &[FrontendKind] = match (chain, ip) {
        ("KUBE-SERVICES", Some(_)) => &[FrontendKind::ClusterIp],
        ("KUBE-EXTERNAL-SERVICES", Some(_)) => {
            &[FrontendKind::ExternalIp, FrontendKind::LoadBalancer]
        }
        ("KUBE-EXTERNAL-SERVICES", None) => &[FrontendKind::NodePort],
        _ => return,
    };
    let found = views.iter_mut().find(|v| {
        v.service == service
            && v.protocol == protocol
            && v.port == port
            && v.ip == ip
            && kinds.contains(&v.kind)
    });
    match found {
        Some(view) => {
            let packets = view.verdict.map_or(0, |(_, p)| p) + rule.packets();
            view.verdict = Some((verdict, packets));
        }
        None => views.push(FrontendView {
            service: service.to_owned(),
            kind: kinds[0],
            ip,
            port,
            protocol,
            chain: None,
            packets: 0,
            verdict: Some((verdict, rule.packets())),
            affinity_timeout_s: 0,
            masquerade: false,
            source_ranges: Vec::new(),
            endpoints: Vec::new(),
            local_traffic_chain: None,
        }),
    }
}

/// A frontend from a nat jump, if the rule has a protocol, a port and a target.
fn nat_view(
    rule: &Rule,
    service: &str,
    kind: FrontendKind,
    ip: Option<IpAddr>,
) -> Option<FrontendView> {
    Some(FrontendView {
        service: service.to_owned(),
        kind,
        ip,
        port: rule.value("--dport")?.parse().ok()?,
        protocol: parse_protocol(rule.value("-p")?)?,
        chain: Some(rule.target()?.to_owned()),
        packets: rule.packets(),
        verdict: None,
        affinity_timeout_s: 0,
        masquerade: false,
        source_ranges: Vec::new(),
        endpoints: Vec::new(),
        local_traffic_chain: None,
    })
}

/// `198.19.0.10`, `198.19.0.10/32` or `198.19.0.10/255.255.255.255`, and `2001:db8::a`
/// or `2001:db8::a/128` (as ip6tables-save prints it); not a wider prefix.
fn parse_host(text: &str) -> Option<IpAddr> {
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (text, None),
    };
    let ip: IpAddr = ip.parse().ok()?;
    let host = match (ip, prefix) {
        (_, None) => true,
        (IpAddr::V4(_), Some(p)) => matches!(p, "32" | "255.255.255.255"),
        (IpAddr::V6(_), Some(p)) => p == "128" || p == "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    };
    host.then_some(ip)
}

fn parse_protocol(text: &str) -> Option<Protocol> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" | "6" => Some(Protocol::Tcp),
        "udp" | "17" => Some(Protocol::Udp),
        _ => None,
    }
}

/// `--to-destination 198.18.1.2:8080` or `[2001:db8::1:2]:8080`.
fn parse_backend(text: &str) -> Option<BackendAddr> {
    let (ip, port) = text.rsplit_once(':')?;
    let ip = match ip.strip_prefix('[') {
        Some(v6) => v6
            .strip_suffix(']')?
            .parse::<std::net::Ipv6Addr>()
            .ok()?
            .into(),
        None => ip.parse::<std::net::Ipv4Addr>().ok()?.into(),
    };
    Some(BackendAddr {
        ip,
        port: port.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::iptables::saved::{Counters, LineError};

    // Real output. The rules were loaded with `iptables-nft-restore -c` (counters given in
    // the restore input, no traffic) into a private network namespace, in the order and
    // form kube-proxy writes them (`-m comment ... -m tcp -p tcp -d IP --dport P`,
    // `--probability 0.7500000000`, `--or-mark 0x4000`), then saved with
    // `iptables-nft-save -c -t nat` / `-t filter`. `iptables-legacy-restore` /
    // `iptables-legacy-save` (v1.8.9) printed byte-for-byte the same apart from the first
    // line (`# Generated by iptables-save v1.8.9 on ...`).
    //
    // The services:
    // - demo/web:http: ClusterIP 198.19.0.10:80, external IP 198.19.100.1:80, NodePort
    //   30080, externalTrafficPolicy Cluster, weights 3:1, ClientIP affinity 600 s;
    // - demo/local:http: ClusterIP 198.19.0.11:80, NodePort 30081, externalTrafficPolicy
    //   Local, 3 endpoints of which 198.18.1.3 is local;
    // - demo/dns: UDP ClusterIP 198.19.0.53:53, unnamed port, 1 endpoint;
    // - demo/empty:http: no endpoints: REJECT for ClusterIP 198.19.0.12:80, external IP
    //   198.19.100.2:80 and NodePort 30082;
    // - demo/nolocal:http: ClusterIP 198.19.0.13:80, NodePort 30083, externalTrafficPolicy
    //   Local, no local endpoint: the EXT chain has no final jump, filter DROPs;
    // - demo/lb:https: ClusterIP 198.19.0.14:443, LoadBalancer 198.19.200.1:443 with
    //   loadBalancerSourceRanges 203.0.113.0/24 and 192.0.2.0/24 (KUBE-FW);
    // - demo/itp:http: ClusterIP 198.19.0.15:80 with internalTrafficPolicy Local (KUBE-SVL).
    const NAT: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sat Nov 21 16:49:48 2026
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-EXT-FXTZXRHZLXSAASJU - [0:0]
:KUBE-EXT-UDFRPRPXPBFLAKDI - [0:0]
:KUBE-EXT-XRY76EGRC3BSCIIJ - [0:0]
:KUBE-EXT-YGEOBPGPT3XPOUB5 - [0:0]
:KUBE-FW-YGEOBPGPT3XPOUB5 - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-4CX4QJNHUHPAFOOF - [0:0]
:KUBE-SEP-AKZGSXBLP34CFQEE - [0:0]
:KUBE-SEP-AQ2HNNH6RDLQM2T5 - [0:0]
:KUBE-SEP-BPFAPUEOWRPXRIH3 - [0:0]
:KUBE-SEP-CCNAJRBGO4KAQTU7 - [0:0]
:KUBE-SEP-NVGVQIPVGKXRVSG3 - [0:0]
:KUBE-SEP-OOWMC5SIT4ZBVP7A - [0:0]
:KUBE-SEP-Y72XK7JKVVMVWZTI - [0:0]
:KUBE-SEP-YBFOGEUVJX5PLKJY - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-FXTZXRHZLXSAASJU - [0:0]
:KUBE-SVC-TJ7R4GGTKLDTUOTY - [0:0]
:KUBE-SVC-UDFRPRPXPBFLAKDI - [0:0]
:KUBE-SVC-XRY76EGRC3BSCIIJ - [0:0]
:KUBE-SVC-YGEOBPGPT3XPOUB5 - [0:0]
:KUBE-SVL-FXTZXRHZLXSAASJU - [0:0]
:KUBE-SVL-TWHLZA3SPPWHV3UR - [0:0]
[0:0] -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
[0:0] -A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
[0:0] -A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
[0:0] -A KUBE-EXT-FXTZXRHZLXSAASJU -s 198.18.0.0/15 -m comment --comment "pod traffic for demo/local:http external destinations" -j KUBE-SVC-FXTZXRHZLXSAASJU
[0:0] -A KUBE-EXT-FXTZXRHZLXSAASJU -m comment --comment "masquerade LOCAL traffic for demo/local:http external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
[0:0] -A KUBE-EXT-FXTZXRHZLXSAASJU -m comment --comment "route LOCAL traffic for demo/local:http external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-FXTZXRHZLXSAASJU
[0:0] -A KUBE-EXT-FXTZXRHZLXSAASJU -j KUBE-SVL-FXTZXRHZLXSAASJU
[0:0] -A KUBE-EXT-UDFRPRPXPBFLAKDI -s 198.18.0.0/15 -m comment --comment "pod traffic for demo/nolocal:http external destinations" -j KUBE-SVC-UDFRPRPXPBFLAKDI
[0:0] -A KUBE-EXT-UDFRPRPXPBFLAKDI -m comment --comment "masquerade LOCAL traffic for demo/nolocal:http external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
[0:0] -A KUBE-EXT-UDFRPRPXPBFLAKDI -m comment --comment "route LOCAL traffic for demo/nolocal:http external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-UDFRPRPXPBFLAKDI
[0:0] -A KUBE-EXT-XRY76EGRC3BSCIIJ -m comment --comment "masquerade traffic for demo/web:http external destinations" -j KUBE-MARK-MASQ
[0:0] -A KUBE-EXT-XRY76EGRC3BSCIIJ -j KUBE-SVC-XRY76EGRC3BSCIIJ
[0:0] -A KUBE-EXT-YGEOBPGPT3XPOUB5 -m comment --comment "masquerade traffic for demo/lb:https external destinations" -j KUBE-MARK-MASQ
[0:0] -A KUBE-EXT-YGEOBPGPT3XPOUB5 -j KUBE-SVC-YGEOBPGPT3XPOUB5
[0:0] -A KUBE-FW-YGEOBPGPT3XPOUB5 -s 203.0.113.0/24 -m comment --comment "demo/lb:https loadbalancer IP" -j KUBE-EXT-YGEOBPGPT3XPOUB5
[0:0] -A KUBE-FW-YGEOBPGPT3XPOUB5 -s 192.0.2.0/24 -m comment --comment "demo/lb:https loadbalancer IP" -j KUBE-EXT-YGEOBPGPT3XPOUB5
[0:0] -A KUBE-FW-YGEOBPGPT3XPOUB5 -m comment --comment "other traffic to demo/lb:https will be dropped by KUBE-PROXY-FIREWALL"
[0:0] -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
[4:240] -A KUBE-NODEPORTS -p tcp -m comment --comment "demo/web:http" -m tcp --dport 30080 -j KUBE-EXT-XRY76EGRC3BSCIIJ
[0:0] -A KUBE-NODEPORTS -p tcp -m comment --comment "demo/local:http" -m tcp --dport 30081 -j KUBE-EXT-FXTZXRHZLXSAASJU
[2:120] -A KUBE-NODEPORTS -p tcp -m comment --comment "demo/nolocal:http" -m tcp --dport 30083 -j KUBE-EXT-UDFRPRPXPBFLAKDI
[0:0] -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
[0:0] -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
[0:0] -A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
[0:0] -A KUBE-SEP-4CX4QJNHUHPAFOOF -s 198.18.2.2/32 -m comment --comment "demo/web:http" -j KUBE-MARK-MASQ
[0:0] -A KUBE-SEP-4CX4QJNHUHPAFOOF -p tcp -m comment --comment "demo/web:http" -m recent --set --name KUBE-SEP-4CX4QJNHUHPAFOOF --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 198.18.2.2:8080
[0:0] -A KUBE-SEP-AKZGSXBLP34CFQEE -s 198.18.1.2/32 -m comment --comment "demo/web:http" -j KUBE-MARK-MASQ
[0:0] -A KUBE-SEP-AKZGSXBLP34CFQEE -p tcp -m comment --comment "demo/web:http" -m recent --set --name KUBE-SEP-AKZGSXBLP34CFQEE --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 198.18.1.2:8080
[0:0] -A KUBE-SEP-AQ2HNNH6RDLQM2T5 -s 198.18.1.5/32 -m comment --comment "demo/lb:https" -j KUBE-MARK-MASQ
[0:0] -A KUBE-SEP-AQ2HNNH6RDLQM2T5 -p tcp -m comment --comment "demo/lb:https" -m tcp -j DNAT --to-destination 198.18.1.5:8443
[0:0] -A KUBE-SEP-BPFAPUEOWRPXRIH3 -s 198.18.1.53/32 -m comment --comment "demo/dns" -j KUBE-MARK-MASQ
[12:900] -A KUBE-SEP-BPFAPUEOWRPXRIH3 -p udp -m comment --comment "demo/dns" -m udp -j DNAT --to-destination 198.18.1.53:53
[0:0] -A KUBE-SEP-CCNAJRBGO4KAQTU7 -s 198.18.2.4/32 -m comment --comment "demo/nolocal:http" -j KUBE-MARK-MASQ
[0:0] -A KUBE-SEP-CCNAJRBGO4KAQTU7 -p tcp -m comment --comment "demo/nolocal:http" -m tcp -j DNAT --to-destination 198.18.2.4:8080
[0:0] -A KUBE-SEP-NVGVQIPVGKXRVSG3 -s 198.18.3.3/32 -m comment --comment "demo/local:http" -j KUBE-MARK-MASQ
[0:0] -A KUBE-SEP-NVGVQIPVGKXRVSG3 -p tcp -m comment --comment "demo/local:http" -m tcp -j DNAT --to-destination 198.18.3.3:8080
[0:0] -A KUBE-SEP-OOWMC5SIT4ZBVP7A -s 198.18.2.3/32 -m comment --comment "demo/local:http" -j KUBE-MARK-MASQ
[0:0] -A KUBE-SEP-OOWMC5SIT4ZBVP7A -p tcp -m comment --comment "demo/local:http" -m tcp -j DNAT --to-destination 198.18.2.3:8080
[0:0] -A KUBE-SEP-Y72XK7JKVVMVWZTI -s 198.18.1.6/32 -m comment --comment "demo/itp:http" -j KUBE-MARK-MASQ
[0:0] -A KUBE-SEP-Y72XK7JKVVMVWZTI -p tcp -m comment --comment "demo/itp:http" -m tcp -j DNAT --to-destination 198.18.1.6:8080
[0:0] -A KUBE-SEP-YBFOGEUVJX5PLKJY -s 198.18.1.3/32 -m comment --comment "demo/local:http" -j KUBE-MARK-MASQ
[0:0] -A KUBE-SEP-YBFOGEUVJX5PLKJY -p tcp -m comment --comment "demo/local:http" -m tcp -j DNAT --to-destination 198.18.1.3:8080
[7:420] -A KUBE-SERVICES -d 198.19.0.10/32 -p tcp -m comment --comment "demo/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-XRY76EGRC3BSCIIJ
[3:180] -A KUBE-SERVICES -d 198.19.100.1/32 -p tcp -m comment --comment "demo/web:http external IP" -m tcp --dport 80 -j KUBE-EXT-XRY76EGRC3BSCIIJ
[0:0] -A KUBE-SERVICES -d 198.19.0.11/32 -p tcp -m comment --comment "demo/local:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-FXTZXRHZLXSAASJU
[12:900] -A KUBE-SERVICES -d 198.19.0.53/32 -p udp -m comment --comment "demo/dns cluster IP" -m udp --dport 53 -j KUBE-SVC-TJ7R4GGTKLDTUOTY
[0:0] -A KUBE-SERVICES -d 198.19.0.13/32 -p tcp -m comment --comment "demo/nolocal:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-UDFRPRPXPBFLAKDI
[0:0] -A KUBE-SERVICES -d 198.19.0.14/32 -p tcp -m comment --comment "demo/lb:https cluster IP" -m tcp --dport 443 -j KUBE-SVC-YGEOBPGPT3XPOUB5
[5:300] -A KUBE-SERVICES -d 198.19.200.1/32 -p tcp -m comment --comment "demo/lb:https loadbalancer IP" -m tcp --dport 443 -j KUBE-FW-YGEOBPGPT3XPOUB5
[0:0] -A KUBE-SERVICES -d 198.19.0.15/32 -p tcp -m comment --comment "demo/itp:http cluster IP" -m tcp --dport 80 -j KUBE-SVL-TWHLZA3SPPWHV3UR
[0:0] -A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
[0:0] -A KUBE-SVC-FXTZXRHZLXSAASJU ! -s 198.18.0.0/15 -d 198.19.0.11/32 -p tcp -m comment --comment "demo/local:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
[0:0] -A KUBE-SVC-FXTZXRHZLXSAASJU -m comment --comment "demo/local:http -> 198.18.1.3:8080" -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-YBFOGEUVJX5PLKJY
[0:0] -A KUBE-SVC-FXTZXRHZLXSAASJU -m comment --comment "demo/local:http -> 198.18.2.3:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-OOWMC5SIT4ZBVP7A
[0:0] -A KUBE-SVC-FXTZXRHZLXSAASJU -m comment --comment "demo/local:http -> 198.18.3.3:8080" -j KUBE-SEP-NVGVQIPVGKXRVSG3
[0:0] -A KUBE-SVC-TJ7R4GGTKLDTUOTY ! -s 198.18.0.0/15 -d 198.19.0.53/32 -p udp -m comment --comment "demo/dns cluster IP" -m udp --dport 53 -j KUBE-MARK-MASQ
[12:900] -A KUBE-SVC-TJ7R4GGTKLDTUOTY -m comment --comment "demo/dns -> 198.18.1.53:53" -j KUBE-SEP-BPFAPUEOWRPXRIH3
[0:0] -A KUBE-SVC-UDFRPRPXPBFLAKDI ! -s 198.18.0.0/15 -d 198.19.0.13/32 -p tcp -m comment --comment "demo/nolocal:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
[0:0] -A KUBE-SVC-UDFRPRPXPBFLAKDI -m comment --comment "demo/nolocal:http -> 198.18.2.4:8080" -j KUBE-SEP-CCNAJRBGO4KAQTU7
[0:0] -A KUBE-SVC-XRY76EGRC3BSCIIJ ! -s 198.18.0.0/15 -d 198.19.0.10/32 -p tcp -m comment --comment "demo/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
[0:0] -A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 198.18.1.2:8080" -m recent --rcheck --seconds 600 --reap --name KUBE-SEP-AKZGSXBLP34CFQEE --mask 255.255.255.255 --rsource -j KUBE-SEP-AKZGSXBLP34CFQEE
[0:0] -A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 198.18.2.2:8080" -m recent --rcheck --seconds 600 --reap --name KUBE-SEP-4CX4QJNHUHPAFOOF --mask 255.255.255.255 --rsource -j KUBE-SEP-4CX4QJNHUHPAFOOF
[0:0] -A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 198.18.1.2:8080" -m statistic --mode random --probability 0.75000000000 -j KUBE-SEP-AKZGSXBLP34CFQEE
[0:0] -A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 198.18.2.2:8080" -j KUBE-SEP-4CX4QJNHUHPAFOOF
[0:0] -A KUBE-SVC-YGEOBPGPT3XPOUB5 ! -s 198.18.0.0/15 -d 198.19.0.14/32 -p tcp -m comment --comment "demo/lb:https cluster IP" -m tcp --dport 443 -j KUBE-MARK-MASQ
[0:0] -A KUBE-SVC-YGEOBPGPT3XPOUB5 -m comment --comment "demo/lb:https -> 198.18.1.5:8443" -j KUBE-SEP-AQ2HNNH6RDLQM2T5
[0:0] -A KUBE-SVL-FXTZXRHZLXSAASJU -m comment --comment "demo/local:http -> 198.18.1.3:8080" -j KUBE-SEP-YBFOGEUVJX5PLKJY
[0:0] -A KUBE-SVL-TWHLZA3SPPWHV3UR -m comment --comment "demo/itp:http -> 198.18.1.6:8080" -j KUBE-SEP-Y72XK7JKVVMVWZTI
COMMIT
# Completed on Sat Nov 21 16:49:48 2026
"#;

    const FILTER: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sat Nov 21 16:49:48 2026
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
[0:0] -A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
[0:0] -A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
[0:0] -A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
[0:0] -A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
[0:0] -A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
[0:0] -A KUBE-EXTERNAL-SERVICES -d 198.19.100.2/32 -p tcp -m comment --comment "demo/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
[1:60] -A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "demo/empty:http has no endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 30082 -j REJECT --reject-with icmp-port-unreachable
[9:540] -A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "demo/nolocal:http has no local endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 30083 -j DROP
[0:0] -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
[0:0] -A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
[0:0] -A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
[0:0] -A KUBE-PROXY-FIREWALL -d 198.19.200.1/32 -p tcp -m comment --comment "demo/lb:https traffic not accepted by KUBE-FW-YGEOBPGPT3XPOUB5" -m tcp --dport 443 -j DROP
[2:120] -A KUBE-SERVICES -d 198.19.0.12/32 -p tcp -m comment --comment "demo/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
# Completed on Sat Nov 21 16:49:48 2026
"#;

    /// The same rules saved with `iptables-nft-save -t nat` (no `-c`), demo/web:http's
    /// part: no `[packets:bytes]` before the rules; chain declarations keep theirs.
    const NAT_WITHOUT_COUNTERS: &str = r#"# Generated by iptables-nft-save v1.8.9 (nf_tables) on Sat Nov 21 16:49:48 2026
*nat
:PREROUTING ACCEPT [0:0]
:KUBE-EXT-XRY76EGRC3BSCIIJ - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SEP-4CX4QJNHUHPAFOOF - [0:0]
:KUBE-SEP-AKZGSXBLP34CFQEE - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-XRY76EGRC3BSCIIJ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-EXT-XRY76EGRC3BSCIIJ -m comment --comment "masquerade traffic for demo/web:http external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-XRY76EGRC3BSCIIJ -j KUBE-SVC-XRY76EGRC3BSCIIJ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODEPORTS -p tcp -m comment --comment "demo/web:http" -m tcp --dport 30080 -j KUBE-EXT-XRY76EGRC3BSCIIJ
-A KUBE-SEP-4CX4QJNHUHPAFOOF -s 198.18.2.2/32 -m comment --comment "demo/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-4CX4QJNHUHPAFOOF -p tcp -m comment --comment "demo/web:http" -m recent --set --name KUBE-SEP-4CX4QJNHUHPAFOOF --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 198.18.2.2:8080
-A KUBE-SEP-AKZGSXBLP34CFQEE -s 198.18.1.2/32 -m comment --comment "demo/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-AKZGSXBLP34CFQEE -p tcp -m comment --comment "demo/web:http" -m recent --set --name KUBE-SEP-AKZGSXBLP34CFQEE --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 198.18.1.2:8080
-A KUBE-SERVICES -d 198.19.0.10/32 -p tcp -m comment --comment "demo/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-XRY76EGRC3BSCIIJ
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-XRY76EGRC3BSCIIJ ! -s 198.18.0.0/15 -d 198.19.0.10/32 -p tcp -m comment --comment "demo/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 198.18.1.2:8080" -m recent --rcheck --seconds 600 --reap --name KUBE-SEP-AKZGSXBLP34CFQEE --mask 255.255.255.255 --rsource -j KUBE-SEP-AKZGSXBLP34CFQEE
-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 198.18.2.2:8080" -m recent --rcheck --seconds 600 --reap --name KUBE-SEP-4CX4QJNHUHPAFOOF --mask 255.255.255.255 --rsource -j KUBE-SEP-4CX4QJNHUHPAFOOF
-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 198.18.1.2:8080" -m statistic --mode random --probability 0.75000000000 -j KUBE-SEP-AKZGSXBLP34CFQEE
-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 198.18.2.2:8080" -j KUBE-SEP-4CX4QJNHUHPAFOOF
COMMIT
"#;

    const WEB_SVC: &str = "KUBE-SVC-XRY76EGRC3BSCIIJ";
    const WEB_EXT: &str = "KUBE-EXT-XRY76EGRC3BSCIIJ";
    const WEB_SEP_1: &str = "KUBE-SEP-AKZGSXBLP34CFQEE";
    const WEB_SEP_2: &str = "KUBE-SEP-4CX4QJNHUHPAFOOF";

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test IP")
    }

    fn backend(text: &str) -> BackendAddr {
        parse_backend(text).expect("test ip:port")
    }

    fn installed() -> InstalledRules {
        let rules = InstalledRules::parse(NAT, FILTER);
        assert_eq!(
            rules.skipped(),
            &[],
            "real iptables-save output parses whole"
        );
        rules
    }

    fn frontend<'a>(
        views: &'a [FrontendView],
        service: &str,
        kind: FrontendKind,
        port: u16,
    ) -> &'a FrontendView {
        views
            .iter()
            .find(|v| v.service == service && v.kind == kind && v.port == port)
            .unwrap_or_else(|| panic!("no {kind:?} frontend {service} port {port} in {views:#?}"))
    }

    fn assert_share(endpoint: &EndpointView, addr: &str, share: f64) {
        assert_eq!(endpoint.addr, backend(addr), "{endpoint:?}");
        assert!(
            (endpoint.share - share).abs() < 1e-6,
            "{addr}: share {} instead of {share}",
            endpoint.share
        );
    }

    /// (service, kind, ip, port) of every frontend, for a compact check.
    fn summary(views: &[FrontendView]) -> Vec<(String, FrontendKind, Option<IpAddr>, u16)> {
        views
            .iter()
            .map(|v| (v.service.clone(), v.kind, v.ip, v.port))
            .collect()
    }

    #[test]
    fn every_frontend_is_found_and_sorted() {
        let views = installed().frontends();
        use FrontendKind::*;
        let s = |svc: &str| svc.to_string();
        assert_eq!(
            summary(&views),
            vec![
                (s("demo/dns"), ClusterIp, Some(ip("198.19.0.53")), 53),
                (s("demo/empty:http"), ClusterIp, Some(ip("198.19.0.12")), 80),
                (s("demo/empty:http"), NodePort, None, 30082),
                (
                    s("demo/empty:http"),
                    ExternalIp,
                    Some(ip("198.19.100.2")),
                    80
                ),
                (s("demo/itp:http"), ClusterIp, Some(ip("198.19.0.15")), 80),
                (s("demo/lb:https"), ClusterIp, Some(ip("198.19.0.14")), 443),
                (
                    s("demo/lb:https"),
                    LoadBalancer,
                    Some(ip("198.19.200.1")),
                    443
                ),
                (s("demo/local:http"), ClusterIp, Some(ip("198.19.0.11")), 80),
                (s("demo/local:http"), NodePort, None, 30081),
                (
                    s("demo/nolocal:http"),
                    ClusterIp,
                    Some(ip("198.19.0.13")),
                    80
                ),
                (s("demo/nolocal:http"), NodePort, None, 30083),
                (s("demo/web:http"), ClusterIp, Some(ip("198.19.0.10")), 80),
                (s("demo/web:http"), NodePort, None, 30080),
                (s("demo/web:http"), ExternalIp, Some(ip("198.19.100.1")), 80),
            ]
        );
        let dns = frontend(&views, "demo/dns", ClusterIp, 53);
        assert_eq!(dns.protocol, Protocol::Udp);
        assert_eq!(dns.endpoints.len(), 1);
        assert_share(&dns.endpoints[0], "198.18.1.53:53", 1.0);
    }

    #[test]
    fn cluster_ip_with_weights_affinity_and_counters() {
        let views = installed().frontends();
        let web = frontend(&views, "demo/web:http", FrontendKind::ClusterIp, 80);
        assert_eq!(web.ip, Some(ip("198.19.0.10")));
        assert_eq!(web.protocol, Protocol::Tcp);
        assert_eq!(web.chain.as_deref(), Some(WEB_SVC));
        assert_eq!(web.packets, 7);
        assert_eq!(web.verdict, None);
        // The masquerade rule and the two `--rcheck` rules are not load balancing.
        assert_eq!(web.endpoints.len(), 2);
        assert_share(&web.endpoints[0], "198.18.1.2:8080", 0.75);
        assert_share(&web.endpoints[1], "198.18.2.2:8080", 0.25);
        assert_eq!(web.endpoints[0].chain, WEB_SEP_1);
        assert_eq!(web.endpoints[1].chain, WEB_SEP_2);
        assert_eq!(web.affinity_timeout_s, 600);
        assert!(!web.masquerade);
        assert!(web.source_ranges.is_empty());
        assert_eq!(web.local_traffic_chain, None);
    }

    #[test]
    fn kernel_probabilities_give_equal_thirds() {
        // 0.3333333333 comes back as 0.33333333349; the shares still sum to 1.
        let rules = installed();
        let eps = rules.resolve("KUBE-SVC-FXTZXRHZLXSAASJU");
        assert_eq!(eps.len(), 3);
        for (e, addr) in eps
            .iter()
            .zip(["198.18.1.3:8080", "198.18.2.3:8080", "198.18.3.3:8080"])
        {
            assert_share(e, addr, 1.0 / 3.0);
        }
        let total: f64 = eps.iter().map(|e| e.share).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        assert_eq!(rules.affinity_timeout("KUBE-SVC-FXTZXRHZLXSAASJU"), 0);
        assert_eq!(rules.resolve("KUBE-SVC-NOSUCHCHAIN"), vec![]);
    }

    #[test]
    fn node_port_with_external_traffic_policy_cluster() {
        let views = installed().frontends();
        let np = frontend(&views, "demo/web:http", FrontendKind::NodePort, 30080);
        assert_eq!(np.ip, None);
        assert_eq!(np.chain.as_deref(), Some(WEB_EXT));
        assert_eq!(np.packets, 4);
        assert!(np.masquerade);
        assert_eq!(np.local_traffic_chain, None);
        assert_eq!(np.affinity_timeout_s, 600);
        assert_share(&np.endpoints[0], "198.18.1.2:8080", 0.75);
        assert_share(&np.endpoints[1], "198.18.2.2:8080", 0.25);

        let ext = frontend(&views, "demo/web:http", FrontendKind::ExternalIp, 80);
        assert_eq!(ext.ip, Some(ip("198.19.100.1")));
        assert_eq!(ext.packets, 3);
        assert!(ext.masquerade);
        assert_eq!(ext.endpoints, np.endpoints);
    }

    #[test]
    fn node_port_with_external_traffic_policy_local() {
        let rules = installed();
        let views = rules.frontends();
        let np = frontend(&views, "demo/local:http", FrontendKind::NodePort, 30081);
        assert_eq!(np.chain.as_deref(), Some("KUBE-EXT-FXTZXRHZLXSAASJU"));
        // Only LOCAL-sourced traffic is marked, so the source is kept.
        assert!(!np.masquerade);
        // From outside: the one local endpoint, via KUBE-SVL.
        assert_eq!(np.endpoints.len(), 1);
        assert_eq!(np.endpoints[0].chain, "KUBE-SEP-YBFOGEUVJX5PLKJY");
        assert_share(&np.endpoints[0], "198.18.1.3:8080", 1.0);
        // From the node: every endpoint, via KUBE-SVC.
        assert_eq!(
            np.local_traffic_chain.as_deref(),
            Some("KUBE-SVC-FXTZXRHZLXSAASJU")
        );
        let local = rules.resolve(np.local_traffic_chain.as_deref().expect("checked"));
        assert_eq!(local.len(), 3);
        assert_eq!(np.verdict, None);
    }

    #[test]
    fn internal_traffic_policy_local_cluster_ip() {
        let views = installed().frontends();
        let itp = frontend(&views, "demo/itp:http", FrontendKind::ClusterIp, 80);
        assert_eq!(itp.chain.as_deref(), Some("KUBE-SVL-TWHLZA3SPPWHV3UR"));
        assert_eq!(itp.endpoints.len(), 1);
        assert_share(&itp.endpoints[0], "198.18.1.6:8080", 1.0);
    }

    #[test]
    fn reject_only_frontends_have_no_nat_jump() {
        let views = installed().frontends();
        let cluster = frontend(&views, "demo/empty:http", FrontendKind::ClusterIp, 80);
        assert_eq!(cluster.ip, Some(ip("198.19.0.12")));
        assert_eq!(cluster.chain, None);
        assert_eq!(cluster.packets, 0);
        assert_eq!(cluster.verdict, Some((Verdict::Reject, 2)));
        assert!(cluster.endpoints.is_empty());

        let np = frontend(&views, "demo/empty:http", FrontendKind::NodePort, 30082);
        assert_eq!(np.ip, None);
        assert_eq!(np.verdict, Some((Verdict::Reject, 1)));
        // kube-proxy writes external and load balancer IPs alike in the filter table.
        let ext = frontend(&views, "demo/empty:http", FrontendKind::ExternalIp, 80);
        assert_eq!(ext.ip, Some(ip("198.19.100.2")));
        assert_eq!(ext.verdict, Some((Verdict::Reject, 0)));
    }

    #[test]
    fn drop_when_no_local_endpoints() {
        let views = installed().frontends();
        let np = frontend(&views, "demo/nolocal:http", FrontendKind::NodePort, 30083);
        // The nat jump exists; outside traffic falls through EXT and the filter drops it.
        assert_eq!(np.chain.as_deref(), Some("KUBE-EXT-UDFRPRPXPBFLAKDI"));
        assert_eq!(np.packets, 2);
        assert_eq!(np.verdict, Some((Verdict::Drop, 9)));
        assert!(np.endpoints.is_empty());
        assert!(!np.masquerade);
        assert_eq!(
            np.local_traffic_chain.as_deref(),
            Some("KUBE-SVC-UDFRPRPXPBFLAKDI")
        );
        let cluster = frontend(&views, "demo/nolocal:http", FrontendKind::ClusterIp, 80);
        assert_eq!(cluster.verdict, None);
        assert_eq!(cluster.endpoints.len(), 1);
    }

    #[test]
    fn firewall_chain_source_ranges() {
        let views = installed().frontends();
        let lb = frontend(&views, "demo/lb:https", FrontendKind::LoadBalancer, 443);
        assert_eq!(lb.ip, Some(ip("198.19.200.1")));
        assert_eq!(lb.chain.as_deref(), Some("KUBE-FW-YGEOBPGPT3XPOUB5"));
        assert_eq!(lb.packets, 5);
        assert_eq!(lb.source_ranges, ["203.0.113.0/24", "192.0.2.0/24"]);
        assert!(lb.masquerade);
        assert_eq!(lb.endpoints.len(), 1);
        assert_share(&lb.endpoints[0], "198.18.1.5:8443", 1.0);
        // The KUBE-PROXY-FIREWALL DROP is not a "no endpoints" verdict.
        assert_eq!(lb.verdict, None);
    }

    #[test]
    fn service_chains_policy_then_endpoints() {
        let rules = installed();
        assert_eq!(
            rules.service_chains("demo/web:http"),
            [WEB_SVC, WEB_EXT, WEB_SEP_1, WEB_SEP_2]
        );
        assert_eq!(
            rules.service_chains("demo/lb:https"),
            [
                "KUBE-SVC-YGEOBPGPT3XPOUB5",
                "KUBE-FW-YGEOBPGPT3XPOUB5",
                "KUBE-EXT-YGEOBPGPT3XPOUB5",
                "KUBE-SEP-AQ2HNNH6RDLQM2T5",
            ]
        );
        assert_eq!(
            rules.service_chains("demo/local:http"),
            [
                "KUBE-SVC-FXTZXRHZLXSAASJU",
                "KUBE-EXT-FXTZXRHZLXSAASJU",
                "KUBE-SVL-FXTZXRHZLXSAASJU",
                "KUBE-SEP-YBFOGEUVJX5PLKJY",
                "KUBE-SEP-OOWMC5SIT4ZBVP7A",
                "KUBE-SEP-NVGVQIPVGKXRVSG3",
            ]
        );
        assert!(rules.service_chains("demo/empty:http").is_empty());
        assert!(rules.service_chains("demo/none").is_empty());
    }

    #[test]
    fn chain_rules_and_declarations() {
        let rules = installed();
        let svc = rules.chain_rules(WEB_SVC);
        assert_eq!(svc.len(), 5);
        assert!(svc.iter().all(|r| r.chain == WEB_SVC));
        assert_eq!(
            svc[3].text,
            "-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment \"demo/web:http -> 198.18.1.2:8080\" -m statistic --mode random --probability 0.75000000000 -j KUBE-SEP-AKZGSXBLP34CFQEE"
        );
        assert_eq!(svc[3].comment(), Some("demo/web:http -> 198.18.1.2:8080"));
        assert_eq!(svc[3].value("--probability"), Some("0.75000000000"));
        // `! -s` is negated: not a source match.
        assert_eq!(svc[0].value("-s"), None);
        assert_eq!(svc[0].value("-d"), Some("198.19.0.10/32"));
        assert_eq!(rules.chain_rules("KUBE-NOSUCH"), &[]);
        // KUBE-SERVICES exists in both tables.
        assert_eq!(rules.chain_rules("KUBE-SERVICES").len(), 9);
        let filter_services = rules.rules_in(Table::Filter, "KUBE-SERVICES");
        assert_eq!(filter_services.len(), 1);
        assert_eq!(
            filter_services[0].counters,
            Some(Counters {
                packets: 2,
                bytes: 120
            })
        );
        let nat = rules.chains(Table::Nat);
        assert_eq!(nat.len(), 29);
        assert_eq!(nat[0].name, "PREROUTING");
        assert_eq!(nat[0].policy.as_deref(), Some("ACCEPT"));
        assert!(nat[0].declared);
        assert_eq!(nat[0].counters, Some(Counters::default()));
        let services = nat
            .iter()
            .find(|c| c.name == "KUBE-SERVICES")
            .expect("declared");
        assert_eq!(services.policy, None);
        assert_eq!(rules.chains(Table::Filter).len(), 8);
    }

    #[test]
    fn legacy_output_parses_the_same() {
        let legacy = |text: &str| {
            text.replacen(
                "iptables-nft-save v1.8.9 (nf_tables)",
                "iptables-save v1.8.9",
                1,
            )
        };
        let nft = installed();
        let old = InstalledRules::parse(&legacy(NAT), &legacy(FILTER));
        assert_eq!(old.skipped(), &[]);
        assert_eq!(old.frontends(), nft.frontends());
    }

    #[test]
    fn text_without_counters() {
        let rules = InstalledRules::parse(NAT_WITHOUT_COUNTERS, "");
        assert_eq!(rules.skipped(), &[]);
        let views = rules.frontends();
        assert_eq!(views.len(), 2);
        let web = frontend(&views, "demo/web:http", FrontendKind::ClusterIp, 80);
        assert_eq!(web.packets, 0);
        assert!(
            rules
                .chain_rules(WEB_SVC)
                .iter()
                .all(|r| r.counters.is_none())
        );
        assert_eq!(web.affinity_timeout_s, 600);
        assert_share(&web.endpoints[0], "198.18.1.2:8080", 0.75);
        assert_share(&web.endpoints[1], "198.18.2.2:8080", 0.25);
        let np = frontend(&views, "demo/web:http", FrontendKind::NodePort, 30080);
        assert!(np.masquerade);
        assert_eq!(np.endpoints, web.endpoints);
    }

    #[test]
    fn a_whole_save_is_split_by_table() {
        // `iptables-save -c` of every table, given for both: each reads its own section.
        let all = format!("{NAT}{FILTER}");
        let rules = InstalledRules::parse(&all, &all);
        assert_eq!(rules.skipped(), &[]);
        assert_eq!(rules.frontends(), installed().frontends());
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let broken = NAT
            .replace(
                "COMMIT\n",
                concat!(
                    "[1:x] -A KUBE-SERVICES -d 198.19.9.1/32 -p tcp -m comment --comment \"demo/bad:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-BAD\n",
                    "[0:0] -A KUBE-SERVICES -d 198.19.9.2/32 -p tcp -m comment --comment \"demo/bad:http cluster IP -m tcp --dport 80 -j KUBE-SVC-BAD\n",
                    "[0:0] -I KUBE-SERVICES 1 -j ACCEPT\n",
                    "[0:0] -A\n",
                    "[0:0] -A KUBE-SERVICES stray -j ACCEPT\n",
                    ":KUBE-ONLY-NAME\n",
                    "garbage\n",
                    // Readable lines whose values make no frontend: left out, not errors.
                    "[0:0] -A KUBE-SERVICES -d 198.19.9.3/32 -p tcp -m comment --comment \"demo/bad:http cluster IP\" -m tcp --dport notaport -j KUBE-SVC-BAD\n",
                    "[0:0] -A KUBE-SERVICES -d 198.19.9.0/24 -p tcp -m comment --comment \"demo/bad:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-BAD\n",
                    "[0:0] -A KUBE-SERVICES -d 198.19.9.4/32 -p sctp -m comment --comment \"demo/bad:http cluster IP\" -m sctp --dport 80 -j KUBE-SVC-BAD\n",
                    "[0:0] -A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment \"demo/web:http -> x\" -m statistic --mode random --probability nan -j KUBE-SEP-NONE\n",
                    "COMMIT\n",
                ),
            );
        let rules = InstalledRules::parse(&broken, FILTER);
        let errors: Vec<(usize, LineError)> = rules
            .skipped()
            .iter()
            .map(|s| (s.line, s.error.clone()))
            .collect();
        // The lines replace COMMIT, the last line but one.
        let first = NAT.lines().count() - 1;
        assert_eq!(
            errors,
            vec![
                (
                    first,
                    LineError::BadCounters {
                        text: "[1:x]".into()
                    }
                ),
                (first + 1, LineError::UnterminatedQuote),
                (first + 2, LineError::NotARule { found: "-I".into() }),
                (first + 3, LineError::NotARule { found: "-A".into() }),
                (
                    first + 4,
                    LineError::StrayArgument {
                        arg: "stray".into()
                    }
                ),
                (first + 5, LineError::BadDeclaration),
                (
                    first + 6,
                    LineError::NotARule {
                        found: "garbage".into()
                    }
                ),
            ]
        );
        assert!(rules.skipped().iter().all(|s| s.table == Table::Nat));
        let views = rules.frontends();
        assert!(views.iter().all(|v| v.service != "demo/bad:http"));
        assert_eq!(views, installed().frontends());
    }

    #[test]
    fn hosts_and_backends() {
        assert_eq!(parse_host("198.19.0.10/32"), Some(ip("198.19.0.10")));
        assert_eq!(parse_host("198.19.0.10"), Some(ip("198.19.0.10")));
        assert_eq!(
            parse_host("198.19.0.10/255.255.255.255"),
            Some(ip("198.19.0.10"))
        );
        assert_eq!(parse_host("198.19.0.0/24"), None);
        assert_eq!(parse_host("nonsense"), None);
        assert_eq!(
            parse_backend("198.18.1.2:8080"),
            Some(backend("198.18.1.2:8080"))
        );
        assert_eq!(parse_backend("198.18.1.2"), None);
        assert_eq!(parse_backend("198.18.1.2:99999"), None);
        // ip6tables-save: `/128`, and the DNAT target in brackets.
        assert_eq!(parse_host("2001:db8::a/128"), Some(ip("2001:db8::a")));
        assert_eq!(parse_host("2001:db8::a"), Some(ip("2001:db8::a")));
        assert_eq!(parse_host("2001:db8::/64"), None);
        assert_eq!(
            parse_backend("[2001:db8::1:2]:8080"),
            Some(BackendAddr {
                ip: ip("2001:db8::1:2"),
                port: 8080
            })
        );
        assert_eq!(parse_backend("2001:db8::1:2:8080"), None);
        assert_eq!(parse_backend("[198.18.1.2]:8080"), None);
    }
}
