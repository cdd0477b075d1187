//! A frontend's map entries, both ways: the one builder of each entry the writers
//! (`maps::write`, `maps::write_batch`) use, and what the entries say is installed, as
//! the model's frontends. Pure functions over entries, so that "what the agent believes
//! is installed is exactly what the kernel holds" is checked by a round trip (spec ->
//! entries -> spec) without a kernel.
//!
//! A few fields of a [`FrontendSpec`] are not in the maps because no program reads them;
//! [`unchanged`] leaves them out of the diff, each with its reason.

use std::{collections::BTreeMap, net::IpAddr};

use proxy_common::{
    Backend, Frontend, MEMBER_FLOWS_ONLY, Member, MemberKey, SCOPE_EXTERNAL_LOCAL, SCOPE_SOCKET,
    SERVICE_EXTERNAL_LOCAL, SERVICE_SOURCE_RANGES, Service, SourceRangeKey,
};

use super::{
    convert::{
        addr_of, backend, backend_addr, from_service_flags, frontend_addr, range_bits, range_of,
        service_flags,
    },
    slots::slot_table,
};
use crate::model::{DesiredState, FrontendSpec, SourceRanges, WeightedBackend};

/// The entries of the maps that describe frontends. Left out: the slots (they follow from
/// the members and weights; where they sit, `slot_base`, is the allocator's business, not
/// the model's) and the frontend ids and their counters (the same: allocated, not
/// configured).
#[derive(Debug, Default, PartialEq)]
pub struct Entries {
    pub services: Vec<(Frontend, Service)>,
    pub members: Vec<(MemberKey, Member)>,
    pub names: BTreeMap<Frontend, String>,
    /// loadBalancerSourceRanges keys: (LPM prefix length, key).
    pub source_ranges: Vec<(u32, SourceRangeKey)>,
}

/// Everything one slot table is made of: its members, its slots and the service value
/// that makes them live. Built unplaced (`slot_base` and `frontend_id` 0): the writer
/// allocates a region of the table's size and the frontend's id, then [`Table::placed`].
#[derive(Debug, PartialEq)]
pub struct Table {
    pub members: Vec<(MemberKey, Member)>,
    pub slots: Vec<Backend>,
    pub value: Service,
}

impl Table {
    /// The table with its slots at `slot_base` of the slots array, counted under
    /// `frontend_id`.
    pub fn placed(mut self, slot_base: u32, frontend_id: u32) -> Self {
        self.value.slot_base = slot_base;
        self.value.frontend_id = frontend_id;
        self
    }

    /// Slot numbers and backends, for writing the slots array.
    pub fn slot_entries(&self) -> impl Iterator<Item = (u32, Backend)> + '_ {
        (self.value.slot_base..).zip(self.slots.iter().copied())
    }
}

/// The table of `backends` under key `fe`, with `extra_flags` (what [`extra_flags`] says
/// for a frontend's own table, 0 for its external-local one), not yet placed.
pub fn table(
    fe: Frontend,
    spec: &FrontendSpec,
    backends: &[WeightedBackend],
    extra_flags: u8,
) -> Table {
    let slots: Vec<Backend> = slot_table(backends).iter().map(backend).collect();
    Table {
        members: members(fe, backends),
        value: service_value(spec, backends, slots.len(), extra_flags),
        slots,
    }
}

/// The service value of a frontend's table of `backends` (slot table of `slots`
/// entries), with `extra_flags` (external policy, source ranges), not yet placed.
fn service_value(
    spec: &FrontendSpec,
    backends: &[WeightedBackend],
    slots: usize,
    extra_flags: u8,
) -> Service {
    Service {
        slot_base: 0,
        slots: slots as u32,
        affinity_timeout_s: spec.affinity_timeout_s,
        backends: backends.len() as u32,
        frontend_id: 0,
        flags: service_flags(spec.kind, spec.local_only) | extra_flags,
        _pad: [0; 3],
    }
}

/// The flags of a frontend's own service value that say which other entries it has:
/// an external-local table, source ranges.
pub fn extra_flags(spec: &FrontendSpec) -> u8 {
    let local = if spec.external_local.is_some() {
        SERVICE_EXTERNAL_LOCAL
    } else {
        0
    };
    let ranges = if spec.source_ranges.is_some() {
        SERVICE_SOURCE_RANGES
    } else {
        0
    };
    local | ranges
}

