//! Dataplanes: what turns the desired state into kernel state. The agent talks to one
//! through [`Dataplane`] and never knows which.

pub mod ebpf;
pub mod iptables;
pub mod memory;

use crate::model::{DesiredState, FrontendAddr, FrontendSpec};

pub trait Dataplane {
    /// What is in the kernel now (read back at start, then kept up to date).
    fn installed(&self) -> &DesiredState;
    /// Whether `installed` (an entry of [`Dataplane::installed`]) already is `wanted`:
    /// equality, but for fields this dataplane does not hold (each said where).
    fn unchanged(&self, installed: &FrontendSpec, wanted: &FrontendSpec) -> bool {
        installed == wanted
    }
    /// Applies changes one frontend at a time; a failure leaves that frontend as it was.
    fn apply(&mut self, changes: Vec<Change>) -> ApplyReport;
    /// Starts serving traffic from what has been written: called once, after the first full
    /// sync, so a replaced datapath never starts from empty tables.
    fn activate(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// The node's addresses, before the first activation (the eBPF dataplane picks its tc
    /// interfaces from them).
    fn node_addresses(&mut self, _addresses: &[std::net::Ipv4Addr]) {}
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
    /// Frontend, service name, and why it could not be written.
    pub failed: Vec<(FrontendAddr, String, String)>,
}
