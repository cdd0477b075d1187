//! kube-proxy's test addresses, mapped one-to-one onto 198.18.0.0/15 (the only range a
//! test may use). Each rule maps a prefix onto one of the same length, keeping the host
//! bits, so subnets and ranges keep their meaning (203.0.113.0/25, the LoadBalancer source
//! range, still holds 203.0.113.2 and not 203.0.113.130).
//!
//! kube-proxy's layout (proxier_test.go's header comment) and ours:
//! - pod network 10.0.0.0/8 (`--cluster-cidr`): 198.18.0.0/16; pods 10.180.0.0/22
//!   (10.180.0.x on this node, 10.180.1-2.x elsewhere) -> 198.18.180.0/22, 10.0.0.0/22 ->
//!   198.18.0.0/22;
//! - every other address lies in 198.19.0.0/16: ClusterIPs 172.30.0.0/23 ->
//!   198.19.30.0/23, node IPs 192.168.0.0/23 -> 198.19.168.0/23 (this node 192.168.0.2,
//!   its secondary IP 192.168.1.2), ExternalIPs 192.168.99.0/24 -> 198.19.99.0/24,
//!   LoadBalancer IPs 1.2.3.4, 5.6.7.8, 9.10.11.12 -> 198.19.2.34, .78, .112, clients
//!   outside the cluster 203.0.113.0/24 -> 198.19.113.0/24.
//!
//! IPv6 (the IPv6 subtests), onto 2001:db8::/32 the same way ([`RULES6`]): pods
//! fd00:10::/64 (`--cluster-cidr`) -> 2001:db8:a::/64 and fd00:10:180::/48 ->
//! 2001:db8:a180::/48, ClusterIPs fd00:172:30::/48 -> 2001:db8:c030::/48, clients outside
//! the cluster 2600:5200::/48 -> 2001:db8:e600::/48; the node IPs (`testNodeIPv6`
//! 2001:db8::1, `testNodeIPv6Alt` 2001:db8:1::2) are documentation addresses already and
//! stay.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// (kube-proxy's prefix, ours, length).
const RULES: &[(&str, &str, u8)] = &[
    ("10.180.0.0", "198.18.180.0", 22),
    ("10.0.0.0", "198.18.0.0", 22),
    ("172.30.0.0", "198.19.30.0", 23),
    ("192.168.0.0", "198.19.168.0", 23),
    ("192.168.99.0", "198.19.99.0", 24),
    ("1.2.3.4", "198.19.2.34", 32),
    ("5.6.7.8", "198.19.2.78", 32),
    ("9.10.11.12", "198.19.2.112", 32),
    ("203.0.113.0", "198.19.113.0", 24),
    // 127.0.0.1 is the node's own loopback in both worlds.
    ("127.0.0.0", "127.0.0.0", 8),
];

/// kube-proxy's pod network 10.0.0.0/8, as `--cluster-cidr`: holds every mapped pod
/// address and no other mapped address.
pub const CLUSTER_CIDR: &str = "198.18.0.0/16";

/// The other node (kube-proxy's tests name it, "node2", but never give its address).
pub const OTHER_NODE_IP: &str = "198.19.168.3";

/// IPv6: (kube-proxy's prefix, ours, length).
const RULES6: &[(&str, &str, u8)] = &[
    ("fd00:10::", "2001:db8:a::", 64),
    ("fd00:10:180::", "2001:db8:a180::", 48),
    ("fd00:172:30::", "2001:db8:c030::", 48),
    ("2600:5200::", "2001:db8:e600::", 48),
    ("2001:db8::", "2001:db8::", 48),
    ("2001:db8:1::", "2001:db8:1::", 48),
];

/// kube-proxy's IPv6 pod network fd00:10::/64 beside the IPv4 one, as `--cluster-cidr`
/// takes them (one per family).
pub const CLUSTER_CIDR_DUAL: &str = "198.18.0.0/16,2001:db8:a::/64";

/// The other node's IPv6 address.
pub const OTHER_NODE_IP6: &str = "2001:db8::3";

fn parse6(a: &str) -> u128 {
    u128::from(
        a.parse::<Ipv6Addr>()
            .unwrap_or_else(|e| panic!("address table: {a}: {e}")),
    )
}

fn mask6(bits: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0)
}

fn translate6(address: Ipv6Addr, from_ours: bool) -> Option<Ipv6Addr> {
    let a = u128::from(address);
    RULES6.iter().find_map(|(theirs, ours, bits)| {
        let (from, to) = match from_ours {
            false => (parse6(theirs), parse6(ours)),
            true => (parse6(ours), parse6(theirs)),
        };
        let m = mask6(*bits);
        (a & m == from).then(|| Ipv6Addr::from(to | (a & !m)))
    })
}

