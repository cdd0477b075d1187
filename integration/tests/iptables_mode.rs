//! The agent in iptables mode (kube-proxy's chains) with real sockets: the same outcomes
//! as the eBPF mode for the same manifests. The agent and its rules live in the test's
//! client namespace.

use std::time::Duration;

use integration::{
    Agent, Topology,
    manifests::{DNS, HTTP, ServiceOpts, service_with_endpoints},
    require_privileges,
};

const VIP: &str = "198.19.0.10";

fn start(backends: usize, opts: &ServiceOpts) -> (Topology, Agent) {
    let t = Topology::new(backends);
    t.route_service_range();
    let mut agent = Agent::new(&t);
    agent.mode = "iptables";
    agent.write(
        "web.yaml",
        &service_with_endpoints("web", VIP, &[HTTP, DNS], opts, &t.ready_endpoints()),
    );
    agent.start();
    agent.wait_for("the iptables rules", Duration::from_secs(10), |_| {
        agent.log().contains("\"synced\"")
    });
    (t, agent)
}

fn binomial_bounds(n: usize, p: f64) -> (f64, f64) {
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (n as f64 * p - 5.3 * sd, n as f64 * p + 5.3 * sd)
}

#[test]
fn weights_3_1_0_in_iptables_mode() {
    require_privileges!();
    let (t, agent) = start(
        3,
        &ServiceOpts {
            weights: Some("web-0=3,web-1=1,web-2=0"),
            ..Default::default()
        },
    );
    let n = 4_000;
    let report = t.probe(&["--to", &format!("{VIP}:80"), "--count", &n.to_string()]);
    assert!(report.errors.is_empty(), "{report:?}\n{}", agent.log());
    assert_eq!(report.count("web-2"), 0, "weight 0 gets no rule");
    let (lo, hi) = binomial_bounds(n, 0.75);
    let got = report.count("web-0") as f64;
    assert!(
        lo <= got && got <= hi,
        "web-0 got {got} of {n}, expected [{lo:.0}, {hi:.0}]"
    );
    assert_eq!(
        report.peers.keys().collect::<Vec<_>>(),
        vec![&format!("{VIP}:80")],
        "getpeername shows the ClusterIP"
    );
}

#[test]
fn no_endpoints_is_rejected_in_iptables_mode() {
    require_privileges!();
    let t = Topology::new(1);
    t.route_service_range();
    let mut agent = Agent::new(&t);
    agent.mode = "iptables";
    agent.write(
        "web.yaml",
        &service_with_endpoints("web", VIP, &[HTTP], &ServiceOpts::default(), &[]),
    );
    agent.start();
    agent.wait_for("the iptables rules", Duration::from_secs(10), |_| {
        agent.log().contains("\"synced\"")
    });
    let report = t.probe(&[
        "--to",
        &format!("{VIP}:80"),
        "--count",
        "3",
        "--timeout-ms",
        "5000",
    ]);
    assert_eq!(
        report.errors.get("ECONNREFUSED"),
        Some(&3),
        "REJECT gives ECONNREFUSED: {report:?}"
    );
}

#[test]
fn udp_and_affinity_in_iptables_mode() {
    require_privileges!();
    let (t, _agent) = start(
        3,
        &ServiceOpts {
            affinity_timeout: Some(600),
            ..Default::default()
        },
    );
    let udp = t.probe(&["--to", "198.19.0.10:53", "--count", "30", "--unconnected"]);
    assert_eq!(udp.answers.values().sum::<usize>(), 30, "{udp:?}");
    assert_eq!(
        udp.reply_sources.keys().collect::<Vec<_>>(),
        vec!["198.19.0.10:53"],
        "replies come from the ClusterIP"
    );
    let tcp = t.probe(&["--to", &format!("{VIP}:80"), "--count", "50"]);
    assert_eq!(
        tcp.answers.len(),
        1,
        "ClientIP affinity (recent) holds for 50 connections: {tcp:?}"
    );
}

fn nat_rules(agent: &Agent) -> String {
    integration::run(
        integration::command_in(&agent.netns, None, "iptables-save").args(["-t", "nat"]),
    )
}

#[test]
fn switching_modes_removes_the_other_modes_state() {
    require_privileges!();
    let (t, mut agent) = start(2, &ServiceOpts::default());
    assert!(
        nat_rules(&agent).contains(":EBPF-PROXY-OWNED"),
        "iptables mode marks its chains"
    );
    assert!(nat_rules(&agent).contains("KUBE-SVC-"));
    agent.stop();

    agent.mode = "ebpf";
    agent.start();
    agent.wait_backends("demo/web:http", 2);
    agent.wait_for("the switch", Duration::from_secs(5), |_| {
        !nat_rules(&agent).contains("KUBE-")
    });
    assert!(!nat_rules(&agent).contains("EBPF-PROXY-OWNED"));
    assert_eq!(
        t.probe(&["--to", &format!("{VIP}:80"), "--count", "20"])
            .answers
            .values()
            .sum::<usize>(),
        20
    );
    agent.stop();
    assert!(agent.bpffs.exists());

    agent.mode = "iptables";
    agent.start();
    // The eBPF state goes only once the iptables rules serve: that is the signal.
    agent.wait_for("the switch back", Duration::from_secs(10), |_| {
        !agent.bpffs.exists()
    });
    assert!(nat_rules(&agent).contains("KUBE-SVC-"));
    assert_eq!(
        t.probe(&["--to", &format!("{VIP}:80"), "--count", "20"])
            .answers
            .values()
            .sum::<usize>(),
        20
    );
}

