//! proxy-agent: programs this node's Service frontends into the kernel.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use clap::{CommandFactory as _, Parser, ValueEnum};
use proxy_user::{
    DEFAULT_BPFFS,
    agent::{SyncEvent, SyncThread},
    cgroup, config_file,
    dataplane::{
        Dataplane,
        ebpf::{
            EbpfDataplane,
            interfaces::{self as ifaces, Interface},
            loader, snat_ports,
        },
        iptables::{self, IptablesDataplane},
    },
    health_check::HealthCheckServers,
    logging,
    metrics::{self, AgentMetrics},
    source::{
        kubernetes,
        manifest::{self, ManifestDir},
        shared::Shared,
    },
};
use tracing::info;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// eBPF when this kernel can load the programs, else iptables (the reason is logged).
    Auto,
    /// cgroup socket programs and BPF maps.
    Ebpf,
    /// kube-proxy's iptables chains (KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-*).
    Iptables,
}

/// Programs this node's Kubernetes Services into the kernel with eBPF.
///
/// Example: proxy-agent --mode ebpf --source ./examples
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, args_override_self = true)]
struct Args {
    /// Settings file: YAML mapping flag names (without dashes) to values, e.g.
    /// `mode: ebpf`. Command-line flags, then environment variables, override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Traffic to a ClusterIP from outside this CIDR is masqueraded (iptables mode), as
    /// with kube-proxy's --cluster-cidr. Dual-stack: one CIDR per family, comma-separated
    /// (`10.244.0.0/16,fd00:10:244::/56`).
    #[arg(long, value_name = "CIDR[,CIDR]")]
    cluster_cidr: Option<String>,
    /// Dataplane to program.
    #[arg(long, value_enum, default_value = "auto")]
    mode: Mode,
    /// iptables mode: the backend to write to. `auto` picks the one the host's rules are
    /// in (kubelet's hint chains, else the one with more rules), as kube-proxy's image
    /// does.
    #[arg(long, value_enum, default_value = "auto")]
    iptables_backend: iptables::backend::BackendChoice,
    /// Serve NodePorts on 127.0.0.1 too, to the node's own sockets, as kube-proxy's
    /// --iptables-localhost-nodeports (default true) does. In iptables mode this sets
    /// net.ipv4.conf.all.route_localnet=1 in the agent's network namespace; with false,
    /// 127.0.0.0/8 is left out of the NodePort jump.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    localhost_nodeports: bool,
    /// Where Services and EndpointSlices come from: `kubernetes` (the API server), or a
    /// directory of manifests (YAML or JSON) watched for changes.
    #[arg(long, value_name = "kubernetes|DIR", default_value = "kubernetes")]
    source: PathBuf,
    /// kubeconfig for `--source kubernetes`; default: in-cluster config, else ~/.kube/config.
    #[arg(long, value_name = "PATH", env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// cgroup v2 directory to attach to; default: the root of the cgroup2 mount.
    #[arg(long, value_name = "PATH")]
    cgroup: Option<PathBuf>,
    /// bpffs directory holding the pinned maps and links.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    /// Detach and unpin everything the agent installed, then exit.
    #[arg(long)]
    cleanup: bool,
    /// Remove the iptables chains kube-proxy left on this node (both backends, IPv4 and
    /// IPv6; kubelet's and other chains stay), then exit. Stop kube-proxy first.
    #[arg(long, conflicts_with = "cleanup")]
    cleanup_kube_proxy: bool,
    /// This node's name: which endpoints are local, and which Node object (in the manifest
    /// directory) gives the node's zone and NodePort addresses.
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    node_name: Option<String>,
    /// eBPF mode: interfaces (comma-separated) whose incoming NodePort, ExternalIP and
    /// LoadBalancer traffic the tc programs translate. Each needs an IPv4 address: flows
    /// to backends on other nodes leave with it as their source. Default: the interfaces
    /// carrying the node's addresses (from its Node object); `none`: only sockets on the
    /// node are translated.
    #[arg(long, value_name = "IFACE,...", value_delimiter = ',')]
    interfaces: Vec<String>,
    /// eBPF mode: how the tc programs attach. `auto`: TCX links where the kernel has
    /// them (Linux 6.6), else clsact filters through netlink; `netlink`: filters even
    /// where TCX exists; `tcx`: TCX or an error.
    #[arg(long, value_enum, default_value = "auto")]
    tc_attach: loader::TcAttach,
    /// eBPF mode: treat these kernel features as missing whatever the probes find
    /// (comma-separated names as `proxyctl status` shows them, e.g. `bpf_set_retval`), to
    /// see on a new kernel what a node on an older one does.
    #[arg(long, value_name = "FEATURE,...", value_delimiter = ',', value_parser = parse_feature)]
    assume_missing: Vec<proxy_common::features::KernelFeature>,
    /// Capacity of the services map (frontends) when it is created.
    #[arg(long, value_name = "N", default_value_t = proxy_common::names::DEFAULT_MAX_SERVICES)]
    max_services: u32,
    /// Capacity of the backend slots map (sum of all frontends' slot tables) when created.
    #[arg(long, value_name = "N", default_value_t = proxy_common::names::DEFAULT_MAX_SLOTS)]
    max_backend_slots: u32,
    /// Capacity of the members map (backends over all frontends) when created.
    #[arg(long, value_name = "N", default_value_t = proxy_common::names::DEFAULT_MAX_MEMBERS)]
    max_members: u32,
    /// Capacity of the ClientIP affinity map (LRU: the oldest entries make room).
    #[arg(long, value_name = "N", default_value_t = proxy_common::names::DEFAULT_MAX_AFFINITY)]
    max_affinity: u32,
    /// Capacity of the reverse-translation map (LRU, one entry per socket and backend).
    #[arg(long, value_name = "N", default_value_t = proxy_common::names::DEFAULT_MAX_REVNAT)]
    max_revnat: u32,
    /// Idle timeout of a UDP flow no reply was seen on (kube-proxy's
    /// conntrack.udpTimeout): eBPF mode keeps an unconnected socket's datagrams to one
    /// Service on one backend this long after the last one (default 30); iptables mode
    /// sets nf_conntrack_udp_timeout (unset: the kernel's value stays).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    udp_timeout: Option<u64>,
    /// Idle timeout of a UDP flow once replies were seen (conntrack.udpStreamTimeout;
    /// eBPF default 120; iptables mode: nf_conntrack_udp_timeout_stream).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    udp_stream_timeout: Option<u64>,
    /// eBPF mode: when an endpoint leaves a Service, also reset the TCP connections on
    /// the node that were translated to it (their owners get ECONNABORTED, the endpoint a
    /// reset), as its connected UDP sockets are destroyed. Off by default: kube-proxy
    /// leaves TCP connections to end by themselves. No effect in iptables mode.
    #[arg(long)]
    terminate_tcp_on_endpoint_removal: bool,
    /// Where /metrics is served (Prometheus text format).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:10249")]
    metrics_addr: std::net::SocketAddr,
    /// Where /healthz and /livez are served.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:10256")]
    healthz_addr: std::net::SocketAddr,
    /// /healthz turns unhealthy when a change has waited this long without being
    /// programmed (kube-proxy: twice its --iptables-sync-period, 60 s by default). It
    /// answers at once either way, even while a slow sync runs.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    healthz_timeout: u64,
    /// How often the manifest directory is checked for changes.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    poll_ms: u64,
    /// Log JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Debug logging.
    #[arg(short, long)]
    verbose: bool,
}

