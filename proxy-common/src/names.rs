//! Names of maps and programs, shared by the BPF object and the loader. Map names are at
//! most 15 bytes (the kernel's limit) and end in the layout version of their key and value:
//! layout 2 renamed the maps it changed (`_V2`), layout 3 those whose keys or values now
//! hold 16-byte addresses (`_V3`); the others kept their names, and so their entries,
//! through each upgrade.

/// Frontend -> Service (slot region and frontend id).
pub const MAP_SERVICES: &str = "EPX_SVC_V3";
/// Slot number -> Backend (array): every frontend's table is a region of it.
pub const MAP_SLOTS: &str = "EPX_SLOT_V3";
/// MemberKey -> Member.
pub const MAP_MEMBERS: &str = "EPX_MEMB_V3";
/// AffinityKey -> Affinity (LRU).
pub const MAP_AFFINITY: &str = "EPX_AFF_V3";
/// RevNatKey -> Frontend (LRU): sendmsg4's and sendmsg6's translations, and connect's
/// where the kernel has no socket-local storage for it.
pub const MAP_REVNAT: &str = "EPX_RNAT_V3";
/// Socket -> SocketRevNat (socket-local storage): connect4's translation, kept on the
/// socket and freed with it. Holds no entries of its own to count or list.
pub const MAP_SOCKET_REVNAT: &str = "EPX_SKRN_V3";
/// Index -> TcpRevNat (array, a ring indexed by socket cookie): connect4's translation of
/// a TCP socket, for getpeername4.
pub const MAP_TCP_REVNAT: &str = "EPX_TCPRN_V3";
/// Frontend id -> FrontendStats (per-CPU array, one element per frontend id).
pub const MAP_STATS: &str = "EPX_STAT_V2";
/// Event index -> u64 (per-CPU array).
pub const MAP_EVENTS: &str = "EPX_EVT_V1";
/// Frontend -> ServiceName.
pub const MAP_NAMES: &str = "EPX_NAME_V3";

/// 0 -> AgentInfo (array of one). Versioned on its own: no program reads it.
pub const MAP_AGENT: &str = "EPX_AGENT_V2";
/// NatKey -> NatEntry (LRU): the tc programs' IPv4 flows.
pub const MAP_NAT: &str = "EPX_NAT_V1";
/// NatKey6 -> NatEntry6 (LRU): the tc programs' IPv6 flows.
pub const MAP_NAT6: &str = "EPX_NAT6_V1";
/// ifindex -> IfaceInfo: the interfaces the tc programs are attached to, with their
/// source-NAT addresses of both families (layout 3 added the IPv6 one).
pub const MAP_IFACES: &str = "EPX_IFACE_V3";

/// LPM trie {frontend, client prefix} -> 1: loadBalancerSourceRanges.
pub const MAP_SOURCE_RANGES: &str = "EPX_SRCR_V3";

/// UdpFlowKey -> UdpFlow (LRU): each unconnected UDP socket's backend per frontend.
pub const MAP_UDP_FLOWS: &str = "EPX_UDPF_V1";
/// 0 -> DatapathConfig (array of one): the agent's settings for the programs.
pub const MAP_CONFIG: &str = "EPX_CONF_V1";

/// Every map, for cleanup and status.
pub const ALL_MAPS: [&str; 17] = [
    MAP_SERVICES,
    MAP_SLOTS,
    MAP_MEMBERS,
    MAP_AFFINITY,
    MAP_REVNAT,
    MAP_SOCKET_REVNAT,
    MAP_TCP_REVNAT,
    MAP_STATS,
    MAP_EVENTS,
    MAP_NAMES,
    MAP_AGENT,
    MAP_NAT,
    MAP_NAT6,
    MAP_IFACES,
    MAP_SOURCE_RANGES,
    MAP_UDP_FLOWS,
    MAP_CONFIG,
];

/// The tc programs, attached to each `--interfaces` device (link pins
/// `link_epx_tc_ingress@IFNAME`, `link_epx_tc_egress@IFNAME`).
pub const PROG_TC_INGRESS: &str = "epx_tc_ingress";
pub const PROG_TC_EGRESS: &str = "epx_tc_egress";

