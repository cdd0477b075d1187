//! The kernel suite: what the eBPF mode must do on every kernel it supports. `cargo xtask
//! test --kernels` runs it as root inside Debian's 5.10, 6.1 and 6.12 kernels booted in
//! qemu; the host tier runs it on the host's kernel too.
//!
//! Every assertion is about behaviour, never about time: under emulation everything is
//! 10-30x slower, so the harness scales its waits (`EBPF_PROXY_TIME_SCALE`). What a kernel
//! lacks is expected from its version, independently of the agent's own probes, so a
//! wrong probe fails here: without `bpf_set_retval` (before 5.18) a refused connect gets
//! EPERM, and without TCX (before 6.6) the tc programs are netlink filters.

use std::time::Duration;

use integration::{
    Agent, ClientLoop, SOCKET_PROGRAMS, Topology, attached_programs,
    flows_probe::FlowsProbe,
    manifests::{DNS, Endpoint, HTTP, Port, ServiceOpts, service_with_endpoints},
    require_privileges, scaled,
    two_nodes::{NODE_A_IP, NODE_A_IP6, TwoNodes},
};

const VIP: &str = "198.19.0.10";
const VIP6: &str = "2001:db8:19::a";

/// The running kernel's (major, minor).
fn kernel() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release.trim().split(['.', '-']);
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}

fn has_set_retval() -> bool {
    kernel() >= (5, 18)
}

fn has_tcx() -> bool {
    kernel() >= (6, 6)
}

/// Milliseconds for a probe's timeout, scaled.
fn timeout_ms() -> String {
    scaled(Duration::from_secs(3)).as_millis().to_string()
}

fn start(backends: usize, opts: &ServiceOpts, mode: &'static str) -> (Topology, Agent) {
    let t = Topology::new(backends);
    let mut agent = Agent::new(&t);
    agent.mode = mode;
    agent.write(
        "web.yaml",
        &service_with_endpoints("web", VIP, &[HTTP, DNS], opts, &t.ready_endpoints()),
    );
    agent.start();
    agent.wait_backends("demo/web:http", backends);
    wait_attached(&agent);
    (t, agent)
}

/// Waits until the agent has attached its socket programs (both families) and recorded
/// itself for `proxyctl status` (which it does once every program is attached, the tc
/// ones after the socket ones).
fn wait_attached(agent: &Agent) {
    agent.wait_for("the programs to attach", Duration::from_secs(10), |_| {
        agent
            .log()
            .matches("\"message\":\"socket program\"")
            .count()
            == SOCKET_PROGRAMS
            && !status(agent)["agent"].is_null()
    });
}

/// Connections to `to` from `client` in a loop (20 at a time, 5 ms apart), for traffic
/// that must not fail while the agent restarts.
fn connecting_loop<T: Send + Sync + 'static>(
    client: &std::sync::Arc<T>,
    probe: fn(&T, &[&str]) -> integration::Report,
    to: String,
) -> ClientLoop {
    let client = client.clone();
    ClientLoop::start(move || {
        probe(
            &client,
            &[
                "--to",
                &to,
                "--count",
                "20",
                "--interval-ms",
                "5",
                "--timeout-ms",
                &timeout_ms(),
            ],
        )
    })
}

/// `proxyctl status --json`, parsed.
fn status(agent: &Agent) -> serde_json::Value {
    let out = agent.proxyctl(&["status", "--json"]);
    assert!(out.status.success(), "proxyctl status: {out:?}");
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// Whether `proxyctl status` says the kernel has `feature`.
fn feature_present(status: &serde_json::Value, feature: &str) -> bool {
    status["kernel"]["features"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["name"] == feature))
        .unwrap_or_else(|| panic!("{feature} not reported: {status}"))["present"]
        .as_bool()
        .expect("present")
}

/// `share` of `n` within 5.3 standard deviations of `p`.
fn assert_share(what: &str, got: usize, n: usize, p: f64) {
    let (lo, hi) = integration::binomial_bounds(n, p);
    let got = got as f64;
    assert!(
        lo <= got && got <= hi,
        "{what}: {got} of {n}, expected within [{lo:.0}, {hi:.0}]"
    );
}

