//! Traffic from outside the node: tc programs on the node's interfaces translate packets
//! for NodePort, ExternalIP and LoadBalancer frontends, as kube-proxy's KUBE-NODEPORTS and
//! KUBE-EXT chains (and Cilium's tc programs) do.
//!
//! A new flow picks a backend with the socket path's weights and ClientIP affinity (keyed
//! by the client's address here). Under externalTrafficPolicy Cluster, a flow to a
//! backend on another node (reached through one of the interfaces the programs are
//! attached to) is source-NATed to that interface's address, so its replies come back
//! here; a backend on this node is reached without source NAT, and its replies, routed
//! by the kernel toward the client, are translated back by the egress program. Under
//! Local, only this node's endpoints are used and the client's address is kept.
//!
//! Both directions of each flow live in the NAT map, with TCP-state-aware timeouts, so a
//! change to any Service leaves established flows where they are.
//!
//! IPv4 and IPv6 take the same path, written once over `tc_family::Family`; each family
//! has its own flow table (`EPX_NAT_V1`, `EPX_NAT6_V1`) and the maps of frontends,
//! slots, affinity and source ranges are shared (an IPv4 address in its IPv4-mapped
//! form).
//!
//! Stack: Linux 6.1 and older allow 512 bytes along the deepest chain of BPF-to-BPF calls.
//! The packet and the new flow's keys and entries live in the per-CPU scratch space
//! ([`FlowState`]), and the steps that need stack of their own (the affinity lookup, the
//! flow's two entries, the answer to a frontend without endpoints, ...) are functions
//! called one after the other, so their frames do not add up. Deepest chains when this
//! was written: IPv4 320 bytes, IPv6 448 (each frame rounded up to 32 bytes, as the
//! verifier counts).
//!
//! This file is the flow logic; packets are read and rewritten by `tc_packet`, sent on
//! or dropped (counted) by `tc_forward`, and answered by `tc_reply`.

use aya_ebpf::{
    bindings::TC_ACT_OK,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    programs::TcContext,
};
use proxy_common::{
    Addr, Event, Frontend, IPPROTO_TCP, IPPROTO_UDP, NAT_ON_EGRESS, NAT_REVERSE, NAT_SNAT,
    NAT_TIMEOUT_CLOSING_NS, NAT_TIMEOUT_SYN_NS, NAT_TIMEOUT_TCP_NS, NatEntryOf, NatKeyOf,
    SCOPE_EXTERNAL_LOCAL, SCOPE_SOCKET, SERVICE_EXTERNAL_LOCAL, SERVICE_KIND_MASK,
    SERVICE_SOURCE_RANGES, SNAT_PORT_MAX, SNAT_PORT_MIN, Service, SourceRangeKey, TCP_CLOSING,
    TCP_ESTABLISHED, TCP_SYN_SENT, UDP_REPLIED, source_range_prefix,
};

use crate::{
    maps::{IFACES, SERVICES, SOURCE_RANGES, bump, config, count, scratch, stats},
    select::{Choice, choose},
    tc_family::{Family, set_destination, set_source},
    tc_forward::{Route, dropped, forward, forward_routed},
    tc_packet::{
        ETH_P_IP, ETH_P_IPV6, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, ether_type, parse4,
        parse6,
    },
};

/// Tries at a free source port in `SNAT_PORT_MIN..=SNAT_PORT_MAX` for a masqueraded flow.
const SNAT_PORT_TRIES: u32 = 8;
const SNAT_PORT_SPAN: u32 = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;

/// Whether a flow entry has outlived its protocol's (and state's) timeout: a UDP flow's
/// are the agent's (`--udp-timeout`, `--udp-stream-timeout` once a reply passed), as
/// conntrack's are in iptables mode; a TCP flow's Cilium's.
#[inline(always)]
fn expired<A>(entry: &NatEntryOf<A>, proto: u8, now: u64) -> bool {
    let timeout = if proto == IPPROTO_UDP {
        let config = config();
        if entry.state == UDP_REPLIED {
            config.udp_stream_timeout_ns
        } else {
            config.udp_timeout_ns
        }
    } else {
        match entry.state {
            TCP_SYN_SENT => NAT_TIMEOUT_SYN_NS,
            TCP_CLOSING => NAT_TIMEOUT_CLOSING_NS,
            _ => NAT_TIMEOUT_TCP_NS,
        }
    };
    now.wrapping_sub(entry.last_seen_ns) > timeout
}

