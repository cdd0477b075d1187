//! Which object a frontend, a rejection or a slice belongs to.

use std::{
    collections::HashSet,
    sync::{Arc, LazyLock, Mutex},
};

/// `namespace/name` of an object. Shared, not copied: the store, the syncer's ownership
/// maps and every sync's queue hold the same key, so a clone is a reference count.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ObjectRef {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: interned_namespace(namespace),
            name: name.into(),
        }
    }
}

/// Every object of a namespace shares one copy of its name: a cluster has a few
/// namespaces and hundreds of thousands of objects, each named three times (a slice's
/// key, its Service's, and the Service's own); 10 MB at 100,000 Services. A namespace
/// once seen is kept for the life of the process (its name: a few bytes).
fn interned_namespace(namespace: &str) -> Arc<str> {
    static NAMESPACES: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Default::default);
    // A poisoned lock still holds a valid set: a panic cannot leave it half-inserted.
    let mut namespaces = NAMESPACES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(shared) = namespaces.get(namespace) {
        return shared.clone();
    }
    let shared: Arc<str> = namespace.into();
    namespaces.insert(shared.clone());
    shared
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
