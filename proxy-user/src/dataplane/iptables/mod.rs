//! The iptables fallback: the chains kube-proxy's iptables mode installs, with the same
//! names and the same probabilities, so that operators can read them with the tutorials
//! they know and both modes can be compared.
//!
//! Chain names (`names`), probabilities for weighted endpoints (`probability`), the
//! `iptables-restore` text per service port (`render`) and for the filter table
//! (`filter`), running the iptables binaries (`install`), the one iptables-save parser
//! (`saved`), what kube-proxy's chains say is installed (`installed`) and that as the
//! desired state (`read_back`), and the dataplane that keeps the kernel in step with the
//! desired state with full and partial syncs (here).

pub mod backend;
pub mod conntrack;
pub mod filter;
pub mod install;
pub mod installed;
pub mod kube_proxy;
pub mod localnet;
pub mod names;
pub mod probability;
pub mod read_back;
pub mod render;
pub mod saved;
pub mod udp_timeouts;

use tracing::{info, warn};

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
};

use self::{
    install::{InstallError, Iptables, OWNER_MARKER, is_ours},
    installed::InstalledRules,
    render::{FIXED_CHAINS, PortKey, PortRules, RenderOptions, fixed_rules, port_rules},
    saved::SavedTable,
};
use super::{ApplyReport, Change, Dataplane, WriteError, WriteFailure, left_out::LeftOut};
use crate::model::{DesiredState, Family, FrontendAddr, FrontendKind, FrontendSpec};

/// Why IPv6 frontends are left out when the dataplane was opened for IPv4 only (the unit
/// tests' fake tables).
#[cfg(test)]
pub const IPV6_NOT_OPENED: &str = "iptables mode was started without ip6tables";

/// Service ports whose chains one restore of a full sync loads.
const FULL_SYNC_CHUNK: usize = 500;

/// What a loaded service port left in the kernel, as much as later partial syncs need: its
/// rules in the chains that are rewritten whole (KUBE-SERVICES, KUBE-NODEPORTS, the filter
/// table) and the names of its own chains (to delete those it no longer has). The chains'
/// rules are not kept: at 10,000 Services they were most of the agent's memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LoadedPort {
    services: Vec<String>,
    nodeports: Vec<String>,
    filter: Vec<String>,
    chains: Vec<String>,
}

impl From<PortRules> for LoadedPort {
    fn from(rules: PortRules) -> Self {
        Self {
            services: rules.services,
            nodeports: rules.nodeports,
            filter: rules.filter,
            chains: rules.chains.into_iter().map(|(name, _)| name).collect(),
        }
    }
}

/// One family's binaries (iptables or ip6tables, of one backend) and rendering options:
/// what kube-proxy's proxier of that family is given.
#[derive(Clone, Debug)]
pub struct FamilyTables {
    pub iptables: Iptables,
    pub options: RenderOptions,
}

/// kube-proxy's iptables mode as a dataplane: one proxier per family, as kube-proxy runs
/// them (the same chain names in iptables and in ip6tables, each family's frontends in
/// its own tables). Per family, the first sync (and any sync after a failed restore)
/// loads every chain; after that a sync loads only the chains of the service ports that
/// changed, plus KUBE-SERVICES/KUBE-NODEPORTS and the filter table when their rules
/// changed, as kube-proxy's partial syncs do. One `iptables-restore --noflush` applies it
/// atomically. The jumps from the built-in chains are checked (and put back) at full
/// syncs only: `iptables -C` reads the whole table, which at 10,000 Services would cost
/// more than the partial restore itself.
pub struct IptablesDataplane {
    /// Both families' frontends, as their tables hold them.
    installed: DesiredState,
    ipv4: Proxier,
    /// `Err(cause)` when ip6tables cannot be used here: IPv6 frontends are left out.
    ipv6: Result<Proxier, String>,
    /// IPv6 frontends, when there is no ip6tables to write them with.
    left_out: LeftOut,
}

/// The rules of one family: its binaries, and what was loaded into its tables.
struct Proxier {
    iptables: Iptables,
    options: RenderOptions,
    /// The frontends (all of this family) of each service port in `installed`.
    ports: BTreeMap<PortKey, BTreeSet<FrontendAddr>>,
    /// Each service port as loaded.
    loaded: BTreeMap<PortKey, LoadedPort>,
    /// The legacy backend (full syncs in one piece) rather than nf_tables (in chunks).
    legacy: bool,
    full_sync_needed: bool,
}

