//! `cargo xtask bench`: the data path and the control plane, for direct connections, the
//! eBPF mode and the iptables mode, at several numbers of Services, in one run.
//!
//! Topology: a client namespace (the node: the agent, its programs or its chains, and the
//! load generator) joined by one veth pair to a server namespace holding the five backend
//! addresses 198.18.1.2-6, and an outside namespace (198.18.9.2) joined to the node by
//! another veth pair: the client of the NodePort case, whose connections reach the node's
//! address 198.18.9.1 and are translated by the tc programs (eBPF mode, attached to both
//! of the node's links) or kube-proxy's chains (iptables mode). Nothing else is connected.
//!
//! Method (shared/TESTING.md): the server closes first (TIME_WAIT stays on its side, not on
//! the client's ports); every mode and scale uses ports of its own; the load generator and
//! the server are pinned to one CPU, so a mode's cost shows as fewer connections per
//! second; each point is the median of several runs; SYN retransmissions are counted, since
//! one would cost a second of latency. The server namespace keeps no TIME_WAIT sockets
//! (`tcp_max_tw_buckets=0`): with iptables DNAT, a client port reused for another
//! ClusterIP that lands on the same backend would meet that backend's TIME_WAIT socket
//! with a timestamp from another ClusterIP's clock offset, and PAWS drops the SYN (a one
//! second retransmission). The agent runs unpinned and idle during the runs.
//! Control-plane figures come from `bench-control`.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    fs,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::programs::links::{FdLink, PinnedLink};
use clap::Parser;
use integration::{
    Agent, Cgroup, ChildGuard, Netns,
    bench_report::{ControlPlane, Datapath, Environment, Modes, NodePortCase, Report, Scale},
    bin_dir, command_in, unique,
};

#[derive(Parser)]
struct Args {
    /// The numbers of Services to measure at.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    scales: Vec<usize>,
    /// Seconds-long smoke run for CI: 10 and 100 Services, one short run per point. It
    /// checks that every figure was produced, not how fast it was.
    #[arg(long)]
    quick: bool,
    /// Length of one data path run.
    #[arg(long, default_value_t = 2000)]
    duration_ms: u64,
    /// Runs per data path point (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// One-endpoint changes timed per control-plane point.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// The CPU the load generator and the server share.
    #[arg(long, default_value_t = 1)]
    cpu: usize,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

const ENDPOINTS: usize = 5;
/// NodePorts are 30000 + i: scales above this have no NodePort case.
const NODEPORT_MAX: usize = 20_000;
/// The node's address toward the outside namespace (its Node object's).
const NODE_IP: &str = "198.18.9.1";
/// ClusterIPs come from 198.19.0.0/16.
const MAX_SERVICES: usize = 65_000;
const BACKENDS: [&str; ENDPOINTS] = [
    "198.18.1.2",
    "198.18.1.3",
    "198.18.1.4",
    "198.18.1.5",
    "198.18.1.6",
];

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("bench: {e:#}");
        std::process::exit(1);
    }
}

/// Set by SIGINT or SIGTERM: the run stops after the current measurement, and everything it
/// created is removed on the way out (a signal's default action would skip that).
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn stop_requested() -> anyhow::Result<()> {
    if STOP.load(std::sync::atomic::Ordering::SeqCst) {
        bail!("interrupted; removing the namespaces, cgroup and pins");
    }
    Ok(())
}

fn run(mut args: Args) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    if !integration::privileged() {
        bail!("the benchmark needs root (network namespaces, BPF programs, iptables)");
    }
    if let Some(n) = args.scales.iter().find(|n| **n == 0 || **n > MAX_SERVICES) {
        bail!("--scales: {n} is outside 1..={MAX_SERVICES} (the ClusterIPs are one /16)");
    }
    if args.quick {
        args.scales = vec![10, 100];
        args.duration_ms = 300;
        args.runs = 1;
        args.changes = 10;
    }
    let stats = BpfStats::enable()?;
    let bench = Bench::new(&args)?;
    let mut report = Report {
        environment: environment(&args)?,
        scales: Vec::new(),
    };
    for (index, &services) in args.scales.iter().enumerate() {
        eprintln!("bench: {services} Services");
        let mut scale = bench.scale(services, index, &args, &stats)?;
        scale.compute_ratios();
        report.scales.push(scale);
    }
    drop(bench);
    drop(stats);

    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let path = args.out.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("results.json", &serde_json::to_string_pretty(&report)?)?;
    write("results.md", &report.markdown())?;
    write("plot.svg", &report.svg())?;
    print!("{}", report.markdown());
    println!(
        "\nwritten: {0}/results.json, {0}/results.md, {0}/plot.svg",
        args.out.display()
    );
    let missing: Vec<String> = report.scales.iter().flat_map(Scale::missing).collect();
    if !missing.is_empty() {
        bail!("figures not produced: {}", missing.join(", "));
    }
    Ok(())
}

