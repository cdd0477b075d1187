//! UDP conntrack cleanup, as kube-proxy does it (pkg/proxy/conntrack/cleanup.go).
//!
//! A UDP "connection" lives in conntrack for as long as packets keep coming, so a client
//! that keeps sending from one socket stays pinned to the endpoint the first packet was
//! DNATed to, even after that endpoint left the Service. And a frontend that had no
//! endpoints leaves entries that never got a DNAT. Deleting those entries makes the next
//! packet go through the rules again. TCP is left alone: its connections end by
//! themselves, and deleting their entries would break them.

use std::{net::IpAddr, process::Command};

use tracing::{debug, warn};

use crate::model::{Family, FrontendAddr, FrontendKind, FrontendSpec, Protocol};

/// Entries to delete: UDP to a frontend, optionally only those whose replies came from
/// one endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaleFlows {
    /// The frontend's family: a NodePort's entries have no destination to tell it.
    pub family: Family,
    /// `None` for a NodePort: the port on any node address.
    pub destination: Option<IpAddr>,
    pub port: u16,
    /// `None`: every entry to the frontend (it had no endpoint before).
    pub reply_source: Option<IpAddr>,
}

/// What a change of one frontend leaves behind in conntrack.
pub fn stale_flows(
    addr: &FrontendAddr,
    old: Option<&FrontendSpec>,
    new: Option<&FrontendSpec>,
) -> Vec<StaleFlows> {
    if addr.protocol != Protocol::Udp {
        return Vec::new();
    }
    let node_port = old
        .or(new)
        .is_some_and(|s| s.kind == FrontendKind::NodePort);
    let destination = (!node_port).then_some(addr.ip);
    let usable = |spec: Option<&FrontendSpec>| -> Vec<IpAddr> {
        spec.map(|s| s.usable().map(|b| b.addr.ip).collect())
            .unwrap_or_default()
    };
    // A frontend that rejected before (not one new to this agent: after a restart its
    // live flows are valid).
    if old.is_some() && usable(old).is_empty() && !usable(new).is_empty() {
        return vec![StaleFlows {
            family: addr.family(),
            destination,
            port: addr.port,
            reply_source: None,
        }];
    }
    // An endpoint that still serves keeps its flows (kube-proxy clears those of an
    // endpoint deleted or no longer serving). Entries are matched by reply source, an
    // address: one still serving on another port keeps them.
    let still_there = |ip: &IpAddr| {
        new.is_some_and(|n| {
            n.backends
                .iter()
                .any(|b| b.addr.ip == *ip && b.keeps_flows())
        })
    };
    let mut gone: Vec<IpAddr> = old
        .map(|o| o.left_for(new))
        .unwrap_or_default()
        .into_iter()
        .map(|b| b.ip)
        .filter(|ip| !still_there(ip))
        .collect();
    gone.sort();
    gone.dedup();
    gone.into_iter()
        .map(|ip| StaleFlows {
            family: addr.family(),
            destination,
            port: addr.port,
            reply_source: Some(ip),
        })
        .collect()
}

/// `conntrack -D` arguments for one set of stale entries.
pub fn delete_args(flows: &StaleFlows) -> Vec<String> {
    let mut args = vec!["-D".to_string()];
    // The tool's default family is IPv4.
    if flows.family == Family::Ipv6 {
        args.extend(["-f".into(), "ipv6".into()]);
    }
    args.extend(["-p".into(), "udp".into()]);
    if let Some(ip) = flows.destination {
        args.extend(["--orig-dst".into(), ip.to_string()]);
    }
    args.extend(["--orig-port-dst".into(), flows.port.to_string()]);
    if let Some(ip) = flows.reply_source {
        args.extend(["--reply-src".into(), ip.to_string()]);
    }
    args
}

