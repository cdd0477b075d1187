//! Types shared by the BPF programs (`proxy-ebpf`) and the agent and CLI (`proxy-user`).
//!
//! Every map key and value is `#[repr(C)]`, derives `bytemuck::Pod` (which refuses hidden
//! padding at compile time) and has its size asserted, so both sides agree on the layout
//! byte for byte. Addresses and ports are kept in network byte order, exactly as the kernel
//! hands them to a `cgroup/connect4` program, so the datapath never swaps bytes.
//!
//! Map names carry the layout version of their key and value (`_V1`, `_V2`). A change to a
//! type in this file that changes its size or meaning bumps [`LAYOUT_VERSION`] and the
//! names of the maps that hold it; the other maps keep their names (and their entries)
//! through an upgrade.
//!
//! Layout 2 indexes what the hot path reads by number rather than by key: a frontend's
//! slots are a region of one array (`Service::slot_base`, `Service::slots`) and its
//! counters an element of a per-CPU array (`Service::frontend_id`).
//!
//! Layout 3 (this one) holds both families in the same maps: every address of the socket
//! path is 16 bytes, an IPv4 one in its IPv4-mapped form (`::ffff:a.b.c.d`, [`v4_mapped`]),
//! the form the kernel itself gives a dual-stack socket. One key type, one set of maps and
//! one code path serve IPv4, IPv6 and a dual-stack socket connecting to an IPv4 Service
//! through its mapped address, which finds the IPv4 frontend by construction. The price is
//! key size (a frontend key of 20 bytes instead of 8). The tc flow tables are per family:
//! IPv4's (`NatKey`, `EPX_NAT_V1`) keeps its layout, IPv6's (`NatKey6`, `EPX_NAT6_V1`) sits
//! beside it, so an IPv4 packet's lookup costs what it did.
#![no_std]

use bytemuck::{Pod, Zeroable};

pub mod features;
pub mod names;

/// Version of the map layout. Part of every map name and of the pin directory layout.
pub const LAYOUT_VERSION: u32 = 3;

/// IP protocol numbers as the socket reports them.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Largest number of selection slots one frontend may have. The agent reduces weights by
/// their greatest common divisor and, only if the sum still exceeds this, scales them down.
pub const MAX_SLOTS_PER_FRONTEND: u32 = 4096;

/// Longest `namespace/name:port` stored for a frontend (longer names are truncated).
pub const SERVICE_NAME_LEN: usize = 192;

/// An IP address as the kernel's `user_ip6` holds it: four words in network byte order.
/// An IPv4 address is kept in its IPv4-mapped form ([`v4_mapped`]).
pub type Addr = [u32; 4];

/// The third word of an IPv4-mapped address (`::ffff:0:0/96`), as it sits in memory.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// `::ffff:a.b.c.d` of an IPv4 address in network byte order (as `user_ip4` holds it).
#[inline(always)]
pub const fn v4_mapped(addr: u32) -> Addr {
    [0, 0, V4_MAPPED_WORD, addr]
}

/// The IPv4 address (network byte order) of an IPv4-mapped address, `None` for another.
#[inline(always)]
pub const fn v4_of(addr: &Addr) -> Option<u32> {
    if addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_WORD {
        Some(addr[3])
    } else {
        None
    }
}

/// A service frontend: the address, port and protocol a client connects to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct Frontend {
    /// IPv6 address, or IPv4-mapped IPv4 address ([`Addr`]).
    pub addr: Addr,
    /// Port, network byte order.
    pub port: u16,
    /// [`IPPROTO_TCP`] or [`IPPROTO_UDP`].
    pub proto: u8,
    /// [`SCOPE_SOCKET`] for the frontend itself; [`SCOPE_EXTERNAL_LOCAL`] for the slot
    /// table the tc programs use for traffic from outside under externalTrafficPolicy
    /// Local (this node's endpoints only).
    pub scope: u8,
}
const _: () = assert!(size_of::<Frontend>() == 20);

/// `Frontend::scope`: the frontend as sockets (and Cluster-policy outside traffic) see it.
pub const SCOPE_SOCKET: u8 = 0;
/// `Frontend::scope`: the externalTrafficPolicy Local view of the same frontend.
pub const SCOPE_EXTERNAL_LOCAL: u8 = 1;

