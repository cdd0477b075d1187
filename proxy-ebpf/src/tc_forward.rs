//! Where a packet goes after the tc programs: on to the interface its (rewritten)
//! destination is routed through, back out of the one it came in by, or dropped, every
//! drop counted with its reason.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_SHOT,
        bpf_fib_lookup as FibParams,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use proxy_common::Event;

use crate::maps::{count, scratch};

const AF_INET: u8 = 2;

/// Drops the packet, counted under `event`: the one way the tc programs drop, so no
/// drop goes uncounted.
#[inline(always)]
pub fn dropped(event: Event) -> i32 {
    count(event);
    TC_ACT_SHOT
}

/// The verdict of a redirect helper: TC_ACT_REDIRECT, or TC_ACT_SHOT (counted) if the
/// kernel refused the redirect.
#[inline(always)]
fn redirected(ret: i64) -> i32 {
    if ret == TC_ACT_SHOT as i64 {
        return dropped(Event::RedirectFailed);
    }
    ret as i32
}

/// The interface a packet from `saddr` to `daddr` leaves by, from the kernel's routes.
/// The lookup's 64 bytes of parameters live in the per-CPU scratch space, not the stack.
#[inline(always)]
pub fn route(ctx: &TcContext, saddr: u32, daddr: u32) -> Option<u32> {
    let params: *mut FibParams = unsafe { &raw mut (*scratch()?).fib };
    // SAFETY: a value pointer from a successful lookup, valid for this run and written
    // only by this CPU. Zeroed word by word: what the last run left must not leak in.
    unsafe {
        let words = params as *mut u64;
        for i in 0..size_of::<FibParams>() / 8 {
            words.add(i).write(0);
        }
        (*params).family = AF_INET;
        // SAFETY: the kernel's skb is valid for the program run.
        (*params).ifindex = (*ctx.skb.skb).ifindex;
        (*params).__bindgen_anon_3.ipv4_src = saddr;
        (*params).__bindgen_anon_4.ipv4_dst = daddr;
    }
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            params,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    if ret == BPF_FIB_LKUP_RET_SUCCESS as i64 || ret == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        Some(unsafe { (*params).ifindex })
    } else {
        None
    }
}

/// Sends the (rewritten) packet out of the interface its new destination is routed
/// through, resolving the next hop's MAC as the kernel would.
#[inline(always)]
pub fn forward(ctx: &TcContext, saddr: u32, daddr: u32) -> i32 {
    match route(ctx, saddr, daddr) {
        Some(ifindex) => {
            redirected(unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) })
        }
        None => dropped(Event::FibLookupFailed),
    }
}

/// Sends the packet (turned into an answer) back out of the interface it came in by.
#[inline(always)]
pub fn back(ctx: &TcContext) -> i32 {
    // SAFETY: the kernel's skb is valid for the program run.
    redirected(unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) })
}
