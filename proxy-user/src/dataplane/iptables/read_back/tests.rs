//! The round trip spec -> rendered iptables-restore text (`render`) -> parsed (`saved`,
//! `installed`) -> spec, over a set of frontends that exercises every field of
//! [`FrontendSpec`]: each field comes back as it was, or the case says that it does not,
//! and why.

use std::collections::BTreeSet;

use super::*;
use crate::dataplane::iptables::render::{RenderOptions, filter_table, nat_table};

fn options() -> RenderOptions {
    RenderOptions {
        cluster_cidr: Some((Ipv4Addr::new(198, 18, 0, 0).into(), 15)),
        random_fully: true,
        ..RenderOptions::default()
    }
}

fn addr(ip: [u8; 4], port: u16, protocol: Protocol) -> FrontendAddr {
    FrontendAddr {
        ip: Ipv4Addr::from(ip).into(),
        port,
        protocol,
    }
}

fn wb(last: u8, weight: u32) -> WeightedBackend {
    WeightedBackend {
        flows_only: false,
        addr: BackendAddr {
            ip: Ipv4Addr::new(198, 18, 1, last).into(),
            port: 8080,
        },
        weight,
    }
}

fn spec(service: &str, kind: FrontendKind, backends: Vec<WeightedBackend>) -> FrontendSpec {
    FrontendSpec {
        service: service.into(),
        kind,
        affinity_timeout_s: 0,
        local_only: false,
        serving_anywhere: backends.iter().any(|b| b.weight > 0),
        backends: backends.into(),
        external_local: None,
        source_ranges: None,
        health_check_node_port: None,
    }
}

/// The probabilities as iptables-save prints them back: the kernel keeps
/// `lround(p * 2^31)`, printed with 11 decimals (`0.3333333333` -> `0.33333333349`).
fn as_the_kernel_prints(text: &str) -> String {
    let mut words: Vec<String> = text.split(' ').map(str::to_owned).collect();
    for i in 1..words.len() {
        if words[i - 1] == "--probability" {
            let p: f64 = words[i].parse().expect("rendered probability");
            // Computed here, not with the code under test's `kernel_probability`.
            let held = (p * 2_147_483_648.0).round();
            words[i] = format!("{:.11}", held / 2_147_483_648.0);
        }
    }
    words.join(" ")
}

#[test]
fn the_kernels_rounding_is_what_iptables_save_prints() {
    // Real iptables-save output for kube-proxy's `--probability 0.3333333333`.
    assert_eq!(
        as_the_kernel_prints("--probability 0.3333333333"),
        "--probability 0.33333333349"
    );
    assert_eq!(
        format!(
            "{:.11}",
            f64::from(kernel_probability(0.3333333333)) / 2_147_483_648.0
        ),
        "0.33333333349"
    );
}

/// Renders `state` as the agent writes it, parses it back and reads the frontends.
fn round_trip(state: &DesiredState) -> DesiredState {
    let nat = as_the_kernel_prints(&nat_table(state, &options()));
    let filter = filter_table(state, &options());
    let rules = InstalledRules::parse(&nat, &filter);
    assert_eq!(rules.skipped(), &[], "rendered rules parse whole:\n{nat}");
    desired_state(&rules, Family::Ipv4)
}

/// The fields of `back` that differ from `spec`.
fn differing(spec: &FrontendSpec, back: &FrontendSpec) -> BTreeSet<&'static str> {
    [
        ("service", spec.service == back.service),
        ("kind", spec.kind == back.kind),
        (
            "affinity_timeout_s",
            spec.affinity_timeout_s == back.affinity_timeout_s,
        ),
        ("local_only", spec.local_only == back.local_only),
        ("backends", spec.backends == back.backends),
        (
            "serving_anywhere",
            spec.serving_anywhere == back.serving_anywhere,
        ),
        ("external_local", spec.external_local == back.external_local),
        ("source_ranges", spec.source_ranges == back.source_ranges),
        (
            "health_check_node_port",
            spec.health_check_node_port == back.health_check_node_port,
        ),
    ]
    .into_iter()
    .filter(|(_, same)| !same)
    .map(|(field, _)| field)
    .collect()
}

