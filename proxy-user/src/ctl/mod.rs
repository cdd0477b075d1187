//! proxyctl's commands. Each reads what the agent installed: the pinned maps in eBPF mode,
//! the KUBE-* chains (through `iptables-save`) in iptables mode, and renders a table or
//! JSON.

pub mod address;
pub mod affinity;
pub mod backends;
pub mod chains;
pub mod flows;
pub mod services;
pub mod stats;
pub mod status;
pub mod table;
pub mod udp_flows;

use std::{io::ErrorKind, path::Path};

use aya::maps::MapError;
use proxy_common::names;

use crate::dataplane::{
    ebpf::maps::{Maps, MapsError},
    iptables::{
        backend::Backend,
        install::{InstallError, Iptables, OWNER_MARKER, declares},
    },
};
use crate::model::Family;

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "nothing is pinned at {dir} and no ebpf-proxy chains are installed in iptables: is proxy-agent running on this node? (pin directory {dir} is empty or missing)"
    )]
    NothingInstalled { dir: String },
    #[error("permission denied opening {dir}: proxyctl needs root or CAP_BPF")]
    NotPermitted { dir: String },
    #[error(
        "nothing is pinned at {dir}, and reading the iptables rules ({backend}) was not permitted: proxyctl needs root or CAP_NET_ADMIN"
    )]
    IptablesNotPermitted {
        dir: String,
        backend: &'static str,
        #[source]
        source: InstallError,
    },
    #[error(
        "{dir} holds map layout {found} ({pinned}), and this proxyctl reads layout {ours} ({expected}): use the proxyctl that ships with the running proxy-agent"
    )]
    LayoutMismatch {
        dir: String,
        found: String,
        pinned: String,
        ours: String,
        expected: &'static str,
    },
    #[error("reading the maps in {dir}")]
    Maps { dir: String, source: Box<MapsError> },
    #[error("reading the iptables rules")]
    Iptables(#[from] InstallError),
    #[error("{0}")]
    Usage(String),
}

/// What the agent installed on this node, in whichever mode it runs.
pub enum Installed {
    Ebpf(Box<Maps>),
    Iptables(Box<IptablesFamilies>),
}

/// iptables mode's chains: in iptables, and in ip6tables when the agent wrote there too
/// (one proxier per family, as kube-proxy runs them; the same chain names in each).
pub struct IptablesFamilies {
    pub ipv4: chains::InstalledRules,
    pub ipv6: Option<chains::InstalledRules>,
}

impl IptablesFamilies {
    /// Each family's rules, IPv4 first.
    pub fn each(&self) -> impl Iterator<Item = (Family, &chains::InstalledRules)> {
        std::iter::once((Family::Ipv4, &self.ipv4))
            .chain(self.ipv6.iter().map(|rules| (Family::Ipv6, rules)))
    }

    /// The backend the chains were read from.
    pub fn backend(&self) -> &'static str {
        self.ipv4.backend.unwrap_or("unknown")
    }
}

/// Our chains as `binaries` show them, if the owner marker is there; warns about lines
/// that could not be read (they are left out of every answer).
fn read_ours(
    binaries: &Iptables,
    nat: String,
    backend: Backend,
) -> Result<Option<chains::InstalledRules>, InstallError> {
    if !declares(&nat, OWNER_MARKER) {
        return Ok(None);
    }
    let filter = binaries.save("filter", true)?;
    let mut rules = chains::InstalledRules::parse(&nat, &filter);
    rules.backend = Some(backend.name());
    for skipped in rules.skipped() {
        eprintln!("proxyctl: warning: {skipped}");
    }
    Ok(Some(rules))
}

impl Installed {
    pub fn mode(&self) -> &'static str {
        match self {
            Installed::Ebpf(_) => "ebpf",
            Installed::Iptables(_) => "iptables",
        }
    }
}