/// A backend address (endpoint IP and target port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct Backend {
    /// IPv6 address, or IPv4-mapped IPv4 address ([`Addr`]).
    pub addr: Addr,
    /// Port, network byte order.
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<Backend>() == 20);

/// Value of the frontends map: what a connect to a [`Frontend`] needs to pick a backend.
///
/// The slots are the region `[slot_base, slot_base + slots)` of the slots array. The agent
/// writes a new table into a free region, then replaces this value in one map update, so a
/// concurrent connect sees either the old or the new backend set, never a mix; the old
/// region is reused only after a quarantine that outlasts any program still reading it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Service {
    /// First slot of the table in the slots array.
    pub slot_base: u32,
    /// Number of slots in the table; 0 means "no usable endpoint": refuse.
    pub slots: u32,
    /// ClientIP affinity timeout in seconds; 0 means no affinity.
    pub affinity_timeout_s: u32,
    /// Number of backends (members), weight 0 included. For display only.
    pub backends: u32,
    /// Index of the frontend's counters in the per-CPU counters array (the same for a
    /// frontend's [`SCOPE_EXTERNAL_LOCAL`] table, which counts under its frontend).
    pub frontend_id: u32,
    /// [`SERVICE_KIND_MASK`] bits: how clients reach the frontend; [`SERVICE_LOCAL_ONLY`].
    pub flags: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<Service>() == 24);

/// `Service::flags`: the frontend kind (0 ClusterIP, 1 NodePort, 2 ExternalIP,
/// 3 LoadBalancer), for display.
pub const SERVICE_KIND_MASK: u8 = 0b11;
/// `Service::flags`: only node-local endpoints are used; none means "dropped", counted as
/// [`Event::NoLocalEndpoint`].
pub const SERVICE_LOCAL_ONLY: u8 = 0b100;
/// `Service::flags`: traffic from outside the node uses the frontend's
/// [`SCOPE_EXTERNAL_LOCAL`] table and keeps its source (externalTrafficPolicy Local).
pub const SERVICE_EXTERNAL_LOCAL: u8 = 0b1000;
/// `Service::flags`: loadBalancerSourceRanges apply: a new flow from outside the node is
/// accepted only from a client in the source ranges map for this frontend.
pub const SERVICE_SOURCE_RANGES: u8 = 0b1_0000;

/// Data of a source ranges map key (an LPM trie): the frontend, matched whole (160 bits),
/// then the client address ([`Addr`]: an IPv4 range is an IPv4-mapped prefix), matched
/// to the range's prefix length. Network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SourceRangeKey {
    pub frontend: Frontend,
    pub addr: Addr,
}
const _: () = assert!(size_of::<SourceRangeKey>() == 36);

/// Prefix length of a source range key covering `bits` of the client's 128-bit address
/// (an IPv4 range of length n covers 96 + n bits of the mapped address).
pub const fn source_range_prefix(bits: u8) -> u32 {
    160 + bits as u32
}

/// Key of a NAT flow table: one direction of a connection translated by the tc
/// programs, as the packet arrives (addresses and ports in network byte order). `A` is
/// the family's address: `u32` for IPv4 ([`NatKey`], `EPX_NAT_V1`), [`Addr`] for IPv6
/// ([`NatKey6`], `EPX_NAT6_V1`). Each family has its own table, so an IPv4 flow's key
/// stays 16 bytes (and its per-packet hash as cheap as before IPv6).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatKeyOf<A> {
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
/// The IPv4 flow table's key.
pub type NatKey = NatKeyOf<u32>;
/// The IPv6 flow table's key.
pub type NatKey6 = NatKeyOf<Addr>;
const _: () = assert!(size_of::<NatKey>() == 16);
const _: () = assert!(size_of::<NatKey6>() == 40);

