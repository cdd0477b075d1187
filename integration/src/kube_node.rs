//! A node as kube-proxy's own unit tests picture it (pkg/proxy/iptables/proxier_test.go):
//! this node with its node IP (and secondary ones), pods on it, a second node with pods of
//! its own, and external clients, each its own network namespace, connected only to each
//! other. Every address is given by the caller (in 198.18.0.0/15, or 2001:db8::/32 for an
//! IPv6 node: one family per topology, as kube-proxy's tests have one per proxier).
//!
//! ```text
//!  external client E ── x<i> ┐                       ┌ p<i> ── remote pod R
//!                            node (agent) ── nb0 ── other node
//!  local pod P ──────── p<i> ┘
//! ```
//!
//! Links are point-to-point, as many CNIs make them: every link of the node carries the
//! node IP (`NODE peer X`), every link of the other node its IP, and each pod and client
//! has one /32 address and a default route through its node. So a masqueraded flow shows
//! the node IP to the backend, and any address can sit on any node. The node routes the
//! remote pods' addresses, and everything else (its default route), to the other node.
//!
//! Sources: the node itself and the pods on it run inside the agent's cgroup (the eBPF
//! mode's socket programs translate their connects); external clients do not (the tc
//! programs on the node's links translate their packets).

use std::{process::Command, time::Duration};

use crate::{Agent, Cgroup, ChildGuard, Netns, Report, bin_dir, run, spawn_ready, unique};

pub const THIS_NODE: &str = "node-a";

/// A pod: its address, where it runs, and the ports it serves.
pub struct PodSpec {
    pub ip: String,
    /// Its name on the answers: each port's server answers `<label>:<port>`.
    pub label: String,
    pub on_this_node: bool,
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
}

/// Fields drop in order: the servers before their namespace.
pub struct Pod {
    _servers: Vec<ChildGuard>,
    pub spec: PodSpec,
    pub netns: Netns,
}

/// The namespaces; see the module documentation.
pub struct KubeNode {
    pub id: String,
    pub node_ip: String,
    /// Interfaces of the node toward external clients and the other node: where the eBPF
    /// mode's tc programs attach.
    pub interfaces: Vec<String>,
    pub pods: Vec<Pod>,
    pub externals: Vec<(String, Netns)>,
    pub node: Netns,
    pub other: Netns,
    pub cgroup: Cgroup,
}

fn is_ipv6(address: &str) -> bool {
    address.contains(':')
}

/// The host route of one address (`/32` or `/128`).
fn host_route(address: &str) -> String {
    match is_ipv6(address) {
        true => format!("{address}/128"),
        false => format!("{address}/32"),
    }
}

/// A namespace whose links use their IPv6 addresses at once: no duplicate address
/// detection, link-local addresses included (a tentative link-local address holds back the
/// first neighbour solicitation by a second).
fn namespace(name: String) -> Netns {
    let ns = Netns::new(name);
    ns.sysctl("net.ipv6.conf.all.accept_dad=0");
    ns.sysctl("net.ipv6.conf.default.accept_dad=0");
    ns
}

/// A route to `dest` through the peer `via` of link `dev`. An IPv6 peer route may not be
/// installed yet right after the link came up, so an IPv6 next hop is declared on-link.
fn route_via(ns: &Netns, dest: &str, via: &str, dev: &str) {
    let onlink: &[&str] = if is_ipv6(via) { &["onlink"] } else { &[] };
    ns.ip(&[&["route", "add", dest, "via", via, "dev", dev][..], onlink].concat());
}

/// A point-to-point veth pair: `a_if` carries `a_ip peer b_ip`, `b_if` the reverse (IPv6
/// addresses without duplicate address detection, usable at once).
fn p2p(a: &Netns, a_if: &str, a_ip: &str, b: &Netns, b_if: &str, b_ip: &str) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    let nodad: &[&str] = if is_ipv6(a_ip) { &["nodad"] } else { &[] };
    a.ip(&[&["addr", "add", a_ip, "peer", b_ip, "dev", a_if][..], nodad].concat());
    b.ip(&[&["addr", "add", b_ip, "peer", a_ip, "dev", b_if][..], nodad].concat());
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
    if is_ipv6(a_ip) {
        // IPv6 keeps no route to the peer of a point-to-point address: one of its own.
        a.ip(&["route", "replace", &host_route(b_ip), "dev", a_if]);
        b.ip(&["route", "replace", &host_route(a_ip), "dev", b_if]);
    }
}

/// One probe server per port, each answering `<label>:<port>`.
fn servers(ns: &Netns, spec: &PodSpec) -> Vec<ChildGuard> {
    let mut all = Vec::new();
    let ports = spec
        .tcp
        .iter()
        .map(|p| (p, "--tcp"))
        .chain(spec.udp.iter().map(|p| (p, "--udp")));
    for (port, flag) in ports {
        let name = format!("{}:{port}", spec.label);
        let any = if is_ipv6(&spec.ip) {
            format!("[::]:{port}")
        } else {
            format!("0.0.0.0:{port}")
        };
        let server = spawn_ready(
            ns.command(bin_dir().join("probe"), None)
                .args(["serve", "--name", &name, flag, &any]),
        );
        all.push(server);
    }
    all
}

