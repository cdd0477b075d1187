//! The results of `cargo xtask bench` and their three renderings: JSON (every figure),
//! a Markdown table (the figures people compare, with ratios), and an SVG plot of
//! connection rate and p99 connect latency against the number of Services, per mode.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Where and how the numbers were taken.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Environment {
    pub kernel: String,
    pub iptables: String,
    pub cpu_model: String,
    pub cpus: usize,
    /// Which CPU the load generator and the backend server ran on.
    pub placement: String,
    pub duration_ms: u64,
    pub runs: usize,
    pub endpoints_per_service: usize,
    /// `net.netfilter.nf_conntrack_max`.
    pub conntrack_max: u64,
}

/// One data path measurement: the median run (by rate) of several.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Datapath {
    pub rate_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub connections: u64,
    pub errors: u64,
    /// SYNs retransmitted during the runs (TcpExt TCPSynRetrans): a run with any is
    /// suspect, since one retransmission costs a second.
    pub syn_retransmits: u64,
    /// Every run's rate, for the spread.
    pub run_rates: Vec<f64>,
    /// conntrack entries in the client namespace after the runs (iptables mode keeps one
    /// per connection until its TIME_WAIT timeout): room left means no drop for a full
    /// table.
    pub conntrack_entries: u64,
}

/// Programming N Services into one dataplane.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ControlPlane {
    pub cold_ms: f64,
    pub change_p50_ms: f64,
    pub change_p99_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Modes<T> {
    pub direct: Option<T>,
    pub ebpf: T,
    pub iptables: T,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Ratios {
    /// eBPF connection rate / direct connection rate.
    pub ebpf_vs_direct_rate: f64,
    /// eBPF connection rate / iptables connection rate.
    pub ebpf_vs_iptables_rate: f64,
    /// iptables cold programming time / eBPF cold programming time.
    pub iptables_vs_ebpf_cold: f64,
    /// iptables one-endpoint change p50 / eBPF one-endpoint change p50.
    pub iptables_vs_ebpf_change: f64,
}

/// Traffic from outside the node to NodePorts: the tc programs (eBPF mode) against
/// kube-proxy's chains, and the same client reaching the backends without a proxy.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct NodePortCase {
    pub datapath: Modes<Datapath>,
    /// The tc programs' own cost per packet (ingress and egress, every interface), from
    /// the kernel's BPF run-time statistics.
    pub tc_ns_per_packet: f64,
    pub ebpf_vs_iptables_rate: f64,
    pub ebpf_vs_direct_rate: f64,
}

/// Everything measured at one number of Services.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Scale {
    pub services: usize,
    pub datapath: Modes<Datapath>,
    /// The connect4 program's own cost per translated connect, from the kernel's BPF
    /// run-time statistics.
    pub bpf_ns_per_connect: f64,
    /// The same program's cost on a connect to an address that is no Service (one map
    /// lookup that misses): the floor of a connect4 program on this machine.
    pub bpf_ns_per_passthrough: f64,
    pub control: Modes<ControlPlane>,
    /// The agent's resident memory once it has synced the N Services, per mode.
    pub agent_rss_mib: Modes<f64>,
    pub ratios: Ratios,
    /// NodePort traffic from outside the node (absent at scales above the NodePort range).
    #[serde(default)]
    pub nodeport: Option<NodePortCase>,
}

impl Scale {
    pub fn compute_ratios(&mut self) {
        let div = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let direct = self.datapath.direct.as_ref().map_or(0.0, |d| d.rate_per_s);
        self.ratios = Ratios {
            ebpf_vs_direct_rate: div(self.datapath.ebpf.rate_per_s, direct),
            ebpf_vs_iptables_rate: div(
                self.datapath.ebpf.rate_per_s,
                self.datapath.iptables.rate_per_s,
            ),
            iptables_vs_ebpf_cold: div(self.control.iptables.cold_ms, self.control.ebpf.cold_ms),
            iptables_vs_ebpf_change: div(
                self.control.iptables.change_p50_ms,
                self.control.ebpf.change_p50_ms,
            ),
        };
        if let Some(np) = &mut self.nodeport {
            let direct = np.datapath.direct.as_ref().map_or(0.0, |d| d.rate_per_s);
            np.ebpf_vs_iptables_rate =
                div(np.datapath.ebpf.rate_per_s, np.datapath.iptables.rate_per_s);
            np.ebpf_vs_direct_rate = div(np.datapath.ebpf.rate_per_s, direct);
        }
    }

