//! The source ports of masqueraded flows, kept from the node's own connections.
//!
//! A flow the tc programs send to a backend on another node leaves from the node's
//! address, as the node's own connections do. Were both to hold one source port toward the
//! same backend, the backend's replies would reach only one of them: the other's connect
//! times out, or its segments reset the first. kube-proxy's conntrack picks another port
//! for the masqueraded flow; the tc programs take theirs from
//! `SNAT_PORT_MIN..=SNAT_PORT_MAX` (61000-65535), above the kernel's default ephemeral
//! range (`net.ipv4.ip_local_port_range`, 32768-60999). Where a node's range reaches into
//! them, the agent adds them to `net.ipv4.ip_local_reserved_ports`, which the kernel never
//! picks an ephemeral port from (Cilium protects its NodePort range the same way).
//!
//! `/proc/sys/net` is the calling process's network namespace's: the agent changes only
//! the namespace it runs in.

use std::{
    ops::RangeInclusive,
    path::{Path, PathBuf},
};

use proxy_common::{SNAT_PORT_MAX, SNAT_PORT_MIN};

pub const EPHEMERAL_PORTS: &str = "net/ipv4/ip_local_port_range";
pub const RESERVED_PORTS: &str = "net/ipv4/ip_local_reserved_ports";

/// The ports masqueraded flows take.
pub const SNAT_PORTS: RangeInclusive<u16> = SNAT_PORT_MIN..=SNAT_PORT_MAX;

/// How the masqueraded flows' ports are kept from the node's own connections.
#[derive(Debug, PartialEq, Eq)]
pub enum Protection {
    /// The node's ephemeral range lies outside them: nothing to do.
    Apart { ephemeral: RangeInclusive<u16> },
    /// They were already among the reserved ports.
    AlreadyReserved { ephemeral: RangeInclusive<u16> },
    /// The agent added them to the reserved ports.
    Reserved { ephemeral: RangeInclusive<u16> },
}

impl Protection {
    /// The node's ephemeral range, as read.
    pub fn ephemeral(&self) -> &RangeInclusive<u16> {
        match self {
            Self::Apart { ephemeral }
            | Self::AlreadyReserved { ephemeral }
            | Self::Reserved { ephemeral } => ephemeral,
        }
    }

