//! Control-plane benchmark, in process: programs N Services with E endpoints each (cold
//! start), then applies single endpoint changes and times each sync. By default into the
//! real BPF maps, pinned under a bpffs directory of their own with no program attached;
//! with `--iptables`, as kube-proxy's chains in a network namespace of its own.
//!
//! `cargo run -p integration --release --bin bench-control -- --services 10000 --endpoints 5`

use std::{net::Ipv4Addr, time::Instant};

use clap::Parser;
use integration::{Cgroup, privileged, unique};
use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use proxy_user::{
    dataplane::ebpf::{EbpfDataplane, loader},
    source::store::ObjectStore,
    sync::Syncer,
};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    #[arg(long, default_value_t = 5)]
    endpoints: usize,
    #[arg(long, default_value_t = 1_000)]
    changes: usize,
    /// Time translation and diffing alone, against an in-memory dataplane.
    #[arg(long)]
    memory_dataplane: bool,
    /// Program kube-proxy's iptables chains instead (in a network namespace of the bench's
    /// own): full restore, then partial syncs of one Service.
    #[arg(long)]
    iptables: bool,
    /// With --iptables: `nft` (iptables-nft, Debian's default) or `legacy`.
    #[arg(long, default_value = "nft")]
    iptables_backend: String,
    /// Samples of "endpoint event to first connection answered by the new backend",
    /// measured with real sockets in a namespace topology (0 to skip).
    #[arg(long, default_value_t = 200)]
    connect_samples: usize,
}

fn addr(n: usize, base: [u8; 2]) -> String {
    Ipv4Addr::new(
        base[0],
        base[1] + (n / (254 * 256)) as u8,
        (n / 254 % 256) as u8,
        (n % 254 + 1) as u8,
    )
    .to_string()
}

fn service(i: usize) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(format!("svc-{i}")),
            namespace: Some("bench".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(addr(i, [198, 19])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn slice(i: usize, endpoints: usize, generation: usize) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("svc-{i}-1")),
            namespace: Some("bench".into()),
            labels: Some([("kubernetes.io/service-name".to_string(), format!("svc-{i}"))].into()),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            ..Default::default()
        }]),
        endpoints: Some(
            (0..endpoints)
                .map(|j| Endpoint {
                    // Endpoint 0 moves with every change (a pod replaced).
                    addresses: vec![addr(
                        i * endpoints + j + if j == 0 { generation * 7 } else { 0 },
                        [198, 18],
                    )],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

/// The `p` quantile of sorted samples (0 when there are none).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !privileged() {
        anyhow::bail!("bench-control needs root and bpffs");
    }
    let id = unique("epxbench");
    let cgroup = Cgroup::new(&id);
    let pins = PinGuard(std::path::PathBuf::from("/sys/fs/bpf").join(&id));
    run(&args, &pins.0, &cgroup)?;
    drop(pins);
    if args.connect_samples > 0 && !args.memory_dataplane && !args.iptables {
        event_to_connection(args.connect_samples)?;
    }
    Ok(())
}

/// Unpins what the benchmark pinned, also when it fails or panics.
struct PinGuard(std::path::PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = loader::cleanup(&self.0);
    }
}

/// From an endpoint change reaching the store to the first connection the new backend
/// answers: sync, map writes, and a real connect through the attached programs.
fn event_to_connection(samples: usize) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let t = integration::Topology::new(2);
    let pins = PinGuard(std::path::PathBuf::from("/sys/fs/bpf").join(format!("{}-e2e", t.id)));
    let pins_dir = pins.0.clone();
    let outcome = (|| -> anyhow::Result<Vec<f64>> {
        let pins = &pins_dir;
        let mut dataplane = EbpfDataplane::open(
            pins,
            &t.cgroup.path,
            loader::LoadOptions::default(),
            Some(&[]),
        )?;
        let mut store = ObjectStore::new(None);
        let mut syncer = Syncer::default();
        let backend_slice = |ip: &str| {
            let mut s = slice(0, 1, 0);
            if let Some(e) = s.endpoints.as_mut().and_then(|e| e.first_mut()) {
                e.addresses = vec![ip.to_owned()];
            }
            s
        };
        let mut svc = service(0);
        if let Some(spec) = svc.spec.as_mut() {
            spec.cluster_ip = Some("198.19.0.10".into());
        }
        store.upsert_service(svc);
        store.upsert_slice(backend_slice(&t.backends[0].ip));
        syncer.sync(&mut store, &mut dataplane);
        proxy_user::dataplane::Dataplane::activate(&mut dataplane).map_err(anyhow::Error::msg)?;
        // This process joins the client's cgroup, this thread its network namespace.
        std::fs::write(t.cgroup.path.join("cgroup.procs"), "0")?;
        let netns = std::fs::File::open(format!("/run/netns/{}", t.client.name))?;
        // SAFETY: setns on this thread with a namespace fd we own.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&netns), libc::CLONE_NEWNET) } != 0
        {
            anyhow::bail!("setns: {}", std::io::Error::last_os_error());
        }
        let mut latencies = Vec::with_capacity(samples);
        for k in 0..samples {
            let target = &t.backends[(k + 1) % 2];
            let started = Instant::now();
            store.upsert_slice(backend_slice(&target.ip));
            syncer.sync(&mut store, &mut dataplane);
            loop {
                let mut stream = std::net::TcpStream::connect("198.19.0.10:80")?;
                stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut response = String::new();
                stream.read_to_string(&mut response)?;
                if response.trim_end().ends_with(&target.name) {
                    break;
                }
            }
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
        }
        // Leave the cgroup so it can be removed.
        let root = proxy_user::cgroup::find_cgroup2().map_err(anyhow::Error::msg)?;
        std::fs::write(root.join("cgroup.procs"), "0")?;
        Ok(latencies)
    })();
    drop(pins);
    let mut latencies = outcome?;
    latencies.sort_by(f64::total_cmp);
    println!(
        "  endpoint event to first connection answered by the new backend, {samples} samples: p50 {:.3} ms, p99 {:.3} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99)
    );
    println!(
        "{}",
        serde_json::json!({"event_to_connection_ms": {"p50": percentile(&latencies, 0.5), "p99": percentile(&latencies, 0.99)}})
    );
    Ok(())
}

