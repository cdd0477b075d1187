//! Which iptables backend to drive. A host's rules live in either the nf_tables or the
//! legacy backend, and rules written through the other one would be invisible to the
//! host's own tools (and ordered unpredictably against them). `auto` decides as
//! kube-proxy's image does (iptables-wrapper): the backend in which kubelet left its hint
//! chains, else the one holding more rules, nf_tables when they are equal.

use super::{
    install::{InstallError, Iptables},
    saved::SavedTable,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// The backend the host's rules are in.
    Auto,
    /// iptables-nft: the nf_tables backend.
    Nft,
    /// iptables-legacy: the x_tables backend.
    Legacy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Nft, Backend::Legacy];

    pub const fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    /// The binaries of this backend (`iptables-nft`, `iptables-nft-restore`, ...).
    pub fn binaries(self) -> Iptables {
        let suffix = self.name();
        Iptables {
            iptables: format!("iptables-{suffix}"),
            restore: format!("iptables-{suffix}-restore"),
            save: format!("iptables-{suffix}-save"),
        }
    }

    /// The IPv6 binaries of this backend (`ip6tables-nft`, ...): kube-proxy on a
    /// dual-stack node has chains there too.
    pub fn binaries_v6(self) -> Iptables {
        let suffix = self.name();
        Iptables {
            iptables: format!("ip6tables-{suffix}"),
            restore: format!("ip6tables-{suffix}-restore"),
            save: format!("ip6tables-{suffix}-save"),
        }
    }
}

/// Chains kubelet creates to tell proxies which backend the node uses.
const HINT_CHAINS: [&str; 2] = ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"];

/// What one backend holds: whether a hint chain is there, and how many rules.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub hinted: bool,
    pub rules: usize,
}

impl Census {
    /// What the saves of one backend's tables (concatenated) hold.
    fn of(saved: &str) -> Self {
        let (all, _) = SavedTable::read(saved, None);
        Self {
            hinted: all.declared().any(|c| HINT_CHAINS.contains(&c)),
            rules: all.all_rules().count(),
        }
    }
}

/// iptables-wrapper's rule: a hint decides; else more rules win; nf_tables on a tie.
pub fn choose(nft: Census, legacy: Census) -> Backend {
    match (nft.hinted, legacy.hinted) {
        (true, false) => Backend::Nft,
        (false, true) => Backend::Legacy,
        _ if legacy.rules > nft.rules => Backend::Legacy,
        _ => Backend::Nft,
    }
}

/// Resolves `choice` on this host, with the reason for the log.
pub fn resolve(choice: BackendChoice) -> Result<(Backend, String), InstallError> {
    match choice {
        BackendChoice::Nft => Ok((Backend::Nft, "--iptables-backend nft".into())),
        BackendChoice::Legacy => Ok((Backend::Legacy, "--iptables-backend legacy".into())),
        BackendChoice::Auto => {
            let census = |b: Backend| -> Result<Census, InstallError> {
                let binaries = b.binaries();
                let mut all = String::new();
                for table in ["mangle", "nat", "filter"] {
                    all.push_str(&binaries.save(table, false)?);
                }
                Ok(Census::of(&all))
            };
            let nft = census(Backend::Nft)?;
            // A host without the legacy binaries (or its kernel module) has nothing there.
            let legacy = census(Backend::Legacy).unwrap_or_default();
            let chosen = choose(nft, legacy);
            Ok((
                chosen,
                format!(
                    "auto: nf_tables holds {} rules{}, legacy {}{}",
                    nft.rules,
                    if nft.hinted {
                        " and kubelet's hint"
                    } else {
                        ""
                    },
                    legacy.rules,
                    if legacy.hinted {
                        " and kubelet's hint"
                    } else {
                        ""
                    }
                ),
            ))
        }
    }
}

/// The backends whose binaries answer on this host: where our chains may be.
pub fn available() -> Vec<Backend> {
    Backend::ALL
        .into_iter()
        .filter(|b| b.binaries().save("nat", false).is_ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelets_hint_decides_then_the_rule_count() {
        let saved = |hint: bool, rules: usize| {
            let mut text = String::from("*mangle\n");
            if hint {
                text.push_str(":KUBE-IPTABLES-HINT - [0:0]\n");
            }
            for i in 0..rules {
                text.push_str(&format!("-A OUTPUT -d 10.0.0.{i} -j ACCEPT\n"));
            }
            Census::of(&text)
        };
        assert_eq!(
            saved(true, 2),
            Census {
                hinted: true,
                rules: 2
            }
        );
        assert_eq!(choose(saved(false, 0), saved(true, 0)), Backend::Legacy);
        assert_eq!(choose(saved(true, 0), saved(false, 90)), Backend::Nft);
        assert_eq!(choose(saved(false, 3), saved(false, 9)), Backend::Legacy);
        assert_eq!(choose(saved(false, 4), saved(false, 4)), Backend::Nft);
        assert_eq!(choose(saved(true, 1), saved(true, 5)), Backend::Legacy);
    }

    #[test]
    fn binaries_are_named_per_backend() {
        assert_eq!(
            Backend::Legacy.binaries().restore,
            "iptables-legacy-restore"
        );
        assert_eq!(Backend::Nft.binaries().save, "iptables-nft-save");
    }
}
