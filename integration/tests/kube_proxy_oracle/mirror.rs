//! IPv6 mirrors of the IPv4 cases. kube-proxy's own IPv6 packet-flow vectors cover
//! TestNodePorts only (`NODE_PORTS_IPV6`, from its "ipv6" subtest); its other tests run
//! the IPv4 proxier alone. So for those, the same Services, EndpointSlices, pods and
//! vectors are mirrored into IPv6: every address moves to an IPv6 one by [`MIRROR`], each
//! slice's `addressType` becomes `IPv6`, and the expected outcomes (backends, REJECT,
//! DROP, masquerade, the eBPF mode's differences) stay as they are. A mirror is ours, not
//! kube-proxy's text: it checks that each family's proxier behaves as the IPv4 one does,
//! which is what kube-proxy's IPv6 proxier is (the same code over ip6tables).
//!
//! Left out of a mirror: vectors from or to 127.0.0.1. There are no localhost NodePorts in
//! IPv6 (kube-proxy's `route_localnet` trick is IPv4-only, and its IPv6 TestNodePorts
//! subtests list no `::1` vector).
//!
//! Mapped addresses are kube-proxy-style IPv6 test addresses (the pod network
//! fd00:10::/64, ClusterIPs in fd00:172:30::/48, external clients in 2600:5200::/48, node
//! and LoadBalancer addresses in 2001:db8::/48), which `addresses` maps onto ours like any
//! other IPv6 address of the fixture.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::vectors::{Case, Ebpf, Output, Pod, Step, Vector};

/// (IPv4 prefix, its length, IPv6 /96 prefix): an IPv4 address in the prefix becomes the
/// IPv6 prefix with the whole IPv4 address in its last 32 bits, so an IPv4 `/n` range is
/// the IPv6 `/96+n` range over the same addresses (203.0.113.0/25 still holds
/// 203.0.113.2 and not 203.0.113.130).
const MIRROR: &[(&str, u8, &str)] = &[
    // The pod network 10.0.0.0/8, inside kube-proxy's IPv6 cluster CIDR fd00:10::/64 (so
    // every pod stays a pod to the local-traffic detector).
    ("10.0.0.0", 8, "fd00:10::"),
    ("172.30.0.0", 16, "fd00:172:30::"),
    // Node IPs (192.168.0.2 -> 2001:db8::c0a8:2) and ExternalIPs (192.168.99.0/24).
    ("192.168.0.0", 16, "2001:db8::"),
    // LoadBalancer IPs.
    ("1.2.3.4", 32, "2001:db8::1:0:0"),
    ("5.6.7.8", 32, "2001:db8::1:0:0"),
    ("9.10.11.12", 32, "2001:db8::1:0:0"),
    // Clients outside the cluster.
    ("203.0.113.0", 24, "2600:5200::"),
];

fn v4(text: &str) -> u32 {
    u32::from(
        text.parse::<Ipv4Addr>()
            .unwrap_or_else(|e| panic!("mirror table: {text}: {e}")),
    )
}

/// The IPv6 mirror of kube-proxy's IPv4 `address`; panics on an address the table lacks
/// (a fixture error).
pub fn address(address: &str) -> String {
    let a = v4(address);
    MIRROR
        .iter()
        .find(|(prefix, bits, _)| {
            let mask = u32::MAX.checked_shl(32 - u32::from(*bits)).unwrap_or(0);
            a & mask == v4(prefix)
        })
        .map(|(_, _, six)| {
            let six: Ipv6Addr = six
                .parse()
                .unwrap_or_else(|e| panic!("mirror table: {six}: {e}"));
            Ipv6Addr::from(u128::from(six) | u128::from(a)).to_string()
        })
        .unwrap_or_else(|| panic!("fixture address {address} has no IPv6 mirror"))
}

/// `IP:port` (a backend as kube-proxy writes it) mirrored: `[v6]:port`.
fn backend(ip_port: &str) -> String {
    let (ip, port) = ip_port
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("fixture backend {ip_port:?} is not IP:port"));
    format!("[{}]:{port}", address(ip))
}

/// A manifest mirrored: every IPv4 address (and range: `/n` -> `/96+n`) becomes its
/// mirror, quoted where it was not (a bare IPv6 address is no YAML scalar in a flow
/// collection), and every EndpointSlice's `addressType` `IPv6`.
pub fn text(manifest: &str) -> String {
    let manifest = manifest.replace("addressType: IPv4", "addressType: IPv6");
    let mut out = String::with_capacity(manifest.len() * 2);
    let mut chars = manifest.chars().peekable();
    let mut in_quotes = false;
    while let Some(c) = chars.next() {
        if !(c.is_ascii_digit() || c == '.') || out.ends_with(|p: char| p.is_ascii_alphanumeric()) {
            if c == '"' {
                in_quotes = !in_quotes;
            }
            out.push(c);
            continue;
        }
        // A run of digits and dots not inside a word: an IPv4 address, or not.
        let mut token = String::from(c);
        while let Some(&next) = chars.peek().filter(|n| n.is_ascii_digit() || **n == '.') {
            token.push(next);
            chars.next();
        }
        if token.parse::<Ipv4Addr>().is_err() {
            out.push_str(&token);
            continue;
        }
        let mut mirrored = address(&token);
        if chars.peek() == Some(&'/') {
            chars.next();
            let mut bits = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                bits.push(d);
                chars.next();
            }
            let bits: u8 = bits
                .parse()
                .unwrap_or_else(|e| panic!("fixture range {token}/{bits}: {e}"));
            mirrored = format!("{mirrored}/{}", 96 + bits);
        }
        match in_quotes {
            true => out.push_str(&mirrored),
            false => out.push_str(&format!("\"{mirrored}\"")),
        }
    }
    out
}