#[test]
fn kube_proxys_chains_are_never_touched() {
    require_privileges!();
    let t = Topology::new(1);
    let mut agent = Agent::new(&t);
    // kube-proxy's rules in this namespace: same chain names, no ebpf-proxy marker.
    let kube_proxy = proxy_user::dataplane::iptables::render::nat_table(
        &Default::default(),
        &Default::default(),
    );
    let mut restore = integration::command_in(&agent.netns, None, "iptables-restore")
        .arg("--noflush")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("iptables-restore");
    std::io::Write::write_all(
        &mut restore.stdin.take().expect("stdin"),
        kube_proxy.as_bytes(),
    )
    .expect("write");
    assert!(restore.wait().expect("wait").success());
    assert!(nat_rules(&agent).contains(":KUBE-SERVICES"));

    integration::run(&mut agent.cleanup_command());
    assert!(
        nat_rules(&agent).contains(":KUBE-SERVICES"),
        "--cleanup leaves kube-proxy's chains alone"
    );
    agent.mode = "ebpf";
    agent.write(
        "web.yaml",
        &service_with_endpoints(
            "web",
            VIP,
            &[HTTP],
            &ServiceOpts::default(),
            &t.ready_endpoints(),
        ),
    );
    agent.start();
    agent.wait_backends("demo/web:http", 1);
    assert!(
        nat_rules(&agent).contains(":KUBE-SERVICES"),
        "an eBPF-mode agent beside kube-proxy leaves its chains alone"
    );
}

#[test]
fn auto_mode_uses_ebpf_where_it_loads() {
    require_privileges!();
    let t = Topology::new(1);
    let mut agent = Agent::new(&t);
    agent.mode = "auto";
    agent.write(
        "web.yaml",
        &service_with_endpoints(
            "web",
            VIP,
            &[HTTP],
            &ServiceOpts::default(),
            &t.ready_endpoints(),
        ),
    );
    agent.start();
    agent.wait_backends("demo/web:http", 1);
    assert!(
        agent
            .log()
            .contains("the eBPF datapath loads on this kernel"),
        "{}",
        agent.log()
    );
    assert_eq!(
        t.probe(&["--to", &format!("{VIP}:80"), "--count", "10"])
            .count("web-0"),
        10
    );
}

/// KUBE-SVC/SEP chains present in the namespace's nat table.
fn service_chains(agent: &Agent) -> std::collections::BTreeSet<String> {
    nat_rules(agent)
        .lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| c.starts_with("KUBE-SVC-") || c.starts_with("KUBE-SEP-"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn partial_syncs_leave_exactly_the_chains_of_the_final_state() {
    require_privileges!();
    let t = Topology::new(3);
    t.route_service_range();
    let mut agent = Agent::new(&t);
    agent.mode = "iptables";
    let eps = t.ready_endpoints();
    let svc = |name: &str, ip: &str, endpoints: &[integration::manifests::Endpoint]| {
        service_with_endpoints(name, ip, &[HTTP], &ServiceOpts::default(), endpoints)
    };
    agent.write("a.yaml", &svc("a", "198.19.0.1", &eps));
    agent.write("b.yaml", &svc("b", "198.19.0.2", &eps[..1]));
    agent.write("c.yaml", &svc("c", "198.19.0.3", &eps[1..]));
    agent.start();
    agent.wait_for("the first sync", Duration::from_secs(10), |_| {
        agent.log().contains("\"synced\"")
    });
    let first = service_chains(&agent);
    assert_eq!(
        first.len(),
        3 + 3 + 1 + 2,
        "three SVC chains and six SEP chains: {first:?}"
    );

    // One Service edited (endpoints moved), one removed, one added: partial syncs.
    agent.write("b.yaml", &svc("b", "198.19.0.2", &eps[2..]));
    agent.remove("c.yaml");
    agent.write("d.yaml", &svc("d", "198.19.0.4", &eps[..2]));
    agent.wait_for("the changes", Duration::from_secs(10), |_| {
        t.probe(&["--to", "198.19.0.2:80", "--count", "1"])
            .count("web-2")
            == 1
            && t.probe(&["--to", "198.19.0.4:80", "--count", "1"])
                .errors
                .is_empty()
    });
    assert_eq!(
        t.probe(&["--to", "198.19.0.3:80", "--count", "1"])
            .errors
            .len(),
        1,
        "c is gone"
    );
    assert_eq!(
        t.probe(&["--to", "198.19.0.1:80", "--count", "30"])
            .answers
            .values()
            .sum::<usize>(),
        30,
        "a untouched"
    );

    // Exactly the chains a full rendering of the final state declares.
    let mut expected = std::collections::BTreeSet::new();
    for (name, port_eps) in [
        ("demo/a:http", &eps[..]),
        ("demo/b:http", &eps[2..]),
        ("demo/d:http", &eps[..2]),
    ] {
        use proxy_user::{
            dataplane::iptables::names,
            model::{BackendAddr, Protocol},
        };
        expected.insert(names::service_chain(name, Protocol::Tcp));
        for e in port_eps {
            let addr = BackendAddr {
                ip: e.ip.parse().expect("ip"),
                port: 8080,
            };
            expected.insert(names::endpoint_chain(name, Protocol::Tcp, &addr));
        }
    }
    assert_eq!(
        service_chains(&agent),
        expected,
        "no stale chain, none missing"
    );
    let log = agent.log();
    assert!(
        log.lines().filter(|l| l.contains("\"synced\"")).count() >= 2,
        "{log}"
    );
}
