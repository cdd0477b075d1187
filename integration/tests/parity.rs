//! One scenario suite, run in both modes: the eBPF socket programs and the iptables
//! fallback (kube-proxy's chains) give a client on the node the same outcomes for the same
//! Services. Each scenario is a function of the mode; `in_every_mode!` makes one test of
//! it per mode and iptables backend (`ebpf::<scenario>`, `iptables::<scenario>` on
//! nf_tables, `iptables_legacy::<scenario>`).
//!
//! Where the modes differ by construction, the scenario asserts the difference, so that
//! the list in the README stays true:
//! - hairpin: a pod reaching itself through its Service is masqueraded by iptables (it
//!   sees the node's address); the socket program connects it to itself directly;
//! - a Local policy without a local endpoint: iptables DROPs (the client times out), the
//!   socket program refuses the connect at once.
//!
//! The test's client namespace plays the node: the agent and its rules live there, the
//! node address 198.18.0.100 is on its loopback, and each backend namespace hangs off it.

use std::{collections::BTreeSet, time::Duration};

use integration::{
    Agent, Report, Topology, bin_dir,
    manifests::{DNS, Endpoint, HTTP, Port, ServiceOpts, service_with_endpoints},
    run,
};

const NODE: &str = "node-a";
const NODE_IP: &str = "198.18.0.100";
const VIP: &str = "198.19.0.10";

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
}

impl Node {
    fn new(mode: Mode, backends: usize) -> Self {
        let t = Topology::new(backends);
        t.route_service_range();
        t.client
            .ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);
        // A node forwards (hairpin traffic comes back through it in iptables mode).
        run(t
            .client
            .command("sysctl", None)
            .args(["-qw", "net.ipv4.ip_forward=1"]));
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
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {NODE}}}\nstatus: {{addresses: [{{type: InternalIP, address: {NODE_IP}}}]}}\n"
            ),
        );
        Self { agent, t, mode }
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

fn web(opts: &ServiceOpts, ports: &[Port], endpoints: &[Endpoint]) -> String {
    service_with_endpoints("web", VIP, ports, opts, endpoints)
}

fn backends_reached_and_the_peer_is_the_service(mode: Mode) {
    let mut node = Node::new(mode, 3);
    let eps = node.t.ready_endpoints();
    serve(
        &mut node.agent,
        &web(&ServiceOpts::default(), &[HTTP, DNS], &eps),
        "demo/web:http",
        3,
    );
    assert_eq!(
        node.reached(&format!("{VIP}:80")),
        ["web-0", "web-1", "web-2"]
    );
    let report = node.probe(&["--to", &format!("{VIP}:80"), "--count", "5"]);
    assert_eq!(
        report.peers.keys().collect::<Vec<_>>(),
        [&format!("{VIP}:80")],
        "getpeername shows the ClusterIP"
    );

    // An endpoint removed: new connections stop reaching it.
    serve(
        &mut node.agent,
        &web(&ServiceOpts::default(), &[HTTP, DNS], &eps[1..]),
        "demo/web:http",
        2,
    );
    assert_eq!(node.reached(&format!("{VIP}:80")), ["web-1", "web-2"]);
}

fn weight_shares(mode: Mode) {
    let mut node = Node::new(mode, 3);
    let eps = node.t.ready_endpoints();
    let opts = ServiceOpts {
        weights: Some("web-0=3,web-1=1,web-2=0"),
        ..Default::default()
    };
    // The weight-0 endpoint: listed with weight 0 in the maps; no rule at all in iptables.
    let listed = match mode {
        Mode::Ebpf => 3,
        Mode::Iptables | Mode::IptablesLegacy => 2,
    };
    serve(
        &mut node.agent,
        &web(&opts, &[HTTP], &eps),
        "demo/web:http",
        listed,
    );
    let n = 4_000;
    let report = node.probe(&["--to", &format!("{VIP}:80"), "--count", &n.to_string()]);
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.count("web-2"), 0, "weight 0 takes no new connection");
    let (lo, hi) = integration::binomial_bounds(n, 0.75);
    let got = report.count("web-0") as f64;
    assert!(
        lo <= got && got <= hi,
        "web-0 got {got} of {n}, expected [{lo:.0}, {hi:.0}]"
    );
}

