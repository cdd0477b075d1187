//! The maps, pinned by name under the agent's bpffs directory. Names and layouts are in
//! `proxy_common`; the literal names here must match `proxy_common::names`, which the
//! agent checks when it loads the object.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use proxy_common::{
    Affinity, AffinityKey, AgentInfo, Backend, Event, Frontend, FrontendStats, IfaceInfo, Member,
    MemberKey, NatEntry, NatKey, RevNatKey, Service, ServiceName, SlotKey, SourceRangeKey,
    names::{
        DEFAULT_MAX_AFFINITY, DEFAULT_MAX_MEMBERS, DEFAULT_MAX_NAT, DEFAULT_MAX_REVNAT,
        DEFAULT_MAX_SERVICES, DEFAULT_MAX_SLOTS,
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

/// Created by the datapath on a frontend's first connection and counted with atomic adds:
/// the agent never writes it, so programming 10,000 frontends does not pay for 10,000
/// counter allocations (per-CPU hash elements are slow to allocate without preallocation,
/// and preallocating costs capacity x CPUs of memory).
#[map(name = "EPX_STAT_V1")]
pub static STATS: HashMap<Frontend, FrontendStats> =
    HashMap::pinned(DEFAULT_MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "EPX_EVT_V1")]
pub static EVENTS: PerCpuArray<u64> = PerCpuArray::pinned(Event::MAP_SLOTS, 0);

/// Written by the agent, read by proxyctl only. Declared here so that the loader creates
/// and pins it with the others.
#[map(name = "EPX_NAME_V1")]
pub static NAMES: HashMap<Frontend, ServiceName> =
    HashMap::pinned(DEFAULT_MAX_SERVICES, BPF_F_NO_PREALLOC);

/// The tc programs' flows, both directions (LRU: the oldest flows make room).
#[map(name = "EPX_NAT_V1")]
pub static NAT: LruHashMap<NatKey, NatEntry> = LruHashMap::pinned(DEFAULT_MAX_NAT, 0);

/// The interfaces the tc programs are attached to (by ifindex), with their source-NAT
/// address. A backend reached through one of them is on another node.
#[map(name = "EPX_IFACE_V1")]
pub static IFACES: HashMap<u32, IfaceInfo> = HashMap::pinned(256, 0);

/// loadBalancerSourceRanges of the LoadBalancer frontends that have them.
#[map(name = "EPX_SRCR_V1")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> = LpmTrie::pinned(65_536, 0);

/// Per-CPU scratch space for the tc programs' larger buffers (the route lookup's
/// parameters, the headers of a synthesized reply). On the stack they would not fit the
/// 512 bytes Linux 6.1 and older allow beside everything else. Not pinned: it holds
/// nothing from one program run to the next.
#[map(name = "EPX_SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// See [`SCRATCH`].
#[repr(C)]
pub struct Scratch {
    pub fib: aya_ebpf::bindings::bpf_fib_lookup,
    /// Headers being built: an IP header, then an ICMP header with its quote; or a TCP
    /// header with its pseudo header.
    pub words: [u32; SCRATCH_WORDS],
}

pub const SCRATCH_WORDS: usize = 24;

/// This CPU's scratch space, valid for the rest of the program run.
#[inline(always)]
pub fn scratch() -> Option<*mut Scratch> {
    SCRATCH.get_ptr_mut(0)
}

/// Written by the agent, read by proxyctl status only.
#[map(name = "EPX_AGENT_V2")]
pub static AGENT: Array<AgentInfo> = Array::pinned(1, 0);

#[inline(always)]
pub fn count(event: Event) {
    if let Some(counter) = EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: per-CPU value, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}

/// Only create the entry if it is not there (another CPU may have just done so).
const BPF_NOEXIST: u64 = 1;

/// The counters of `frontend`, created on first use.
#[inline(always)]
pub fn stats(frontend: &Frontend) -> Option<*mut FrontendStats> {
    if let Some(stats) = STATS.get_ptr_mut(frontend) {
        return Some(stats);
    }
    let _ = STATS.insert(frontend, FrontendStats::default(), BPF_NOEXIST);
    STATS.get_ptr_mut(frontend)
}

/// Adds one to a counter shared by all CPUs.
#[inline(always)]
pub fn bump(counter: *mut u64) {
    use core::intrinsics::{AtomicOrdering, atomic_xadd};
    // SAFETY: `counter` points into a map value that stays valid for this program run. The
    // BPF target offers no atomic read-modify-write types, but LLVM lowers this intrinsic
    // to BPF's atomic add (what C gets from __sync_fetch_and_add), so CPUs lose no counts.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
}