#[test]
fn socket_load_balancing_by_weight_tcp_and_udp_with_the_service_address_shown() {
    require_privileges!();
    let (t, _agent) = start(
        3,
        &ServiceOpts {
            weights: Some("web-0=3,web-1=1,web-2=0"),
            ..Default::default()
        },
        "ebpf",
    );
    let n = 400;
    let tcp = t.probe(&[
        "--to",
        &format!("{VIP}:80"),
        "--count",
        &n.to_string(),
        "--timeout-ms",
        &timeout_ms(),
    ]);
    assert!(tcp.errors.is_empty(), "no connection may fail: {tcp:?}");
    assert_eq!(tcp.count("web-2"), 0, "weight 0 gets nothing: {tcp:?}");
    assert_share("TCP to web-0 (weight 3 of 4)", tcp.count("web-0"), n, 0.75);
    // getpeername on the translated sockets: the Service, not the backend.
    assert_eq!(
        tcp.peers.keys().collect::<Vec<_>>(),
        [&format!("{VIP}:80")],
        "{tcp:?}"
    );
    // Unconnected UDP (sendmsg4 each datagram, recvmsg4 on each reply).
    let udp = t.probe(&[
        "--to",
        &format!("{VIP}:53"),
        "--count",
        &n.to_string(),
        "--unconnected",
        "--timeout-ms",
        &timeout_ms(),
    ]);
    assert!(
        udp.errors.is_empty(),
        "no datagram may go unanswered: {udp:?}"
    );
    assert_eq!(udp.count("web-2"), 0, "{udp:?}");
    assert_share("UDP to web-0 (weight 3 of 4)", udp.count("web-0"), n, 0.75);
    assert_eq!(
        udp.reply_sources.keys().collect::<Vec<_>>(),
        [&format!("{VIP}:53")],
        "replies come from the Service address: {udp:?}"
    );
}

/// The IPv6 socket programs on every kernel: a dual-stack Service (web-0 by IPv4, web-1 by
/// IPv6) reached over IPv6, over IPv4, and from an AF_INET6 socket by the IPv4-mapped
/// address, TCP and UDP, each time with the Service address shown; an IPv6 Service without
/// endpoints refused with the kernel's errno.
#[test]
fn both_families_and_the_mapped_address_are_balanced_and_refused_alike() {
    require_privileges!();
    let t = Topology::new(2);
    let mut agent = Agent::new(&t);
    let endpoints: Vec<Endpoint> = t
        .ready_endpoints()
        .into_iter()
        .take(1)
        .chain(t.ready_endpoints6().into_iter().skip(1))
        .collect();
    let dual = ServiceOpts {
        second_cluster_ip: Some(VIP6),
        ..Default::default()
    };
    agent.write(
        "web.yaml",
        &service_with_endpoints("web", VIP, &[HTTP, DNS], &dual, &endpoints),
    );
    agent.write(
        "empty.yaml",
        &service_with_endpoints(
            "empty",
            "2001:db8:19::e",
            &[HTTP],
            &ServiceOpts::default(),
            &[],
        ),
    );
    agent.start();
    agent.wait_frontend(&format!("[{VIP6}]:80"), 1);
    agent.wait_frontend(&format!("{VIP}:80"), 1);
    agent.wait_frontend("[2001:db8:19::e]:80", 0);
    wait_attached(&agent);
    for (to, backend) in [
        (format!("[{VIP6}]:80"), "web-1"),
        (format!("{VIP}:80"), "web-0"),
        (format!("[::ffff:{VIP}]:80"), "web-0"),
    ] {
        let tcp = t.probe(&["--to", &to, "--count", "20", "--timeout-ms", &timeout_ms()]);
        assert_eq!(tcp.count(backend), 20, "{to}: {tcp:?}");
        assert_eq!(tcp.peers.keys().collect::<Vec<_>>(), [&to], "{tcp:?}");
    }
    for (to, backend) in [
        (format!("[{VIP6}]:53"), "web-1"),
        (format!("[::ffff:{VIP}]:53"), "web-0"),
    ] {
        for mode in ["--unconnected", "--udp"] {
            let udp = t.probe(&[
                "--to",
                &to,
                "--count",
                "20",
                mode,
                "--timeout-ms",
                &timeout_ms(),
            ]);
            assert_eq!(udp.count(backend), 20, "{to} {mode}: {udp:?}");
            assert_eq!(
                udp.reply_sources.keys().collect::<Vec<_>>(),
                [&to],
                "{mode}: {udp:?}"
            );
        }
    }
    let errno = if has_set_retval() {
        "ECONNREFUSED"
    } else {
        "EPERM"
    };
    let refused = t.probe(&[
        "--to",
        "[2001:db8:19::e]:80",
        "--count",
        "3",
        "--timeout-ms",
        &timeout_ms(),
    ]);
    assert_eq!(refused.errors.get(errno), Some(&3), "{refused:?}");
}

