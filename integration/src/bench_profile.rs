//! `bench --profile`: where the agent's cold sync spends its time, from `perf record` of
//! the agent process (and the processes it starts: iptables-restore in iptables mode) from
//! just after it starts until it logs `synced`. The samples are folded into stacks (one
//! `comm;outer;...;inner count` line each, the input of flame graph tools) and summed per
//! function: self time (the function on top of the stack) and total time (anywhere in it).
//!
//! An external profiler needs no change to the agent. Call stacks are unwound from DWARF
//! (`--call-graph dwarf`): release builds have no frame pointers.

use std::{
    collections::{BTreeMap, HashSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::ChildGuard;

/// One sample: the command name and its stack, innermost frame first (as `perf script`
/// prints it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub comm: String,
    pub pid: u32,
    pub frames: Vec<String>,
}

/// Parses `perf script -F comm,pid,ip,sym` output: a header line per sample, then one
/// indented line per frame (`<address> <symbol>`), then a blank line.
pub fn parse_perf_script(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut current: Option<Sample> = None;
    for line in text.lines() {
        if line.trim().is_empty() {
            samples.extend(current.take());
        } else if line.starts_with([' ', '\t']) {
            if let Some(sample) = &mut current {
                sample.frames.push(frame_name(line.trim()));
            }
        } else {
            samples.extend(current.take());
            let mut words = line.split_whitespace().collect::<Vec<_>>();
            // The pid ends the header (comm may hold spaces); a trailing event name or
            // time would not parse as one.
            while words.last().is_some_and(|w| w.parse::<u32>().is_err()) {
                words.pop();
            }
            let Some(pid) = words.pop().and_then(|w| w.parse().ok()) else {
                continue;
            };
            current = Some(Sample {
                comm: words.join(" "),
                pid,
                frames: Vec::new(),
            });
        }
    }
    samples.extend(current);
    samples
}

/// `55d0c0a1b2c3 proxy_user::sync::Syncer::sync::h0123456789abcdef` -> the symbol, without
/// the address, an offset, the DSO or a Rust hash.
fn frame_name(line: &str) -> String {
    let mut sym = line
        .split_once(char::is_whitespace)
        .map_or(line, |(_, rest)| rest)
        .trim();
    if let Some(open) = sym.rfind(" (")
        && sym.ends_with(')')
    {
        sym = &sym[..open];
    }
    if let Some((name, offset)) = sym.rsplit_once("+0x")
        && offset.chars().all(|c| c.is_ascii_hexdigit())
    {
        sym = name;
    }
    if let Some((name, hash)) = sym.rsplit_once("::h")
        && hash.len() == 16
        && hash.chars().all(|c| c.is_ascii_hexdigit())
    {
        sym = name;
    }
    sym.to_owned()
}

/// Stacks as flame graph tools read them: `comm;outermost;...;innermost count`, sorted.
pub fn fold(samples: &[Sample]) -> String {
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    for s in samples {
        let mut key = s.comm.replace(';', ":");
        for frame in s.frames.iter().rev() {
            key.push(';');
            key.push_str(&frame.replace(';', ":"));
        }
        *stacks.entry(key).or_default() += 1;
    }
    stacks
        .into_iter()
        .map(|(stack, n)| format!("{stack} {n}\n"))
        .collect()
}

/// A function's share of the samples.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FunctionTime {
    pub function: String,
    /// Samples with the function on top of the stack.
    pub self_samples: u64,
    /// Samples with the function anywhere in the stack (counted once per sample).
    pub total_samples: u64,
}

/// What `--profile` found for one agent's cold sync.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    pub mode: String,
    pub services: usize,
    pub samples: u64,
    /// Samples per command (the agent, iptables-restore, ...).
    pub by_command: BTreeMap<String, u64>,
    /// The functions with the most self time.
    pub top_self: Vec<FunctionTime>,
    /// The functions with the most total time.
    pub top_total: Vec<FunctionTime>,
    /// The folded stacks, for a flame graph.
    pub folded: PathBuf,
    /// The agent's own `synced` figure (elapsed_us of its first full sync).
    pub synced_ms: Option<f64>,
}

