//! UDP flows and stale sockets, in both modes, with real sockets from a pod on the node
//! and from the node itself: an unconnected socket's datagrams stay on one backend while
//! the flow is active (kube-proxy's users get that from conntrack), a flow idle past its
//! timeout chooses anew with the current weights, and no client is stranded on an
//! endpoint that left its Service (eBPF mode destroys the connected sockets, iptables
//! mode deletes their conntrack entries). Run as root (`cargo xtask test`).

use std::{collections::BTreeSet, time::Duration};

use integration::{
    Agent, ChildGuard,
    flows_probe::FlowsProbe,
    kube_node::{KubeNode, PodSpec},
    manifests::{DNS, Endpoint, Port, ServiceOpts, service_with_endpoints},
    require_privileges, spawn_ready,
};

const NODE_IP: &str = "198.18.60.1";
const OTHER_NODE_IP: &str = "198.18.60.2";
const CLIENT_POD: &str = "198.18.61.2";
const BACKENDS: [(&str, &str); 3] = [
    ("198.18.62.2", "a"),
    ("198.18.62.3", "b"),
    ("198.18.62.4", "c"),
];
const VIP: &str = "198.19.60.10";
const TO: &str = "198.19.60.10:53";
const SERVICE: &str = "demo/dns:dns";
const CLUSTER_CIDR: &str = "198.18.60.0/22";
const MODES: [&str; 2] = ["ebpf", "iptables"];

/// The answer of backend `label` (pods answer `<label>:<port>`).
fn answer(label: &str) -> String {
    format!("{label}:{}", DNS.target)
}

/// This node with a client pod and the three backend pods on it.
fn node() -> KubeNode {
    let mut pods = vec![PodSpec {
        ip: CLIENT_POD.into(),
        label: "client".into(),
        on_this_node: true,
        tcp: vec![],
        udp: vec![],
    }];
    pods.extend(BACKENDS.iter().map(|(ip, label)| PodSpec {
        ip: (*ip).into(),
        label: (*label).into(),
        on_this_node: true,
        tcp: vec![],
        udp: vec![DNS.target],
    }));
    KubeNode::new(NODE_IP, &[], OTHER_NODE_IP, pods, &[])
}

/// The Service over the backends labelled `labels`.
fn dns_service(labels: &[&str], weights: Option<&str>) -> String {
    let endpoints: Vec<Endpoint> = BACKENDS
        .iter()
        .filter(|(_, label)| labels.contains(label))
        .map(|(ip, label)| Endpoint::ready(ip, label))
        .collect();
    let opts = ServiceOpts {
        weights,
        ..ServiceOpts::default()
    };
    service_with_endpoints("dns", VIP, &[DNS], &opts, &endpoints)
}

fn start(node: &KubeNode, mode: &'static str, extra: &[&str], service: &str) -> Agent {
    let mut agent = node.agent(mode, &[], CLUSTER_CIDR);
    agent.extra_args.extend(extra.iter().map(|a| a.to_string()));
    agent.write("dns.yaml", service);
    node.start(&mut agent);
    agent
}

/// Waits until the Service's backends are exactly `labels`' addresses.
fn wait_for_backends(agent: &Agent, labels: &[&str]) {
    wait_for_port_backends(agent, SERVICE, &DNS, labels);
}

/// Waits until `service`'s backends are exactly `labels`' addresses on `port`'s target.
fn wait_for_port_backends(agent: &Agent, service: &str, port: &Port, labels: &[&str]) {
    let wanted: BTreeSet<String> = BACKENDS
        .iter()
        .filter(|(_, label)| labels.contains(label))
        .map(|(ip, _)| format!("{ip}:{}", port.target))
        .collect();
    agent.wait_for(
        &format!("{service} on {labels:?}"),
        Duration::from_secs(10),
        |s| {
            s.as_array().is_some_and(|rows| {
                rows.iter().any(|r| {
                    r["service"] == service
                        && r["backends"].as_array().is_some_and(|b| {
                            b.iter()
                                .filter_map(|b| b["address"].as_str().map(str::to_owned))
                                .collect::<BTreeSet<_>>()
                                == wanted
                        })
                })
            })
        },
    );
}