/// Refreshes a flow entry with this packet's time and TCP flags.
#[inline(always)]
fn touch<A>(entry: *mut NatEntryOf<A>, tcp_flags: u8, now: u64) {
    // SAFETY: a value pointer from a successful lookup, valid for this run.
    unsafe {
        (*entry).last_seen_ns = now;
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            (*entry).state = TCP_CLOSING;
        } else if tcp_flags & TCP_ACK != 0 && (*entry).state == TCP_SYN_SENT {
            (*entry).state = TCP_ESTABLISHED;
        }
    }
}

/// A UDP flow lives as one, as conntrack's one entry does: a packet either way refreshes
/// the other direction's entry too, and a reply marks both replied (the stream timeout).
/// `entry` is the packet's own (already refreshed); `e`, its contents before.
#[inline(never)]
fn touch_udp_pair<A: Family>(
    p: &Packet<A>,
    entry: *mut NatEntryOf<A>,
    e: &NatEntryOf<A>,
    now: u64,
) {
    let reply = e.flags & NAT_REVERSE != 0;
    let key = if reply {
        e.client_key(p.proto)
    } else {
        p.key().reply_key(e)
    };
    let pair = A::nat().get_ptr_mut(key);
    // SAFETY: value pointers from successful lookups, valid for this run.
    unsafe {
        if let Some(pair) = pair {
            (*pair).last_seen_ns = now;
            if reply {
                (*pair).state = UDP_REPLIED;
            }
        }
        if reply {
            (*entry).state = UDP_REPLIED;
        }
    }
}

/// What the programs keep of a packet and of the new flow it starts, in the per-CPU
/// scratch space (`maps::Scratch`) rather than on the stack: an IPv6 flow's addresses,
/// keys and entries would not fit beside the calls below in the 512 bytes of stack the
/// verifier allows along a chain of calls (on Linux 6.1 and older).
pub struct FlowState<A> {
    pub packet: Packet<A>,
    pub key: NatKeyOf<A>,
    pub forward: NatEntryOf<A>,
    pub frontend: Frontend,
    pub table: Frontend,
    pub service: Service,
    pub table_service: Service,
    pub choice: Choice,
}

/// This CPU's flow state of family `A`, valid for the rest of the program run.
#[inline(always)]
fn state<A: Family>() -> Option<&'static mut FlowState<A>> {
    // SAFETY: a pointer into this CPU's scratch map value, written only by this CPU
    // during this run (tc programs do not nest on a CPU).
    Some(unsafe { &mut *A::state(scratch()?) })
}

/// Ingress: packets of known flows (either direction), and new flows to frontends.
///
/// Each step is a function of its own (a BPF-to-BPF call) where its stack frame would
/// otherwise add up with its siblings': the verifier allows 512 bytes along the deepest
/// chain of calls on Linux 6.1 and older.
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> i32 {
    match ether_type(ctx) {
        Some(ETH_P_IP) => ingress4(ctx),
        Some(ETH_P_IPV6) => ingress6(ctx),
        _ => TC_ACT_OK,
    }
}

#[inline(never)]
fn ingress4(ctx: &TcContext) -> i32 {
    let Some(st) = state::<u32>() else {
        return TC_ACT_OK;
    };
    if parse4(ctx, &mut st.packet).is_none() {
        return TC_ACT_OK;
    }
    ingress_of(ctx, st)
}

#[inline(never)]
fn ingress6(ctx: &TcContext) -> i32 {
    let Some(st) = state::<Addr>() else {
        return TC_ACT_OK;
    };
    if parse6(ctx, &mut st.packet, true).is_none() {
        return TC_ACT_OK;
    }
    ingress_of(ctx, st)
}

/// [`known_flow`]'s answer when the packet starts a new flow.
const NEW_FLOW: i32 = i32::MIN;

// Map lookups take keys by reference here (clippy would pass copies): the keys live in
// the scratch space, and a copy would put them back on the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn ingress_of<A: Family>(ctx: &TcContext, st: &mut FlowState<A>) -> i32 {
    st.key = st.packet.key();
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(entry) = A::nat().get_ptr_mut(&st.key) {
        let verdict = known_flow(ctx, &st.packet, entry, now);
        if verdict != NEW_FLOW {
            return verdict;
        }
    }
    new_flow(ctx, st, now)
}

