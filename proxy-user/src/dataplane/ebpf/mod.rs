//! The eBPF dataplane: cgroup socket programs and the maps they read.

pub mod batch;
pub mod convert;
pub mod entries;
pub mod external_flows;
pub mod features;
pub mod interfaces;
pub mod links;
pub mod load_error;
pub mod loader;
pub mod maps;
pub mod netlink;
pub mod netns;
pub mod orphans;
pub mod regions;
pub mod slots;
pub mod snat_ports;
pub mod sock_diag;
pub mod socket_reaper;
pub mod tc_attach;
pub mod tc_filters;

use std::path::Path;

use tracing::{info, warn};

use self::{
    loader::{LoadError, LoadOptions, Loaded},
    maps::{BatchMaps, Maps, MapsError},
};
use crate::logging::Chain;
use proxy_common::names;

use super::{ActivateError, ApplyReport, Change, Dataplane, MapUsage, PruneError, WriteFailure};
use crate::model::{DesiredState, FrontendAddr, FrontendSpec};

pub struct EbpfDataplane {
    maps: Maps,
    batch: BatchMaps,
    installed: DesiredState,
    /// Slots in the active tables and member entries, kept up to date by every write.
    slots_in_use: u64,
    members_in_use: u64,
    /// Programs loaded but not yet attached: see [`Dataplane::activate`].
    pending: Option<Loaded>,
    /// Who programs the maps, recorded for `proxyctl status` once the programs attach.
    agent: proxy_common::AgentInfo,
    /// The tc programs' interfaces are those carrying the node's addresses, known once
    /// the Node object is (see [`Dataplane::node_addresses`]).
    interfaces_from_node: bool,
    /// Destroys connected UDP sockets of backends that left their frontend; `None` if it
    /// could not start (logged).
    reaper: Option<socket_reaper::SocketReaper>,
    /// TCP connections of a backend that left are reset too (opt-in; kube-proxy leaves
    /// them).
    terminate_tcp: bool,
}

/// `uname -r`.
fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut uts) } != 0 {
        return String::new();
    }
    // SAFETY: uname NUL-terminates release.
    unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl EbpfDataplane {
    /// Loads and attaches (or adopts) the programs and reads back what is installed.
    /// `interfaces`: where the tc programs attach, for traffic from outside the node;
    /// `None`: the interfaces carrying the node's addresses, decided at activation.
    pub fn open(
        pin_dir: &Path,
        cgroup: &Path,
        options: LoadOptions,
        interfaces: Option<&[interfaces::Interface]>,
    ) -> Result<Self, LoadError> {
        let given = interfaces.unwrap_or_default();
        let names: Vec<String> = given.iter().map(|i| i.name.clone()).collect();
        let (loaded, mut maps) = loader::load(pin_dir, cgroup, options.clone(), &names)?;
        let report = loaded.report.clone();
        maps.set_interfaces(given)?;
        maps.write_config(&options.datapath)?;
        if loaded.replaces_older_layout {
            // The maps both layouts share (members, names, source ranges) hold what the
            // older programs, still attached, read; this layout's services map is empty
            // until the first sync. Pruned after the swap, by the periodic prune.
            info!(
                "maps of an older layout are pinned: the programs reading them are replaced after the first full sync"
            );
        } else {
            prune(&mut maps)?;
        }
        let installed = maps.installed()?;
        let batch = BatchMaps::open(pin_dir)?;
        let slots_in_use = maps.slots_in_use();
        let members_in_use = installed.values().map(|s| s.backends.len() as u64).sum();
        info!(frontends = installed.len(), pin_dir = %pin_dir.display(), "eBPF dataplane ready");
        let reaper = socket_reaper::SocketReaper::start(pin_dir)
            .inspect_err(|e| {
                warn!(
                    "connected UDP sockets of removed endpoints will not be destroyed: {}",
                    Chain(e)
                );
            })
            .ok();
        Ok(Self {
            maps,
            batch,
            installed,
            slots_in_use,
            members_in_use,
            pending: Some(loaded),
            interfaces_from_node: interfaces.is_none(),
            reaper,
            terminate_tcp: false,
            agent: proxy_common::AgentInfo {
                version: proxy_common::AgentInfo::field(env!("CARGO_PKG_VERSION")),
                cgroup: proxy_common::AgentInfo::field(&cgroup.display().to_string()),
                pid: std::process::id(),
                tc_attach: report.tc_attach(),
                started_unix: unix_now(),
                synced_unix: 0,
                features_probed: report.features.probed,
                features_present: report.features.present,
                programs_failed: report.programs_failed,
                _pad: 0,
                kernel: proxy_common::AgentInfo::field(&kernel_release()),
                load_error: proxy_common::AgentInfo::field(&report.load_error),
            },
        })
    }
}

