//! The Kubernetes API as a source: watches Services, EndpointSlices and this node's Node
//! with kube-rs and mirrors them into the [`ObjectStore`](super::store::ObjectStore).
//!
//! Each kind's watcher lists, then watches. A (re)list is applied to the store as a whole
//! at `InitDone`, replacing that kind's objects, so an object deleted while the agent was
//! disconnected disappears on the relist that follows (410 Gone, or a restart). While the
//! API server cannot be reached the store, and so the kernel, stays as it is; the watcher
//! retries with backoff.
//!
//! Each object is reduced to what the agent uses of it ([`super::reduced`]) the moment it
//! arrives, so a relist buffers reduced objects, not API objects.

use std::{fmt::Debug, path::Path, sync::Arc};

use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::{
    Metadata,
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Config, Resource,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use super::shared::Shared;
use super::{
    object_ref,
    reduced::{ServiceObject, SliceObject},
    store::ObjectStore,
};
use crate::model::node::NodeInput;

#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error("reading kubeconfig {path}: {error}")]
    Kubeconfig { path: String, error: String },
    #[error("no Kubernetes configuration: not in a cluster and no kubeconfig found ({0})")]
    Infer(String),
    #[error("creating the Kubernetes client: {0}")]
    Client(String),
}

/// A client from `--kubeconfig` (or `KUBECONFIG`), else the in-cluster service account,
/// else `~/.kube/config`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubernetesError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|e| KubernetesError::Kubeconfig {
                    path: path.display().to_string(),
                    error: e.to_string(),
                })?;
            Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| KubernetesError::Kubeconfig {
                    path: path.display().to_string(),
                    error: e.to_string(),
                })?
        }
        None => Config::infer()
            .await
            .map_err(|e| KubernetesError::Infer(e.to_string()))?,
    };
    info!(cluster = %config.cluster_url, "Kubernetes API");
    Client::try_from(config).map_err(|e| KubernetesError::Client(e.to_string()))
}

/// How many sources [`watch`] registers with [`Shared`] (for its first-listing count).
pub fn sources(node_name: Option<&str>) -> usize {
    2 + usize::from(node_name.is_some())
}

/// Starts one watcher per kind on the current runtime.
pub fn watch(client: Client, shared: Arc<Shared>, node_name: Option<String>) {
    tokio::spawn(mirror(
        "Service",
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        shared.clone(),
        |s: Service| ServiceObject::from(&s),
        |store: &mut ObjectStore, all| store.replace_services(all),
        |store, s| store.upsert_service(s),
        |store, meta| store.delete_service(&object_ref(meta)),
    ));
    tokio::spawn(mirror(
        "EndpointSlice",
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
        shared.clone(),
        |s: EndpointSlice| SliceObject::from(&s),
        |store: &mut ObjectStore, all| store.replace_slices(all),
        |store, s| store.upsert_slice(s),
        |store, meta| store.delete_slice(&object_ref(meta)),
    ));
    if let Some(name) = node_name {
        tokio::spawn(mirror(
            "Node",
            Api::<Node>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
            shared,
            |n: Node| NodeInput::from(&n),
            |store: &mut ObjectStore, mut all: Vec<NodeInput>| store.set_node(all.pop()),
            |store, n| store.set_node(Some(n)),
            |store, _| store.set_node(None),
        ));
    }
}

/// Runs one kind's watcher forever, applying its events to the store, each object
/// `reduce`d as it arrives.
#[allow(clippy::too_many_arguments)]
async fn mirror<K, R>(
    kind: &'static str,
    api: Api<K>,
    config: watcher::Config,
    shared: Arc<Shared>,
    reduce: impl Fn(K) -> R,
    replace: impl Fn(&mut ObjectStore, Vec<R>),
    apply: impl Fn(&mut ObjectStore, R),
    delete: impl Fn(&mut ObjectStore, &ObjectMeta),
) where
    K: Resource + Metadata<Ty = ObjectMeta> + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut buffer: Vec<R> = Vec::new();
    let mut listed_once = false;
    let mut failing = false;
    loop {
        match stream.try_next().await {
            Ok(Some(event)) => {
                if failing {
                    info!(kind, "watch re-established");
                    failing = false;
                }
                match event {
                    watcher::Event::Init => buffer.clear(),
                    watcher::Event::InitApply(object) => buffer.push(reduce(object)),
                    watcher::Event::InitDone => {
                        let all = std::mem::take(&mut buffer);
                        info!(kind, objects = all.len(), "listed");
                        shared.update(|store| replace(store, all));
                        if !listed_once {
                            listed_once = true;
                            shared.listed();
                        }
                    }
                    watcher::Event::Apply(object) => {
                        let object = reduce(object);
                        shared.update(|store| apply(store, object))
                    }
                    watcher::Event::Delete(object) => {
                        shared.update(|store| delete(store, object.metadata()))
                    }
                }
            }
            Ok(None) => {
                warn!(kind, "watch stream ended; the installed state is kept");
                return;
            }
            Err(error) => {
                // Retried with backoff by the stream; what is installed stays as it is.
                if !failing {
                    warn!(kind, %error, "cannot watch the API server; keeping the installed state and retrying");
                    failing = true;
                }
            }
        }
    }
}
