//! Installing the rendered tables: `iptables-restore --noflush` with our chains only (a
//! declared chain is flushed and refilled; chains of ours no longer rendered are deleted),
//! and the jumps from the built-in chains into ours, added once.

use std::{
    collections::BTreeSet,
    io::Write as _,
    process::{Command, Stdio},
};

use super::{filter::KUBELET_FIREWALL, saved::SavedTable};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{command} could not be run (is iptables installed?)")]
    Spawn {
        command: String,
        #[source]
        error: std::io::Error,
    },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
}

impl InstallError {
    /// The command ran but was not allowed to (not root, no CAP_NET_ADMIN): iptables says
    /// "Permission denied (you must be root)", and the legacy backend "Permission denied".
    pub fn is_permission_denied(&self) -> bool {
        match self {
            InstallError::Spawn { error, .. } => {
                error.kind() == std::io::ErrorKind::PermissionDenied
            }
            InstallError::Failed { stderr, .. } => {
                stderr.contains("Permission denied") || stderr.contains("must be root")
            }
        }
    }
}

/// The iptables binaries to drive; `backend::Backend::binaries` names them.
#[derive(Clone, Debug)]
pub struct Iptables {
    pub iptables: String,
    pub restore: String,
    pub save: String,
}

/// A jump from a built-in chain into ours, as kube-proxy installs it.
struct Jump {
    table: &'static str,
    from: &'static str,
    /// Matches before the comment.
    matches: &'static [&'static str],
    comment: &'static str,
    to: &'static str,
}

impl Jump {
    const fn new(
        table: &'static str,
        from: &'static str,
        matches: &'static [&'static str],
        comment: &'static str,
        to: &'static str,
    ) -> Self {
        Self {
            table,
            from,
            matches,
            comment,
            to,
        }
    }

    /// The rule as `-C`/`-I`/`-D` take it after the chain (no comment match when the
    /// comment is empty, as kube-proxy writes kubelet's jumps).
    fn rule(&self) -> Vec<&'static str> {
        let mut rule = self.matches.to_vec();
        if !self.comment.is_empty() {
            rule.extend(["-m", "comment", "--comment", self.comment]);
        }
        rule.extend(["-j", self.to]);
        rule
    }
}

const NEW: &[&str] = &["-m", "conntrack", "--ctstate", "NEW"];
const PORTALS: &str = "kubernetes service portals";
const EXTERNAL_PORTALS: &str = "kubernetes externally-visible service portals";

const LB_FIREWALL: &str = "kubernetes load balancer firewall";

/// kube-proxy's jumps (`iptablesJumpChains`).
const JUMPS: &[Jump] = &[
    Jump::new("nat", "PREROUTING", &[], PORTALS, "KUBE-SERVICES"),
    Jump::new("nat", "OUTPUT", &[], PORTALS, "KUBE-SERVICES"),
    Jump::new(
        "nat",
        "POSTROUTING",
        &[],
        "kubernetes postrouting rules",
        "KUBE-POSTROUTING",
    ),
    Jump::new(
        "filter",
        "INPUT",
        NEW,
        EXTERNAL_PORTALS,
        "KUBE-EXTERNAL-SERVICES",
    ),
    Jump::new(
        "filter",
        "FORWARD",
        NEW,
        EXTERNAL_PORTALS,
        "KUBE-EXTERNAL-SERVICES",
    ),
    Jump::new(
        "filter",
        "INPUT",
        &[],
        "kubernetes health check service ports",
        "KUBE-NODEPORTS",
    ),
    Jump::new("filter", "FORWARD", NEW, PORTALS, "KUBE-SERVICES"),
    Jump::new("filter", "OUTPUT", NEW, PORTALS, "KUBE-SERVICES"),
    Jump::new(
        "filter",
        "FORWARD",
        &[],
        "kubernetes forwarding rules",
        "KUBE-FORWARD",
    ),
    // Inserted last, so first in their chains, as kube-proxy's are.
    Jump::new("filter", "INPUT", NEW, LB_FIREWALL, "KUBE-PROXY-FIREWALL"),
    Jump::new("filter", "OUTPUT", NEW, LB_FIREWALL, "KUBE-PROXY-FIREWALL"),
    Jump::new("filter", "FORWARD", NEW, LB_FIREWALL, "KUBE-PROXY-FIREWALL"),
];

/// kube-proxy's copies of kubelet's jumps (`iptablesKubeletJumpChains`): added after (so
/// before, in their chains) the others, and never removed, as kubelet shares them.
const KUBELET_JUMPS: &[Jump] = &[
    Jump::new("filter", "INPUT", &[], "", KUBELET_FIREWALL),
    Jump::new("filter", "OUTPUT", &[], "", KUBELET_FIREWALL),
];

