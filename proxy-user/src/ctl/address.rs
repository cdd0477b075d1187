//! Addresses as proxyctl prints and reads them: `198.19.0.10:80`, IPv6 in brackets
//! (`[2001:db8::a]:80`), and a frontend as `lookup` takes it.

use std::net::{IpAddr, SocketAddr};

use crate::model::{HostPort, Protocol};

/// `ip:port`, `[ipv6]:port`.
pub fn host_port(ip: IpAddr, port: u16) -> String {
    HostPort(ip, port).to_string()
}

/// What `proxyctl lookup` is asked about: an address, with a port or not (then every
/// frontend at that address), and a protocol (TCP unless given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendQuery {
    pub ip: IpAddr,
    pub port: Option<u16>,
    pub protocol: Protocol,
}

impl FrontendQuery {
    /// Whether a row's `frontend` (as [`host_port`] prints it, or `*:port` for an
    /// iptables NodePort rule) is this address, at this port if one was given.
    pub fn matches(&self, frontend: &str) -> bool {
        let Ok(addr) = frontend.parse::<SocketAddr>() else {
            return false;
        };
        addr.ip() == self.ip && self.port.is_none_or(|p| p == addr.port())
    }
}

/// `IP:PORT[/PROTO]`, `[IPv6]:PORT[/PROTO]`, or an address alone (`198.19.0.10`,
/// `2001:db8::a`, `[2001:db8::a]`), optionally with `/PROTO`.
pub fn parse_frontend(text: &str) -> Result<FrontendQuery, String> {
    let (addr, protocol) = match text.rsplit_once('/') {
        Some((addr, proto)) => match proto.to_ascii_uppercase().as_str() {
            "TCP" => (addr, Protocol::Tcp),
            "UDP" => (addr, Protocol::Udp),
            other => return Err(format!("{text:?}: protocol {other} is not TCP or UDP")),
        },
        None => (text, Protocol::Tcp),
    };
    let bare = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(FrontendQuery {
            ip,
            port: None,
            protocol,
        });
    }
    let addr: SocketAddr = addr.parse().map_err(|_| {
        format!("{text:?} is not IP:PORT, [IPv6]:PORT or an address alone (then /TCP or /UDP)")
    })?;
    Ok(FrontendQuery {
        ip: addr.ip(),
        port: Some(addr.port()),
        protocol,
    })
}

/// Whether a client as `proxyctl affinity` shows it (`netns:COOKIE`, or an address in
/// any spelling: /proc/net/xt_recent writes IPv6 in full) is the one asked about.
pub fn same_client(shown: &str, asked: &str) -> bool {
    match (shown.parse::<IpAddr>(), asked.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => shown == asked,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn both_families_with_or_without_a_port() {
        let q = |ip_: &str, port, protocol| FrontendQuery {
            ip: ip(ip_),
            port,
            protocol,
        };
        let cases = [
            ("198.19.0.10:80", q("198.19.0.10", Some(80), Protocol::Tcp)),
            (
                "198.19.0.10:53/udp",
                q("198.19.0.10", Some(53), Protocol::Udp),
            ),
            ("198.19.0.10", q("198.19.0.10", None, Protocol::Tcp)),
            (
                "[2001:db8::a]:80",
                q("2001:db8::a", Some(80), Protocol::Tcp),
            ),
            (
                "[2001:db8::a]:53/UDP",
                q("2001:db8::a", Some(53), Protocol::Udp),
            ),
            ("2001:db8::a", q("2001:db8::a", None, Protocol::Tcp)),
            ("[2001:db8::a]", q("2001:db8::a", None, Protocol::Tcp)),
            ("2001:db8::a/udp", q("2001:db8::a", None, Protocol::Udp)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_frontend(text), Ok(expected), "{text}");
        }
        assert_eq!(
            parse_frontend("web:80"),
            Err(
                "\"web:80\" is not IP:PORT, [IPv6]:PORT or an address alone (then /TCP or /UDP)"
                    .into()
            )
        );
        assert!(
            parse_frontend("[2001:db8::a]:80/sctp")
                .expect_err("no SCTP")
                .contains("protocol SCTP is not TCP or UDP")
        );
    }

    #[test]
    fn rows_match_by_address_not_by_spelling() {
        let v6 = parse_frontend("[2001:0db8::000a]:80").expect("valid");
        assert!(v6.matches("[2001:db8::a]:80"));
        assert!(!v6.matches("[2001:db8::a]:81"));
        assert!(!v6.matches("*:80"));
        let any_port = parse_frontend("2001:db8::a").expect("valid");
        assert!(any_port.matches("[2001:db8::a]:8443"));
        assert!(!any_port.matches("198.19.0.10:80"));
        assert_eq!(host_port(ip("2001:db8::a"), 80), "[2001:db8::a]:80");
        assert_eq!(host_port(ip("198.19.0.10"), 80), "198.19.0.10:80");
    }

    #[test]
    fn clients_compare_as_addresses() {
        assert!(same_client(
            "2001:0db8:0000:0000:0000:0000:0000:0001",
            "2001:db8::1"
        ));
        assert!(same_client("netns:4096", "netns:4096"));
        assert!(!same_client("198.18.100.2", "198.18.100.3"));
    }
}
