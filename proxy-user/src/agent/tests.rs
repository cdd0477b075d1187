use std::sync::Mutex;

use super::*;
use crate::{
    dataplane::{ApplyReport, Change, PruneError, memory::MemoryDataplane},
    model::DesiredState,
    source::manifest::object_set,
};

/// The in-memory dataplane, counting prunes and holding each apply until told.
struct Probe {
    inner: MemoryDataplane,
    prunes: Arc<Mutex<usize>>,
    /// While locked by the test, an apply waits: a slow sync.
    gate: Arc<Mutex<()>>,
    /// Set when an apply has begun.
    applying: Arc<std::sync::atomic::AtomicBool>,
}

impl Dataplane for Probe {
    fn installed(&self) -> &DesiredState {
        self.inner.installed()
    }

    fn apply(&mut self, changes: Vec<Change>) -> ApplyReport {
        self.applying
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _held = self.gate.lock().unwrap_or_else(|e| e.into_inner());
        self.inner.apply(changes)
    }

    fn prune(&mut self) -> Result<usize, PruneError> {
        *self.prunes.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Ok(0)
    }
}

const WEB: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns}\nspec: {clusterIP: 198.19.0.1, ports: [{port: 80}]}\n";

struct Running {
    shared: Arc<Shared>,
    thread: SyncThread,
    events: tokio::sync::mpsc::UnboundedReceiver<SyncEvent>,
    prunes: Arc<Mutex<usize>>,
    gate: Arc<Mutex<()>>,
    applying: Arc<std::sync::atomic::AtomicBool>,
}

fn start(periods: Periods) -> Running {
    let shared = Shared::new(None, 1);
    let (prunes, gate, applying) = (Arc::default(), Arc::default(), Arc::default());
    let probe = Probe {
        inner: MemoryDataplane::default(),
        prunes: Arc::clone(&prunes),
        gate: Arc::clone(&gate),
        applying: Arc::clone(&applying),
    };
    let (events, received) = tokio::sync::mpsc::unbounded_channel();
    let thread = SyncThread::with_periods(shared.clone(), Box::new(probe), events, || {}, periods)
        .expect("thread");
    Running {
        shared,
        thread,
        events: received,
        prunes,
        gate,
        applying,
    }
}

/// Polls `done` for up to 10 s.
fn eventually(done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn next_sync(events: &mut tokio::sync::mpsc::UnboundedReceiver<SyncEvent>) -> SyncSummary {
    loop {
        match events.blocking_recv().expect("the thread runs") {
            SyncEvent::Synced(summary) => return summary,
            SyncEvent::Activated | SyncEvent::Idle => {}
        }
    }
}

#[test]
fn nothing_is_programmed_before_the_first_listing_and_a_write_holds_no_lock() {
    let mut r = start(Periods::default());
    let held = r.gate.lock().expect("gate");
    r.shared.update(|store| store.replace_all(object_set(WEB)));
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !r.applying.load(std::sync::atomic::Ordering::SeqCst),
        "nothing is written before every source has listed once"
    );
    r.shared.listed();
    assert!(eventually(|| r
        .applying
        .load(std::sync::atomic::Ordering::SeqCst)));
    // The write is held: a source can still update the store, and the change the write
    // carries still counts as not programmed.
    let (sent, updated) = std::sync::mpsc::channel();
    let shared = r.shared.clone();
    std::thread::spawn(move || {
        shared.update(|_| ());
        let _ = sent.send(());
    });
    assert!(
        updated.recv_timeout(Duration::from_secs(10)).is_ok(),
        "a source waited for the store while a write was held"
    );
    assert!(r.shared.oldest_unsynced().is_some());
    drop(held);
    let summary = next_sync(&mut r.events);
    assert!(summary.full);
    assert_eq!(summary.written, 1);
    r.thread.stop().expect("stops");
}

#[test]
fn an_idle_thread_prunes_periodically_after_activation() {
    let periods = Periods {
        retry: Duration::from_millis(10),
        prune: Duration::from_millis(30),
    };
    let mut r = start(periods);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        *r.prunes.lock().expect("prunes"),
        0,
        "nothing is pruned before the first sync activated the dataplane"
    );
    r.shared.update(|store| store.replace_all(object_set(WEB)));
    r.shared.listed();
    next_sync(&mut r.events);
    assert!(
        eventually(|| *r.prunes.lock().expect("prunes") >= 2),
        "pruned periodically"
    );
    r.thread.stop().expect("stops");
}
