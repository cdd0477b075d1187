//! A frontend's map entries, both ways: the builders the writers (`maps.rs`) use, and
//! what the entries say is installed, as the model's frontends. Pure functions over
//! entries, so that "what the agent believes is installed is exactly what the kernel
//! holds" is checked by a round trip (spec -> entries -> spec) without a kernel.
//!
//! A few fields of a [`FrontendSpec`] are not in the maps because no program reads them;
//! [`unchanged`] leaves them out of the diff, each with its reason.

use std::collections::BTreeMap;

use proxy_common::{
    Frontend, Member, MemberKey, SCOPE_EXTERNAL_LOCAL, SCOPE_SOCKET, SERVICE_SOURCE_RANGES,
    Service, SourceRangeKey,
};

use super::convert::{backend, backend_addr, from_service_flags, frontend_addr, service_flags};
use crate::model::{DesiredState, FrontendSpec, SourceRanges, WeightedBackend};

/// The entries of the maps that describe frontends (slots aside: they follow from the
/// members and weights, and `remove_orphans` keeps them consistent with the services).
#[derive(Debug, Default, PartialEq)]
pub struct Entries {
    pub services: Vec<(Frontend, Service)>,
    pub members: Vec<(MemberKey, Member)>,
    pub names: BTreeMap<Frontend, String>,
    /// loadBalancerSourceRanges keys: (LPM prefix length, key).
    pub source_ranges: Vec<(u32, SourceRangeKey)>,
}

/// The service value of a frontend's table of `backends` (slot table of `slots`
/// entries) in `generation`, with `extra_flags` (external policy, source ranges).
pub fn service_value(
    spec: &FrontendSpec,
    backends: &[WeightedBackend],
    slots: usize,
    generation: u8,
    extra_flags: u8,
) -> Service {
    Service {
        slots: slots as u32,
        affinity_timeout_s: spec.affinity_timeout_s,
        backends: backends.len() as u32,
        generation,
        flags: service_flags(spec.kind, spec.local_only) | extra_flags,
        _pad: 0,
    }
}

/// The member entries of a frontend's table under key `fe`.
pub fn members(fe: Frontend, backends: &[WeightedBackend]) -> Vec<(MemberKey, Member)> {
    backends
        .iter()
        .map(|b| {
            (
                MemberKey {
                    frontend: fe,
                    backend: backend(&b.addr),
                },
                Member {
                    weight: b.weight,
                    flags: 0,
                },
            )
        })
        .collect()
}

/// The source range keys of a LoadBalancer frontend, as (prefix length, key).
pub fn source_range_keys(fe: Frontend, ranges: &SourceRanges) -> Vec<(u32, SourceRangeKey)> {
    ranges
        .cidrs
        .iter()
        .map(|(net, bits)| {
            (
                proxy_common::source_range_prefix(*bits),
                SourceRangeKey {
                    frontend: fe,
                    addr: u32::from_ne_bytes(net.octets()),
                },
            )
        })
        .collect()
}

/// Every frontend the entries describe.
pub fn desired_state(entries: Entries) -> DesiredState {
    let mut members: BTreeMap<Frontend, Vec<WeightedBackend>> = BTreeMap::new();
    for (key, member) in entries.members {
        members
            .entry(key.frontend)
            .or_default()
            .push(WeightedBackend {
                addr: backend_addr(&key.backend),
                weight: member.weight,
            });
    }
    let mut ranges: BTreeMap<Frontend, Vec<(std::net::Ipv4Addr, u8)>> = BTreeMap::new();
    for (prefix_len, key) in entries.source_ranges {
        let bits = prefix_len.saturating_sub(proxy_common::source_range_prefix(0)) as u8;
        ranges
            .entry(key.frontend)
            .or_default()
            .push((std::net::Ipv4Addr::from(key.addr.to_ne_bytes()), bits));
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
                service: entries.names.get(&fe).cloned().unwrap_or_default(),
                kind,
                local_only,
                affinity_timeout_s: service.affinity_timeout_s,
                serving_anywhere: backends.iter().any(|b| b.weight > 0),
                backends,
                source_ranges,
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
        source_ranges: s.source_ranges.as_ref().map(|r| SourceRanges {
            allow_node: false,
            ..r.clone()
        }),
        ..s.clone()
    };
    comparable(installed) == comparable(wanted)
}

