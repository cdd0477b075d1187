//! The addresses and ports of the benchmark's Services: ClusterIPs from three blocks of
//! 198.18.0.0/15 (room for 106,490 Services), NodePorts for the first 20,000.
//!
//! The blocks keep clear of every network the harness uses: the benchmark's own
//! 198.18.0.0/24 (node to server), 198.18.1.0/24 (backends) and 198.18.9.0/24 (node to
//! outside); [`crate::Topology`]'s 198.18.(i+1).0/24 per backend (a handful); and
//! [`crate::two_nodes`]' 198.18.100-120.0/24.

use std::net::Ipv4Addr;

/// A block of ClusterIPs: its network and prefix length. The network and broadcast
/// addresses of each block are left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Block {
    /// Addresses handed out from this block.
    pub const fn hosts(&self) -> usize {
        (1usize << (32 - self.prefix)) - 2
    }

    /// `198.19.0.0/16`, for a route.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.network)
    }
}

/// In the order they are used: Service 0 gets 198.19.0.1.
pub const SERVICE_BLOCKS: [Block; 3] = [
    Block {
        network: Ipv4Addr::new(198, 19, 0, 0),
        prefix: 16,
    },
    Block {
        network: Ipv4Addr::new(198, 18, 128, 0),
        prefix: 17,
    },
    Block {
        network: Ipv4Addr::new(198, 18, 32, 0),
        prefix: 19,
    },
];

/// How many Services the blocks hold.
pub const MAX_SERVICES: usize =
    SERVICE_BLOCKS[0].hosts() + SERVICE_BLOCKS[1].hosts() + SERVICE_BLOCKS[2].hosts();

/// Service `i`'s NodePort is `NODEPORT_BASE + i`, for the first [`NODEPORT_MAX`] Services;
/// the others are ClusterIP only. Kubernetes' default range (30000-32767) holds 2,768; the
/// agent takes any port a manifest gives, so the benchmark uses 30000-49999.
pub const NODEPORT_BASE: u16 = 30_000;
pub const NODEPORT_MAX: usize = 20_000;

/// The ClusterIP of Service `i` (`i < MAX_SERVICES`).
pub fn vip(i: usize) -> Option<Ipv4Addr> {
    let mut rest = i;
    for block in SERVICE_BLOCKS {
        if rest < block.hosts() {
            let offset = u32::try_from(rest + 1).ok()?;
            return Some(Ipv4Addr::from(u32::from(block.network) + offset));
        }
        rest -= block.hosts();
    }
    None
}

/// The NodePort of Service `i`, if it has one.
pub fn node_port(i: usize) -> Option<u16> {
    (i < NODEPORT_MAX).then(|| NODEPORT_BASE + i as u16)
}

/// How many of `services` Services have a NodePort.
pub fn node_ports(services: usize) -> usize {
    services.min(NODEPORT_MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn room_for_100k_services_each_address_once() {
        assert_eq!(MAX_SERVICES, 106_490);
        let all: HashSet<Ipv4Addr> = (0..MAX_SERVICES).map(|i| vip(i).expect("vip")).collect();
        assert_eq!(all.len(), MAX_SERVICES);
        assert_eq!(vip(MAX_SERVICES), None);
        assert_eq!(vip(0), Some(Ipv4Addr::new(198, 19, 0, 1)));
        assert_eq!(vip(65_533), Some(Ipv4Addr::new(198, 19, 255, 254)));
        assert_eq!(vip(65_534), Some(Ipv4Addr::new(198, 18, 128, 1)));
        assert_eq!(vip(99_999), Some(Ipv4Addr::new(198, 18, 38, 164)));
    }

    #[test]
    fn blocks_stay_in_the_benchmark_range_and_clear_of_the_harness_networks() {
        let used = [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 100, 101, 110, 120];
        for i in (0..MAX_SERVICES).step_by(97).chain([MAX_SERVICES - 1]) {
            let ip = vip(i).expect("vip").octets();
            assert!(ip[0] == 198 && (ip[1] == 18 || ip[1] == 19), "{ip:?}");
            assert!(ip[1] == 19 || !used.contains(&ip[2]), "{ip:?}");
            assert!(
                ip[3] != 0 || !ip[2].is_multiple_of(32),
                "a block's network address: {ip:?}"
            );
        }
        for (a, b) in [(0, 1), (0, 2), (1, 2)] {
            let (a, b) = (SERVICE_BLOCKS[a], SERVICE_BLOCKS[b]);
            assert!(!a.contains(b.network) && !b.contains(a.network));
        }
    }

    #[test]
    fn node_ports_for_the_first_20k() {
        assert_eq!(node_port(0), Some(30_000));
        assert_eq!(node_port(19_999), Some(49_999));
        assert_eq!(node_port(20_000), None);
        assert_eq!(node_ports(100_000), 20_000);
        assert_eq!(node_ports(10), 10);
    }
}
