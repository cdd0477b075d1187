//! The kernel tier: the kernel suite (integration/tests/kernel_suite.rs) run as root under
//! Debian's own kernels, booted in qemu with virtme-ng, so that the BPF programs meet the
//! verifiers, helpers and attach types of the kernels users run, not only the host's.
//!
//! The guest sees this machine's root file system read-only over 9p, with a throw-away
//! overlay for writes, so the host-built test binary and agent run there unchanged. qemu runs
//! in software (TCG): this machine's /dev/kvm cannot run stock kernels. The guest has no
//! network device, so test packets stay in the namespaces the tests make inside it.
//!
//! Kernels are Debian's generic amd64 image packages, downloaded with a private apt
//! configuration (the host's apt sources, lists and dpkg status are untouched) and unpacked,
//! never installed, under /opt/ebpf-proxy/kernels.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant, SystemTime},
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

/// One boot, suite and power-off. The suite is 10-30x slower in the emulator than on the host.
const DEFAULT_TIMEOUT_SECS: u64 = 1500;
const TIMEOUT_ENV: &str = "EBPF_PROXY_KERNEL_TIMEOUT";

/// The harness multiplies its waits by this: everything in the emulator is slow.
const TIME_SCALE: &str = "20";

const GUEST_MEMORY: &str = "2G";
const GUEST_CPUS: &str = "2";

/// Refresh the private apt lists at most this often.
const APT_LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Used when the host's apt sources name no Debian archive.
const FALLBACK_ARCHIVE: &str = "http://deb.debian.org/debian";

/// The guest script's first line: proves the kernel booted to userspace.
const BOOTED_MARKER: &str = "xtask-kernel: booted";

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
    let apt = Apt::prepare(&cache)?;
    let mut outcomes = Vec::new();
    for s in series {
        let kernel = match fetch(&apt, &cache, s) {
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
        outcomes.push(boot(vng, &kernel, command)?);
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

fn boot_timeout() -> anyhow::Result<Duration> {
    match std::env::var(TIMEOUT_ENV) {
        Ok(secs) => secs
            .trim()
            .parse()
            .map(Duration::from_secs)
            .with_context(|| format!("{TIMEOUT_ENV}={secs:?} is not a number of seconds")),
        Err(_) => Ok(Duration::from_secs(DEFAULT_TIMEOUT_SECS)),
    }
}

// ---- Downloading kernels ----

/// The Debian archives the host's apt already uses: the main one and the security one.
#[derive(Debug, PartialEq, Eq)]
struct Archives {
    main: String,
    security: String,
}

impl Archives {
    /// From /etc/apt/sources.list.d/*.sources and /etc/apt/sources.list; Debian's own
    /// host when neither names one.
    fn of_host() -> Self {
        let mut uris = Vec::new();
        if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
            let mut paths: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
            paths.sort();
            for path in paths {
                if path.extension().is_some_and(|e| e == "sources") {
                    uris.extend(deb822_uris(&fs::read_to_string(&path).unwrap_or_default()));
                } else if path.extension().is_some_and(|e| e == "list") {
                    uris.extend(one_line_uris(
                        &fs::read_to_string(&path).unwrap_or_default(),
                    ));
                }
            }
        }
        uris.extend(one_line_uris(
            &fs::read_to_string("/etc/apt/sources.list").unwrap_or_default(),
        ));
        Self::from_uris(&uris)
    }

    /// The first Debian archive and the first security archive named; the security one
    /// is derived from the main one when absent.
    fn from_uris(uris: &[String]) -> Self {
        let trimmed = |u: &String| u.trim_end_matches('/').to_string();
        let main = uris
            .iter()
            .find(|u| u.trim_end_matches('/').ends_with("/debian"))
            .map(trimmed)
            .unwrap_or_else(|| FALLBACK_ARCHIVE.to_string());
        let security = uris
            .iter()
            .find(|u| u.trim_end_matches('/').ends_with("/debian-security"))
            .map(trimmed)
            .unwrap_or_else(|| format!("{main}-security"));
        Archives { main, security }
    }

    /// A sources.list with every suite the tier knows and its security suite.
    fn sources_list(&self) -> String {
        let mut list = String::new();
        for s in SERIES {
            let suite = s.suite;
            list.push_str(&format!(
                "deb [signed-by={KEYRING}] {} {suite} main\n",
                self.main
            ));
            list.push_str(&format!(
                "deb [signed-by={KEYRING}] {} {suite}-security main\n",
                self.security
            ));
        }
        list
    }
}

/// The URIs of the enabled `deb` stanzas of a deb822 .sources file.
fn deb822_uris(text: &str) -> Vec<String> {
    let mut uris = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        let enabled = field("Enabled").is_none_or(|e| e != "no");
        if let (true, true, Some(found)) = (is_deb, enabled, field("URIs")) {
            uris.extend(found.split_whitespace().map(str::to_owned));
        }
    }
    uris
}

