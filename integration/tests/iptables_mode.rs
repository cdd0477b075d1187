//! The agent in iptables mode: what is particular to it (switching modes, kube-proxy's own
//! chains left alone, partial syncs, proxyctl reading the chains). The outcomes both modes
//! share are in `parity.rs`. The agent and its rules live in the test's client namespace.

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
    let agent = iptables_agent(&t, opts, &[]);
    (t, agent)
}

/// The agent in iptables mode (with `extra` arguments) serving demo/web on every backend
/// of `t`, once its first sync is done.
fn iptables_agent(t: &Topology, opts: &ServiceOpts, extra: &[&str]) -> Agent {
    let mut agent = Agent::new(t);
    agent.mode = "iptables";
    agent.extra_args = extra.iter().map(|a| a.to_string()).collect();
    agent.write(
        "web.yaml",
        &service_with_endpoints("web", VIP, &[HTTP, DNS], opts, &t.ready_endpoints()),
    );
    agent.start();
    agent.wait_for("the iptables rules", Duration::from_secs(10), |_| {
        agent.log().contains("\"synced\"")
    });
    agent
}

/// demo/web (HTTP) with every backend of `t` as a ready endpoint.
fn web_on_every_backend(t: &Topology) -> String {
    service_with_endpoints(
        "web",
        VIP,
        &[HTTP],
        &ServiceOpts::default(),
        &t.ready_endpoints(),
    )
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
        !nat_rules(&agent).contains("KUBE-") && !ip6tables_save(&agent, "nat").contains("KUBE-")
    });
    assert!(!nat_rules(&agent).contains("EBPF-PROXY-OWNED"));
    let nat6 = ip6tables_save(&agent, "nat");
    assert!(
        !nat6.contains("KUBE-") && !nat6.contains("EBPF-PROXY-OWNED"),
        "ip6tables' chains go too:\n{nat6}"
    );
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
    agent.write("web.yaml", &web_on_every_backend(&t));
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
    agent.write("web.yaml", &web_on_every_backend(&t));
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