#[test]
fn a_service_without_endpoints_is_refused_at_once_and_the_errno_is_the_kernels() {
    require_privileges!();
    let t = Topology::new(1);
    let mut agent = Agent::new(&t);
    agent.write(
        "web.yaml",
        &service_with_endpoints("web", VIP, &[HTTP, DNS], &ServiceOpts::default(), &[]),
    );
    agent.start();
    agent.wait_backends("demo/web:http", 0);
    wait_attached(&agent);
    // With bpf_set_retval (5.18) the programs answer ECONNREFUSED, as kube-proxy's
    // REJECT does; without it the kernel's answer to a refusal is EPERM.
    let errno = if has_set_retval() {
        "ECONNREFUSED"
    } else {
        "EPERM"
    };
    let tcp = t.probe(&[
        "--to",
        &format!("{VIP}:80"),
        "--count",
        "5",
        "--timeout-ms",
        &timeout_ms(),
    ]);
    assert_eq!(tcp.errors.get(errno), Some(&5), "{tcp:?}");
    let udp = t.probe(&[
        "--to",
        &format!("{VIP}:53"),
        "--count",
        "3",
        "--unconnected",
        "--timeout-ms",
        &timeout_ms(),
    ]);
    assert_eq!(udp.errors.get(errno), Some(&3), "{udp:?}");
    // The degradation is reported by name.
    let status = status(&agent);
    assert_eq!(
        feature_present(&status, "bpf_set_retval"),
        has_set_retval(),
        "{status}"
    );
    let log = agent.log();
    assert_eq!(
        log.contains("this kernel lacks bpf_set_retval"),
        !has_set_retval(),
        "{log}"
    );
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    require_privileges!();
    let (t, _agent) = start(
        4,
        &ServiceOpts {
            affinity_timeout: Some(3600),
            ..Default::default()
        },
        "ebpf",
    );
    let report = t.probe(&[
        "--to",
        &format!("{VIP}:80"),
        "--count",
        "40",
        "--timeout-ms",
        &timeout_ms(),
    ]);
    assert!(report.errors.is_empty(), "{report:?}");
    // Without affinity, 40 connections over 4 backends all landing on one has a chance
    // of 4^-39.
    assert_eq!(
        report.answers.len(),
        1,
        "one backend for the client: {report:?}"
    );
}

#[test]
fn auto_mode_chooses_ebpf_and_names_what_the_kernel_lacks() {
    require_privileges!();
    let (_t, agent) = start(1, &ServiceOpts::default(), "auto");
    let log = agent.log();
    assert!(
        log.contains("--mode auto: the eBPF datapath loads on this kernel"),
        "{log}"
    );
    let status = status(&agent);
    assert_eq!(status["mode"], "ebpf", "{status}");
    assert_eq!(feature_present(&status, "tcx_links"), has_tcx(), "{status}");
    assert_eq!(
        status["kernel"]["programs_not_loaded"],
        serde_json::json!([]),
        "every program loads on every supported kernel: {status}"
    );
}