fn main() -> std::process::ExitCode {
    proxy_user::malloc_arenas::limit_to_one();
    let argv = match config_file::expand(std::env::args_os().collect(), &Args::command()) {
        Ok(argv) => argv,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let args = Args::parse_from(argv);
    logging::init(args.log_json, args.verbose);
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain, not a backtrace: this is read by operators.
            tracing::error!("{}", logging::error_chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if args.cleanup_kube_proxy {
        return cleanup_kube_proxy();
    }
    if args.cleanup {
        let removed = loader::cleanup(&args.bpffs)
            .with_context(|| format!("cleaning up {}", args.bpffs.display()))?;
        if removed.links.is_empty() && removed.maps.is_empty() {
            info!(pin_dir = %args.bpffs.display(), "no BPF programs or maps installed");
        } else {
            info!(links = ?removed.links, maps = ?removed.maps, "detached and unpinned");
        }
        // Both modes' state goes, whichever ran last, from either iptables backend and
        // both families.
        for backend in iptables::backend::available() {
            let name = backend.name();
            for (family, binaries) in families(backend) {
                match binaries.cleanup() {
                    Ok(chains) if chains.is_empty() => {
                        info!(backend = name, family, "no iptables chains installed")
                    }
                    Ok(chains) => {
                        info!(backend = name, family, ?chains, "iptables chains removed")
                    }
                    // No ip6tables (or no IPv6) here: nothing of ours can be there.
                    Err(e) if family == "IPv6" => tracing::debug!(
                        backend = name,
                        family,
                        "ip6tables not usable: {}",
                        logging::Chain(&e)
                    ),
                    Err(e) => tracing::warn!(
                        backend = name,
                        family,
                        "iptables chains not removed: {}",
                        logging::Chain(&e)
                    ),
                }
            }
        }
        return Ok(());
    }

    info!(
        version = env!("CARGO_PKG_VERSION"),
        node = args.node_name.as_deref().unwrap_or("(none: no endpoint is local)"),
        config = ?args.config,
        "proxy-agent starting"
    );
    let from_api = args.source.as_os_str() == "kubernetes";
    if !from_api && !args.source.is_dir() {
        bail!(
            "--source {}: not a directory (or `kubernetes` for the API server)",
            args.source.display()
        );
    }
    let cgroup = match args.cgroup.clone() {
        Some(path) => Ok(path),
        None => cgroup::find_cgroup2().map_err(anyhow::Error::msg),
    };
    let cluster_cidrs = match args.cluster_cidr.as_deref() {
        Some(text) => parse_cluster_cidrs(text)?,
        None => ClusterCidrs::default(),
    };
    // Checked before anything loads: a wrong name is a mistake, not a reason to fall back.
    let interfaces = resolve_interfaces(&args.interfaces)?;
    let interfaces = interfaces.as_deref();
    let load_options = loader::LoadOptions {
        capacities: loader::Capacities {
            services: args.max_services,
            slots: args.max_backend_slots,
            members: args.max_members,
            affinity: args.max_affinity,
            revnat: args.max_revnat,
        },
        tc_attach: args.tc_attach,
        assume_missing: args.assume_missing.clone(),
        datapath: proxy_common::DatapathConfig {
            udp_timeout_ns: args.udp_timeout.map_or(0, seconds_to_ns),
            udp_stream_timeout_ns: args.udp_stream_timeout.map_or(0, seconds_to_ns),
        },
    };
    // Two workers: a source blocked on the store lock while the sync thread translates
    // leaves the other serving /healthz, /metrics and the health check node ports.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // The source's configuration is checked before anything is loaded or pinned.
        let client = match from_api {
            true => Some(kubernetes::client(args.kubeconfig.as_deref()).await?),
            false => None,
        };
        let iptables_options = iptables::render::RenderOptions {
            family: proxy_user::model::Family::Ipv4,
            cluster_cidr: cluster_cidrs.ipv4,
            random_fully: true,
            localhost_node_ports: args.localhost_nodeports,
        };
        let ipv6_cluster_cidr = cluster_cidrs.ipv6;
        let mut ebpf_active = !matches!(args.mode, Mode::Iptables);
        let dataplane: Box<dyn Dataplane + Send> = match args.mode {
            Mode::Ebpf => Box::new(open_ebpf(&args, &cgroup, load_options, interfaces)?),
            Mode::Iptables => Box::new(open_iptables(
                iptables_options,
                ipv6_cluster_cidr,
                args.iptables_backend,
                conntrack_udp_timeouts(&args),
            )?),
            Mode::Auto => match open_ebpf(&args, &cgroup, load_options, interfaces) {
                Ok(ebpf) => {
                    info!("--mode auto: the eBPF datapath loads on this kernel; using it");
                    Box::new(ebpf)
                }
                Err(error) => {
                    tracing::warn!(
                        "--mode auto: the eBPF socket programs cannot load here ({}); falling back to iptables",
                        logging::error_chain(error.as_ref())
                    );
                    ebpf_active = false;
                    Box::new(open_iptables(
                iptables_options,
                ipv6_cluster_cidr,
                args.iptables_backend,
                conntrack_udp_timeouts(&args),
            )?)
                }
            },
        };
        if !ebpf_active && args.terminate_tcp_on_endpoint_removal {
            tracing::warn!(
                "--terminate-tcp-on-endpoint-removal has no effect in iptables mode: TCP connections end by themselves, as with kube-proxy"
            );
        }
        let shared = if let Some(client) = client {
            let shared = Shared::new(
                args.node_name.clone(),
                kubernetes::sources(args.node_name.as_deref()),
            );
            shared.update(|store| store.set_localhost_node_ports(args.localhost_nodeports));
            kubernetes::watch(client, shared.clone(), args.node_name.clone());
            shared
        } else {
            let shared = Shared::new(args.node_name.clone(), 1);
            shared.update(|store| store.set_localhost_node_ports(args.localhost_nodeports));
            let dir = ManifestDir::new(&args.source);
            info!(source = %dir.path().display(), "watching manifests");
            tokio::spawn(manifest::watch(
                dir,
                shared.clone(),
                Duration::from_millis(args.poll_ms),
            ));
            shared
        };
        // Without a Node object, NodePorts are served on the --interfaces' addresses.
        if let Some(given) = interfaces.filter(|i| !i.is_empty() && ebpf_active) {
            let addresses = given
                .iter()
                .flat_map(|i| {
                    let v4 = i.addr.map(std::net::IpAddr::from);
                    let v6 = i.addr6.map(std::net::IpAddr::from);
                    v4.into_iter().chain(v6)
                })
                .collect();
            shared.update(|store| store.set_fallback_addresses(addresses));
        }
        let unsynced = shared.clone();
        let metrics = Arc::new(AgentMetrics::new(
            Some(args.bpffs.clone()),
            Duration::from_secs(args.healthz_timeout),
            Arc::new(move || unsynced.oldest_unsynced()),
        ));
        let ready = metrics.clone();
        let mut health_checks = HealthCheckServers::new(
            std::net::Ipv4Addr::UNSPECIFIED,
            Arc::new(move || ready.readiness().healthy),
        );
        metrics::http::serve(args.metrics_addr, metrics.clone(), "/metrics")
            .await
            .with_context(|| format!("binding --metrics-addr {}", args.metrics_addr))?;
        metrics::http::serve(args.healthz_addr, metrics.clone(), "/healthz and /livez")
            .await
            .with_context(|| format!("binding --healthz-addr {}", args.healthz_addr))?;
        let (events, mut synced) = tokio::sync::mpsc::unbounded_channel();
        let bpffs = args.bpffs.clone();
        let sync = SyncThread::start(shared, dataplane, events, move || {
            retire_other_datapath(ebpf_active, &bpffs)
        })
        .context("starting the sync thread")?;
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                event = synced.recv() => match event {
                    Some(SyncEvent::Synced(summary)) => {
                        metrics.observe_sync(&summary);
                        if let Some(wanted) = &summary.health_checks {
                            health_checks.update(wanted);
                        }
                    }
                    Some(SyncEvent::Idle) => metrics.heartbeat(),
                    Some(SyncEvent::Activated) => {}
                    // The thread ended by itself: an activation failed, or it panicked.
                    None => break,
                },
            }
        }
        tokio::task::spawn_blocking(move || sync.stop())
            .await
            .context("waiting for the sync thread")?
            .context("the sync thread ended")?;
        anyhow::Ok(())
    })?;
    Ok(())
}