/// One frontend of a case, and the fields that deliberately do not come back, with why.
struct Frontend {
    addr: FrontendAddr,
    spec: FrontendSpec,
    excluded: &'static [(&'static str, &'static str)],
}

struct Case {
    name: &'static str,
    frontends: Vec<Frontend>,
}

const NO_ENDPOINTS_NO_CHAINS: &str = "without an endpoint anywhere the port is one REJECT rule: no policy chain holds the timeout, no KUBE-EXT the external policy, no KUBE-FW the ranges";

fn cases() -> Vec<Case> {
    use FrontendKind::*;
    let tcp = Protocol::Tcp;
    let web = "demo/web:http";
    let lb = "demo/lb:https";
    let ranges = SourceRanges {
        cidrs: vec![
            (Ipv4Addr::new(203, 0, 113, 0).into(), 24),
            (Ipv4Addr::new(192, 0, 2, 7).into(), 32),
        ],
        allow_node: true,
    };
    let lb_spec = |kind| FrontendSpec {
        affinity_timeout_s: 600,
        external_local: (kind != ClusterIp).then(|| vec![wb(5, 1)]),
        source_ranges: (kind == LoadBalancer).then(|| Box::new(ranges.clone())),
        health_check_node_port: Some(32_100),
        ..spec(lb, kind, vec![wb(5, 1), wb(6, 1), wb(7, 1)])
    };
    vec![
        Case {
            name: "ClusterIP with weights 3:1 and affinity",
            frontends: vec![Frontend {
                addr: addr([198, 19, 0, 10], 80, tcp),
                spec: FrontendSpec {
                    affinity_timeout_s: 600,
                    ..spec(web, ClusterIp, vec![wb(2, 3), wb(3, 1)])
                },
                excluded: &[],
            }],
        },
        Case {
            name: "weights come back as the smallest with the same probabilities",
            frontends: vec![Frontend {
                addr: addr([198, 19, 0, 11], 80, tcp),
                spec: spec(
                    "demo/even:http",
                    ClusterIp,
                    vec![wb(2, 2), wb(3, 2), wb(4, 0)],
                ),
                excluded: &[(
                    "backends",
                    "iptables holds probabilities, not weights (2:2 is 1:1), and a weight-0 backend gets no rule",
                )],
            }],
        },
        Case {
            name: "UDP, unnamed port, equal thirds as the kernel rounds them",
            frontends: vec![Frontend {
                addr: addr([198, 19, 0, 53], 53, Protocol::Udp),
                spec: spec("demo/dns", ClusterIp, vec![wb(2, 1), wb(3, 1), wb(4, 1)]),
                excluded: &[],
            }],
        },
        Case {
            name: "LoadBalancer, externalTrafficPolicy Local, source ranges with the node, health check",
            frontends: vec![
                Frontend {
                    addr: addr([198, 19, 0, 14], 443, tcp),
                    spec: lb_spec(ClusterIp),
                    excluded: &[],
                },
                Frontend {
                    addr: addr([198, 19, 200, 1], 443, tcp),
                    spec: lb_spec(LoadBalancer),
                    excluded: &[],
                },
                Frontend {
                    addr: addr([198, 19, 100, 1], 443, tcp),
                    spec: lb_spec(ExternalIp),
                    excluded: &[],
                },
                Frontend {
                    addr: addr([198, 18, 0, 1], 30443, tcp),
                    spec: lb_spec(NodePort),
                    excluded: &[],
                },
            ],
        },
        Case {
            name: "closed source ranges, externalTrafficPolicy Cluster",
            frontends: vec![Frontend {
                addr: addr([198, 19, 200, 2], 443, tcp),
                spec: FrontendSpec {
                    source_ranges: Some(Box::new(SourceRanges {
                        cidrs: Vec::new(),
                        allow_node: false,
                    })),
                    ..spec("demo/closed:https", LoadBalancer, vec![wb(8, 1)])
                },
                excluded: &[],
            }],
        },
        Case {
            name: "externalTrafficPolicy Local without a local endpoint",
            frontends: vec![
                Frontend {
                    addr: addr([198, 19, 0, 15], 80, tcp),
                    spec: spec("demo/nolocal:http", ClusterIp, vec![wb(9, 1)]),
                    excluded: &[],
                },
                Frontend {
                    addr: addr([198, 18, 0, 1], 30083, tcp),
                    spec: FrontendSpec {
                        external_local: Some(Vec::new()),
                        ..spec("demo/nolocal:http", NodePort, vec![wb(9, 1)])
                    },
                    excluded: &[],
                },
            ],
        },
        Case {
            name: "internalTrafficPolicy Local, endpoints only elsewhere",
            frontends: vec![Frontend {
                addr: addr([198, 19, 0, 16], 80, tcp),
                spec: FrontendSpec {
                    local_only: true,
                    serving_anywhere: true,
                    affinity_timeout_s: 300,
                    ..spec("demo/itp:http", ClusterIp, Vec::new())
                },
                excluded: &[(
                    "affinity_timeout_s",
                    "no endpoint to reach here: no policy chain holds the timeout",
                )],
            }],
        },
        Case {
            name: "internalTrafficPolicy Local with a local endpoint",
            frontends: vec![Frontend {
                addr: addr([198, 19, 0, 17], 80, tcp),
                spec: FrontendSpec {
                    local_only: true,
                    ..spec("demo/itp-here:http", ClusterIp, vec![wb(10, 1)])
                },
                excluded: &[],
            }],
        },
        Case {
            name: "no endpoints anywhere",
            frontends: vec![
                Frontend {
                    addr: addr([198, 19, 0, 12], 80, tcp),
                    spec: FrontendSpec {
                        affinity_timeout_s: 600,
                        local_only: true,
                        health_check_node_port: Some(32_101),
                        ..spec("demo/empty:http", ClusterIp, Vec::new())
                    },
                    excluded: &[
                        ("affinity_timeout_s", NO_ENDPOINTS_NO_CHAINS),
                        (
                            "local_only",
                            "Local and Cluster both REJECT when no endpoint exists anywhere",
                        ),
                    ],
                },
                Frontend {
                    addr: addr([198, 19, 200, 3], 80, tcp),
                    spec: FrontendSpec {
                        affinity_timeout_s: 600,
                        external_local: Some(Vec::new()),
                        source_ranges: Some(Box::new(SourceRanges {
                            cidrs: vec![(Ipv4Addr::new(203, 0, 113, 0).into(), 24)],
                            allow_node: false,
                        })),
                        health_check_node_port: Some(32_101),
                        ..spec("demo/empty:http", LoadBalancer, Vec::new())
                    },
                    excluded: &[
                        (
                            "kind",
                            "an external IP and a load balancer IP get the same REJECT rule",
                        ),
                        ("affinity_timeout_s", NO_ENDPOINTS_NO_CHAINS),
                        ("external_local", NO_ENDPOINTS_NO_CHAINS),
                        ("source_ranges", NO_ENDPOINTS_NO_CHAINS),
                    ],
                },
                Frontend {
                    addr: addr([198, 18, 0, 1], 30082, tcp),
                    spec: FrontendSpec {
                        affinity_timeout_s: 600,
                        external_local: Some(Vec::new()),
                        health_check_node_port: Some(32_101),
                        ..spec("demo/empty:http", NodePort, Vec::new())
                    },
                    excluded: &[
                        ("affinity_timeout_s", NO_ENDPOINTS_NO_CHAINS),
                        ("external_local", NO_ENDPOINTS_NO_CHAINS),
                    ],
                },
            ],
        },
    ]
}

