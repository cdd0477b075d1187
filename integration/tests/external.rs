//! Traffic arriving from outside the node (`two_nodes` topology): an external client
//! reaches Services through node-a's NodePort, an ExternalIP and a LoadBalancer IP, with
//! backends on node-a and on node-b.
//!
//! Each scenario runs in iptables mode, where kube-proxy's chains (KUBE-NODEPORTS,
//! KUBE-EXT-*) translate such traffic, and in eBPF mode, where tc programs on node-a's
//! interfaces toward the client and toward node-b do (`--interfaces ext0,nb0`).
//! Differences are asserted as differences: in eBPF mode a backend on node-a is reached
//! without source NAT under the Cluster policy (as Cilium does; its replies pass node-a
//! anyway), where kube-proxy masquerades every Cluster flow.

use std::time::Duration;

use integration::{
    Agent,
    flows_probe::FlowsProbe,
    manifests::{DNS, HTTP, Port, ServiceOpts, service_with_endpoints},
    two_nodes::{CLIENT_IP, CLIENT_IP6, NODE_A_IP, NODE_A_IP6, TwoNodes},
};

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

fn start(t: &TwoNodes, mode: &'static str, yaml: &str) -> Agent {
    start_with(t, mode, yaml, &[])
}

/// [`start`] with more agent flags.
fn start_with(t: &TwoNodes, mode: &'static str, yaml: &str, flags: &[&str]) -> Agent {
    let mut agent = t.agent(mode);
    agent.extra_args.extend(flags.iter().map(|f| f.to_string()));
    if mode == "ebpf" {
        agent
            .extra_args
            .extend(["--interfaces".into(), "ext0,nb0".into()]);
    }
    agent.write("web.yaml", yaml);
    agent.start();
    agent.wait_for("the first sync", Duration::from_secs(10), |_| {
        let log = agent.log();
        // In eBPF mode: both programs on both interfaces.
        log.contains("\"synced\"")
            && (mode != "ebpf" || log.matches("\"message\":\"tc program\"").count() == 4)
    });
    agent
}