/// `--cleanup-kube-proxy`: kube-proxy's chains go from every backend and family present.
fn cleanup_kube_proxy() -> anyhow::Result<()> {
    use iptables::{backend::Backend, kube_proxy::Outcome};
    let mut failed = Vec::new();
    for backend in Backend::ALL {
        for (family, binaries) in families(backend) {
            let name = backend.name();
            if binaries.save("nat", false).is_err() {
                tracing::debug!(backend = name, family, "not available here");
                continue;
            }
            match iptables::kube_proxy::remove(&binaries) {
                Ok(Outcome::Nothing) => {
                    info!(backend = name, family, "no kube-proxy chains")
                }
                Ok(Outcome::OursLeftAlone) => info!(
                    backend = name,
                    family,
                    "the KUBE-* chains here are ebpf-proxy's own (iptables mode, marked by \
                     {}): left alone; `proxy-agent --cleanup` removes them",
                    iptables::install::OWNER_MARKER
                ),
                Ok(Outcome::Removed { chains, jumps }) => info!(
                    backend = name,
                    family,
                    ?chains,
                    ?jumps,
                    "kube-proxy's chains removed"
                ),
                Err(e) => {
                    tracing::error!(
                        backend = name,
                        family,
                        "kube-proxy's chains not removed: {}",
                        logging::Chain(&e)
                    );
                    failed.push(format!("{name} {family}"));
                }
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "kube-proxy's chains could not be removed from {}",
            failed.join(", ")
        );
    }
    Ok(())
}

/// SIGTERM or SIGINT: stop watching, leave the datapath installed, exit 0.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        _ = int.recv() => info!("SIGINT"),
    }
}