/// The client and server namespaces, the client's cgroup, and the backend server.
struct Bench {
    id: String,
    cpu: usize,
    _server: ChildGuard,
    cgroup: Cgroup,
    client: Netns,
    _server_ns: Netns,
    /// The NodePort case's client, outside the node.
    outside: Netns,
}

/// Where a load generator runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// On the node, in the agent's cgroup (the socket programs see it).
    NodeSocket,
    /// On the node, outside the cgroup.
    Node,
    /// In the outside namespace: a client of NodePorts.
    Outside,
}

/// Ports of one scale: direct, eBPF, iptables.
fn ports(index: usize) -> [u16; 3] {
    let base = 9100 + 3 * index as u16;
    [base, base + 1, base + 2]
}

impl Bench {
    fn new(args: &Args) -> anyhow::Result<Self> {
        let id = unique("epxbench");
        let cgroup = Cgroup::new(&id);
        let client = Netns::new(format!("{id}-c"));
        let server_ns = Netns::new(format!("{id}-s"));
        client.link_to("vs", "198.18.0.1", &server_ns, "eth0", "198.18.0.2");
        client.ip(&["route", "add", "198.18.1.0/24", "via", "198.18.0.2"]);
        // iptables DNATs after the route lookup: the service range needs a route.
        client.ip(&["route", "add", "198.19.0.0/16", "via", "198.18.0.2"]);
        for ip in BACKENDS {
            server_ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        }
        // The outside client: reaches NodePorts on the node, and (direct arm) the backends
        // through the node, which forwards.
        let outside = Netns::new(format!("{id}-o"));
        client.link_to("vx", NODE_IP, &outside, "eth0", "198.18.9.2");
        outside.ip(&["route", "add", "198.18.1.0/24", "via", NODE_IP]);
        server_ns.ip(&["route", "add", "198.18.9.0/24", "via", "198.18.0.1"]);
        client.sysctl("net.ipv4.ip_forward=1");
        outside.sysctl("net.ipv4.ip_local_port_range=1024 65535");
        server_ns.sysctl("net.ipv4.tcp_max_tw_buckets=0");
        client.sysctl("net.ipv4.ip_local_port_range=1024 65535");
        let mut serve = server_ns.command(bin_dir().join("loadgen"), None);
        serve.args(["serve", "--cpu", &args.cpu.to_string()]);
        for index in 0..args.scales.len() {
            for port in ports(index) {
                for ip in BACKENDS {
                    serve.args(["--listen", &format!("{ip}:{port}")]);
                }
            }
        }
        let server = spawn_ready(&mut serve)?;
        Ok(Self {
            id,
            cpu: args.cpu,
            _server: server,
            cgroup,
            client,
            _server_ns: server_ns,
            outside,
        })
    }

