//! Traffic arriving from outside the node (`two_nodes` topology): an external client
//! reaches Services through node-a's NodePort, an ExternalIP and a LoadBalancer IP, with
//! backends on node-a and on node-b.
//!
//! These run in iptables mode, where kube-proxy's chains (KUBE-NODEPORTS, KUBE-EXT-*)
//! translate such traffic. The eBPF mode translates sockets on the node only; its tc
//! programs for this traffic are not written yet, and these same scenarios are the ones
//! they must pass.

use std::time::Duration;

use integration::{
    Agent,
    manifests::{DNS, HTTP, Port, ServiceOpts, service_with_endpoints},
    require_privileges,
    two_nodes::{CLIENT_IP, NODE_A_IP, TwoNodes},
};

const MODE: &str = "iptables";
const VIP: &str = "198.19.0.30";
const EXTERNAL_IP: &str = "198.19.5.5";
const LB_IP: &str = "198.19.7.7";

const HTTP_NP: Port<'static> = Port {
    node_port: Some(30080),
    ..HTTP
};
const DNS_NP: Port<'static> = Port {
    node_port: Some(30053),
    ..DNS
};

/// demo/web as a LoadBalancer (NodePorts 30080/TCP and 30053/UDP, the ExternalIP and the
/// LoadBalancer IP) with `extra` spec lines, on the endpoints given.
fn web(extra: &str, endpoints: &[integration::manifests::Endpoint]) -> String {
    let spec_extra = format!("  externalIPs: [{EXTERNAL_IP}]\n{extra}");
    let status = format!("status: {{loadBalancer: {{ingress: [{{ip: {LB_IP}}}]}}}}\n");
    let opts = ServiceOpts {
        type_: Some("LoadBalancer"),
        spec_extra: &spec_extra,
        status: &status,
        ..ServiceOpts::default()
    };
    service_with_endpoints("web", VIP, &[HTTP_NP, DNS_NP], &opts, endpoints)
}

fn start(t: &TwoNodes, yaml: &str) -> Agent {
    let mut agent = t.agent(MODE);
    agent.write("web.yaml", yaml);
    agent.start();
    agent.wait_for("the rules", Duration::from_secs(10), |_| {
        agent.log().contains("\"synced\"")
    });
    agent
}

/// `pod-a saw 198.18.110.1` -> ("pod-a", "198.18.110.1").
fn who_saw(report: &integration::Report) -> Vec<(String, String)> {
    report
        .answers
        .keys()
        .filter_map(|a| a.split_once(" saw "))
        .map(|(pod, source)| (pod.to_string(), source.to_string()))
        .collect()
}

#[test]
fn cluster_policy_reaches_both_nodes_pods_with_the_nodes_address() {
    require_privileges!();
    let t = TwoNodes::new();
    let _agent = start(&t, &web("", &t.endpoints()));
    for to in [
        format!("{NODE_A_IP}:30080"),
        format!("{EXTERNAL_IP}:80"),
        format!("{LB_IP}:80"),
    ] {
        let report = t.probe(&["--to", &to, "--count", "40", "--ask-source"]);
        assert_eq!(
            report.answers.values().sum::<usize>(),
            40,
            "{to}: {report:?}"
        );
        let seen = who_saw(&report);
        let pods: std::collections::BTreeSet<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(pods.len(), 2, "{to}: both nodes' pods answer: {report:?}");
        // Masqueraded to node-a, so that replies come back through it.
        assert!(
            seen.iter().all(|(_, source)| source != CLIENT_IP),
            "{to}: the backends saw node-a, not the client: {report:?}"
        );
    }
    // UDP through the NodePort: both pods, replies from the address the client used.
    let udp = t.probe(&[
        "--to",
        &format!("{NODE_A_IP}:30053"),
        "--udp",
        "--count",
        "30",
    ]);
    assert_eq!(udp.answers.values().sum::<usize>(), 30, "{udp:?}");
    assert_eq!(udp.answers.len(), 2, "{udp:?}");
    assert_eq!(
        udp.reply_sources.keys().collect::<Vec<_>>(),
        [&format!("{NODE_A_IP}:30053")],
        "{udp:?}"
    );
}