/// Frames every stack of a thread shares (thread start, the async runtime, the standard
/// library's plumbing): left out of the total-time list, where they would fill the top
/// with 100 % rows that say nothing. They stay in the folded stacks.
fn plumbing(function: &str) -> bool {
    const PREFIXES: [&str; 10] = [
        "std::",
        "<std::",
        "core::ops::function::",
        "tokio::runtime::",
        "<tokio::runtime::",
        "__libc_start",
        "start_thread",
        "clone3",
        "_start",
        "[unknown]",
    ];
    function == "main" || PREFIXES.iter().any(|p| function.starts_with(p))
}

/// The `n` functions with the most self time and the `n` with the most total time (the
/// runtime's plumbing left out of the latter).
pub fn top_functions(samples: &[Sample], n: usize) -> (Vec<FunctionTime>, Vec<FunctionTime>) {
    let mut table: BTreeMap<&str, FunctionTime> = BTreeMap::new();
    for s in samples {
        if let Some(top) = s.frames.first() {
            let entry = table.entry(top).or_default();
            entry.self_samples += 1;
        }
        let mut seen = HashSet::new();
        for frame in &s.frames {
            if seen.insert(frame.as_str()) {
                table.entry(frame).or_default().total_samples += 1;
            }
        }
    }
    let all: Vec<FunctionTime> = table
        .into_iter()
        .map(|(name, t)| FunctionTime {
            function: name.to_owned(),
            ..t
        })
        .collect();
    let top = |key: fn(&FunctionTime) -> u64, keep: fn(&str) -> bool| {
        let mut sorted: Vec<FunctionTime> =
            all.iter().filter(|t| keep(&t.function)).cloned().collect();
        sorted.sort_by(|a, b| key(b).cmp(&key(a)).then(a.function.cmp(&b.function)));
        sorted.truncate(n);
        sorted
    };
    (
        top(|t| t.self_samples, |_| true),
        top(|t| t.total_samples, |f| !plumbing(f)),
    )
}

impl Profile {
    /// From the samples of one sync.
    pub fn from_samples(mode: &str, services: usize, samples: &[Sample], n: usize) -> Self {
        let mut by_command = BTreeMap::new();
        for s in samples {
            *by_command.entry(s.comm.clone()).or_default() += 1;
        }
        let (top_self, top_total) = top_functions(samples, n);
        Self {
            mode: mode.to_owned(),
            services,
            samples: samples.len() as u64,
            by_command,
            top_self,
            top_total,
            ..Self::default()
        }
    }

    /// A Markdown section: the split per command, then the top functions.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let pct = |n: u64| 100.0 * n as f64 / self.samples.max(1) as f64;
        let _ = writeln!(
            out,
            "\n**Profile: {} mode, {} Services, cold sync** ({} samples{}; folded stacks in `{}`)\n",
            self.mode,
            self.services,
            self.samples,
            self.synced_ms.map_or(String::new(), |ms| format!(
                "; the agent logged synced after {ms:.1} ms"
            )),
            self.folded.display()
        );
        let commands: Vec<String> = self
            .by_command
            .iter()
            .map(|(c, n)| format!("{c} {:.1} %", pct(*n)))
            .collect();
        if self.samples < 20 {
            let _ = writeln!(
                out,
                "Too few samples to say where the time goes: the sync was shorter than a few sampling periods (perf samples at 499 Hz).\n"
            );
        }
        let _ = writeln!(
            out,
            "Samples per command (`:PID` is a thread perf saw before its name): {}.\n",
            commands.join(", ")
        );
        out.push_str("| self | total | function |\n|---:|---:|---|\n");
        for t in &self.top_self {
            let _ = writeln!(
                out,
                "| {:.1} % | {:.1} % | `{}` |",
                pct(t.self_samples),
                pct(t.total_samples),
                t.function
            );
        }
        out.push_str("\nMost total time (the function or what it calls):\n\n| total | self | function |\n|---:|---:|---|\n");
        for t in &self.top_total {
            let _ = writeln!(
                out,
                "| {:.1} % | {:.1} % | `{}` |",
                pct(t.total_samples),
                pct(t.self_samples),
                t.function
            );
        }
        out
    }
}

/// `perf record` attached to a running process (and the children it starts afterwards).
pub struct Recorder {
    perf: ChildGuard,
    data: PathBuf,
    started: Instant,
}

