//! cargo xtask: set up a machine, build, test, run the demo and the benchmark.
//!
//! `cargo xtask demo` and `cargo xtask test` set up what is missing first, so both work on
//! a fresh machine.

mod kernels;
mod setup;

use std::process::Command;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine lacks: Debian packages, kubectl, nightly rust-src,
    /// bpf-linker, bpffs.
    Setup {
        /// Only what building needs (LLVM, nightly rust-src, bpf-linker): no host tools,
        /// no bpffs mount. The Dockerfile's build stage uses this.
        #[arg(long)]
        build_only: bool,
    },
    /// Build proxy-agent, proxyctl and the test workload.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run the host test tiers: formatting and lints, unit tests, privileged tests; and,
    /// when asked, the kernel tier: the kernel suite as root under Debian's 5.10, 6.1 and
    /// 6.12 kernels booted in qemu (slow: minutes per kernel).
    Test {
        /// Fail, instead of skipping, when privileged tests cannot run (CI sets this).
        #[arg(long)]
        require_privileged: bool,
        /// Skip cargo fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Run only the kernel tier, under these kernels (comma-separated; all of
        /// 5.10,6.1,6.12 when no list is given).
        #[arg(
            long,
            value_name = "LIST",
            num_args = 0..=1,
            default_missing_value = kernels::DEFAULT_KERNELS,
            conflicts_with_all = ["with_kernels", "no_lint"]
        )]
        kernels: Option<String>,
        /// Run the host tiers, then the kernel tier under these kernels (comma-separated;
        /// all of 5.10,6.1,6.12 when no list is given). CI sets this.
        #[arg(
            long,
            value_name = "LIST",
            num_args = 0..=1,
            default_missing_value = kernels::DEFAULT_KERNELS
        )]
        with_kernels: Option<String>,
        /// With --kernels: run this shell command in each guest instead of the kernel
        /// suite, and build nothing (checks the tier itself; its exit status decides).
        #[arg(
            long,
            value_name = "CMD",
            requires = "kernels",
            conflicts_with = "with_kernels"
        )]
        kernel_command: Option<String>,
        /// Extra arguments for `cargo test` (e.g. a test name filter); in the kernel tier,
        /// for the kernel suite's test binary.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Set up, build, and show connections to a ClusterIP spread over backends in network
    /// namespaces on this machine; everything is removed afterwards.
    Demo,
    /// Set up, build in release mode, and measure direct connections, the eBPF mode and
    /// the iptables mode side by side: target/bench/results.{json,md} and plot.svg.
    Bench {
        /// Seconds-long run at 10 and 100 Services (CI): checks that every figure is
        /// produced, not how fast.
        #[arg(long)]
        quick: bool,
        /// Numbers of Services, e.g. `--scales 10,1000,30000`.
        #[arg(long)]
        scales: Option<String>,
        /// Runs per data path point (median reported).
        #[arg(long)]
        runs: Option<usize>,
        /// Length of one data path run, in ms.
        #[arg(long)]
        duration_ms: Option<u64>,
        /// Skip the iptables mode above this many Services (a cold iptables-restore of
        /// 100,000 takes minutes); the report says which scales were skipped.
        #[arg(long, value_name = "N")]
        iptables_max_services: Option<usize>,
        /// Profile each agent's cold sync with perf and report the top functions.
        #[arg(long)]
        profile: bool,
        /// The address family measured: `ipv4` (the default) or `ipv6`.
        #[arg(long)]
        family: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::Setup { build_only: false } => setup::run(),
        Cmd::Setup { build_only: true } => setup::run_build_only(),
        Cmd::Build { release } => build(release),
        // The kernel tier alone: it always requires privileges (the guest runs as root).
        Cmd::Test {
            kernels: Some(list),
            kernel_command,
            cargo_args,
            ..
        } => {
            let series = kernels::parse_list(&list)?;
            setup::run()?;
            let vng = setup::run_kernel_tier()?;
            let command = match kernel_command {
                Some(cmd) => kernels::GuestCommand::Shell(cmd),
                None => {
                    let executable = kernels::build_suite()?;
                    build(false)?;
                    kernels::GuestCommand::Suite {
                        executable,
                        args: cargo_args,
                    }
                }
            };
            let mut totals = Totals::default();
            let ok = kernels::run(&series, &vng, &command, &mut totals)?;
            finish(&totals, ok)
        }
        Cmd::Test {
            require_privileged,
            no_lint,
            with_kernels,
            cargo_args,
            ..
        } => {
            // Parsed first: a typo in the list fails now, not after the host tiers.
            let series = with_kernels
                .as_deref()
                .map(kernels::parse_list)
                .transpose()?;
            setup::run()?;
            if !no_lint {
                lint()?;
            }
            build(false)?;
            let mut totals = Totals::default();
            let mut ok = test(require_privileged, &cargo_args, &mut totals)?;
            if let Some(series) = series {
                if ok {
                    let vng = setup::run_kernel_tier()?;
                    let command = kernels::GuestCommand::Suite {
                        executable: kernels::build_suite()?,
                        args: cargo_args,
                    };
                    ok &= kernels::run(&series, &vng, &command, &mut totals)?;
                } else {
                    step("test", "host tiers failed: the kernel tier is skipped");
                }
            }
            finish(&totals, ok)
        }
        Cmd::Bench {
            quick,
            scales,
            runs,
            duration_ms,
            iptables_max_services,
            profile,
            family,
        } => {
            setup::run()?;
            build(true)?;
            step("bench", "running target/release/bench (as root)");
            let mut args: Vec<String> = Vec::new();
            if quick {
                args.push("--quick".into());
            }
            if profile {
                args.push("--profile".into());
            }
            for (flag, value) in [
                ("--scales", scales),
                ("--runs", runs.map(|r| r.to_string())),
                ("--duration-ms", duration_ms.map(|d| d.to_string())),
                (
                    "--iptables-max-services",
                    iptables_max_services.map(|n| n.to_string()),
                ),
                ("--family", family),
            ] {
                if let Some(value) = value {
                    args.extend([flag.to_string(), value]);
                }
            }
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .context("workspace root")?;
            let release = root.join("target/release");
            args.extend([
                "--out".into(),
                root.join("target/bench").display().to_string(),
            ]);
            let status = Command::new(release.join("bench"))
                .args(&args)
                .env("EBPF_PROXY_BIN_DIR", &release)
                .status()
                .context("running target/release/bench")?;
            if !status.success() {
                bail!("the benchmark failed ({status})");
            }
            Ok(())
        }
        Cmd::Demo => {
            setup::run()?;
            build(false)?;
            step("demo", "running target/debug/demo");
            cargo(&["run", "--quiet", "-p", "integration", "--bin", "demo"])
        }
    }
}

