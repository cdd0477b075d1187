//! ebpf-proxy's agent and CLI as a library: sources of objects, the pure model, the diff,
//! and the dataplanes. The binaries in `src/bin` are thin.

pub mod agent;
pub mod cgroup;
pub mod config_file;
pub mod ctl;
pub mod dataplane;
pub mod health_check;
pub mod logging;
pub mod malloc_arenas;
pub mod metrics;
pub mod model;
pub mod source;
pub mod sync;

/// The BPF object built from `proxy-ebpf`, embedded so the agent is one file. Empty when
/// bpf-linker was missing at build time (see build.rs).
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/proxy-ebpf"));

/// Default pin directory on bpffs.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/ebpf-proxy";