impl IptablesDataplane {
    /// IPv4 only, for the unit tests' fake tables: IPv6 frontends are left out
    /// ([`IPV6_NOT_OPENED`]). The agent and bench-control open both families
    /// ([`IptablesDataplane::open_dual_stack`]): one way to start the dataplane.
    #[cfg(test)]
    pub fn open(iptables: Iptables, options: RenderOptions) -> Result<Self, InstallError> {
        Self::with_families(
            FamilyTables { iptables, options },
            Err(IPV6_NOT_OPENED.to_owned()),
        )
    }

    /// Both families: `ipv4`'s tables must answer; when `ipv6`'s do not (no ip6tables
    /// binary, a kernel without IPv6), IPv6 frontends are left out with that cause and
    /// IPv4 is served alone. Each family's tables are read back (nothing when the owner
    /// marker is missing: KUBE-* chains without it are kube-proxy's), so that
    /// [`Dataplane::installed`] is the kernel's state from the start. The first sync
    /// still rewrites every chain.
    pub fn open_dual_stack(ipv4: FamilyTables, ipv6: FamilyTables) -> Result<Self, InstallError> {
        let command = ipv6.iptables.restore.clone();
        let ipv6 = Proxier::probe(&ipv6.iptables).map(|()| ipv6).map_err(|e| {
            let cause = format!(
                "ip6tables cannot be used here ({}), so iptables mode serves IPv4 only",
                crate::logging::Chain(&e)
            );
            warn!(command, "{cause}");
            cause
        });
        Self::with_families(ipv4, ipv6)
    }

    fn with_families(
        ipv4: FamilyTables,
        ipv6: Result<FamilyTables, String>,
    ) -> Result<Self, InstallError> {
        let mut installed = DesiredState::new();
        let ipv4 = Proxier::open(ipv4, &mut installed)?;
        let ipv6 = match ipv6 {
            Ok(tables) => Ok(Proxier::open(tables, &mut installed)?),
            Err(cause) => Err(cause),
        };
        Ok(Self {
            installed,
            ipv4,
            ipv6,
            left_out: LeftOut::default(),
        })
    }
}

impl Proxier {
    /// Whether these binaries can write here: a save, and an empty restore (which a
    /// kernel without IPv6 refuses with "Could not initialize").
    fn probe(iptables: &Iptables) -> Result<(), InstallError> {
        iptables.save("nat", false)?;
        iptables.restore("*nat\nCOMMIT\n")
    }

    /// Reads back what our chains hold in these tables into `installed`.
    fn open(tables: FamilyTables, installed: &mut DesiredState) -> Result<Self, InstallError> {
        let FamilyTables { iptables, options } = tables;
        let family = options.family;
        let nat = iptables.save("nat", false)?;
        let legacy = iptables.is_legacy()?;
        let (saved_nat, _) = SavedTable::read(&nat, Some("nat"));
        let chains = saved_nat.declared().filter(|c| is_ours(c)).count();
        let read = if saved_nat.declares(OWNER_MARKER) {
            let filter = iptables.save("filter", false)?;
            let rules = InstalledRules::parse(&nat, &filter);
            for skipped in rules.skipped() {
                warn!(
                    family = family.as_str(),
                    "{skipped}; left out of the read-back"
                );
            }
            read_back::desired_state(&rules, family)
        } else {
            DesiredState::new()
        };
        info!(
            family = family.as_str(),
            command = iptables.restore,
            legacy,
            chains,
            frontends = read.len(),
            service_ports = read_back::service_ports(&read),
            "iptables dataplane ready; read back what our chains hold; the first sync rewrites them"
        );
        let mut proxier = Self {
            iptables,
            options,
            ports: BTreeMap::new(),
            loaded: BTreeMap::new(),
            legacy,
            full_sync_needed: true,
        };
        // Through `set`, so the port index is built the one way it is kept.
        let mut touched = BTreeSet::new();
        for (addr, spec) in read {
            proxier.set(installed, addr, Some(spec), &mut touched);
        }
        Ok(proxier)
    }

