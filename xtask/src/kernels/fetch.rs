//! Downloading kernels: Debian's generic amd64 image packages, fetched with a private apt
//! configuration (the host's apt sources, lists and dpkg status are untouched) and unpacked,
//! never installed, under /opt/ebpf-proxy/kernels.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};

use super::{SERIES, Series};
use crate::step;

/// Refresh the private apt lists at most this often.
const APT_LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Used when the host's apt sources name no Debian archive.
const FALLBACK_ARCHIVE: &str = "http://deb.debian.org/debian";

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
pub(super) struct Apt {
    options: Vec<String>,
}

impl Apt {
    /// Writes the sources, and refreshes the lists when they are a day old or the
    /// sources changed.
    pub(super) fn prepare(cache: &Path) -> anyhow::Result<Self> {
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
pub(super) struct Kernel {
    pub(super) release: String,
    pub(super) vmlinuz: PathBuf,
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
pub(super) fn fetch(apt: &Apt, cache: &Path, series: &Series) -> anyhow::Result<Kernel> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn releases_belong_to_their_series_only() {
        let [v5_10, v6_1, v6_12] = [SERIES[0], SERIES[1], SERIES[2]];
        assert!(of_series("6.1.0-57-amd64", &v6_1));
        assert!(!of_series("6.12.118+deb13-amd64", &v6_1));
        assert!(of_series("6.12.118+deb13-amd64", &v6_12));
        assert!(of_series("5.10.0-46-amd64", &v5_10));
        assert!(!of_series("apt", &v5_10));
    }
}