/// Where a frontend is read back: a NodePort's rule matches every local address.
fn read_back_at(addr: &FrontendAddr, spec: &FrontendSpec) -> FrontendAddr {
    match spec.kind {
        FrontendKind::NodePort => FrontendAddr {
            ip: node_port_address(Family::Ipv4),
            ..*addr
        },
        _ => *addr,
    }
}

#[test]
fn every_field_round_trips_or_is_left_out_on_purpose() {
    let cases = cases();
    // Every field is set, to something other than its default, by some case.
    let every_field: BTreeSet<&str> = cases
        .iter()
        .flat_map(|c| &c.frontends)
        .flat_map(|f| {
            let blank = FrontendSpec {
                service: "".into(),
                kind: FrontendKind::ClusterIp,
                ..spec("", FrontendKind::ClusterIp, Vec::new())
            };
            differing(&blank, &f.spec)
        })
        .collect();
    assert_eq!(every_field.len(), 9, "{every_field:?}");

    for case in &cases {
        let state: DesiredState = case
            .frontends
            .iter()
            .map(|f| (f.addr, f.spec.clone()))
            .collect();
        let back = round_trip(&state);
        let expected: BTreeSet<FrontendAddr> = case
            .frontends
            .iter()
            .map(|f| read_back_at(&f.addr, &f.spec))
            .collect();
        assert_eq!(
            back.keys().copied().collect::<BTreeSet<_>>(),
            expected,
            "{}: the frontends read back",
            case.name
        );
        for f in &case.frontends {
            let got = back
                .get(&read_back_at(&f.addr, &f.spec))
                .unwrap_or_else(|| panic!("{}: {} not read back", case.name, f.addr));
            let excluded: BTreeSet<&str> = f.excluded.iter().map(|(field, _)| *field).collect();
            assert_eq!(
                differing(&f.spec, got),
                excluded,
                "{} {}: fields that did not come back (expected, with reasons: {:?})\nspec {:#?}\nback {:#?}",
                case.name,
                f.addr,
                f.excluded,
                f.spec,
                got
            );
            // What does not come back is what the comparison leaves out.
            assert!(
                unchanged(got, &f.spec),
                "{} {}: read back differs in what iptables holds",
                case.name,
                f.addr
            );
        }
    }
}

