//! The agent's life: manifest edits, atomic updates under load, stop, restart, cleanup.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use integration::{
    Agent, SOCKET_PROGRAMS, Topology, attached_programs,
    manifests::{DNS, Endpoint, HTTP, ServiceOpts, service_with_endpoints},
    require_privileges, run,
};

const VIP: &str = "198.19.0.20";

fn web(t: &Topology, which: &[usize], opts: &ServiceOpts) -> String {
    let endpoints: Vec<Endpoint> = which
        .iter()
        .map(|i| Endpoint::ready(&t.backends[*i].ip, &t.backends[*i].name))
        .collect();
    service_with_endpoints("web", VIP, &[HTTP, DNS], opts, &endpoints)
}

fn start(t: &Topology, which: &[usize]) -> Agent {
    let mut agent = Agent::new(t);
    agent.write("web.yaml", &web(t, which, &ServiceOpts::default()));
    agent.start();
    agent.wait_backends("demo/web:http", which.len());
    agent
}

#[test]
fn manifest_edit_is_reflected_within_a_second() {
    require_privileges!();
    let t = Topology::new(2);
    let agent = start(&t, &[0]);
    let to = format!("{VIP}:80");
    assert_eq!(t.probe(&["--to", &to, "--count", "5"]).count("web-0"), 5);
    agent.write("web.yaml", &web(&t, &[1], &ServiceOpts::default()));
    let edited = Instant::now();
    // The agent polls every 100 ms here (200 ms by default). Allow a generous margin for a
    // loaded CI machine; the measured latency is printed for the record.
    loop {
        let report = t.probe(&["--to", &to, "--count", "1"]);
        if report.count("web-1") == 1 {
            break;
        }
        assert!(
            edited.elapsed() < Duration::from_secs(3),
            "edit not reflected after 3 s: {report:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("edit reflected after {:?}", edited.elapsed());
    let after = t.probe(&["--to", &to, "--count", "50"]);
    assert_eq!(after.count("web-1"), 50, "{after:?}");
}

#[test]
fn updates_are_atomic_for_connecting_clients() {
    require_privileges!();
    let t = Topology::new(4);
    let agent = start(&t, &[0, 1]);
    let done = Arc::new(AtomicBool::new(false));
    // Flip between two backend sets 12 times while a client connects in a loop.
    let flipper = {
        let done = Arc::clone(&done);
        let sets = [
            web(&t, &[2, 3], &ServiceOpts::default()),
            web(&t, &[0, 1], &ServiceOpts::default()),
        ];
        let manifests = agent.manifests.clone();
        std::thread::spawn(move || {
            for flip in 0..12 {
                let tmp = manifests.join(".web.yaml.tmp");
                std::fs::write(&tmp, &sets[flip % 2]).expect("write");
                std::fs::rename(&tmp, manifests.join("web.yaml")).expect("rename");
                std::thread::sleep(Duration::from_millis(150));
            }
            done.store(true, Ordering::Relaxed);
        })
    };
    let mut answers: BTreeSet<String> = BTreeSet::new();
    let (mut attempts, mut failures) = (0, Vec::new());
    while !done.load(Ordering::Relaxed) {
        let report = t.probe(&["--to", &format!("{VIP}:80"), "--count", "200"]);
        attempts += report.attempts;
        answers.extend(report.answers.into_keys());
        failures.extend(report.errors);
    }
    flipper.join().expect("flipper");
    assert!(
        failures.is_empty(),
        "no spurious refusal or failure in {attempts} connections across 12 changes: {failures:?}"
    );
    assert_eq!(answers.len(), 4, "both sets were served: {answers:?}");
    eprintln!("{attempts} connections across 12 backend-set changes, none failed");
}

#[test]
fn traffic_survives_agent_stop_and_kill() {
    require_privileges!();
    let t = Topology::new(2);
    let mut agent = start(&t, &[0, 1]);
    let to = format!("{VIP}:80");
    let status = agent.stop();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    let report = t.probe(&["--to", &to, "--count", "40"]);
    assert_eq!(
        report.answers.values().sum::<usize>(),
        40,
        "served while stopped: {report:?}"
    );
    // proxyctl still explains the node with the agent gone.
    let out = agent.proxyctl(&["services"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("demo/web:http"),
        "{out:?}"
    );
    let backends: serde_json::Value =
        serde_json::from_slice(&agent.proxyctl(&["backends", "--json"]).stdout).expect("json");
    let expected: Vec<serde_json::Value> = t
        .backends
        .iter()
        .flat_map(|b| [format!("{}:5353", b.ip), format!("{}:8080", b.ip)])
        .map(serde_json::Value::from)
        .collect();
    assert_eq!(
        backends
            .as_array()
            .map(|b| b.iter().map(|r| r["address"].clone()).collect::<Vec<_>>()),
        Some(expected),
        "{backends}"
    );
    assert_eq!(backends[1]["used_by"][0]["service"], "demo/web:http");

    agent.start();
    agent.wait_backends("demo/web:http", 2);
    agent.kill();
    let report = t.probe(&["--to", &to, "--count", "40"]);
    assert_eq!(
        report.answers.values().sum::<usize>(),
        40,
        "served after SIGKILL: {report:?}"
    );
}

#[test]
fn restart_adopts_instead_of_attaching_twice() {
    require_privileges!();
    let t = Topology::new(2);
    let mut agent = start(&t, &[0, 1]);
    let before = attached_programs(&agent.cgroup);
    assert_eq!(
        before.len(),
        SOCKET_PROGRAMS,
        "every socket program attached: {before:?}"
    );
    agent.stop();
    agent.start();
    agent.wait_backends("demo/web:http", 2);
    // Wait for the restarted agent's first sync (it adopts after it), then compare.
    agent.wait_for("the restart's first sync", Duration::from_secs(10), |_| {
        agent.log().matches("\"synced\"").count() == 2
            && agent.log().matches("\"outcome\":\"Adopted\"").count() == SOCKET_PROGRAMS
    });
    let after = attached_programs(&agent.cgroup);
    assert_eq!(before, after, "the same programs stay attached, none added");
    assert_eq!(
        agent.log().matches("\"outcome\":\"Adopted\"").count(),
        SOCKET_PROGRAMS,
        "{}",
        agent.log()
    );
    let report = t.probe(&["--to", &format!("{VIP}:80"), "--count", "20"]);
    assert_eq!(report.answers.values().sum::<usize>(), 20);
    // Nothing changed while it was down, so the restart rewrote nothing.
    let restarted_log = agent.log();
    let syncs: Vec<&str> = restarted_log
        .lines()
        .filter(|l| l.contains("\"synced\""))
        .collect();
    assert_eq!(syncs.len(), 2, "one full sync per start: {syncs:?}");
    assert!(
        syncs[0].contains("\"written\":2"),
        "the first start wrote both frontends: {}",
        syncs[0]
    );
    assert!(
        syncs[1].contains("\"written\":0") && syncs[1].contains("\"removed\":0"),
        "the restart found the kernel as desired and wrote nothing: {}",
        syncs[1]
    );
}

#[test]
fn cleanup_leaves_nothing_behind() {
    require_privileges!();
    let t = Topology::new(1);
    let mut agent = start(&t, &[0]);
    let programs = attached_programs(&agent.cgroup);
    let map_ids: Vec<String> = std::fs::read_dir(&agent.bpffs)
        .expect("pins")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("EPX_"))
        .map(|e| {
            let out = run(std::process::Command::new("bpftool")
                .args(["-j", "map", "show", "pinned"])
                .arg(e.path()));
            let v: serde_json::Value = serde_json::from_str(&out).expect("json");
            v["id"].to_string()
        })
        .collect();
    assert_eq!(map_ids.len(), proxy_common::names::ALL_MAPS.len());
    agent.stop();
    run(&mut agent.cleanup_command());
    assert!(!agent.bpffs.exists(), "pin directory removed");
    assert!(
        attached_programs(&agent.cgroup).is_empty(),
        "no program attached to the cgroup"
    );
    // The kernel frees programs and maps asynchronously once their last reference is gone.
    for (kind, id) in programs
        .iter()
        .map(|(id, _)| ("prog", id.to_string()))
        .chain(map_ids.into_iter().map(|id| ("map", id)))
    {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::process::Command::new("bpftool")
            .args([kind, "show", "id", &id])
            .output()
            .expect("bpftool")
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "{kind} {id} still exists 10 s after cleanup"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Without the programs, the service address is not translated any more.
    let report = t.probe(&["--to", &format!("{VIP}:80"), "--count", "1"]);
    assert_eq!(report.errors.get("ENETUNREACH"), Some(&1), "{report:?}");
    let out = agent.proxyctl(&["services"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is proxy-agent running on this node?"),
        "{out:?}"
    );
}