/// Value of a NAT flow table (`A` as in [`NatKeyOf`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatEntryOf<A> {
    /// Forward: the backend (the new destination). Reverse: the frontend (the new source).
    pub to_addr: A,
    /// Forward: the source-NAT address (the new source), 0 to keep the client's.
    /// Reverse: the client (the new destination), 0 to keep it.
    pub alt_addr: A,
    pub to_port: u16,
    pub alt_port: u16,
    /// [`NAT_REVERSE`], [`NAT_SNAT`], [`NAT_ON_EGRESS`].
    pub flags: u8,
    /// [`TCP_SYN_SENT`], [`TCP_ESTABLISHED`], [`TCP_CLOSING`]; UDP: 0, or
    /// [`UDP_REPLIED`] in both directions' entries once a reply passed.
    pub state: u8,
    pub _pad: [u8; 2],
    /// `bpf_ktime_get_ns()` of the last packet.
    pub last_seen_ns: u64,
}
/// The IPv4 flow table's value.
pub type NatEntry = NatEntryOf<u32>;
/// The IPv6 flow table's value.
pub type NatEntry6 = NatEntryOf<Addr>;
const _: () = assert!(size_of::<NatEntry>() == 24);
const _: () = assert!(size_of::<NatEntry6>() == 48);

impl<A: Copy> NatKeyOf<A> {
    /// The reply direction's key of the flow this key (the client's direction) opened with
    /// `forward`: the backend toward the address it sees, the node's when the flow is
    /// source-NATed, else the client's. The tc programs store it, the agent deletes it: one
    /// definition for both.
    #[inline(always)]
    pub fn reply_key(&self, forward: &NatEntryOf<A>) -> Self {
        let snat = forward.flags & NAT_SNAT != 0;
        Self {
            saddr: forward.to_addr,
            daddr: if snat { forward.alt_addr } else { self.saddr },
            sport: forward.to_port,
            dport: if snat { forward.alt_port } else { self.sport },
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

impl<A: Copy> NatEntryOf<A> {
    /// The client's-direction key of the flow whose reply entry this is (a reply entry
    /// names the frontend and the client).
    #[inline(always)]
    pub fn client_key(&self, proto: u8) -> NatKeyOf<A> {
        NatKeyOf {
            saddr: self.alt_addr,
            daddr: self.to_addr,
            sport: self.alt_port,
            dport: self.to_port,
            proto,
            _pad: [0; 3],
        }
    }
}

// SAFETY: repr(C); the size asserts above prove there is no padding (the fields add up
// to the size) for both instances, and every bit pattern of each field is valid.
unsafe impl Zeroable for NatKey {}
unsafe impl Pod for NatKey {}
unsafe impl Zeroable for NatKey6 {}
unsafe impl Pod for NatKey6 {}
unsafe impl Zeroable for NatEntry {}
unsafe impl Pod for NatEntry {}
unsafe impl Zeroable for NatEntry6 {}
unsafe impl Pod for NatEntry6 {}

/// `NatEntry::flags`: the reply direction.
pub const NAT_REVERSE: u8 = 1;
/// `NatEntry::flags`: the flow is source-NATed to the node (a backend on another node).
pub const NAT_SNAT: u8 = 2;
/// `NatEntry::flags`: reverse entry applied by the egress program (the reply of a backend
/// on this node, routed by the kernel toward the client).
pub const NAT_ON_EGRESS: u8 = 4;
pub const TCP_SYN_SENT: u8 = 0;
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_CLOSING: u8 = 2;
/// `NatEntry::state` of a UDP flow a reply has passed: its idle timeout is then the stream
/// one (`DatapathConfig::udp_stream_timeout_ns`), as conntrack's is.
pub const UDP_REPLIED: u8 = 1;

/// The source ports of flows source-NATed to the node: above the kernel's default
/// ephemeral range (`net.ipv4.ip_local_port_range`, 32768-60999), so that the node's own
/// connections, which leave from the same address, never hold one (the backend's replies
/// would reach the wrong one). Where the node's range reaches into them, the agent adds
/// them to `net.ipv4.ip_local_reserved_ports`.
pub const SNAT_PORT_MIN: u16 = 61_000;
pub const SNAT_PORT_MAX: u16 = 65_535;

/// TCP flow timeouts, as Cilium's connection tracking uses them. A UDP flow's are the
/// agent's (`DatapathConfig`), conntrack's by default.
pub const NAT_TIMEOUT_SYN_NS: u64 = 60 * 1_000_000_000;
pub const NAT_TIMEOUT_TCP_NS: u64 = 21_600 * 1_000_000_000;
pub const NAT_TIMEOUT_CLOSING_NS: u64 = 10 * 1_000_000_000;

/// Value of the interfaces map (by ifindex): an interface the tc programs are attached
/// to, and the addresses a flow leaving through it is source-NATed to, one per family
/// (zero: the interface has none, and a flow of that family that would need source NAT
/// through it is dropped, counted as [`Event::NoSnatAddress`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct IfaceInfo {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// IPv6 address ([`Addr`]; not IPv4-mapped).
    pub addr6: Addr,
}
const _: () = assert!(size_of::<IfaceInfo>() == 20);

/// Key of the members map: is `backend` (still) a backend of `frontend`?
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct MemberKey {
    pub frontend: Frontend,
    pub backend: Backend,
}
const _: () = assert!(size_of::<MemberKey>() == 40);

/// Value of the members map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Member {
    /// Configured weight. 0 keeps the backend listed but out of new connections and of
    /// affinity.
    pub weight: u32,
    pub flags: u32,
}
const _: () = assert!(size_of::<Member>() == 8);

/// `Member::flags`: the backend serves but takes no new connections (weight 0): the UDP
/// flows already on it keep it.
pub const MEMBER_FLOWS_ONLY: u32 = 1;

impl Member {
    /// Whether a UDP flow on this backend keeps it.
    #[inline(always)]
    pub const fn keeps_flows(&self) -> bool {
        self.weight != 0 || self.flags & MEMBER_FLOWS_ONLY != 0
    }
}

/// Key of the affinity map: one client (a network namespace, i.e. a pod, or an address
/// outside the node) and one frontend.
///
/// The client, by who asks:
/// - a socket on the node: `client_netns` is its `bpf_get_netns_cookie()` (bit 63 clear,
///   the kernel's cookies count up from 1), `client_ip6` zero;
/// - an IPv4 client outside the node (tc): `client_netns` is [`AFFINITY_CLIENT_IP`] with
///   the address (network byte order) in the low 32 bits, `client_ip6` zero;
/// - an IPv6 client outside the node (tc): `client_netns` is [`AFFINITY_CLIENT_IP6`]
///   exactly, `client_ip6` the address.
///
/// The three never collide: bit 63 tells a cookie from an address, bit 62 an IPv4 client
/// from an IPv6 one (an IPv4 key's low 32 bits hold the address, bits 32..62 stay clear).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AffinityKey {
    pub client_netns: u64,
    pub frontend: Frontend,
    pub _pad: u32,
    /// An IPv6 client's address ([`AFFINITY_CLIENT_IP6`]), else zero.
    pub client_ip6: Addr,
}
const _: () = assert!(size_of::<AffinityKey>() == 48);

