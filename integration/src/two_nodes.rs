//! Traffic from outside the node: an external client, the agent's node, another node, and
//! a backend pod on each node, every one its own network namespace, connected only to each
//! other.
//!
//! ```text
//!  client 198.18.100.2 ── 198.18.100.1 node-a 198.18.101.1 ── 198.18.101.2 node-b
//!                                      198.18.110.1                         198.18.120.1
//!                                           │                                    │
//!                                 pod-a 198.18.110.2                   pod-b 198.18.120.2
//! ```
//!
//! Every link also carries IPv6, numbered alike: 198.18.N.x is 2001:db8:18:N::x
//! (client 2001:db8:18:100::2, node-a 2001:db8:18:100::1, pod-a 2001:db8:18:110::2, ...),
//! with the same routes, and the client routes the IPv6 service range 2001:db8:19::/64
//! to node-a.
//!
//! node-a's default route points at node-b, as a node's points at its gateway.
//! node-a runs the agent (`--node-name node-a`, its Node object giving 198.18.100.1 as
//! its address) and forwards; node-b forwards for its pod. The client routes the service
//! range (ExternalIPs, LoadBalancer IPs in 198.19.0.0/16) to node-a, as a router in front
//! of a cluster would. node-b routes the client's network through node-a, so replies of a
//! connection that kept the client's address (externalTrafficPolicy Local) go back the
//! way the request came.

use std::process::Command;

use crate::{
    Agent, BackendHost, Cgroup, Netns, Report, bin_dir, manifests, run, spawn_ready, unique,
};

pub const CLIENT_IP: &str = "198.18.100.2";
/// node-a's address toward the client: its NodePort address.
pub const NODE_A_IP: &str = "198.18.100.1";
pub const CLIENT_IP6: &str = "2001:db8:18:100::2";
/// node-a's IPv6 address toward the client.
pub const NODE_A_IP6: &str = "2001:db8:18:100::1";
pub const NODE_A_NAME: &str = "node-a";
pub const NODE_B_NAME: &str = "node-b";

pub struct TwoNodes {
    pub id: String,
    pub client: Netns,
    pub node_a: Netns,
    pub node_b: Netns,
    /// pod-a on node-a, pod-b on node-b; each serves HTTP on 8080 and UDP on 5353 under
    /// its own name.
    pub pod_a: BackendHost,
    pub pod_b: BackendHost,
    /// The agent's cgroup (its socket programs attach here; the client is outside it).
    pub cgroup: Cgroup,
}

fn pod(ns: Netns, name: &str, ip: &str, ip6: &str) -> BackendHost {
    let server = spawn_ready(ns.command(bin_dir().join("probe"), None).args([
        "serve",
        "--name",
        name,
        "--tcp",
        "0.0.0.0:8080",
        "--tcp",
        "[::]:8080",
        "--udp",
        "0.0.0.0:5353",
        "--udp",
        "[::]:5353",
    ]));
    BackendHost {
        name: name.to_string(),
        ip: ip.to_string(),
        ip6: ip6.to_string(),
        _server: server,
        netns: ns,
    }
}

