//! The agent's mirror of the cluster: Services, EndpointSlices and this node's Node, with
//! the index the model needs (Service -> its slices) and the set of Services whose
//! frontends must be recomputed. Sources write here; the syncer reads and drains `dirty`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::SystemTime,
};

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

use super::{ObjectSet, SERVICE_NAME_LABEL, object_ref};
use crate::model::ObjectRef;
use crate::model::{
    NodeContext,
    input::{ServiceInput, SliceInput},
};

/// Services to recompute.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Everything (the node changed, or nothing was synced yet).
    pub all: bool,
    pub services: BTreeSet<ObjectRef>,
}

/// Change counters, as kube-proxy's sync_proxy_rules_{service,endpoint}_changes_total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    pub services: u64,
    pub endpoint_slices: u64,
}

#[derive(Default)]
pub struct ObjectStore {
    node_name: Option<String>,
    /// What the model needs of each object, not the objects themselves.
    services: BTreeMap<ObjectRef, ServiceInput>,
    slices: BTreeMap<ObjectRef, SliceInput>,
    /// Slice -> the Service it belongs to (its `kubernetes.io/service-name` label).
    slice_owner: HashMap<ObjectRef, ObjectRef>,
    slices_of: HashMap<ObjectRef, BTreeSet<ObjectRef>>,
    node: Option<Node>,
    /// The node's addresses when its Node object gives none: those of `--interfaces`.
    fallback_addresses: Vec<std::net::Ipv4Addr>,
    dirty: Dirty,
    pub changes: ChangeCounts,
    /// Earliest `endpoints.kubernetes.io/last-change-trigger-time` not yet programmed, per
    /// Service: the start of kube-proxy's network programming latency.
    triggers: HashMap<ObjectRef, SystemTime>,
}

/// Set by the EndpointSlice controller to the time of the change that caused the update.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

impl ObjectStore {
    pub fn new(node_name: Option<String>) -> Self {
        Self {
            node_name,
            dirty: Dirty {
                all: true,
                services: BTreeSet::new(),
            },
            ..Self::default()
        }
    }

    pub fn upsert_service(&mut self, service: Service) {
        let key = object_ref(&service.metadata);
        let service = ServiceInput::from(&service);
        if self.services.get(&key) == Some(&service) {
            return;
        }
        self.services.insert(key.clone(), service);
        self.changes.services += 1;
        self.dirty.services.insert(key);
    }

    pub fn delete_service(&mut self, key: &ObjectRef) {
        if self.services.remove(key).is_some() {
            self.changes.services += 1;
            self.dirty.services.insert(key.clone());
        }
    }

    pub fn upsert_slice(&mut self, slice: EndpointSlice) {
        let key = object_ref(&slice.metadata);
        let owner = slice_owner(&slice);
        let trigger = trigger_time(&slice);
        let slice = SliceInput::from(&slice);
        if self.slices.get(&key) == Some(&slice) && self.slice_owner.get(&key) == owner.as_ref() {
            return;
        }
        self.unlink_slice(&key);
        if let Some(owner) = owner {
            if let Some(trigger) = trigger {
                let earliest = self.triggers.entry(owner.clone()).or_insert(trigger);
                *earliest = (*earliest).min(trigger);
            }
            self.slices_of
                .entry(owner.clone())
                .or_default()
                .insert(key.clone());
            self.slice_owner.insert(key.clone(), owner.clone());
            self.dirty.services.insert(owner);
        }
        self.slices.insert(key, slice);
        self.changes.endpoint_slices += 1;
    }

    pub fn delete_slice(&mut self, key: &ObjectRef) {
        if self.slices.remove(key).is_some() {
            self.unlink_slice(key);
            self.changes.endpoint_slices += 1;
        }
    }

    fn unlink_slice(&mut self, key: &ObjectRef) {
        if let Some(old) = self.slice_owner.remove(key) {
            if let Some(set) = self.slices_of.get_mut(&old) {
                set.remove(key);
                if set.is_empty() {
                    self.slices_of.remove(&old);
                }
            }
            self.dirty.services.insert(old);
        }
    }

    /// This node's Node object (or its absence); any change recomputes everything.
    pub fn set_node(&mut self, node: Option<Node>) {
        if self.node != node {
            self.node = node;
            self.dirty.all = true;
        }
    }