    /// Another NodePort frontend of the same service port and port number, if one is
    /// installed: a NodePort's rule matches the port on every local address, so one
    /// frontend's removal leaves its flows valid while another remains.
    fn node_port_peer<'a>(
        &self,
        installed: &'a DesiredState,
        addr: &FrontendAddr,
        old: &FrontendSpec,
    ) -> Option<&'a FrontendSpec> {
        if old.kind != FrontendKind::NodePort {
            return None;
        }
        self.ports
            .get(&(old.service.clone(), addr.protocol))?
            .iter()
            .filter(|a| a.port == addr.port && *a != addr)
            .filter_map(|a| installed.get(a))
            .find(|s| s.kind == FrontendKind::NodePort)
    }

    /// Sets (or with `None` removes) one frontend in `installed`, keeping the port index,
    /// and notes the service ports it touched. Returns what was there.
    fn set(
        &mut self,
        installed: &mut DesiredState,
        addr: FrontendAddr,
        spec: Option<FrontendSpec>,
        touched: &mut BTreeSet<PortKey>,
    ) -> Option<FrontendSpec> {
        let key = |spec: &FrontendSpec| (spec.service.clone(), addr.protocol);
        let old = match spec {
            Some(spec) => {
                let new_key = key(&spec);
                self.ports.entry(new_key.clone()).or_default().insert(addr);
                touched.insert(new_key);
                installed.insert(addr, spec)
            }
            None => installed.remove(&addr),
        };
        if let Some(old) = &old {
            let old_key = key(old);
            let still_there = installed
                .get(&addr)
                .is_some_and(|now| now.service == old.service);
            if !still_there && let Some(members) = self.ports.get_mut(&old_key) {
                members.remove(&addr);
                if members.is_empty() {
                    self.ports.remove(&old_key);
                }
            }
            touched.insert(old_key);
        }
        old
    }

    /// The rules of one service port as installed now (none once it has no frontend).
    fn render_port(&self, installed: &DesiredState, key: &PortKey) -> PortRules {
        let frontends: Vec<(&FrontendAddr, &FrontendSpec)> = self
            .ports
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|addr| installed.get_key_value(addr))
            .collect();
        if frontends.is_empty() {
            return PortRules::default();
        }
        port_rules(&key.0, key.1, &frontends, &self.options)
    }

    /// A full sync in chunks: the per-port chains, [`FULL_SYNC_CHUNK`] service ports per
    /// restore (nothing jumps to a new chain yet, so this changes no traffic), then one
    /// restore that rewrites KUBE-SERVICES, the fixed chains and the filter table and
    /// deletes chains of ours that are not rendered any more. iptables-nft takes time
    /// superlinear in the size of one restore (1.7 s for 1,000 Services, 19 s for 3,000
    /// in one piece); chunks keep it closer to linear. iptables-legacy uploads the whole
    /// table for each restore, so there it is done in one piece.
    fn full_restore(
        &self,
        installed: &DesiredState,
    ) -> Result<BTreeMap<PortKey, LoadedPort>, InstallError> {
        let existing = self.iptables.our_chains("nat")?;
        let rendered: Vec<(&PortKey, PortRules)> = self
            .ports
            .keys()
            .map(|key| (key, self.render_port(installed, key)))
            .collect();
        // The jumps from the built-in chains first (into empty chains if there were
        // none), so that each restore below is in effect as soon as it commits.
        // The owner marker comes with the first chain created.
        let mut base: Vec<&str> = FIXED_CHAINS.to_vec();
        base.push(OWNER_MARKER);
        self.iptables.ensure_base(&base, &filter::JUMPED_TO)?;
        // The endpoint chains jump to KUBE-MARK-MASQ: make sure it has its rule (flushed
        // and refilled in the same transaction).
        self.iptables.restore(&format!(
            "*nat\n:KUBE-MARK-MASQ - [0:0]\n-A KUBE-MARK-MASQ -j MARK --or-mark {}\nCOMMIT\n",
            names::MASQ_MARK
        ))?;
        let mut current: BTreeSet<&str> = BTreeSet::new();
        let chunk = if self.legacy {
            rendered.len().max(1)
        } else {
            FULL_SYNC_CHUNK
        };
        for chunk in rendered.chunks(chunk) {
            let mut input = String::from("*nat\n");
            for (name, _) in chunk.iter().flat_map(|(_, r)| &r.chains) {
                let _ = writeln!(input, ":{name} - [0:0]");
                current.insert(name);
            }
            for rule in chunk
                .iter()
                .flat_map(|(_, r)| &r.chains)
                .flat_map(|(_, rules)| rules)
            {
                let _ = writeln!(input, "{rule}");
            }
            input.push_str("COMMIT\n");
            self.iptables.restore(&input)?;
        }
        let mut input = filter::filter_table(
            rendered
                .iter()
                .flat_map(|(_, r)| &r.filter)
                .map(String::as_str),
            self.options.writes_localnet_rule(),
        );
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
            rendered
                .iter()
                .flat_map(|(_, r)| &r.services)
                .map(String::as_str),
            rendered
                .iter()
                .flat_map(|(_, r)| &r.nodeports)
                .map(String::as_str),
            &self.options,
        ));
        input.push_str(&install::marker_rule());
        for chain in stale {
            let _ = writeln!(input, "-X {chain}");
        }
        input.push_str("COMMIT\n");
        self.iptables.restore(&input)?;
        Ok(rendered
            .into_iter()
            .map(|(key, rules)| (key.clone(), rules.into()))
            .collect())
    }

    /// Restore input for a partial sync: the touched service ports' chains, and the
    /// whole-chain rewrites their changes need.
    fn partial_input(&self, touched: &BTreeMap<PortKey, PortRules>) -> String {
        let before = |key: &PortKey| self.loaded.get(key);
        let changed = |part: fn(&LoadedPort) -> &Vec<String>,
                       now: fn(&PortRules) -> &Vec<String>| {
            touched.iter().any(|(key, rules)| {
                before(key).map_or(&[][..], |l| &part(l)[..]) != &now(rules)[..]
            })
        };
        // Rules of a chain that is rewritten whole: the touched ports' new ones, the
        // others' as loaded, in port order.
        let merged = |part: fn(&LoadedPort) -> &Vec<String>,
                      now: fn(&PortRules) -> &Vec<String>| {
            self.ports
                .keys()
                .flat_map(move |key| match touched.get(key) {
                    Some(rules) => now(rules).iter(),
                    None => before(key).map_or([].iter(), |l| part(l).iter()),
                })
                .map(String::as_str)
        };
        let mut out = String::new();
        if changed(|l| &l.filter, |r| &r.filter) {
            out.push_str(&filter::filter_table(
                merged(|l| &l.filter, |r| &r.filter),
                self.options.writes_localnet_rule(),
            ));
        }
        out.push_str("*nat\n");
        // KUBE-SERVICES holds a rule per frontend: rewriting it costs as much as the
        // number of Services, so it is rewritten only when a jump rule changed (a frontend
        // added or removed, an endpoint set becoming empty), not for endpoint changes.
        let rewrite_services = changed(|l| &l.services, |r| &r.services)
            || changed(|l| &l.nodeports, |r| &r.nodeports);
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
            .filter_map(before)
            .flat_map(|l| l.chains.iter().map(String::as_str))
            .filter(|c| !new_chains.contains(c))
            .collect();
        declared.extend(new_chains.iter().copied());
        declared.extend(gone.iter().copied());
        for chain in declared {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        if rewrite_services {
            out.push_str(&fixed_rules(
                merged(|l| &l.services, |r| &r.services),
                merged(|l| &l.nodeports, |r| &r.nodeports),
                &self.options,
            ));
            out.push_str(&install::marker_rule());
        }
        for rule in touched
            .values()
            .flat_map(|r| &r.chains)
            .flat_map(|(_, rules)| rules)
        {
            let _ = writeln!(out, "{rule}");
        }
        for chain in gone {
            let _ = writeln!(out, "-X {chain}");
        }
        out.push_str("COMMIT\n");
        out
    }

    /// Applies this family's changes to its tables and to `installed`; on failure puts
    /// `installed` back and reports each upserted frontend failed.
    fn apply(
        &mut self,
        installed: &mut DesiredState,
        changes: Vec<Change>,
        report: &mut ApplyReport,
    ) {
        if changes.is_empty() && !self.full_sync_needed {
            return; // nothing for these rules: no restore
        }
        let mut touched = BTreeSet::new();
        let mut undo: Vec<(FrontendAddr, Option<FrontendSpec>)> = Vec::new();
        let (mut written, mut removed) = (0, 0);
        for change in &changes {
            match change {
                Change::Upsert(addr, spec) => {
                    let old = self.set(installed, *addr, Some(spec.clone()), &mut touched);
                    undo.push((*addr, old));
                    written += 1;
                }
                Change::Remove(addr) => {
                    if let Some(old) = self.set(installed, *addr, None, &mut touched) {
                        undo.push((*addr, Some(old)));
                        removed += 1;
                    }
                }
            }
        }
        let result = if self.full_sync_needed {
            self.full_restore(installed).map(Some)
        } else {
            let rendered: BTreeMap<PortKey, PortRules> = touched
                .iter()
                .map(|key| (key.clone(), self.render_port(installed, key)))
                .collect();
            self.iptables
                .restore(&self.partial_input(&rendered))
                .map(|()| {
                    for (key, rules) in rendered {
                        if self.ports.contains_key(&key) {
                            self.loaded.insert(key, rules.into());
                        } else {
                            self.loaded.remove(&key);
                        }
                    }
                    None
                })
        };
        match result {
            Ok(full) => {
                if let Some(loaded) = full {
                    self.loaded = loaded;
                    self.full_sync_needed = false;
                }
                report.written += written;
                report.removed += removed;
                let mut stale: Vec<conntrack::StaleFlows> = undo
                    .iter()
                    .flat_map(|(addr, old)| {
                        let new = installed.get(addr).or_else(|| {
                            old.as_ref()
                                .and_then(|old| self.node_port_peer(installed, addr, old))
                        });
                        conntrack::stale_flows(addr, old.as_ref(), new)
                    })
                    .collect();
                stale.sort();
                stale.dedup();
                conntrack::delete(&stale);
            }
            Err(error) => {
                // Nothing was committed: put the installed state back. The next sync
                // loads everything again.
                let mut ignored = BTreeSet::new();
                for (addr, old) in undo.into_iter().rev() {
                    self.set(installed, addr, old, &mut ignored);
                }
                self.full_sync_needed = true;
                let error = std::sync::Arc::new(error);
                for change in changes {
                    if let Change::Upsert(frontend, spec) = change {
                        report.failed.push(WriteFailure {
                            frontend,
                            service: spec.service,
                            cause: WriteError::Iptables(error.clone()),
                        });
                    }
                }
            }
        }
    }
}

