//! The kernel's socket diagnostics over netlink (`NETLINK_SOCK_DIAG`): a dump of one
//! network namespace's connected UDP sockets or TCP connections (peer and cookie), and
//! `SOCK_DESTROY` of one of them (Linux's `udp_abort`: the socket is disconnected and its
//! owner's next call fails with ECONNABORTED; `tcp_abort`: the same, and the peer gets a
//! reset; the kernel needs `CONFIG_INET_DIAG_DESTROY`). A socket belongs
//! to the namespace its netlink socket was opened in: [`DiagSocket::open`] is called
//! inside the namespace to look at. (`inet_diag` can hand out a socket's local storage,
//! but only a TCP socket's: for UDP it stops before that part, so the translations are
//! read from the maps by cookie instead.)

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use proxy_common::{Addr, Backend, v4_mapped};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
/// A connected UDP socket is in TCP_ESTABLISHED (1) for the diag interface.
const STATE_ESTABLISHED: u32 = 1 << 1;
/// A TCP connection a client made: SYN_SENT (2), ESTABLISHED, CLOSE_WAIT (8).
const STATES_TCP_CLIENT: u32 = (1 << 1) | (1 << 2) | (1 << 8);
const NLMSG_HDRLEN: usize = 16;
const REQ_LEN: usize = 56;
const SOCKID_LEN: usize = 48;

/// One connected socket of the namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InetSocket {
    /// `AF_INET` or `AF_INET6` (a dual-stack socket connected to `::ffff:a.b.c.d` is one).
    pub family: u8,
    /// `IPPROTO_UDP` or `IPPROTO_TCP`.
    pub protocol: u8,
    /// `inet_diag_sockid` as the kernel gave it: what names the socket to destroy.
    id: [u8; SOCKID_LEN],
    /// Its peer in the maps' form (network order; IPv4 mapped).
    pub peer: Backend,
    pub cookie: u64,
}

/// A `NETLINK_SOCK_DIAG` socket of the calling thread's network namespace.
pub struct DiagSocket {
    fd: OwnedFd,
    seq: u32,
}

