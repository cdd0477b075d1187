//! No client stranded on a removed endpoint. A connected UDP socket keeps the backend its
//! connect was given for as long as it lives; when that backend leaves the frontend
//! (deleted, no longer serving, weight 0, the Service gone), the socket would keep sending
//! into the void. The reaper destroys every such socket on the node, in every network
//! namespace, so its owner's next call fails (ECONNABORTED) and it connects again, to a
//! live backend, as kube-proxy's deleting the conntrack entries of a removed UDP
//! endpoint makes the next packet choose anew. Unconnected sockets' flows to the backend
//! are dropped too (sendmsg would choose anew by itself; dropping them keeps `proxyctl
//! udp-flows` true), and so are the tc programs' flows from outside the node to it
//! ([`external_flows`]), which a client that keeps sending would otherwise keep for good.
//! TCP is left alone, as kube-proxy leaves it, unless the operator asks for its
//! connections to be reset too (`--terminate-tcp-on-endpoint-removal`). An endpoint that
//! still serves while terminating is not one that left: its sockets stay.
//!
//! Why destroy rather than re-steer: a connected socket's peer is part of the socket
//! (`getsockname`/`getpeername`, the kernel's route and source address cache); rewriting
//! every datagram underneath it is what the socket path exists to avoid. Why `SOCK_DESTROY`
//! through sock_diag and not `bpf_sock_destroy` from a socket iterator (Linux 6.5): the
//! loader (aya) cannot relocate kfunc calls yet, and sock_diag does it on every kernel
//! with `CONFIG_INET_DIAG_DESTROY` (Debian's kernels have it).
//!
//! Which sockets: those whose translation names the frontend and the backend that left,
//! found by socket cookie in the ring connect4/6 write for TCP and connected UDP sockets
//! (`EPX_TCPRN_V3`), or in the reverse-translation LRU on kernels without socket-local
//! storage in those programs. A socket connected to the pod's address directly is not
//! touched; nor is one whose ring record a million later connects have overwritten (it
//! keeps its backend, as every socket did before the reaper).
//!
//! The work runs on its own thread, fed through a channel: a sync never waits for it.

use std::{
    collections::HashMap as StdHashMap,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, MapData};
use proxy_common::{
    Backend, Frontend, IPPROTO_TCP, IPPROTO_UDP, NatEntry, NatEntry6, NatKey, NatKey6, RevNatKey,
    TcpRevNat, UdpFlow, UdpFlowKey, names, v4_mapped, v4_of,
};
use tracing::{debug, info, warn};

use super::{external_flows, netns, sock_diag};

/// Connected UDP sockets destroyed since the agent started (for /metrics).
pub static UDP_SOCKETS_DESTROYED: AtomicU64 = AtomicU64::new(0);
/// TCP connections destroyed since the agent started (opt-in; for /metrics).
pub static TCP_SOCKETS_DESTROYED: AtomicU64 = AtomicU64::new(0);
/// Unconnected sockets' UDP flows dropped since the agent started (for /metrics).
pub static UDP_FLOWS_DROPPED: AtomicU64 = AtomicU64::new(0);
/// The tc programs' flows from outside dropped since the agent started (for /metrics).
pub static EXTERNAL_FLOWS_DROPPED: AtomicU64 = AtomicU64::new(0);

/// A backend that left a frontend (UDP, or TCP when its connections are to be reset).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleBackend {
    pub frontend: Frontend,
    pub backend: Backend,
}

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    pub namespaces: usize,
    pub udp_destroyed: usize,
    pub tcp_destroyed: usize,
    pub flows_dropped: usize,
    /// Flows from outside the node (the tc programs' flow tables).
    pub external_flows_dropped: usize,
}

