//! `-m statistic --mode random --probability P` for endpoint i of n.
//!
//! kube-proxy gives endpoint i (0-based) of n the probability 1/(n-i), printed with ten
//! decimals, and no statistic match to the last one. With weights this generalises to
//! P_i = w_i / (w_i + ... + w_{n-1}), which is kube-proxy's formula when weights are equal.
//! Endpoints of weight 0 get no rule at all.

/// The probability printed for each endpoint, `None` for the last one (taken
/// unconditionally). `weights` must all be non-zero.
pub fn probabilities(weights: &[u32]) -> Vec<Option<String>> {
    let mut remaining: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let last = weights.len().saturating_sub(1);
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let p = (i < last).then(|| format!("{:.10}", f64::from(*w) / remaining as f64));
            remaining -= u64::from(*w);
            p
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_are_kube_proxys_probabilities() {
        let p = probabilities(&[1; 7]);
        assert_eq!(p[0].as_deref(), Some("0.1428571429"));
        assert_eq!(p[4].as_deref(), Some("0.3333333333"));
        assert_eq!(p[5].as_deref(), Some("0.5000000000"));
        assert_eq!(p[6], None);
    }

    #[test]
    fn weights_generalise_the_formula() {
        // 3:1 -> 0.75 then the rest; 1:2:1 -> 1/4, 2/3, last.
        assert_eq!(
            probabilities(&[3, 1]),
            [Some("0.7500000000".to_string()), None]
        );
        assert_eq!(
            probabilities(&[1, 2, 1]),
            [
                Some("0.2500000000".to_string()),
                Some("0.6666666667".to_string()),
                None
            ]
        );
        assert!(probabilities(&[]).is_empty());
    }
}
