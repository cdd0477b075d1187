//! What the sources keep of each object: its key and what the model reads of it, made
//! the moment the object arrives. No API object outlives the event that brought it (a
//! Service or a slice as the API server sends it is ten times the size, managedFields,
//! annotations and status included), so neither a relist nor the manifest directory's
//! cache ever holds thousands of them.

use std::{sync::Arc, time::SystemTime};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use super::{SERVICE_NAME_LABEL, object_ref};
use crate::model::{
    ObjectRef,
    input::{ServiceInput, SliceInput},
    node::NodeInput,
};

/// A Service, reduced. Its input is shared, not copied, between the manifest directory's
/// cache of each file and the store: at 100,000 Services a second copy is 70 MB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceObject {
    pub key: ObjectRef,
    pub input: Arc<ServiceInput>,
}

impl From<&Service> for ServiceObject {
    fn from(service: &Service) -> Self {
        Self {
            key: object_ref(&service.metadata),
            input: Arc::new(ServiceInput::from(service)),
        }
    }
}

impl From<Service> for ServiceObject {
    fn from(service: Service) -> Self {
        Self::from(&service)
    }
}

/// An EndpointSlice, reduced (its input shared as a Service's is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceObject {
    pub key: ObjectRef,
    /// The Service it belongs to (its `kubernetes.io/service-name` label).
    pub owner: Option<ObjectRef>,
    /// Its `endpoints.kubernetes.io/last-change-trigger-time`, parsed.
    pub trigger: Option<SystemTime>,
    pub input: Arc<SliceInput>,
}

/// Set by the EndpointSlice controller to the time of the change that caused the update.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

impl From<&EndpointSlice> for SliceObject {
    fn from(slice: &EndpointSlice) -> Self {
        Self {
            key: object_ref(&slice.metadata),
            owner: slice_owner(slice),
            trigger: trigger_time(slice),
            input: Arc::new(SliceInput::from(slice)),
        }
    }
}

impl From<EndpointSlice> for SliceObject {
    fn from(slice: EndpointSlice) -> Self {
        Self::from(&slice)
    }
}

/// A Node, reduced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeObject {
    pub name: String,
    pub input: NodeInput,
}

impl From<&Node> for NodeObject {
    fn from(node: &Node) -> Self {
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            input: NodeInput::from(node),
        }
    }
}

fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let text = slice
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER_TIME_ANNOTATION)?;
    let timestamp: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    Some(SystemTime::from(timestamp))
}

fn slice_owner(slice: &EndpointSlice) -> Option<ObjectRef> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ObjectRef::new(
        slice.metadata.namespace.as_deref().unwrap_or("default"),
        name,
    ))
}