/// The handle the dataplane keeps: sending never blocks.
pub struct SocketReaper {
    tx: mpsc::Sender<Vec<StaleBackend>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    #[error("opening the pinned map {name} for the socket reaper")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("starting the socket reaper's thread")]
    Thread(#[source] std::io::Error),
}

/// The maps a sweep reads, opened from their pins.
struct ReaperMaps {
    ring: Array<MapData, TcpRevNat>,
    revnat: HashMap<MapData, RevNatKey, Frontend>,
    udp_flows: HashMap<MapData, UdpFlowKey, UdpFlow>,
    nat: HashMap<MapData, NatKey, NatEntry>,
    nat6: HashMap<MapData, NatKey6, NatEntry6>,
}

impl ReaperMaps {
    fn open(pin_dir: &Path) -> Result<Self, ReaperError> {
        Ok(Self {
            ring: typed(pin_dir, names::MAP_TCP_REVNAT)?,
            revnat: typed(pin_dir, names::MAP_REVNAT)?,
            udp_flows: typed(pin_dir, names::MAP_UDP_FLOWS)?,
            nat: typed(pin_dir, names::MAP_NAT)?,
            nat6: typed(pin_dir, names::MAP_NAT6)?,
        })
    }
}

/// The pinned map `name`, typed.
fn typed<T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>>(
    pin_dir: &Path,
    name: &'static str,
) -> Result<T, ReaperError> {
    MapData::from_pin(pin_dir.join(name))
        .and_then(aya::maps::Map::from_map_data)
        .and_then(TryInto::try_into)
        .map_err(|source| ReaperError::Map { name, source })
}

impl SocketReaper {
    /// Starts the reaper's thread over the maps pinned in `pin_dir`.
    pub fn start(pin_dir: &Path) -> Result<Self, ReaperError> {
        let mut maps = ReaperMaps::open(pin_dir)?;
        let (tx, rx) = mpsc::channel::<Vec<StaleBackend>>();
        std::thread::Builder::new()
            .name("socket-reaper".into())
            .spawn(move || {
                while let Ok(mut stale) = rx.recv() {
                    // Changes that came meanwhile are swept together.
                    while let Ok(more) = rx.try_recv() {
                        stale.extend(more);
                    }
                    let started = Instant::now();
                    let reaped = sweep(&mut maps, &stale);
                    UDP_SOCKETS_DESTROYED.fetch_add(reaped.udp_destroyed as u64, Ordering::Relaxed);
                    TCP_SOCKETS_DESTROYED.fetch_add(reaped.tcp_destroyed as u64, Ordering::Relaxed);
                    UDP_FLOWS_DROPPED.fetch_add(reaped.flows_dropped as u64, Ordering::Relaxed);
                    EXTERNAL_FLOWS_DROPPED
                        .fetch_add(reaped.external_flows_dropped as u64, Ordering::Relaxed);
                    log_sweep(&stale, &reaped, started.elapsed());
                }
            })
            .map_err(ReaperError::Thread)?;
        Ok(Self { tx })
    }

