//! BPF_MAP_UPDATE_BATCH: many entries of a hash map written in one syscall. aya 0.14 has
//! no batch operations, so this is the one raw `bpf(2)` call of the project. Used when many
//! frontends are written from scratch at once (a cold start), where one syscall per entry
//! would cost several hundred milliseconds at 10,000 Services.

use std::{
    io,
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
    data: MapData,
    value_size: usize,
}

impl BatchMap {
    pub fn open(pin: &Path, value_size: usize) -> Result<Self, aya::maps::MapError> {
        Ok(Self {
            data: MapData::from_pin(pin)?,
            value_size,
        })
    }

    /// Writes `keys[i] -> values[i]` for every i (`values` holds `value_size` bytes per
    /// key). On failure returns how many entries were written before it.
    pub fn update<K: bytemuck::Pod>(
        &self,
        keys: &[K],
        values: &[u8],
    ) -> Result<(), (usize, io::Error)> {
        debug_assert_eq!(values.len(), keys.len() * self.value_size);
        if keys.is_empty() {
            return Ok(());
        }
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: self.data.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at key and value arrays that outlive the call and hold `count`
        // elements of the sizes the map was created with (checked by aya when the maps were
        // opened with these key and value types).
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
            Err((attr.count as usize, io::Error::last_os_error()))
        }
    }
}
