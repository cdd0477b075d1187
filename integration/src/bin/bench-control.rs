//! Control-plane benchmark, in process: programs N Services with E endpoints each (cold
//! start), then applies single endpoint changes and times each sync. By default into the
//! real BPF maps, pinned under a bpffs directory of their own with no program attached;
//! with `--iptables`, as kube-proxy's chains in a network namespace of its own.
//!
//! `cargo run -p integration --release --bin bench-control -- --services 10000 --endpoints 5`

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use clap::Parser;
use integration::{Cgroup, bench_addresses::Family, objects, privileged, unique};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
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
    /// The address family of the Services and endpoints (the connect samples are IPv4's).
    #[arg(long, value_enum, default_value_t = Family::Ipv4)]
    family: Family,
}

/// Addresses per /16 as they are handed out here (x.y.z.1 to x.y.z.254).
const PER_16: usize = 254 * 256;
/// Services past the first /16 take 198.18.64.0-198.18.255.255, every address of it.
const SECOND_RANGE: usize = 192 * 256;
/// Endpoint addresses: 198.18.0.0/18, reused past its 16,256 (harmless: nothing connects
/// to them, and a backend is keyed with its frontend).
const ENDPOINT_ADDRESSES: usize = 254 * 64;

/// The ClusterIP of Service `i`: 198.19.0.0/16 for the first 65,024, then the rest of
/// 198.18.0.0/15 above the endpoints' range, so up to 114,176 Services stay in the
/// benchmark range (198.18.0.0/15).
fn service_ip(i: usize) -> anyhow::Result<String> {
    if i < PER_16 {
        return Ok(Ipv4Addr::new(198, 19, (i / 254) as u8, (i % 254 + 1) as u8).to_string());
    }
    let n = i - PER_16;
    anyhow::ensure!(
        n < SECOND_RANGE,
        "at most {} Services fit the benchmark range",
        PER_16 + SECOND_RANGE
    );
    Ok(Ipv4Addr::new(198, 18, (64 + n / 256) as u8, (n % 256) as u8).to_string())
}

/// Endpoint address number `n`, in 198.18.0.0/18.
fn endpoint_ip(n: usize) -> String {
    let n = n % ENDPOINT_ADDRESSES;
    Ipv4Addr::new(198, 18, (n / 254) as u8, (n % 254 + 1) as u8).to_string()
}

/// IPv6 endpoint address number `n`: 2001:db8:18:2::/64 from ::1, as many as IPv4 has
/// (reused the same way).
fn endpoint_ip6(n: usize) -> String {
    let n = (n % ENDPOINT_ADDRESSES) as u128 + 1;
    Ipv6Addr::from(u128::from(Ipv6Addr::new(0x2001, 0xdb8, 0x18, 2, 0, 0, 0, 0)) + n).to_string()
}

fn service(family: Family, i: usize) -> Service {
    let cluster_ip = match family {
        Family::Ipv4 => service_ip(i).unwrap_or_default(),
        Family::Ipv6 => family.vip(i).map(|ip| ip.to_string()).unwrap_or_default(),
    };
    let mut service = objects::cluster_ip_service("bench", &format!("svc-{i}"), cluster_ip.clone());
    if let (Family::Ipv6, Some(spec)) = (family, service.spec.as_mut()) {
        spec.cluster_ips = Some(vec![cluster_ip]);
        spec.ip_families = Some(vec![family.kubernetes().into()]);
        spec.ip_family_policy = Some("SingleStack".into());
    }
    service
}

fn slice(family: Family, i: usize, endpoints: usize, generation: usize) -> EndpointSlice {
    // Endpoint 0 moves with every change (a pod replaced).
    let n = move |j: usize| i * endpoints + j + if j == 0 { generation * 7 } else { 0 };
    let mut slice = objects::ready_slice(
        "bench",
        &format!("svc-{i}"),
        (0..endpoints).map(|j| match family {
            Family::Ipv4 => endpoint_ip(n(j)),
            Family::Ipv6 => endpoint_ip6(n(j)),
        }),
    );
    slice.address_type = family.kubernetes().into();
    slice
}

/// Counts allocations, to see what each phase costs besides its time.
struct Counting;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// One phase's wall time and allocations.
struct Phase {
    ms: f64,
    allocations: u64,
}

impl Phase {
    fn since(started: Instant, allocations_before: u64) -> Self {
        Self {
            ms: started.elapsed().as_secs_f64() * 1e3,
            allocations: allocations() - allocations_before,
        }
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
    match args.family {
        Family::Ipv4 => drop(service_ip(args.services.saturating_sub(1))?),
        Family::Ipv6 => anyhow::ensure!(
            args.services <= args.family.max_services(),
            "at most {} IPv6 Services",
            args.family.max_services()
        ),
    }
    if !privileged() {
        anyhow::bail!("bench-control needs root and bpffs");
    }
    let id = unique("epxbench");
    let cgroup = Cgroup::new(&id);
    let pins = PinGuard(std::path::PathBuf::from("/sys/fs/bpf").join(&id));
    run(&args, &pins.0, &cgroup)?;
    drop(pins);
    if args.connect_samples > 0 && !args.memory_dataplane && !args.iptables {
        if args.family == Family::Ipv4 {
            event_to_connection(args.connect_samples)?;
        } else {
            println!("  endpoint event to first connection: measured over IPv4 only");
        }
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
            let mut s = slice(Family::Ipv4, 0, 1, 0);
            if let Some(e) = s.endpoints.as_mut().and_then(|e| e.first_mut()) {
                e.addresses = vec![ip.to_owned()];
            }
            s
        };
        let mut svc = service(Family::Ipv4, 0);
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
        use proxy_user::dataplane::iptables::{
            FamilyTables, IptablesDataplane, backend::Backend, render::RenderOptions,
        };
        let backend = match args.iptables_backend.as_str() {
            "legacy" => Backend::Legacy,
            _ => Backend::Nft,
        };
        // Both families, as the agent runs it (kube-proxy's IPv4 and IPv6 proxiers).
        let mut dataplane = IptablesDataplane::open_dual_stack(
            FamilyTables {
                iptables: backend.binaries(),
                options: RenderOptions::default(),
            },
            FamilyTables {
                iptables: backend.binaries_v6(),
                options: RenderOptions::default().ipv6(None),
            },
        )?;
        return measure(args, &mut dataplane);
    }
    if args.memory_dataplane {
        return measure(
            args,
            &mut proxy_user::dataplane::memory::MemoryDataplane::default(),
        );
    }
    let mut dataplane = EbpfDataplane::open(pins, &cgroup.path, load_options(args), Some(&[]))?;
    measure(args, &mut dataplane)
}

