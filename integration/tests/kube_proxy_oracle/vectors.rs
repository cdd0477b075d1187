//! Packet-flow vectors from kube-proxy's pkg/proxy/iptables/proxier_test.go
//! (kubernetes/kubernetes), each case naming the test it comes from. The facts are
//! kube-proxy's, in its own addresses (mapped by `addresses`): the Services and
//! EndpointSlices its test builds, written as manifests, the pods that exist, and each
//! `packetFlowTest` (source, protocol, destination, expected output, masquerade).
//!
//! Left out, by case: SCTP ports and vectors (no SCTP client here), and what a vector
//! cannot mean on a real network (a comment says why at each).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// What kube-proxy's vector expects.
#[derive(Clone, Copy, Debug)]
pub enum Output {
    /// Translated to one of these `IP:port` backends.
    Backends(&'static [&'static str]),
    /// REJECT: the client is refused at once (TCP reset or ICMP port unreachable).
    Reject,
    /// DROP: the client hears nothing.
    Drop,
    /// `""`: no rule of kube-proxy's matches; the packet goes on untranslated, and no
    /// backend answers.
    Unhandled,
}

/// How the eBPF mode's outcome relates to kube-proxy's, when not the same.
#[derive(Clone, Copy, Debug)]
pub enum Ebpf {
    Same,
    /// A difference on purpose (listed in the README), with the reason.
    Differs(Output, &'static str),
}

#[derive(Debug)]
pub struct Vector {
    pub name: &'static str,
    pub source: &'static str,
    pub protocol: Protocol,
    pub dest: &'static str,
    pub port: u16,
    pub output: Output,
    /// kube-proxy masquerades the flow (the backend sees the node's address).
    pub masq: bool,
    pub ebpf: Ebpf,
}

impl Vector {
    const fn ebpf(self, ebpf: Ebpf) -> Self {
        Self { ebpf, ..self }
    }
}

/// A change after the first vectors: new manifests (replacing the case's), new vectors.
pub struct Step {
    pub manifests: &'static str,
    pub vectors: &'static [Vector],
}

/// A pod of the case: a backend (ports it serves) or a client (none).
pub struct Pod {
    pub ip: &'static str,
    pub on_this_node: bool,
    pub tcp: &'static [u16],
    pub udp: &'static [u16],
}

pub struct Case {
    /// The kube-proxy test (and subtest) the facts come from.
    pub test: &'static str,
    /// Its Services and EndpointSlices, in kube-proxy's addresses.
    pub manifests: &'static str,
    pub pods: &'static [Pod],
    /// kube-proxy's secondary node IPs (`testNodeIPAlt`), when the case uses them.
    pub alt_node_ips: &'static [&'static str],
    /// The agent flags standing for the kube-proxy options the case sets.
    pub agent_args: &'static [&'static str],
    /// This node's IP (`testNodeIP`, or `testNodeIPv6` in an IPv6 case): the case's
    /// family.
    pub node_ip: &'static str,
    pub vectors: &'static [Vector],
    /// Changes applied in order, each followed by its vectors.
    pub then: &'static [Step],
}

pub const NODE_IP: &str = "192.168.0.2";

const fn tcp(
    name: &'static str,
    source: &'static str,
    dest: &'static str,
    port: u16,
    output: Output,
    masq: bool,
) -> Vector {
    Vector {
        name,
        source,
        protocol: Protocol::Tcp,
        dest,
        port,
        output,
        masq,
        ebpf: Ebpf::Same,
    }
}

const fn udp(
    name: &'static str,
    source: &'static str,
    dest: &'static str,
    port: u16,
    output: Output,
    masq: bool,
) -> Vector {
    Vector {
        protocol: Protocol::Udp,
        ..tcp(name, source, dest, port, output, masq)
    }
}

use Output::{Backends, Drop, Reject, Unhandled};

/// TestClusterIPGeneral: two ClusterIP Services, one endpoint on this node and one on
/// node2, TargetPort, and TCP and UDP on one port number. (The test's dns-sctp port and
/// its SCTP vector are left out.)
pub const CLUSTER_IP_GENERAL: Case = Case {
    test: "TestClusterIPGeneral",
    manifests: r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  clusterIP: 172.30.0.41
  ports:
  - {name: http, port: 80, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: svc2, namespace: ns2}
spec:
  clusterIP: 172.30.0.42
  ports:
  - {name: http, port: 80, protocol: TCP}
  - {name: https, port: 443, protocol: TCP, targetPort: 8443}
  - {name: dns-udp, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 5353}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc1-1
  namespace: ns1
  labels: {kubernetes.io/service-name: svc1}
addressType: IPv4
endpoints:
- {addresses: ["10.180.0.1"], nodeName: node-a}
ports:
- {name: http, port: 80, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc2-1
  namespace: ns2
  labels: {kubernetes.io/service-name: svc2}
addressType: IPv4
endpoints:
- {addresses: ["10.180.0.1"], nodeName: node-a}
- {addresses: ["10.180.2.1"], nodeName: node2}
ports:
- {name: http, port: 80, protocol: TCP}
- {name: https, port: 8443, protocol: TCP}
- {name: dns-udp, port: 53, protocol: UDP}
- {name: dns-tcp, port: 5353, protocol: TCP}
"#,
    pods: &[
        Pod {
            ip: "10.180.0.1",
            on_this_node: true,
            tcp: &[80, 8443, 5353],
            udp: &[53],
        },
        Pod {
            ip: "10.180.2.1",
            on_this_node: false,
            tcp: &[80, 8443, 5353],
            udp: &[53],
        },
        // The client pod of most vectors.
        Pod {
            ip: "10.180.0.2",
            on_this_node: true,
            tcp: &[],
            udp: &[],
        },
    ],
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp(
            "simple clusterIP",
            "10.180.0.2",
            "172.30.0.41",
            80,
            Backends(&["10.180.0.1:80"]),
            false,
        ),
        tcp(
            "hairpin to cluster IP",
            "10.180.0.1",
            "172.30.0.41",
            80,
            Backends(&["10.180.0.1:80"]),
            true,
        ),
        tcp(
            "clusterIP with multiple endpoints",
            "10.180.0.2",
            "172.30.0.42",
            80,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            false,
        ),
        tcp(
            "clusterIP with TargetPort",
            "10.180.0.2",
            "172.30.0.42",
            443,
            Backends(&["10.180.0.1:8443", "10.180.2.1:8443"]),
            false,
        ),
        tcp(
            "clusterIP with TCP, UDP, and SCTP on same port (TCP)",
            "10.180.0.2",
            "172.30.0.42",
            53,
            Backends(&["10.180.0.1:5353", "10.180.2.1:5353"]),
            false,
        ),
        udp(
            "clusterIP with TCP, UDP, and SCTP on same port (UDP)",
            "10.180.0.2",
            "172.30.0.42",
            53,
            Backends(&["10.180.0.1:53", "10.180.2.1:53"]),
            false,
        ),
        udp(
            "TCP-only port does not match UDP traffic",
            "10.180.0.2",
            "172.30.0.42",
            80,
            Unhandled,
            false,
        ),
        tcp(
            "svc1 does not accept svc2's ports",
            "10.180.0.2",
            "172.30.0.41",
            443,
            Unhandled,
            false,
        ),
    ],
    then: &[],
};

