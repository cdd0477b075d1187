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
//!
//! Scale: up to 106,490 Services, their ClusterIPs from three blocks of 198.18.0.0/15
//! (`bench_addresses`); the first 20,000 have a NodePort. Above `--iptables-max-services`
//! the iptables mode is skipped, and the report says so.
//!
//! Program cost: the kernel's BPF run-time statistics, read around each run of each arm,
//! so a figure covers only the calls of its own arm: connect4 per translated connect (the
//! eBPF arm), per pass-through connect (a run to the backends from inside the cgroup), the
//! tc programs per run during the NodePort runs and during the forwarded direct runs.
//!
//! `--profile`: `perf record` of each agent from its start to its first `synced`
//! (`bench_profile`).

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use integration::{
    Agent, Cgroup, ChildGuard, Netns,
    bench_addresses::{self, MAX_SERVICES, SERVICE_BLOCKS},
    bench_profile::{self, Profile, Recorder},
    bench_report::{
        ControlPlane, Datapath, Environment, Modes, NodePortCase, ProgramCost, Report, Scale,
    },
    bench_stats::BpfStats,
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
    /// Skip the iptables mode (its agent, its data path and its control plane) at scales
    /// above this many Services: at 100,000 a cold iptables-restore takes minutes. The
    /// report says which scales were skipped.
    #[arg(long, value_name = "N")]
    iptables_max_services: Option<usize>,
    /// Profile each agent's cold sync with `perf record` (DWARF call graphs) and report the
    /// functions with the most samples; folded stacks go to the output directory.
    #[arg(long)]
    profile: bool,
    /// Functions listed per profile.
    #[arg(long, default_value_t = 15)]
    profile_top: usize,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

const ENDPOINTS: usize = 5;
/// The node's address toward the outside namespace (its Node object's).
const NODE_IP: &str = "198.18.9.1";
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
        bail!(
            "--scales: {n} is outside 1..={MAX_SERVICES} (the ClusterIP blocks: {})",
            SERVICE_BLOCKS.map(|b| b.cidr()).join(", ")
        );
    }
    if args.profile {
        bench_profile::perf_available()?;
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
        profiles: Vec::new(),
    };
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    for (index, &services) in args.scales.iter().enumerate() {
        eprintln!("bench: {services} Services");
        let started = Instant::now();
        let (mut scale, profiles) = bench.scale(services, index, &args, &stats)?;
        scale.compute_ratios();
        report.scales.push(scale);
        report.profiles.extend(profiles);
        eprintln!(
            "bench: {services} Services took {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    drop(bench);
    drop(stats);

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

/// What one agent's run measured besides its arms: the first arm's data path, the
/// agent's resident memory once synced, and with `--profile` its cold sync's profile.
struct AgentRun {
    datapath: Datapath,
    rss_mib: f64,
    /// Its first full sync, as it logged it.
    first_sync_ms: f64,
    profile: Option<Profile>,
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
        for block in SERVICE_BLOCKS {
            client.ip(&["route", "add", &block.cidr(), "via", "198.18.0.2"]);
        }
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
    ) -> anyhow::Result<(Scale, Vec<Profile>)> {
        let [direct_port, ebpf_port, iptables_port] = ports(index);
        let work = std::env::temp_dir().join(format!("{}-{services}", self.id));
        fs::create_dir_all(&work)?;
        let mut profiles = Vec::new();

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
        let node_port_count = bench_addresses::node_ports(services);
        let node_ports = work.join("nodeports");
        fs::write(
            &node_ports,
            (0..services)
                .filter_map(bench_addresses::node_port)
                .map(|port| format!("{NODE_IP}:{port}\n"))
                .collect::<String>(),
        )?;
        let iptables_skipped = args
            .iptables_max_services
            .filter(|max| services > *max)
            .map(|max| format!("{services} Services is above --iptables-max-services {max}"));
        // Direct runs alternate with the eBPF runs, with the client outside the cgroup (no
        // program runs for it) and no iptables rules in the namespace: drift on this
        // machine hits both alike.
        let (ebpf_run, (direct, connect4, np_ebpf)) =
            self.with_agent("ebpf", services, ebpf_port, index, args, |agent| {
                let connect4 = || stats.connect4(&agent.cgroup);
                let mut arms = self.datapath(
                    &[(&direct_targets, Origin::Node), (&vips, Origin::NodeSocket)],
                    args.runs,
                    args.duration_ms,
                    Some(&connect4),
                )?;
                let (ebpf, translated) = arms.pop().context("eBPF runs")?;
                let (direct, outside_cgroup) = arms.pop().context("direct runs")?;
                if outside_cgroup.runs > 0 {
                    eprintln!(
                        "bench: warning: connect4 ran {} times during the direct runs (outside its cgroup): another process in the cgroup?",
                        outside_cgroup.runs
                    );
                }
                // The same program on connections to addresses that are no Service (one
                // map lookup that misses, nothing rewritten): the floor of any connect4
                // program on this machine with the statistics on.
                let (_, passthrough) = self
                    .datapath(
                        &[(&direct_targets, Origin::NodeSocket)],
                        1,
                        args.duration_ms / 2,
                        Some(&connect4),
                    )?
                    .pop()
                    .context("pass-through run")?;
                // NodePorts from outside, through the tc programs, alternating with the
                // same client reaching the backends directly (forwarded by the node, the
                // tc programs passing the packets through).
                let tc = || stats.tc(&agent.bpffs);
                let mut arms = self.datapath(
                    &[
                        (&direct_targets, Origin::Outside),
                        (&node_ports, Origin::Outside),
                    ],
                    args.runs,
                    args.duration_ms,
                    Some(&tc),
                )?;
                let (np_tc, tc_nodeport) = arms.pop().context("NodePort eBPF runs")?;
                let (np_direct, tc_passthrough) = arms.pop().context("NodePort direct runs")?;
                Ok((
                    ebpf,
                    (
                        direct,
                        (translated, passthrough),
                        (np_direct, np_tc, tc_nodeport, tc_passthrough),
                    ),
                ))
            })?;
        let AgentRun {
            datapath: ebpf,
            rss_mib: ebpf_rss,
            first_sync_ms: ebpf_sync_ms,
            profile,
        } = ebpf_run;
        profiles.extend(profile);
        let (iptables, iptables_rss, iptables_sync_ms, np_iptables) = match &iptables_skipped {
            Some(why) => {
                eprintln!("bench: iptables mode skipped: {why}");
                (Datapath::default(), 0.0, 0.0, Datapath::default())
            }
            None => {
                let (run, nodeport) =
                    self.with_agent("iptables", services, iptables_port, index, args, |_| {
                        let (iptables, _) = self
                            .datapath(
                                &[(&vips, Origin::NodeSocket)],
                                args.runs,
                                args.duration_ms,
                                None,
                            )?
                            .pop()
                            .context("iptables runs")?;
                        let (nodeport, _) = self
                            .datapath(
                                &[(&node_ports, Origin::Outside)],
                                args.runs,
                                args.duration_ms,
                                None,
                            )?
                            .pop()
                            .context("NodePort iptables runs")?;
                        Ok((iptables, nodeport))
                    })?;
                profiles.extend(run.profile);
                (run.datapath, run.rss_mib, run.first_sync_ms, nodeport)
            }
        };
        let (np_direct, np_tc, tc_nodeport, tc_passthrough) = np_ebpf;
        let nodeport = NodePortCase {
            datapath: Modes {
                direct: Some(np_direct),
                ebpf: np_tc,
                iptables: np_iptables,
            },
            node_ports: node_port_count,
            tc_nodeport,
            tc_passthrough,
            ..NodePortCase::default()
        };

        let _ = fs::remove_dir_all(&work);
        let control_iptables = match iptables_skipped {
            Some(_) => ControlPlane::default(),
            None => control_plane(services, args.changes, true),
        };
        let scale = Scale {
            services,
            datapath: Modes {
                direct: Some(direct),
                ebpf,
                iptables,
            },
            connect4_translated: connect4.0,
            connect4_passthrough: connect4.1,
            iptables_skipped,
            control: Modes {
                direct: None,
                ebpf: control_plane(services, args.changes, false),
                iptables: control_iptables,
            },
            agent_rss_mib: Modes {
                direct: None,
                ebpf: ebpf_rss,
                iptables: iptables_rss,
            },
            agent_first_sync_ms: Modes {
                direct: None,
                ebpf: ebpf_sync_ms,
                iptables: iptables_sync_ms,
            },
            ratios: Default::default(),
            nodeport: Some(nodeport),
        };
        Ok((scale, profiles))
    }

    /// Starts the agent in `mode` on `services` Services whose endpoints listen on `port`,
    /// waits until a connection goes through, runs `measure`, and stops it (its cleanup
    /// runs in the client namespace). With `--profile`, perf records the agent from its
    /// start until it has synced and served.
    fn with_agent<T>(
        &self,
        mode: &'static str,
        services: usize,
        port: u16,
        index: usize,
        args: &Args,
        measure: impl FnOnce(&Agent) -> anyhow::Result<(Datapath, T)>,
    ) -> anyhow::Result<(AgentRun, T)> {
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
            agent.extra_args.extend(capacities(services));
        }
        agent.write("services.json", &manifests(services, port));
        let started = Instant::now();
        agent.start();
        let recorder = match (args.profile, agent.pid()) {
            (true, Some(pid)) => Some(Recorder::attach(
                pid,
                &std::env::temp_dir().join(format!("{}-{mode}-{services}.perf", self.id)),
            )?),
            _ => None,
        };
        self.wait_serving(&agent, services)?;
        let first_sync_ms = synced_ms(&agent.log()).unwrap_or_default();
        eprintln!(
            "bench: the agent ({mode}) served {services} Services {:.1} s after its start (its first sync: {})",
            started.elapsed().as_secs_f64(),
            integration::bench_report::fmt_ms(first_sync_ms)
        );
        let profile = match recorder {
            Some(recorder) => {
                let reading = Instant::now();
                let samples = recorder.finish()?;
                let mut profile = Profile::from_samples(mode, services, &samples, args.profile_top);
                profile.folded = args.out.join(format!("profile-{mode}-{services}.folded"));
                fs::write(&profile.folded, bench_profile::fold(&samples))
                    .with_context(|| format!("writing {}", profile.folded.display()))?;
                profile.synced_ms = Some(first_sync_ms);
                eprintln!(
                    "bench: the profile of the agent ({mode}) read in {:.1} s",
                    reading.elapsed().as_secs_f64()
                );
                Some(profile)
            }
            None => None,
        };
        let rss = agent.pid().map(rss_mib).transpose()?.unwrap_or_default();
        let measuring = Instant::now();
        let (datapath, extra) = measure(&agent)?;
        let stopping = Instant::now();
        agent.stop();
        let cleaning = Instant::now();
        // Its Drop runs `proxy-agent --cleanup`.
        drop(agent);
        eprintln!(
            "bench: the agent ({mode}) at {services} Services: measured in {:.1} s, stopped (SIGTERM) in {:.1} s, cleaned up (--cleanup) in {:.1} s",
            stopping.duration_since(measuring).as_secs_f64(),
            cleaning.duration_since(stopping).as_secs_f64(),
            cleaning.elapsed().as_secs_f64()
        );
        Ok((
            AgentRun {
                datapath,
                rss_mib: rss,
                first_sync_ms,
                profile,
            },
            extra,
        ))
    }

    /// Until the agent has synced and the last Service answers.
    fn wait_serving(&self, agent: &Agent, services: usize) -> anyhow::Result<()> {
        let last = std::env::temp_dir().join(format!("{}-last", self.id));
        fs::write(&last, format!("{}:80\n", vip(services - 1)))?;
        let start = Instant::now();
        // A cold iptables-restore of 100,000 Services takes minutes.
        let limit = Duration::from_secs(120) + Duration::from_millis(10) * services as u32;
        while start.elapsed() < limit {
            stop_requested()?;
            if agent.log().contains("\"synced\"") {
                let probe = self.loadgen(&last, Origin::NodeSocket, 50, 0, 0)?;
                if probe.connections > 0 && probe.errors == 0 {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the agent ({}) never served {services} Services in {limit:?}; its log:\n{}",
            agent.mode,
            agent.log()
        )
    }

    /// `runs` rounds, each running every arm (targets, and where the client runs) once;
    /// per arm, the median run by rate, the SYN retransmissions counted during its runs,
    /// and, with `programs` (run_time_ns, run_cnt of the programs that serve the arms),
    /// the programs' cost over that arm's runs alone.
    fn datapath(
        &self,
        arms: &[(&Path, Origin)],
        runs: usize,
        duration_ms: u64,
        programs: Option<&dyn Fn() -> anyhow::Result<(u64, u64)>>,
    ) -> anyhow::Result<Vec<(Datapath, ProgramCost)>> {
        let mut results: Vec<Vec<Datapath>> = vec![Vec::new(); arms.len()];
        let mut retransmits = vec![0u64; arms.len()];
        let mut program_runs = vec![(0u64, 0u64); arms.len()];
        for seed in 0..runs {
            for (arm, (targets, origin)) in arms.iter().enumerate() {
                stop_requested()?;
                self.flush_conntrack();
                let before = self.syn_retransmits(*origin)?;
                let programs_before = programs.map(|p| p()).transpose()?;
                results[arm].push(self.loadgen(
                    targets,
                    *origin,
                    duration_ms,
                    200,
                    seed as u64 + 1,
                )?);
                if let (Some(p), Some(before)) = (programs, programs_before) {
                    let after = p()?;
                    program_runs[arm].0 += after.0.saturating_sub(before.0);
                    program_runs[arm].1 += after.1.saturating_sub(before.1);
                }
                retransmits[arm] += self.syn_retransmits(*origin)?.saturating_sub(before);
            }
        }
        let conntrack_entries = self.conntrack_entries();
        results
            .into_iter()
            .zip(retransmits)
            .zip(program_runs)
            .map(|((mut runs, syn_retransmits), program_runs)| {
                let rates: Vec<f64> = runs.iter().map(|r| r.rate_per_s).collect();
                runs.sort_by(|a, b| a.rate_per_s.total_cmp(&b.rate_per_s));
                let median = runs
                    .get(runs.len() / 2)
                    .cloned()
                    .context("no data path run")?;
                Ok((
                    Datapath {
                        syn_retransmits,
                        run_rates: rates,
                        conntrack_entries,
                        ..median
                    },
                    ProgramCost::between((0, 0), program_runs),
                ))
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

/// The ClusterIP of Service `i` (the scales are checked against MAX_SERVICES first).
fn vip(i: usize) -> String {
    bench_addresses::vip(i)
        .expect("--scales is checked against MAX_SERVICES")
        .to_string()
}

/// Map capacities for `services` Services in eBPF mode: the defaults hold 65,536
/// frontends and 524,288 members; a Service is one frontend, two with a NodePort, each with
/// ENDPOINTS members and slots. Twice that, never below the defaults.
fn capacities(services: usize) -> Vec<String> {
    use proxy_common::names::{DEFAULT_MAX_MEMBERS, DEFAULT_MAX_SERVICES, DEFAULT_MAX_SLOTS};
    let frontends = 2 * (services + bench_addresses::node_ports(services));
    let at_least = |default: u32, n: usize| u32::try_from(n).unwrap_or(u32::MAX).max(default);
    vec![
        "--max-services".into(),
        at_least(DEFAULT_MAX_SERVICES, frontends).to_string(),
        "--max-members".into(),
        at_least(DEFAULT_MAX_MEMBERS, frontends * ENDPOINTS).to_string(),
        "--max-backend-slots".into(),
        at_least(DEFAULT_MAX_SLOTS, frontends * ENDPOINTS).to_string(),
    ]
}

/// The elapsed_us of the first `synced` line of the agent's JSON log, in ms.
fn synced_ms(log: &str) -> Option<f64> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "synced")
        .and_then(|v| v["fields"]["elapsed_us"].as_f64())
        .map(|us| us / 1000.0)
}

/// `services` Services, each with the five backends on `port` (a NodePort for the first
/// NODEPORT_MAX), and the node's Node object, as one JSON List.
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
        let (type_, node_port) = match bench_addresses::node_port(i) {
            Some(p) => ("NodePort", format!(r#","nodePort":{p}"#)),
            None => ("ClusterIP", String::new()),
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

/// `bench-control` at `services`, for the maps or for iptables-restore. A failure is kept
/// in the figures (and named in the report) rather than ending the run: the data path
/// figures of a long scale are not lost to it.
fn control_plane(services: usize, changes: usize, iptables: bool) -> ControlPlane {
    let started = Instant::now();
    let result = run_control_plane(services, changes, iptables);
    eprintln!(
        "bench: bench-control{} at {services} Services took {:.1} s",
        if iptables { " --iptables" } else { "" },
        started.elapsed().as_secs_f64()
    );
    result.unwrap_or_else(|e| {
        eprintln!("bench: {e:#}");
        // The report's cells want a line, not a debug dump.
        let mut first: String = format!("{e:#}").lines().next().unwrap_or_default().into();
        if first.chars().count() > 160 {
            first = first.chars().take(160).collect::<String>() + "…";
        }
        ControlPlane {
            error: Some(first),
            ..ControlPlane::default()
        }
    })
}

fn run_control_plane(
    services: usize,
    changes: usize,
    iptables: bool,
) -> anyhow::Result<ControlPlane> {
    let mut cmd = std::process::Command::new(bin_dir().join("bench-control"));
    cmd.args(["--services", &services.to_string()])
        .args(["--changes", &changes.to_string()])
        .args(["--connect-samples", "0"])
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
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
        cold_phases_ms: v["cold_phases_ms"]
            .as_object()
            .map(|phases| {
                phases
                    .iter()
                    .filter_map(|(k, ms)| Some((k.clone(), ms.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default(),
        error: None,
    })
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
