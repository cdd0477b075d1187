//! The eBPF dataplane: cgroup socket programs and the maps they read.

pub mod convert;
pub mod loader;
pub mod maps;
pub mod slots;

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use self::{
    loader::{Attachments, Capacities, LoadError},
    maps::Maps,
};
use super::{ApplyReport, Dataplane};
use crate::{model::DesiredState, sync::Change};

pub struct EbpfDataplane {
    maps: Maps,
    installed: DesiredState,
    pub pin_dir: PathBuf,
    pub attachments: Attachments,
}

impl EbpfDataplane {
    /// Loads and attaches (or adopts) the programs and reads back what is installed.
    pub fn open(pin_dir: &Path, cgroup: &Path, capacities: Capacities) -> Result<Self, LoadError> {
        let (mut maps, attachments) = loader::load_and_attach(pin_dir, cgroup, capacities)?;
        let orphans = maps.remove_orphans()?;
        if orphans > 0 {
            warn!(
                orphans,
                "removed map entries left behind by an interrupted write"
            );
        }
        let installed = maps.installed()?;
        info!(frontends = installed.len(), pin_dir = %pin_dir.display(), "eBPF dataplane ready");
        Ok(Self {
            maps,
            installed,
            pin_dir: pin_dir.to_owned(),
            attachments,
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
                        Ok(()) => {
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
                        self.maps.remove_frontend(&addr, &previous);
                        report.removed += 1;
                    }
                }
            }
        }
        report
    }
}