impl TwoNodes {
    pub fn new() -> Self {
        let id = unique("epx");
        let cgroup = Cgroup::new(&id);
        let client = Netns::new(format!("{id}-x"));
        let node_a = Netns::new(format!("{id}-na"));
        let node_b = Netns::new(format!("{id}-nb"));
        let pod_a_ns = Netns::new(format!("{id}-pa"));
        let pod_b_ns = Netns::new(format!("{id}-pb"));
        client.link_to("eth0", CLIENT_IP, &node_a, "ext0", NODE_A_IP);
        node_a.link_to("nb0", "198.18.101.1", &node_b, "na0", "198.18.101.2");
        node_a.link_to("pa0", "198.18.110.1", &pod_a_ns, "eth0", "198.18.110.2");
        node_b.link_to("pb0", "198.18.120.1", &pod_b_ns, "eth0", "198.18.120.2");
        client.ip(&["route", "add", "198.19.0.0/16", "via", NODE_A_IP]);
        node_a.ip(&["route", "add", "198.18.120.0/24", "via", "198.18.101.2"]);
        // A node has a default route: traffic for an address it does not serve is
        // forwarded (and meets the FORWARD chain), not answered with "no route".
        node_a.ip(&["route", "add", "default", "via", "198.18.101.2"]);
        node_b.ip(&["route", "add", "198.18.100.0/24", "via", "198.18.101.1"]);
        node_b.ip(&["route", "add", "198.18.110.0/24", "via", "198.18.101.1"]);
        pod_a_ns.ip(&["route", "add", "default", "via", "198.18.110.1"]);
        pod_b_ns.ip(&["route", "add", "default", "via", "198.18.120.1"]);
        node_a.sysctl("net.ipv4.ip_forward=1");
        node_b.sysctl("net.ipv4.ip_forward=1");
        // The kernel sends at most one ICMP error per second to a host by default; the
        // tests count one per attempt.
        node_a.sysctl("net.ipv4.icmp_ratelimit=0");
        // The same over IPv6, 2001:db8:18:N::/64 beside 198.18.N.0/24.
        let v6 = |net: u8, host: u8| format!("2001:db8:18:{net}::{host}");
        for (ns, dev, net, host) in [
            (&client, "eth0", 100, 2),
            (&node_a, "ext0", 100, 1),
            (&node_a, "nb0", 101, 1),
            (&node_b, "na0", 101, 2),
            (&node_a, "pa0", 110, 1),
            (&pod_a_ns, "eth0", 110, 2),
            (&node_b, "pb0", 120, 1),
            (&pod_b_ns, "eth0", 120, 2),
        ] {
            ns.add_addr6(dev, &format!("{}/64", v6(net, host)));
        }
        let route6 = |ns: &Netns, to: &str, via: String| {
            ns.ip(&["-6", "route", "add", to, "via", &via]);
        };
        route6(&client, "2001:db8:19::/64", v6(100, 1));
        route6(&node_a, "2001:db8:18:120::/64", v6(101, 2));
        route6(&node_a, "default", v6(101, 2));
        route6(&node_b, "2001:db8:18:100::/64", v6(101, 1));
        route6(&node_b, "2001:db8:18:110::/64", v6(101, 1));
        route6(&pod_a_ns, "default", v6(110, 1));
        route6(&pod_b_ns, "default", v6(120, 1));
        node_a.sysctl("net.ipv6.conf.all.forwarding=1");
        node_b.sysctl("net.ipv6.conf.all.forwarding=1");
        node_a.sysctl("net.ipv6.icmp.ratelimit=0");
        Self {
            pod_a: pod(pod_a_ns, "pod-a", "198.18.110.2", &v6(110, 2)),
            pod_b: pod(pod_b_ns, "pod-b", "198.18.120.2", &v6(120, 2)),
            id,
            client,
            node_a,
            node_b,
            cgroup,
        }
    }

    /// The agent for node-a, running in its namespace, with node-a's Node object in its
    /// manifest directory.
    pub fn agent(&self, mode: &'static str) -> Agent {
        let mut agent = Agent::in_namespace(&self.id, &self.node_a, &self.cgroup);
        agent.mode = mode;
        agent.extra_args = vec!["--node-name".into(), NODE_A_NAME.into()];
        agent.write(
            "node.yaml",
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE_A_NAME}\nstatus:\n  addresses:\n  - {{type: InternalIP, address: {NODE_A_IP}}}\n"
            ),
        );
        agent
    }

    /// node-a's agent as on a dual-stack node: its Node object gives both 198.18.100.1
    /// and 2001:db8:18:100::1 (kubelet lists an InternalIP per family).
    pub fn agent_dual_stack(&self, mode: &'static str) -> Agent {
        let agent = self.agent(mode);
        agent.write(
            "node.yaml",
            &format!(
                "apiVersion: v1\nkind: Node\nmetadata:\n  name: {NODE_A_NAME}\nstatus:\n  addresses:\n  - {{type: InternalIP, address: {NODE_A_IP}}}\n  - {{type: InternalIP, address: {NODE_A_IP6}}}\n"
            ),
        );
        agent
    }

    /// Both pods as ready endpoints, each on its node.
    pub fn endpoints(&self) -> Vec<manifests::Endpoint<'_>> {
        vec![
            manifests::Endpoint {
                node: Some(NODE_A_NAME),
                ..manifests::Endpoint::ready(&self.pod_a.ip, &self.pod_a.name)
            },
            manifests::Endpoint {
                node: Some(NODE_B_NAME),
                ..manifests::Endpoint::ready(&self.pod_b.ip, &self.pod_b.name)
            },
        ]
    }

    /// Both pods as ready endpoints by their IPv6 addresses, each on its node.
    pub fn endpoints6(&self) -> Vec<manifests::Endpoint<'_>> {
        vec![
            manifests::Endpoint {
                node: Some(NODE_A_NAME),
                ..manifests::Endpoint::ready(&self.pod_a.ip6, &self.pod_a.name)
            },
            manifests::Endpoint {
                node: Some(NODE_B_NAME),
                ..manifests::Endpoint::ready(&self.pod_b.ip6, &self.pod_b.name)
            },
        ]
    }

    /// `probe connect` from the external client.
    pub fn probe(&self, args: &[&str]) -> Report {
        let out = run(self
            .client
            .command(bin_dir().join("probe"), None)
            .arg("connect")
            .args(args));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("probe output {out:?}: {e}"))
    }

    /// A command in the external client's namespace (curl, say).
    pub fn client_command(&self, program: &str) -> Command {
        self.client.command(program, None)
    }
}

impl Default for TwoNodes {
    fn default() -> Self {
        Self::new()
    }
}