/// Waits until backend `ip` takes at least `percent` of the Service's new connections
/// (iptables mode lists no backend of weight 0).
fn wait_for_share(agent: &Agent, ip: &str, percent: f64) {
    let address = format!("{ip}:{}", DNS.target);
    agent.wait_for(
        &format!("{address} taking {percent}% of {SERVICE}"),
        Duration::from_secs(10),
        |s| {
            s.as_array().is_some_and(|rows| {
                rows.iter().filter(|r| r["service"] == SERVICE).any(|r| {
                    r["backends"].as_array().is_some_and(|bs| {
                        bs.iter().any(|x| {
                            x["address"] == address
                                && x["share_percent"].as_f64().is_some_and(|p| p >= percent)
                        })
                    })
                })
            })
        },
    );
}

/// `probe flows --to TO ARGS` from `source`, stopped after its round 0.
fn flows(node: &KubeNode, source: &str, args: &[&str]) -> FlowsProbe {
    let command = node
        .command_from(source)
        .unwrap_or_else(|| panic!("no namespace holds {source}"));
    let mut probe = FlowsProbe::start(command, TO, args);
    probe.label = format!("from {source} {args:?}");
    probe
}

/// Three connected and three unconnected sockets from each of `sources`, three rounds
/// 300 ms apart, stopped after round 0.
fn udp_probes(node: &KubeNode, sources: &[&str]) -> Vec<FlowsProbe> {
    let args = ["--sockets", "3", "--rounds", "3", "--interval-ms", "300"];
    let connected: Vec<&str> = args.iter().copied().chain(["--connected"]).collect();
    sources
        .iter()
        .flat_map(|source| [flows(node, source, &connected), flows(node, source, &args)])
        .collect()
}

/// Makes `change` while `probes` wait after their round 0, then lets them go on a second
/// after it is programmed (`change` returns once it is); every probe's rounds.
fn across_a_change(
    probes: Vec<FlowsProbe>,
    change: impl FnOnce(),
) -> Vec<(String, Vec<Vec<String>>)> {
    change();
    std::thread::sleep(Duration::from_secs(1));
    for probe in &probes {
        probe.resume();
    }
    probes.into_iter().map(FlowsProbe::finish).collect()
}

#[test]
fn one_unconnected_socket_stays_on_one_backend_and_other_sockets_spread() {
    require_privileges!();
    for mode in MODES {
        let node = node();
        let agent = start(&node, mode, &[], &dns_service(&["a", "b", "c"], None));
        wait_for_backends(&agent, &["a", "b", "c"]);
        for source in [CLIENT_POD, NODE_IP] {
            let report = node.probe_from(source, &["--to", TO, "--one-socket", "--count", "30"]);
            assert_eq!(
                report.answers.values().sum::<usize>(),
                30,
                "{mode} {source}: {report:?}"
            );
            assert_eq!(
                report.answers.len(),
                1,
                "{mode} {source}: one socket, one backend: {report:?}"
            );
            // Twelve sockets all on one backend of three: 3 x (1/3)^12 < 1e-5.
            let mut reached = BTreeSet::new();
            for _ in 0..12 {
                let report = node.probe_from(source, &["--to", TO, "--one-socket", "--count", "2"]);
                assert_eq!(report.answers.len(), 1, "{mode} {source}: {report:?}");
                reached.extend(report.answers.into_keys());
            }
            assert!(
                reached.len() >= 2,
                "{mode} {source}: sockets spread: {reached:?}"
            );
        }
        if mode == "ebpf" {
            let out = agent.proxyctl(&["udp-flows", "--json"]);
            let rows: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("udp-flows --json");
            let rows = rows.as_array().expect("rows");
            assert!(rows.len() >= 13, "{out:?}");
            for row in rows {
                assert_eq!(row["service"], SERVICE, "{row}");
                assert_eq!(row["frontend"], TO, "{row}");
                assert_eq!(row["replied"], true, "{row}");
                assert_eq!(row["timeout_seconds"], 120, "{row}");
            }
        }
    }
}

