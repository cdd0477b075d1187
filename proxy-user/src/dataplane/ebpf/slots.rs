//! A frontend's slot table: backend i owns a number of slots proportional to its weight,
//! and the datapath picks a uniformly random slot. Weights are reduced by their greatest
//! common divisor, so a table is exact (3:1 gives 4 slots) unless the reduced weights sum
//! to more than M = max([`MAX_SLOTS_PER_FRONTEND`], 128 x backends); then they are scaled to
//! M slots by largest remainder, every usable backend keeping at least one slot (a positive
//! weight always receives traffic, as an iptables rule would). Rounding costs a backend less
//! than one slot and the one-slot minimum at most one slot per backend, so a realised share
//! is off by at most backends/M <= 1/128, under one percentage point; for a few backends,
//! a few hundredths of a point.

use proxy_common::MAX_SLOTS_PER_FRONTEND;

use crate::model::{BackendAddr, WeightedBackend};

pub fn slot_table(backends: &[WeightedBackend]) -> Vec<BackendAddr> {
    let usable: Vec<&WeightedBackend> = backends.iter().filter(|b| b.weight > 0).collect();
    if usable.is_empty() {
        return Vec::new();
    }
    let divisor = usable.iter().fold(0, |g, b| gcd(g, b.weight));
    let reduced: Vec<u64> = usable
        .iter()
        .map(|b| u64::from(b.weight / divisor))
        .collect();
    let sum: u64 = reduced.iter().sum();
    let max = table_limit(usable.len());
    let counts = if sum <= max {
        reduced
    } else {
        scale(&reduced, sum, max)
    };
    usable
        .iter()
        .zip(counts)
        .flat_map(|(b, n)| std::iter::repeat_n(b.addr, n as usize))
        .collect()
}

/// Largest table for `backends` usable backends.
pub fn table_limit(backends: usize) -> u64 {
    u64::from(MAX_SLOTS_PER_FRONTEND).max(128 * backends as u64)
}

/// Scales `weights` (summing to `sum`) to `total` slots: each gets its proportional quota
/// rounded down but at least one; slots left over go to the largest remainders, and slots
/// overdrawn by the one-slot minimum are taken from the largest counts.
fn scale(weights: &[u64], sum: u64, total: u64) -> Vec<u64> {
    let mut counts: Vec<u64> = weights.iter().map(|w| (w * total / sum).max(1)).collect();
    let assigned: u64 = counts.iter().sum();
    if assigned < total {
        let mut by_remainder: Vec<(u64, usize)> = weights
            .iter()
            .enumerate()
            .filter(|(_, w)| *w * total / sum > 0)
            .map(|(i, w)| (w * total % sum, i))
            .collect();
        by_remainder.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, i) in by_remainder
            .iter()
            .cycle()
            .take((total - assigned) as usize)
        {
            counts[*i] += 1;
        }
    }
    for _ in total..assigned {
        if let Some(largest) = (0..counts.len()).max_by_key(|i| counts[*i]) {
            counts[largest] -= 1;
        }
    }
    counts
}

const fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn backends(weights: &[u32]) -> Vec<WeightedBackend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| WeightedBackend {
                flows_only: false,
                addr: BackendAddr {
                    ip: Ipv4Addr::new(198, 18, 1, i as u8 + 1).into(),
                    port: 80,
                },
                weight: *w,
            })
            .collect()
    }

    fn shares(weights: &[u32]) -> Vec<f64> {
        let b = backends(weights);
        let table = slot_table(&b);
        b.iter()
            .map(|x| table.iter().filter(|s| **s == x.addr).count() as f64 / table.len() as f64)
            .collect()
    }

    #[test]
    fn exact_for_small_weights() {
        let b = backends(&[3, 1, 0]);
        let table = slot_table(&b);
        assert_eq!(table.len(), 4);
        assert_eq!(table.iter().filter(|a| **a == b[0].addr).count(), 3);
        assert!(!table.contains(&b[2].addr), "weight 0 gets no slot");
    }

    #[test]
    fn reduced_by_gcd() {
        assert_eq!(slot_table(&backends(&[300, 100])).len(), 4);
        assert_eq!(slot_table(&backends(&[1, 1, 1, 1, 1])).len(), 5);
    }

    #[test]
    fn empty_when_nothing_usable() {
        assert!(slot_table(&backends(&[0, 0])).is_empty());
        assert!(slot_table(&[]).is_empty());
    }

    #[test]
    fn scaled_tables_stay_within_a_slot_of_the_configured_share() {
        let many: Vec<u32> = (0..200)
            .map(|i| if i == 0 { 10_000 } else { 1 + i % 7 })
            .collect();
        for weights in [
            vec![9999, 9998, 7],
            vec![10_000, 1, 1, 1, 1],
            vec![7919; 3],
            vec![5000, 4999, 3, 9973],
            many,
        ] {
            let total: f64 = weights.iter().map(|w| f64::from(*w)).sum();
            let got = shares(&weights);
            let size = slot_table(&backends(&weights)).len() as u64;
            assert!(size <= table_limit(weights.len()), "{size} slots");
            // An exact table (reduced weights fit) has no error; a scaled one fills the limit
            // and is off by at most backends/limit, under one percentage point.
            let bound = if size < table_limit(weights.len()) {
                1e-12
            } else {
                weights.len() as f64 / size as f64
            };
            assert!(bound < 0.01, "{weights:?}: bound {bound}");
            for (w, share) in weights.iter().zip(got) {
                let want = f64::from(*w) / total;
                assert!(
                    (share - want).abs() <= bound,
                    "{weights:?}: {share} vs {want}"
                );
                assert!(share > 0.0, "every usable backend keeps a slot");
            }
        }
    }
}
