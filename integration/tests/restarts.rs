//! Traffic through restarts and upgrades: zero failed connections while the agent is
//! killed, restarted, and replaced by one whose maps have another layout.

use std::{sync::Arc, time::Duration};

use integration::{
    Agent, ClientLoop, SOCKET_PROGRAMS, Topology, attached_programs,
    manifests::{HTTP, ServiceOpts, service_with_endpoints},
    require_privileges,
};

/// The maps the programs read (the agent record is versioned on its own, `EPX_AGENT_V2`).
fn layout_maps() -> Vec<&'static str> {
    proxy_common::names::ALL_MAPS
        .iter()
        .copied()
        .filter(|m| *m != proxy_common::names::MAP_AGENT)
        .collect()
}

/// 50 connections to the Service, 2 ms apart, from the client namespace.
fn client_loop(t: &Arc<Topology>) -> ClientLoop {
    let t = t.clone();
    ClientLoop::start(move || {
        t.probe(&[
            "--to",
            "198.19.0.10:80",
            "--count",
            "50",
            "--interval-ms",
            "2",
        ])
    })
}

#[test]
fn no_connection_fails_through_kill_restart_and_layout_upgrade() {
    require_privileges!();
    let t = Arc::new(Topology::new(2));
    let mut agent = Agent::new(&t);
    let endpoints = t.ready_endpoints();
    agent.write(
        "web.yaml",
        &service_with_endpoints(
            "web",
            "198.19.0.10",
            &[HTTP],
            &ServiceOpts::default(),
            &endpoints,
        ),
    );
    agent.start();
    agent.wait_backends("demo/web:http", 2);
    let client = client_loop(&t);
    std::thread::sleep(Duration::from_millis(300));

    // SIGKILL, a moment without any agent, then a restart.
    agent.kill();
    std::thread::sleep(Duration::from_millis(400));
    agent.start();
    agent.wait_backends("demo/web:http", 2);
    std::thread::sleep(Duration::from_millis(300));

    // An upgrade to another map layout: the running programs' maps become another
    // layout's (renamed to _V0), so the new agent finds programs bound to maps that are
    // not its own. It must fill its new maps, then swap the programs, then drop the old.
    agent.stop();
    let mut renamed = 0;
    for entry in std::fs::read_dir(&agent.bpffs).expect("pins").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if layout_maps().contains(&name.as_str())
            && let Some((base, _)) = name.rsplit_once("_V")
        {
            std::fs::rename(entry.path(), agent.bpffs.join(format!("{base}_V0")))
                .expect("rename pin");
            renamed += 1;
        }
    }
    assert_eq!(renamed, layout_maps().len());
    std::thread::sleep(Duration::from_millis(200));
    agent.start();
    agent.wait_for(
        "the swap to the new layout",
        Duration::from_secs(10),
        |_| agent.log().matches("\"outcome\":\"Replaced\"").count() == SOCKET_PROGRAMS,
    );
    std::thread::sleep(Duration::from_millis(300));

    let (answered, errors) = client.finish();
    assert!(
        errors.is_empty(),
        "{answered} answered, but some failed: {errors:?}\n{}",
        agent.log()
    );
    assert!(answered > 300, "the loop ran throughout: {answered}");
    eprintln!("{answered} connections through kill, restart and layout upgrade, none failed");

    let log = agent.log();
    assert_eq!(
        log.matches("removed a pin no program of ours uses").count(),
        layout_maps().len(),
        "old layout's maps unpinned:\n{log}"
    );
    let pins: Vec<String> = std::fs::read_dir(&agent.bpffs)
        .expect("pins")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(pins.iter().all(|p| !p.ends_with("_V0")), "{pins:?}");
    assert_eq!(
        attached_programs(&agent.cgroup).len(),
        SOCKET_PROGRAMS,
        "one program per hook after the swap"
    );
    // The new maps are the ones in use: a change still takes effect.
    agent.write(
        "web.yaml",
        &service_with_endpoints(
            "web",
            "198.19.0.10",
            &[HTTP],
            &ServiceOpts::default(),
            &endpoints[1..],
        ),
    );
    agent.wait_backends("demo/web:http", 1);
    assert_eq!(
        t.probe(&["--to", "198.19.0.10:80", "--count", "20"])
            .count("web-1"),
        20
    );
}

/// Entries in the pinned loadBalancerSourceRanges trie, from the kernel (bpftool).
fn source_range_entries(agent: &Agent) -> usize {
    let out = integration::run(
        std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(agent.bpffs.join(proxy_common::names::MAP_SOURCE_RANGES)),
    );
    let entries: serde_json::Value = serde_json::from_str(&out).expect("bpftool json");
    entries.as_array().map_or(0, Vec::len)
}

