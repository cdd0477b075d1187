//! Answers the tc programs synthesize for a frontend without endpoints, as kube-proxy's
//! REJECT gives: a TCP reset for a SYN, an ICMP (IPv4) or ICMPv6 (IPv6) port unreachable
//! for UDP. The packet is turned into its answer in place and sent back out of the
//! interface it came in by.
//!
//! The headers are built in the per-CPU scratch space (`maps::scratch`), not on the
//! stack: beside the flow logic they would pass the 512 bytes of stack that Linux 6.1
//! and older allow a program and the functions it calls, together.

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    helpers::{bpf_csum_diff, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use proxy_common::{Addr, Event, IPPROTO_TCP};

use crate::{
    maps::{SCRATCH_WORDS, scratch},
    tc_forward::{back, dropped},
    tc_packet::{
        ETH_HLEN, IP_CSUM, IP_DADDR, IP_SADDR, IP6_DADDR, IP6_HLEN, IP6_PLEN, IP6_SADDR, Packet,
        TCP_ACK, TCP_RST,
    },
};

/// IPv6's next header of ICMPv6.
const IPPROTO_ICMPV6: u8 = 58;

/// Answers an IPv4 `p` and sends the answer back; a packet that cannot be answered is
/// dropped. Not inlined, for the same reason as `tc_nat::new_flow`: its own stack frame.
#[inline(never)]
pub fn refuse4(ctx: &TcContext, p: &Packet<u32>) -> i32 {
    let answered = if p.proto == IPPROTO_TCP {
        reset(ctx, p)
    } else {
        port_unreachable(ctx, p)
    };
    sent_back(ctx, answered)
}

/// [`refuse4`] for IPv6.
#[inline(never)]
pub fn refuse6(ctx: &TcContext, p: &Packet<Addr>) -> i32 {
    let answered = if p.proto == IPPROTO_TCP {
        reset6(ctx, p)
    } else {
        port_unreachable6(ctx, p)
    };
    sent_back(ctx, answered)
}

#[inline(always)]
fn sent_back(ctx: &TcContext, answered: Option<()>) -> i32 {
    if answered.is_none() {
        return dropped(Event::ReplyFailed);
    }
    back(ctx)
}

/// `N` words of this CPU's scratch space, from word `at`.
#[inline(always)]
fn words<const N: usize>(at: usize) -> Option<&'static mut [u32; N]> {
    const { assert!(N <= SCRATCH_WORDS) };
    if at + N > SCRATCH_WORDS {
        return None;
    }
    // SAFETY: a value pointer from a successful lookup, written only by this CPU and
    // valid for the program run; `at + N` is within `words`.
    Some(unsafe { &mut *((&raw mut (*scratch()?).words) as *mut u32).add(at).cast() })
}

/// One's-complement sum of `len` bytes at `words`, seeded, folded to the 16-bit checksum.
#[inline(always)]
fn checksum(words: *mut u32, len: u32, seed: u32) -> Option<u16> {
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, words, len, seed) };
    if sum < 0 {
        return None;
    }
    let mut folded = sum as u64;
    folded = (folded & 0xffff) + (folded >> 16);
    folded = (folded & 0xffff) + (folded >> 16);
    Some(!(folded as u16))
}

/// The Ethernet addresses swapped, so the answer goes back to the sender's next hop.
/// (Not `rotate_left`: core's rotation keeps a 256-byte buffer on the stack.)
#[inline(always)]
fn swap_macs(ctx: &TcContext) -> Option<()> {
    let [destination, source]: [[u8; 6]; 2] = ctx.load(0).ok()?;
    ctx.store(0, &[source, destination], 0).ok()
}

