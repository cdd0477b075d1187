//! The addresses and ports of the benchmark, per address family: ClusterIPs from three
//! blocks of 198.18.0.0/15 (room for 106,490 Services) or from 2001:db8:19::/64 (room for
//! every scale), NodePorts for the first 20,000, and the links of its namespaces
//! ([`Addressing`]).
//!
//! The IPv4 blocks keep clear of every network the harness uses: the benchmark's own
//! 198.18.0.0/24 (node to server), 198.18.1.0/24 (backends) and 198.18.9.0/24 (node to
//! outside); [`crate::Topology`]'s 198.18.(i+1).0/24 per backend (a handful); and
//! [`crate::two_nodes`]' 198.18.100-120.0/24. The IPv6 plan mirrors it in 2001:db8::/32:
//! 2001:db8:18::/64 (node to server), 2001:db8:18:1::/64 (backends), 2001:db8:18:9::/64
//! (node to outside), Services in 2001:db8:19::/64.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use serde::{Deserialize, Serialize};

/// The address family a benchmark run measures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

impl Family {
    /// `IPv4`, `IPv6`: as Kubernetes spells it (`ipFamilies`, `addressType`).
    pub const fn kubernetes(self) -> &'static str {
        match self {
            Self::Ipv4 => "IPv4",
            Self::Ipv6 => "IPv6",
        }
    }

    /// The socket program that translates this family's connects.
    pub const fn connect_program(self) -> &'static str {
        match self {
            Self::Ipv4 => proxy_common::names::PROG_CONNECT4,
            Self::Ipv6 => proxy_common::names::PROG_CONNECT6,
        }
    }

    /// `connect4`, `connect6`: the program's name in the report's columns.
    pub const fn connect_short(self) -> &'static str {
        match self {
            Self::Ipv4 => "connect4",
            Self::Ipv6 => "connect6",
        }
    }

    /// The namespaces' addresses for this family.
    pub const fn addressing(self) -> &'static Addressing {
        match self {
            Self::Ipv4 => &ADDRESSING4,
            Self::Ipv6 => &ADDRESSING6,
        }
    }

    /// How many Services have a ClusterIP of this family.
    pub const fn max_services(self) -> usize {
        match self {
            Self::Ipv4 => MAX_SERVICES,
            Self::Ipv6 => MAX_SERVICES6,
        }
    }

    /// The ClusterIP of Service `i` (`i < self.max_services()`).
    pub fn vip(self, i: usize) -> Option<IpAddr> {
        match self {
            Self::Ipv4 => vip(i).map(IpAddr::V4),
            Self::Ipv6 => vip6(i).map(IpAddr::V6),
        }
    }

    /// The routes (CIDRs) that cover every ClusterIP of this family.
    pub fn service_routes(self) -> Vec<String> {
        match self {
            Self::Ipv4 => SERVICE_BLOCKS.iter().map(Block::cidr).collect(),
            Self::Ipv6 => vec![SERVICE_BLOCK6.into()],
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kubernetes())
    }
}

/// The benchmark's namespaces, addressed in one family: the node (client namespace) and
/// the server on one link, the backends on the server, the node and the outside client on
/// another link.
#[derive(Debug, PartialEq, Eq)]
pub struct Addressing {
    /// `ip` address selector: `-4` or `-6`.
    pub ip_flag: &'static str,
    /// Prefix length of the two links.
    pub link_prefix: u8,
    /// Prefix length of one backend address.
    pub host_prefix: u8,
    /// The node's address toward the server.
    pub node_to_server: &'static str,
    /// The server's address toward the node.
    pub server: &'static str,
    /// The backends' network (routed to the server).
    pub backend_net: &'static str,
    /// The five backend addresses, on the server.
    pub backends: [&'static str; 5],
    /// The node's address toward the outside namespace (its Node object's).
    pub node: &'static str,
    /// The outside client's address.
    pub outside: &'static str,
    /// The node-to-outside link's network (routed back to the node by the server).
    pub outside_net: &'static str,
}

const ADDRESSING4: Addressing = Addressing {
    ip_flag: "-4",
    link_prefix: 24,
    host_prefix: 32,
    node_to_server: "198.18.0.1",
    server: "198.18.0.2",
    backend_net: "198.18.1.0/24",
    backends: [
        "198.18.1.2",
        "198.18.1.3",
        "198.18.1.4",
        "198.18.1.5",
        "198.18.1.6",
    ],
    node: "198.18.9.1",
    outside: "198.18.9.2",
    outside_net: "198.18.9.0/24",
};

const ADDRESSING6: Addressing = Addressing {
    ip_flag: "-6",
    link_prefix: 64,
    host_prefix: 128,
    node_to_server: "2001:db8:18::1",
    server: "2001:db8:18::2",
    backend_net: "2001:db8:18:1::/64",
    backends: [
        "2001:db8:18:1::2",
        "2001:db8:18:1::3",
        "2001:db8:18:1::4",
        "2001:db8:18:1::5",
        "2001:db8:18:1::6",
    ],
    node: "2001:db8:18:9::1",
    outside: "2001:db8:18:9::2",
    outside_net: "2001:db8:18:9::/64",
};

/// `IP:PORT`, with brackets around an IPv6 address (`[2001:db8::1]:80`), as loadgen and
/// the agent's manifests read it. `ip` is one of this module's addresses.
pub fn socket(ip: &str, port: u16) -> String {
    match ip.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{ip}:{port}"),
    }
}

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

