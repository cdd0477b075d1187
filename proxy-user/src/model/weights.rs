//! The `ebpf-proxy.dev/weights` Service annotation: `"web-0=3,web-1=1,198.18.1.4=2"`,
//! keyed by an endpoint's targetRef name or its IP (`2001:db8::4=2` for IPv6). Unlisted
//! endpoints weigh 1; weight 0 takes an endpoint out of new connections.

use std::collections::BTreeMap;

pub const ANNOTATION: &str = "ebpf-proxy.dev/weights";

/// Largest accepted weight; keeps slot tables and iptables probabilities meaningful.
pub const MAX_WEIGHT: u32 = 10_000;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Weights(BTreeMap<String, u32>);

impl Weights {
    /// Parses the annotation. The error explains the first problem found; the caller then
    /// uses equal weights.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut map = BTreeMap::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not NAME=WEIGHT"))?;
            let (key, value) = (key.trim(), value.trim());
            if key.is_empty() {
                return Err(format!("{item:?} has no endpoint name"));
            }
            let weight: u32 = value
                .parse()
                .map_err(|_| format!("weight {value:?} of {key:?} is not a whole number"))?;
            if weight > MAX_WEIGHT {
                return Err(format!(
                    "weight {weight} of {key:?} is above the maximum {MAX_WEIGHT}"
                ));
            }
            // An IP as the endpoint's address prints (`2001:DB8::04` is `2001:db8::4`).
            let key = key
                .parse::<std::net::IpAddr>()
                .map_or_else(|_| key.to_owned(), |ip| ip.to_string());
            if map.insert(key.clone(), weight).is_some() {
                return Err(format!("{key:?} is listed twice"));
            }
        }
        Ok(Self(map))
    }

    /// Weight of an endpoint: by targetRef name first, then by IP, else 1.
    pub fn of(&self, target_name: Option<&str>, ip: std::net::IpAddr) -> u32 {
        if self.0.is_empty() {
            return 1;
        }
        target_name
            .and_then(|n| self.0.get(n))
            .or_else(|| self.0.get(&ip.to_string()))
            .copied()
            .unwrap_or(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ips_and_defaults() {
        let w = Weights::parse("web-0=3, web-1=1,198.18.1.4=0").expect("valid");
        let ip = |text: &str| text.parse().expect("ip");
        assert_eq!(w.of(Some("web-0"), ip("198.18.1.2")), 3);
        assert_eq!(w.of(Some("web-1"), ip("198.18.1.3")), 1);
        assert_eq!(w.of(None, ip("198.18.1.4")), 0);
        let v6 = Weights::parse("2001:DB8:0::04=2").expect("valid");
        assert_eq!(
            v6.of(None, ip("2001:db8::4")),
            2,
            "IPv6 keys in any spelling"
        );
        assert_eq!(
            w.of(Some("web-9"), ip("198.18.1.9")),
            1,
            "unlisted endpoints weigh 1"
        );
    }

    #[test]
    fn malformed_annotations_explain_themselves() {
        assert_eq!(
            Weights::parse("web-0").expect_err("malformed"),
            "\"web-0\" is not NAME=WEIGHT"
        );
        assert_eq!(
            Weights::parse("web-0=-1").expect_err("malformed"),
            "weight \"-1\" of \"web-0\" is not a whole number"
        );
        assert!(
            Weights::parse("a=1,a=2")
                .expect_err("malformed")
                .contains("listed twice")
        );
        assert!(
            Weights::parse("a=10001")
                .expect_err("malformed")
                .contains("maximum")
        );
        assert_eq!(
            Weights::parse("").expect("empty is fine"),
            Weights::default()
        );
    }
}