impl KubeNode {
    /// This node (`node_ip`, plus `alt_ips` on its loopback), the other node
    /// (`other_node_ip`), the pods, and one client namespace per external address.
    pub fn new(
        node_ip: &str,
        alt_ips: &[String],
        other_node_ip: &str,
        pods: Vec<PodSpec>,
        externals: &[String],
    ) -> Self {
        let id = unique("epx");
        let cgroup = Cgroup::new(&id);
        let node = namespace(format!("{id}-n"));
        let other = namespace(format!("{id}-o"));
        p2p(&node, "nb0", node_ip, &other, "na0", other_node_ip);
        for alt in alt_ips {
            node.ip(&["addr", "add", &host_route(alt), "dev", "lo"]);
        }
        let mut interfaces = Vec::new();
        let mut clients = Vec::new();
        for (i, address) in externals.iter().enumerate() {
            let ns = namespace(format!("{id}-x{i}"));
            let link = format!("x{i}");
            p2p(&node, &link, node_ip, &ns, "eth0", address);
            route_via(&ns, "default", node_ip, "eth0");
            interfaces.push(link);
            clients.push((address.clone(), ns));
        }
        interfaces.push("nb0".to_string());
        let mut all_pods = Vec::new();
        for (i, spec) in pods.into_iter().enumerate() {
            let ns = namespace(format!("{id}-p{i}"));
            let (host, host_ip) = match spec.on_this_node {
                true => (&node, node_ip),
                false => (&other, other_node_ip),
            };
            p2p(host, &format!("p{i}"), host_ip, &ns, "eth0", &spec.ip);
            route_via(&ns, "default", host_ip, "eth0");
            if !spec.on_this_node {
                route_via(&node, &host_route(&spec.ip), other_node_ip, "nb0");
            }
            let servers = servers(&ns, &spec);
            all_pods.push(Pod {
                spec,
                netns: ns,
                _servers: servers,
            });
        }
        route_via(&node, "default", other_node_ip, "nb0");
        route_via(&other, "default", node_ip, "na0");
        for ns in [&node, &other] {
            ns.sysctl("net.ipv4.ip_forward=1");
            ns.sysctl("net.ipv6.conf.all.forwarding=1");
            // One ICMP error per attempt, not one per second.
            ns.sysctl("net.ipv4.icmp_ratelimit=0");
            ns.sysctl("net.ipv6.icmp.ratelimit=0");
        }
        Self {
            id,
            node_ip: node_ip.to_string(),
            interfaces,
            pods: all_pods,
            externals: clients,
            node,
            other,
            cgroup,
        }
    }

    /// The agent of this node in `mode` (`ebpf`, `iptables`), with this node's Node
    /// object (its IP and `alt_ips` as InternalIPs) and `--cluster-cidr cluster_cidr`.
    pub fn agent(&self, mode: &'static str, alt_ips: &[String], cluster_cidr: &str) -> Agent {
        let mut agent = Agent::in_namespace(&self.id, &self.node, &self.cgroup);
        agent.mode = mode;
        agent.extra_args = vec![
            "--node-name".into(),
            THIS_NODE.into(),
            "--cluster-cidr".into(),
            cluster_cidr.into(),
        ];
        if mode == "ebpf" {
            agent
                .extra_args
                .extend(["--interfaces".into(), self.interfaces.join(",")]);
        } else {
            agent
                .extra_args
                .extend(["--iptables-backend".into(), "nft".into()]);
        }
        let addresses: String = std::iter::once(&self.node_ip)
            .chain(alt_ips)
            .map(|a| format!("{{type: InternalIP, address: \"{a}\"}}, "))
            .collect();
        agent.write(
            "node.yaml",
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {THIS_NODE}}}\nstatus: {{addresses: [{}]}}\n",
                addresses.trim_end_matches(", ")
            ),
        );
        agent
    }

    /// Starts `agent` on the manifests already written and waits for its first sync (and
    /// in eBPF mode for its tc programs on every interface).
    pub fn start(&self, agent: &mut Agent) {
        agent.start();
        let tc_programs = match agent.mode {
            "ebpf" => 2 * self.interfaces.len(),
            _ => 0,
        };
        agent.wait_for("the first sync", Duration::from_secs(15), |_| {
            let log = agent.log();
            log.contains("\"synced\"")
                && log.matches("\"message\":\"tc program\"").count() == tc_programs
        });
    }

    /// Where a connection from `source` starts: the node itself, a pod, or an external
    /// client; `None` if no namespace holds that address.
    pub fn command_from(&self, source: &str) -> Option<Command> {
        let probe = bin_dir().join("probe");
        if source == self.node_ip || source.starts_with("127.") {
            return Some(self.node.command(probe, Some(&self.cgroup)));
        }
        if let Some(pod) = self.pods.iter().find(|p| p.spec.ip == source) {
            let cgroup = pod.spec.on_this_node.then_some(&self.cgroup);
            return Some(pod.netns.command(probe, cgroup));
        }
        self.externals
            .iter()
            .find(|(ip, _)| ip == source)
            .map(|(_, ns)| ns.command(probe, None))
    }

    /// `probe connect ARGS` from the namespace holding `source`.
    pub fn probe_from(&self, source: &str, args: &[&str]) -> Report {
        let mut command = self
            .command_from(source)
            .unwrap_or_else(|| panic!("no namespace holds source address {source}"));
        let out = run(command.arg("connect").args(args));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("probe output {out:?}: {e}"))
    }
}
