//! The project's targets, each figure beside its target: met, missed, or not measured (and
//! why). Reported, never asserted: a benchmark is not a test (shared/TESTING.md).

use std::fmt::Write as _;

use super::{NodePortCase, Report, Scale, svg::thousands};
use crate::bench_addresses::Family;

#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Met,
    Missed,
    /// The figure was not produced; the reason says why.
    NotMeasured(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub figure: String,
    /// The figure as measured, formatted ("" when not measured).
    pub value: String,
    pub target: String,
    pub verdict: Verdict,
}

/// Scales with a target of their own: cold sync and agent memory.
const SIZED: [(usize, f64, f64); 2] = [(10_000, 100.0, 64.0), (100_000, 1_000.0, 256.0)];

fn ratio_target(figure: String, value: Option<f64>, limit: f64, at_least: bool) -> Target {
    let target = if at_least {
        format!("≥ {limit:.2}x")
    } else {
        format!("≤ {limit:.2}x")
    };
    measured(figure, value, target, |v| {
        (
            format!("{v:.2}x"),
            if at_least { v >= limit } else { v <= limit },
        )
    })
}

fn measured(
    figure: String,
    value: Option<f64>,
    target: String,
    judge: impl Fn(f64) -> (String, bool),
) -> Target {
    match value.filter(|v| v.is_finite() && *v > 0.0) {
        Some(v) => {
            let (value, met) = judge(v);
            Target {
                figure,
                value,
                target,
                verdict: if met { Verdict::Met } else { Verdict::Missed },
            }
        }
        None => Target {
            figure,
            value: String::new(),
            target,
            verdict: Verdict::NotMeasured("not produced".into()),
        },
    }
}

fn not_measured(figure: String, target: &str, why: String) -> Target {
    Target {
        figure,
        value: String::new(),
        target: target.into(),
        verdict: Verdict::NotMeasured(why),
    }
}

fn percent(figure: String, value: Option<f64>, limit: f64) -> Target {
    measured(figure, value, format!("≥ {:.0} %", limit * 100.0), |v| {
        (format!("{:.1} %", v * 100.0), v >= limit)
    })
}

fn scale_targets(s: &Scale, family: Family, out: &mut Vec<Target>) {
    let at = |what: &str| format!("{what}, {} Services", thousands(s.services as f64));
    let positive = |v: f64| (v.is_finite() && v > 0.0).then_some(v);
    out.push(ratio_target(
        at(&format!(
            "{} ns, translated ÷ pass-through",
            family.connect_short()
        )),
        positive(s.connect4_translated.ns_per_run)
            .zip(positive(s.connect4_passthrough.ns_per_run))
            .map(|(t, p)| t / p),
        2.0,
        false,
    ));
    out.push(percent(
        at("eBPF conn/s ÷ direct"),
        Some(s.ratios.ebpf_vs_direct_rate),
        0.98,
    ));
    match &s.iptables_skipped {
        Some(why) => out.push(not_measured(
            at("eBPF conn/s ÷ iptables"),
            "≥ 1.00x and ≥ 0.98 × direct ÷ iptables",
            why.clone(),
        )),
        None => {
            let floor = (0.98 * s.ratios.direct_vs_iptables_rate).max(1.0);
            let mut t = ratio_target(
                at("eBPF conn/s ÷ iptables"),
                Some(s.ratios.ebpf_vs_iptables_rate),
                floor,
                true,
            );
            t.target = format!(
                "≥ 1.00x and ≥ 0.98 × direct ÷ iptables ({:.2}x): {}",
                s.ratios.direct_vs_iptables_rate, t.target
            );
            out.push(t);
        }
    }
    match &s.nodeport {
        Some(NodePortCase {
            tc_skipped: Some(why),
            ..
        }) => out.push(not_measured(
            at("NodePort tc conn/s ÷ direct"),
            "≥ 95 %",
            why.clone(),
        )),
        Some(np) => out.push(percent(
            at("NodePort tc conn/s ÷ direct"),
            Some(np.ebpf_vs_direct_rate),
            0.95,
        )),
        None => out.push(not_measured(
            at("NodePort tc conn/s ÷ direct"),
            "≥ 95 %",
            "no NodePort case at this scale".into(),
        )),
    }
}

impl Report {
    /// Every target with its figure; a target whose scale was not run is named as not
    /// measured, so a missing figure never passes for a met one.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        for s in &self.scales {
            scale_targets(s, self.family, &mut out);
        }
        for (services, cold_ms, rss_mib) in SIZED {
            let n = thousands(services as f64);
            let cold = format!("eBPF cold sync, {n} Services");
            let rss = format!("agent RSS (eBPF mode), {n} Services");
            let cold_target = format!("≤ {}", super::fmt_ms(cold_ms));
            let rss_target = format!("≤ {rss_mib:.0} MiB");
            match self.scales.iter().find(|s| s.services == services) {
                Some(s) => {
                    let mut t = measured(cold, Some(s.control.ebpf.cold_ms), cold_target, |v| {
                        (super::fmt_ms(v), v <= cold_ms)
                    });
                    if let (Verdict::NotMeasured(_), Some(error)) =
                        (&t.verdict, &s.control.ebpf.error)
                    {
                        t.verdict = Verdict::NotMeasured(format!("bench-control failed: {error}"));
                    }
                    out.push(t);
                    out.push(measured(rss, Some(s.agent_rss_mib.ebpf), rss_target, |v| {
                        (format!("{v:.0} MiB"), v <= rss_mib)
                    }));
                }
                None => {
                    let why = format!("no {n} Services point in this run");
                    out.push(not_measured(cold, &cold_target, why.clone()));
                    out.push(not_measured(rss, &rss_target, why));
                }
            }
        }
        out
    }

    /// The targets as a Markdown table.
    pub fn targets_markdown(&self) -> String {
        let targets = self.targets();
        let met = targets.iter().filter(|t| t.verdict == Verdict::Met).count();
        let missed = targets
            .iter()
            .filter(|t| t.verdict == Verdict::Missed)
            .count();
        let mut out = format!(
            "\n**Targets** (ratios measured side by side in this run; reported, not asserted): {met} met, {missed} missed, {} not measured.\n\n| figure | measured | target | |\n|---|---:|---|---|\n",
            targets.len() - met - missed
        );
        for t in &targets {
            let verdict = match &t.verdict {
                Verdict::Met => "met".to_owned(),
                Verdict::Missed => "**missed**".to_owned(),
                Verdict::NotMeasured(why) => format!("not measured: {why}"),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {verdict} |",
                t.figure, t.value, t.target
            );
        }
        out
    }
}
