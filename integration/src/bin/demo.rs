//! The demo behind `cargo xtask demo`: three backends in network namespaces, the agent on
//! the manifests in examples/, and a client whose connections to ClusterIPs are spread by
//! the socket programs. Everything it creates is removed when it ends.

use std::{fs, path::Path, time::Duration};

use integration::{Agent, Report, Topology, privileged, run};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

fn main() {
    if !privileged() {
        eprintln!("the demo needs root (it creates network namespaces and attaches BPF programs)");
        std::process::exit(1);
    }
    let t = Topology::new(3);
    println!("\n== ebpf-proxy demo ==");
    println!(
        "client namespace {} (cgroup {})",
        t.client.name,
        t.cgroup.path.display()
    );
    for b in &t.backends {
        println!(
            "backend {} at {} and {} in namespace {}",
            b.name, b.ip, b.ip6, b.netns.name
        );
    }
    println!(
        "(the namespaces are connected only to each other; the client has no route to 198.19.0.0/16 or 2001:db8:19::/64)"
    );

    let mut agent = Agent::new(&t);
    for entry in fs::read_dir(EXAMPLES).expect("examples/").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        agent.write(
            &name,
            &fs::read_to_string(entry.path()).expect("read example"),
        );
    }
    agent.start();
    agent.wait_backends("demo/web:http", 3);
    agent.wait_backends("demo/dns:dns", 2);
    agent.wait_frontend("[2001:db8:19::20]:80", 2);
    println!(
        "\nproxy-agent --mode ebpf --source {} --cgroup {} --bpffs {}",
        show(&agent.manifests),
        show(&agent.cgroup),
        show(&agent.bpffs)
    );

    let n = 600;
    println!(
        "\n-- 1. {n} HTTP requests to demo/web, ClusterIP 198.19.0.10:80, weights web-0=3,web-1=2,web-2=1"
    );
    let report = t.probe(&["--to", "198.19.0.10:80", "--count", &n.to_string()]);
    println!(
        "{:<8} {:>7} {:>11} {:>9} {:>9}",
        "BACKEND", "WEIGHT", "CONFIGURED", "REALISED", "REQUESTS"
    );
    for (name, weight) in [("web-0", 3), ("web-1", 2), ("web-2", 1)] {
        let got = report.count(name);
        println!(
            "{name:<8} {weight:>7} {:>10.1}% {:>8.1}% {got:>9}",
            weight as f64 * 100.0 / 6.0,
            got as f64 * 100.0 / n as f64
        );
    }
    failures(&report);
    println!("getpeername() on those sockets: {}", keys(&report.peers));

    let curl =
        run(t
            .client_command("curl")
            .args(["-sS", "--max-time", "5", "http://198.19.0.10/"]));
    println!(
        "\n-- 2. curl http://198.19.0.10/ from the client namespace answers: {}",
        curl.trim()
    );

    println!("\n-- 3. ClientIP affinity: demo/web-sticky 198.19.0.11:80, timeoutSeconds 2");
    let first = t.probe(&["--to", "198.19.0.11:80", "--count", "50"]);
    println!("50 requests: {}", summary(&first));
    for round in 1..=3 {
        std::thread::sleep(Duration::from_millis(2500));
        let next = t.probe(&["--to", "198.19.0.11:80", "--count", "50"]);
        println!(
            "after 2.5 s idle (entry expired), round {round}, 50 requests: {}",
            summary(&next)
        );
    }

    println!("\n-- 4. UDP to demo/dns 198.19.0.53:53 (unconnected sendto/recvfrom)");
    let udp = t.probe(&["--to", "198.19.0.53:53", "--count", "20", "--unconnected"]);
    println!(
        "20 sockets, one datagram each: {}; replies came from: {}",
        summary(&udp),
        keys(&udp.reply_sources)
    );
    // One socket's datagrams are one flow: they stay on one backend while it is active.
    let flow = t.probe(&["--to", "198.19.0.53:53", "--count", "20", "--one-socket"]);
    println!("one socket, 20 datagrams: {}", summary(&flow));
    println!("\n$ proxyctl udp-flows   (the socket's flow)");
    let flows = String::from_utf8_lossy(&agent.proxyctl(&["udp-flows"]).stdout).into_owned();
    let mut lines = flows.lines();
    if let Some(header) = lines.next() {
        println!("{header}");
    }
    // The newest flow is the last socket's; the 20 sockets before it each left one too.
    if let Some(newest) = lines.next() {
        println!("{newest}");
    }

    println!(
        "\n-- 5. a dual-stack Service, demo/both: 198.19.0.20 (endpoints web-0, web-1 by IPv4) and 2001:db8:19::20 (web-1, web-2 by IPv6)"
    );
    for to in [
        "198.19.0.20:80",
        "[2001:db8:19::20]:80",
        "[::ffff:198.19.0.20]:80",
    ] {
        let report = t.probe(&["--to", to, "--count", "100"]);
        println!(
            "{:<24} answers: {}; getpeername(): {}",
            to,
            summary(&report),
            keys(&report.peers)
        );
    }

    println!("\n-- 6. proxyctl: what the node does, read from the pinned maps");
    for args in [
        &["status"][..],
        &["services"],
        &["lookup", "198.19.0.53:53/udp"],
        &["lookup", "[2001:db8:19::20]:80"],
        &["backends"],
        &["stats"],
        &["affinity"],
    ] {
        println!("\n$ proxyctl {}", args.join(" "));
        print!("{}", String::from_utf8_lossy(&agent.proxyctl(args).stdout));
    }

    println!("\n-- 7. the agent's /healthz and an excerpt of its /metrics");
    let (status, health) = agent.http_get(10256, "/healthz");
    println!("GET /healthz: {status} {health}");
    let (_, metrics) = agent.http_get(10249, "/metrics");
    for line in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("ebpf_proxy_service_connections_total")
                || l.starts_with("ebpf_proxy_map_entries")
                || l.starts_with("kubeproxy_sync_proxy_rules_duration_seconds_count")
                || l.starts_with("kubeproxy_sync_proxy_rules_endpoint_changes_total")
                || l.starts_with("ebpf_proxy_datapath_events_total{event=\"translated\"}"))
    }) {
        println!("{line}");
    }

    println!("\n-- 8. the same Services in iptables mode (kube-proxy's chains)");
    agent.stop();
    // iptables DNATs after routing, so the service range needs a route now.
    t.route_service_range();
    agent.mode = "iptables";
    agent.start();
    agent.wait_for("the iptables mode", Duration::from_secs(20), |_| {
        !agent.bpffs.exists()
    });
    agent.wait_backends("demo/web:http", 3);
    println!(
        "proxy-agent --mode iptables (the eBPF programs and pins are removed once the chains serve)"
    );
    let report = t.probe(&["--to", "198.19.0.10:80", "--count", &n.to_string()]);
    println!("{n} HTTP requests to 198.19.0.10:80: {}", summary(&report));
    for args in [&["status"][..], &["lookup", "198.19.0.10:80"]] {
        println!("\n$ proxyctl {}", args.join(" "));
        print!("{}", String::from_utf8_lossy(&agent.proxyctl(args).stdout));
    }
    println!("\n$ proxyctl chains demo/web:http");
    print!(
        "{}",
        String::from_utf8_lossy(&agent.proxyctl(&["chains", "demo/web:http"]).stdout)
    );

    println!("\n-- 9. cleanup");
    agent.stop();
    drop(agent);
    drop(t);
    println!("agent stopped, proxy-agent --cleanup run, namespaces and cgroup removed");

    from_outside();
}

