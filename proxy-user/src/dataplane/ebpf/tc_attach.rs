//! Attaching the tc programs to an interface, in the one way this kernel offers:
//! - a TCX link (Linux 6.6), pinned as `link_<program>@<interface>`; a link pinned by an
//!   earlier run is updated to the new program in place;
//! - else a filter on the interface's clsact qdisc, made through netlink, at our own
//!   priority and handle ([`PRIORITY`], [`HANDLE`]). A filter of ours already there is
//!   replaced in place (the kernel swaps the program of the filter at that handle: no
//!   packet meets an empty hook); a filter of anyone else there is never touched.
//!
//! Netlink filters have no pin: the kernel's own list (`tc_filters`) is the record of
//! where they are, for status, for interfaces no longer given, and for `--cleanup`.

use crate::logging::Chain;
use std::path::Path;

use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
};
use tracing::info;

use proxy_common::names;

use super::{
    interfaces,
    links::{Attachment, tc_link_pin},
    load_error::LoadError,
    tc_filters::{self, Direction, Filter},
};

/// The tc programs and the direction each one is attached in.
pub const TC_PROGRAMS: [(&str, TcAttachType); 2] = [
    (names::PROG_TC_INGRESS, TcAttachType::Ingress),
    (names::PROG_TC_EGRESS, TcAttachType::Egress),
];

/// The clsact filter priority of our programs: first, so NodePort traffic is translated
/// before another filter passes it on.
pub const PRIORITY: u16 = 1;
/// Our filter handle on that priority (Cilium, say, uses 1).
pub const HANDLE: u32 = 0x0e9f;

/// How the tc programs are attached on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Tcx,
    Netlink,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Tcx => "tcx",
            Mechanism::Netlink => "netlink",
        }
    }
}

pub fn direction(attach_type: TcAttachType) -> Direction {
    match attach_type {
        TcAttachType::Egress => Direction::Egress,
        _ => Direction::Ingress,
    }
}

/// Attaches `prog` (named `program`) to `interface`, or updates ours there in place.
pub fn attach(
    prog: &mut SchedClassifier,
    program: &'static str,
    interface: &str,
    attach_type: TcAttachType,
    mechanism: Mechanism,
    pin_dir: &Path,
) -> Result<Attachment, LoadError> {
    match mechanism {
        Mechanism::Tcx => attach_tcx(prog, program, interface, attach_type, pin_dir),
        Mechanism::Netlink => attach_netlink(prog, program, interface, attach_type),
    }
}

fn attach_tcx(
    prog: &mut SchedClassifier,
    program: &'static str,
    interface: &str,
    attach_type: TcAttachType,
    pin_dir: &Path,
) -> Result<Attachment, LoadError> {
    let err = |source| LoadError::Program { program, source };
    let pin = tc_link_pin(pin_dir, program, interface);
    let pin_error = |e: &(dyn std::error::Error + 'static)| LoadError::Pin {
        program,
        path: pin.clone(),
        message: format!("interface {interface}: {}", Chain(e)),
    };
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
            attach_type,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(err)?;
    let link: FdLink = prog
        .take_link(id)
        .map_err(err)?
        .try_into()
        .map_err(|e| pin_error(&e))?;
    link.pin(&pin).map_err(|e| pin_error(&e))?;
    Ok(Attachment::Attached)
}