const SOURCE_RANGES_FROM_PODS: &str = "eBPF mode: loadBalancerSourceRanges hold for traffic \
     from outside the node (the tc programs); a connect from the node's own sockets, pods on \
     it included, is translated before its source address is known and is not checked \
     (Cilium's behaviour too); kube-proxy drops a pod outside the ranges";
/// TestLoadBalancer: a LoadBalancer Service with two LoadBalancer IPs and source ranges
/// 192.168.0.0/24 (the nodes) and 203.0.113.0/25; its one endpoint names no node (so it
/// is not local; it runs on node2 here).
///
/// Left out: "same node to LB1/LB2, SNATted to LB1/LB2 (implicitly allowed)", whose
/// source is the LoadBalancer IP itself: it stands for a node's connection rewritten by
/// something outside kube-proxy, which no namespace here does.
pub const LOAD_BALANCER: Case = Case {
    test: "TestLoadBalancer",
    manifests: r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.41
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3001}
  loadBalancerSourceRanges: ["192.168.0.0/24", " 203.0.113.0/25"]
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.4}, {ip: 5.6.7.8}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc1-1
  namespace: ns1
  labels: {kubernetes.io/service-name: svc1}
addressType: IPv4
endpoints:
- {addresses: ["10.180.0.1"]}
ports:
- {name: p80, port: 80, protocol: TCP}
"#,
    pods: &[
        Pod {
            ip: "10.180.0.1",
            on_this_node: false,
            tcp: &[80],
            udp: &[],
        },
        Pod {
            ip: "10.0.0.2",
            on_this_node: true,
            tcp: &[],
            udp: &[],
        },
    ],
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp(
            "pod to cluster IP",
            "10.0.0.2",
            "172.30.0.41",
            80,
            Backends(&["10.180.0.1:80"]),
            false,
        ),
        tcp(
            "external to nodePort",
            "203.0.113.2",
            NODE_IP,
            3001,
            Backends(&["10.180.0.1:80"]),
            true,
        ),
        tcp(
            "nodePort bypasses LoadBalancerSourceRanges",
            "203.0.113.130",
            NODE_IP,
            3001,
            Backends(&["10.180.0.1:80"]),
            true,
        ),
        tcp(
            "accepted external to LB1",
            "203.0.113.2",
            "1.2.3.4",
            80,
            Backends(&["10.180.0.1:80"]),
            true,
        ),
        tcp(
            "accepted external to LB2",
            "203.0.113.2",
            "5.6.7.8",
            80,
            Backends(&["10.180.0.1:80"]),
            true,
        ),
        tcp(
            "blocked external to LB1",
            "203.0.113.130",
            "1.2.3.4",
            80,
            Drop,
            false,
        ),
        tcp(
            "blocked external to LB2",
            "203.0.113.130",
            "5.6.7.8",
            80,
            Drop,
            false,
        ),
        tcp(
            "pod to LB1 (blocked by LoadBalancerSourceRanges)",
            "10.0.0.2",
            "1.2.3.4",
            80,
            Drop,
            false,
        )
        .ebpf(Ebpf::Differs(
            Backends(&["10.180.0.1:80"]),
            SOURCE_RANGES_FROM_PODS,
        )),
        tcp(
            "pod to LB2 (blocked by LoadBalancerSourceRanges)",
            "10.0.0.2",
            "5.6.7.8",
            80,
            Drop,
            false,
        )
        .ebpf(Ebpf::Differs(
            Backends(&["10.180.0.1:80"]),
            SOURCE_RANGES_FROM_PODS,
        )),
        tcp(
            "node to LB1 (allowed by LoadBalancerSourceRanges)",
            NODE_IP,
            "1.2.3.4",
            80,
            Backends(&["10.180.0.1:80"]),
            true,
        ),
        tcp(
            "node to LB2 (allowed by LoadBalancerSourceRanges)",
            NODE_IP,
            "5.6.7.8",
            80,
            Backends(&["10.180.0.1:80"]),
            true,
        ),
    ],
    then: &[],
};

/// TestNodePorts, subtest "ipv4" (no `--nodeport-addresses`, localhost NodePorts on, as
/// kube-proxy defaults and the agent does): NodePorts on the node's addresses and on
/// 127.0.0.1. One endpoint names no node (on node2 here), one is local.
pub const NODE_PORTS: Case = Case {
    test: "TestNodePorts/ipv4",
    manifests: r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  type: NodePort
  clusterIP: 172.30.0.41
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3001}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc1-1
  namespace: ns1
  labels: {kubernetes.io/service-name: svc1}
