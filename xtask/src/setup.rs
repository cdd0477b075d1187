//! `cargo xtask setup`: installs what a fresh machine lacks, and says what it does. Every
//! step checks first, so a second run takes seconds. The recipe is ../shared/TOOLCHAIN.md's.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::step;

/// Debian packages for building: LLVM 22 for bpf-linker (the same major as nightly's LLVM).
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];

/// Debian packages the agent, tests, demo and benchmark drive (iptables, conntrack, socat,
/// bpftool, ip, curl; perf for `bench --profile`).
const TOOL_PACKAGES: &[&str] = &[
    "iproute2",
    "iptables",
    "conntrack",
    "socat",
    "bpftool",
    "curl",
    "linux-perf",
];

/// Debian packages the kernel tier drives: qemu (software emulation); busybox-static
/// (virtme-ng builds an initramfs around it to load a distribution kernel's 9p modules);
/// udev (the guest's init, which is the host's, needs udevd to create
/// /dev/virtio-ports/virtme.*, or the output of `vng --exec` is lost); kmod (depmod for the
/// unpacked modules); the archive keyring the private apt sources are checked with.
const KERNEL_TIER_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "udev",
    "kmod",
    "debian-archive-keyring",
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Everything a build, the tests and the demo need on this machine.
pub fn run() -> anyhow::Result<()> {
    debian_packages(BUILD_PACKAGES)?;
    debian_packages(TOOL_PACKAGES)?;
    kubectl()?;
    nightly_components()?;
    bpf_linker()?;
    bpffs()?;
    step("setup", "done");
    Ok(())
}

/// What a build needs, and nothing of the host (the Dockerfile's build stage).
pub fn run_build_only() -> anyhow::Result<()> {
    debian_packages(BUILD_PACKAGES)?;
    nightly_components()?;
    bpf_linker()?;
    step("setup", "done (build only)");
    Ok(())
}

/// What the kernel tier needs beyond `run()`: qemu, busybox, udev, kmod and virtme-ng.
/// Returns the path of `vng`, which need not be on PATH.
pub fn run_kernel_tier() -> anyhow::Result<PathBuf> {
    debian_packages(KERNEL_TIER_PACKAGES)?;
    let vng = virtme_ng()?;
    step("setup", "done (kernel tier)");
    Ok(vng)
}

fn ok(cmd: &mut Command) -> bool {
    cmd.output().map(|o| o.status.success()).unwrap_or(false)
}

fn output(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn must(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

fn debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .contains("install ok installed")
        })
        .collect();
    if missing.is_empty() {
        step(
            "setup",
            &format!("Debian packages present: {}", packages.join(" ")),
        );
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {missing:?}: run `cargo xtask setup` as root, or `apt-get install {}`",
            missing.join(" ")
        );
    }
    step(
        "setup",
        &format!("installing Debian packages {}", missing.join(" ")),
    );
    must(Command::new("apt-get").args(["update", "-qq"]))?;
    must(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// `kubectl kustomize` renders deploy/ in the tests: any kubectl will do, else Debian's.
fn kubectl() -> anyhow::Result<()> {
    if ok(Command::new("kubectl").args(["version", "--client"])) {
        step("setup", "kubectl present");
        return Ok(());
    }
    debian_packages(&["kubernetes-client"])
}

fn nightly_components() -> anyhow::Result<()> {
    if !output(Command::new("rustup").args(["toolchain", "list"]))
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        step(
            "setup",
            "installing the nightly toolchain (builds the BPF object)",
        );
        must(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    // rust-src: aya-build compiles core with -Z build-std; clippy: the BPF crate's lint pass.
    for component in ["rust-src", "clippy"] {
        if installed.lines().any(|l| l.starts_with(component)) {
            step("setup", &format!("nightly {component} present"));
            continue;
        }
        step("setup", &format!("adding {component} to nightly"));
        must(Command::new("rustup").args([
            "component",
            "add",
            component,
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    if ok(Command::new("bpf-linker").arg("--version")) {
        step("setup", "bpf-linker present");
        return Ok(());
    }
    step(
        "setup",
        "building bpf-linker against Debian's LLVM 22 (about a minute)",
    );
    // LLVM_PREFIX: another llvm-config (LLVM 14) may be first on PATH.
    must(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )?;
    if !ok(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

fn bpffs() -> anyhow::Result<()> {
    let path = Path::new("/sys/fs/bpf");
    if is_bpffs(path) {
        step("setup", "bpffs mounted at /sys/fs/bpf");
        return Ok(());
    }
    if !is_root() {
        step(
            "setup",
            "bpffs is not mounted at /sys/fs/bpf and we are not root: privileged tests and the demo need `mount -t bpf bpf /sys/fs/bpf`",
        );
        return Ok(());
    }
    step("setup", "mounting bpffs at /sys/fs/bpf");
    must(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// `stat -f` names the filesystem type: `bpf_fs` for a BPF filesystem.
fn is_bpffs(path: &Path) -> bool {
    output(Command::new("stat").args(["-f", "-c", "%T"]).arg(path)).trim() == "bpf_fs"
}

/// virtme-ng (`vng`) from PyPI, into the python3 found on PATH.
fn virtme_ng() -> anyhow::Result<PathBuf> {
    if let Some(vng) = find_vng() {
        step("setup", &format!("virtme-ng present ({})", vng.display()));
        return Ok(vng);
    }
    step(
        "setup",
        "installing virtme-ng from PyPI (python3 -m pip install virtme-ng)",
    );
    must(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--root-user-action=ignore",
        "virtme-ng",
    ]))?;
    find_vng().context(
        "virtme-ng was installed, but no working vng is in python3's scripts directory or on PATH",
    )
}

/// `vng` in python3's scripts directory (where pip puts it, on PATH or not; under pyenv
/// this skips the shim), else on PATH; only one that runs.
fn find_vng() -> Option<PathBuf> {
    let scripts = output(Command::new("python3").args([
        "-c",
        "import sysconfig; print(sysconfig.get_path('scripts'))",
    ]));
    let mut candidates = Vec::new();
    if !scripts.trim().is_empty() {
        candidates.push(Path::new(scripts.trim()).join("vng"));
    }
    candidates.push(PathBuf::from("vng"));
    candidates
        .into_iter()
        .find(|vng| ok(Command::new(vng).arg("--version")))
}