/// The member entries of a frontend's table under key `fe`.
pub fn members(fe: Frontend, backends: &[WeightedBackend]) -> Vec<(MemberKey, Member)> {
    backends
        .iter()
        .map(|b| {
            (
                member_key(fe, b),
                Member {
                    weight: b.weight,
                    flags: if b.flows_only { MEMBER_FLOWS_ONLY } else { 0 },
                },
            )
        })
        .collect()
}

/// The member key of `b` in the table under key `fe`.
pub fn member_key(fe: Frontend, b: &WeightedBackend) -> MemberKey {
    MemberKey {
        frontend: fe,
        backend: backend(&b.addr),
    }
}

/// The key of a frontend's external-local table (this node's endpoints, for the tc
/// programs under externalTrafficPolicy Local).
pub fn external_local_key(fe: Frontend) -> Frontend {
    Frontend {
        scope: SCOPE_EXTERNAL_LOCAL,
        ..fe
    }
}

/// The source range key of `net/bits` for `fe`, as (LPM prefix length, key).
pub fn source_range_key(fe: Frontend, net: impl Into<IpAddr>, bits: u8) -> (u32, SourceRangeKey) {
    let net = net.into();
    (
        proxy_common::source_range_prefix(range_bits(net, bits)),
        SourceRangeKey {
            frontend: fe,
            addr: addr_of(net),
        },
    )
}

/// The source range keys of a LoadBalancer frontend, as (prefix length, key).
pub fn source_range_keys(fe: Frontend, ranges: &SourceRanges) -> Vec<(u32, SourceRangeKey)> {
    ranges
        .cidrs
        .iter()
        .map(|(net, bits)| source_range_key(fe, *net, *bits))
        .collect()
}

/// Every frontend the entries describe.
pub fn desired_state(entries: Entries) -> DesiredState {
    let mut members: BTreeMap<Frontend, Vec<WeightedBackend>> = BTreeMap::new();
    for (key, member) in entries.members {
        let addr = backend_addr(&key.backend);
        members
            .entry(key.frontend)
            .or_default()
            .push(WeightedBackend {
                flows_only: member.flags & MEMBER_FLOWS_ONLY != 0,
                addr,
                weight: member.weight,
            });
    }
    let mut ranges: BTreeMap<Frontend, Vec<(IpAddr, u8)>> = BTreeMap::new();
    for (prefix_len, key) in entries.source_ranges {
        let key_bits = prefix_len.saturating_sub(proxy_common::source_range_prefix(0)) as u8;
        let (net, bits) = range_of(&key.addr, key_bits);
        ranges.entry(key.frontend).or_default().push((net, bits));
    }
    let mut state = DesiredState::new();
    let mut local_views = Vec::new();
    for (fe, service) in entries.services {
        if fe.scope == SCOPE_EXTERNAL_LOCAL {
            local_views.push(fe);
            continue;
        }
        let Some(addr) = frontend_addr(&fe) else {
            continue;
        };
        let mut backends = members.remove(&fe).unwrap_or_default();
        backends.sort();
        let (kind, local_only) = from_service_flags(service.flags);
        let source_ranges = (service.flags & SERVICE_SOURCE_RANGES != 0).then(|| {
            let mut cidrs = ranges.remove(&fe).unwrap_or_default();
            cidrs.sort();
            SourceRanges {
                cidrs,
                allow_node: false,
            }
        });
        state.insert(
            addr,
            FrontendSpec {
                service: entries
                    .names
                    .get(&fe)
                    .map_or_else(Default::default, |n| n.as_str().into()),
                kind,
                local_only,
                affinity_timeout_s: service.affinity_timeout_s,
                serving_anywhere: backends.iter().any(|b| b.weight > 0),
                backends: backends.into(),
                source_ranges: source_ranges.map(Box::new),
                health_check_node_port: None,
                // Filled from the scoped tables below.
                external_local: None,
            },
        );
    }
    for fe in local_views {
        let unscoped = Frontend {
            scope: SCOPE_SOCKET,
            ..fe
        };
        let mut backends = members.remove(&fe).unwrap_or_default();
        backends.sort();
        if let Some(spec) = frontend_addr(&unscoped).and_then(|a| state.get_mut(&a)) {
            spec.external_local = Some(backends);
        }
    }
    state
}

