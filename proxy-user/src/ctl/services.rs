//! `proxyctl services`: every frontend with its backends, weights, shares, affinity timeout
//! and counters.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    dataplane::ebpf::{
        convert,
        maps::{Counters, Maps},
    },
    model::DesiredState,
};

#[derive(Debug, Serialize, PartialEq)]
pub struct ServiceRow {
    pub service: String,
    pub frontend: String,
    pub protocol: &'static str,
    /// 0 when the Service has no ClientIP affinity.
    pub affinity_timeout_seconds: u32,
    pub counters: Counters,
    pub backends: Vec<BackendRow>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct BackendRow {
    pub address: String,
    pub weight: u32,
    /// Percentage of new connections this backend receives (affinity aside).
    pub share_percent: f64,
}

pub fn rows(maps: &Maps) -> Result<Vec<ServiceRow>, crate::dataplane::ebpf::maps::MapsError> {
    let installed = maps.installed()?;
    Ok(rows_from(&installed, |addr| {
        maps.counters(&convert::frontend(addr))
    }))
}

pub fn rows_from(
    installed: &DesiredState,
    counters: impl Fn(&crate::model::FrontendAddr) -> Counters,
) -> Vec<ServiceRow> {
    let mut rows: Vec<ServiceRow> = installed
        .iter()
        .map(|(addr, spec)| {
            let total: u64 = spec.usable().map(|b| u64::from(b.weight)).sum();
            ServiceRow {
                service: spec.service.clone(),
                frontend: format!("{}:{}", addr.ip, addr.port),
                protocol: addr.protocol.as_str(),
                affinity_timeout_seconds: spec.affinity_timeout_s,
                counters: counters(addr),
                backends: spec
                    .backends
                    .iter()
                    .map(|b| BackendRow {
                        address: b.addr.to_string(),
                        weight: b.weight,
                        share_percent: if total == 0 {
                            0.0
                        } else {
                            (f64::from(b.weight) * 1000.0 / total as f64).round() / 10.0
                        },
                    })
                    .collect(),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.service.cmp(&b.service).then(a.frontend.cmp(&b.frontend)));
    rows
}

pub fn render_table(rows: &[ServiceRow]) -> String {
    if rows.is_empty() {
        return "no services installed\n".into();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<24} {:<9} {:>11} {:>11}",
        "SERVICE", "FRONTEND", "AFFINITY", "TRANSLATED", "NO-ENDPOINT"
    );
    for row in rows {
        let affinity = match row.affinity_timeout_seconds {
            0 => "-".to_string(),
            t => format!("{t}s"),
        };
        let _ = writeln!(
            out,
            "{:<28} {:<24} {:<9} {:>11} {:>11}",
            row.service,
            format!("{}/{}", row.frontend, row.protocol),
            affinity,
            row.counters.translated,
            row.counters.no_endpoint
        );
        if row.backends.is_empty() {
            let _ = writeln!(out, "  (no endpoints: connections are refused)");
        }
        for b in &row.backends {
            let _ = writeln!(
                out,
                "  -> {:<22} weight {:<5} {:>5.1}%",
                b.address, b.weight, b.share_percent
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::model::{
        BackendAddr, FrontendAddr, FrontendKind, FrontendSpec, Protocol, WeightedBackend,
    };

    fn installed() -> DesiredState {
        let backend = |last, weight| WeightedBackend {
            addr: BackendAddr {
                ip: Ipv4Addr::new(198, 18, 1, last),
                port: 8080,
            },
            weight,
        };
        [
            (
                FrontendAddr {
                    ip: Ipv4Addr::new(198, 19, 0, 10),
                    port: 80,
                    protocol: Protocol::Tcp,
                },
                FrontendSpec {
                    service: "demo/web:http".into(),
                    kind: FrontendKind::ClusterIp,
                    local_only: false,
                    affinity_timeout_s: 0,
                    backends: vec![backend(2, 3), backend(3, 1), backend(4, 0)],
                    external_local: None,
                },
            ),
            (
                FrontendAddr {
                    ip: Ipv4Addr::new(198, 19, 0, 11),
                    port: 53,
                    protocol: Protocol::Udp,
                },
                FrontendSpec {
                    service: "demo/empty".into(),
                    kind: FrontendKind::ClusterIp,
                    local_only: false,
                    affinity_timeout_s: 30,
                    backends: vec![],
                    external_local: None,
                },
            ),
        ]
        .into()
    }

    #[test]
    fn table_shows_shares_and_refusal() {
        let rows = rows_from(&installed(), |_| Counters {
            translated: 7,
            no_endpoint: 0,
            affinity_hits: 0,
        });
        let table = render_table(&rows);
        let expected = "\
SERVICE                      FRONTEND                 AFFINITY   TRANSLATED NO-ENDPOINT
demo/empty                   198.19.0.11:53/UDP       30s                 7           0
  (no endpoints: connections are refused)
demo/web:http                198.19.0.10:80/TCP       -                   7           0
  -> 198.18.1.2:8080        weight 3      75.0%
  -> 198.18.1.3:8080        weight 1      25.0%
  -> 198.18.1.4:8080        weight 0       0.0%
";
        assert_eq!(table, expected);
    }

    #[test]
    fn json_schema() {
        let rows = rows_from(&installed(), |_| Counters::default());
        let json = serde_json::to_value(&rows).expect("serializes");
        assert_eq!(json[1]["service"], "demo/web:http");
        assert_eq!(json[1]["frontend"], "198.19.0.10:80");
        assert_eq!(json[1]["protocol"], "TCP");
        assert_eq!(json[1]["backends"][0]["share_percent"], 75.0);
        assert_eq!(json[1]["counters"]["translated"], 0);
        assert_eq!(json[0]["affinity_timeout_seconds"], 30);
    }
}
