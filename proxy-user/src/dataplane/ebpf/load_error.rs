//! Why the eBPF dataplane could not load or attach.

use std::path::PathBuf;

use aya::{EbpfError, programs::ProgramError};
use proxy_common::features::{Datapath, KernelFeature};

use super::{features, maps::MapsError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this proxy-agent was built without its BPF object (bpf-linker was missing at build time): \
         run `cargo xtask setup` and rebuild"
    )]
    NoObject,
    #[error(
        "{path} is not on a BPF filesystem: mount one with `mount -t bpf bpf {mount}` or pass --bpffs"
    )]
    NotBpffs { path: PathBuf, mount: String },
    #[error("pin directory {path}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {path} cannot be opened")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the BPF object failed")]
    Object(#[source] EbpfError),
    #[error("program {program}")]
    Program {
        program: &'static str,
        source: ProgramError,
    },
    #[error("the {} cannot load: this kernel lacks {}", .path.name(), features::describe(.missing))]
    MissingFeatures {
        path: Datapath,
        missing: Vec<KernelFeature>,
    },
    #[error("program {program}: tc filter on {interface}: {message}")]
    TcFilter {
        program: &'static str,
        interface: String,
        message: String,
    },
    #[error("program {program}: pinning its link at {path} failed: {message}")]
    Pin {
        program: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
}
