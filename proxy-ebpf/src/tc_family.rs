//! What differs between IPv4 and IPv6 for the tc programs, behind one trait implemented
//! by each family's address type (`u32` and `Addr`, network byte order): the flow table,
//! address rewrites and their checksums, the route lookup, the answer to a frontend
//! without endpoints, and how an address shows in the shared maps. The flow logic in
//! `tc_nat` is written once over it.

use aya_ebpf::{maps::LruHashMap, programs::TcContext};
use proxy_common::{
    AFFINITY_CLIENT_IP, AFFINITY_CLIENT_IP6, Addr, IfaceInfo, NatEntryOf, NatKeyOf, v4_mapped,
    v4_of,
};

use crate::{
    maps::{NAT, NAT6, Scratch},
    tc_forward::{Route, route4, route6},
    tc_nat::FlowState,
    tc_packet::{IP_DADDR, IP_SADDR, IP6_DADDR, IP6_SADDR, Packet, set_addr4, set_addr6, set_port},
    tc_reply,
};

pub trait Family: Copy + PartialEq + 'static {
    /// The unspecified address: "none" in a flow entry.
    const NONE: Self;
    /// Where the source and destination addresses sit in the packet.
    const SADDR: usize;
    const DADDR: usize;

    /// This CPU's scratch space for the family's packet and new flow.
    fn state(scratch: *mut Scratch) -> *mut FlowState<Self>;
    /// The family's flow table.
    fn nat() -> &'static LruHashMap<NatKeyOf<Self>, NatEntryOf<Self>>;
    /// The address as the shared maps hold it (IPv4-mapped for IPv4).
    fn mapped(self) -> Addr;
    /// A backend address of this family, from the shared maps' form.
    fn of_mapped(addr: &Addr) -> Option<Self>;
    /// An interface's source-NAT address of this family, `NONE` if it has none.
    fn snat_addr(iface: &IfaceInfo) -> Self;
    /// The `AffinityKey::client_netns` and `client_ip6` of a client outside the node.
    fn affinity_client(self) -> (u64, Addr);
    /// A loopback destination: never a frontend reached from outside.
    fn is_loopback(self) -> bool;
    /// Replaces the address at `offset` (`old` there now) and fixes the checksums.
    fn set_addr(
        ctx: &TcContext,
        p: &Packet<Self>,
        offset: usize,
        old: Self,
        new: Self,
    ) -> Option<()>;
    /// The route of a packet from `saddr` to `daddr`.
    fn route(ctx: &TcContext, saddr: Self, daddr: Self) -> Option<Route>;
    /// Answers a packet for a frontend without endpoints (TCP reset, ICMP unreachable).
    fn refuse(ctx: &TcContext, p: &Packet<Self>) -> i32;
}

impl Family for u32 {
    const NONE: Self = 0;
    const SADDR: usize = IP_SADDR;
    const DADDR: usize = IP_DADDR;

    #[inline(always)]
    fn state(scratch: *mut Scratch) -> *mut FlowState<Self> {
        // SAFETY: a pointer into a map value, valid for the program run.
        unsafe { &raw mut (*scratch).flow4 }
    }

    #[inline(always)]
    fn nat() -> &'static LruHashMap<NatKeyOf<Self>, NatEntryOf<Self>> {
        &NAT
    }
    #[inline(always)]
    fn mapped(self) -> Addr {
        v4_mapped(self)
    }
    #[inline(always)]
    fn of_mapped(addr: &Addr) -> Option<Self> {
        v4_of(addr)
    }
    #[inline(always)]
    fn snat_addr(iface: &IfaceInfo) -> Self {
        iface.addr
    }
    #[inline(always)]
    fn affinity_client(self) -> (u64, Addr) {
        (AFFINITY_CLIENT_IP | self as u64, [0; 4])
    }
    #[inline(always)]
    fn is_loopback(self) -> bool {
        self.to_ne_bytes()[0] == 127
    }
    #[inline(always)]
    fn set_addr(
        ctx: &TcContext,
        p: &Packet<Self>,
        offset: usize,
        old: Self,
        new: Self,
    ) -> Option<()> {
        set_addr4(ctx, p, offset, old, new)
    }
    #[inline(always)]
    fn route(ctx: &TcContext, saddr: Self, daddr: Self) -> Option<Route> {
        route4(ctx, saddr, daddr)
    }
    #[inline(always)]
    fn refuse(ctx: &TcContext, p: &Packet<Self>) -> i32 {
        tc_reply::refuse4(ctx, p)
    }
}

/// `::1` as it sits in memory.
const LOOPBACK6: Addr = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];

impl Family for Addr {
    const NONE: Self = [0; 4];
    const SADDR: usize = IP6_SADDR;
    const DADDR: usize = IP6_DADDR;

    #[inline(always)]
    fn state(scratch: *mut Scratch) -> *mut FlowState<Self> {
        // SAFETY: as for IPv4.
        unsafe { &raw mut (*scratch).flow6 }
    }

    #[inline(always)]
    fn nat() -> &'static LruHashMap<NatKeyOf<Self>, NatEntryOf<Self>> {
        &NAT6
    }
    #[inline(always)]
    fn mapped(self) -> Addr {
        self
    }
    #[inline(always)]
    fn of_mapped(addr: &Addr) -> Option<Self> {
        // The frontend is IPv6, so are its backends (the agent writes each family's
        // own); an IPv4-mapped one is not an IPv6 backend.
        v4_of(addr).is_none().then_some(*addr)
    }
    #[inline(always)]
    fn snat_addr(iface: &IfaceInfo) -> Self {
        iface.addr6
    }
    #[inline(always)]
    fn affinity_client(self) -> (u64, Addr) {
        (AFFINITY_CLIENT_IP6, self)
    }
    #[inline(always)]
    fn is_loopback(self) -> bool {
        self == LOOPBACK6
    }
    #[inline(always)]
    fn set_addr(
        ctx: &TcContext,
        p: &Packet<Self>,
        offset: usize,
        old: Self,
        new: Self,
    ) -> Option<()> {
        set_addr6(ctx, p, offset, old, new)
    }
    #[inline(always)]
    fn route(ctx: &TcContext, saddr: Self, daddr: Self) -> Option<Route> {
        route6(ctx, saddr, daddr)
    }
    #[inline(always)]
    fn refuse(ctx: &TcContext, p: &Packet<Self>) -> i32 {
        tc_reply::refuse6(ctx, p)
    }
}

/// The packet's destination becomes `addr:port`.
#[inline(always)]
pub fn set_destination<A: Family>(
    ctx: &TcContext,
    p: &Packet<A>,
    addr: A,
    port: u16,
) -> Option<()> {
    A::set_addr(ctx, p, A::DADDR, p.daddr, addr)?;
    set_port(ctx, p, p.l4 + 2, p.dport, port)
}

/// The packet's source becomes `addr:port`.
#[inline(always)]
pub fn set_source<A: Family>(ctx: &TcContext, p: &Packet<A>, addr: A, port: u16) -> Option<()> {
    A::set_addr(ctx, p, A::SADDR, p.saddr, addr)?;
    set_port(ctx, p, p.l4, p.sport, port)
}