/// The IPv6 ClusterIPs: Service `i` gets 2001:db8:19::(i+1).
pub const SERVICE_BLOCK6: &str = "2001:db8:19::/64";
const SERVICE_NETWORK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x19, 0, 0, 0, 0, 0);

/// How many IPv6 Services the benchmark hands out addresses for: as many as IPv4 (the
/// /64 would hold far more), so `--scales` means the same in both families.
pub const MAX_SERVICES6: usize = MAX_SERVICES;

/// The IPv6 ClusterIP of Service `i` (`i < MAX_SERVICES6`).
pub fn vip6(i: usize) -> Option<Ipv6Addr> {
    if i >= MAX_SERVICES6 {
        return None;
    }
    let offset = u128::try_from(i + 1).ok()?;
    Some(Ipv6Addr::from(u128::from(SERVICE_NETWORK6) + offset))
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
    fn ipv6_services_fill_their_own_block_each_address_once() {
        let all: HashSet<IpAddr> = (0..MAX_SERVICES6)
            .map(|i| Family::Ipv6.vip(i).expect("vip6"))
            .collect();
        assert_eq!(all.len(), MAX_SERVICES6);
        assert_eq!(Family::Ipv6.vip(MAX_SERVICES6), None);
        assert_eq!(vip6(0), Some("2001:db8:19::1".parse().expect("v6")));
        assert_eq!(vip6(65_535), Some("2001:db8:19::1:0".parse().expect("v6")));
        let in_block = |ip: &IpAddr| match ip {
            IpAddr::V6(v6) => v6.segments()[..4] == SERVICE_NETWORK6.segments()[..4],
            IpAddr::V4(_) => false,
        };
        assert!(
            all.iter().all(in_block),
            "every ClusterIP in {SERVICE_BLOCK6}"
        );
        assert_eq!(Family::Ipv6.service_routes(), [SERVICE_BLOCK6]);
    }

    #[test]
    fn each_family_keeps_its_addresses_apart_and_in_the_test_ranges() {
        for family in [Family::Ipv4, Family::Ipv6] {
            let a = family.addressing();
            let mut all: Vec<&str> = vec![a.node_to_server, a.server, a.node, a.outside];
            all.extend(a.backends);
            let unique: HashSet<&str> = all.iter().copied().collect();
            assert_eq!(unique.len(), all.len(), "{family}");
            for ip in all {
                let ip: IpAddr = ip.parse().expect("address");
                match ip {
                    IpAddr::V4(v4) => {
                        assert_eq!(family, Family::Ipv4);
                        assert!(v4.octets()[0] == 198 && v4.octets()[1] & 0xfe == 18, "{v4}");
                    }
                    IpAddr::V6(v6) => {
                        assert_eq!(family, Family::Ipv6);
                        assert_eq!(v6.segments()[..2], [0x2001, 0xdb8], "{v6}");
                    }
                }
            }
        }
        assert_eq!(socket("2001:db8:18:1::2", 9100), "[2001:db8:18:1::2]:9100");
        assert_eq!(socket("198.18.1.2", 9100), "198.18.1.2:9100");
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
