//! The SVG plot: connection rate and p99 connect latency against the number of Services,
//! on a logarithmic axis that spans at least 10 to 100,000 Services.

use std::fmt::Write as _;

use super::Report;

/// The Services axis: decades from `lo` to `hi` (powers of ten), at least 10 to 100,000
/// whatever was measured, so plots of different runs line up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogAxis {
    /// log10 of the first and last decade.
    lo: f64,
    hi: f64,
}

impl LogAxis {
    pub const MIN: f64 = 10.0;
    pub const MAX: f64 = 100_000.0;

    pub fn spanning(xs: impl IntoIterator<Item = f64>) -> Self {
        let (mut lo, mut hi) = (Self::MIN, Self::MAX);
        for x in xs.into_iter().filter(|x| x.is_finite() && *x >= 1.0) {
            lo = lo.min(x);
            hi = hi.max(x);
        }
        Self {
            lo: lo.log10().floor(),
            hi: hi.log10().ceil(),
        }
    }

    /// Where `x` falls between `left` and `right`.
    pub fn position(&self, x: f64, left: f64, right: f64) -> f64 {
        left + (x.max(1.0).log10() - self.lo) / (self.hi - self.lo) * (right - left)
    }

    /// 10, 100, ... up to the last decade.
    pub fn decades(&self) -> Vec<f64> {
        let (lo, hi) = (self.lo as i32, self.hi as i32);
        (lo..=hi).map(|e| 10f64.powi(e)).collect()
    }
}

/// 100000 -> "100,000".
pub fn thousands(n: f64) -> String {
    let digits = format!("{n:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Report {
    /// Two panels side by side: connections per second, and p99 connect latency, against
    /// the number of Services on a log scale. A mode skipped at a scale has no point there.
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
        let axis = LogAxis::spanning(self.scales.iter().map(|s| s.services as f64));
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
                                _ if s.iptables_skipped.is_some() => None,
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
                &axis,
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
fn panel_svg(x0: f64, w: f64, h: f64, title: &str, axis: &LogAxis, lines: &[Series]) -> String {
    let (left, right, top, bottom) = (x0 + 70.0, x0 + w - 20.0, 40.0, h - 50.0);
    let ys: Vec<f64> = lines.iter().flat_map(|l| l.2.iter().map(|p| p.1)).collect();
    let ymax = ys.iter().cloned().fold(0.0, f64::max).max(1.0) * 1.1;
    let px = |x: f64| axis.position(x, left, right);
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
    for decade in axis.decades() {
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{bottom}" x2="{x:.1}" y2="{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            bottom + 4.0,
            bottom + 18.0,
            thousands(decade),
            x = px(decade),
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">Services (log scale)</text>"#,
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

    #[test]
    fn services_axis_is_logarithmic_from_10_to_100k() {
        let axis = LogAxis::spanning([100.0, 1000.0]);
        assert_eq!(
            axis.decades(),
            [10.0, 100.0, 1_000.0, 10_000.0, 100_000.0],
            "the axis spans 10 to 100,000 whatever was measured"
        );
        let (left, right) = (70.0, 450.0);
        assert!((axis.position(10.0, left, right) - left).abs() < 1e-9);
        assert!((axis.position(100_000.0, left, right) - right).abs() < 1e-9);
        let xs: Vec<f64> = [10.0, 30.0, 100.0, 1000.0, 10_000.0, 30_000.0, 100_000.0]
            .iter()
            .map(|x| axis.position(*x, left, right))
            .collect();
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "monotonic: {xs:?}");
        // Equal steps per decade: the mark of a log scale.
        let step = axis.position(100.0, left, right) - axis.position(10.0, left, right);
        let step2 = axis.position(100_000.0, left, right) - axis.position(10_000.0, left, right);
        assert!((step - step2).abs() < 1e-9 && (step - (right - left) / 4.0).abs() < 1e-9);
        // A point beyond the default span widens it rather than leaving the plot.
        assert_eq!(LogAxis::spanning([2.0, 200_000.0]).decades().len(), 7);
    }

    #[test]
    fn tick_labels_have_thousands_separators() {
        assert_eq!(thousands(10.0), "10");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(100_000.0), "100,000");
    }
}