/// A packet of a flow in the table (`entry`): translated as its entry says, or
/// [`NEW_FLOW`] when the entry is stale and the packet may start a new flow.
#[inline(never)]
fn known_flow<A: Family>(
    ctx: &TcContext,
    p: &Packet<A>,
    entry: *mut NatEntryOf<A>,
    now: u64,
) -> i32 {
    // SAFETY: copied out of a value pointer from a successful lookup.
    let e: NatEntryOf<A> = unsafe { *entry };
    let new_syn = p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let stale = expired(&e, p.proto, now) || (new_syn && e.state == TCP_CLOSING);
    if stale {
        return if e.flags & NAT_REVERSE != 0 {
            TC_ACT_OK
        } else {
            NEW_FLOW
        };
    }
    touch(entry, p.tcp_flags, now);
    if p.proto == IPPROTO_UDP {
        touch_udp_pair(p, entry, &e, now);
    }
    count(Event::ExternalFlowPacket);
    if e.flags & NAT_REVERSE == 0 {
        return translate_forward(ctx, p, &e, &Route::NONE);
    }
    if e.flags & NAT_ON_EGRESS != 0 {
        return TC_ACT_OK;
    }
    if set_source(ctx, p, e.to_addr, e.to_port).is_none()
        || set_destination(ctx, p, e.alt_addr, e.alt_port).is_none()
    {
        return dropped(Event::RewriteFailed);
    }
    forward(ctx, e.to_addr, e.alt_addr)
}

/// Rewrites a client's packet as its flow says and sends it on. `route`: where the flow's
/// first packet was just routed (its source, the client's or the egress interface's own
/// address, leaves by that interface either way), so it is not routed twice; or
/// [`Route::NONE`] to route it here.
///
/// (The signatures of the functions that are not inlined take no `Option` or other Rust
/// enum: their BTF would describe it as a union with a member at a non-zero offset, which
/// the kernel refuses, and with it the whole object's BTF.)
#[inline(never)]
fn translate_forward<A: Family>(
    ctx: &TcContext,
    p: &Packet<A>,
    e: &NatEntryOf<A>,
    route: &Route,
) -> i32 {
    if set_destination(ctx, p, e.to_addr, e.to_port).is_none() {
        return dropped(Event::RewriteFailed);
    }
    let source = if e.flags & NAT_SNAT != 0 {
        if set_source(ctx, p, e.alt_addr, e.alt_port).is_none() {
            return dropped(Event::RewriteFailed);
        }
        e.alt_addr
    } else {
        p.saddr
    };
    if route.ifindex == Route::NONE.ifindex {
        return forward(ctx, source, e.to_addr);
    }
    forward_routed(ctx, *route)
}