/// A flow keeps its backend however the weights change, until it has been idle past its
/// timeout; then its next datagram chooses with the current weights.
#[test]
fn an_idle_flow_chooses_anew_with_the_current_weights() {
    require_privileges!();
    let (a, b) = (BACKENDS[0].0, BACKENDS[1].0);
    let only_a = format!("{a}=1,{b}=0");
    let mostly_b = format!("{a}=1,{b}=1000");
    for mode in MODES {
        let node = node();
        let timeouts = ["--udp-timeout", "3", "--udp-stream-timeout", "3"];
        let agent = start(
            &node,
            mode,
            &timeouts,
            &dns_service(&["a", "b"], Some(&only_a)),
        );
        wait_for_share(&agent, a, 100.0);
        let flows = flows(
            &node,
            CLIENT_POD,
            &["--sockets", "10", "--rounds", "3", "--interval-ms", "4500"],
        );
        agent.write("dns.yaml", &dns_service(&["a", "b"], Some(&mostly_b)));
        wait_for_share(&agent, b, 99.0);
        flows.resume();
        let (label, rounds) = flows.finish();
        let on =
            |round: usize, who: &str| rounds[round].iter().filter(|x| **x == answer(who)).count();
        assert_eq!(on(0, "a"), 10, "{mode} {label}: {rounds:?}");
        assert_eq!(
            on(1, "a"),
            10,
            "{mode} {label}: flows kept their backend: {rounds:?}"
        );
        // Each idle flow chooses b with probability 1000/1001: fewer than 6 of 10 is
        // below 1e-7.
        assert!(
            on(2, "b") >= 6,
            "{mode} {label}: idle flows chose anew: {rounds:?}"
        );
    }
}

/// The endpoint every client uses leaves the Service (another takes its place): within
/// a second, a connected client gets an error (eBPF mode: its socket was destroyed) or
/// the live backend (iptables mode: its conntrack entry was deleted), and its next
/// exchange reaches the live backend; an unconnected one reaches the live backend at
/// once. From a pod and from the node itself. The removed pod still answers, so a
/// stranded client would show it.
#[test]
fn no_client_is_stranded_on_a_removed_endpoint() {
    require_privileges!();
    for mode in MODES {
        let node = node();
        let agent = start(&node, mode, &[], &dns_service(&["a"], None));
        wait_for_backends(&agent, &["a"]);
        let probes = udp_probes(&node, &[CLIENT_POD, NODE_IP]);
        let results = across_a_change(probes, || {
            agent.write("dns.yaml", &dns_service(&["b"], None));
            wait_for_backends(&agent, &["b"]);
        });
        for (label, rounds) in results {
            let is_connected = label.contains("--connected");
            assert!(
                rounds[0].iter().all(|x| *x == answer("a")),
                "{mode} {label}: {rounds:?}"
            );
            for x in &rounds[1] {
                let destroyed = x == "ECONNABORTED" || x == "EDESTADDRREQ";
                let expected = if mode == "ebpf" && is_connected {
                    destroyed
                } else {
                    *x == answer("b")
                };
                assert!(
                    expected,
                    "{mode} {label}: round 1: {rounds:?}\nagent log:\n{}",
                    agent.log()
                );
            }
            assert!(
                rounds[2].iter().all(|x| *x == answer("b")),
                "{mode} {label}: {rounds:?}"
            );
        }
        if mode == "ebpf" {
            assert_eq!(
                agent.metric("ebpf_proxy_sockets_destroyed_total{protocol=\"udp\"}"),
                Some(6.0),
                "six connected sockets destroyed:\n{}",
                agent.log()
            );
            assert_eq!(
                agent.metric("ebpf_proxy_udp_flows_dropped_total"),
                Some(6.0),
                "six unconnected flows dropped"
            );
        }
    }
}