#[test]
fn sigkill_and_restart_fail_no_connection_and_attach_nothing_twice() {
    require_privileges!();
    let (t, mut agent) = start(2, &ServiceOpts::default(), "ebpf");
    let t = std::sync::Arc::new(t);
    let before = attached_programs(&t.cgroup.path);
    assert_eq!(before.len(), SOCKET_PROGRAMS, "{before:?}");
    let client = connecting_loop(&t, Topology::probe, format!("{VIP}:80"));
    std::thread::sleep(scaled(Duration::from_millis(300)));
    agent.kill();
    std::thread::sleep(scaled(Duration::from_millis(300)));
    agent.start();
    agent.wait_for("the restart to adopt", Duration::from_secs(10), |_| {
        agent.log().matches("\"outcome\":\"Adopted\"").count() == SOCKET_PROGRAMS
    });
    std::thread::sleep(scaled(Duration::from_millis(300)));
    let (answered, errors) = client.finish();
    assert!(answered > 0, "the client loop connected");
    assert!(errors.is_empty(), "failed connections: {errors:?}");
    assert_eq!(
        attached_programs(&t.cgroup.path),
        before,
        "the same four programs, adopted, not attached again"
    );
}

const HTTP_NP: Port<'static> = Port {
    node_port: Some(30080),
    ..HTTP
};