impl DiagSocket {
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just returned by socket(2), owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, seq: 0 })
    }

    /// The connected sockets of `protocol` (`IPPROTO_UDP`, `IPPROTO_TCP`) and `family`.
    pub fn connected(&mut self, protocol: u8, family: u8) -> io::Result<Vec<InetSocket>> {
        let states = if protocol == libc::IPPROTO_TCP as u8 {
            STATES_TCP_CLIENT
        } else {
            STATE_ESTABLISHED
        };
        let body = request(family, protocol, states, &[0; SOCKID_LEN]);
        self.send(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, &body)?;
        let mut found = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            for (kind, payload) in messages(&buf[..n]) {
                match kind {
                    NLMSG_DONE => return Ok(found),
                    NLMSG_ERROR => return Err(error_of(payload).unwrap_or_else(truncated)),
                    SOCK_DIAG_BY_FAMILY => {
                        if let Some(socket) = parse_socket(payload, protocol) {
                            found.push(socket);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Destroys `socket`: its owner's next call fails with ECONNABORTED. A socket already
    /// gone is not an error.
    pub fn destroy(&mut self, socket: &InetSocket) -> io::Result<()> {
        let body = request(socket.family, socket.protocol, u32::MAX, &socket.id);
        self.send(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, &body)?;
        let mut buf = vec![0u8; 4096];
        let n = self.recv(&mut buf)?;
        for (kind, payload) in messages(&buf[..n]) {
            if kind == NLMSG_ERROR {
                return match error_of(payload) {
                    None => Ok(()),
                    Some(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                    Some(e) => Err(e),
                };
            }
        }
        Err(truncated())
    }

    fn send(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
        msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        // SAFETY: sockaddr_nl is plain data; zeroed is the kernel as peer.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: a valid buffer and address of the given lengths.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: a valid buffer of the given length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "sock_diag: truncated netlink reply",
    )
}

/// `inet_diag_req_v2`.
fn request(family: u8, protocol: u8, states: u32, id: &[u8; SOCKID_LEN]) -> Vec<u8> {
    let mut body = Vec::with_capacity(REQ_LEN + 16);
    body.extend_from_slice(&[family, protocol, 0, 0]);
    body.extend_from_slice(&states.to_ne_bytes());
    body.extend_from_slice(id);
    body
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The messages of one datagram: (type, payload).
fn messages(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while let (Some(len), Some(kind)) = (u32_at(buf, 0), u16_at(buf, 4)) {
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        out.push((kind, &buf[NLMSG_HDRLEN..len]));
        let next = (len + 3) & !3;
        if next >= buf.len() {
            break;
        }
        buf = &buf[next..];
    }
    out
}

/// The error an NLMSG_ERROR carries; `None` for an acknowledgement (error 0).
fn error_of(payload: &[u8]) -> Option<io::Error> {
    let code = i32::from_ne_bytes(payload.get(..4)?.try_into().ok()?);
    (code != 0).then(|| io::Error::from_raw_os_error(-code))
}

/// One `inet_diag_msg` of `protocol`: its family, socket id, peer and cookie.
fn parse_socket(payload: &[u8], protocol: u8) -> Option<InetSocket> {
    let family = *payload.first()?;
    let id: [u8; SOCKID_LEN] = payload.get(4..4 + SOCKID_LEN)?.try_into().ok()?;
    let dport = u16::from_ne_bytes([id[2], id[3]]);
    let word = |i: usize| u32::from_ne_bytes([id[i], id[i + 1], id[i + 2], id[i + 3]]);
    let dst: Addr = [word(20), word(24), word(28), word(32)];
    let addr = if family == libc::AF_INET as u8 {
        v4_mapped(dst[0])
    } else {
        dst
    };
    Some(InetSocket {
        family,
        protocol,
        id,
        peer: Backend {
            addr,
            port: dport,
            _pad: 0,
        },
        cookie: u64::from(word(40)) | (u64::from(word(44)) << 32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dumped_socket_is_read_with_its_peer_and_cookie() {
        let mut msg = vec![libc::AF_INET as u8, 1, 0, 0];
        let mut id = [0u8; SOCKID_LEN];
        id[0..2].copy_from_slice(&4000u16.to_be_bytes());
        id[2..4].copy_from_slice(&53u16.to_be_bytes());
        id[20..24].copy_from_slice(&[198, 18, 1, 2]);
        id[40..44].copy_from_slice(&7u32.to_ne_bytes());
        id[44..48].copy_from_slice(&1u32.to_ne_bytes());
        msg.extend_from_slice(&id);
        msg.resize(72, 0);
        let socket = parse_socket(&msg, libc::IPPROTO_UDP as u8).expect("a socket");
        assert_eq!(
            socket.peer.addr,
            v4_mapped(u32::from_ne_bytes([198, 18, 1, 2]))
        );
        assert_eq!(socket.peer.port, 53u16.to_be());
        assert_eq!(socket.cookie, (1 << 32) | 7);
        assert_eq!(socket.id, id);
    }

    #[test]
    fn messages_and_errors_are_split_out() {
        let mut buf = Vec::new();
        // An error, then an acknowledgement, in one datagram.
        for code in [-libc::EPERM, 0] {
            buf.extend_from_slice(&((NLMSG_HDRLEN + 4) as u32).to_ne_bytes());
            buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            buf.extend_from_slice(&[0; 10]);
            buf.extend_from_slice(&code.to_ne_bytes());
        }
        let split = messages(&buf);
        assert_eq!(split.len(), 2);
        let error = error_of(split[0].1).expect("an error");
        assert_eq!(error.raw_os_error(), Some(libc::EPERM));
        assert!(error_of(split[1].1).is_none(), "an acknowledgement");
    }
}