addressType: IPv4
endpoints:
- {addresses: ["10.180.0.1"]}
- {addresses: ["10.180.2.1"], nodeName: node-a}
ports:
- {name: p80, port: 80, protocol: TCP}
"#,
    pods: &[
        Pod {
            ip: "10.180.0.1",
            on_this_node: false,
            tcp: &[80],
            udp: &[],
        },
        Pod {
            ip: "10.180.2.1",
            on_this_node: true,
            tcp: &[80],
            udp: &[],
        },
        Pod {
            ip: "10.0.0.2",
            on_this_node: true,
            tcp: &[],
            udp: &[],
        },
    ],
    alt_node_ips: &["192.168.1.2"],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp(
            "pod to cluster IP",
            "10.0.0.2",
            "172.30.0.41",
            80,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            false,
        ),
        tcp(
            "external to nodePort",
            "203.0.113.2",
            NODE_IP,
            3001,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            true,
        ),
        tcp(
            "node to nodePort",
            NODE_IP,
            NODE_IP,
            3001,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            true,
        ),
        tcp(
            "localhost to nodePort gets masqueraded",
            "127.0.0.1",
            "127.0.0.1",
            3001,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            true,
        ),
        tcp(
            "external to nodePort on secondary IP",
            "203.0.113.2",
            "192.168.1.2",
            3001,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            true,
        ),
    ],
    then: &[],
};

/// TestNodePorts, subtest "ipv4, localhost-nodeports disabled": the same Service with
/// `--localhost-nodeports false`; only the vector that differs from [`NODE_PORTS`].
pub const NODE_PORTS_WITHOUT_LOCALHOST: Case = Case {
    test: "TestNodePorts/ipv4, localhost-nodeports disabled",
    agent_args: &["--localhost-nodeports", "false"],
    vectors: &[tcp(
        "localhost to nodePort is ignored",
        "127.0.0.1",
        "127.0.0.1",
        3001,
        Unhandled,
        false,
    )],
    ..NODE_PORTS
};

/// TestExternalTrafficPolicyLocal: a LoadBalancer Service (ExternalIP, LoadBalancer IP,
/// NodePort) with externalTrafficPolicy Local; 10.180.2.1 is this node's endpoint and
/// 10.180.0.1 names no node (on node2 here). Pods reach every endpoint unmasqueraded;
/// external clients only the local one, keeping their address.
pub const EXTERNAL_TRAFFIC_POLICY_LOCAL: Case = Case {
    test: "TestExternalTrafficPolicyLocal",
    manifests: r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  clusterIP: 172.30.0.41
  externalIPs: [192.168.99.11]
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3001, targetPort: 80}
  healthCheckNodePort: 30000
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.4}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc1-1
  namespace: ns1
  labels: {kubernetes.io/service-name: svc1}
addressType: IPv4
endpoints:
- {addresses: ["10.180.0.1"]}
- {addresses: ["10.180.2.1"], nodeName: node-a}
ports:
- {name: p80, port: 80, protocol: TCP}
"#,
    pods: &[
        Pod {
            ip: "10.180.0.1",
            on_this_node: false,
            tcp: &[80],
            udp: &[],
        },
        Pod {
            ip: "10.180.2.1",
            on_this_node: true,
            tcp: &[80],
            udp: &[],
        },
        Pod {
            ip: "10.0.0.2",
            on_this_node: true,
            tcp: &[],
            udp: &[],
        },
    ],
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp(
            "pod to cluster IP hits both endpoints, unmasqueraded",
            "10.0.0.2",
            "172.30.0.41",
            80,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            false,
        ),
        tcp(
            "pod to external IP hits both endpoints, unmasqueraded",
            "10.0.0.2",
            "192.168.99.11",
            80,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            false,
        ),
        tcp(
            "external to external IP hits only local endpoint, unmasqueraded",
            "203.0.113.2",
            "192.168.99.11",
            80,
            Backends(&["10.180.2.1:80"]),
            false,
        ),
        tcp(
            "pod to LB IP hits only both endpoints, unmasqueraded",
            "10.0.0.2",
            "1.2.3.4",
            80,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            false,
        ),
        tcp(
            "external to LB IP hits only local endpoint, unmasqueraded",
            "203.0.113.2",
            "1.2.3.4",
            80,
            Backends(&["10.180.2.1:80"]),
            false,
        ),
        tcp(
            "pod to NodePort hits both endpoints, unmasqueraded",
            "10.0.0.2",
            NODE_IP,
            3001,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            false,
        ),
        tcp(
            "external to NodePort hits only local endpoint, unmasqueraded",
            "203.0.113.2",
            NODE_IP,
            3001,
            Backends(&["10.180.2.1:80"]),
            false,
        ),
    ],
    then: &[],
};

/// TestExternalTrafficPolicyCluster: the same Service with externalTrafficPolicy Cluster
/// (no health check port): every source reaches both endpoints; kube-proxy masquerades
/// everything but pod-to-ClusterIP.
pub const EXTERNAL_TRAFFIC_POLICY_CLUSTER: Case = Case {
    test: "TestExternalTrafficPolicyCluster",
    manifests: r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Cluster
  clusterIP: 172.30.0.41
  externalIPs: [192.168.99.11]
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3001, targetPort: 80}
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.4}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc1-1
  namespace: ns1
  labels: {kubernetes.io/service-name: svc1}
addressType: IPv4
endpoints:
- {addresses: ["10.180.0.1"]}
- {addresses: ["10.180.2.1"], nodeName: node-a}
ports:
- {name: p80, port: 80, protocol: TCP}
"#,
    pods: EXTERNAL_TRAFFIC_POLICY_LOCAL.pods,
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp(
            "pod to cluster IP hits both endpoints, unmasqueraded",
            "10.0.0.2",
            "172.30.0.41",
            80,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            false,
        ),
        tcp(
            "pod to external IP hits both endpoints, masqueraded",
            "10.0.0.2",
            "192.168.99.11",
            80,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            true,
        ),
        tcp(
            "external to external IP hits both endpoints, masqueraded",
            "203.0.113.2",
            "192.168.99.11",
            80,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            true,
        ),
        tcp(
            "pod to LB IP hits both endpoints, masqueraded",
            "10.0.0.2",
            "1.2.3.4",
            80,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            true,
        ),
        tcp(
            "external to LB IP hits both endpoints, masqueraded",
            "203.0.113.2",
            "1.2.3.4",
            80,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            true,
        ),
        tcp(
            "pod to NodePort hits both endpoints, masqueraded",
            "10.0.0.2",
            NODE_IP,
            3001,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            true,
        ),
        tcp(
            "external to NodePort hits both endpoints, masqueraded",
            "203.0.113.2",
            NODE_IP,
            3001,
            Backends(&["10.180.0.1:80", "10.180.2.1:80"]),
            true,
        ),
    ],
    then: &[],
};