// A function of its own (a BPF-to-BPF call), not inlined: its stack frame then does not
// add up with the known-flow path's. What it works on is in `st` (scratch space); what
// needs more stack is in functions it calls one after the other (`source_allowed`,
// `pick`, `free_port`, `open_flow`, `translate_forward`, `refuse`).
#[allow(clippy::needless_borrows_for_generic_args)] // As in `ingress_of`.
#[inline(never)]
fn new_flow<A: Family>(ctx: &TcContext, st: &mut FlowState<A>, now: u64) -> i32 {
    let p = &st.packet;
    // Loopback from outside is no NodePort (the localhost NodePorts are for the node's
    // own sockets): left to the kernel, which drops it as a martian, as kube-proxy's
    // "block incoming localnet connections" rule does.
    if p.daddr.is_loopback() {
        return TC_ACT_OK;
    }
    st.frontend = Frontend {
        addr: p.daddr.mapped(),
        port: p.dport,
        proto: p.proto,
        scope: SCOPE_SOCKET,
    };
    let Some(service) = SERVICES.get_ptr(&st.frontend) else {
        return TC_ACT_OK;
    };
    // SAFETY: copied out of a value pointer from a successful lookup.
    st.service = unsafe { *service };
    let flags = st.service.flags;
    // ClusterIPs are for sockets on the node (the cgroup programs).
    if flags & SERVICE_KIND_MASK == 0 {
        return TC_ACT_OK;
    }
    // Only the first packet of a connection starts a flow; anything else of an unknown
    // flow (a flow from before the programs, or evicted) is the stack's to refuse.
    if p.proto == IPPROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return TC_ACT_OK;
    }
    // loadBalancerSourceRanges: kube-proxy's KUBE-FW / KUBE-PROXY-FIREWALL.
    if flags & SERVICE_SOURCE_RANGES != 0 && !source_allowed(&st.frontend, &p.saddr) {
        return dropped(Event::SourceRangeDropped);
    }
    let local_policy = flags & SERVICE_EXTERNAL_LOCAL != 0;
    st.table = st.frontend;
    st.table_service = st.service;
    if local_policy {
        st.table.scope = SCOPE_EXTERNAL_LOCAL;
        match SERVICES.get_ptr(&st.table) {
            // SAFETY: as above.
            Some(s) => st.table_service = unsafe { *s },
            None => st.table_service.slots = 0,
        }
    }
    let frontend_stats = stats(&st.service);
    if !pick(&st.table, &st.table_service, &p.saddr, &mut st.choice) {
        if let Some(s) = frontend_stats {
            bump(unsafe { &raw mut (*s).no_endpoint });
        }
        if local_policy && st.service.slots != 0 {
            // Endpoints elsewhere, none here: kube-proxy drops ("has no local endpoints").
            return dropped(Event::ExternalNoLocalEndpoint);
        }
        count(Event::ExternalNoEndpoint);
        return A::refuse(ctx, p);
    }
    let backend_port = st.choice.backend.port;
    // The frontend's family is the packet's, so are its backends (the agent writes each
    // family's own).
    let Some(backend_addr) = A::of_mapped(&st.choice.backend.addr) else {
        return dropped(Event::RewriteFailed);
    };
    let Some(out) = A::route(ctx, p.saddr, backend_addr) else {
        return dropped(Event::FibLookupFailed);
    };
    // A backend behind one of our interfaces is on another node: its replies must come
    // back here, so the flow takes that interface's address (Cluster policy only).
    let snat_addr = if local_policy {
        None
    } else {
        IFACES
            .get_ptr(out.ifindex)
            .map(|i| A::snat_addr(unsafe { &*i }))
    };
    let (source, source_port) = match snat_addr {
        Some(addr) if addr == A::NONE => return dropped(Event::NoSnatAddress),
        Some(addr) => match free_port(p, &addr, &backend_addr, backend_port) {
            NO_FREE_PORT => return dropped(Event::NatStoreFailed),
            port => (addr, port as u16),
        },
        None => (A::NONE, 0),
    };
    let snat = snat_addr.is_some();
    st.forward = NatEntryOf {
        to_addr: backend_addr,
        to_port: backend_port,
        alt_addr: source,
        alt_port: source_port,
        flags: if snat { NAT_SNAT } else { 0 },
        state: if p.proto == IPPROTO_TCP {
            TCP_SYN_SENT
        } else {
            0
        },
        _pad: [0; 2],
        last_seen_ns: now,
    };
    if !open_flow(p, &st.key, &st.forward) {
        return dropped(Event::NatStoreFailed);
    }
    count(Event::ExternalTranslated);
    if let Some(s) = frontend_stats {
        bump(unsafe { &raw mut (*s).translated });
        if st.choice.from_affinity {
            bump(unsafe { &raw mut (*s).affinity_hits });
        }
    }
    translate_forward(ctx, p, &st.forward, &out)
}

/// Picks the backend of a new flow from outside into `out`; false when `table` has no
/// usable endpoint. Not inlined (one function for both families): the affinity lookup's
/// keys and values then sit in a frame beside `new_flow`'s callees, not under them.
#[inline(never)]
fn pick<A: Family>(table: &Frontend, service: &Service, client: &A, out: &mut Choice) -> bool {
    match choose(table, service, || client.affinity_client()) {
        Some(choice) => {
            *out = choice;
            true
        }
        None => false,
    }
}

/// Stores both directions of a new flow, `forward` being the client's direction (with
/// the source NAT if any): the reply direction is keyed by the backend and the address
/// the backend sees. Not inlined, for the same reason as [`pick`].
#[inline(never)]
fn open_flow<A: Family>(p: &Packet<A>, key: &NatKeyOf<A>, forward: &NatEntryOf<A>) -> bool {
    let snat = forward.flags & NAT_SNAT != 0;
    let reverse_key = key.reply_key(forward);
    let reverse_entry = NatEntryOf {
        to_addr: p.daddr,
        to_port: p.dport,
        alt_addr: p.saddr,
        alt_port: p.sport,
        flags: NAT_REVERSE | if snat { NAT_SNAT } else { NAT_ON_EGRESS },
        state: forward.state,
        _pad: [0; 2],
        last_seen_ns: forward.last_seen_ns,
    };
    A::nat().insert(reverse_key, reverse_entry, 0).is_ok()
        && A::nat().insert(key, forward, 0).is_ok()
}