/// One test per mode for a scenario `fn(mode)`.
macro_rules! both_modes {
    ($scenario:ident) => {
        mod $scenario {
            #[test]
            fn iptables() {
                integration::require_privileges!();
                super::$scenario("iptables");
            }
            #[test]
            fn ebpf() {
                integration::require_privileges!();
                super::$scenario("ebpf");
            }
        }
    };
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

both_modes!(cluster_policy_reaches_both_nodes_pods);
fn cluster_policy_reaches_both_nodes_pods(mode: &'static str) {
    let t = TwoNodes::new();
    let agent = start(&t, mode, &web("", &t.endpoints()));
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
        // Masqueraded to node-a, so that replies come back through it: kube-proxy
        // does it for every flow, the eBPF mode for flows to another node only.
        for (pod, source) in &seen {
            let masqueraded = source != CLIENT_IP;
            let expected = mode == "iptables" || pod == "pod-b";
            assert_eq!(
                masqueraded, expected,
                "{to}: {pod} saw {source}: {report:?}"
            );
        }
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
    if mode == "ebpf" {
        check_flows_and_status(&t, &agent);
    }
}

/// proxyctl shows the flows the tc programs keep, and where they are attached.
fn check_flows_and_status(t: &TwoNodes, agent: &Agent) {
    let out = agent.proxyctl(&["flows", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("flows json");
    let flows = flows.as_array().expect("rows");
    // 3 x 40 TCP connections and one UDP socket's flow.
    assert!(flows.len() > 100, "{} flows", flows.len());
    for f in flows {
        assert_eq!(f["family"], "IPv4", "{f}");
        assert!(
            f["client"]
                .as_str()
                .is_some_and(|c| c.starts_with(CLIENT_IP)),
            "{f}"
        );
        let to_node_b = f["backend"]
            .as_str()
            .is_some_and(|b| b.starts_with(&t.pod_b.ip));
        // Flows to node-b leave with node-a's address toward it; to node-a's pod, none.
        assert_eq!(
            f["source_nat"]
                .as_str()
                .map(|s| s.starts_with("198.18.101.1:")),
            to_node_b.then_some(true),
            "{f}"
        );
    }
    let status: serde_json::Value =
        serde_json::from_slice(&agent.proxyctl(&["status", "--json"]).stdout).expect("status");
    let tc: Vec<String> = status["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .filter(|a| a["hook"].as_str().is_some_and(|h| h.starts_with("tc-")))
        .map(|a| format!("{} {} {}", a["program"], a["target"], a["attached"]))
        .collect();
    assert_eq!(
        tc,
        [
            r#""epx_tc_egress" "ext0" true"#,
            r#""epx_tc_egress" "nb0" true"#,
            r#""epx_tc_ingress" "ext0" true"#,
            r#""epx_tc_ingress" "nb0" true"#,
        ],
        "{status}"
    );
}

both_modes!(local_policy_keeps_the_client_address_and_uses_this_nodes_pod);
fn local_policy_keeps_the_client_address_and_uses_this_nodes_pod(mode: &'static str) {
    let t = TwoNodes::new();
    let _agent = start(
        &t,
        mode,
        &web("  externalTrafficPolicy: Local\n", &t.endpoints()),
    );
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

both_modes!(local_policy_without_a_local_endpoint_drops);
fn local_policy_without_a_local_endpoint_drops(mode: &'static str) {
    let t = TwoNodes::new();
    let only_b = &t.endpoints()[1..];
    let _agent = start(&t, mode, &web("  externalTrafficPolicy: Local\n", only_b));
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

both_modes!(a_frontend_without_endpoints_answers_with_a_reset_or_port_unreachable);
fn a_frontend_without_endpoints_answers_with_a_reset_or_port_unreachable(mode: &'static str) {
    let t = TwoNodes::new();
    let _agent = start(&t, mode, &web("", &[]));
    for to in [
        format!("{NODE_A_IP}:30080"),
        format!("{EXTERNAL_IP}:80"),
        format!("{LB_IP}:80"),
    ] {
        let tcp = t.probe(&["--to", &to, "--count", "2", "--timeout-ms", "2000"]);
        assert_eq!(
            tcp.errors.get("ECONNREFUSED"),
            Some(&2),
            "{to}: {tcp:?}\n{}",
            String::from_utf8_lossy(&_agent.proxyctl(&["stats"]).stdout)
        );
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

both_modes!(the_health_check_node_port_answers_the_outside);
fn the_health_check_node_port_answers_the_outside(mode: &'static str) {
    let t = TwoNodes::new();
    let _agent = start(
        &t,
        mode,
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
    assert!(text.ends_with("\n200"), "{text}\n{}", _agent.log());
    assert!(text.contains("\"localEndpoints\":1"), "{text}");
}

both_modes!(load_balancer_source_ranges_admit_and_refuse);
fn load_balancer_source_ranges_admit_and_refuse(mode: &'static str) {
    let t = TwoNodes::new();
    let allowed = format!("  loadBalancerSourceRanges: [\"{CLIENT_IP}/32\", 203.0.113.0/25]\n");
    let mut agent = start(&t, mode, &web(&allowed, &t.endpoints()));
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
    // Until the change is in: a client in range starts its flows anew each attempt.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let report = t.probe(&["--to", &to_lb, "--count", "1", "--timeout-ms", "200"]);
        if report.errors.contains_key("ETIMEDOUT") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ranges were never updated: {report:?}"
        );
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

both_modes!(a_flow_survives_an_unrelated_change_and_an_agent_restart);
fn a_flow_survives_an_unrelated_change_and_an_agent_restart(mode: &'static str) {
    let t = TwoNodes::new();
    let mut agent = start(&t, mode, &web("", &t.endpoints()));
    // One UDP socket through the NodePort for about 3 s: one flow, one backend.
    let probe = integration::bin_dir().join("probe");
    let client = t
        .client_command(probe.to_str().expect("utf-8 path"))
        .args(["connect", "--to", &format!("{NODE_A_IP}:30053"), "--udp"])
        .args(["--one-socket", "--count", "60", "--interval-ms", "50"])
        // A datagram the restart loses times out however long the wait; a long one only
        // forgives a reply late on a loaded machine (CI once saw one at 1 s, before the
        // restart).
        .args(["--timeout-ms", "3000", "--sequence"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("probe");
    std::thread::sleep(Duration::from_millis(500));
    // Another Service appears, then the agent restarts.
    agent.write(
        "other.yaml",
        &service_with_endpoints(
            "other",
            "198.19.0.31",
            &[HTTP],
            &ServiceOpts::default(),
            &t.endpoints()[..1],
        ),
    );
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    agent.start();
    let out = client.wait_with_output().expect("probe output");
    let report: integration::Report = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(
        report.answers.len(),
        1,
        "one backend throughout: {report:?}"
    );
    assert_eq!(report.answers.values().sum::<usize>(), 60, "{report:?}");
}

both_modes!(a_udp_flow_from_outside_moves_off_an_endpoint_that_left);
/// A client that keeps sending UDP through the NodePort from one socket stays on its
/// endpoint (one flow) until that endpoint leaves the Service; its next datagrams then
/// reach a live one, as kube-proxy's deleting the removed endpoint's conntrack entries
/// makes them. pod-b keeps running, so a flow left on it would still be answered.
fn a_udp_flow_from_outside_moves_off_an_endpoint_that_left(mode: &'static str) {
    let t = TwoNodes::new();
    let agent = start(&t, mode, &web("", &t.endpoints()[1..]));
    let probe = FlowsProbe::program();
    let flow = FlowsProbe::start(
        t.client_command(probe.to_str().expect("utf-8 path")),
        &format!("{NODE_A_IP}:30053"),
        &["--sockets", "1", "--rounds", "4", "--interval-ms", "300"],
    );
    agent.write("web.yaml", &web("", &t.endpoints()[..1]));
    let pod_a = format!("{}:5353", t.pod_a.ip);
    agent.wait_for(
        "pod-a alone behind the NodePort",
        Duration::from_secs(10),
        |s| {
            s.as_array().is_some_and(|rows| {
                rows.iter().any(|r| {
                    r["service"] == "demo/web:dns"
                        && r["backends"].as_array().is_some_and(|b| {
                            b.len() == 1 && b[0]["address"].as_str() == Some(pod_a.as_str())
                        })
                })
            })
        },
    );
    // Within a second of the change.
    std::thread::sleep(Duration::from_secs(1));
    flow.resume();
    let (label, rounds) = flow.finish();
    let expected: Vec<Vec<String>> = ["pod-b", "pod-a", "pod-a", "pod-a"]
        .iter()
        .map(|answer| vec![answer.to_string()])
        .collect();
    assert_eq!(rounds, expected, "{mode}: {label}\n{}", agent.log());
    let dropped = agent.metric("ebpf_proxy_external_flows_dropped_total");
    let expected = if mode == "ebpf" { 1.0 } else { 0.0 };
    assert_eq!(dropped, Some(expected), "{mode}");
}

both_modes!(a_udp_flow_from_outside_ends_after_the_udp_timeout);
/// `--udp-timeout` and `--udp-stream-timeout` (3 s here) end a flow from outside once it
/// has been idle that long, as conntrack's UDP timeouts (which iptables mode sets from
/// them) do: the client's next datagram chooses anew. The flow's endpoint, pod-b, starts
/// terminating while it still serves and pod-a is ready: the flow stays on pod-b while
/// active, and moves to pod-a once idle past the timeout.
fn a_udp_flow_from_outside_ends_after_the_udp_timeout(mode: &'static str) {
    let t = TwoNodes::new();
    let flags = ["--udp-timeout", "3", "--udp-stream-timeout", "3"];
    let agent = start_with(&t, mode, &web("", &t.endpoints()[1..]), &flags);
    let probe = FlowsProbe::program();
    let flow = FlowsProbe::start(
        t.client_command(probe.to_str().expect("utf-8 path")),
        &format!("{NODE_A_IP}:30053"),
        &["--sockets", "1", "--rounds", "3", "--interval-ms", "5000"],
    );
    let endpoints = t.endpoints();
    let terminating = integration::manifests::Endpoint {
        ready: false,
        terminating: true,
        ..endpoints[1].clone()
    };
    agent.write("web.yaml", &web("", &[endpoints[0].clone(), terminating]));
    let pod_a = format!("{}:5353", t.pod_a.ip);
    agent.wait_for("pod-a behind the NodePort", Duration::from_secs(10), |s| {
        s.as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["service"] == "demo/web:dns"
                    && r["backends"].as_array().is_some_and(|b| {
                        b.iter()
                            .any(|b| b["address"].as_str() == Some(pod_a.as_str()))
                    })
            })
        })
    });
    // Round 1 at once (the flow idle for about as long as the change took), round 2
    // after 5 s idle.
    flow.resume();
    let (label, rounds) = flow.finish();
    let expected: Vec<Vec<String>> = ["pod-b", "pod-b", "pod-a"]
        .iter()
        .map(|answer| vec![answer.to_string()])
        .collect();
    assert_eq!(rounds, expected, "{mode}: {label}\n{}", agent.log());
}

/// Without `--interfaces`, the tc programs attach to the interfaces carrying the node's
/// address (its Node object's): here ext0, not nb0 or the pod's link.
#[test]
fn the_tc_programs_default_to_the_interfaces_carrying_the_node_address() {
    integration::require_privileges!();
    let t = TwoNodes::new();
    let mut agent = t.agent("ebpf");
    agent.write("web.yaml", &web("", &t.endpoints()));
    agent.start();
    agent.wait_for("the tc programs", Duration::from_secs(10), |_| {
        agent.log().matches("\"message\":\"tc program\"").count() == 2
    });
    assert!(
        agent.log().contains("\"interfaces\":\"[\\\"ext0\\\"]\""),
        "{}",
        agent.log()
    );
    let report = t.probe(&["--to", &format!("{NODE_A_IP}:30080"), "--count", "20"]);
    assert_eq!(report.answers.values().sum::<usize>(), 20, "{report:?}");
}

both_modes!(client_ip_affinity_is_keyed_by_the_clients_address);
fn client_ip_affinity_is_keyed_by_the_clients_address(mode: &'static str) {
    let t = TwoNodes::new();
    let sticky =
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n";
    let agent = start(&t, mode, &web(sticky, &t.endpoints()));
    for to in [format!("{NODE_A_IP}:30080"), format!("{LB_IP}:80")] {
        let report = t.probe(&["--to", &to, "--count", "30"]);
        assert_eq!(
            report.answers.values().sum::<usize>(),
            30,
            "{to}: {report:?}"
        );
        assert_eq!(
            report.answers.len(),
            1,
            "{to}: one backend for one client: {report:?}"
        );
    }
    // proxyctl names the entries by the client's address in both modes (the eBPF mode
    // keeps one per frontend; iptables mode's `recent` lists are per service port and
    // shown on each of its frontends).
    let out = agent.proxyctl(&["affinity", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("affinity json");
    let rows = rows.as_array().expect("rows");
    assert!(rows.len() >= 2, "{rows:?}");
    for r in rows {
        assert_eq!(r["client"], CLIENT_IP, "{r}");
        assert_eq!(r["live"], true, "{r}");
    }
}

/// Without a Node object, the NodePorts are served on the addresses of `--interfaces`.
#[test]
fn without_a_node_object_node_ports_are_served_on_the_interfaces_addresses() {
    integration::require_privileges!();
    let t = TwoNodes::new();
    let mut agent = t.agent("ebpf");
    agent.remove("node.yaml");
    agent
        .extra_args
        .extend(["--interfaces".into(), "ext0,nb0".into()]);
    agent.write("web.yaml", &web("", &t.endpoints()));
    agent.start();
    agent.wait_for("the tc programs", Duration::from_secs(10), |_| {
        agent.log().matches("\"message\":\"tc program\"").count() == 4
    });
    let report = t.probe(&["--to", &format!("{NODE_A_IP}:30080"), "--count", "20"]);
    assert_eq!(report.answers.values().sum::<usize>(), 20, "{report:?}");
}

// IPv6 from outside the node: the same scenarios over IPv6 (an IPv6 Service, its
// NodePort on node-a's IPv6 address, an IPv6 ExternalIP and LoadBalancer IP), and a
// dual-stack NodePort reached over both families, in both modes: iptables mode's chains
// are kube-proxy's IPv6 proxier's (ip6tables), and the differences are the IPv4 ones
// (iptables mode masquerades every Cluster-policy flow; the eBPF mode only flows to
// another node).

const VIP6: &str = "2001:db8:19::30";
const EXTERNAL_IP6: &str = "2001:db8:19::5:5";
const LB_IP6: &str = "2001:db8:19::7:7";
/// node-a's address toward node-b: what a flow to pod-b is source-NATed to.
const NODE_A_NB_IP6: &str = "2001:db8:18:101::1";
/// node-a's address toward pod-a: what iptables mode masquerades a flow to pod-a to
/// (MASQUERADE takes the address of the link the packet leaves by).
const NODE_A_POD_A_IP6: &str = "2001:db8:18:110::1";

/// A long-lived TCP port (`probe serve --tcp-lines`), NodePort 30090.
const LINES_NP: Port<'static> = Port {
    name: "lines",
    port: 9000,
    target: 9000,
    protocol: "TCP",
    node_port: Some(30090),
};

/// The port node-a's own connections use below: in the kernel's ephemeral range, where
/// an external client's source port also lies.
const SHARED_PORT: u16 = 40_000;

both_modes!(masqueraded_flows_and_the_nodes_own_connections_never_share_a_port);
/// Flows masqueraded to node-a and node-a's own connections leave from one address. If
/// one took a source port the other holds toward the same backend, the backend's replies
/// would reach the wrong one: the connection made second times out, or resets the first.
/// kube-proxy's conntrack picks another port for the masqueraded flow; the eBPF mode takes
/// its ports outside the kernel's ephemeral range, and reserves them where the node's
/// range reaches into them. Both orders, with the external client and the node using the
/// same source port.
fn masqueraded_flows_and_the_nodes_own_connections_never_share_a_port(mode: &'static str) {
    let t = TwoNodes::new();
    let probe = FlowsProbe::program();
    let _lines = integration::spawn_ready(t.pod_b.netns.command(&probe, None).args([
        "serve",
        "--name",
        "pod-b",
        "--tcp-lines",
        "0.0.0.0:9000",
    ]));
    // pod-b alone, on node-b: every flow through the NodePorts leaves node-a masqueraded.
    let opts = ServiceOpts {
        type_: Some("NodePort"),
        ..ServiceOpts::default()
    };
    let yaml = service_with_endpoints("web", VIP, &[HTTP_NP, LINES_NP], &opts, &t.endpoints()[1..]);
    // A node whose ephemeral range is widened to every port (as some operators do): the
    // eBPF mode's agent reserves the ports masqueraded flows take.
    t.node_a.sysctl("net.ipv4.ip_local_port_range=1024 65535");
    let agent = start(&t, mode, &yaml);
    let reserved = integration::run(
        t.node_a
            .command("sysctl", None)
            .args(["-n", "net.ipv4.ip_local_reserved_ports"]),
    );
    let expected = if mode == "ebpf" { "61000-65535" } else { "" };
    assert_eq!(reserved.trim(), expected, "{mode}: {}", agent.log());
    let http = format!("{NODE_A_IP}:30080");
    let seen = who_saw(&t.probe(&["--to", &http, "--ask-source"]));
    let [(pod, masquerade)] = seen.as_slice() else {
        panic!("{mode}: one answer: {seen:?}");
    };
    assert_eq!(pod, "pod-b", "{mode}");
    let client_from = format!("{CLIENT_IP}:{SHARED_PORT}");
    let node_from = format!("{masquerade}:{SHARED_PORT}");
    let node_probe = |args: &[&str]| -> integration::Report {
        let out = integration::run(
            t.node_a
                .command(&probe, Some(&t.cgroup))
                .arg("connect")
                .args(args),
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("probe output {out:?}: {e}"))
    };

    // The external client's flow first (closed, but its translation lives on a while),
    // then node-a's own connection to pod-b from the same port.
    let external = t.probe(&["--to", &http, "--from", &client_from]);
    assert_eq!(
        external.count("pod-b"),
        1,
        "{mode}: external first: {external:?}"
    );
    let pod_b = format!("{}:8080", t.pod_b.ip);
    let own = node_probe(&["--to", &pod_b, "--from", &node_from, "--timeout-ms", "3000"]);
    assert_eq!(
        own.count("pod-b"),
        1,
        "{mode}: node-a's connection second: {own:?}"
    );

    // node-a's open connection first, then an external flow from the same port; both
    // go on answering.
    let node_from = format!("{masquerade}:{}", SHARED_PORT + 2);
    let client_from = format!("{CLIENT_IP}:{}", SHARED_PORT + 2);
    let lines = |command, to: String, from: &str| {
        let args = [
            "--tcp",
            "--rounds",
            "2",
            "--timeout-ms",
            "3000",
            "--from",
            from,
        ];
        FlowsProbe::start(command, &to, &args)
    };
    let own = lines(
        t.node_a.command(&probe, Some(&t.cgroup)),
        format!("{}:9000", t.pod_b.ip),
        &node_from,
    );
    let external = lines(
        t.client_command(probe.to_str().expect("utf-8 path")),
        format!("{NODE_A_IP}:30090"),
        &client_from,
    );
    for flows in [own, external] {
        flows.resume();
        let (label, rounds) = flows.finish();
        assert_eq!(
            rounds,
            [vec!["connected".to_owned()], vec!["pod-b".to_owned()]],
            "{mode}: {label}"
        );
    }
}

/// `web` as an IPv6 single-stack LoadBalancer: the same ports, an IPv6 ExternalIP and
/// LoadBalancer IP.
fn web6(extra: &str, endpoints: &[integration::manifests::Endpoint]) -> String {
    let spec_extra = format!("  externalIPs: [\"{EXTERNAL_IP6}\"]\n{extra}");
    let status = format!("status: {{loadBalancer: {{ingress: [{{ip: \"{LB_IP6}\"}}]}}}}\n");
    let opts = ServiceOpts {
        type_: Some("LoadBalancer"),
        spec_extra: &spec_extra,
        status: &status,
        ..ServiceOpts::default()
    };
    service_with_endpoints("web", VIP6, &[HTTP_NP, DNS_NP], &opts, endpoints)
}

/// node-a's agent on a dual-stack node (its Node object lists both addresses, so the
/// NodePorts are served on both), the tc programs on ext0 and nb0.
fn start6(t: &TwoNodes, mode: &'static str, yaml: &str) -> Agent {
    let mut agent = t.agent_dual_stack(mode);
    if mode == "ebpf" {
        agent
            .extra_args
            .extend(["--interfaces".into(), "ext0,nb0".into()]);
    }
    agent.write("web.yaml", yaml);
    agent.start();
    agent.wait_for("the first sync", Duration::from_secs(10), |_| {
        let log = agent.log();
        log.contains("\"synced\"")
            && (mode != "ebpf" || log.matches("\"message\":\"tc program\"").count() == 4)
    });
    agent
}

/// The three IPv6 frontends reached from outside, as `probe --to` takes them.
fn frontends6() -> [String; 3] {
    [
        format!("[{NODE_A_IP6}]:30080"),
        format!("[{EXTERNAL_IP6}]:80"),
        format!("[{LB_IP6}]:80"),
    ]
}

both_modes!(ipv6_cluster_policy_reaches_both_nodes_pods);
fn ipv6_cluster_policy_reaches_both_nodes_pods(mode: &'static str) {
    let t = TwoNodes::new();
    let agent = start6(&t, mode, &web6("", &t.endpoints6()));
    for to in frontends6() {
        let report = t.probe(&["--to", &to, "--count", "40", "--ask-source"]);
        assert_eq!(
            report.answers.values().sum::<usize>(),
            40,
            "{to}: {report:?}\n{}",
            agent.log()
        );
        let seen = who_saw(&report);
        let pods: std::collections::BTreeSet<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(pods.len(), 2, "{to}: both nodes' pods answer: {report:?}");
        // Source-NATed to node-a's IPv6 address toward node-b for pod-b; pod-a sees the
        // client in eBPF mode, node-a's address on its link in iptables mode, which
        // masquerades every flow (see `cluster_policy_reaches_both_nodes_pods`).
        for (pod, source) in &seen {
            let expected = match (mode, pod.as_str()) {
                (_, "pod-b") => NODE_A_NB_IP6,
                ("iptables", _) => NODE_A_POD_A_IP6,
                _ => CLIENT_IP6,
            };
            assert_eq!(source, expected, "{to}: {pod}: {report:?}");
        }
    }
    let udp = t.probe(&[
        "--to",
        &format!("[{NODE_A_IP6}]:30053"),
        "--udp",
        "--count",
        "30",
    ]);
    assert_eq!(udp.answers.values().sum::<usize>(), 30, "{udp:?}");
    assert_eq!(udp.answers.len(), 2, "{udp:?}");
    assert_eq!(
        udp.reply_sources.keys().collect::<Vec<_>>(),
        [&format!("[{NODE_A_IP6}]:30053")],
        "{udp:?}"
    );
    // proxyctl flows (the tc programs' flow table, eBPF mode) lists the IPv6 flows, the
    // source NAT on node-a's IPv6 address.
    if mode != "ebpf" {
        return;
    }
    let out = agent.proxyctl(&["flows", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let flows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("flows json");
    let flows = flows.as_array().expect("rows");
    assert!(flows.len() > 100, "{} flows", flows.len());
    for f in flows {
        assert_eq!(f["family"], "IPv6", "{f}");
        let client = format!("[{CLIENT_IP6}]:");
        assert!(
            f["client"].as_str().is_some_and(|c| c.starts_with(&client)),
            "{f}"
        );
        let to_node_b = f["backend"]
            .as_str()
            .is_some_and(|b| b.starts_with(&format!("[{}]:", t.pod_b.ip6)));
        let snat = format!("[{NODE_A_NB_IP6}]:");
        assert_eq!(
            f["source_nat"].as_str().map(|s| s.starts_with(&snat)),
            to_node_b.then_some(true),
            "{f}"
        );
    }
}

both_modes!(ipv6_local_policy_keeps_the_client_address_and_uses_this_nodes_pod);
fn ipv6_local_policy_keeps_the_client_address_and_uses_this_nodes_pod(mode: &'static str) {
    let t = TwoNodes::new();
    let _agent = start6(
        &t,
        mode,
        &web6("  externalTrafficPolicy: Local\n", &t.endpoints6()),
    );
    for to in frontends6() {
        let report = t.probe(&["--to", &to, "--count", "20", "--ask-source"]);
        assert_eq!(
            report.answers.get(&format!("pod-a saw {CLIENT_IP6}")),
            Some(&20),
            "{to}: only node-a's pod, seeing the client: {report:?}"
        );
    }
}

both_modes!(ipv6_local_policy_without_a_local_endpoint_drops);
fn ipv6_local_policy_without_a_local_endpoint_drops(mode: &'static str) {
    let t = TwoNodes::new();
    let only_b = &t.endpoints6()[1..];
    let _agent = start6(&t, mode, &web6("  externalTrafficPolicy: Local\n", only_b));
    let report = t.probe(&[
        "--to",
        &format!("[{NODE_A_IP6}]:30080"),
        "--count",
        "2",
        "--timeout-ms",
        "300",
    ]);
    assert_eq!(report.errors.get("ETIMEDOUT"), Some(&2), "{report:?}");
}

both_modes!(ipv6_a_frontend_without_endpoints_answers_with_a_reset_or_port_unreachable);
fn ipv6_a_frontend_without_endpoints_answers_with_a_reset_or_port_unreachable(mode: &'static str) {
    let t = TwoNodes::new();
    let agent = start6(&t, mode, &web6("", &[]));
    for to in frontends6() {
        let tcp = t.probe(&["--to", &to, "--count", "2", "--timeout-ms", "2000"]);
        assert_eq!(
            tcp.errors.get("ECONNREFUSED"),
            Some(&2),
            "{to}: {tcp:?}\n{}",
            String::from_utf8_lossy(&agent.proxyctl(&["stats"]).stdout)
        );
    }
    // UDP: an ICMPv6 port unreachable, which the client's socket reports as refused.
    let udp = t.probe(&[
        "--to",
        &format!("[{NODE_A_IP6}]:30053"),
        "--udp",
        "--count",
        "2",
        "--timeout-ms",
        "2000",
    ]);
    assert_eq!(
        udp.errors.get("ECONNREFUSED"),
        Some(&2),
        "{udp:?}\n{}",
        String::from_utf8_lossy(&agent.proxyctl(&["stats"]).stdout)
    );
}

both_modes!(ipv6_load_balancer_source_ranges_admit_and_refuse);
fn ipv6_load_balancer_source_ranges_admit_and_refuse(mode: &'static str) {
    let t = TwoNodes::new();
    let allowed =
        format!("  loadBalancerSourceRanges: [\"{CLIENT_IP6}/128\", \"2001:db8:ffff::/48\"]\n");
    let mut agent = start6(&t, mode, &web6(&allowed, &t.endpoints6()));
    let to_lb = format!("[{LB_IP6}]:80");
    let report = t.probe(&["--to", &to_lb, "--count", "10"]);
    assert_eq!(
        report.answers.values().sum::<usize>(),
        10,
        "in range: {report:?}"
    );
    agent.write(
        "web.yaml",
        &web6(
            "  loadBalancerSourceRanges: [\"2001:db8:ffff::/48\"]\n",
            &t.endpoints6(),
        ),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let report = t.probe(&["--to", &to_lb, "--count", "1", "--timeout-ms", "200"]);
        if report.errors.contains_key("ETIMEDOUT") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ranges were never updated: {report:?}"
        );
    }
    let report = t.probe(&["--to", &to_lb, "--count", "2", "--timeout-ms", "300"]);
    assert_eq!(
        report.errors.get("ETIMEDOUT"),
        Some(&2),
        "out of range: {report:?}"
    );
    for to in [
        format!("[{NODE_A_IP6}]:30080"),
        format!("[{EXTERNAL_IP6}]:80"),
    ] {
        let report = t.probe(&["--to", &to, "--count", "5"]);
        assert_eq!(
            report.answers.values().sum::<usize>(),
            5,
            "{to}: {report:?}"
        );
    }
    agent.stop();
}

both_modes!(ipv6_a_flow_survives_an_agent_restart);
fn ipv6_a_flow_survives_an_agent_restart(mode: &'static str) {
    let t = TwoNodes::new();
    let mut agent = start6(&t, mode, &web6("", &t.endpoints6()));
    // On links just made, the first IPv6 neighbour resolutions can take a second (a
    // solicitation retransmitted), longer than the probe below waits for an answer:
    // resolve them first, so what is measured is the restart.
    let warm = t.probe(&[
        "--to",
        &format!("[{NODE_A_IP6}]:30053"),
        "--udp",
        "--count",
        "4",
        "--timeout-ms",
        "3000",
    ]);
    assert_eq!(warm.answers.values().sum::<usize>(), 4, "{warm:?}");
    let probe = integration::bin_dir().join("probe");
    let client = t
        .client_command(probe.to_str().expect("utf-8 path"))
        .args(["connect", "--to", &format!("[{NODE_A_IP6}]:30053"), "--udp"])
        .args(["--one-socket", "--count", "60", "--interval-ms", "50"])
        // A datagram the restart loses times out however long the wait; a long one only
        // forgives a reply late on a loaded machine (CI once saw one at 1 s, before the
        // restart).
        .args(["--timeout-ms", "3000", "--sequence"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("probe");
    std::thread::sleep(Duration::from_millis(1000));
    agent.stop();
    agent.start();
    let out = client.wait_with_output().expect("probe output");
    let report: integration::Report = serde_json::from_slice(&out.stdout).expect("report");
    assert_eq!(
        report.answers.len(),
        1,
        "one backend throughout: {report:?}"
    );
    assert_eq!(report.answers.values().sum::<usize>(), 60, "{report:?}");
}

both_modes!(ipv6_client_ip_affinity_is_keyed_by_the_clients_address);
fn ipv6_client_ip_affinity_is_keyed_by_the_clients_address(mode: &'static str) {
    let t = TwoNodes::new();
    let sticky =
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n";
    let agent = start6(&t, mode, &web6(sticky, &t.endpoints6()));
    for to in [format!("[{NODE_A_IP6}]:30080"), format!("[{LB_IP6}]:80")] {
        let report = t.probe(&["--to", &to, "--count", "30"]);
        assert_eq!(
            report.answers.values().sum::<usize>(),
            30,
            "{to}: {report:?}"
        );
        assert_eq!(
            report.answers.len(),
            1,
            "{to}: one backend for one client: {report:?}"
        );
    }
    let out = agent.proxyctl(&["affinity", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("affinity json");
    let rows = rows.as_array().expect("rows");
    assert!(rows.len() >= 2, "{rows:?}");
    for r in rows {
        assert_eq!(r["client"], CLIENT_IP6, "{r}");
        assert_eq!(r["live"], true, "{r}");
    }
}

both_modes!(a_dual_stack_node_port_is_reached_over_both_families);
fn a_dual_stack_node_port_is_reached_over_both_families(mode: &'static str) {
    let t = TwoNodes::new();
    let opts = ServiceOpts {
        type_: Some("NodePort"),
        second_cluster_ip: Some(VIP6),
        ..ServiceOpts::default()
    };
    let mut endpoints = t.endpoints();
    endpoints.extend(t.endpoints6());
    let yaml = service_with_endpoints("web", VIP, &[HTTP_NP, DNS_NP], &opts, &endpoints);
    let _agent = start6(&t, mode, &yaml);
    for (to, client) in [
        (format!("{NODE_A_IP}:30080"), CLIENT_IP),
        (format!("[{NODE_A_IP6}]:30080"), CLIENT_IP6),
    ] {
        let report = t.probe(&["--to", &to, "--count", "30", "--ask-source"]);
        assert_eq!(
            report.answers.values().sum::<usize>(),
            30,
            "{to}: {report:?}"
        );
        let seen = who_saw(&report);
        let pods: std::collections::BTreeSet<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(pods.len(), 2, "{to}: both nodes' pods answer: {report:?}");
        // node-a's pod sees the client as it connected, in its family, in eBPF mode;
        // iptables mode masquerades every flow.
        for (pod, source) in &seen {
            let masqueraded = source != client;
            let expected = mode == "iptables" || pod == "pod-b";
            assert_eq!(
                masqueraded, expected,
                "{to}: {pod} saw {source}: {report:?}"
            );
        }
    }
}