/// Traffic from outside the node: a client in another namespace reaches a NodePort on
/// node-a, whose tc programs send it to a pod on node-a or on node-b.
fn from_outside() {
    use integration::{
        manifests::{HTTP, Port, ServiceOpts, service_with_endpoints},
        two_nodes::{NODE_A_IP, TwoNodes},
    };
    println!(
        "\n-- 10. traffic from outside the node: a client, node-a (the agent, tc programs on ext0 and nb0), node-b, a pod on each"
    );
    let t = TwoNodes::new();
    let mut agent = t.agent("ebpf");
    agent
        .extra_args
        .extend(["--interfaces".into(), "ext0,nb0".into()]);
    let port = Port {
        node_port: Some(30080),
        ..HTTP
    };
    let opts = ServiceOpts {
        type_: Some("NodePort"),
        ..ServiceOpts::default()
    };
    agent.write(
        "web.yaml",
        &service_with_endpoints("web", "198.19.0.30", &[port], &opts, &t.endpoints()),
    );
    agent.start();
    agent.wait_for("the tc programs", Duration::from_secs(10), |_| {
        agent.log().matches("\"message\":\"tc program\"").count() == 4
    });
    let to = format!("{NODE_A_IP}:30080");
    let report = t.probe(&["--to", &to, "--count", "40", "--ask-source"]);
    println!(
        "40 connections from 198.18.100.2 to NodePort {to}: {}",
        summary(&report)
    );
    println!("\n$ proxyctl flows   (the first 4 of 40)");
    let flows = String::from_utf8_lossy(&agent.proxyctl(&["flows"]).stdout).into_owned();
    for line in flows.lines().take(5) {
        println!("{line}");
    }
    println!("\n$ proxyctl status   (the tc attachments)");
    let status = String::from_utf8_lossy(&agent.proxyctl(&["status"]).stdout).into_owned();
    for line in status
        .lines()
        .filter(|l| l.starts_with("PROGRAM") || l.contains("tc-"))
    {
        println!("{line}");
    }
    agent.stop();
    println!("\nagent stopped; the namespaces, pins and links are removed");
}

fn show(path: &Path) -> String {
    path.display().to_string()
}

fn keys(map: &std::collections::BTreeMap<String, usize>) -> String {
    map.keys().cloned().collect::<Vec<_>>().join(", ")
}

fn summary(report: &Report) -> String {
    let mut parts: Vec<String> = report
        .answers
        .iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect();
    parts.extend(report.errors.iter().map(|(k, v)| format!("{k} x{v}")));
    parts.join(", ")
}

fn failures(report: &Report) {
    if !report.errors.is_empty() {
        println!("errors: {:?}", report.errors);
    }
}
