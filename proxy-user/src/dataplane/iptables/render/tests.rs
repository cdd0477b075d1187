//! Golden tests: what we render for a set of frontends, against the rules kube-proxy's
//! iptables proxier produces for the same Services and endpoints (its own test
//! expectations, TestOverallIPTablesRules and its session affinity test). Compared chain
//! by chain as kube-proxy's tests compare them: declarations as a set, rules in order
//! within each chain.

use std::{collections::BTreeMap, net::Ipv4Addr};

use super::*;
use crate::model::{BackendAddr, Protocol, SourceRanges, WeightedBackend};

fn frontend(ip: &str, port: u16) -> FrontendAddr {
    FrontendAddr {
        ip: ip.parse().expect("ip"),
        port,
        protocol: Protocol::Tcp,
    }
}

fn spec(service: &str, affinity: u32, endpoints: &[(&str, u32)]) -> FrontendSpec {
    FrontendSpec {
        serving_anywhere: endpoints.iter().any(|(_, w)| *w > 0),
        service: service.into(),
        kind: FrontendKind::ClusterIp,
        affinity_timeout_s: affinity,
        local_only: false,
        backends: endpoints
            .iter()
            .map(|(ep, weight)| {
                // `ip:port`, or `[ip]:port` for IPv6.
                let (ip, port) = ep.rsplit_once(':').expect("ip:port");
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                WeightedBackend {
                    flows_only: false,
                    addr: BackendAddr {
                        ip: ip.parse().expect("ip"),
                        port: port.parse().expect("port"),
                    },
                    weight: *weight,
                }
            })
            .collect(),
        source_ranges: None,
        health_check_node_port: None,
        external_local: None,
    }
}

/// Chain declarations, and each chain's rules in order.
fn by_chain(text: &str) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
    let mut declared = Vec::new();
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(chain) = line.strip_prefix(':') {
            declared.push(chain.split_whitespace().next().unwrap_or("").to_owned());
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("").to_owned();
            rules.entry(chain).or_default().push(line.to_owned());
        }
    }
    declared.sort();
    (declared, rules)
}

fn options() -> RenderOptions {
    RenderOptions {
        cluster_cidr: Some((Ipv4Addr::new(10, 0, 0, 0).into(), 8)),
        random_fully: false,
        ..RenderOptions::default()
    }
}

#[test]
fn cluster_ip_services_as_kube_proxy_writes_them() {
    let state: DesiredState = [
        (
            frontend("172.30.0.41", 80),
            spec("ns1/svc1:p80", 0, &[("10.180.0.1:80", 1)]),
        ),
        (
            frontend("172.30.0.44", 80),
            spec(
                "ns4/svc4:p80",
                0,
                &[("10.180.0.4:80", 1), ("10.180.0.5:80", 1)],
            ),
        ),
    ]
    .into();
    let expected = r#"
*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-C6EBXVWJJZMIWKLZ - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]
:KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
COMMIT
"#;
    assert_eq!(by_chain(&nat_table(&state, &options())), by_chain(expected));
}

