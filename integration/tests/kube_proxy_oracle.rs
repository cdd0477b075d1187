//! kube-proxy's own packet-flow vectors as an external oracle: for each case (one
//! kube-proxy test, see `vectors`), the same Services and EndpointSlices go to the agent as
//! manifests, in eBPF mode and in iptables mode, and every vector runs as a real
//! connection from a namespace standing for its source (a pod on this node, the node
//! itself, an external client) in the `kube_node` topology. The answer must come from one
//! of the backends the vector lists, or the connection must be refused (REJECT) or hear
//! nothing (DROP), as kube-proxy's vector says.
//!
//! Masquerade is checked where a real network shows it: on TCP, the backend says which
//! source address it saw; masqueraded means the node's IP. A connection from the node
//! itself carries the node's IP either way, so there it is not checked.
//!
//! Where the eBPF mode differs on purpose, `expected` (masquerade) or the vector
//! (`Ebpf::Differs`, outcome) says so with the reason:
//! - a pod on this node reaching a Service (socket programs): the backend always sees the
//!   pod's own address, where kube-proxy masquerades (hairpin to the ClusterIP; pod to an
//!   ExternalIP, LoadBalancer IP or NodePort under externalTrafficPolicy Cluster);
//! - an external client (tc programs): masqueraded only toward a backend on another
//!   node; a backend on this node sees the client's address, where kube-proxy
//!   masquerades every Cluster-policy external flow;
//! - internalTrafficPolicy Local without a local endpoint: refused at once, where
//!   kube-proxy DROPs;
//! - a packet from outside the node to a ClusterIP: not translated (kube-proxy serves it);
//! - loadBalancerSourceRanges: not checked for the node's own sockets, pods on it included
//!   (kube-proxy drops a pod outside the ranges).
//!
//! Every vector runs in both modes (the bugs this oracle found are fixed: localhost
//! NodePorts in both modes).
//!
//! kube-proxy's node name `testNodeName` is `node-a` here; addresses are mapped by
//! `addresses`. An IPv6 case (its node IP is `testNodeIPv6`) builds an IPv6 topology and
//! runs against kube-proxy's IPv6 proxier's vectors the same way. kube-proxy has IPv6
//! vectors for TestNodePorts only; every other case also runs as its IPv6 mirror
//! (`mirror`: the same Services, slices and expected outcomes in IPv6 addresses; ours,
//! not kube-proxy's text), in both modes (`ebpf_ipv6_mirror::*`,
//! `iptables_ipv6_mirror::*`).

#[path = "kube_proxy_oracle/addresses.rs"]
mod addresses;
#[path = "kube_proxy_oracle/mirror.rs"]
mod mirror;
#[path = "kube_proxy_oracle/vectors.rs"]
mod vectors;

use integration::{
    Agent, Report,
    kube_node::{KubeNode, PodSpec},
};
use vectors::{Case, Ebpf, Output, Protocol, Vector};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ebpf,
    Iptables,
}

/// Whether the backend must see the node's address instead of the client's.
#[derive(Clone, Copy, Debug)]
enum Masq {
    /// UDP answers do not say, and the node's own connections carry its IP either way.
    NotObservable,
    Is(bool),
    /// Only when the backend runs on another node.
    TowardOtherNodes,
}

/// What a vector's connection must show in a mode.
#[derive(Debug)]
enum Expect {
    /// Every attempt answered by one of these (kube-proxy's `IP:port`).
    Answered {
        backends: &'static [&'static str],
        masq: Masq,
    },
    Refused,
    Silent,
    NoBackend,
}

/// The agent and the namespaces; the agent drops first (its cleanup runs inside the
/// node's namespace).
struct World {
    agent: Agent,
    node: KubeNode,
}

