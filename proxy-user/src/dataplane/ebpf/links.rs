//! Where each program's link is pinned, and what happened to an attachment: what the
//! loader and the tc attachment share.

use std::path::{Path, PathBuf};

/// What happened to one program's attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Nothing was pinned: attached now.
    Attached,
    /// The same program was already attached: kept as it was.
    Adopted,
    /// Another version was attached: replaced by this one.
    Replaced,
}

/// The pin of a socket program's link: `link_epx_connect4`.
pub fn link_pin(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("link_{program}"))
}

/// The pin of a tc program's link on one interface: `link_epx_tc_ingress@eth0` (bpffs
/// refuses dots in names: a VLAN's `eth0.100` is pinned as `eth0~100`).
pub fn tc_link_pin(dir: &Path, program: &str, interface: &str) -> PathBuf {
    dir.join(format!("link_{program}@{}", interface.replace('.', "~")))
}
