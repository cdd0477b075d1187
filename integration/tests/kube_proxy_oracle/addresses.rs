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

use std::net::Ipv4Addr;

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
    let parsed: Ipv4Addr = address
        .parse()
        .unwrap_or_else(|e| panic!("fixture address {address:?}: {e}"));
    translate(parsed, false)
        .unwrap_or_else(|| panic!("fixture address {address} has no rule in the address table"))
        .to_string()
}

/// kube-proxy's address for ours (for messages); ours unchanged if no rule maps it.
pub fn theirs(address: &str) -> String {
    address
        .parse()
        .ok()
        .and_then(|a| translate(a, true))
        .map_or_else(|| address.to_string(), |a| a.to_string())
}

/// `text` (a manifest in kube-proxy's addresses) with every IPv4 address mapped.
pub fn map_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if token.parse::<Ipv4Addr>().is_ok() {
            out.push_str(&ours(token));
        } else {
            out.push_str(token);
        }
        token.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() || c == '.' {
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
