//! The snapshot the workers read: destination → next hop, MAC and interface, published by
//! the control task behind an `Arc` and checked once per batch.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::mpsc;

/// Everything a worker needs to put a frame for one destination on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2 {
    pub ifindex: u32,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// The route's MTU (or PMTU) if it has one, else the interface's.
    pub mtu: u32,
    /// Our address towards the destination (the source of ICMP errors we send there).
    pub src_addr: Option<IpAddr>,
    pub next_hop: IpAddr,
}

/// An immutable view: destination → L2 for the destinations that resolved, and our source
/// address towards every destination with a route (known before its neighbour is).
#[derive(Debug, Default)]
pub struct Snapshot {
    pub(super) resolved: FastMap<IpAddr, L2>,
    pub(super) prefsrc: FastMap<IpAddr, IpAddr>,
    /// Destinations that are our own addresses (the kernel's route is local).
    pub(super) local: FastSet<IpAddr>,
}

/// Per-packet lookups in tables rebuilt whole on change: a fast hash (the keys come from
/// packets only after they were authenticated or classified, and never grow the table).
pub(super) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(super) type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Where a packet for a destination goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// Out of an interface, to this next hop.
    Via(L2),
    /// One of this host's own addresses.
    Local,
}

impl Snapshot {
    pub fn get(&self, dst: &IpAddr) -> Option<&L2> {
        self.resolved.get(dst)
    }
    /// The route's preferred source towards `dst` (RTA_PREFSRC).
    pub fn src_towards(&self, dst: &IpAddr) -> Option<IpAddr> {
        self.prefsrc.get(dst).copied()
    }
    /// Where `dst` goes, once it resolved (one lookup for the usual case, a remote one).
    pub fn hop(&self, dst: &IpAddr) -> Option<Hop> {
        match self.resolved.get(dst) {
            Some(l2) => Some(Hop::Via(*l2)),
            None if self.local.contains(dst) => Some(Hop::Local),
            None => None,
        }
    }
    pub fn len(&self) -> usize {
        self.resolved.len()
    }
    pub fn is_empty(&self) -> bool {
        self.resolved.is_empty()
    }
}

/// The shared, published state: a generation and the current snapshot.
pub(super) struct Shared {
    pub(super) generation: AtomicU64,
    pub(super) current: Mutex<Arc<Snapshot>>,
}

impl Shared {
    pub(super) fn publish(&self, s: Snapshot) {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *cur = Arc::new(s);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A worker's handle: `refresh` once per batch, `lookup` per packet.
pub struct NeighReader {
    pub(super) shared: Arc<Shared>,
    pub(super) generation: u64,
    pub(super) snap: Arc<Snapshot>,
    /// To the control task; `try_send` never blocks (a full queue drops the request, the
    /// next miss asks again).
    pub(super) requests: mpsc::Sender<IpAddr>,
}

impl Clone for NeighReader {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            generation: self.generation,
            snap: self.snap.clone(),
            requests: self.requests.clone(),
        }
    }
}

impl NeighReader {
    /// Picks up a newer snapshot if one was published: one atomic load when nothing changed.
    pub fn refresh(&mut self) {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.generation {
            let cur = self
                .shared
                .current
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.snap = cur.clone();
            self.generation = g;
        }
    }

    /// The L2 for `dst`; None (and a resolution request to the control task) when it is
    /// not known yet. Never blocks and never allocates.
    pub fn lookup(&self, dst: IpAddr) -> Option<L2> {
        let r = self.snap.get(&dst).copied();
        if r.is_none() {
            let _ = self.requests.try_send(dst);
        }
        r
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// [`Snapshot::hop`], asking for resolution on a miss like [`Self::lookup`].
    pub fn next_hop(&self, dst: IpAddr) -> Option<Hop> {
        let r = self.snap.hop(&dst);
        if r.is_none() {
            let _ = self.requests.try_send(dst);
        }
        r
    }

    /// Our address towards `dst` (for ICMP errors we send there); needs only the route, not
    /// the neighbour. A miss asks for resolution like [`NeighReader::lookup`].
    pub fn src_towards(&self, dst: IpAddr) -> Option<IpAddr> {
        let r = self.snap.src_towards(&dst);
        if r.is_none() {
            let _ = self.requests.try_send(dst);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_sees_published_snapshots() {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            current: Mutex::new(Arc::new(Snapshot::default())),
        });
        let (tx, mut rx) = mpsc::channel(4);
        let mut r = NeighReader {
            shared: shared.clone(),
            generation: 0,
            snap: Arc::new(Snapshot::default()),
            requests: tx,
        };
        let d: IpAddr = "10.0.0.9".parse().unwrap();
        assert!(r.lookup(d).is_none());
        assert_eq!(rx.try_recv(), Ok(d), "a miss asks the control thread");
        let l2 = L2 {
            ifindex: 2,
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            src_addr: None,
            next_hop: d,
        };
        shared.publish(Snapshot {
            resolved: FastMap::from_iter([(d, l2)]),
            ..Snapshot::default()
        });
        assert!(r.lookup(d).is_none(), "not before refresh");
        r.refresh();
        assert_eq!(r.lookup(d), Some(l2));
        // Misses beyond the channel's room are dropped, never block.
        for _ in 0..10 {
            assert!(r.lookup("10.0.0.10".parse().unwrap()).is_none());
        }
    }
}
