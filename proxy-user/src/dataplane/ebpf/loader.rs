//! Loading the embedded object, attaching the socket programs to a cgroup, and finding
//! what a previous run left pinned. Three things are kept apart, as cilium/ebpf does: the
//! object (programs and maps), the maps pinned by name (the state traffic depends on), and
//! the links pinned under `link_<program>` (the attachments).
//!
//! A restart reuses the pinned maps and keeps a pinned link whose program is the one just
//! loaded (same tag) bound to the same maps (same map ids), so nothing is attached twice.
//! Any other pinned link (an upgrade, or maps of another layout) is replaced after the
//! first full sync has filled the maps the new program reads; the new link is pinned and
//! renamed over the old one, so there is no moment without a program.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    programs::{
        CgroupAttachMode, CgroupSockAddr, LinkOrder, ProgramError, ProgramInfo, SchedClassifier,
        TcAttachType,
        links::{FdLink, PinnedLink},
        loaded_programs,
        tc::{SchedClassifierLink, TcAttachOptions},
    },
};
use proxy_common::names::{self, ALL_SOCK_PROGRAMS};
use tracing::{debug, info, warn};

use super::maps::{Maps, MapsError};

/// The magic number statfs reports for a BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this proxy-agent was built without its BPF object (bpf-linker was missing at build time): \
         run `cargo xtask setup` and rebuild"
    )]
    NoObject,
    #[error(
        "{path} is not on a BPF filesystem: mount one with `mount -t bpf bpf {mount}` or pass --bpffs"
    )]
    NotBpffs { path: PathBuf, mount: String },
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {path} cannot be opened: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the BPF object failed: {0}")]
    Object(#[source] EbpfError),
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        source: ProgramError,
    },
    #[error("program {program}: pinning its link at {path} failed: {message}")]
    Pin {
        program: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// Capacities of the maps a fresh load creates (pinned maps keep their size).
#[derive(Clone, Copy, Debug)]
pub struct Capacities {
    pub services: u32,
    pub slots: u32,
    pub members: u32,
    pub affinity: u32,
    pub revnat: u32,
}

impl Default for Capacities {
    fn default() -> Self {
        Self {
            services: names::DEFAULT_MAX_SERVICES,
            slots: names::DEFAULT_MAX_SLOTS,
            members: names::DEFAULT_MAX_MEMBERS,
            affinity: names::DEFAULT_MAX_AFFINITY,
            revnat: names::DEFAULT_MAX_REVNAT,
        }
    }
}

/// What happened to one program's attachment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Nothing was pinned: attached now.
    Attached,
    /// The same program was already attached: kept as it was.
    Adopted,
    /// Another version was attached: replaced by this one.
    Replaced,
}

/// Each socket program and what happened to its attachment.
pub type Attachments = Vec<(&'static str, Attachment)>;

pub fn link_pin(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("link_{program}"))
}

/// The pin of a tc program's link on one interface: `link_epx_tc_ingress@eth0` (bpffs
/// refuses dots in names: a VLAN's `eth0.100` is pinned as `eth0~100`).
pub fn tc_link_pin(dir: &Path, program: &str, interface: &str) -> PathBuf {
    dir.join(format!("link_{program}@{}", interface.replace('.', "~")))
}

/// The tc programs and the direction each one is attached in.
pub const TC_PROGRAMS: [(&str, TcAttachType); 2] = [
    (names::PROG_TC_INGRESS, TcAttachType::Ingress),
    (names::PROG_TC_EGRESS, TcAttachType::Egress),
];