    /// What this means, for the agent's log.
    pub fn summary(&self) -> &'static str {
        match self {
            Self::Apart { .. } => {
                "masqueraded flows take source ports outside the node's ephemeral range"
            }
            Self::AlreadyReserved { .. } => {
                "masqueraded flows take source ports already in ip_local_reserved_ports"
            }
            Self::Reserved { .. } => {
                "added the source ports of masqueraded flows to ip_local_reserved_ports, as \
                 the node's ephemeral range reaches into them"
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnatPortsError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
    #[error("{} reads {text:?}, not two port numbers", path.display())]
    Malformed { path: PathBuf, text: String },
    #[error(
        "the node's ephemeral ports {}-{} ({EPHEMERAL_PORTS}) reach into the source ports \
         of masqueraded flows ({}-{}), and they cannot be reserved in {} ({error}): a \
         connection of the node's own may take a port a masqueraded flow holds toward the \
         same backend, and one of the two would fail; the agent needs CAP_NET_ADMIN and a \
         writable /proc/sys, or the node an ephemeral range below {}",
        ephemeral.start(),
        ephemeral.end(),
        SNAT_PORT_MIN,
        SNAT_PORT_MAX,
        path.display(),
        SNAT_PORT_MIN
    )]
    Reserve {
        ephemeral: RangeInclusive<u16>,
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

/// Keeps [`SNAT_PORTS`] from the ephemeral ports of the namespace whose `/proc/sys` is
/// `proc_sys`: reserves them there if its range reaches into them.
pub fn protect(proc_sys: &Path) -> Result<Protection, SnatPortsError> {
    let path = proc_sys.join(EPHEMERAL_PORTS);
    let text = read(&path)?;
    let ephemeral = parse_range(&text).ok_or(SnatPortsError::Malformed { path, text })?;
    if ephemeral.end() < SNAT_PORTS.start() || ephemeral.start() > SNAT_PORTS.end() {
        return Ok(Protection::Apart { ephemeral });
    }
    let path = proc_sys.join(RESERVED_PORTS);
    let reserved = read(&path)?;
    let Some(with_ours) = reserved_with(&reserved, &SNAT_PORTS) else {
        return Ok(Protection::AlreadyReserved { ephemeral });
    };
    match std::fs::write(&path, format!("{with_ours}\n")) {
        Ok(()) => Ok(Protection::Reserved { ephemeral }),
        Err(error) => Err(SnatPortsError::Reserve {
            ephemeral,
            path,
            error,
        }),
    }
}

fn read(path: &Path) -> Result<String, SnatPortsError> {
    std::fs::read_to_string(path).map_err(|error| SnatPortsError::Read {
        path: path.to_owned(),
        error,
    })
}

/// `ip_local_port_range`'s two numbers (`"32768\t60999"`), low first.
fn parse_range(text: &str) -> Option<RangeInclusive<u16>> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    match (numbers.next(), numbers.next(), numbers.next()) {
        (Some(Ok(low)), Some(Ok(high)), None) if low <= high => Some(low..=high),
        _ => None,
    }
}

/// `ip_local_reserved_ports` (`"8080,61000-65535"`, empty for none) with `ports` added;
/// `None` when every one of them is reserved already.
fn reserved_with(reserved: &str, ports: &RangeInclusive<u16>) -> Option<String> {
    let entries: Vec<RangeInclusive<u16>> = reserved
        .trim()
        .split(',')
        .filter_map(|entry| {
            let entry = entry.trim();
            match entry.split_once('-') {
                Some((low, high)) => Some(low.parse().ok()?..=high.parse().ok()?),
                None => entry.parse().ok().map(|port| port..=port),
            }
        })
        .collect();
    if ports
        .clone()
        .all(|port| entries.iter().any(|e| e.contains(&port)))
    {
        return None;
    }
    let ours = format!("{}-{}", ports.start(), ports.end());
    Some(match reserved.trim() {
        "" => ours,
        existing => format!("{existing},{ours}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `/proc/sys` in a temporary directory, removed on drop.
    struct ProcSys(PathBuf);

    impl ProcSys {
        fn new(test: &str, ephemeral: &str, reserved: Option<&str>) -> Self {
            let dir =
                std::env::temp_dir().join(format!("epx-snat-ports-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("net/ipv4")).expect("mkdir");
            std::fs::write(dir.join(EPHEMERAL_PORTS), ephemeral).expect("write");
            if let Some(reserved) = reserved {
                std::fs::write(dir.join(RESERVED_PORTS), reserved).expect("write");
            }
            Self(dir)
        }

        fn reserved(&self) -> String {
            std::fs::read_to_string(self.0.join(RESERVED_PORTS)).expect("read")
        }
    }

    impl Drop for ProcSys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_kernels_default_range_lies_apart_and_nothing_is_written() {
        let dir = ProcSys::new("default", "32768\t60999\n", Some("\n"));
        assert_eq!(
            protect(&dir.0).expect("protect"),
            Protection::Apart {
                ephemeral: 32768..=60999
            }
        );
        assert_eq!(dir.reserved(), "\n");
    }

    #[test]
    fn a_range_reaching_into_them_gets_them_reserved_beside_the_operators_ports() {
        let dir = ProcSys::new("wide", "1024\t65535\n", Some("8080,9000-9100\n"));
        assert_eq!(
            protect(&dir.0).expect("protect"),
            Protection::Reserved {
                ephemeral: 1024..=65535
            }
        );
        assert_eq!(dir.reserved(), "8080,9000-9100,61000-65535\n");
        // Once reserved, a restart changes nothing.
        assert_eq!(
            protect(&dir.0).expect("protect"),
            Protection::AlreadyReserved {
                ephemeral: 1024..=65535
            }
        );
        assert_eq!(dir.reserved(), "8080,9000-9100,61000-65535\n");
    }

    #[test]
    fn the_reserved_list_is_checked_port_by_port() {
        assert_eq!(reserved_with("", &SNAT_PORTS), Some("61000-65535".into()));
        assert_eq!(reserved_with("60000-65535\n", &SNAT_PORTS), None);
        assert_eq!(
            reserved_with("61000-63000,63001-65535", &SNAT_PORTS),
            None,
            "two entries covering them together"
        );
        assert_eq!(
            reserved_with("61000-65534", &SNAT_PORTS),
            Some("61000-65534,61000-65535".into())
        );
    }

    #[test]
    fn a_malformed_or_missing_sysctl_is_named() {
        let dir = ProcSys::new("malformed", "32768\n", None);
        let e = protect(&dir.0).expect_err("malformed");
        assert!(
            e.to_string()
                .contains("ip_local_port_range reads \"32768\\n\", not two port numbers"),
            "{e}"
        );
        let dir = ProcSys::new("unreadable", "1024 65535", None);
        let e = protect(&dir.0).expect_err("no reserved ports file");
        assert!(
            e.to_string().contains("cannot read") && e.to_string().contains(RESERVED_PORTS),
            "{e}"
        );
        assert_eq!(parse_range("61000 1024"), None, "low above high");
    }

    #[test]
    fn a_reservation_that_cannot_be_written_says_what_is_at_stake() {
        let dir = ProcSys::new("readonly", "1024 65535", None);
        // A read-only sysfs attribute where the sysctl should be: it reads, and writing it
        // fails as a read-only /proc/sys does, whoever runs the test.
        std::os::unix::fs::symlink("/sys/kernel/uevent_seqnum", dir.0.join(RESERVED_PORTS))
            .expect("symlink");
        let text = protect(&dir.0).expect_err("cannot write").to_string();
        assert!(
            text.contains("ephemeral ports 1024-65535")
                && text.contains("masqueraded flows (61000-65535)")
                && text.contains("cannot be reserved in")
                && text.contains("one of the two would fail"),
            "{text}"
        );
    }
}
