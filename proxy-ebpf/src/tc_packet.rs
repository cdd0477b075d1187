//! The packets the tc programs handle, read and rewritten in place: Ethernet + IPv4 +
//! TCP or UDP, not a fragment. Every rewrite of an address or port fixes the IP and
//! L4 checksums with it.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use proxy_common::{IPPROTO_TCP, IPPROTO_UDP, NatKey};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
pub const IP_CSUM: usize = ETH_HLEN + 10;
pub const IP_SADDR: usize = ETH_HLEN + 12;
pub const IP_DADDR: usize = ETH_HLEN + 16;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the programs read of a packet: IPv4, TCP or UDP, not a fragment.
pub struct Packet {
    pub l4: usize,
    pub proto: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
}

impl Packet {
    /// The packet's flow, as the NAT map keys it.
    #[inline(always)]
    pub fn key(&self) -> NatKey {
        NatKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

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

/// The packet's headers, if it is one the programs handle; anything else is passed on.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Option<Packet> {
    let eth_proto: u16 = ctx.load(12).ok()?;
    if u16::from_be(eth_proto) != ETH_P_IP {
        return None;
    }
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
    let l4 = ETH_HLEN + ihl;
    Some(Packet {
        l4,
        proto,
        saddr: ctx.load(IP_SADDR).ok()?,
        daddr: ctx.load(IP_DADDR).ok()?,
        sport: ctx.load(l4).ok()?,
        dport: ctx.load(l4 + 2).ok()?,
        tcp_flags: if proto == IPPROTO_TCP {
            ctx.load(l4 + 13).ok()?
        } else {
            0
        },
    })
}

/// Replaces an address (at `offset`) and fixes both checksums.
#[inline(always)]
fn set_addr(ctx: &TcContext, p: &Packet, offset: usize, old: u32, new: u32) -> Option<()> {
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

/// Replaces a port (at `offset`) and fixes the L4 checksum.
#[inline(always)]
fn set_port(ctx: &TcContext, p: &Packet, offset: usize, old: u16, new: u16) -> Option<()> {
    ctx.store(offset, &new, 0).ok()?;
    ctx.l4_csum_replace(p.l4_csum(), old as u64, new as u64, p.l4_flags() | 2)
        .ok()
}

/// The packet's destination becomes `addr:port`.
#[inline(always)]
pub fn set_destination(ctx: &TcContext, p: &Packet, addr: u32, port: u16) -> Option<()> {
    set_addr(ctx, p, IP_DADDR, p.daddr, addr)?;
    set_port(ctx, p, p.l4 + 2, p.dport, port)
}

/// The packet's source becomes `addr:port`.
#[inline(always)]
pub fn set_source(ctx: &TcContext, p: &Packet, addr: u32, port: u16) -> Option<()> {
    set_addr(ctx, p, IP_SADDR, p.saddr, addr)?;
    set_port(ctx, p, p.l4, p.sport, port)
}