/// `AffinityKey::client_netns` of a client outside the node (the tc programs): this bit,
/// and the client's IPv4 address (network byte order) in the low 32 bits. A netns cookie
/// never has it set.
pub const AFFINITY_CLIENT_IP: u64 = 1 << 63;

/// `AffinityKey::client_netns` of an IPv6 client outside the node: these two bits and
/// nothing else; the address is in `AffinityKey::client_ip6`.
pub const AFFINITY_CLIENT_IP6: u64 = AFFINITY_CLIENT_IP | (1 << 62);

/// Value of the affinity map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Affinity {
    pub backend: Backend,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last connection that used the entry.
    pub last_used_ns: u64,
}
const _: () = assert!(size_of::<Affinity>() == 32);

/// Key of the reverse-translation LRU map: which frontend did this socket ask for, when it
/// is now talking to `backend`? Written by sendmsg4 (an unconnected UDP socket may reach
/// several backends), and by connect4 only on kernels without socket-local storage. Read
/// by recvmsg4 and getpeername4 when the socket's own storage does not answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct RevNatKey {
    /// `bpf_get_socket_cookie()` of the socket.
    pub socket_cookie: u64,
    pub backend: Backend,
    pub _pad: u32,
}
const _: () = assert!(size_of::<RevNatKey>() == 32);

