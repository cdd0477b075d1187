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
//! `--family ipv6` runs the same comparison over IPv6 (`bench_addresses::Addressing`): the
//! node and the server on 2001:db8:18::/64, the backends 2001:db8:18:1::2-6, the outside
//! client 2001:db8:18:9::2 reaching the node's 2001:db8:18:9::1, ClusterIPs from
//! 2001:db8:19::/64, Services of `ipFamilies: [IPv6]` and EndpointSlices of
//! `addressType: IPv6`; the program cost is connect6's. Where the agent does not serve an
//! arm in IPv6 yet (the iptables mode logs `family_not_served`; the tc programs leave a
//! NodePort untranslated, so a probe from outside gets no connection), that arm is
//! skipped and the report says why.
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
    bench_addresses::{self, Addressing, Family, socket},
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
    /// The address family of the Services, the backends and the clients.
    #[arg(long, value_enum, default_value_t = Family::Ipv4)]
    family: Family,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

const ENDPOINTS: usize = 5;

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
    let max = args.family.max_services();
    if let Some(n) = args.scales.iter().find(|n| **n == 0 || **n > max) {
        bail!(
            "--scales: {n} is outside 1..={max} (the {} ClusterIP blocks: {})",
            args.family,
            args.family.service_routes().join(", ")
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
        family: args.family,
        environment: environment(&args)?,
        scales: Vec::new(),
        profiles: Vec::new(),
    };
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    for (index, &services) in args.scales.iter().enumerate() {
        eprintln!("bench: {services} {} Services", args.family);
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
    let missing = report.missing();
    if !missing.is_empty() {
        bail!("figures not produced: {}", missing.join(", "));
    }
    Ok(())
}

/// The client and server namespaces, the client's cgroup, and the backend server.
struct Bench {
    id: String,
    cpu: usize,
    family: Family,
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
        let a = args.family.addressing();
        let cgroup = Cgroup::new(&id);
        let client = Netns::new(format!("{id}-c"));
        let server_ns = Netns::new(format!("{id}-s"));
        let outside = Netns::new(format!("{id}-o"));
        let route = |ns: &Netns, to: &str, via: &str| {
            ns.ip(&[a.ip_flag, "route", "add", to, "via", via]);
        };
        link(
            a,
            &client,
            "vs",
            a.node_to_server,
            &server_ns,
            "eth0",
            a.server,
        );
        route(&client, a.backend_net, a.server);
        // iptables DNATs after the route lookup: the service range needs a route.
        for block in args.family.service_routes() {
            route(&client, &block, a.server);
        }
        for ip in a.backends {
            add_address(a, &server_ns, "eth0", ip, a.host_prefix);
        }
        // The outside client: reaches NodePorts on the node, and (direct arm) the backends
        // through the node, which forwards.
        link(a, &client, "vx", a.node, &outside, "eth0", a.outside);
        if args.family == Family::Ipv6 {
            // The agent takes an interface for its tc programs only with an IPv4 address
            // to source-NAT to: the node's links are dual-stack, the traffic IPv6 alone.
            let v4 = Family::Ipv4.addressing();
            for (ns, dev, ip) in [
                (&client, "vs", v4.node_to_server),
                (&server_ns, "eth0", v4.server),
                (&client, "vx", v4.node),
                (&outside, "eth0", v4.outside),
            ] {
                add_address(v4, ns, dev, ip, v4.link_prefix);
            }
        }
        route(&outside, a.backend_net, a.node);
        route(&server_ns, a.outside_net, a.node_to_server);
        client.sysctl(match args.family {
            Family::Ipv4 => "net.ipv4.ip_forward=1",
            Family::Ipv6 => "net.ipv6.conf.all.forwarding=1",
        });
        // Also IPv6's: TCP's TIME_WAIT and ephemeral ports are set under net.ipv4.
        outside.sysctl("net.ipv4.ip_local_port_range=1024 65535");
        server_ns.sysctl("net.ipv4.tcp_max_tw_buckets=0");
        client.sysctl("net.ipv4.ip_local_port_range=1024 65535");
        let mut serve = server_ns.command(bin_dir().join("loadgen"), None);
        serve.args(["serve", "--cpu", &args.cpu.to_string()]);
        for index in 0..args.scales.len() {
            for port in ports(index) {
                for ip in a.backends {
                    serve.args(["--listen", &socket(ip, port)]);
                }
            }
        }
        let server = spawn_ready(&mut serve)?;
        Ok(Self {
            id,
            cpu: args.cpu,
            family: args.family,
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

        let a = self.family.addressing();
        let direct_targets = work.join("direct");
        fs::write(
            &direct_targets,
            a.backends
                .iter()
                .map(|ip| format!("{}\n", socket(ip, direct_port)))
                .collect::<String>(),
        )?;
        let vips = work.join("vips");
        fs::write(
            &vips,
            (0..services)
                .map(|i| format!("{}\n", socket(&vip(self.family, i), 80)))
                .collect::<String>(),
        )?;
        let node_port_count = bench_addresses::node_ports(services);
        let node_ports = work.join("nodeports");
        fs::write(
            &node_ports,
            (0..services)
                .filter_map(bench_addresses::node_port)
                .map(|port| format!("{}\n", socket(a.node, port)))
                .collect::<String>(),
        )?;
        let iptables_skipped = args
            .iptables_max_services
            .filter(|max| services > *max)
            .map(|max| format!("{services} Services is above --iptables-max-services {max}"));
        // Direct runs alternate with the eBPF runs, with the client outside the cgroup (no
        // program runs for it) and no iptables rules in the namespace: drift on this
        // machine hits both alike.
        let (ebpf_run, (direct, connect, np_ebpf)) =
            self.with_agent("ebpf", services, ebpf_port, index, args, |agent| {
                let program = self.family.connect_program();
                let connect = || stats.socket_program(&agent.cgroup, program);
                let mut arms = self.datapath(
                    &[(&direct_targets, Origin::Node), (&vips, Origin::NodeSocket)],
                    args.runs,
                    args.duration_ms,
                    Some(&connect),
                )?;
                let (ebpf, translated) = arms.pop().context("eBPF runs")?;
                let (direct, outside_cgroup) = arms.pop().context("direct runs")?;
                if outside_cgroup.runs > 0 {
                    eprintln!(
                        "bench: warning: {program} ran {} times during the direct runs (outside its cgroup): another process in the cgroup?",
                        outside_cgroup.runs
                    );
                }
                // The same program on connections to addresses that are no Service (one
                // map lookup that misses, nothing rewritten): the floor of any connect
                // program on this machine with the statistics on.
                let (_, passthrough) = self
                    .datapath(
                        &[(&direct_targets, Origin::NodeSocket)],
                        1,
                        args.duration_ms / 2,
                        Some(&connect),
                    )?
                    .pop()
                    .context("pass-through run")?;
                // NodePorts from outside, through the tc programs, alternating with the
                // same client reaching the backends directly (forwarded by the node, the
                // tc programs passing the packets through). Over IPv6 the tc programs
                // may not translate yet: then the direct runs alone.
                let tc = || stats.tc(&agent.bpffs);
                let tc_skipped = self.nodeport_unserved(&node_ports, "the tc programs", agent)?;
                let mut arms = match tc_skipped {
                    None => vec![
                        (direct_targets.as_path(), Origin::Outside),
                        (node_ports.as_path(), Origin::Outside),
                    ],
                    Some(_) => vec![(direct_targets.as_path(), Origin::Outside)],
                };
                let mut arms = self.datapath(
                    std::mem::take(&mut arms).as_slice(),
                    args.runs,
                    args.duration_ms,
                    Some(&tc),
                )?;
                let (np_tc, tc_nodeport) = match tc_skipped {
                    None => arms.pop().context("NodePort eBPF runs")?,
                    Some(_) => Default::default(),
                };
                let (np_direct, tc_passthrough) = arms.pop().context("NodePort direct runs")?;
                Ok((
                    ebpf,
                    (
                        direct,
                        (translated, passthrough),
                        (np_direct, np_tc, tc_nodeport, tc_passthrough, tc_skipped),
                    ),
                ))
            })?
            .map_err(|NotServed(why)| {
                anyhow::anyhow!("the agent (ebpf) does not serve the {} Services: {why}", self.family)
            })?;
        let AgentRun {
            datapath: ebpf,
            rss_mib: ebpf_rss,
            first_sync_ms: ebpf_sync_ms,
            profile,
        } = ebpf_run;
        profiles.extend(profile);
        let mut iptables_skipped = iptables_skipped;
        let mut iptables_figures = None;
        if iptables_skipped.is_none() {
            let outcome =
                self.with_agent("iptables", services, iptables_port, index, args, |agent| {
                    let (iptables, _) = self
                        .datapath(
                            &[(&vips, Origin::NodeSocket)],
                            args.runs,
                            args.duration_ms,
                            None,
                        )?
                        .pop()
                        .context("iptables runs")?;
                    let nodeport =
                        match self.nodeport_unserved(&node_ports, "the iptables mode", agent)? {
                            Some(why) => Err(why),
                            None => Ok(self
                                .datapath(
                                    &[(&node_ports, Origin::Outside)],
                                    args.runs,
                                    args.duration_ms,
                                    None,
                                )?
                                .pop()
                                .context("NodePort iptables runs")?
                                .0),
                        };
                    Ok((iptables, nodeport))
                })?;
            match outcome {
                Ok((run, nodeport)) => {
                    profiles.extend(run.profile);
                    iptables_figures =
                        Some((run.datapath, run.rss_mib, run.first_sync_ms, nodeport));
                }
                Err(NotServed(why)) => iptables_skipped = Some(why),
            }
        }
        let (iptables, iptables_rss, iptables_sync_ms, np_iptables) = match iptables_figures {
            Some(figures) => figures,
            None => {
                if let Some(why) = &iptables_skipped {
                    eprintln!("bench: iptables mode skipped: {why}");
                }
                (Datapath::default(), 0.0, 0.0, Ok(Datapath::default()))
            }
        };
        let (np_iptables, np_iptables_skipped) = match np_iptables {
            Ok(datapath) => (datapath, None),
            Err(why) => {
                eprintln!("bench: NodePorts through the iptables mode skipped: {why}");
                (Datapath::default(), Some(why))
            }
        };
        let (np_direct, np_tc, tc_nodeport, tc_passthrough, tc_skipped) = np_ebpf;
        if let Some(why) = &tc_skipped {
            eprintln!("bench: NodePorts through the tc programs skipped: {why}");
        }
        let nodeport = NodePortCase {
            datapath: Modes {
                direct: Some(np_direct),
                ebpf: np_tc,
                iptables: np_iptables,
            },
            node_ports: node_port_count,
            tc_nodeport,
            tc_passthrough,
            tc_skipped,
            iptables_skipped: np_iptables_skipped,
            ..NodePortCase::default()
        };

        let _ = fs::remove_dir_all(&work);
        let control_iptables = match iptables_skipped {
            Some(_) => ControlPlane::default(),
            None => control_plane(services, args.changes, true, self.family),
        };
        let scale = Scale {
            services,
            datapath: Modes {
                direct: Some(direct),
                ebpf,
                iptables,
            },
            connect4_translated: connect.0,
            connect4_passthrough: connect.1,
            iptables_skipped,
            control: Modes {
                direct: None,
                ebpf: control_plane(services, args.changes, false, self.family),
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
    /// start until it has synced and served. An agent that says it does not serve the
    /// Services' family is stopped unmeasured: `Ok(Err(NotServed))`.
    fn with_agent<T>(
        &self,
        mode: &'static str,
        services: usize,
        port: u16,
        index: usize,
        args: &Args,
        measure: impl FnOnce(&Agent) -> anyhow::Result<(Datapath, T)>,
    ) -> anyhow::Result<Result<(AgentRun, T), NotServed>> {
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
        agent.write("services.json", &manifests(self.family, services, port));
        let started = Instant::now();
        agent.start();
        let recorder = match (args.profile, agent.pid()) {
            (true, Some(pid)) => Some(Recorder::attach(
                pid,
                &std::env::temp_dir().join(format!("{}-{mode}-{services}.perf", self.id)),
            )?),
            _ => None,
        };
        if let Err(not_served) = self.wait_serving(&agent, services)? {
            // Its Drop stops it and runs `proxy-agent --cleanup`.
            drop(recorder);
            return Ok(Err(not_served));
        }
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
        Ok(Ok((
            AgentRun {
                datapath,
                rss_mib: rss,
                first_sync_ms,
                profile,
            },
            extra,
        )))
    }

    /// Until the agent has synced and the last Service answers, or, synced, the last
    /// Service does not answer and the agent says it leaves frontends out
    /// (`family_not_served`: a family its mode does not serve yet).
    fn wait_serving(
        &self,
        agent: &Agent,
        services: usize,
    ) -> anyhow::Result<Result<(), NotServed>> {
        let last = std::env::temp_dir().join(format!("{}-last", self.id));
        fs::write(
            &last,
            format!("{}\n", socket(&vip(self.family, services - 1), 80)),
        )?;
        let start = Instant::now();
        // A cold iptables-restore of 100,000 Services takes minutes.
        let limit = Duration::from_secs(120) + Duration::from_millis(10) * services as u32;
        while start.elapsed() < limit {
            stop_requested()?;
            let log = agent.log();
            if log.contains("\"synced\"") {
                let probe = self.loadgen(&last, Origin::NodeSocket, 50, 0, 0)?;
                if probe.connections > 0 && probe.errors == 0 {
                    return Ok(Ok(()));
                }
                if let Some(why) = NotServed::in_log(&log) {
                    return Ok(Err(why));
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

    /// Over IPv6, whether NodePorts are served through `arm` (`the tc programs`): a short
    /// run from outside to the NodePorts, before they are measured. None when every
    /// connection went through; otherwise why the arm is skipped. Over IPv4 the arms are
    /// measured without this check (a failure there is a regression, and shows in the
    /// figures and `--quick`'s check).
    /// The agent's own word, when it left frontends out, ends the reason.
    fn nodeport_unserved(
        &self,
        node_ports: &Path,
        arm: &str,
        agent: &Agent,
    ) -> anyhow::Result<Option<String>> {
        if self.family == Family::Ipv4 {
            return Ok(None);
        }
        const PROBE_MS: u64 = 300;
        self.flush_conntrack();
        let probe = self.loadgen_json(node_ports, Origin::Outside, PROBE_MS, 0, 1)?;
        let connections = probe["connections"].as_u64().unwrap_or(0);
        let errors: Vec<String> = probe["errors"]
            .as_object()
            .map(|e| e.iter().map(|(name, n)| format!("{n} {name}")).collect())
            .unwrap_or_default();
        if connections > 0 && errors.is_empty() {
            return Ok(None);
        }
        let agent_says = NotServed::in_log(&agent.log())
            .map_or_else(String::new, |NotServed(why)| format!("; the agent: {why}"));
        Ok(Some(format!(
            "{} NodePorts not served through {arm}: a {PROBE_MS} ms probe from outside made {connections} connections, failed: {}{agent_says}",
            self.family,
            if errors.is_empty() {
                "none, but none succeeded".to_owned()
            } else {
                errors.join(", ")
            }
        )))
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
        let v = self.loadgen_json(targets, origin, duration_ms, warmup_ms, seed)?;
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

    /// `loadgen connect`'s JSON report.
    fn loadgen_json(
        &self,
        targets: &Path,
        origin: Origin,
        duration_ms: u64,
        warmup_ms: u64,
        seed: u64,
    ) -> anyhow::Result<serde_json::Value> {
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
        serde_json::from_slice(&out.stdout).context("loadgen's JSON")
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
        // `conntrack -F` alone may flush the IPv4 table only.
        if self.family == Family::Ipv6 {
            let _ = command_in(&self.client.name, None, "conntrack")
                .args(["-F", "-f", "ipv6"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
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

/// A veth pair from `local` (`local_if`, `local_ip`) to `peer` (`peer_if`, `peer_ip`) on
/// one link-sized network of the family, both ends up. IPv6 addresses skip duplicate
/// address detection (`nodad`): no other host can hold them, and they are usable at once.
fn link(
    a: &Addressing,
    local: &Netns,
    local_if: &str,
    local_ip: &str,
    peer: &Netns,
    peer_if: &str,
    peer_ip: &str,
) {
    if a.ip_flag == "-4" {
        local.link_to(local_if, local_ip, peer, peer_if, peer_ip);
        return;
    }
    local.ip(&[
        "link", "add", local_if, "type", "veth", "peer", "name", peer_if, "netns", &peer.name,
    ]);
    add_address(a, local, local_if, local_ip, a.link_prefix);
    add_address(a, peer, peer_if, peer_ip, a.link_prefix);
    local.ip(&["link", "set", local_if, "up"]);
    peer.ip(&["link", "set", peer_if, "up"]);
}

/// `ip/prefix` on `dev` in `ns` (IPv6: without duplicate address detection).
fn add_address(a: &Addressing, ns: &Netns, dev: &str, ip: &str, prefix: u8) {
    let address = format!("{ip}/{prefix}");
    if a.ip_flag == "-6" {
        ns.add_addr6(dev, &address);
    } else {
        ns.ip(&["addr", "add", &address, "dev", dev]);
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

/// The ClusterIP of Service `i` (the scales are checked against the family's
/// `max_services` first).
fn vip(family: Family, i: usize) -> String {
    family
        .vip(i)
        .expect("--scales is checked against the family's max_services")
        .to_string()
}

/// Why an agent did not serve the benchmark's Services: the first line of its log that
/// says it leaves a frontend out (`family_not_served`).
struct NotServed(String);

impl NotServed {
    fn in_log(log: &str) -> Option<Self> {
        integration::bench_skip::family_not_served(log).map(Self)
    }
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

/// `services` Services of `family`, each with the five backends on `port` (a NodePort for
/// the first NODEPORT_MAX), and the node's Node object, as one JSON List. IPv4 Services
/// name no family (the API server's default); IPv6 ones are `ipFamilies: [IPv6]`,
/// single-stack, with `clusterIPs`.
fn manifests(family: Family, services: usize, port: u16) -> String {
    let a = family.addressing();
    let node_ip = a.node;
    let address_type = family.kubernetes();
    let endpoints: Vec<String> = a
        .backends
        .iter()
        .map(|ip| format!(r#"{{"addresses":["{ip}"],"conditions":{{"ready":true}}}}"#))
        .collect();
    let endpoints = endpoints.join(",");
    let mut items = Vec::with_capacity(2 * services + 1);
    items.push(format!(
        r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"bench-node"}},"status":{{"addresses":[{{"type":"InternalIP","address":"{node_ip}"}}]}}}}"#
    ));
    for i in 0..services {
        let (type_, node_port) = match bench_addresses::node_port(i) {
            Some(p) => ("NodePort", format!(r#","nodePort":{p}"#)),
            None => ("ClusterIP", String::new()),
        };
        let cluster_ip = vip(family, i);
        let families = match family {
            Family::Ipv4 => String::new(),
            Family::Ipv6 => format!(
                r#","clusterIPs":["{cluster_ip}"],"ipFamilies":["IPv6"],"ipFamilyPolicy":"SingleStack""#
            ),
        };
        items.push(format!(
            r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"svc-{i}","namespace":"bench"}},"spec":{{"type":"{type_}","clusterIP":"{cluster_ip}"{families},"ports":[{{"name":"http","port":80,"targetPort":{port},"protocol":"TCP"{node_port}}}]}}}}"#
        ));
        items.push(format!(
            r#"{{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","metadata":{{"name":"svc-{i}-1","namespace":"bench","labels":{{"kubernetes.io/service-name":"svc-{i}"}}}},"addressType":"{address_type}","ports":[{{"name":"http","port":{port},"protocol":"TCP"}}],"endpoints":[{endpoints}]}}"#
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
fn control_plane(services: usize, changes: usize, iptables: bool, family: Family) -> ControlPlane {
    let started = Instant::now();
    let result = run_control_plane(services, changes, iptables, family);
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
    family: Family,
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
    if family != Family::Ipv4 {
        cmd.args(["--family", "ipv6"]);
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
