//! Typed access to the pinned maps: reading back what is installed, and writing one
//! frontend so that a connecting client sees the old or the new backend set, never a mix.

use std::{collections::BTreeMap, path::Path};

use aya::{
    Ebpf,
    maps::{
        Array, HashMap, Map, MapData, MapError, PerCpuArray,
        lpm_trie::{Key as LpmKey, LpmTrie},
    },
};
use proxy_common::{
    Affinity, AffinityKey, AgentInfo, Backend, Event, Frontend, FrontendStats, IfaceInfo, Member,
    MemberKey, NatEntry, NatKey, RevNatKey, SCOPE_EXTERNAL_LOCAL, SCOPE_SOCKET,
    SERVICE_EXTERNAL_LOCAL, SERVICE_SOURCE_RANGES, Service, ServiceName, SlotKey, SourceRangeKey,
    names,
};

use super::{
    batch::BatchMap,
    convert::{backend, frontend, frontend_addr},
    entries,
    slots::slot_table,
};
use crate::model::{DesiredState, FrontendAddr, FrontendSpec};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {name} is missing from the BPF object")]
    Missing { name: &'static str },
    #[error("map {name}: {source}")]
    Open {
        name: &'static str,
        source: MapError,
    },
    #[error("the {map} map is full ({capacity} entries): raise its capacity")]
    Full { map: &'static str, capacity: u32 },
    #[error("writing the {map} map failed: {source}")]
    Write { map: &'static str, source: MapError },
    #[error("reading the {map} map failed: {source}")]
    Read { map: &'static str, source: MapError },
}

/// One handle per map, with its capacity for error messages and status.
pub struct Maps {
    pub services: HashMap<MapData, Frontend, Service>,
    pub slots: HashMap<MapData, SlotKey, Backend>,
    pub members: HashMap<MapData, MemberKey, Member>,
    pub affinity: HashMap<MapData, AffinityKey, Affinity>,
    pub revnat: HashMap<MapData, RevNatKey, Frontend>,
    pub stats: HashMap<MapData, Frontend, FrontendStats>,
    pub events: PerCpuArray<MapData, u64>,
    pub names: HashMap<MapData, Frontend, ServiceName>,
    pub agent: Array<MapData, AgentInfo>,
    pub nat: HashMap<MapData, NatKey, NatEntry>,
    pub ifaces: HashMap<MapData, u32, IfaceInfo>,
    pub source_ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    capacity: BTreeMap<&'static str, u32>,
}

/// Counters of one frontend, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub translated: u64,
    pub no_endpoint: u64,
    pub affinity_hits: u64,
}

impl Maps {
    /// Takes the maps out of a freshly loaded object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        Self::build(|name| ebpf.take_map(name).ok_or(MapsError::Missing { name }))
    }

    /// Opens the maps pinned in `dir` (what proxyctl does).
    pub fn from_pins(dir: &Path) -> Result<Self, MapsError> {
        Self::build(|name| {
            let data = MapData::from_pin(dir.join(name))
                .map_err(|source| MapsError::Open { name, source })?;
            Map::from_map_data(data).map_err(|source| MapsError::Open { name, source })
        })
    }

    fn build(
        mut take: impl FnMut(&'static str) -> Result<Map, MapsError>,
    ) -> Result<Self, MapsError> {
        let mut capacity = BTreeMap::new();
        let mut open = |name: &'static str| -> Result<Map, MapsError> {
            let map = take(name)?;
            let info = match &map {
                Map::HashMap(d)
                | Map::LruHashMap(d)
                | Map::PerCpuHashMap(d)
                | Map::PerCpuArray(d)
                | Map::Array(d)
                | Map::LpmTrie(d) => d.info(),
                _ => return Err(MapsError::Missing { name }),
            };
            let info = info.map_err(|source| MapsError::Open { name, source })?;
            capacity.insert(name, info.max_entries());
            Ok(map)
        };
        macro_rules! typed {
            ($name:expr) => {{
                let name = $name;
                open(name)?
                    .try_into()
                    .map_err(|source| MapsError::Open { name, source })?
            }};
        }
        Ok(Self {
            services: typed!(names::MAP_SERVICES),
            slots: typed!(names::MAP_SLOTS),
            members: typed!(names::MAP_MEMBERS),
            affinity: typed!(names::MAP_AFFINITY),
            revnat: typed!(names::MAP_REVNAT),
            stats: typed!(names::MAP_STATS),
            events: typed!(names::MAP_EVENTS),
            names: typed!(names::MAP_NAMES),
            agent: typed!(names::MAP_AGENT),
            nat: typed!(names::MAP_NAT),
            ifaces: typed!(names::MAP_IFACES),
            source_ranges: typed!(names::MAP_SOURCE_RANGES),
            capacity,
        })
    }

    pub fn capacity(&self, map: &str) -> u32 {
        self.capacity.get(map).copied().unwrap_or(0)
    }

    /// Reads back every installed frontend, so a restarted agent diffs against what the
    /// kernel really has (`entries::desired_state`).
    pub fn installed(&self) -> Result<DesiredState, MapsError> {
        let read = |map| move |source| MapsError::Read { map, source };
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

    /// Removes slots outside a frontend's active table, members and names of frontends
    /// that no longer exist, and source ranges no frontend asks for: what an agent killed
    /// in the middle of a write, or a change made while no agent ran, leaves behind.
    pub fn remove_orphans(&mut self) -> Result<usize, MapsError> {
        let services: BTreeMap<Frontend, Service> = self
            .services
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| MapsError::Read {
                map: names::MAP_SERVICES,
                source,
            })?;
        let live_slot = |k: &SlotKey| {
            services
                .get(&k.frontend)
                .is_some_and(|s| s.generation == k.generation && k.index < s.slots)
        };
        let slots: Vec<SlotKey> = self
            .slots
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live_slot(k))
            .collect();
        let members: Vec<MemberKey> = self
            .members
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !services.contains_key(&k.frontend))
            .collect();
        let names: Vec<Frontend> = self
            .names
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !services.contains_key(k))
            .collect();
        let ranges = entries::orphaned_source_ranges(
            &services,
            self.source_ranges
                .keys()
                .filter_map(Result::ok)
                .map(|k| (k.prefix_len(), k.data())),
        );
        let removed = slots.len() + members.len() + names.len() + ranges.len();
        for (prefix_len, key) in ranges {
            let _ = self.source_ranges.remove(&LpmKey::new(prefix_len, key));
        }
        for k in &slots {
            let _ = self.slots.remove(k);
        }
        for k in &members {
            let _ = self.members.remove(k);
        }
        for k in &names {
            let _ = self.names.remove(k);
        }
        Ok(removed)
    }

    /// Installs or replaces one frontend. `previous` is what is installed for it now.
    ///
    /// Order matters: members and the new slot table (in the generation not in use) are
    /// written first, then the service value is replaced in one update, which is the moment
    /// connects switch over; only then is the old table removed. If a map is full, what was
    /// written is taken back and the frontend keeps serving its old backends.
    ///
    /// A frontend with externalTrafficPolicy Local gets a second table, this node's
    /// endpoints under the same address with scope [`SCOPE_EXTERNAL_LOCAL`], which the tc
    /// programs use for traffic from outside; it is written before the frontend's value
    /// says it exists, and removed after the value stops saying so.
    pub fn write_frontend(
        &mut self,
        addr: &FrontendAddr,
        spec: &FrontendSpec,
        previous: Option<&FrontendSpec>,
    ) -> Result<SlotDelta, MapsError> {
        let local_view = |s: &FrontendSpec| {
            s.external_local.as_ref().map(|local| FrontendSpec {
                backends: local.clone(),
                external_local: None,
                ..s.clone()
            })
        };
        let scoped = Frontend {
            scope: SCOPE_EXTERNAL_LOCAL,
            ..frontend(addr)
        };
        let previous_local = previous.and_then(local_view);
        let mut local_delta = SlotDelta {
            before: 0,
            after: 0,
        };
        if let Some(local) = local_view(spec) {
            local_delta = self.write_table(scoped, &local, previous_local.as_ref(), 0)?;
        }
        let mut flags = if spec.external_local.is_some() {
            SERVICE_EXTERNAL_LOCAL
        } else {
            0
        };
        let old_ranges = previous.and_then(|p| p.source_ranges.as_ref());
        if let Some(ranges) = &spec.source_ranges {
            self.write_source_ranges(frontend(addr), &ranges.cidrs, old_ranges)?;
            flags |= SERVICE_SOURCE_RANGES;
        }
        let mut delta = self.write_table(frontend(addr), spec, previous, flags)?;
        if let (None, Some(old)) = (&spec.source_ranges, old_ranges) {
            self.remove_source_ranges(frontend(addr), &old.cidrs);
        }
        if let (None, Some(old_local)) = (&spec.external_local, &previous_local) {
            local_delta.before = self.remove_table_of(scoped, old_local);
        }
        delta.before += local_delta.before;
        delta.after += local_delta.after;
        Ok(delta)
    }

    /// The loadBalancerSourceRanges of `fe`: new ones added, dropped ones removed.
    fn write_source_ranges(
        &mut self,
        fe: Frontend,
        cidrs: &[(std::net::Ipv4Addr, u8)],
        old: Option<&crate::model::SourceRanges>,
    ) -> Result<(), MapsError> {
        for (net, bits) in cidrs {
            let key = source_range_key(fe, *net, *bits);
            self.insert(names::MAP_SOURCE_RANGES, |m| {
                m.source_ranges.insert(&key, 1, 0)
            })?;
        }
        let gone: Vec<(std::net::Ipv4Addr, u8)> = old
            .map(|o| {
                o.cidrs
                    .iter()
                    .filter(|c| !cidrs.contains(c))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        self.remove_source_ranges(fe, &gone);
        Ok(())
    }

    fn remove_source_ranges(&mut self, fe: Frontend, cidrs: &[(std::net::Ipv4Addr, u8)]) {
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
        spec: &FrontendSpec,
        previous: Option<&FrontendSpec>,
        extra_flags: u8,
    ) -> Result<SlotDelta, MapsError> {
        let old = self.services.get(&fe, 0).ok();
        let generation = old.map_or(0, |s| s.generation ^ 1);
        let table = slot_table(&spec.backends);
        let old_backends: Vec<Backend> = previous
            .iter()
            .flat_map(|p| &p.backends)
            .map(|b| backend(&b.addr))
            .collect();

        let mut undo = Undo::default();
        let result = (|| {
            if fe.scope == SCOPE_SOCKET {
                self.insert_name(&fe, &spec.service)?;
            }
            for (key, member) in entries::members(fe, &spec.backends) {
                self.insert(names::MAP_MEMBERS, |m| m.members.insert(key, member, 0))?;
                if !old_backends.contains(&key.backend) {
                    undo.members.push(key);
                }
            }
            for (index, b) in table.iter().enumerate() {
                let key = SlotKey {
                    frontend: fe,
                    index: index as u32,
                    generation,
                    _pad: [0; 3],
                };
                self.insert(names::MAP_SLOTS, |m| m.slots.insert(key, backend(b), 0))?;
                undo.slots.push(key);
            }
            let value =
                entries::service_value(spec, &spec.backends, table.len(), generation, extra_flags);
            self.insert(names::MAP_SERVICES, |m| m.services.insert(fe, value, 0))
        })();
        if let Err(error) = result {
            for key in &undo.slots {
                let _ = self.slots.remove(key);
            }
            for key in &undo.members {
                let _ = self.members.remove(key);
            }
            if old.is_none() {
                let _ = self.names.remove(&fe);
                let _ = self.stats.remove(&fe);
            }
            return Err(error);
        }

        if let Some(old) = old {
            self.remove_table(&fe, &old);
        }
        let delta = SlotDelta {
            before: old.map_or(0, |o| o.slots),
            after: table.len() as u32,
        };
        let new_backends: Vec<Backend> = spec.backends.iter().map(|b| backend(&b.addr)).collect();
        for gone in old_backends.iter().filter(|b| !new_backends.contains(b)) {
            let _ = self.members.remove(&MemberKey {
                frontend: fe,
                backend: *gone,
            });
        }
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
        if let Some(local) = &previous.external_local {
            let scoped = Frontend {
                scope: SCOPE_EXTERNAL_LOCAL,
                ..fe
            };
            let local = FrontendSpec {
                backends: local.clone(),
                ..previous.clone()
            };
            freed += self.remove_table_of(scoped, &local);
        }
        freed
    }

    /// Removes the value, slot table, members, counters and name under the key `fe`.
    fn remove_table_of(&mut self, fe: Frontend, previous: &FrontendSpec) -> u32 {
        let old = self.services.get(&fe, 0).ok();
        let _ = self.services.remove(&fe);
        if let Some(old) = old {
            self.remove_table(&fe, &old);
        }
        for b in &previous.backends {
            let _ = self.members.remove(&MemberKey {
                frontend: fe,
                backend: backend(&b.addr),
            });
        }
        let _ = self.stats.remove(&fe);
        let _ = self.names.remove(&fe);
        old.map_or(0, |o| o.slots)
    }

    /// Slots in use over all active tables (read once at start; then tracked by the caller).
    pub fn slots_in_use(&self) -> u64 {
        self.services
            .iter()
            .filter_map(Result::ok)
            .map(|(_, s)| u64::from(s.slots))
            .sum()
    }

    fn remove_table(&mut self, fe: &Frontend, service: &Service) {
        for index in 0..service.slots {
            let key = SlotKey {
                frontend: *fe,
                index,
                generation: service.generation,
                _pad: [0; 3],
            };
            let _ = self.slots.remove(&key);
        }
    }

    fn insert_name(&mut self, fe: &Frontend, name: &str) -> Result<(), MapsError> {
        let value = ServiceName::new(name);
        self.insert(names::MAP_NAMES, |m| m.names.insert(fe, value, 0))
    }

    /// The interfaces the tc programs are attached to, and their source-NAT addresses;
    /// entries of interfaces no longer given are removed.
    pub fn set_interfaces(
        &mut self,
        interfaces: &[super::interfaces::Interface],
    ) -> Result<(), MapsError> {
        let stale: Vec<u32> = self
            .ifaces
            .keys()
            .filter_map(Result::ok)
            .filter(|i| !interfaces.iter().any(|w| w.ifindex == *i))
            .collect();
        for ifindex in stale {
            let _ = self.ifaces.remove(&ifindex);
        }
        for i in interfaces {
            let info = IfaceInfo {
                addr: u32::from_ne_bytes(i.addr.octets()),
            };
            self.insert(names::MAP_IFACES, |m| m.ifaces.insert(i.ifindex, info, 0))?;
        }
        Ok(())
    }

    /// Records who programs the maps (for `proxyctl status`).
    pub fn write_agent_info(&mut self, info: &AgentInfo) -> Result<(), MapsError> {
        self.insert(names::MAP_AGENT, |m| m.agent.set(0, info, 0))
    }

    /// Who programs the maps; `None` before an agent wrote it.
    pub fn agent_info(&self) -> Option<AgentInfo> {
        self.agent.get(&0, 0).ok().filter(|info| info.pid != 0)
    }

    fn insert(
        &mut self,
        map: &'static str,
        write: impl FnOnce(&mut Self) -> Result<(), MapError>,
    ) -> Result<(), MapsError> {
        write(self).map_err(|source| match &source {
            MapError::SyscallError(e)
                if matches!(
                    e.io_error.raw_os_error(),
                    Some(libc::E2BIG) | Some(libc::ENOMEM)
                ) =>
            {
                MapsError::Full {
                    map,
                    capacity: self.capacity(map),
                }
            }
            _ => MapsError::Write { map, source },
        })
    }

    /// Counters of one frontend (zero until its first connection).
    pub fn counters(&self, fe: &Frontend) -> Counters {
        self.stats
            .get(fe, 0)
            .map_or(Counters::default(), |v| Counters {
                translated: v.translated,
                no_endpoint: v.no_endpoint,
                affinity_hits: v.affinity_hits,
            })
    }

    /// Every frontend with its service name and counters (what /metrics reports).
    pub fn frontend_counters(&self) -> Vec<(FrontendAddr, String, Counters)> {
        self.services
            .keys()
            .filter_map(Result::ok)
            .filter_map(|fe| {
                let addr = frontend_addr(&fe)?;
                let name = self
                    .names
                    .get(&fe, 0)
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default();
                Some((addr, name, self.counters(&fe)))
            })
            .collect()
    }

    /// Datapath event counters by name, summed over CPUs.
    pub fn events(&self) -> Vec<(&'static str, u64)> {
        Event::ALL
            .iter()
            .map(|e| {
                let total = self
                    .events
                    .get(&(*e as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (e.name(), total)
            })
            .collect()
    }
}

fn source_range_key(fe: Frontend, net: std::net::Ipv4Addr, bits: u8) -> LpmKey<SourceRangeKey> {
    LpmKey::new(
        proxy_common::source_range_prefix(bits),
        SourceRangeKey {
            frontend: fe,
            addr: u32::from_ne_bytes(net.octets()),
        },
    )
}

/// Slots of a frontend's table before and after a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotDelta {
    pub before: u32,
    pub after: u32,
}

#[derive(Default)]
struct Undo {
    slots: Vec<SlotKey>,
    members: Vec<MemberKey>,
}

/// Second handles on the maps a frontend write touches, for batch writes.
pub struct BatchMaps {
    services: BatchMap,
    slots: BatchMap,
    members: BatchMap,
    names: BatchMap,
}

impl BatchMaps {
    pub fn open(dir: &Path) -> Result<Self, MapsError> {
        let open = |name: &'static str, value_size: usize| {
            BatchMap::open(&dir.join(name), value_size)
                .map_err(|source| MapsError::Open { name, source })
        };
        Ok(Self {
            services: open(names::MAP_SERVICES, size_of::<Service>())?,
            slots: open(names::MAP_SLOTS, size_of::<Backend>())?,
            members: open(names::MAP_MEMBERS, size_of::<Member>())?,
            names: open(names::MAP_NAMES, size_of::<ServiceName>())?,
        })
    }
}

impl Maps {
    /// Writes frontends that are not installed at all, a whole map at a time: names,
    /// members, slot tables and counters first, the service values last (one element each,
    /// so each frontend still switches on atomically). On failure everything written here
    /// is removed again and the error returned; the caller then writes the frontends one by
    /// one, which finds and names the one that does not fit. Returns the slots written.
    pub fn write_fresh(
        &mut self,
        batch: &BatchMaps,
        fresh: &[(FrontendAddr, FrontendSpec)],
    ) -> Result<u64, MapsError> {
        let mut service_keys = Vec::with_capacity(fresh.len());
        let mut service_values: Vec<Service> = Vec::with_capacity(fresh.len());
        let mut name_values: Vec<ServiceName> = Vec::with_capacity(fresh.len());
        let (mut member_keys, mut member_values) = (Vec::new(), Vec::<Member>::new());
        let (mut slot_keys, mut slot_values) = (Vec::new(), Vec::<Backend>::new());
        for (addr, spec) in fresh {
            let fe = frontend(addr);
            let table = slot_table(&spec.backends);
            for (key, member) in entries::members(fe, &spec.backends) {
                member_keys.push(key);
                member_values.push(member);
            }
            for (index, b) in table.iter().enumerate() {
                slot_keys.push(SlotKey {
                    frontend: fe,
                    index: index as u32,
                    generation: 0,
                    _pad: [0; 3],
                });
                slot_values.push(backend(b));
            }
            service_keys.push(fe);
            name_values.push(ServiceName::new(&spec.service));
            service_values.push(entries::service_value(
                spec,
                &spec.backends,
                table.len(),
                0,
                0,
            ));
        }
        let full_or = |map: &'static str, capacity: u32, e: std::io::Error| match e.raw_os_error() {
            Some(libc::E2BIG) | Some(libc::ENOMEM) => MapsError::Full { map, capacity },
            _ => MapsError::Write {
                map,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "BPF_MAP_UPDATE_BATCH",
                    io_error: e,
                }),
            },
        };
        // Names, members and slot tables first; the service values, which make each
        // frontend live, last.
        let result = [
            (
                names::MAP_NAMES,
                batch
                    .names
                    .update(&service_keys, bytemuck::cast_slice(&name_values)),
            ),
            (
                names::MAP_MEMBERS,
                batch
                    .members
                    .update(&member_keys, bytemuck::cast_slice(&member_values)),
            ),
            (
                names::MAP_SLOTS,
                batch
                    .slots
                    .update(&slot_keys, bytemuck::cast_slice(&slot_values)),
            ),
        ]
        .into_iter()
        .try_for_each(|(map, r)| r.map_err(|(_, e)| full_or(map, self.capacity(map), e)))
        .and_then(|()| {
            batch
                .services
                .update(&service_keys, bytemuck::cast_slice(&service_values))
                .map_err(|(_, e)| {
                    full_or(names::MAP_SERVICES, self.capacity(names::MAP_SERVICES), e)
                })
        });
        if let Err(error) = result {
            // Services first, so no connect ever sees a frontend whose table is going away.
            for k in &service_keys {
                let _ = self.services.remove(k);
            }
            for k in &slot_keys {
                let _ = self.slots.remove(k);
            }
            for k in &member_keys {
                let _ = self.members.remove(k);
            }
            for k in &service_keys {
                let _ = self.stats.remove(k);
                let _ = self.names.remove(k);
            }
            return Err(error);
        }
        Ok(slot_keys.len() as u64)
    }
}
