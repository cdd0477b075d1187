//! What the agent reports on /metrics, and its health for /healthz and /livez.
//!
//! kube-proxy's metric names (subsystem `kubeproxy`) are used where they mean the same,
//! so existing dashboards and alerts keep working; ours are prefixed `ebpf_proxy_`.

pub mod exposition;
pub mod http;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use exposition::{Histogram, PROGRAMMING_BUCKETS, SYNC_BUCKETS, header, sample};

use crate::{dataplane::MapUsage, sync::SyncSummary};

/// The sync loop must report within this long to be considered alive.
const LIVENESS_WINDOW: Duration = Duration::from_secs(60);

pub struct AgentMetrics {
    inner: Mutex<Inner>,
    /// Where the BPF maps are pinned, for the per-frontend counters read at scrape time.
    pin_dir: Option<PathBuf>,
    /// How long a change may wait to be programmed before /healthz turns unhealthy.
    health_timeout: Duration,
    unsynced: OldestUnsynced,
}

/// When the oldest change not yet programmed arrived (`None`: everything is programmed).
pub type OldestUnsynced = Arc<dyn Fn() -> Option<Instant> + Send + Sync>;

struct Inner {
    sync_all: Histogram,
    sync_full: Histogram,
    sync_partial: Histogram,
    programming: Histogram,
    last_sync: Option<SystemTime>,
    service_changes: u64,
    endpoint_changes: u64,
    no_local_endpoints: u64,
    rejected: BTreeMap<&'static str, u64>,
    write_failures: u64,
    last_failed: usize,
    usage: Vec<MapUsage>,
    heartbeat: Instant,
}

/// What /healthz and /livez answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    pub body: String,
}

