//! The agent's mirror of the cluster: Services, EndpointSlices and this node's Node, with
//! the index the model needs (Service -> its slices) and the set of Services whose
//! frontends must be recomputed. Sources write here; the syncer reads and drains `dirty`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::SystemTime,
};

use super::{
    ObjectSet,
    reduced::{ServiceObject, SliceObject},
};
use crate::model::ObjectRef;
use crate::model::{
    NodeContext,
    input::{ServiceInput, SliceInput},
    node::NodeInput,
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
    /// What the model needs of each object, not the objects themselves; shared with the
    /// source that made them (see [`super::reduced`]).
    services: BTreeMap<ObjectRef, Arc<ServiceInput>>,
    slices: BTreeMap<ObjectRef, StoredSlice>,
    /// Service -> its slices, sorted. A Vec rather than a BTreeSet: a Service has one
    /// slice or a few, and a set's first node takes 368 bytes (36 MB at 100,000 Services).
    slices_of: HashMap<ObjectRef, Vec<ObjectRef>>,
    node: Option<NodeInput>,
    /// The node's addresses when its Node object gives none: those of `--interfaces`.
    fallback_addresses: Vec<std::net::IpAddr>,
    /// `--localhost-nodeports false`.
    no_localhost_node_ports: bool,
    dirty: Dirty,
    pub changes: ChangeCounts,
    /// Earliest `endpoints.kubernetes.io/last-change-trigger-time` not yet programmed, per
    /// Service: the start of kube-proxy's network programming latency.
    triggers: HashMap<ObjectRef, SystemTime>,
}

pub use super::reduced::TRIGGER_TIME_ANNOTATION;

/// A slice and the Service it belongs to, together: a map of slice -> owner beside the
/// slices was a second hash table of every slice (8.5 MB at 100,000 Services).
#[derive(Debug, PartialEq, Eq)]
struct StoredSlice {
    /// Its `kubernetes.io/service-name` label.
    owner: Option<ObjectRef>,
    input: Arc<SliceInput>,
}

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

    /// A Service, whole or already reduced (see [`super::reduced`]).
    pub fn upsert_service(&mut self, service: impl Into<ServiceObject>) {
        let ServiceObject {
            key,
            input: service,
        } = service.into();
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

    /// An EndpointSlice, whole or already reduced.
    pub fn upsert_slice(&mut self, slice: impl Into<SliceObject>) {
        let SliceObject {
            key,
            owner,
            trigger,
            input,
        } = slice.into();
        let slice = StoredSlice { owner, input };
        if self.slices.get(&key) == Some(&slice) {
            return;
        }
        if let Some(old) = self.slices.remove(&key) {
            self.unlink_slice(&key, old.owner);
        }
        if let Some(owner) = slice.owner.clone() {
            if let Some(trigger) = trigger {
                let earliest = self.triggers.entry(owner.clone()).or_insert(trigger);
                *earliest = (*earliest).min(trigger);
            }
            let slices = self.slices_of.entry(owner.clone()).or_default();
            if let Err(at) = slices.binary_search(&key) {
                // Exactly: a Vec's first push reserves room for four.
                slices.reserve_exact(1);
                slices.insert(at, key.clone());
            }
            self.dirty.services.insert(owner);
        }
        self.slices.insert(key, slice);
        self.changes.endpoint_slices += 1;
    }

    pub fn delete_slice(&mut self, key: &ObjectRef) {
        if let Some(old) = self.slices.remove(key) {
            self.unlink_slice(key, old.owner);
            self.changes.endpoint_slices += 1;
        }
    }

    /// Takes slice `key` out of its former `owner`'s list.
    fn unlink_slice(&mut self, key: &ObjectRef, owner: Option<ObjectRef>) {
        if let Some(old) = owner {
            if let Some(slices) = self.slices_of.get_mut(&old) {
                slices.retain(|k| k != key);
                if slices.is_empty() {
                    self.slices_of.remove(&old);
                }
            }
            self.dirty.services.insert(old);
        }
    }

    /// This node's Node object (or its absence); any change recomputes everything.
    pub fn set_node(&mut self, node: Option<NodeInput>) {
        if self.node != node {
            self.node = node;
            self.dirty.all = true;
        }
    }

    /// A relist of Services: objects absent from it were deleted while we were not looking.
    /// Later objects of one key replace earlier ones, as in a map.
    pub fn replace_services(
        &mut self,
        services: impl IntoIterator<Item = impl Into<ServiceObject>>,
    ) {
        let fresh: Vec<ServiceObject> = services.into_iter().map(Into::into).collect();
        for key in gone(self.services.keys(), fresh.iter().map(|s| &s.key)) {
            self.delete_service(&key);
        }
        for service in fresh {
            self.upsert_service(service);
        }
    }

    /// A relist of EndpointSlices.
    pub fn replace_slices(&mut self, slices: impl IntoIterator<Item = impl Into<SliceObject>>) {
        let fresh: Vec<SliceObject> = slices.into_iter().map(Into::into).collect();
        for key in gone(self.slices.keys(), fresh.iter().map(|s| &s.key)) {
            self.delete_slice(&key);
        }
        for slice in fresh {
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
        self.services.get(key).map(|s| &**s)
    }

    pub fn service_keys(&self) -> impl Iterator<Item = &ObjectRef> {
        self.services.keys()
    }

    pub fn slices(&self, service: &ObjectRef) -> Vec<&SliceInput> {
        self.slices_of
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k).map(|s| &*s.input))
            .collect()
    }

    /// The pending trigger time of a Service's endpoint change, taken once.
    pub fn take_trigger(&mut self, service: &ObjectRef) -> Option<SystemTime> {
        if self.triggers.is_empty() {
            return None; // no key to hash
        }
        self.triggers.remove(service)
    }

    pub fn node_context(&self) -> NodeContext {
        let mut context = NodeContext::new(self.node_name.as_deref(), self.node.as_ref());
        if context.addresses.is_empty() {
            context.addresses = self.fallback_addresses.clone();
        }
        context.localhost_node_ports = !self.no_localhost_node_ports;
        context
    }

    /// Whether NodePorts are served on 127.0.0.1 too (kube-proxy's default).
    pub fn set_localhost_node_ports(&mut self, on: bool) {
        self.no_localhost_node_ports = !on;
        self.dirty.all = true;
    }

    /// The node's addresses to use when its Node object gives none (or there is none):
    /// NodePorts are served there.
    pub fn set_fallback_addresses(&mut self, addresses: Vec<std::net::IpAddr>) {
        self.fallback_addresses = addresses;
        self.dirty.all = true;
    }
}

/// The keys of `known` that `fresh` no longer has.
fn gone<'a>(
    known: impl Iterator<Item = &'a ObjectRef>,
    fresh: impl Iterator<Item = &'a ObjectRef>,
) -> Vec<ObjectRef> {
    let fresh: HashSet<&ObjectRef> = fresh.collect();
    known.filter(|k| !fresh.contains(k)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::{core::v1::Service, discovery::v1::EndpointSlice},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    use super::*;
    use crate::source::SERVICE_NAME_LABEL;

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
