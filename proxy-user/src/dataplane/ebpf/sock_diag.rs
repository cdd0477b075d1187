//! The kernel's socket diagnostics over netlink (`NETLINK_SOCK_DIAG`): a dump of one
//! network namespace's connected UDP sockets or TCP connections (peer and cookie), and
//! `SOCK_DESTROY` of one of them (Linux's `udp_abort`: the socket is disconnected and its
//! owner's next call fails with ECONNABORTED; `tcp_abort`: the same, and the peer gets a
//! reset; the kernel needs `CONFIG_INET_DIAG_DESTROY`). A socket belongs to the
//! namespace its netlink socket was opened in: [`DiagSocket::open`] is called inside the
//! namespace to look at. (`inet_diag` can hand out a socket's local storage, but only a
//! TCP socket's: for UDP it stops before that part, so the translations are read from the
//! maps by cookie instead.)

use std::io;

use proxy_common::{Addr, Backend, v4_mapped};

use super::netlink::{self, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// A connected UDP socket is in TCP_ESTABLISHED (1) for the diag interface.
const STATE_ESTABLISHED: u32 = 1 << 1;
/// A TCP connection a client made: SYN_SENT (2), ESTABLISHED, CLOSE_WAIT (8).
const STATES_TCP_CLIENT: u32 = (1 << 1) | (1 << 2) | (1 << 8);
/// `struct inet_diag_req_v2`, `struct inet_diag_sockid`.
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
pub struct DiagSocket(netlink::Socket);

impl DiagSocket {
    pub fn open() -> io::Result<Self> {
        netlink::Socket::open(NETLINK_SOCK_DIAG).map(Self)
    }

    /// The connected sockets of `protocol` (`IPPROTO_UDP`, `IPPROTO_TCP`) and `family`.
    pub fn connected(&mut self, protocol: u8, family: u8) -> io::Result<Vec<InetSocket>> {
        let states = if protocol == libc::IPPROTO_TCP as u8 {
            STATES_TCP_CLIENT
        } else {
            STATE_ESTABLISHED
        };
        let body = request(family, protocol, states, &[0; SOCKID_LEN]);
        self.0
            .request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, &body)?;
        let mut found = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.0.recv(&mut buf)?;
            for (kind, payload) in netlink::messages(&buf[..n])? {
                match kind {
                    NLMSG_DONE => return Ok(found),
                    NLMSG_ERROR => return Err(netlink::error_of(payload).unwrap_or_else(truncated)),
                    SOCK_DIAG_BY_FAMILY => found.extend(parse_socket(payload, protocol)),
                    _ => {}
                }
            }
        }
    }

    /// Destroys `socket`: its owner's next call fails with ECONNABORTED. A socket already
    /// gone is not an error.
    pub fn destroy(&mut self, socket: &InetSocket) -> io::Result<()> {
        let body = request(socket.family, socket.protocol, u32::MAX, &socket.id);
        self.0
            .request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, &body)?;
        let mut buf = vec![0u8; 4096];
        let n = self.0.recv(&mut buf)?;
        for (kind, payload) in netlink::messages(&buf[..n])? {
            if kind == NLMSG_ERROR {
                return match netlink::error_of(payload) {
                    None => Ok(()),
                    Some(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                    Some(e) => Err(e),
                };
            }
        }
        Err(truncated())
    }
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "sock_diag: a reply without its status",
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
}
