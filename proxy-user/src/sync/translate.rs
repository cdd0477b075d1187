//! Translating many Services at once, on several threads: what a full sync does first.
//! Translation reads the store and nothing else, so Services are independent of each
//! other; who owns which frontend is decided afterwards, one Service at a time, in order.

use std::collections::BTreeSet;

use crate::{
    model::{NodeContext, ObjectRef, Rejection, ServiceFrontends, translate_service},
    source::store::ObjectStore,
};

/// One Service translated: `None` when the store has no such Service (it was deleted),
/// else what [`translate_service`] said.
pub type Translated = Option<Option<Result<ServiceFrontends, Rejection>>>;

/// Translates one Service.
pub fn translate(key: &ObjectRef, store: &ObjectStore, node: &NodeContext) -> Translated {
    let service = store.service(key)?;
    Some(translate_service(key, service, &store.slices(key), node))
}

/// Fewer Services than this per thread are translated on the calling thread alone.
const SERVICES_PER_LANE: usize = 1_024;
/// At most this many threads translate at once.
const MAX_LANES: usize = 4;

/// Every Service of `keys` translated, in the order of `keys`, on as many threads as
/// there are CPUs (up to [`MAX_LANES`]).
pub fn translate_all(
    keys: &BTreeSet<ObjectRef>,
    store: &ObjectStore,
    node: &NodeContext,
) -> Vec<(ObjectRef, Translated)> {
    let keys: Vec<&ObjectRef> = keys.iter().collect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lanes = cpus
        .min(MAX_LANES)
        .min(keys.len() / SERVICES_PER_LANE)
        .max(1);
    let chunk = keys.len().div_ceil(lanes).max(1);
    let run = |part: &[&ObjectRef]| -> Vec<(ObjectRef, Translated)> {
        part.iter()
            .map(|key| ((*key).clone(), translate(key, store, node)))
            .collect()
    };
    let mut parts = keys.chunks(chunk);
    let mine = parts.next().unwrap_or_default();
    std::thread::scope(|scope| {
        let others: Vec<_> = parts.map(|part| scope.spawn(move || run(part))).collect();
        let mut all = run(mine);
        for (other, part) in others.into_iter().zip(keys.chunks(chunk).skip(1)) {
            // A thread that panicked: its Services are translated here instead, where
            // the same panic reaches the caller as it would without threads.
            all.extend(other.join().unwrap_or_else(|_| run(part)));
        }
        all
    })
}
