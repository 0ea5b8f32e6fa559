//! Handing the workers each change of the tables (SAD, SPD, input tables): an epoch scheme
//! in the spirit of RCU, with deltas. Each worker keeps its own copy of the tables; the
//! control plane publishes a change (a delta: the SAs added and removed, the policies when
//! they changed) and bumps the generation; each worker, between two batches (never with a
//! packet in hand), sees the generation move, applies the deltas it has not seen to its copy
//! and acknowledges; the control plane waits until every live worker has, and only then
//! answers the request. A packet is thus handled wholly by the tables before a change or
//! wholly by those after it, the per-packet path reads the worker's own tables without any
//! lock or atomic, and a change costs what it changes, not what the tables hold.
//!
//! A worker asleep in `poll` is woken through its eventfd ([`Reader::wake_fd`]). A worker
//! whose thread has ended drops its [`Reader`], which stops the waiting for it.

use std::{
    collections::VecDeque,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

/// Tables a change can be applied to.
pub trait Apply: Clone {
    type Delta;
    fn apply(&mut self, d: &Self::Delta);
}

struct Slot {
    acked: AtomicU64,
    alive: AtomicBool,
    wake: OwnedFd,
}

struct Shared<T: Apply> {
    /// The tables as of the latest generation (new readers start from a copy).
    current: Mutex<Arc<T>>,
    /// The deltas some live reader may not have applied yet, with their generations.
    log: Mutex<VecDeque<(u64, Arc<T::Delta>)>>,
    generation: AtomicU64,
    slots: Mutex<Vec<Arc<Slot>>>,
    /// Notified when a reader acknowledges or goes away.
    acked: Condvar,
    ack_lock: Mutex<()>,
}

/// The control plane's end.
pub struct Handover<T: Apply> {
    shared: Arc<Shared<T>>,
}

/// A worker's end: its own tables, changed only by [`Reader::refresh`].
pub struct Reader<T: Apply> {
    shared: Arc<Shared<T>>,
    current: T,
    generation: u64,
    slot: Arc<Slot>,
}

/// Workers that did not take a change in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} worker(s) did not take the new tables within the time allowed")]
pub struct Laggards(pub usize);

impl<T: Apply> Handover<T> {
    pub fn new(initial: T) -> Self {
        Self {
            shared: Arc::new(Shared {
                current: Mutex::new(Arc::new(initial)),
                log: Mutex::new(VecDeque::new()),
                generation: AtomicU64::new(0),
                slots: Mutex::new(Vec::new()),
                acked: Condvar::new(),
                ack_lock: Mutex::new(()),
            }),
        }
    }

    /// A reader for one worker, on a copy of the current tables.
    pub fn reader(&self) -> std::io::Result<Reader<T>> {
        // SAFETY: eventfd takes two integers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        // The copy and its generation together: publish takes the same lock.
        let (current, generation) = {
            let c = lock(&self.shared.current);
            (
                (**c).clone(),
                self.shared.generation.load(Ordering::Acquire),
            )
        };
        let slot = Arc::new(Slot {
            acked: AtomicU64::new(generation),
            alive: AtomicBool::new(true),
            wake,
        });
        lock(&self.shared.slots).push(slot.clone());
        Ok(Reader {
            shared: self.shared.clone(),
            current,
            generation,
            slot,
        })
    }

    /// The tables as of the latest change.
    pub fn current(&self) -> Arc<T> {
        lock(&self.shared.current).clone()
    }

    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// Publishes a change and wakes every reader; returns its generation, for
    /// [`Self::wait`].
    pub fn publish(&self, delta: Arc<T::Delta>) -> u64 {
        let g = {
            let mut c = lock(&self.shared.current);
            Arc::make_mut(&mut c).apply(&delta);
            let mut log = lock(&self.shared.log);
            // In the log before the generation moves: a reader that sees the generation
            // finds the delta.
            let g = self.shared.generation.load(Ordering::Acquire) + 1;
            log.push_back((g, delta));
            self.shared.generation.store(g, Ordering::Release);
            g
        };
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
    /// `timeout`; then forgets the deltas every live reader has applied.
    pub fn wait(&self, g: u64, timeout: Duration) -> Result<(), Laggards> {
        let deadline = Instant::now() + timeout;
        let mut guard = lock(&self.shared.ack_lock);
        loop {
            let (behind, oldest) = {
                let mut slots = lock(&self.shared.slots);
                slots.retain(|s| s.alive.load(Ordering::Acquire));
                let acked = slots.iter().map(|s| s.acked.load(Ordering::Acquire));
                (
                    slots
                        .iter()
                        .filter(|s| s.acked.load(Ordering::Acquire) < g)
                        .count(),
                    acked.min().unwrap_or(u64::MAX),
                )
            };
            {
                let mut log = lock(&self.shared.log);
                while log.front().is_some_and(|(lg, _)| *lg <= oldest) {
                    log.pop_front();
                }
            }
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

impl<T: Apply> Reader<T> {
    /// The tables this worker works with until the next [`Self::refresh`].
    #[inline]
    pub fn get(&self) -> &T {
        &self.current
    }

    /// Between batches: applies the changes published since the last call, if any, and
    /// acknowledges them. One atomic load when nothing changed.
    #[inline]
    pub fn refresh(&mut self) -> bool {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g == self.generation {
            return false;
        }
        self.take();
        true
    }

    #[cold]
    fn take(&mut self) {
        let mut buf = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live buffer from our non-blocking eventfd
        // (nothing to read is EAGAIN, which is fine: the wake-up is consumed either way).
        unsafe { libc::read(self.slot.wake.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        // The deltas after ours, taken out under the lock and applied outside it.
        let todo: Vec<(u64, Arc<T::Delta>)> = lock(&self.shared.log)
            .iter()
            .filter(|(g, _)| *g > self.generation)
            .cloned()
            .collect();
        for (g, d) in todo {
            self.current.apply(&d);
            self.generation = g;
        }
        self.slot.acked.store(self.generation, Ordering::Release);
        let _g = lock(&self.shared.ack_lock);
        self.shared.acked.notify_all();
    }

    /// Readable when a change waits: poll it with the sockets.
    pub fn wake_fd(&self) -> RawFd {
        self.slot.wake.as_raw_fd()
    }
}

impl<T: Apply> Drop for Reader<T> {
    fn drop(&mut self) {
        self.slot.alive.store(false, Ordering::Release);
        let _g = lock(&self.shared.ack_lock);
        self.shared.acked.notify_all();
    }
}

/// A poisoned lock only means another thread panicked while holding it; the data (an Arc,
/// a list of slots, a log of deltas) is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables whose two halves must always agree: a reader that ever saw them differ would
    /// have seen a change half applied.
    #[derive(Clone)]
    struct Snap {
        a: u64,
        b: u64,
    }

    impl Apply for Snap {
        type Delta = u64;
        fn apply(&mut self, d: &u64) {
            self.a = *d;
            self.b = *d;
        }
    }

    #[test]
    fn workers_see_whole_changes_and_acknowledge_each() {
        let h = Handover::new(Snap { a: 0, b: 0 });
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for _ in 0..3 {
            let mut r = h.reader().unwrap();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                // The tables it was created on, then each change it takes.
                let mut seen = vec![r.get().a];
                while !stop.load(Ordering::Relaxed) {
                    r.refresh();
                    // A "batch": many reads of the one state.
                    for _ in 0..100 {
                        let s = r.get();
                        assert_eq!(s.a, s.b, "a change seen half applied");
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
            let g = h.publish(Arc::new(n));
            h.wait(g, Duration::from_secs(10)).unwrap();
            // Committed: every worker is on n now, and the log holds nothing they need.
            assert_eq!(h.current().a, n);
            assert!(lock(&h.shared.log).is_empty());
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
        let h = Handover::new(Snap { a: 1, b: 1 });
        let r1 = h.reader().unwrap();
        let mut r2 = h.reader().unwrap();
        drop(r1);
        let g = h.publish(Arc::new(2));
        assert_eq!(h.wait(g, Duration::from_millis(20)), Err(Laggards(1)));
        // A late reader catches up on every delta it missed, in order.
        let g = h.publish(Arc::new(3));
        assert_eq!(lock(&h.shared.log).len(), 2);
        assert!(r2.refresh());
        assert_eq!((r2.get().a, r2.get().b), (3, 3));
        assert_eq!(h.wait(g, Duration::from_millis(20)), Ok(()));
        drop(r2);
        // With no reader at all, nothing to wait for; a new reader starts from the latest.
        let g = h.publish(Arc::new(4));
        assert_eq!(h.wait(g, Duration::ZERO), Ok(()));
        let r3 = h.reader().unwrap();
        assert_eq!(r3.get().a, 4);
    }
}
