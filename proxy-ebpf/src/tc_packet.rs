//! The packets the tc programs handle, read and rewritten in place: Ethernet + IPv4 (not
//! a fragment) or IPv6 (no extension header) + TCP or UDP. Every rewrite of an address or
//! port fixes the checksums with it: IPv4's header checksum and the L4 one; IPv6 has only
//! the L4 one, over its pseudo header's 128-bit addresses.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_csum_diff, bpf_skb_load_bytes},
    programs::TcContext,
};
use proxy_common::{Addr, Event, IPPROTO_TCP, IPPROTO_UDP, NatKeyOf};

use crate::maps::count;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const IP_CSUM: usize = ETH_HLEN + 10;
pub const IP_SADDR: usize = ETH_HLEN + 12;
pub const IP_DADDR: usize = ETH_HLEN + 16;
/// The IPv6 header: fixed 40 bytes, payload length at 4, next header at 6, source at 8,
/// destination at 24.
pub const IP6_HLEN: usize = 40;
pub const IP6_PLEN: usize = ETH_HLEN + 4;
pub const IP6_NEXTHDR: usize = ETH_HLEN + 6;
pub const IP6_SADDR: usize = ETH_HLEN + 8;
pub const IP6_DADDR: usize = ETH_HLEN + 24;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the programs read of a packet: TCP or UDP over IPv4 (`A = u32`) or IPv6
/// (`A = Addr`), addresses and ports in network byte order.
pub struct Packet<A> {
    pub l4: usize,
    pub proto: u8,
    pub saddr: A,
    pub daddr: A,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
}

impl<A: Copy> Packet<A> {
    /// The packet's flow, as its family's NAT map keys it.
    #[inline(always)]
    pub fn key(&self) -> NatKeyOf<A> {
        NatKeyOf {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

impl<A> Packet<A> {
    #[inline(always)]
    fn l4_csum(&self) -> usize {
        self.l4 + if self.proto == IPPROTO_TCP { 16 } else { 6 }
    }

    #[inline(always)]
    fn l4_flags(&self) -> u64 {
        if self.proto == IPPROTO_UDP {
            BPF_F_MARK_MANGLED_0 as u64
        } else {
            0
        }
    }
}

/// The packet's EtherType (host order), if it has one.
#[inline(always)]
pub fn ether_type(ctx: &TcContext) -> Option<u16> {
    let eth_proto: u16 = ctx.load(12).ok()?;
    Some(u16::from_be(eth_proto))
}

/// The L4 header at `l4`: its ports and TCP flags, into `p`.
#[inline(always)]
fn l4_header<A>(ctx: &TcContext, p: &mut Packet<A>, l4: usize, proto: u8) -> Option<()> {
    p.l4 = l4;
    p.proto = proto;
    p.sport = ctx.load(l4).ok()?;
    p.dport = ctx.load(l4 + 2).ok()?;
    p.tcp_flags = if proto == IPPROTO_TCP {
        ctx.load(l4 + 13).ok()?
    } else {
        0
    };
    Some(())
}

/// The headers of an IPv4 packet (the EtherType was checked) into `p`, if it is one the
/// programs handle; anything else is passed on.
#[inline(always)]
pub fn parse4(ctx: &TcContext, p: &mut Packet<u32>) -> Option<()> {
    let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let ihl = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let frag: u16 = ctx.load(ETH_HLEN + 6).ok()?;
    if u16::from_be(frag) & 0x3fff != 0 {
        return None;
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    p.saddr = ctx.load(IP_SADDR).ok()?;
    p.daddr = ctx.load(IP_DADDR).ok()?;
    l4_header(ctx, p, ETH_HLEN + ihl, proto)
}

/// Next-header values of the IPv6 extension headers (hop-by-hop, routing, fragment, ESP,
/// AH, destination options, mobility, HIP, shim6, and the two experimental ones).
#[inline(always)]
fn is_extension_header(next: u8) -> bool {
    matches!(
        next,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

/// Loads `N` bytes at `offset` straight into `to` (no copy through the stack).
#[inline(always)]
fn load_into<T>(ctx: &TcContext, offset: usize, to: &mut T) -> Option<()> {
    // SAFETY: `to` is `size_of::<T>()` writable bytes.
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            offset as u32,
            (to as *mut T).cast(),
            size_of::<T>() as u32,
        )
    };
    (ret == 0).then_some(())
}

/// The headers of an IPv6 packet (the EtherType was checked) into `p`, if its TCP or UDP
/// header follows the fixed header; anything else is passed on. A packet with extension
/// headers (a fragment among them) is left to the node's stack, counted as
/// [`Event::Ipv6ExtensionHeaders`] when `count_extensions`.
#[inline(always)]
pub fn parse6(ctx: &TcContext, p: &mut Packet<Addr>, count_extensions: bool) -> Option<()> {
    let version: u8 = ctx.load(ETH_HLEN).ok()?;
    if version >> 4 != 6 {
        return None;
    }
    let next: u8 = ctx.load(IP6_NEXTHDR).ok()?;
    if next != IPPROTO_TCP && next != IPPROTO_UDP {
        if count_extensions && is_extension_header(next) {
            count(Event::Ipv6ExtensionHeaders);
        }
        return None;
    }
    load_into(ctx, IP6_SADDR, &mut p.saddr)?;
    load_into(ctx, IP6_DADDR, &mut p.daddr)?;
    l4_header(ctx, p, ETH_HLEN + IP6_HLEN, next)
}

/// Replaces an IPv4 address (at `offset`) and fixes both checksums.
#[inline(always)]
pub fn set_addr4(
    ctx: &TcContext,
    p: &Packet<u32>,
    offset: usize,
    old: u32,
    new: u32,
) -> Option<()> {
    ctx.store(offset, &new, 0).ok()?;
    ctx.l3_csum_replace(IP_CSUM, old as u64, new as u64, 4)
        .ok()?;
    ctx.l4_csum_replace(
        p.l4_csum(),
        old as u64,
        new as u64,
        BPF_F_PSEUDO_HDR as u64 | p.l4_flags() | 4,
    )
    .ok()
}

/// Replaces an IPv6 address (at `offset`) and fixes the L4 checksum (its pseudo header
/// holds the address) by the difference of the two addresses' sums.
#[inline(always)]
pub fn set_addr6(
    ctx: &TcContext,
    p: &Packet<Addr>,
    offset: usize,
    old: Addr,
    new: Addr,
) -> Option<()> {
    let mut old = old;
    let mut new = new;
    ctx.store(offset, &new, 0).ok()?;
    // SAFETY: two 16-byte buffers on this frame.
    let diff = unsafe { bpf_csum_diff(old.as_mut_ptr(), 16, new.as_mut_ptr(), 16, 0) };
    if diff < 0 {
        return None;
    }
    // Size 0: `to` is a checksum difference to add, `from` must be 0.
    ctx.l4_csum_replace(
        p.l4_csum(),
        0,
        diff as u64,
        BPF_F_PSEUDO_HDR as u64 | p.l4_flags(),
    )
    .ok()
}

/// Replaces a port (at `offset`) and fixes the L4 checksum.
#[inline(always)]
pub fn set_port<A>(
    ctx: &TcContext,
    p: &Packet<A>,
    offset: usize,
    old: u16,
    new: u16,
) -> Option<()> {
    ctx.store(offset, &new, 0).ok()?;
    ctx.l4_csum_replace(p.l4_csum(), old as u64, new as u64, p.l4_flags() | 2)
        .ok()
}
