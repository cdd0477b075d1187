//! Where tables and counters sit: the free regions of the slots array and the free
//! frontend ids (both [`Regions`]), rebuilt from the service values when the maps are
//! opened, handed out by the writers and taken back after a quarantine (see `regions`
//! for why and how long).

use std::time::Instant;

use aya::maps::PerCpuValues;
use proxy_common::{FrontendStats, names};

use super::{Maps, MapsError, no_room};
use crate::dataplane::ebpf::regions::{QUARANTINE, RegionError, Regions};

/// Free space in the slots array and among the frontend ids.
#[derive(Debug)]
pub struct Space {
    slots: Regions,
    ids: Regions,
    /// This sync already waited a quarantine out: it does not wait again.
    waited: bool,
}

impl Default for Space {
    fn default() -> Self {
        Self {
            slots: Regions::new(0, []),
            ids: Regions::new(0, []),
            waited: false,
        }
    }
}

impl Space {
    /// What the installed service values use: their slot regions and frontend ids (a
    /// frontend's external-local table shares its frontend's id).
    pub(super) fn read_back(maps: &Maps) -> Result<Self, MapsError> {
        let values: Vec<proxy_common::Service> = maps
            .services
            .iter()
            .map(|entry| entry.map(|(_, value)| value))
            .collect::<Result<_, _>>()
            .map_err(|source| MapsError::Read {
                map: names::MAP_SERVICES,
                source,
            })?;
        Ok(Self {
            slots: Regions::new(
                maps.capacity(names::MAP_SLOTS),
                values.iter().map(|v| (v.slot_base, v.slots)),
            ),
            ids: Regions::new(
                maps.capacity(names::MAP_STATS),
                values.iter().map(|v| (v.frontend_id, 1)),
            ),
            waited: false,
        })
    }
}

impl Maps {
    /// Frees what has waited out its quarantine. Called at the start of every sync.
    pub fn reclaim_space(&mut self) {
        self.space.waited = false;
        self.reclaim_now();
    }

    fn reclaim_now(&mut self) {
        let now = Instant::now();
        self.space.slots.reclaim(now);
        self.space.ids.reclaim(now);
    }

    /// A free region of `len` slots. When only regions still in quarantine would make
    /// room, waits the quarantine out (at most [`QUARANTINE`], once per sync: a sync
    /// that still finds no room refuses, and the write is retried by a later sync).
    pub(super) fn allocate_slots(&mut self, len: u32) -> Result<u32, MapsError> {
        match self.space.slots.allocate(len) {
            Err(RegionError::Full {
                wanted,
                free,
                quarantined,
                ..
            }) if free + quarantined >= wanted && !self.space.waited => {
                std::thread::sleep(QUARANTINE);
                self.space.waited = true;
                self.reclaim_now();
                self.space.slots.allocate(len)
            }
            other => other,
        }
        .map_err(|e| no_room(names::MAP_SLOTS, e))
    }

    /// Slots a published value named: reusable after the quarantine.
    pub(super) fn release_slots(&mut self, start: u32, len: u32) {
        self.space.slots.release(start, len, Instant::now());
    }

    /// Slots no value ever named: free at once.
    pub(super) fn release_unpublished_slots(&mut self, start: u32, len: u32) {
        self.space.slots.release_unpublished(start, len);
    }

    /// A free frontend id, its counters zeroed on every CPU.
    pub(super) fn allocate_frontend_id(&mut self) -> Result<u32, MapsError> {
        let id = self.allocate_unzeroed_frontend_id()?;
        if let Err(error) = self.zero_counters(id) {
            self.release_unpublished_frontend_id(id);
            return Err(error);
        }
        Ok(id)
    }

    /// A free frontend id whose counters the caller zeroes before a value names it.
    pub(super) fn allocate_unzeroed_frontend_id(&mut self) -> Result<u32, MapsError> {
        self.space
            .ids
            .allocate(1)
            .map_err(|e| no_room(names::MAP_STATS, e))
    }

    /// The id of a frontend whose value is gone: reusable after the quarantine (a
    /// program may still add to its counters meanwhile; the next owner starts from zero).
    pub(super) fn release_frontend_id(&mut self, id: u32) {
        self.space.ids.release(id, 1, Instant::now());
    }

    /// An id no value ever named: free at once.
    pub(super) fn release_unpublished_frontend_id(&mut self, id: u32) {
        self.space.ids.release_unpublished(id, 1);
    }

    fn zero_counters(&mut self, id: u32) -> Result<(), MapsError> {
        let map = names::MAP_STATS;
        let cpus = aya::util::nr_cpus().map_err(|(_, io_error)| MapsError::Write {
            map,
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error,
            }),
        })?;
        let zeros =
            PerCpuValues::try_from(vec![FrontendStats::default(); cpus]).map_err(|io_error| {
                MapsError::Write {
                    map,
                    source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "per-CPU values",
                        io_error,
                    }),
                }
            })?;
        self.insert(map, |m| m.stats.set(id, zeros, 0))
    }
}
