//! The dataplane's sync logic against stand-in iptables binaries (shell scripts that log
//! every restore input and fail on demand): what a partial sync loads, and what happens
//! after a failed restore. No root needed; the kernel side is covered by the privileged
//! tests.

use std::{net::Ipv4Addr, os::unix::fs::PermissionsExt as _, path::PathBuf};

use super::*;
use crate::model::{BackendAddr, FrontendKind, Protocol, WeightedBackend};

/// A directory with fake `iptables`, `iptables-restore` and `iptables-save`.
struct FakeIptables {
    dir: PathBuf,
}

impl FakeIptables {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("epx-fake-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let script = |file: &str, body: &str| {
            let path = dir.join(file);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        // The same stand-ins for iptables and ip6tables, each logging to its own file.
        for tool in ["iptables", "ip6tables"] {
            script(
                tool,
                &format!(r#"[ "$1" = --version ] && echo "{tool} v1.8.9 (nf_tables)"; exit 0"#),
            );
            script(&format!("{tool}-save"), "exit 0");
            let log = dir.join(format!("{tool}-restores"));
            let fail = dir.join(format!("{tool}-fail"));
            script(
                &format!("{tool}-restore"),
                &format!(
                    "cat >> {log}; echo '--- end of restore' >> {log}; [ -e {fail} ] && {{ echo \"$(cat {fail})\" >&2; exit 1; }}; exit 0",
                    log = log.display(),
                    fail = fail.display()
                ),
            );
        }
        Self { dir }
    }

    fn tool(&self, tool: &str) -> Iptables {
        let bin = |suffix: &str| {
            self.dir
                .join(format!("{tool}{suffix}"))
                .display()
                .to_string()
        };
        Iptables {
            iptables: bin(""),
            restore: bin("-restore"),
            save: bin("-save"),
        }
    }

    fn binaries(&self) -> Iptables {
        self.tool("iptables")
    }

    fn binaries_v6(&self) -> Iptables {
        self.tool("ip6tables")
    }

    /// The iptables restore inputs loaded since the last call.
    fn take_restores(&self) -> Vec<String> {
        self.take("iptables")
    }

    /// The ip6tables restore inputs loaded since the last call.
    fn take_restores_v6(&self) -> Vec<String> {
        self.take("ip6tables")
    }

    fn take(&self, tool: &str) -> Vec<String> {
        let log = self.dir.join(format!("{tool}-restores"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        text.split("--- end of restore\n")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn failing(&self, fail: bool) {
        self.fail(
            "iptables",
            fail.then_some("iptables-restore: line 3 failed"),
        );
    }

    /// Makes `tool`'s restores fail with `stderr`, or succeed again with `None`.
    fn fail(&self, tool: &str, stderr: Option<&str>) {
        let path = self.dir.join(format!("{tool}-fail"));
        match stderr {
            Some(text) => std::fs::write(path, text).expect("flag"),
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl Drop for FakeIptables {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn frontend(last: u8) -> FrontendAddr {
    FrontendAddr {
        ip: Ipv4Addr::new(198, 19, 0, last).into(),
        port: 80,
        protocol: Protocol::Tcp,
    }
}

fn spec(service: &str, backends: &[u8]) -> FrontendSpec {
    FrontendSpec {
        service: service.into(),
        kind: FrontendKind::ClusterIp,
        affinity_timeout_s: 0,
        local_only: false,
        backends: backends
            .iter()
            .map(|last| WeightedBackend {
                flows_only: false,
                addr: BackendAddr {
                    ip: Ipv4Addr::new(198, 18, 1, *last).into(),
                    port: 8080,
                },
                weight: 1,
            })
            .collect(),
        serving_anywhere: !backends.is_empty(),
        source_ranges: None,
        health_check_node_port: None,
        external_local: None,
    }
}

fn chain(service: &str) -> String {
    names::service_chain(service, Protocol::Tcp)
}

fn all_input(restores: &[String]) -> String {
    restores.concat()
}

fn declared(input: &str, chain: &str) -> bool {
    input.lines().any(|l| l == format!(":{chain} - [0:0]"))
}

#[test]
fn partial_syncs_load_only_what_changed_and_a_failure_forces_a_full_sync() {
    let fake = FakeIptables::new("sync");
    let mut dp = IptablesDataplane::open(fake.binaries(), RenderOptions::default())
        .expect("open with the fake binaries");
    let (a, b) = ("demo/a:http", "demo/b:http");

    // First sync: full, both services, and KUBE-SERVICES.
    let report = dp.apply(vec![
        Change::Upsert(frontend(1), spec(a, &[2, 3])),
        Change::Upsert(frontend(2), spec(b, &[2])),
    ]);
    assert!(report.failed.is_empty(), "{report:?}");
    let full = all_input(&fake.take_restores());
    assert!(declared(&full, &chain(a)) && declared(&full, &chain(b)));
    assert!(declared(&full, "KUBE-SERVICES") && declared(&full, OWNER_MARKER));

    // An endpoint change of `a`: only a's chains; KUBE-SERVICES and the filter table are
    // not rewritten, and the SEP chain that went away is deleted.
    let report = dp.apply(vec![Change::Upsert(frontend(1), spec(a, &[2]))]);
    assert!(report.failed.is_empty(), "{report:?}");
    let restores = fake.take_restores();
    assert_eq!(restores.len(), 1, "one restore per partial sync");
    let partial = &restores[0];
    assert!(declared(partial, &chain(a)), "{partial}");
    assert!(!declared(partial, &chain(b)), "b untouched: {partial}");
    assert!(!declared(partial, "KUBE-SERVICES"), "{partial}");
    assert!(!partial.contains("*filter"), "{partial}");
    let gone = names::endpoint_chain(
        a,
        Protocol::Tcp,
        &BackendAddr {
            ip: Ipv4Addr::new(198, 18, 1, 3).into(),
            port: 8080,
        },
    );
    assert!(partial.contains(&format!("-X {gone}")), "{partial}");

    // `b` loses its endpoints: its jump goes and a REJECT appears, so KUBE-SERVICES and
    // the filter table are rewritten this time.
    dp.apply(vec![Change::Upsert(frontend(2), spec(b, &[]))]);
    let partial = all_input(&fake.take_restores());
    assert!(declared(&partial, "KUBE-SERVICES"), "{partial}");
    assert!(
        partial.contains("demo/b:http has no endpoints"),
        "{partial}"
    );
    assert!(partial.contains(&format!("-X {}", chain(b))), "{partial}");

    // A failed restore: nothing is reported installed, the failure names the frontend.
    fake.failing(true);
    let report = dp.apply(vec![Change::Upsert(frontend(3), spec("demo/c:http", &[4]))]);
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(
        report.failed[0].cause.to_string().contains("line 3 failed"),
        "{report:?}"
    );
    assert!(!dp.installed().contains_key(&frontend(3)), "undone");
    assert_eq!(dp.installed().len(), 2);
    fake.take_restores();

    // The next sync is a full one: every service port is loaded again.
    fake.failing(false);
    let report = dp.apply(vec![Change::Upsert(frontend(3), spec("demo/c:http", &[4]))]);
    assert!(report.failed.is_empty(), "{report:?}");
    let full = all_input(&fake.take_restores());
    assert!(declared(&full, &chain(a)), "a loaded again: {full}");
    assert!(declared(&full, &chain("demo/c:http")), "{full}");
    assert!(full.contains("demo/b:http has no endpoints"), "{full}");
    assert_eq!(dp.installed().len(), 3);

    // Back to partial syncs.
    dp.apply(vec![Change::Remove(frontend(3))]);
    let partial = all_input(&fake.take_restores());
    assert!(!declared(&partial, &chain(a)), "{partial}");
    assert!(
        partial.contains(&format!("-X {}", chain("demo/c:http"))),
        "{partial}"
    );
}

#[test]
fn a_frontend_moving_to_another_service_port_rewrites_both() {
    let fake = FakeIptables::new("move");
    let mut dp = IptablesDataplane::open(fake.binaries(), RenderOptions::default()).expect("open");
    dp.apply(vec![Change::Upsert(frontend(1), spec("demo/a:http", &[2]))]);
    fake.take_restores();
    // The same address now belongs to another Service (a ClusterIP reused).
    dp.apply(vec![Change::Upsert(frontend(1), spec("demo/z:http", &[3]))]);
    let partial = all_input(&fake.take_restores());
    assert!(
        partial.contains(&format!("-X {}", chain("demo/a:http"))),
        "{partial}"
    );
    assert!(declared(&partial, &chain("demo/z:http")), "{partial}");
    assert!(partial.contains("demo/z:http cluster IP"), "{partial}");
}

/// A dual-stack Service with endpoints of both families.
const DUAL_STACK: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 198.19.0.10
  clusterIPs: [198.19.0.10, 2001:db8::a]
  ports: [{name: http, port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.1.2]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [\"2001:db8::1:2\"]}]
";

#[test]
fn ipv6_frontends_are_left_out_with_a_warning_once_and_never_rewritten() {
    use crate::{source::manifest::object_set, source::store::ObjectStore, sync::Syncer};

    let fake = FakeIptables::new("ipv6");
    let mut dp = IptablesDataplane::open(fake.binaries(), RenderOptions::default()).expect("open");
    let mut store = ObjectStore::new(None);
    let mut syncer = Syncer::default();
    store.replace_all(object_set(DUAL_STACK));
    let left_out = |s: &crate::sync::SyncSummary| {
        s.rejections
            .iter()
            .filter(|c| **c == super::super::left_out::CODE)
            .count()
    };

    let first = syncer.sync(&mut store, &mut dp);
    assert_eq!(
        (first.written, first.failed, left_out(&first)),
        (1, 0, 1),
        "the IPv4 frontend written, the IPv6 one reported, not failed: {first:?}"
    );
    let rules = all_input(&fake.take_restores());
    assert!(rules.contains("-d 198.19.0.10 --dport 80"), "{rules}");
    assert!(
        !rules.contains("2001:db8"),
        "no IPv6 address in iptables rules: {rules}"
    );
    // What the dataplane believes installed is what read-back would find: IPv4 only.
    let installed: Vec<String> = dp.installed().keys().map(ToString::to_string).collect();
    assert_eq!(installed, ["198.19.0.10:80/TCP"]);
    let held: Vec<String> = dp.left_out().keys().map(ToString::to_string).collect();
    assert_eq!(held, ["[2001:db8::a]:80/TCP"]);

    // A full sync (the node changed): nothing new to write or say, no restore.
    store.set_localhost_node_ports(false);
    let again = syncer.sync(&mut store, &mut dp);
    assert_eq!(
        (again.written, again.failed, left_out(&again)),
        (0, 0, 0),
        "{again:?}"
    );
    assert!(fake.take_restores().is_empty(), "no rules rewritten");

    // The Service goes: the IPv6 frontend is forgotten, the IPv4 one removed.
    store.replace_all(object_set(""));
    let gone = syncer.sync(&mut store, &mut dp);
    assert_eq!(gone.removed, 1, "{gone:?}");
    assert!(dp.installed().is_empty() && dp.left_out().is_empty());
}

fn dual_stack(fake: &FakeIptables) -> IptablesDataplane {
    let options = RenderOptions::default();
    IptablesDataplane::open_dual_stack(
        FamilyTables {
            iptables: fake.binaries(),
            options: options.clone(),
        },
        FamilyTables {
            iptables: fake.binaries_v6(),
            options: options.ipv6(None),
        },
    )
    .expect("open with the fake binaries")
}

#[test]
fn each_family_goes_to_its_own_tables_with_its_own_partial_syncs() {
    use crate::{source::manifest::object_set, source::store::ObjectStore, sync::Syncer};

    let fake = FakeIptables::new("dual");
    let mut dp = dual_stack(&fake);
    // The open probed ip6tables with an empty restore.
    assert_eq!(fake.take_restores_v6(), ["*nat\nCOMMIT\n"]);
    let mut store = ObjectStore::new(None);
    let mut syncer = Syncer::default();
    store.replace_all(object_set(DUAL_STACK));
    let first = syncer.sync(&mut store, &mut dp);
    assert_eq!((first.written, first.failed), (2, 0), "{first:?}");
    assert!(first.rejections.is_empty(), "nothing left out: {first:?}");

    let v4 = all_input(&fake.take_restores());
    assert!(v4.contains("-d 198.19.0.10 --dport 80"), "{v4}");
    assert!(!v4.contains("2001:db8"), "no IPv6 in iptables: {v4}");
    let v6 = all_input(&fake.take_restores_v6());
    assert!(
        v6.contains("-m tcp -p tcp -d 2001:db8::a --dport 80 -j KUBE-SVC-"),
        "{v6}"
    );
    assert!(
        v6.contains("-j DNAT --to-destination [2001:db8::1:2]:8080"),
        "{v6}"
    );
    assert!(
        v6.contains("--dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS"),
        "{v6}"
    );
    assert!(
        declared(&v6, OWNER_MARKER),
        "the owner marker in ip6tables too: {v6}"
    );
    assert!(!v6.contains("198.19"), "no IPv4 in ip6tables: {v6}");
    // The same chain names in both families: one service port, one hash.
    assert!(declared(&v4, &chain("demo/web:http")) && declared(&v6, &chain("demo/web:http")));
    let installed: Vec<String> = dp.installed().keys().map(ToString::to_string).collect();
    assert_eq!(installed, ["198.19.0.10:80/TCP", "[2001:db8::a]:80/TCP"]);
    assert!(dp.left_out().is_empty());

    // An IPv6 endpoint change: one partial ip6tables restore, nothing in iptables.
    let v6_only = DUAL_STACK.replace("2001:db8::1:2", "2001:db8::1:3");
    store.replace_all(object_set(&v6_only));
    let report = syncer.sync(&mut store, &mut dp);
    assert_eq!((report.written, report.failed), (1, 0), "{report:?}");
    assert!(fake.take_restores().is_empty(), "IPv4 untouched");
    let partial = fake.take_restores_v6();
    assert_eq!(partial.len(), 1, "{partial:?}");
    assert!(
        partial[0].contains("[2001:db8::1:3]:8080"),
        "{}",
        partial[0]
    );
    assert!(!declared(&partial[0], "KUBE-SERVICES"), "{}", partial[0]);

    // ip6tables fails: the IPv6 frontend fails alone and keeps its state; IPv4 is written.
    fake.fail("ip6tables", Some("ip6tables-restore: line 2 failed"));
    let both = v6_only
        .replace("2001:db8::1:3", "2001:db8::1:4")
        .replace("198.18.1.2", "198.18.1.3");
    store.replace_all(object_set(&both));
    let report = syncer.sync(&mut store, &mut dp);
    assert_eq!((report.written, report.failed), (1, 1), "{report:?}");
    let v6_addr = FrontendAddr {
        ip: "2001:db8::a".parse().expect("ip"),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let v6_spec = &dp.installed()[&v6_addr];
    assert_eq!(v6_spec.backends[0].addr.to_string(), "[2001:db8::1:3]:8080");
    fake.fail("ip6tables", None);
    fake.take_restores();
    fake.take_restores_v6();
    // The retry writes it, as a full ip6tables sync; IPv4 stays partial.
    assert!(syncer.retry_failed(&mut store));
    let report = syncer.sync(&mut store, &mut dp);
    assert_eq!((report.written, report.failed), (1, 0), "{report:?}");
    assert!(fake.take_restores().is_empty(), "IPv4 was written already");
    let full = all_input(&fake.take_restores_v6());
    assert!(
        full.contains("[2001:db8::1:4]:8080") && declared(&full, "KUBE-SERVICES"),
        "{full}"
    );
}

#[test]
fn without_usable_ip6tables_ipv6_is_left_out_with_the_cause_and_ipv4_served() {
    use crate::{source::manifest::object_set, source::store::ObjectStore, sync::Syncer};

    for (case, broken) in [
        ("no binary", None),
        (
            "no IPv6 in the kernel",
            Some(
                "ip6tables-restore v1.8.9 (legacy): ip6tables-restore: unable to initialize table 'nat'\n\nError occurred at line: 1\nTry `ip6tables-restore -h' or 'ip6tables-restore --help' for more information.",
            ),
        ),
    ] {
        let fake = FakeIptables::new(&format!("no-v6-{}", case.len()));
        let mut v6 = fake.binaries_v6();
        match broken {
            None => {
                v6.save = fake
                    .dir
                    .join("missing-ip6tables-save")
                    .display()
                    .to_string()
            }
            Some(stderr) => fake.fail("ip6tables", Some(stderr)),
        }
        let options = RenderOptions::default();
        let mut dp = IptablesDataplane::open_dual_stack(
            FamilyTables {
                iptables: fake.binaries(),
                options: options.clone(),
            },
            FamilyTables {
                iptables: v6,
                options: options.ipv6(None),
            },
        )
        .expect("IPv4 alone opens");
        let mut store = ObjectStore::new(None);
        let mut syncer = Syncer::default();
        store.replace_all(object_set(DUAL_STACK));
        let first = syncer.sync(&mut store, &mut dp);
        assert_eq!((first.written, first.failed), (1, 0), "{case}: {first:?}");
        assert_eq!(
            first.rejections,
            [super::super::left_out::CODE],
            "{case}: {first:?}"
        );
        let held: Vec<String> = dp.left_out().keys().map(ToString::to_string).collect();
        assert_eq!(held, ["[2001:db8::a]:80/TCP"], "{case}");
        let installed: Vec<String> = dp.installed().keys().map(ToString::to_string).collect();
        assert_eq!(installed, ["198.19.0.10:80/TCP"], "{case}");
        let cause = match &dp.ipv6 {
            Err(cause) => cause.clone(),
            Ok(_) => panic!("{case}: ip6tables taken as usable"),
        };
        let named = match broken {
            None => "missing-ip6tables-save",
            Some(_) => "unable to initialize table",
        };
        assert!(
            cause.contains(named),
            "{case}: the cause names what failed: {cause}"
        );
    }
}
