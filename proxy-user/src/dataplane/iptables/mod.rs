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

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use self::{
    filter::filter_table,
    install::{InstallError, Iptables, OWNER_MARKER},
    render::{FIXED_CHAINS, FrontendRules, RenderOptions, fixed_rules, frontend_rules, nat_table},
};
use super::{ApplyReport, Dataplane};
use crate::{
    model::{DesiredState, FrontendAddr},
    sync::Change,
};

/// kube-proxy's iptables mode as a dataplane. The first sync (and any sync after a failed
/// restore) loads every chain; after that a sync loads KUBE-SERVICES, the fixed chains and
/// the filter table, plus only the chains of the frontends that changed, as kube-proxy's
/// partial syncs do. One `iptables-restore --noflush` applies it atomically.
pub struct IptablesDataplane {
    iptables: Iptables,
    options: RenderOptions,
    installed: DesiredState,
    /// Each installed frontend's rules, as loaded.
    rendered: BTreeMap<FrontendAddr, FrontendRules>,
    full_sync_needed: bool,
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
            rendered: BTreeMap::new(),
            full_sync_needed: true,
        })
    }

    /// Restore input for a partial sync: what changed in `touched`, given the state after it.
    fn partial_input(
        &self,
        next: &DesiredState,
        touched: &BTreeMap<FrontendAddr, FrontendRules>,
    ) -> String {
        let mut out = filter_table(next);
        out.push_str("*nat\n");
        let mut declared: Vec<&str> = FIXED_CHAINS.to_vec();
        declared.push(OWNER_MARKER);
        let new_chains: BTreeSet<&str> = touched
            .values()
            .flat_map(|r| r.chains.iter().map(|(n, _)| n.as_str()))
            .collect();
        let gone: Vec<&str> = touched
            .keys()
            .filter_map(|addr| self.rendered.get(addr))
            .flat_map(|r| r.chains.iter().map(|(n, _)| n.as_str()))
            .filter(|c| !new_chains.contains(c))
            .collect();
        declared.extend(new_chains.iter().copied());
        declared.extend(gone.iter().copied());
        for chain in declared {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        let services_rules = next.keys().filter_map(|addr| {
            touched
                .get(addr)
                .or_else(|| self.rendered.get(addr))
                .and_then(|r| r.services_rule.as_deref())
        });
        out.push_str(&fixed_rules(services_rules, &self.options));
        for (_, rules) in touched.values().flat_map(|r| &r.chains) {
            for rule in rules {
                let _ = writeln!(out, "{rule}");
            }
        }
        for chain in gone {
            let _ = writeln!(out, "-X {chain}");
        }
        out.push_str("COMMIT\n");
        out
    }
}

impl Dataplane for IptablesDataplane {
    fn installed(&self) -> &DesiredState {
        &self.installed
    }

    fn apply(&mut self, changes: Vec<Change>) -> ApplyReport {
        let mut next = self.installed.clone();
        let mut touched: BTreeMap<FrontendAddr, FrontendRules> = BTreeMap::new();
        let mut report = ApplyReport::default();
        for change in &changes {
            match change {
                Change::Upsert(addr, spec) => {
                    next.insert(*addr, spec.clone());
                    touched.insert(*addr, frontend_rules(addr, spec, &self.options));
                    report.written += 1;
                }
                Change::Remove(addr) => {
                    if next.remove(addr).is_some() {
                        touched.insert(*addr, FrontendRules::default());
                        report.removed += 1;
                    }
                }
            }
        }
        let result = if self.full_sync_needed {
            self.iptables
                .restore(&nat_table(&next, &self.options), &filter_table(&next))
        } else {
            self.iptables
                .restore_input(&self.partial_input(&next, &touched))
        };
        match result {
            Ok(()) => {
                if self.full_sync_needed {
                    self.rendered = next
                        .iter()
                        .map(|(a, s)| (*a, frontend_rules(a, s, &self.options)))
                        .collect();
                    self.full_sync_needed = false;
                } else {
                    for (addr, rules) in touched {
                        if next.contains_key(&addr) {
                            self.rendered.insert(addr, rules);
                        } else {
                            self.rendered.remove(&addr);
                        }
                    }
                }
                self.installed = next;
            }
            Err(error) => {
                // Nothing was committed. The next sync loads everything again.
                self.full_sync_needed = true;
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