/// The Service of TestInternalTrafficPolicy: one unnamed port, the policy given.
macro_rules! itp_service {
    ($policy:literal) => {
        concat!(
            "apiVersion: v1\nkind: Service\nmetadata: {name: svc1, namespace: ns1}\n",
            "spec:\n  clusterIP: 172.30.1.1\n  internalTrafficPolicy: ",
            $policy,
            "\n  ports:\n  - {name: \"\", port: 80, protocol: TCP}\n"
        )
    };
}

/// svc1's EndpointSlice (one unnamed port 80) with these endpoints, after `---`.
macro_rules! svc1_slice {
    ($($endpoint:literal),* $(,)?) => {
        concat!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n",
            "  name: svc1-1\n  namespace: ns1\n  labels: {kubernetes.io/service-name: svc1}\n",
            "addressType: IPv4\nports:\n- {name: \"\", port: 80, protocol: TCP}\nendpoints:\n",
            $("- ", $endpoint, "\n",)*
        )
    };
}

/// The pods of TestInternalTrafficPolicy's subtests: 10.0.1.1 here or not, 10.0.1.2 and
/// 10.0.1.3 elsewhere, the client 10.0.0.2 here.
macro_rules! itp_pods {
    ($first_here:literal, $second_here:literal) => {
        &[
            Pod {
                ip: "10.0.1.1",
                on_this_node: $first_here,
                tcp: &[80],
                udp: &[],
            },
            Pod {
                ip: "10.0.1.2",
                on_this_node: $second_here,
                tcp: &[80],
                udp: &[],
            },
            Pod {
                ip: "10.0.1.3",
                on_this_node: false,
                tcp: &[80],
                udp: &[],
            },
            Pod {
                ip: "10.0.0.2",
                on_this_node: true,
                tcp: &[],
                udp: &[],
            },
        ]
    };
}

/// TestInternalTrafficPolicy's second half, for every subtest: the slice deleted.
const ITP_ENDPOINTS_DELETED: &[Step] = &[Step {
    manifests: itp_service!("Local"),
    vectors: &[tcp(
        "endpoints deleted",
        "10.0.0.2",
        "172.30.1.1",
        80,
        Reject,
        false,
    )],
}];

const ITP_NO_LOCAL_ENDPOINTS_REFUSED: &str = "with internalTrafficPolicy Local and no \
     endpoint on this node, kube-proxy DROPs (\"has no local endpoints\") and the client \
     waits; the socket program refuses the connect at once";

