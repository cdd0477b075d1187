//! Forward translation (connect4/6, sendmsg4/6) and reverse translation (recvmsg4/6,
//! getpeername4/6) at the socket layer.
//!
//! Both families share one code path and one set of maps ([`Family`]): the `*4` programs
//! read and write `user_ip4` and look it up in its IPv4-mapped form, the `*6` programs
//! `user_ip6` as it is. A dual-stack socket connecting to `::ffff:a.b.c.d` reaches connect6
//! with that mapped address, which is the IPv4 frontend's key: it is balanced over the
//! IPv4 backends like an IPv4 connect, and given the backend's mapped address.
//!
//! Where the translation is remembered ([`Remember`]): a TCP connect writes one record of
//! a ring indexed by its socket cookie (`TCP_REVNAT`: a plain store, no allocation, no
//! lock), which getpeername4 reads back. A UDP connect keeps it on the socket
//! (socket-local storage, freed with the socket): recvmsg4 asks on every datagram, for as
//! long as the socket lives, so it must not be overwritten; it writes the ring too, where
//! the agent finds the sockets to destroy when their backend leaves. sendmsg4 (an unconnected UDP
//! socket may reach several backends) keeps one entry per socket and backend in the shared
//! LRU, looked up before it is written: a socket sending to one Service again and again
//! writes it once. Kernels without socket-local storage in these programs get a UDP
//! connect4 writing the LRU too (the `_lru` variants).
//!
//! An unconnected UDP socket's datagrams to one frontend stay on one backend while the
//! flow is active ([`udp_flow`]), as conntrack keeps a UDP 5-tuple on its endpoint in
//! kube-proxy's iptables mode; a connected one keeps the backend of its connect.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use proxy_common::{
    Addr, Backend, Event, Frontend, IPPROTO_TCP, IPPROTO_UDP, RevNatKey, SERVICE_LOCAL_ONLY,
    Service, SocketRevNat, TcpRevNat, v4_mapped, v4_of,
};

use crate::{
    ALLOW,
    maps::{REVNAT, SERVICES, SOCKET_REVNAT, TCP_REVNAT, bump, count, stats},
    select::choose,
    udp_flow,
};

const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// How a frontend without endpoints is refused: ECONNREFUSED through `bpf_set_retval`
/// (Linux 5.18), as kube-proxy's REJECT gives ...
pub const REFUSE_WITH_ECONNREFUSED: bool = true;
/// ... or the EPERM every cgroup program's refusal gives where that helper is missing
/// (as Cilium's socket load balancer does there).
pub const REFUSE_WITH_EPERM: bool = false;

/// Where a forward translation is remembered for the reverse one (a const parameter of
/// [`try_forward`], so each program carries only its own way).
pub type Remember = u8;
/// connect4: TCP in the ring, UDP on the socket (socket-local storage).
pub const REMEMBER_ON_SOCKET: Remember = 0;
/// connect4 without socket-local storage: TCP in the ring, UDP in the shared LRU, written
/// on every connect.
pub const REMEMBER_IN_LRU: Remember = 1;
/// sendmsg4: the shared LRU, written only when the entry is missing or different.
pub const REMEMBER_PER_DESTINATION: Remember = 2;

/// recvmsg4 and getpeername4 ask the socket's own storage first (a const parameter of
/// [`try_reverse`]) ...
pub const LOOK_ON_SOCKET: bool = true;
/// ... or, without socket-local storage, only the LRU.
pub const LOOK_IN_LRU_ONLY: bool = false;

/// Which of the socket address's fields a program reads and writes (a const parameter
/// of [`try_forward`] and [`try_reverse`]): `user_ip4` ...
pub type Family = bool;
pub const IPV4: Family = false;
/// ... or `user_ip6`.
pub const IPV6: Family = true;