fn world(mode: Mode, case: &Case) -> World {
    let pods = case
        .pods
        .iter()
        .map(|p| PodSpec {
            ip: addresses::ours(p.ip),
            // Answers read `IP:port` as kube-proxy writes a backend (`[v6]:port`).
            label: match p.ip.contains(':') {
                true => format!("[{}]", p.ip),
                false => p.ip.to_string(),
            },
            on_this_node: p.on_this_node,
            tcp: p.tcp.to_vec(),
            udp: p.udp.to_vec(),
        })
        .collect();
    let mut externals: Vec<String> = all_vectors(case)
        .map(|v| v.source)
        .filter(|s| {
            *s != case.node_ip && !s.starts_with("127.") && !case.pods.iter().any(|p| p.ip == *s)
        })
        .map(addresses::ours)
        .collect();
    externals.sort();
    externals.dedup();
    let alt: Vec<String> = case
        .alt_node_ips
        .iter()
        .map(|a| addresses::ours(a))
        .collect();
    let ipv6 = case.node_ip.contains(':');
    let (other_node_ip, cluster_cidr) = match ipv6 {
        true => (addresses::OTHER_NODE_IP6, addresses::CLUSTER_CIDR_DUAL),
        false => (addresses::OTHER_NODE_IP, addresses::CLUSTER_CIDR),
    };
    let node = KubeNode::new(
        &addresses::ours(case.node_ip),
        &alt,
        other_node_ip,
        pods,
        &externals,
    );
    let mode_name = match mode {
        Mode::Ebpf => "ebpf",
        Mode::Iptables => "iptables",
    };
    let mut agent = node.agent(mode_name, &alt, cluster_cidr);
    agent
        .extra_args
        .extend(case.agent_args.iter().map(|a| a.to_string()));
    agent.write("case.yaml", &addresses::map_text(case.manifests));
    node.start(&mut agent);
    World { agent, node }
}

/// Every vector of the case, its steps' included.
fn all_vectors(case: &Case) -> impl Iterator<Item = &Vector> {
    case.vectors
        .iter()
        .chain(case.then.iter().flat_map(|step| step.vectors.iter()))
}

fn is_pod_on_this_node(case: &Case, ip: &str) -> bool {
    case.pods.iter().any(|p| p.ip == ip && p.on_this_node)
}

fn expected(mode: Mode, case: &Case, v: &Vector) -> Expect {
    let from_node = v.source == case.node_ip || v.source.starts_with("127.");
    let from_socket = from_node || is_pod_on_this_node(case, v.source);
    let output = match (mode, v.ebpf) {
        (Mode::Ebpf, Ebpf::Differs(output, _why)) => output,
        _ => v.output,
    };
    match output {
        Output::Backends(backends) => {
            let masq = match (mode, from_socket) {
                _ if v.protocol == Protocol::Udp || from_node => Masq::NotObservable,
                (Mode::Iptables, _) => Masq::Is(v.masq),
                // Difference: a pod's connect is translated in its socket, before any
                // packet exists; nothing masquerades it (kube-proxy does for hairpin).
                (Mode::Ebpf, true) => Masq::Is(false),
                // Difference: the tc programs masquerade an external client only toward
                // another node's backend (whose replies must come back through this
                // node); kube-proxy masquerades every Cluster-policy external flow.
                (Mode::Ebpf, false) => Masq::TowardOtherNodes,
            };
            Expect::Answered { backends, masq }
        }
        Output::Reject => Expect::Refused,
        Output::Drop => Expect::Silent,
        Output::Unhandled => Expect::NoBackend,
    }
}

fn probe(w: &World, v: &Vector, count: usize, timeout_ms: u64) -> Report {
    let to = addresses::host_port(&addresses::ours(v.dest), v.port);
    let count = count.to_string();
    let timeout = timeout_ms.to_string();
    let mut args = vec!["--to", &to, "--count", &count, "--timeout-ms", &timeout];
    match v.protocol {
        Protocol::Tcp => args.push("--ask-source"),
        Protocol::Udp => args.push("--udp"),
    }
    w.node.probe_from(&addresses::ours(v.source), &args)
}