    fn scale(
        &self,
        services: usize,
        index: usize,
        args: &Args,
        stats: &BpfStats,
    ) -> anyhow::Result<Scale> {
        let [direct_port, ebpf_port, iptables_port] = ports(index);
        let work = std::env::temp_dir().join(format!("{}-{services}", self.id));
        fs::create_dir_all(&work)?;

        let direct_targets = work.join("direct");
        fs::write(
            &direct_targets,
            BACKENDS
                .iter()
                .map(|ip| format!("{ip}:{direct_port}\n"))
                .collect::<String>(),
        )?;
        let vips = work.join("vips");
        fs::write(
            &vips,
            (0..services)
                .map(|i| format!("{}:80\n", vip(i)))
                .collect::<String>(),
        )?;
        let node_ports = work.join("nodeports");
        fs::write(
            &node_ports,
            (0..services.min(NODEPORT_MAX))
                .map(|i| format!("{NODE_IP}:{}\n", 30_000 + i))
                .collect::<String>(),
        )?;
        let with_nodeports = services <= NODEPORT_MAX;
        // Direct runs alternate with the eBPF runs, with the client outside the cgroup (no
        // program runs for it) and no iptables rules in the namespace: drift on this
        // machine hits both alike.
        let (ebpf, ebpf_rss, (direct, ns_per_connect, ns_floor, np_ebpf)) =
            self.with_agent("ebpf", services, ebpf_port, index, |agent| {
                let before = stats.connect4(&agent.cgroup)?;
                let mut arms = self.datapath(
                    &[(&direct_targets, Origin::Node), (&vips, Origin::NodeSocket)],
                    args,
                )?;
                let after = stats.connect4(&agent.cgroup)?;
                let calls = after.1.saturating_sub(before.1).max(1);
                let ns = after.0.saturating_sub(before.0) as f64 / calls as f64;
                // Calibration: the same program on connections to addresses that are no
                // Service (one map lookup that misses), the floor of any connect4 program
                // on this machine with the statistics on.
                let before = stats.connect4(&agent.cgroup)?;
                self.loadgen(
                    &direct_targets,
                    Origin::NodeSocket,
                    args.duration_ms / 2,
                    100,
                    99,
                )?;
                let after = stats.connect4(&agent.cgroup)?;
                let calls = after.1.saturating_sub(before.1).max(1);
                let floor = after.0.saturating_sub(before.0) as f64 / calls as f64;
                let ebpf = arms.pop().context("eBPF runs")?;
                let direct = arms.pop().context("direct runs")?;
                // NodePorts from outside, through the tc programs, alternating with the
                // same client reaching the backends directly.
                let nodeport = if with_nodeports {
                    let before = stats.tc(&agent.bpffs)?;
                    let mut arms = self.datapath(
                        &[
                            (&direct_targets, Origin::Outside),
                            (&node_ports, Origin::Outside),
                        ],
                        args,
                    )?;
                    let after = stats.tc(&agent.bpffs)?;
                    let packets = after.1.saturating_sub(before.1).max(1);
                    let tc_ns = after.0.saturating_sub(before.0) as f64 / packets as f64;
                    let tc = arms.pop().context("NodePort eBPF runs")?;
                    let direct = arms.pop().context("NodePort direct runs")?;
                    Some((direct, tc, tc_ns))
                } else {
                    None
                };
                Ok((ebpf, (direct, ns, floor, nodeport)))
            })?;
        let (iptables, iptables_rss, np_iptables) =
            self.with_agent("iptables", services, iptables_port, index, |_| {
                let mut arms = self.datapath(&[(&vips, Origin::NodeSocket)], args)?;
                let nodeport = if with_nodeports {
                    let mut np = self.datapath(&[(&node_ports, Origin::Outside)], args)?;
                    Some(np.pop().context("NodePort iptables runs")?)
                } else {
                    None
                };
                Ok((arms.pop().context("iptables runs")?, nodeport))
            })?;
        let nodeport = match (np_ebpf, np_iptables) {
            (Some((direct, ebpf, tc_ns_per_packet)), Some(iptables)) => Some(NodePortCase {
                datapath: Modes {
                    direct: Some(direct),
                    ebpf,
                    iptables,
                },
                tc_ns_per_packet,
                ..NodePortCase::default()
            }),
            _ => None,
        };

        let _ = fs::remove_dir_all(&work);
        Ok(Scale {
            services,
            datapath: Modes {
                direct: Some(direct),
                ebpf,
                iptables,
            },
            bpf_ns_per_connect: ns_per_connect,
            bpf_ns_per_passthrough: ns_floor,
            control: Modes {
                direct: None,
                ebpf: control_plane(services, args.changes, false)?,
                iptables: control_plane(services, args.changes, true)?,
            },
            agent_rss_mib: Modes {
                direct: None,
                ebpf: ebpf_rss,
                iptables: iptables_rss,
            },
            ratios: Default::default(),
            nodeport,
        })
    }

