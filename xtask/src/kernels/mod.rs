//! The kernel tier: the kernel suite (integration/tests/kernel_suite.rs) run as root under
//! Debian's own kernels, booted in qemu with virtme-ng, so that the BPF programs meet the
//! verifiers, helpers and attach types of the kernels users run, not only the host's.
//!
//! [`fetch`] downloads the kernels, [`guest`] boots them and runs the suite inside; this
//! module picks the kernels, builds the suite and sums up the results.

mod fetch;
mod guest;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use crate::{Totals, step};

/// The series the tier knows, and the Debian suite whose generic amd64 image carries each.
const SERIES: &[Series] = &[
    Series {
        version: "5.10",
        suite: "bullseye",
    },
    Series {
        version: "6.1",
        suite: "bookworm",
    },
    Series {
        version: "6.12",
        suite: "trixie",
    },
];

/// `--kernels` without a list.
pub const DEFAULT_KERNELS: &str = "5.10,6.1,6.12";

/// Not under /var/tmp, /var/cache or /var/log: virtme-ng mounts tmpfs over those in the
/// guest, and the guest must see the kernel's modules.
const DEFAULT_CACHE: &str = "/opt/ebpf-proxy/kernels";
const CACHE_ENV: &str = "EBPF_PROXY_KERNEL_CACHE";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    pub version: &'static str,
    pub suite: &'static str,
}

/// Parses `--kernels 5.10,6.12` (series, or suite names), in the given order, without repeats.
pub fn parse_list(list: &str) -> anyhow::Result<Vec<Series>> {
    let mut picked = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some(series) = SERIES.iter().find(|s| s.version == name || s.suite == name) else {
            let known: Vec<&str> = SERIES.iter().map(|s| s.version).collect();
            bail!("unknown kernel {name:?}: pick from {}", known.join(", "));
        };
        if !picked.contains(series) {
            picked.push(*series);
        }
    }
    if picked.is_empty() {
        bail!("no kernel named in {list:?}");
    }
    Ok(picked)
}

/// What each guest runs.
pub enum GuestCommand {
    /// The kernel suite's test binary, with extra libtest arguments (e.g. a name filter).
    Suite {
        executable: PathBuf,
        args: Vec<String>,
    },
    /// A shell command instead (checking the tier itself): its exit status decides.
    Shell(String),
}

/// How one kernel went.
struct Outcome {
    kernel: String,
    totals: Totals,
    boot_secs: Option<f64>,
    total_secs: f64,
    failure: Option<String>,
}

/// Fetches each kernel, boots it, runs `command` in it and prints a summary; adds the
/// test counts to `totals`. Ok(false) when any kernel failed.
pub fn run(
    series: &[Series],
    vng: &Path,
    command: &GuestCommand,
    totals: &mut Totals,
) -> anyhow::Result<bool> {
    let cache = cache_dir();
    let apt = fetch::Apt::prepare(&cache)?;
    let mut outcomes = Vec::new();
    for s in series {
        let kernel = match fetch::fetch(&apt, &cache, s) {
            Ok(kernel) => kernel,
            Err(e) => {
                eprintln!("xtask kernels: {} ({}): {e:#}", s.version, s.suite);
                outcomes.push(Outcome {
                    kernel: s.version.to_string(),
                    totals: Totals::default(),
                    boot_secs: None,
                    total_secs: 0.0,
                    failure: Some("not downloaded".into()),
                });
                continue;
            }
        };
        outcomes.push(guest::boot(vng, &kernel, command)?);
    }
    print_summary(&outcomes);
    for o in &outcomes {
        totals.add_totals(&o.totals);
    }
    Ok(outcomes.iter().all(|o| o.failure.is_none()))
}