fn parse(a: &str) -> u32 {
    u32::from(
        a.parse::<Ipv4Addr>()
            .unwrap_or_else(|e| panic!("address table: {a}: {e}")),
    )
}

fn mask(bits: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0)
}

fn translate(address: Ipv4Addr, from_ours: bool) -> Option<Ipv4Addr> {
    let a = u32::from(address);
    RULES.iter().find_map(|(theirs, ours, bits)| {
        let (from, to) = match from_ours {
            false => (parse(theirs), parse(ours)),
            true => (parse(ours), parse(theirs)),
        };
        let m = mask(*bits);
        (a & m == from).then(|| Ipv4Addr::from(to | (a & !m)))
    })
}

/// Our address for kube-proxy's `address`; panics on an address the table lacks (a
/// fixture error).
pub fn ours(address: &str) -> String {
    let parsed: IpAddr = address
        .parse()
        .unwrap_or_else(|e| panic!("fixture address {address:?}: {e}"));
    match parsed {
        IpAddr::V4(v4) => translate(v4, false).map(|a| a.to_string()),
        IpAddr::V6(v6) => translate6(v6, false).map(|a| a.to_string()),
    }
    .unwrap_or_else(|| panic!("fixture address {address} has no rule in the address table"))
}

/// `address:port` as a socket address is written (`[v6]:port`).
pub fn host_port(address: &str, port: u16) -> String {
    match address.contains(':') {
        true => format!("[{address}]:{port}"),
        false => format!("{address}:{port}"),
    }
}

/// kube-proxy's address for ours (for messages); ours unchanged if no rule maps it.
pub fn theirs(address: &str) -> String {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => translate(v4, true).map(|a| a.to_string()),
        Ok(IpAddr::V6(v6)) => translate6(v6, true).map(|a| a.to_string()),
        Err(_) => None,
    }
    .unwrap_or_else(|| address.to_string())
}

/// `text` (a manifest in kube-proxy's addresses) with every IPv4 and IPv6 address
/// mapped (a run of hex digits, dots and colons that parses as an address).
pub fn map_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        // A YAML key's colon ends a word, never an address of ours ("::" alone is none).
        let is_address = token.parse::<Ipv4Addr>().is_ok()
            || (token.len() > 2 && token.parse::<Ipv6Addr>().is_ok());
        if is_address {
            out.push_str(&ours(token));
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() || c == '.' || c == ':' {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

#[test]
fn the_table_is_one_to_one_and_keeps_ranges() {
    assert_eq!(ours("172.30.0.41"), "198.19.30.41");
    assert_eq!(ours("10.180.2.1"), "198.18.182.1");
    assert_eq!(ours("203.0.113.130"), "198.19.113.130");
    assert_eq!(theirs("198.19.2.34"), "1.2.3.4");
    assert_eq!(ours("fd00:10:180::2:1"), "2001:db8:a180::2:1");
    assert_eq!(ours("fd00:10::2"), "2001:db8:a::2");
    assert_eq!(ours("2600:5200::1"), "2001:db8:e600::1");
    assert_eq!(ours("2001:db8::1"), "2001:db8::1");
    assert_eq!(theirs("2001:db8:c030::41"), "fd00:172:30::41");
    assert_eq!(
        map_text("clusterIP: \"fd00:172:30::41\"\naddresses: [\"fd00:10:180::1\"], name: p80"),
        "clusterIP: \"2001:db8:c030::41\"\naddresses: [\"2001:db8:a180::1\"], name: p80"
    );
    assert_eq!(
        map_text("cidrs: [\"192.168.0.0/24\", 203.0.113.0/25]\nport: 80\nv1"),
        "cidrs: [\"198.19.168.0/24\", 198.19.113.0/25]\nport: 80\nv1"
    );
    // No two rules overlap on either side, and every mapped address is in
    // 198.18.0.0/15 (or loopback).
    for (i, a) in RULES.iter().enumerate() {
        for b in &RULES[i + 1..] {
            let bits = a.2.min(b.2);
            for (x, y) in [(a.0, b.0), (a.1, b.1)] {
                assert_ne!(
                    parse(x) & mask(bits),
                    parse(y) & mask(bits),
                    "{a:?} and {b:?} overlap"
                );
            }
        }
        let ours = parse(a.1);
        assert!(
            ours & mask(15) == parse("198.18.0.0") || a.1 == "127.0.0.0",
            "{a:?} leaves 198.18.0.0/15"
        );
    }
}
