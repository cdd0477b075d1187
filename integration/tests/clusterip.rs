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