/// Checks one vector; `Err` describes the mismatch.
fn check(w: &World, mode: Mode, case: &Case, v: &Vector) -> Result<(), String> {
    let source_ours = addresses::ours(v.source);
    match expected(mode, case, v) {
        Expect::Answered { backends, masq } => {
            // One attempt first: a vector that fails shows it without waiting eight times.
            let first = probe(w, v, 1, 2000);
            if !first.errors.is_empty() {
                return Err(format!("errors {:?}", first.errors));
            }
            let report = probe(w, v, 8, 2000);
            if !report.errors.is_empty() {
                return Err(format!("errors {:?}", report.errors));
            }
            for answer in report.answers.keys() {
                let (backend, saw) = match answer.split_once(" saw ") {
                    Some((b, s)) => (b, Some(s)),
                    None => (answer.as_str(), None),
                };
                if !backends.contains(&backend) {
                    return Err(format!(
                        "answered by {backend}, expected one of {backends:?}"
                    ));
                }
                let ip = backend
                    .rsplit_once(':')
                    .map_or(backend, |(host, _)| host.trim_matches(['[', ']']));
                let want = match masq {
                    Masq::NotObservable => None,
                    Masq::Is(m) => Some(m),
                    Masq::TowardOtherNodes => Some(!is_pod_on_this_node(case, ip)),
                };
                if let (Some(saw), Some(want)) = (saw, want) {
                    let masqueraded = saw != source_ours;
                    if masqueraded != want {
                        return Err(format!(
                            "{backend} saw {} ({saw}): masquerade {masqueraded}, expected {want}",
                            addresses::theirs(saw)
                        ));
                    }
                }
            }
            Ok(())
        }
        // One attempt tells REJECT from DROP (a timeout) and from an answer. It can take a
        // second: over IPv6 the ICMPv6 error of ip6tables' REJECT reaches the client
        // while its connect() still holds the socket (TcpExtLockDroppedIcmps), which IPv6
        // TCP keeps as a soft error; the SYN's retransmission a second later is refused.
        Expect::Refused => {
            let report = probe(w, v, 1, 2000);
            match report.errors.get("ECONNREFUSED") {
                Some(1) => Ok(()),
                _ => Err(format!("expected ECONNREFUSED (REJECT), got {report:?}")),
            }
        }
        Expect::Silent => {
            let report = probe(w, v, 1, 500);
            match report.errors.get("ETIMEDOUT") {
                Some(1) => Ok(()),
                _ => Err(format!("expected a timeout (DROP), got {report:?}")),
            }
        }
        Expect::NoBackend => {
            let report = probe(w, v, 1, 500);
            match report.answers.is_empty() {
                true => Ok(()),
                false => Err(format!("expected no backend to answer, got {report:?}")),
            }
        }
    }
}

/// One line naming the vector, the mode and what went wrong.
fn describe(mode: Mode, v: &Vector, error: &str) -> String {
    let differs = match (mode, v.ebpf) {
        (Mode::Ebpf, Ebpf::Differs(_, why)) => format!(" [eBPF differs on purpose: {why}]"),
        _ => String::new(),
    };
    format!(
        "  {:?} {:?} {} -> {}:{} ({:?}): {error}{differs}",
        mode, v.protocol, v.source, v.dest, v.port, v.name
    )
}

/// Checks `vectors`, returning one line per failure.
fn failures(w: &World, mode: Mode, case: &Case, vectors: &[Vector]) -> Vec<String> {
    vectors
        .iter()
        .filter_map(|v| check(w, mode, case, v).err().map(|e| describe(mode, v, &e)))
        .collect()
}

