//! ClusterIP over the socket programs, with real sockets in network namespaces and the
//! real proxy-agent binary fed manifests. Run as root (`cargo xtask test`).

use std::{collections::BTreeSet, time::Duration};

use integration::{
    Agent, Topology,
    manifests::{DNS, Endpoint, HTTP, ServiceOpts, service_with_endpoints},
    require_privileges,
};

const VIP: &str = "198.19.0.10";

fn start(backends: usize, opts: &ServiceOpts) -> (Topology, Agent) {
    let t = Topology::new(backends);
    let mut agent = Agent::new(&t);
    agent.write(
        "web.yaml",
        &service_with_endpoints("web", VIP, &[HTTP, DNS], opts, &t.ready_endpoints()),
    );
    agent.start();
    agent.wait_backends("demo/web:http", backends);
    (t, agent)
}

#[test]
fn weights_3_1_0_are_realised() {
    require_privileges!();
    let (t, _agent) = start(
        3,
        &ServiceOpts {
            weights: Some("web-0=3,web-1=1,web-2=0"),
            ..Default::default()
        },
    );
    let n = 20_000;
    let report = t.probe(&["--to", &format!("{VIP}:80"), "--count", &n.to_string()]);
    assert!(
        report.errors.is_empty(),
        "no connection may fail: {report:?}"
    );
    assert_eq!(
        report.count("web-2"),
        0,
        "weight 0 receives no new connection"
    );
    let (lo, hi) = integration::binomial_bounds(n, 0.75);
    let got = report.count("web-0") as f64;
    assert!(
        lo <= got && got <= hi,
        "web-0 got {got} of {n}, expected within [{lo:.0}, {hi:.0}]"
    );
    let share = got / n as f64;
    eprintln!(
        "weights 3:1:0 over {n} connections: web-0 {:.2}%, web-1 {:.2}%, web-2 {:.2}%",
        share * 100.0,
        report.count("web-1") as f64 * 100.0 / n as f64,
        report.count("web-2") as f64 * 100.0 / n as f64
    );
    assert!(
        (share - 0.75).abs() < 0.01 + 5.3 * (0.75f64 * 0.25 / n as f64).sqrt(),
        "share {share}"
    );
}

#[test]
fn address_that_is_not_a_service_passes_untouched() {
    require_privileges!();
    let (t, _agent) = start(2, &ServiceOpts::default());
    let report = t.probe(&[
        "--to",
        &format!("{}:8080", t.backends[1].ip),
        "--count",
        "20",
    ]);
    assert_eq!(report.count("web-1"), 20, "{report:?}");
    assert_eq!(
        report.peers.keys().collect::<Vec<_>>(),
        vec![&format!("{}:8080", t.backends[1].ip)]
    );
    // A service IP with a port that is not a service port is not translated either: the
    // client namespace has no route to the service range.
    let report = t.probe(&["--to", &format!("{VIP}:81"), "--count", "1"]);
    assert_eq!(report.errors.get("ENETUNREACH"), Some(&1), "{report:?}");
}

#[test]
fn getpeername_reports_the_service_address() {
    require_privileges!();
    let (t, _agent) = start(2, &ServiceOpts::default());
    let report = t.probe(&["--to", &format!("{VIP}:80"), "--count", "50"]);
    assert_eq!(report.answers.values().sum::<usize>(), 50, "{report:?}");
    assert_eq!(
        report.peers.keys().collect::<Vec<_>>(),
        vec![&format!("{VIP}:80")],
        "{report:?}"
    );
}

#[test]
fn udp_replies_come_from_the_service_address() {
    require_privileges!();
    let (t, _agent) = start(2, &ServiceOpts::default());
    for mode in [&["--unconnected"][..], &["--udp"][..]] {
        let mut args = vec!["--to", "198.19.0.10:53", "--count", "40"];
        args.extend_from_slice(mode);
        let report = t.probe(&args);
        assert_eq!(
            report.answers.values().sum::<usize>(),
            40,
            "{mode:?}: {report:?}"
        );
        assert!(
            report.answers.len() == 2,
            "both backends answer: {report:?}"
        );
        assert_eq!(
            report.reply_sources.keys().collect::<Vec<_>>(),
            vec!["198.19.0.10:53"],
            "{mode:?}: {report:?}"
        );
    }
}

