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
use proxy_common::{Addr, Event};

use crate::{
    maps::{count, scratch},
    tc_family::Family,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

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

/// Where the kernel's routes send a packet: the interface, and whether the next hop's
/// MAC is known (then it and the interface's own MAC are in the scratch space's lookup
/// parameters, for [`forward_routed`]).
#[derive(Clone, Copy)]
pub struct Route {
    pub ifindex: u32,
    resolved: bool,
}

impl Route {
    /// Not routed yet (no interface has index 0).
    pub const NONE: Route = Route {
        ifindex: 0,
        resolved: false,
    };
}

/// The route of an IPv4 packet from `saddr` to `daddr`.
#[inline(always)]
pub fn route4(ctx: &TcContext, saddr: u32, daddr: u32) -> Option<Route> {
    lookup(ctx, |params| {
        // SAFETY: a pointer into this CPU's scratch space (see `lookup`).
        unsafe {
            (*params).family = AF_INET;
            (*params).__bindgen_anon_3.ipv4_src = saddr;
            (*params).__bindgen_anon_4.ipv4_dst = daddr;
        }
    })
}

/// The route of an IPv6 packet from `saddr` to `daddr`.
#[inline(always)]
pub fn route6(ctx: &TcContext, saddr: Addr, daddr: Addr) -> Option<Route> {
    lookup(ctx, |params| {
        // SAFETY: as in `route4`.
        unsafe {
            (*params).family = AF_INET6;
            (*params).__bindgen_anon_3.ipv6_src = saddr;
            (*params).__bindgen_anon_4.ipv6_dst = daddr;
        }
    })
}

/// One `bpf_fib_lookup` with the addresses `fill` writes, whose 64 bytes of parameters
/// live in the per-CPU scratch space, not the stack.
#[inline(always)]
fn lookup(ctx: &TcContext, fill: impl FnOnce(*mut FibParams)) -> Option<Route> {
    let params: *mut FibParams = unsafe { &raw mut (*scratch()?).fib };
    // SAFETY: a value pointer from a successful lookup, valid for this run and written
    // only by this CPU. Zeroed word by word: what the last run left must not leak in.
    unsafe {
        let words = params as *mut u64;
        for i in 0..size_of::<FibParams>() / 8 {
            words.add(i).write(0);
        }
        // SAFETY: the kernel's skb is valid for the program run.
        (*params).ifindex = (*ctx.skb.skb).ifindex;
    }
    fill(params);
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            params,
            size_of::<FibParams>() as i32,
            0,
        )
    };
    let resolved = ret == BPF_FIB_LKUP_RET_SUCCESS as i64;
    if resolved || ret == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        Some(Route {
            ifindex: unsafe { (*params).ifindex },
            resolved,
        })
    } else {
        None
    }
}

/// Sends the (rewritten) packet out of the interface its new destination is routed
/// through: one route lookup per packet.
#[inline(always)]
pub fn forward<A: Family>(ctx: &TcContext, saddr: A, daddr: A) -> i32 {
    match A::route(ctx, saddr, daddr) {
        Some(route) => forward_routed(ctx, route),
        None => dropped(Event::FibLookupFailed),
    }
}

/// Sends the packet along `route`, the last [`route`] of this program run. With the next
/// hop's MAC known, the Ethernet header is rewritten from the lookup and the packet
/// redirected as it is; without (no neighbour entry yet), `bpf_redirect_neigh` resolves it
/// as the kernel would, which routes a second time: the first packets to a new next hop
/// only.
#[inline(always)]
pub fn forward_routed(ctx: &TcContext, route: Route) -> i32 {
    if route.resolved {
        let Some(scratch) = scratch() else {
            return dropped(Event::FibLookupFailed);
        };
        // SAFETY: as in `route`; the lookup filled both MACs when it succeeded.
        let (dmac, smac) = unsafe { ((*scratch).fib.dmac, (*scratch).fib.smac) };
        let mut header = [0u8; 12];
        header[..6].copy_from_slice(&dmac);
        header[6..].copy_from_slice(&smac);
        if ctx.store(0, &header, 0).is_err() {
            return dropped(Event::RewriteFailed);
        }
        return redirected(unsafe { bpf_redirect(route.ifindex, 0) });
    }
    redirected(unsafe { bpf_redirect_neigh(route.ifindex, core::ptr::null_mut(), 0, 0) })
}

/// Sends the packet (turned into an answer) back out of the interface it came in by.
#[inline(always)]
pub fn back(ctx: &TcContext) -> i32 {
    // SAFETY: the kernel's skb is valid for the program run.
    redirected(unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) })
}
