//! UDP flows of unconnected sockets: the datagrams of one socket to one frontend go to
//! one backend while the flow is active, as conntrack keeps a UDP 5-tuple on the endpoint
//! its first packet was DNATed to. A flow idle past its timeout (the short one until a
//! reply came back, the stream one after: `DatapathConfig`), or whose backend left the
//! frontend, is chosen anew by the next datagram. A backend that still serves without
//! taking new connections (terminating while ready ones exist) keeps its flows, as
//! kube-proxy leaves their conntrack entries. One hash lookup and one member lookup
//! per datagram, whatever the number of flows; nothing is scanned.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use proxy_common::{Backend, Event, Frontend, UdpFlow, UdpFlowKey};

use crate::{
    maps::{UDP_FLOWS, config, count},
    select::keeps_flows,
};

/// The flow of the socket with `cookie` to `frontend` (as the socket named it).
#[inline(always)]
pub fn key(cookie: u64, frontend: &Frontend) -> UdpFlowKey {
    UdpFlowKey {
        socket_cookie: cookie,
        frontend: *frontend,
        _pad: 0,
    }
}

/// The backend of a live flow, its clock moved on; `None` when there is no flow, it has
/// expired, or its backend left `lookup` (the frontend's key in the maps): removed, no
/// longer serving, or drained with weight 0.
#[inline(always)]
pub fn kept(flow: &UdpFlowKey, lookup: &Frontend) -> Option<Backend> {
    let entry = UDP_FLOWS.get_ptr_mut(flow)?;
    // SAFETY: a value pointer from a successful lookup, copied out at once.
    let known = unsafe { *entry };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // Another CPU may have stamped the flow after `now` was read: not idle at all.
    if now.saturating_sub(known.last_active_ns()) > known.timeout_ns(&config()) {
        count(Event::UdpFlowExpired);
        return None;
    }
    if !keeps_flows(lookup, known.backend) {
        count(Event::UdpFlowBackendLeft);
        return None;
    }
    // SAFETY: as above; a racing writer can only store another timestamp.
    unsafe { (*entry).last_sent_ns = now };
    Some(known.backend)
}

/// Starts (or restarts) a flow on `backend`.
#[inline(always)]
pub fn start(flow: &UdpFlowKey, backend: Backend) {
    let entry = UdpFlow {
        backend,
        _pad: 0,
        // SAFETY: a helper without arguments.
        last_sent_ns: unsafe { bpf_ktime_get_ns() },
        last_reply_ns: 0,
    };
    if UDP_FLOWS.insert(flow, entry, 0).is_err() {
        count(Event::UdpFlowStoreFailed);
    }
}

/// A datagram of the flow came back: from now on the stream timeout applies.
#[inline(always)]
pub fn replied(flow: &UdpFlowKey) {
    if let Some(entry) = UDP_FLOWS.get_ptr_mut(flow) {
        // SAFETY: a value pointer from a successful lookup; a racing writer can only
        // store another timestamp.
        unsafe { (*entry).last_reply_ns = bpf_ktime_get_ns() };
    }
}