/// Is `perf` there and allowed to record?
pub fn perf_available() -> anyhow::Result<()> {
    let out = Command::new("perf").arg("--version").output().context(
        "running `perf --version` (Debian package linux-perf; `cargo xtask setup` installs it)",
    )?;
    if !out.status.success() {
        bail!(
            "`perf --version` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Recorder {
    /// Starts recording `pid` into `data`; returns once perf has attached.
    pub fn attach(pid: u32, data: &Path) -> anyhow::Result<Self> {
        let _ = std::fs::remove_file(data);
        let log = data.with_extension("log");
        let perf = Command::new("perf")
            .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(data)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("perf's log")?)
            .spawn()
            .context("starting perf record")?;
        let perf = ChildGuard(perf);
        // perf writes the file's header once the events are open.
        let started = Instant::now();
        while !data.exists() && started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !data.exists() {
            bail!(
                "perf record did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default().trim()
            );
        }
        Ok(Self {
            perf,
            data: data.to_owned(),
            started,
        })
    }

    /// Stops recording (SIGINT, perf's own way to finish the file) and reads the samples.
    pub fn finish(mut self) -> anyhow::Result<Vec<Sample>> {
        let pid = i32::try_from(self.perf.0.id()).context("perf's pid")?;
        // SAFETY: a signal to the child this guard owns.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let status = self.perf.0.wait().context("waiting for perf record")?;
        if !status.success() && status.code() != Some(130) && status.code().is_some() {
            bail!(
                "perf record failed ({status}) after {:?}",
                self.started.elapsed()
            );
        }
        let out = Command::new("perf")
            .arg("script")
            .arg("-i")
            .arg(&self.data)
            .args(["-F", "comm,pid,ip,sym"])
            .stderr(Stdio::null())
            .output()
            .context("running perf script")?;
        if !out.status.success() {
            bail!("perf script failed ({})", out.status);
        }
        let _ = std::fs::remove_file(&self.data);
        let _ = std::fs::remove_file(self.data.with_extension("log"));
        Ok(parse_perf_script(&String::from_utf8_lossy(&out.stdout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "proxy-agent 4242 
\t    55d0c0a1b2c3 hashbrown::map::HashMap<K,V,S>::insert::h0123456789abcdef
\t    55d0c0a1b2d4 proxy_user::sync::Syncer::sync+0x55
\t    55d0c0a1b2e5 main (/usr/bin/proxy-agent)

proxy-agent 4242 
\t    ffffffff81000000 bpf_map_update_elem ([kernel.kallsyms])
\t    55d0c0a1b2d4 proxy_user::sync::Syncer::sync+0x60
\t    55d0c0a1b2e5 main (/usr/bin/proxy-agent)

iptables-nft-re 4300 
\t    7f0000000000 nft_rule_add

";

    #[test]
    fn perf_script_is_folded_and_summed() {
        let samples = parse_perf_script(SCRIPT);
        assert_eq!(samples.len(), 3);
        assert_eq!(samples[0].comm, "proxy-agent");
        assert_eq!(samples[0].pid, 4242);
        assert_eq!(
            samples[0].frames,
            [
                "hashbrown::map::HashMap<K,V,S>::insert",
                "proxy_user::sync::Syncer::sync",
                "main"
            ]
        );
        assert_eq!(
            fold(&samples),
            "iptables-nft-re;nft_rule_add 1\n\
             proxy-agent;main;proxy_user::sync::Syncer::sync;bpf_map_update_elem 1\n\
             proxy-agent;main;proxy_user::sync::Syncer::sync;hashbrown::map::HashMap<K,V,S>::insert 1\n"
        );
        let (top_self, top_total) = top_functions(&samples, 2);
        assert_eq!(top_self.len(), 2);
        assert!(top_self.iter().all(|t| t.self_samples == 1));
        assert_eq!(top_total[0].total_samples, 2);
        assert_eq!(
            top_total[0].function, "proxy_user::sync::Syncer::sync",
            "main is plumbing, left out"
        );
        let profile = Profile::from_samples("ebpf", 10, &samples, 5);
        assert_eq!(profile.by_command["proxy-agent"], 2);
        let md = profile.markdown();
        assert!(md.contains("iptables-nft-re 33.3 %"), "{md}");
        assert!(
            md.contains("| 66.7 % | 0.0 % | `proxy_user::sync::Syncer::sync` |"),
            "{md}"
        );
        assert!(md.contains("Too few samples"), "{md}");
    }
}