/// Key of the UDP flow table: one unconnected UDP socket (its cookie) sending to one
/// frontend, as the socket named it. A cookie is never reused while the system runs, so
/// the flows of a closed socket are never matched again; they are the LRU's first victims.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct UdpFlowKey {
    /// `bpf_get_socket_cookie()` of the socket.
    pub socket_cookie: u64,
    pub frontend: Frontend,
    pub _pad: u32,
}
const _: () = assert!(size_of::<UdpFlowKey>() == 32);

/// A UDP flow's backend and clock, as conntrack keeps a UDP "connection": the datagrams
/// of one socket to one frontend go to `backend` until the flow has been idle longer than
/// its timeout (`DatapathConfig`: the short one until a reply came back, the stream one
/// after), or until the backend leaves the frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct UdpFlow {
    pub backend: Backend,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last datagram sent.
    pub last_sent_ns: u64,
    /// Of the last datagram received from the backend; 0 until one was.
    pub last_reply_ns: u64,
}
const _: () = assert!(size_of::<UdpFlow>() == 40);

impl UdpFlow {
    /// When the flow was last active, either way.
    pub const fn last_active_ns(&self) -> u64 {
        if self.last_reply_ns > self.last_sent_ns {
            self.last_reply_ns
        } else {
            self.last_sent_ns
        }
    }

    /// Its idle timeout under `config`: the stream timeout once a reply was seen.
    pub const fn timeout_ns(&self, config: &DatapathConfig) -> u64 {
        if self.last_reply_ns != 0 {
            config.udp_stream_timeout_ns
        } else {
            config.udp_timeout_ns
        }
    }
}

/// Settings the agent writes for the programs (an array of one). Zero fields mean the
/// defaults below (the programs may run before the agent wrote it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DatapathConfig {
    /// Idle timeout of a UDP flow no reply was seen on (conntrack's
    /// `nf_conntrack_udp_timeout`).
    pub udp_timeout_ns: u64,
    /// Idle timeout once replies were seen (`nf_conntrack_udp_timeout_stream`).
    pub udp_stream_timeout_ns: u64,
}
const _: () = assert!(size_of::<DatapathConfig>() == 16);

impl DatapathConfig {
    pub const DEFAULT_UDP_TIMEOUT_NS: u64 = 30_000_000_000;
    pub const DEFAULT_UDP_STREAM_TIMEOUT_NS: u64 = 120_000_000_000;

    /// These settings with each unset field at its default.
    pub const fn or_defaults(self) -> Self {
        Self {
            udp_timeout_ns: if self.udp_timeout_ns == 0 {
                Self::DEFAULT_UDP_TIMEOUT_NS
            } else {
                self.udp_timeout_ns
            },
            udp_stream_timeout_ns: if self.udp_stream_timeout_ns == 0 {
                Self::DEFAULT_UDP_STREAM_TIMEOUT_NS
            } else {
                self.udp_stream_timeout_ns
            },
        }
    }
}

/// What connect4 stores on the socket itself (socket-local storage): the frontend the
/// socket asked for and the backend it was given. recvmsg4 and getpeername4 show the
/// frontend where the socket's peer is that backend. Freed by the kernel with the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SocketRevNat {
    /// The frontend's address and port, network byte order.
    pub frontend_addr: Addr,
    /// The backend's address and port, network byte order.
    pub backend_addr: Addr,
    pub frontend_port: u16,
    pub backend_port: u16,
}
const _: () = assert!(size_of::<SocketRevNat>() == 36);

/// A TCP connect's translation, in a ring indexed by the socket's cookie (the low
/// [`TCP_REVNAT_RING_BITS`] bits): one plain store per connect, no allocation and no
/// lock, where socket-local storage allocates twice and takes a lock shared by every CPU.
/// getpeername4 reads it back for a socket whose cookie and peer match. A connected UDP
/// socket's translation is written here too (its own is on the socket): the agent reads
/// it to find the sockets connected to a backend that left (sock_diag does not hand out
/// a UDP socket's local storage). A record is
/// overwritten only by a later translated connect whose cookie lands on the same index,
/// so it lasts at least [`TCP_REVNAT_RING`] socket cookies handed out on the node after
/// its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct TcpRevNat {
    /// The cookie's bits above the index: the record is this socket's only if they match.
    pub cookie_high: u32,
    pub translation: SocketRevNat,
}
const _: () = assert!(size_of::<TcpRevNat>() == 40);