#[test]
fn a_change_to_anything_iptables_holds_is_a_change() {
    let base = FrontendSpec {
        affinity_timeout_s: 600,
        external_local: Some(vec![wb(2, 3)]),
        source_ranges: Some(Box::new(SourceRanges {
            cidrs: vec![(Ipv4Addr::new(203, 0, 113, 0).into(), 24)],
            allow_node: true,
        })),
        health_check_node_port: Some(32_100),
        ..spec(
            "demo/lb:https",
            FrontendKind::LoadBalancer,
            vec![wb(2, 3), wb(3, 1)],
        )
    };
    let at = addr([198, 19, 200, 1], 443, Protocol::Tcp);
    let changed: Vec<(&str, FrontendSpec)> = vec![
        (
            "service",
            FrontendSpec {
                service: "demo/other:https".into(),
                ..base.clone()
            },
        ),
        (
            "kind",
            FrontendSpec {
                kind: FrontendKind::ExternalIp,
                source_ranges: None,
                ..base.clone()
            },
        ),
        (
            "affinity",
            FrontendSpec {
                affinity_timeout_s: 0,
                ..base.clone()
            },
        ),
        (
            "weights",
            FrontendSpec {
                backends: vec![wb(2, 1), wb(3, 1)].into(),
                ..base.clone()
            },
        ),
        (
            "a backend out of new connections",
            FrontendSpec {
                backends: vec![wb(2, 3), wb(3, 0)].into(),
                ..base.clone()
            },
        ),
        (
            "external policy Cluster",
            FrontendSpec {
                external_local: None,
                ..base.clone()
            },
        ),
        (
            "a local endpoint gone",
            FrontendSpec {
                external_local: Some(Vec::new()),
                ..base.clone()
            },
        ),
        (
            "a range",
            FrontendSpec {
                source_ranges: Some(Box::new(SourceRanges {
                    cidrs: vec![(Ipv4Addr::new(198, 18, 100, 0).into(), 24)],
                    allow_node: true,
                })),
                ..base.clone()
            },
        ),
        (
            "the node's own traffic",
            FrontendSpec {
                source_ranges: Some(Box::new(SourceRanges {
                    cidrs: vec![(Ipv4Addr::new(203, 0, 113, 0).into(), 24)],
                    allow_node: false,
                })),
                ..base.clone()
            },
        ),
        (
            "no source ranges",
            FrontendSpec {
                source_ranges: None,
                ..base.clone()
            },
        ),
        (
            "health check node port",
            FrontendSpec {
                health_check_node_port: None,
                ..base.clone()
            },
        ),
        (
            "no endpoints anywhere",
            FrontendSpec {
                backends: Default::default(),
                external_local: Some(Vec::new()),
                serving_anywhere: false,
                ..base.clone()
            },
        ),
    ];
    let one = |spec: &FrontendSpec| DesiredState::from([(at, spec.clone())]);
    let back = round_trip(&one(&base));
    let back = back.get(&at).expect("read back");
    assert!(unchanged(back, &base));
    for (what, spec) in changed {
        assert!(!unchanged(back, &spec), "{what} must be rewritten");
        let again = round_trip(&one(&spec));
        let again = again.get(&at).expect("read back");
        assert!(unchanged(again, &spec), "{what}: {again:#?}");
    }
}

