//! `proxyctl udp-flows`: the socket path's UDP flows (eBPF mode). One row per unconnected
//! UDP socket and frontend it sent to: the backend its datagrams go to, whether a reply
//! came back, how long the flow has been idle, and its timeout. A connected UDP socket
//! has no row: it keeps the backend of its connect for its whole life (`ss -u` shows it
//! with the backend as peer), and is destroyed when that backend leaves its Service.

use std::collections::BTreeMap;

use proxy_common::{DatapathConfig, UdpFlow, UdpFlowKey};
use serde::Serialize;

use super::{
    services::ServiceRow,
    table::{Align, Table},
};
use crate::dataplane::ebpf::convert;

#[derive(Debug, Serialize, PartialEq)]
pub struct UdpFlowRow {
    pub service: String,
    pub frontend: String,
    /// `bpf_get_socket_cookie()` of the sending socket (`ss -e` shows it as `sk:`).
    pub socket_cookie: u64,
    pub backend: String,
    /// A datagram came back from the backend: the stream timeout applies.
    pub replied: bool,
    pub idle_seconds: f64,
    pub timeout_seconds: u64,
    /// Idle past its timeout: the socket's next datagram chooses a backend anew.
    pub expired: bool,
}

/// The rows of `flows`, most recently active first. `now_ns` is CLOCK_MONOTONIC.
pub fn rows(
    flows: impl IntoIterator<Item = (UdpFlowKey, UdpFlow)>,
    config: &DatapathConfig,
    services: &[ServiceRow],
    now_ns: u64,
) -> Vec<UdpFlowRow> {
    let names: BTreeMap<(&str, &str), &str> = services
        .iter()
        .map(|r| ((r.frontend.as_str(), r.protocol), r.service.as_str()))
        .collect();
    let mut rows: Vec<(u64, UdpFlowRow)> = flows
        .into_iter()
        .filter_map(|(key, flow)| {
            let addr = convert::frontend_addr(&key.frontend)?;
            let frontend = super::address::host_port(addr.ip, addr.port);
            let idle = now_ns.saturating_sub(flow.last_active_ns());
            let timeout = flow.timeout_ns(config);
            let service = names
                .get(&(frontend.as_str(), addr.protocol.as_str()))
                .map_or("(unknown)", |s| s)
                .to_owned();
            Some((
                idle,
                UdpFlowRow {
                    service,
                    frontend,
                    socket_cookie: key.socket_cookie,
                    backend: convert::backend_addr(&flow.backend).to_string(),
                    replied: flow.last_reply_ns != 0,
                    idle_seconds: (idle as f64 / 1e8).round() / 10.0,
                    timeout_seconds: timeout / 1_000_000_000,
                    expired: idle > timeout,
                },
            ))
        })
        .collect();
    rows.sort_by_key(|(idle, r)| (*idle, r.socket_cookie));
    rows.into_iter().map(|(_, r)| r).collect()
}

pub fn render_table(rows: &[UdpFlowRow]) -> String {
    let mut table = Table::new(&[
        ("SERVICE", Align::Left),
        ("FRONTEND", Align::Left),
        ("SOCKET", Align::Right),
        ("BACKEND", Align::Left),
        ("REPLIED", Align::Left),
        ("IDLE", Align::Right),
        ("TIMEOUT", Align::Right),
    ]);
    for r in rows {
        table.row([
            r.service.clone(),
            r.frontend.clone(),
            r.socket_cookie.to_string(),
            r.backend.clone(),
            if r.replied { "yes" } else { "no" }.to_owned(),
            format!("{:.1}s{}", r.idle_seconds, if r.expired { "*" } else { "" }),
            format!("{}s", r.timeout_seconds),
        ]);
    }
    let mut out = table.render();
    if rows.iter().any(|r| r.expired) {
        out.push_str("* expired: the socket's next datagram chooses a backend anew\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_common::{Backend, Frontend, SCOPE_SOCKET, v4_mapped};

    fn v4(a: [u8; 4]) -> proxy_common::Addr {
        v4_mapped(u32::from_ne_bytes(a))
    }

    #[test]
    fn flows_show_their_backend_reply_state_and_timeout() {
        let frontend = Frontend {
            addr: v4([198, 19, 0, 10]),
            port: 53u16.to_be(),
            proto: 17,
            scope: SCOPE_SOCKET,
        };
        let backend = Backend {
            addr: v4([198, 18, 1, 2]),
            port: 5353u16.to_be(),
            _pad: 0,
        };
        let quiet = UdpFlow {
            backend,
            _pad: 0,
            last_sent_ns: 1_000_000_000,
            last_reply_ns: 0,
        };
        let answered = UdpFlow {
            last_reply_ns: 40_000_000_000,
            ..quiet
        };
        let key = |cookie| UdpFlowKey {
            socket_cookie: cookie,
            frontend,
            _pad: 0,
        };
        let config = DatapathConfig::default().or_defaults();
        let rows = rows(
            [(key(7), quiet), (key(8), answered)],
            &config,
            &[],
            41_000_000_000,
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].socket_cookie, 8);
        assert!(rows[0].replied);
        assert_eq!(rows[0].timeout_seconds, 120);
        assert!(!rows[0].expired);
        assert_eq!(rows[1].backend, "198.18.1.2:5353");
        assert_eq!(rows[1].frontend, "198.19.0.10:53");
        assert_eq!(rows[1].timeout_seconds, 30);
        assert!(rows[1].expired, "idle 40 s past a 30 s timeout");
        let table = render_table(&rows);
        assert!(table.contains("40.0s*"), "{table}");
        assert!(table.contains("chooses a backend anew"), "{table}");
    }
}