/// The address a socket address names, in the maps' form ([`Addr`]).
#[inline(always)]
fn address_of<const FAMILY: Family>(ctx: &SockAddrContext) -> Addr {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's lifetime. Each
    // word of user_ip6 is read on its own (4-byte loads, which every kernel's verifier
    // takes for this field).
    unsafe {
        let sa = ctx.sock_addr;
        if FAMILY == IPV6 {
            [
                core::ptr::read_volatile(&(*sa).user_ip6[0]),
                core::ptr::read_volatile(&(*sa).user_ip6[1]),
                core::ptr::read_volatile(&(*sa).user_ip6[2]),
                core::ptr::read_volatile(&(*sa).user_ip6[3]),
            ]
        } else {
            v4_mapped((*sa).user_ip4)
        }
    }
}

/// The frontend a socket address names, if the protocol is one we balance.
#[inline(always)]
fn frontend_of<const FAMILY: Family>(ctx: &SockAddrContext) -> Option<Frontend> {
    // SAFETY: the kernel passes a valid bpf_sock_addr for the program's lifetime.
    let sa = unsafe { &*ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    Some(Frontend {
        addr: address_of::<FAMILY>(ctx),
        port: sa.user_port as u16,
        proto,
        scope: proxy_common::SCOPE_SOCKET,
    })
}

/// 127.0.0.1 in network byte order, as `user_ip4` holds it.
const LOCALHOST: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// The key and service value of `frontend`. A connect to any other address of
/// 127.0.0.0/8 is looked up as 127.0.0.1, where the agent writes the localhost NodePorts
/// (kube-proxy serves them on every local address, the whole block included); the
/// socket still shows the address it asked for.
#[inline(always)]
fn service_of(frontend: Frontend) -> Option<(Frontend, *const Service)> {
    if let Some(service) = SERVICES.get_ptr(frontend) {
        return Some((frontend, service));
    }
    let v4 = v4_of(&frontend.addr)?;
    if v4.to_ne_bytes()[0] != 127 || v4 == LOCALHOST {
        return None;
    }
    let key = Frontend {
        addr: v4_mapped(LOCALHOST),
        ..frontend
    };
    SERVICES.get_ptr(key).map(|service| (key, service))
}

/// Points the socket address at `addr` (a backend, or a frontend again) and `port`.
#[inline(always)]
fn set_address<const FAMILY: Family>(ctx: &SockAddrContext, addr: &Addr, port: u16) {
    // SAFETY: as above; the address fields and user_port are writable for every sock_addr
    // hook we use, in 4-byte stores.
    unsafe {
        let sa = ctx.sock_addr;
        if FAMILY == IPV6 {
            for (i, word) in addr.iter().enumerate() {
                core::ptr::write_volatile(&mut (*sa).user_ip6[i], *word);
            }
        } else {
            // An IPv4 frontend's backends are IPv4 (the agent writes each family's own).
            (*sa).user_ip4 = addr[3];
        }
        (*sa).user_port = port as u32;
    }
}

/// connect and sendmsg: rewrite a frontend to a backend, refuse a frontend without
/// backends (with ECONNREFUSED when `SET_RETVAL`, else EPERM), let everything else
/// through untouched. `REMEMBER` says where the reverse translation is kept.
#[inline(always)]
pub fn try_forward<const FAMILY: Family, const SET_RETVAL: bool, const REMEMBER: Remember>(
    ctx: &SockAddrContext,
) -> i32 {
    let Some(frontend) = frontend_of::<FAMILY>(ctx) else {
        return ALLOW;
    };
    let Some((key, service)) = service_of(frontend) else {
        if frontend.proto == IPPROTO_UDP {
            forget_connected::<REMEMBER>(ctx, &frontend);
        }
        return ALLOW;
    };
    // SAFETY: value pointer from a successful lookup; copied so a concurrent replace of
    // the element cannot tear what we read.
    let service: Service = unsafe { *service };
    let stats = stats(&service);
    // An unconnected UDP socket's flow keeps its backend while it is active.
    let flow = (REMEMBER == REMEMBER_PER_DESTINATION && frontend.proto == IPPROTO_UDP)
        .then(|| udp_flow::key(unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }, &frontend));
    if let Some(flow) = &flow
        && let Some(backend) = udp_flow::kept(flow, &key)
    {
        remember::<REMEMBER>(ctx, &backend, &frontend);
        set_address::<FAMILY>(ctx, &backend.addr, backend.port);
        count(Event::Translated);
        if let Some(s) = stats {
            // SAFETY: a value pointer from a successful lookup.
            bump(unsafe { &raw mut (*s).translated });
        }
        return ALLOW;
    }
    let client_netns = || (unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }, [0; 4]);

    let Some(choice) = choose(&key, &service, client_netns) else {
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

    if let Some(flow) = &flow {
        udp_flow::start(flow, choice.backend);
    }
    remember::<REMEMBER>(ctx, &choice.backend, &frontend);
    set_address::<FAMILY>(ctx, &choice.backend.addr, choice.backend.port);
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
fn remember<const REMEMBER: Remember>(
    ctx: &SockAddrContext,
    backend: &Backend,
    frontend: &Frontend,
) {
    let translation = SocketRevNat {
        frontend_addr: frontend.addr,
        backend_addr: backend.addr,
        frontend_port: frontend.port,
        backend_port: backend.port,
    };
    if REMEMBER != REMEMBER_PER_DESTINATION && frontend.proto == IPPROTO_TCP {
        remember_tcp(ctx, translation);
        return;
    }
    if REMEMBER == REMEMBER_ON_SOCKET {
        // On the socket for recvmsg; in the ring for the agent, which destroys the
        // connected sockets of a backend that left.
        remember_on_socket(ctx, translation);
        remember_tcp(ctx, translation);
        return;
    }
    let key = RevNatKey {
        socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend: *backend,
        _pad: 0,
    };
    if REMEMBER == REMEMBER_PER_DESTINATION
        && let Some(known) = REVNAT.get_ptr(key)
        // SAFETY: value pointer from a successful lookup, read at once.
        && unsafe { *known } == *frontend
    {
        return;
    }
    if REVNAT.insert(key, frontend, 0).is_err() {
        count(Event::RevNatStoreFailed);
    }
}

/// Writes a TCP (or connected UDP) socket's translation into its record of the ring.
#[inline(always)]
fn remember_tcp(ctx: &SockAddrContext, translation: SocketRevNat) {
    // SAFETY: the helper takes the socket from the context the kernel passed us.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(record) = TCP_REVNAT.get_ptr_mut(TcpRevNat::index(cookie)) else {
        count(Event::RevNatStoreFailed);
        return;
    };
    // SAFETY: an element of a preallocated array, valid for this program run. A racing
    // writer is a connect whose cookie shares the index; a reader checks the cookie.
    unsafe {
        *record = TcpRevNat {
            cookie_high: TcpRevNat::cookie_high(cookie),
            translation,
        };
    }
}