/// An empty nat chain whose presence says the KUBE-* chains were installed by ebpf-proxy.
/// kube-proxy installs chains with the same names; without this marker, they are its own
/// and nothing here touches them (a node migrating from kube-proxy runs both for a while).
pub const OWNER_MARKER: &str = "EBPF-PROXY-OWNED";

/// The marker's one rule: it names the agent that wrote the chains (`proxyctl status`
/// reads it). RETURN, and nothing jumps to the marker, so it never sees a packet.
pub fn marker_rule() -> String {
    format!(
        "-A {OWNER_MARKER} -m comment --comment \"{MARKER_COMMENT_PREFIX}{}\" -j RETURN\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The marker rule's comment before the version.
pub const MARKER_COMMENT_PREFIX: &str = "ebpf-proxy ";

/// Whether an `iptables-save` text (one table's, or a whole save) declares `chain`.
pub fn declares(saved: &str, chain: &str) -> bool {
    SavedTable::read(saved, None).0.declares(chain)
}

/// Chains this project owns in a table: the fixed ones and every KUBE-SVC/SEP/EXT/SVL/FW.
/// Not KUBE-FIREWALL: kube-proxy writes it too but leaves it to kubelet on cleanup.
pub fn is_ours(chain: &str) -> bool {
    matches!(
        chain,
        "KUBE-SERVICES"
            | "KUBE-NODEPORTS"
            | "KUBE-POSTROUTING"
            | "KUBE-MARK-MASQ"
            | "KUBE-EXTERNAL-SERVICES"
            | "KUBE-FORWARD"
            | "KUBE-PROXY-FIREWALL"
    ) || [
        "KUBE-SVC-",
        "KUBE-SEP-",
        "KUBE-EXT-",
        "KUBE-SVL-",
        "KUBE-FW-",
    ]
    .iter()
    .any(|p| chain.starts_with(p))
}

impl Iptables {
    fn run(
        &self,
        program: &str,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, InstallError> {
        let command = format!("{program} {}", args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|error| InstallError::Spawn {
                command: command.clone(),
                error,
            })?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(text.as_bytes())
                .map_err(|error| InstallError::Spawn {
                    command: command.clone(),
                    error,
                })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|error| InstallError::Spawn {
                command: command.clone(),
                error,
            })?;
        if !out.status.success() {
            return Err(InstallError::Failed {
                command,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `iptables-save -t TABLE`, with packet counters if asked.
    pub fn save(&self, table: &str, counters: bool) -> Result<String, InstallError> {
        let mut args = vec!["-t", table];
        if counters {
            args.push("-c");
        }
        self.run(&self.save, &args, None)
    }

    /// Chains of ours present in `table` now.
    pub fn our_chains(&self, table: &str) -> Result<BTreeSet<String>, InstallError> {
        let mut chains = self.chains(table)?;
        chains.retain(|c| is_ours(c));
        Ok(chains)
    }

    /// Every chain present in `table` now, ours or not.
    fn chains(&self, table: &str) -> Result<BTreeSet<String>, InstallError> {
        let saved = self.run(&self.save, &["-t", table], None)?;
        Ok(SavedTable::read(&saved, Some(table))
            .0
            .declared()
            .map(str::to_owned)
            .collect())
    }

    /// Whether these binaries drive the legacy backend, which uploads the whole table on
    /// every restore (`iptables --version` ends in `(legacy)`; nf_tables says so too).
    pub fn is_legacy(&self) -> Result<bool, InstallError> {
        Ok(self
            .run(&self.iptables, &["--version"], None)?
            .contains("(legacy)"))
    }

    /// Adds kube-proxy's jumps from the built-in chains into ours and into KUBE-FIREWALL,
    /// once.
    fn ensure_jumps(&self) -> Result<(), InstallError> {
        for jump in JUMPS.iter().chain(KUBELET_JUMPS) {
            let (table, chain, rule) = (jump.table, jump.from, jump.rule());
            let mut check = vec!["-w", "-t", table, "-C", chain];
            check.extend_from_slice(&rule);
            if self.run(&self.iptables, &check, None).is_ok() {
                continue;
            }
            let mut insert = vec!["-w", "-t", table, "-I", chain];
            insert.extend_from_slice(&rule);
            self.run(&self.iptables, &insert, None)?;
        }
        Ok(())
    }

    /// Creates the chains the built-in chains jump to (those missing; an existing chain,
    /// kubelet's KUBE-FIREWALL too, is left as it is, rules and all) and kube-proxy's jumps
    /// into them. Done before the
    /// rules are loaded: a rule is in effect the moment its restore commits, so its jump
    /// must already be there.
    pub fn ensure_base(
        &self,
        nat_chains: &[&str],
        filter_chains: &[&str],
    ) -> Result<(), InstallError> {
        let mut input = String::new();
        for (table, chains) in [("filter", filter_chains), ("nat", nat_chains)] {
            let existing = self.chains(table)?;
            let missing: Vec<&&str> = chains.iter().filter(|c| !existing.contains(**c)).collect();
            if missing.is_empty() {
                continue;
            }
            input.push_str(&format!("*{table}\n"));
            for chain in missing {
                input.push_str(&format!(":{chain} - [0:0]\n"));
            }
            input.push_str("COMMIT\n");
        }
        if !input.is_empty() {
            self.restore(&input)?;
        }
        self.ensure_jumps()
    }

    /// Loads restore input with `--noflush`: chains it declares are flushed and refilled,
    /// others are left alone.
    pub fn restore(&self, input: &str) -> Result<(), InstallError> {
        self.run(&self.restore, &["--noflush"], Some(input))
            .map(drop)
    }

    /// Whether the KUBE-* chains in this namespace were installed by ebpf-proxy.
    pub fn installed_by_us(&self) -> Result<bool, InstallError> {
        let saved = self.run(&self.save, &["-t", "nat"], None)?;
        Ok(declares(&saved, OWNER_MARKER))
    }

    /// Whether kube-proxy's iptables mode runs (or ran) here: it keeps canary chains,
    /// which ebpf-proxy never creates.
    pub fn kube_proxy_canary(&self) -> Result<bool, InstallError> {
        let saved = self.run(&self.save, &["-t", "nat"], None)?;
        Ok(declares(&saved, "KUBE-PROXY-CANARY"))
    }

    /// Removes the jumps and every chain of ours, in both tables, if ebpf-proxy installed
    /// them (see [`OWNER_MARKER`]). Returns what was removed. KUBE-FIREWALL and the jumps
    /// to it stay, as kube-proxy's `CleanupLeftovers` leaves them: kubelet shares them.
    ///
    /// When kube-proxy's canary is there too, kube-proxy has taken the KUBE-* chains over
    /// (a node rolled back from our iptables mode): they are its own now, and only the
    /// marker goes.
    pub fn cleanup(&self) -> Result<Vec<String>, InstallError> {
        if !self.installed_by_us()? {
            return Ok(Vec::new());
        }
        if self.kube_proxy_canary()? {
            self.run(
                &self.restore,
                &["--noflush"],
                Some(&format!(
                    "*nat\n:{OWNER_MARKER} - [0:0]\n-X {OWNER_MARKER}\nCOMMIT\n"
                )),
            )?;
            return Ok(vec![format!(
                "nat/{OWNER_MARKER} (only: kube-proxy's canary shows it owns the KUBE-* chains now)"
            )]);
        }
        for jump in JUMPS {
            let (table, chain, rule) = (jump.table, jump.from, jump.rule());
            let mut delete = vec!["-w", "-t", table, "-D", chain];
            delete.extend_from_slice(&rule);
            while self.run(&self.iptables, &delete, None).is_ok() {}
        }
        let mut removed = Vec::new();
        let mut input = String::new();
        for table in ["filter", "nat"] {
            let chains = self.our_chains(table)?;
            input.push_str(&format!("*{table}\n"));
            for chain in &chains {
                input.push_str(&format!(":{chain} - [0:0]\n"));
            }
            if table == "nat" {
                // Flushed (its version rule) before it is deleted below.
                input.push_str(&format!(":{OWNER_MARKER} - [0:0]\n"));
            }
            for chain in &chains {
                input.push_str(&format!("-X {chain}\n"));
                removed.push(format!("{table}/{chain}"));
            }
            if table == "nat" {
                input.push_str(&format!("-X {OWNER_MARKER}\n"));
            }
            input.push_str("COMMIT\n");
        }
        self.run(&self.restore, &["--noflush"], Some(&input))?;
        Ok(removed)
    }
}

#[cfg(test)]
mod permission_tests {
    use super::InstallError;

    #[test]
    fn a_refusal_for_lack_of_privilege_is_told_from_other_failures() {
        let failed = |stderr: &str| InstallError::Failed {
            command: "iptables-save -t nat -c".into(),
            stderr: stderr.into(),
        };
        // What Debian's iptables 1.8.9 prints as an ordinary user, both backends.
        assert!(failed("iptables-save v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)").is_permission_denied());
        assert!(failed("iptables-save v1.8.9 (legacy): Cannot initialize: Permission denied (you must be root)").is_permission_denied());
        assert!(!failed("iptables-save v1.8.9 (legacy): Cannot initialize: Table does not exist (do you need to insmod?)").is_permission_denied());
        let spawn = |kind| InstallError::Spawn {
            command: "iptables-save".into(),
            error: std::io::Error::from(kind),
        };
        assert!(spawn(std::io::ErrorKind::PermissionDenied).is_permission_denied());
        assert!(!spawn(std::io::ErrorKind::NotFound).is_permission_denied());
    }
}