impl AgentMetrics {
    pub fn new(
        pin_dir: Option<PathBuf>,
        health_timeout: Duration,
        unsynced: OldestUnsynced,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                sync_all: Histogram::new(SYNC_BUCKETS),
                sync_full: Histogram::new(SYNC_BUCKETS),
                sync_partial: Histogram::new(SYNC_BUCKETS),
                programming: Histogram::new(PROGRAMMING_BUCKETS),
                last_sync: None,
                service_changes: 0,
                endpoint_changes: 0,
                no_local_endpoints: 0,
                rejected: BTreeMap::new(),
                write_failures: 0,
                last_failed: 0,
                usage: Vec::new(),
                heartbeat: Instant::now(),
            }),
            pin_dir,
            health_timeout,
            unsynced,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one sync.
    pub fn observe_sync(&self, summary: &SyncSummary) {
        let mut m = self.lock();
        let seconds = summary.elapsed.as_secs_f64();
        m.sync_all.observe(seconds);
        if summary.full {
            m.sync_full.observe(seconds);
        } else {
            m.sync_partial.observe(seconds);
        }
        for latency in &summary.programming_latencies {
            m.programming.observe(latency.as_secs_f64());
        }
        m.last_sync = Some(SystemTime::now());
        m.service_changes = summary.changes.services;
        m.endpoint_changes = summary.changes.endpoint_slices;
        m.no_local_endpoints = summary.no_local_endpoints as u64;
        for code in &summary.rejections {
            *m.rejected.entry(code).or_default() += 1;
        }
        m.write_failures += summary.failed as u64;
        m.last_failed = summary.failed;
        m.usage = summary.usage.clone();
        m.heartbeat = Instant::now();
    }

    /// The sync loop is alive even when nothing changes.
    pub fn heartbeat(&self) {
        self.lock().heartbeat = Instant::now();
    }

    /// /livez: the sync loop is running.
    pub fn liveness(&self) -> Health {
        let m = self.lock();
        let alive = m.heartbeat.elapsed() < LIVENESS_WINDOW;
        Health {
            healthy: alive,
            body: health_body(&m, alive),
        }
    }

    /// /healthz, as kube-proxy means it: no change has waited longer than the health
    /// timeout to be programmed (a sync is not overdue), and the sync thread is alive.
    /// Healthy while starting up, until the first listing has waited that long; a write
    /// that fails keeps its change waiting, so it turns unhealthy once retries have failed
    /// for that long.
    pub fn readiness(&self) -> Health {
        let overdue = (self.unsynced)().is_some_and(|t| t.elapsed() >= self.health_timeout);
        let m = self.lock();
        let healthy = !overdue && m.heartbeat.elapsed() < LIVENESS_WINDOW;
        Health {
            healthy,
            body: health_body(&m, healthy),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        {
            let m = self.lock();
            m.sync_all.render(
                &mut out,
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds",
            );
            m.sync_full.render(
                &mut out,
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs",
            );
            m.sync_partial.render(
                &mut out,
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs",
            );
            m.programming.render(
                &mut out,
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
            );
            header(
                &mut out,
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
                "gauge",
            );
            let last = m
                .last_sync
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            sample(
                &mut out,
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                &[],
                last,
            );
            header(
                &mut out,
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
                "counter",
            );
            sample(
                &mut out,
                "kubeproxy_sync_proxy_rules_service_changes_total",
                &[],
                m.service_changes,
            );
            header(
                &mut out,
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
                "counter",
            );
            sample(
                &mut out,
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                &[],
                m.endpoint_changes,
            );
            header(
                &mut out,
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                "Number of services with a Local traffic policy and no endpoints",
                "gauge",
            );
            sample(
                &mut out,
                "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
                &[("traffic_policy", "internal")],
                m.no_local_endpoints,
            );

            header(
                &mut out,
                "ebpf_proxy_objects_rejected_total",
                "Objects or parts of objects that could not be used, by reason",
                "counter",
            );
            for (code, n) in &m.rejected {
                sample(
                    &mut out,
                    "ebpf_proxy_objects_rejected_total",
                    &[("reason", code)],
                    n,
                );
            }
            header(
                &mut out,
                "ebpf_proxy_frontend_write_failures_total",
                "Frontends that could not be written (a full map)",
                "counter",
            );
            sample(
                &mut out,
                "ebpf_proxy_frontend_write_failures_total",
                &[],
                m.write_failures,
            );
            reaper_totals(&mut out);
            header(
                &mut out,
                "ebpf_proxy_map_entries",
                "Entries in each BPF map",
                "gauge",
            );
            for u in &m.usage {
                sample(
                    &mut out,
                    "ebpf_proxy_map_entries",
                    &[("map", u.map)],
                    u.entries,
                );
            }
            header(
                &mut out,
                "ebpf_proxy_map_capacity",
                "Capacity of each BPF map",
                "gauge",
            );
            for u in &m.usage {
                sample(
                    &mut out,
                    "ebpf_proxy_map_capacity",
                    &[("map", u.map)],
                    u.capacity,
                );
            }
        }
        if let Some(dir) = &self.pin_dir {
            datapath_counters(&mut out, dir);
        }
        out
    }
}

fn health_body(m: &Inner, healthy: bool) -> String {
    let time = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    serde_json::json!({
        "lastUpdated": m.last_sync.map(time),
        "currentTime": time(SystemTime::now()),
        "healthy": healthy,
        "lastSyncFailedFrontends": m.last_failed,
    })
    .to_string()
}

