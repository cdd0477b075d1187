//! `proxyctl flows`: the tc programs' NAT flow tables, IPv4's and IPv6's. One row per
//! connection (its forward entry): client, frontend, backend, the source-NAT address when
//! the backend is on another node, the TCP state, and how long ago the last packet passed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proxy_common::{
    Addr, DatapathConfig, IPPROTO_TCP, NAT_REVERSE, NAT_SNAT, NAT_TIMEOUT_CLOSING_NS,
    NAT_TIMEOUT_SYN_NS, NAT_TIMEOUT_TCP_NS, NatEntryOf, NatKeyOf, TCP_CLOSING, TCP_ESTABLISHED,
    UDP_REPLIED,
};
use serde::Serialize;

use super::table::{Align, Table};

#[derive(Debug, Serialize, PartialEq)]
pub struct FlowRow {
    /// `IPv4` or `IPv6`: which flow table the row is from.
    pub family: &'static str,
    pub protocol: &'static str,
    pub client: String,
    pub frontend: String,
    pub backend: String,
    /// The address and port the backend sees, when the flow is source-NATed.
    pub source_nat: Option<String>,
    /// `syn_sent`, `established`, `closing`; UDP: `replied` once a reply passed (the
    /// stream timeout applies), else `-`.
    pub state: &'static str,
    pub idle_seconds: f64,
    /// Past its timeout: the next packet starts a new flow.
    pub expired: bool,
}

/// An address of a flow table: `u32` (IPv4) or `Addr` (IPv6), network byte order.
pub trait FlowAddr: Copy {
    const FAMILY: &'static str;
    fn ip(self) -> IpAddr;
}

impl FlowAddr for u32 {
    const FAMILY: &'static str = "IPv4";
    fn ip(self) -> IpAddr {
        Ipv4Addr::from(self.to_ne_bytes()).into()
    }
}

impl FlowAddr for Addr {
    const FAMILY: &'static str = "IPv6";
    fn ip(self) -> IpAddr {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(self) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        Ipv6Addr::from(octets).into()
    }
}

/// `a.b.c.d:port` or `[v6]:port`.
fn endpoint<A: FlowAddr>(addr: A, port: u16) -> String {
    super::address::host_port(addr.ip(), u16::from_be(port))
}

/// The rows of the forward entries, newest first. `now_ns` is CLOCK_MONOTONIC; `config`,
/// the settings in force (UDP timeouts). Rows of both tables merge by calling this on
/// each and [`merge`].
pub fn rows<A: FlowAddr>(
    entries: impl IntoIterator<Item = (NatKeyOf<A>, NatEntryOf<A>)>,
    config: &DatapathConfig,
    now_ns: u64,
) -> Vec<FlowRow> {
    let config = config.or_defaults();
    let mut rows: Vec<(u64, FlowRow)> = entries
        .into_iter()
        .filter(|(_, e)| e.flags & NAT_REVERSE == 0)
        .map(|(k, e)| {
            let tcp = k.proto == IPPROTO_TCP;
            let (state, timeout) = match (tcp, e.state) {
                (false, UDP_REPLIED) => ("replied", config.udp_stream_timeout_ns),
                (false, _) => ("-", config.udp_timeout_ns),
                (true, TCP_ESTABLISHED) => ("established", NAT_TIMEOUT_TCP_NS),
                (true, TCP_CLOSING) => ("closing", NAT_TIMEOUT_CLOSING_NS),
                (true, _) => ("syn_sent", NAT_TIMEOUT_SYN_NS),
            };
            let idle = now_ns.saturating_sub(e.last_seen_ns);
            (
                idle,
                FlowRow {
                    family: A::FAMILY,
                    protocol: if tcp { "TCP" } else { "UDP" },
                    client: endpoint(k.saddr, k.sport),
                    frontend: endpoint(k.daddr, k.dport),
                    backend: endpoint(e.to_addr, e.to_port),
                    source_nat: (e.flags & NAT_SNAT != 0).then(|| endpoint(e.alt_addr, e.alt_port)),
                    state,
                    idle_seconds: (idle as f64 / 1e8).round() / 10.0,
                    expired: idle > timeout,
                },
            )
        })
        .collect();
    rows.sort_by_key(|(idle, r)| (*idle, r.client.clone()));
    rows.into_iter().map(|(_, r)| r).collect()
}

/// The rows of both tables in one list, newest first.
pub fn merge(mut rows: Vec<FlowRow>, more: Vec<FlowRow>) -> Vec<FlowRow> {
    rows.extend(more);
    rows.sort_by(|a, b| {
        a.idle_seconds
            .total_cmp(&b.idle_seconds)
            .then_with(|| a.client.cmp(&b.client))
    });
    rows
}

