//! Traffic through restarts and upgrades: zero failed connections while the agent is
//! killed, restarted, and replaced by one whose maps have another layout.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use integration::{
    Agent, Report, Topology, attached_programs,
    manifests::{HTTP, ServiceOpts, service_with_endpoints},
    require_privileges,
};

/// Connects in a loop from another thread until stopped; returns every report.
struct ClientLoop {
    stop: Arc<AtomicBool>,
    reports: Arc<Mutex<Vec<Report>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ClientLoop {
    /// Also on a failed assertion: the thread holds the topology, which must be dropped.
    fn drop(&mut self) {
        self.halt();
    }
}

impl ClientLoop {
    fn start(t: &Arc<Topology>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let reports = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (t, stop, reports) = (t.clone(), stop.clone(), reports.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let report = t.probe(&[
                        "--to",
                        "198.19.0.10:80",
                        "--count",
                        "50",
                        "--interval-ms",
                        "2",
                    ]);
                    reports.lock().expect("reports").push(report);
                }
            })
        };
        Self {
            stop,
            reports,
            thread: Some(thread),
        }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn finish(mut self) -> (usize, Vec<String>) {
        self.halt();
        let reports = self.reports.lock().expect("reports");
        let answered = reports
            .iter()
            .map(|r| r.answers.values().sum::<usize>())
            .sum();
        let errors = reports
            .iter()
            .flat_map(|r| r.errors.iter().map(|(e, n)| format!("{e} x{n}")))
            .collect();
        (answered, errors)
    }
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
    let client = ClientLoop::start(&t);
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
        if let Some(base) = name.strip_suffix("_V1") {
            std::fs::rename(entry.path(), agent.bpffs.join(format!("{base}_V0")))
                .expect("rename pin");
            renamed += 1;
        }
    }
    assert_eq!(renamed, proxy_common::names::ALL_MAPS.len());
    std::thread::sleep(Duration::from_millis(200));
    agent.start();
    agent.wait_for(
        "the swap to the new layout",
        Duration::from_secs(10),
        |_| agent.log().matches("\"outcome\":\"Replaced\"").count() == 4,
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
        proxy_common::names::ALL_MAPS.len(),
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
        4,
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
