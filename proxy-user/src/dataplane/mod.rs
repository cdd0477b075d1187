//! Dataplanes: what turns the desired state into kernel state. The agent talks to one
//! through [`Dataplane`] and never knows which.

pub mod ebpf;
pub mod iptables;
pub mod left_out;
pub mod memory;

use crate::model::{DesiredState, FrontendAddr, FrontendSpec, Rejection};

/// What [`Dataplane::left_out`] returns by default.
static NOTHING_LEFT_OUT: DesiredState = DesiredState::new();

pub trait Dataplane {
    /// What is in the kernel now (read back at start, then kept up to date).
    fn installed(&self) -> &DesiredState;
    /// Frontends it was given but does not serve (a family it cannot program here), as they
    /// were asked for; never in [`Dataplane::installed`]. The syncer hands them on again
    /// only when they change, and removes them when they go.
    fn left_out(&self) -> &DesiredState {
        &NOTHING_LEFT_OUT
    }
    /// Whether `installed` (an entry of [`Dataplane::installed`]) already is `wanted`:
    /// equality, but for fields this dataplane does not hold (each said where).
    fn unchanged(&self, installed: &FrontendSpec, wanted: &FrontendSpec) -> bool {
        installed == wanted
    }
    /// Applies changes one frontend at a time; a failure leaves that frontend as it was.
    fn apply(&mut self, changes: Vec<Change>) -> ApplyReport;
    /// Starts serving traffic from what has been written: called once, after the first full
    /// sync, so a replaced datapath never starts from empty tables.
    fn activate(&mut self) -> Result<(), ActivateError> {
        Ok(())
    }
    /// Removes kernel state that no installed frontend owns (written by hand, or left by
    /// a crash between two writes); how many entries went. Called at start and then
    /// periodically by the sync thread.
    fn prune(&mut self) -> Result<usize, PruneError> {
        Ok(0)
    }
    /// The node's addresses, before the first activation (the eBPF dataplane picks its tc
    /// interfaces from them).
    fn node_addresses(&mut self, _addresses: &[std::net::IpAddr]) {}
    /// Fill level of the dataplane's tables, for metrics and status.
    fn usage(&self) -> Vec<MapUsage> {
        Vec::new()
    }
}

/// One frontend to write or remove: what the syncer hands a dataplane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Upsert(FrontendAddr, FrontendSpec),
    Remove(FrontendAddr),
}

/// Entries in one table against its capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapUsage {
    pub map: &'static str,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Debug, Default)]
pub struct ApplyReport {
    pub written: usize,
    pub removed: usize,
    /// Frontends that could not be written; each keeps its previous state.
    pub failed: Vec<WriteFailure>,
    /// Frontends newly left out ([`Dataplane::left_out`]), each with why: warnings, not
    /// failures (retrying would not help).
    pub left_out: Vec<Rejection>,
}

/// One frontend a dataplane could not write.
#[derive(Debug, thiserror::Error)]
#[error("Service {service}: frontend {frontend} not programmed")]
pub struct WriteFailure {
    pub frontend: FrontendAddr,
    /// `namespace/name:port`, as the frontend's spec names it.
    pub service: std::sync::Arc<str>,
    #[source]
    pub cause: WriteError,
}

/// Why a frontend could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Maps(#[from] ebpf::maps::MapsError),
    /// One restore carries many frontends: each failed one shares its error.
    #[error(transparent)]
    Iptables(#[from] std::sync::Arc<iptables::install::InstallError>),
    /// [`memory::MemoryDataplane`] was told to refuse this Service.
    #[error("refused (as a full map would)")]
    Refused,
}

/// Why a dataplane could not start serving from what it wrote.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("attaching the eBPF programs")]
    Ebpf(#[from] ebpf::loader::LoadError),
}

/// Why looking for unowned kernel state failed.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error(transparent)]
    Maps(#[from] ebpf::maps::MapsError),
}
