//! `proxy-agent --cleanup-kube-proxy`: removes what kube-proxy's iptables mode left on a
//! node, as its own `--cleanup` does, and nothing else.
//!
//! kube-proxy's chains are recognised by name: the fixed ones (KUBE-SERVICES,
//! KUBE-NODEPORTS, KUBE-POSTROUTING, KUBE-MARK-MASQ, KUBE-EXTERNAL-SERVICES, KUBE-FORWARD,
//! KUBE-PROXY-FIREWALL, KUBE-PROXY-CANARY) and the per-service prefixes (KUBE-SVC-,
//! KUBE-SEP-, KUBE-EXT-, KUBE-SVL-, KUBE-FW-, KUBE-XLB-). kubelet's chains (KUBE-FIREWALL,
//! KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT, KUBE-MARK-DROP) and every other chain stay.
//! A rule elsewhere that jumps into a removed chain is deleted with it, or the chain could
//! not be removed. Each table changes in one `iptables-restore --noflush` transaction.
//!
//! The same names are used by this project's iptables mode. When its owner marker is
//! present, the KUBE-* chains are ours, kube-proxy has none there, and nothing is touched
//! (`proxy-agent --cleanup` removes ours).

use std::collections::BTreeSet;

use super::{
    install::{InstallError, Iptables, OWNER_MARKER, declares, is_ours},
    saved::SavedTable,
};

/// Tables kube-proxy writes to (the canary chains live in mangle as well).
const TABLES: [&str; 3] = ["mangle", "nat", "filter"];

/// Whether kube-proxy's iptables mode creates `chain` (in any table).
pub fn is_kube_proxy_chain(chain: &str) -> bool {
    is_ours(chain)
        || matches!(chain, "KUBE-PROXY-FIREWALL" | "KUBE-PROXY-CANARY")
        || chain.starts_with("KUBE-XLB-")
}

/// What was done to one backend and address family.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing of kube-proxy's was there.
    #[default]
    Nothing,
    /// Chains (`table/CHAIN`) and rules jumping into them (`table: -A ...`) removed.
    Removed {
        chains: Vec<String>,
        jumps: Vec<String>,
    },
    /// The KUBE-* chains there are ebpf-proxy's own (iptables mode): left alone.
    OursLeftAlone,
}

/// The `iptables-restore --noflush` input that removes kube-proxy's chains from one
/// table, given that table's `iptables-save` text; `None` when it holds none. Also returns
/// what it removes, for the log.
pub fn removal(table: &str, saved: &str) -> Option<(String, Vec<String>, Vec<String>)> {
    let (parsed, _) = SavedTable::read(saved, Some(table));
    let chains: BTreeSet<&str> = parsed
        .declared()
        .filter(|c| is_kube_proxy_chain(c))
        .collect();
    if chains.is_empty() {
        return None;
    }
    // Rules in chains that stay (built-in or anybody's) that jump or go to a removed one.
    let jumps: Vec<&str> = parsed
        .all_rules()
        .filter(|rule| {
            !chains.contains(rule.chain.as_str())
                && rule.target().is_some_and(|t| chains.contains(t))
        })
        .map(|rule| rule.spec())
        .collect();
    let mut input = format!("*{table}\n");
    // Declaring a chain under --noflush flushes it: no removed chain then references
    // another, whatever the order of the -X lines.
    for chain in &chains {
        input.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in &jumps {
        input.push_str(&format!("-D {rule}\n"));
    }
    for chain in &chains {
        input.push_str(&format!("-X {chain}\n"));
    }
    input.push_str("COMMIT\n");
    Some((
        input,
        chains.iter().map(|c| format!("{table}/{c}")).collect(),
        jumps.iter().map(|r| format!("{table}: -A {r}")).collect(),
    ))
}

/// Removes kube-proxy's chains with these binaries (one backend, one address family).
pub fn remove(binaries: &Iptables) -> Result<Outcome, InstallError> {
    let mut saved = Vec::new();
    for table in TABLES {
        saved.push((table, binaries.save(table, false)?));
    }
    let marked = saved
        .iter()
        .any(|(table, text)| *table == "nat" && declares(text, OWNER_MARKER));
    if marked {
        return Ok(Outcome::OursLeftAlone);
    }
    let mut input = String::new();
    let (mut chains, mut jumps) = (Vec::new(), Vec::new());
    for (table, text) in &saved {
        if let Some((text, removed, rules)) = removal(table, text) {
            input.push_str(&text);
            chains.extend(removed);
            jumps.extend(rules);
        }
    }
    if chains.is_empty() {
        return Ok(Outcome::Nothing);
    }
    binaries.restore(&input)?;
    Ok(Outcome::Removed { chains, jumps })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = "\
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
:KUBE-MARK-DROP - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAAA - [0:0]
:KUBE-SEP-BBBB - [0:0]
:KUBE-POSTROUTING - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A DOCKER -i docker0 -j RETURN
-A KUBE-MARK-DROP -j MARK --set-xmark 0x8000/0x8000
-A KUBE-SERVICES -d 10.0.0.1/32 -p tcp -j KUBE-SVC-AAAA
-A KUBE-SVC-AAAA -j KUBE-SEP-BBBB
-A KUBE-SEP-BBBB -p tcp -j DNAT --to-destination 10.1.0.5:80
COMMIT
";

    #[test]
    fn removes_kube_proxys_chains_and_the_jumps_into_them_only() {
        let (input, chains, jumps) = removal("nat", SAVED).expect("kube-proxy chains present");
        assert_eq!(
            chains,
            [
                "nat/KUBE-POSTROUTING",
                "nat/KUBE-SEP-BBBB",
                "nat/KUBE-SERVICES",
                "nat/KUBE-SVC-AAAA"
            ]
        );
        assert_eq!(jumps.len(), 2, "{jumps:?}");
        assert!(input.contains(
            "-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
        assert!(input.contains("-X KUBE-SVC-AAAA\n"));
        // kubelet's and Docker's chains, and rules into them, stay.
        for kept in ["DOCKER", "KUBE-MARK-DROP"] {
            assert!(!input.contains(kept), "{kept} touched:\n{input}");
        }
        assert!(input.starts_with("*nat\n") && input.ends_with("COMMIT\n"));
    }

    #[test]
    fn a_table_without_kube_proxy_needs_nothing() {
        let saved = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n\
                     -A INPUT -j KUBE-FIREWALL\nCOMMIT\n";
        assert_eq!(removal("filter", saved), None);
    }

    #[test]
    fn kubelets_chains_are_not_kube_proxys() {
        for chain in [
            "KUBE-FIREWALL",
            "KUBE-KUBELET-CANARY",
            "KUBE-IPTABLES-HINT",
            "KUBE-MARK-DROP",
        ] {
            assert!(!is_kube_proxy_chain(chain), "{chain}");
        }
        for chain in ["KUBE-PROXY-CANARY", "KUBE-XLB-ABC", "KUBE-FW-ABC"] {
            assert!(is_kube_proxy_chain(chain), "{chain}");
        }
    }
}
