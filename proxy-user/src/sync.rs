//! Diff of installed against desired state: a change to one Service yields changes to that
//! Service's frontends only.

use crate::model::{DesiredState, FrontendAddr, FrontendSpec};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Upsert(FrontendAddr, FrontendSpec),
    Remove(FrontendAddr),
}

pub fn diff(installed: &DesiredState, desired: &DesiredState) -> Vec<Change> {
    let mut changes: Vec<Change> = installed
        .keys()
        .filter(|addr| !desired.contains_key(addr))
        .map(|addr| Change::Remove(*addr))
        .collect();
    changes.extend(
        desired
            .iter()
            .filter(|(addr, spec)| installed.get(addr) != Some(spec))
            .map(|(addr, spec)| Change::Upsert(*addr, spec.clone())),
    );
    changes
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{BackendAddr, Protocol, WeightedBackend};

    fn frontend(last: u8) -> FrontendAddr {
        FrontendAddr {
            ip: Ipv4Addr::new(198, 19, 0, last),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    fn spec(name: &str, backends: &[u8]) -> FrontendSpec {
        FrontendSpec {
            service: name.into(),
            affinity_timeout_s: 0,
            backends: backends
                .iter()
                .map(|b| WeightedBackend {
                    addr: BackendAddr {
                        ip: Ipv4Addr::new(198, 18, 1, *b),
                        port: 8080,
                    },
                    weight: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn only_changed_frontends_are_rewritten() {
        let installed: DesiredState = [
            (frontend(1), spec("a", &[1, 2])),
            (frontend(2), spec("b", &[3])),
            (frontend(3), spec("c", &[4])),
        ]
        .into();
        let desired: DesiredState = [
            (frontend(1), spec("a", &[1, 2])),
            (frontend(2), spec("b", &[3, 5])),
            (frontend(4), spec("d", &[6])),
        ]
        .into();
        assert_eq!(
            diff(&installed, &desired),
            vec![
                Change::Remove(frontend(3)),
                Change::Upsert(frontend(2), spec("b", &[3, 5])),
                Change::Upsert(frontend(4), spec("d", &[6])),
            ]
        );
        assert!(diff(&desired, &desired).is_empty());
    }
}
