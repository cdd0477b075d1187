//! `proxyctl flows`: the tc programs' NAT flow table. One row per connection (its forward
//! entry): client, frontend, backend, the source-NAT address when the backend is on
//! another node, the TCP state, and how long ago the last packet passed.

use std::net::Ipv4Addr;

use proxy_common::{
    IPPROTO_TCP, NAT_REVERSE, NAT_SNAT, NAT_TIMEOUT_CLOSING_NS, NAT_TIMEOUT_SYN_NS,
    NAT_TIMEOUT_TCP_NS, NAT_TIMEOUT_UDP_NS, NatEntry, NatKey, TCP_CLOSING, TCP_ESTABLISHED,
};
use serde::Serialize;

use super::table::{Align, Table};

#[derive(Debug, Serialize, PartialEq)]
pub struct FlowRow {
    pub protocol: &'static str,
    pub client: String,
    pub frontend: String,
    pub backend: String,
    /// The address and port the backend sees, when the flow is source-NATed.
    pub source_nat: Option<String>,
    /// `syn_sent`, `established`, `closing`; `-` for UDP.
    pub state: &'static str,
    pub idle_seconds: f64,
    /// Past its timeout: the next packet starts a new flow.
    pub expired: bool,
}

fn endpoint(addr: u32, port: u16) -> String {
    format!(
        "{}:{}",
        Ipv4Addr::from(addr.to_ne_bytes()),
        u16::from_be(port)
    )
}

/// The rows of the forward entries, newest first. `now_ns` is CLOCK_MONOTONIC.
pub fn rows(entries: impl IntoIterator<Item = (NatKey, NatEntry)>, now_ns: u64) -> Vec<FlowRow> {
    let mut rows: Vec<(u64, FlowRow)> = entries
        .into_iter()
        .filter(|(_, e)| e.flags & NAT_REVERSE == 0)
        .map(|(k, e)| {
            let tcp = k.proto == IPPROTO_TCP;
            let (state, timeout) = match (tcp, e.state) {
                (false, _) => ("-", NAT_TIMEOUT_UDP_NS),
                (true, TCP_ESTABLISHED) => ("established", NAT_TIMEOUT_TCP_NS),
                (true, TCP_CLOSING) => ("closing", NAT_TIMEOUT_CLOSING_NS),
                (true, _) => ("syn_sent", NAT_TIMEOUT_SYN_NS),
            };
            let idle = now_ns.saturating_sub(e.last_seen_ns);
            (
                idle,
                FlowRow {
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

    fn ip(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
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
        let rows = rows([(key, forward), (key, reverse)], 3_500_000_000);
        assert_eq!(
            rows,
            [FlowRow {
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
}
