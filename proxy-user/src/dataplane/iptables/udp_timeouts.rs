//! UDP conntrack timeouts, as kube-proxy's `conntrack.udpTimeout` and
//! `conntrack.udpStreamTimeout` set them: `nf_conntrack_udp_timeout` (a flow no reply was
//! seen on) and `nf_conntrack_udp_timeout_stream` (once replies were seen). Only what the
//! operator gives is written; unset, the kernel's values (30 s and 120 s) stay.
//!
//! `/proc/sys/net` is the calling process's network namespace's: the agent changes only
//! the namespace it runs in.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub const UDP_TIMEOUT: &str = "net/netfilter/nf_conntrack_udp_timeout";
pub const UDP_STREAM_TIMEOUT: &str = "net/netfilter/nf_conntrack_udp_timeout_stream";

#[derive(Debug, thiserror::Error)]
#[error(
    "cannot set sysctl {} = {seconds} (--udp-timeout / --udp-stream-timeout): {error}; the \
     agent needs CAP_NET_ADMIN, a writable /proc/sys and the nf_conntrack module",
    path.display()
)]
pub struct TimeoutError {
    path: PathBuf,
    seconds: u64,
    #[source]
    error: std::io::Error,
}

/// Writes each timeout given under `proc_sys` (`/proc/sys` outside tests).
pub fn set_udp_timeouts(
    proc_sys: &Path,
    udp: Option<Duration>,
    stream: Option<Duration>,
) -> Result<(), TimeoutError> {
    for (sysctl, value) in [(UDP_TIMEOUT, udp), (UDP_STREAM_TIMEOUT, stream)] {
        let Some(value) = value else { continue };
        let path = proc_sys.join(sysctl);
        let seconds = value.as_secs().max(1);
        std::fs::write(&path, format!("{seconds}\n")).map_err(|error| TimeoutError {
            path,
            seconds,
            error,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_timeouts_given_are_written() {
        let dir = std::env::temp_dir().join(format!("epx-udp-timeouts-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("net/netfilter")).expect("temporary directory");
        std::fs::write(dir.join(UDP_STREAM_TIMEOUT), "120\n").expect("stand-in sysctl");
        let set = set_udp_timeouts(&dir, Some(Duration::from_secs(5)), None);
        let udp = std::fs::read_to_string(dir.join(UDP_TIMEOUT));
        let stream = std::fs::read_to_string(dir.join(UDP_STREAM_TIMEOUT));
        let missing = set_udp_timeouts(&dir.join("absent"), None, Some(Duration::from_secs(9)));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(set.is_ok());
        assert_eq!(udp.expect("written").trim(), "5");
        assert_eq!(stream.expect("untouched").trim(), "120");
        let error = missing.expect_err("no such sysctl").to_string();
        assert!(
            error.contains("nf_conntrack_udp_timeout_stream = 9"),
            "{error}"
        );
    }
}
