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
    render::{FIXED_CHAINS, FrontendRules, RenderOptions, fixed_rules, frontend_rules},
};
use super::{ApplyReport, Dataplane};
use crate::{
    model::{DesiredState, FrontendAddr},
    sync::Change,
};

/// Frontends whose chains one restore of a full sync loads.
const FULL_SYNC_CHUNK: usize = 500;

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
    /// The filter table as last loaded.
    loaded_filter: String,
    /// The legacy backend (full syncs in one piece) rather than nf_tables (in chunks).
    legacy: bool,
    full_sync_needed: bool,
}

impl IptablesDataplane {
    /// Checks that iptables answers; what a previous run installed is replaced at the
    /// first sync.
    pub fn open(iptables: Iptables, options: RenderOptions) -> Result<Self, InstallError> {
        let existing = iptables.our_chains("nat")?;
        let legacy = iptables.is_legacy()?;
        info!(
            legacy,
            chains = existing.len(),
            "iptables dataplane ready; the first sync replaces our chains"
        );
        Ok(Self {
            iptables,
            options,
            installed: DesiredState::new(),
            rendered: BTreeMap::new(),
            loaded_filter: String::new(),
            legacy,
            full_sync_needed: true,
        })
    }

    /// A full sync in chunks: the per-frontend chains, [`FULL_SYNC_CHUNK`] frontends per
    /// restore (nothing jumps to a new chain yet, so this changes no traffic), then one
    /// restore that rewrites KUBE-SERVICES, the fixed chains and the filter table and
    /// deletes chains of ours that are not rendered any more. iptables-nft takes time
    /// superlinear in the size of one restore (1.7 s for 1,000 Services, 19 s for 3,000
    /// in one piece); chunks keep it closer to linear. iptables-legacy uploads the whole
    /// table for each restore, so there it is done in one piece.
    fn full_restore(&self, next: &DesiredState) -> Result<(), InstallError> {
        let existing = self.iptables.our_chains("nat")?;
        let rendered: Vec<FrontendRules> = next
            .iter()
            .map(|(a, s)| frontend_rules(a, s, &self.options))
            .collect();
        // The endpoint chains jump to KUBE-MARK-MASQ: make sure it exists (flushed and
        // refilled with its one rule in the same transaction).
        self.iptables.restore_only(&format!(
            "*nat\n:KUBE-MARK-MASQ - [0:0]\n-A KUBE-MARK-MASQ -j MARK --or-mark {}\nCOMMIT\n",
            render::MASQ_MARK
        ))?;
        let mut current: BTreeSet<&str> = BTreeSet::new();
        // iptables-legacy replaces the whole table on every restore: one piece is cheapest.
        let chunk = if self.legacy {
            rendered.len().max(1)
        } else {
            FULL_SYNC_CHUNK
        };
        for chunk in rendered.chunks(chunk) {
            let mut input = String::from("*nat\n");
            for (name, _) in chunk.iter().flat_map(|r| &r.chains) {
                let _ = writeln!(input, ":{name} - [0:0]");
                current.insert(name);
            }
            for rule in chunk
                .iter()
                .flat_map(|r| &r.chains)
                .flat_map(|(_, rules)| rules)
            {
                let _ = writeln!(input, "{rule}");
            }
            input.push_str("COMMIT\n");
            self.iptables.restore_only(&input)?;
        }
        let mut input = filter_table(next);
        input.push_str("*nat\n");
        let stale: Vec<&String> = existing
            .iter()
            .filter(|c| !current.contains(c.as_str()) && !FIXED_CHAINS.contains(&c.as_str()))
            .collect();
        for chain in FIXED_CHAINS
            .iter()
            .copied()
            .chain([OWNER_MARKER])
            .chain(stale.iter().map(|c| c.as_str()))
        {
            let _ = writeln!(input, ":{chain} - [0:0]");
        }
        input.push_str(&fixed_rules(
            rendered.iter().filter_map(|r| r.services_rule.as_deref()),
            &self.options,
        ));
        for chain in stale {
            let _ = writeln!(input, "-X {chain}");
        }
        input.push_str("COMMIT\n");
        self.iptables.restore_input(&input)
    }

    /// Restore input for a partial sync: what changed in `touched`, given the state after it.
    fn partial_input(
        &self,
        next: &DesiredState,
        touched: &BTreeMap<FrontendAddr, FrontendRules>,
    ) -> String {
        // The filter table is small, but unchanged it is not reloaded either.
        let filter = filter_table(next);
        let mut out = if filter == self.loaded_filter {
            String::new()
        } else {
            filter
        };
        out.push_str("*nat\n");
        // KUBE-SERVICES holds one rule per frontend: rewriting it costs as much as the
        // number of Services, so it is rewritten only when a jump rule changed (a frontend
        // added or removed, an address changed), not for endpoint changes.
        let rewrite_services = touched.iter().any(|(addr, r)| {
            self.rendered.get(addr).map(|o| &o.services_rule) != Some(&r.services_rule)
        });
        let mut declared: Vec<&str> = Vec::new();
        if rewrite_services {
            declared.extend(FIXED_CHAINS);
            declared.push(OWNER_MARKER);
        }
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
        if rewrite_services {
            out.push_str(&fixed_rules(services_rules, &self.options));
        }
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
            self.full_restore(&next)
        } else {
            self.iptables
                .restore_input(&self.partial_input(&next, &touched))
        };
        match result {
            Ok(()) => {
                self.loaded_filter = filter_table(&next);
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
