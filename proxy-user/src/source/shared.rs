//! The store the sources write into, and the doorbell that wakes the sync thread.
//!
//! Sources run on the async runtime and the sync on a thread of its own, so the two meet
//! here through a mutex and a condition variable, never through an `.await`. The oldest
//! change not yet programmed is kept too: /healthz goes stale when it waits too long, as
//! kube-proxy's does.

use std::{
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::store::ObjectStore;

/// What the sources and the sync thread share.
pub struct Shared {
    store: Mutex<ObjectStore>,
    bell: Mutex<Bell>,
    rung: Condvar,
}

#[derive(Default)]
struct Bell {
    /// Something changed since the sync thread last looked.
    changed: bool,
    stop: bool,
    /// Sources that have not completed their first listing yet.
    unlisted: usize,
    /// When the oldest change no sync has taken in hand yet arrived.
    oldest_unsynced: Option<Instant>,
    /// When the oldest change the running sync took in hand arrived: still not
    /// programmed until that sync ends.
    in_hand: Option<Instant>,
}

/// Why [`Shared::wait`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    Changed,
    /// Nothing happened for the whole timeout.
    Timeout,
    Stop,
}

impl Shared {
    pub fn new(node_name: Option<String>, sources: usize) -> Arc<Self> {
        Arc::new(Self {
            store: Mutex::new(ObjectStore::new(node_name)),
            bell: Mutex::new(Bell {
                unlisted: sources,
                ..Bell::default()
            }),
            rung: Condvar::new(),
        })
    }

    /// Runs `f` on the store and wakes the sync thread.
    pub fn update<R>(&self, f: impl FnOnce(&mut ObjectStore) -> R) -> R {
        let mut store = self.lock();
        let result = f(&mut store);
        // Rung before the store is released (lock order: store, then bell), so a sync
        // cannot take this change in hand before it is counted as waiting.
        self.ring(|bell| {
            bell.oldest_unsynced.get_or_insert_with(Instant::now);
        });
        drop(store);
        result
    }

    /// A source has listed everything once.
    pub fn listed(&self) {
        self.ring(|bell| bell.unlisted = bell.unlisted.saturating_sub(1));
    }

    pub fn is_listed(&self) -> bool {
        self.bell().unlisted == 0
    }

    /// Asks the sync thread to end after its current sync.
    pub fn stop(&self) {
        self.ring(|bell| bell.stop = true);
    }

    pub fn lock(&self) -> MutexGuard<'_, ObjectStore> {
        // A panic while holding the lock leaves the store as it was: keep using it.
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until something changes, [`Shared::stop`] is called, or `timeout` passes.
    pub fn wait(&self, timeout: Duration) -> Wake {
        let bell = self.bell();
        let (mut bell, _) = self
            .rung
            .wait_timeout_while(bell, timeout, |b| !b.changed && !b.stop)
            .unwrap_or_else(|e| e.into_inner());
        if bell.stop {
            Wake::Stop
        } else if std::mem::take(&mut bell.changed) {
            Wake::Changed
        } else {
            Wake::Timeout
        }
    }

    /// A sync takes every change so far in hand (call under the store lock, with the
    /// changes). They count as unprogrammed until [`Shared::sync_ended`].
    pub fn take_in_hand(&self) {
        let mut bell = self.bell();
        if let Some(oldest) = bell.oldest_unsynced.take() {
            bell.in_hand = Some(bell.in_hand.map_or(oldest, |t| t.min(oldest)));
        }
    }

    /// The sync that took changes in hand ended: they are programmed, or with `failed`
    /// (a write will be retried) waiting again.
    pub fn sync_ended(&self, failed: bool) {
        let mut bell = self.bell();
        let in_hand = bell.in_hand.take();
        if failed && let Some(since) = in_hand {
            bell.oldest_unsynced = Some(bell.oldest_unsynced.map_or(since, |t| t.min(since)));
        }
    }

    /// The oldest change not yet programmed, if any (for /healthz).
    pub fn oldest_unsynced(&self) -> Option<Instant> {
        let bell = self.bell();
        match (bell.in_hand, bell.oldest_unsynced) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn ring(&self, f: impl FnOnce(&mut Bell)) {
        let mut bell = self.bell();
        f(&mut bell);
        bell.changed = true;
        drop(bell);
        self.rung.notify_one();
    }

    fn bell(&self) -> MutexGuard<'_, Bell> {
        self.bell.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_wakes_the_waiter_and_stays_pending_until_taken() {
        let shared = Shared::new(None, 1);
        assert_eq!(shared.wait(Duration::from_millis(1)), Wake::Timeout);
        assert!(!shared.is_listed());
        shared.update(|_| ());
        shared.listed();
        assert!(shared.is_listed());
        let first = shared.oldest_unsynced().expect("a change is pending");
        assert_eq!(shared.wait(Duration::from_secs(5)), Wake::Changed);
        // In the hands of a running sync, it is still not programmed.
        shared.take_in_hand();
        assert_eq!(shared.oldest_unsynced(), Some(first));
        shared.sync_ended(false);
        assert_eq!(shared.oldest_unsynced(), None);
        // A change during a sync that then fails: the older time is what counts.
        shared.update(|_| ());
        shared.take_in_hand();
        let second = shared.oldest_unsynced().expect("pending");
        shared.update(|_| ());
        shared.sync_ended(true);
        assert_eq!(shared.oldest_unsynced(), Some(second));
        shared.take_in_hand();
        shared.sync_ended(false);
        assert_eq!(shared.oldest_unsynced(), None);
    }

    #[test]
    fn stop_wakes_a_waiting_thread() {
        let shared = Shared::new(None, 0);
        let waiter = {
            let shared = shared.clone();
            std::thread::spawn(move || shared.wait(Duration::from_secs(60)))
        };
        shared.stop();
        assert_eq!(waiter.join().expect("waiter"), Wake::Stop);
    }
}
