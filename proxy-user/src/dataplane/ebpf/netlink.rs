//! The netlink plumbing the eBPF dataplane's kernel queries share (`tc_filters`: an
//! rtnetlink dump of tc filters; `sock_diag`: socket dumps and SOCK_DESTROY): a socket,
//! requests, the messages of a reply and their errors, attributes.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
/// `struct nlmsghdr`'s size.
pub const NLMSG_HDRLEN: usize = 16;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// A netlink socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_SOCK_DIAG`), talking to the
/// kernel of the calling thread's network namespace.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn open(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just returned by socket(2), owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, seq: 0 })
    }

    /// Sends one request: a header of `kind` and `flags`, then `body`.
    pub fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
        msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: a valid buffer of the given length; an unbound netlink socket sends to
        // the kernel.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One datagram of the reply into `buf`; its length.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: a valid, writable buffer of the given length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// The messages of one datagram: (type, payload). A truncated one is an error.
pub fn messages(mut buf: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            ));
        }
        out.push((kind, &buf[NLMSG_HDRLEN..len]));
        buf = &buf[align(len).min(buf.len())..];
    }
    Ok(out)
}

/// The error an NLMSG_ERROR payload carries; `None` for an acknowledgement (error 0).
pub fn error_of(payload: &[u8]) -> Option<io::Error> {
    let code = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    (code != 0).then(|| io::Error::from_raw_os_error(-code))
}

/// The (type without flags, payload) of each attribute in `bytes`; a truncated one ends
/// the walk.
pub fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
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

/// Netlink's 4-byte alignment.
pub fn align(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&[0; 10]);
        out.extend_from_slice(payload);
        out.resize(align(out.len()), 0);
        out
    }

    #[test]
    fn messages_errors_and_acknowledgements_are_split_out() {
        let mut buf = message(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        buf.extend(message(NLMSG_ERROR, &0i32.to_ne_bytes()));
        buf.extend(message(NLMSG_DONE, &[]));
        let split = messages(&buf).expect("whole messages");
        assert_eq!(split.len(), 3);
        let error = error_of(split[0].1).expect("an error");
        assert_eq!(error.raw_os_error(), Some(libc::EPERM));
        assert!(error_of(split[1].1).is_none(), "an acknowledgement");
        assert_eq!(split[2].0, NLMSG_DONE);
        assert!(messages(&buf[..18]).is_err(), "truncated");
    }

    #[test]
    fn a_truncated_attribute_ends_the_walk() {
        let mut bytes = vec![8, 0, 1, 0];
        bytes.extend_from_slice(b"bpf\0");
        bytes.extend_from_slice(&[200, 0, 1, 0]);
        let found: Vec<(u16, &[u8])> = attributes(&bytes).collect();
        assert_eq!(found, [(1, &b"bpf\0"[..])]);
    }
}