/// Maps big enough for the run: the defaults, or room for every frontend and endpoint
/// (and the members of the changes, which move an endpoint) with a quarter to spare.
fn load_options(args: &Args) -> loader::LoadOptions {
    let room = |n: usize| u32::try_from(n + n / 4).unwrap_or(u32::MAX);
    let defaults = loader::Capacities::default();
    let entries = args.services * args.endpoints + args.changes;
    loader::LoadOptions {
        capacities: loader::Capacities {
            services: defaults.services.max(room(args.services)),
            slots: defaults.slots.max(room(entries)),
            members: defaults.members.max(room(entries)),
            ..defaults
        },
        ..loader::LoadOptions::default()
    }
}

fn measure<D: proxy_user::dataplane::Dataplane>(
    args: &Args,
    dataplane: &mut D,
) -> anyhow::Result<()> {
    let rss_empty = rss_kib();
    let mut store = ObjectStore::new(None);
    let (allocs, started) = (allocations(), Instant::now());
    store.replace_services((0..args.services).map(|i| service(args.family, i)));
    store.replace_slices((0..args.services).map(|i| slice(args.family, i, args.endpoints, 0)));
    let load = Phase::since(started, allocs);
    let rss_before = rss_kib();

    // The cold sync, phase by phase as the agent's sync thread runs it.
    let mut syncer = Syncer::default();
    let (allocs, started) = (allocations(), Instant::now());
    let mut plan = syncer.plan(&mut store, &*dataplane);
    let planned = Phase::since(started, allocs);
    let (allocs, applied_at) = (allocations(), Instant::now());
    let report = dataplane.apply(std::mem::take(&mut plan.changes));
    let applied = Phase::since(applied_at, allocs);
    let (allocs, finished_at) = (allocations(), Instant::now());
    let cold = syncer.finish(plan, report, &*dataplane);
    let finished = Phase::since(finished_at, allocs);
    let cold_ms = started.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(
        cold.failed == 0 && cold.frontends == args.services,
        "cold sync incomplete: {cold:?}"
    );
    let rss_synced = rss_kib();

    let mut latencies = Vec::with_capacity(args.changes);
    let change_allocs = allocations();
    for k in 0..args.changes {
        let i = k * 7919 % args.services;
        store.upsert_slice(slice(args.family, i, args.endpoints, k + 1));
        let started = Instant::now();
        let summary = syncer.sync(&mut store, dataplane);
        latencies.push(started.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            summary.written == 1,
            "one frontend rewritten per change: {summary:?}"
        );
    }
    let change_allocs = (allocations() - change_allocs) / args.changes.max(1) as u64;
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
        "control plane, {} {} Services x {} endpoints, {target}",
        args.services, args.family, args.endpoints
    );
    println!(
        "  objects into the store (not part of the sync): {:.1} ms, {} allocations",
        load.ms, load.allocations
    );
    println!("  cold sync (translate + write every entry): {cold_ms:.1} ms");
    for (name, phase) in [
        ("plan (translate + diff)", &planned),
        ("apply (dataplane writes)", &applied),
        ("finish", &finished),
    ] {
        println!(
            "    {name}: {:.1} ms, {} allocations",
            phase.ms, phase.allocations
        );
    }
    println!(
        "  one endpoint change, {} samples: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        args.changes,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
    println!("    allocations per change (store update + sync): {change_allocs}");
    println!(
        "  resident memory: {} MiB before any object, {} MiB with the objects loaded, {} MiB after the cold sync, {} MiB after the changes",
        rss_empty / 1024,
        rss_before / 1024,
        rss_synced / 1024,
        rss_after / 1024
    );
    let json = serde_json::json!({
        "services": args.services, "endpoints_per_service": args.endpoints,
        "cold_sync_ms": cold_ms,
        "cold_phases_ms": {"plan": planned.ms, "apply": applied.ms, "finish": finished.ms},
        "cold_allocations": planned.allocations + applied.allocations + finished.allocations,
        "store_load_ms": load.ms,
        "change_allocations": change_allocs,
        "change_ms": {"p50": percentile(&latencies, 0.5), "p99": percentile(&latencies, 0.99), "max": percentile(&latencies, 1.0)},
        "rss_kib": {"empty": rss_empty, "objects_loaded": rss_before, "after_sync": rss_synced, "after_changes": rss_after},
    });
    println!("{json}");
    Ok(())
}