/// log2 of the TCP reverse-translation ring's size.
pub const TCP_REVNAT_RING_BITS: u32 = 20;
/// Records in the TCP reverse-translation ring (40 MiB).
pub const TCP_REVNAT_RING: u32 = 1 << TCP_REVNAT_RING_BITS;

impl TcpRevNat {
    /// The ring index of a socket cookie.
    #[inline(always)]
    pub fn index(cookie: u64) -> u32 {
        (cookie & (TCP_REVNAT_RING as u64 - 1)) as u32
    }

    /// The part of a socket cookie a record keeps to tell its socket from the others that
    /// share its index.
    #[inline(always)]
    pub fn cookie_high(cookie: u64) -> u32 {
        (cookie >> TCP_REVNAT_RING_BITS) as u32
    }
}

/// Per-frontend counters: one element per frontend id in a per-CPU array, so a CPU adds to
/// its own copy (no atomics, no shared cache line); readers sum over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FrontendStats {
    /// Connects and sends rewritten to a backend.
    pub translated: u64,
    /// Connects and sends refused because the frontend had no usable endpoint.
    pub no_endpoint: u64,
    /// Translations that reused a live affinity entry.
    pub affinity_hits: u64,
}
const _: () = assert!(size_of::<FrontendStats>() == 24);

/// The service a frontend belongs to, `namespace/name:port`, for `proxyctl`.
/// Not read by the datapath.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceName {
    pub len: u16,
    pub _pad: [u8; 6],
    pub bytes: [u8; SERVICE_NAME_LEN],
}
const _: () = assert!(size_of::<ServiceName>() == 200);

impl ServiceName {
    /// Stores `name`, truncated to [`SERVICE_NAME_LEN`] bytes at a character boundary.
    pub fn new(name: &str) -> Self {
        let mut end = name.len().min(SERVICE_NAME_LEN);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; SERVICE_NAME_LEN];
        bytes[..end].copy_from_slice(&name.as_bytes()[..end]);
        Self {
            len: end as u16,
            _pad: [0; 6],
            bytes,
        }
    }

    pub fn as_str(&self) -> &str {
        let len = (self.len as usize).min(SERVICE_NAME_LEN);
        core::str::from_utf8(&self.bytes[..len]).unwrap_or("<invalid name>")
    }
}

/// Longest agent version and cgroup path stored in [`AgentInfo`].
pub const AGENT_VERSION_LEN: usize = 32;
pub const AGENT_PATH_LEN: usize = 256;

/// Longest kernel release and load error stored in [`AgentInfo`].
pub const AGENT_KERNEL_LEN: usize = 64;
pub const AGENT_ERROR_LEN: usize = 256;

/// Who programs the maps and what the kernel gave it, for `proxyctl status` and
/// /metrics: written by the agent when it activates the datapath and after each sync,
/// never read by the datapath. One entry. Since no program reads it, its map is
/// versioned by its own name (`EPX_AGENT_V2`) rather than by [`LAYOUT_VERSION`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct AgentInfo {
    /// The agent's version, NUL-padded.
    pub version: [u8; AGENT_VERSION_LEN],
    /// The cgroup the socket programs are attached to, NUL-padded.
    pub cgroup: [u8; AGENT_PATH_LEN],
    pub pid: u32,
    /// How the tc programs are attached: `features::TC_ATTACH_*`.
    pub tc_attach: u32,
    /// Unix time (seconds) the agent started, and of its last successful sync.
    pub started_unix: u64,
    pub synced_unix: u64,
    /// [`features::KernelFeature`] bits: those probed, and those the kernel offers.
    pub features_probed: u32,
    pub features_present: u32,
    /// Bits (index in `names::ALL_PROGRAMS`) of the programs this kernel refused.
    pub programs_failed: u32,
    pub _pad: u32,
    /// The kernel's release (`uname -r`), NUL-padded.
    pub kernel: [u8; AGENT_KERNEL_LEN],
    /// Why the first refused program was refused, in the kernel's words, NUL-padded.
    pub load_error: [u8; AGENT_ERROR_LEN],
}
const _: () = assert!(size_of::<AgentInfo>() == 648);

