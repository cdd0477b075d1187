//! `proxyctl services`: every frontend with its backends, weights, shares, affinity timeout
//! and counters, read from the maps (eBPF mode) or from the installed chains (iptables
//! mode). `proxyctl lookup` picks the rows of one frontend; `proxyctl chains` prints one
//! service's chains.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    dataplane::ebpf::{
        convert,
        maps::{Counters, Maps},
    },
    model::{DesiredState, Family, FrontendKind},
};

use super::{
    address::{FrontendQuery, host_port},
    chains::{InstalledRules, Table as RulesTable},
    table::{Align, Table},
};

#[derive(Debug, Serialize, PartialEq)]
pub struct ServiceRow {
    pub service: String,
    /// `IP:port`, `[IPv6]:port`; `*:port` for a NodePort in iptables mode (every local
    /// address).
    pub frontend: String,
    /// `IPv4` or `IPv6`.
    pub family: Family,
    pub protocol: &'static str,
    pub kind: &'static str,
    /// 0 when the Service has no ClientIP affinity.
    pub affinity_timeout_seconds: u32,
    /// In iptables mode: connections translated (the nat jump's packet counter), packets
    /// refused or dropped (the filter rule's), affinity matches (the `recent` rules').
    pub counters: Counters,
    /// iptables mode: the chain the frontend's jump goes to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    pub backends: Vec<BackendRow>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct BackendRow {
    pub address: String,
    /// `null` in iptables mode, where only probabilities are installed.
    pub weight: Option<u32>,
    /// Percentage of new connections this backend receives (affinity aside).
    pub share_percent: f64,
    /// iptables mode: the KUBE-SEP chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// eBPF mode, a UDP frontend: the endpoint serves but takes no new connections
    /// (terminating while others are ready, or outside this node's topology hints); the
    /// UDP flows already on it stay.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub existing_flows_only: bool,
}

fn percent(share: f64) -> f64 {
    (share * 1000.0).round() / 10.0
}

pub fn rows(maps: &Maps) -> Result<Vec<ServiceRow>, crate::dataplane::ebpf::maps::MapsError> {
    let installed = maps.installed()?;
    Ok(rows_from(&installed, |addr| {
        maps.counters(&convert::frontend(addr))
    }))
}

