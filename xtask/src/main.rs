//! cargo xtask: set up a machine, build, test, run the demo.
//!
//! `cargo xtask demo` and `cargo xtask test` set up what is missing first, so both work on
//! a fresh machine.

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
    /// Install what this machine lacks: Debian packages, nightly rust-src, bpf-linker, bpffs.
    Setup,
    /// Build proxy-agent, proxyctl and the test workload.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run every test tier: formatting and lints, unit tests, privileged tests.
    Test {
        /// Fail, instead of skipping, when privileged tests cannot run (CI sets this).
        #[arg(long)]
        require_privileged: bool,
        /// Skip cargo fmt and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Set up, build, and show connections to a ClusterIP spread over backends in network
    /// namespaces on this machine; everything is removed afterwards.
    Demo,
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Cmd::Setup => setup::run(),
        Cmd::Build { release } => build(release),
        Cmd::Test {
            require_privileged,
            no_lint,
            cargo_args,
        } => {
            setup::run()?;
            if !no_lint {
                lint()?;
            }
            build(false)?;
            test(require_privileged, &cargo_args)
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

fn test(require_privileged: bool, extra: &[String]) -> anyhow::Result<()> {
    let root = unsafe { libc::geteuid() } == 0;
    step(
        "test",
        if root {
            "unit and privileged tests (network namespaces, cgroups, BPF)"
        } else {
            "unit tests; privileged tests will skip (not root)"
        },
    );
    let mut cmd = Command::new(env!("CARGO"));
    // The default members: everything but the BPF crate, which has no host build.
    cmd.arg("test").args(extra);
    if require_privileged {
        cmd.env("EBPF_PROXY_REQUIRE_PRIVILEGED", "1");
    }
    let status = cmd.status().context("running cargo test")?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}
