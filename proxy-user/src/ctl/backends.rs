//! `proxyctl backends`: every backend address with the frontends that send it new
//! connections, and what share of each. The inverse of `proxyctl services`, for "what
//! points at this pod?".

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    services::ServiceRow,
    table::{Align, Table},
};

#[derive(Debug, Serialize, PartialEq)]
pub struct BackendUse {
    pub service: String,
    pub frontend: String,
    pub protocol: &'static str,
    /// `null` in iptables mode, where only probabilities are installed.
    pub weight: Option<u32>,
    pub share_percent: f64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct BackendRow {
    pub address: String,
    pub used_by: Vec<BackendUse>,
}

/// Groups the backends of `rows` by address (sorted by address, then service).
pub fn rows_from(rows: &[ServiceRow]) -> Vec<BackendRow> {
    // IPv4 before IPv6, each in address order; what does not parse, first.
    let mut by_address: BTreeMap<Option<(std::net::IpAddr, u16)>, BackendRow> = BTreeMap::new();
    for row in rows {
        for b in &row.backends {
            let key = b
                .address
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| (a.ip(), a.port()));
            by_address
                .entry(key)
                .or_insert_with(|| BackendRow {
                    address: b.address.clone(),
                    used_by: Vec::new(),
                })
                .used_by
                .push(BackendUse {
                    service: row.service.clone(),
                    frontend: row.frontend.clone(),
                    protocol: row.protocol,
                    weight: b.weight,
                    share_percent: b.share_percent,
                });
        }
    }
    by_address.into_values().collect()
}

pub fn render_table(rows: &[BackendRow]) -> String {
    if rows.is_empty() {
        return "no backends installed\n".into();
    }
    let mut table = Table::new(&[
        ("BACKEND", Align::Left),
        ("SERVICE", Align::Left),
        ("FRONTEND", Align::Left),
        ("SHARE", Align::Right),
    ]);
    for row in rows {
        for (i, u) in row.used_by.iter().enumerate() {
            // The address once, on its first frontend's line.
            let address = if i == 0 { row.address.as_str() } else { "" };
            table.row([
                address.to_owned(),
                u.service.clone(),
                format!("{}/{}", u.frontend, u.protocol),
                format!("{:.1}%", u.share_percent),
            ]);
        }
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::services::BackendRow as ServiceBackend;

    fn row(service: &str, frontend: &str, backends: &[(&str, f64)]) -> ServiceRow {
        ServiceRow {
            service: service.into(),
            frontend: frontend.into(),
            family: if frontend.starts_with('[') {
                crate::model::Family::Ipv6
            } else {
                crate::model::Family::Ipv4
            },
            protocol: "TCP",
            kind: "ClusterIP",
            affinity_timeout_seconds: 0,
            counters: Default::default(),
            chain: None,
            backends: backends
                .iter()
                .map(|(address, share)| ServiceBackend {
                    address: (*address).into(),
                    weight: Some(1),
                    share_percent: *share,
                    chain: None,
                    existing_flows_only: false,
                })
                .collect(),
        }
    }

    #[test]
    fn backends_list_every_frontend_that_uses_them() {
        let rows = rows_from(&[
            row(
                "demo/web:http",
                "198.19.0.10:80",
                &[("198.18.1.2:8080", 50.0), ("198.18.10.2:8080", 50.0)],
            ),
            row("demo/api", "198.19.0.20:80", &[("198.18.1.2:8080", 100.0)]),
        ]);
        assert_eq!(
            rows.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(),
            ["198.18.1.2:8080", "198.18.10.2:8080"],
            "sorted as addresses, not as text"
        );
        assert_eq!(rows[0].used_by.len(), 2);
        let table = render_table(&rows);
        let expected = "\
BACKEND           SERVICE        FRONTEND             SHARE
198.18.1.2:8080   demo/web:http  198.19.0.10:80/TCP   50.0%
                  demo/api       198.19.0.20:80/TCP  100.0%
198.18.10.2:8080  demo/web:http  198.19.0.10:80/TCP   50.0%
";
        assert_eq!(table, expected);
        let json = serde_json::to_value(&rows).expect("json");
        assert_eq!(json[0]["used_by"][1]["service"], "demo/api");
        assert_eq!(json[0]["used_by"][1]["share_percent"], 100.0);
    }

    #[test]
    fn ipv6_backends_come_after_ipv4_ones_in_brackets() {
        let rows = rows_from(&[
            row(
                "demo/web:http",
                "[2001:db8::a]:80",
                &[
                    ("[2001:db8:1::10]:8080", 50.0),
                    ("[2001:db8:1::9]:8080", 50.0),
                ],
            ),
            row(
                "demo/web:http",
                "198.19.0.10:80",
                &[("198.18.1.2:8080", 100.0)],
            ),
        ]);
        assert_eq!(
            rows.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(),
            [
                "198.18.1.2:8080",
                "[2001:db8:1::9]:8080",
                "[2001:db8:1::10]:8080"
            ]
        );
        assert!(
            render_table(&rows)
                .contains("[2001:db8:1::9]:8080   demo/web:http  [2001:db8::a]:80/TCP"),
            "{}",
            render_table(&rows)
        );
    }
}
