//! deploy/ and migrating from kube-proxy: kustomize renders the manifests, the agent runs
//! as the DaemonSet starts it (its arguments, ConfigMap, environment and capabilities),
//! `--config` errors name the key, and `--cleanup-kube-proxy` removes kube-proxy's rules
//! and nothing else. The whole ClusterIP suite also runs with the DaemonSet's launch:
//! `cargo xtask test` runs `--test clusterip` again with `EBPF_PROXY_AGENT_LAUNCH=daemonset`.

use std::{collections::BTreeSet, process::Command, time::Duration};

use integration::{
    Agent, Netns, Topology, bin_dir, command_in,
    manifests::{HTTP, ServiceOpts, service_with_endpoints},
    require_privileges, run, unique,
};

const VIP: &str = "198.19.0.10";

/// demo/web (HTTP) on every backend of `t`.
fn web(t: &Topology) -> String {
    service_with_endpoints(
        "web",
        VIP,
        &[HTTP],
        &ServiceOpts::default(),
        &t.ready_endpoints(),
    )
}

/// `kubectl kustomize DIR`, split into documents.
fn kustomize(dir: &str) -> Vec<yaml_serde::Value> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir);
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .expect("kubectl is missing: `cargo xtask setup` installs it");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    yaml_serde::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("kustomize output is YAML"))
        .collect()
}

fn kinds(docs: &[yaml_serde::Value]) -> BTreeSet<String> {
    docs.iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_owned))
        .collect()
}

/// The agent's settings file in a rendered ConfigMap.
fn agent_config(docs: &[yaml_serde::Value]) -> yaml_serde::Value {
    let configmap = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("a ConfigMap");
    yaml_serde::from_str(
        configmap["data"]["config.yaml"]
            .as_str()
            .expect("config.yaml"),
    )
    .expect("config.yaml is YAML")
}

#[test]
fn kustomize_renders_the_base_and_the_iptables_overlay() {
    let base = kustomize("deploy/base");
    assert_eq!(
        kinds(&base),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Namespace",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
    );
    for doc in &base {
        let kind = doc["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "Namespace" | "ClusterRole" | "ClusterRoleBinding") {
            assert_eq!(doc["metadata"]["namespace"], "ebpf-proxy", "{kind}");
        }
    }
    assert_eq!(agent_config(&base)["mode"], "auto");

    let overlay = kustomize("deploy/overlays/iptables");
    assert_eq!(kinds(&overlay), kinds(&base));
    assert_eq!(agent_config(&overlay)["mode"], "iptables");
    let daemonset = overlay
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let added = &daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]
        ["add"];
    assert_eq!(
        added.as_sequence().map(Vec::len),
        Some(2),
        "iptables mode needs NET_ADMIN and NET_RAW only: {added:?}"
    );
}

#[test]
fn a_config_file_mistake_names_the_file_and_the_key() {
    let dir = std::env::temp_dir().join(unique("epxcfg"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("config.yaml");
    std::fs::write(&file, "mode: ebpf\nmax-service: 10\n").expect("write config");
    let out = Command::new(bin_dir().join("proxy-agent"))
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run proxy-agent");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "--config {}: `max-service` is not a setting",
            file.display()
        )) && stderr.contains("max-services"),
        "{stderr}"
    );
}

#[test]
fn the_agent_started_as_the_daemonset_serves_a_cluster_ip() {
    require_privileges!();
    let t = Topology::new(2);
    t.route_service_range();
    let mut agent = Agent::new(&t);
    agent.as_daemonset = true;
    agent.write("web.yaml", &web(&t));
    agent.start();
    agent.wait_backends("demo/web:http", 2);
    let report = t.probe(&["--to", &format!("{VIP}:80"), "--count", "40"]);
    assert_eq!(report.answers.values().sum::<usize>(), 40, "{report:?}");
    assert_eq!(report.answers.len(), 2, "both backends answer: {report:?}");
    // Its settings came from the ConfigMap (mode auto chose eBPF, logs are JSON) and its
    // node name from the downward API.
    let log = agent.log();
    assert!(
        log.contains("--mode auto: the eBPF datapath loads"),
        "{log}"
    );
    assert!(log.lines().all(|l| l.starts_with('{')), "{log}");
    assert!(
        log.contains(&format!(
            "\"node\":\"{}\"",
            integration::daemonset::NODE_NAME
        )),
        "{log}"
    );
    let status = command_in(&agent.netns, None, "cat")
        .arg(format!(
            "/proc/{}/status",
            agent.pid().expect("agent running")
        ))
        .output()
        .expect("read status");
    let status = String::from_utf8_lossy(&status.stdout);
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .expect("CapBnd");
    // CAP_NET_ADMIN 12, CAP_NET_RAW 13, CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21,
    // CAP_PERFMON 38, CAP_BPF 39.
    let expected: u64 = (1 << 12) | (1 << 13) | (1 << 19) | (1 << 21) | (1 << 38) | (1 << 39);
    assert_eq!(
        u64::from_str_radix(bounding.trim(), 16).ok(),
        Some(expected),
        "the agent runs with exactly the DaemonSet's capabilities"
    );
}