    /// Starts the agent in `mode` on `services` Services whose endpoints listen on `port`,
    /// waits until a connection goes through, runs `measure`, and stops it (its cleanup
    /// runs in the client namespace).
    fn with_agent<T>(
        &self,
        mode: &'static str,
        services: usize,
        port: u16,
        index: usize,
        measure: impl FnOnce(&Agent) -> anyhow::Result<(Datapath, T)>,
    ) -> anyhow::Result<(Datapath, f64, T)> {
        let mut agent = Agent::in_namespace(
            &format!("{}-{mode}-{index}", self.id),
            &self.client,
            &self.cgroup,
        );
        agent.mode = mode;
        agent.extra_args = vec!["--iptables-backend".into(), "nft".into()];
        agent
            .extra_args
            .extend(["--node-name".into(), "bench-node".into()]);
        if mode == "ebpf" {
            agent
                .extra_args
                .extend(["--interfaces".into(), "vx,vs".into()]);
        }
        agent.write("services.json", &manifests(services, port));
        agent.start();
        self.wait_serving(&agent, services)?;
        let rss = agent.pid().map(rss_mib).transpose()?.unwrap_or_default();
        let (datapath, extra) = measure(&agent)?;
        agent.stop();
        Ok((datapath, rss, extra))
    }

    /// Until the agent has synced and the last Service answers.
    fn wait_serving(&self, agent: &Agent, services: usize) -> anyhow::Result<()> {
        let last = std::env::temp_dir().join(format!("{}-last", self.id));
        fs::write(&last, format!("{}:80\n", vip(services - 1)))?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(120) {
            if agent.log().contains("\"synced\"") {
                let probe = self.loadgen(&last, Origin::NodeSocket, 50, 0, 0)?;
                if probe.connections > 0 && probe.errors == 0 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the agent ({}) never served {services} Services; its log:\n{}",
            agent.mode,
            agent.log()
        )
    }

    /// `runs` rounds, each running every arm (targets, and whether the client is in the
    /// agent's cgroup) once; per arm, the median run by rate and the SYN retransmissions
    /// counted during its runs.
    fn datapath(&self, arms: &[(&Path, Origin)], args: &Args) -> anyhow::Result<Vec<Datapath>> {
        let mut runs: Vec<Vec<Datapath>> = vec![Vec::new(); arms.len()];
        let mut retransmits = vec![0u64; arms.len()];
        for seed in 0..args.runs {
            for (arm, (targets, origin)) in arms.iter().enumerate() {
                stop_requested()?;
                self.flush_conntrack();
                let before = self.syn_retransmits(*origin)?;
                runs[arm].push(self.loadgen(
                    targets,
                    *origin,
                    args.duration_ms,
                    200,
                    seed as u64 + 1,
                )?);
                retransmits[arm] += self.syn_retransmits(*origin)?.saturating_sub(before);
            }
        }
        let conntrack_entries = self.conntrack_entries();
        runs.into_iter()
            .zip(retransmits)
            .map(|(mut runs, syn_retransmits)| {
                let rates: Vec<f64> = runs.iter().map(|r| r.rate_per_s).collect();
                runs.sort_by(|a, b| a.rate_per_s.total_cmp(&b.rate_per_s));
                let median = runs
                    .get(runs.len() / 2)
                    .cloned()
                    .context("no data path run")?;
                Ok(Datapath {
                    syn_retransmits,
                    run_rates: rates,
                    conntrack_entries,
                    ..median
                })
            })
            .collect()
    }

    fn loadgen(
        &self,
        targets: &Path,
        origin: Origin,
        duration_ms: u64,
        warmup_ms: u64,
        seed: u64,
    ) -> anyhow::Result<Datapath> {
        let cgroup = (origin == Origin::NodeSocket).then_some(self.cgroup.path.as_path());
        let out = command_in(&self.netns(origin).name, cgroup, bin_dir().join("loadgen"))
            .arg("connect")
            .arg("--targets")
            .arg(targets)
            .args(["--duration-ms", &duration_ms.to_string()])
            .args(["--warmup-ms", &warmup_ms.to_string()])
            .args(["--seed", &seed.to_string()])
            .args(["--cpu", &self.cpu.to_string()])
            .output()
            .context("running loadgen")?;
        if !out.status.success() {
            bail!("loadgen: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("loadgen's JSON")?;
        let us = |k: &str| v["connect_ns"][k].as_f64().unwrap_or(0.0) / 1000.0;
        let errors = v["errors"]
            .as_object()
            .map_or(0, |e| e.values().filter_map(|n| n.as_u64()).sum());
        Ok(Datapath {
            rate_per_s: v["rate_per_s"].as_f64().unwrap_or(0.0),
            p50_us: us("p50"),
            p99_us: us("p99"),
            p999_us: us("p999"),
            connections: v["connections"].as_u64().unwrap_or(0),
            errors,
            ..Default::default()
        })
    }

    /// Empties the client namespace's conntrack table before a run. In iptables mode every
    /// connection leaves an entry for conntrack's TIME_WAIT timeout (120 s): over a whole
    /// benchmark they would fill the table (262,144 here; the limit is global and cannot be
    /// raised from a namespace) and new connections would be dropped. Each run gets the
    /// same room instead.
    fn flush_conntrack(&self) {
        let _ = command_in(&self.client.name, None, "conntrack")
            .arg("-F")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// conntrack entries in the client namespace (0 when conntrack is not loaded).
    fn conntrack_entries(&self) -> u64 {
        command_in(&self.client.name, None, "cat")
            .arg("/proc/sys/net/netfilter/nf_conntrack_count")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0)
    }

    fn netns(&self, origin: Origin) -> &Netns {
        match origin {
            Origin::Outside => &self.outside,
            Origin::NodeSocket | Origin::Node => &self.client,
        }
    }

    /// TcpExt TCPSynRetrans in the namespace the load generator runs in.
    fn syn_retransmits(&self, origin: Origin) -> anyhow::Result<u64> {
        let out = command_in(&self.netns(origin).name, None, "cat")
            .arg("/proc/net/netstat")
            .output()
            .context("reading /proc/net/netstat")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            bail!("no TcpExt counters in /proc/net/netstat");
        };
        Ok(names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "TCPSynRetrans")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0))
    }
}

