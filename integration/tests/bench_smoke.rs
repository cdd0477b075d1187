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