/// The endpoint every client uses starts terminating but still serves, and a ready one
/// takes the new clients: the flows already on it stay there in both modes (kube-proxy
/// leaves the conntrack entries of an endpoint that serves), connected sockets included.
#[test]
fn flows_stay_on_an_endpoint_that_terminates_while_it_serves() {
    require_privileges!();
    let (a, b) = (BACKENDS[0], BACKENDS[1]);
    let terminating = [
        Endpoint {
            ready: false,
            serving: true,
            terminating: true,
            ..Endpoint::ready(a.0, a.1)
        },
        Endpoint::ready(b.0, b.1),
    ];
    let changed = service_with_endpoints("dns", VIP, &[DNS], &ServiceOpts::default(), &terminating);
    for mode in MODES {
        let node = node();
        let agent = start(&node, mode, &[], &dns_service(&["a"], None));
        wait_for_backends(&agent, &["a"]);
        let probes = udp_probes(&node, &[CLIENT_POD]);
        let results = across_a_change(probes, || {
            agent.write("dns.yaml", &changed);
            wait_for_share(&agent, b.0, 100.0);
        });
        for (label, rounds) in results {
            assert!(
                rounds.iter().flatten().all(|x| *x == answer("a")),
                "{mode} {label}: {rounds:?}\nagent log:\n{}",
                agent.log()
            );
        }
        let report = node.probe_from(CLIENT_POD, &["--to", TO, "--one-socket", "--count", "3"]);
        assert_eq!(
            report.count(&answer("b")),
            3,
            "{mode}: a new flow: {report:?}"
        );
    }
}

/// A long-lived TCP service: `probe serve --tcp-lines` on each backend pod.
const LINES: Port<'static> = Port {
    name: "lines",
    port: 9000,
    target: 9000,
    protocol: "TCP",
    node_port: None,
};

/// The endpoint of two open TCP connections (from a pod and from the node) leaves the
/// Service: they are left alone, as kube-proxy leaves them, unless the agent runs with
/// `--terminate-tcp-on-endpoint-removal` (eBPF mode), which resets them within a second.
#[test]
fn tcp_connections_are_reset_only_when_asked() {
    require_privileges!();
    let lines = |label: &str| {
        let endpoints: Vec<Endpoint> = BACKENDS
            .iter()
            .filter(|(_, l)| *l == label)
            .map(|(ip, l)| Endpoint::ready(ip, l))
            .collect();
        service_with_endpoints("lines", VIP, &[LINES], &ServiceOpts::default(), &endpoints)
    };
    let to = format!("{VIP}:{}", LINES.port);
    for (mode, terminate) in [("ebpf", false), ("ebpf", true), ("iptables", false)] {
        let node = node();
        let _servers: Vec<ChildGuard> = node.pods[1..]
            .iter()
            .map(|pod| {
                let listen = format!("0.0.0.0:{}", LINES.target);
                spawn_ready(pod.netns.command(FlowsProbe::program(), None).args([
                    "serve",
                    "--name",
                    &pod.spec.label,
                    "--tcp-lines",
                    &listen,
                ]))
            })
            .collect();
        let flag = ["--terminate-tcp-on-endpoint-removal"];
        let extra: &[&str] = if terminate { &flag } else { &[] };
        let agent = start(&node, mode, extra, &lines("a"));
        wait_for_port_backends(&agent, "demo/lines:lines", &LINES, &["a"]);
        let args = ["--tcp", "--sockets", "2", "--rounds", "2"];
        let all: Vec<FlowsProbe> = [CLIENT_POD, NODE_IP]
            .iter()
            .map(|source| {
                let command = node.command_from(source).expect("a source namespace");
                FlowsProbe::start(command, &to, &args)
            })
            .collect();
        let results = across_a_change(all, || {
            agent.write("dns.yaml", &lines("b"));
            wait_for_port_backends(&agent, "demo/lines:lines", &LINES, &["b"]);
        });
        for (label, rounds) in results {
            let context = format!("{mode} terminate={terminate} {label}: {rounds:?}");
            assert!(rounds[0].iter().all(|x| x == "connected"), "{context}");
            for x in &rounds[1] {
                if terminate {
                    assert!(x.starts_with('E') || x.starts_with("errno"), "{context}");
                } else {
                    assert_eq!(*x, "a", "{context}");
                }
            }
        }
        let reset = agent.metric("ebpf_proxy_sockets_destroyed_total{protocol=\"tcp\"}");
        let expected = if mode == "ebpf" {
            Some(if terminate { 4.0 } else { 0.0 })
        } else {
            Some(0.0)
        };
        assert_eq!(reset, expected, "{mode} terminate={terminate}");
    }
}
