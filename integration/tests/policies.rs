//! kube-proxy's endpoint selection with real sockets: internalTrafficPolicy Local, the
//! serving-terminating fallback, and frontends other than the ClusterIP as seen by
//! sockets on the node (NodePort, ExternalIP, LoadBalancer ingress).

use std::{fmt::Write as _, time::Duration};

use integration::{Agent, Topology, require_privileges};

/// One endpoint per backend host: (node, ready, serving, terminating).
fn slice(t: &Topology, conditions: &[(&str, bool, bool, bool)]) -> String {
    let mut y = String::from(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: demo\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n",
    );
    for (b, (node, ready, serving, terminating)) in t.backends.iter().zip(conditions) {
        let _ = write!(
            y,
            "- addresses: [\"{}\"]\n  nodeName: {node}\n  targetRef: {{kind: Pod, name: {}}}\n  conditions: {{ready: {ready}, serving: {serving}, terminating: {terminating}}}\n",
            b.ip, b.name
        );
    }
    y
}

fn service(extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: demo}}\nspec:\n  clusterIP: 198.19.0.10\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]\n{extra_spec}"
    )
}

fn reached(t: &Topology, to: &str) -> Vec<String> {
    let report = t.probe(&["--to", to, "--count", "60"]);
    assert!(report.errors.is_empty(), "{to}: {report:?}");
    report.answers.into_keys().collect()
}