/// Waits until `v` shows its expected outcome (a change was applied), for at most ten
/// seconds; the last check's result.
fn wait_applied(w: &World, mode: Mode, case: &Case, v: &Vector) -> Result<(), String> {
    let deadline =
        std::time::Instant::now() + integration::scaled(std::time::Duration::from_secs(10));
    loop {
        let result = check(w, mode, case, v);
        if result.is_ok() || std::time::Instant::now() >= deadline {
            return result;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn run_case(mode: Mode, case: &Case) {
    let w = world(mode, case);
    let mut failed = failures(&w, mode, case, case.vectors);
    for (i, step) in case.then.iter().enumerate() {
        w.agent
            .write("case.yaml", &addresses::map_text(step.manifests));
        let mut step_failed = Vec::new();
        // The first vector, once it shows the change, is checked; the others after it.
        if let Some((first, rest)) = step.vectors.split_first() {
            if let Err(e) = wait_applied(&w, mode, case, first) {
                step_failed.push(describe(mode, first, &e));
            }
            step_failed.extend(failures(&w, mode, case, rest));
        }
        failed.extend(
            step_failed
                .into_iter()
                .map(|f| format!("  after change {}:{f}", i + 1)),
        );
    }
    let total = all_vectors(case).count();
    assert!(
        failed.is_empty(),
        "{}: {} of {total} vectors failed:\n{}\nagent log:\n{}",
        case.test,
        failed.len(),
        failed.join("\n"),
        w.agent.log()
    );
}

/// The case as the fixture writes it.
fn as_written(case: &'static Case) -> &'static Case {
    case
}

/// One test per case and mode, in modules `$ebpf` and `$iptables`; each runs
/// `$case_of(case)` (the case itself, or its IPv6 mirror).
macro_rules! both_modes {
    ($ebpf:ident, $iptables:ident, $case_of:ident: $($test:ident: $case:ident),* $(,)?) => {
        mod $ebpf {
            $(
                #[test]
                fn $test() {
                    integration::require_privileges!();
                    super::run_case(super::Mode::Ebpf, super::$case_of(&super::vectors::$case));
                }
            )*
        }
        mod $iptables {
            $(
                #[test]
                fn $test() {
                    integration::require_privileges!();
                    super::run_case(
                        super::Mode::Iptables,
                        super::$case_of(&super::vectors::$case),
                    );
                }
            )*
        }
    };
}

both_modes!(
    ebpf,
    iptables,
    as_written:
    cluster_ip_general: CLUSTER_IP_GENERAL,
    load_balancer: LOAD_BALANCER,
    node_ports: NODE_PORTS,
    node_ports_without_localhost: NODE_PORTS_WITHOUT_LOCALHOST,
    external_traffic_policy_local: EXTERNAL_TRAFFIC_POLICY_LOCAL,
    external_traffic_policy_cluster: EXTERNAL_TRAFFIC_POLICY_CLUSTER,
    internal_traffic_policy_cluster: ITP_CLUSTER,
    internal_traffic_policy_local_one_local: ITP_LOCAL_ONE,
    internal_traffic_policy_local_many_local: ITP_LOCAL_MANY,
    internal_traffic_policy_local_none_local: ITP_LOCAL_NONE,
    terminating_local_ready_endpoints_exist: TERMINATING_LOCAL_READY,
    terminating_local_only_terminating: TERMINATING_LOCAL_ONLY_TERMINATING,
    terminating_local_on_remote_node: TERMINATING_LOCAL_REMOTE,
    terminating_local_no_usable_endpoints: TERMINATING_LOCAL_NONE_USABLE,
    terminating_cluster_ready_endpoints_exist: TERMINATING_CLUSTER_READY,
    terminating_cluster_only_terminating: TERMINATING_CLUSTER_ONLY_TERMINATING,
    terminating_cluster_on_remote_node: TERMINATING_CLUSTER_REMOTE,
    terminating_cluster_no_usable_endpoints: TERMINATING_CLUSTER_NONE_USABLE,
    internal_external_masquerade: INTERNAL_EXTERNAL_MASQUERADE,
    node_ports_ipv6: NODE_PORTS_IPV6,
);

// The IPv6 mirrors (see `mirror`). TestNodePorts' IPv6 case is kube-proxy's own
// (`node_ports_ipv6` above); the localhost-only case has nothing to mirror.
both_modes!(
    ebpf_ipv6_mirror,
    iptables_ipv6_mirror,
    mirror6:
    cluster_ip_general: CLUSTER_IP_GENERAL,
    load_balancer: LOAD_BALANCER,
    external_traffic_policy_local: EXTERNAL_TRAFFIC_POLICY_LOCAL,
    external_traffic_policy_cluster: EXTERNAL_TRAFFIC_POLICY_CLUSTER,
    internal_traffic_policy_cluster: ITP_CLUSTER,
    internal_traffic_policy_local_one_local: ITP_LOCAL_ONE,
    internal_traffic_policy_local_many_local: ITP_LOCAL_MANY,
    internal_traffic_policy_local_none_local: ITP_LOCAL_NONE,
    terminating_local_ready_endpoints_exist: TERMINATING_LOCAL_READY,
    terminating_local_only_terminating: TERMINATING_LOCAL_ONLY_TERMINATING,
    terminating_local_on_remote_node: TERMINATING_LOCAL_REMOTE,
    terminating_local_no_usable_endpoints: TERMINATING_LOCAL_NONE_USABLE,
    terminating_cluster_ready_endpoints_exist: TERMINATING_CLUSTER_READY,
    terminating_cluster_only_terminating: TERMINATING_CLUSTER_ONLY_TERMINATING,
    terminating_cluster_on_remote_node: TERMINATING_CLUSTER_REMOTE,
    terminating_cluster_no_usable_endpoints: TERMINATING_CLUSTER_NONE_USABLE,
    internal_external_masquerade: INTERNAL_EXTERNAL_MASQUERADE,
);

fn mirror6(case: &'static Case) -> &'static Case {
    mirror::ipv6(case)
}
