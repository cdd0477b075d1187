//! The harness itself, with no agent: the test topologies carry IPv6 beside IPv4, every
//! backend answers over both families, an IPv6 socket reaches an IPv4 address by its
//! IPv4-mapped form, and the service ranges stay unreachable until something translates
//! them. The Service tests of both modes build on these facts.

use integration::{
    Netns, Report, Topology, bin_dir, require_privileges, run,
    two_nodes::{CLIENT_IP6, NODE_A_IP6, TwoNodes},
};

/// `probe connect ARGS` from `ns`, outside any test cgroup.
fn probe_from(ns: &Netns, args: &[&str]) -> Report {
    let out = run(ns
        .command(bin_dir().join("probe"), None)
        .arg("connect")
        .args(args));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("probe output {out:?}: {e}"))
}

/// `report` has `n` answers from `name` and nothing else, and saw only `addr` as peer
/// (`peers`) or reply source (`reply_sources`).
fn assert_only(report: &Report, name: &str, n: usize, seen: &[(&str, &str)]) {
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.count(name), n, "{report:?}");
    assert_eq!(report.answers.len(), 1, "{report:?}");
    for (field, addr) in seen {
        let got = match *field {
            "peers" => &report.peers,
            _ => &report.reply_sources,
        };
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            [addr],
            "{field}: {report:?}"
        );
    }
}

#[test]
fn every_backend_answers_directly_over_both_families() {
    require_privileges!();
    let t = Topology::new(2);
    for (i, b) in t.backends.iter().enumerate() {
        assert_eq!(b.ip6, format!("2001:db8:18:{}::2", i + 1));
        for ip in [b.ip.clone(), format!("[{}]", b.ip6)] {
            let tcp = format!("{ip}:8080");
            let report = t.probe(&["--to", &tcp, "--count", "5"]);
            assert_only(&report, &b.name, 5, &[("peers", &tcp)]);
            let udp = format!("{ip}:5353");
            let report = t.probe(&["--to", &udp, "--count", "5", "--unconnected"]);
            assert_only(&report, &b.name, 5, &[("reply_sources", &udp)]);
            let report = t.probe(&["--to", &udp, "--count", "5", "--udp"]);
            assert_only(
                &report,
                &b.name,
                5,
                &[("peers", &udp), ("reply_sources", &udp)],
            );
            let report = t.probe(&["--to", &udp, "--count", "5", "--one-socket"]);
            assert_only(&report, &b.name, 5, &[("reply_sources", &udp)]);
        }
    }
    // The backend sees the client's address of its own family.
    let report = t.probe(&[
        "--to",
        &format!("[{}]:8080", t.backends[0].ip6),
        "--ask-source",
    ]);
    assert_eq!(report.count("web-0 saw 2001:db8:18:1::1"), 1, "{report:?}");
    let report = t.probe(&[
        "--to",
        &format!("{}:8080", t.backends[1].ip),
        "--ask-source",
    ]);
    assert_eq!(report.count("web-1 saw 198.18.2.1"), 1, "{report:?}");
}

#[test]
fn an_ipv6_socket_reaches_an_ipv4_backend_by_its_mapped_address() {
    require_privileges!();
    let t = Topology::new(1);
    let tcp = format!("[::ffff:{}]:8080", t.backends[0].ip);
    let report = t.probe(&["--to", &tcp, "--count", "5"]);
    assert_only(
        &report,
        "web-0",
        5,
        &[("peers", "[::ffff:198.18.1.2]:8080")],
    );
    let udp = format!("[::ffff:{}]:5353", t.backends[0].ip);
    let report = t.probe(&["--to", &udp, "--count", "5", "--udp"]);
    assert_only(
        &report,
        "web-0",
        5,
        &[("peers", &udp), ("reply_sources", &udp)],
    );
    let report = t.probe(&["--to", &udp, "--count", "5", "--unconnected"]);
    assert_only(&report, "web-0", 5, &[("reply_sources", &udp)]);
    // The backend saw an IPv4 client: the mapped form is the client's socket's only.
    let report = t.probe(&["--to", &tcp, "--ask-source"]);
    assert_eq!(report.count("web-0 saw 198.18.1.1"), 1, "{report:?}");
}

/// Without the agent, nothing in the client namespace routes a service address of either
/// family: an untranslated connect fails at once and no packet leaves.
#[test]
fn the_service_ranges_are_unreachable_without_translation() {
    require_privileges!();
    let t = Topology::new(1);
    for to in [
        "[2001:db8:19::a]:80",
        "[::ffff:198.19.0.10]:80",
        "198.19.0.10:80",
    ] {
        let report = t.probe(&["--to", to, "--count", "2"]);
        assert_eq!(
            report.errors.get("ENETUNREACH"),
            Some(&2),
            "{to}: {report:?}"
        );
        let report = t.probe(&["--to", to, "--count", "2", "--unconnected"]);
        assert_eq!(
            report.errors.get("ENETUNREACH"),
            Some(&2),
            "{to}: {report:?}"
        );
    }
}

/// The two-node topology forwards IPv6 as it forwards IPv4: node-a reaches both pods
/// (pod-b through node-b), and pod-b reaches the external client back through node-a.
#[test]
fn two_nodes_route_ipv6_as_ipv4() {
    require_privileges!();
    let n = TwoNodes::new();
    for pod in [&n.pod_a, &n.pod_b] {
        for ip in [pod.ip.clone(), format!("[{}]", pod.ip6)] {
            let to = format!("{ip}:8080");
            let report = probe_from(&n.node_a, &["--to", &to, "--count", "3"]);
            assert_only(&report, &pod.name, 3, &[("peers", &to)]);
            let to = format!("{ip}:5353");
            let report = probe_from(&n.node_a, &["--to", &to, "--count", "3", "--udp"]);
            assert_only(&report, &pod.name, 3, &[("reply_sources", &to)]);
        }
    }
    // pod-b sees node-a's own address (no NAT without the agent), and its reply finds
    // the way back through node-b.
    let report = probe_from(
        &n.node_a,
        &["--to", &format!("[{}]:8080", n.pod_b.ip6), "--ask-source"],
    );
    assert_eq!(
        report.count("pod-b saw 2001:db8:18:101::1"),
        1,
        "{report:?}"
    );
    // The external client's link to node-a carries IPv6 both ways.
    let report = probe_from(
        &n.node_a,
        &["--to", &format!("[{CLIENT_IP6}]:1"), "--count", "1"],
    );
    assert_eq!(report.errors.get("ECONNREFUSED"), Some(&1), "{report:?}");
    let report = probe_from(
        &n.client,
        &["--to", &format!("[{NODE_A_IP6}]:1"), "--count", "1"],
    );
    assert_eq!(report.errors.get("ECONNREFUSED"), Some(&1), "{report:?}");
}