fn run(args: &Args, pins: &std::path::Path, cgroup: &Cgroup) -> anyhow::Result<()> {
    if args.iptables {
        let ns = integration::Netns::new(unique("epxbenchipt"));
        let file = std::fs::File::open(format!("/run/netns/{}", ns.name))?;
        // SAFETY: setns on this thread; iptables-restore, spawned from it, inherits it.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) } != 0 {
            anyhow::bail!("setns: {}", std::io::Error::last_os_error());
        }
        use proxy_user::dataplane::iptables::backend::Backend;
        let iptables = match args.iptables_backend.as_str() {
            "legacy" => Backend::Legacy,
            _ => Backend::Nft,
        }
        .binaries();
        let mut dataplane = proxy_user::dataplane::iptables::IptablesDataplane::open(
            iptables,
            proxy_user::dataplane::iptables::render::RenderOptions::default(),
        )?;
        return measure(args, &mut dataplane);
    }
    if args.memory_dataplane {
        return measure(
            args,
            &mut proxy_user::dataplane::memory::MemoryDataplane::default(),
        );
    }
    let mut dataplane = EbpfDataplane::open(
        pins,
        &cgroup.path,
        loader::LoadOptions::default(),
        Some(&[]),
    )?;
    measure(args, &mut dataplane)
}

fn measure<D: proxy_user::dataplane::Dataplane>(
    args: &Args,
    dataplane: &mut D,
) -> anyhow::Result<()> {
    let rss_empty = rss_kib();
    let mut store = ObjectStore::new(None);
    store.replace_services((0..args.services).map(service));
    store.replace_slices((0..args.services).map(|i| slice(i, args.endpoints, 0)));
    let rss_before = rss_kib();

    let mut syncer = Syncer::default();
    let started = Instant::now();
    let cold = syncer.sync(&mut store, dataplane);
    let cold_ms = started.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        cold.failed == 0 && cold.frontends == args.services,
        "cold sync incomplete: {cold:?}"
    );

    let mut latencies = Vec::with_capacity(args.changes);
    for k in 0..args.changes {
        let i = k * 7919 % args.services;
        store.upsert_slice(slice(i, args.endpoints, k + 1));
        let started = Instant::now();
        let summary = syncer.sync(&mut store, dataplane);
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            summary.written == 1,
            "one frontend rewritten per change: {summary:?}"
        );
    }
    latencies.sort_by(f64::total_cmp);
    let rss_after = rss_kib();

    let target = if args.iptables {
        format!(
            "iptables-{}-restore in a namespace of its own",
            args.iptables_backend
        )
    } else if args.memory_dataplane {
        "an in-memory dataplane (translation and diffing only)".to_string()
    } else {
        "real BPF maps".to_string()
    };
    println!(
        "control plane, {} Services x {} endpoints, {target}",
        args.services, args.endpoints
    );
    println!("  cold sync (translate + write every entry): {cold_ms:.1} ms");
    println!(
        "  one endpoint change, {} samples: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        args.changes,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    println!(
        "  resident memory: {} MiB before any object, {} MiB with the objects loaded, {} MiB after syncing",
        rss_empty / 1024,
        rss_before / 1024,
        rss_after / 1024
    );
    let json = serde_json::json!({
        "services": args.services, "endpoints_per_service": args.endpoints,
        "cold_sync_ms": cold_ms,
        "change_ms": {"p50": percentile(&latencies, 0.5), "p99": percentile(&latencies, 0.99), "max": percentile(&latencies, 1.0)},
        "rss_kib": {"empty": rss_empty, "objects_loaded": rss_before, "after_sync": rss_after},
    });
    println!("{json}");
    Ok(())
}