fn attach_netlink(
    prog: &mut SchedClassifier,
    program: &'static str,
    interface: &str,
    attach_type: TcAttachType,
) -> Result<Attachment, LoadError> {
    let err = |source| LoadError::Program { program, source };
    let netlink_error = |message: String| LoadError::TcFilter {
        program,
        interface: interface.to_owned(),
        message,
    };
    // An existing clsact qdisc is fine: other programs may have filters on it.
    if let Err(e) = tc::qdisc_add_clsact(interface) {
        let exists = matches!(&e, tc::TcError::NetlinkError(n)
            if n.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(netlink_error(format!(
                "adding a clsact qdisc: {}",
                Chain(&e)
            )));
        }
    }
    let ifindex =
        interfaces::index_of(interface).map_err(|e| netlink_error(Chain(&e).to_string()))?;
    let present = tc_filters::list(ifindex, direction(attach_type))
        .map_err(|e| netlink_error(format!("listing its tc filters: {}", Chain(&e))))?
        .into_iter()
        .find(|f| f.priority == PRIORITY && f.handle == HANDLE);
    let handle = TcHandle::from(HANDLE);
    let (id, outcome) = match present {
        Some(filter) if is_ours(&filter, program) => {
            // Replaced in place: the kernel swaps the program of this very filter.
            let link =
                SchedClassifierLink::attached(interface, attach_type, PRIORITY, handle, None)
                    .map_err(|e| netlink_error(Chain(&e).to_string()))?;
            (
                prog.attach_to_link(link).map_err(err)?,
                Attachment::Replaced,
            )
        }
        Some(filter) => {
            return Err(netlink_error(format!(
                "priority {PRIORITY} handle {HANDLE:#x} already holds another filter ({} {}); it is left alone",
                filter.kind,
                filter.name.as_deref().unwrap_or("unnamed"),
            )));
        }
        None => {
            let options = TcAttachOptions::Netlink(NlOptions {
                priority: PRIORITY,
                handle,
                classid: None,
            });
            (
                prog.attach_with_options(interface, attach_type, options)
                    .map_err(err)?,
                Attachment::Attached,
            )
        }
    };
    // The filter stays when this process exits: forget the link instead of dropping it,
    // which would detach it.
    std::mem::forget(prog.take_link(id).map_err(err)?);
    Ok(outcome)
}

/// A filter at our priority and handle running a program of this name.
fn is_ours(filter: &Filter, program: &str) -> bool {
    filter.priority == PRIORITY
        && filter.handle == HANDLE
        && filter.kind == "bpf"
        && filter.name.as_deref() == Some(program)
}

/// One of our tc programs as the kernel holds it on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub interface: String,
    pub direction: Direction,
    pub mechanism: Mechanism,
    pub program_id: Option<u32>,
}

/// Every one of our tc programs attached in this network namespace, TCX links and
/// netlink filters alike, from the kernel's own lists: a second attachment shows.
pub fn attached() -> Vec<Attached> {
    let mut found = Vec::new();
    for (_, interface) in interfaces::all() {
        for (program, attach_type) in TC_PROGRAMS {
            // Fails on kernels without TCX: nothing attached that way.
            let Ok((_, programs)) = SchedClassifier::query_tcx(&interface, attach_type) else {
                continue;
            };
            for info in programs {
                if info.name_as_str() == Some(kernel_name(program)) {
                    found.push(Attached {
                        interface: interface.clone(),
                        direction: direction(attach_type),
                        mechanism: Mechanism::Tcx,
                        program_id: Some(info.id()),
                    });
                }
            }
        }
    }
    found.extend(
        netlink_filters()
            .into_iter()
            .map(|(interface, direction, program_id)| Attached {
                interface,
                direction,
                mechanism: Mechanism::Netlink,
                program_id,
            }),
    );
    found.sort_by(|a, b| (&a.interface, a.direction as u8).cmp(&(&b.interface, b.direction as u8)));
    found
}

/// A program's name as the kernel keeps it (15 bytes at most).
fn kernel_name(program: &str) -> &str {
    &program[..program.len().min(15)]
}

/// Our netlink filters on every interface of this network namespace, as
/// (interface, direction, program id).
pub fn netlink_filters() -> Vec<(String, Direction, Option<u32>)> {
    let mut found = Vec::new();
    for (ifindex, name) in interfaces::all() {
        for (program, attach_type) in TC_PROGRAMS {
            let direction = direction(attach_type);
            for filter in tc_filters::list(ifindex, direction).unwrap_or_default() {
                if is_ours(&filter, program) {
                    found.push((name.clone(), direction, filter.program_id));
                }
            }
        }
    }
    found
}

/// Removes our netlink filters from every interface not in `keep`; returns where from.
pub fn detach_netlink_except(keep: &[String]) -> Vec<String> {
    let mut removed = Vec::new();
    for (interface, direction, _) in netlink_filters() {
        if keep.contains(&interface) {
            continue;
        }
        let attach_type = match direction {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        };
        let link = SchedClassifierLink::attached(
            &interface,
            attach_type,
            PRIORITY,
            TcHandle::from(HANDLE),
            None,
        );
        let detached = link.map_err(ProgramError::from).and_then(|link| {
            use aya::programs::links::Link as _;
            link.detach()
        });
        match detached {
            Ok(()) => {
                info!(interface, ?direction, "tc filter removed");
                removed.push(format!("{interface} ({direction:?})"));
            }
            Err(e) => tracing::warn!(
                interface,
                ?direction,
                "tc filter not removed: {}",
                Chain(&e)
            ),
        }
    }
    removed
}
