//! The eBPF dataplane: cgroup socket programs and the maps they read.

pub mod convert;
pub mod loader;
pub mod maps;
pub mod slots;

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use self::{
    loader::{Attachments, Capacities, LoadError, Loaded},
    maps::Maps,
};
use proxy_common::names;

use super::{ApplyReport, Dataplane, MapUsage};
use crate::{model::DesiredState, sync::Change};

pub struct EbpfDataplane {
    maps: Maps,
    installed: DesiredState,
    /// Slots in the active tables, kept up to date by every write.
    slots_in_use: u64,
    pub pin_dir: PathBuf,
    /// Programs loaded but not yet attached: see [`Dataplane::activate`].
    pending: Option<Loaded>,
    pub attachments: Attachments,
}

impl EbpfDataplane {
    /// Loads and attaches (or adopts) the programs and reads back what is installed.
    pub fn open(pin_dir: &Path, cgroup: &Path, capacities: Capacities) -> Result<Self, LoadError> {
        let (loaded, mut maps) = loader::load(pin_dir, cgroup, capacities)?;
        let orphans = maps.remove_orphans()?;
        if orphans > 0 {
            warn!(
                orphans,
                "removed map entries left behind by an interrupted write"
            );
        }
        let installed = maps.installed()?;
        let slots_in_use = maps.slots_in_use();
        info!(frontends = installed.len(), pin_dir = %pin_dir.display(), "eBPF dataplane ready");
        Ok(Self {
            maps,
            installed,
            slots_in_use,
            pin_dir: pin_dir.to_owned(),
            pending: Some(loaded),
            attachments: Vec::new(),
        })
    }
}

impl Dataplane for EbpfDataplane {
    fn installed(&self) -> &DesiredState {
        &self.installed
    }

    fn apply(&mut self, changes: Vec<Change>) -> ApplyReport {
        let mut report = ApplyReport::default();
        for change in changes {
            match change {
                Change::Upsert(addr, spec) => {
                    let previous = self.installed.get(&addr);
                    match self.maps.write_frontend(&addr, &spec, previous) {
                        Ok(delta) => {
                            self.slots_in_use = self.slots_in_use + u64::from(delta.after)
                                - u64::from(delta.before);
                            report.written += 1;
                            self.installed.insert(addr, spec);
                        }
                        Err(error) => {
                            report
                                .failed
                                .push((addr, spec.service.clone(), error.to_string()))
                        }
                    }
                }
                Change::Remove(addr) => {
                    if let Some(previous) = self.installed.remove(&addr) {
                        let freed = self.maps.remove_frontend(&addr, &previous);
                        self.slots_in_use = self.slots_in_use.saturating_sub(u64::from(freed));
                        report.removed += 1;
                    }
                }
            }
        }
        report
    }

    fn activate(&mut self) -> Result<(), String> {
        if let Some(loaded) = self.pending.take() {
            self.attachments = loaded
                .activate()
                .map_err(|e| crate::logging::error_chain(&e))?;
        }
        Ok(())
    }

    fn usage(&self) -> Vec<MapUsage> {
        let members: u64 = self
            .installed
            .values()
            .map(|s| s.backends.len() as u64)
            .sum();
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
