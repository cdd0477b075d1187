//! Free space in an id-indexed array: the slots array (a frontend's table is a region of
//! it) and the counters array (a frontend id is a region of length one).
//!
//! A region that a published service value named is not reusable the moment the value
//! stops naming it: a program that copied the old value a moment earlier may still index
//! the old region. Such a program runs for microseconds, under RCU, between copying the
//! value and reading one slot (or adding to one counter); so a freed region waits out a
//! quarantine of [`QUARANTINE`] (a million times longer) and is handed out again only by a
//! sync that starts after that ([`Regions::reclaim`]). A client therefore always reads
//! slots of the table its value named: the old set or the new one, never a mix, and never
//! another frontend's.
//!
//! A region never published (a write that failed before its value went in) is returned
//! at once ([`Regions::release_unpublished`]).
//!
//! After a restart the free space is rebuilt from the installed service values: what
//! they name is used, everything else free. What the previous agent had in quarantine is
//! free at once, which is safe: a restart takes far longer than any program run.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

/// How long a freed region stays unused after its value stopped naming it.
pub const QUARANTINE: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    #[error(
        "{wanted} free entries wanted, {free} free of {capacity} ({quarantined} more free within a second)"
    )]
    Full {
        wanted: u32,
        free: u32,
        quarantined: u32,
        capacity: u32,
    },
    #[error(
        "{wanted} contiguous entries wanted: {free} of {capacity} are free, but the largest free run is {largest}"
    )]
    Fragmented {
        wanted: u32,
        free: u32,
        largest: u32,
        capacity: u32,
    },
}

/// The free and quarantined regions of an array of `capacity` entries.
#[derive(Clone, Debug)]
pub struct Regions {
    capacity: u32,
    /// Free runs: start -> length, never adjacent (merged on release).
    free: BTreeMap<u32, u32>,
    /// Freed regions waiting out their quarantine, oldest first: (freed at, start, length).
    quarantined: VecDeque<(Instant, u32, u32)>,
}