/// iptables-save of one table in `ns` (nf_tables backend).
fn save(ns: &Netns, table: &str) -> String {
    run(command_in(&ns.name, None, "iptables-nft-save").args(["-t", table]))
}

/// Lines of a save that matter for comparing rule sets: no comments, no counters.
fn rules(saved: &str) -> BTreeSet<String> {
    saved
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.strip_prefix(':') {
            Some(decl) => format!(":{}", decl.split_whitespace().next().unwrap_or_default()),
            None => l.to_string(),
        })
        .collect()
}

/// The agent in iptables mode (nf_tables) serving demo/web, once its rules are in.
fn iptables_agent(t: &Topology) -> Agent {
    let mut agent = Agent::new(t);
    agent.mode = "iptables";
    agent.extra_args = vec!["--iptables-backend".into(), "nft".into()];
    agent.write("web.yaml", &web(t));
    agent.start();
    agent.wait_for("the iptables rules", Duration::from_secs(10), |_| {
        agent.log().contains("\"synced\"")
    });
    agent
}

/// A node as kube-proxy leaves it: a rule set rendered by our iptables mode with its
/// owner marker removed, plus kubelet's chains and somebody else's rules.
fn node_with_kube_proxy_rules(t: &Topology) -> Agent {
    let mut agent = iptables_agent(t);
    agent.stop();
    let ipt = |args: &[&str]| {
        run(command_in(&t.client.name, None, "iptables-nft").args(args));
    };
    ipt(&["-t", "nat", "-F", "EBPF-PROXY-OWNED"]);
    ipt(&["-t", "nat", "-X", "EBPF-PROXY-OWNED"]);
    // kubelet's chains, kube-proxy's canaries, and a firewall that is nobody's business.
    for table in ["mangle", "nat", "filter"] {
        ipt(&["-t", table, "-N", "KUBE-KUBELET-CANARY"]);
        ipt(&["-t", table, "-N", "KUBE-PROXY-CANARY"]);
    }
    ipt(&["-t", "mangle", "-N", "KUBE-IPTABLES-HINT"]);
    // KUBE-FIREWALL with its INPUT and OUTPUT jumps is there already, as kube-proxy
    // (and our rendering of its rules) writes it; an older kubelet's rule joins it.
    ipt(&[
        "-t",
        "filter",
        "-A",
        "KUBE-FIREWALL",
        "-m",
        "mark",
        "--mark",
        "0x8000/0x8000",
        "-j",
        "DROP",
    ]);
    ipt(&["-t", "filter", "-N", "SITE-FIREWALL"]);
    ipt(&[
        "-t",
        "filter",
        "-A",
        "SITE-FIREWALL",
        "-s",
        "198.18.99.0/24",
        "-j",
        "DROP",
    ]);
    ipt(&[
        "-t",
        "filter",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "22",
        "-j",
        "SITE-FIREWALL",
    ]);
    ipt(&[
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "198.18.98.0/24",
        "-j",
        "MASQUERADE",
    ]);
    agent
}

