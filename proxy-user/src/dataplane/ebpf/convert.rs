//! Model types <-> the kernel's map layout (network byte order).

use std::net::Ipv4Addr;

use proxy_common::{Backend, Frontend, SERVICE_KIND_MASK, SERVICE_LOCAL_ONLY};

use crate::model::{BackendAddr, FrontendAddr, FrontendKind, Protocol};

pub fn frontend(addr: &FrontendAddr) -> Frontend {
    Frontend {
        addr: u32::from_ne_bytes(addr.ip.octets()),
        port: addr.port.to_be(),
        proto: addr.protocol.number(),
        scope: proxy_common::SCOPE_SOCKET,
    }
}

pub fn frontend_addr(fe: &Frontend) -> Option<FrontendAddr> {
    Some(FrontendAddr {
        ip: Ipv4Addr::from(fe.addr.to_ne_bytes()),
        port: u16::from_be(fe.port),
        protocol: Protocol::from_number(fe.proto)?,
    })
}

pub fn backend(addr: &BackendAddr) -> Backend {
    Backend {
        addr: u32::from_ne_bytes(addr.ip.octets()),
        port: addr.port.to_be(),
        _pad: 0,
    }
}

pub fn backend_addr(be: &Backend) -> BackendAddr {
    BackendAddr {
        ip: Ipv4Addr::from(be.addr.to_ne_bytes()),
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
    fn round_trips_in_network_order() {
        let addr = FrontendAddr {
            ip: Ipv4Addr::new(198, 19, 0, 10),
            port: 8080,
            protocol: Protocol::Udp,
        };
        let fe = frontend(&addr);
        assert_eq!(fe.addr.to_ne_bytes(), [198, 19, 0, 10]);
        assert_eq!(fe.port.to_ne_bytes(), 8080u16.to_be_bytes());
        assert_eq!(frontend_addr(&fe), Some(addr));
        let b = BackendAddr {
            ip: Ipv4Addr::new(198, 18, 1, 2),
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
