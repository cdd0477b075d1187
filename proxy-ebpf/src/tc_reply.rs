//! Answers the tc programs synthesize for a frontend without endpoints, as kube-proxy's
//! REJECT gives: a TCP reset for a SYN, an ICMP port unreachable for UDP. The packet is
//! turned into its answer in place and sent back out of the interface it came in by.
//!
//! The headers are built in the per-CPU scratch space (`maps::scratch`), not on the
//! stack: beside the flow logic they would pass the 512 bytes of stack that Linux 6.1
//! and older allow a program and the functions it calls, together.

use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    helpers::{bpf_csum_diff, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use proxy_common::{Event, IPPROTO_TCP};

use crate::{
    maps::{SCRATCH_WORDS, scratch},
    tc_forward::{back, dropped},
    tc_packet::{ETH_HLEN, IP_CSUM, IP_DADDR, IP_SADDR, Packet, TCP_ACK, TCP_RST},
};

/// Answers `p` and sends the answer back; a packet that cannot be answered is dropped.
/// Not inlined, for the same reason as `tc_nat::new_flow`: its own stack frame.
#[inline(never)]
pub fn refuse(ctx: &TcContext, p: &Packet) -> i32 {
    let answered = if p.proto == IPPROTO_TCP {
        reset(ctx, p)
    } else {
        port_unreachable(ctx, p)
    };
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
fn port_unreachable(ctx: &TcContext, p: &Packet) -> Option<()> {
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
fn reset(ctx: &TcContext, p: &Packet) -> Option<()> {
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
    // The TCP header, rebuilt: ports swapped, seq 0, ack = their seq + 1, RST|ACK.
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