    /// Names of the figures that were not produced (zero or missing), for `--quick`'s
    /// check that the benchmark still measures everything.
    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        let mut need = |name: &str, value: f64| {
            if !(value.is_finite() && value > 0.0) {
                missing.push(format!("{} Services: {name}", self.services));
            }
        };
        let d = &self.datapath;
        if let Some(direct) = &d.direct {
            need("direct rate", direct.rate_per_s);
            need("direct p99", direct.p99_us);
        } else {
            need("direct rate", 0.0);
        }
        need("eBPF rate", d.ebpf.rate_per_s);
        need("eBPF p99", d.ebpf.p99_us);
        need("iptables rate", d.iptables.rate_per_s);
        need("iptables p99", d.iptables.p99_us);
        need("BPF ns per connect", self.bpf_ns_per_connect);
        need(
            "BPF ns per pass-through connect",
            self.bpf_ns_per_passthrough,
        );
        need("eBPF cold programming", self.control.ebpf.cold_ms);
        need("eBPF change", self.control.ebpf.change_p50_ms);
        need("iptables cold programming", self.control.iptables.cold_ms);
        need("iptables change", self.control.iptables.change_p50_ms);
        need("agent RSS (eBPF)", self.agent_rss_mib.ebpf);
        need("agent RSS (iptables)", self.agent_rss_mib.iptables);
        if let Some(np) = &self.nodeport {
            need(
                "NodePort direct rate",
                np.datapath.direct.as_ref().map_or(0.0, |d| d.rate_per_s),
            );
            need("NodePort eBPF (tc) rate", np.datapath.ebpf.rate_per_s);
            need("NodePort iptables rate", np.datapath.iptables.rate_per_s);
            need("tc ns per packet", np.tc_ns_per_packet);
        }
        missing
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub environment: Environment,
    pub scales: Vec<Scale>,
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.3} ms", ms)
    }
}

