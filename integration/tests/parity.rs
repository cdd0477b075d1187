//! One scenario suite, run in both modes: the eBPF socket programs and the iptables
//! fallback (kube-proxy's chains) give a client on the node the same outcomes for the same
//! Services. Each scenario is a function of the mode and the address family;
//! `in_every_mode!` makes one test of it per mode and iptables backend (`ebpf::<scenario>`,
//! `iptables::<scenario>` on nf_tables, `iptables_legacy::<scenario>`) and family (IPv4
//! there, IPv6 in `<mode>::ipv6::<scenario>`: an IPv6 Service on the backends' IPv6
//! addresses, ip6tables in iptables mode). The dual-stack scenarios take the mode alone.
//!
//! Where the modes differ by construction, the scenario asserts the difference, so that
//! the list in the README stays true:
//! - hairpin: a pod reaching itself through its Service is masqueraded by iptables (it
//!   sees the node's address); the socket program connects it to itself directly;
//! - a Local policy without a local endpoint: iptables DROPs (the client times out), the
//!   socket program refuses the connect at once.
//!
//! The test's client namespace plays the node: the agent and its rules live there, the
//! node address (198.18.0.100, or 2001:db8:18::100 for IPv6) is on its loopback, and each
//! backend namespace hangs off it.

use std::{collections::BTreeSet, time::Duration};

use integration::{
    Agent, BackendHost, Report, Topology, bin_dir,
    manifests::{DNS, Endpoint, HTTP, Port, ServiceOpts, service_with_endpoints},
    run,
};

const NODE: &str = "node-a";
const NODE_IP: &str = "198.18.0.100";
const NODE_IP6: &str = "2001:db8:18::100";
const VIP: &str = "198.19.0.10";
const VIP6: &str = "2001:db8:19::a";

/// The family of a scenario's Service, its node address and its endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    fn vip(self) -> &'static str {
        match self {
            Family::Ipv4 => VIP,
            Family::Ipv6 => VIP6,
        }
    }

    fn node_ip(self) -> &'static str {
        match self {
            Family::Ipv4 => NODE_IP,
            Family::Ipv6 => NODE_IP6,
        }
    }

    /// A backend's address in this family.
    fn ip(self, backend: &BackendHost) -> &str {
        match self {
            Family::Ipv4 => &backend.ip,
            Family::Ipv6 => &backend.ip6,
        }
    }

    /// The client's end of the first backend's link: what iptables mode masquerades
    /// hairpin traffic to.
    fn first_link_peer(self) -> &'static str {
        match self {
            Family::Ipv4 => "198.18.1.1",
            Family::Ipv6 => "2001:db8:18:1::1",
        }
    }
}

/// Every backend of `t` as a ready endpoint, by its address in `family`.
fn ready_endpoints(t: &Topology, family: Family) -> Vec<Endpoint<'_>> {
    match family {
        Family::Ipv4 => t.ready_endpoints(),
        Family::Ipv6 => t.ready_endpoints6(),
    }
}

