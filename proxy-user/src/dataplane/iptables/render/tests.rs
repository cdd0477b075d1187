//! Golden tests: what we render for a set of frontends, against the rules kube-proxy's
//! iptables proxier produces for the same Services and endpoints (its own test
//! expectations, TestOverallIPTablesRules and its session affinity test). Compared chain
//! by chain as kube-proxy's tests compare them: declarations as a set, rules in order
//! within each chain.

use std::{collections::BTreeMap, net::Ipv4Addr};

use super::*;
use crate::model::{BackendAddr, Protocol, WeightedBackend};

fn frontend(ip: &str, port: u16) -> FrontendAddr {
    FrontendAddr {
        ip: ip.parse().expect("ip"),
        port,
        protocol: Protocol::Tcp,
    }
}

fn spec(service: &str, affinity: u32, endpoints: &[(&str, u32)]) -> FrontendSpec {
    FrontendSpec {
        service: service.into(),
        kind: FrontendKind::ClusterIp,
        affinity_timeout_s: affinity,
        local_only: false,
        backends: endpoints
            .iter()
            .map(|(ep, weight)| {
                let (ip, port) = ep.split_once(':').expect("ip:port");
                WeightedBackend {
                    addr: BackendAddr {
                        ip: ip.parse().expect("ip"),
                        port: port.parse().expect("port"),
                    },
                    weight: *weight,
                }
            })
            .collect(),
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
        cluster_cidr: Some((Ipv4Addr::new(10, 0, 0, 0), 8)),
        random_fully: false,
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