impl Regions {
    /// An array of `capacity` entries of which `used` (start, length) regions are taken.
    /// Overlapping or out-of-range regions are tolerated (taken as far as they reach).
    pub fn new(capacity: u32, used: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut used: Vec<(u32, u32)> = used.into_iter().filter(|(_, len)| *len > 0).collect();
        used.sort_unstable();
        let mut free = BTreeMap::new();
        let mut cursor = 0u32;
        for (start, len) in used {
            let start = start.min(capacity);
            if start > cursor {
                free.insert(cursor, start - cursor);
            }
            cursor = cursor.max(start.saturating_add(len).min(capacity));
        }
        if capacity > cursor {
            free.insert(cursor, capacity - cursor);
        }
        Self {
            capacity,
            free,
            quarantined: VecDeque::new(),
        }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Entries free now.
    pub fn free(&self) -> u32 {
        self.free.values().sum()
    }

    /// Entries in quarantine.
    pub fn quarantined(&self) -> u32 {
        self.quarantined.iter().map(|(_, _, len)| len).sum()
    }

    /// The start of a free run of `len` entries, taken from the smallest run that fits
    /// (best fit, which keeps large runs for large tables). A region of length 0 takes
    /// nothing and starts at 0.
    pub fn allocate(&mut self, len: u32) -> Result<u32, RegionError> {
        if len == 0 {
            return Ok(0);
        }
        let best = self
            .free
            .iter()
            .filter(|(_, run)| **run >= len)
            .min_by_key(|(start, run)| (**run, **start))
            .map(|(start, run)| (*start, *run));
        let Some((start, run)) = best else {
            let free = self.free();
            return Err(if free >= len {
                RegionError::Fragmented {
                    wanted: len,
                    free,
                    largest: self.free.values().copied().max().unwrap_or(0),
                    capacity: self.capacity,
                }
            } else {
                RegionError::Full {
                    wanted: len,
                    free,
                    quarantined: self.quarantined(),
                    capacity: self.capacity,
                }
            });
        };
        self.free.remove(&start);
        if run > len {
            self.free.insert(start + len, run - len);
        }
        Ok(start)
    }

    /// A region a published value named, freed at `now`: reusable after the quarantine.
    pub fn release(&mut self, start: u32, len: u32, now: Instant) {
        if len > 0 {
            self.quarantined.push_back((now, start, len));
        }
    }

    /// A region no value ever named: free at once.
    pub fn release_unpublished(&mut self, start: u32, len: u32) {
        self.insert_free(start, len);
    }

    /// Frees the regions whose quarantine is over at `now`. Called at the start of a sync.
    pub fn reclaim(&mut self, now: Instant) {
        while let Some((freed, start, len)) = self.quarantined.front().copied() {
            if now.saturating_duration_since(freed) < QUARANTINE {
                break;
            }
            self.quarantined.pop_front();
            self.insert_free(start, len);
        }
    }

    /// Adds a run to the free list, merged with its neighbours.
    fn insert_free(&mut self, mut start: u32, mut len: u32) {
        if len == 0 || start >= self.capacity {
            return;
        }
        len = len.min(self.capacity - start);
        if let Some((&before, &before_len)) = self.free.range(..start).next_back()
            && before + before_len >= start
        {
            self.free.remove(&before);
            len = (start + len).max(before + before_len) - before;
            start = before;
        }
        while let Some((&after, &after_len)) = self.free.range(start..).next() {
            if after > start + len {
                break;
            }
            self.free.remove(&after);
            len = (after + after_len).max(start + len) - start;
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_regions_are_not_handed_out_and_the_rest_is() {
        let mut r = Regions::new(100, [(10, 10), (50, 5)]);
        assert_eq!(r.free(), 85);
        // Best fit: the 30-entry gap (20..50) before the 45-entry tail or the first 10.
        assert_eq!(r.allocate(10), Ok(0));
        assert_eq!(r.allocate(30), Ok(20));
        assert_eq!(r.allocate(45), Ok(55));
        assert_eq!(r.free(), 0);
        assert!(matches!(r.allocate(1), Err(RegionError::Full { .. })));
    }

    #[test]
    fn a_freed_region_waits_out_its_quarantine() {
        let t0 = Instant::now();
        let mut r = Regions::new(8, []);
        let a = r.allocate(8).expect("room");
        r.release(a, 8, t0);
        assert_eq!(
            r.allocate(4),
            Err(RegionError::Full {
                wanted: 4,
                free: 0,
                quarantined: 8,
                capacity: 8
            })
        );
        r.reclaim(t0 + QUARANTINE / 2);
        assert!(r.allocate(4).is_err(), "still in quarantine");
        r.reclaim(t0 + QUARANTINE);
        assert_eq!(r.allocate(4), Ok(0));
    }

    #[test]
    fn an_unpublished_region_is_free_at_once() {
        let mut r = Regions::new(8, []);
        let a = r.allocate(8).expect("room");
        r.release_unpublished(a, 8);
        assert_eq!(r.allocate(8), Ok(0));
    }

    #[test]
    fn freed_neighbours_merge_into_one_run() {
        let t0 = Instant::now();
        let mut r = Regions::new(30, []);
        let a = r.allocate(10).expect("a");
        let b = r.allocate(10).expect("b");
        let c = r.allocate(10).expect("c");
        r.release(a, 10, t0);
        r.release(c, 10, t0);
        r.release(b, 10, t0);
        r.reclaim(t0 + QUARANTINE);
        assert_eq!(r.free.len(), 1, "{:?}", r.free);
        assert_eq!(r.allocate(30), Ok(0));
    }

    #[test]
    fn fragmentation_is_told_apart_from_fullness() {
        let t0 = Instant::now();
        let mut r = Regions::new(30, []);
        let a = r.allocate(10).expect("a");
        let _b = r.allocate(10).expect("b");
        let c = r.allocate(10).expect("c");
        r.release(a, 10, t0);
        r.release(c, 10, t0);
        r.reclaim(t0 + QUARANTINE);
        assert_eq!(
            r.allocate(15),
            Err(RegionError::Fragmented {
                wanted: 15,
                free: 20,
                largest: 10,
                capacity: 30
            })
        );
        assert_eq!(r.allocate(10), Ok(0));
    }

    #[test]
    fn ids_are_regions_of_one_and_freed_ones_are_reused_lowest_first() {
        let t0 = Instant::now();
        let mut ids = Regions::new(4, [(1, 1)]);
        assert_eq!(ids.allocate(1), Ok(0));
        assert_eq!(ids.allocate(1), Ok(2));
        assert_eq!(ids.allocate(1), Ok(3));
        assert!(ids.allocate(1).is_err());
        ids.release(2, 1, t0);
        ids.release(0, 1, t0);
        ids.reclaim(t0 + QUARANTINE);
        assert_eq!(ids.allocate(1), Ok(0));
        assert_eq!(ids.allocate(1), Ok(2));
    }

    #[test]
    fn overlapping_or_out_of_range_regions_read_back_do_not_break_it() {
        let mut r = Regions::new(10, [(2, 4), (4, 4), (8, 100)]);
        assert_eq!(r.free(), 2);
        assert_eq!(r.allocate(2), Ok(0));
        r.release_unpublished(9, 50);
        assert_eq!(r.free(), 1);
    }

    #[test]
    fn empty_tables_take_nothing() {
        let mut r = Regions::new(0, []);
        assert_eq!(r.allocate(0), Ok(0));
        r.release(0, 0, Instant::now());
        assert_eq!(r.quarantined(), 0);
    }
}
