//! The kernel's run-time statistics of the benchmark's BPF programs, read through aya:
//! each program's run_time_ns and run_cnt, for the cost per call of the programs that
//! served a set of runs (`bench_report::ProgramCost`).

use std::{collections::BTreeSet, fs, os::fd::OwnedFd, path::Path};

use anyhow::{Context as _, bail};
use aya::programs::links::{FdLink, PinnedLink};

/// The kernel's BPF run-time statistics, on for the run: the kernel counts each program's
/// run time and runs while a `BPF_ENABLE_STATS` descriptor is open (this one, held until
/// the bench ends), whatever `kernel.bpf_stats_enabled` says.
pub struct BpfStats {
    _enabled: OwnedFd,
}

impl BpfStats {
    pub fn enable() -> anyhow::Result<Self> {
        let enabled = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling the kernel's BPF run-time statistics (BPF_ENABLE_STATS)")?;
        Ok(Self { _enabled: enabled })
    }

    /// (run_time_ns, run_cnt) of the tc programs whose links are pinned in `bpffs`, summed
    /// over the programs (one program may serve several links).
    pub fn tc(&self, bpffs: &Path) -> anyhow::Result<(u64, u64)> {
        let mut ids = BTreeSet::new();
        for entry in fs::read_dir(bpffs).context("reading the pin directory")? {
            let path = entry?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            if !name.is_some_and(|n| n.starts_with("link_epx_tc_")) {
                continue;
            }
            let link = PinnedLink::from_pin(&path)
                .with_context(|| format!("opening the link pinned at {}", path.display()))?;
            let info = FdLink::from(link)
                .info()
                .with_context(|| format!("reading the link pinned at {}", path.display()))?;
            ids.insert(info.program_id());
        }
        run_stats(&ids)
    }

    /// (run_time_ns, run_cnt) of the socket program `program` (`epx_connect4`,
    /// `epx_connect6`) attached to `cgroup`.
    pub fn socket_program(&self, cgroup: &Path, program: &str) -> anyhow::Result<(u64, u64)> {
        let Some((id, _)) = crate::attached_programs(cgroup)
            .into_iter()
            .find(|(_, name)| name == program)
        else {
            bail!("no {program} program attached to {}", cgroup.display());
        };
        let id = u32::try_from(id).context("program id out of range")?;
        run_stats(&BTreeSet::from([id]))
    }
}

/// (run_time_ns, run_cnt) summed over the loaded programs with these ids, from the
/// kernel's program info.
fn run_stats(ids: &BTreeSet<u32>) -> anyhow::Result<(u64, u64)> {
    let (mut total, mut found, mut skipped) = ((0, 0), 0, None);
    for program in aya::programs::loaded_programs() {
        // Other programs on the machine come and go while the list is walked; one that
        // cannot be read is not one of ours unless ours go missing.
        let program = match program {
            Ok(program) => program,
            Err(e) => {
                skipped = Some(e);
                continue;
            }
        };
        if ids.contains(&program.id()) {
            let ns = u64::try_from(program.run_time().as_nanos()).unwrap_or(u64::MAX);
            total = (total.0 + ns, total.1 + program.run_count());
            found += 1;
        }
    }
    if found < ids.len() {
        let why = skipped.map_or_else(String::new, |e| format!(" (listing failed: {e})"));
        bail!("BPF programs {ids:?}: only {found} found among the loaded programs{why}");
    }
    Ok(total)
}
