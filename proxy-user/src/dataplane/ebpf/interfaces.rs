//! The node interfaces the tc programs attach to (`--interfaces`): each one's index and
//! the IPv4 address a flow leaving through it is source-NATed to.

use std::{ffi::CStr, net::Ipv4Addr};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub addr: Ipv4Addr,
}

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("--interfaces {0}: no such interface in this network namespace")]
    Missing(String),
    #[error(
        "--interfaces {0}: the interface has no IPv4 address, so flows leaving through it cannot be source-NATed"
    )]
    NoAddress(String),
    #[error("listing the network interfaces")]
    List(#[source] std::io::Error),
}

/// Every IPv4 address of every interface: (name, index, address), in the kernel's order.
fn addresses() -> Result<Vec<(String, u32, Ipv4Addr)>, InterfaceError> {
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
        if entry.ifa_addr.is_null()
            || i32::from(unsafe { (*entry.ifa_addr).sa_family }) != libc::AF_INET
        {
            continue;
        }
        // SAFETY: an AF_INET address is a sockaddr_in.
        let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let index = unsafe { libc::if_nametoindex(entry.ifa_name) };
        out.push((
            name,
            index,
            Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
        ));
    }
    // SAFETY: the list came from getifaddrs and is not used after this.
    unsafe { libc::freeifaddrs(list) };
    Ok(out)
}

/// The named interfaces, each with its first IPv4 address.
pub fn resolve(names: &[String]) -> Result<Vec<Interface>, InterfaceError> {
    let all = addresses()?;
    names
        .iter()
        .map(|name| {
            if let Some((_, ifindex, addr)) = all.iter().find(|(n, _, _)| n == name) {
                return Ok(Interface {
                    name: name.clone(),
                    ifindex: *ifindex,
                    addr: *addr,
                });
            }
            match index_of(name) {
                Err(_) => Err(InterfaceError::Missing(name.clone())),
                Ok(_) => Err(InterfaceError::NoAddress(name.clone())),
            }
        })
        .collect()
}

/// The interfaces carrying any of `node_addresses`: `--interfaces`' default.
pub fn carrying(node_addresses: &[Ipv4Addr]) -> Result<Vec<String>, InterfaceError> {
    let mut names: Vec<String> = addresses()?
        .into_iter()
        .filter(|(_, _, addr)| node_addresses.contains(addr))
        .map(|(name, _, _)| name)
        .collect();
    names.dedup();
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
    fn loopback_resolves_and_a_missing_interface_is_named() {
        let lo = resolve(&["lo".to_string()]).expect("lo has 127.0.0.1");
        assert_eq!(lo[0].addr, Ipv4Addr::LOCALHOST);
        assert!(lo[0].ifindex > 0);
        let missing = resolve(&["epx-no-such0".to_string()]).expect_err("missing");
        assert_eq!(
            missing.to_string(),
            "--interfaces epx-no-such0: no such interface in this network namespace"
        );
        assert_eq!(
            carrying(&[Ipv4Addr::LOCALHOST]).expect("listed"),
            ["lo".to_string()]
        );
    }
}