/// The tc attachments the kernel holds, as (program, interface, program id): each
/// program once on each of the two interfaces, attached by `mechanism`.
fn tc_attachments(agent: &Agent, mechanism: &str) -> Vec<(String, String, u64)> {
    let status = status(agent);
    assert_eq!(status["kernel"]["tc_attach"], mechanism, "{status}");
    let tc: Vec<(String, String, u64)> = status["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .filter(|a| a["hook"].as_str().is_some_and(|h| h.starts_with("tc-")))
        .map(|a| {
            (
                a["program"].as_str().unwrap_or("").to_owned(),
                a["target"].as_str().unwrap_or("").to_owned(),
                a["program_id"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(tc.len(), 4, "each program once on each interface: {tc:?}");
    assert!(tc.iter().all(|a| a.2 != 0), "{tc:?}");
    tc
}

/// The agent for node-a with `--tc-attach MODE`, a NodePort Service to pod-b (on node-b),
/// started and attached.
fn nodeport_agent(t: &TwoNodes, tc_attach: &str) -> Agent {
    let mut agent = t.agent("ebpf");
    agent.extra_args.extend([
        "--interfaces".into(),
        "ext0,nb0".into(),
        "--tc-attach".into(),
        tc_attach.into(),
    ]);
    let pod_b = t.endpoints().into_iter().skip(1).collect::<Vec<_>>();
    agent.write(
        "web.yaml",
        &service_with_endpoints(
            "web",
            "198.19.0.30",
            &[HTTP_NP],
            &ServiceOpts {
                type_: Some("NodePort"),
                ..Default::default()
            },
            &pod_b,
        ),
    );
    agent.start();
    agent.wait_for("the tc programs to attach", Duration::from_secs(10), |_| {
        agent.log().matches("\"message\":\"tc program\"").count() == 4
    });
    agent
}

/// NodePort from outside the node with `--tc-attach MODE`, to pod-b on the other node
/// (so source NAT to node-a's address), through a SIGKILL and restart of the agent
/// (the tc programs replaced in place, none twice), then `--cleanup`.
fn nodeport_through_restart_then_cleanup(tc_attach: &str) {
    let t = std::sync::Arc::new(TwoNodes::new());
    let mut agent = nodeport_agent(&t, tc_attach);
    let tc_attached = |agent: &Agent, outcome: &str| {
        agent
            .log()
            .matches(&format!("\"outcome\":\"{outcome}\""))
            .count()
    };
    let mechanism = if tc_attach == "netlink" || !has_tcx() {
        "netlink"
    } else {
        "tcx"
    };
    let expect_attachments = |agent: &Agent| tc_attachments(agent, mechanism);
    let before = expect_attachments(&agent);

    let to = format!("{NODE_A_IP}:30080");
    let report = t.probe(&[
        "--to",
        &to,
        "--count",
        "20",
        "--ask-source",
        "--timeout-ms",
        &timeout_ms(),
    ]);
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(
        report.answers.keys().collect::<Vec<_>>(),
        ["pod-b saw 198.18.101.1"],
        "pod-b on node-b sees node-a's address (source NAT): {report:?}"
    );

    let client = connecting_loop(&t, TwoNodes::probe, to.clone());
    std::thread::sleep(scaled(Duration::from_millis(300)));
    agent.kill();
    std::thread::sleep(scaled(Duration::from_millis(300)));
    let replaced_before = tc_attached(&agent, "Replaced");
    agent.start();
    agent.wait_for(
        "the tc programs to be replaced",
        Duration::from_secs(10),
        |_| tc_attached(&agent, "Replaced") == replaced_before + 4,
    );
    std::thread::sleep(scaled(Duration::from_millis(300)));
    let (answered, errors) = client.finish();
    assert!(answered > 0, "the client loop connected");
    assert!(
        errors.is_empty(),
        "failed connections from outside: {errors:?}"
    );
    let after = expect_attachments(&agent);
    let places = |tc: &[(String, String, u64)]| {
        tc.iter()
            .map(|a| (a.0.clone(), a.1.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        places(&after),
        places(&before),
        "replaced in place: the same hooks, none twice"
    );

    agent.stop();
    let out = agent.cleanup_command().output().expect("cleanup");
    assert!(out.status.success(), "{out:?}");
    assert!(!agent.bpffs.exists(), "the pin directory is gone");
    assert!(
        attached_programs(&t.cgroup.path).is_empty(),
        "no program left on the cgroup"
    );
    for interface in ["ext0", "nb0"] {
        for direction in ["ingress", "egress"] {
            let out = t
                .node_a
                .command("tc", None)
                .args(["filter", "show", "dev", interface, direction])
                .output()
                .expect("tc filter show");
            let filters = String::from_utf8_lossy(&out.stdout);
            assert!(
                !filters.contains("epx_"),
                "no filter left on {interface} {direction}: {filters}"
            );
        }
    }
    // Nothing holds the tc programs any more (no TCX link, no filter): the kernel
    // frees them.
    let gone = |id: u64| {
        !std::process::Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string()])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let deadline = std::time::Instant::now() + scaled(Duration::from_secs(10));
    while !after.iter().all(|a| gone(a.2)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<_> = after.iter().filter(|a| !gone(a.2)).collect();
    assert!(left.is_empty(), "tc programs still loaded: {left:?}");
}

#[test]
fn nodeport_from_outside_as_the_kernel_allows() {
    require_privileges!();
    nodeport_through_restart_then_cleanup("auto");
}

#[test]
fn nodeport_from_outside_through_netlink_filters() {
    require_privileges!();
    nodeport_through_restart_then_cleanup("netlink");
}

/// IPv6 from outside the node on every kernel: a NodePort on node-a's IPv6 address to
/// both pods (pod-b's flows source-NATed to node-a's IPv6 address, pod-a's keeping the
/// client's), and an IPv6 NodePort without endpoints answered with a TCP reset and an
/// ICMPv6 port unreachable: the IPv6 path of the tc programs (route lookups with
/// AF_INET6, checksums over 128-bit addresses, synthesized answers) on this kernel.
#[test]
fn ipv6_nodeport_from_outside() {
    require_privileges!();
    let t = TwoNodes::new();
    let mut agent = t.agent_dual_stack("ebpf");
    agent
        .extra_args
        .extend(["--interfaces".into(), "ext0,nb0".into()]);
    let node_port = |port| Port {
        node_port: Some(port),
        ..HTTP
    };
    let opts = ServiceOpts {
        type_: Some("NodePort"),
        ..Default::default()
    };
    let yaml = [
        service_with_endpoints(
            "web",
            "2001:db8:19::30",
            &[node_port(30080)],
            &opts,
            &t.endpoints6(),
        ),
        service_with_endpoints(
            "empty",
            "2001:db8:19::31",
            &[
                node_port(30081),
                Port {
                    node_port: Some(30053),
                    ..DNS
                },
            ],
            &opts,
            &[],
        ),
    ]
    .join("---\n");
    agent.write("web.yaml", &yaml);
    agent.start();
    agent.wait_for("the tc programs to attach", Duration::from_secs(10), |_| {
        agent.log().matches("\"message\":\"tc program\"").count() == 4
    });
    let report = t.probe(&[
        "--to",
        &format!("[{NODE_A_IP6}]:30080"),
        "--count",
        "20",
        "--ask-source",
        "--timeout-ms",
        &timeout_ms(),
    ]);
    assert_eq!(
        report.answers.values().sum::<usize>(),
        20,
        "{report:?}\n{}",
        agent.log()
    );
    for answer in report.answers.keys() {
        let expected = if answer.starts_with("pod-b") {
            "pod-b saw 2001:db8:18:101::1"
        } else {
            "pod-a saw 2001:db8:18:100::2"
        };
        assert_eq!(answer, expected, "{report:?}");
    }
    let tcp = t.probe(&[
        "--to",
        &format!("[{NODE_A_IP6}]:30081"),
        "--count",
        "2",
        "--timeout-ms",
        &timeout_ms(),
    ]);
    assert_eq!(tcp.errors.get("ECONNREFUSED"), Some(&2), "{tcp:?}");
    let udp = t.probe(&[
        "--to",
        &format!("[{NODE_A_IP6}]:30053"),
        "--udp",
        "--count",
        "2",
        "--timeout-ms",
        &timeout_ms(),
    ]);
    assert_eq!(udp.errors.get("ECONNREFUSED"), Some(&2), "{udp:?}");
}

/// A kernel without what the tc programs need (shown here with `--assume-missing`, which
/// makes the probe's answer the agent's): only traffic from outside the node is lost,
/// named as such; the socket load balancer serves.
#[test]
fn a_kernel_without_the_tc_helpers_loses_only_traffic_from_outside() {
    require_privileges!();
    let t = Topology::new(1);
    let mut agent = Agent::new(&t);
    agent.extra_args.extend([
        "--interfaces".into(),
        "vb0".into(),
        "--assume-missing".into(),
        "bpf_redirect_neigh".into(),
    ]);
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
    wait_attached(&agent);
    let report = t.probe(&[
        "--to",
        &format!("{VIP}:80"),
        "--count",
        "10",
        "--timeout-ms",
        &timeout_ms(),
    ]);
    assert_eq!(report.count("web-0"), 10, "{report:?}");
    let status = status(&agent);
    assert_eq!(status["kernel"]["tc_attach"], "none", "{status}");
    assert_eq!(
        status["kernel"]["programs_not_loaded"],
        serde_json::json!(["epx_tc_ingress", "epx_tc_egress"]),
        "{status}"
    );
    assert!(
        status["kernel"]["load_error"]
            .as_str()
            .is_some_and(|e| e.contains("bpf_redirect_neigh (Linux 5.10)")),
        "{status}"
    );
    let text = agent.proxyctl(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("traffic from outside the node: NOT LOADED"),
        "{text}"
    );
    assert_eq!(
        agent.metric("ebpf_proxy_program_loaded{program=\"epx_tc_ingress\"}"),
        Some(0.0)
    );
    assert_eq!(
        agent.metric("ebpf_proxy_program_loaded{program=\"epx_connect4\"}"),
        Some(1.0)
    );
}

/// `--mode auto` on a kernel whose socket programs cannot load (shown with
/// `--assume-missing bpf_get_netns_cookie`, which connect4 calls): iptables, and the
/// log says why, by name.
#[test]
fn auto_mode_falls_back_to_iptables_only_when_the_socket_programs_cannot_load() {
    require_privileges!();
    let t = Topology::new(1);
    let mut agent = Agent::new(&t);
    agent.mode = "auto";
    agent
        .extra_args
        .extend(["--assume-missing".into(), "bpf_get_netns_cookie".into()]);
    agent.start();
    agent.wait_for("the choice of mode", Duration::from_secs(10), |_| {
        agent.log().contains("falling back to iptables")
    });
    let log = agent.log();
    assert!(
        log.contains("this kernel lacks bpf_get_netns_cookie (Linux 5.7)"),
        "{log}"
    );
    assert!(
        !agent.bpffs.exists(),
        "nothing of the eBPF mode was created or pinned"
    );
}

/// Restarting with the other attachment (`--tc-attach netlink`, then `auto`: TCX where
/// the kernel has it) leaves one attachment per program and interface, never both.
#[test]
fn switching_between_netlink_filters_and_tcx_leaves_one_attachment() {
    require_privileges!();
    let t = TwoNodes::new();
    let mut agent = nodeport_agent(&t, "netlink");
    tc_attachments(&agent, "netlink");
    agent.stop();
    agent.extra_args.retain(|a| a != "netlink");
    agent.extra_args.push("auto".into());
    agent.start();
    agent.wait_for(
        "the tc programs to attach again",
        Duration::from_secs(10),
        |_| agent.log().matches("\"message\":\"tc program\"").count() == 8,
    );
    let auto = if has_tcx() { "tcx" } else { "netlink" };
    tc_attachments(&agent, auto);
    let report = t.probe(&[
        "--to",
        &format!("{NODE_A_IP}:30080"),
        "--count",
        "10",
        "--timeout-ms",
        &timeout_ms(),
    ]);
    assert_eq!(report.count("pod-b"), 10, "{report:?}");
}

/// Entries of the reverse-translation LRU, as `proxyctl status` counts them.
fn revnat_entries(agent: &Agent) -> u64 {
    let status = status(agent);
    status["maps"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|m| m["map"] == proxy_common::names::MAP_REVNAT)
        })
        .and_then(|m| m["entries"].as_u64())
        .unwrap_or_else(|| panic!("no {} in {status}", proxy_common::names::MAP_REVNAT))
}

/// TCP, connected UDP and unconnected UDP through the Service: every peer and reply
/// source is the Service address.
fn the_service_address_is_shown(t: &Topology, n: usize) {
    for (port, mode) in [
        ("80", None),
        ("53", Some("--udp")),
        ("53", Some("--unconnected")),
    ] {
        let to = format!("{VIP}:{port}");
        let count = n.to_string();
        let timeout = timeout_ms();
        let mut args = vec!["--to", &to, "--count", &count, "--timeout-ms", &timeout];
        args.extend(mode);
        let report = t.probe(&args);
        assert!(report.errors.is_empty(), "{mode:?}: {report:?}");
        if mode != Some("--unconnected") {
            assert_eq!(
                report.peers.keys().collect::<Vec<_>>(),
                [&to],
                "{mode:?}: {report:?}"
            );
        }
        if mode.is_some() {
            assert_eq!(
                report.reply_sources.keys().collect::<Vec<_>>(),
                [&to],
                "{mode:?}: {report:?}"
            );
        }
    }
}

/// connect4 keeps its translation off the shared LRU (TCP in the ring, connected UDP on
/// the socket), which only unconnected sends fill (once per socket and backend). Where the
/// kernel lacks socket-local storage (shown with `--assume-missing bpf_sk_storage_get`),
/// the `_lru` variants keep connected UDP's translations there too, as layout 1 did, and
/// status says so.
#[test]
fn connected_sockets_keep_their_translation_on_the_socket_or_in_the_lru_without_it() {
    require_privileges!();
    let n = 30;
    let (t, agent) = start(2, &ServiceOpts::default(), "ebpf");
    assert!(feature_present(&status(&agent), "bpf_sk_storage_get"));
    the_service_address_is_shown(&t, n);
    // Only the unconnected exchanges (one socket each) are in the LRU.
    assert_eq!(revnat_entries(&agent), n as u64);
    drop(agent);
    drop(t);

    let t = Topology::new(2);
    let mut agent = Agent::new(&t);
    agent
        .extra_args
        .extend(["--assume-missing".into(), "bpf_sk_storage_get".into()]);
    agent.write(
        "web.yaml",
        &service_with_endpoints(
            "web",
            VIP,
            &[HTTP, DNS],
            &ServiceOpts::default(),
            &t.ready_endpoints(),
        ),
    );
    agent.start();
    agent.wait_backends("demo/web:http", 2);
    wait_attached(&agent);
    let status = status(&agent);
    assert!(!feature_present(&status, "bpf_sk_storage_get"), "{status}");
    the_service_address_is_shown(&t, n);
    // Connected and unconnected UDP; TCP keeps its translation in the ring everywhere.
    assert_eq!(revnat_entries(&agent), 2 * n as u64);
    let text = agent.proxyctl(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("bpf_sk_storage_get (Linux 5.3) missing"),
        "{text}"
    );
}

/// UDP flows on this kernel: one unconnected socket's datagrams stay on one backend; and
/// when the backend every connected socket was given leaves the Service, each socket is
/// destroyed (its next call fails; reconnected, it reaches the live backend) within a
/// second, while unconnected ones move at once. The agent finds the sockets through
/// sock_diag and destroys them with SOCK_DESTROY, which every kernel here has.
#[test]
fn udp_flows_stick_and_no_connected_socket_is_stranded() {
    require_privileges!();
    let t = Topology::new(2);
    let mut agent = Agent::new(&t);
    let only = |i: usize| {
        service_with_endpoints(
            "web",
            VIP,
            &[DNS],
            &ServiceOpts::default(),
            &t.ready_endpoints()[i..=i],
        )
    };
    agent.write("web.yaml", &only(0));
    agent.start();
    agent.wait_backends("demo/web:dns", 1);
    wait_attached(&agent);
    let to = format!("{VIP}:53");
    let timeout = timeout_ms();
    let args = [
        "--sockets",
        "3",
        "--rounds",
        "3",
        "--interval-ms",
        "300",
        "--timeout-ms",
        &timeout,
    ];
    let connected: Vec<&str> = args.iter().copied().chain(["--connected"]).collect();
    let probe = || t.client.command(FlowsProbe::program(), Some(&t.cgroup));
    let all = [
        FlowsProbe::start(probe(), &to, &connected),
        FlowsProbe::start(probe(), &to, &args),
    ];
    agent.write("web.yaml", &only(1));
    agent.wait_for("web-1 alone", Duration::from_secs(10), |s| {
        s.as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["service"] == "demo/web:dns"
                    && r["backends"].as_array().is_some_and(|b| {
                        b.len() == 1 && b[0]["address"] == format!("{}:5353", t.backends[1].ip)
                    })
            })
        })
    });
    std::thread::sleep(scaled(Duration::from_secs(1)));
    for flows in &all {
        flows.resume();
    }
    for flows in all {
        let (label, rounds) = flows.finish();
        let connected = label.contains("--connected");
        assert!(
            rounds[0].iter().all(|x| x == "web-0"),
            "{label}: {rounds:?}"
        );
        for x in &rounds[1] {
            let ok = if connected {
                x == "ECONNABORTED" || x == "EDESTADDRREQ"
            } else {
                x == "web-1"
            };
            assert!(
                ok,
                "{label}: round 1: {rounds:?}\nagent log:\n{}",
                agent.log()
            );
        }
        assert!(
            rounds[2].iter().all(|x| x == "web-1"),
            "{label}: {rounds:?}"
        );
    }
    // Both backends: one socket's 20 datagrams still reach one (by chance: 2 x 2^-20).
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
    agent.wait_backends("demo/web:dns", 2);
    let report = t.probe(&[
        "--to",
        &to,
        "--one-socket",
        "--count",
        "20",
        "--timeout-ms",
        &timeout,
    ]);
    assert_eq!(report.answers.values().sum::<usize>(), 20, "{report:?}");
    assert_eq!(
        report.answers.len(),
        1,
        "one socket, one backend: {report:?}"
    );
}