/// The URIs of the `deb` lines of a one-line-style sources.list (options in brackets skipped).
fn one_line_uris(text: &str) -> Vec<String> {
    let mut uris = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("deb ") else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(options) => options.split_once(']').map_or("", |(_, r)| r),
            None => rest,
        };
        if let Some(uri) = rest.split_whitespace().next() {
            uris.push(uri.to_owned());
        }
    }
    uris
}

/// apt with a private configuration under CACHE/apt: own sources, lists, cache and dpkg
/// status, so the host's apt state is untouched (the host's apt.conf.d, e.g. a proxy,
/// still applies).
struct Apt {
    options: Vec<String>,
}

impl Apt {
    /// Writes the sources, and refreshes the lists when they are a day old or the
    /// sources changed.
    fn prepare(cache: &Path) -> anyhow::Result<Self> {
        let dir = cache.join("apt");
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let status = dir.join("status");
        if !status.exists() {
            fs::write(&status, "").with_context(|| format!("creating {}", status.display()))?;
        }
        let sources = dir.join("sources.list");
        let wanted = Archives::of_host().sources_list();
        let changed = fs::read_to_string(&sources).ok().as_deref() != Some(wanted.as_str());
        if changed {
            fs::write(&sources, &wanted)
                .with_context(|| format!("writing {}", sources.display()))?;
        }
        let apt = Apt {
            options: private_options(&dir),
        };
        // Our own stamp: apt gives list files the server's modification time, which for
        // a quiet suite can be weeks old.
        let stamp = dir.join("updated");
        if changed || !younger_than(&stamp, APT_LISTS_MAX_AGE) {
            step(
                "kernels",
                &format!("apt-get update (private lists in {})", dir.display()),
            );
            let status = Command::new("apt-get")
                .args(&apt.options)
                .args(["-q", "update"])
                .status()
                .context("running apt-get update")?;
            if !status.success() {
                bail!(
                    "apt-get update with the private sources in {} failed ({status})",
                    sources.display()
                );
            }
            fs::write(&stamp, "").with_context(|| format!("writing {}", stamp.display()))?;
        }
        Ok(apt)
    }

