//! proxyctl's commands: each reads the pinned maps and renders a table or JSON.

pub mod services;

use std::{io::ErrorKind, path::Path};

use aya::maps::MapError;
use proxy_common::names;

use crate::dataplane::ebpf::maps::{Maps, MapsError};

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(
        "nothing is pinned at {dir}: is proxy-agent running on this node? (pin directory {dir} is empty or missing)"
    )]
    NothingPinned { dir: String },
    #[error("permission denied opening {dir}: proxyctl needs root or CAP_BPF")]
    NotPermitted { dir: String },
    #[error("reading the maps in {dir}: {source}")]
    Maps { dir: String, source: Box<MapsError> },
}

/// Opens the pinned maps, turning the common failures into sentences.
pub fn open_maps(dir: &Path) -> Result<Maps, CtlError> {
    let shown = dir.display().to_string();
    match std::fs::metadata(dir.join(names::MAP_SERVICES)) {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return Err(CtlError::NotPermitted { dir: shown });
        }
        Err(_) => return Err(CtlError::NothingPinned { dir: shown }),
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
