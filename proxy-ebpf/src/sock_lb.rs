//! Forward translation (connect4, sendmsg4) and reverse translation (recvmsg4,
//! getpeername4) at the socket layer.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use proxy_common::{
    Backend, Event, Frontend, IPPROTO_TCP, IPPROTO_UDP, RevNatKey, SERVICE_LOCAL_ONLY, Service,
};

use crate::{
    ALLOW,
    maps::{REVNAT, SERVICES, bump, count, stats},
    select::choose,
};

const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// How a frontend without endpoints is refused: ECONNREFUSED through `bpf_set_retval`
/// (Linux 5.18), as kube-proxy's REJECT gives ...
pub const REFUSE_WITH_ECONNREFUSED: bool = true;
/// ... or the EPERM every cgroup program's refusal gives where that helper is missing
/// (as Cilium's socket load balancer does there).
pub const REFUSE_WITH_EPERM: bool = false;

/// The frontend a socket address names, if the protocol is one we balance.
#[inline(always)]
fn frontend_of(ctx: &SockAddrContext) -> Option<Frontend> {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's lifetime.
    let sa = unsafe { &*ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    Some(Frontend {
        addr: sa.user_ip4,
        port: sa.user_port as u16,
        proto,
        scope: proxy_common::SCOPE_SOCKET,
    })
}

#[inline(always)]
fn set_address(ctx: &SockAddrContext, addr: u32, port: u16) {
    // SAFETY: as above; user_ip4 and user_port are writable for every sock_addr hook we use.
    unsafe {
        (*ctx.sock_addr).user_ip4 = addr;
        (*ctx.sock_addr).user_port = port as u32;
    }
}

/// connect4 and sendmsg4: rewrite a frontend to a backend, refuse a frontend without
/// backends (with ECONNREFUSED when `SET_RETVAL`, else EPERM), let everything else
/// through untouched.
#[inline(always)]
pub fn try_forward<const SET_RETVAL: bool>(ctx: &SockAddrContext) -> i32 {
    let Some(frontend) = frontend_of(ctx) else {
        return ALLOW;
    };
    let Some(service) = SERVICES.get_ptr(frontend) else {
        return ALLOW;
    };
    // SAFETY: value pointer from a successful lookup; copied so a concurrent replace of
    // the element cannot tear what we read.
    let service: Service = unsafe { *service };
    let stats = stats(&frontend);
    let client_netns = || unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };

    let Some(choice) = choose(&frontend, &service, client_netns) else {
        count(if service.flags & SERVICE_LOCAL_ONLY != 0 {
            Event::NoLocalEndpoint
        } else {
            Event::NoEndpoint
        });
        if let Some(s) = stats {
            // SAFETY: a value pointer from a successful lookup.
            bump(unsafe { &raw mut (*s).no_endpoint });
        }
        // kube-proxy answers with REJECT: the caller sees ECONNREFUSED at once. Without
        // the helper, the kernel's own answer to a refusal (EPERM) is just as immediate.
        if SET_RETVAL {
            unsafe { bpf_set_retval(-ECONNREFUSED) };
        }
        return REJECT;
    };

    remember_frontend(ctx, &choice.backend, &frontend);
    set_address(ctx, choice.backend.addr, choice.backend.port);
    count(Event::Translated);
    if let Some(s) = stats {
        // SAFETY: a value pointer from a successful lookup.
        bump(unsafe { &raw mut (*s).translated });
        if choice.from_affinity {
            bump(unsafe { &raw mut (*s).affinity_hits });
        }
    }
    ALLOW
}

/// Records which frontend this socket meant, for the reverse translation.
#[inline(always)]
fn remember_frontend(ctx: &SockAddrContext, backend: &Backend, frontend: &Frontend) {
    let key = RevNatKey {
        socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend: *backend,
    };
    if REVNAT.insert(key, frontend, 0).is_err() {
        count(Event::RevNatStoreFailed);
    }
}

/// recvmsg4 and getpeername4: show the frontend where the socket would show the backend.
#[inline(always)]
pub fn try_reverse(ctx: &SockAddrContext) {
    // SAFETY: as in frontend_of.
    let sa = unsafe { &*ctx.sock_addr };
    let key = RevNatKey {
        socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend: Backend {
            addr: sa.user_ip4,
            port: sa.user_port as u16,
            _pad: 0,
        },
    };
    if let Some(frontend) = REVNAT.get_ptr(key) {
        // SAFETY: value pointer from a successful lookup, copied out at once.
        let frontend = unsafe { *frontend };
        set_address(ctx, frontend.addr, frontend.port);
        count(Event::ReverseTranslated);
    }
}