/// Turns a UDP packet into the ICMP port unreachable answering it: a new IP header and
/// ICMP header in front of the packet's own IP header and first 8 bytes.
#[inline(always)]
fn port_unreachable(ctx: &TcContext, p: &Packet<u32>) -> Option<()> {
    const IP_LEN: usize = 20;
    const ICMP_LEN: usize = 8;
    const QUOTE_LEN: usize = IP_LEN + 8;
    // The quoted part: the original IP header (no options) and the UDP header.
    if p.l4 != ETH_HLEN + IP_LEN {
        return None;
    }
    // Scratch words: 0..5 the new IP header, 5..7 the ICMP header, 7..14 the quote.
    let ip = words::<5>(0)?;
    let icmp = words::<9>(5)?;
    // SAFETY: 28 bytes into the 36 of `icmp` from its third word on.
    let quoted = unsafe { icmp.as_mut_ptr().add(2) };
    if unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            ETH_HLEN as u32,
            quoted.cast(),
            QUOTE_LEN as u32,
        )
    } != 0
    {
        return None;
    }
    ctx.adjust_room((IP_LEN + ICMP_LEN) as i32, BPF_ADJ_ROOM_MAC, 0)
        .ok()?;
    let total = ETH_HLEN + IP_LEN + ICMP_LEN + QUOTE_LEN;
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, total as u32, 0) } != 0 {
        return None;
    }
    swap_macs(ctx)?;
    let ip_len = ((IP_LEN + ICMP_LEN + QUOTE_LEN) as u16).to_be_bytes();
    ip[0] = u32::from_ne_bytes([0x45, 0, ip_len[0], ip_len[1]]);
    ip[1] = 0;
    // TTL 64, protocol ICMP, checksum (filled below).
    ip[2] = u32::from_ne_bytes([64, 1, 0, 0]);
    ip[3] = p.daddr;
    ip[4] = p.saddr;
    let ip_sum = checksum(ip.as_mut_ptr(), IP_LEN as u32, 0)?.to_ne_bytes();
    ip[2] = u32::from_ne_bytes([64, 1, ip_sum[0], ip_sum[1]]);
    // Type 3 (destination unreachable), code 3 (port unreachable), then the quote.
    icmp[0] = u32::from_ne_bytes([3, 3, 0, 0]);
    icmp[1] = 0;
    let icmp_sum = checksum(icmp.as_mut_ptr(), (ICMP_LEN + QUOTE_LEN) as u32, 0)?.to_ne_bytes();
    icmp[0] = u32::from_ne_bytes([3, 3, icmp_sum[0], icmp_sum[1]]);
    ctx.store(ETH_HLEN, ip, 0).ok()?;
    ctx.store(ETH_HLEN + IP_LEN, icmp, 0).ok()
}

/// Turns a TCP SYN into the RST|ACK answering it: addresses, ports and MACs swapped, no
/// payload or options.
#[inline(always)]
fn reset(ctx: &TcContext, p: &Packet<u32>) -> Option<()> {
    let seq: u32 = ctx.load(p.l4 + 4).ok()?;
    swap_macs(ctx)?;
    // Swapping the addresses leaves the IP checksum as it was; the length changes.
    ctx.store(IP_SADDR, &p.daddr, 0).ok()?;
    ctx.store(IP_DADDR, &p.saddr, 0).ok()?;
    let ip_len_off = ETH_HLEN + 2;
    let old_len: u16 = ctx.load(ip_len_off).ok()?;
    let new_len = ((p.l4 - ETH_HLEN + 20) as u16).to_be();
    ctx.store(ip_len_off, &new_len, 0).ok()?;
    ctx.l3_csum_replace(IP_CSUM, old_len as u64, new_len as u64, 2)
        .ok()?;
    // Scratch words: 0..3 the pseudo header, 3..8 the TCP header.
    let pseudo = words::<3>(0)?;
    let tcp = words::<5>(3)?;
    pseudo[0] = p.daddr;
    pseudo[1] = p.saddr;
    pseudo[2] = u32::from_ne_bytes([0, IPPROTO_TCP, 0, 20]);
    rst_header(tcp, p, seq);
    let partial = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, pseudo.as_mut_ptr(), 12, 0) };
    if partial < 0 {
        return None;
    }
    let csum = checksum(tcp.as_mut_ptr(), 20, partial as u32)?.to_ne_bytes();
    tcp[4] = u32::from_ne_bytes([csum[0], csum[1], 0, 0]);
    let new_total = (p.l4 + 20) as u32;
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, new_total, 0) } != 0 {
        return None;
    }
    ctx.store(p.l4, tcp, 0).ok()
}

/// The TCP header of the RST|ACK answering a SYN with sequence number `seq`: ports
/// swapped, seq 0, ack = their seq + 1, checksum 0 (to be filled).
#[inline(always)]
fn rst_header<A>(tcp: &mut [u32; 5], p: &Packet<A>, seq: u32) {
    tcp[0] = u32::from_ne_bytes({
        let s = p.dport.to_ne_bytes();
        let d = p.sport.to_ne_bytes();
        [s[0], s[1], d[0], d[1]]
    });
    tcp[1] = 0;
    tcp[2] = u32::from_be(seq).wrapping_add(1).to_be();
    // data offset 5, flags RST|ACK, window 0 (network order bytes: 0x50, 0x14, 0, 0).
    tcp[3] = u32::from_ne_bytes([0x50, TCP_RST | TCP_ACK, 0, 0]);
    tcp[4] = 0;
}

/// The sum of an IPv6 pseudo header's addresses (`addrs`: source then destination, 8
/// words) and its length and next header (`tail`, 2 words, filled here), to seed an L4
/// checksum.
#[inline(always)]
fn pseudo_header6_sum(addrs: *mut u32, tail: &mut [u32; 2], len: u32, next: u8) -> Option<u32> {
    tail[0] = len.to_be();
    tail[1] = u32::from_ne_bytes([0, 0, 0, next]);
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, addrs, 32, 0) };
    if sum < 0 {
        return None;
    }
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, tail.as_mut_ptr(), 8, sum as u32) };
    (sum >= 0).then_some(sum as u32)
}

