//! Service and EndpointSlice objects built in memory (k8s-openapi types), for the tests and
//! benchmarks that feed a store directly instead of writing manifests.

use k8s_openapi::{
    api::{
        core::v1::{Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

/// A ClusterIP Service `namespace/name` with one TCP port, `http` (80).
pub fn cluster_ip_service(namespace: &str, name: &str, cluster_ip: String) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some(cluster_ip),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The EndpointSlice `SERVICE-1` of Service `namespace/service`: port `http` on 8080, one
/// ready endpoint per address.
pub fn ready_slice(
    namespace: &str,
    service: &str,
    addresses: impl IntoIterator<Item = String>,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{service}-1")),
            namespace: Some(namespace.into()),
            labels: Some(
                [(
                    "kubernetes.io/service-name".to_string(),
                    service.to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            ..Default::default()
        }]),
        endpoints: Some(
            addresses
                .into_iter()
                .map(|address| Endpoint {
                    addresses: vec![address],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}