impl EbpfDataplane {
    /// Removes the map entries no installed frontend owns: slots and members of no
    /// active table, names and counters of no frontend, source ranges no frontend asks
    /// for. What an interrupted write, a change made while no agent ran, or a counter the
    /// datapath created for a frontend being removed leaves behind. Run at start, and
    /// cheap enough to run periodically: one read of the service values and one pass
    /// over each other map's keys (`Maps::remove_orphans`). Returns the entries removed.
    /// Resets the TCP connections a backend that left its frontend was given, as UDP
    /// sockets are destroyed (`--terminate-tcp-on-endpoint-removal`).
    pub fn terminate_tcp_on_endpoint_removal(&mut self, on: bool) {
        self.terminate_tcp = on;
    }

    pub fn prune_orphans(&mut self) -> Result<usize, MapsError> {
        prune(&mut self.maps)
    }
}

fn prune(maps: &mut Maps) -> Result<usize, MapsError> {
    let orphans = maps.remove_orphans()?;
    if orphans > 0 {
        warn!(
            orphans,
            "removed map entries no installed frontend owns (left by an interrupted write, a change while no agent ran, or a counter of a removed frontend)"
        );
    }
    Ok(orphans)
}

impl Dataplane for EbpfDataplane {
    fn installed(&self) -> &DesiredState {
        &self.installed
    }

    /// What the maps do not hold is left out (`entries::unchanged` says why, per field).
    fn unchanged(&self, installed: &FrontendSpec, wanted: &FrontendSpec) -> bool {
        entries::unchanged(installed, wanted)
    }

    fn apply(&mut self, changes: Vec<Change>) -> ApplyReport {
        let mut report = ApplyReport::default();
        self.maps.reclaim_space();
        let changes = self.write_fresh_in_batches(changes, &mut report);
        let mut stale = Vec::new();
        for change in changes {
            stale.extend(self.stale_backends(&change));
            match change {
                Change::Upsert(addr, spec) => {
                    let previous = self.installed.get(&addr);
                    let members_before = previous.map_or(0, |p| p.backends.len() as u64);
                    match self.maps.write_frontend(&addr, &spec, previous) {
                        Ok(delta) => {
                            self.members_in_use =
                                self.members_in_use + spec.backends.len() as u64 - members_before;
                            self.slots_in_use = self.slots_in_use + u64::from(delta.after)
                                - u64::from(delta.before);
                            report.written += 1;
                            self.installed.insert(addr, spec);
                        }
                        Err(error) => report.failed.push(WriteFailure {
                            frontend: addr,
                            service: spec.service,
                            cause: error.into(),
                        }),
                    }
                }
                Change::Remove(addr) => {
                    if let Some(previous) = self.installed.remove(&addr) {
                        let freed = self.maps.remove_frontend(&addr, &previous);
                        self.members_in_use = self
                            .members_in_use
                            .saturating_sub(previous.backends.len() as u64);
                        self.slots_in_use = self.slots_in_use.saturating_sub(u64::from(freed));
                        report.removed += 1;
                    }
                }
            }
        }
        if self.pending.is_none() {
            self.record_agent();
        }
        if let Some(reaper) = &self.reaper {
            reaper.reap(stale);
        }
        report
    }

    fn node_addresses(&mut self, addresses: &[std::net::IpAddr]) {
        let Some(loaded) = self.pending.as_mut().filter(|_| self.interfaces_from_node) else {
            return;
        };
        let chosen = interfaces::carrying(addresses).and_then(|names| {
            // Loopback carries addresses only the node itself reaches: sockets, not tc.
            let names: Vec<String> = names.into_iter().filter(|n| n != "lo").collect();
            interfaces::resolve(&names)
        });
        match chosen {
            Ok(chosen) if chosen.is_empty() => info!(
                node_addresses = ?addresses,
                "no interface carries the node's addresses: traffic from outside the node is not translated (set --interfaces)"
            ),
            Ok(chosen) => {
                if let Err(e) = self.maps.set_interfaces(&chosen) {
                    warn!("recording the tc interfaces: {}", Chain(&e));
                    return;
                }
                let names: Vec<String> = chosen.iter().map(|i| i.name.clone()).collect();
                info!(interfaces = ?names, "the tc programs attach to the interfaces carrying the node's addresses");
                loaded.set_interfaces(names);
            }
            Err(e) => warn!(
                "choosing the tc interfaces from the node's addresses: {}",
                Chain(&e)
            ),
        }
    }

