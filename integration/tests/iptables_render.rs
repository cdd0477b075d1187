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
                backends: vec![backend(2, 3), backend(3, 1), backend(4, 0)],
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
                backends: vec![backend(2, 1), backend(3, 1)],
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
                backends: vec![backend(2, 3), backend(3, 1), backend(4, 0)],
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
                backends: vec![backend(2, 3), backend(3, 1), backend(4, 0)],
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
                backends: vec![],
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
        cluster_cidr: Some((Ipv4Addr::new(198, 18, 0, 0), 16)),
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
    for restore in ["iptables-nft-restore", "iptables-legacy-restore"] {
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