#[test]
fn client_ip_affinity_as_kube_proxy_writes_it() {
    let state: DesiredState = [(
        frontend("172.30.1.1", 80),
        spec(
            "ns1/svc1",
            10_800,
            &[("10.0.1.1:80", 1), ("10.0.1.2:80", 1), ("10.0.1.5:80", 1)],
        ),
    )]
    .into();
    let rendered = by_chain(&nat_table(&state, &options())).1;
    let svc = &rendered["KUBE-SVC-AQI2S6QIMU7PVVRP"];
    assert_eq!(
        svc[..4],
        [
            r#"-A KUBE-SVC-AQI2S6QIMU7PVVRP -m comment --comment "ns1/svc1 cluster IP" -m tcp -p tcp -d 172.30.1.1 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"#,
            r#"-A KUBE-SVC-AQI2S6QIMU7PVVRP -m comment --comment "ns1/svc1 -> 10.0.1.1:80" -m recent --name KUBE-SEP-3JOIVZTXZZRGORX4 --rcheck --seconds 10800 --reap -j KUBE-SEP-3JOIVZTXZZRGORX4"#,
            r#"-A KUBE-SVC-AQI2S6QIMU7PVVRP -m comment --comment "ns1/svc1 -> 10.0.1.2:80" -m recent --name KUBE-SEP-IO5XOSKPAXIFQXAJ --rcheck --seconds 10800 --reap -j KUBE-SEP-IO5XOSKPAXIFQXAJ"#,
            r#"-A KUBE-SVC-AQI2S6QIMU7PVVRP -m comment --comment "ns1/svc1 -> 10.0.1.5:80" -m recent --name KUBE-SEP-EQCHZ7S2PJ72OHAY --rcheck --seconds 10800 --reap -j KUBE-SEP-EQCHZ7S2PJ72OHAY"#,
        ]
    );
    assert_eq!(
        rendered["KUBE-SEP-IO5XOSKPAXIFQXAJ"],
        [
            "-A KUBE-SEP-IO5XOSKPAXIFQXAJ -m comment --comment ns1/svc1 -s 10.0.1.2 -j KUBE-MARK-MASQ",
            "-A KUBE-SEP-IO5XOSKPAXIFQXAJ -m comment --comment ns1/svc1 -m recent --name KUBE-SEP-IO5XOSKPAXIFQXAJ --set -m tcp -p tcp -j DNAT --to-destination 10.0.1.2:80",
        ]
    );
    let statistic: Vec<&String> = svc
        .iter()
        .filter(|r| !r.contains("recent") && !r.contains("MARK-MASQ"))
        .collect();
    assert!(
        statistic[0].contains("--probability 0.3333333333 -j KUBE-SEP-3JOIVZTXZZRGORX4"),
        "{statistic:?}"
    );
    assert!(
        statistic[1].contains("--probability 0.5000000000 -j KUBE-SEP-IO5XOSKPAXIFQXAJ"),
        "{statistic:?}"
    );
    assert!(
        statistic[2].ends_with("-j KUBE-SEP-EQCHZ7S2PJ72OHAY")
            && !statistic[2].contains("statistic")
    );
}

#[test]
fn weights_change_probabilities_and_weight_zero_gets_no_rule() {
    let state: DesiredState = [(
        frontend("198.19.0.10", 80),
        spec(
            "demo/web:http",
            0,
            &[
                ("198.18.1.2:8080", 3),
                ("198.18.2.2:8080", 1),
                ("198.18.3.2:8080", 0),
            ],
        ),
    )]
    .into();
    let text = nat_table(&state, &RenderOptions::default());
    let svc = service_chain("demo/web:http", Protocol::Tcp);
    let rules = &by_chain(&text).1[&svc];
    assert_eq!(
        rules.len(),
        2,
        "no masquerade rule without a cluster CIDR, no rule for weight 0: {rules:?}"
    );
    assert!(rules[0].contains("--probability 0.7500000000"));
    assert!(
        !text.contains("198.18.3.2"),
        "the weight-0 endpoint has no chain either"
    );
}

#[test]
fn frontends_without_usable_endpoints_get_no_nat_rules() {
    let state: DesiredState = [(frontend("198.19.0.11", 80), spec("demo/empty", 0, &[]))].into();
    let text = nat_table(
        &state,
        &RenderOptions {
            random_fully: true,
            ..RenderOptions::default()
        },
    );
    assert!(!text.contains("demo/empty"), "{text}");
    assert!(text.contains("-j MASQUERADE --random-fully"));
}

/// A frontend of another kind, reached from outside with `external_local` endpoints.
fn external(
    kind: FrontendKind,
    spec: &FrontendSpec,
    external_local: Option<&[(&str, u32)]>,
) -> FrontendSpec {
    FrontendSpec {
        kind,
        external_local: external_local.map(|eps| self::spec("", 0, eps).backends.to_vec()),
        ..spec.clone()
    }
}

