//! The node's network namespaces: every one a process on the node is in (each pod's,
//! the node's own), and those pinned under /run/netns, each visited once. A visit runs
//! on a thread of its own that enters the namespace (`setns`), so the rest of the agent
//! never leaves its own. Seeing the pods' processes takes the host's PID namespace
//! (`hostPID`); entering their namespaces takes CAP_SYS_ADMIN, and opening those of
//! processes of other users CAP_SYS_PTRACE.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

/// One namespace: a path naming it (for logs) and an open handle.
pub struct Netns {
    pub path: PathBuf,
    file: File,
    /// The caller's own: visited without entering it (which would need CAP_SYS_ADMIN
    /// even there).
    own: bool,
}

/// Every network namespace in use on the node, once each (by device and inode).
pub fn all() -> Vec<Netns> {
    let own = std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let mut seen: BTreeMap<(u64, u64), Netns> = BTreeMap::new();
    let mut consider = |path: PathBuf| {
        let Ok(meta) = std::fs::metadata(&path) else {
            return; // the process exited meanwhile
        };
        let key = (meta.dev(), meta.ino());
        if seen.contains_key(&key) {
            return;
        }
        if let Ok(file) = File::open(&path) {
            let own = own == Some(key);
            seen.insert(key, Netns { path, file, own });
        }
    };
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for entry in procs.flatten() {
            let name = entry.file_name();
            if name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                consider(entry.path().join("ns/net"));
            }
        }
    }
    if let Ok(pinned) = std::fs::read_dir("/run/netns") {
        for entry in pinned.flatten() {
            consider(entry.path());
        }
    }
    seen.into_values().collect()
}

/// Runs `visit` inside each of `namespaces`, on a thread of its own; returns what each
/// visit returned, or why the namespace could not be entered. The caller's own namespace
/// is visited first, while the thread is still in it.
pub fn visit_each<T: Send>(
    namespaces: &[Netns],
    visit: impl Fn(&Path) -> T + Sync,
) -> Vec<(PathBuf, io::Result<T>)> {
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let (own, others): (Vec<&Netns>, Vec<&Netns>) =
                namespaces.iter().partition(|ns| ns.own);
            own.into_iter()
                .chain(others)
                .map(|ns| {
                    // SAFETY: setns on an open namespace handle; it changes this thread's
                    // network namespace only, and the thread ends after the visits.
                    let entered = ns.own
                        || unsafe { libc::setns(ns.file.as_raw_fd(), libc::CLONE_NEWNET) } == 0;
                    let outcome = if entered {
                        Ok(visit(&ns.path))
                    } else {
                        Err(io::Error::last_os_error())
                    };
                    (ns.path.clone(), outcome)
                })
                .collect()
        });
        worker.join().unwrap_or_default()
    })
}
