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
//!
//! What is loaded depends on what the kernel offers (`features`): the variant of each
//! program that fits it, and only the datapaths whose programs the kernel accepts. The
//! socket programs are the eBPF mode: if they cannot load, nothing is. The tc programs
//! (traffic from outside the node) are lost alone, with the kernel's reason recorded.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, ProgramError, ProgramInfo, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    loaded_programs,
};
use aya::{Ebpf, EbpfLoader};
use proxy_common::{
    features::{Datapath, KernelFeature, TC_ATTACH_NETLINK, TC_ATTACH_NONE, TC_ATTACH_TCX},
    names::{self, ALL_SOCK_PROGRAMS},
};
use std::os::fd::AsFd as _;
use tracing::{debug, info, warn};

pub use super::links::{Attachment, link_pin, tc_link_pin};
pub use super::load_error::LoadError;
use super::tc_attach::TC_PROGRAMS;
use super::{
    features::{self, Features},
    maps::Maps,
    tc_attach::{self, Mechanism},
};

/// The magic number statfs reports for a BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

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

/// How the tc programs attach: as the kernel allows (TCX where it has it), or netlink
/// filters on request (to sit among other clsact filters a node's tooling expects).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttach {
    #[default]
    Auto,
    Tcx,
    Netlink,
}

/// What a load is given besides the object.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub capacities: Capacities,
    pub tc_attach: TcAttach,
    /// Features to treat as missing whatever the probes say (`--assume-missing`): what a
    /// node on an older kernel does, shown on this one.
    pub assume_missing: Vec<KernelFeature>,
    /// The programs' settings (UDP flow timeouts; zero fields: the defaults).
    pub datapath: proxy_common::DatapathConfig,
}

