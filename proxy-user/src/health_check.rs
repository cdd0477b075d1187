//! Health check node ports: for each LoadBalancer Service with externalTrafficPolicy
//! Local, an HTTP server on its `healthCheckNodePort` that tells a load balancer whether
//! this node has endpoints for it, as kube-proxy's service health server does: 200 with
//! the local endpoint count when there are some and the proxy is healthy, 503 otherwise,
//! and the same JSON body either way:
//!
//! ```json
//! {"service":{"namespace":"demo","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}
//! ```
//!
//! Served in both modes: it reports the agent's view of the endpoints, not the datapath's.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tracing::{info, warn};

use crate::sync::ServiceHealth;

/// Whether the agent itself is healthy (its /healthz), for `serviceProxyHealthy`.
pub type ProxyHealthy = Arc<dyn Fn() -> bool + Send + Sync>;

/// The servers, one per health check node port, kept in step with the Services.
pub struct HealthCheckServers {
    bind: Ipv4Addr,
    proxy_healthy: ProxyHealthy,
    servers: BTreeMap<u16, Server>,
}

struct Server {
    state: Arc<Mutex<ServiceHealth>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HealthCheckServers {
    /// Servers listening on `bind` (0.0.0.0: every node address, as kube-proxy).
    pub fn new(bind: Ipv4Addr, proxy_healthy: ProxyHealthy) -> Self {
        Self {
            bind,
            proxy_healthy,
            servers: BTreeMap::new(),
        }
    }

    /// Serves exactly `wanted`: new ports are bound, gone ones closed, counts updated.
    /// Must run inside the Tokio runtime. A port that cannot be bound is logged with the
    /// Service it belongs to and tried again at the next update.
    pub fn update(&mut self, wanted: &BTreeMap<u16, ServiceHealth>) {
        self.servers.retain(|port, _| wanted.contains_key(port));
        for (port, health) in wanted {
            if let Some(server) = self.servers.get(port) {
                *server.state.lock().unwrap_or_else(|e| e.into_inner()) = health.clone();
                continue;
            }
            match self.start(*port, health.clone()) {
                Ok(server) => {
                    info!(port, service = %health.service, "serving the health check node port");
                    self.servers.insert(*port, server);
                }
                Err(e) => warn!(
                    "Service {}: healthCheckNodePort {port} cannot be bound on {}: {e}",
                    health.service, self.bind
                ),
            }
        }
    }

    fn start(&self, port: u16, health: ServiceHealth) -> std::io::Result<Server> {
        let listener = std::net::TcpListener::bind(SocketAddr::from((self.bind, port)))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let state = Arc::new(Mutex::new(health));
        let (shared, proxy_healthy) = (state.clone(), self.proxy_healthy.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (state, proxy_healthy) = (shared.clone(), proxy_healthy.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        let health = state.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        let response = respond(&health, proxy_healthy());
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Server { state, task })
    }
}

/// kube-proxy's answer: the status, its endpoint-weight header and the JSON body.
pub fn respond(health: &ServiceHealth, proxy_healthy: bool) -> Response<Full<Bytes>> {
    let status = if health.local_endpoints > 0 && proxy_healthy {
        200
    } else {
        503
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-content-type-options", "nosniff")
        .header(
            "x-load-balancing-endpoint-weight",
            health.local_endpoints.to_string(),
        )
        .body(Full::new(Bytes::from(body(health, proxy_healthy))))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// The JSON body, with kube-proxy's field names.
pub fn body(health: &ServiceHealth, proxy_healthy: bool) -> String {
    serde_json::json!({
        "service": {
            "namespace": &*health.service.namespace,
            "name": &*health.service.name,
        },
        "localEndpoints": health.local_endpoints,
        "serviceProxyHealthy": proxy_healthy,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ObjectRef;

    fn health(n: usize) -> ServiceHealth {
        ServiceHealth {
            service: ObjectRef::new("demo", "web"),
            local_endpoints: n,
        }
    }

    #[test]
    fn answers_as_kube_proxy_does() {
        let ok = respond(&health(2), true);
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()["x-load-balancing-endpoint-weight"], "2");
        assert_eq!(respond(&health(0), true).status(), 503);
        // Endpoints, but the proxy itself is not healthy: the node should not get traffic.
        assert_eq!(respond(&health(3), false).status(), 503);
        assert_eq!(
            body(&health(2), true),
            r#"{"localEndpoints":2,"service":{"name":"web","namespace":"demo"},"serviceProxyHealthy":true}"#
        );
    }
}