impl Dataplane for IptablesDataplane {
    fn installed(&self) -> &DesiredState {
        &self.installed
    }

    /// Compares what iptables rules hold: probabilities rather than weights, and not what
    /// a frontend without endpoints has no rule for (`read_back::unchanged` says why, per
    /// field).
    fn unchanged(&self, installed: &FrontendSpec, wanted: &FrontendSpec) -> bool {
        read_back::unchanged(installed, wanted)
    }

    fn left_out(&self) -> &DesiredState {
        self.left_out.frontends()
    }

    /// Each family's changes go to its own tables, IPv4 first; a failure in one leaves the
    /// other's applied.
    fn apply(&mut self, changes: Vec<Change>) -> ApplyReport {
        let mut report = ApplyReport::default();
        let changes = match &self.ipv6 {
            Ok(_) => changes,
            Err(cause) => self.left_out.split(
                changes,
                |addr| addr.ip.is_ipv4(),
                cause,
                &mut report.left_out,
            ),
        };
        let (ipv4, ipv6): (Vec<Change>, Vec<Change>) =
            changes.into_iter().partition(|change| match change {
                Change::Upsert(addr, _) | Change::Remove(addr) => addr.ip.is_ipv4(),
            });
        for (family, changes) in [(Family::Ipv4, ipv4), (Family::Ipv6, ipv6)] {
            let installed = &mut self.installed;
            let proxier = match family {
                Family::Ipv4 => Some(&mut self.ipv4),
                Family::Ipv6 => self.ipv6.as_mut().ok(),
            };
            if let Some(proxier) = proxier {
                proxier.apply(installed, changes, &mut report);
            }
        }
        report
    }
}

#[cfg(test)]
mod tests;