/// Which mode to read: the pinned maps if there are any, else the chains ebpf-proxy's
/// iptables mode installed (marked by its owner chain), else an error that says both
/// places were empty.
pub fn open(dir: &Path) -> Result<Installed, CtlError> {
    match open_maps(dir) {
        Ok(maps) => Ok(Installed::Ebpf(Box::new(maps))),
        Err(CtlError::NothingInstalled { dir }) => {
            // Our chains, in whichever backend the agent wrote them.
            for backend in Backend::ALL {
                let iptables = backend.binaries();
                let nat = match iptables.save("nat", true) {
                    Ok(nat) => nat,
                    // Not "nothing is installed": we were not allowed to look.
                    Err(source) if source.is_permission_denied() => {
                        return Err(CtlError::IptablesNotPermitted {
                            dir,
                            backend: backend.name(),
                            source,
                        });
                    }
                    // This backend's binaries are not here, or it holds no nat table.
                    Err(_) => continue,
                };
                if let Some(ipv4) = read_ours(&iptables, nat, backend)? {
                    // The IPv6 proxier's chains, in ip6tables of the same backend (none
                    // where there is no ip6tables).
                    let ip6tables = backend.binaries_v6();
                    let ipv6 = match ip6tables.save("nat", true) {
                        Ok(nat) => read_ours(&ip6tables, nat, backend)?,
                        Err(_) => None,
                    };
                    return Ok(Installed::Iptables(Box::new(IptablesFamilies {
                        ipv4,
                        ipv6,
                    })));
                }
            }
            Err(CtlError::NothingInstalled { dir })
        }
        Err(e) => Err(e),
    }
}

/// Opens the pinned maps, turning the common failures into sentences.
pub fn open_maps(dir: &Path) -> Result<Maps, CtlError> {
    let shown = dir.display().to_string();
    match std::fs::metadata(dir.join(names::MAP_SERVICES)) {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return Err(CtlError::NotPermitted { dir: shown });
        }
        Err(_) => {
            return Err(match other_layout(dir) {
                Some(pinned) => CtlError::LayoutMismatch {
                    dir: shown,
                    found: layout_of(&pinned),
                    pinned,
                    ours: layout_of(names::MAP_SERVICES),
                    expected: names::MAP_SERVICES,
                },
                None => CtlError::NothingInstalled { dir: shown },
            });
        }
        Ok(_) => {}
    }
    Maps::from_pins(dir).map_err(|source| {
        let denied = matches!(&source, MapsError::Open { source: MapError::SyscallError(e), .. }
            if matches!(e.io_error.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)));
        if denied {
            CtlError::NotPermitted { dir: shown.clone() }
        } else {
            CtlError::Maps {
                dir: shown.clone(),
                source: Box::new(source),
            }
        }
    })
}

/// The services map of another layout version pinned in `dir` (`EPX_SVC_V2`, say).
fn other_layout(dir: &Path) -> Option<String> {
    let prefix = names::MAP_SERVICES.rsplit_once("_V").map(|(p, _)| p)?;
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with(&format!("{prefix}_V")) && name != names::MAP_SERVICES)
}

/// `V2` from `EPX_SVC_V2`.
fn layout_of(map: &str) -> String {
    map.rsplit_once('_').map_or(map, |(_, v)| v).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_layout_is_named_not_called_missing() {
        let dir = std::env::temp_dir().join(format!("epx-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("EPX_SVC_V9"), "").expect("file");
        let error = open_maps(&dir)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            error.contains("holds map layout V9 (EPX_SVC_V9)")
                && error.contains(&format!(
                    "reads layout V{} ({})",
                    proxy_common::LAYOUT_VERSION,
                    names::MAP_SERVICES
                ))
                && error.contains("use the proxyctl that ships with the running proxy-agent"),
            "{error}"
        );
        let empty = std::env::temp_dir().join("epx-layout-none-at-all");
        assert!(matches!(
            open_maps(&empty),
            Err(CtlError::NothingInstalled { .. })
        ));
    }
}