pub const ITP_CLUSTER: Case = Case {
    test: "TestInternalTrafficPolicy/internalTrafficPolicy is cluster",
    manifests: concat!(
        itp_service!("Cluster"),
        svc1_slice!(
            r#"{addresses: ["10.0.1.1"], conditions: {ready: true}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.2"], conditions: {ready: true}, nodeName: node1}"#,
            r#"{addresses: ["10.0.1.3"], conditions: {ready: true}, nodeName: node2}"#,
        )
    ),
    pods: itp_pods!(true, false),
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[tcp(
        "pod to ClusterIP hits all endpoints",
        "10.0.0.2",
        "172.30.1.1",
        80,
        Backends(&["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]),
        false,
    )],
    then: &[Step {
        manifests: itp_service!("Cluster"),
        vectors: ITP_ENDPOINTS_DELETED[0].vectors,
    }],
};

pub const ITP_LOCAL_ONE: Case = Case {
    test: "TestInternalTrafficPolicy/internalTrafficPolicy is local and there is one local endpoint",
    manifests: concat!(
        itp_service!("Local"),
        svc1_slice!(
            r#"{addresses: ["10.0.1.1"], conditions: {ready: true}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.2"], conditions: {ready: true}, nodeName: node1}"#,
            r#"{addresses: ["10.0.1.3"], conditions: {ready: true}, nodeName: node2}"#,
        )
    ),
    pods: itp_pods!(true, false),
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[tcp(
        "pod to ClusterIP hits only local endpoint",
        "10.0.0.2",
        "172.30.1.1",
        80,
        Backends(&["10.0.1.1:80"]),
        false,
    )],
    then: ITP_ENDPOINTS_DELETED,
};

pub const ITP_LOCAL_MANY: Case = Case {
    test: "TestInternalTrafficPolicy/internalTrafficPolicy is local and there are multiple local endpoints",
    manifests: concat!(
        itp_service!("Local"),
        svc1_slice!(
            r#"{addresses: ["10.0.1.1"], conditions: {ready: true}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.2"], conditions: {ready: true}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.3"], conditions: {ready: true}, nodeName: node2}"#,
        )
    ),
    pods: itp_pods!(true, true),
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[tcp(
        "pod to ClusterIP hits all local endpoints",
        "10.0.0.2",
        "172.30.1.1",
        80,
        Backends(&["10.0.1.1:80", "10.0.1.2:80"]),
        false,
    )],
    then: ITP_ENDPOINTS_DELETED,
};

pub const ITP_LOCAL_NONE: Case = Case {
    test: "TestInternalTrafficPolicy/internalTrafficPolicy is local and there are no local endpoints",
    manifests: concat!(
        itp_service!("Local"),
        svc1_slice!(
            r#"{addresses: ["10.0.1.1"], conditions: {ready: true}, nodeName: node0}"#,
            r#"{addresses: ["10.0.1.2"], conditions: {ready: true}, nodeName: node1}"#,
            r#"{addresses: ["10.0.1.3"], conditions: {ready: true}, nodeName: node2}"#,
        )
    ),
    pods: itp_pods!(false, false),
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp("no endpoints", "10.0.0.2", "172.30.1.1", 80, Drop, false)
            .ebpf(Ebpf::Differs(Reject, ITP_NO_LOCAL_ENDPOINTS_REFUSED)),
    ],
    then: ITP_ENDPOINTS_DELETED,
};

/// The Service of TestTerminatingEndpointsTrafficPolicyLocal / Cluster: a LoadBalancer
/// (1.2.3.4) with the given externalTrafficPolicy and health check port 30000.
macro_rules! terminating_service {
    ($policy:literal) => {
        concat!(
            "apiVersion: v1\nkind: Service\nmetadata: {name: svc1, namespace: ns1}\n",
            "spec:\n  type: LoadBalancer\n  clusterIP: 172.30.1.1\n  externalTrafficPolicy: ",
            $policy,
            "\n  ports:\n  - {name: \"\", port: 80, targetPort: 80, protocol: TCP}\n",
            "  healthCheckNodePort: 30000\n",
            "status:\n  loadBalancer:\n    ingress: [{ip: 1.2.3.4}]\n"
        )
    };
}

/// Pods 10.0.1.1 to 10.0.1.5, each here or not, and the client 10.0.0.2 here.
macro_rules! terminating_pods {
    ($(($ip:literal, $here:literal)),*) => {
        &[
            $(Pod { ip: $ip, on_this_node: $here, tcp: &[80], udp: &[] },)*
            Pod { ip: "10.0.0.2", on_this_node: true, tcp: &[], udp: &[] },
        ]
    };
}

/// Both tests' second half: the slice deleted, both sources refused.
macro_rules! terminating_endpoints_deleted {
    ($policy:literal) => {
        &[Step {
            manifests: terminating_service!($policy),
            vectors: &[
                tcp(
                    "pod to clusterIP after endpoints deleted",
                    "10.0.0.2",
                    "172.30.1.1",
                    80,
                    Reject,
                    false,
                ),
                tcp(
                    "external to LB after endpoints deleted",
                    "203.0.113.2",
                    "1.2.3.4",
                    80,
                    Reject,
                    false,
                ),
            ],
        }]
    };
}

pub const TERMINATING_LOCAL_READY: Case = Case {
    test: "TestTerminatingEndpointsTrafficPolicyLocal/ready endpoints exist",
    manifests: concat!(
        terminating_service!("Local"),
        svc1_slice!(
            r#"{addresses: ["10.0.1.1"], conditions: {ready: true, serving: true, terminating: false}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.2"], conditions: {ready: true, serving: true, terminating: false}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.3"], conditions: {ready: false, serving: true, terminating: true}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.4"], conditions: {ready: false, serving: false, terminating: true}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.5"], conditions: {ready: true, serving: true, terminating: false}, nodeName: node-1}"#,
        )
    ),
    pods: terminating_pods!(
        ("10.0.1.1", true),
        ("10.0.1.2", true),
        ("10.0.1.3", true),
        ("10.0.1.4", true),
        ("10.0.1.5", false)
    ),
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp(
            "pod to clusterIP",
            "10.0.0.2",
            "172.30.1.1",
            80,
            Backends(&["10.0.1.1:80", "10.0.1.2:80", "10.0.1.5:80"]),
            false,
        ),
        tcp(
            "external to LB",
            "203.0.113.2",
            "1.2.3.4",
            80,
            Backends(&["10.0.1.1:80", "10.0.1.2:80"]),
            false,
        ),
    ],
    then: terminating_endpoints_deleted!("Local"),
};

pub const TERMINATING_LOCAL_ONLY_TERMINATING: Case = Case {
    test: "TestTerminatingEndpointsTrafficPolicyLocal/only terminating endpoints exist",
    manifests: concat!(
        terminating_service!("Local"),
        svc1_slice!(
            r#"{addresses: ["10.0.1.2"], conditions: {ready: false, serving: true, terminating: true}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.3"], conditions: {ready: false, serving: true, terminating: true}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.4"], conditions: {ready: false, serving: false, terminating: true}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.5"], conditions: {ready: true, serving: true, terminating: false}, nodeName: node-1}"#,
        )
    ),
    pods: terminating_pods!(
        ("10.0.1.2", true),
        ("10.0.1.3", true),
        ("10.0.1.4", true),
        ("10.0.1.5", false)
    ),
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp(
            "pod to clusterIP",
            "10.0.0.2",
            "172.30.1.1",
            80,
            Backends(&["10.0.1.5:80"]),
            false,
        ),
        tcp(
            "external to LB",
            "203.0.113.2",
            "1.2.3.4",
            80,
            Backends(&["10.0.1.2:80", "10.0.1.3:80"]),
            false,
        ),
    ],
    then: terminating_endpoints_deleted!("Local"),
};

pub const TERMINATING_LOCAL_REMOTE: Case = Case {
    test: "TestTerminatingEndpointsTrafficPolicyLocal/terminating endpoints on remote node",
    manifests: concat!(
        terminating_service!("Local"),
        svc1_slice!(
            r#"{addresses: ["10.0.1.5"], conditions: {ready: false, serving: true, terminating: true}, nodeName: node-1}"#,
        )
    ),
    pods: terminating_pods!(("10.0.1.5", false)),
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp(
            "pod to clusterIP",
            "10.0.0.2",
            "172.30.1.1",
            80,
            Backends(&["10.0.1.5:80"]),
            false,
        ),
        tcp(
            "external to LB, no locally-usable endpoints",
            "203.0.113.2",
            "1.2.3.4",
            80,
            Drop,
            false,
        ),
    ],
    then: terminating_endpoints_deleted!("Local"),
};