/// The frontend a TCP socket asked for, if its record is still in the ring and names
/// `peer` as the backend it was given.
#[inline(always)]
fn recall_tcp(cookie: u64, peer: &Backend) -> Option<(Addr, u16)> {
    let record = TCP_REVNAT.get_ptr(TcpRevNat::index(cookie))?;
    // SAFETY: an element of a preallocated array, copied out at once; the cookie is read
    // again after the copy, so a record being overwritten meanwhile is not taken.
    let (copy, high_after) = unsafe { (*record, core::ptr::read_volatile(&(*record).cookie_high)) };
    let t = copy.translation;
    let ours = copy.cookie_high == TcpRevNat::cookie_high(cookie)
        && high_after == copy.cookie_high
        && t.backend_addr == peer.addr
        && t.backend_port == peer.port;
    ours.then_some((t.frontend_addr, t.frontend_port))
}

/// Stores the translation on the socket, creating its storage on the first connect.
#[inline(always)]
fn remember_on_socket(ctx: &SockAddrContext, translation: SocketRevNat) {
    // SAFETY: the helper takes the socket from the context the kernel passed us.
    let stored = unsafe { SOCKET_REVNAT.get_or_insert_ptr_mut(ctx, None) };
    if stored.is_null() {
        count(Event::RevNatStoreFailed);
        return;
    }
    // SAFETY: non-null storage of this socket, valid for this program run.
    unsafe { *stored = translation };
}

