//! `proxyctl stats`: per-frontend counters, and why connections were not translated, by
//! name. eBPF mode reads the per-frontend counters and the datapath's event counters; in
//! iptables mode the rules' own packet counters play both parts (nat rules count the first
//! packet of each connection, the filter REJECT/DROP rules each packet they stop).

use serde::Serialize;

use super::{
    chains::{InstalledRules, Verdict},
    services::ServiceRow,
    table::{Align, Table},
};

#[derive(Debug, Serialize, PartialEq)]
pub struct FrontendCounters {
    pub service: String,
    pub frontend: String,
    pub protocol: &'static str,
    pub translated: u64,
    pub no_endpoint: u64,
    pub affinity_hits: u64,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Stats {
    pub mode: &'static str,
    pub frontends: Vec<FrontendCounters>,
    /// Event or reason name -> count, in a fixed order.
    pub reasons: Vec<(&'static str, u64)>,
}

pub fn frontends(rows: &[ServiceRow]) -> Vec<FrontendCounters> {
    rows.iter()
        .map(|r| FrontendCounters {
            service: r.service.clone(),
            frontend: r.frontend.clone(),
            protocol: r.protocol,
            translated: r.counters.translated,
            no_endpoint: r.counters.no_endpoint,
            affinity_hits: r.counters.affinity_hits,
        })
        .collect()
}

/// iptables mode's reasons: connections translated (the nat jumps), packets rejected for
/// a frontend without endpoints, packets dropped for a Local policy without a local one.
pub fn iptables_reasons(rules: &InstalledRules) -> Vec<(&'static str, u64)> {
    let (mut translated, mut rejected, mut dropped) = (0, 0, 0);
    for f in rules.frontends() {
        translated += f.packets;
        match f.verdict {
            Some((Verdict::Reject, packets)) => rejected += packets,
            Some((Verdict::Drop, packets)) => dropped += packets,
            None => {}
        }
    }
    vec![
        ("translated", translated),
        ("rejected_no_endpoint", rejected),
        ("dropped_no_local_endpoint", dropped),
    ]
}

pub fn render_table(stats: &Stats) -> String {
    let mut frontends = Table::new(&[
        ("SERVICE", Align::Left),
        ("FRONTEND", Align::Left),
        ("TRANSLATED", Align::Right),
        ("NO-ENDPOINT", Align::Right),
        ("AFFINITY-HITS", Align::Right),
    ]);
    for f in &stats.frontends {
        frontends.row([
            f.service.clone(),
            format!("{}/{}", f.frontend, f.protocol),
            f.translated.to_string(),
            f.no_endpoint.to_string(),
            f.affinity_hits.to_string(),
        ]);
    }
    let event = format!("EVENT ({} mode)", stats.mode);
    let mut events = Table::new(&[(&event, Align::Left), ("COUNT", Align::Right)]);
    for (name, count) in &stats.reasons {
        events.row([(*name).to_owned(), count.to_string()]);
    }
    format!("{}\n{}", frontends.render(), events.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_every_reason() {
        let stats = Stats {
            mode: "ebpf",
            frontends: vec![FrontendCounters {
                service: "demo/web:http".into(),
                frontend: "198.19.0.10:80".into(),
                protocol: "TCP",
                translated: 600,
                no_endpoint: 3,
                affinity_hits: 0,
            }],
            reasons: vec![
                ("translated", 600),
                ("rejected_no_endpoint", 3),
                ("external_dropped_no_local_endpoint", 12),
            ],
        };
        let expected = "\
SERVICE        FRONTEND            TRANSLATED  NO-ENDPOINT  AFFINITY-HITS
demo/web:http  198.19.0.10:80/TCP         600            3              0

EVENT (ebpf mode)                   COUNT
translated                            600
rejected_no_endpoint                    3
external_dropped_no_local_endpoint     12
";
        assert_eq!(render_table(&stats), expected);
        let json = serde_json::to_value(&stats).expect("json");
        assert_eq!(json["reasons"][1][0], "rejected_no_endpoint");
        assert_eq!(json["frontends"][0]["no_endpoint"], 3);
    }
}
