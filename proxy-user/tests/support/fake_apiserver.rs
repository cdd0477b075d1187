//! An in-process API server that speaks the list/watch protocol the way kube-apiserver
//! does, for Services, EndpointSlices and Nodes: lists carry a resourceVersion and are
//! paged (`limit`, `continue`), watches
//! stream chunked JSON events from a resourceVersion, bookmarks are sent when asked for, a
//! watch from a compacted resourceVersion gets a 410 Expired ERROR event, and tests can
//! drop every open watch or take the whole server down and bring it back.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, body::Frame, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
}

impl Kind {
    fn from_path(path: &str) -> Option<Self> {
        match path {
            "/api/v1/services" => Some(Kind::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlice),
            "/api/v1/nodes" => Some(Kind::Node),
            _ => None,
        }
    }

    fn list_kind(self) -> (&'static str, &'static str) {
        match self {
            Kind::Service => ("v1", "ServiceList"),
            Kind::EndpointSlice => ("discovery.k8s.io/v1", "EndpointSliceList"),
            Kind::Node => ("v1", "NodeList"),
        }
    }

    fn of(object: &Value) -> Self {
        match object["kind"].as_str() {
            Some("Service") => Kind::Service,
            Some("EndpointSlice") => Kind::EndpointSlice,
            Some("Node") => Kind::Node,
            other => panic!("fake API server: unsupported kind {other:?}"),
        }
    }
}

type Key = (String, String);

#[derive(Default)]
struct State {
    resource_version: u64,
    objects: BTreeMap<Kind, BTreeMap<Key, Value>>,
    /// Every change, for watches that resume from a resourceVersion.
    history: Vec<(u64, Kind, &'static str, Value)>,
    /// Watches from below this resourceVersion get 410 Expired.
    compacted: u64,
    watches: Vec<(Kind, Option<String>, mpsc::UnboundedSender<Bytes>)>,
    /// Lists of these kinds wait until released.
    held: Vec<Kind>,
    requests: Vec<String>,
    /// Every open connection, so an outage can cut keep-alive connections too.
    connections: Vec<tokio::task::AbortHandle>,
}

pub struct FakeApiServer {
    state: Arc<Mutex<State>>,
    pub addr: SocketAddr,
    server: Option<JoinHandle<()>>,
}

impl FakeApiServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        let server = Some(tokio::spawn(serve(listener, state.clone())));
        Self {
            state,
            addr,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake apiserver state")
    }

    /// Creates or replaces an object (ADDED or MODIFIED to every watch of its kind).
    pub fn apply(&self, mut object: Value) {
        let kind = Kind::of(&object);
        let mut state = self.lock();
        state.resource_version += 1;
        let rv = state.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&object);
        let existed = state
            .objects
            .entry(kind)
            .or_default()
            .insert(key, object.clone())
            .is_some();
        let event = if existed { "MODIFIED" } else { "ADDED" };
        state.history.push((rv, kind, event, object.clone()));
        broadcast(&mut state, kind, event, &object);
    }

    /// Deletes an object (DELETED to every watch of its kind).
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) {
        let mut state = self.lock();
        let Some(mut object) = state
            .objects
            .entry(kind)
            .or_default()
            .remove(&(namespace.to_owned(), name.to_owned()))
        else {
            panic!("fake API server: delete of missing {kind:?} {namespace}/{name}");
        };
        state.resource_version += 1;
        let rv = state.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        state.history.push((rv, kind, "DELETED", object.clone()));
        broadcast(&mut state, kind, "DELETED", &object);
    }

    /// Forgets history: a watch resuming from an older resourceVersion gets 410 Gone and
    /// must relist. Open watches are told so at once, as etcd compaction does.
    pub fn compact(&self) {
        let mut state = self.lock();
        state.compacted = state.resource_version + 1;
        state.history.clear();
        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}});
        for (_, _, tx) in state.watches.drain(..) {
            let _ = tx.send(line(&gone));
        }
    }

    /// Ends every open watch stream, as a load balancer or an API server restart does.
    pub fn drop_watches(&self) {
        self.lock().watches.clear();
    }

    /// Sends a bookmark to every watch.
    pub fn bookmark(&self) {
        let mut state = self.lock();
        let rv = state.resource_version.to_string();
        state.watches.retain(|(kind, _, tx)| {
            let (api_version, list_kind) = kind.list_kind();
            let object = json!({"kind": list_kind.trim_end_matches("List"), "apiVersion": api_version, "metadata": {"resourceVersion": rv}});
            tx.send(line(&json!({"type": "BOOKMARK", "object": object}))).is_ok()
        });
    }

    /// Stops answering: the listener is closed (connection refused) and watches end.
    pub fn go_down(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        let mut state = self.lock();
        state.watches.clear();
        for connection in state.connections.drain(..) {
            connection.abort();
        }
    }

    /// Listens again on the same address.
    pub async fn come_back(&mut self) {
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.server = Some(tokio::spawn(serve(listener, self.state.clone())));
    }

    /// Lists of `kind` wait until [`FakeApiServer::release`].
    pub fn hold(&self, kind: Kind) {
        self.lock().held.push(kind);
    }

    pub fn release(&self, kind: Kind) {
        self.lock().held.retain(|k| *k != kind);
    }

    /// Request lines seen so far (`GET /api/v1/services?...`).
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.go_down();
    }
}

