//! Chain names, computed as kube-proxy computes them (pkg/proxy/iptables/proxier.go):
//! the first 16 characters of base32(sha256(servicePortName + protocol [+ endpoint])).

use data_encoding::BASE32;
use sha2::{Digest as _, Sha256};

use crate::model::{BackendAddr, Protocol};

/// kube-proxy's masquerade mark, bit 14.
pub const MASQ_MARK: &str = "0x4000";

/// The protocol as kube-proxy hashes it: lower case.
pub fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

fn hash16(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut encoded = BASE32.encode(&digest);
    encoded.truncate(16);
    encoded
}

/// `{prefix}` + the hash of a service port: the chains kube-proxy keeps per service port
/// share one hash and differ by prefix.
fn port_chain(prefix: &str, service_port: &str, protocol: Protocol) -> String {
    format!(
        "{prefix}{}",
        hash16(&format!("{service_port}{}", protocol_name(protocol)))
    )
}

/// `KUBE-SVC-…` for a service port (`namespace/name` or `namespace/name:port`).
pub fn service_chain(service_port: &str, protocol: Protocol) -> String {
    port_chain("KUBE-SVC-", service_port, protocol)
}

/// `KUBE-SVL-…`: the service's local endpoints (internalTrafficPolicy Local).
pub fn local_service_chain(service_port: &str, protocol: Protocol) -> String {
    port_chain("KUBE-SVL-", service_port, protocol)
}

/// `KUBE-EXT-…`: external traffic (NodePort, ExternalIPs, LoadBalancer IPs).
pub fn external_chain(service_port: &str, protocol: Protocol) -> String {
    port_chain("KUBE-EXT-", service_port, protocol)
}

/// `KUBE-FW-…`: the loadBalancerSourceRanges firewall of a service port's LB IPs.
pub fn firewall_chain(service_port: &str, protocol: Protocol) -> String {
    port_chain("KUBE-FW-", service_port, protocol)
}

/// `KUBE-SEP-…` for one endpoint of a service port.
pub fn endpoint_chain(service_port: &str, protocol: Protocol, endpoint: &BackendAddr) -> String {
    format!(
        "KUBE-SEP-{}",
        hash16(&format!(
            "{service_port}{}{endpoint}",
            protocol_name(protocol)
        ))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(text: &str) -> BackendAddr {
        let (ip, port) = text.split_once(':').expect("ip:port");
        BackendAddr {
            ip: ip.parse().expect("ip"),
            port: port.parse().expect("port"),
        }
    }

    /// The vectors of ../shared/reference/kube-proxy.md (from real iptables-save output)
    /// and of kube-proxy's own proxier tests.
    #[test]
    fn names_match_kube_proxy() {
        assert_eq!(
            service_chain("default/kubernetes:https", Protocol::Tcp),
            "KUBE-SVC-NPX46M4PTMTKRN6Y"
        );
        assert_eq!(
            service_chain("kube-system/kube-dns:dns", Protocol::Udp),
            "KUBE-SVC-TCOU7JCQXEZGVUNU"
        );
        assert_eq!(
            service_chain("kube-system/kube-dns:dns-tcp", Protocol::Tcp),
            "KUBE-SVC-ERIFXISQEP7F7OF4"
        );
        assert_eq!(
            endpoint_chain(
                "default/kubernetes:https",
                Protocol::Tcp,
                &ep("172.18.0.2:6443")
            ),
            "KUBE-SEP-V2PECCYPB6X2GSCW"
        );
        assert_eq!(
            service_chain("ns1/svc1:p80", Protocol::Tcp),
            "KUBE-SVC-XPGD46QRK7WJZT7O"
        );
        assert_eq!(
            external_chain("ns1/svc1:p80", Protocol::Tcp),
            "KUBE-EXT-XPGD46QRK7WJZT7O"
        );
        assert_eq!(
            local_service_chain("ns1/svc1:p80", Protocol::Tcp),
            "KUBE-SVL-XPGD46QRK7WJZT7O"
        );
        assert_eq!(
            endpoint_chain("ns1/svc1:p80", Protocol::Tcp, &ep("10.180.0.1:80")),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        assert_eq!(
            service_chain("ns4/svc4:p80", Protocol::Tcp),
            "KUBE-SVC-4SW47YFZTEDKD3PK"
        );
        assert_eq!(
            endpoint_chain("ns4/svc4:p80", Protocol::Tcp, &ep("10.180.0.4:80")),
            "KUBE-SEP-UKSFD7AGPMPPLUHC"
        );
        assert_eq!(
            endpoint_chain("ns4/svc4:p80", Protocol::Tcp, &ep("10.180.0.5:80")),
            "KUBE-SEP-C6EBXVWJJZMIWKLZ"
        );
    }
}