#[test]
fn local_policy_keeps_the_client_address_and_uses_this_nodes_pod() {
    require_privileges!();
    let t = TwoNodes::new();
    let _agent = start(&t, &web("  externalTrafficPolicy: Local\n", &t.endpoints()));
    for to in [
        format!("{NODE_A_IP}:30080"),
        format!("{EXTERNAL_IP}:80"),
        format!("{LB_IP}:80"),
    ] {
        let report = t.probe(&["--to", &to, "--count", "20", "--ask-source"]);
        assert_eq!(
            report.answers.get(&format!("pod-a saw {CLIENT_IP}")),
            Some(&20),
            "{to}: only node-a's pod, seeing the client: {report:?}"
        );
    }
}

#[test]
fn local_policy_without_a_local_endpoint_drops() {
    require_privileges!();
    let t = TwoNodes::new();
    let only_b = &t.endpoints()[1..];
    let _agent = start(&t, &web("  externalTrafficPolicy: Local\n", only_b));
    let report = t.probe(&[
        "--to",
        &format!("{NODE_A_IP}:30080"),
        "--count",
        "2",
        "--timeout-ms",
        "300",
    ]);
    assert_eq!(report.errors.get("ETIMEDOUT"), Some(&2), "{report:?}");
}

#[test]
fn a_frontend_without_endpoints_answers_with_a_reset_or_port_unreachable() {
    require_privileges!();
    let t = TwoNodes::new();
    let _agent = start(&t, &web("", &[]));
    for to in [
        format!("{NODE_A_IP}:30080"),
        format!("{EXTERNAL_IP}:80"),
        format!("{LB_IP}:80"),
    ] {
        let tcp = t.probe(&["--to", &to, "--count", "2", "--timeout-ms", "2000"]);
        assert_eq!(tcp.errors.get("ECONNREFUSED"), Some(&2), "{to}: {tcp:?}");
    }
    let udp = t.probe(&[
        "--to",
        &format!("{NODE_A_IP}:30053"),
        "--udp",
        "--count",
        "2",
        "--timeout-ms",
        "2000",
    ]);
    assert_eq!(udp.errors.get("ECONNREFUSED"), Some(&2), "{udp:?}");
}

#[test]
fn the_health_check_node_port_answers_the_outside() {
    require_privileges!();
    let t = TwoNodes::new();
    let _agent = start(
        &t,
        &web(
            "  externalTrafficPolicy: Local\n  healthCheckNodePort: 32100\n",
            &t.endpoints(),
        ),
    );
    let out = t
        .client_command("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
        .arg(format!("http://{NODE_A_IP}:32100/"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n200"), "{text}");
    assert!(text.contains("\"localEndpoints\":1"), "{text}");
}

#[test]
fn load_balancer_source_ranges_admit_and_refuse() {
    require_privileges!();
    let t = TwoNodes::new();
    let allowed = format!("  loadBalancerSourceRanges: [\"{CLIENT_IP}/32\", 203.0.113.0/25]\n");
    let mut agent = start(&t, &web(&allowed, &t.endpoints()));
    let to_lb = format!("{LB_IP}:80");
    let report = t.probe(&["--to", &to_lb, "--count", "10"]);
    assert_eq!(
        report.answers.values().sum::<usize>(),
        10,
        "in range: {report:?}"
    );

    // The client's address out of the ranges: the LoadBalancer IP drops it...
    agent.write(
        "web.yaml",
        &web(
            "  loadBalancerSourceRanges: [203.0.113.0/25]\n",
            &t.endpoints(),
        ),
    );
    let nat = || {
        integration::run(
            integration::command_in(&agent.netns, None, "iptables-save").args(["-t", "nat"]),
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while nat().contains(&format!("-s {CLIENT_IP}/32")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the ranges were never updated"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = t.probe(&["--to", &to_lb, "--count", "2", "--timeout-ms", "300"]);
    assert_eq!(
        report.errors.get("ETIMEDOUT"),
        Some(&2),
        "out of range: {report:?}"
    );
    // ...while the NodePort and the ExternalIP, which the ranges do not cover, still serve.
    for to in [format!("{NODE_A_IP}:30080"), format!("{EXTERNAL_IP}:80")] {
        let report = t.probe(&["--to", &to, "--count", "5"]);
        assert_eq!(
            report.answers.values().sum::<usize>(),
            5,
            "{to}: {report:?}"
        );
    }
    agent.stop();
}
