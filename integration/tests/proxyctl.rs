//! proxyctl against what the agent installed: every command, in both modes, while the
//! agent runs and after it has exited, and the errors an operator meets (nothing
//! installed, another map layout, not permitted). Affinity and per-reason counters are
//! checked against traffic in `parity.rs`.

use std::{process::Output, time::Duration};

use integration::{
    Agent, Topology, bin_dir, command_in,
    manifests::{DNS, HTTP, ServiceOpts, service_with_endpoints},
    require_privileges,
};
use serde_json::Value;

const VIP: &str = "198.19.0.10";

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "proxyctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("proxyctl --json prints JSON")
}

fn text(out: &Output) -> String {
    assert!(
        out.status.success(),
        "proxyctl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// demo/web with HTTP and DNS on two backends weighted 3:1, with ClientIP affinity.
fn start(mode: &'static str) -> (Topology, Agent) {
    let t = Topology::new(2);
    t.route_service_range();
    let mut agent = Agent::new(&t);
    agent.mode = mode;
    let opts = ServiceOpts {
        weights: Some("web-0=3,web-1=1"),
        affinity_timeout: Some(600),
        ..ServiceOpts::default()
    };
    agent.write(
        "web.yaml",
        &service_with_endpoints("web", VIP, &[HTTP, DNS], &opts, &t.ready_endpoints()),
    );
    agent.start();
    agent.wait_backends("demo/web:http", 2);
    agent.wait_backends("demo/web:dns", 2);
    // The agent records itself for `proxyctl status` once its programs are attached,
    // a moment after the maps show the backends.
    agent.wait_for("the agent record", Duration::from_secs(10), |_| {
        !json(&agent.proxyctl(&["status", "--json"]))["agent"].is_null()
    });
    (t, agent)
}

/// What every command says about demo/web, checked against what was installed.
fn check_every_command(agent: &Agent, t: &Topology, mode: &str) {
    let backend = |i: usize, port: u16| format!("{}:{port}", t.backends[i].ip);

    let services = json(&agent.proxyctl(&["services", "demo/web:http", "--json"]));
    let rows = services.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{services}");
    assert_eq!(rows[0]["frontend"], format!("{VIP}:80"), "{services}");
    let shares: Vec<(String, f64)> = rows[0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap_or_default().to_owned(),
                b["share_percent"].as_f64().unwrap_or(-1.0),
            )
        })
        .collect();
    let share_of = |addr: String| {
        shares
            .iter()
            .find(|(a, _)| *a == addr)
            .map_or(-1.0, |(_, s)| *s)
    };
    assert!(
        (share_of(backend(0, 8080)) - 75.0).abs() < 0.01
            && (share_of(backend(1, 8080)) - 25.0).abs() < 0.01,
        "weights 3:1 are shares 75/25: {shares:?}"
    );
    assert_eq!(rows[0]["affinity_timeout_seconds"], 600, "{services}");

    let backends = json(&agent.proxyctl(&["backends", "--json"]));
    let web0 = backends
        .as_array()
        .and_then(|b| b.iter().find(|r| r["address"] == backend(0, 8080)))
        .expect("web-0 is listed");
    assert!(web0.to_string().contains("demo/web:http"), "{web0}");

    let lookup = json(&agent.proxyctl(&["lookup", &format!("{VIP}:53/udp"), "--json"]));
    assert_eq!(lookup[0]["service"], "demo/web:dns", "{lookup}");
    let miss = text(&agent.proxyctl(&["lookup", "198.19.9.9:80"]));
    assert!(miss.contains("no service on this node"), "{miss}");

    let stats = json(&agent.proxyctl(&["stats", "--json"]));
    assert_eq!(stats["mode"], mode, "{stats}");
    assert_eq!(
        stats["frontends"].as_array().map(Vec::len),
        Some(2),
        "{stats}"
    );

    let status = json(&agent.proxyctl(&["status", "--json"]));
    assert_eq!(status["mode"], mode, "{status}");
    assert_eq!(
        status["agent"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{status}"
    );
    let table = text(&agent.proxyctl(&["status"]));
    assert!(
        table.starts_with(&format!("mode            {mode}\n")),
        "{table}"
    );

    let affinity = json(&agent.proxyctl(&["affinity", "--json"]));
    // No connection went to the sticky frontends here: no entry (parity.rs fills them).
    assert_eq!(affinity, serde_json::json!([]), "{affinity}");
}

fn every_command_answers_while_running_and_after_exit(mode: &'static str) {
    let (t, mut agent) = start(mode);
    check_every_command(&agent, &t, mode);
    agent.stop();
    check_every_command(&agent, &t, mode);
}

#[test]
fn every_command_answers_while_running_and_after_exit_ebpf() {
    require_privileges!();
    every_command_answers_while_running_and_after_exit("ebpf");
}

#[test]
fn every_command_answers_while_running_and_after_exit_iptables() {
    require_privileges!();
    every_command_answers_while_running_and_after_exit("iptables");
}

#[test]
fn status_names_attachments_fill_and_whether_the_agent_runs() {
    require_privileges!();
    let (_t, mut agent) = start("ebpf");
    let status = json(&agent.proxyctl(&["status", "--json"]));
    assert_eq!(status["pin_dir"], agent.bpffs.display().to_string());
    assert_eq!(
        status["layout"],
        format!("V{}", proxy_common::LAYOUT_VERSION)
    );
    assert_eq!(status["agent"]["running"], true, "{status}");
    assert_eq!(
        status["agent"]["pid"],
        agent.pid().expect("running"),
        "{status}"
    );
    let attachments = status["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), integration::SOCKET_PROGRAMS, "{status}");
    for a in attachments {
        assert_eq!(a["attached"], true, "{a}");
        assert_eq!(a["target"], agent.cgroup.display().to_string(), "{a}");
    }
    // The kernel agrees on which programs are attached to that cgroup.
    let kernel: Vec<u64> = integration::attached_programs(&agent.cgroup)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for a in attachments {
        let id = a["program_id"].as_u64().expect("program id");
        assert!(
            kernel.contains(&id),
            "program {id} not attached: {kernel:?}"
        );
    }
    // The services map holds exactly the two frontends (http and dns).
    let services = status["maps"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|m| m["map"] == proxy_common::names::MAP_SERVICES)
        })
        .expect("services map");
    assert_eq!(services["entries"], 2, "{status}");
    assert_eq!(services["capacity"], 65_536, "{status}");

    agent.stop();
    let status = json(&agent.proxyctl(&["status", "--json"]));
    assert_eq!(status["agent"]["running"], false, "{status}");
    let table = text(&agent.proxyctl(&["status"]));
    assert!(table.contains("(not running)"), "{table}");
}

