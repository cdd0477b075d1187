//! The maps, pinned by name under the agent's bpffs directory. Names and layouts are in
//! `proxy_common`; the literal names here must match `proxy_common::names`, which the
//! agent checks when it loads the object.

use crate::tc_nat::FlowState;
use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use proxy_common::{
    Addr, Affinity, AffinityKey, AgentInfo, Backend, DatapathConfig, Event, Frontend,
    FrontendStats, IfaceInfo, Member, MemberKey, NatEntry, NatEntry6, NatKey, NatKey6, RevNatKey,
    Service, ServiceName, SocketRevNat, SourceRangeKey, TCP_REVNAT_RING, TcpRevNat, UdpFlow,
    UdpFlowKey,
    names::{
        DEFAULT_MAX_AFFINITY, DEFAULT_MAX_MEMBERS, DEFAULT_MAX_NAT, DEFAULT_MAX_REVNAT,
        DEFAULT_MAX_SERVICES, DEFAULT_MAX_SLOTS, DEFAULT_MAX_UDP_FLOWS,
    },
};

/// Elements are freed after an RCU grace period instead of being recycled at once, so a
/// program holding a value pointer never sees it overwritten by an unrelated update.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map(name = "EPX_SVC_V3")]
pub static SERVICES: HashMap<Frontend, Service> =
    HashMap::pinned(DEFAULT_MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Every frontend's slot table, each a region `[slot_base, slot_base + slots)` named by its
/// service value: one array lookup per connect, whatever the number of frontends.
#[map(name = "EPX_SLOT_V3")]
pub static SLOTS: Array<Backend> = Array::pinned(DEFAULT_MAX_SLOTS, 0);

#[map(name = "EPX_MEMB_V3")]
pub static MEMBERS: HashMap<MemberKey, Member> =
    HashMap::pinned(DEFAULT_MAX_MEMBERS, BPF_F_NO_PREALLOC);

#[map(name = "EPX_AFF_V3")]
pub static AFFINITY: LruHashMap<AffinityKey, Affinity> =
    LruHashMap::pinned(DEFAULT_MAX_AFFINITY, 0);

#[map(name = "EPX_RNAT_V3")]
pub static REVNAT: LruHashMap<RevNatKey, Frontend> = LruHashMap::pinned(DEFAULT_MAX_REVNAT, 0);

/// Each unconnected UDP socket's backend per frontend (sendmsg4/6 keep a flow on one
/// backend while it is active, as conntrack does; recvmsg4/6 mark its replies).
#[map(name = "EPX_UDPF_V1")]
pub static UDP_FLOWS: LruHashMap<UdpFlowKey, UdpFlow> =
    LruHashMap::pinned(DEFAULT_MAX_UDP_FLOWS, 0);

/// The agent's settings (UDP flow timeouts); zero fields are the defaults.
#[map(name = "EPX_CONF_V1")]
pub static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// The settings in force.
#[inline(always)]
pub fn config() -> DatapathConfig {
    CONFIG.get(0).copied().unwrap_or_default().or_defaults()
}

/// connect4's translation, stored on the socket (socket-local storage, freed with the
/// socket): nothing shared is written per connect. A BTF map (the kernel requires BTF for
/// this map type); the agent pins it by name like the others.
#[btf_map(name = "EPX_SKRN_V3")]
pub static SOCKET_REVNAT: SkStorage<SocketRevNat> = SkStorage::new();

/// connect4's translation of a TCP socket, for getpeername4: a ring indexed by socket
/// cookie (`TcpRevNat`). Preallocated; a connect writes one element in place.
#[map(name = "EPX_TCPRN_V3")]
pub static TCP_REVNAT: Array<TcpRevNat> = Array::pinned(TCP_REVNAT_RING, 0);

/// Per-frontend counters, one element per frontend id (`Service::frontend_id`), one copy
/// per CPU: a program adds to its own CPU's copy, no atomics, no cache line shared between
/// CPUs. The agent allocates the ids and zeroes an element before handing its id out.
#[map(name = "EPX_STAT_V2")]
pub static STATS: PerCpuArray<FrontendStats> = PerCpuArray::pinned(DEFAULT_MAX_SERVICES, 0);

#[map(name = "EPX_EVT_V1")]
pub static EVENTS: PerCpuArray<u64> = PerCpuArray::pinned(Event::MAP_SLOTS, 0);

/// Written by the agent, read by proxyctl only. Declared here so that the loader creates
/// and pins it with the others.
#[map(name = "EPX_NAME_V3")]
pub static NAMES: HashMap<Frontend, ServiceName> =
    HashMap::pinned(DEFAULT_MAX_SERVICES, BPF_F_NO_PREALLOC);

/// The tc programs' IPv4 flows, both directions (LRU: the oldest flows make room).
#[map(name = "EPX_NAT_V1")]
pub static NAT: LruHashMap<NatKey, NatEntry> = LruHashMap::pinned(DEFAULT_MAX_NAT, 0);

/// The tc programs' IPv6 flows, as [`NAT`] for IPv4.
#[map(name = "EPX_NAT6_V1")]
pub static NAT6: LruHashMap<NatKey6, NatEntry6> = LruHashMap::pinned(DEFAULT_MAX_NAT, 0);

/// The interfaces the tc programs are attached to (by ifindex), with their source-NAT
/// addresses. A backend reached through one of them is on another node.
#[map(name = "EPX_IFACE_V3")]
pub static IFACES: HashMap<u32, IfaceInfo> = HashMap::pinned(256, 0);

/// loadBalancerSourceRanges of the LoadBalancer frontends that have them.
#[map(name = "EPX_SRCR_V3")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> = LpmTrie::pinned(65_536, 0);

/// Per-CPU scratch space for the tc programs' larger buffers (the route lookup's
/// parameters, the packet's addresses and the new flow's keys and entries, the headers
/// of a synthesized reply). On the stack they would not fit the
/// 512 bytes Linux 6.1 and older allow beside everything else. Not pinned: it holds
/// nothing from one program run to the next.
#[map(name = "EPX_SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// See [`SCRATCH`].
#[repr(C)]
pub struct Scratch {
    pub fib: aya_ebpf::bindings::bpf_fib_lookup,
    /// The packet and the new flow being set up, per family (`tc_nat::FlowState`).
    pub flow4: FlowState<u32>,
    pub flow6: FlowState<Addr>,
    /// Headers being built: an IP header, then an ICMP header with its quote (and for
    /// ICMPv6 the pseudo header's length and next header); or a TCP header with its
    /// pseudo header.
    pub words: [u32; SCRATCH_WORDS],
}

pub const SCRATCH_WORDS: usize = 32;

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

/// This CPU's counters of the frontend whose value is `service`.
#[inline(always)]
pub fn stats(service: &Service) -> Option<*mut FrontendStats> {
    STATS.get_ptr_mut(service.frontend_id)
}

/// Adds one to a counter of this CPU's copy.
#[inline(always)]
pub fn bump(counter: *mut u64) {
    // SAFETY: `counter` points into this CPU's copy of a per-CPU array element, valid for
    // this program run; no other CPU writes it. (On a preemptible kernel a program
    // preempted between the load and the store of this add, by another run on the same
    // CPU, can lose one count: a statistic, never a translation.)
    unsafe { *counter += 1 };
}
