//! Installing and removing one frontend. A frontend's table is written into a free region
//! of the slots array, then its service value is replaced in one update: a connecting
//! client sees the old or the new slot set, never a mix. The old region goes into
//! quarantine (`regions`), so no program still holding the old value reads a slot that
//! has been given to another table.

use std::net::IpAddr;

use aya::maps::lpm_trie::Key as LpmKey;
use proxy_common::{Frontend, MemberKey, SCOPE_SOCKET, ServiceName, names};

use super::{Maps, MapsError};
use crate::{
    dataplane::ebpf::{
        convert::frontend,
        entries::{self, external_local_key},
    },
    model::{FrontendAddr, FrontendSpec, SourceRanges},
};

/// Slots of a frontend's table before and after a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotDelta {
    pub before: u32,
    pub after: u32,
}

/// The spec of a frontend's external-local table (this node's endpoints), if it has one.
fn local_view(spec: &FrontendSpec) -> Option<FrontendSpec> {
    spec.external_local.as_ref().map(|local| FrontendSpec {
        backends: local.clone().into(),
        external_local: None,
        ..spec.clone()
    })
}

/// The ranges of `cidrs` that `other` does not hold.
fn not_in(cidrs: &[(IpAddr, u8)], other: Option<&SourceRanges>) -> Vec<(IpAddr, u8)> {
    cidrs
        .iter()
        .filter(|c| !other.is_some_and(|o| o.cidrs.contains(c)))
        .copied()
        .collect()
}

fn source_range_key(
    fe: Frontend,
    net: impl Into<std::net::IpAddr>,
    bits: u8,
) -> LpmKey<proxy_common::SourceRangeKey> {
    let (prefix_len, key) = entries::source_range_key(fe, net, bits);
    LpmKey::new(prefix_len, key)
}

impl Maps {
    /// Installs or replaces one frontend. `previous` is what is installed for it now.
    ///
    /// Order matters: members and the new slot table (in a free region) are written first,
    /// then the service value is replaced in one update, which is the moment connects
    /// switch over; only then is the old region released (into quarantine). If a map is
    /// full, what was written is taken back and the frontend keeps serving its old
    /// backends.
    ///
    /// A new frontend is given a frontend id (its counters, zeroed) first; its
    /// external-local table counts under the same id.
    ///
    /// A frontend with externalTrafficPolicy Local gets a second table, this node's
    /// endpoints under the same address with scope `SCOPE_EXTERNAL_LOCAL`, which the tc
    /// programs use for traffic from outside; it is written before the frontend's value
    /// says it exists, and removed after the value stops saying so. Source ranges, the
    /// same: added before the value says the frontend has them, removed after.
    pub fn write_frontend(
        &mut self,
        addr: &FrontendAddr,
        spec: &FrontendSpec,
        previous: Option<&FrontendSpec>,
    ) -> Result<SlotDelta, MapsError> {
        let fe = frontend(addr);
        let (frontend_id, new_id) = match self.services.get(&fe, 0) {
            Ok(value) => (value.frontend_id, false),
            Err(_) => (self.allocate_frontend_id()?, true),
        };
        let written = self.write_tables(fe, frontend_id, spec, previous);
        if written.is_err() && new_id {
            self.release_frontend_id(frontend_id);
        }
        written
    }

    /// [`Maps::write_frontend`] with the frontend's id in hand.
    fn write_tables(
        &mut self,
        fe: Frontend,
        frontend_id: u32,
        spec: &FrontendSpec,
        previous: Option<&FrontendSpec>,
    ) -> Result<SlotDelta, MapsError> {
        let scoped = external_local_key(fe);
        let previous_local = previous.and_then(local_view);
        let mut local_delta = SlotDelta {
            before: 0,
            after: 0,
        };
        let local = local_view(spec);
        if let Some(local) = &local {
            local_delta =
                self.write_table(scoped, frontend_id, local, previous_local.as_ref(), 0)?;
        }
        let old_ranges = previous.and_then(|p| p.source_ranges.as_deref());
        let main = match &spec.source_ranges {
            Some(ranges) => self.add_source_ranges(fe, ranges),
            None => Ok(()),
        }
        .and_then(|()| {
            self.write_table(fe, frontend_id, spec, previous, entries::extra_flags(spec))
        });
        let mut delta = match main {
            Ok(delta) => delta,
            Err(error) => {
                // What this write added beside the frontend's own value goes again: a new
                // external-local table would otherwise outlive its frontend's refusal
                // under a frontend id that is handed out again, and new source ranges
                // would wait for a frontend that does not exist.
                if let (Some(local), None) = (&local, &previous_local) {
                    self.remove_table_of(scoped, local);
                }
                if let Some(ranges) = &spec.source_ranges {
                    let added = not_in(&ranges.cidrs, old_ranges);
                    self.remove_source_ranges(fe, &added);
                }
                return Err(error);
            }
        };
        if let Some(old) = old_ranges {
            let gone = not_in(&old.cidrs, spec.source_ranges.as_deref());
            self.remove_source_ranges(fe, &gone);
        }
        if let (None, Some(old_local)) = (&spec.external_local, &previous_local) {
            local_delta.before = self.remove_table_of(scoped, old_local);
        }
        delta.before += local_delta.before;
        delta.after += local_delta.after;
        Ok(delta)
    }