/// The object loaded, its maps reused or created and pinned, and for each socket program
/// what must happen to its attachment. Nothing is attached until [`Loaded::activate`], which
/// the agent calls after its first full sync: a program replacing another starts out with
/// maps that already hold every frontend, so no connection finds them empty.
pub struct Loaded {
    ebpf: Ebpf,
    cgroup: fs::File,
    cgroup_path: PathBuf,
    dir: PathBuf,
    plan: Vec<(&'static str, Plan)>,
    /// Where the tc programs attach (`--interfaces`).
    interfaces: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// The pinned link runs this very program on these very maps.
    Keep,
    /// Nothing is attached.
    Attach,
    /// Another program, or the same program bound to other maps (an older layout, or maps
    /// that were recreated), is attached: swap it for ours.
    Replace,
}

/// A program as the kernel identifies it: its instructions (tag) and the maps it uses.
#[derive(Debug, PartialEq, Eq)]
struct Identity {
    tag: u64,
    map_ids: Vec<u32>,
}

impl Identity {
    fn of(info: &ProgramInfo) -> Option<Self> {
        let mut map_ids = info.map_ids().ok()??;
        map_ids.sort_unstable();
        Some(Self {
            tag: info.tag(),
            map_ids,
        })
    }
}

/// Loads the object, reusing the maps pinned in `dir` (creating and pinning missing ones),
/// and decides what each program's attachment needs. Attaches nothing.
pub fn load(
    dir: &Path,
    cgroup: &Path,
    capacities: Capacities,
    interfaces: &[String],
) -> Result<(Loaded, Maps), LoadError> {
    if crate::BPF_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let cgroup_fd = fs::File::open(cgroup).map_err(|source| LoadError::Cgroup {
        path: cgroup.into(),
        source,
    })?;
    prepare_pin_dir(dir)?;

    let mut ebpf: Ebpf = EbpfLoader::new()
        .default_map_pin_directory(dir)
        .map_max_entries(names::MAP_SERVICES, capacities.services)
        .map_max_entries(names::MAP_STATS, capacities.services)
        .map_max_entries(names::MAP_NAMES, capacities.services)
        .map_max_entries(names::MAP_SLOTS, capacities.slots)
        .map_max_entries(names::MAP_MEMBERS, capacities.members)
        .map_max_entries(names::MAP_AFFINITY, capacities.affinity)
        .map_max_entries(names::MAP_REVNAT, capacities.revnat)
        .load(crate::BPF_OBJECT)
        .map_err(LoadError::Object)?;

    let mut plan = Vec::new();
    for program in ALL_SOCK_PROGRAMS {
        let err = |source| LoadError::Program { program, source };
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(program)
            .ok_or_else(|| err(ProgramError::NotLoaded))?
            .try_into()
            .map_err(err)?;
        prog.load().map_err(err)?;
        let ours = Identity::of(&prog.info().map_err(err)?);
        let step = match pinned_identity(&link_pin(dir, program)) {
            None => Plan::Attach,
            Some(pinned) if ours.as_ref() == Some(&pinned) => Plan::Keep,
            Some(_) => Plan::Replace,
        };
        plan.push((program, step));
    }
    // The tc programs are loaded (and so verified) whether or not an interface is given.
    for (program, _) in TC_PROGRAMS {
        let err = |source| LoadError::Program { program, source };
        let prog: &mut SchedClassifier = ebpf
            .program_mut(program)
            .ok_or_else(|| err(ProgramError::NotLoaded))?
            .try_into()
            .map_err(err)?;
        prog.load().map_err(err)?;
    }
    restrict_pins(dir)?;
    let maps = Maps::from_ebpf(&mut ebpf)?;
    let loaded = Loaded {
        ebpf,
        cgroup: cgroup_fd,
        cgroup_path: cgroup.to_owned(),
        dir: dir.to_owned(),
        plan,
        interfaces: interfaces.to_vec(),
    };
    Ok((loaded, maps))
}

impl Loaded {
    /// Where the tc programs attach when activated.
    pub fn set_interfaces(&mut self, interfaces: Vec<String>) {
        self.interfaces = interfaces;
    }