pub fn render_table(rows: &[FlowRow]) -> String {
    let mut table = Table::new(&[
        ("PROTO", Align::Left),
        ("CLIENT", Align::Left),
        ("FRONTEND", Align::Left),
        ("BACKEND", Align::Left),
        ("SOURCE-NAT", Align::Left),
        ("STATE", Align::Left),
        ("IDLE", Align::Right),
    ]);
    for r in rows {
        let idle = format!("{:.1}s{}", r.idle_seconds, if r.expired { "*" } else { "" });
        table.row([
            r.protocol.to_owned(),
            r.client.clone(),
            r.frontend.clone(),
            r.backend.clone(),
            r.source_nat.clone().unwrap_or_else(|| "-".into()),
            r.state.to_owned(),
            idle,
        ]);
    }
    let mut out = table.render();
    if rows.iter().any(|r| r.expired) {
        out.push_str("* expired: the next packet of this connection starts a new flow\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use proxy_common::{NatEntry, NatEntry6, NatKey, NatKey6};

    fn ip(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn ip6(text: &str) -> Addr {
        let octets = text.parse::<Ipv6Addr>().expect("address").octets();
        let mut words = [0u32; 4];
        for (word, chunk) in words.iter_mut().zip(octets.chunks_exact(4)) {
            *word = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        words
    }

    /// A UDP flow from 198.18.100.2:`sport` through NodePort 198.18.100.1:30080 to a
    /// backend on another node, without source NAT, last seen at time 0.
    fn udp_v4(sport: u16) -> (NatKey, NatEntry) {
        let key = NatKey {
            saddr: ip([198, 18, 100, 2]),
            daddr: ip([198, 18, 100, 1]),
            sport: sport.to_be(),
            dport: 30_080u16.to_be(),
            proto: 17,
            _pad: [0; 3],
        };
        let entry = NatEntry {
            to_addr: ip([198, 18, 120, 2]),
            alt_addr: 0,
            to_port: 8080u16.to_be(),
            alt_port: 0,
            flags: 0,
            state: 0,
            _pad: [0; 2],
            last_seen_ns: 0,
        };
        (key, entry)
    }

    #[test]
    fn ipv6_flows_are_listed_with_bracketed_addresses_beside_ipv4_ones() {
        let key = NatKey6 {
            saddr: ip6("2001:db8:100::2"),
            daddr: ip6("2001:db8:100::1"),
            sport: 40_000u16.to_be(),
            dport: 30_080u16.to_be(),
            proto: 17,
            _pad: [0; 3],
        };
        let forward = NatEntry6 {
            to_addr: ip6("2001:db8:120::2"),
            alt_addr: [0; 4],
            to_port: 8080u16.to_be(),
            alt_port: 0,
            flags: 0,
            state: 0,
            _pad: [0; 2],
            last_seen_ns: 2_000_000_000,
        };
        let config = DatapathConfig::default();
        let v6 = rows([(key, forward)], &config, 3_000_000_000);
        let all = merge(rows([udp_v4(40_001)], &config, 3_000_000_000), v6);
        let clients: Vec<&str> = all.iter().map(|r| r.client.as_str()).collect();
        assert_eq!(clients, ["[2001:db8:100::2]:40000", "198.18.100.2:40001"]);
        assert_eq!(all[0].frontend, "[2001:db8:100::1]:30080");
        assert_eq!(all[0].backend, "[2001:db8:120::2]:8080");
        assert_eq!(all[0].state, "-");
        assert_eq!(all[0].source_nat, None);
        assert_eq!(all[0].family, "IPv6");
        assert_eq!(all[1].family, "IPv4");
    }

    #[test]
    fn forward_entries_become_rows_and_reverse_ones_are_left_out() {
        let key = NatKey {
            saddr: ip([198, 18, 100, 2]),
            daddr: ip([198, 18, 100, 1]),
            sport: 40_000u16.to_be(),
            dport: 30_080u16.to_be(),
            proto: IPPROTO_TCP,
            _pad: [0; 3],
        };
        let forward = NatEntry {
            to_addr: ip([198, 18, 120, 2]),
            alt_addr: ip([198, 18, 101, 1]),
            to_port: 8080u16.to_be(),
            alt_port: 40_000u16.to_be(),
            flags: NAT_SNAT,
            state: TCP_ESTABLISHED,
            _pad: [0; 2],
            last_seen_ns: 1_000_000_000,
        };
        let reverse = NatEntry {
            flags: NAT_REVERSE | NAT_SNAT,
            ..forward
        };
        let rows = rows(
            [(key, forward), (key, reverse)],
            &DatapathConfig::default(),
            3_500_000_000,
        );
        assert_eq!(
            rows,
            [FlowRow {
                family: "IPv4",
                protocol: "TCP",
                client: "198.18.100.2:40000".into(),
                frontend: "198.18.100.1:30080".into(),
                backend: "198.18.120.2:8080".into(),
                source_nat: Some("198.18.101.1:40000".into()),
                state: "established",
                idle_seconds: 2.5,
                expired: false,
            }]
        );
        let table = render_table(&rows);
        assert!(
            table.lines().nth(1).is_some_and(|l| l.starts_with(
                "TCP    198.18.100.2:40000  198.18.100.1:30080  198.18.120.2:8080  198.18.101.1:40000  established  2.5s"
            )),
            "{table}"
        );
        let json = serde_json::to_value(&rows).expect("json");
        assert_eq!(json[0]["source_nat"], "198.18.101.1:40000");
    }

    #[test]
    fn a_udp_flow_shows_whether_a_reply_passed_and_expires_by_the_agents_timeouts() {
        let (key, entry) = udp_v4(40_000);
        // --udp-timeout 3 --udp-stream-timeout 8; 5 s idle.
        let config = DatapathConfig {
            udp_timeout_ns: 3_000_000_000,
            udp_stream_timeout_ns: 8_000_000_000,
        };
        let unreplied = rows([(key, entry)], &config, 5_000_000_000);
        assert_eq!((unreplied[0].state, unreplied[0].expired), ("-", true));
        let replied = NatEntry {
            state: UDP_REPLIED,
            ..entry
        };
        let replied = rows([(key, replied)], &config, 5_000_000_000);
        assert_eq!((replied[0].state, replied[0].expired), ("replied", false));
        // Unset, conntrack's defaults: 30 s unreplied.
        let default = rows([(key, entry)], &DatapathConfig::default(), 5_000_000_000);
        assert!(!default[0].expired);
    }
}