    fn activate(&mut self) -> Result<(), ActivateError> {
        if let Some(loaded) = self.pending.take() {
            // Each program's outcome is logged as it is attached.
            loaded.activate()?;
        }
        self.record_agent();
        Ok(())
    }

    /// The maps' own entries are what they own: an entry of a table no service value
    /// points to, or a name, counter or source range of no frontend, goes.
    fn prune(&mut self) -> Result<usize, PruneError> {
        Ok(self.prune_orphans()?)
    }

    fn usage(&self) -> Vec<MapUsage> {
        let members = self.members_in_use;
        let usage = |map: &'static str, entries: u64| MapUsage {
            map,
            entries,
            capacity: u64::from(self.maps.capacity(map)),
        };
        vec![
            usage(names::MAP_SERVICES, self.installed.len() as u64),
            usage(names::MAP_SLOTS, self.slots_in_use),
            usage(names::MAP_MEMBERS, members),
        ]
    }
}

impl EbpfDataplane {
    /// The backends a change takes out of a UDP frontend (removed, no longer serving,
    /// weight 0, or the frontend itself removed), for the socket reaper; of a TCP one too
    /// when its connections are to be reset. One that stops taking new connections but
    /// still serves keeps its sockets.
    fn stale_backends(&self, change: &Change) -> Vec<socket_reaper::StaleBackend> {
        let (addr, wanted) = match change {
            Change::Upsert(addr, spec) => (addr, Some(spec)),
            Change::Remove(addr) => (addr, None),
        };
        let reaped = match addr.protocol {
            crate::model::Protocol::Udp => true,
            crate::model::Protocol::Tcp => self.terminate_tcp,
        };
        if !reaped {
            return Vec::new();
        }
        let Some(before) = self.installed.get(addr) else {
            return Vec::new();
        };
        let frontend = convert::frontend(addr);
        before
            .left_for(wanted)
            .iter()
            .map(|b| socket_reaper::StaleBackend {
                frontend,
                backend: convert::backend(b),
            })
            .collect()
    }

    /// Stamps the agent record with this sync's time. A failure costs only `proxyctl
    /// status` its agent line: logged, not fatal.
    fn record_agent(&mut self) {
        self.agent.synced_unix = unix_now();
        if let Err(e) = self.maps.write_agent_info(&self.agent) {
            warn!("recording the agent for proxyctl status: {}", Chain(&e));
        }
    }
}

/// Below this many new frontends in one apply, single writes are as quick.
const BATCH_THRESHOLD: usize = 64;

impl EbpfDataplane {
    /// Writes frontends that are new (nothing installed for them) a map at a time when
    /// there are many; returns the changes still to apply one by one.
    fn write_fresh_in_batches(
        &mut self,
        changes: Vec<Change>,
        report: &mut ApplyReport,
    ) -> Vec<Change> {
        // A Local-policy frontend has a second table, a LoadBalancer one may have source
        // ranges: those are written one by one.
        let (fresh, rest): (Vec<Change>, Vec<Change>) = changes.into_iter().partition(|c| {
            matches!(c, Change::Upsert(addr, spec)
                if !self.installed.contains_key(addr)
                    && spec.external_local.is_none()
                    && spec.source_ranges.is_none())
        });
        if fresh.len() < BATCH_THRESHOLD {
            return fresh.into_iter().chain(rest).collect();
        }
        let specs: Vec<(FrontendAddr, FrontendSpec)> = fresh
            .into_iter()
            .filter_map(|c| match c {
                Change::Upsert(addr, spec) => Some((addr, spec)),
                Change::Remove(_) => None,
            })
            .collect();
        match self.maps.write_fresh(&self.batch, &specs) {
            Ok(slots) => {
                self.slots_in_use += slots;
                self.members_in_use += specs
                    .iter()
                    .map(|(_, s)| s.backends.len() as u64)
                    .sum::<u64>();
                report.written += specs.len();
                if self.installed.is_empty() {
                    // A cold start: built in one go, not entry by entry (half the time).
                    self.installed = specs.into_iter().collect();
                } else {
                    self.installed.extend(specs);
                }
                rest
            }
            Err(error) => {
                warn!(
                    "writing {} new frontends at once failed ({}); writing them one by one",
                    specs.len(),
                    Chain(&error)
                );
                specs
                    .into_iter()
                    .map(|(addr, spec)| Change::Upsert(addr, spec))
                    .chain(rest)
                    .collect()
            }
        }
    }
}