/// Per-frontend and datapath counters, read from the pinned maps.
fn datapath_counters(out: &mut String, dir: &std::path::Path) {
    let Ok(maps) = crate::dataplane::ebpf::maps::Maps::from_pins(dir) else {
        return;
    };
    header(
        out,
        "ebpf_proxy_service_connections_total",
        "Connections and sends translated to a backend, per frontend",
        "counter",
    );
    let mut rejected = String::new();
    header(
        &mut rejected,
        "ebpf_proxy_service_rejected_total",
        "Connections and sends refused for lack of an endpoint, per frontend",
        "counter",
    );
    for (addr, service, counters) in maps.frontend_counters() {
        let frontend = addr.to_string();
        let labels = [
            ("service", service.as_str()),
            ("frontend", frontend.as_str()),
        ];
        sample(
            out,
            "ebpf_proxy_service_connections_total",
            &labels,
            counters.translated,
        );
        sample(
            &mut rejected,
            "ebpf_proxy_service_rejected_total",
            &labels,
            counters.no_endpoint,
        );
    }
    out.push_str(&rejected);
    header(
        out,
        "ebpf_proxy_datapath_events_total",
        "Datapath events by name",
        "counter",
    );
    for (event, n) in maps.events() {
        sample(
            out,
            "ebpf_proxy_datapath_events_total",
            &[("event", event)],
            n,
        );
    }
    if let Some(info) = maps.agent_info() {
        kernel_features(out, &info);
    }
}

/// What the kernel offers the datapath and which programs it refused, from the agent
/// record: an alert on `ebpf_proxy_program_loaded == 0` finds a node that lost a path.
fn kernel_features(out: &mut String, info: &proxy_common::AgentInfo) {
    use proxy_common::{features::KernelFeature, names};
    header(
        out,
        "ebpf_proxy_kernel_feature",
        "Kernel features the datapath uses: 1 present, 0 missing (probed at start)",
        "gauge",
    );
    for feature in KernelFeature::ALL {
        if info.features_probed & feature.bit() == 0 {
            continue;
        }
        sample(
            out,
            "ebpf_proxy_kernel_feature",
            &[("feature", feature.name()), ("since", feature.since())],
            u64::from(info.features_present & feature.bit() != 0),
        );
    }
    header(
        out,
        "ebpf_proxy_program_loaded",
        "BPF programs: 1 loaded, 0 refused by this kernel (its path is not served)",
        "gauge",
    );
    for (bit, program) in names::ALL_PROGRAMS.iter().enumerate() {
        sample(
            out,
            "ebpf_proxy_program_loaded",
            &[("program", program)],
            u64::from(info.programs_failed & (1 << bit) == 0),
        );
    }
}

/// What the eBPF mode's socket reaper did since the agent started (zero in iptables mode,
/// where conntrack's entries are deleted instead).
fn reaper_totals(out: &mut String) {
    use crate::dataplane::ebpf::socket_reaper::{
        EXTERNAL_FLOWS_DROPPED, TCP_SOCKETS_DESTROYED, UDP_FLOWS_DROPPED, UDP_SOCKETS_DESTROYED,
    };
    use std::sync::atomic::Ordering;
    let name = "ebpf_proxy_sockets_destroyed_total";
    header(
        out,
        name,
        "Connected sockets destroyed because the backend they were given left its Service (TCP only with --terminate-tcp-on-endpoint-removal)",
        "counter",
    );
    for (protocol, count) in [
        ("udp", &UDP_SOCKETS_DESTROYED),
        ("tcp", &TCP_SOCKETS_DESTROYED),
    ] {
        sample(
            out,
            name,
            &[("protocol", protocol)],
            count.load(Ordering::Relaxed),
        );
    }
    header(
        out,
        "ebpf_proxy_udp_flows_dropped_total",
        "Unconnected sockets' UDP flows dropped because their backend left its Service",
        "counter",
    );
    sample(
        out,
        "ebpf_proxy_udp_flows_dropped_total",
        &[],
        UDP_FLOWS_DROPPED.load(Ordering::Relaxed),
    );
    header(
        out,
        "ebpf_proxy_external_flows_dropped_total",
        "Flows from outside the node (NodePort, ExternalIP, LoadBalancer) dropped because their backend left its Service (UDP; TCP only with --terminate-tcp-on-endpoint-removal)",
        "counter",
    );
    sample(
        out,
        "ebpf_proxy_external_flows_dropped_total",
        &[],
        EXTERNAL_FLOWS_DROPPED.load(Ordering::Relaxed),
    );
}