/// Default capacity of each NAT flow table, IPv4's and IPv6's (two entries per flow).
pub const DEFAULT_MAX_NAT: u32 = 262_144;

/// The cgroup socket programs: (program name in the object, attach point, link pin name).
pub const PROG_CONNECT4: &str = "epx_connect4";
pub const PROG_SENDMSG4: &str = "epx_sendmsg4";
pub const PROG_RECVMSG4: &str = "epx_recvmsg4";
pub const PROG_GETPEERNAME4: &str = "epx_getpeername4";

pub const PROG_CONNECT6: &str = "epx_connect6";
pub const PROG_SENDMSG6: &str = "epx_sendmsg6";
pub const PROG_RECVMSG6: &str = "epx_recvmsg6";
pub const PROG_GETPEERNAME6: &str = "epx_getpeername6";

pub const ALL_SOCK_PROGRAMS: [&str; 8] = [
    PROG_CONNECT4,
    PROG_SENDMSG4,
    PROG_RECVMSG4,
    PROG_GETPEERNAME4,
    PROG_CONNECT6,
    PROG_SENDMSG6,
    PROG_RECVMSG6,
    PROG_GETPEERNAME6,
];

/// The variants of connect4 and sendmsg4 for kernels without `bpf_set_retval` (before
/// 5.18): a frontend without endpoints is refused with EPERM. Loaded under the name and
/// link pin of the program they stand in for.
pub const PROG_CONNECT4_EPERM: &str = "epx_connect4_eperm";
pub const PROG_SENDMSG4_EPERM: &str = "epx_sendmsg4_eperm";
pub const PROG_CONNECT6_EPERM: &str = "epx_connect6_eperm";
pub const PROG_SENDMSG6_EPERM: &str = "epx_sendmsg6_eperm";

/// The variants for kernels without `bpf_sk_storage_get` in cgroup sock_addr programs:
/// connect4 records its translation in the reverse-translation LRU (as layout 1 did), and
/// recvmsg4 and getpeername4 read only that. Loaded under the name and link pin of the
/// program they stand in for.
pub const PROG_CONNECT4_LRU: &str = "epx_connect4_lru";
pub const PROG_CONNECT4_EPERM_LRU: &str = "epx_connect4_eperm_lru";
pub const PROG_RECVMSG4_LRU: &str = "epx_recvmsg4_lru";
pub const PROG_GETPEERNAME4_LRU: &str = "epx_getpeername4_lru";
pub const PROG_CONNECT6_LRU: &str = "epx_connect6_lru";
pub const PROG_CONNECT6_EPERM_LRU: &str = "epx_connect6_eperm_lru";
pub const PROG_RECVMSG6_LRU: &str = "epx_recvmsg6_lru";
pub const PROG_GETPEERNAME6_LRU: &str = "epx_getpeername6_lru";

/// Every program, in the order of `AgentInfo::programs_failed`'s bits (the IPv6 socket
/// programs came last, so the bits of the others kept their places).
pub const ALL_PROGRAMS: [&str; 10] = [
    PROG_CONNECT4,
    PROG_SENDMSG4,
    PROG_RECVMSG4,
    PROG_GETPEERNAME4,
    PROG_TC_INGRESS,
    PROG_TC_EGRESS,
    PROG_CONNECT6,
    PROG_SENDMSG6,
    PROG_RECVMSG6,
    PROG_GETPEERNAME6,
];

/// Default capacities. The LRU maps and the arrays are preallocated by the kernel (the
/// counters array once per CPU: 24 bytes x services x CPUs); the hash maps are created with
/// `BPF_F_NO_PREALLOC` so that an update never recycles an element a reader may still hold,
/// and cost memory only for what is used.
pub const DEFAULT_MAX_SERVICES: u32 = 65_536;
pub const DEFAULT_MAX_SLOTS: u32 = 1 << 20;
pub const DEFAULT_MAX_MEMBERS: u32 = 1 << 19;
pub const DEFAULT_MAX_AFFINITY: u32 = 65_536;
pub const DEFAULT_MAX_REVNAT: u32 = 131_072;
pub const DEFAULT_MAX_UDP_FLOWS: u32 = 131_072;
