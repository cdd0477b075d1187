//! What the datapath counts: per-frontend counters (by the frontend id in its service
//! value) and events, summed over CPUs.

use proxy_common::{Event, Frontend};

use super::Maps;
use crate::{dataplane::ebpf::convert::frontend_addr, model::FrontendAddr};

/// Counters of one frontend, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub translated: u64,
    pub no_endpoint: u64,
    pub affinity_hits: u64,
}

impl Maps {
    /// Counters of one frontend, summed over CPUs (zero for a frontend not installed).
    pub fn counters(&self, fe: &Frontend) -> Counters {
        self.services
            .get(fe, 0)
            .map_or(Counters::default(), |value| {
                self.counters_of(value.frontend_id)
            })
    }

    /// Counters under frontend id `id`, summed over CPUs.
    pub fn counters_of(&self, id: u32) -> Counters {
        self.stats
            .get(&id, 0)
            .map_or(Counters::default(), |per_cpu| {
                per_cpu.iter().fold(Counters::default(), |sum, v| Counters {
                    translated: sum.translated + v.translated,
                    no_endpoint: sum.no_endpoint + v.no_endpoint,
                    affinity_hits: sum.affinity_hits + v.affinity_hits,
                })
            })
    }

    /// Every frontend with its service name and counters (what /metrics reports).
    pub fn frontend_counters(&self) -> Vec<(FrontendAddr, String, Counters)> {
        self.services
            .iter()
            .filter_map(Result::ok)
            .filter(|(fe, _)| fe.scope == proxy_common::SCOPE_SOCKET)
            .filter_map(|(fe, value)| {
                let addr = frontend_addr(&fe)?;
                let name = self
                    .names
                    .get(&fe, 0)
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default();
                Some((addr, name, self.counters_of(value.frontend_id)))
            })
            .collect()
    }

    /// Datapath event counters by name, summed over CPUs.
    pub fn events(&self) -> Vec<(&'static str, u64)> {
        Event::ALL
            .iter()
            .map(|e| {
                let total = self
                    .events
                    .get(&(*e as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (e.name(), total)
            })
            .collect()
    }
}