    fn cache_query(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("apt-cache")
            .args(&self.options)
            .args(args)
            .output()
            .with_context(|| format!("running apt-cache {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "apt-cache {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The image package the newest `linux-image-amd64` of SUITE or SUITE-security
    /// depends on, e.g. linux-image-6.1.0-57-amd64.
    fn image_package(&self, suite: &str) -> anyhow::Result<String> {
        let meta = "linux-image-amd64";
        let madison = self.cache_query(&["madison", meta])?;
        let version = newest_in_suite(&madison, suite)
            .with_context(|| format!("no {meta} in {suite} or {suite}-security"))?;
        let show = self.cache_query(&["show", &format!("{meta}={version}")])?;
        image_dependency(&show)
            .with_context(|| format!("cannot read the image package of {meta}={version}"))
    }
}

fn private_options(dir: &Path) -> Vec<String> {
    let d = dir.display();
    [
        format!("Dir::Etc::SourceList={d}/sources.list"),
        "Dir::Etc::SourceParts=/nonexistent".into(),
        format!("Dir::State::Lists={d}/lists"),
        format!("Dir::Cache={d}/cache"),
        format!("Dir::State::Status={d}/status"),
        "APT::Architecture=amd64".into(),
        // Only the package lists: no translations, no AppStream metadata.
        "Acquire::Languages=none".into(),
        "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
        // Our directories belong to root; apt's _apt user could not write there.
        "APT::Sandbox::User=root".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect()
}

fn younger_than(path: &Path, age: Duration) -> bool {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|elapsed| elapsed < age)
}

/// From `apt-cache madison` (newest first): the first version from SUITE or SUITE-security.
fn newest_in_suite(madison: &str, suite: &str) -> Option<String> {
    madison.lines().find_map(|line| {
        let mut fields = line.split('|').map(str::trim);
        let (_, version, source) = (fields.next()?, fields.next()?, fields.next()?);
        let dist = source.split_whitespace().nth(1)?;
        let dist = dist.split('/').next()?;
        (dist == suite || dist == format!("{suite}-security")).then(|| version.to_owned())
    })
}

/// From `apt-cache show` of the metapackage: the linux-image package it depends on.
fn image_dependency(show: &str) -> Option<String> {
    show.lines()
        .find_map(|l| l.strip_prefix("Depends:"))?
        .split(',')
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|d| d.starts_with("linux-image-"))
        .map(str::to_owned)
}

/// An unpacked kernel.
struct Kernel {
    release: String,
    vmlinuz: PathBuf,
}

impl Kernel {
    fn cached(cache: &Path, release: &str) -> Option<Self> {
        let vmlinuz = cache.join(release).join(format!("boot/vmlinuz-{release}"));
        vmlinuz.is_file().then(|| Kernel {
            release: release.to_owned(),
            vmlinuz,
        })
    }
}

/// The newest image of the series, from the cache or downloaded and unpacked into it.
fn fetch(apt: &Apt, cache: &Path, series: &Series) -> anyhow::Result<Kernel> {
    let package = apt.image_package(series.suite)?;
    let release = package
        .strip_prefix("linux-image-")
        .context("image package name")?;
    if let Some(kernel) = Kernel::cached(cache, release) {
        step(
            "kernels",
            &format!("{} ({}): {release}, cached", series.version, series.suite),
        );
        return Ok(kernel);
    }
    step(
        "kernels",
        &format!(
            "{} ({}): downloading {package} (no install)",
            series.version, series.suite
        ),
    );
    let started = Instant::now();
    let kernel = download(apt, cache, &package)?;
    prune(cache, series, &kernel.release);
    step(
        "kernels",
        &format!(
            "{}: downloaded and unpacked into {} in {:.0} s",
            kernel.release,
            cache.join(&kernel.release).display(),
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(kernel)
}

/// Removes the series' older releases (120-400 MB each) once a newer one is unpacked.
fn prune(cache: &Path, series: &Series, keep: &str) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != keep && of_series(&name, series) && entry.path().join("boot").is_dir() {
            step(
                "kernels",
                &format!("removing the older {name} from the cache"),
            );
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// 6.1.0-57-amd64 is of 6.1; 6.12.118+deb13-amd64 is not.
fn of_series(release: &str, series: &Series) -> bool {
    release
        .strip_prefix(series.version)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// `apt-get download`, `dpkg-deb -x`, modules moved to lib/modules/R and `depmod -b`; the
/// tree is renamed into CACHE/R only when complete, so a cached release is a whole one.
fn download(apt: &Apt, cache: &Path, package: &str) -> anyhow::Result<Kernel> {
    let work = cache.join(format!("partial-{}", std::process::id()));
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = download_into(apt, cache, package, &work);
    let _ = fs::remove_dir_all(&work);
    result
}

fn download_into(apt: &Apt, cache: &Path, package: &str, work: &Path) -> anyhow::Result<Kernel> {
    must(
        Command::new("apt-get")
            .args(&apt.options)
            .args(["-q", "download", package])
            .current_dir(work),
    )?;
    let deb = fs::read_dir(work)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", work.display()))?;
    let unpacked = work.join("x");
    must(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let release = fs::read_dir(unpacked.join("boot"))
        .with_context(|| format!("no boot/ in {}", deb.display()))?
        .flatten()
        .find_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .with_context(|| format!("no vmlinuz in {}", deb.display()))?;
    let tree = work.join("tree");
    fs::create_dir_all(tree.join("lib/modules"))?;
    fs::rename(unpacked.join("boot"), tree.join("boot"))?;
    // Debian 13 ships modules under /usr/lib/modules, older releases under /lib/modules.
    let modules = [
        unpacked.join("usr/lib/modules").join(&release),
        unpacked.join("lib/modules").join(&release),
    ]
    .into_iter()
    .find(|p| p.is_dir())
    .with_context(|| format!("no modules for {release} in {}", deb.display()))?;
    fs::rename(&modules, tree.join("lib/modules").join(&release))?;
    must(Command::new("depmod").arg("-b").arg(&tree).arg(&release))?;
    let root = cache.join(&release);
    fs::rename(&tree, &root)
        .with_context(|| format!("moving the kernel into {}", root.display()))?;
    Kernel::cached(cache, &release).with_context(|| format!("no vmlinuz in {}", root.display()))
}

fn must(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

// ---- Booting ----

/// Boots the kernel, runs the command, and reads the guest's output as it comes.
fn boot(vng: &Path, kernel: &Kernel, command: &GuestCommand) -> anyhow::Result<Outcome> {
    let release = &kernel.release;
    let timeout = boot_timeout()?;
    step(
        "kernels",
        &format!(
            "booting {release} (qemu TCG, {GUEST_CPUS} CPUs, {GUEST_MEMORY}, timeout {} s)",
            timeout.as_secs()
        ),
    );
    // Under /tmp: the guest sees the host's /tmp through its overlay.
    let script = PathBuf::from(format!(
        "/tmp/ebpf-proxy-kernel-{}-{release}.sh",
        std::process::id()
    ));
    fs::write(&script, guest_script(&workspace_root()?, command)?)
        .with_context(|| format!("writing {}", script.display()))?;
    let result = run_guest(vng, kernel, &script, timeout);
    let _ = fs::remove_file(&script);
    let run = result?;

    let failure = if run.timed_out {
        Some(format!("timed out after {} s", timeout.as_secs()))
    } else if run.booted_after.is_none() {
        Some(format!("did not boot ({})", run.status))
    } else if run.totals.failed > 0 {
        Some("tests failed".into())
    } else if !run.status.success() {
        Some(run.status.to_string())
    } else if matches!(command, GuestCommand::Suite { .. })
        && run.totals.passed + run.totals.failed == 0
    {
        Some("ran no test".into())
    } else {
        None
    };
    Ok(Outcome {
        kernel: release.clone(),
        totals: run.totals,
        boot_secs: run.booted_after.map(|d| d.as_secs_f64()),
        total_secs: run.elapsed.as_secs_f64(),
        failure,
    })
}

/// What one guest run left.
struct GuestRun {
    totals: Totals,
    status: std::process::ExitStatus,
    booted_after: Option<Duration>,
    elapsed: Duration,
    timed_out: bool,
}

/// `vng --disable-kvm ... --exec "bash SCRIPT"`, both of its output streams on one pipe
/// read here (qemu reopens /proc/self/fd/1 and 2: on a regular file the two would overwrite
/// each other), every line printed with the kernel's release in front.
fn run_guest(
    vng: &Path,
    kernel: &Kernel,
    script: &Path,
    timeout: Duration,
) -> anyhow::Result<GuestRun> {
    let started = Instant::now();
    let (reader, writer) = std::io::pipe().context("creating a pipe for the guest's output")?;
    let mut child = {
        let mut cmd = Command::new(vng);
        // TCG (--disable-kvm passes -cpu max): this /dev/kvm cannot run stock kernels.
        // No --net: the guest gets no network device.
        cmd.args(["--disable-kvm", "-m", GUEST_MEMORY, "-p", GUEST_CPUS, "-r"])
            .arg(&kernel.vmlinuz)
            .arg("--exec")
            .arg(format!("bash {}", script.display()))
            .stdin(Stdio::null())
            .stdout(writer.try_clone().context("duplicating the pipe")?)
            .stderr(writer);
        cmd.spawn()
            .with_context(|| format!("running {}", vng.display()))?
        // cmd, and with it our copies of the pipe's write end, is dropped here, so the
        // read below ends when the guest's side closes.
    };
    let watchdog = Watchdog::start(child.id(), timeout);

    let release = &kernel.release;
    let mut totals = Totals::default();
    let mut booted_after = None;
    let mut reader = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader
            .read_until(b'\n', &mut buf)
            .context("reading the guest's output")?
            == 0
        {
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        println!("[{release}] {line}");
        if booted_after.is_none() && line.starts_with(BOOTED_MARKER) {
            booted_after = Some(started.elapsed());
        }
        totals.add(line);
    }
    let timed_out = watchdog.stop();
    let status = child.wait().context("waiting for vng")?;
    Ok(GuestRun {
        totals,
        status,
        booted_after,
        elapsed: started.elapsed(),
        timed_out,
    })
}

/// Kills vng and everything under it (sh, virtme-run, qemu), by PID, when the deadline
/// passes first.
struct Watchdog {
    done: mpsc::Sender<()>,
    thread: thread::JoinHandle<bool>,
}

impl Watchdog {
    fn start(pid: u32, timeout: Duration) -> Self {
        let (done, finished) = mpsc::channel::<()>();
        let thread = thread::spawn(move || match finished.recv_timeout(timeout) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                eprintln!(
                    "xtask kernels: no end after {} s: killing qemu and vng",
                    timeout.as_secs()
                );
                kill_tree(pid);
                true
            }
            _ => false,
        });
        Watchdog { done, thread }
    }

    /// True when it had to kill. Called before vng is reaped, so its PID is still its own.
    fn stop(self) -> bool {
        let _ = self.done.send(());
        self.thread.join().unwrap_or(false)
    }
}

/// SIGKILL to `pid`'s descendants, deepest (qemu) first, each given a moment to be reaped by
/// its parent, which then ends on its own (virtme-run returns when qemu dies); then `pid`.
fn kill_tree(pid: u32) {
    for p in descendants(pid).into_iter().rev().chain([pid]) {
        let Ok(target) = libc::pid_t::try_from(p) else {
            continue;
        };
        if !alive(p) {
            continue;
        }
        unsafe { libc::kill(target, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(p) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `pid`'s descendants, parents before their children.
fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if let Some((_, parent)) = state_and_parent(&stat) {
            children.entry(parent).or_default().push(child);
        }
    }
    let mut found = Vec::new();
    let mut next: Vec<u32> = children.get(&pid).cloned().unwrap_or_default();
    while let Some(p) = next.pop() {
        next.extend(children.get(&p).into_iter().flatten());
        found.push(p);
    }
    found
}

/// Running, not yet a zombie.
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| state_and_parent(&stat))
        .is_some_and(|(state, _)| state != 'Z')
}

/// The state and parent PID from /proc/PID/stat (`pid (comm) state ppid ...`; comm may
/// hold spaces and parentheses).
fn state_and_parent(stat: &str) -> Option<(char, u32)> {
    let (_, after_comm) = stat.rsplit_once(')')?;
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.next()?.parse().ok()?))
}

/// The script the guest runs: bpffs, the workspace root, the environment of the kernel
/// suite, then the suite (or the stand-in command).
fn guest_script(workspace: &Path, command: &GuestCommand) -> anyhow::Result<String> {
    let home = std::env::var("HOME").context("HOME is not set")?;
    let cargo_bin = std::env::var("CARGO_HOME")
        .map(|h| format!("{h}/bin"))
        .unwrap_or_else(|_| format!("{home}/.cargo/bin"));
    let root = workspace.display().to_string();
    let bin_dir = workspace.join("target/debug").display().to_string();
    let mut script = format!(
        "# Written by cargo xtask test: runs inside a guest kernel, as root.\n\
         echo \"{BOOTED_MARKER} $(uname -r)\"\n\
         mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf\n\
         cd {} || exit 1\n\
         export PATH={}:\"$PATH\"\n\
         export EBPF_PROXY_REQUIRE_PRIVILEGED=1 EBPF_PROXY_TIME_SCALE={TIME_SCALE} \
         EBPF_PROXY_BIN_DIR={} EBPF_PROXY_KERNEL_TIER=1\n",
        sh_quote(&root),
        sh_quote(&cargo_bin),
        sh_quote(&bin_dir),
    );
    match command {
        GuestCommand::Suite { executable, args } => {
            let mut line = vec![
                sh_quote(&executable.display().to_string()),
                "--test-threads=1".into(),
            ];
            line.extend(args.iter().map(|a| sh_quote(a)));
            script.push_str(&format!("exec {}\n", line.join(" ")));
        }
        GuestCommand::Shell(cmd) => {
            script.push_str(cmd);
            script.push('\n');
        }
    }
    Ok(script)
}

/// One shell word: single-quoted, with embedded quotes closed and escaped.
fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
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
    fn madison_picks_the_newest_of_the_suite_or_its_security_suite() {
        let madison = "\
linux-image-amd64 | 6.12.57-1 | http://deb.debian.org/debian-security trixie-security/main amd64 Packages
linux-image-amd64 | 6.12.48-1 | http://deb.debian.org/debian trixie/main amd64 Packages
linux-image-amd64 | 6.1.158-1 | http://deb.debian.org/debian bookworm/main amd64 Packages
linux-image-amd64 | 5.10.244-1 | http://deb.debian.org/debian-security bullseye-security/main amd64 Packages
linux-image-amd64 | 5.10.237-1 | http://deb.debian.org/debian bullseye/main amd64 Packages
";
        assert_eq!(
            newest_in_suite(madison, "trixie").as_deref(),
            Some("6.12.57-1")
        );
        assert_eq!(
            newest_in_suite(madison, "bookworm").as_deref(),
            Some("6.1.158-1")
        );
        assert_eq!(
            newest_in_suite(madison, "bullseye").as_deref(),
            Some("5.10.244-1")
        );
        assert_eq!(newest_in_suite(madison, "sid"), None);
    }

    #[test]
    fn show_names_the_image_package() {
        let show = "\
Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.158+1)
Version: 6.1.158-1
Depends: linux-image-6.1.0-41-amd64 (= 6.1.158-1)
Description-en: Linux for 64-bit PCs (meta-package)
";
        assert_eq!(
            image_dependency(show).as_deref(),
            Some("linux-image-6.1.0-41-amd64")
        );
        let trixie = "Depends: initramfs-tools, linux-image-6.12.57+deb13-amd64 (= 6.12.57-1)\n";
        assert_eq!(
            image_dependency(trixie).as_deref(),
            Some("linux-image-6.12.57+deb13-amd64")
        );
        assert_eq!(image_dependency("Package: x\n"), None);
    }

    #[test]
    fn host_archives_from_a_deb822_sources_file() {
        let sources = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example.org/debian

Types: deb
URIs: http://deb.debian.org/debian-security/
Suites: bookworm-security
Components: main
";
        let uris = deb822_uris(sources);
        assert_eq!(
            uris,
            [
                "http://deb.debian.org/debian",
                "http://deb.debian.org/debian-security/"
            ]
        );
        assert_eq!(
            Archives::from_uris(&uris),
            Archives {
                main: "http://deb.debian.org/debian".into(),
                security: "http://deb.debian.org/debian-security".into(),
            }
        );
    }

    #[test]
    fn host_archives_from_a_one_line_sources_list() {
        let list = "\
# deb http://commented.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://ftp.de.debian.org/debian/ bookworm main
deb-src http://ftp.de.debian.org/debian bookworm main
deb http://apt.example.com/repo stable main
";
        let uris = one_line_uris(list);
        assert_eq!(
            uris,
            [
                "http://ftp.de.debian.org/debian/",
                "http://apt.example.com/repo"
            ]
        );
        // No security line: the security archive is the main one's sibling.
        assert_eq!(
            Archives::from_uris(&uris),
            Archives {
                main: "http://ftp.de.debian.org/debian".into(),
                security: "http://ftp.de.debian.org/debian-security".into(),
            }
        );
        assert_eq!(Archives::from_uris(&[]).main, FALLBACK_ARCHIVE);
    }

    #[test]
    fn private_sources_name_every_suite_and_its_security_suite() {
        let archives = Archives::from_uris(&[]);
        let list = archives.sources_list();
        assert_eq!(list.lines().count(), 6);
        assert!(list.contains(" http://deb.debian.org/debian trixie main"));
        assert!(list.contains(" http://deb.debian.org/debian-security bullseye-security main"));
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

    #[test]
    fn proc_stat_survives_odd_command_names() {
        assert_eq!(
            state_and_parent("4242 (qemu-system-x86) S 4200 4242 0"),
            Some(('S', 4200))
        );
        assert_eq!(state_and_parent("7 (a) b (c)) Z 1 7 0"), Some(('Z', 1)));
        assert_eq!(state_and_parent(""), None);
    }

    #[test]
    fn releases_belong_to_their_series_only() {
        let [v5_10, v6_1, v6_12] = [SERIES[0], SERIES[1], SERIES[2]];
        assert!(of_series("6.1.0-57-amd64", &v6_1));
        assert!(!of_series("6.12.118+deb13-amd64", &v6_1));
        assert!(of_series("6.12.118+deb13-amd64", &v6_12));
        assert!(of_series("5.10.0-46-amd64", &v5_10));
        assert!(!of_series("apt", &v5_10));
    }

    #[test]
    fn shell_words_are_quoted() {
        assert_eq!(sh_quote("/w/x y"), "'/w/x y'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