/// Turns an IPv6 TCP SYN into the RST|ACK answering it, as [`reset`] for IPv4: no
/// IP checksum, the payload length changes.
#[inline(always)]
fn reset6(ctx: &TcContext, p: &Packet<Addr>) -> Option<()> {
    const TCP_LEN: u32 = 20;
    let seq: u32 = ctx.load(p.l4 + 4).ok()?;
    swap_macs(ctx)?;
    ctx.store(IP6_SADDR, &p.daddr, 0).ok()?;
    ctx.store(IP6_DADDR, &p.saddr, 0).ok()?;
    ctx.store(IP6_PLEN, &(TCP_LEN as u16).to_be(), 0).ok()?;
    // Scratch words: 0..8 the pseudo header's addresses, 8..10 the rest of it, 10..15
    // the TCP header.
    let addrs = words::<8>(0)?;
    let tail = words::<2>(8)?;
    let tcp = words::<5>(10)?;
    addrs[..4].copy_from_slice(&p.daddr);
    addrs[4..].copy_from_slice(&p.saddr);
    let partial = pseudo_header6_sum(addrs.as_mut_ptr(), tail, TCP_LEN, IPPROTO_TCP)?;
    rst_header(tcp, p, seq);
    let csum = checksum(tcp.as_mut_ptr(), TCP_LEN, partial)?.to_ne_bytes();
    tcp[4] = u32::from_ne_bytes([csum[0], csum[1], 0, 0]);
    let new_total = (p.l4 as u32) + TCP_LEN;
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, new_total, 0) } != 0 {
        return None;
    }
    ctx.store(p.l4, tcp, 0).ok()
}

/// Turns an IPv6 UDP packet into the ICMPv6 port unreachable (type 1, code 4) answering
/// it: a new IPv6 header and ICMPv6 header in front of the packet's own IPv6 header and
/// UDP header, the checksum over the IPv6 pseudo header.
#[inline(always)]
fn port_unreachable6(ctx: &TcContext, p: &Packet<Addr>) -> Option<()> {
    const ICMP_LEN: usize = 8;
    const QUOTE_LEN: usize = IP6_HLEN + 8;
    const PAYLOAD_LEN: usize = ICMP_LEN + QUOTE_LEN;
    if p.l4 != ETH_HLEN + IP6_HLEN {
        return None;
    }
    // Scratch words: 0..10 the new IPv6 header, 10..24 the ICMPv6 header and the quote,
    // 24..26 the pseudo header's length and next header.
    let ip = words::<10>(0)?;
    let icmp = words::<14>(10)?;
    let tail = words::<2>(24)?;
    // SAFETY: 48 bytes into the 56 of `icmp` from its third word on.
    let quoted = unsafe { icmp.as_mut_ptr().add(2) };
    if unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            ETH_HLEN as u32,
            quoted.cast(),
            QUOTE_LEN as u32,
        )
    } != 0
    {
        return None;
    }
    ctx.adjust_room((IP6_HLEN + ICMP_LEN) as i32, BPF_ADJ_ROOM_MAC, 0)
        .ok()?;
    let total = ETH_HLEN + IP6_HLEN + PAYLOAD_LEN;
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, total as u32, 0) } != 0 {
        return None;
    }
    swap_macs(ctx)?;
    // Version 6, no traffic class or flow label; payload length, ICMPv6, hop limit 64.
    ip[0] = u32::from_ne_bytes([0x60, 0, 0, 0]);
    let len = (PAYLOAD_LEN as u16).to_be_bytes();
    ip[1] = u32::from_ne_bytes([len[0], len[1], IPPROTO_ICMPV6, 64]);
    ip[2..6].copy_from_slice(&p.daddr);
    ip[6..10].copy_from_slice(&p.saddr);
    // Type 1 (destination unreachable), code 4 (port unreachable), unused word, quote.
    icmp[0] = u32::from_ne_bytes([1, 4, 0, 0]);
    icmp[1] = 0;
    // SAFETY: words 2..10 of `ip`, the two addresses.
    let addrs = unsafe { ip.as_mut_ptr().add(2) };
    let partial = pseudo_header6_sum(addrs, tail, PAYLOAD_LEN as u32, IPPROTO_ICMPV6)?;
    let icmp_sum = checksum(icmp.as_mut_ptr(), PAYLOAD_LEN as u32, partial)?.to_ne_bytes();
    icmp[0] = u32::from_ne_bytes([1, 4, icmp_sum[0], icmp_sum[1]]);
    ctx.store(ETH_HLEN, ip, 0).ok()?;
    ctx.store(ETH_HLEN + IP6_HLEN, icmp, 0).ok()
}
