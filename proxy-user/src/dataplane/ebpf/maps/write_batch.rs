//! The cold path: many frontends that are not installed at all, written a map at a time
//! with BPF_MAP_UPDATE_BATCH (`batch`; the slots and counter arrays take it too), on
//! several threads, each frontend still switched on by one service value. A kernel that
//! refuses a batch gets the frontends one by one.

use std::path::Path;

use aya::maps::MapError;
use proxy_common::{Backend, FrontendStats, Member, MemberKey, Service, ServiceName, names};

use super::{Maps, MapsError, is_full};
use crate::{
    dataplane::ebpf::{
        batch::{BatchError, BatchMap, write_parallel},
        convert::frontend,
        entries,
    },
    model::{FrontendAddr, FrontendSpec},
};

/// Second handles on the maps a frontend write touches, for batch writes.
pub struct BatchMaps {
    services: BatchMap,
    slots: BatchMap,
    members: BatchMap,
    names: BatchMap,
    stats: BatchMap,
}

impl BatchMaps {
    pub fn open(dir: &Path) -> Result<Self, MapsError> {
        let open = |name: &'static str, key_size: usize, value_size: usize| {
            BatchMap::open(dir, name, key_size, value_size)
                .map_err(|source| MapsError::Open { name, source })
        };
        // A per-CPU value goes in as one copy per possible CPU, each 8-byte aligned.
        let cpus = aya::util::nr_cpus().map_err(|(_, io_error)| MapsError::Open {
            name: names::MAP_STATS,
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error,
            }),
        })?;
        let per_cpu_stats = size_of::<FrontendStats>().next_multiple_of(8) * cpus;
        let frontend = size_of::<proxy_common::Frontend>();
        Ok(Self {
            services: open(names::MAP_SERVICES, frontend, size_of::<Service>())?,
            slots: open(names::MAP_SLOTS, size_of::<u32>(), size_of::<Backend>())?,
            members: open(
                names::MAP_MEMBERS,
                size_of::<MemberKey>(),
                size_of::<Member>(),
            )?,
            names: open(names::MAP_NAMES, frontend, size_of::<ServiceName>())?,
            stats: open(names::MAP_STATS, size_of::<u32>(), per_cpu_stats)?,
        })
    }
}

impl Maps {
    /// Writes frontends that are not installed at all, a whole map at a time: each is
    /// given a frontend id and a slot region first, then names, members, slot tables and
    /// zeroed counters are written, the service values last (one element each, so each
    /// frontend still switches on atomically). On failure everything written here is
    /// removed again (regions and ids a value may have named go into quarantine) and the
    /// error returned; the caller then writes the frontends one by one, which finds and
    /// names the one that does not fit. Returns the slots written.
    ///
    /// For frontends with one table and no source ranges (the caller's choice): those
    /// with more are written one by one (`write_frontend`).
    pub fn write_fresh(
        &mut self,
        batch: &BatchMaps,
        fresh: &[(FrontendAddr, FrontendSpec)],
    ) -> Result<u64, MapsError> {
        let mut service_keys = Vec::with_capacity(fresh.len());
        let mut service_values: Vec<Service> = Vec::with_capacity(fresh.len());
        let mut name_values: Vec<ServiceName> = Vec::with_capacity(fresh.len());
        let mut ids: Vec<u32> = Vec::with_capacity(fresh.len());
        let members: usize = fresh.iter().map(|(_, spec)| spec.backends.len()).sum();
        let mut member_keys = Vec::with_capacity(members);
        let mut member_values: Vec<Member> = Vec::with_capacity(members);
        // A slot per member when the weights are equal, the common case.
        let (mut slot_numbers, mut slot_values) = (
            Vec::<u32>::with_capacity(members),
            Vec::<Backend>::with_capacity(members),
        );
        for (addr, spec) in fresh {
            let fe = frontend(addr);
            let table = entries::table(fe, spec, &spec.backends, entries::extra_flags(spec));
            let placed = self.allocate_slots(table.value.slots).and_then(|base| {
                match self.allocate_unzeroed_frontend_id() {
                    Ok(id) => Ok(table.placed(base, id)),
                    Err(e) => {
                        self.release_unpublished_slots(base, table.value.slots);
                        Err(e)
                    }
                }
            });
            let table = match placed {
                Ok(table) => table,
                Err(error) => {
                    self.release_unpublished(&service_values);
                    return Err(error);
                }
            };
            for (number, backend) in table.slot_entries() {
                slot_numbers.push(number);
                slot_values.push(backend);
            }
            for (key, member) in table.members {
                member_keys.push(key);
                member_values.push(member);
            }
            service_keys.push(fe);
            name_values.push(ServiceName::new(&spec.service));
            ids.push(table.value.frontend_id);
            service_values.push(table.value);
        }
        let zeroed_counters = vec![0u8; ids.len() * batch.stats.value_size()];
        // Names, members, slot tables and counters first; the service values, which make
        // each frontend live, only once all of those are in.
        let result = write_parallel(&[
            batch.members.entries(&member_keys, &member_values),
            batch.slots.entries(&slot_numbers, &slot_values),
            batch.names.entries(&service_keys, &name_values),
            batch.stats.entries(&ids, &zeroed_counters),
        ])
        .and_then(|()| write_parallel(&[batch.services.entries(&service_keys, &service_values)]))
        .map_err(|BatchError { map, source }| {
            if is_full(&source) {
                MapsError::Full {
                    map,
                    capacity: self.capacity(map),
                }
            } else {
                MapsError::Write {
                    map,
                    source: MapError::SyscallError(aya::sys::SyscallError {
                        call: "BPF_MAP_UPDATE_BATCH",
                        io_error: source,
                    }),
                }
            }
        });
        if let Err(error) = result {
            // Some values may have gone in before the failure: their regions and ids go
            // into quarantine, not back to use; those of values that never went in are
            // free at once (so the one-by-one writes that follow can have them).
            let published: Vec<bool> = service_keys
                .iter()
                .map(|k| self.services.get(k, 0).is_ok())
                .collect();
            // Services first, so no connect ever sees a frontend whose table is going away.
            for k in &service_keys {
                let _ = self.services.remove(k);
            }
            for k in &member_keys {
                let _ = self.members.remove(k);
            }
            for k in &service_keys {
                let _ = self.names.remove(k);
            }
            for (value, published) in service_values.iter().zip(published) {
                if published {
                    self.release_slots(value.slot_base, value.slots);
                    self.release_frontend_id(value.frontend_id);
                } else {
                    self.release_unpublished(std::slice::from_ref(value));
                }
            }
            return Err(error);
        }
        Ok(slot_numbers.len() as u64)
    }

    /// Gives back the regions and ids of tables placed but never published.
    fn release_unpublished(&mut self, values: &[Service]) {
        for value in values {
            self.release_unpublished_slots(value.slot_base, value.slots);
            self.release_unpublished_frontend_id(value.frontend_id);
        }
    }
}