/// A connected UDP socket that connects again, now straight to the backend it was given:
/// its replies show the backend, not the Service it no longer talks to. With the
/// translation on the socket, and in the LRU where a kernel has no socket-local storage.
#[test]
fn a_udp_socket_connected_again_past_the_service_sees_its_new_peer() {
    require_privileges!();
    for assume_missing in [None, Some("bpf_sk_storage_get")] {
        let t = Topology::new(1);
        let mut agent = Agent::new(&t);
        if let Some(feature) = assume_missing {
            agent.extra_args = vec!["--assume-missing".into(), feature.into()];
        }
        agent.write(
            "web.yaml",
            &service_with_endpoints(
                "web",
                VIP,
                &[DNS],
                &ServiceOpts::default(),
                &t.ready_endpoints(),
            ),
        );
        agent.start();
        agent.wait_backends("demo/web:dns", 1);
        let backend = format!("{}:5353", t.backends[0].ip);
        let report = t.probe(&[
            "--to",
            &format!("{VIP}:53"),
            "--udp",
            "--then-to",
            &backend,
            "--count",
            "3",
        ]);
        assert_eq!(
            report.answers.get("web-0 then web-0"),
            Some(&3),
            "{assume_missing:?}: {report:?}"
        );
        for seen in [&report.peers, &report.reply_sources] {
            assert_eq!(
                seen.get(&format!("{VIP}:53")),
                Some(&3),
                "{assume_missing:?}: {report:?}"
            );
            assert_eq!(
                seen.get(&backend),
                Some(&3),
                "{assume_missing:?}: {report:?}"
            );
        }
    }
}

#[test]
fn udp_through_socat() {
    require_privileges!();
    let (t, _agent) = start(1, &ServiceOpts::default());
    let out = t
        .client_command("socat")
        .args(["-T", "2", "-", "UDP4:198.19.0.10:53"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().expect("stdin").write_all(b"who\n")?;
            child.wait_with_output()
        })
        .expect("socat");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "web-0",
        "{out:?}"
    );
}

#[test]
fn curl_reaches_the_service() {
    require_privileges!();
    let (t, _agent) = start(1, &ServiceOpts::default());
    let out = integration::run(t.client_command("curl").args([
        "-sS",
        "--max-time",
        "5",
        "http://198.19.0.10/",
    ]));
    assert_eq!(out.trim(), "web-0");
}

#[test]
fn no_endpoints_refuses_at_once() {
    require_privileges!();
    let t = Topology::new(1);
    let mut agent = Agent::new(&t);
    agent.write(
        "web.yaml",
        &service_with_endpoints("web", VIP, &[HTTP, DNS], &ServiceOpts::default(), &[]),
    );
    agent.start();
    agent.wait_backends("demo/web:http", 0);
    let tcp = t.probe(&[
        "--to",
        &format!("{VIP}:80"),
        "--count",
        "5",
        "--timeout-ms",
        "5000",
    ]);
    assert_eq!(tcp.errors.get("ECONNREFUSED"), Some(&5), "{tcp:?}");
    let udp = t.probe(&[
        "--to",
        &format!("{VIP}:53"),
        "--count",
        "3",
        "--unconnected",
        "--timeout-ms",
        "5000",
    ]);
    assert_eq!(udp.errors.get("ECONNREFUSED"), Some(&3), "{udp:?}");
    let rows = agent.services();
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["service"] == "demo/web:http"))
        .cloned()
        .expect("row");
    assert_eq!(row["counters"]["no_endpoint"], 5, "{row}");
}

#[test]
fn affinity_sticks_then_expires() {
    require_privileges!();
    let (t, _agent) = start(
        4,
        &ServiceOpts {
            affinity_timeout: Some(1),
            ..Default::default()
        },
    );
    let to = format!("{VIP}:80");
    // Sticky: 50 connections in a row reach one backend.
    let report = t.probe(&["--to", &to, "--count", "50"]);
    assert_eq!(
        report.answers.len(),
        1,
        "50 connections stick to one backend: {report:?}"
    );
    // Expiry: after the 1 s timeout a new choice is made. Over 11 rounds the chance that a
    // correct implementation picks the same backend of 4 every time is 4^-10 < 1e-6.
    let mut chosen = BTreeSet::new();
    for _ in 0..11 {
        std::thread::sleep(Duration::from_millis(1300));
        let round = t.probe(&["--to", &to, "--count", "5"]);
        assert_eq!(round.answers.len(), 1, "sticky within a round: {round:?}");
        chosen.extend(round.answers.into_keys());
    }
    assert!(
        chosen.len() >= 2,
        "affinity never expired: always {chosen:?}"
    );
}

