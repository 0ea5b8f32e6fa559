//! Handing the workers a new immutable snapshot of the tables (SAD, SPD, input tables): an
//! epoch scheme in the spirit of RCU. The control plane publishes the next snapshot and
//! bumps the generation; each worker, between two batches (never with a packet in hand),
//! sees the generation move, takes the new snapshot and acknowledges it; the control plane
//! waits until every live worker has, and only then answers the request. A packet is thus
//! handled wholly by one snapshot, and the per-packet path reads the worker's own `Arc`
//! without any lock or atomic.
//!
//! A worker asleep in `poll` is woken through its eventfd ([`Reader::wake_fd`]). A worker
//! whose thread has ended drops its [`Reader`], which stops the waiting for it.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

struct Slot {
    acked: AtomicU64,
    alive: AtomicBool,
    wake: OwnedFd,
}

struct Shared<T> {
    current: Mutex<Arc<T>>,
    generation: AtomicU64,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Notified when a reader acknowledges or goes away.
    acked: Condvar,
    ack_lock: Mutex<()>,
}

/// The control plane's end.
pub struct Handover<T> {
    shared: Arc<Shared<T>>,
}

/// A worker's end: its snapshot, renewed only by [`Reader::refresh`].
pub struct Reader<T> {
    shared: Arc<Shared<T>>,
    current: Arc<T>,
    generation: u64,
    slot: Arc<Slot>,
}

/// Workers that did not take a snapshot in time (their queue numbers in reader order).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} worker(s) did not take the new tables within the time allowed")]
pub struct Laggards(pub usize);

impl<T> Handover<T> {
    pub fn new(initial: T) -> Self {
        Self {
            shared: Arc::new(Shared {
                current: Mutex::new(Arc::new(initial)),
                generation: AtomicU64::new(0),
                slots: Mutex::new(Vec::new()),
                acked: Condvar::new(),
                ack_lock: Mutex::new(()),
            }),
        }
    }

    /// A reader for one worker, on the current snapshot.
    pub fn reader(&self) -> std::io::Result<Reader<T>> {
        // SAFETY: eventfd takes two integers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let generation = self.shared.generation.load(Ordering::Acquire);
        let slot = Arc::new(Slot {
            acked: AtomicU64::new(generation),
            alive: AtomicBool::new(true),
            wake,
        });
        lock(&self.shared.slots).push(slot.clone());
        Ok(Reader {
            shared: self.shared.clone(),
            current: self.current(),
            generation,
            slot,
        })
    }

    /// The latest published snapshot.
    pub fn current(&self) -> Arc<T> {
        lock(&self.shared.current).clone()
    }

    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Publishes `next` and wakes every reader; returns its generation, for [`Self::wait`].
    pub fn publish(&self, next: T) -> u64 {
        *lock(&self.shared.current) = Arc::new(next);
        // After the store: a reader that sees this generation finds this snapshot (or a
        // later one) under the lock.
        let g = self.shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let slots = lock(&self.shared.slots);
        for s in slots.iter() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to our eventfd. A full counter
            // (EAGAIN) already means "wake up".
            unsafe { libc::write(s.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
        g
    }

    /// Waits until every live reader has taken generation `g` (or a later one), at most
    /// `timeout`.
    pub fn wait(&self, g: u64, timeout: Duration) -> Result<(), Laggards> {
        let deadline = Instant::now() + timeout;
        let mut guard = lock(&self.shared.ack_lock);
        loop {
            let behind = {
                let mut slots = lock(&self.shared.slots);
                slots.retain(|s| s.alive.load(Ordering::Acquire));
                slots
                    .iter()
                    .filter(|s| s.acked.load(Ordering::Acquire) < g)
                    .count()
            };
            if behind == 0 {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Laggards(behind));
            }
            guard = match self.shared.acked.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

impl<T> Reader<T> {
    /// The snapshot this worker works with until the next [`Self::refresh`].
    #[inline]
    pub fn get(&self) -> &Arc<T> {
        &self.current
    }

    /// Between batches: takes the latest snapshot if one was published, and acknowledges
    /// it. One atomic load when nothing changed.
    #[inline]
    pub fn refresh(&mut self) -> bool {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g == self.generation {
            return false;
        }
        self.take(g);
        true
    }

    #[cold]
    fn take(&mut self, g: u64) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer from our non-blocking eventfd
        // (nothing to read is EAGAIN, which is fine: the wake-up is consumed either way).
        unsafe { libc::read(self.slot.wake.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        self.current = lock(&self.shared.current).clone();
        self.generation = g;
        self.slot.acked.store(g, Ordering::Release);
        let _g = lock(&self.shared.ack_lock);
        self.shared.acked.notify_all();
    }

    /// Readable when a new snapshot waits: poll it with the sockets.
    pub fn wake_fd(&self) -> RawFd {
        self.slot.wake.as_raw_fd()
    }
}

impl<T> Drop for Reader<T> {
    fn drop(&mut self) {
        self.slot.alive.store(false, Ordering::Release);
        let _g = lock(&self.shared.ack_lock);
        self.shared.acked.notify_all();
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (an Arc,
/// a list of slots) is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A snapshot whose two halves must always agree: a reader that ever saw them differ
    /// would have seen a mix of two generations.
    struct Snap {
        a: u64,
        b: u64,
    }

    #[test]
    fn workers_see_whole_snapshots_and_acknowledge_each() {
        let h = Handover::new(Snap { a: 0, b: 0 });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for _ in 0..3 {
            let mut r = h.reader().unwrap();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                // The snapshot it was created on, then each one it takes.
                let mut seen = vec![r.get().a];
                while !stop.load(Ordering::Relaxed) {
                    r.refresh();
                    // A "batch": many reads of the one snapshot.
                    for _ in 0..100 {
                        let s = r.get();
                        assert_eq!(s.a, s.b, "a snapshot seen half old, half new");
                    }
                    if seen.last() != Some(&r.get().a) {
                        seen.push(r.get().a);
                    }
                    // Sleep in poll on the wake fd, as a worker does.
                    let mut p = libc::pollfd {
                        fd: r.wake_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, 50) };
                }
                seen
            }));
        }
        for n in 1..=200u64 {
            let g = h.publish(Snap { a: n, b: n });
            h.wait(g, Duration::from_secs(10)).unwrap();
            // Committed: every worker is on n now.
            assert_eq!(h.current().a, n);
        }
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let seen = t.join().unwrap();
            // Each publish was waited for, so each worker saw every generation, in order.
            assert_eq!(seen, (0..=200).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_gone_worker_does_not_block_and_a_stuck_one_times_out() {
        let h = Handover::new(1u32);
        let r1 = h.reader().unwrap();
        let r2 = h.reader().unwrap();
        drop(r1);
        let g = h.publish(2);
        assert_eq!(h.wait(g, Duration::from_millis(20)), Err(Laggards(1)));
        drop(r2);
        assert_eq!(h.wait(g, Duration::from_millis(20)), Ok(()));
        // With no reader at all, nothing to wait for.
        let g = h.publish(3);
        assert_eq!(h.wait(g, Duration::ZERO), Ok(()));
    }
}
