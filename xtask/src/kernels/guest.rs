//! Booting a kernel in qemu with virtme-ng and running the kernel suite (or a stand-in
//! command) in the guest as root, its output read as it comes.
//!
//! The guest sees this machine's root file system read-only over 9p, with a throw-away
//! overlay for writes, so the host-built test binary and agent run there unchanged. qemu runs
//! in software (TCG): this machine's /dev/kvm cannot run stock kernels. The guest has no
//! network device, so test packets stay in the namespaces the tests make inside it.

use std::{
    collections::HashMap,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{GuestCommand, Outcome, fetch::Kernel, workspace_root};
use crate::{Totals, step};

/// One boot, suite and power-off. The suite is 10-30x slower in the emulator than on the host.
const DEFAULT_TIMEOUT_SECS: u64 = 1500;
const TIMEOUT_ENV: &str = "EBPF_PROXY_KERNEL_TIMEOUT";

/// The harness multiplies its waits by this: everything in the emulator is slow.
const TIME_SCALE: &str = "20";

const GUEST_MEMORY: &str = "2G";
const GUEST_CPUS: &str = "2";

/// The guest script's first line: proves the kernel booted to userspace.
const BOOTED_MARKER: &str = "xtask-kernel: booted";

/// Boots the kernel, runs the command, and reads the guest's output as it comes.
pub(super) fn boot(vng: &Path, kernel: &Kernel, command: &GuestCommand) -> anyhow::Result<Outcome> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn shell_words_are_quoted() {
        assert_eq!(sh_quote("/w/x y"), "'/w/x y'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}
