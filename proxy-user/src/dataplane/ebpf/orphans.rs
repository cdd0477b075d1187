//! Which map entries no installed frontend owns: what an agent killed in the middle of
//! a write, or a change made while no agent ran, leaves behind. Decided from the service
//! values alone (read once), so pruning costs one pass over each map and no lookup per
//! entry. The slots and counters arrays are not pruned: what no value names in them is
//! free space (`regions`), not an entry.

use std::collections::BTreeMap;

use proxy_common::{Frontend, MemberKey, SERVICE_SOURCE_RANGES, Service, SourceRangeKey};

/// The installed service values, by key: what owns the other maps' entries.
pub struct Owners<'a> {
    pub services: &'a BTreeMap<Frontend, Service>,
}

impl Owners<'_> {
    /// A member of an installed table.
    pub fn own_member(&self, key: &MemberKey) -> bool {
        self.services.contains_key(&key.frontend)
    }

    /// A name of an installed frontend.
    pub fn own_frontend(&self, fe: &Frontend) -> bool {
        self.services.contains_key(fe)
    }

    /// A source range of a frontend whose value says it has source ranges.
    pub fn own_source_range(&self, key: &SourceRangeKey) -> bool {
        self.services
            .get(&key.frontend)
            .is_some_and(|s| s.flags & SERVICE_SOURCE_RANGES != 0)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proxy_common::SCOPE_SOCKET;

    use super::*;
    use crate::{
        dataplane::ebpf::entries::{extra_flags, source_range_key, table},
        model::{BackendAddr, FrontendKind, FrontendSpec, SourceRanges, WeightedBackend},
    };

    fn fe(last: u8) -> Frontend {
        Frontend {
            addr: proxy_common::v4_mapped(u32::from_ne_bytes([198, 19, 0, last])),
            port: 80u16.to_be(),
            proto: proxy_common::IPPROTO_TCP,
            scope: SCOPE_SOCKET,
        }
    }

    fn spec(source_ranges: bool) -> FrontendSpec {
        FrontendSpec {
            service: "demo/web:http".into(),
            kind: FrontendKind::LoadBalancer,
            affinity_timeout_s: 0,
            local_only: false,
            backends: vec![WeightedBackend {
                flows_only: false,
                addr: BackendAddr {
                    ip: Ipv4Addr::new(198, 18, 1, 2).into(),
                    port: 8080,
                },
                weight: 3,
            }]
            .into(),
            serving_anywhere: true,
            external_local: None,
            source_ranges: source_ranges.then(|| {
                Box::new(SourceRanges {
                    cidrs: vec![(Ipv4Addr::new(198, 18, 100, 0).into(), 24)],
                    allow_node: false,
                })
            }),
            health_check_node_port: None,
        }
    }

    #[test]
    fn what_an_installed_table_holds_is_owned_and_nothing_else() {
        let live = spec(true);
        let t = table(fe(1), &live, &live.backends, extra_flags(&live)).placed(0, 0);
        let services = BTreeMap::from([(fe(1), t.value)]);
        let owners = Owners {
            services: &services,
        };
        for (key, _) in &t.members {
            assert!(owners.own_member(key));
        }
        assert!(owners.own_frontend(&fe(1)));
        let (_, range) = source_range_key(fe(1), Ipv4Addr::new(198, 18, 100, 0), 24);
        assert!(owners.own_source_range(&range));

        // Anything of a frontend that is not installed.
        let gone = table(fe(2), &live, &live.backends, 0);
        assert!(!owners.own_member(&gone.members[0].0));
        assert!(!owners.own_frontend(&fe(2)));
        let (_, gone_range) = source_range_key(fe(2), Ipv4Addr::new(198, 18, 100, 0), 24);
        assert!(!owners.own_source_range(&gone_range));
    }

    #[test]
    fn ranges_of_a_frontend_whose_value_no_longer_says_so_are_orphans() {
        let without = spec(false);
        let t = table(fe(1), &without, &without.backends, extra_flags(&without));
        let services = BTreeMap::from([(fe(1), t.value)]);
        let owners = Owners {
            services: &services,
        };
        let (_, range) = source_range_key(fe(1), Ipv4Addr::new(198, 18, 100, 0), 24);
        assert!(!owners.own_source_range(&range));
        assert!(owners.own_frontend(&fe(1)));
    }
}
