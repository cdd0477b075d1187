//! The node interfaces the tc programs attach to (`--interfaces`): each one's index and
//! the addresses, one per family, a flow leaving through it is source-NATed to.

use std::{
    ffi::CStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    /// The first IPv4 address, if any.
    pub addr: Option<Ipv4Addr>,
    /// The first global IPv6 address (not link-local), if any.
    pub addr6: Option<Ipv6Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("--interfaces {0}: no such interface in this network namespace")]
    Missing(String),
    #[error(
        "--interfaces {0}: the interface has no IPv4 or global IPv6 address, so flows leaving through it cannot be source-NATed"
    )]
    NoAddress(String),
    #[error("listing the network interfaces")]
    List(#[source] std::io::Error),
}

/// Every IPv4 and IPv6 address of every interface: (name, index, address), in the
/// kernel's order.
fn addresses() -> Result<Vec<(String, u32, IpAddr)>, InterfaceError> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(InterfaceError::List(std::io::Error::last_os_error()));
    }
    let mut out = Vec::new();
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned, valid until freeifaddrs.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        let addr: IpAddr = match i32::from(unsafe { (*entry.ifa_addr).sa_family }) {
            libc::AF_INET => {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into()
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                Ipv6Addr::from(sin6.sin6_addr.s6_addr).into()
            }
            _ => continue,
        };
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let index = unsafe { libc::if_nametoindex(entry.ifa_name) };
        out.push((name, index, addr));
    }
    // SAFETY: the list came from getifaddrs and is not used after this.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// An IPv6 address a flow can be source-NATed to: not link-local (fe80::/10), which
/// another node's backend cannot answer beyond the link, nor loopback.
fn snat_capable(addr: &Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 != 0xfe80 && !addr.is_unspecified() && !addr.is_loopback()
}

/// The named interfaces, each with its first IPv4 and first global IPv6 address.
pub fn resolve(names: &[String]) -> Result<Vec<Interface>, InterfaceError> {
    let all = addresses()?;
    names
        .iter()
        .map(|name| {
            let mine = all.iter().filter(|(n, _, _)| n == name);
            let ifindex = mine.clone().map(|(_, i, _)| *i).next();
            let addr = mine.clone().find_map(|(_, _, a)| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            });
            let addr6 = mine.clone().find_map(|(_, _, a)| match a {
                IpAddr::V6(a) if snat_capable(a) => Some(*a),
                _ => None,
            });
            match ifindex {
                Some(ifindex) if addr.is_some() || addr6.is_some() => Ok(Interface {
                    name: name.clone(),
                    ifindex,
                    addr,
                    addr6,
                }),
                _ => match index_of(name) {
                    Err(_) => Err(InterfaceError::Missing(name.clone())),
                    Ok(_) => Err(InterfaceError::NoAddress(name.clone())),
                },
            }
        })
        .collect()
}

/// The interfaces carrying any of `node_addresses`: `--interfaces`' default.
pub fn carrying(node_addresses: &[IpAddr]) -> Result<Vec<String>, InterfaceError> {
    let mut names: Vec<String> = Vec::new();
    for (name, _, addr) in addresses()? {
        if node_addresses.contains(&addr) && !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// The index of interface `interface` in this network namespace.
pub fn index_of(interface: &str) -> std::io::Result<u32> {
    let name = std::ffi::CString::new(interface).map_err(std::io::Error::other)?;
    // SAFETY: name is NUL-terminated.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(index)
}

/// Every interface of this process's network namespace, as (ifindex, name). (Not
/// /sys/class/net: that is the namespace sysfs was mounted in.)
pub fn all() -> Vec<(u32, String)> {
    // SAFETY: if_nameindex returns an array ended by a zero entry, or NULL.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Vec::new();
    }
    let mut found = Vec::new();
    let mut entry = list;
    // SAFETY: walked up to the terminating entry, then freed once.
    unsafe {
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*entry).if_name);
            found.push(((*entry).if_index, name.to_string_lossy().into_owned()));
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_and_loopback_ipv6_addresses_are_no_source_nat_address() {
        let ip = |t: &str| t.parse::<Ipv6Addr>().expect("address");
        assert!(snat_capable(&ip("2001:db8::1")));
        assert!(!snat_capable(&ip("fe80::1")));
        assert!(!snat_capable(&ip("::1")));
        assert!(!snat_capable(&ip("::")));
    }

    #[test]
    fn loopback_resolves_and_a_missing_interface_is_named() {
        let lo = resolve(&["lo".to_string()]).expect("lo has 127.0.0.1");
        assert_eq!(lo[0].addr, Some(Ipv4Addr::LOCALHOST));
        assert!(lo[0].ifindex > 0);
        assert_eq!(lo[0].addr6, None, "::1 is no source-NAT address");
        let missing = resolve(&["epx-no-such0".to_string()]).expect_err("missing");
        assert_eq!(
            missing.to_string(),
            "--interfaces epx-no-such0: no such interface in this network namespace"
        );
        assert_eq!(
            carrying(&[Ipv4Addr::LOCALHOST.into()]).expect("listed"),
            ["lo".to_string()]
        );
    }
}