/// `ip:port` as a socket address is written (`[v6]:port`).
fn host_port(ip: &str, port: u16) -> String {
    match ip.contains(':') {
        true => format!("[{ip}]:{port}"),
        false => format!("{ip}:{port}"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ebpf,
    /// iptables mode on the nf_tables backend.
    Iptables,
    /// iptables mode on the legacy (x_tables) backend.
    IptablesLegacy,
}

/// The node: topology, agent in `mode`, and its Node object.
/// Fields drop in order: the agent (and its cleanup inside the namespace) before the
/// namespaces.
struct Node {
    agent: Agent,
    t: Topology,
    mode: Mode,
    family: Family,
}

impl Node {
    fn new(mode: Mode, family: Family, backends: usize) -> Self {
        let t = Topology::new(backends);
        t.route_service_range();
        let node_ip = family.node_ip();
        let host = match family {
            Family::Ipv4 => format!("{node_ip}/32"),
            Family::Ipv6 => format!("{node_ip}/128"),
        };
        t.client.ip(&["addr", "add", &host, "dev", "lo"]);
        // A node forwards (hairpin traffic comes back through it in iptables mode).
        run(t.client.command("sysctl", None).args([
            "-qw",
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
        ]));
        let mut agent = Agent::new(&t);
        agent.mode = match mode {
            Mode::Ebpf => "ebpf",
            Mode::Iptables | Mode::IptablesLegacy => "iptables",
        };
        let backend = match mode {
            Mode::IptablesLegacy => "legacy",
            _ => "nft",
        };
        agent.extra_args = vec![
            "--node-name".into(),
            NODE.into(),
            "--iptables-backend".into(),
            backend.into(),
        ];
        agent.write(
            "node.yaml",
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE}}}\nstatus: {{addresses: [{{type: InternalIP, address: \"{node_ip}\"}}]}}\n"
            ),
        );
        // Each backend reached once, directly: on a link just made, the first IPv6
        // neighbour solicitation can be lost and retried a second later, which would
        // outlast a scenario's one-second affinity timeout.
        for b in &t.backends {
            let direct = host_port(family.ip(b), 8080);
            let report = t.probe(&["--to", &direct, "--count", "1", "--timeout-ms", "3000"]);
            assert_eq!(report.count(&b.name), 1, "{direct}: {report:?}");
        }
        Self {
            agent,
            t,
            mode,
            family,
        }
    }

    /// The Service's address and `port`, as `probe --to` takes it.
    fn vip(&self, port: u16) -> String {
        host_port(self.family.vip(), port)
    }

    /// demo/web at the family's ClusterIP.
    fn web(&self, opts: &ServiceOpts, ports: &[Port], endpoints: &[Endpoint]) -> String {
        service_with_endpoints("web", self.family.vip(), ports, opts, endpoints)
    }

    /// Waits until connections to `to` reach exactly `expected` (an update applied).
    fn wait_reached(&self, to: &str, expected: &[&str]) {
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let report = self.probe(&["--to", to, "--count", "30"]);
            if report.errors.is_empty() && report.answers.keys().eq(expected.iter()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{:?}: {to} never reached exactly {expected:?}; last: {:?}\n{}",
            self.mode,
            self.probe(&["--to", to, "--count", "30"]),
            self.agent.log()
        );
    }

    fn probe(&self, args: &[&str]) -> Report {
        self.t.probe(args)
    }

    /// The backends 60 connections to `to` reach; every one must succeed.
    fn reached(&self, to: &str) -> Vec<String> {
        let report = self.probe(&["--to", to, "--count", "60"]);
        assert!(
            report.errors.is_empty(),
            "{:?} {to}: {report:?}\n{}",
            self.mode,
            self.agent.log()
        );
        report.answers.into_keys().collect()
    }
}

/// Writes `web.yaml` and starts the agent if it is not running, then waits until
/// `service` lists `backends` backends (`proxyctl services`, in either mode).
fn serve(agent: &mut Agent, yaml: &str, service: &str, backends: usize) {
    agent.write("web.yaml", yaml);
    if !agent.running() {
        agent.start();
    }
    agent.wait_backends(service, backends);
}

fn backends_reached_and_the_peer_is_the_service(mode: Mode, family: Family) {
    let mut node = Node::new(mode, family, 3);
    let eps = ready_endpoints(&node.t, family);
    let yaml = node.web(&ServiceOpts::default(), &[HTTP, DNS], &eps);
    serve(&mut node.agent, &yaml, "demo/web:http", 3);
    let to = node.vip(80);
    assert_eq!(node.reached(&to), ["web-0", "web-1", "web-2"]);
    let report = node.probe(&["--to", &to, "--count", "5"]);
    assert_eq!(
        report.peers.keys().collect::<Vec<_>>(),
        [&to],
        "getpeername shows the ClusterIP"
    );

    // An endpoint removed: new connections stop reaching it.
    let yaml = node.web(&ServiceOpts::default(), &[HTTP, DNS], &eps[1..]);
    serve(&mut node.agent, &yaml, "demo/web:http", 2);
    assert_eq!(node.reached(&to), ["web-1", "web-2"]);
}

fn weight_shares(mode: Mode, family: Family) {
    let mut node = Node::new(mode, family, 3);
    let eps = ready_endpoints(&node.t, family);
    let opts = ServiceOpts {
        weights: Some("web-0=3,web-1=1,web-2=0"),
        ..Default::default()
    };
    // The weight-0 endpoint: listed with weight 0 in the maps; no rule at all in iptables.
    let listed = match mode {
        Mode::Ebpf => 3,
        Mode::Iptables | Mode::IptablesLegacy => 2,
    };
    let yaml = node.web(&opts, &[HTTP], &eps);
    serve(&mut node.agent, &yaml, "demo/web:http", listed);
    let n = 4_000;
    let report = node.probe(&["--to", &node.vip(80), "--count", &n.to_string()]);
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.count("web-2"), 0, "weight 0 takes no new connection");
    let (lo, hi) = integration::binomial_bounds(n, 0.75);
    let got = report.count("web-0") as f64;
    assert!(
        lo <= got && got <= hi,
        "web-0 got {got} of {n}, expected [{lo:.0}, {hi:.0}]"
    );
}

fn udp_replies_come_from_the_service_ip(mode: Mode, family: Family) {
    let mut node = Node::new(mode, family, 2);
    let eps = ready_endpoints(&node.t, family);
    let yaml = node.web(&ServiceOpts::default(), &[HTTP, DNS], &eps);
    serve(&mut node.agent, &yaml, "demo/web:dns", 2);
    let to = node.vip(53);
    let unconnected = node.probe(&["--to", &to, "--count", "30", "--unconnected"]);
    assert_eq!(
        unconnected.answers.values().sum::<usize>(),
        30,
        "{unconnected:?}"
    );
    assert_eq!(
        unconnected.reply_sources.keys().collect::<Vec<_>>(),
        [&to],
        "recvfrom shows the ClusterIP"
    );
    let connected = node.probe(&["--to", &to, "--count", "30", "--udp"]);
    assert_eq!(
        connected.answers.values().sum::<usize>(),
        30,
        "{connected:?}"
    );
}

fn affinity_sticks_then_expires(mode: Mode, family: Family) {
    let mut node = Node::new(mode, family, 5);
    let eps = ready_endpoints(&node.t, family);
    let opts = ServiceOpts {
        affinity_timeout: Some(1),
        ..Default::default()
    };
    let yaml = node.web(&opts, &[HTTP], &eps);
    serve(&mut node.agent, &yaml, "demo/web:http", 5);
    let to = node.vip(80);
    let burst = node.probe(&["--to", &to, "--count", "30"]);
    assert_eq!(
        burst.answers.len(),
        1,
        "one backend within the timeout: {burst:?}"
    );
    // proxyctl shows the entry: this client, that backend, live.
    let out = node
        .agent
        .proxyctl(&["affinity", "--service", "demo/web", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("affinity json");
    let chosen = burst.answers.keys().next().cloned().unwrap_or_default();
    let index: usize = chosen.trim_start_matches("web-").parse().expect("web-N");
    assert_eq!(rows.as_array().map(Vec::len), Some(1), "{rows}");
    assert_eq!(
        rows[0]["backend"],
        host_port(family.ip(&node.t.backends[index]), 8080),
        "{rows}"
    );
    assert_eq!(rows[0]["live"], true, "{rows}");
    assert_eq!(rows[0]["timeout_seconds"], 1, "{rows}");
    // lookup --client names the backend that client's next connection goes to.
    let client = rows[0]["client"].as_str().unwrap_or_default().to_owned();
    let out = node
        .agent
        .proxyctl(&["lookup", &to, "--client", &client, "--json"]);
    let lookup: serde_json::Value = serde_json::from_slice(&out.stdout).expect("lookup json");
    assert_eq!(
        lookup["affinity"][0]["backend"], rows[0]["backend"],
        "{lookup}"
    );
    assert_eq!(
        lookup["frontends"][0]["service"], "demo/web:http",
        "{lookup}"
    );
    // After the timeout each connection is a new choice among five: eight choices all
    // alike has probability 5 * 5^-8 = 1.3e-5.
    let mut chosen = BTreeSet::new();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(1_300));
        let report = node.probe(&["--to", &to, "--count", "1"]);
        chosen.extend(report.answers.into_keys());
    }
    assert!(chosen.len() >= 2, "affinity never expired: {chosen:?}");
}

fn no_endpoints_are_refused(mode: Mode, family: Family) {
    let mut node = Node::new(mode, family, 1);
    let yaml = node.web(&ServiceOpts::default(), &[HTTP], &[]);
    serve(&mut node.agent, &yaml, "demo/web:http", 0);
    let report = node.probe(&[
        "--to",
        &node.vip(80),
        "--count",
        "3",
        "--timeout-ms",
        "5000",
    ]);
    assert_eq!(
        report.errors.get("ECONNREFUSED"),
        Some(&3),
        "refused at once (iptables: REJECT): {report:?}"
    );
    // proxyctl counts them by reason, from the datapath's events or the REJECT rule's
    // packet counter.
    let out = node.agent.proxyctl(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
    let rejected = stats["reasons"]
        .as_array()
        .and_then(|r| r.iter().find(|e| e[0] == "rejected_no_endpoint"))
        .and_then(|e| e[1].as_u64());
    // The difference: the rule counts packets. Over IPv6 a refused connect is two of them:
    // the ICMPv6 error to the first SYN reaches the client while its connect() still
    // holds the socket, which IPv6 TCP keeps as a soft error, and the SYN's retransmission
    // is refused. The socket program counts connects.
    let expected = match (mode, family) {
        (Mode::Iptables | Mode::IptablesLegacy, Family::Ipv6) => 3..=6,
        _ => 3..=3,
    };
    assert!(
        rejected.is_some_and(|r| expected.contains(&r)),
        "rejected_no_endpoint {rejected:?}, expected {expected:?}: {stats}"
    );
    assert_eq!(
        stats["frontends"][0]["no_endpoint"],
        rejected.unwrap_or(0),
        "{stats}"
    );
}

/// One endpoint per backend host with conditions (ready, serving, terminating) and node,
/// by its address in `family`.
fn endpoints_with<'a>(
    t: &'a Topology,
    family: Family,
    conditions: &[(bool, bool, bool, &'a str)],
) -> Vec<Endpoint<'a>> {
    t.backends
        .iter()
        .zip(conditions)
        .map(|(b, (ready, serving, terminating, on))| Endpoint {
            ready: *ready,
            serving: *serving,
            terminating: *terminating,
            node: Some(on),
            ..Endpoint::ready(family.ip(b), &b.name)
        })
        .collect()
}

fn terminating_endpoints_serve_when_none_is_ready(mode: Mode, family: Family) {
    let mut node = Node::new(mode, family, 3);
    let eps = endpoints_with(
        &node.t,
        family,
        &[
            (false, false, true, NODE),
            (false, true, true, "node-b"),
            (false, false, false, "node-b"),
        ],
    );
    let yaml = node.web(&ServiceOpts::default(), &[HTTP], &eps);
    serve(&mut node.agent, &yaml, "demo/web:http", 1);
    assert_eq!(node.reached(&node.vip(80)), ["web-1"]);
    let eps = endpoints_with(
        &node.t,
        family,
        &[
            (true, true, false, NODE),
            (false, true, true, "node-b"),
            (false, false, false, "node-b"),
        ],
    );
    let yaml = node.web(&ServiceOpts::default(), &[HTTP], &eps);
    node.agent.write("web.yaml", &yaml);
    node.wait_reached(&node.vip(80), &["web-0"]);
}

fn internal_traffic_policy_local(mode: Mode, family: Family) {
    let mut node = Node::new(mode, family, 3);
    let opts = ServiceOpts {
        spec_extra: "  internalTrafficPolicy: Local\n",
        ..Default::default()
    };
    let eps = endpoints_with(
        &node.t,
        family,
        &[
            (true, true, false, NODE),
            (true, true, false, NODE),
            (true, true, false, "node-b"),
        ],
    );
    let yaml = node.web(&opts, &[HTTP], &eps);
    serve(&mut node.agent, &yaml, "demo/web:http", 2);
    assert_eq!(
        node.reached(&node.vip(80)),
        ["web-0", "web-1"],
        "only this node's endpoints"
    );

    let eps = endpoints_with(
        &node.t,
        family,
        &[
            (false, false, true, NODE),
            (false, false, true, NODE),
            (true, true, false, "node-b"),
        ],
    );
    let yaml = node.web(&opts, &[HTTP], &eps);
    serve(&mut node.agent, &yaml, "demo/web:http", 0);
    let report = node.probe(&[
        "--to",
        &node.vip(80),
        "--count",
        "2",
        "--timeout-ms",
        "1000",
    ]);
    // The difference: kube-proxy DROPs ("has no local endpoints"), so the client waits;
    // the socket program can refuse the connect itself.
    let expected = match mode {
        Mode::Ebpf => "ECONNREFUSED",
        Mode::Iptables | Mode::IptablesLegacy => "ETIMEDOUT",
    };
    assert_eq!(report.errors.get(expected), Some(&2), "{report:?}");
}

fn node_port_external_ip_and_load_balancer_from_the_node(mode: Mode, family: Family) {
    let mut node = Node::new(mode, family, 2);
    let (external_ip, lb_ip) = match family {
        Family::Ipv4 => ("198.19.5.5", "198.19.6.6"),
        Family::Ipv6 => ("2001:db8:19::5:5", "2001:db8:19::6:6"),
    };
    let spec_extra =
        format!("  externalIPs: [\"{external_ip}\"]\n  externalTrafficPolicy: Local\n");
    let status = format!("status: {{loadBalancer: {{ingress: [{{ip: \"{lb_ip}\"}}]}}}}\n");
    let opts = ServiceOpts {
        type_: Some("LoadBalancer"),
        spec_extra: &spec_extra,
        status: &status,
        ..Default::default()
    };
    let http = Port {
        node_port: Some(30080),
        ..HTTP
    };
    // One endpoint on this node, one elsewhere: externalTrafficPolicy Local narrows
    // traffic from outside the node only, not the node's own connections.
    let eps = endpoints_with(
        &node.t,
        family,
        &[(true, true, false, NODE), (true, true, false, "node-b")],
    );
    let yaml = node.web(&opts, &[http], &eps);
    serve(&mut node.agent, &yaml, "demo/web:http", 2);
    for to in [
        node.vip(80),
        host_port(family.node_ip(), 30080),
        host_port(external_ip, 80),
        host_port(lb_ip, 80),
    ] {
        assert_eq!(node.reached(&to), ["web-0", "web-1"], "{to}");
    }
}

fn hairpin(mode: Mode, family: Family) {
    let mut node = Node::new(mode, family, 2);
    let eps = ready_endpoints(&node.t, family);
    let yaml = node.web(&ServiceOpts::default(), &[HTTP], &eps[..1]);
    serve(&mut node.agent, &yaml, "demo/web:http", 1);
    // web-0 reaches its own Service, which has only web-0 behind it.
    let out = run(node.t.backends[0]
        .netns
        .command(bin_dir().join("probe"), Some(&node.t.cgroup))
        .args(["connect", "--to", &node.vip(80), "--ask-source"]));
    let report: Report = serde_json::from_str(&out).expect("probe report");
    // The difference: kube-proxy masquerades hairpin traffic (KUBE-SEP's `-s <endpoint>
    // -j KUBE-MARK-MASQ`), so the pod sees the node's address on its link; the socket
    // program connects the pod to itself, with its own address.
    let saw = match mode {
        Mode::Ebpf => family.ip(&node.t.backends[0]),
        Mode::Iptables | Mode::IptablesLegacy => family.first_link_peer(),
    };
    assert_eq!(
        report.answers.keys().collect::<Vec<_>>(),
        [&format!("web-0 saw {saw}")],
        "{report:?}"
    );
}

/// demo/web, dual-stack (198.19.0.10 and 2001:db8:19::a), on three backends whose
/// families differ: web-0 and web-1 by IPv4, web-1 and web-2 by IPv6. Which backend
/// answers tells which family's endpoints were used.
fn dual_stack_node(mode: Mode) -> Node {
    let mut node = Node::new(mode, Family::Ipv4, 3);
    let endpoints: Vec<Endpoint> = node
        .t
        .ready_endpoints()
        .into_iter()
        .take(2)
        .chain(node.t.ready_endpoints6().into_iter().skip(1))
        .collect();
    let opts = ServiceOpts {
        second_cluster_ip: Some(VIP6),
        ..Default::default()
    };
    let yaml = service_with_endpoints("web", VIP, &[HTTP, DNS], &opts, &endpoints);
    node.agent.write("web.yaml", &yaml);
    node.agent.start();
    for frontend in [
        host_port(VIP, 80),
        host_port(VIP, 53),
        host_port(VIP6, 80),
        host_port(VIP6, 53),
    ] {
        node.agent.wait_frontend(&frontend, 2);
    }
    node
}

/// One client reaches a dual-stack Service over both families, each to its own family's
/// endpoints, the peer being the address it connected to; and an AF_INET6 socket naming
/// the IPv4 address (`::ffff:198.19.0.10`, as a dual-stack application does) reaches the
/// IPv4 endpoints.
fn a_dual_stack_service_answers_over_both_families(mode: Mode) {
    let node = dual_stack_node(mode);
    for (to, backends) in [
        (host_port(VIP, 80), ["web-0", "web-1"]),
        (host_port(VIP6, 80), ["web-1", "web-2"]),
        (host_port(&format!("::ffff:{VIP}"), 80), ["web-0", "web-1"]),
    ] {
        assert_eq!(node.reached(&to), backends, "{to}");
        let report = node.probe(&["--to", &to, "--count", "5"]);
        assert_eq!(
            report.peers.keys().collect::<Vec<_>>(),
            [&to],
            "getpeername shows the address connected to: {report:?}"
        );
    }
    for (to, backends) in [
        (host_port(VIP, 53), ["web-0", "web-1"]),
        (host_port(VIP6, 53), ["web-1", "web-2"]),
    ] {
        let report = node.probe(&["--to", &to, "--count", "40", "--unconnected"]);
        assert_eq!(
            report.answers.values().sum::<usize>(),
            40,
            "{to}: {report:?}"
        );
        assert_eq!(
            report.answers.keys().collect::<Vec<_>>(),
            backends,
            "{to}: {report:?}"
        );
        assert_eq!(
            report.reply_sources.keys().collect::<Vec<_>>(),
            [&to],
            "{to}: recvfrom shows the ClusterIP: {report:?}"
        );
    }
}

macro_rules! in_every_mode {
    (per_family: [$($scenario:ident),* $(,)?], dual_stack: [$($dual:ident),* $(,)?] $(,)?) => {
        in_every_mode!(@mode ebpf, Ebpf, [$($scenario),*], [$($dual),*]);
        in_every_mode!(@mode iptables, Iptables, [$($scenario),*], [$($dual),*]);
        in_every_mode!(@mode iptables_legacy, IptablesLegacy, [$($scenario),*], [$($dual),*]);
    };
    (@mode $module:ident, $mode:ident, [$($scenario:ident),*], [$($dual:ident),*]) => {
        mod $module {
            $(
                #[test]
                fn $scenario() {
                    integration::require_privileges!();
                    super::$scenario(super::Mode::$mode, super::Family::Ipv4);
                }
            )*
            $(
                #[test]
                fn $dual() {
                    integration::require_privileges!();
                    super::$dual(super::Mode::$mode);
                }
            )*
            mod ipv6 {
                $(
                    #[test]
                    fn $scenario() {
                        integration::require_privileges!();
                        super::super::$scenario(super::super::Mode::$mode, super::super::Family::Ipv6);
                    }
                )*
            }
        }
    };
}

in_every_mode!(
    per_family: [
        backends_reached_and_the_peer_is_the_service,
        weight_shares,
        udp_replies_come_from_the_service_ip,
        affinity_sticks_then_expires,
        no_endpoints_are_refused,
        terminating_endpoints_serve_when_none_is_ready,
        internal_traffic_policy_local,
        node_port_external_ip_and_load_balancer_from_the_node,
        hairpin,
    ],
    dual_stack: [a_dual_stack_service_answers_over_both_families],
);