/// kube-proxy's TestOverallIPTablesRulesWithMultipleServices (proxier_test.go): its
/// expected text, whole, including the LoadBalancer with source ranges (ns5/svc5,
/// KUBE-FW and KUBE-PROXY-FIREWALL) and ns2/svc2's health check node port.
#[test]
fn node_ports_external_ips_and_load_balancers_as_kube_proxy_writes_them() {
    let svc1 = spec("ns1/svc1:p80", 0, &[("10.180.0.1:80", 1)]);
    let svc2 = spec("ns2/svc2:p80", 0, &[("10.180.0.2:80", 1)]);
    let svc3 = spec("ns3/svc3:p80", 0, &[("10.180.0.3:80", 1)]);
    let svc4 = spec(
        "ns4/svc4:p80",
        0,
        &[("10.180.0.4:80", 1), ("10.180.0.5:80", 1)],
    );
    let svc6 = spec("ns6/svc6:p80", 0, &[]);
    let svc5 = spec("ns5/svc5:p80", 0, &[("10.180.0.3:80", 1)]);
    let svc5_lb = FrontendSpec {
        source_ranges: Some(Box::new(SourceRanges {
            cidrs: vec![(Ipv4Addr::new(203, 0, 113, 0).into(), 25)],
            allow_node: false,
        })),
        ..external(FrontendKind::LoadBalancer, &svc5, None)
    };
    // The only endpoint of svc2 is on another node: no local endpoints. Its health
    // check node port is 30000.
    let local2: &[(&str, u32)] = &[];
    let svc2 = FrontendSpec {
        health_check_node_port: Some(30_000),
        ..svc2
    };
    let state: DesiredState = [
        (frontend("172.30.0.41", 80), svc1),
        (frontend("172.30.0.42", 80), svc2.clone()),
        (
            frontend("192.168.99.22", 80),
            external(FrontendKind::ExternalIp, &svc2, Some(local2)),
        ),
        (
            frontend("1.2.3.4", 80),
            external(FrontendKind::LoadBalancer, &svc2, Some(local2)),
        ),
        (
            frontend("192.168.0.2", 3001),
            external(FrontendKind::NodePort, &svc2, Some(local2)),
        ),
        (frontend("172.30.0.43", 80), svc3.clone()),
        (
            frontend("192.168.0.2", 3003),
            external(FrontendKind::NodePort, &svc3, None),
        ),
        (frontend("172.30.0.44", 80), svc4.clone()),
        (
            frontend("192.168.99.33", 80),
            external(FrontendKind::ExternalIp, &svc4, None),
        ),
        (frontend("172.30.0.46", 80), svc6),
        (frontend("172.30.0.45", 80), svc5.clone()),
        (frontend("5.6.7.8", 80), svc5_lb),
        (
            frontend("192.168.0.2", 3002),
            external(FrontendKind::NodePort, &svc5, None),
        ),
    ]
    .into();
    let expected_filter = r#"
*filter
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-NODEPORTS -m comment --comment "ns2/svc2:p80 health check node port" -m tcp -p tcp --dport 30000 -j ACCEPT
-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d 172.30.0.46 --dport 80 -j REJECT
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns2/svc2:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-PROXY-FIREWALL -m comment --comment "ns5/svc5:p80 traffic not accepted by KUBE-FW-NUKIZ6OKUXPJNT4C" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j DROP
COMMIT
"#;
    let expected_nat = r#"
*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXT-4SW47YFZTEDKD3PK - [0:0]
:KUBE-EXT-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-EXT-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-EXT-X27LE4BHSL4DOUIK - [0:0]
:KUBE-FW-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-C6EBXVWJJZMIWKLZ - [0:0]
:KUBE-SEP-I77PXRDZVX7PMWMN - [0:0]
:KUBE-SEP-OYPFS5VJICHGATKP - [0:0]
:KUBE-SEP-RS4RBKLTHTF2IUXJ - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SEP-UKSFD7AGPMPPLUHC - [0:0]
:KUBE-SVC-4SW47YFZTEDKD3PK - [0:0]
:KUBE-SVC-GNZBNJ2PO5MGZ6GT - [0:0]
:KUBE-SVC-NUKIZ6OKUXPJNT4C - [0:0]
:KUBE-SVC-X27LE4BHSL4DOUIK - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
-A KUBE-NODEPORTS -m comment --comment ns2/svc2:p80 -m tcp -p tcp --dport 3001 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-NODEPORTS -m comment --comment ns3/svc3:p80 -m tcp -p tcp --dport 3003 -j KUBE-EXT-X27LE4BHSL4DOUIK
-A KUBE-NODEPORTS -m comment --comment ns5/svc5:p80 -m tcp -p tcp --dport 3002 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 external IP" -m tcp -p tcp -d 192.168.99.22 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns2/svc2:p80 loadbalancer IP" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j KUBE-EXT-GNZBNJ2PO5MGZ6GT
-A KUBE-SERVICES -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns4/svc4:p80 external IP" -m tcp -p tcp -d 192.168.99.33 --dport 80 -j KUBE-EXT-4SW47YFZTEDKD3PK
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "ns5/svc5:p80 loadbalancer IP" -m tcp -p tcp -d 5.6.7.8 --dport 80 -j KUBE-FW-NUKIZ6OKUXPJNT4C
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-EXT-4SW47YFZTEDKD3PK -m comment --comment "masquerade traffic for ns4/svc4:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-4SW47YFZTEDKD3PK -j KUBE-SVC-4SW47YFZTEDKD3PK
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "pod traffic for ns2/svc2:p80 external destinations" -s 10.0.0.0/8 -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "masquerade LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-GNZBNJ2PO5MGZ6GT -m comment --comment "route LOCAL traffic for ns2/svc2:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-GNZBNJ2PO5MGZ6GT
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -m comment --comment "masquerade traffic for ns5/svc5:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-NUKIZ6OKUXPJNT4C -j KUBE-SVC-NUKIZ6OKUXPJNT4C
-A KUBE-EXT-X27LE4BHSL4DOUIK -m comment --comment "masquerade traffic for ns3/svc3:p80 external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-X27LE4BHSL4DOUIK -j KUBE-SVC-X27LE4BHSL4DOUIK
-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 loadbalancer IP" -s 203.0.113.0/25 -j KUBE-EXT-NUKIZ6OKUXPJNT4C
-A KUBE-FW-NUKIZ6OKUXPJNT4C -m comment --comment "other traffic to ns5/svc5:p80 will be dropped by KUBE-PROXY-FIREWALL"
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -s 10.180.0.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-C6EBXVWJJZMIWKLZ -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.5:80
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-I77PXRDZVX7PMWMN -m comment --comment ns5/svc5:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -s 10.180.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-OYPFS5VJICHGATKP -m comment --comment ns3/svc3:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.3:80
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -s 10.180.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-RS4RBKLTHTF2IUXJ -m comment --comment ns2/svc2:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.2:80
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -s 10.180.0.4 -j KUBE-MARK-MASQ
-A KUBE-SEP-UKSFD7AGPMPPLUHC -m comment --comment ns4/svc4:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.4:80
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 cluster IP" -m tcp -p tcp -d 172.30.0.44 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.4:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-UKSFD7AGPMPPLUHC
-A KUBE-SVC-4SW47YFZTEDKD3PK -m comment --comment "ns4/svc4:p80 -> 10.180.0.5:80" -j KUBE-SEP-C6EBXVWJJZMIWKLZ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 cluster IP" -m tcp -p tcp -d 172.30.0.42 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-GNZBNJ2PO5MGZ6GT -m comment --comment "ns2/svc2:p80 -> 10.180.0.2:80" -j KUBE-SEP-RS4RBKLTHTF2IUXJ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 cluster IP" -m tcp -p tcp -d 172.30.0.45 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-NUKIZ6OKUXPJNT4C -m comment --comment "ns5/svc5:p80 -> 10.180.0.3:80" -j KUBE-SEP-I77PXRDZVX7PMWMN
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 cluster IP" -m tcp -p tcp -d 172.30.0.43 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-X27LE4BHSL4DOUIK -m comment --comment "ns3/svc3:p80 -> 10.180.0.3:80" -j KUBE-SEP-OYPFS5VJICHGATKP
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
COMMIT
"#;
    assert_eq!(
        by_chain(&filter_table(&state, &options())),
        by_chain(expected_filter)
    );
    assert_eq!(
        by_chain(&nat_table(&state, &options())),
        by_chain(expected_nat)
    );
}