fn output(output: Output) -> Output {
    match output {
        Output::Backends(backends) => {
            let mirrored: Vec<&'static str> = backends.iter().map(|b| leak(backend(b))).collect();
            Output::Backends(Box::leak(mirrored.into_boxed_slice()))
        }
        other => other,
    }
}

fn is_localhost(address: &str) -> bool {
    address.starts_with("127.")
}

fn vectors(vectors: &[Vector]) -> &'static [Vector] {
    let mirrored: Vec<Vector> = vectors
        .iter()
        .filter(|v| !is_localhost(v.source) && !is_localhost(v.dest))
        .map(|v| Vector {
            name: v.name,
            source: leak(address(v.source)),
            protocol: v.protocol,
            dest: leak(address(v.dest)),
            port: v.port,
            output: output(v.output),
            masq: v.masq,
            ebpf: match v.ebpf {
                Ebpf::Same => Ebpf::Same,
                Ebpf::Differs(o, why) => Ebpf::Differs(output(o), why),
            },
        })
        .collect();
    Box::leak(mirrored.into_boxed_slice())
}

/// A case's fixture is `'static` text; a mirror is made once per test process and kept
/// for its life, as the fixture is.
fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// The IPv6 mirror of an IPv4 `case` (see the module documentation).
pub fn ipv6(case: &Case) -> &'static Case {
    assert!(
        !case.node_ip.contains(':'),
        "{} is an IPv6 case already",
        case.test
    );
    let pods: Vec<Pod> = case
        .pods
        .iter()
        .map(|p| Pod {
            ip: leak(address(p.ip)),
            on_this_node: p.on_this_node,
            tcp: p.tcp,
            udp: p.udp,
        })
        .collect();
    let alt: Vec<&'static str> = case.alt_node_ips.iter().map(|a| leak(address(a))).collect();
    let then: Vec<Step> = case
        .then
        .iter()
        .map(|step| Step {
            manifests: leak(text(step.manifests)),
            vectors: vectors(step.vectors),
        })
        .collect();
    Box::leak(Box::new(Case {
        test: leak(format!("{} (IPv6 mirror)", case.test)),
        manifests: leak(text(case.manifests)),
        pods: Box::leak(pods.into_boxed_slice()),
        alt_node_ips: Box::leak(alt.into_boxed_slice()),
        agent_args: case.agent_args,
        node_ip: leak(address(case.node_ip)),
        vectors: vectors(case.vectors),
        then: Box::leak(then.into_boxed_slice()),
    }))
}

#[test]
fn the_mirror_keeps_ranges_and_writes_yaml_an_ipv6_slice_parses_from() {
    assert_eq!(address("10.180.0.1"), "fd00:10::ab4:1");
    assert_eq!(address("192.168.0.2"), "2001:db8::c0a8:2");
    assert_eq!(address("1.2.3.4"), "2001:db8::1:102:304");
    assert_eq!(address("203.0.113.130"), "2600:5200::cb00:7182");
    assert_eq!(backend("172.30.0.41:80"), "[fd00:172:30::ac1e:29]:80");
    assert_eq!(
        text("  clusterIP: 172.30.0.41\n  externalIPs: [192.168.99.11]\n"),
        "  clusterIP: \"fd00:172:30::ac1e:29\"\n  externalIPs: [\"2001:db8::c0a8:630b\"]\n"
    );
    assert_eq!(
        text("  loadBalancerSourceRanges: [\"192.168.0.0/24\", \" 203.0.113.0/25\"]\n"),
        "  loadBalancerSourceRanges: [\"2001:db8::c0a8:0/120\", \" 2600:5200::cb00:7100/121\"]\n"
    );
    assert_eq!(
        text(
            "addressType: IPv4\n- {addresses: [\"10.0.1.1\"], nodeName: node1}\n  port: 80, nodePort: 3001, ingress: [{ip: 9.10.11.12}]"
        ),
        "addressType: IPv6\n- {addresses: [\"fd00:10::a00:101\"], nodeName: node1}\n  port: 80, nodePort: 3001, ingress: [{ip: \"2001:db8::1:90a:b0c\"}]"
    );
    // A /25 keeps its meaning: .2 inside, .130 outside (/121 = the last 7 bits).
    let range = u128::from(
        "2600:5200::cb00:7100"
            .parse::<Ipv6Addr>()
            .expect("an address"),
    );
    let inside = |a: &str| {
        let a = u128::from(address(a).parse::<Ipv6Addr>().expect("an address"));
        a >> 7 == range >> 7
    };
    assert!(inside("203.0.113.2") && !inside("203.0.113.130"));
    // Every mirror of the fixture is mapped onto 2001:db8::/32 by `addresses`.
    for a in [
        "10.180.2.1",
        "172.30.1.1",
        "192.168.1.2",
        "5.6.7.8",
        "203.0.113.2",
    ] {
        assert!(
            super::addresses::ours(&address(a)).starts_with("2001:db8:"),
            "{a}"
        );
    }
}