pub fn step(what: &str, message: &str) {
    eprintln!("\x1b[1mxtask {what}:\x1b[0m {message}");
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO"))
        .args(args)
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn build(release: bool) -> anyhow::Result<()> {
    step(
        "build",
        "proxy-agent, proxyctl (with the BPF object embedded), probe, demo",
    );
    let mut args = vec!["build", "-p", "proxy-user", "-p", "integration", "--bins"];
    if release {
        args.push("--release");
    }
    cargo(&args)
}

fn lint() -> anyhow::Result<()> {
    step("test", "cargo fmt --check");
    cargo(&["fmt", "--all", "--check"])?;
    step("test", "cargo clippy -D warnings (user-space crates)");
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "proxy-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    step(
        "test",
        "cargo clippy -D warnings (BPF crate, nightly, bpfel-unknown-none)",
    );
    let status = Command::new("rustup")
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "proxy-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .args(["--", "-D", "warnings"])
        .env("CARGO_TARGET_DIR", "target/bpf-clippy")
        .status()
        .context("running nightly clippy on proxy-ebpf")?;
    if !status.success() {
        bail!("clippy on proxy-ebpf failed ({status})");
    }
    Ok(())
}

/// The unit and privileged tests on the host; true when they passed.
fn test(require_privileged: bool, extra: &[String], totals: &mut Totals) -> anyhow::Result<bool> {
    let root = unsafe { libc::geteuid() } == 0;
    step(
        "test",
        if root {
            "unit and privileged tests (network namespaces, cgroups, BPF)"
        } else {
            "unit tests; privileged tests will skip (not root)"
        },
    );
    let mut ok = true;
    // The default members: everything but the BPF crate, which has no host build.
    ok &= cargo_test(extra, &[], require_privileged, totals)?;
    if root && extra.is_empty() {
        step(
            "test",
            "the ClusterIP and UDP flow tests again, with the agent started as deploy/'s DaemonSet starts it (its capabilities: the UDP flow tests destroy sockets in pods' namespaces)",
        );
        let args = [
            "-p",
            "integration",
            "--test",
            "clusterip",
            "--test",
            "udp_flows",
        ]
        .map(String::from);
        let env = [("EBPF_PROXY_AGENT_LAUNCH", "daemonset")];
        ok &= cargo_test(&args, &env, require_privileged, totals)?;
    }
    Ok(ok)
}

/// One closing line for the whole run, summed over every test binary and kernel; an error
/// when anything failed.
fn finish(totals: &Totals, ok: bool) -> anyhow::Result<()> {
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    if !ok {
        bail!("tests failed");
    }
    Ok(())
}

/// `cargo test ARGS` with `env`, its output passed through and counted; false on failure.
fn cargo_test(
    args: &[String],
    env: &[(&str, &str)],
    require_privileged: bool,
    totals: &mut Totals,
) -> anyhow::Result<bool> {
    use std::io::{BufRead as _, BufReader};

    let mut cmd = Command::new(env!("CARGO"));
    cmd.arg("test")
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped());
    if require_privileged {
        cmd.env("EBPF_PROXY_REQUIRE_PRIVILEGED", "1");
    }
    let mut child = cmd.spawn().context("running cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        totals.add(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    Ok(status.success())
}

/// Sums cargo test's `test result: ok. 9 passed; 0 failed; 1 ignored; ...` lines.
#[derive(Default, Debug, PartialEq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    fn add_totals(&mut self, other: &Totals) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }

    fn add(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (words.next(), words.next()) {
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn sums_cargo_test_result_lines() {
        let mut t = Totals::default();
        t.add("test result: ok. 9 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 14.77s");
        t.add("test result: FAILED. 4 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out");
        t.add("running 3 tests");
        assert_eq!(
            t,
            Totals {
                passed: 13,
                failed: 2,
                ignored: 1
            }
        );
    }
}
