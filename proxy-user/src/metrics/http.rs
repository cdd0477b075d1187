//! The HTTP endpoints: /metrics on the metrics address, /healthz and /livez on the health
//! address, as kube-proxy serves them.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{info, warn};

use super::AgentMetrics;

/// Binds `addr` and serves it until the runtime stops.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<AgentMetrics>,
    what: &'static str,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    info!(%addr, "serving {what}");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    warn!("{what}: {e}");
                }
            });
        }
    });
    Ok(())
}

fn respond<B>(req: &Request<B>, metrics: &AgentMetrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
        "/metrics" => (200, "text/plain; version=0.0.4", metrics.render()),
        "/healthz" | "/livez" => {
            let health = if req.uri().path() == "/livez" {
                metrics.liveness()
            } else {
                metrics.readiness()
            };
            (
                if health.healthy { 200 } else { 503 },
                "application/json",
                health.body,
            )
        }
        _ => (
            404,
            "text/plain",
            "not found: try /metrics, /healthz or /livez\n".into(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