/// `cargo test -p integration --test kernel_suite --no-run`: the path of the test binary,
/// from cargo's JSON messages.
pub fn build_suite() -> anyhow::Result<PathBuf> {
    step(
        "kernels",
        "building the kernel suite (cargo test -p integration --test kernel_suite --no-run)",
    );
    let mut child = Command::new(env!("CARGO"))
        .args(["test", "-p", "integration", "--test", "kernel_suite"])
        .args(["--no-run", "--message-format=json"])
        .stdout(Stdio::piped())
        .spawn()
        .context("running cargo test --no-run")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut executable = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's JSON messages")?;
        // JSON mode keeps compiler diagnostics out of stderr: show them.
        if let Some(rendered) = rendered_diagnostic(&line) {
            eprint!("{rendered}");
        }
        executable = executable.or_else(|| suite_executable(&line));
    }
    let status = child.wait().context("waiting for cargo test --no-run")?;
    let source = workspace_root()?.join("integration/tests/kernel_suite.rs");
    if !status.success() && !source.exists() {
        bail!(
            "no kernel suite to run: {} does not exist (the kernel tier runs cargo's test target kernel_suite of the integration package)",
            source.display()
        );
    }
    if !status.success() {
        bail!("building the kernel suite failed ({status})");
    }
    executable
        .context("cargo built no kernel_suite test executable (no such target in integration?)")
}

/// The executable of a `compiler-artifact` message for the test target `kernel_suite`.
fn suite_executable(line: &str) -> Option<PathBuf> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message["reason"] != "compiler-artifact" || message["target"]["name"] != "kernel_suite" {
        return None;
    }
    message["executable"].as_str().map(PathBuf::from)
}

/// The human form of a `compiler-message`.
fn rendered_diagnostic(line: &str) -> Option<String> {
    let message: serde_json::Value = serde_json::from_str(line).ok()?;
    if message["reason"] != "compiler-message" {
        return None;
    }
    message["message"]["rendered"].as_str().map(str::to_owned)
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("workspace root")
}

fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

// ---- Results ----

fn print_summary(outcomes: &[Outcome]) {
    println!();
    println!(
        "{:<24} {:>6} {:>6} {:>7} {:>6} {:>7}  result",
        "kernel", "passed", "failed", "skipped", "boot s", "total s"
    );
    for o in outcomes {
        let boot = o
            .boot_secs
            .map_or_else(|| "-".to_string(), |s| format!("{s:.0}"));
        println!(
            "{:<24} {:>6} {:>6} {:>7} {:>6} {:>7.0}  {}",
            o.kernel,
            o.totals.passed,
            o.totals.failed,
            o.totals.ignored,
            boot,
            o.total_secs,
            o.failure.as_deref().unwrap_or("ok")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_series_map_to_debian_suites() {
        let suites: Vec<&str> = parse_list(DEFAULT_KERNELS)
            .unwrap_or_default()
            .iter()
            .map(|s| s.suite)
            .collect();
        assert_eq!(suites, ["bullseye", "bookworm", "trixie"]);
    }

    #[test]
    fn kernel_lists_pick_in_order_without_repeats() {
        let versions = |list| {
            parse_list(list)
                .map(|v| v.iter().map(|s| s.version).collect::<Vec<_>>())
                .ok()
        };
        assert_eq!(versions("6.1"), Some(vec!["6.1"]));
        assert_eq!(versions("6.12, 5.10,6.12"), Some(vec!["6.12", "5.10"]));
        assert_eq!(versions("bookworm"), Some(vec!["6.1"]));
        assert_eq!(versions("6.2"), None);
        assert_eq!(versions(","), None);
    }

    #[test]
    fn cargo_json_names_the_suite_executable() {
        let artifact = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/integration#0.1.0","target":{"kind":["test"],"crate_types":["bin"],"name":"kernel_suite","src_path":"/w/integration/tests/kernel_suite.rs","test":true},"profile":{"test":true},"features":[],"filenames":["/w/target/debug/deps/kernel_suite-0123"],"executable":"/w/target/debug/deps/kernel_suite-0123","fresh":true}"#;
        assert_eq!(
            suite_executable(artifact),
            Some(PathBuf::from("/w/target/debug/deps/kernel_suite-0123"))
        );
        let library =
            r#"{"reason":"compiler-artifact","target":{"name":"integration"},"executable":null}"#;
        assert_eq!(suite_executable(library), None);
        assert_eq!(suite_executable("not json"), None);
    }
}