/// Whether loadBalancerSourceRanges admit `client` to `frontend`.
#[inline(never)]
fn source_allowed<A: Family>(frontend: &Frontend, client: &A) -> bool {
    let key = aya_ebpf::maps::lpm_trie::Key::new(
        source_range_prefix(128),
        SourceRangeKey {
            frontend: *frontend,
            addr: client.mapped(),
        },
    );
    SOURCE_RANGES.get(key).is_some()
}

/// [`free_port`]'s answer when every port it tried is taken.
const NO_FREE_PORT: u32 = u32::MAX;

/// A source port on `addr` (network byte order, in the low 16 bits) no other flow to this
/// backend uses, in `SNAT_PORT_MIN..=SNAT_PORT_MAX` (never one the node's own connections
/// may hold): the client's own if it lies there and is free, else a few random ones;
/// [`NO_FREE_PORT`].
#[inline(never)]
fn free_port<A: Family>(p: &Packet<A>, addr: &A, backend: &A, backend_port: u16) -> u32 {
    let mut port = if u16::from_be(p.sport) >= SNAT_PORT_MIN {
        p.sport
    } else {
        random_snat_port()
    };
    for _ in 0..SNAT_PORT_TRIES {
        let key = NatKeyOf {
            saddr: *backend,
            daddr: *addr,
            sport: backend_port,
            dport: port,
            proto: p.proto,
            _pad: [0; 3],
        };
        match A::nat().get_ptr(key) {
            None => return port as u32,
            // SAFETY: as above.
            Some(e) if unsafe { (*e).alt_addr == p.saddr && (*e).alt_port == p.sport } => {
                return port as u32;
            }
            Some(_) => {}
        }
        port = random_snat_port();
    }
    NO_FREE_PORT
}

/// A random port in `SNAT_PORT_MIN..=SNAT_PORT_MAX`, network byte order.
#[inline(always)]
fn random_snat_port() -> u16 {
    // SAFETY: a helper without arguments.
    let random = unsafe { bpf_get_prandom_u32() } % SNAT_PORT_SPAN;
    (random as u16 + SNAT_PORT_MIN).to_be()
}

/// Egress: the replies of flows to a backend on this node, on their way to the client:
/// their source becomes the frontend again.
#[inline(always)]
pub fn egress(ctx: &TcContext) -> i32 {
    match ether_type(ctx) {
        Some(ETH_P_IP) => {
            let Some(st) = state::<u32>() else {
                return TC_ACT_OK;
            };
            if parse4(ctx, &mut st.packet).is_none() {
                return TC_ACT_OK;
            }
            egress_of(ctx, &st.packet)
        }
        Some(ETH_P_IPV6) => egress6(ctx),
        _ => TC_ACT_OK,
    }
}

/// Egress of an IPv6 packet, a function of its own as `ingress6`.
#[inline(never)]
fn egress6(ctx: &TcContext) -> i32 {
    let Some(st) = state::<Addr>() else {
        return TC_ACT_OK;
    };
    if parse6(ctx, &mut st.packet, false).is_none() {
        return TC_ACT_OK;
    }
    egress_of(ctx, &st.packet)
}

#[inline(always)]
fn egress_of<A: Family>(ctx: &TcContext, p: &Packet<A>) -> i32 {
    let Some(entry) = A::nat().get_ptr_mut(p.key()) else {
        return TC_ACT_OK;
    };
    // SAFETY: copied out of a value pointer from a successful lookup.
    let e: NatEntryOf<A> = unsafe { *entry };
    let on_egress = NAT_REVERSE | NAT_ON_EGRESS;
    let now = unsafe { bpf_ktime_get_ns() };
    if e.flags & on_egress != on_egress || expired(&e, p.proto, now) {
        return TC_ACT_OK;
    }
    touch(entry, p.tcp_flags, now);
    if p.proto == IPPROTO_UDP {
        touch_udp_pair(p, entry, &e, now);
    }
    count(Event::ExternalFlowPacket);
    if set_source(ctx, p, e.to_addr, e.to_port).is_none() {
        return dropped(Event::RewriteFailed);
    }
    TC_ACT_OK
}