/// Deletes the entries with the `conntrack` tool. Best effort: a missing tool or a
/// failure is logged, and the rules are right either way.
pub fn delete(flows: &[StaleFlows]) {
    for f in flows {
        let args = delete_args(f);
        match Command::new("conntrack").args(&args).output() {
            // conntrack exits 1 when there was nothing to delete.
            Ok(out) if out.status.success() || out.status.code() == Some(1) => {
                debug!(?args, "stale UDP conntrack entries deleted");
            }
            Ok(out) => warn!(
                ?args,
                "conntrack could not delete stale UDP entries: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => warn!(
                "conntrack could not be run ({e}); UDP clients may stay on removed endpoints until their flows expire (install the conntrack package)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BackendAddr, WeightedBackend};
    use std::net::Ipv4Addr;

    fn spec(kind: FrontendKind, ips: &[(u8, u32)]) -> FrontendSpec {
        FrontendSpec {
            service: "demo/dns:dns".into(),
            kind,
            affinity_timeout_s: 0,
            local_only: false,
            backends: ips
                .iter()
                .map(|(last, weight)| WeightedBackend {
                    flows_only: false,
                    addr: BackendAddr {
                        ip: Ipv4Addr::new(198, 18, 1, *last).into(),
                        port: 5353,
                    },
                    weight: *weight,
                })
                .collect(),
            serving_anywhere: true,
            source_ranges: None,
            health_check_node_port: None,
            external_local: None,
        }
    }

    fn addr(protocol: Protocol) -> FrontendAddr {
        FrontendAddr {
            ip: Ipv4Addr::new(198, 19, 0, 53).into(),
            port: 53,
            protocol,
        }
    }

    #[test]
    fn removed_or_weight_zero_endpoints_lose_their_udp_flows() {
        let old = spec(FrontendKind::ClusterIp, &[(2, 1), (3, 1), (4, 1)]);
        let new = spec(FrontendKind::ClusterIp, &[(2, 1), (4, 0)]);
        let stale = stale_flows(&addr(Protocol::Udp), Some(&old), Some(&new));
        assert_eq!(
            stale
                .iter()
                .map(|f| f.reply_source.map(|ip| ip.to_string()))
                .collect::<Vec<_>>(),
            [Some("198.18.1.3".into()), Some("198.18.1.4".into())]
        );
        assert_eq!(
            delete_args(&stale[0]).join(" "),
            "-D -p udp --orig-dst 198.19.0.53 --orig-port-dst 53 --reply-src 198.18.1.3"
        );
        assert!(
            stale_flows(&addr(Protocol::Tcp), Some(&old), Some(&new)).is_empty(),
            "TCP is never touched"
        );
    }

    /// kube-proxy clears the flows of an endpoint deleted or no longer serving, not of
    /// one that still serves while terminating.
    #[test]
    fn an_endpoint_that_still_serves_keeps_its_flows_until_it_stops() {
        let old = spec(FrontendKind::ClusterIp, &[(2, 1), (3, 1)]);
        let mut terminating = spec(FrontendKind::ClusterIp, &[(2, 1), (3, 0)]);
        let mut backends = terminating.backends.to_vec();
        backends[1].flows_only = true;
        terminating.backends = backends.into();
        let udp = addr(Protocol::Udp);
        assert!(stale_flows(&udp, Some(&old), Some(&terminating)).is_empty());
        let gone = spec(FrontendKind::ClusterIp, &[(2, 1)]);
        let stale = stale_flows(&udp, Some(&terminating), Some(&gone));
        assert_eq!(
            stale.iter().map(|f| f.reply_source).collect::<Vec<_>>(),
            [Some(Ipv4Addr::new(198, 18, 1, 3).into())]
        );
    }

    #[test]
    fn a_frontend_getting_its_first_endpoint_loses_every_flow() {
        let old = spec(FrontendKind::ClusterIp, &[]);
        let new = spec(FrontendKind::ClusterIp, &[(2, 1)]);
        let stale = stale_flows(&addr(Protocol::Udp), Some(&old), Some(&new));
        assert_eq!(
            delete_args(&stale[0]).join(" "),
            "-D -p udp --orig-dst 198.19.0.53 --orig-port-dst 53"
        );
        let created = stale_flows(&addr(Protocol::Udp), None, Some(&new));
        assert!(
            created.is_empty(),
            "a frontend new to the agent (a restart) keeps its live flows"
        );
    }

    #[test]
    fn node_ports_match_any_destination() {
        let old = spec(FrontendKind::NodePort, &[(2, 1)]);
        let stale = stale_flows(&addr(Protocol::Udp), Some(&old), None);
        assert_eq!(
            delete_args(&stale[0]).join(" "),
            "-D -p udp --orig-port-dst 53 --reply-src 198.18.1.2"
        );
    }

    #[test]
    fn ipv6_entries_are_named_by_family() {
        let old = spec(FrontendKind::NodePort, &[(2, 1)]);
        let mut old6 = old.clone();
        let mut backends = old6.backends.to_vec();
        backends[0].addr.ip = "2001:db8:18:1::2".parse().expect("ip");
        old6.backends = backends.into();
        let node_port = FrontendAddr {
            ip: "2001:db8::1".parse().expect("ip"),
            ..addr(Protocol::Udp)
        };
        let stale = stale_flows(&node_port, Some(&old6), None);
        assert_eq!(
            delete_args(&stale[0]).join(" "),
            "-D -f ipv6 -p udp --orig-port-dst 53 --reply-src 2001:db8:18:1::2"
        );
        let mut cluster = old6.clone();
        cluster.kind = FrontendKind::ClusterIp;
        let cluster_ip = FrontendAddr {
            ip: "2001:db8:19::35".parse().expect("ip"),
            ..addr(Protocol::Udp)
        };
        let stale = stale_flows(
            &cluster_ip,
            Some(&cluster),
            Some(&spec(FrontendKind::ClusterIp, &[])),
        );
        assert_eq!(
            delete_args(&stale[0]).join(" "),
            "-D -f ipv6 -p udp --orig-dst 2001:db8:19::35 --orig-port-dst 53 --reply-src 2001:db8:18:1::2"
        );
    }
}
