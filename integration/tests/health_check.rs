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
