//! What the datapath counts: per-frontend counters and events, summed over CPUs.

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
    /// Counters of one frontend (zero until its first connection).
    pub fn counters(&self, fe: &Frontend) -> Counters {
        self.stats
            .get(fe, 0)
            .map_or(Counters::default(), |v| Counters {
                translated: v.translated,
                no_endpoint: v.no_endpoint,
                affinity_hits: v.affinity_hits,
            })
    }

    /// Every frontend with its service name and counters (what /metrics reports).
    pub fn frontend_counters(&self) -> Vec<(FrontendAddr, String, Counters)> {
        self.services
            .keys()
            .filter_map(Result::ok)
            .filter_map(|fe| {
                let addr = frontend_addr(&fe)?;
                let name = self
                    .names
                    .get(&fe, 0)
                    .map(|n| n.as_str().to_owned())
                    .unwrap_or_default();
                Some((addr, name, self.counters(&fe)))
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