#[test]
fn status_in_iptables_mode_names_the_backend_and_the_hooks() {
    require_privileges!();
    let (t, agent) = start("iptables");
    // An IPv6 Service beside the IPv4 one: ip6tables holds its chains.
    agent.write(
        "web6.yaml",
        &service_with_endpoints(
            "web6",
            "2001:db8:19::a",
            &[HTTP],
            &ServiceOpts::default(),
            &t.ready_endpoints6(),
        ),
    );
    agent.wait_frontend("[2001:db8:19::a]:80", 2);
    let status = json(&agent.proxyctl(&["status", "--json"]));
    assert_eq!(status["mode"], "iptables", "{status}");
    assert!(
        status["backend"] == "nft" || status["backend"] == "legacy",
        "{status}"
    );
    let hooks: Vec<String> = status["attachments"]
        .as_array()
        .expect("attachments")
        .iter()
        .map(|a| {
            format!(
                "{} {} -> {}",
                a["hook"].as_str().unwrap_or(""),
                a["target"].as_str().unwrap_or(""),
                a["program"].as_str().unwrap_or("")
            )
        })
        .collect();
    // Both proxiers' hooks, each family's labelled: the agent writes iptables and
    // ip6tables (as kube-proxy runs one proxier per family).
    for family in ["iptables", "ip6tables"] {
        for hook in [
            "nat PREROUTING -> KUBE-SERVICES",
            "nat OUTPUT -> KUBE-SERVICES",
            "nat POSTROUTING -> KUBE-POSTROUTING",
            "filter INPUT -> KUBE-PROXY-FIREWALL",
            "filter FORWARD -> KUBE-FORWARD",
        ] {
            let hook = format!("{family} {hook}");
            assert!(hooks.contains(&hook), "{hook} missing: {hooks:?}");
        }
    }
    // Chains and rules per family and table: the IPv4 Service (two ports) makes the IPv4
    // nat table the larger one, the IPv6 Service (one port) fills the IPv6 one.
    let chains: Vec<(String, String, u64)> = status["chains"]
        .as_array()
        .expect("chains")
        .iter()
        .map(|c| {
            (
                c["family"].as_str().unwrap_or("").to_owned(),
                c["table"].as_str().unwrap_or("").to_owned(),
                c["rules"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let rules_of = |family: &str| {
        chains
            .iter()
            .find(|(f, t, _)| f == family && t == "nat")
            .map(|(_, _, rules)| *rules)
    };
    assert!(
        matches!((rules_of("IPv4"), rules_of("IPv6")), (Some(v4), Some(v6)) if v4 > v6 && v6 > 0),
        "{status}"
    );
    let table = text(&agent.proxyctl(&["status"]));
    assert!(
        table.contains("ip6tables  nat PREROUTING") && table.contains("\nIPv6    nat "),
        "{table}"
    );
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "proxyctl should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn errors_say_what_is_wrong() {
    require_privileges!();
    let t = Topology::new(1);
    let agent = Agent::new(&t);
    let proxyctl = |dir: &std::path::Path| {
        let mut cmd = command_in(&agent.netns, None, bin_dir().join("proxyctl"));
        cmd.arg("--bpffs").arg(dir).arg("services");
        cmd
    };
    // Nothing pinned, no chains in this namespace.
    let empty = std::env::temp_dir().join(integration::unique("epxempty"));
    let out = proxyctl(&empty).output().expect("run proxyctl");
    assert!(
        stderr(&out).contains(&format!(
            "is proxy-agent running on this node? (pin directory {} is empty or missing)",
            empty.display()
        )),
        "{}",
        stderr(&out)
    );
    // Another map layout pinned.
    std::fs::create_dir_all(&empty).expect("dir");
    std::fs::write(empty.join("EPX_SVC_V9"), "").expect("file");
    let out = proxyctl(&empty).output().expect("run proxyctl");
    let _ = std::fs::remove_dir_all(&empty);
    assert!(
        stderr(&out).contains(&format!(
            "holds map layout V9 (EPX_SVC_V9), and this proxyctl reads layout V{}",
            proxy_common::LAYOUT_VERSION
        )),
        "{}",
        stderr(&out)
    );
    // Not root: the pin directory is root's alone.
    let (_t, running) = start("ebpf");
    let out = command_in(&running.netns, None, "setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin_dir().join("proxyctl"))
        .arg("--bpffs")
        .arg(&running.bpffs)
        .arg("status")
        .output()
        .expect("run proxyctl as nobody");
    assert!(
        stderr(&out).contains("proxyctl needs root or CAP_BPF"),
        "{}",
        stderr(&out)
    );
    drop(running);
    // Not root, nothing pinned: iptables-save is refused, which is not "nothing installed".
    let out = command_in(&agent.netns, None, "setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin_dir().join("proxyctl"))
        .arg("--bpffs")
        .arg(&empty)
        .arg("status")
        .output()
        .expect("run proxyctl as nobody");
    assert!(
        stderr(&out).contains("reading the iptables rules (")
            && stderr(&out).contains("was not permitted: proxyctl needs root or CAP_NET_ADMIN"),
        "{}",
        stderr(&out)
    );
}

/// An IPv6 frontend and its backends, as an operator reads them: `[address]:port`.
#[test]
fn services_lists_an_ipv6_frontend_with_bracketed_addresses() {
    require_privileges!();
    let t = Topology::new(2);
    let mut agent = Agent::new(&t);
    agent.write(
        "web.yaml",
        &service_with_endpoints(
            "web",
            "2001:db8:19::a",
            &[HTTP, DNS],
            &ServiceOpts::default(),
            &t.ready_endpoints6(),
        ),
    );
    agent.start();
    agent.wait_frontend("[2001:db8:19::a]:80", 2);
    let table = text(&agent.proxyctl(&["services"]));
    for expected in [
        "[2001:db8:19::a]:80/TCP",
        "[2001:db8:19::a]:53/UDP",
        "-> [2001:db8:18:1::2]:8080",
        "-> [2001:db8:18:2::2]:8080",
        "-> [2001:db8:18:1::2]:5353",
    ] {
        assert!(table.contains(expected), "{expected} missing:\n{table}");
    }
    let rows = json(&agent.proxyctl(&["services", "demo/web:http", "--json"]));
    let mut addresses: Vec<&str> = rows[0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .filter_map(|b| b["address"].as_str())
        .collect();
    addresses.sort_unstable();
    assert_eq!(rows[0]["frontend"], "[2001:db8:19::a]:80", "{rows}");
    assert_eq!(
        addresses,
        ["[2001:db8:18:1::2]:8080", "[2001:db8:18:2::2]:8080"],
        "{rows}"
    );
    let lookup = json(&agent.proxyctl(&["lookup", "[2001:db8:19::a]:53/udp", "--json"]));
    assert_eq!(lookup[0]["service"], "demo/web:dns", "{lookup}");
}
