//! Service and EndpointSlice YAML for tests and the demo.

use std::fmt::Write as _;

pub struct Port<'a> {
    pub name: &'a str,
    pub port: u16,
    pub target: u16,
    pub protocol: &'a str,
    /// Set for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
}

pub const HTTP: Port<'static> = Port {
    name: "http",
    port: 80,
    target: 8080,
    protocol: "TCP",
    node_port: None,
};
pub const DNS: Port<'static> = Port {
    name: "dns",
    port: 53,
    target: 5353,
    protocol: "UDP",
    node_port: None,
};

#[derive(Default)]
pub struct ServiceOpts<'a> {
    pub affinity_timeout: Option<u32>,
    pub weights: Option<&'a str>,
    /// `spec.type`; ClusterIP when unset.
    pub type_: Option<&'a str>,
    /// More `spec` fields, each line indented by two spaces
    /// (`  externalIPs: [198.19.5.5]\n`).
    pub spec_extra: &'a str,
    /// A `status:` section (`status: {loadBalancer: ...}\n`).
    pub status: &'a str,
}

pub fn service(name: &str, cluster_ip: &str, ports: &[Port], opts: &ServiceOpts) -> String {
    let mut y =
        format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: demo\n");
    if let Some(w) = opts.weights {
        let _ = write!(y, "  annotations:\n    ebpf-proxy.dev/weights: \"{w}\"\n");
    }
    let _ = write!(
        y,
        "spec:\n  type: {}\n  clusterIP: {cluster_ip}\n  ports:\n",
        opts.type_.unwrap_or("ClusterIP")
    );
    for p in ports {
        let _ = write!(
            y,
            "  - name: {}\n    port: {}\n    targetPort: {}\n    protocol: {}\n",
            p.name, p.port, p.target, p.protocol
        );
        if let Some(node_port) = p.node_port {
            let _ = writeln!(y, "    nodePort: {node_port}");
        }
    }
    if let Some(t) = opts.affinity_timeout {
        let _ = write!(
            y,
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {t}\n"
        );
    }
    y.push_str(opts.spec_extra);
    y.push_str(opts.status);
    y
}

/// One endpoint: address, pod name, and its conditions.
pub struct Endpoint<'a> {
    pub ip: &'a str,
    pub pod: &'a str,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `nodeName`, which decides whether the endpoint is local to the agent's node.
    pub node: Option<&'a str>,
}

impl<'a> Endpoint<'a> {
    pub fn ready(ip: &'a str, pod: &'a str) -> Self {
        Self {
            ip,
            pod,
            ready: true,
            serving: true,
            terminating: false,
            node: None,
        }
    }
}

pub fn endpoint_slice(
    service: &str,
    slice: &str,
    ports: &[Port],
    endpoints: &[Endpoint],
) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  namespace: demo\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n"
    );
    for p in ports {
        let _ = write!(
            y,
            "- name: {}\n  port: {}\n  protocol: {}\n",
            p.name, p.target, p.protocol
        );
    }
    y.push_str("endpoints:\n");
    for e in endpoints {
        let _ = write!(
            y,
            "- addresses: [\"{}\"]\n  conditions: {{ready: {}, serving: {}, terminating: {}}}\n  targetRef: {{kind: Pod, name: {}, namespace: demo}}\n",
            e.ip, e.ready, e.serving, e.terminating, e.pod
        );
        if let Some(node) = e.node {
            let _ = writeln!(y, "  nodeName: {node}");
        }
    }
    y
}

/// A Service and its slice in one multi-document file.
pub fn service_with_endpoints(
    name: &str,
    cluster_ip: &str,
    ports: &[Port],
    opts: &ServiceOpts,
    endpoints: &[Endpoint],
) -> String {
    format!(
        "{}---\n{}",
        service(name, cluster_ip, ports, opts),
        endpoint_slice(name, &format!("{name}-1"), ports, endpoints)
    )
}