#[test]
fn affinity_to_a_removed_backend_is_not_used() {
    require_privileges!();
    let (t, agent) = start(
        3,
        &ServiceOpts {
            affinity_timeout: Some(600),
            ..Default::default()
        },
    );
    let to = format!("{VIP}:80");
    let first = t.probe(&["--to", &to, "--count", "5"]);
    let pinned = first.answers.keys().next().expect("an answer").clone();
    let remaining: Vec<Endpoint> = t
        .backends
        .iter()
        .filter(|b| b.name != pinned)
        .map(|b| Endpoint::ready(&b.ip, &b.name))
        .collect();
    agent.write(
        "web.yaml",
        &service_with_endpoints(
            "web",
            VIP,
            &[HTTP, DNS],
            &ServiceOpts {
                affinity_timeout: Some(600),
                ..Default::default()
            },
            &remaining,
        ),
    );
    agent.wait_backends("demo/web:http", 2);
    let after = t.probe(&["--to", &to, "--count", "30"]);
    assert_eq!(
        after.count(&pinned),
        0,
        "{pinned} left the service but still got traffic: {after:?}"
    );
    assert_eq!(
        after.answers.len(),
        1,
        "a new affinity entry was made and holds: {after:?}"
    );
}

// IPv6 and dual-stack: the same semantics through connect6, sendmsg6, recvmsg6 and
// getpeername6, and an IPv6 socket reaching an IPv4 Service by its IPv4-mapped address.

const VIP6: &str = "2001:db8:19::a";
/// The IPv4 Service address as a dual-stack (AF_INET6) socket names it.
const VIP_MAPPED: &str = "::ffff:198.19.0.10";

/// demo/web, IPv6 only, on every backend's IPv6 address.
fn start6(backends: usize, opts: &ServiceOpts) -> (Topology, Agent) {
    let t = Topology::new(backends);
    let mut agent = Agent::new(&t);
    agent.write(
        "web.yaml",
        &service_with_endpoints("web", VIP6, &[HTTP, DNS], opts, &t.ready_endpoints6()),
    );
    agent.start();
    agent.wait_frontend(&format!("[{VIP6}]:80"), backends);
    agent.wait_frontend(&format!("[{VIP6}]:53"), backends);
    (t, agent)
}

#[test]
fn ipv6_connections_spread_over_both_backends_and_see_the_service_address() {
    require_privileges!();
    let (t, _agent) = start6(2, &ServiceOpts::default());
    let n = 2_000;
    let to = format!("[{VIP6}]:80");
    let report = t.probe(&["--to", &to, "--count", &n.to_string()]);
    assert!(
        report.errors.is_empty(),
        "no connection may fail: {report:?}"
    );
    let (lo, hi) = integration::binomial_bounds(n, 0.5);
    for name in ["web-0", "web-1"] {
        let got = report.count(name) as f64;
        assert!(
            lo <= got && got <= hi,
            "{name} got {got} of {n}, expected within [{lo:.0}, {hi:.0}]: {report:?}"
        );
    }
    assert_eq!(
        report.peers.keys().collect::<Vec<_>>(),
        vec![&to],
        "getpeername shows the Service: {report:?}"
    );
    // The backend saw the client's own IPv6 address (no source NAT on this path).
    let report = t.probe(&["--to", &to, "--count", "20", "--ask-source"]);
    let expected = ["web-0 saw 2001:db8:18:1::1", "web-1 saw 2001:db8:18:2::1"];
    assert!(
        report.errors.is_empty()
            && report
                .answers
                .keys()
                .all(|a| expected.contains(&a.as_str())),
        "{report:?}"
    );
}