impl Report {
    pub fn markdown(&self) -> String {
        let e = &self.environment;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Kernel {}, {}, {} ({} CPUs); {}; {} runs of {} ms per point, median shown; {} endpoints per Service.\n",
            e.kernel,
            e.iptables,
            e.cpu_model,
            e.cpus,
            e.placement,
            e.runs,
            e.duration_ms,
            e.endpoints_per_service
        );
        out.push_str("**Data path**: new connections per second (one small request and response each) and connect() latency, to a Service chosen at random among N.\n\n");
        out.push_str("| Services | direct conn/s | eBPF conn/s | iptables conn/s | eBPF / direct | eBPF / iptables | p99 direct | p99 eBPF | p99 iptables | p999 eBPF | p999 iptables | BPF ns/connect (pass-through) |\n");
        out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for s in &self.scales {
            let d = &s.datapath;
            let direct = d.direct.clone().unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.0} | {:.1} % | {:.2}x | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} ({:.0}) |",
                s.services,
                direct.rate_per_s,
                d.ebpf.rate_per_s,
                d.iptables.rate_per_s,
                s.ratios.ebpf_vs_direct_rate * 100.0,
                s.ratios.ebpf_vs_iptables_rate,
                direct.p99_us,
                d.ebpf.p99_us,
                d.iptables.p99_us,
                d.ebpf.p999_us,
                d.iptables.p999_us,
                s.bpf_ns_per_connect,
                s.bpf_ns_per_passthrough
            );
        }
        out.push_str("\n**Control plane**: programming N Services with their endpoints from scratch, and one endpoint change at size N; the agent's resident memory once synced.\n\n");
        out.push_str("| Services | eBPF cold | iptables cold | ratio | eBPF change p50 / p99 | iptables change p50 / p99 | ratio | agent RSS eBPF | agent RSS iptables |\n");
        out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for s in &self.scales {
            let (b, i) = (&s.control.ebpf, &s.control.iptables);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.0}x | {} / {} | {} / {} | {:.0}x | {:.0} MiB | {:.0} MiB |",
                s.services,
                fmt_ms(b.cold_ms),
                fmt_ms(i.cold_ms),
                s.ratios.iptables_vs_ebpf_cold,
                fmt_ms(b.change_p50_ms),
                fmt_ms(b.change_p99_ms),
                fmt_ms(i.change_p50_ms),
                fmt_ms(i.change_p99_ms),
                s.ratios.iptables_vs_ebpf_change,
                s.agent_rss_mib.ebpf,
                s.agent_rss_mib.iptables
            );
        }
        if self.scales.iter().any(|s| s.nodeport.is_some()) {
            out.push_str("\n**Traffic from outside the node**: new connections per second from a client in another namespace to NodePorts on the node (a NodePort chosen at random among N), through the tc programs (eBPF mode) or kube-proxy's chains (iptables mode), every backend on another node (source NAT in both); direct is the same client reaching the backends through the node without a proxy.\n\n");
            out.push_str("| Services | direct conn/s | tc conn/s | iptables conn/s | tc / iptables | tc / direct | p99 tc | p99 iptables | tc ns/packet |\n");
            out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for s in &self.scales {
                let Some(np) = &s.nodeport else { continue };
                let direct = np.datapath.direct.clone().unwrap_or_default();
                let _ = writeln!(
                    out,
                    "| {} | {:.0} | {:.0} | {:.0} | {:.2}x | {:.1} % | {:.0} µs | {:.0} µs | {:.0} |",
                    s.services,
                    direct.rate_per_s,
                    np.datapath.ebpf.rate_per_s,
                    np.datapath.iptables.rate_per_s,
                    np.ebpf_vs_iptables_rate,
                    np.ebpf_vs_direct_rate * 100.0,
                    np.datapath.ebpf.p99_us,
                    np.datapath.iptables.p99_us,
                    np.tc_ns_per_packet
                );
            }
        }
        let retrans: u64 = self
            .scales
            .iter()
            .map(|s| {
                s.datapath.direct.as_ref().map_or(0, |d| d.syn_retransmits)
                    + s.datapath.ebpf.syn_retransmits
                    + s.datapath.iptables.syn_retransmits
            })
            .sum();
        let conntrack = self
            .scales
            .iter()
            .map(|s| s.datapath.iptables.conntrack_entries)
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            out,
            "\nSYN retransmissions during the data path runs: {retrans}. Most conntrack entries after a mode's runs: {conntrack} (table size {}).",
            e.conntrack_max
        );
        out
    }

    /// Two panels side by side: connections per second, and p99 connect latency, against
    /// the number of Services on a log scale.
    pub fn svg(&self) -> String {
        let (w, h) = (920.0, 360.0);
        let mut out = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"#
        );
        const MODES: [(&str, &str); 3] = [
            ("direct", "#555555"),
            ("eBPF", "#1f77b4"),
            ("iptables", "#d62728"),
        ];
        for (panel, title) in [
            (0, "new connections per second"),
            (1, "p99 connect latency (µs)"),
        ] {
            let lines: Vec<Series> = MODES
                .iter()
                .enumerate()
                .map(|(mode, (name, color))| {
                    let points = self
                        .scales
                        .iter()
                        .filter_map(|s| {
                            let d = match mode {
                                0 => s.datapath.direct.as_ref(),
                                1 => Some(&s.datapath.ebpf),
                                _ => Some(&s.datapath.iptables),
                            }?;
                            let v = if panel == 0 { d.rate_per_s } else { d.p99_us };
                            Some((s.services as f64, v))
                        })
                        .collect();
                    (*name, *color, points)
                })
                .collect();
            out.push_str(&panel_svg(
                f64::from(panel) * w / 2.0,
                w / 2.0,
                h,
                title,
                &lines,
            ));
        }
        out.push_str("</svg>\n");
        out
    }
}