fn udp_replies_come_from_the_service_ip(mode: Mode) {
    let mut node = Node::new(mode, 2);
    let eps = node.t.ready_endpoints();
    serve(
        &mut node.agent,
        &web(&ServiceOpts::default(), &[HTTP, DNS], &eps),
        "demo/web:dns",
        2,
    );
    let to = format!("{VIP}:53");
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

fn affinity_sticks_then_expires(mode: Mode) {
    let mut node = Node::new(mode, 5);
    let eps = node.t.ready_endpoints();
    let opts = ServiceOpts {
        affinity_timeout: Some(1),
        ..Default::default()
    };
    serve(
        &mut node.agent,
        &web(&opts, &[HTTP], &eps),
        "demo/web:http",
        5,
    );
    let to = format!("{VIP}:80");
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
        format!("{}:8080", node.t.backends[index].ip),
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

fn no_endpoints_are_refused(mode: Mode) {
    let mut node = Node::new(mode, 1);
    serve(
        &mut node.agent,
        &web(&ServiceOpts::default(), &[HTTP], &[]),
        "demo/web:http",
        0,
    );
    let report = node.probe(&[
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
        "refused at once (iptables: REJECT): {report:?}"
    );
    // proxyctl counts them by reason, from the datapath's events or the REJECT rule's
    // packet counter.
    let out = node.agent.proxyctl(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats json");
    let rejected = stats["reasons"]
        .as_array()
        .and_then(|r| r.iter().find(|e| e[0] == "rejected_no_endpoint"))
        .map(|e| e[1].clone());
    assert_eq!(rejected, Some(serde_json::json!(3)), "{stats}");
    assert_eq!(stats["frontends"][0]["no_endpoint"], 3, "{stats}");
}

/// One endpoint per backend host with conditions (ready, serving, terminating) and node.
fn endpoints_with<'a>(
    t: &'a Topology,
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
            ..Endpoint::ready(&b.ip, &b.name)
        })
        .collect()
}

fn terminating_endpoints_serve_when_none_is_ready(mode: Mode) {
    let mut node = Node::new(mode, 3);
    let eps = endpoints_with(
        &node.t,
        &[
            (false, false, true, NODE),
            (false, true, true, "node-b"),
            (false, false, false, "node-b"),
        ],
    );
    let yaml = web(&ServiceOpts::default(), &[HTTP], &eps);
    serve(&mut node.agent, &yaml, "demo/web:http", 1);
    assert_eq!(node.reached(&format!("{VIP}:80")), ["web-1"]);
    let eps = endpoints_with(
        &node.t,
        &[
            (true, true, false, NODE),
            (false, true, true, "node-b"),
            (false, false, false, "node-b"),
        ],
    );
    let yaml = web(&ServiceOpts::default(), &[HTTP], &eps);
    node.agent.write("web.yaml", &yaml);
    node.wait_reached(&format!("{VIP}:80"), &["web-0"]);
}

fn internal_traffic_policy_local(mode: Mode) {
    let mut node = Node::new(mode, 3);
    let opts = ServiceOpts {
        spec_extra: "  internalTrafficPolicy: Local\n",
        ..Default::default()
    };
    let eps = endpoints_with(
        &node.t,
        &[
            (true, true, false, NODE),
            (true, true, false, NODE),
            (true, true, false, "node-b"),
        ],
    );
    let yaml = web(&opts, &[HTTP], &eps);
    serve(&mut node.agent, &yaml, "demo/web:http", 2);
    assert_eq!(
        node.reached(&format!("{VIP}:80")),
        ["web-0", "web-1"],
        "only this node's endpoints"
    );

    let eps = endpoints_with(
        &node.t,
        &[
            (false, false, true, NODE),
            (false, false, true, NODE),
            (true, true, false, "node-b"),
        ],
    );
    let yaml = web(&opts, &[HTTP], &eps);
    serve(&mut node.agent, &yaml, "demo/web:http", 0);
    let report = node.probe(&[
        "--to",
        &format!("{VIP}:80"),
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

fn node_port_external_ip_and_load_balancer_from_the_node(mode: Mode) {
    let mut node = Node::new(mode, 2);
    let opts = ServiceOpts {
        type_: Some("LoadBalancer"),
        spec_extra: "  externalIPs: [198.19.5.5]\n  externalTrafficPolicy: Local\n",
        status: "status: {loadBalancer: {ingress: [{ip: 198.19.6.6}]}}\n",
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
        &[(true, true, false, NODE), (true, true, false, "node-b")],
    );
    let yaml = web(&opts, &[http], &eps);
    serve(&mut node.agent, &yaml, "demo/web:http", 2);
    for to in [
        format!("{VIP}:80"),
        format!("{NODE_IP}:30080"),
        "198.19.5.5:80".to_string(),
        "198.19.6.6:80".to_string(),
    ] {
        assert_eq!(node.reached(&to), ["web-0", "web-1"], "{to}");
    }
}

fn hairpin(mode: Mode) {
    let mut node = Node::new(mode, 2);
    let eps = node.t.ready_endpoints();
    serve(
        &mut node.agent,
        &web(&ServiceOpts::default(), &[HTTP], &eps[..1]),
        "demo/web:http",
        1,
    );
    // web-0 reaches its own Service, which has only web-0 behind it.
    let out = run(node.t.backends[0]
        .netns
        .command(bin_dir().join("probe"), Some(&node.t.cgroup))
        .args(["connect", "--to", &format!("{VIP}:80"), "--ask-source"]));
    let report: Report = serde_json::from_str(&out).expect("probe report");
    // The difference: kube-proxy masquerades hairpin traffic (KUBE-SEP's `-s <endpoint>
    // -j KUBE-MARK-MASQ`), so the pod sees the node's address on its link; the socket
    // program connects the pod to itself, with its own address.
    let expected = match mode {
        Mode::Ebpf => "web-0 saw 198.18.1.2",
        Mode::Iptables | Mode::IptablesLegacy => "web-0 saw 198.18.1.1",
    };
    assert_eq!(
        report.answers.keys().collect::<Vec<_>>(),
        [expected],
        "{report:?}"
    );
}

macro_rules! in_every_mode {
    ($($scenario:ident),* $(,)?) => {
        in_every_mode!(@mode ebpf, Ebpf, $($scenario),*);
        in_every_mode!(@mode iptables, Iptables, $($scenario),*);
        in_every_mode!(@mode iptables_legacy, IptablesLegacy, $($scenario),*);
    };
    (@mode $module:ident, $mode:ident, $($scenario:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $scenario() {
                    integration::require_privileges!();
                    super::$scenario(super::Mode::$mode);
                }
            )*
        }
    };
}

in_every_mode!(
    backends_reached_and_the_peer_is_the_service,
    weight_shares,
    udp_replies_come_from_the_service_ip,
    affinity_sticks_then_expires,
    no_endpoints_are_refused,
    terminating_endpoints_serve_when_none_is_ready,
    internal_traffic_policy_local,
    node_port_external_ip_and_load_balancer_from_the_node,
    hairpin,
);