pub fn rows_from(
    installed: &DesiredState,
    counters: impl Fn(&crate::model::FrontendAddr) -> Counters,
) -> Vec<ServiceRow> {
    let mut rows: Vec<ServiceRow> = installed
        .iter()
        .map(|(addr, spec)| {
            let total: u64 = spec.usable().map(|b| u64::from(b.weight)).sum();
            ServiceRow {
                service: spec.service.to_string(),
                frontend: host_port(addr.ip, addr.port),
                family: addr.family(),
                protocol: addr.protocol.as_str(),
                kind: spec.kind.as_str(),
                affinity_timeout_seconds: spec.affinity_timeout_s,
                counters: counters(addr),
                chain: None,
                backends: spec
                    .backends
                    .iter()
                    .map(|b| BackendRow {
                        address: b.addr.to_string(),
                        weight: Some(b.weight),
                        share_percent: if total == 0 {
                            0.0
                        } else {
                            percent(f64::from(b.weight) / total as f64)
                        },
                        chain: None,
                        existing_flows_only: b.flows_only,
                    })
                    .collect(),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.service.cmp(&b.service).then(a.frontend.cmp(&b.frontend)));
    rows
}

/// The rows of the frontends kube-proxy's chains install, as iptables-save (for IPv4) or
/// ip6tables-save (for IPv6) shows them.
pub fn rows_from_rules(rules: &InstalledRules, family: Family) -> Vec<ServiceRow> {
    let mut rows: Vec<ServiceRow> = rules
        .frontends()
        .into_iter()
        .map(|f| {
            let affinity_hits = f
                .chain
                .iter()
                .flat_map(|chain| rules.rules_in(RulesTable::Nat, chain))
                .filter(|r| r.has("--rcheck"))
                .map(|r| r.packets())
                .sum();
            ServiceRow {
                frontend: match f.ip {
                    Some(ip) => host_port(ip, f.port),
                    None => format!("*:{}", f.port),
                },
                family,
                protocol: f.protocol.as_str(),
                kind: f.kind.as_str(),
                affinity_timeout_seconds: f.affinity_timeout_s,
                counters: Counters {
                    translated: f.packets,
                    no_endpoint: f.verdict.map_or(0, |(_, packets)| packets),
                    affinity_hits,
                },
                backends: f
                    .endpoints
                    .iter()
                    .map(|e| BackendRow {
                        address: e.addr.to_string(),
                        weight: None,
                        share_percent: percent(e.share),
                        chain: Some(e.chain.clone()),
                        existing_flows_only: false,
                    })
                    .collect(),
                chain: f.chain,
                service: f.service,
            }
        })
        .collect();
    rows.sort_by(|a, b| a.service.cmp(&b.service).then(a.frontend.cmp(&b.frontend)));
    rows
}

/// The rows a connection to `query` uses: its frontend (every frontend at the address
/// when no port is given), or in iptables mode the NodePort rule for that port (which
/// applies on every local address of its family).
pub fn lookup(rows: Vec<ServiceRow>, query: &FrontendQuery) -> Vec<ServiceRow> {
    let (exact_rows, rest): (Vec<ServiceRow>, Vec<ServiceRow>) = rows
        .into_iter()
        .filter(|r| r.protocol == query.protocol.as_str())
        .partition(|r| query.matches(&r.frontend));
    if !exact_rows.is_empty() {
        return exact_rows;
    }
    let Some(port) = query.port else {
        return Vec::new();
    };
    let any = format!("*:{port}");
    let family = Family::of(query.ip);
    rest.into_iter()
        .filter(|r| {
            r.frontend == any && r.kind == FrontendKind::NodePort.as_str() && r.family == family
        })
        .collect()
}

pub fn render_table(rows: &[ServiceRow]) -> String {
    if rows.is_empty() {
        return "no services installed\n".into();
    }
    let mut services = Table::new(&[
        ("SERVICE", Align::Left),
        ("FRONTEND", Align::Left),
        ("AFFINITY", Align::Left),
        ("TRANSLATED", Align::Right),
        ("NO-ENDPOINT", Align::Right),
    ]);
    // Every frontend's backends line up with each other, under their frontend's row.
    let mut backends = Table::headless(&[Align::Left, Align::Left, Align::Right, Align::Left]);
    for row in rows {
        let affinity = match row.affinity_timeout_seconds {
            0 => "-".to_string(),
            t => format!("{t}s"),
        };
        services.row([
            row.service.clone(),
            format!("{}/{}", row.frontend, row.protocol),
            affinity,
            row.counters.translated.to_string(),
            row.counters.no_endpoint.to_string(),
        ]);
        for b in &row.backends {
            let weight = b.weight.map_or("-".to_string(), |w| w.to_string());
            backends.row([
                format!("-> {}", b.address),
                format!("weight {weight}"),
                format!("{:.1}%", b.share_percent),
                if b.existing_flows_only {
                    "(existing UDP flows only)".to_string()
                } else {
                    b.chain.clone().unwrap_or_default()
                },
            ]);
        }
    }
    let mut services = services.lines().into_iter();
    let mut backends = backends.lines().into_iter();
    let mut out = String::new();
    if let Some(header) = services.next() {
        let _ = writeln!(out, "{header}");
    }
    for (row, line) in rows.iter().zip(services) {
        let _ = writeln!(out, "{line}");
        if row.backends.is_empty() {
            let _ = writeln!(out, "  (no endpoints: connections are refused)");
        }
        if let Some(chain) = &row.chain {
            let _ = writeln!(out, "  via {chain}");
        }
        for line in backends.by_ref().take(row.backends.len()) {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{
        BackendAddr, FrontendAddr, FrontendKind, FrontendSpec, Protocol, WeightedBackend,
    };

    fn installed() -> DesiredState {
        let backend = |last, weight| WeightedBackend {
            flows_only: false,
            addr: BackendAddr {
                ip: Ipv4Addr::new(198, 18, 1, last).into(),
                port: 8080,
            },
            weight,
        };
        [
            (
                FrontendAddr {
                    ip: Ipv4Addr::new(198, 19, 0, 10).into(),
                    port: 80,
                    protocol: Protocol::Tcp,
                },
                FrontendSpec {
                    service: "demo/web:http".into(),
                    kind: FrontendKind::ClusterIp,
                    local_only: false,
                    affinity_timeout_s: 0,
                    backends: vec![backend(2, 3), backend(3, 1), backend(4, 0)].into(),
                    serving_anywhere: true,
                    source_ranges: None,
                    health_check_node_port: None,
                    external_local: None,
                },
            ),
            (
                FrontendAddr {
                    ip: Ipv4Addr::new(198, 19, 0, 11).into(),
                    port: 53,
                    protocol: Protocol::Udp,
                },
                FrontendSpec {
                    service: "demo/empty".into(),
                    kind: FrontendKind::ClusterIp,
                    local_only: false,
                    affinity_timeout_s: 30,
                    backends: Default::default(),
                    serving_anywhere: false,
                    source_ranges: None,
                    health_check_node_port: None,
                    external_local: None,
                },
            ),
        ]
        .into()
    }

    #[test]
    fn table_shows_shares_and_refusal() {
        let rows = rows_from(&installed(), |_| Counters {
            translated: 7,
            no_endpoint: 0,
            affinity_hits: 0,
        });
        let table = render_table(&rows);
        let expected = "\
SERVICE        FRONTEND            AFFINITY  TRANSLATED  NO-ENDPOINT
demo/empty     198.19.0.11:53/UDP  30s                7            0
  (no endpoints: connections are refused)
demo/web:http  198.19.0.10:80/TCP  -                  7            0
  -> 198.18.1.2:8080  weight 3  75.0%
  -> 198.18.1.3:8080  weight 1  25.0%
  -> 198.18.1.4:8080  weight 0   0.0%
";
        assert_eq!(table, expected);
    }

    #[test]
    fn json_schema() {
        let rows = rows_from(&installed(), |_| Counters::default());
        let json = serde_json::to_value(&rows).expect("serializes");
        assert_eq!(json[1]["service"], "demo/web:http");
        assert_eq!(json[1]["frontend"], "198.19.0.10:80");
        assert_eq!(json[1]["protocol"], "TCP");
        assert_eq!(json[1]["backends"][0]["share_percent"], 75.0);
        assert_eq!(json[1]["counters"]["translated"], 0);
        assert_eq!(json[0]["affinity_timeout_seconds"], 30);
        assert_eq!(json[1]["family"], "IPv4");
    }

    /// The fixture with the web Service dual-stack.
    fn dual_stack() -> DesiredState {
        let mut state = installed();
        let v4 = state.values().find(|s| &*s.service == "demo/web:http");
        let mut spec = v4.expect("web").clone();
        let mut backends = spec.backends.to_vec();
        for (i, b) in backends.iter_mut().enumerate() {
            b.addr.ip = format!("2001:db8:1::{}", i + 2).parse().expect("ip");
        }
        spec.backends = backends.into();
        let addr = FrontendAddr {
            ip: "2001:db8::a".parse().expect("ip"),
            port: 80,
            protocol: Protocol::Tcp,
        };
        state.insert(addr, spec);
        state
    }

    #[test]
    fn ipv6_frontends_and_backends_are_shown_in_brackets_with_their_family() {
        let rows = rows_from(&dual_stack(), |_| Counters::default());
        let table = render_table(&rows);
        assert!(
            table.contains("demo/web:http  [2001:db8::a]:80/TCP  -"),
            "{table}"
        );
        assert!(
            table.contains("  -> [2001:db8:1::2]:8080  weight 3  75.0%"),
            "{table}"
        );
        let json = serde_json::to_value(&rows).expect("serializes");
        assert_eq!(json[2]["frontend"], "[2001:db8::a]:80");
        assert_eq!(json[2]["family"], "IPv6");
        assert_eq!(json[2]["backends"][0]["address"], "[2001:db8:1::2]:8080");
        assert_eq!(json[1]["family"], "IPv4");
    }

    #[test]
    fn lookup_finds_ipv6_frontends_in_either_form() {
        let rows = || rows_from(&dual_stack(), |_| Counters::default());
        let found = |text: &str| -> Vec<String> {
            let query = crate::ctl::address::parse_frontend(text).expect("valid");
            lookup(rows(), &query)
                .into_iter()
                .map(|r| format!("{}/{}", r.frontend, r.protocol))
                .collect()
        };
        assert_eq!(found("[2001:db8::a]:80"), ["[2001:db8::a]:80/TCP"]);
        assert_eq!(found("2001:db8::a"), ["[2001:db8::a]:80/TCP"]);
        assert_eq!(found("198.19.0.10:80/tcp"), ["198.19.0.10:80/TCP"]);
        assert!(found("[2001:db8::a]:81").is_empty());
        assert!(found("2001:db8::a/udp").is_empty());
    }
}