    /// Hands backends that left their frontends to the reaper.
    pub fn reap(&self, stale: Vec<StaleBackend>) {
        if !stale.is_empty() && self.tx.send(stale).is_err() {
            warn!("the socket reaper has stopped: connected UDP sockets are not destroyed");
        }
    }
}

fn log_sweep(stale: &[StaleBackend], reaped: &Reaped, took: Duration) {
    let total = reaped.udp_destroyed
        + reaped.tcp_destroyed
        + reaped.flows_dropped
        + reaped.external_flows_dropped;
    if total > 0 {
        info!(
            stale_backends = stale.len(),
            udp_sockets_destroyed = reaped.udp_destroyed,
            tcp_connections_reset = reaped.tcp_destroyed,
            udp_flows_dropped = reaped.flows_dropped,
            external_flows_dropped = reaped.external_flows_dropped,
            namespaces = reaped.namespaces,
            took_ms = took.as_millis() as u64,
            "clients of backends that left their Service: connected sockets destroyed, flows dropped"
        );
    } else {
        debug!(
            stale_backends = stale.len(),
            namespaces = reaped.namespaces,
            "no socket of a backend that left"
        );
    }
}

/// Whether `key` (a frontend's key in the maps) is the frontend a socket asked for
/// (`addr`, `port`): the same, or a localhost NodePort asked for at another address of
/// 127.0.0.0/8 (connect4 looks those up as 127.0.0.1).
fn same_frontend(key: &Frontend, addr: &proxy_common::Addr, port: u16) -> bool {
    if key.port != port {
        return false;
    }
    key.addr == *addr
        || (key.addr == v4_mapped(u32::from_ne_bytes([127, 0, 0, 1]))
            && v4_of(addr).is_some_and(|a| a.to_ne_bytes()[0] == 127))
}

/// The frontends each backend left, by protocol and backend.
pub type LeftBy = StdHashMap<(u8, Backend), Vec<Frontend>>;

/// One pass over every namespace's connected sockets of the protocols in `stale`, over
/// the unconnected sockets' flow table and over the tc programs' flow tables.
fn sweep(maps: &mut ReaperMaps, stale: &[StaleBackend]) -> Reaped {
    let mut left: LeftBy = StdHashMap::new();
    for s in stale {
        left.entry((s.frontend.proto, s.backend))
            .or_default()
            .push(s.frontend);
    }
    let mut protocols: Vec<u8> = stale.iter().map(|s| s.frontend.proto).collect();
    protocols.sort_unstable();
    protocols.dedup();
    let namespaces = netns::all();
    let (ring, revnat) = (&maps.ring, &maps.revnat);
    let outcomes = netns::visit_each(&namespaces, |_| {
        let mut diag = sock_diag::DiagSocket::open()?;
        let mut destroyed = (0, 0);
        for (&protocol, family) in protocols
            .iter()
            .flat_map(|p| [(p, libc::AF_INET as u8), (p, libc::AF_INET6 as u8)])
        {
            let sockets = match diag.connected(protocol, family) {
                Ok(sockets) => sockets,
                // A namespace without IPv6 has no AF_INET6 sockets to show.
                Err(e) if family == libc::AF_INET6 as u8 => {
                    debug!("sock_diag AF_INET6: {e}");
                    continue;
                }
                Err(e) => return Err(e),
            };
            for socket in sockets {
                if stranded(&socket, &left, ring, revnat) {
                    diag.destroy(&socket)?;
                    if protocol == IPPROTO_TCP {
                        destroyed.1 += 1;
                    } else {
                        destroyed.0 += 1;
                    }
                }
            }
        }
        Ok::<(usize, usize), std::io::Error>(destroyed)
    });
    let mut reaped = Reaped {
        namespaces: namespaces.len(),
        ..Reaped::default()
    };
    let mut not_entered = 0;
    for (path, outcome) in outcomes {
        match outcome {
            Ok(Ok((udp, tcp))) => {
                reaped.udp_destroyed += udp;
                reaped.tcp_destroyed += tcp;
            }
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => warn!(
                namespace = %path.display(),
                "connected sockets of removed endpoints cannot be destroyed: the kernel was built without CONFIG_INET_DIAG_DESTROY ({e})"
            ),
            Ok(Err(e)) => {
                warn!(namespace = %path.display(), "destroying connected sockets of removed endpoints: {e}")
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => not_entered += 1,
            Err(e) => {
                debug!(namespace = %path.display(), "namespace not entered (gone meanwhile?): {e}")
            }
        }
    }
    if not_entered > 0 {
        warn!(
            namespaces = not_entered,
            "the sockets in these network namespaces were not checked: entering them needs CAP_SYS_ADMIN (EPERM); clients there may stay on endpoints that left"
        );
    }
    reaped.flows_dropped = drop_flows(&mut maps.udp_flows, &left);
    reaped.external_flows_dropped = external_flows::drop_stale(&mut maps.nat, &left, same_frontend)
        + external_flows::drop_stale(&mut maps.nat6, &left, same_frontend);
    reaped
}

/// Whether `socket` was connected through a frontend to a backend that left it.
fn stranded(
    socket: &sock_diag::InetSocket,
    left: &LeftBy,
    ring: &Array<MapData, TcpRevNat>,
    revnat: &HashMap<MapData, RevNatKey, Frontend>,
) -> bool {
    let Some(frontends) = left.get(&(socket.protocol, socket.peer)) else {
        return false;
    };
    let through = |addr: &proxy_common::Addr, port: u16| {
        frontends.iter().any(|f| same_frontend(f, addr, port))
    };
    if let Ok(record) = ring.get(&TcpRevNat::index(socket.cookie), 0)
        && record.cookie_high == TcpRevNat::cookie_high(socket.cookie)
        && record.translation.backend_addr == socket.peer.addr
        && record.translation.backend_port == socket.peer.port
    {
        let t = record.translation;
        return through(&t.frontend_addr, t.frontend_port);
    }
    // Kernels without socket-local storage in connect4/6 keep it in the LRU.
    let key = RevNatKey {
        socket_cookie: socket.cookie,
        backend: socket.peer,
        _pad: 0,
    };
    revnat
        .get(&key, 0)
        .is_ok_and(|fe| through(&fe.addr, fe.port))
}

/// Drops the unconnected sockets' flows to backends that left; how many.
fn drop_flows(flows: &mut HashMap<MapData, UdpFlowKey, UdpFlow>, left: &LeftBy) -> usize {
    let doomed: Vec<UdpFlowKey> = flows
        .iter()
        .filter_map(Result::ok)
        .filter(|(key, flow)| {
            left.get(&(IPPROTO_UDP, flow.backend))
                .is_some_and(|frontends| {
                    frontends
                        .iter()
                        .any(|f| same_frontend(f, &key.frontend.addr, key.frontend.port))
                })
        })
        .map(|(key, _)| key)
        .collect();
    doomed
        .iter()
        .filter(|key| flows.remove(key).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_localhost_node_port_matches_every_loopback_address() {
        let key = Frontend {
            addr: v4_mapped(u32::from_ne_bytes([127, 0, 0, 1])),
            port: 30053u16.to_be(),
            proto: 17,
            scope: 0,
        };
        let other_loopback = v4_mapped(u32::from_ne_bytes([127, 0, 0, 2]));
        let elsewhere = v4_mapped(u32::from_ne_bytes([198, 19, 0, 10]));
        assert!(same_frontend(&key, &key.addr, key.port));
        assert!(same_frontend(&key, &other_loopback, key.port));
        assert!(!same_frontend(&key, &elsewhere, key.port));
        assert!(!same_frontend(&key, &key.addr, 53u16.to_be()));
    }
}