#[test]
fn a_save_in_iptables_saves_form_reads_back() {
    // Our rules for weights 3:1 and affinity in the form iptables-save prints them (as
    // installed.rs's real fixture shows: `/32`, the `recent` defaults, 11 decimals).
    let nat = "*nat\n\
:KUBE-SERVICES - [0:0]\n\
:KUBE-SVC-XRY76EGRC3BSCIIJ - [0:0]\n\
:KUBE-SEP-AKZGSXBLP34CFQEE - [0:0]\n\
:KUBE-SEP-4CX4QJNHUHPAFOOF - [0:0]\n\
-A KUBE-SERVICES -d 198.19.0.10/32 -p tcp -m comment --comment \"demo/web:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-XRY76EGRC3BSCIIJ\n\
-A KUBE-SEP-4CX4QJNHUHPAFOOF -s 198.18.2.2/32 -m comment --comment demo/web:http -j KUBE-MARK-MASQ\n\
-A KUBE-SEP-4CX4QJNHUHPAFOOF -p tcp -m comment --comment demo/web:http -m recent --set --name KUBE-SEP-4CX4QJNHUHPAFOOF --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 198.18.2.2:8080\n\
-A KUBE-SEP-AKZGSXBLP34CFQEE -s 198.18.1.2/32 -m comment --comment demo/web:http -j KUBE-MARK-MASQ\n\
-A KUBE-SEP-AKZGSXBLP34CFQEE -p tcp -m comment --comment demo/web:http -m recent --set --name KUBE-SEP-AKZGSXBLP34CFQEE --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 198.18.1.2:8080\n\
-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment \"demo/web:http -> 198.18.1.2:8080\" -m recent --rcheck --seconds 600 --reap --name KUBE-SEP-AKZGSXBLP34CFQEE --mask 255.255.255.255 --rsource -j KUBE-SEP-AKZGSXBLP34CFQEE\n\
-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment \"demo/web:http -> 198.18.2.2:8080\" -m recent --rcheck --seconds 600 --reap --name KUBE-SEP-4CX4QJNHUHPAFOOF --mask 255.255.255.255 --rsource -j KUBE-SEP-4CX4QJNHUHPAFOOF\n\
-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment \"demo/web:http -> 198.18.1.2:8080\" -m statistic --mode random --probability 0.75000000000 -j KUBE-SEP-AKZGSXBLP34CFQEE\n\
-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment \"demo/web:http -> 198.18.2.2:8080\" -j KUBE-SEP-4CX4QJNHUHPAFOOF\n\
COMMIT\n";
    let state = desired_state(&InstalledRules::parse(nat, ""), Family::Ipv4);
    let web = state
        .get(&addr([198, 19, 0, 10], 80, Protocol::Tcp))
        .expect("read back");
    let backend = |ip: [u8; 4], weight| WeightedBackend {
        flows_only: false,
        addr: BackendAddr {
            ip: Ipv4Addr::from(ip).into(),
            port: 8080,
        },
        weight,
    };
    assert_eq!(
        web,
        &FrontendSpec {
            affinity_timeout_s: 600,
            ..spec(
                "demo/web:http",
                FrontendKind::ClusterIp,
                vec![backend([198, 18, 1, 2], 3), backend([198, 18, 2, 2], 1)]
            )
        }
    );
}