/// Each socket program and what happened to its attachment.
pub type Attachments = Vec<(&'static str, Attachment)>;

/// The object loaded, its maps reused or created and pinned, and for each socket program
/// what must happen to its attachment. Nothing is attached until [`Loaded::activate`], which
/// the agent calls after its first full sync: a program replacing another starts out with
/// maps that already hold every frontend, so no connection finds them empty.
pub struct Loaded {
    ebpf: Ebpf,
    cgroup: fs::File,
    cgroup_path: PathBuf,
    dir: PathBuf,
    /// Each socket program (by the name its link is pinned under), the variant loaded
    /// for it, and what its attachment needs.
    plan: Vec<(&'static str, &'static str, Plan)>,
    /// Where the tc programs attach (`--interfaces`).
    interfaces: Vec<String>,
    /// What the kernel offers, and what it cost.
    pub report: KernelReport,
    /// Maps of another layout were pinned when this load began (an upgrade).
    pub replaces_older_layout: bool,
}

/// What the kernel offered the datapath and what did not load, for the agent record
/// (`proxyctl status`, /metrics).
#[derive(Clone, Debug, Default)]
pub struct KernelReport {
    pub features: Features,
    /// How the tc programs attach; `None` when they did not load.
    pub tc: Option<Mechanism>,
    /// Bits of `names::ALL_PROGRAMS` the kernel refused.
    pub programs_failed: u32,
    /// Why the first of them was refused, in the kernel's words.
    pub load_error: String,
}

impl KernelReport {
    pub fn tc_attach(&self) -> u32 {
        match self.tc {
            None => TC_ATTACH_NONE,
            Some(Mechanism::Tcx) => TC_ATTACH_TCX,
            Some(Mechanism::Netlink) => TC_ATTACH_NETLINK,
        }
    }

    fn refused(&mut self, program: &str, reason: String) {
        if let Some(bit) = names::ALL_PROGRAMS.iter().position(|p| *p == program) {
            self.programs_failed |= 1 << bit;
        }
        if self.load_error.is_empty() {
            self.load_error = format!("{program}: {reason}");
        }
    }
}

/// The variant of a socket program this kernel takes: without `bpf_set_retval` a refusal
/// is EPERM (`_eperm`); without `bpf_sk_storage_get` the reverse translation of a
/// connected socket lives in the shared LRU (`_lru`).
fn variant(program: &'static str, features: &Features) -> &'static str {
    let retval = features.has(KernelFeature::SetRetval);
    let on_socket = features.has(KernelFeature::SocketStorage);
    match (program, retval, on_socket) {
        (names::PROG_CONNECT4, false, true) => names::PROG_CONNECT4_EPERM,
        (names::PROG_CONNECT4, true, false) => names::PROG_CONNECT4_LRU,
        (names::PROG_CONNECT4, false, false) => names::PROG_CONNECT4_EPERM_LRU,
        (names::PROG_SENDMSG4, false, _) => names::PROG_SENDMSG4_EPERM,
        (names::PROG_RECVMSG4, _, false) => names::PROG_RECVMSG4_LRU,
        (names::PROG_GETPEERNAME4, _, false) => names::PROG_GETPEERNAME4_LRU,
        (names::PROG_CONNECT6, false, true) => names::PROG_CONNECT6_EPERM,
        (names::PROG_CONNECT6, true, false) => names::PROG_CONNECT6_LRU,
        (names::PROG_CONNECT6, false, false) => names::PROG_CONNECT6_EPERM_LRU,
        (names::PROG_SENDMSG6, false, _) => names::PROG_SENDMSG6_EPERM,
        (names::PROG_RECVMSG6, _, false) => names::PROG_RECVMSG6_LRU,
        (names::PROG_GETPEERNAME6, _, false) => names::PROG_GETPEERNAME6_LRU,
        (other, _, _) => other,
    }
}

/// Whether `dir` holds maps of another layout version (`EPX_SVC_V1` beside our
/// `EPX_SVC_V2`): the programs attached now read those, and the maps both layouts share
/// (members, names, source ranges, ...) hold what they need until the swap.
fn older_layout_pinned(dir: &Path) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    let prefixes: Vec<&str> = names::ALL_MAPS
        .iter()
        .filter_map(|m| m.rsplit_once("_V").map(|(prefix, _)| prefix))
        .collect();
    entries.flatten().any(|entry| {
        let name = entry.file_name().to_string_lossy().into_owned();
        !names::ALL_MAPS.contains(&name.as_str())
            && name
                .rsplit_once("_V")
                .is_some_and(|(prefix, _)| prefixes.contains(&prefix))
    })
}

/// The verifier's verdict in a line: its last lines that are not statistics, or the
/// error itself when there is no log.
pub fn kernel_reason(error: &ProgramError) -> String {
    if let ProgramError::LoadError {
        io_error,
        verifier_log,
    } = error
    {
        let log = verifier_log.to_string();
        let verdict: Vec<&str> = log
            .lines()
            .map(str::trim)
            .filter(|l| {
                !l.is_empty()
                    && !l.starts_with("processed ")
                    && !l.starts_with("verification time")
                    && !l.starts_with("stack depth")
            })
            .collect();
        let tail = verdict[verdict.len().saturating_sub(2)..].join(" / ");
        return if tail.is_empty() {
            io_error.to_string()
        } else {
            format!("{tail} ({io_error})")
        };
    }
    crate::logging::error_chain(error)
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
    options: LoadOptions,
    interfaces: &[String],
) -> Result<(Loaded, Maps), LoadError> {
    let capacities = options.capacities;
    if crate::BPF_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    // Probed before anything is created or pinned: a kernel that cannot take the
    // socket programs is left as it was.
    let mut report = KernelReport {
        features: Features::probe_helpers(),
        ..KernelReport::default()
    };
    report.features.assume_missing(&options.assume_missing);
    let missing = report.features.missing_for(Datapath::Socket);
    if !missing.is_empty() {
        return Err(LoadError::MissingFeatures {
            path: Datapath::Socket,
            missing,
        });
    }
    let cgroup_fd = fs::File::open(cgroup).map_err(|source| LoadError::Cgroup {
        path: cgroup.into(),
        source,
    })?;
    prepare_pin_dir(dir)?;
    let replaces_older_layout = older_layout_pinned(dir);

    // The socket-local storage map is a BTF map, which carries no pinning attribute:
    // pinned by name like the others through an explicit path, so a restart keeps the
    // translations stored on open sockets.
    let socket_revnat_pin = dir.join(names::MAP_SOCKET_REVNAT);
    let mut ebpf: Ebpf = EbpfLoader::new()
        .default_map_pin_directory(dir)
        .map_pin_path(names::MAP_SOCKET_REVNAT, socket_revnat_pin.as_path())
        .map_max_entries(names::MAP_SERVICES, capacities.services)
        .map_max_entries(names::MAP_STATS, capacities.services)
        .map_max_entries(names::MAP_NAMES, capacities.services)
        .map_max_entries(names::MAP_SLOTS, capacities.slots)
        .map_max_entries(names::MAP_MEMBERS, capacities.members)
        .map_max_entries(names::MAP_AFFINITY, capacities.affinity)
        .map_max_entries(names::MAP_REVNAT, capacities.revnat)
        .load(crate::BPF_OBJECT)
        .map_err(LoadError::Object)?;

    for feature in report.features.missing() {
        if let proxy_common::features::Without::Fallback(what) = feature.without() {
            warn!(
                feature = feature.name(),
                since = feature.since(),
                "this kernel lacks {}: {what}",
                feature.name()
            );
        }
    }
    let mut plan = Vec::new();
    for program in ALL_SOCK_PROGRAMS {
        let object_name = variant(program, &report.features);
        let err = |source| LoadError::Program { program, source };
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(object_name)
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
        plan.push((program, object_name, step));
    }
    report.tc = load_tc_programs(&mut ebpf, &mut report, &options)?;
    restrict_pins(dir)?;
    let maps = Maps::from_ebpf(&mut ebpf)?;
    let loaded = Loaded {
        ebpf,
        cgroup: cgroup_fd,
        cgroup_path: cgroup.to_owned(),
        dir: dir.to_owned(),
        plan,
        interfaces: interfaces.to_vec(),
        report,
        replaces_older_layout,
    };
    Ok((loaded, maps))
}

/// Loads (and so verifies) the tc programs, whether or not an interface is given, and
/// chooses how they attach. A kernel that lacks what they need, or refuses one, costs
/// the traffic from outside the node only: logged once with its reason; `None`.
fn load_tc_programs(
    ebpf: &mut Ebpf,
    report: &mut KernelReport,
    options: &LoadOptions,
) -> Result<Option<Mechanism>, LoadError> {
    let missing = report.features.missing_for(Datapath::External);
    if !missing.is_empty() {
        let reason = format!("this kernel lacks {}", features::describe(&missing));
        warn!(
            "traffic from outside the node (NodePort, ExternalIP, LoadBalancer) is not translated: {reason}; the socket load balancer serves"
        );
        for (program, _) in TC_PROGRAMS {
            report.refused(program, reason.clone());
        }
        return Ok(None);
    }
    let mut loaded = true;
    for (program, _) in TC_PROGRAMS {
        let outcome = ebpf
            .program_mut(program)
            .ok_or(ProgramError::NotLoaded)
            .and_then(<&mut SchedClassifier>::try_from)
            .and_then(|p| p.load());
        if let Err(error) = outcome {
            let reason = kernel_reason(&error);
            warn!(
                program,
                "the kernel refused {program}: {reason}; traffic from outside the node (NodePort, ExternalIP, LoadBalancer) is not translated, the socket load balancer serves"
            );
            debug!(
                program,
                "verifier output: {}",
                crate::logging::error_chain(&error)
            );
            report.refused(program, reason);
            loaded = false;
        }
    }
    if !loaded {
        return Ok(None);
    }
    let program = names::PROG_TC_INGRESS;
    let ingress: &SchedClassifier = ebpf
        .program(program)
        .ok_or(ProgramError::NotLoaded)
        .and_then(|p| p.try_into())
        .map_err(|source| LoadError::Program { program, source })?;
    let fd = ingress
        .fd()
        .map_err(|source| LoadError::Program { program, source })?;
    report.features.probe_tcx(fd.as_fd());
    report.features.assume_missing(&options.assume_missing);
    let tcx = report.features.has(KernelFeature::Tcx);
    Ok(Some(match options.tc_attach {
        TcAttach::Auto | TcAttach::Tcx if tcx => Mechanism::Tcx,
        TcAttach::Tcx => {
            return Err(LoadError::MissingFeatures {
                path: Datapath::External,
                missing: vec![KernelFeature::Tcx],
            });
        }
        TcAttach::Auto => {
            info!(
                "this kernel lacks TCX links (Linux 6.6): the tc programs attach as clsact filters through netlink"
            );
            Mechanism::Netlink
        }
        TcAttach::Netlink => Mechanism::Netlink,
    }))
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
        for (program, object_name, step) in std::mem::take(&mut self.plan) {
            let outcome = match step {
                Plan::Keep => Attachment::Adopted,
                Plan::Attach => {
                    self.attach(program, object_name, false)?;
                    Attachment::Attached
                }
                Plan::Replace => {
                    self.attach(program, object_name, true)?;
                    Attachment::Replaced
                }
            };
            info!(program, cgroup = %self.cgroup_path.display(), ?outcome, "socket program");
            outcomes.push((program, outcome));
        }
        let mechanism = self.report.tc;
        let attached_interfaces = match mechanism {
            Some(_) => std::mem::take(&mut self.interfaces),
            None => Vec::new(),
        };
        // A tc attachment that fails costs the outside traffic of that interface, not
        // the node's Services: the socket programs above keep serving.
        for interface in &attached_interfaces {
            for (program, direction) in TC_PROGRAMS {
                match self.attach_tc(program, interface, direction) {
                    Ok(outcome) => {
                        let mechanism = mechanism.map_or("", Mechanism::name);
                        info!(program, interface, ?outcome, mechanism, "tc program");
                        outcomes.push((program, outcome));
                    }
                    Err(e) => warn!(
                        program,
                        interface,
                        "tc program not attached: {}; traffic arriving on {interface} from outside the node is not translated",
                        crate::logging::error_chain(&e)
                    ),
                }
            }
        }
        // Only now, with the new attachments in place, do the old ones go: netlink
        // filters and TCX links (their pins) on interfaces no longer given, and those of
        // the other mechanism after a switch (`--tc-attach`), which would otherwise see
        // packets a second time.
        let kept = |wanted: Mechanism| match mechanism == Some(wanted) {
            true => attached_interfaces.as_slice(),
            false => &[],
        };
        tc_attach::detach_netlink_except(kept(Mechanism::Netlink));
        remove_stale_pins(&self.dir, kept(Mechanism::Tcx))?;
        restrict_pins(&self.dir)?;
        Ok(outcomes)
    }

    /// Attaches a tc program to `interface` as this kernel allows (`tc_attach`); an
    /// attachment of an earlier run is updated to this program in place.
    fn attach_tc(
        &mut self,
        program: &'static str,
        interface: &str,
        direction: TcAttachType,
    ) -> Result<Attachment, LoadError> {
        let err = |source| LoadError::Program { program, source };
        let mechanism = self.report.tc.ok_or_else(|| err(ProgramError::NotLoaded))?;
        let prog: &mut SchedClassifier = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| err(ProgramError::NotLoaded))?
            .try_into()
            .map_err(err)?;
        tc_attach::attach(prog, program, interface, direction, mechanism, &self.dir)
    }

    fn attach(
        &mut self,
        program: &'static str,
        object_name: &'static str,
        replace: bool,
    ) -> Result<(), LoadError> {
        let err = |source| LoadError::Program { program, source };
        let pin = link_pin(&self.dir, program);
        let pin_error = |e: &(dyn std::error::Error + 'static)| LoadError::Pin {
            program,
            path: pin.clone(),
            message: crate::logging::error_chain(e),
        };
        let prog: &mut CgroupSockAddr = self
            .ebpf
            .program_mut(object_name)
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
        let staging_error = |e: &(dyn std::error::Error + 'static)| LoadError::Pin {
            program,
            path: staging.clone(),
            message: crate::logging::error_chain(e),
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
    // tc filters attached through netlink (kernels without TCX) have no pin: the
    // kernel's list says where they are.
    for filter in tc_attach::detach_netlink_except(&[]) {
        removed.links.push(format!("tc filter on {filter}"));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn features(missing: &[KernelFeature]) -> Features {
        let mut f = Features::default();
        for feature in KernelFeature::ALL {
            f.record(feature, !missing.contains(&feature));
        }
        f
    }

    #[test]
    fn each_kernel_gets_the_variant_of_each_socket_program_it_can_take() {
        let all = features(&[]);
        for program in ALL_SOCK_PROGRAMS {
            assert_eq!(variant(program, &all), program);
        }
        let no_retval = features(&[KernelFeature::SetRetval]);
        let no_storage = features(&[KernelFeature::SocketStorage]);
        let neither = features(&[KernelFeature::SetRetval, KernelFeature::SocketStorage]);
        let table = [
            (&no_retval, names::PROG_CONNECT4, names::PROG_CONNECT4_EPERM),
            (&no_retval, names::PROG_SENDMSG4, names::PROG_SENDMSG4_EPERM),
            (&no_retval, names::PROG_RECVMSG4, names::PROG_RECVMSG4),
            (&no_storage, names::PROG_CONNECT4, names::PROG_CONNECT4_LRU),
            (&no_storage, names::PROG_SENDMSG4, names::PROG_SENDMSG4),
            (&no_storage, names::PROG_RECVMSG4, names::PROG_RECVMSG4_LRU),
            (
                &no_storage,
                names::PROG_GETPEERNAME4,
                names::PROG_GETPEERNAME4_LRU,
            ),
            (
                &neither,
                names::PROG_CONNECT4,
                names::PROG_CONNECT4_EPERM_LRU,
            ),
            (&neither, names::PROG_SENDMSG4, names::PROG_SENDMSG4_EPERM),
            (&neither, names::PROG_RECVMSG4, names::PROG_RECVMSG4_LRU),
            (&no_retval, names::PROG_CONNECT6, names::PROG_CONNECT6_EPERM),
            (&no_retval, names::PROG_SENDMSG6, names::PROG_SENDMSG6_EPERM),
            (&no_storage, names::PROG_CONNECT6, names::PROG_CONNECT6_LRU),
            (
                &no_storage,
                names::PROG_GETPEERNAME6,
                names::PROG_GETPEERNAME6_LRU,
            ),
            (&no_storage, names::PROG_RECVMSG6, names::PROG_RECVMSG6_LRU),
            (
                &neither,
                names::PROG_CONNECT6,
                names::PROG_CONNECT6_EPERM_LRU,
            ),
            (&neither, names::PROG_SENDMSG6, names::PROG_SENDMSG6_EPERM),
        ];
        for (features, program, want) in table {
            assert_eq!(variant(program, features), want, "{program}");
        }
    }

    #[test]
    fn another_layouts_maps_are_told_from_ours_and_from_links() {
        let dir = std::env::temp_dir().join(format!("epx-older-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        for ours in names::ALL_MAPS {
            fs::write(dir.join(ours), "").expect("pin");
        }
        fs::write(dir.join("link_epx_connect4"), "").expect("link");
        let without = older_layout_pinned(&dir);
        fs::write(dir.join("EPX_SVC_V1"), "").expect("older pin");
        let with = older_layout_pinned(&dir);
        let _ = fs::remove_dir_all(&dir);
        assert!(!without);
        assert!(with);
    }
}