#[test]
fn internal_traffic_policy_local_and_the_terminating_fallback() {
    require_privileges!();
    let t = Topology::new(3);
    let mut agent = Agent::new(&t);
    agent.extra_args = vec!["--node-name".into(), "node-a".into()];
    agent.write("svc.yaml", &service("  internalTrafficPolicy: Local\n"));
    agent.write(
        "eps.yaml",
        &slice(
            &t,
            &[
                ("node-a", true, true, false),
                ("node-a", true, true, false),
                ("node-b", true, true, false),
            ],
        ),
    );
    agent.start();
    agent.wait_backends("demo/web:http", 2);
    assert_eq!(
        reached(&t, "198.19.0.10:80"),
        ["web-0", "web-1"],
        "only this node's endpoints"
    );

    // This node's endpoints terminate but still serve: they are used, not node-b's.
    agent.write(
        "eps.yaml",
        &slice(
            &t,
            &[
                ("node-a", false, true, true),
                ("node-a", false, true, true),
                ("node-b", true, true, false),
            ],
        ),
    );
    agent.wait_for("the terminating fallback", Duration::from_secs(5), |_| {
        reached(&t, "198.19.0.10:80") == ["web-0", "web-1"]
    });

    // Nothing local serves: dropped, which at the socket is an immediate refusal.
    agent.write(
        "eps.yaml",
        &slice(
            &t,
            &[
                ("node-a", false, false, true),
                ("node-a", false, false, true),
                ("node-b", true, true, false),
            ],
        ),
    );
    agent.wait_backends("demo/web:http", 0);
    let report = t.probe(&[
        "--to",
        "198.19.0.10:80",
        "--count",
        "3",
        "--timeout-ms",
        "5000",
    ]);
    assert_eq!(report.errors.get("ECONNREFUSED"), Some(&3), "{report:?}");
    assert_eq!(
        agent.metric("ebpf_proxy_datapath_events_total{event=\"dropped_no_local_endpoint\"}"),
        Some(3.0)
    );
    assert_eq!(
        agent.metric(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{traffic_policy=\"internal\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn cluster_policy_falls_back_to_serving_terminating_endpoints() {
    require_privileges!();
    let t = Topology::new(3);
    let mut agent = Agent::new(&t);
    agent.write("svc.yaml", &service(""));
    agent.write(
        "eps.yaml",
        &slice(
            &t,
            &[
                ("node-a", false, false, true),
                ("node-b", false, false, false),
                ("node-b", false, true, true),
            ],
        ),
    );
    agent.start();
    agent.wait_backends("demo/web:http", 1);
    assert_eq!(
        reached(&t, "198.19.0.10:80"),
        ["web-2"],
        "no ready endpoint: the serving and terminating one"
    );
    agent.write(
        "eps.yaml",
        &slice(
            &t,
            &[
                ("node-a", true, true, false),
                ("node-b", false, false, false),
                ("node-b", false, true, true),
            ],
        ),
    );
    agent.wait_for("the ready endpoint again", Duration::from_secs(5), |_| {
        reached(&t, "198.19.0.10:80") == ["web-0"]
    });
}

#[test]
fn node_port_external_ip_and_load_balancer_frontends_then_a_type_change() {
    require_privileges!();
    let t = Topology::new(2);
    let mut agent = Agent::new(&t);
    agent.extra_args = vec!["--node-name".into(), "node-a".into()];
    agent.write(
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 198.18.0.100}]}\n",
    );
    agent.write(
        "svc.yaml",
        &service("  type: LoadBalancer\n  externalIPs: [198.19.5.5]\nstatus: {loadBalancer: {ingress: [{ip: 198.19.6.6}, {ip: 198.19.6.7, ipMode: Proxy}]}}\n"),
    );
    agent.write(
        "eps.yaml",
        &slice(
            &t,
            &[("node-a", true, true, false), ("node-b", true, true, false)],
        ),
    );
    agent.start();
    // The NodePort on the Node's address and, for the node's own sockets, on localhost.
    agent.wait_for("five frontends", Duration::from_secs(5), |s| {
        s.as_array().is_some_and(|r| r.len() == 5)
    });
    for to in [
        "198.19.0.10:80",
        "198.18.0.100:30080",
        "127.0.0.1:30080",
        "127.0.0.2:30080",
        "198.19.5.5:80",
        "198.19.6.6:80",
    ] {
        assert_eq!(reached(&t, to), ["web-0", "web-1"], "{to}");
    }
    let proxy_mode = t.probe(&["--to", "198.19.6.7:80", "--count", "1"]);
    assert_eq!(
        proxy_mode.errors.get("ENETUNREACH"),
        Some(&1),
        "ipMode Proxy is left to the load balancer"
    );

    // Back to ClusterIP: the other frontends go, and nothing is left in the maps.
    agent.write("svc.yaml", &service(""));
    agent.wait_for("one frontend", Duration::from_secs(5), |s| {
        s.as_array().is_some_and(|r| r.len() == 1)
    });
    for to in ["198.18.0.100:30080", "198.19.5.5:80", "198.19.6.6:80"] {
        assert_eq!(
            t.probe(&["--to", to, "--count", "1"])
                .errors
                .get("ENETUNREACH"),
            Some(&1),
            "{to} removed"
        );
    }
    assert_eq!(
        t.probe(&["--to", "127.0.0.1:30080", "--count", "1"])
            .errors
            .get("ECONNREFUSED"),
        Some(&1),
        "the localhost NodePort removed: nothing listens on the client's loopback"
    );
    assert_eq!(reached(&t, "198.19.0.10:80"), ["web-0", "web-1"]);
    assert_eq!(
        agent.metric(&format!(
            "ebpf_proxy_map_entries{{map=\"{}\"}}",
            proxy_common::names::MAP_SERVICES
        )),
        Some(1.0)
    );
    assert_eq!(
        agent.metric(&format!(
            "ebpf_proxy_map_entries{{map=\"{}\"}}",
            proxy_common::names::MAP_MEMBERS
        )),
        Some(2.0)
    );
    assert_eq!(
        agent.metric(&format!(
            "ebpf_proxy_map_entries{{map=\"{}\"}}",
            proxy_common::names::MAP_SLOTS
        )),
        Some(2.0)
    );
    // The kernel agrees with the agent's accounting: count the pinned maps' real entries.
    let count = |map: &str| {
        let out = integration::run(
            std::process::Command::new("bpftool")
                .args(["-j", "map", "dump", "pinned"])
                .arg(agent.bpffs.join(map)),
        );
        serde_json::from_str::<serde_json::Value>(&out)
            .expect("json")
            .as_array()
            .map_or(0, Vec::len)
    };
    // (The slots array always holds its capacity; the metric above counts the slots the
    // service values use.)
    use proxy_common::names;
    assert_eq!(
        (
            count(names::MAP_SERVICES),
            count(names::MAP_MEMBERS),
            count(names::MAP_NAMES)
        ),
        (1, 2, 1)
    );
}
