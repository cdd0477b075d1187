//! bench-control must keep working: run it at a small scale and check that every figure
//! was produced (not how fast it was: speed is measured, never asserted).

use integration::{bin_dir, require_privileges};

#[test]
fn bench_control_produces_every_figure() {
    require_privileges!();
    let out = std::process::Command::new(bin_dir().join("bench-control"))
        .args([
            "--services",
            "200",
            "--endpoints",
            "3",
            "--changes",
            "20",
            "--connect-samples",
            "5",
        ])
        .output()
        .expect("run bench-control");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let scale = figures
        .iter()
        .find(|v| v.get("cold_sync_ms").is_some())
        .expect("scale figures");
    assert_eq!(scale["services"], 200);
    for path in [
        "/cold_sync_ms",
        "/change_ms/p50",
        "/change_ms/p99",
        "/rss_kib/after_sync",
    ] {
        assert!(
            scale
                .pointer(path)
                .and_then(|v| v.as_f64())
                .is_some_and(|v| v > 0.0),
            "{path} missing in {scale}"
        );
    }
    let e2e = figures
        .iter()
        .find(|v| v.get("event_to_connection_ms").is_some())
        .expect("end-to-end figures");
    assert!(
        e2e.pointer("/event_to_connection_ms/p50")
            .and_then(|v| v.as_f64())
            .is_some_and(|v| v > 0.0)
    );
}

/// bench-control programs IPv6 Services (ClusterIPs of 2001:db8:19::/64, slices of
/// `addressType: IPv6`) into the maps as it does IPv4 ones: every Service becomes a
/// frontend, and every change rewrites one.
#[test]
fn bench_control_programs_ipv6_services() {
    require_privileges!();
    let out = std::process::Command::new(bin_dir().join("bench-control"))
        .args(["--family", "ipv6", "--services", "200", "--endpoints", "3"])
        .args(["--changes", "20", "--connect-samples", "0"])
        .output()
        .expect("run bench-control");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("200 IPv6 Services"), "{stdout}");
    let scale: serde_json::Value = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v.get("cold_sync_ms").is_some())
        .expect("scale figures");
    assert!(
        scale["change_ms"]["p50"].as_f64().is_some_and(|v| v > 0.0),
        "{scale}"
    );
}

/// `bench --quick --family ipv6` finishes (it fails itself when a figure of an arm it
/// measured is missing), says it measured IPv6, and every arm is either measured or
/// skipped with a reason.
#[test]
fn bench_quick_over_ipv6_measures_or_names_every_arm() {
    require_privileges!();
    let out_dir = std::env::temp_dir().join(integration::unique("epxbench6-smoke"));
    let out = std::process::Command::new(bin_dir().join("bench"))
        .args(["--quick", "--family", "ipv6", "--out"])
        .arg(&out_dir)
        .env("EBPF_PROXY_BIN_DIR", bin_dir())
        .output()
        .expect("run bench");
    let results = std::fs::read_to_string(out_dir.join("results.json"));
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&results.expect("results.json")).expect("results.json parses");
    assert_eq!(report["family"], "ipv6");
    let scales = report["scales"].as_array().expect("scales");
    assert_eq!(scales.len(), 2, "--quick: 10 and 100 Services");
    for s in scales {
        assert!(
            s["datapath"]["ebpf"]["rate_per_s"].as_f64() > Some(0.0),
            "{s}"
        );
        assert!(
            s["connect4_translated"]["ns_per_run"].as_f64() > Some(0.0),
            "{s}"
        );
        let np = &s["nodeport"];
        let measured_or_skipped = |rate: &serde_json::Value, skipped: &serde_json::Value| {
            rate.as_f64() > Some(0.0) || skipped.as_str().is_some_and(|why| !why.is_empty())
        };
        assert!(
            measured_or_skipped(
                &s["datapath"]["iptables"]["rate_per_s"],
                &s["iptables_skipped"]
            ),
            "{s}"
        );
        assert!(
            measured_or_skipped(&np["datapath"]["ebpf"]["rate_per_s"], &np["tc_skipped"]),
            "{s}"
        );
    }
}
