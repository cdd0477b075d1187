//! A dataplane that only remembers: what would be installed, and the order of writes. For
//! tests of everything above the kernel (sources, sync), and for dry runs.

use std::collections::BTreeSet;

use super::Change;
use super::{ApplyReport, Dataplane, WriteError, WriteFailure};
use crate::model::DesiredState;

#[derive(Debug, Default)]
pub struct MemoryDataplane {
    installed: DesiredState,
    /// `written <service>` / `removed <frontend>`, in order.
    pub log: Vec<String>,
    /// Writes for these services fail as a full map would.
    pub refuse: BTreeSet<String>,
}

impl Dataplane for MemoryDataplane {
    fn installed(&self) -> &DesiredState {
        &self.installed
    }

    fn apply(&mut self, changes: Vec<Change>) -> ApplyReport {
        let mut report = ApplyReport::default();
        for change in changes {
            match change {
                Change::Upsert(addr, spec) if self.refuse.contains(&*spec.service) => {
                    report.failed.push(WriteFailure {
                        frontend: addr,
                        service: spec.service,
                        cause: WriteError::Refused,
                    });
                }
                Change::Upsert(addr, spec) => {
                    self.log.push(format!("written {}", spec.service));
                    self.installed.insert(addr, spec);
                    report.written += 1;
                }
                Change::Remove(addr) => {
                    if self.installed.remove(&addr).is_some() {
                        self.log.push(format!("removed {addr}"));
                        report.removed += 1;
                    }
                }
            }
        }
        report
    }
}