/// The binaries of both families of one iptables backend, named for the log.
fn families(
    backend: iptables::backend::Backend,
) -> [(&'static str, iptables::install::Iptables); 2] {
    [
        ("IPv4", backend.binaries()),
        ("IPv6", backend.binaries_v6()),
    ]
}

/// `--cluster-cidr`: at most one CIDR per family.
#[derive(Debug, Default)]
struct ClusterCidrs {
    ipv4: Option<(std::net::IpAddr, u8)>,
    ipv6: Option<(std::net::IpAddr, u8)>,
}

/// `10.0.0.0/8` or `10.0.0.0/8,fd00::/48`, with the model's CIDR parser.
fn parse_cluster_cidrs(text: &str) -> anyhow::Result<ClusterCidrs> {
    let mut cidrs = ClusterCidrs::default();
    for part in text.split(',').map(str::trim) {
        let cidr = proxy_user::model::parse_cidr(part).with_context(|| {
            format!("--cluster-cidr {text}: {part:?} is not a CIDR (ADDRESS/BITS)")
        })?;
        let slot = match cidr.0 {
            std::net::IpAddr::V4(_) => &mut cidrs.ipv4,
            std::net::IpAddr::V6(_) => &mut cidrs.ipv6,
        };
        if slot.replace(cidr).is_some() {
            bail!("--cluster-cidr {text}: more than one CIDR of one family");
        }
    }
    Ok(cidrs)
}

/// The eBPF dataplane: loaded now, attached after the first full sync.
fn open_ebpf(
    args: &Args,
    cgroup: &anyhow::Result<PathBuf>,
    load_options: loader::LoadOptions,
    interfaces: Option<&[Interface]>,
) -> anyhow::Result<EbpfDataplane> {
    let cgroup = cgroup.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut dataplane = EbpfDataplane::open(&args.bpffs, cgroup, load_options, interfaces)
        .context("starting the eBPF dataplane")?;
    dataplane.terminate_tcp_on_endpoint_removal(args.terminate_tcp_on_endpoint_removal);
    if interfaces.is_none_or(|i| !i.is_empty()) {
        protect_snat_ports();
    }
    info!(cgroup = %cgroup.display(), "programs loaded; they attach after the first full sync");
    Ok(dataplane)
}

/// Keeps the source ports of masqueraded flows from the node's own connections; without
/// that, the log says what is at stake, and everything else is served.
fn protect_snat_ports() {
    let ports = format!(
        "{}-{}",
        proxy_common::SNAT_PORT_MIN,
        proxy_common::SNAT_PORT_MAX
    );
    match snat_ports::protect(std::path::Path::new("/proc/sys")) {
        Ok(protection) => info!(
            snat_ports = %ports,
            ephemeral_ports = ?protection.ephemeral(),
            "{}",
            protection.summary()
        ),
        Err(e) => tracing::warn!("{}", logging::Chain(&e)),
    }
}

/// A kernel feature by the name `proxyctl status` gives it.
fn parse_feature(name: &str) -> Result<proxy_common::features::KernelFeature, String> {
    use proxy_common::features::KernelFeature;
    KernelFeature::ALL
        .into_iter()
        .find(|f| f.name() == name)
        .ok_or_else(|| {
            let known: Vec<&str> = KernelFeature::ALL.iter().map(|f| f.name()).collect();
            format!(
                "no kernel feature is called {name:?}; known: {}",
                known.join(", ")
            )
        })
}

/// `None` when the interfaces are to be the node's (no `--interfaces`).
fn resolve_interfaces(names: &[String]) -> anyhow::Result<Option<Vec<Interface>>> {
    if names.is_empty() {
        return Ok(None);
    }
    if names == ["none"] {
        return Ok(Some(Vec::new()));
    }
    let interfaces = ifaces::resolve(names)?;
    for i in &interfaces {
        info!(interface = %i.name, ifindex = i.ifindex, source_nat = ?i.addr, source_nat6 = ?i.addr6, "tc programs will attach");
    }
    Ok(Some(interfaces))
}

/// `--udp-timeout` and `--udp-stream-timeout`, for conntrack.
fn conntrack_udp_timeouts(args: &Args) -> (Option<Duration>, Option<Duration>) {
    (
        args.udp_timeout.map(Duration::from_secs),
        args.udp_stream_timeout.map(Duration::from_secs),
    )
}

fn seconds_to_ns(seconds: u64) -> u64 {
    seconds.saturating_mul(1_000_000_000)
}

/// The iptables dataplane, on the backend `choice` resolves to.
/// Without route_localnet (an unprivileged container's /proc/sys is read-only), only the
/// localhost NodePorts are lost, and the log says why: they are left out of the NodePort
/// jump, as with `--localhost-nodeports false`, so such a connect is refused rather than
/// left hanging.
fn open_iptables(
    mut options: iptables::render::RenderOptions,
    ipv6_cluster_cidr: Option<(std::net::IpAddr, u8)>,
    choice: iptables::backend::BackendChoice,
    (udp_timeout, udp_stream_timeout): (Option<Duration>, Option<Duration>),
) -> anyhow::Result<IptablesDataplane> {
    let (backend, why) =
        iptables::backend::resolve(choice).context("choosing the iptables backend")?;
    info!(backend = backend.name(), reason = %why, "iptables backend chosen");
    iptables::udp_timeouts::set_udp_timeouts(
        std::path::Path::new("/proc/sys"),
        udp_timeout,
        udp_stream_timeout,
    )?;
    if options.localhost_node_ports {
        match iptables::localnet::ensure_route_localnet(std::path::Path::new("/proc/sys")) {
            Ok(true) => info!(
                sysctl = iptables::localnet::ROUTE_LOCALNET,
                "set route_localnet=1 to serve NodePorts on 127.0.0.1, as kube-proxy does"
            ),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(
                    "NodePorts are not served on 127.0.0.1: {}",
                    logging::Chain(&e)
                );
                options.localhost_node_ports = false;
            }
        }
    }
    // kube-proxy's IPv6 proxier: ip6tables of the same backend. Without it (no binary, no
    // IPv6 in the kernel), IPv6 frontends are left out with the cause and IPv4 is served.
    let ipv6 = iptables::FamilyTables {
        iptables: backend.binaries_v6(),
        options: options.ipv6(ipv6_cluster_cidr),
    };
    let ipv4 = iptables::FamilyTables {
        iptables: backend.binaries(),
        options,
    };
    IptablesDataplane::open_dual_stack(ipv4, ipv6).context("starting the iptables dataplane")
}

/// Once the chosen datapath serves traffic, the other one's state goes: a node switched
/// from one mode to the other is never without a datapath. Our iptables chains are removed
/// only under their owner marker, never kube-proxy's.
fn retire_other_datapath(ebpf_active: bool, bpffs: &std::path::Path) {
    if ebpf_active {
        for backend in iptables::backend::available() {
            for (family, binaries) in families(backend) {
                match binaries.cleanup() {
                    Ok(removed) if !removed.is_empty() => info!(
                        backend = backend.name(),
                        family,
                        chains = removed.len(),
                        "switched from iptables mode: its chains were removed"
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!("no iptables state to remove: {}", logging::Chain(&e))
                    }
                }
            }
        }
    } else {
        match loader::cleanup(bpffs) {
            Ok(removed) if !removed.links.is_empty() || !removed.maps.is_empty() => info!(
                links = removed.links.len(),
                maps = removed.maps.len(),
                "switched from eBPF mode: its programs and maps were removed"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                "eBPF state in {} not removed: {}",
                bpffs.display(),
                logging::Chain(&e)
            ),
        }
    }
}
