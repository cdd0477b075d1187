//! Frontends a dataplane is given but cannot serve (IPv6 ones in iptables mode on a node
//! where ip6tables is missing or the kernel has no IPv6):
//! kept aside, out of what the dataplane reports as installed (which must stay what the
//! kernel holds), so that each is reported once when it appears or changes rather than
//! at every sync, is never counted as a failure, and is forgotten when it goes.

use crate::model::{DesiredState, FrontendAddr, Rejection};

use super::Change;

/// The code of the warning (and of `ebpf_proxy_objects_rejected_total`'s reason).
pub const CODE: &str = "family_not_served";

#[derive(Debug, Default)]
pub struct LeftOut {
    frontends: DesiredState,
}

impl LeftOut {
    /// Takes the changes of the frontends `serves` refuses out of `changes`, and returns the
    /// rest. A frontend left out for the first time, or with another spec than last time,
    /// is reported in `reported`, with `cause` (a full sentence naming what is missing).
    pub fn split(
        &mut self,
        changes: Vec<Change>,
        serves: impl Fn(&FrontendAddr) -> bool,
        cause: &str,
        reported: &mut Vec<Rejection>,
    ) -> Vec<Change> {
        let mut rest = Vec::with_capacity(changes.len());
        for change in changes {
            match change {
                Change::Upsert(addr, spec) if !serves(&addr) => {
                    if self.frontends.get(&addr) != Some(&spec) {
                        reported.push(Rejection {
                            object: format!("Service {}", spec.service),
                            code: CODE,
                            reason: format!("frontend {addr} is not served: {cause}"),
                        });
                        self.frontends.insert(addr, spec);
                    }
                }
                Change::Remove(addr) if !serves(&addr) => {
                    self.frontends.remove(&addr);
                }
                change => rest.push(change),
            }
        }
        rest
    }

    /// What is left out now, as it was asked for.
    pub fn frontends(&self) -> &DesiredState {
        &self.frontends
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FrontendKind, FrontendSpec, Protocol};

    fn addr(ip: &str) -> FrontendAddr {
        FrontendAddr {
            ip: ip.parse().expect("ip"),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    fn spec(timeout: u32) -> FrontendSpec {
        FrontendSpec {
            service: "shop/web:http".into(),
            kind: FrontendKind::ClusterIp,
            affinity_timeout_s: timeout,
            local_only: false,
            backends: Default::default(),
            serving_anywhere: false,
            external_local: None,
            source_ranges: None,
            health_check_node_port: None,
        }
    }

    #[test]
    fn each_left_out_frontend_is_reported_once_per_change_and_forgotten_when_gone() {
        let mut left_out = LeftOut::default();
        let ipv4 = |a: &FrontendAddr| a.ip.is_ipv4();
        let cause = "IPv6 frontends are not served here";
        let mut reported = Vec::new();
        let rest = left_out.split(
            vec![
                Change::Upsert(addr("198.19.0.10"), spec(0)),
                Change::Upsert(addr("2001:db8::a"), spec(0)),
            ],
            ipv4,
            cause,
            &mut reported,
        );
        assert_eq!(rest, [Change::Upsert(addr("198.19.0.10"), spec(0))]);
        let shown: Vec<String> = reported.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "Service shop/web:http: frontend [2001:db8::a]:80/TCP is not served: IPv6 frontends are not served here"
            ]
        );
        assert_eq!(reported[0].code, CODE);
        // The same again (a full sync): nothing to say, nothing to write.
        let mut again = Vec::new();
        let rest = left_out.split(
            vec![Change::Upsert(addr("2001:db8::a"), spec(0))],
            ipv4,
            cause,
            &mut again,
        );
        assert!(rest.is_empty() && again.is_empty(), "{again:?}");
        // Changed: said again.
        left_out.split(
            vec![Change::Upsert(addr("2001:db8::a"), spec(30))],
            ipv4,
            cause,
            &mut again,
        );
        assert_eq!(again.len(), 1);
        // Gone: forgotten, and never handed on as a removal of installed state.
        let rest = left_out.split(
            vec![Change::Remove(addr("2001:db8::a"))],
            ipv4,
            cause,
            &mut again,
        );
        assert!(rest.is_empty());
        assert!(left_out.frontends().is_empty());
    }
}
