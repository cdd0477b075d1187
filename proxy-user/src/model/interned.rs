//! One shared copy of each of the few strings that hundreds of thousands of objects
//! repeat: namespaces, Service types, protocols, port names, node names, zones.
//!
//! An `Arc<str>` is as large as the `Box<str>` it replaces, so sharing costs nothing per
//! object and saves an allocation each time: at 100,000 Services (with their slices)
//! about 25 MB. A string once seen is kept for the life of the process; these sets are
//! small and change slowly (a namespace or a node added), so that is a few bytes each.
//! Not for names of single objects (a Service's, a Pod's): those are unique.

use std::{
    collections::HashSet,
    sync::{Arc, LazyLock, Mutex},
};

/// The shared copy of `text`.
pub fn interned(text: &str) -> Arc<str> {
    static STRINGS: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Default::default);
    // A poisoned lock still holds a valid set: a panic cannot leave it half-inserted.
    let mut strings = STRINGS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(shared) = strings.get(text) {
        return shared.clone();
    }
    let shared: Arc<str> = text.into();
    strings.insert(shared.clone());
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy() {
        let a = interned("kube-system");
        let b = interned(&String::from("kube-system"));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "kube-system");
        assert!(!Arc::ptr_eq(&a, &interned("default")));
    }
}
