//! Backend selection: a live ClientIP affinity entry if there is one, otherwise a uniform
//! random slot of the frontend's slot table. The agent lays out the table so that each
//! backend owns a number of slots proportional to its weight, in a region of the slots
//! array the service value names, which makes the choice one array lookup whatever the
//! number of services and backends.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use proxy_common::{
    Addr, Affinity, AffinityKey, Backend, Event, Frontend, Member, MemberKey, Service,
};

use crate::maps::{AFFINITY, MEMBERS, SERVICES, SLOTS, count};

const NS_PER_SEC: u64 = 1_000_000_000;

#[derive(Clone, Copy)]
pub struct Choice {
    pub backend: Backend,
    pub from_affinity: bool,
}

/// Picks a backend for a new connection to `frontend`, or `None` when the frontend has no
/// usable backend. `client` (the affinity key's `client_netns` and `client_ip6`) is asked
/// only for a Service with ClientIP affinity, and the clock read only then: most connects
/// need neither helper call.
#[inline(always)]
pub fn choose(
    frontend: &Frontend,
    service: &Service,
    client: impl FnOnce() -> (u64, Addr),
) -> Option<Choice> {
    if service.affinity_timeout_s == 0 {
        return random_slot(frontend, service).map(|backend| Choice {
            backend,
            from_affinity: false,
        });
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let (client_netns, client_ip6) = client();
    let affinity_key = AffinityKey {
        client_netns,
        frontend: *frontend,
        _pad: 0,
        client_ip6,
    };
    if let Some(backend) = live_affinity(&affinity_key, service, now) {
        return Some(Choice {
            backend,
            from_affinity: true,
        });
    }
    let backend = random_slot(frontend, service)?;
    let entry = Affinity {
        backend,
        _pad: 0,
        last_used_ns: now,
    };
    if AFFINITY.insert(affinity_key, entry, 0).is_err() {
        count(Event::AffinityStoreFailed);
    }
    Some(Choice {
        backend,
        from_affinity: false,
    })
}

/// The backend of the client's affinity entry if it was used within the timeout and is
/// still a backend with non-zero weight. A hit refreshes the entry (a sliding window, like
/// kube-proxy's `recent --set` on every new connection).
#[inline(always)]
fn live_affinity(key: &AffinityKey, service: &Service, now: u64) -> Option<Backend> {
    let entry = AFFINITY.get_ptr_mut(key)?;
    // SAFETY: the pointer comes from a successful lookup and stays valid for this program run.
    let (backend, last_used) = unsafe { ((*entry).backend, (*entry).last_used_ns) };
    let timeout_ns = service.affinity_timeout_s as u64 * NS_PER_SEC;
    if now.wrapping_sub(last_used) > timeout_ns || !usable(&key.frontend, backend) {
        count(Event::AffinityStale);
        return None;
    }
    // SAFETY: as above; a racing writer can only store another timestamp.
    unsafe { (*entry).last_used_ns = now };
    Some(backend)
}

/// `backend`'s member entry in `frontend`'s table, if it is one.
#[inline(always)]
fn member(frontend: &Frontend, backend: Backend) -> Option<Member> {
    let entry = MEMBERS.get_ptr(MemberKey {
        frontend: *frontend,
        backend,
    })?;
    // SAFETY: a value pointer from a successful lookup, read at once.
    Some(unsafe { *entry })
}

/// Whether `backend` still takes new connections of `frontend` (a member with a non-zero
/// weight): what an affinity entry needs to keep its backend.
#[inline(always)]
pub fn usable(frontend: &Frontend, backend: Backend) -> bool {
    member(frontend, backend).is_some_and(|m| m.weight != 0)
}

/// Whether a UDP flow on `backend` keeps it: the backend takes new connections of
/// `frontend`, or still serves them (`MEMBER_FLOWS_ONLY`).
#[inline(always)]
pub fn keeps_flows(frontend: &Frontend, backend: Backend) -> bool {
    member(frontend, backend).is_some_and(|m| m.keeps_flows())
}

/// A uniformly random slot of the frontend's table. A slot outside the array or empty
/// cannot happen while the agent keeps its regions (a table is written before its value
/// names it, and a region is reused only after a quarantine); should it happen anyway, read
/// the service again once rather than connect to nowhere.
#[inline(always)]
fn random_slot(frontend: &Frontend, service: &Service) -> Option<Backend> {
    if let Some(backend) = slot(service) {
        return Some(backend);
    }
    if service.slots == 0 {
        return None;
    }
    count(Event::SlotMissing);
    // SAFETY: value pointer from a successful lookup, read once.
    let fresh = unsafe { *SERVICES.get_ptr(frontend)? };
    slot(&fresh)
}

#[inline(always)]
fn slot(service: &Service) -> Option<Backend> {
    if service.slots == 0 {
        return None;
    }
    let index = unsafe { bpf_get_prandom_u32() } % service.slots;
    let backend = *SLOTS.get(service.slot_base.wrapping_add(index))?;
    (backend.addr != [0; 4]).then_some(backend)
}
