//! Bad input never costs a working Service: a full map (and nothing of a refused frontend
//! is left behind), an unparsable file, an IPv6 Service. Each is reported naming the
//! object and the cause; the agent keeps running.

use std::time::Duration;

use integration::{
    Agent, Topology,
    manifests::{HTTP, ServiceOpts, service_with_endpoints},
    require_privileges,
};

#[test]
fn a_full_map_refuses_only_the_overflowing_service() {
    require_privileges!();
    let t = Topology::new(3);
    let mut agent = Agent::new(&t);
    // Room for 7 slots: `a` (3) and `b` (3) fit, `c` (3 more) does not.
    agent.extra_args = vec!["--max-backend-slots".into(), "7".into()];
    let eps = t.ready_endpoints();
    agent.write(
        "a.yaml",
        &service_with_endpoints("a", "198.19.0.1", &[HTTP], &ServiceOpts::default(), &eps),
    );
    agent.write(
        "b.yaml",
        &service_with_endpoints("b", "198.19.0.2", &[HTTP], &ServiceOpts::default(), &eps),
    );
    agent.start();
    agent.wait_backends("demo/a:http", 3);
    agent.wait_backends("demo/b:http", 3);
    agent.write(
        "c.yaml",
        &service_with_endpoints("c", "198.19.0.3", &[HTTP], &ServiceOpts::default(), &eps),
    );
    agent.wait_for("the refusal of demo/c", Duration::from_secs(5), |_| {
        agent
            .log()
            .contains("Service demo/c:http: frontend 198.19.0.3:80/TCP not programmed")
    });
    let log = agent.log();
    assert!(
        log.contains(&format!(
            "the {} map is full (7 entries)",
            proxy_common::names::MAP_SLOTS
        )),
        "{log}"
    );
    for vip in ["198.19.0.1:80", "198.19.0.2:80"] {
        let report = t.probe(&["--to", vip, "--count", "30"]);
        assert_eq!(
            report.answers.values().sum::<usize>(),
            30,
            "{vip} keeps working: {report:?}"
        );
    }
    // The refused service was rolled back whole: no half-written frontend answers for it.
    let report = t.probe(&["--to", "198.19.0.3:80", "--count", "1"]);
    assert_eq!(report.errors.get("ENETUNREACH"), Some(&1), "{report:?}");
    // Freeing room lets it in on the next change.
    agent.remove("a.yaml");
    agent.write(
        "c.yaml",
        &service_with_endpoints(
            "c",
            "198.19.0.3",
            &[HTTP],
            &ServiceOpts::default(),
            &eps[..2],
        ),
    );
    agent.wait_backends("demo/c:http", 2);
    assert_eq!(
        t.probe(&["--to", "198.19.0.3:80", "--count", "10"])
            .answers
            .values()
            .sum::<usize>(),
        10
    );
}

#[test]
fn unusable_objects_are_named_and_the_rest_served() {
    require_privileges!();
    let t = Topology::new(1);
    let mut agent = Agent::new(&t);
    let eps = t.ready_endpoints();
    agent.write(
        "good.yaml",
        &service_with_endpoints("good", "198.19.0.1", &[HTTP], &ServiceOpts::default(), &eps),
    );
    agent.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken\n",
    );
    agent.write(
        "badip.yaml",
        &service_with_endpoints(
            "badip",
            "198.19.0.300",
            &[HTTP],
            &ServiceOpts::default(),
            &eps,
        ),
    );
    agent.write("port.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: badport, namespace: demo}\nspec: {clusterIP: 198.19.0.5, ports: [{port: eighty}]}\n");
    agent.start();
    agent.wait_backends("demo/good:http", 1);
    assert_eq!(
        t.probe(&["--to", "198.19.0.1:80", "--count", "10"])
            .count("web-0"),
        10
    );
    let log = agent.log();
    assert!(
        log.contains("broken.yaml: document 1 is not valid YAML or JSON"),
        "{log}"
    );
    assert!(
        // The log is JSON: the quotes around the address are escaped.
        log.contains(r#"Service demo/badip: clusterIP \"198.19.0.300\" is not an IP address"#),
        "{log}"
    );
    assert!(
        log.contains("Service demo/badport") && log.contains("does not parse"),
        "{log}"
    );
    // Still running and still applying edits.
    agent.write(
        "good.yaml",
        &service_with_endpoints("good", "198.19.0.1", &[HTTP], &ServiceOpts::default(), &[]),
    );
    agent.wait_backends("demo/good:http", 0);
}

/// A frontend with externalTrafficPolicy Local writes this node's endpoints as a table of
/// their own before its own value. When the value then does not fit, that table goes
/// too: nothing of the refused frontend stays in the maps (its frontend id is handed out
/// again, and a table left under it would count into another frontend's counters).
#[test]
fn a_refused_local_policy_frontend_leaves_nothing_behind() {
    require_privileges!();
    refused_local_policy_frontend(Arrives::AfterStart);
}

/// The same at a cold start, where new frontends are written in batches first.
#[test]
fn a_refused_local_policy_frontend_leaves_nothing_behind_at_a_cold_start() {
    require_privileges!();
    refused_local_policy_frontend(Arrives::BeforeStart);
}

#[derive(PartialEq)]
enum Arrives {
    BeforeStart,
    AfterStart,
}

fn refused_local_policy_frontend(arrives: Arrives) {
    let t = Topology::new(3);
    let mut agent = Agent::new(&t);
    // Room for 2 slots: the ExternalIP's local table (1, this node's endpoint) fits, its
    // table of every endpoint (3) does not, nor does the ClusterIP's (3).
    agent.extra_args = ["--max-backend-slots", "2", "--node-name", "node-a"]
        .map(String::from)
        .to_vec();
    let mut eps = t.ready_endpoints();
    eps[0].node = Some("node-a");
    if arrives == Arrives::AfterStart {
        agent.start();
    }
    agent.write(
        "c.yaml",
        &service_with_endpoints(
            "c",
            "198.19.0.3",
            &[HTTP],
            &ServiceOpts {
                spec_extra: "  externalIPs: [198.19.0.2]\n  externalTrafficPolicy: Local\n",
                ..Default::default()
            },
            &eps,
        ),
    );
    if arrives == Arrives::BeforeStart {
        agent.start();
    }
    agent.wait_for("the refusal of demo/c", Duration::from_secs(5), |_| {
        agent
            .log()
            .contains("Service demo/c:http: frontend 198.19.0.2:80/TCP not programmed")
    });
    let status: serde_json::Value =
        serde_json::from_slice(&agent.proxyctl(&["status", "--json"]).stdout).expect("status");
    let services = status["maps"]
        .as_array()
        .and_then(|maps| {
            maps.iter()
                .find(|m| m["map"] == proxy_common::names::MAP_SERVICES)
        })
        .unwrap_or_else(|| panic!("no services map in {status}"));
    assert_eq!(services["entries"], 0, "{status}\n{}", agent.log());
    let report = t.probe(&["--to", "198.19.0.2:80", "--count", "1"]);
    assert_eq!(report.errors.get("ENETUNREACH"), Some(&1), "{report:?}");
}
