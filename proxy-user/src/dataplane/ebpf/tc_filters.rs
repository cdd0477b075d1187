//! Reading the tc filters of an interface's clsact qdisc from the kernel (an
//! RTM_GETTFILTER dump over rtnetlink), for what aya does not expose: which program a
//! netlink-attached filter runs. The agent reads it before it replaces a filter (never
//! one that is not ours), to find its filters on interfaces no longer given, and for
//! `--cleanup`; proxyctl reads it for `status`.

use std::{ffi::CStr, io, mem::size_of};

use super::netlink::{self, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, attributes};

/// Which side of the clsact qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS or TC_H_MIN_EGRESS)`.
    fn parent(self) -> u32 {
        match self {
            Direction::Ingress => 0xffff_fff2,
            Direction::Egress => 0xffff_fff3,
        }
    }
}

/// One filter, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    /// `bpf` for a BPF classifier.
    pub kind: String,
    /// The BPF program's name as given at attach time (`TCA_BPF_NAME`).
    pub name: Option<String>,
    /// The BPF program's id (`TCA_BPF_ID`).
    pub program_id: Option<u32>,
}

const RTM_GETTFILTER: u16 = 46;
const RTM_NEWTFILTER: u16 = 44;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_ID: u16 = 11;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TcMsg {
    family: u8,
    _pad1: u8,
    _pad2: u16,
    ifindex: i32,
    handle: u32,
    parent: u32,
    info: u32,
}

/// Every filter on `direction` of the clsact qdisc of interface `ifindex`; empty when
/// the interface has no clsact qdisc.
pub fn list(ifindex: u32, direction: Direction) -> io::Result<Vec<Filter>> {
    let mut socket = netlink::Socket::open(libc::NETLINK_ROUTE)?;
    let request = TcMsg {
        ifindex: ifindex as i32,
        parent: direction.parent(),
        ..Default::default()
    };
    // SAFETY: TcMsg is repr(C) plain data.
    let body = unsafe {
        std::slice::from_raw_parts((&request as *const TcMsg).cast::<u8>(), size_of::<TcMsg>())
    };
    socket.request(RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, body)?;
    let mut filters = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut buf)?;
        for (kind, body) in netlink::messages(&buf[..n])? {
            match kind {
                NLMSG_DONE => return Ok(filters),
                NLMSG_ERROR => {
                    return match netlink::error_of(body).and_then(|e| e.raw_os_error()) {
                        None => Ok(filters),
                        // No clsact qdisc (or no such side of it): no filters.
                        Some(libc::EINVAL | libc::ENOENT) => Ok(Vec::new()),
                        Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                    };
                }
                RTM_NEWTFILTER => filters.extend(parse_filter(body)),
                _ => {}
            }
        }
    }
}

fn parse_filter(body: &[u8]) -> Option<Filter> {
    if body.len() < size_of::<TcMsg>() {
        return None;
    }
    let tc: TcMsg = read(body);
    // The dump also reports each priority's classifier itself, with handle 0.
    if tc.handle == 0 {
        return None;
    }
    let mut filter = Filter {
        priority: (tc.info >> 16) as u16,
        handle: tc.handle,
        kind: String::new(),
        name: None,
        program_id: None,
    };
    for (kind, data) in attributes(&body[size_of::<TcMsg>()..]) {
        match kind {
            TCA_KIND => filter.kind = c_string(data)?,
            TCA_OPTIONS => {
                for (kind, data) in attributes(data) {
                    match kind {
                        TCA_BPF_NAME => filter.name = c_string(data),
                        TCA_BPF_ID if data.len() >= 4 => {
                            filter.program_id =
                                Some(u32::from_ne_bytes([data[0], data[1], data[2], data[3]]))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(filter)
}

fn c_string(data: &[u8]) -> Option<String> {
    CStr::from_bytes_until_nul(data)
        .ok()
        .map(|s| s.to_string_lossy().into_owned())
}

/// A plain-data value from the start of `bytes` (checked long enough by the caller).
fn read<T: Copy + Default>(bytes: &[u8]) -> T {
    let mut value = T::default();
    let n = size_of::<T>().min(bytes.len());
    // SAFETY: T is plain data (repr(C) integers); at most size_of::<T>() bytes copied.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut value as *mut T).cast::<u8>(), n)
    };
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(data);
        out.resize(netlink::align(out.len()), 0);
        out
    }

    fn tcmsg(handle: u32, priority: u16) -> Vec<u8> {
        let tc = TcMsg {
            ifindex: 3,
            handle,
            parent: Direction::Ingress.parent(),
            info: (u32::from(priority) << 16) | 0x0300,
            ..Default::default()
        };
        // SAFETY: TcMsg is repr(C) plain data.
        unsafe {
            std::slice::from_raw_parts((&tc as *const TcMsg).cast::<u8>(), size_of::<TcMsg>())
        }
        .to_vec()
    }

    #[test]
    fn a_bpf_filter_gives_its_priority_handle_name_and_program() {
        let mut options = attr(TCA_BPF_NAME, b"epx_tc_ingress\0");
        options.extend(attr(TCA_BPF_ID, &42u32.to_ne_bytes()));
        let mut body = tcmsg(0xe9f, 1);
        body.extend(attr(TCA_KIND, b"bpf\0"));
        body.extend(attr(TCA_OPTIONS, &options));
        assert_eq!(
            parse_filter(&body),
            Some(Filter {
                priority: 1,
                handle: 0xe9f,
                kind: "bpf".into(),
                name: Some("epx_tc_ingress".into()),
                program_id: Some(42),
            })
        );
    }

    #[test]
    fn the_classifier_entry_without_a_handle_is_not_a_filter() {
        let mut body = tcmsg(0, 1);
        body.extend(attr(TCA_KIND, b"bpf\0"));
        assert_eq!(parse_filter(&body), None);
        assert_eq!(parse_filter(&body[..4]), None);
    }
}