#[test]
fn proxyctl_explains_the_installed_chains_even_after_the_agent_exits() {
    require_privileges!();
    let (t, mut agent) = start(
        2,
        &ServiceOpts {
            weights: Some("web-0=3,web-1=1"),
            ..Default::default()
        },
    );
    // Traffic, so that the counters have something to count.
    let report = t.probe(&["--to", &format!("{VIP}:80"), "--count", "8"]);
    assert_eq!(report.answers.values().sum::<usize>(), 8, "{report:?}");
    agent.stop();

    let ok = |args: &[&str]| {
        let out = agent.proxyctl(args);
        assert!(
            out.status.success(),
            "proxyctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let lookup: serde_json::Value =
        serde_json::from_str(&ok(&["lookup", &format!("{VIP}:80"), "--json"])).expect("json");
    let svc = proxy_user::dataplane::iptables::names::service_chain(
        "demo/web:http",
        proxy_user::model::Protocol::Tcp,
    );
    assert_eq!(lookup[0]["service"], "demo/web:http");
    assert_eq!(lookup[0]["kind"], "ClusterIP");
    assert_eq!(lookup[0]["chain"], svc.as_str());
    assert_eq!(lookup[0]["counters"]["translated"], 8, "{lookup}");
    let shares: Vec<(String, f64)> = lookup[0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap_or("").to_owned(),
                b["share_percent"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect();
    assert_eq!(
        shares,
        [
            ("198.18.1.2:8080".to_owned(), 75.0),
            ("198.18.2.2:8080".to_owned(), 25.0)
        ],
        "probabilities read back from the kernel's rules"
    );

    // Backends, from the chains: each used by both ports of demo/web.
    let backends: serde_json::Value =
        serde_json::from_str(&ok(&["backends", "--json"])).expect("json");
    assert_eq!(backends[0]["address"], "198.18.1.2:5353", "{backends}");
    assert_eq!(backends[1]["address"], "198.18.1.2:8080", "{backends}");
    assert_eq!(
        backends[1]["used_by"][0]["share_percent"], 75.0,
        "{backends}"
    );

    // A UDP frontend by its protocol.
    let dns = ok(&["lookup", &format!("{VIP}:53/udp")]);
    assert!(dns.contains("demo/web:dns"), "{dns}");
    // Not a service: said in words.
    let none = ok(&["lookup", "198.19.9.9:80"]);
    assert!(
        none.contains("no service on this node (iptables mode)"),
        "{none}"
    );

    // The chains of one service port, jumps first, with counters.
    let chains = ok(&["chains", "demo/web:http"]);
    assert!(
        chains.starts_with("[nat:8] -A KUBE-SERVICES -d 198.19.0.10/32"),
        "{chains}"
    );
    assert!(chains.contains(&format!(":{svc}\n")), "{chains}");
    assert!(
        chains.contains("-j DNAT --to-destination 198.18.1.2:8080")
            && chains.contains("-j DNAT --to-destination 198.18.2.2:8080"),
        "{chains}"
    );
    let bad = agent.proxyctl(&["chains", "demo/nope"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("no chains for service demo/nope"),
        "{bad:?}"
    );
}

#[test]
fn proxyctl_says_what_is_missing() {
    require_privileges!();
    let t = Topology::new(1);
    let agent = Agent::new(&t);
    let out = agent.proxyctl(&["services"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("nothing is pinned at")
            && stderr.contains("no ebpf-proxy chains are installed in iptables")
            && stderr.contains("is proxy-agent running on this node?"),
        "{stderr}"
    );
    let bad = agent.proxyctl(&["lookup", "198.19.0.10"]);
    assert!(!bad.status.success());
    // Completions need nothing installed.
    let completions = agent.proxyctl(&["completions", "bash"]);
    assert!(completions.status.success());
    assert!(String::from_utf8_lossy(&completions.stdout).contains("_proxyctl()"));
}

#[test]
fn udp_flows_leave_a_removed_endpoint() {
    require_privileges!();
    udp_flow_leaves_a_removed_endpoint(false);
}

/// The same over IPv6: the entries go with `conntrack -f ipv6`.
#[test]
fn ipv6_udp_flows_leave_a_removed_endpoint() {
    require_privileges!();
    udp_flow_leaves_a_removed_endpoint(true);
}

fn udp_flow_leaves_a_removed_endpoint(ipv6: bool) {
    let t = Topology::new(2);
    t.route_service_range();
    let mut agent = Agent::new(&t);
    agent.mode = "iptables";
    let (vip, to, eps) = match ipv6 {
        false => (VIP, format!("{VIP}:53"), t.ready_endpoints()),
        true => (VIP6, format!("[{VIP6}]:53"), t.ready_endpoints6()),
    };
    let dns =
        |endpoints| service_with_endpoints("dns", vip, &[DNS], &ServiceOpts::default(), endpoints);
    agent.write("dns.yaml", &dns(&eps[..1]));
    agent.start();
    agent.wait_frontend(&to, 1);

    // One socket, one source port: conntrack keeps the flow on web-0 while it is used.
    let client = t
        .client_command(
            integration::bin_dir()
                .join("probe")
                .to_str()
                .expect("utf-8 path"),
        )
        .args(["connect", "--to", &to, "--one-socket"])
        .args([
            "--count",
            "60",
            "--interval-ms",
            "50",
            "--timeout-ms",
            "500",
            "--sequence",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("probe");
    std::thread::sleep(Duration::from_millis(800));
    // web-0 leaves the Service (its pod still runs, as a terminating pod's would).
    agent.write("dns.yaml", &dns(&eps[1..]));
    let out = client.wait_with_output().expect("probe output");
    let report: integration::Report = serde_json::from_slice(&out.stdout).expect("report");
    let sequence = &report.sequence;
    assert_eq!(
        sequence.first().map(String::as_str),
        Some("web-0"),
        "{report:?}"
    );
    assert!(
        sequence[sequence.len() - 10..].iter().all(|s| s == "web-1"),
        "the flow's conntrack entry was deleted, so it moved to web-1: {sequence:?}"
    );
}

fn saved(agent: &Agent, save: &str) -> String {
    integration::run(integration::command_in(&agent.netns, None, save).args(["-t", "nat"]))
}

#[test]
fn the_legacy_backend_serves_and_is_found_by_proxyctl_and_cleanup() {
    require_privileges!();
    let t = Topology::new(2);
    t.route_service_range();
    let mut agent = iptables_agent(
        &t,
        &ServiceOpts::default(),
        &["--iptables-backend", "legacy"],
    );
    agent.wait_backends("demo/web:http", 2);
    assert!(
        agent.log().contains("\"backend\":\"legacy\""),
        "{}",
        agent.log()
    );
    let report = t.probe(&["--to", &format!("{VIP}:80"), "--count", "30"]);
    assert_eq!(report.answers.len(), 2, "{report:?}");
    assert!(saved(&agent, "iptables-legacy-save").contains(":KUBE-SVC-"));
    assert!(
        !saved(&agent, "iptables-nft-save").contains("KUBE-"),
        "nothing written to nf_tables"
    );
    // The IPv6 proxier writes to ip6tables of the same backend.
    assert!(saved(&agent, "ip6tables-legacy-save").contains(":EBPF-PROXY-OWNED"));
    assert!(!saved(&agent, "ip6tables-nft-save").contains("KUBE-"));
    agent.stop();
    integration::run(&mut agent.cleanup_command());
    for save in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        assert!(
            !saved(&agent, save).contains("KUBE-"),
            "--cleanup finds the legacy chains ({save})"
        );
    }
}

#[test]
fn auto_backend_follows_kubelets_hint() {
    require_privileges!();
    let t = Topology::new(1);
    t.route_service_range();
    // kubelet on a legacy node leaves its hint chain in the legacy mangle table.
    integration::run(t.client.command("iptables-legacy", None).args([
        "-t",
        "mangle",
        "-N",
        "KUBE-IPTABLES-HINT",
    ]));
    let agent = iptables_agent(&t, &ServiceOpts::default(), &[]);
    agent.wait_backends("demo/web:http", 1);
    assert!(
        agent.log().contains("\"backend\":\"legacy\"") && agent.log().contains("kubelet's hint"),
        "{}",
        agent.log()
    );
    assert_eq!(
        t.probe(&["--to", &format!("{VIP}:80"), "--count", "5"])
            .count("web-0"),
        5
    );
}

/// The `-s` ranges of the KUBE-FW chains in the namespace's nat table.
fn firewall_ranges(agent: &Agent) -> Vec<String> {
    nat_rules(agent)
        .lines()
        .filter(|l| l.starts_with("-A KUBE-FW-"))
        .filter_map(|l| l.split(" -s ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The agent's log lines that hold `what`.
fn log_lines_with(agent: &Agent, what: &str) -> Vec<String> {
    agent
        .log()
        .lines()
        .filter(|l| l.contains(what))
        .map(str::to_owned)
        .collect()
}

#[test]
fn changes_made_while_the_agent_was_down_converge_from_the_read_back() {
    require_privileges!();
    let t = Topology::new(2);
    let mut agent = Agent::new(&t);
    agent.mode = "iptables";
    let endpoints = t.ready_endpoints();
    let lb = |ranges: &str| {
        service_with_endpoints(
            "web",
            VIP,
            &[HTTP],
            &ServiceOpts {
                type_: Some("LoadBalancer"),
                weights: Some("web-0=3,web-1=1"),
                affinity_timeout: Some(600),
                spec_extra: &format!("  loadBalancerSourceRanges: [{ranges}]\n"),
                status: "status: {loadBalancer: {ingress: [{ip: 198.19.7.7}]}}\n",
                ..Default::default()
            },
            &endpoints,
        )
    };
    let other_chain = proxy_user::dataplane::iptables::names::service_chain(
        "demo/other:http",
        proxy_user::model::Protocol::Tcp,
    );
    agent.write("web.yaml", &lb("198.18.100.0/24, 203.0.113.0/24"));
    agent.write(
        "other.yaml",
        &service_with_endpoints(
            "other",
            "198.19.0.20",
            &[HTTP],
            &ServiceOpts::default(),
            &endpoints,
        ),
    );
    let synced = |agent: &Agent| log_lines_with(agent, "\"synced\"");
    // The IPv4 tables' read-back (ip6tables' has a line of its own).
    let read_back = |agent: &Agent| -> Vec<String> {
        log_lines_with(agent, "read back what our chains hold")
            .into_iter()
            .filter(|l| l.contains("\"family\":\"IPv4\""))
            .collect()
    };
    agent.start();
    agent.wait_for("the first sync", Duration::from_secs(10), |_| {
        !synced(&agent).is_empty()
    });
    assert_eq!(
        firewall_ranges(&agent),
        ["198.18.100.0/24", "203.0.113.0/24"]
    );
    assert!(nat_rules(&agent).contains(&format!(":{other_chain} ")));
    // A first start reads back nothing.
    assert!(
        read_back(&agent)[0].contains("\"frontends\":0"),
        "{:?}",
        read_back(&agent)
    );

    // While the agent is down: demo/other is deleted, demo/web's ranges narrowed.
    agent.stop();
    agent.remove("other.yaml");
    agent.write("web.yaml", &lb("198.18.100.0/24"));
    let before = synced(&agent).len();
    agent.start();
    agent.wait_for(
        "the sync after the restart",
        Duration::from_secs(10),
        |_| synced(&agent).len() > before,
    );
    // The read-back: web's ClusterIP and load balancer IP, other's ClusterIP.
    let line = read_back(&agent).pop().unwrap_or_default();
    assert!(
        line.contains("\"frontends\":3") && line.contains("\"service_ports\":2"),
        "{line}"
    );
    // Against it, only what changed: the load balancer IP's ranges written, demo/other's
    // frontend removed (its chains were the kernel's, not the agent's memory).
    let first = synced(&agent)[before].clone();
    assert!(
        first.contains("\"written\":1") && first.contains("\"removed\":1"),
        "{first}"
    );
    assert_eq!(firewall_ranges(&agent), ["198.18.100.0/24"]);
    let nat = nat_rules(&agent);
    assert!(
        !nat.contains(&other_chain) && !nat.contains("demo/other"),
        "demo/other's chains stay:\n{nat}"
    );

    // Nothing changed: the read-back equals what is wanted (weights 3:1 as probabilities,
    // affinity, ranges), and nothing is written.
    agent.stop();
    let before = synced(&agent).len();
    agent.start();
    agent.wait_for("the second restart's sync", Duration::from_secs(10), |_| {
        synced(&agent).len() > before
    });
    let first = synced(&agent)[before].clone();
    assert!(
        first.contains("\"written\":0") && first.contains("\"removed\":0"),
        "{first}"
    );
    assert_eq!(firewall_ranges(&agent), ["198.18.100.0/24"]);
}

const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";

fn filter_rules(agent: &Agent) -> Vec<String> {
    integration::run(
        integration::command_in(&agent.netns, None, "iptables-save").args(["-t", "filter"]),
    )
    .lines()
    .map(str::to_owned)
    .collect()
}

/// As kube-proxy with `--iptables-localhost-nodeports` (its default): route_localnet=1 in
/// the agent's network namespace (and in no other), KUBE-FIREWALL's rule against what
/// that lets in, with kubelet's jumps to it first in INPUT and OUTPUT; `--cleanup` leaves
/// those three, as kube-proxy's does, since kubelet shares them.
#[test]
fn localhost_node_ports_set_route_localnet_in_the_agents_namespace_only() {
    require_privileges!();
    let root_before = std::fs::read_to_string(ROUTE_LOCALNET).expect("read route_localnet");
    let t = Topology::new(1);
    let mut agent = Agent::new(&t);
    t.client.sysctl("net.ipv4.conf.all.route_localnet=0");
    agent.mode = "iptables";
    agent.write("web.yaml", &web_on_every_backend(&t));
    agent.start();
    agent.wait_for("the iptables rules", Duration::from_secs(10), |_| {
        agent.log().contains("\"synced\"")
    });
    let in_agent =
        integration::run(integration::command_in(&agent.netns, None, "cat").arg(ROUTE_LOCALNET));
    assert_eq!(in_agent.trim(), "1", "set in the agent's namespace");
    assert_eq!(
        std::fs::read_to_string(ROUTE_LOCALNET).expect("read route_localnet"),
        root_before,
        "the test's own (root) namespace is left as it was"
    );

    let localnet_rule = "-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment \
                         --comment \"block incoming localnet connections\" -m conntrack ! \
                         --ctstate RELATED,ESTABLISHED,DNAT -j DROP";
    let kubelets = |rules: &[String]| {
        for hook in ["INPUT", "OUTPUT"] {
            let first = rules.iter().find(|r| r.starts_with(&format!("-A {hook} ")));
            assert_eq!(
                first.map(String::as_str),
                Some(format!("-A {hook} -j KUBE-FIREWALL").as_str()),
                "{rules:#?}"
            );
        }
        assert!(rules.iter().any(|r| r == localnet_rule), "{rules:#?}");
    };
    kubelets(&filter_rules(&agent));

    agent.stop();
    integration::run(&mut agent.cleanup_command());
    let after = filter_rules(&agent);
    kubelets(&after);
    assert!(
        !after.iter().any(|r| r.contains("KUBE-SERVICES")),
        "--cleanup removed the rest: {after:#?}"
    );
}

/// Where route_localnet cannot be set (a container that is not privileged has /proc/sys
/// read-only), the agent still starts: it names the sysctl, leaves 127.0.0.0/8 out of the
/// NodePort jump, and writes no KUBE-FIREWALL rule, so only the localhost NodePorts are
/// lost (refused at once, not left hanging) and every other frontend is served.
#[test]
fn without_route_localnet_only_localhost_node_ports_are_lost() {
    require_privileges!();
    let t = Topology::new(1);
    t.route_service_range();
    let mut agent = Agent::new(&t);
    t.client.sysctl("net.ipv4.conf.all.route_localnet=0");
    agent.mode = "iptables";
    agent.read_only_proc_sys = true;
    agent.write("web.yaml", &web_on_every_backend(&t));
    agent.start();
    agent.wait_for("the iptables rules", Duration::from_secs(10), |_| {
        agent.log().contains("\"synced\"")
    });
    let log = agent.log();
    assert!(
        log.contains("NodePorts are not served on 127.0.0.1")
            && log.contains("net/ipv4/conf/all/route_localnet"),
        "{log}"
    );
    let in_agent =
        integration::run(integration::command_in(&agent.netns, None, "cat").arg(ROUTE_LOCALNET));
    assert_eq!(in_agent.trim(), "0", "left as it was");
    let rules = filter_rules(&agent);
    assert!(
        !rules.iter().any(|r| r.contains("block incoming localnet")),
        "{rules:#?}"
    );
    let nat = nat_rules(&agent);
    assert!(
        nat.lines()
            .any(|r| r.contains("! -d 127.0.0.0/8") && r.ends_with("-j KUBE-NODEPORTS")),
        "{nat}"
    );
    let report = t.probe(&["--to", &format!("{VIP}:80"), "--count", "10"]);
    assert_eq!(report.answers.values().sum::<usize>(), 10, "{report:?}");
}

// IPv6: kube-proxy's IPv6 proxier's chains in ip6tables, beside the IPv4 ones.

const VIP6: &str = "2001:db8:19::a";

fn ip6tables_save(agent: &Agent, table: &str) -> String {
    integration::run(
        integration::command_in(&agent.netns, None, "ip6tables-save").args(["-t", table]),
    )
}

/// The agent in iptables mode serving `yaml` as demo/web, once its first sync is done.
fn iptables_agent_with(t: &Topology, yaml: &str) -> Agent {
    let mut agent = Agent::new(t);
    agent.mode = "iptables";
    agent.write("web.yaml", yaml);
    agent.start();
    agent.wait_for("the iptables rules", Duration::from_secs(10), |_| {
        agent.log().contains("\"synced\"")
    });
    agent
}

#[test]
fn an_ipv6_cluster_ip_spreads_over_its_endpoints_reads_back_and_cleans_up() {
    require_privileges!();
    let t = Topology::new(2);
    t.route_service_range();
    let yaml = service_with_endpoints(
        "web",
        VIP6,
        &[HTTP, DNS],
        &ServiceOpts::default(),
        &t.ready_endpoints6(),
    );
    let mut agent = iptables_agent_with(&t, &yaml);
    let nat6 = ip6tables_save(&agent, "nat");
    for rule in [
        ":EBPF-PROXY-OWNED",
        "-d 2001:db8:19::a/128 -p tcp -m comment --comment \"demo/web:http cluster IP\"",
        "-j DNAT --to-destination [2001:db8:18:1::2]:8080",
        // ip6tables-save prints the address match first.
        "-A KUBE-SERVICES ! -d ::1/128 -m comment --comment \"kubernetes service nodeports;",
    ] {
        assert!(nat6.contains(rule), "{rule} in ip6tables:\n{nat6}");
    }
    assert!(
        !nat_rules(&agent).contains("2001:db8"),
        "nothing of IPv6 in iptables"
    );
    assert!(
        !agent.log().contains("family_not_served"),
        "nothing left out: {}",
        agent.log()
    );

    let n = 1_000;
    let to = format!("[{VIP6}]:80");
    let report = t.probe(&["--to", &to, "--count", &n.to_string()]);
    assert!(report.errors.is_empty(), "{report:?}");
    let (lo, hi) = integration::binomial_bounds(n, 0.5);
    for name in ["web-0", "web-1"] {
        let got = report.count(name) as f64;
        assert!(
            lo <= got && got <= hi,
            "{name} got {got} of {n}, expected within [{lo:.0}, {hi:.0}]: {report:?}"
        );
    }
    assert_eq!(report.peers.keys().collect::<Vec<_>>(), vec![&to]);
    let udp_to = format!("[{VIP6}]:53");
    for mode in ["--unconnected", "--udp"] {
        let report = t.probe(&["--to", &udp_to, "--count", "40", mode]);
        assert_eq!(
            report.answers.values().sum::<usize>(),
            40,
            "{mode}: {report:?}"
        );
        assert_eq!(report.answers.len(), 2, "{mode}: {report:?}");
        assert_eq!(
            report.reply_sources.keys().collect::<Vec<_>>(),
            vec![&udp_to],
            "{mode}: {report:?}"
        );
    }

    // A restart reads ip6tables back: both IPv6 frontends, and nothing to rewrite.
    agent.stop();
    let synced = |agent: &Agent| log_lines_with(agent, "\"synced\"");
    let before = synced(&agent).len();
    agent.start();
    agent.wait_for(
        "the sync after the restart",
        Duration::from_secs(10),
        |_| synced(&agent).len() > before,
    );
    let read_back: Vec<String> = log_lines_with(&agent, "read back what our chains hold")
        .into_iter()
        .filter(|l| l.contains("\"family\":\"IPv6\""))
        .collect();
    let line = read_back.last().cloned().unwrap_or_default();
    assert!(
        line.contains("\"frontends\":2") && line.contains("\"service_ports\":2"),
        "{read_back:?}"
    );
    let first = synced(&agent)[before].clone();
    assert!(
        first.contains("\"written\":0") && first.contains("\"removed\":0"),
        "the read-back is what is wanted: {first}"
    );

    // --cleanup removes ours from ip6tables as from iptables.
    agent.stop();
    integration::run(&mut agent.cleanup_command());
    for table in ["nat", "filter"] {
        let saved = ip6tables_save(&agent, table);
        for ours in [
            "EBPF-PROXY-OWNED",
            "KUBE-SERVICES",
            "KUBE-SVC-",
            "KUBE-SEP-",
            "KUBE-NODEPORTS",
            "KUBE-POSTROUTING",
            "KUBE-MARK-MASQ",
            "KUBE-PROXY-FIREWALL",
            "KUBE-FORWARD",
        ] {
            assert!(
                !saved.contains(ours),
                "{ours} left in ip6tables {table}:\n{saved}"
            );
        }
    }
}

/// demo/web dual-stack (198.19.0.10 and 2001:db8:19::a): web-0 and web-1 by IPv4,
/// web-1 and web-2 by IPv6, so which backend answers tells which family's chains served.
#[test]
fn a_dual_stack_service_answers_over_both_families_from_one_client() {
    require_privileges!();
    let t = Topology::new(3);
    t.route_service_range();
    let endpoints: Vec<integration::manifests::Endpoint> = t
        .ready_endpoints()
        .into_iter()
        .take(2)
        .chain(t.ready_endpoints6().into_iter().skip(1))
        .collect();
    let yaml = service_with_endpoints(
        "web",
        VIP,
        &[HTTP, DNS],
        &ServiceOpts {
            second_cluster_ip: Some(VIP6),
            ..Default::default()
        },
        &endpoints,
    );
    let agent = iptables_agent_with(&t, &yaml);
    // One service port, the same chain names in both families.
    let svc = proxy_user::dataplane::iptables::names::service_chain(
        "demo/web:http",
        proxy_user::model::Protocol::Tcp,
    );
    assert!(nat_rules(&agent).contains(&format!(":{svc} ")));
    assert!(ip6tables_save(&agent, "nat").contains(&format!(":{svc} ")));
    // proxyctl reads both families' chains.
    agent.wait_frontend(&format!("{VIP}:80"), 2);
    agent.wait_frontend(&format!("[{VIP6}]:80"), 2);
    let rows = agent.services();
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["frontend"] == format!("[{VIP6}]:80")))
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["family"], "IPv6", "{row}");
    let chains = agent.proxyctl(&["chains", "demo/web:http"]);
    let chains = String::from_utf8_lossy(&chains.stdout);
    assert!(
        chains.contains("# IPv6 (ip6tables)") && chains.contains("[2001:db8:18:3::2]:8080"),
        "{chains}"
    );
    let n = 200;
    for (to, names) in [
        (format!("{VIP}:80"), ["web-0", "web-1"]),
        (format!("[{VIP6}]:80"), ["web-1", "web-2"]),
        (format!("{VIP}:53"), ["web-0", "web-1"]),
        (format!("[{VIP6}]:53"), ["web-1", "web-2"]),
    ] {
        let udp = to.ends_with(":53");
        let mut args = vec!["--to", &to, "--count", "200"];
        if udp {
            args.push("--udp");
        }
        let report = t.probe(&args);
        assert!(report.errors.is_empty(), "{to}: {report:?}");
        assert_eq!(
            report.answers.values().sum::<usize>(),
            n,
            "{to}: {report:?}"
        );
        // Over 200 connections a correct 50:50 choice misses one with probability 2^-199.
        let got: Vec<&str> = report.answers.keys().map(String::as_str).collect();
        assert_eq!(got, names, "{to}: {report:?}");
        assert_eq!(
            report.peers.keys().collect::<Vec<_>>(),
            vec![&to],
            "{report:?}"
        );
    }
}

/// A dual-stack Service without endpoints: REJECT in both families' filter tables, so a
/// TCP connect is refused at once over either (ICMP or ICMPv6 port unreachable). A UDP
/// datagram from this node is refused by the REJECT in OUTPUT before it leaves: the
/// sender gets EPERM, in both families alike.
#[test]
fn a_service_without_endpoints_refuses_at_once_over_both_families() {
    require_privileges!();
    let t = Topology::new(1);
    t.route_service_range();
    let opts = ServiceOpts {
        second_cluster_ip: Some(VIP6),
        ..Default::default()
    };
    let yaml = service_with_endpoints("web", VIP, &[HTTP, DNS], &opts, &[]);
    let agent = iptables_agent_with(&t, &yaml);
    let filter6 = ip6tables_save(&agent, "filter");
    assert!(
        filter6.contains("demo/web:http has no endpoints")
            && filter6.contains("-j REJECT --reject-with icmp6-port-unreachable"),
        "{filter6}"
    );
    for vip in [VIP.to_string(), format!("[{VIP6}]")] {
        let tcp = t.probe(&[
            "--to",
            &format!("{vip}:80"),
            "--count",
            "5",
            "--timeout-ms",
            "5000",
        ]);
        assert_eq!(tcp.errors.get("ECONNREFUSED"), Some(&5), "{vip}: {tcp:?}");
        let udp = t.probe(&[
            "--to",
            &format!("{vip}:53"),
            "--count",
            "3",
            "--unconnected",
            "--timeout-ms",
            "5000",
        ]);
        assert_eq!(udp.errors.get("EPERM"), Some(&3), "{vip}: {udp:?}");
    }
}