/// Local policies: KUBE-SVL holds this node's endpoints. internalTrafficPolicy Local
/// sends the ClusterIP there; externalTrafficPolicy Local sends outside traffic there
/// while pods and the node itself still reach every endpoint through KUBE-SVC.
#[test]
fn local_policies_use_the_svl_chain() {
    let cluster = [("10.180.0.1:80", 1), ("10.180.0.2:80", 1)];
    let local = [("10.180.0.2:80", 1)];
    let mut internal = spec("ns1/svc1:p80", 0, &local);
    internal.local_only = true;
    let node_port = external(
        FrontendKind::NodePort,
        &spec("ns1/svc1:p80", 0, &cluster),
        Some(&local),
    );
    let state: DesiredState = [
        (frontend("172.30.0.41", 80), internal),
        (frontend("192.168.0.2", 3001), node_port),
    ]
    .into();
    let (declared, rules) = by_chain(&nat_table(&state, &options()));
    let svl = local_service_chain("ns1/svc1:p80", Protocol::Tcp);
    let svc = service_chain("ns1/svc1:p80", Protocol::Tcp);
    let ext = external_chain("ns1/svc1:p80", Protocol::Tcp);
    assert!(
        rules["KUBE-SERVICES"][0].ends_with(&format!("--dport 80 -j {svl}")),
        "the ClusterIP goes to the local chain: {:?}",
        rules["KUBE-SERVICES"]
    );
    assert_eq!(
        rules[&svl],
        [
            format!(
                r#"-A {svl} -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"#
            ),
            format!(
                r#"-A {svl} -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -j KUBE-SEP-{}"#,
                &endpoint_chain(
                    "ns1/svc1:p80",
                    Protocol::Tcp,
                    &BackendAddr {
                        ip: Ipv4Addr::new(10, 180, 0, 2).into(),
                        port: 80
                    }
                )[9..]
            ),
        ]
    );
    assert_eq!(rules[&svc].len(), 2, "both endpoints: {:?}", rules[&svc]);
    assert_eq!(rules[&ext].last(), Some(&format!("-A {ext} -j {svl}")));
    assert_eq!(
        declared
            .iter()
            .filter(|c| c.starts_with("KUBE-SEP-"))
            .count(),
        2
    );
    let filter = filter_table(&state, &options());
    assert!(
        !filter.lines().any(
            |l| l.starts_with("-A KUBE-SERVICES") || l.starts_with("-A KUBE-EXTERNAL-SERVICES")
        ),
        "no REJECT or DROP: both chains have endpoints:\n{filter}"
    );

    // No local endpoint: the ClusterIP is dropped in the filter table, the NodePort keeps
    // serving node and pod traffic through KUBE-EXT -> KUBE-SVC and drops the rest.
    let mut state = state;
    for spec in state.values_mut() {
        if spec.kind == FrontendKind::ClusterIp {
            // Endpoints elsewhere still serve: a DROP, not a REJECT.
            spec.backends = Default::default();
            spec.serving_anywhere = true;
        } else {
            spec.external_local = Some(Vec::new());
        }
    }
    let filter = filter_table(&state, &options());
    assert!(filter.contains(r#"-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no local endpoints" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j DROP"#), "{filter}");
    assert!(filter.contains(r#"-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns1/svc1:p80 has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001 -j DROP"#), "{filter}");
    let (declared, rules) = by_chain(&nat_table(&state, &options()));
    assert!(!declared.contains(&svl), "{declared:?}");
    assert!(!rules[&ext].iter().any(|r| r.ends_with(&svl)));
    assert!(rules["KUBE-NODEPORTS"][0].ends_with(&format!("-j {ext}")));
}

/// kube-proxy with `--iptables-localhost-nodeports=false`: 127.0.0.0/8 is kept out of the
/// NodePort jump, and KUBE-FIREWALL (kubelet's, with the rule only localhost NodePorts
/// need) is not written.
#[test]
fn without_localhost_node_ports_loopback_is_left_out() {
    let state: DesiredState = [(
        frontend("192.168.0.2", 3001),
        external(
            FrontendKind::NodePort,
            &spec("ns1/svc1:p80", 0, &[("10.180.0.1:80", 1)]),
            None,
        ),
    )]
    .into();
    let off = RenderOptions {
        localhost_node_ports: false,
        ..options()
    };
    let (_, rules) = by_chain(&nat_table(&state, &off));
    assert_eq!(
        rules["KUBE-SERVICES"].last().map(String::as_str),
        Some(
            r#"-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS"#
        )
    );
    let filter = filter_table(&state, &off);
    assert!(!filter.contains("KUBE-FIREWALL"), "{filter}");
    let on = filter_table(&state, &options());
    assert!(on.contains(":KUBE-FIREWALL - [0:0]\n"), "{on}");
}

/// The options of kube-proxy's IPv6 proxier in its tests: no local-traffic detector (no
/// cluster CIDR), `localhostNodePorts` asked for, which the IPv6 proxier ignores.
fn ipv6_options() -> RenderOptions {
    RenderOptions {
        family: Family::Ipv6,
        cluster_cidr: None,
        random_fully: false,
        localhost_node_ports: true,
    }
}

/// kube-proxy's TestEnableLocalhostNodePortsIPv6 (and TestDisableLocalhostNodePortsIPv6,
/// whose expectation is the same), proxier_test.go: an IPv6 NodePort Service with
/// externalTrafficPolicy Local, one of its two endpoints on this node. Its expected
/// text, whole, both tables: `[ip]:port` endpoints (in the comments, the DNAT target and
/// the KUBE-SEP hash), ::1 kept out of the NodePort jump, no KUBE-FIREWALL.
#[test]
fn ipv6_services_as_kube_proxys_ipv6_proxier_writes_them() {
    let cluster = spec(
        "ns1/svc1:p80",
        0,
        &[("[ff06::c1]:80", 1), ("[ff06::c2]:80", 1)],
    );
    let node_port = external(
        FrontendKind::NodePort,
        &cluster,
        Some(&[("[ff06::c2]:80", 1)]),
    );
    let state: DesiredState = [
        (frontend("fd00:ab34::20", 80), cluster),
        (frontend("2001:db8::2", 30001), node_port),
    ]
    .into();
    let expected = r#"
*filter
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"#;
    let options = ipv6_options();
    assert_eq!(
        by_chain(&filter_table(&state, &options)),
        by_chain(expected)
    );
    let expected = r#"
*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXT-XPGD46QRK7WJZT7O - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-LIGRYQQLSZN4UWQ5 - [0:0]
:KUBE-SEP-XJJ5QXWGJG344QDZ - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-SVL-XPGD46QRK7WJZT7O - [0:0]
-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 30001 -j KUBE-EXT-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d fd00:ab34::20 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS
-A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "masquerade LOCAL traffic for ns1/svc1:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-XPGD46QRK7WJZT7O -m comment --comment "route LOCAL traffic for ns1/svc1:p80 external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-EXT-XPGD46QRK7WJZT7O -j KUBE-SVL-XPGD46QRK7WJZT7O
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-SEP-LIGRYQQLSZN4UWQ5 -m comment --comment ns1/svc1:p80 -s ff06::c1 -j KUBE-MARK-MASQ
-A KUBE-SEP-LIGRYQQLSZN4UWQ5 -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination [ff06::c1]:80
-A KUBE-SEP-XJJ5QXWGJG344QDZ -m comment --comment ns1/svc1:p80 -s ff06::c2 -j KUBE-MARK-MASQ
-A KUBE-SEP-XJJ5QXWGJG344QDZ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination [ff06::c2]:80
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> [ff06::c1]:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-LIGRYQQLSZN4UWQ5
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> [ff06::c2]:80" -j KUBE-SEP-XJJ5QXWGJG344QDZ
-A KUBE-SVL-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> [ff06::c2]:80" -j KUBE-SEP-XJJ5QXWGJG344QDZ
COMMIT
"#;
    assert_eq!(by_chain(&nat_table(&state, &options)), by_chain(expected));
    // The IPv6 options the agent derives from its IPv4 ones render the same.
    let derived = RenderOptions::default().ipv6(None);
    assert_eq!(nat_table(&state, &derived), nat_table(&state, &options));
    assert_eq!(
        filter_table(&state, &derived),
        filter_table(&state, &options)
    );
}

/// The IPv6 proxier's other rules: an IPv6 cluster CIDR in the masquerade match, a
/// REJECT (ip6tables answers it with ICMPv6 port unreachable by default), and a
/// LoadBalancer IP's source ranges, the node's own address as a /128 host.
#[test]
fn ipv6_rejects_cluster_cidr_and_source_ranges() {
    let options = RenderOptions {
        cluster_cidr: Some(("fd00:10::".parse().expect("ip"), 64)),
        ..ipv6_options()
    };
    let empty = spec("ns6/svc6:p80", 0, &[]);
    let web = spec("ns1/svc1:p80", 0, &[("[fd00:10::5]:8080", 1)]);
    let lb = FrontendSpec {
        kind: FrontendKind::LoadBalancer,
        source_ranges: Some(Box::new(SourceRanges {
            cidrs: vec![("2001:db8:aa::".parse().expect("ip"), 48)],
            allow_node: true,
        })),
        ..web.clone()
    };
    let state: DesiredState = [
        (frontend("fd00:ab34::60", 80), empty),
        (frontend("fd00:ab34::20", 80), web),
        (frontend("2001:db8:ff::1", 80), lb),
    ]
    .into();
    let filter = filter_table(&state, &options);
    assert!(filter.contains(r#"-A KUBE-SERVICES -m comment --comment "ns6/svc6:p80 has no endpoints" -m tcp -p tcp -d fd00:ab34::60 --dport 80 -j REJECT"#), "{filter}");
    assert!(!filter.contains("KUBE-FIREWALL"), "{filter}");
    let (_, rules) = by_chain(&nat_table(&state, &options));
    let svc = service_chain("ns1/svc1:p80", Protocol::Tcp);
    let fw = firewall_chain("ns1/svc1:p80", Protocol::Tcp);
    let ext = external_chain("ns1/svc1:p80", Protocol::Tcp);
    assert_eq!(
        rules[&svc][0],
        format!(
            r#"-A {svc} -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d fd00:ab34::20 --dport 80 ! -s fd00:10::/64 -j KUBE-MARK-MASQ"#
        )
    );
    assert_eq!(
        rules[&fw][..2],
        [
            format!(
                r#"-A {fw} -m comment --comment "ns1/svc1:p80 loadbalancer IP" -s 2001:db8:aa::/48 -j {ext}"#
            ),
            format!(
                r#"-A {fw} -m comment --comment "ns1/svc1:p80 loadbalancer IP" -s 2001:db8:ff::1 -j {ext}"#
            ),
        ]
    );
}
