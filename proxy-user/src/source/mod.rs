//! Where Services and EndpointSlices come from. Every source produces an [`ObjectSet`];
//! the rest of the agent never knows which source it was.

pub mod admission;
pub mod kubernetes;
pub mod manifest;
pub mod reduced;
pub mod shared;
pub mod store;

use std::collections::BTreeMap;

use crate::model::{ObjectRef, node::NodeInput};
use reduced::{ServiceObject, SliceObject};

/// Everything a source currently knows, keyed by `namespace/name`, reduced to what the
/// model reads ([`reduced`]).
#[derive(Clone, Debug, Default)]
pub struct ObjectSet {
    pub services: BTreeMap<ObjectRef, ServiceObject>,
    pub endpoint_slices: BTreeMap<ObjectRef, SliceObject>,
    /// Nodes by name (the agent only needs its own).
    pub nodes: BTreeMap<String, NodeInput>,
}

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `namespace/name`, with the namespace defaulted as kubectl does.
pub fn object_ref(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectRef {
    ObjectRef::new(
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or(""),
    )
}