/// In both tests' last subtest 10.0.1.5 is listed twice, here and on node-1, neither
/// serving; its pod runs here (nothing may reach it anyway).
pub const TERMINATING_LOCAL_NONE_USABLE: Case = Case {
    test: "TestTerminatingEndpointsTrafficPolicyLocal/no usable endpoints on any node",
    manifests: concat!(
        terminating_service!("Local"),
        svc1_slice!(
            r#"{addresses: ["10.0.1.5"], conditions: {ready: false, serving: false, terminating: true}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.5"], conditions: {ready: false, serving: false, terminating: true}, nodeName: node-1}"#,
        )
    ),
    pods: terminating_pods!(("10.0.1.5", true)),
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp(
            "pod to clusterIP, no usable endpoints",
            "10.0.0.2",
            "172.30.1.1",
            80,
            Reject,
            false,
        ),
        tcp(
            "external to LB, no usable endpoints",
            "203.0.113.2",
            "1.2.3.4",
            80,
            Reject,
            false,
        ),
    ],
    then: terminating_endpoints_deleted!("Local"),
};

pub const TERMINATING_CLUSTER_READY: Case = Case {
    test: "TestTerminatingEndpointsTrafficPolicyCluster/ready endpoints exist",
    manifests: concat!(
        terminating_service!("Cluster"),
        svc1_slice!(
            r#"{addresses: ["10.0.1.1"], conditions: {ready: true, serving: true, terminating: false}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.2"], conditions: {ready: true, serving: true, terminating: false}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.3"], conditions: {ready: false, serving: true, terminating: true}, nodeName: another-node}"#,
            r#"{addresses: ["10.0.1.4"], conditions: {ready: false, serving: false, terminating: true}, nodeName: another-node}"#,
            r#"{addresses: ["10.0.1.5"], conditions: {ready: true, serving: true, terminating: false}, nodeName: another-node}"#,
        )
    ),
    pods: terminating_pods!(
        ("10.0.1.1", true),
        ("10.0.1.2", true),
        ("10.0.1.3", false),
        ("10.0.1.4", false),
        ("10.0.1.5", false)
    ),
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp(
            "pod to clusterIP",
            "10.0.0.2",
            "172.30.1.1",
            80,
            Backends(&["10.0.1.1:80", "10.0.1.2:80", "10.0.1.5:80"]),
            false,
        ),
        tcp(
            "external to LB",
            "203.0.113.2",
            "1.2.3.4",
            80,
            Backends(&["10.0.1.1:80", "10.0.1.2:80", "10.0.1.5:80"]),
            true,
        ),
    ],
    then: terminating_endpoints_deleted!("Cluster"),
};

pub const TERMINATING_CLUSTER_ONLY_TERMINATING: Case = Case {
    test: "TestTerminatingEndpointsTrafficPolicyCluster/only terminating endpoints exist",
    manifests: concat!(
        terminating_service!("Cluster"),
        svc1_slice!(
            r#"{addresses: ["10.0.1.2"], conditions: {ready: false, serving: true, terminating: true}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.3"], conditions: {ready: false, serving: true, terminating: true}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.4"], conditions: {ready: false, serving: false, terminating: true}, nodeName: another-node}"#,
            r#"{addresses: ["10.0.1.5"], conditions: {ready: false, serving: true, terminating: true}, nodeName: another-node}"#,
        )
    ),
    pods: terminating_pods!(
        ("10.0.1.2", true),
        ("10.0.1.3", true),
        ("10.0.1.4", false),
        ("10.0.1.5", false)
    ),
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp(
            "pod to clusterIP",
            "10.0.0.2",
            "172.30.1.1",
            80,
            Backends(&["10.0.1.2:80", "10.0.1.3:80", "10.0.1.5:80"]),
            false,
        ),
        tcp(
            "external to LB",
            "203.0.113.2",
            "1.2.3.4",
            80,
            Backends(&["10.0.1.2:80", "10.0.1.3:80", "10.0.1.5:80"]),
            true,
        ),
    ],
    then: terminating_endpoints_deleted!("Cluster"),
};

pub const TERMINATING_CLUSTER_REMOTE: Case = Case {
    test: "TestTerminatingEndpointsTrafficPolicyCluster/terminating endpoints on remote node",
    manifests: concat!(
        terminating_service!("Cluster"),
        svc1_slice!(
            r#"{addresses: ["10.0.1.5"], conditions: {ready: false, serving: true, terminating: true}, nodeName: node-1}"#,
        )
    ),
    pods: terminating_pods!(("10.0.1.5", false)),
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp(
            "pod to clusterIP",
            "10.0.0.2",
            "172.30.1.1",
            80,
            Backends(&["10.0.1.5:80"]),
            false,
        ),
        tcp(
            "external to LB",
            "203.0.113.2",
            "1.2.3.4",
            80,
            Backends(&["10.0.1.5:80"]),
            true,
        ),
    ],
    then: terminating_endpoints_deleted!("Cluster"),
};

pub const TERMINATING_CLUSTER_NONE_USABLE: Case = Case {
    test: "TestTerminatingEndpointsTrafficPolicyCluster/no usable endpoints on any node",
    manifests: concat!(
        terminating_service!("Cluster"),
        svc1_slice!(
            r#"{addresses: ["10.0.1.5"], conditions: {ready: false, serving: false, terminating: true}, nodeName: node-a}"#,
            r#"{addresses: ["10.0.1.5"], conditions: {ready: false, serving: false, terminating: true}, nodeName: node-1}"#,
        )
    ),
    pods: terminating_pods!(("10.0.1.5", true)),
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp(
            "pod to clusterIP",
            "10.0.0.2",
            "172.30.1.1",
            80,
            Reject,
            false,
        ),
        tcp(
            "external to LB",
            "203.0.113.2",
            "1.2.3.4",
            80,
            Reject,
            false,
        ),
    ],
    then: terminating_endpoints_deleted!("Cluster"),
};

/// TestInternalExternalMasquerade, subtest "base" (a working local traffic detector, no
/// --masquerade-all): three LoadBalancer Services, each with an endpoint here
/// (10.180.0.x) and one on a remote node (10.180.1.x): svc1 with the Cluster policies,
/// svc2 with externalTrafficPolicy Local, svc3 with internalTrafficPolicy Local.
/// (kube-proxy's test gives svc1 and svc3 a healthCheckNodePort as well, which the API
/// only accepts with externalTrafficPolicy Local; left out here.)
const EXTERNAL_TO_CLUSTER_IP: &str = "eBPF mode: a ClusterIP is served to the node's own \
     sockets (pods on the node included), not to packets from outside the node, which go on \
     untranslated (Cilium's default, bpf-lb-external-clusterip=false); kube-proxy serves them, \
     masqueraded";