impl AgentInfo {
    /// `text` NUL-padded into a fixed field, truncated at a character boundary.
    pub fn field<const N: usize>(text: &str) -> [u8; N] {
        let mut end = text.len().min(N);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let mut out = [0u8; N];
        out[..end].copy_from_slice(&text.as_bytes()[..end]);
        out
    }

    /// A NUL-padded field as text.
    pub fn text(field: &[u8]) -> &str {
        let len = field.iter().position(|b| *b == 0).unwrap_or(field.len());
        core::str::from_utf8(&field[..len]).unwrap_or("<invalid>")
    }
}

/// Datapath events counted per CPU in the events map, indexed by the discriminant.
/// Every exit of a program other than "not a service, pass" is one of these.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A connect or send was rewritten to a backend.
    Translated = 0,
    /// Refused with ECONNREFUSED: the frontend has no usable endpoint.
    NoEndpoint = 1,
    /// A slot the frontend said existed was out of the slots array or empty; retried once
    /// with the frontend's value read again.
    SlotMissing = 2,
    /// An affinity entry was found but its backend is no longer a member, or it expired.
    AffinityStale = 3,
    /// The reverse-translation entry could not be stored (replies will show the backend).
    RevNatStoreFailed = 4,
    /// The affinity entry could not be stored.
    AffinityStoreFailed = 5,
    /// A reply source or peer address was rewritten back to the frontend.
    ReverseTranslated = 6,
    /// Refused: the frontend uses node-local endpoints only and this node has none.
    NoLocalEndpoint = 7,
    /// tc: a new flow from outside the node translated to a backend.
    ExternalTranslated = 8,
    /// tc: a packet of a known flow translated (either direction).
    ExternalFlowPacket = 9,
    /// tc: no endpoint for a frontend reached from outside: TCP reset sent / packet
    /// passed to the node's stack to be refused.
    ExternalNoEndpoint = 10,
    /// tc: externalTrafficPolicy Local and no endpoint on this node: dropped.
    ExternalNoLocalEndpoint = 11,
    /// tc: the flow could not be stored (or no source port was free): dropped.
    NatStoreFailed = 12,
    /// tc: the route to the backend or client was not found: dropped.
    FibLookupFailed = 13,
    /// tc: a client outside the frontend's loadBalancerSourceRanges: dropped.
    SourceRangeDropped = 14,
    /// tc: rewriting a packet's addresses, ports or checksums failed: dropped.
    RewriteFailed = 15,
    /// tc: the TCP reset or ICMP port unreachable answering a packet for a frontend
    /// without endpoints could not be built: the packet was dropped unanswered.
    ReplyFailed = 16,
    /// tc: the kernel refused to redirect a packet (a redirect helper returned
    /// TC_ACT_SHOT): dropped.
    RedirectFailed = 17,
    /// tc: an IPv6 packet with extension headers before its TCP or UDP header: passed to
    /// the node's stack untranslated.
    Ipv6ExtensionHeaders = 18,
    /// tc: a flow needed source NAT through an interface without an address of its
    /// family: dropped.
    NoSnatAddress = 19,
    /// An unconnected UDP socket's flow had been idle past its timeout: its next datagram
    /// chose a backend anew.
    UdpFlowExpired = 20,
    /// An unconnected UDP socket's flow named a backend that left the frontend (removed,
    /// no longer ready, weight 0): its next datagram chose a live one.
    UdpFlowBackendLeft = 21,
    /// A UDP flow could not be stored: its datagrams are balanced one by one.
    UdpFlowStoreFailed = 22,
}

