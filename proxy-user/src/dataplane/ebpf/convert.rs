//! Model types <-> the kernel's map layout (network byte order; every address 16 bytes,
//! an IPv4 one in its IPv4-mapped form, as `proxy_common::Addr` says).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proxy_common::{
    Addr, Backend, Frontend, SERVICE_KIND_MASK, SERVICE_LOCAL_ONLY, v4_mapped, v4_of,
};

use crate::model::{BackendAddr, FrontendAddr, FrontendKind, Protocol};

/// An address in the maps' form.
pub fn addr_of(ip: impl Into<IpAddr>) -> Addr {
    match ip.into() {
        IpAddr::V4(v4) => v4_mapped(u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [word(0), word(4), word(8), word(12)]
        }
    }
}

/// An address of the maps, IPv4 for an IPv4-mapped one.
pub fn ip_of(addr: &Addr) -> IpAddr {
    if let Some(v4) = v4_of(addr) {
        return IpAddr::V4(Ipv4Addr::from(v4.to_ne_bytes()));
    }
    let mut octets = [0u8; 16];
    for (chunk, word) in octets.chunks_exact_mut(4).zip(addr) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    IpAddr::V6(Ipv6Addr::from(octets))
}

/// Bits of the 128-bit key address a source range of `bits` covers (an IPv4 range is a
/// prefix of the IPv4-mapped block).
pub fn range_bits(net: impl Into<IpAddr>, bits: u8) -> u8 {
    match net.into() {
        IpAddr::V4(_) => 96 + bits.min(32),
        IpAddr::V6(_) => bits.min(128),
    }
}

/// A source range back from its key address and the bits of it the key covers.
pub fn range_of(addr: &Addr, key_bits: u8) -> (IpAddr, u8) {
    let ip = ip_of(addr);
    match ip {
        IpAddr::V4(_) => (ip, key_bits.saturating_sub(96)),
        IpAddr::V6(_) => (ip, key_bits),
    }
}

pub fn frontend(addr: &FrontendAddr) -> Frontend {
    Frontend {
        addr: addr_of(addr.ip),
        port: addr.port.to_be(),
        proto: addr.protocol.number(),
        scope: proxy_common::SCOPE_SOCKET,
    }
}

pub fn frontend_addr(fe: &Frontend) -> Option<FrontendAddr> {
    Some(FrontendAddr {
        ip: ip_of(&fe.addr),
        port: u16::from_be(fe.port),
        protocol: Protocol::from_number(fe.proto)?,
    })
}

pub fn backend(addr: &BackendAddr) -> Backend {
    Backend {
        addr: addr_of(addr.ip),
        port: addr.port.to_be(),
        _pad: 0,
    }
}

pub fn backend_addr(be: &Backend) -> BackendAddr {
    BackendAddr {
        ip: ip_of(&be.addr),
        port: u16::from_be(be.port),
    }
}

/// `Service::flags` for a frontend.
pub fn service_flags(kind: FrontendKind, local_only: bool) -> u8 {
    let kind = FrontendKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(0) as u8;
    kind | if local_only { SERVICE_LOCAL_ONLY } else { 0 }
}

/// Kind and local-only back from `Service::flags`.
pub fn from_service_flags(flags: u8) -> (FrontendKind, bool) {
    let kind = FrontendKind::ALL[(flags & SERVICE_KIND_MASK) as usize];
    (kind, flags & SERVICE_LOCAL_ONLY != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_both_families_round_trip_and_ipv4_is_mapped() {
        for text in ["198.19.0.10", "2001:db8:19::a", "::1", "0.0.0.0"] {
            let ip: IpAddr = text.parse().expect("ip");
            assert_eq!(ip_of(&addr_of(ip)), ip, "{text}");
        }
        let v6: Ipv6Addr = "2001:db8::1".parse().expect("ip");
        let words = addr_of(v6);
        assert_eq!(words[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(words[3].to_ne_bytes(), [0, 0, 0, 1]);
        // A dual-stack socket's ::ffff:a.b.c.d is the IPv4 frontend's key.
        let mapped: Ipv6Addr = "::ffff:198.19.0.10".parse().expect("ip");
        assert_eq!(addr_of(mapped), addr_of(Ipv4Addr::new(198, 19, 0, 10)));
    }

    #[test]
    fn source_ranges_of_both_families_cover_their_own_bits() {
        let v4 = Ipv4Addr::new(198, 18, 0, 0);
        assert_eq!(range_bits(v4, 15), 111);
        assert_eq!(range_of(&addr_of(v4), 111), (IpAddr::V4(v4), 15));
        let v6: Ipv6Addr = "2001:db8::".parse().expect("ip");
        assert_eq!(range_bits(v6, 32), 32);
        assert_eq!(range_of(&addr_of(v6), 32), (IpAddr::V6(v6), 32));
    }

    #[test]
    fn round_trips_in_network_order() {
        let addr = FrontendAddr {
            ip: Ipv4Addr::new(198, 19, 0, 10).into(),
            port: 8080,
            protocol: Protocol::Udp,
        };
        let fe = frontend(&addr);
        assert_eq!(fe.addr[3].to_ne_bytes(), [198, 19, 0, 10]);
        assert_eq!(fe.addr[2].to_ne_bytes(), [0, 0, 0xff, 0xff]);
        assert_eq!(fe.port.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!(frontend_addr(&fe), Some(addr));
        let b = BackendAddr {
            ip: Ipv4Addr::new(198, 18, 1, 2).into(),
            port: 53,
        };
        assert_eq!(backend_addr(&backend(&b)), b);
        for kind in FrontendKind::ALL {
            for local in [false, true] {
                assert_eq!(
                    from_service_flags(service_flags(kind, local)),
                    (kind, local)
                );
            }
        }
    }
}