fn spawn_ready(cmd: &mut std::process::Command) -> anyhow::Result<ChildGuard> {
    use std::io::BufRead as _;
    let mut child = ChildGuard(
        cmd.stdout(Stdio::piped())
            .spawn()
            .context("starting loadgen serve")?,
    );
    let stdout = child.0.stdout.take().context("loadgen stdout")?;
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("loadgen serve did not start: {line:?}");
    }
    Ok(child)
}

/// The ClusterIP of Service `i`.
fn vip(i: usize) -> String {
    let n = i + 1;
    format!("198.19.{}.{}", (n >> 8) & 0xff, n & 0xff)
}

/// `services` Services, each with the five backends on `port` (NodePort 30000 + i for
/// the first NODEPORT_MAX), and the node's Node object, as one JSON List.
fn manifests(services: usize, port: u16) -> String {
    let endpoints: Vec<String> = BACKENDS
        .iter()
        .map(|ip| format!(r#"{{"addresses":["{ip}"],"conditions":{{"ready":true}}}}"#))
        .collect();
    let endpoints = endpoints.join(",");
    let mut items = Vec::with_capacity(2 * services + 1);
    items.push(format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"bench-node"}},"status":{{"addresses":[{{"type":"InternalIP","address":"{NODE_IP}"}}]}}}}"#
    ));
    for i in 0..services {
        let node_port = if i < NODEPORT_MAX {
            format!(r#","nodePort":{}"#, 30_000 + i)
        } else {
            String::new()
        };
        let type_ = if i < NODEPORT_MAX {
            "NodePort"
        } else {
            "ClusterIP"
        };
        items.push(format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"svc-{i}","namespace":"bench"}},"spec":{{"type":"{type_}","clusterIP":"{}","ports":[{{"name":"http","port":80,"targetPort":{port},"protocol":"TCP"{node_port}}}]}}}}"#,
            vip(i)
        ));
        items.push(format!(
            r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"svc-{i}-1","namespace":"bench","labels":{{"kubernetes.io/service-name":"svc-{i}"}}}},"addressType":"IPv4","ports":[{{"name":"http","port":{port},"protocol":"TCP"}}],"endpoints":[{endpoints}]}}"#
        ));
    }
    format!(
        r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#,
        items.join(",")
    )
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    Ok(kib / 1024.0)
}