    /// Removes a frontend: from then on its address passes through untouched. Returns the
    /// number of slots freed.
    pub fn remove_frontend(&mut self, addr: &FrontendAddr, previous: &FrontendSpec) -> u32 {
        let fe = frontend(addr);
        if let Some(ranges) = &previous.source_ranges {
            self.remove_source_ranges(fe, &ranges.cidrs);
        }
        let mut freed = self.remove_table_of(fe, previous);
        if let Some(local) = local_view(previous) {
            freed += self.remove_table_of(external_local_key(fe), &local);
        }
        freed
    }

    /// Adds the loadBalancerSourceRanges of `fe` (those already there are written again).
    fn add_source_ranges(&mut self, fe: Frontend, ranges: &SourceRanges) -> Result<(), MapsError> {
        for (net, bits) in &ranges.cidrs {
            let key = source_range_key(fe, *net, *bits);
            self.insert(names::MAP_SOURCE_RANGES, |m| {
                m.source_ranges.insert(&key, 1, 0)
            })?;
        }
        Ok(())
    }

    fn remove_source_ranges(&mut self, fe: Frontend, cidrs: &[(IpAddr, u8)]) {
        for (net, bits) in cidrs {
            let _ = self
                .source_ranges
                .remove(&source_range_key(fe, *net, *bits));
        }
    }

    /// One frontend's members, slot table and value, under the key `fe`.
    fn write_table(
        &mut self,
        fe: Frontend,
        frontend_id: u32,
        spec: &FrontendSpec,
        previous: Option<&FrontendSpec>,
        extra_flags: u8,
    ) -> Result<SlotDelta, MapsError> {
        let old = self.services.get(&fe, 0).ok();
        let table = entries::table(fe, spec, &spec.backends, extra_flags);
        let len = table.value.slots;
        let base = self.allocate_slots(len)?;
        let table = table.placed(base, frontend_id);
        let old_members: Vec<MemberKey> = previous
            .iter()
            .flat_map(|p| p.backends.iter())
            .map(|b| entries::member_key(fe, b))
            .collect();

        let mut new_members = Vec::new();
        let result = (|| {
            if fe.scope == SCOPE_SOCKET {
                self.insert_name(&fe, &spec.service)?;
            }
            for (key, member) in &table.members {
                self.insert(names::MAP_MEMBERS, |m| m.members.insert(key, member, 0))?;
                if !old_members.contains(key) {
                    new_members.push(*key);
                }
            }
            for (number, backend) in table.slot_entries() {
                self.insert(names::MAP_SLOTS, |m| m.slots.set(number, backend, 0))?;
            }
            self.insert(names::MAP_SERVICES, |m| {
                m.services.insert(fe, table.value, 0)
            })
        })();
        if let Err(error) = result {
            // The value was not replaced: no program ever saw the new region.
            self.release_unpublished_slots(base, len);
            for key in &new_members {
                let _ = self.members.remove(key);
            }
            if old.is_none() {
                let _ = self.names.remove(&fe);
            }
            return Err(error);
        }

        if let Some(old) = old {
            self.release_slots(old.slot_base, old.slots);
        }
        let delta = SlotDelta {
            before: old.map_or(0, |o| o.slots),
            after: table.value.slots,
        };
        for gone in old_members
            .iter()
            .filter(|k| !table.members.iter().any(|(new, _)| new == *k))
        {
            let _ = self.members.remove(gone);
        }
        Ok(delta)
    }

    /// Removes the value, members and name under the key `fe`; its slot region (and, for
    /// a frontend's own key, its id) go into quarantine.
    fn remove_table_of(&mut self, fe: Frontend, previous: &FrontendSpec) -> u32 {
        let old = self.services.get(&fe, 0).ok();
        let _ = self.services.remove(&fe);
        if let Some(old) = old {
            self.release_slots(old.slot_base, old.slots);
            if fe.scope == SCOPE_SOCKET {
                self.release_frontend_id(old.frontend_id);
            }
        }
        for b in previous.backends.iter() {
            let _ = self.members.remove(&entries::member_key(fe, b));
        }
        let _ = self.names.remove(&fe);
        old.map_or(0, |o| o.slots)
    }

    fn insert_name(&mut self, fe: &Frontend, name: &str) -> Result<(), MapsError> {
        let value = ServiceName::new(name);
        self.insert(names::MAP_NAMES, |m| m.names.insert(fe, value, 0))
    }
}
