//! Typed access to the pinned maps, one file per job:
//! - here: one handle per map, opened from a loaded object or from the pins, with its
//!   capacity, and a failed write named for the map (full or not);
//! - `counters`: per-frontend counters and datapath events, summed over CPUs;
//! - `agent_records`: what the agent records for the tc programs and for proxyctl;
//! - `read_back`: what is installed, and pruning what no installed frontend owns;
//! - `space`: where tables and counters sit: regions of the slots array and frontend ids
//!   (`regions`), read back from the service values, handed out and taken back;
//! - `write`: installing and removing one frontend, so that a connecting client sees
//!   the old or the new backend set, never a mix;
//! - `write_batch`: many new frontends a map at a time (the cold path).
//!
//! Every entry is built by `entries`, the one builder of each key and value.

mod agent_records;
mod counters;
mod read_back;
mod space;
mod write;
mod write_batch;

use std::{collections::BTreeMap, path::Path};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray},
};
use proxy_common::{
    Affinity, AffinityKey, AgentInfo, Backend, DatapathConfig, Frontend, FrontendStats, IfaceInfo,
    Member, MemberKey, NatEntry, NatEntry6, NatKey, NatKey6, RevNatKey, Service, ServiceName,
    SourceRangeKey, UdpFlow, UdpFlowKey, names,
};

pub use self::{counters::Counters, space::Space, write::SlotDelta, write_batch::BatchMaps};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("map {name} is missing from the BPF object")]
    Missing { name: &'static str },
    #[error("map {name} cannot be opened")]
    Open {
        name: &'static str,
        source: MapError,
    },
    #[error("the {map} map is full ({capacity} entries): raise its capacity")]
    Full { map: &'static str, capacity: u32 },
    #[error(
        "the {map} map has {free} of {capacity} entries free but not {wanted} in a row (the longest free run is {largest}): raise its capacity"
    )]
    Fragmented {
        map: &'static str,
        capacity: u32,
        free: u32,
        wanted: u32,
        largest: u32,
    },
    #[error("writing the {map} map failed")]
    Write { map: &'static str, source: MapError },
    #[error("reading the {map} map failed")]
    Read { map: &'static str, source: MapError },
}

/// One handle per map, with its capacity for error messages and status.
pub struct Maps {
    pub services: HashMap<MapData, Frontend, Service>,
    pub slots: Array<MapData, Backend>,
    pub members: HashMap<MapData, MemberKey, Member>,
    pub affinity: HashMap<MapData, AffinityKey, Affinity>,
    pub revnat: HashMap<MapData, RevNatKey, Frontend>,
    pub stats: PerCpuArray<MapData, FrontendStats>,
    pub events: PerCpuArray<MapData, u64>,
    pub names: HashMap<MapData, Frontend, ServiceName>,
    pub agent: Array<MapData, AgentInfo>,
    pub nat: HashMap<MapData, NatKey, NatEntry>,
    pub nat6: HashMap<MapData, NatKey6, NatEntry6>,
    pub ifaces: HashMap<MapData, u32, IfaceInfo>,
    pub source_ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    pub udp_flows: HashMap<MapData, UdpFlowKey, UdpFlow>,
    pub config: Array<MapData, DatapathConfig>,
    capacity: BTreeMap<&'static str, u32>,
    /// Free regions of the slots array and free frontend ids, as the service values say.
    space: Space,
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
        let mut maps = Self {
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
            nat6: typed!(names::MAP_NAT6),
            ifaces: typed!(names::MAP_IFACES),
            source_ranges: typed!(names::MAP_SOURCE_RANGES),
            udp_flows: typed!(names::MAP_UDP_FLOWS),
            config: typed!(names::MAP_CONFIG),
            capacity,
            space: Space::default(),
        };
        maps.space = Space::read_back(&maps)?;
        Ok(maps)
    }

    pub fn capacity(&self, map: &str) -> u32 {
        self.capacity.get(map).copied().unwrap_or(0)
    }

    /// Runs one write to `map`; a failure for lack of room is [`MapsError::Full`].
    fn insert(
        &mut self,
        map: &'static str,
        write: impl FnOnce(&mut Self) -> Result<(), MapError>,
    ) -> Result<(), MapsError> {
        write(self).map_err(|source| match &source {
            MapError::SyscallError(e) if is_full(&e.io_error) => MapsError::Full {
                map,
                capacity: self.capacity(map),
            },
            _ => MapsError::Write { map, source },
        })
    }
}

/// A region of `map` that could not be had, as a map error.
fn no_room(map: &'static str, error: crate::dataplane::ebpf::regions::RegionError) -> MapsError {
    use crate::dataplane::ebpf::regions::RegionError;
    match error {
        RegionError::Full { capacity, .. } => MapsError::Full { map, capacity },
        RegionError::Fragmented {
            wanted,
            free,
            largest,
            capacity,
        } => MapsError::Fragmented {
            map,
            capacity,
            free,
            wanted,
            largest,
        },
    }
}

/// Whether a failed write means the map has no room left.
fn is_full(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOMEM))
}