    /// A relist of Services: objects absent from it were deleted while we were not looking.
    pub fn replace_services(&mut self, services: impl IntoIterator<Item = Service>) {
        let fresh: BTreeMap<ObjectRef, Service> = services
            .into_iter()
            .map(|s| (object_ref(&s.metadata), s))
            .collect();
        let gone: Vec<ObjectRef> = self
            .services
            .keys()
            .filter(|k| !fresh.contains_key(*k))
            .cloned()
            .collect();
        for key in &gone {
            self.delete_service(key);
        }
        for service in fresh.into_values() {
            self.upsert_service(service);
        }
    }

    /// A relist of EndpointSlices.
    pub fn replace_slices(&mut self, slices: impl IntoIterator<Item = EndpointSlice>) {
        let fresh: BTreeMap<ObjectRef, EndpointSlice> = slices
            .into_iter()
            .map(|s| (object_ref(&s.metadata), s))
            .collect();
        let gone: Vec<ObjectRef> = self
            .slices
            .keys()
            .filter(|k| !fresh.contains_key(*k))
            .cloned()
            .collect();
        for key in &gone {
            self.delete_slice(key);
        }
        for slice in fresh.into_values() {
            self.upsert_slice(slice);
        }
    }

    /// Everything at once (the manifest directory).
    pub fn replace_all(&mut self, objects: ObjectSet) {
        let node = self
            .node_name
            .as_ref()
            .and_then(|n| objects.nodes.get(n))
            .cloned();
        self.set_node(node);
        self.replace_services(objects.services.into_values());
        self.replace_slices(objects.endpoint_slices.into_values());
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty.all || !self.dirty.services.is_empty()
    }

    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Marks Services for recomputation (a retry after a failed write).
    pub fn mark_dirty(&mut self, keys: impl IntoIterator<Item = ObjectRef>) {
        self.dirty.services.extend(keys);
    }

    pub fn service(&self, key: &ObjectRef) -> Option<&ServiceInput> {
        self.services.get(key)
    }

    pub fn service_keys(&self) -> impl Iterator<Item = &ObjectRef> {
        self.services.keys()
    }

    pub fn slices(&self, service: &ObjectRef) -> Vec<&SliceInput> {
        self.slices_of
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
            .collect()
    }

    /// The pending trigger time of a Service's endpoint change, taken once.
    pub fn take_trigger(&mut self, service: &ObjectRef) -> Option<SystemTime> {
        self.triggers.remove(service)
    }

    pub fn node_context(&self) -> NodeContext {
        let mut context = NodeContext::new(self.node_name.as_deref(), self.node.as_ref());
        if context.addresses.is_empty() {
            context.addresses = self.fallback_addresses.clone();
        }
        context
    }

    /// The node's addresses to use when its Node object gives none (or there is none):
    /// NodePorts are served there.
    pub fn set_fallback_addresses(&mut self, addresses: Vec<std::net::Ipv4Addr>) {
        self.fallback_addresses = addresses;
        self.dirty.all = true;
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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn service(name: &str, ip: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                cluster_ip: Some(ip.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(name: &str, service: &str) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ..Default::default()
        }
    }

    fn key(name: &str) -> ObjectRef {
        ObjectRef::new("ns", name)
    }

    #[test]
    fn changes_mark_only_their_service() {
        let mut store = ObjectStore::new(None);
        store.upsert_service(service("a", "198.19.0.1"));
        store.upsert_service(service("b", "198.19.0.2"));
        assert!(store.take_dirty().all, "nothing synced yet");
        store.upsert_slice(slice("b-1", "b"));
        assert_eq!(store.take_dirty().services, [key("b")].into());
        store.upsert_service(service("a", "198.19.0.1"));
        assert_eq!(
            store.take_dirty(),
            Dirty::default(),
            "an identical update is no change"
        );
        // A slice moving to another Service dirties both.
        store.upsert_slice(slice("b-1", "a"));
        assert_eq!(store.take_dirty().services, [key("a"), key("b")].into());
        assert_eq!(store.slices(&key("a")).len(), 1);
        assert!(store.slices(&key("b")).is_empty());
    }

    #[test]
    fn a_relist_deletes_what_disappeared() {
        let mut store = ObjectStore::new(None);
        store.replace_services([service("a", "198.19.0.1"), service("b", "198.19.0.2")]);
        store.replace_slices([slice("a-1", "a"), slice("b-1", "b")]);
        store.take_dirty();
        store.replace_services([service("a", "198.19.0.1")]);
        store.replace_slices([slice("a-1", "a")]);
        assert_eq!(store.take_dirty().services, [key("b")].into());
        assert_eq!(store.service_keys().count(), 1);
        assert!(store.slices(&key("b")).is_empty());
    }
}