/// Whether `installed` (read back, or written by this agent) already is `wanted`, as far
/// as the maps can say. Left out of the comparison, because no program reads them and
/// so the maps do not hold them:
/// - `serving_anywhere`: the socket programs refuse a frontend without a usable backend
///   the same way whether or not other nodes have endpoints (only iptables mode renders
///   DROP or REJECT from it); read back, it says only what `backends` say.
/// - `source_ranges.allow_node`: the node's own traffic to its load balancer IP goes
///   through the socket programs, which apply no source ranges (kube-proxy's rule exists
///   because that traffic meets its chains).
/// - `health_check_node_port`: served by the agent's health check servers from the
///   model at each sync, not by the datapath.
pub fn unchanged(installed: &FrontendSpec, wanted: &FrontendSpec) -> bool {
    let comparable = |s: &FrontendSpec| FrontendSpec {
        serving_anywhere: false,
        health_check_node_port: None,
        source_ranges: s.source_ranges.as_ref().map(|r| {
            Box::new(SourceRanges {
                allow_node: false,
                ..(**r).clone()
            })
        }),
        ..s.clone()
    };
    comparable(installed) == comparable(wanted)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        dataplane::ebpf::convert::frontend,
        model::{BackendAddr, FrontendAddr, FrontendKind, Protocol},
    };

    fn wb(last: u8, weight: u32) -> WeightedBackend {
        WeightedBackend {
            flows_only: false,
            addr: BackendAddr {
                ip: Ipv4Addr::new(198, 18, 1, last).into(),
                port: 8080,
            },
            weight,
        }
    }

    /// What the writers put in the maps for one frontend, built from the same builders
    /// (placed somewhere: where is not part of the model).
    fn entries_of(addr: &FrontendAddr, spec: &FrontendSpec) -> Entries {
        let fe = frontend(addr);
        let mut entries = Entries::default();
        if let Some(ranges) = &spec.source_ranges {
            entries.source_ranges = source_range_keys(fe, ranges);
        }
        if let Some(local) = &spec.external_local {
            let scoped = external_local_key(fe);
            let t = table(scoped, spec, local, 0).placed(0, 7);
            entries.members.extend(t.members);
            entries.services.push((scoped, t.value));
        }
        let t = table(fe, spec, &spec.backends, extra_flags(spec)).placed(4096, 7);
        entries.members.extend(t.members);
        entries.services.push((fe, t.value));
        entries.names.insert(fe, spec.service.to_string());
        entries
    }

    fn addr() -> FrontendAddr {
        FrontendAddr {
            ip: Ipv4Addr::new(198, 19, 7, 7).into(),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    /// A LoadBalancer frontend with every field of FrontendSpec set.
    fn full_spec() -> FrontendSpec {
        FrontendSpec {
            service: "demo/web:http".into(),
            kind: FrontendKind::LoadBalancer,
            affinity_timeout_s: 600,
            local_only: false,
            backends: vec![wb(2, 3), wb(3, 1), wb(4, 0)].into(),
            serving_anywhere: true,
            external_local: Some(vec![wb(2, 3)]),
            source_ranges: Some(Box::new(SourceRanges {
                cidrs: vec![
                    (Ipv4Addr::new(198, 18, 100, 0).into(), 24),
                    (Ipv4Addr::new(203, 0, 113, 7).into(), 32),
                ],
                allow_node: true,
            })),
            health_check_node_port: Some(32_100),
        }
    }

    #[test]
    fn every_field_round_trips_or_is_left_out_of_the_diff_on_purpose() {
        let spec = full_spec();
        let state = desired_state(entries_of(&addr(), &spec));
        let back = state.get(&addr()).expect("read back");
        assert!(unchanged(back, &spec), "{back:#?}\n{spec:#?}");
        // What the maps hold comes back exactly.
        assert_eq!(back.backends, spec.backends);
        assert_eq!(back.external_local, spec.external_local);
        assert_eq!(
            back.source_ranges.as_ref().map(|r| &r.cidrs),
            spec.source_ranges.as_ref().map(|r| &r.cidrs)
        );
        assert_eq!(
            (back.kind, back.local_only, back.affinity_timeout_s),
            (spec.kind, spec.local_only, spec.affinity_timeout_s)
        );
        assert_eq!(back.service, spec.service);
    }

    #[test]
    fn a_change_to_any_field_the_maps_hold_is_a_change() {
        let base = full_spec();
        let changed: Vec<(&str, FrontendSpec)> = vec![
            (
                "service",
                FrontendSpec {
                    service: "demo/other:http".into(),
                    ..base.clone()
                },
            ),
            (
                "kind",
                FrontendSpec {
                    kind: FrontendKind::NodePort,
                    ..base.clone()
                },
            ),
            (
                "affinity",
                FrontendSpec {
                    affinity_timeout_s: 0,
                    ..base.clone()
                },
            ),
            (
                "local_only",
                FrontendSpec {
                    local_only: true,
                    ..base.clone()
                },
            ),
            (
                "weights",
                FrontendSpec {
                    backends: vec![wb(2, 1), wb(3, 1), wb(4, 0)].into(),
                    ..base.clone()
                },
            ),
            (
                "external_local",
                FrontendSpec {
                    external_local: None,
                    ..base.clone()
                },
            ),
            (
                "a source range gone",
                FrontendSpec {
                    source_ranges: Some(Box::new(SourceRanges {
                        cidrs: vec![(Ipv4Addr::new(198, 18, 100, 0).into(), 24)],
                        allow_node: true,
                    })),
                    ..base.clone()
                },
            ),
            (
                "no source ranges",
                FrontendSpec {
                    source_ranges: None,
                    ..base.clone()
                },
            ),
        ];
        let back = desired_state(entries_of(&addr(), &base));
        let back = back.get(&addr()).expect("read back");
        for (what, spec) in changed {
            assert!(!unchanged(back, &spec), "{what} must be rewritten");
            let again = desired_state(entries_of(&addr(), &spec));
            assert!(
                unchanged(again.get(&addr()).expect("read back"), &spec),
                "{what}"
            );
        }
    }

    #[test]
    fn closed_source_ranges_read_back_as_closed_not_open() {
        let spec = FrontendSpec {
            source_ranges: Some(Box::new(SourceRanges {
                cidrs: Vec::new(),
                allow_node: false,
            })),
            ..full_spec()
        };
        let back = desired_state(entries_of(&addr(), &spec));
        assert_eq!(
            back.get(&addr()).and_then(|s| s.source_ranges.clone()),
            spec.source_ranges
        );
    }

    #[test]
    fn a_placed_table_names_its_region_and_id_and_its_value_counts_its_slots() {
        let spec = full_spec();
        let fe = frontend(&addr());
        let t = table(fe, &spec, &spec.backends, extra_flags(&spec)).placed(100, 3);
        assert_eq!(t.value.slots as usize, t.slots.len());
        assert_eq!((t.value.slot_base, t.value.frontend_id), (100, 3));
        let numbers: Vec<u32> = t.slot_entries().map(|(n, _)| n).collect();
        assert_eq!(numbers, (100..100 + t.value.slots).collect::<Vec<_>>());
        assert_eq!(
            t.value.flags & (SERVICE_EXTERNAL_LOCAL | SERVICE_SOURCE_RANGES),
            SERVICE_EXTERNAL_LOCAL | SERVICE_SOURCE_RANGES
        );
    }

    #[test]
    fn where_a_table_is_placed_is_not_a_change() {
        let spec = full_spec();
        let placed_at = |base: u32, id: u32| {
            let fe = frontend(&addr());
            let t = table(fe, &spec, &spec.backends, extra_flags(&spec)).placed(base, id);
            let mut entries = Entries::default();
            entries.members.extend(t.members);
            entries.services.push((fe, t.value));
            entries.names.insert(fe, spec.service.to_string());
            entries.source_ranges =
                source_range_keys(fe, spec.source_ranges.as_ref().expect("ranges"));
            desired_state(entries)
        };
        assert_eq!(placed_at(0, 0), placed_at(5000, 9));
    }
}