/// A LoadBalancer whose loadBalancerSourceRanges shrink, and then which is deleted,
/// while no agent runs: the restarted agent reads back what the trie holds and removes
/// what is no longer asked for, instead of leaving it (or rewriting it) for good.
#[test]
fn source_ranges_changed_while_the_agent_was_down_converge() {
    require_privileges!();
    let t = Topology::new(1);
    let mut agent = Agent::new(&t);
    let endpoints = t.ready_endpoints();
    let lb = |ranges: &str| {
        service_with_endpoints(
            "web",
            "198.19.0.10",
            &[HTTP],
            &ServiceOpts {
                type_: Some("LoadBalancer"),
                spec_extra: &format!("  loadBalancerSourceRanges: [{ranges}]\n"),
                status: "status: {loadBalancer: {ingress: [{ip: 198.19.7.7}]}}\n",
                ..Default::default()
            },
            &endpoints,
        )
    };
    agent.write("web.yaml", &lb("198.18.100.0/24, 203.0.113.0/24"));
    agent.start();
    agent.wait_backends("demo/web:http", 1);
    let wait_entries = |agent: &Agent, n: usize| {
        agent.wait_for(
            &format!("{n} source range entries"),
            Duration::from_secs(10),
            |_| source_range_entries(agent) == n,
        );
    };
    wait_entries(&agent, 2);

    agent.stop();
    agent.write("web.yaml", &lb("198.18.100.0/24"));
    agent.start();
    wait_entries(&agent, 1);
    // Converged, not rewritten at every start: a second restart writes nothing.
    agent.stop();
    let syncs = |agent: &Agent| agent.log().matches("\"synced\"").count();
    let before = syncs(&agent);
    agent.start();
    agent.wait_for("the second restart's sync", Duration::from_secs(10), |_| {
        syncs(&agent) > before
    });
    let log = agent.log();
    let last_sync = log
        .lines()
        .rfind(|l| l.contains("\"synced\""))
        .unwrap_or_default();
    assert!(
        last_sync.contains("\"written\":0"),
        "nothing to write after a restart with nothing changed: {last_sync}"
    );

    agent.stop();
    agent.remove("web.yaml");
    agent.start();
    wait_entries(&agent, 0);
}

/// Removes a pin directory the test's dataplane pinned maps in (nothing attached: the
/// dataplane is never activated, so there are no links or tc filters to remove).
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Entries no installed frontend owns, planted through the pinned maps while a dataplane
/// serves a frontend (the source range, name and member of a frontend that does not
/// exist), are removed by one `prune_orphans`, which leaves every entry of the live
/// frontend where it was, its slots and counters included.
#[test]
fn prune_orphans_removes_entries_planted_while_the_dataplane_runs() {
    use std::net::Ipv4Addr;

    use aya::maps::lpm_trie::Key as LpmKey;
    use proxy_common::{Member, ServiceName};
    use proxy_user::{
        dataplane::{
            Change, Dataplane as _,
            ebpf::{EbpfDataplane, convert, entries, loader::LoadOptions, maps::Maps},
        },
        model::{
            BackendAddr, FrontendAddr, FrontendKind, FrontendSpec, Protocol, SourceRanges,
            WeightedBackend,
        },
    };

    require_privileges!();
    let id = integration::unique("epxprune");
    let cgroup = integration::Cgroup::new(&id);
    let pins = PinDir(std::path::PathBuf::from("/sys/fs/bpf").join(&id));
    let mut dataplane =
        EbpfDataplane::open(&pins.0, &cgroup.path, LoadOptions::default(), Some(&[]))
            .expect("open the dataplane");
    let frontend_at = |last: u8| FrontendAddr {
        ip: Ipv4Addr::new(198, 19, 7, last).into(),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let backend = WeightedBackend {
        flows_only: false,
        addr: BackendAddr {
            ip: Ipv4Addr::new(198, 18, 1, 2).into(),
            port: 8080,
        },
        weight: 1,
    };
    let range = (Ipv4Addr::new(198, 18, 100, 0).into(), 24);
    let spec = FrontendSpec {
        service: "demo/web:http".into(),
        kind: FrontendKind::LoadBalancer,
        affinity_timeout_s: 0,
        local_only: false,
        backends: vec![backend].into(),
        serving_anywhere: true,
        external_local: None,
        source_ranges: Some(Box::new(SourceRanges {
            cidrs: vec![range],
            allow_node: false,
        })),
        health_check_node_port: None,
    };
    let report = dataplane.apply(vec![Change::Upsert(frontend_at(7), spec)]);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(
        dataplane.prune_orphans().expect("prune"),
        0,
        "nothing to prune"
    );

    // A second handle on the pinned maps, as any other process would open them.
    let mut maps = Maps::from_pins(&pins.0).expect("open the pinned maps");
    let counts = |maps: &Maps| {
        [
            maps.services.keys().count(),
            maps.members.keys().count(),
            maps.names.keys().count(),
            maps.source_ranges.keys().count(),
        ]
    };
    let live = convert::frontend(&frontend_at(7));
    let before = counts(&maps);
    assert_eq!(before, [1, 1, 1, 1]);
    let value = maps.services.get(&live, 0).expect("live value");
    let live_slot = maps.slots.get(&value.slot_base, 0).expect("live slot");
    assert_eq!(live_slot, convert::backend(&backend.addr));

    let ghost = convert::frontend(&frontend_at(8));
    let (prefix_len, ghost_range) = entries::source_range_key(ghost, range.0, range.1);
    maps.source_ranges
        .insert(&LpmKey::new(prefix_len, ghost_range), 1, 0)
        .expect("plant a source range");
    maps.names
        .insert(ghost, ServiceName::new("demo/ghost:http"), 0)
        .expect("plant a name");
    maps.members
        .insert(
            entries::member_key(ghost, &backend),
            Member {
                weight: 1,
                flags: 0,
            },
            0,
        )
        .expect("plant a member");
    assert_eq!(counts(&maps), [1, 2, 2, 2]);

    assert_eq!(dataplane.prune_orphans().expect("prune"), 3);
    assert_eq!(
        counts(&maps),
        before,
        "exactly the planted entries are gone"
    );
    assert!(
        maps.names.get(&live, 0).is_ok(),
        "the live frontend keeps its name"
    );
    assert_eq!(
        maps.slots.get(&value.slot_base, 0).ok(),
        Some(live_slot),
        "the live frontend keeps its slots"
    );
    assert_eq!(
        maps.services.get(&live, 0).ok(),
        Some(value),
        "and its value, region and id"
    );
    assert_eq!(dataplane.prune_orphans().expect("prune"), 0);
    drop(dataplane);
}