/// The source range keys no frontend asks for: of a frontend that is gone, or whose
/// value no longer says it has source ranges (what a change made while no agent ran,
/// or an interrupted write, leaves in the trie).
pub fn orphaned_source_ranges(
    services: &BTreeMap<Frontend, Service>,
    keys: impl IntoIterator<Item = (u32, SourceRangeKey)>,
) -> Vec<(u32, SourceRangeKey)> {
    keys.into_iter()
        .filter(|(_, key)| {
            services
                .get(&key.frontend)
                .is_none_or(|s| s.flags & SERVICE_SOURCE_RANGES == 0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        dataplane::ebpf::{convert::frontend, slots::slot_table},
        model::{BackendAddr, FrontendAddr, FrontendKind, Protocol},
    };

    fn wb(last: u8, weight: u32) -> WeightedBackend {
        WeightedBackend {
            addr: BackendAddr {
                ip: Ipv4Addr::new(198, 18, 1, last),
                port: 8080,
            },
            weight,
        }
    }

    /// What the writers put in the maps for one frontend, built from the same helpers.
    fn entries_of(addr: &FrontendAddr, spec: &FrontendSpec) -> Entries {
        let fe = frontend(addr);
        let mut entries = Entries::default();
        let mut flags = 0;
        if let Some(ranges) = &spec.source_ranges {
            flags |= SERVICE_SOURCE_RANGES;
            entries.source_ranges = source_range_keys(fe, ranges);
        }
        if let Some(local) = &spec.external_local {
            flags |= proxy_common::SERVICE_EXTERNAL_LOCAL;
            let scoped = Frontend {
                scope: SCOPE_EXTERNAL_LOCAL,
                ..fe
            };
            entries.members.extend(members(scoped, local));
            let slots = slot_table(local).len();
            entries
                .services
                .push((scoped, service_value(spec, local, slots, 0, 0)));
        }
        entries.members.extend(members(fe, &spec.backends));
        let slots = slot_table(&spec.backends).len();
        entries
            .services
            .push((fe, service_value(spec, &spec.backends, slots, 1, flags)));
        entries.names.insert(fe, spec.service.clone());
        entries
    }

    fn addr() -> FrontendAddr {
        FrontendAddr {
            ip: Ipv4Addr::new(198, 19, 7, 7),
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
            backends: vec![wb(2, 3), wb(3, 1), wb(4, 0)],
            serving_anywhere: true,
            external_local: Some(vec![wb(2, 3)]),
            source_ranges: Some(SourceRanges {
                cidrs: vec![
                    (Ipv4Addr::new(198, 18, 100, 0), 24),
                    (Ipv4Addr::new(203, 0, 113, 7), 32),
                ],
                allow_node: true,
            }),
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
                    backends: vec![wb(2, 1), wb(3, 1), wb(4, 0)],
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
                    source_ranges: Some(SourceRanges {
                        cidrs: vec![(Ipv4Addr::new(198, 18, 100, 0), 24)],
                        allow_node: true,
                    }),
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
            source_ranges: Some(SourceRanges {
                cidrs: Vec::new(),
                allow_node: false,
            }),
            ..full_spec()
        };
        let back = desired_state(entries_of(&addr(), &spec));
        assert_eq!(
            back.get(&addr()).and_then(|s| s.source_ranges.clone()),
            spec.source_ranges
        );
    }

    #[test]
    fn ranges_of_a_gone_frontend_or_one_without_ranges_are_orphans() {
        let spec = full_spec();
        let entries = entries_of(&addr(), &spec);
        let keys = entries.source_ranges.clone();
        let mut services: BTreeMap<Frontend, Service> = entries.services.into_iter().collect();
        assert!(orphaned_source_ranges(&services, keys.clone()).is_empty());
        let fe = frontend(&addr());
        if let Some(s) = services.get_mut(&fe) {
            s.flags &= !SERVICE_SOURCE_RANGES;
        }
        assert_eq!(orphaned_source_ranges(&services, keys.clone()), keys);
        services.clear();
        assert_eq!(orphaned_source_ranges(&services, keys.clone()), keys);
    }
}