fn key_of(object: &Value) -> Key {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_owned(),
        meta["name"].as_str().unwrap_or("").to_owned(),
    )
}

fn line(event: &Value) -> Bytes {
    let mut text = event.to_string();
    text.push('\n');
    Bytes::from(text)
}

fn broadcast(state: &mut State, kind: Kind, event: &str, object: &Value) {
    let name = object["metadata"]["name"].as_str().map(str::to_owned);
    state.watches.retain(|(k, only, tx)| {
        if *k != kind || only.as_ref().is_some_and(|n| Some(n) != name.as_ref()) {
            return !tx.is_closed();
        }
        tx.send(line(&json!({"type": event, "object": object})))
            .is_ok()
    });
}

async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let shared = state.clone();
        let connection = tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, shared.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        let mut state = state.lock().expect("state");
        state.connections.retain(|c| !c.is_finished());
        state.connections.push(connection.abort_handle());
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: u16, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("response")
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
) -> Result<Response<Body>, Infallible> {
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=").replace("%2F", "/")))
        .collect();
    state
        .lock()
        .expect("state")
        .requests
        .push(format!("{} {}", req.method(), req.uri()));
    let Some(kind) = Kind::from_path(req.uri().path()) else {
        return Ok(full(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound"}),
        ));
    };
    // Only `metadata.name=X` is supported, which is what the agent asks for Nodes.
    let only = query
        .get("fieldSelector")
        .and_then(|f| f.strip_prefix("metadata.name="))
        .map(str::to_owned);
    let watch = matches!(
        query.get("watch").map(String::as_str),
        Some("true") | Some("1")
    );
    if !watch {
        while state.lock().expect("state").held.contains(&kind) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let state = state.lock().expect("state");
        let (api_version, list_kind) = kind.list_kind();
        let items: Vec<&Value> = state
            .objects
            .get(&kind)
            .into_iter()
            .flat_map(|m| m.values())
            .filter(|o| {
                only.as_ref()
                    .is_none_or(|n| o["metadata"]["name"].as_str() == Some(n))
            })
            .collect();
        // Paged as kube-apiserver pages (kube's watcher asks for 500 at a time): the
        // `continue` token is the offset of the next item.
        let start: usize = query
            .get("continue")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let limit: usize = query
            .get("limit")
            .and_then(|c| c.parse().ok())
            .unwrap_or(usize::MAX);
        let end = start.saturating_add(limit).min(items.len());
        let more = end < items.len();
        let items = &items[start.min(end)..end];
        let mut metadata = json!({"resourceVersion": state.resource_version.to_string()});
        if more {
            metadata["continue"] = json!(end.to_string());
        }
        let body = json!({"apiVersion": api_version, "kind": list_kind,
            "metadata": metadata, "items": items});
        return Ok(full(200, body));
    }

    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    {
        let mut state = state.lock().expect("state");
        if from < state.compacted.saturating_sub(1) {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410}});
            let _ = tx.send(line(&gone));
            drop(tx);
        } else {
            for (rv, k, event, object) in &state.history {
                let name = object["metadata"]["name"].as_str();
                if *rv > from && *k == kind && only.as_deref().is_none_or(|n| Some(n) == name) {
                    let _ = tx.send(line(&json!({"type": event, "object": object})));
                }
            }
            state.watches.push((kind, only, tx));
        }
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
    });
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .expect("response"))
}