    /// Attaches what is missing, swaps what is outdated, and removes pins of maps that no
    /// program of ours uses any more (an older layout's). Pinned links keep the programs
    /// attached after this value is dropped.
    pub fn activate(mut self) -> Result<Attachments, LoadError> {
        let mut outcomes = Vec::new();
        for (program, step) in std::mem::take(&mut self.plan) {
            let outcome = match step {
                Plan::Keep => Attachment::Adopted,
                Plan::Attach => {
                    self.attach(program, false)?;
                    Attachment::Attached
                }
                Plan::Replace => {
                    self.attach(program, true)?;
                    Attachment::Replaced
                }
            };
            info!(program, cgroup = %self.cgroup_path.display(), ?outcome, "socket program");
            outcomes.push((program, outcome));
        }
        let attached_interfaces = std::mem::take(&mut self.interfaces);
        // A tc attachment that fails costs the outside traffic of that interface, not
        // the node's Services: the socket programs above keep serving.
        for interface in &attached_interfaces {
            for (program, direction) in TC_PROGRAMS {
                match self.attach_tc(program, interface, direction) {
                    Ok(outcome) => {
                        info!(program, interface, ?outcome, "tc program");
                        outcomes.push((program, outcome));
                    }
                    Err(e) => warn!(
                        program,
                        interface,
                        "tc program not attached: {} (TCX links need Linux 6.6); traffic arriving on {interface} from outside the node is not translated",
                        crate::logging::error_chain(&e)
                    ),
                }
            }
        }
        remove_stale_pins(&self.dir, &attached_interfaces)?;
        restrict_pins(&self.dir)?;
        Ok(outcomes)
    }

    /// Attaches a tc program to `interface` with a TCX link, pinned; a link pinned by an
    /// earlier run is updated to this program in place (no moment without one).
    fn attach_tc(
        &mut self,
        program: &'static str,
        interface: &str,
        direction: TcAttachType,
    ) -> Result<Attachment, LoadError> {
        let err = |source| LoadError::Program { program, source };
        let pin = tc_link_pin(&self.dir, program, interface);
        let pin_error = |e: &dyn std::fmt::Display| LoadError::Pin {
            program,
            path: pin.clone(),
            message: format!("interface {interface}: {e}"),
        };
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| err(ProgramError::NotLoaded))?
            .try_into()
            .map_err(err)?;
        if let Ok(pinned) = PinnedLink::from_pin(&pin) {
            let link =
                SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| pin_error(&e))?;
            let id = prog.attach_to_link(link).map_err(err)?;
            // The pin keeps the link; forget our handle without detaching.
            let link: FdLink = prog
                .take_link(id)
                .map_err(err)?
                .try_into()
                .map_err(|e| pin_error(&e))?;
            drop(link);
            return Ok(Attachment::Replaced);
        }
        let id = prog
            .attach_with_options(
                interface,
                direction,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(|source| LoadError::Program { program, source })?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(err)?
            .try_into()
            .map_err(|e| pin_error(&e))?;
        link.pin(&pin).map_err(|e| pin_error(&e))?;
        Ok(Attachment::Attached)
    }

    fn attach(&mut self, program: &'static str, replace: bool) -> Result<(), LoadError> {
        let err = |source| LoadError::Program { program, source };
        let pin = link_pin(&self.dir, program);
        let pin_error = |e: &dyn std::fmt::Display| LoadError::Pin {
            program,
            path: pin.clone(),
            message: e.to_string(),
        };
        let prog: &mut CgroupSockAddr = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| err(ProgramError::NotLoaded))?
            .try_into()
            .map_err(err)?;
        let link_id = prog
            .attach(&self.cgroup, CgroupAttachMode::Single)
            .map_err(err)?;
        let link: FdLink = prog
            .take_link(link_id)
            .map_err(err)?
            .try_into()
            .map_err(|e| pin_error(&e))?;
        if !replace {
            link.pin(&pin).map_err(|e| pin_error(&e))?;
            return Ok(());
        }
        // Pin the new link beside the old one, then rename it over the old pin: the old
        // link loses its last reference and detaches. Both programs run for that instant,
        // which is harmless: the second sees a backend address, not a frontend.
        // bpffs refuses names with a dot in them.
        let staging = self.dir.join(format!("staging_{program}"));
        let _ = fs::remove_file(&staging);
        let staging_error = |e: &dyn std::fmt::Display| LoadError::Pin {
            program,
            path: staging.clone(),
            message: e.to_string(),
        };
        link.pin(&staging).map_err(|e| staging_error(&e))?;
        fs::rename(&staging, &pin).map_err(|e| pin_error(&e))
    }
}