pub const INTERNAL_EXTERNAL_MASQUERADE: Case = Case {
    test: "TestInternalExternalMasquerade/base",
    manifests: r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.41
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3001}
status:
  loadBalancer:
    ingress: [{ip: 1.2.3.4}]
---
apiVersion: v1
kind: Service
metadata: {name: svc2, namespace: ns2}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.42
  externalTrafficPolicy: Local
  healthCheckNodePort: 30002
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3002}
status:
  loadBalancer:
    ingress: [{ip: 5.6.7.8}]
---
apiVersion: v1
kind: Service
metadata: {name: svc3, namespace: ns3}
spec:
  type: LoadBalancer
  clusterIP: 172.30.0.43
  internalTrafficPolicy: Local
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3003}
status:
  loadBalancer:
    ingress: [{ip: 9.10.11.12}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: svc1-1, namespace: ns1, labels: {kubernetes.io/service-name: svc1}}
addressType: IPv4
endpoints:
- {addresses: ["10.180.0.1"], nodeName: node-a}
- {addresses: ["10.180.1.1"], nodeName: remote}
ports:
- {name: p80, port: 80, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: svc2-1, namespace: ns2, labels: {kubernetes.io/service-name: svc2}}
addressType: IPv4
endpoints:
- {addresses: ["10.180.0.2"], nodeName: node-a}
- {addresses: ["10.180.1.2"], nodeName: remote}
ports:
- {name: p80, port: 80, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: svc3-1, namespace: ns3, labels: {kubernetes.io/service-name: svc3}}
addressType: IPv4
endpoints:
- {addresses: ["10.180.0.3"], nodeName: node-a}
- {addresses: ["10.180.1.3"], nodeName: remote}
ports:
- {name: p80, port: 80, protocol: TCP}
"#,
    pods: terminating_pods!(
        ("10.180.0.1", true),
        ("10.180.1.1", false),
        ("10.180.0.2", true),
        ("10.180.1.2", false),
        ("10.180.0.3", true),
        ("10.180.1.3", false)
    ),
    alt_node_ips: &[],
    agent_args: &[],
    node_ip: NODE_IP,
    vectors: &[
        tcp(
            "pod to ClusterIP",
            "10.0.0.2",
            "172.30.0.41",
            80,
            Backends(&["10.180.0.1:80", "10.180.1.1:80"]),
            false,
        ),
        tcp(
            "pod to NodePort",
            "10.0.0.2",
            NODE_IP,
            3001,
            Backends(&["10.180.0.1:80", "10.180.1.1:80"]),
            true,
        ),
        tcp(
            "pod to LB",
            "10.0.0.2",
            "1.2.3.4",
            80,
            Backends(&["10.180.0.1:80", "10.180.1.1:80"]),
            true,
        ),
        tcp(
            "node to ClusterIP",
            NODE_IP,
            "172.30.0.41",
            80,
            Backends(&["10.180.0.1:80", "10.180.1.1:80"]),
            true,
        ),
        tcp(
            "node to NodePort",
            NODE_IP,
            NODE_IP,
            3001,
            Backends(&["10.180.0.1:80", "10.180.1.1:80"]),
            true,
        ),
        tcp(
            "localhost to NodePort",
            "127.0.0.1",
            "127.0.0.1",
            3001,
            Backends(&["10.180.0.1:80", "10.180.1.1:80"]),
            true,
        ),
        tcp(
            "node to LB",
            NODE_IP,
            "1.2.3.4",
            80,
            Backends(&["10.180.0.1:80", "10.180.1.1:80"]),
            true,
        ),
        tcp(
            "external to ClusterIP",
            "203.0.113.2",
            "172.30.0.41",
            80,
            Backends(&["10.180.0.1:80", "10.180.1.1:80"]),
            true,
        )
        .ebpf(Ebpf::Differs(Unhandled, EXTERNAL_TO_CLUSTER_IP)),
        tcp(
            "external to NodePort",
            "203.0.113.2",
            NODE_IP,
            3001,
            Backends(&["10.180.0.1:80", "10.180.1.1:80"]),
            true,
        ),
        tcp(
            "external to LB",
            "203.0.113.2",
            "1.2.3.4",
            80,
            Backends(&["10.180.0.1:80", "10.180.1.1:80"]),
            true,
        ),
        tcp(
            "pod to ClusterIP with eTP:Local",
            "10.0.0.2",
            "172.30.0.42",
            80,
            Backends(&["10.180.0.2:80", "10.180.1.2:80"]),
            false,
        ),
        tcp(
            "pod to NodePort with eTP:Local",
            "10.0.0.2",
            NODE_IP,
            3002,
            Backends(&["10.180.0.2:80", "10.180.1.2:80"]),
            false,
        ),
        tcp(
            "pod to LB with eTP:Local",
            "10.0.0.2",
            "5.6.7.8",
            80,
            Backends(&["10.180.0.2:80", "10.180.1.2:80"]),
            false,
        ),
        tcp(
            "node to ClusterIP with eTP:Local",
            NODE_IP,
            "172.30.0.42",
            80,
            Backends(&["10.180.0.2:80", "10.180.1.2:80"]),
            true,
        ),
        // kube-proxy's test reaches port 3001 here (svc1's NodePort), as "node to NodePort".
        tcp(
            "node to NodePort with eTP:Local",
            NODE_IP,
            NODE_IP,
            3001,
            Backends(&["10.180.0.1:80", "10.180.1.1:80"]),
            true,
        ),
        tcp(
            "localhost to NodePort with eTP:Local",
            "127.0.0.1",
            "127.0.0.1",
            3002,
            Backends(&["10.180.0.2:80", "10.180.1.2:80"]),
            true,
        ),
        tcp(
            "node to LB with eTP:Local",
            NODE_IP,
            "5.6.7.8",
            80,
            Backends(&["10.180.0.2:80", "10.180.1.2:80"]),
            true,
        ),
        tcp(
            "external to ClusterIP with eTP:Local",
            "203.0.113.2",
            "172.30.0.42",
            80,
            Backends(&["10.180.0.2:80", "10.180.1.2:80"]),
            true,
        )
        .ebpf(Ebpf::Differs(Unhandled, EXTERNAL_TO_CLUSTER_IP)),
        tcp(
            "external to NodePort with eTP:Local",
            "203.0.113.2",
            NODE_IP,
            3002,
            Backends(&["10.180.0.2:80"]),
            false,
        ),
        tcp(
            "external to LB with eTP:Local",
            "203.0.113.2",
            "5.6.7.8",
            80,
            Backends(&["10.180.0.2:80"]),
            false,
        ),
        tcp(
            "pod to ClusterIP with iTP:Local",
            "10.0.0.2",
            "172.30.0.43",
            80,
            Backends(&["10.180.0.3:80"]),
            false,
        ),
        tcp(
            "pod to NodePort with iTP:Local",
            "10.0.0.2",
            NODE_IP,
            3003,
            Backends(&["10.180.0.3:80", "10.180.1.3:80"]),
            true,
        ),
        tcp(
            "pod to LB with iTP:Local",
            "10.0.0.2",
            "9.10.11.12",
            80,
            Backends(&["10.180.0.3:80", "10.180.1.3:80"]),
            true,
        ),
        tcp(
            "node to ClusterIP with iTP:Local",
            NODE_IP,
            "172.30.0.43",
            80,
            Backends(&["10.180.0.3:80"]),
            true,
        ),
        tcp(
            "node to NodePort with iTP:Local",
            NODE_IP,
            NODE_IP,
            3003,
            Backends(&["10.180.0.3:80", "10.180.1.3:80"]),
            true,
        ),
        tcp(
            "localhost to NodePort with iTP:Local",
            "127.0.0.1",
            "127.0.0.1",
            3003,
            Backends(&["10.180.0.3:80", "10.180.1.3:80"]),
            true,
        ),
        tcp(
            "node to LB with iTP:Local",
            NODE_IP,
            "9.10.11.12",
            80,
            Backends(&["10.180.0.3:80", "10.180.1.3:80"]),
            true,
        ),
        tcp(
            "external to ClusterIP with iTP:Local",
            "203.0.113.2",
            "172.30.0.43",
            80,
            Backends(&["10.180.0.3:80"]),
            true,
        )
        .ebpf(Ebpf::Differs(Unhandled, EXTERNAL_TO_CLUSTER_IP)),
        tcp(
            "external to NodePort with iTP:Local",
            "203.0.113.2",
            NODE_IP,
            3003,
            Backends(&["10.180.0.3:80", "10.180.1.3:80"]),
            true,
        ),
        tcp(
            "external to LB with iTP:Local",
            "203.0.113.2",
            "9.10.11.12",
            80,
            Backends(&["10.180.0.3:80", "10.180.1.3:80"]),
            true,
        ),
    ],
    then: &[],
};

