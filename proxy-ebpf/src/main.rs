//! ebpf-proxy's datapath. The socket load balancer: cgroup/sock_addr programs (IPv4 and
//! IPv6, one code path) that rewrite a connect or send to a Service frontend into one to a
//! backend, and rewrite the backend address back to the frontend where the application
//! can see it (recvmsg source, getpeername). And tc programs on the node's interfaces that
//! translate IPv4 and IPv6 packets arriving from outside the node (`tc_nat`).
//!
//! Entry points only call functions in `sock_lb` and `tc_nat`; the maps are in `maps`.
//! The tc side: `tc_nat` (flow logic, once for both families), `tc_family` (what differs
//! between IPv4 and IPv6), `tc_packet` (reading and rewriting headers and checksums),
//! `tc_forward` (routing, redirects, counted drops), `tc_reply` (answers for frontends
//! without endpoints).
#![no_std]
#![no_main]

mod maps;
mod select;
mod sock_lb;
mod tc_family;
mod tc_forward;
mod tc_nat;
mod tc_packet;
mod tc_reply;
mod udp_flow;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};

/// Let the syscall proceed.
const ALLOW: i32 = 1;

use sock_lb::{
    IPV4, IPV6, LOOK_IN_LRU_ONLY, LOOK_ON_SOCKET, REFUSE_WITH_ECONNREFUSED, REFUSE_WITH_EPERM,
    REMEMBER_IN_LRU, REMEMBER_ON_SOCKET, REMEMBER_PER_DESTINATION,
};

// Each socket program, then its variants for older kernels, the agent loading a variant
// under the name and link pin of the program it stands in for:
// - `_eperm` for kernels without `bpf_set_retval` (before Linux 5.18): a connect or send to
//   a frontend without endpoints fails with EPERM rather than ECONNREFUSED;
// - `_lru` for kernels without `bpf_sk_storage_get` in these programs: a UDP socket's
//   translation goes to the shared LRU, as layout 1 did (a TCP socket's to the ring, as
//   everywhere).
// The IPv6 programs are the IPv4 ones over `user_ip6` (`sock_lb::Family`).

#[cgroup_sock_addr(connect4)]
pub fn epx_connect4(ctx: SockAddrContext) -> i32 {
    sock_lb::try_forward::<IPV4, REFUSE_WITH_ECONNREFUSED, REMEMBER_ON_SOCKET>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn epx_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_lb::try_forward::<IPV4, REFUSE_WITH_ECONNREFUSED, REMEMBER_PER_DESTINATION>(&ctx)
}

#[cgroup_sock_addr(connect4)]
pub fn epx_connect4_eperm(ctx: SockAddrContext) -> i32 {
    sock_lb::try_forward::<IPV4, REFUSE_WITH_EPERM, REMEMBER_ON_SOCKET>(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn epx_sendmsg4_eperm(ctx: SockAddrContext) -> i32 {
    sock_lb::try_forward::<IPV4, REFUSE_WITH_EPERM, REMEMBER_PER_DESTINATION>(&ctx)
}

#[cgroup_sock_addr(connect4)]
pub fn epx_connect4_lru(ctx: SockAddrContext) -> i32 {
    sock_lb::try_forward::<IPV4, REFUSE_WITH_ECONNREFUSED, REMEMBER_IN_LRU>(&ctx)
}

#[cgroup_sock_addr(connect4)]
pub fn epx_connect4_eperm_lru(ctx: SockAddrContext) -> i32 {
    sock_lb::try_forward::<IPV4, REFUSE_WITH_EPERM, REMEMBER_IN_LRU>(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn epx_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock_lb::try_reverse::<IPV4, LOOK_ON_SOCKET>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn epx_getpeername4(ctx: SockAddrContext) -> i32 {
    sock_lb::try_reverse::<IPV4, LOOK_ON_SOCKET>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn epx_recvmsg4_lru(ctx: SockAddrContext) -> i32 {
    sock_lb::try_reverse::<IPV4, LOOK_IN_LRU_ONLY>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn epx_getpeername4_lru(ctx: SockAddrContext) -> i32 {
    sock_lb::try_reverse::<IPV4, LOOK_IN_LRU_ONLY>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn epx_connect6(ctx: SockAddrContext) -> i32 {
    sock_lb::try_forward::<IPV6, REFUSE_WITH_ECONNREFUSED, REMEMBER_ON_SOCKET>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn epx_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_lb::try_forward::<IPV6, REFUSE_WITH_ECONNREFUSED, REMEMBER_PER_DESTINATION>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn epx_connect6_eperm(ctx: SockAddrContext) -> i32 {
    sock_lb::try_forward::<IPV6, REFUSE_WITH_EPERM, REMEMBER_ON_SOCKET>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn epx_sendmsg6_eperm(ctx: SockAddrContext) -> i32 {
    sock_lb::try_forward::<IPV6, REFUSE_WITH_EPERM, REMEMBER_PER_DESTINATION>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn epx_connect6_lru(ctx: SockAddrContext) -> i32 {
    sock_lb::try_forward::<IPV6, REFUSE_WITH_ECONNREFUSED, REMEMBER_IN_LRU>(&ctx)
}

#[cgroup_sock_addr(connect6)]
pub fn epx_connect6_eperm_lru(ctx: SockAddrContext) -> i32 {
    sock_lb::try_forward::<IPV6, REFUSE_WITH_EPERM, REMEMBER_IN_LRU>(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn epx_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock_lb::try_reverse::<IPV6, LOOK_ON_SOCKET>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn epx_getpeername6(ctx: SockAddrContext) -> i32 {
    sock_lb::try_reverse::<IPV6, LOOK_ON_SOCKET>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn epx_recvmsg6_lru(ctx: SockAddrContext) -> i32 {
    sock_lb::try_reverse::<IPV6, LOOK_IN_LRU_ONLY>(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn epx_getpeername6_lru(ctx: SockAddrContext) -> i32 {
    sock_lb::try_reverse::<IPV6, LOOK_IN_LRU_ONLY>(&ctx);
    ALLOW
}

#[classifier]
pub fn epx_tc_ingress(ctx: TcContext) -> i32 {
    tc_nat::ingress(&ctx)
}

#[classifier]
pub fn epx_tc_egress(ctx: TcContext) -> i32 {
    tc_nat::egress(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
