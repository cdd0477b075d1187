//! `net.ipv4.conf.all.route_localnet=1`, which kube-proxy's iptables mode sets at start
//! (with `--iptables-localhost-nodeports`, its default) so that 127.0.0.1:<NodePort> is
//! served: KUBE-NODEPORTS DNATs such a connection to a backend elsewhere, and without the
//! sysctl the kernel drops a packet with a loopback source routed off the host. The hole
//! this opens is closed by KUBE-FIREWALL (`filter::LOCALNET_RULE`).
//!
//! `/proc/sys/net` is the calling process's network namespace's: the agent changes only
//! the namespace it runs in.

use std::path::{Path, PathBuf};

/// The sysctl, as kube-proxy names it (`sysctlRouteLocalnet`).
pub const ROUTE_LOCALNET: &str = "net/ipv4/conf/all/route_localnet";

#[derive(Debug, thiserror::Error)]
pub enum LocalnetError {
    #[error(
        "cannot set sysctl {} = 1, needed to serve 127.0.0.1:<NodePort> as kube-proxy does \
         ({error}): the agent needs CAP_NET_ADMIN and a writable /proc/sys (a container \
         that is not privileged has it read-only); --localhost-nodeports false says this \
         is meant",
        path.display()
    )]
    Set {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

/// Sets `route_localnet` to 1 under `proc_sys` (`/proc/sys` outside tests), if it is not
/// already, as kube-proxy's `EnsureSysctl` does. Returns whether it changed.
pub fn ensure_route_localnet(proc_sys: &Path) -> Result<bool, LocalnetError> {
    let path = proc_sys.join(ROUTE_LOCALNET);
    if std::fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(false);
    }
    std::fs::write(&path, "1\n")
        .map(|()| true)
        .map_err(|error| LocalnetError::Set { path, error })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for `/proc/sys` in a temporary directory, removed on drop.
    struct ProcSys(PathBuf);

    impl ProcSys {
        fn new(test: &str, value: Option<&str>) -> Self {
            let dir =
                std::env::temp_dir().join(format!("epx-localnet-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let path = dir.join(ROUTE_LOCALNET);
            if let Some(value) = value {
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(&path, value).expect("write");
            }
            Self(dir)
        }
    }

    impl Drop for ProcSys {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn sets_the_sysctl_once() {
        let dir = ProcSys::new("set", Some("0\n"));
        assert!(ensure_route_localnet(&dir.0).expect("set"));
        let value = std::fs::read_to_string(dir.0.join(ROUTE_LOCALNET)).expect("read");
        assert_eq!(value.trim(), "1");
        assert!(!ensure_route_localnet(&dir.0).expect("already set"));
    }

    #[test]
    fn a_sysctl_that_cannot_be_set_is_named_in_the_error() {
        let dir = ProcSys::new("missing", None);
        let err = ensure_route_localnet(&dir.0).expect_err("no such directory");
        let text = err.to_string();
        assert!(text.contains("net/ipv4/conf/all/route_localnet"), "{text}");
        assert!(text.contains("127.0.0.1:<NodePort>"), "{text}");
    }
}
