//! The maps, pinned by name under the agent's bpffs directory. Names and layouts are in
//! `proxy_common`; the literal names here must match `proxy_common::names`, which the
//! agent checks when it loads the object.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use proxy_common::{
    Affinity, AffinityKey, Backend, Event, Frontend, FrontendStats, Member, MemberKey, RevNatKey,
    Service, ServiceName, SlotKey,
    names::{
        DEFAULT_MAX_AFFINITY, DEFAULT_MAX_MEMBERS, DEFAULT_MAX_REVNAT, DEFAULT_MAX_SERVICES,
        DEFAULT_MAX_SLOTS,
    },
};

/// Elements are freed after an RCU grace period instead of being recycled at once, so a
/// program holding a value pointer never sees it overwritten by an unrelated update.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map(name = "EPX_SVC_V1")]
pub static SERVICES: HashMap<Frontend, Service> =
    HashMap::pinned(DEFAULT_MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "EPX_SLOT_V1")]
pub static SLOTS: HashMap<SlotKey, Backend> = HashMap::pinned(DEFAULT_MAX_SLOTS, BPF_F_NO_PREALLOC);

#[map(name = "EPX_MEMB_V1")]
pub static MEMBERS: HashMap<MemberKey, Member> =
    HashMap::pinned(DEFAULT_MAX_MEMBERS, BPF_F_NO_PREALLOC);

#[map(name = "EPX_AFF_V1")]
pub static AFFINITY: LruHashMap<AffinityKey, Affinity> =
    LruHashMap::pinned(DEFAULT_MAX_AFFINITY, 0);

#[map(name = "EPX_RNAT_V1")]
pub static REVNAT: LruHashMap<RevNatKey, Frontend> = LruHashMap::pinned(DEFAULT_MAX_REVNAT, 0);

#[map(name = "EPX_STAT_V1")]
pub static STATS: PerCpuHashMap<Frontend, FrontendStats> =
    PerCpuHashMap::pinned(DEFAULT_MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "EPX_EVT_V1")]
pub static EVENTS: PerCpuArray<u64> = PerCpuArray::pinned(Event::MAP_SLOTS, 0);

/// Written by the agent, read by proxyctl only. Declared here so that the loader creates
/// and pins it with the others.
#[map(name = "EPX_NAME_V1")]
pub static NAMES: HashMap<Frontend, ServiceName> =
    HashMap::pinned(DEFAULT_MAX_SERVICES, BPF_F_NO_PREALLOC);

#[inline(always)]
pub fn count(event: Event) {
    if let Some(counter) = EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn stats(frontend: &Frontend) -> Option<*mut FrontendStats> {
    STATS.get_ptr_mut(frontend)
}