/// Removes pinned maps whose names are not ours any more (another layout version), and
/// tc links on interfaces no longer given (which detaches them).
fn remove_stale_pins(dir: &Path, interfaces: &[String]) -> Result<(), LoadError> {
    let pin_err = |source| LoadError::PinDir {
        path: dir.to_owned(),
        source,
    };
    let mut links: Vec<String> = ALL_SOCK_PROGRAMS
        .iter()
        .map(|p| format!("link_{p}"))
        .collect();
    for interface in interfaces {
        for (program, _) in TC_PROGRAMS {
            links.push(file_name(&tc_link_pin(dir, program, interface)));
        }
    }
    for entry in fs::read_dir(dir).map_err(pin_err)? {
        let entry = entry.map_err(pin_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if names::ALL_MAPS.contains(&name.as_str()) || links.contains(&name) {
            continue;
        }
        fs::remove_file(entry.path()).map_err(pin_err)?;
        info!(pin = %entry.path().display(), "removed a pin no program of ours uses (older layout)");
    }
    Ok(())
}

/// What the program behind a pinned link is, if there is one.
fn pinned_identity(pin: &Path) -> Option<Identity> {
    if !pin.exists() {
        return None;
    }
    let link = FdLink::from(PinnedLink::from_pin(pin).ok()?);
    let program_id = link.info().ok()?.program_id();
    let info = loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == program_id)?;
    Identity::of(&info)
}

/// Creates the pin directory (root only) and checks it is on bpffs.
fn prepare_pin_dir(dir: &Path) -> Result<(), LoadError> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(parent) && !is_bpffs(dir) {
        return Err(LoadError::NotBpffs {
            path: dir.to_owned(),
            mount: parent.display().to_string(),
        });
    }
    let pin_err = |source| LoadError::PinDir {
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(pin_err)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(pin_err)
}

/// Maps and links decide where traffic goes: nobody but root may open them.
fn restrict_pins(dir: &Path) -> Result<(), LoadError> {
    let pin_err = |source| LoadError::PinDir {
        path: dir.to_owned(),
        source,
    };
    for entry in fs::read_dir(dir).map_err(pin_err)? {
        let entry = entry.map_err(pin_err)?;
        fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o600)).map_err(pin_err)?;
    }
    Ok(())
}

pub fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is a valid, writable statfs.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

/// What `--cleanup` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub links: Vec<String>,
    pub maps: Vec<String>,
}

/// Detaches every program and removes every map this agent pinned in `dir` (links first,
/// so no program runs against a map being removed), then the directory itself.
pub fn cleanup(dir: &Path) -> Result<Removed, std::io::Error> {
    let mut removed = Removed::default();
    if !dir.exists() {
        return Ok(removed);
    }
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort_by_key(|p| !is_link_pin(&file_name(p)));
    for path in entries {
        let name = file_name(&path);
        fs::remove_file(&path)?;
        debug!(pin = %path.display(), "unpinned");
        if is_link_pin(&name) {
            removed.links.push(name);
        } else {
            removed.maps.push(name);
        }
    }
    fs::remove_dir(dir)?;
    Ok(removed)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A pinned link (or one being swapped in), as opposed to a map.
fn is_link_pin(name: &str) -> bool {
    name.starts_with("link_") || name.starts_with("staging_")
}
