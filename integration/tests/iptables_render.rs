//! The rules the iptables fallback renders (nat and filter tables: ClusterIP, NodePort and
//! LoadBalancer frontends, Local policy, no endpoints) are accepted by the kernel, through
//! both iptables backends (nf_tables and legacy), in a network namespace of the test's own.

use std::{io::Write as _, net::Ipv4Addr, process::Stdio};

use integration::{Netns, require_privileges, unique};
use proxy_user::{
    dataplane::iptables::render::{RenderOptions, filter_table, nat_table},
    model::{
        BackendAddr, DesiredState, FrontendAddr, FrontendKind, FrontendSpec, Protocol,
        WeightedBackend,
    },
};

fn state() -> DesiredState {
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
                affinity_timeout_s: 10_800,
                local_only: false,
                backends: vec![backend(2, 3), backend(3, 1), backend(4, 0)].into(),
                serving_anywhere: true,
                source_ranges: None,
                health_check_node_port: None,
                external_local: None,
            },
        ),
        (
            FrontendAddr {
                ip: Ipv4Addr::new(198, 19, 0, 53).into(),
                port: 53,
                protocol: Protocol::Udp,
            },
            FrontendSpec {
                service: "demo/dns:dns".into(),
                kind: FrontendKind::ClusterIp,
                affinity_timeout_s: 0,
                local_only: false,
                backends: vec![backend(2, 1), backend(3, 1)].into(),
                serving_anywhere: true,
                source_ranges: None,
                health_check_node_port: None,
                external_local: None,
            },
        ),
        (
            FrontendAddr {
                ip: Ipv4Addr::new(198, 18, 0, 100).into(),
                port: 30080,
                protocol: Protocol::Tcp,
            },
            FrontendSpec {
                service: "demo/web:http".into(),
                kind: FrontendKind::NodePort,
                affinity_timeout_s: 10_800,
                local_only: false,
                backends: vec![backend(2, 3), backend(3, 1), backend(4, 0)].into(),
                serving_anywhere: true,
                source_ranges: None,
                health_check_node_port: None,
                external_local: Some(vec![backend(2, 3)]),
            },
        ),
        (
            FrontendAddr {
                ip: Ipv4Addr::new(198, 19, 6, 6).into(),
                port: 80,
                protocol: Protocol::Tcp,
            },
            FrontendSpec {
                service: "demo/web:http".into(),
                kind: FrontendKind::LoadBalancer,
                affinity_timeout_s: 10_800,
                local_only: false,
                backends: vec![backend(2, 3), backend(3, 1), backend(4, 0)].into(),
                serving_anywhere: true,
                source_ranges: None,
                health_check_node_port: None,
                external_local: Some(vec![backend(2, 3)]),
            },
        ),
        (
            FrontendAddr {
                ip: Ipv4Addr::new(198, 19, 0, 99).into(),
                port: 80,
                protocol: Protocol::Tcp,
            },
            FrontendSpec {
                service: "demo/empty:http".into(),
                kind: FrontendKind::ClusterIp,
                affinity_timeout_s: 0,
                local_only: false,
                backends: vec![].into(),
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
fn rendered_rules_load_with_both_iptables_backends() {
    require_privileges!();
    let ns = Netns::new(unique("epxipt"));
    let options = RenderOptions {
        cluster_cidr: Some((Ipv4Addr::new(198, 18, 0, 0).into(), 16)),
        random_fully: true,
        ..RenderOptions::default()
    };
    let rules = filter_table(&state(), &options) + &nat_table(&state(), &options);
    for chain in [
        "KUBE-EXT-",
        "KUBE-SVL-",
        "KUBE-NODEPORTS -m comment",
        "-j REJECT",
    ] {
        assert!(rules.contains(chain), "{chain} rendered:\n{rules}");
    }
    load(
        &ns,
        &["iptables-nft-restore", "iptables-legacy-restore"],
        &rules,
    );
}

/// Loads `rules` with each of `restores` (`--test`: checked by the kernel, not kept).
fn load(ns: &Netns, restores: &[&str], rules: &str) {
    for restore in restores {
        let mut child = ns
            .command(restore, None)
            .args(["--test", "--noflush"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{restore}: {e}"));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())
            .expect("write rules");
        let out = child.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{restore} refused the rules: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// 198.19.0.10 -> 2001:db8:19:0::10: the same addresses in IPv6, so that the IPv6 state
/// has every shape the IPv4 one has.
fn v6(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V4(v4) => {
            // Each decimal octet read as hex digits, so that 18 shows as 18.
            let hex = |octet: u8| u16::from_str_radix(&octet.to_string(), 16).expect("digits");
            let [_, b, c, d] = v4.octets();
            std::net::Ipv6Addr::new(0x2001, 0xdb8, hex(b), hex(c), 0, 0, 0, hex(d)).into()
        }
        v6 => v6,
    }
}

fn state6() -> DesiredState {
    let backends = |list: &[WeightedBackend]| -> Vec<WeightedBackend> {
        list.iter()
            .map(|b| WeightedBackend {
                flows_only: false,
                addr: BackendAddr {
                    ip: v6(b.addr.ip),
                    ..b.addr
                },
                ..*b
            })
            .collect()
    };
    state()
        .into_iter()
        .map(|(addr, spec)| {
            let addr = FrontendAddr {
                ip: v6(addr.ip),
                ..addr
            };
            let spec = FrontendSpec {
                backends: backends(&spec.backends).into(),
                external_local: spec.external_local.as_deref().map(backends),
                source_ranges: spec.source_ranges.clone().map(|mut r| {
                    r.cidrs = r
                        .cidrs
                        .iter()
                        .map(|(ip, bits)| (v6(*ip), bits + 96))
                        .collect();
                    r
                }),
                ..spec
            };
            (addr, spec)
        })
        .collect()
}

#[test]
fn rendered_ipv6_rules_load_with_both_ip6tables_backends() {
    require_privileges!();
    let ns = Netns::new(unique("epxip6t"));
    let options = RenderOptions::default().ipv6(Some(("2001:db8:18::".parse().expect("ip"), 48)));
    let state = state6();
    let rules = filter_table(&state, &options) + &nat_table(&state, &options);
    for shape in [
        "KUBE-EXT-",
        "KUBE-SVL-",
        "! -d ::1/128 -j KUBE-NODEPORTS",
        "-j REJECT",
        "--to-destination [2001:db8:18:1::",
        "! -s 2001:db8:18::/48",
    ] {
        assert!(rules.contains(shape), "{shape} rendered:\n{rules}");
    }
    assert!(!rules.contains("198.1"), "no IPv4 address: {rules}");
    load(
        &ns,
        &["ip6tables-nft-restore", "ip6tables-legacy-restore"],
        &rules,
    );
}