/// kube-proxy's `testNodeIPv6`.
pub const NODE_IP6: &str = "2001:db8::1";

/// TestNodePorts, subtest "ipv6" (kube-proxy's IPv6 proxier, no `--nodeport-addresses`):
/// the same NodePort Service as [`NODE_PORTS`] in IPv6 addresses. kube-proxy's iptables
/// proxier serves a NodePort on every local address but `::1` (no localhost NodePorts in
/// IPv6), so the node's secondary IP (`testNodeIPv6Alt`) serves it too, as in the IPv4
/// subtest. The vectors are those the nftables proxier's test of the same name lists for
/// IPv6 (pod to ClusterIP, external and node to NodePort, external to the secondary IP).
pub const NODE_PORTS_IPV6: Case = Case {
    test: "TestNodePorts/ipv6",
    manifests: r#"
apiVersion: v1
kind: Service
metadata: {name: svc1, namespace: ns1}
spec:
  type: NodePort
  ipFamilies: [IPv6]
  clusterIP: "fd00:172:30::41"
  clusterIPs: ["fd00:172:30::41"]
  ports:
  - {name: p80, port: 80, protocol: TCP, nodePort: 3001}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc1-1
  namespace: ns1
  labels: {kubernetes.io/service-name: svc1}
addressType: IPv6
endpoints:
- {addresses: ["fd00:10:180::1"]}
- {addresses: ["fd00:10:180::2:1"], nodeName: node-a}
ports:
- {name: p80, port: 80, protocol: TCP}
"#,
    pods: &[
        Pod {
            ip: "fd00:10:180::1",
            on_this_node: false,
            tcp: &[80],
            udp: &[],
        },
        Pod {
            ip: "fd00:10:180::2:1",
            on_this_node: true,
            tcp: &[80],
            udp: &[],
        },
        Pod {
            ip: "fd00:10::2",
            on_this_node: true,
            tcp: &[],
            udp: &[],
        },
    ],
    alt_node_ips: &["2001:db8:1::2"],
    agent_args: &[],
    node_ip: NODE_IP6,
    vectors: &[
        tcp(
            "pod to cluster IP",
            "fd00:10::2",
            "fd00:172:30::41",
            80,
            Backends(&["[fd00:10:180::1]:80", "[fd00:10:180::2:1]:80"]),
            false,
        ),
        tcp(
            "external to nodePort",
            "2600:5200::1",
            NODE_IP6,
            3001,
            Backends(&["[fd00:10:180::1]:80", "[fd00:10:180::2:1]:80"]),
            true,
        ),
        tcp(
            "node to nodePort",
            NODE_IP6,
            NODE_IP6,
            3001,
            Backends(&["[fd00:10:180::1]:80", "[fd00:10:180::2:1]:80"]),
            true,
        ),
        tcp(
            "external to nodePort on secondary IP",
            "2600:5200::1",
            "2001:db8:1::2",
            3001,
            Backends(&["[fd00:10:180::1]:80", "[fd00:10:180::2:1]:80"]),
            true,
        ),
    ],
    then: &[],
};