#[test]
fn uneven_shares_beyond_the_search_come_back_close() {
    // 997:1003: no total up to the search limit gives these probabilities.
    let backends = vec![wb(2, 997), wb(3, 1_003)];
    let at = addr([198, 19, 0, 10], 80, Protocol::Tcp);
    let base = spec("demo/web:http", FrontendKind::ClusterIp, backends);
    let back = round_trip(&DesiredState::from([(at, base.clone())]));
    let got = back.get(&at).expect("read back");
    // 997/2000 reduces to nothing smaller, and 2000 is past the search.
    let share = f64::from(got.backends[0].weight)
        / f64::from(got.backends[0].weight + got.backends[1].weight);
    assert!((share - 0.4985).abs() < 1e-6, "{got:?}");
}

/// IPv6, as ip6tables holds it: the same round trip with the IPv6 proxier's rules, the
/// hosts as ip6tables-save prints them (`/128`), the NodePort read back at `::`, the node's
/// own load balancer IP found again at the tail of the source ranges as a /128.
#[test]
fn ipv6_frontends_round_trip() {
    let v6 = |text: &str| -> IpAddr { text.parse().expect("test IPv6 address") };
    let backend = |last: u16, weight| WeightedBackend {
        flows_only: false,
        addr: BackendAddr {
            ip: IpAddr::V6(std::net::Ipv6Addr::new(
                0x2001, 0xdb8, 0x18, 1, 0, 0, 0, last,
            )),
            port: 8080,
        },
        weight,
    };
    let base = FrontendSpec {
        affinity_timeout_s: 600,
        health_check_node_port: Some(32_100),
        ..spec(
            "demo/lb:https",
            FrontendKind::ClusterIp,
            vec![backend(5, 1), backend(6, 1)],
        )
    };
    let external = |kind| FrontendSpec {
        kind,
        external_local: Some(vec![backend(5, 1)]),
        source_ranges: (kind == FrontendKind::LoadBalancer).then(|| {
            Box::new(SourceRanges {
                cidrs: vec![(v6("2001:db8:aa::"), 48)],
                allow_node: true,
            })
        }),
        ..base.clone()
    };
    let at = |ip: &str, port| FrontendAddr {
        ip: v6(ip),
        port,
        protocol: Protocol::Tcp,
    };
    let state: DesiredState = [
        (at("2001:db8:19::a", 443), base.clone()),
        (
            at("2001:db8:19:200::1", 443),
            external(FrontendKind::LoadBalancer),
        ),
        (at("2001:db8::2", 30443), external(FrontendKind::NodePort)),
    ]
    .into();
    let options = RenderOptions {
        cluster_cidr: Some((v6("2001:db8:18::"), 48)),
        ..RenderOptions::default().ipv6(None)
    };
    // ip6tables-save appends /128 to every host match.
    let saved = |text: String| -> String {
        text.split(' ')
            .map(|w| match w.parse::<std::net::Ipv6Addr>() {
                Ok(_) => format!("{w}/128"),
                Err(_) => w.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let nat = saved(as_the_kernel_prints(&nat_table(&state, &options)));
    assert!(nat.contains("-d 2001:db8:19::a/128 --dport 443"), "{nat}");
    let filter = saved(filter_table(&state, &options));
    let rules = InstalledRules::parse(&nat, &filter);
    assert_eq!(rules.skipped(), &[], "{nat}");
    let back = desired_state(&rules, Family::Ipv6);
    let node_port = FrontendAddr {
        ip: node_port_address(Family::Ipv6),
        ..at("2001:db8::2", 30443)
    };
    assert_eq!(node_port.ip, v6("::"));
    let mut expected = state.clone();
    let np = expected
        .remove(&at("2001:db8::2", 30443))
        .expect("node port");
    expected.insert(node_port, np);
    assert_eq!(back.len(), expected.len(), "{back:#?}");
    for (addr, spec) in &expected {
        let got = back
            .get(addr)
            .unwrap_or_else(|| panic!("{addr} read back: {back:#?}"));
        assert!(unchanged(got, spec), "{addr}: {got:#?} against {spec:#?}");
        assert_eq!(got.source_ranges, spec.source_ranges, "{addr}");
    }
}
