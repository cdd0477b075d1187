//! `proxyctl affinity`: the live ClientIP affinity entries: which client sticks to which
//! backend of which frontend, since when, and for how much longer.
//!
//! eBPF mode keys an entry by the client's network namespace (its cookie) and stamps it
//! with CLOCK_MONOTONIC. iptables mode keeps kube-proxy's `recent` lists, one per endpoint
//! chain, keyed by source IP and stamped in jiffies (/proc/net/xt_recent/KUBE-SEP-*).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    chains::InstalledRules,
    services::ServiceRow,
    table::{Align, Table},
};
use crate::dataplane::ebpf::{convert, maps::Maps};

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AffinityRow {
    pub service: String,
    pub frontend: String,
    pub protocol: &'static str,
    /// `netns:<cookie>` in eBPF mode, the source IP in iptables mode.
    pub client: String,
    pub backend: String,
    /// Seconds since the client's last new connection through the entry.
    pub age_seconds: f64,
    /// The Service's timeout; the entry is used while `age_seconds` is below it.
    pub timeout_seconds: u32,
    pub live: bool,
}

/// CLOCK_MONOTONIC now, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// eBPF mode: every entry of the affinity map, named by the frontend's service row.
pub fn ebpf_rows(maps: &Maps, services: &[ServiceRow]) -> Vec<AffinityRow> {
    let by_frontend: BTreeMap<(String, &str), &ServiceRow> = services
        .iter()
        .map(|r| ((r.frontend.clone(), r.protocol), r))
        .collect();
    let now = monotonic_ns();
    let mut rows: Vec<AffinityRow> = maps
        .affinity
        .iter()
        .filter_map(Result::ok)
        .filter_map(|(key, entry)| {
            let addr = convert::frontend_addr(&key.frontend)?;
            let frontend = super::address::host_port(addr.ip, addr.port);
            let row = by_frontend.get(&(frontend.clone(), addr.protocol.as_str()));
            let timeout = row.map_or(0, |r| r.affinity_timeout_seconds);
            let age = now.saturating_sub(entry.last_used_ns) as f64 / 1e9;
            Some(AffinityRow {
                service: row.map_or_else(|| "(unknown)".into(), |r| r.service.clone()),
                frontend,
                protocol: addr.protocol.as_str(),
                client: client_name(key.client_netns, key.client_ip6),
                backend: convert::backend_addr(&entry.backend).to_string(),
                age_seconds: (age * 10.0).round() / 10.0,
                timeout_seconds: timeout,
                live: age < f64::from(timeout),
            })
        })
        .collect();
    sort(&mut rows);
    rows
}

/// `netns:COOKIE` for a socket on the node, the address for a client outside it (an
/// IPv6 one's in `client_ip6`, see `proxy_common::AffinityKey`).
fn client_name(client: u64, client_ip6: proxy_common::Addr) -> String {
    if client == proxy_common::AFFINITY_CLIENT_IP6 {
        convert::ip_of(&client_ip6).to_string()
    } else if client & proxy_common::AFFINITY_CLIENT_IP != 0 {
        std::net::Ipv4Addr::from((client as u32).to_ne_bytes()).to_string()
    } else {
        format!("netns:{client}")
    }
}

/// One line of /proc/net/xt_recent/<list>: `src=IP ttl: T last_seen: JIFFIES oldest_pkt: ...`.
/// The kernel writes an IPv6 source in full (`2001:0db8:0000:...`); it is shown as every
/// other address is (`2001:db8::2`), so the eBPF mode's and iptables mode's rows agree.
fn recent_entry(line: &str) -> Option<(String, u64)> {
    let src = line.strip_prefix("src=")?.split_whitespace().next()?;
    let src = src
        .parse::<std::net::IpAddr>()
        .map_or_else(|_| src.to_owned(), |ip| ip.to_string());
    let mut words = line.split_whitespace();
    words.find(|w| *w == "last_seen:")?;
    let last_seen = words.next()?.parse().ok()?;
    Some((src, last_seen))
}

/// iptables mode: the `recent` lists of the endpoint chains of services with affinity.
/// `read_list` reads /proc/net/xt_recent/<name>; `jiffies_now` and `hz` turn its stamps
/// into ages.
pub fn iptables_rows(
    rules: &InstalledRules,
    read_list: impl Fn(&str) -> Option<String>,
    jiffies_now: u64,
    hz: u64,
) -> Vec<AffinityRow> {
    let mut rows = Vec::new();
    for f in rules.frontends() {
        if f.affinity_timeout_s == 0 {
            continue;
        }
        let frontend = match f.ip {
            Some(ip) => super::address::host_port(ip, f.port),
            None => format!("*:{}", f.port),
        };
        for e in &f.endpoints {
            let Some(list) = read_list(&e.chain) else {
                continue;
            };
            for (client, last_seen) in list.lines().filter_map(recent_entry) {
                let age = jiffies_now.saturating_sub(last_seen) as f64 / hz.max(1) as f64;
                rows.push(AffinityRow {
                    service: f.service.clone(),
                    frontend: frontend.clone(),
                    protocol: f.protocol.as_str(),
                    client,
                    backend: e.addr.to_string(),
                    age_seconds: (age * 10.0).round() / 10.0,
                    timeout_seconds: f.affinity_timeout_s,
                    live: age < f64::from(f.affinity_timeout_s),
                });
            }
        }
    }
    sort(&mut rows);
    rows
}

