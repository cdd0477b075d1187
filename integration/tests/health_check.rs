//! The health check node port of a LoadBalancer Service with externalTrafficPolicy Local,
//! in both modes: 200 and the local endpoint count while this node has ready endpoints,
//! 503 when it has none, closed when the Service goes, as kube-proxy answers load
//! balancers. Asked from inside the agent's network namespace.

use std::time::{Duration, Instant};

use integration::{
    Agent, Topology,
    manifests::{Endpoint, HTTP, ServiceOpts, service_with_endpoints},
    require_privileges,
};

const VIP: &str = "198.19.0.20";
const PORT: u16 = 32_100;

/// demo/lb with one endpoint per backend of `t`, each on the node named in `nodes`.
fn lb(t: &Topology, nodes: &[&'static str]) -> String {
    let pods: Vec<String> = (0..t.backends.len()).map(|i| format!("web-{i}")).collect();
    let endpoints: Vec<Endpoint> = t
        .backends
        .iter()
        .zip(&pods)
        .zip(nodes)
        .map(|((b, pod), node)| Endpoint {
            node: Some(node),
            ..Endpoint::ready(&b.ip, pod)
        })
        .collect();
    let extra = format!("  externalTrafficPolicy: Local\n  healthCheckNodePort: {PORT}\n");
    let opts = ServiceOpts {
        type_: Some("LoadBalancer"),
        spec_extra: &extra,
        status: "status: {loadBalancer: {ingress: [{ip: 198.19.7.7}]}}\n",
        ..ServiceOpts::default()
    };
    service_with_endpoints("lb", VIP, &[HTTP], &opts, &endpoints)
}

/// Polls the health check port until `accept(status, body)` holds.
fn wait_health(agent: &Agent, what: &str, accept: impl Fn(u16, &serde_json::Value) -> bool) {
    let start = Instant::now();
    let mut last = (0, String::new());
    while start.elapsed() < Duration::from_secs(10) {
        last = agent.http_get(PORT, "/");
        let body = serde_json::from_str(&last.1).unwrap_or(serde_json::Value::Null);
        if accept(last.0, &body) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: last answer {last:?}\nagent log:\n{}", agent.log());
}

fn health_check_follows_local_endpoints(mode: &'static str) {
    let t = Topology::new(2);
    let mut agent = Agent::new(&t);
    agent.mode = mode;
    agent.extra_args = vec!["--node-name".into(), "node-a".into()];
    // Both endpoints on this node.
    agent.write("lb.yaml", &lb(&t, &["node-a", "node-a"]));
    agent.start();
    wait_health(&agent, "200 with 2 local endpoints", |status, body| {
        status == 200
            && body["localEndpoints"] == 2
            && body["service"]["namespace"] == "demo"
            && body["service"]["name"] == "lb"
            && body["serviceProxyHealthy"] == true
    });
    // One moves to another node.
    agent.write("lb.yaml", &lb(&t, &["node-a", "node-b"]));
    wait_health(&agent, "200 with 1 local endpoint", |status, body| {
        status == 200 && body["localEndpoints"] == 1
    });
    // None left here: load balancers must stop sending to this node.
    agent.write("lb.yaml", &lb(&t, &["node-b", "node-b"]));
    wait_health(&agent, "503 with 0 local endpoints", |status, body| {
        status == 503 && body["localEndpoints"] == 0
    });
    // The Service goes: so does its port (curl reports status 000: nothing listens).
    agent.remove("lb.yaml");
    wait_health(&agent, "the port closed", |status, _| status == 0);
}

#[test]
fn health_check_follows_local_endpoints_ebpf() {
    require_privileges!();
    health_check_follows_local_endpoints("ebpf");
}

#[test]
fn health_check_follows_local_endpoints_iptables() {
    require_privileges!();
    health_check_follows_local_endpoints("iptables");
}

/// Wraps both backends' `iptables-restore` so that, while `hold` exists, a restore waits
/// (up to a minute) until the file goes, with `held` present while it waits: the test's
/// slow sync. Returns the directory to put first on the agent's PATH.
fn held_restore(dir: &std::path::Path, hold: &std::path::Path, held: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).expect("wrapper dir");
    for backend in ["nft", "legacy"] {
        let name = format!("iptables-{backend}-restore");
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .expect("sh");
        let real = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if real.is_empty() {
            continue;
        }
        let script = format!(
            "#!/bin/sh\nif [ -e {hold} ]; then\n  touch {held}\n  i=0\n  while [ -e {hold} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n  rm -f {held}\nfi\nexec {real} \"$@\"\n",
            hold = hold.display(),
            held = held.display(),
        );
        let path = dir.join(name);
        std::fs::write(&path, script).expect("wrapper");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// While an iptables sync is held for over 10 s, /healthz, /metrics and the health check
/// node port all answer: the sync runs on a thread of its own. /healthz keeps kube-proxy's
/// meaning: it turns unhealthy once a change has waited longer than --healthz-timeout,
/// and the health check port follows (`serviceProxyHealthy: false`, 503); both recover
/// when the sync completes.
#[test]
fn a_held_iptables_sync_blocks_nothing() {
    require_privileges!();
    let t = Topology::new(1);
    let mut agent = Agent::new(&t);
    agent.mode = "iptables";
    let work = agent.manifests.parent().expect("work dir").to_owned();
    let (hold, held) = (work.join("hold"), work.join("held"));
    let path = held_restore(&work.join("bin"), &hold, &held);
    agent.env = vec![("PATH".into(), path.into())];
    agent.extra_args = ["--node-name", "node-a", "--healthz-timeout", "3"]
        .map(String::from)
        .to_vec();
    agent.write("lb.yaml", &lb(&t, &["node-a"]));
    agent.start();
    wait_health(&agent, "200 with 1 local endpoint", |status, body| {
        status == 200 && body["localEndpoints"] == 1
    });

    // Hold the next restore, and make a change that needs one.
    std::fs::write(&hold, "").expect("hold");
    agent.write(
        "other.yaml",
        &service_with_endpoints(
            "other",
            "198.19.0.21",
            &[HTTP],
            &ServiceOpts::default(),
            &[],
        ),
    );
    let start = Instant::now();
    while !held.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the agent never ran iptables-restore for the change\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let held_at = Instant::now();
    let mut stale_seen = false;
    while held_at.elapsed() < Duration::from_secs(11) {
        let (status, body) = agent.http_get(10256, "/healthz");
        assert!(
            status == 200 || status == 503,
            "/healthz did not answer during the sync: {status} {body}"
        );
        if status == 503 {
            assert!(body.contains("\"healthy\":false"), "{body}");
            stale_seen = true;
            let (status, body) = agent.http_get(PORT, "/");
            let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            assert_eq!(
                status, 503,
                "the health check port follows /healthz: {body}"
            );
            assert_eq!(body["serviceProxyHealthy"], false, "{body}");
            assert_eq!(body["localEndpoints"], 1, "{body}");
        }
        let (status, metrics) = agent.http_get(10249, "/metrics");
        assert_eq!(status, 200, "/metrics did not answer during the sync");
        assert!(metrics.contains("kubeproxy_sync_proxy_rules_duration_seconds"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        held.exists(),
        "the sync was still held while every probe answered"
    );
    assert!(
        stale_seen,
        "/healthz never reported the overdue sync (--healthz-timeout 3 s, held 11 s)"
    );

    std::fs::remove_file(&hold).expect("release");
    wait_health(&agent, "200 again once the sync is done", |status, body| {
        status == 200 && body["serviceProxyHealthy"] == true
    });
    assert_eq!(agent.http_get(10256, "/healthz").0, 200);
    let services = agent.services();
    assert!(
        services.to_string().contains("demo/other"),
        "the held change is installed once released: {services}"
    );
}
