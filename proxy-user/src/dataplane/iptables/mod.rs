//! The iptables fallback: the chains kube-proxy's iptables mode installs, with the same
//! names and the same probabilities, so that operators can read them with the tutorials
//! they know and both modes can be compared.
//!
//! This is the rendering half: chain names (`names`), probabilities for weighted
//! endpoints (`probability`), and the `iptables-restore` text for the nat table
//! (`render`). Installing it is the dataplane's job.

pub mod filter;
pub mod install;
pub mod names;
pub mod probability;
pub mod render;

use tracing::info;

use self::{
    filter::filter_table,
    install::{InstallError, Iptables},
    render::{RenderOptions, nat_table},
};
use super::{ApplyReport, Dataplane};
use crate::{model::DesiredState, sync::Change};

/// kube-proxy's iptables mode as a dataplane: every apply renders the whole rule set and
/// loads it with one `iptables-restore --noflush`, which replaces our chains atomically.
pub struct IptablesDataplane {
    iptables: Iptables,
    options: RenderOptions,
    installed: DesiredState,
}

impl IptablesDataplane {
    /// Checks that iptables answers; what a previous run installed is replaced at the
    /// first sync.
    pub fn open(iptables: Iptables, options: RenderOptions) -> Result<Self, InstallError> {
        let existing = iptables.our_chains("nat")?;
        info!(
            chains = existing.len(),
            "iptables dataplane ready; the first sync replaces our chains"
        );
        Ok(Self {
            iptables,
            options,
            installed: DesiredState::new(),
        })
    }
}

impl Dataplane for IptablesDataplane {
    fn installed(&self) -> &DesiredState {
        &self.installed
    }

    fn apply(&mut self, changes: Vec<Change>) -> ApplyReport {
        let mut next = self.installed.clone();
        let mut report = ApplyReport::default();
        for change in &changes {
            match change {
                Change::Upsert(addr, spec) => {
                    next.insert(*addr, spec.clone());
                    report.written += 1;
                }
                Change::Remove(addr) => {
                    if next.remove(addr).is_some() {
                        report.removed += 1;
                    }
                }
            }
        }
        match self
            .iptables
            .restore(&nat_table(&next, &self.options), &filter_table(&next))
        {
            Ok(()) => self.installed = next,
            Err(error) => {
                // Nothing was committed: every change of this sync failed and is retried.
                let reason = error.to_string();
                report = ApplyReport::default();
                for change in changes {
                    if let Change::Upsert(addr, spec) = change {
                        report.failed.push((addr, spec.service, reason.clone()));
                    }
                }
            }
        }
        report
    }
}