#[test]
fn ipv6_udp_replies_come_from_the_service_address() {
    require_privileges!();
    let (t, _agent) = start6(2, &ServiceOpts::default());
    let to = format!("[{VIP6}]:53");
    for mode in [&["--unconnected"][..], &["--udp"][..]] {
        let mut args = vec!["--to", &to, "--count", "40"];
        args.extend_from_slice(mode);
        let report = t.probe(&args);
        assert_eq!(
            report.answers.values().sum::<usize>(),
            40,
            "{mode:?}: {report:?}"
        );
        assert!(
            report.answers.len() == 2,
            "both backends answer: {report:?}"
        );
        assert_eq!(
            report.reply_sources.keys().collect::<Vec<_>>(),
            vec![&to],
            "{mode:?}: {report:?}"
        );
    }
    let report = t.probe(&["--to", &to, "--count", "10", "--udp"]);
    assert_eq!(
        report.peers.keys().collect::<Vec<_>>(),
        vec![&to],
        "a connected UDP socket's peer is the Service: {report:?}"
    );
}

#[test]
fn ipv6_address_that_is_not_a_service_passes_untouched() {
    require_privileges!();
    let (t, _agent) = start6(2, &ServiceOpts::default());
    let backend = format!("[{}]:8080", t.backends[1].ip6);
    let report = t.probe(&["--to", &backend, "--count", "20"]);
    assert_eq!(report.count("web-1"), 20, "{report:?}");
    assert_eq!(report.peers.keys().collect::<Vec<_>>(), vec![&backend]);
    // The Service address with a port that is not the Service's: unroutable, as before.
    let report = t.probe(&["--to", &format!("[{VIP6}]:81"), "--count", "1"]);
    assert_eq!(report.errors.get("ENETUNREACH"), Some(&1), "{report:?}");
}

#[test]
fn ipv6_weights_3_1_0_are_realised() {
    require_privileges!();
    let (t, _agent) = start6(
        3,
        &ServiceOpts {
            weights: Some("web-0=3,web-1=1,web-2=0"),
            ..Default::default()
        },
    );
    let n = 10_000;
    let report = t.probe(&["--to", &format!("[{VIP6}]:80"), "--count", &n.to_string()]);
    assert!(
        report.errors.is_empty(),
        "no connection may fail: {report:?}"
    );
    assert_eq!(
        report.count("web-2"),
        0,
        "weight 0 receives no new connection"
    );
    let (lo, hi) = integration::binomial_bounds(n, 0.75);
    let got = report.count("web-0") as f64;
    assert!(
        lo <= got && got <= hi,
        "web-0 got {got} of {n}, expected within [{lo:.0}, {hi:.0}]"
    );
}

#[test]
fn ipv6_no_endpoints_refuses_at_once() {
    require_privileges!();
    let t = Topology::new(1);
    let mut agent = Agent::new(&t);
    agent.write(
        "web.yaml",
        &service_with_endpoints("web", VIP6, &[HTTP, DNS], &ServiceOpts::default(), &[]),
    );
    agent.start();
    let frontend = format!("[{VIP6}]:80");
    agent.wait_frontend(&frontend, 0);
    let tcp = t.probe(&["--to", &frontend, "--count", "5", "--timeout-ms", "5000"]);
    assert_eq!(tcp.errors.get("ECONNREFUSED"), Some(&5), "{tcp:?}");
    let udp = t.probe(&[
        "--to",
        &format!("[{VIP6}]:53"),
        "--count",
        "3",
        "--unconnected",
        "--timeout-ms",
        "5000",
    ]);
    assert_eq!(udp.errors.get("ECONNREFUSED"), Some(&3), "{udp:?}");
    let rows = agent.services();
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["frontend"] == frontend))
        .cloned()
        .expect("row");
    assert_eq!(row["counters"]["no_endpoint"], 5, "{row}");
}

/// demo/web, dual-stack (198.19.0.10 and 2001:db8:19::a), on three backends whose
/// families differ: web-0 and web-1 by IPv4, web-1 and web-2 by IPv6. Which backend
/// answers, and which client address it saw, tell which family's endpoints were used.
fn start_dual_stack() -> (Topology, Agent) {
    let t = Topology::new(3);
    let mut agent = Agent::new(&t);
    let v4 = t.ready_endpoints();
    let v6 = t.ready_endpoints6();
    let endpoints: Vec<Endpoint> = v4
        .into_iter()
        .take(2)
        .chain(v6.into_iter().skip(1))
        .collect();
    agent.write(
        "web.yaml",
        &service_with_endpoints(
            "web",
            VIP,
            &[HTTP, DNS],
            &ServiceOpts {
                second_cluster_ip: Some(VIP6),
                ..Default::default()
            },
            &endpoints,
        ),
    );
    agent.start();
    for frontend in [
        format!("{VIP}:80"),
        format!("{VIP}:53"),
        format!("[{VIP6}]:80"),
        format!("[{VIP6}]:53"),
    ] {
        agent.wait_frontend(&frontend, 2);
    }
    (t, agent)
}

