//! Reading the tc filters of an interface's clsact qdisc from the kernel (an
//! RTM_GETTFILTER dump over rtnetlink), for what aya does not expose: which program a
//! netlink-attached filter runs. The agent reads it before it replaces a filter (never
//! one that is not ours), to find its filters on interfaces no longer given, and for
//! `--cleanup`; proxyctl reads it for `status`.

use std::{ffi::CStr, io, mem::size_of};

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
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_ID: u16 = 11;
const NLA_TYPE_MASK: u16 = 0x3fff;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

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

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    header: NlMsgHdr,
    tc: TcMsg,
}

/// Every filter on `direction` of the clsact qdisc of interface `ifindex`; empty when
/// the interface has no clsact qdisc.
pub fn list(ifindex: u32, direction: Direction) -> io::Result<Vec<Filter>> {
    let socket = Socket::open()?;
    let request = Request {
        header: NlMsgHdr {
            len: size_of::<Request>() as u32,
            kind: RTM_GETTFILTER,
            flags: NLM_F_REQUEST | NLM_F_DUMP,
            seq: 1,
            pid: 0,
        },
        tc: TcMsg {
            ifindex: ifindex as i32,
            parent: direction.parent(),
            ..Default::default()
        },
    };
    // SAFETY: Request is repr(C) plain data.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&request as *const Request).cast::<u8>(),
            size_of::<Request>(),
        )
    };
    socket.send(bytes)?;
    let mut filters = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut buf)?;
        let mut rest = &buf[..n];
        while rest.len() >= size_of::<NlMsgHdr>() {
            let header: NlMsgHdr = read(rest);
            let len = header.len as usize;
            if len < size_of::<NlMsgHdr>() || len > rest.len() {
                return Err(io::Error::other("truncated netlink message"));
            }
            let body = &rest[size_of::<NlMsgHdr>()..len];
            match header.kind {
                NLMSG_DONE => return Ok(filters),
                NLMSG_ERROR => {
                    let code = if body.len() >= 4 {
                        i32::from_ne_bytes([body[0], body[1], body[2], body[3]])
                    } else {
                        0
                    };
                    return match -code {
                        0 => Ok(filters),
                        // No clsact qdisc (or no such side of it): no filters.
                        libc::EINVAL | libc::ENOENT => Ok(Vec::new()),
                        errno => Err(io::Error::from_raw_os_error(errno)),
                    };
                }
                RTM_NEWTFILTER => {
                    if let Some(filter) = parse_filter(body) {
                        filters.push(filter);
                    }
                }
                _ => {}
            }
            rest = &rest[align(len).min(rest.len())..];
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

/// The (type, payload) of each netlink attribute in `bytes`.
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if bytes.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
        let kind = u16::from_ne_bytes([bytes[2], bytes[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > bytes.len() {
            return None;
        }
        let data = &bytes[4..len];
        bytes = &bytes[align(len).min(bytes.len())..];
        Some((kind, data))
    })
}

fn align(len: usize) -> usize {
    (len + 3) & !3
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

struct Socket(std::os::fd::OwnedFd);

impl Socket {
    fn open() -> io::Result<Self> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: plain socket(2); the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor nobody else owns.
        Ok(Self(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: bytes is valid for its length.
        let n = unsafe { libc::send(self.0.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: buf is valid and writable for its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(data);
        out.resize(align(out.len()), 0);
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

    #[test]
    fn a_truncated_attribute_ends_the_walk() {
        let mut bytes = attr(TCA_KIND, b"bpf\0");
        bytes.extend_from_slice(&[200, 0, 1, 0]);
        assert_eq!(attributes(&bytes).count(), 1);
    }
}
