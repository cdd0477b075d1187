//! BPF_MAP_UPDATE_BATCH: many entries of a map written in one syscall. aya 0.14 has no
//! batch operations, so this is the one raw `bpf(2)` call of the project. Used when many
//! frontends are written from scratch at once (a cold start), where one syscall per entry
//! would cost several hundred milliseconds at 10,000 Services. Batches for different
//! maps, or different parts of one map, go in parallel ([`write_parallel`]): the kernel
//! locks a hash map per bucket, so two threads writing do not wait for each other.

use std::{
    io,
    ops::Range,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::maps::MapData;

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// `bpf_attr.batch`, as in include/uapi/linux/bpf.h.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A second handle on a pinned map, for batch writes.
pub struct BatchMap {
    name: &'static str,
    data: MapData,
    key_size: usize,
    value_size: usize,
}

impl BatchMap {
    /// `value_size`: the bytes of one entry's value as the batch call takes it (for a
    /// per-CPU map, one copy per possible CPU, each rounded up to 8 bytes).
    pub fn open(
        dir: &Path,
        name: &'static str,
        key_size: usize,
        value_size: usize,
    ) -> Result<Self, aya::maps::MapError> {
        Ok(Self {
            name,
            data: MapData::from_pin(dir.join(name))?,
            key_size,
            value_size,
        })
    }

    /// The bytes of one entry's value.
    pub fn value_size(&self) -> usize {
        self.value_size
    }

    /// The entries `keys[i] -> values[i]`, to write with [`write_parallel`].
    pub fn entries<'a, K: bytemuck::Pod, V: bytemuck::Pod>(
        &'a self,
        keys: &'a [K],
        values: &'a [V],
    ) -> Batch<'a> {
        // The kernel reads `count` keys and values of the map's sizes from these
        // buffers: a mismatch is a bug here, stopped before it reaches the syscall.
        assert_eq!(size_of::<K>(), self.key_size, "{}: key size", self.name);
        let values: &[u8] = bytemuck::cast_slice(values);
        assert_eq!(
            values.len(),
            keys.len() * self.value_size,
            "{}: values for {} keys",
            self.name,
            keys.len()
        );
        Batch {
            map: self,
            keys: bytemuck::cast_slice(keys),
            values,
        }
    }

    /// Writes `count` entries (`keys` and `values` hold that many of each).
    fn update(&self, keys: &[u8], values: &[u8], count: usize) -> Result<(), io::Error> {
        if count == 0 {
            return Ok(());
        }
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: count as u32,
            map_fd: self.data.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at key and value arrays that outlive the call and hold `count`
        // elements of the sizes the map was created with (checked when the batch was made,
        // from the key and value types aya checked when the maps were opened).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// Entries of one map to write in one call.
pub struct Batch<'a> {
    map: &'a BatchMap,
    keys: &'a [u8],
    values: &'a [u8],
}

impl<'a> Batch<'a> {
    fn len(&self) -> usize {
        self.keys.len() / self.map.key_size
    }

    /// Entries `range` of this batch.
    fn part(&self, range: Range<usize>) -> Self {
        let (k, v) = (self.map.key_size, self.map.value_size);
        Batch {
            map: self.map,
            keys: &self.keys[range.start * k..range.end * k],
            values: &self.values[range.start * v..range.end * v],
        }
    }

    fn write(&self) -> Result<(), BatchError> {
        self.map
            .update(self.keys, self.values, self.len())
            .map_err(|source| BatchError {
                map: self.map.name,
                source,
            })
    }
}

/// A batch the kernel refused, and which map it was for.
#[derive(Debug)]
pub struct BatchError {
    pub map: &'static str,
    pub source: io::Error,
}

/// Fewer entries than this per thread are written on the calling thread alone.
const ENTRIES_PER_LANE: usize = 2_048;
/// At most this many threads write at once.
const MAX_LANES: usize = 4;

/// Writes every batch, on as many threads as there are CPUs (up to [`MAX_LANES`]), each
/// with an equal part of every batch; returns when all are written or refused. Nothing says
/// which batch goes in first: what must be written before something else goes in an
/// earlier call. On failure some entries may have been written; the first error is
/// returned.
pub fn write_parallel(batches: &[Batch<'_>]) -> Result<(), BatchError> {
    let lens: Vec<usize> = batches.iter().map(Batch::len).collect();
    let total: usize = lens.iter().sum();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let lanes = cpus.min(MAX_LANES).min(total / ENTRIES_PER_LANE).max(1);
    let lanes: Vec<Vec<Batch<'_>>> = deal(&lens, lanes)
        .into_iter()
        .map(|lane| {
            lane.into_iter()
                .map(|(batch, range)| batches[batch].part(range))
                .collect()
        })
        .collect();
    let Some((mine, others)) = lanes.split_last() else {
        return Ok(());
    };
    std::thread::scope(|scope| {
        let mut here: Vec<&[Batch<'_>]> = vec![mine];
        let mut threads = Vec::new();
        for lane in others {
            match std::thread::Builder::new()
                .name("epx-batch-write".into())
                .spawn_scoped(scope, move || write_all(lane))
            {
                Ok(thread) => threads.push(thread),
                // No thread to be had: this lane is written here too.
                Err(_) => here.push(lane),
            }
        }
        let mut result = here.into_iter().try_for_each(write_all);
        for thread in threads {
            let lane = thread.join().unwrap_or_else(|_| {
                Err(BatchError {
                    map: "(unknown: a writer thread panicked)",
                    source: io::Error::other("writer thread panicked"),
                })
            });
            result = result.and(lane);
        }
        result
    })
}

fn write_all(lane: &[Batch<'_>]) -> Result<(), BatchError> {
    lane.iter().try_for_each(Batch::write)
}

/// Deals every batch of `lens` entries out to `lanes` lanes, each an equal part: the
/// entries of different maps cost the kernel differently (a hash map allocates, an array
/// does not), so each lane gets its share of each. A lane is a list of (batch, entries).
fn deal(lens: &[usize], lanes: usize) -> Vec<Vec<(usize, Range<usize>)>> {
    let lanes = lanes.max(1);
    let mut dealt: Vec<Vec<(usize, Range<usize>)>> = vec![Vec::new(); lanes];
    for (batch, &len) in lens.iter().enumerate() {
        let part = len.div_ceil(lanes).max(1);
        for (lane, start) in dealt.iter_mut().zip((0..len).step_by(part)) {
            lane.push((batch, start..len.min(start + part)));
        }
    }
    dealt
}

#[cfg(test)]
mod tests {
    use super::deal;

    #[test]
    fn each_lane_gets_an_equal_part_of_every_batch() {
        let lens = [5, 0, 12, 3];
        assert_eq!(
            deal(&lens, 2),
            vec![
                vec![(0, 0..3), (2, 0..6), (3, 0..2)],
                vec![(0, 3..5), (2, 6..12), (3, 2..3)],
            ]
        );
        assert_eq!(deal(&lens, 1), vec![vec![(0, 0..5), (2, 0..12), (3, 0..3)]]);
    }

    #[test]
    fn a_batch_smaller_than_the_lanes_goes_to_the_first_ones() {
        assert_eq!(
            deal(&[1, 0], 3),
            vec![vec![(0, 0..1)], Vec::new(), Vec::new()]
        );
    }
}