/// A UDP socket connecting again, now to an address that is no frontend: the translation
/// of its earlier connect must not rewrite the source of what its new peer sends (that
/// peer may be the backend it was given then). On the socket, one look at its storage
/// (a socket that never connected to a Service has none); in the LRU, the one entry that
/// would rewrite this peer.
#[inline(always)]
fn forget_connected<const REMEMBER: Remember>(ctx: &SockAddrContext, peer: &Frontend) {
    if REMEMBER == REMEMBER_ON_SOCKET {
        // SAFETY: the helper takes the socket from the context the kernel passed us.
        let stored = unsafe { SOCKET_REVNAT.get_ptr_mut(ctx) };
        if !stored.is_null() {
            // SAFETY: non-null storage of this socket, valid for this program run.
            unsafe { *stored = SocketRevNat::default() };
            // SAFETY: the helper takes the socket from the context the kernel passed us.
            forget_in_ring(unsafe { bpf_get_socket_cookie(ctx.as_ptr()) });
        }
    } else if REMEMBER == REMEMBER_IN_LRU {
        let key = RevNatKey {
            // SAFETY: the helper takes the socket from the context the kernel passed us.
            socket_cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
            backend: Backend {
                addr: peer.addr,
                port: peer.port,
                _pad: 0,
            },
            _pad: 0,
        };
        let _ = REVNAT.remove(key);
    }
}

/// Clears the socket's record of the ring, if it still is this socket's: the agent must
/// not take the socket for one connected through a Service any more.
#[inline(always)]
fn forget_in_ring(cookie: u64) {
    if let Some(record) = TCP_REVNAT.get_ptr_mut(TcpRevNat::index(cookie))
        // SAFETY: an element of a preallocated array, valid for this program run.
        && unsafe { (*record).cookie_high } == TcpRevNat::cookie_high(cookie)
    {
        // SAFETY: as above; a racing writer is another socket's connect, whose record
        // this store may blank (the agent then misses that socket, as after a wrap).
        unsafe { (*record).translation = SocketRevNat::default() };
    }
}

/// recvmsg and getpeername: show the frontend where the socket would show the backend.
/// With `ON_SOCKET`, the socket's own storage answers first, if the peer is the backend
/// it stores (a connected UDP socket, or a TCP socket connected before the ring existed);
/// then, for TCP, the ring; then the LRU (sendmsg4's translations, and a UDP connect4's on
/// a kernel without socket-local storage).
#[inline(always)]
pub fn try_reverse<const FAMILY: Family, const ON_SOCKET: bool>(ctx: &SockAddrContext) {
    // SAFETY: as in frontend_of.
    let sa = unsafe { &*ctx.sock_addr };
    let peer = Backend {
        addr: address_of::<FAMILY>(ctx),
        port: sa.user_port as u16,
        _pad: 0,
    };
    if ON_SOCKET {
        // SAFETY: the helper takes the socket from the context the kernel passed us.
        let stored = unsafe { SOCKET_REVNAT.get_ptr_mut(ctx) };
        if !stored.is_null() {
            // SAFETY: non-null storage of this socket, copied out at once.
            let stored = unsafe { *stored };
            if stored.backend_addr == peer.addr && stored.backend_port == peer.port {
                set_address::<FAMILY>(ctx, &stored.frontend_addr, stored.frontend_port);
                count(Event::ReverseTranslated);
                return;
            }
        }
    }
    // SAFETY: the helper takes the socket from the context the kernel passed us.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if sa.protocol as u8 == IPPROTO_TCP
        && let Some((addr, port)) = recall_tcp(cookie, &peer)
    {
        set_address::<FAMILY>(ctx, &addr, port);
        count(Event::ReverseTranslated);
        return;
    }
    let key = RevNatKey {
        socket_cookie: cookie,
        backend: peer,
        _pad: 0,
    };
    if let Some(frontend) = REVNAT.get_ptr(key) {
        // SAFETY: value pointer from a successful lookup, copied out at once.
        let frontend = unsafe { *frontend };
        set_address::<FAMILY>(ctx, &frontend.addr, frontend.port);
        count(Event::ReverseTranslated);
        if sa.protocol as u8 == IPPROTO_UDP {
            udp_flow::replied(&udp_flow::key(cookie, &frontend));
        }
    }
}