#[test]
fn cleanup_kube_proxy_removes_kube_proxys_rules_and_nothing_else() {
    require_privileges!();
    let t = Topology::new(2);
    let agent = node_with_kube_proxy_rules(&t);
    let before: Vec<(&str, BTreeSet<String>)> = ["mangle", "nat", "filter"]
        .into_iter()
        .map(|table| (table, rules(&save(&t.client, table))))
        .collect();
    assert!(before[1].1.iter().any(|l| l.starts_with(":KUBE-SVC-")));

    let out = cleanup_kube_proxy(&agent.netns);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("kube-proxy's chains removed"), "{log}");

    let kube_proxys = |line: &str| {
        let chain = line
            .strip_prefix(':')
            .or_else(|| line.strip_prefix("-A "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default();
        let target = line
            .split(" -j ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next());
        proxy_user::dataplane::iptables::kube_proxy::is_kube_proxy_chain(chain)
            || target.is_some_and(proxy_user::dataplane::iptables::kube_proxy::is_kube_proxy_chain)
    };
    for (table, before) in before {
        let after = rules(&save(&t.client, table));
        let expected: BTreeSet<String> =
            before.iter().filter(|l| !kube_proxys(l)).cloned().collect();
        assert_eq!(after, expected, "{table}: exactly kube-proxy's lines go");
    }
    let filter = save(&t.client, "filter");
    for kept in [
        ":KUBE-FIREWALL",
        ":SITE-FIREWALL",
        "-A INPUT -j KUBE-FIREWALL",
        ":KUBE-KUBELET-CANARY",
    ] {
        assert!(filter.contains(kept), "{kept} removed:\n{filter}");
    }
    // A second run finds nothing to do.
    let again = cleanup_kube_proxy(&agent.netns);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no kube-proxy chains"));
}

#[test]
fn cleanup_kube_proxy_leaves_our_own_iptables_mode_alone() {
    require_privileges!();
    let t = Topology::new(1);
    let agent = iptables_agent(&t);
    let before = save(&t.client, "nat");
    let out = cleanup_kube_proxy(&agent.netns);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("ebpf-proxy's own"), "{log}");
    assert_eq!(rules(&save(&t.client, "nat")), rules(&before));
}

#[test]
fn cleanup_after_kube_proxy_took_our_chains_over_removes_only_the_marker() {
    require_privileges!();
    let t = Topology::new(1);
    let mut agent = iptables_agent(&t);
    agent.stop();
    // A node rolled back to kube-proxy: it rewrites the KUBE-* chains and keeps its canary.
    run(command_in(&t.client.name, None, "iptables-nft").args([
        "-t",
        "nat",
        "-N",
        "KUBE-PROXY-CANARY",
    ]));
    let out = agent.cleanup_command().output().expect("run --cleanup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nat = save(&t.client, "nat");
    assert!(!nat.contains("EBPF-PROXY-OWNED"), "the marker goes:\n{nat}");
    for kept in [
        ":KUBE-SERVICES",
        ":KUBE-SVC-",
        ":KUBE-PROXY-CANARY",
        "-A PREROUTING",
    ] {
        assert!(nat.contains(kept), "{kept} is kube-proxy's now:\n{nat}");
    }
}

/// `proxy-agent --cleanup-kube-proxy` in network namespace `netns`.
fn cleanup_kube_proxy(netns: &str) -> std::process::Output {
    command_in(netns, None, bin_dir().join("proxy-agent"))
        .arg("--cleanup-kube-proxy")
        .output()
        .expect("run proxy-agent --cleanup-kube-proxy")
}

/// `iptables-nft-restore` of a whole rule set into `ns`.
fn restore(ns: &Netns, rules: &str) {
    let mut child = command_in(&ns.name, None, "iptables-nft-restore")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("iptables-nft-restore");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), rules.as_bytes())
        .expect("write rules");
    assert!(child.wait().expect("wait").success(), "rules load");
}

/// kube-proxy's own TestCleanupLeftovers (pkg/proxy/iptables): its starting rule set
/// (nat trimmed to one rule of each kind; comments quoted and built-in policies given so
/// that the real iptables-restore loads it) and its expected result, loaded through the
/// real binaries so that both sides are printed the same way.
#[test]
fn cleanup_kube_proxy_leaves_what_kube_proxys_own_cleanup_test_expects() {
    require_privileges!();
    let node = Netns::new(unique("epxkp"));
    let expected = Netns::new(unique("epxkq"));
    restore(&node, include_str!("data/kube_proxy_cleanup_initial.rules"));
    restore(
        &expected,
        include_str!("data/kube_proxy_cleanup_expected.rules"),
    );
    let out = cleanup_kube_proxy(&node.name);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for table in ["filter", "nat", "mangle"] {
        assert_eq!(
            rules(&save(&node, table)),
            rules(&save(&expected, table)),
            "{table}"
        );
    }
}