impl Event {
    pub const COUNT: u32 = 23;
    /// Size of the events map: room for events added later without a layout change.
    pub const MAP_SLOTS: u32 = 32;
    pub const ALL: [Event; Event::COUNT as usize] = [
        Event::Translated,
        Event::NoEndpoint,
        Event::SlotMissing,
        Event::AffinityStale,
        Event::RevNatStoreFailed,
        Event::AffinityStoreFailed,
        Event::ReverseTranslated,
        Event::NoLocalEndpoint,
        Event::ExternalTranslated,
        Event::ExternalFlowPacket,
        Event::ExternalNoEndpoint,
        Event::ExternalNoLocalEndpoint,
        Event::NatStoreFailed,
        Event::FibLookupFailed,
        Event::SourceRangeDropped,
        Event::RewriteFailed,
        Event::ReplyFailed,
        Event::RedirectFailed,
        Event::Ipv6ExtensionHeaders,
        Event::NoSnatAddress,
        Event::UdpFlowExpired,
        Event::UdpFlowBackendLeft,
        Event::UdpFlowStoreFailed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Event::Translated => "translated",
            Event::NoEndpoint => "rejected_no_endpoint",
            Event::SlotMissing => "slot_missing_retried",
            Event::AffinityStale => "affinity_stale",
            Event::RevNatStoreFailed => "revnat_store_failed",
            Event::AffinityStoreFailed => "affinity_store_failed",
            Event::ReverseTranslated => "reverse_translated",
            Event::NoLocalEndpoint => "dropped_no_local_endpoint",
            Event::ExternalTranslated => "external_translated",
            Event::ExternalFlowPacket => "external_flow_packets",
            Event::ExternalNoEndpoint => "external_rejected_no_endpoint",
            Event::ExternalNoLocalEndpoint => "external_dropped_no_local_endpoint",
            Event::NatStoreFailed => "external_nat_store_failed",
            Event::FibLookupFailed => "external_no_route",
            Event::SourceRangeDropped => "external_dropped_source_range",
            Event::RewriteFailed => "external_dropped_rewrite_failed",
            Event::ReplyFailed => "external_dropped_reply_failed",
            Event::RedirectFailed => "external_dropped_redirect_failed",
            Event::Ipv6ExtensionHeaders => "external_ipv6_extension_headers_passed",
            Event::NoSnatAddress => "external_dropped_no_snat_address",
            Event::UdpFlowExpired => "udp_flow_expired",
            Event::UdpFlowBackendLeft => "udp_flow_backend_left",
            Event::UdpFlowStoreFailed => "udp_flow_store_failed",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: each type is repr(C), Pod (no padding, any bit pattern valid) and 'static.
    unsafe impl aya::Pod for Frontend {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for SocketRevNat {}
    unsafe impl aya::Pod for UdpFlowKey {}
    unsafe impl aya::Pod for UdpFlow {}
    unsafe impl aya::Pod for DatapathConfig {}
    unsafe impl aya::Pod for TcpRevNat {}
    unsafe impl aya::Pod for MemberKey {}
    unsafe impl aya::Pod for Member {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for Affinity {}
    unsafe impl aya::Pod for RevNatKey {}
    unsafe impl aya::Pod for FrontendStats {}
    unsafe impl aya::Pod for AgentInfo {}
    unsafe impl aya::Pod for NatKey {}
    unsafe impl aya::Pod for NatEntry {}
    unsafe impl aya::Pod for NatKey6 {}
    unsafe impl aya::Pod for NatEntry6 {}
    unsafe impl aya::Pod for IfaceInfo {}
    unsafe impl aya::Pod for SourceRangeKey {}
    unsafe impl aya::Pod for ServiceName {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_sharing_a_ring_index_are_told_apart() {
        let cookie = 0x1234_5678_9abc_u64;
        let later = cookie + u64::from(TCP_REVNAT_RING);
        assert_eq!(TcpRevNat::index(cookie), TcpRevNat::index(later));
        assert_ne!(
            TcpRevNat::cookie_high(cookie),
            TcpRevNat::cookie_high(later)
        );
        assert_ne!(TcpRevNat::index(cookie), TcpRevNat::index(cookie + 1));
        assert!(TcpRevNat::index(u64::MAX) < TCP_REVNAT_RING);
    }
}