/// What the backends of the dual-stack Service answer to `--ask-source` over IPv4 and
/// over IPv6.
const SEEN_OVER_IPV4: [&str; 2] = ["web-0 saw 198.18.1.1", "web-1 saw 198.18.2.1"];
const SEEN_OVER_IPV6: [&str; 2] = ["web-1 saw 2001:db8:18:2::1", "web-2 saw 2001:db8:18:3::1"];

/// Every answer is one of `expected`, and each of them answered (over 200 connections a
/// correct 50:50 choice misses one with probability 2^-199).
fn assert_answered_by(report: &integration::Report, expected: &[&str], n: usize) {
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.answers.values().sum::<usize>(), n, "{report:?}");
    let got: Vec<&str> = report.answers.keys().map(String::as_str).collect();
    assert_eq!(got, expected, "{report:?}");
}

#[test]
fn a_dual_stack_service_answers_over_both_families_from_one_client() {
    require_privileges!();
    let (t, _agent) = start_dual_stack();
    let n = 200;
    for (to, seen) in [
        (format!("{VIP}:80"), SEEN_OVER_IPV4),
        (format!("[{VIP6}]:80"), SEEN_OVER_IPV6),
    ] {
        let report = t.probe(&["--to", &to, "--count", &n.to_string(), "--ask-source"]);
        assert_answered_by(&report, &seen, n);
        assert_eq!(report.peers.keys().collect::<Vec<_>>(), vec![&to]);
    }
    for (to, names) in [
        (format!("{VIP}:53"), ["web-0", "web-1"]),
        (format!("[{VIP6}]:53"), ["web-1", "web-2"]),
    ] {
        for mode in ["--unconnected", "--udp"] {
            let report = t.probe(&["--to", &to, "--count", &n.to_string(), mode]);
            assert_answered_by(&report, &names, n);
            assert_eq!(
                report.reply_sources.keys().collect::<Vec<_>>(),
                vec![&to],
                "{mode}: {report:?}"
            );
        }
    }
}

/// An AF_INET6 socket connecting to ::ffff:198.19.0.10 (what a dual-stack application
/// does with an IPv4 address) is balanced like an IPv4 connect: to the IPv4 endpoints,
/// and its peer stays the mapped Service address.
#[test]
fn a_dual_stack_socket_reaches_the_ipv4_endpoints_by_the_mapped_address() {
    require_privileges!();
    let (t, _agent) = start_dual_stack();
    let n = 200;
    let to = format!("[{VIP_MAPPED}]:80");
    let report = t.probe(&["--to", &to, "--count", &n.to_string(), "--ask-source"]);
    assert_answered_by(&report, &SEEN_OVER_IPV4, n);
    assert_eq!(
        report.peers.keys().collect::<Vec<_>>(),
        vec!["[::ffff:198.19.0.10]:80"],
        "{report:?}"
    );
}

/// The same for UDP: datagrams from an AF_INET6 socket to ::ffff:198.19.0.10, connected
/// or not, reach the IPv4 endpoints and their replies come from the mapped Service address.
#[test]
fn a_dual_stack_udp_socket_reaches_the_ipv4_endpoints_by_the_mapped_address() {
    require_privileges!();
    let (t, _agent) = start_dual_stack();
    let n = 200;
    let to = format!("[{VIP_MAPPED}]:53");
    for mode in ["--unconnected", "--udp"] {
        let report = t.probe(&["--to", &to, "--count", &n.to_string(), mode]);
        assert_answered_by(&report, &["web-0", "web-1"], n);
        assert_eq!(
            report.reply_sources.keys().collect::<Vec<_>>(),
            vec![&to],
            "{mode}: {report:?}"
        );
    }
}