/// The kernel's jiffies now and its HZ, from /proc/timer_list (`now at N nsecs`, then
/// `jiffies: J`). Jiffies start 300 s before the 32-bit wrap (INITIAL_JIFFIES), so
/// HZ = (J - 2^32) / (uptime - 300), which is snapped to the HZ values kernels are built
/// with.
pub fn jiffies_clock(timer_list: &str) -> Option<(u64, u64)> {
    let now_ns: u64 = timer_list
        .lines()
        .find_map(|l| l.strip_prefix("now at "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let jiffies: u64 = timer_list
        .lines()
        .find_map(|l| l.trim().strip_prefix("jiffies: "))?
        .trim()
        .parse()
        .ok()?;
    let uptime = now_ns as f64 / 1e9;
    if uptime <= 300.0 {
        return None;
    }
    let hz = (jiffies as f64 - 4_294_967_296.0) / (uptime - 300.0);
    let snapped = [100u64, 250, 300, 1000]
        .into_iter()
        .min_by(|a, b| (*a as f64 - hz).abs().total_cmp(&(*b as f64 - hz).abs()))?;
    Some((jiffies, snapped))
}

fn sort(rows: &mut [AffinityRow]) {
    rows.sort_by(|a, b| {
        (&a.service, &a.frontend, &a.client).cmp(&(&b.service, &b.frontend, &b.client))
    });
}

pub fn render_table(rows: &[AffinityRow]) -> String {
    if rows.is_empty() {
        return "no affinity entries\n".into();
    }
    let mut table = Table::new(&[
        ("SERVICE", Align::Left),
        ("FRONTEND", Align::Left),
        ("CLIENT", Align::Left),
        ("BACKEND", Align::Left),
        ("AGE", Align::Right),
        ("TIMEOUT", Align::Right),
    ]);
    for r in rows {
        let expired = if r.live { "" } else { "*" };
        table.row([
            r.service.clone(),
            format!("{}/{}", r.frontend, r.protocol),
            r.client.clone(),
            r.backend.clone(),
            format!("{:.1}s{expired}", r.age_seconds),
            format!("{}s", r.timeout_seconds),
        ]);
    }
    let mut out = table.render();
    if rows.iter().any(|r| !r.live) {
        out.push_str("* expired: the next connection chooses afresh\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_are_a_netns_cookie_or_an_address() {
        assert_eq!(client_name(4096, [0; 4]), "netns:4096");
        let ip = u32::from_ne_bytes([198, 18, 100, 2]);
        assert_eq!(
            client_name(proxy_common::AFFINITY_CLIENT_IP | u64::from(ip), [0; 4]),
            "198.18.100.2"
        );
        let ip6 = [
            u32::from_ne_bytes([0x20, 0x01, 0x0d, 0xb8]),
            0,
            0,
            u32::from_ne_bytes([0, 0, 0, 2]),
        ];
        assert_eq!(
            client_name(proxy_common::AFFINITY_CLIENT_IP6, ip6),
            "2001:db8::2"
        );
    }

    #[test]
    fn recent_lines_are_read() {
        assert_eq!(
            recent_entry(
                "src=198.18.0.1 ttl: 64 last_seen: 4297816321 oldest_pkt: 3 4297816000, 4297816100, 4297816321"
            ),
            Some(("198.18.0.1".into(), 4_297_816_321))
        );
        // An IPv6 source as xt_recent writes it: every group, zero-padded.
        assert_eq!(
            recent_entry(
                "src=2001:0db8:0018:0100:0000:0000:0000:0002 ttl: 64 last_seen: 4297816321 oldest_pkt: 1 4297816321"
            ),
            Some(("2001:db8:18:100::2".into(), 4_297_816_321))
        );
        assert_eq!(recent_entry("garbage"), None);
    }

    #[test]
    fn jiffies_and_hz_from_timer_list() {
        // 1000 s of uptime at HZ=250: 2^32 - 300*250 + 1000*250.
        let text = "Timer List Version: v0.10\nnow at 1000000000000 nsecs\n\ncpu: 0\n  jiffies: 4295142296\n";
        assert_eq!(jiffies_clock(text), Some((4_295_142_296, 250)));
        assert_eq!(jiffies_clock("nothing"), None);
    }

    #[test]
    fn table_marks_expired_entries() {
        let row = |age: f64, live| AffinityRow {
            service: "demo/web:http".into(),
            frontend: "198.19.0.11:80".into(),
            protocol: "TCP",
            client: "198.18.0.1".into(),
            backend: "198.18.1.2:8080".into(),
            age_seconds: age,
            timeout_seconds: 2,
            live,
        };
        let table = render_table(&[row(0.4, true), row(3.0, false)]);
        assert!(table.contains("0.4s") && table.contains("3.0s*"), "{table}");
        assert!(table.ends_with("* expired: the next connection chooses afresh\n"));
    }
}
