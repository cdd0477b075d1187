//! Which object a frontend, a rejection or a slice belongs to.

use std::sync::Arc;

use super::interned::interned;

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
            // Namespaces are few; every object of one shares its name.
            namespace: interned(namespace),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}