/// A line of a plot: name, colour, and (Services, value) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// One panel: axes, ticks, a polyline and points per series, a legend.
fn panel_svg(x0: f64, w: f64, h: f64, title: &str, lines: &[Series]) -> String {
    let (left, right, top, bottom) = (x0 + 70.0, x0 + w - 20.0, 40.0, h - 50.0);
    let xs: Vec<f64> = lines.iter().flat_map(|l| l.2.iter().map(|p| p.0)).collect();
    let ys: Vec<f64> = lines.iter().flat_map(|l| l.2.iter().map(|p| p.1)).collect();
    let (xmin, xmax) = (
        xs.iter().cloned().fold(f64::INFINITY, f64::min).max(1.0),
        xs.iter().cloned().fold(1.0, f64::max),
    );
    let ymax = ys.iter().cloned().fold(0.0, f64::max).max(1.0) * 1.1;
    let (lx0, lx1) = (xmin.log10(), xmax.log10().max(xmin.log10() + 1.0));
    let px = |x: f64| left + (x.max(1.0).log10() - lx0) / (lx1 - lx0) * (right - left);
    let py = |y: f64| bottom - y / ymax * (bottom - top);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{title}</text>"#,
        (left + right) / 2.0
    );
    let _ = writeln!(
        out,
        r#"<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>"#
    );
    for i in 0..=4 {
        let y = ymax * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{left}" y1="{py}" x2="{right}" y2="{py}" stroke="#dddddd"/><text x="{}" y="{}" text-anchor="end">{:.0}</text>"##,
            left - 6.0,
            py(y) + 4.0,
            y,
            py = py(y)
        );
    }
    let mut decade = 10f64.powf(lx0.floor());
    while decade <= 10f64.powf(lx1) * 1.0001 {
        if decade >= xmin / 1.0001 {
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                px(decade),
                bottom + 18.0,
                decade
            );
        }
        decade *= 10.0;
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">Services</text>"#,
        (left + right) / 2.0,
        bottom + 36.0
    );
    for (i, (name, color, points)) in lines.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for (x, y) in points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                px(*x),
                py(*y)
            );
        }
        let ly = top + 8.0 + 16.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}">{name}</text>"#,
            right - 90.0,
            ly - 4.0,
            right - 74.0,
            ly
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scale(services: usize, ebpf: f64, iptables: f64) -> Scale {
        let dp = |rate: f64| Datapath {
            rate_per_s: rate,
            p50_us: 20.0,
            p99_us: 40.0,
            p999_us: 80.0,
            connections: 100,
            ..Default::default()
        };
        let cp = |cold: f64| ControlPlane {
            cold_ms: cold,
            change_p50_ms: cold / 1000.0,
            change_p99_ms: cold / 500.0,
        };
        let mut s = Scale {
            services,
            datapath: Modes {
                direct: Some(dp(10_000.0)),
                ebpf: dp(ebpf),
                iptables: dp(iptables),
            },
            bpf_ns_per_connect: 150.0,
            bpf_ns_per_passthrough: 50.0,
            control: Modes {
                direct: None,
                ebpf: cp(10.0),
                iptables: cp(800.0),
            },
            agent_rss_mib: Modes {
                direct: None,
                ebpf: 20.0,
                iptables: 30.0,
            },
            ratios: Ratios::default(),
            nodeport: Some(NodePortCase {
                datapath: Modes {
                    direct: Some(dp(9_000.0)),
                    ebpf: dp(8_500.0),
                    iptables: dp(iptables / 2.0),
                },
                tc_ns_per_packet: 400.0,
                ..NodePortCase::default()
            }),
        };
        s.compute_ratios();
        s
    }

    #[test]
    fn ratios_table_and_plot() {
        let report = Report {
            environment: Environment {
                kernel: "6.1".into(),
                runs: 3,
                ..Default::default()
            },
            scales: vec![scale(10, 9_800.0, 9_000.0), scale(10_000, 9_700.0, 2_000.0)],
        };
        let s = &report.scales[1];
        assert!((s.ratios.ebpf_vs_direct_rate - 0.97).abs() < 1e-9);
        assert!((s.ratios.ebpf_vs_iptables_rate - 4.85).abs() < 1e-9);
        assert!((s.ratios.iptables_vs_ebpf_cold - 80.0).abs() < 1e-9);
        assert!(s.missing().is_empty(), "{:?}", s.missing());
        let md = report.markdown();
        assert!(
            md.contains("| 10000 | 10000 | 9700 | 2000 | 97.0 % | 4.85x |"),
            "{md}"
        );
        let np = s.nodeport.as_ref().expect("nodeport case");
        assert!((np.ebpf_vs_iptables_rate - 8.5).abs() < 1e-9);
        assert!(
            md.contains("| 10000 | 9000 | 8500 | 1000 | 8.50x | 94.4 % |"),
            "{md}"
        );
        let svg = report.svg();
        assert_eq!(svg.matches("<polyline").count(), 6, "3 modes x 2 panels");
        assert!(svg.ends_with("</svg>\n"));
    }

    #[test]
    fn a_figure_not_produced_is_named() {
        let mut s = scale(10, 9_800.0, 9_000.0);
        s.bpf_ns_per_connect = 0.0;
        s.datapath.iptables.rate_per_s = f64::NAN;
        if let Some(np) = &mut s.nodeport {
            np.tc_ns_per_packet = 0.0;
        }
        assert_eq!(
            s.missing(),
            [
                "10 Services: iptables rate",
                "10 Services: BPF ns per connect",
                "10 Services: tc ns per packet"
            ]
        );
    }
}
