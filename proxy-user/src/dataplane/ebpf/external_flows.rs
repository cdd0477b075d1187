//! The tc programs' flows to backends that left their frontend. A flow from outside the
//! node (NodePort, ExternalIP, LoadBalancer IP) keeps its backend in the flow table
//! (`EPX_NAT_V1`, `EPX_NAT6_V1`) for as long as packets keep coming; a UDP client that
//! keeps sending would stay on a deleted endpoint for good. kube-proxy deletes the
//! conntrack entries of a removed UDP endpoint for every frontend kind, NodePorts
//! included; the socket reaper deletes these flows (both directions), so the client's
//! next packet chooses a live backend. A TCP flow's entries go only when the operator
//! asked for connections to removed endpoints to be reset
//! (`--terminate-tcp-on-endpoint-removal`): the client's next segment then meets the
//! node's stack, which resets it.

use aya::maps::{HashMap, MapData};
use proxy_common::{Addr, Backend, Frontend, NAT_REVERSE, NatEntryOf, NatKeyOf, v4_mapped};

use super::socket_reaper::LeftBy;

/// An address of a flow table (`u32` for IPv4, `Addr` for IPv6, network byte order) as
/// the frontends and backends maps hold it (IPv4-mapped for IPv4).
pub trait TableAddr: Copy {
    fn mapped(self) -> Addr;
}

impl TableAddr for u32 {
    fn mapped(self) -> Addr {
        v4_mapped(self)
    }
}

impl TableAddr for Addr {
    fn mapped(self) -> Addr {
        self
    }
}

/// The keys of every flow in `entries` whose backend left the frontend the client asked
/// for (as `through` decides: frontend, address and port asked for): the client's
/// direction, then the reply's.
pub fn stale_keys<A: TableAddr>(
    entries: impl IntoIterator<Item = (NatKeyOf<A>, NatEntryOf<A>)>,
    left: &LeftBy,
    through: impl Fn(&Frontend, &Addr, u16) -> bool,
) -> Vec<[NatKeyOf<A>; 2]> {
    let mut keys = Vec::new();
    for (key, entry) in entries {
        if entry.flags & NAT_REVERSE != 0 {
            continue;
        }
        let backend = Backend {
            addr: entry.to_addr.mapped(),
            port: entry.to_port,
            _pad: 0,
        };
        let Some(frontends) = left.get(&(key.proto, backend)) else {
            continue;
        };
        if !frontends
            .iter()
            .any(|f| through(f, &key.daddr.mapped(), key.dport))
        {
            continue;
        }
        keys.push([key, key.reply_key(&entry)]);
    }
    keys
}

/// Deletes the flows of `table` whose backend left; how many flows (each two entries).
pub fn drop_stale<A: TableAddr>(
    table: &mut HashMap<MapData, NatKeyOf<A>, NatEntryOf<A>>,
    left: &LeftBy,
    through: impl Fn(&Frontend, &Addr, u16) -> bool,
) -> usize
where
    NatKeyOf<A>: aya::Pod,
    NatEntryOf<A>: aya::Pod,
{
    let keys = stale_keys(table.iter().filter_map(Result::ok), left, through);
    // The client's direction counts the flow: the reply's may be gone already (the LRU
    // evicts each on its own).
    keys.iter()
        .filter(|[forward, reverse]| {
            let _ = table.remove(reverse);
            table.remove(forward).is_ok()
        })
        .count()
}

#[cfg(test)]
mod tests {
    use proxy_common::{IPPROTO_TCP, IPPROTO_UDP, NAT_SNAT, SCOPE_SOCKET};

    use super::*;

    fn v4(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn same(f: &Frontend, addr: &Addr, port: u16) -> bool {
        f.addr == *addr && f.port == port
    }

    const NODE: [u8; 4] = [198, 18, 100, 1];
    const CLIENT: [u8; 4] = [198, 18, 100, 2];
    const GONE: [u8; 4] = [198, 18, 120, 2];
    const KEPT: [u8; 4] = [198, 18, 110, 2];

    /// A NodePort flow from the client (port `sport`) to `backend`, source-NATed to the
    /// node (port 61001) when `snat`: its two entries.
    fn flow(
        proto: u8,
        sport: u16,
        backend: [u8; 4],
        snat: bool,
    ) -> [(NatKeyOf<u32>, NatEntryOf<u32>); 2] {
        let key = NatKeyOf {
            saddr: v4(CLIENT),
            daddr: v4(NODE),
            sport: sport.to_be(),
            dport: 30053u16.to_be(),
            proto,
            _pad: [0; 3],
        };
        let forward = NatEntryOf {
            to_addr: v4(backend),
            alt_addr: if snat { v4(NODE) } else { 0 },
            to_port: 5353u16.to_be(),
            alt_port: if snat { 61001u16.to_be() } else { 0 },
            flags: if snat { NAT_SNAT } else { 0 },
            state: 0,
            _pad: [0; 2],
            last_seen_ns: 1,
        };
        let reverse = NatEntryOf {
            to_addr: key.daddr,
            alt_addr: key.saddr,
            to_port: key.dport,
            alt_port: key.sport,
            flags: NAT_REVERSE | forward.flags,
            ..forward
        };
        [(key, forward), (key.reply_key(&forward), reverse)]
    }

    fn left(proto: u8, backend: [u8; 4]) -> LeftBy {
        let frontend = Frontend {
            addr: v4_mapped(v4(NODE)),
            port: 30053u16.to_be(),
            proto,
            scope: SCOPE_SOCKET,
        };
        let backend = Backend {
            addr: v4_mapped(v4(backend)),
            port: 5353u16.to_be(),
            _pad: 0,
        };
        [((proto, backend), vec![frontend])].into_iter().collect()
    }

    #[test]
    fn both_directions_of_a_flow_to_a_backend_that_left_are_named() {
        let gone = flow(IPPROTO_UDP, 40000, GONE, true);
        let entries = [gone, flow(IPPROTO_UDP, 40002, KEPT, true)].concat();
        let keys = stale_keys(entries, &left(IPPROTO_UDP, GONE), same);
        assert_eq!(keys, vec![[gone[0].0, gone[1].0]]);
        // The reply direction is keyed by the backend toward the node's port.
        let [_, reply] = keys[0];
        assert_eq!(reply.saddr, v4(GONE));
        assert_eq!(reply.daddr, v4(NODE));
        assert_eq!(u16::from_be(reply.dport), 61001);
    }

    #[test]
    fn a_flow_keeping_the_clients_address_is_keyed_back_to_the_client() {
        let local = flow(IPPROTO_UDP, 40000, GONE, false);
        let keys = stale_keys(local, &left(IPPROTO_UDP, GONE), same);
        let [_, reply] = keys[0];
        assert_eq!(reply.daddr, v4(CLIENT));
        assert_eq!(u16::from_be(reply.dport), 40000);
    }

    #[test]
    fn other_protocols_and_frontends_keep_their_flows() {
        let tcp = flow(IPPROTO_TCP, 40000, GONE, true);
        assert!(stale_keys(tcp, &left(IPPROTO_UDP, GONE), same).is_empty());
        // The backend left another frontend (another port of the node) only.
        let mut other = left(IPPROTO_UDP, GONE);
        for frontends in other.values_mut() {
            frontends[0].port = 30054u16.to_be();
        }
        let udp = flow(IPPROTO_UDP, 40000, GONE, true);
        assert!(stale_keys(udp, &other, same).is_empty());
    }
}
