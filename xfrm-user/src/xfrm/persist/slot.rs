//! Where one SA keeps what must outlive the process: its output sequence number, the top of
//! its inbound window and its lifetime's current counters, as words of the state file's
//! mapping (or of the heap when nothing persists).

use std::{
    ptr::NonNull,
    sync::{atomic::AtomicU64, Arc},
};

/// The words of one SA, in this order at the start of its record (format.rs).
pub(super) const WORDS: usize = 6;

/// One SA's words on the heap.
#[repr(C, align(64))]
pub(super) struct HeapCells([AtomicU64; WORDS]);

/// Memory the counters are in: a mapping of the state file, or the heap (no state file:
/// offline mode, tests, library users that do not persist).
pub(super) enum Region {
    Heap(#[allow(dead_code)] Box<HeapCells>),
    Map { ptr: NonNull<u8>, len: usize },
}

impl Drop for Region {
    fn drop(&mut self) {
        if let Region::Map { ptr, len } = *self {
            // SAFETY: the mapping we made with this address and length; no reference into
            // it outlives the Region (every SeqSlot and the StateFile hold the Arc).
            unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
        }
    }
}

// SAFETY: the region is accessed through AtomicU64s (SeqSlot), or by the StateFile's owner
// under its lock for the bytes no SeqSlot points at.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

/// Where one SA keeps its counters.
pub struct SeqSlot {
    words: NonNull<AtomicU64>,
    /// Its record in the state file (None: on the heap).
    rec: Option<u32>,
    _region: Arc<Region>,
}

// SAFETY: the pointer is to AtomicU64s kept alive by `_region`.
unsafe impl Send for SeqSlot {}
// SAFETY: as above; AtomicU64 is Sync.
unsafe impl Sync for SeqSlot {}

impl SeqSlot {
    /// Counters on the heap, all 0: nothing survives the process.
    pub fn in_memory() -> Self {
        let b = Box::new(HeapCells(std::array::from_fn(|_| AtomicU64::new(0))));
        let words = NonNull::from(&b.0[0]);
        Self {
            words,
            rec: None,
            _region: Arc::new(Region::Heap(b)),
        }
    }

    /// # Safety
    /// `words` points at [`WORDS`] 8-aligned u64s inside `region`, used only atomically.
    pub(super) unsafe fn in_region(
        words: NonNull<AtomicU64>,
        rec: u32,
        region: Arc<Region>,
    ) -> Self {
        Self {
            words,
            rec: Some(rec),
            _region: region,
        }
    }

    /// The same counters, for the SA that replaces this one's (`state update`): it goes on
    /// from the numbers this one handed out.
    pub fn share(&self) -> Self {
        Self {
            words: self.words,
            rec: self.rec,
            _region: self._region.clone(),
        }
    }

    /// The state file's record holding these counters.
    pub fn record(&self) -> Option<u32> {
        self.rec
    }

    #[inline]
    fn word(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < WORDS);
        // SAFETY: `words` points at WORDS AtomicU64s kept alive by `_region`.
        unsafe { &*self.words.as_ptr().add(i) }
    }

    /// The last output sequence number handed out (the SA's x->replay.oseq).
    #[inline]
    pub fn oseq(&self) -> &AtomicU64 {
        self.word(0)
    }

    /// The highest inbound sequence number recorded by the replay window.
    #[inline]
    pub fn in_top(&self) -> &AtomicU64 {
        self.word(1)
    }

    /// x->curlft.bytes.
    #[inline]
    pub fn bytes(&self) -> &AtomicU64 {
        self.word(2)
    }

    /// Packets the input path took (output packets are counted by `oseq`).
    #[inline]
    pub fn in_packets(&self) -> &AtomicU64 {
        self.word(3)
    }

    /// x->curlft.add_time (0: not set yet).
    #[inline]
    pub fn add_time(&self) -> &AtomicU64 {
        self.word(4)
    }

    /// x->curlft.use_time (0 until the first packet).
    #[inline]
    pub fn use_time(&self) -> &AtomicU64 {
        self.word(5)
    }
}

impl std::fmt::Debug for SeqSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        f.debug_struct("SeqSlot")
            .field("oseq", &self.oseq().load(Relaxed))
            .field("in_top", &self.in_top().load(Relaxed))
            .field("rec", &self.rec)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    #[test]
    fn in_memory_slots_are_independent() {
        let a = SeqSlot::in_memory();
        let b = SeqSlot::in_memory();
        a.oseq().store(5, Relaxed);
        a.use_time().store(7, Relaxed);
        assert_eq!(b.oseq().load(Relaxed), 0);
        assert_eq!(a.in_top().load(Relaxed), 0);
        assert_eq!(a.share().use_time().load(Relaxed), 7);
        assert_eq!(a.record(), None);
    }
}
