//! Operating the agent: /metrics, /healthz and /livez as kube-proxy serves them.

use std::time::Duration;

use integration::{
    Agent, Topology,
    manifests::{HTTP, ServiceOpts, service_with_endpoints},
    require_privileges,
};

#[test]
fn metrics_and_health_report_what_the_node_does() {
    require_privileges!();
    let t = Topology::new(2);
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
    agent.write(
        "empty.yaml",
        &service_with_endpoints(
            "empty",
            "198.19.0.11",
            &[HTTP],
            &ServiceOpts::default(),
            &[],
        ),
    );
    agent.write(
        "badip.yaml",
        &service_with_endpoints(
            "badip",
            "198.19.0.300",
            &[HTTP],
            &ServiceOpts::default(),
            &[],
        ),
    );
    agent.start();
    agent.wait_backends("demo/web:http", 2);
    agent.wait_for("health", Duration::from_secs(5), |_| {
        agent.http_get(10256, "/healthz").0 == 200
    });

    let (status, body) = agent.http_get(10256, "/healthz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"lastUpdated\""), "{body}");
    assert_eq!(agent.http_get(10256, "/livez").0, 200);

    assert_eq!(
        t.probe(&["--to", "198.19.0.10:80", "--count", "25"])
            .answers
            .values()
            .sum::<usize>(),
        25
    );
    assert_eq!(
        t.probe(&["--to", "198.19.0.11:80", "--count", "3"])
            .errors
            .get("ECONNREFUSED"),
        Some(&3)
    );

    let web = "{service=\"demo/web:http\",frontend=\"198.19.0.10:80/TCP\"}";
    let empty = "{service=\"demo/empty:http\",frontend=\"198.19.0.11:80/TCP\"}";
    assert_eq!(
        agent.metric(&format!("ebpf_proxy_service_connections_total{web}")),
        Some(25.0)
    );
    assert_eq!(
        agent.metric(&format!("ebpf_proxy_service_rejected_total{empty}")),
        Some(3.0)
    );
    assert_eq!(
        agent.metric("ebpf_proxy_datapath_events_total{event=\"rejected_no_endpoint\"}"),
        Some(3.0)
    );
    assert_eq!(
        agent.metric(&format!(
            "ebpf_proxy_map_entries{{map=\"{}\"}}",
            proxy_common::names::MAP_SERVICES
        )),
        Some(2.0)
    );
    assert_eq!(
        agent.metric(&format!(
            "ebpf_proxy_map_capacity{{map=\"{}\"}}",
            proxy_common::names::MAP_SERVICES
        )),
        Some(65536.0)
    );
    assert_eq!(
        agent.metric("ebpf_proxy_objects_rejected_total{reason=\"invalid_cluster_ip\"}"),
        Some(1.0)
    );
    assert!(
        agent
            .metric("kubeproxy_sync_proxy_rules_duration_seconds_count")
            .is_some_and(|n| n >= 1.0)
    );
    assert!(
        agent
            .metric("kubeproxy_sync_full_proxy_rules_duration_seconds_count")
            .is_some_and(|n| n >= 1.0)
    );
    assert_eq!(
        agent.metric("kubeproxy_sync_proxy_rules_service_changes_total"),
        Some(3.0)
    );
    assert!(
        agent
            .metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds")
            .is_some_and(|t| t > 1.0e9)
    );

    // A change is a partial sync.
    agent.remove("empty.yaml");
    agent.wait_for("the removal in the metrics", Duration::from_secs(5), |_| {
        agent.metric(&format!(
            "ebpf_proxy_map_entries{{map=\"{}\"}}",
            proxy_common::names::MAP_SERVICES
        )) == Some(1.0)
    });
    assert_eq!(
        agent.metric("kubeproxy_sync_full_proxy_rules_duration_seconds_count"),
        Some(1.0),
        "one full sync at start"
    );
    assert_eq!(
        agent.metric("kubeproxy_sync_partial_proxy_rules_duration_seconds_count"),
        Some(1.0),
        "the removal was one partial sync"
    );
}
