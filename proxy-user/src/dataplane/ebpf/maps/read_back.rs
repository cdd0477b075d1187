//! What the maps hold, read back: the installed frontends (what a restarted agent diffs
//! against), and pruning the entries no installed frontend owns.

use std::collections::BTreeMap;

use aya::maps::{MapError, lpm_trie::Key as LpmKey};
use proxy_common::{Frontend, MemberKey, Service, names};

use super::{Maps, MapsError};
use crate::{
    dataplane::ebpf::{entries, orphans::Owners},
    model::DesiredState,
};

fn read(map: &'static str) -> impl Fn(MapError) -> MapsError {
    move |source| MapsError::Read { map, source }
}

impl Maps {
    /// Reads back every installed frontend, so a restarted agent diffs against what the
    /// kernel really has (`entries::desired_state`).
    pub fn installed(&self) -> Result<DesiredState, MapsError> {
        let entries = entries::Entries {
            services: self
                .services
                .iter()
                .collect::<Result<_, _>>()
                .map_err(read(names::MAP_SERVICES))?,
            members: self
                .members
                .iter()
                .collect::<Result<_, _>>()
                .map_err(read(names::MAP_MEMBERS))?,
            names: self
                .names
                .iter()
                .filter_map(Result::ok)
                .map(|(fe, name)| (fe, name.as_str().to_owned()))
                .collect(),
            source_ranges: self
                .source_ranges
                .keys()
                .map(|k| k.map(|k| (k.prefix_len(), k.data())))
                .collect::<Result<_, _>>()
                .map_err(read(names::MAP_SOURCE_RANGES))?,
        };
        Ok(entries::desired_state(entries))
    }

    /// Slots in use over all active tables (read once at start; then tracked by the caller).
    pub fn slots_in_use(&self) -> u64 {
        self.services
            .iter()
            .filter_map(Result::ok)
            .map(|(_, s)| u64::from(s.slots))
            .sum()
    }

    /// Removes what no installed frontend owns (`orphans::Owners` says what it owns):
    /// members and names of frontends that no longer exist, and source ranges no frontend
    /// asks for. Returns how many entries were removed.
    ///
    /// The two arrays have nothing to remove: a slot outside every table is free space
    /// (the allocator rebuilt it from the same values), and the counters of an id no
    /// frontend holds are zeroed when the id is handed out again.
    ///
    /// One read of the service values, then one pass over each other map's keys: about
    /// one syscall per entry, nothing per entry and frontend. Safe at any time between
    /// two writes of this agent: a table being written is owned only once its value
    /// says so, and no write is under way when this runs (`&mut self`).
    pub fn remove_orphans(&mut self) -> Result<usize, MapsError> {
        let services: BTreeMap<Frontend, Service> = self
            .services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(read(names::MAP_SERVICES))?;
        let owners = Owners {
            services: &services,
        };
        let members: Vec<MemberKey> = self
            .members
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !owners.own_member(k))
            .collect();
        let names: Vec<Frontend> = self
            .names
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !owners.own_frontend(k))
            .collect();
        let ranges: Vec<LpmKey<_>> = self
            .source_ranges
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !owners.own_source_range(&k.data()))
            .collect();
        let removed = members.len() + names.len() + ranges.len();
        for k in &ranges {
            let _ = self.source_ranges.remove(k);
        }
        for k in &members {
            let _ = self.members.remove(k);
        }
        for k in &names {
            let _ = self.names.remove(k);
        }
        Ok(removed)
    }
}