/// `bench-control` at `services`, for the maps or for iptables-restore.
fn control_plane(services: usize, changes: usize, iptables: bool) -> anyhow::Result<ControlPlane> {
    let mut cmd = std::process::Command::new(bin_dir().join("bench-control"));
    cmd.args(["--services", &services.to_string()])
        .args(["--changes", &changes.to_string()])
        .args(["--connect-samples", "0"]);
    if iptables {
        cmd.args(["--iptables", "--iptables-backend", "nft"]);
    }
    let out = cmd.output().context("running bench-control")?;
    if !out.status.success() {
        bail!(
            "bench-control{}: {}",
            if iptables { " --iptables" } else { "" },
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("bench-control printed no JSON")?;
    let v: serde_json::Value = serde_json::from_str(json)?;
    Ok(ControlPlane {
        cold_ms: v["cold_sync_ms"].as_f64().unwrap_or(0.0),
        change_p50_ms: v["change_ms"]["p50"].as_f64().unwrap_or(0.0),
        change_p99_ms: v["change_ms"]["p99"].as_f64().unwrap_or(0.0),
    })
}

/// The kernel's BPF run-time statistics, on for the run: the kernel counts each program's
/// run time and runs while a `BPF_ENABLE_STATS` descriptor is open (this one, held until
/// the bench ends), whatever `kernel.bpf_stats_enabled` says.
struct BpfStats {
    _enabled: OwnedFd,
}

impl BpfStats {
    fn enable() -> anyhow::Result<Self> {
        let enabled = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling the kernel's BPF run-time statistics (BPF_ENABLE_STATS)")?;
        Ok(Self { _enabled: enabled })
    }

    /// (run_time_ns, run_cnt) of the tc programs whose links are pinned in `bpffs`, summed
    /// over the programs (one program may serve several links).
    fn tc(&self, bpffs: &Path) -> anyhow::Result<(u64, u64)> {
        let mut ids = BTreeSet::new();
        for entry in fs::read_dir(bpffs).context("reading the pin directory")? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if !name.is_some_and(|n| n.starts_with("link_epx_tc_")) {
                continue;
            }
            let link = PinnedLink::from_pin(&path)
                .with_context(|| format!("opening the link pinned at {}", path.display()))?;
            let info = FdLink::from(link)
                .info()
                .with_context(|| format!("reading the link pinned at {}", path.display()))?;
            ids.insert(info.program_id());
        }
        run_stats(&ids)
    }

    /// (run_time_ns, run_cnt) of the connect4 program attached to `cgroup`.
    fn connect4(&self, cgroup: &Path) -> anyhow::Result<(u64, u64)> {
        let Some((id, _)) = integration::attached_programs(cgroup)
            .into_iter()
            .find(|(_, name)| name == proxy_common::names::PROG_CONNECT4)
        else {
            bail!("no connect4 program attached to {}", cgroup.display());
        };
        let id = u32::try_from(id).context("program id out of range")?;
        run_stats(&BTreeSet::from([id]))
    }
}

/// (run_time_ns, run_cnt) summed over the loaded programs with these ids, from the
/// kernel's program info.
fn run_stats(ids: &BTreeSet<u32>) -> anyhow::Result<(u64, u64)> {
    let (mut total, mut found, mut skipped) = ((0, 0), 0, None);
    for program in aya::programs::loaded_programs() {
        // Other programs on the machine come and go while the list is walked; one that
        // cannot be read is not one of ours unless ours go missing.
        let program = match program {
            Ok(program) => program,
            Err(e) => {
                skipped = Some(e);
                continue;
            }
        };
        if ids.contains(&program.id()) {
            let ns = u64::try_from(program.run_time().as_nanos()).unwrap_or(u64::MAX);
            total = (total.0 + ns, total.1 + program.run_count());
            found += 1;
        }
    }
    if found < ids.len() {
        let why = skipped.map_or_else(String::new, |e| format!(" (listing failed: {e})"));
        bail!("BPF programs {ids:?}: only {found} found among the loaded programs{why}");
    }
    Ok(total)
}

fn environment(args: &Args) -> anyhow::Result<Environment> {
    let text = |cmd: &mut std::process::Command| -> String {
        cmd.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let mut placement = String::new();
    let _ = write!(
        placement,
        "load generator and server pinned to CPU {}",
        args.cpu
    );
    Ok(Environment {
        kernel: text(std::process::Command::new("uname").arg("-r")),
        iptables: text(std::process::Command::new("iptables-nft").arg("--version")),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|m| m.trim().to_owned())
            .unwrap_or_else(|| "unknown CPU".into()),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        placement,
        duration_ms: args.duration_ms,
        runs: args.runs,
        endpoints_per_service: ENDPOINTS,
        conntrack_max: fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0),
    })
}
