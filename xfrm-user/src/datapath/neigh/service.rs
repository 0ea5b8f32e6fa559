//! The control task that keeps the cache: resolution on demand, refresh on rtnetlink events,
//! and the NTF_USE pokes that keep the next hops in use fresh.

use std::{
    collections::{hash_map::Entry, HashMap, HashSet},
    io,
    net::IpAddr,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::{mpsc, Notify},
};

use crate::datapath::sys::{ControlTask, LentFd};

use super::{cache::*, netlink::*};

/// Knobs of the control task.
#[derive(Clone, Copy, Debug)]
pub struct NeighOptions {
    /// How often STALE next hops in use are re-probed.
    pub poke_interval: Duration,
    /// How often failed next hops and destinations without a route are retried.
    pub retry_interval: Duration,
}

impl Default for NeighOptions {
    fn default() -> Self {
        Self {
            poke_interval: Duration::from_secs(5),
            retry_interval: Duration::from_secs(1),
        }
    }
}

/// The control task that keeps the cache; stopped on drop.
pub struct NeighService {
    shared: Arc<Shared>,
    requests: mpsc::Sender<IpAddr>,
    _task: ControlTask,
}

impl NeighService {
    /// Opens the netlink sockets in the calling thread's network namespace and starts the
    /// control thread. `prime`: destinations to resolve right away (e.g. the SAs' peers).
    pub fn start(prime: &[IpAddr], opts: NeighOptions) -> Result<Self> {
        let events = NlSocket::open(&[
            RTNLGRP_LINK,
            RTNLGRP_NEIGH,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_ROUTE,
        ])
        .context("rtnetlink event socket")?;
        let rtnl = Rtnl::new()?;
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            current: Mutex::new(Arc::new(Snapshot::default())),
        });
        let (tx, rx) = mpsc::channel(1024);
        for &d in prime {
            let _ = tx.try_send(d);
        }
        let ctl = Control {
            rtnl,
            events,
            shared: shared.clone(),
            opts,
            dsts: HashMap::new(),
            neighs: HashMap::new(),
            links: HashMap::new(),
        };
        let task = ControlTask::start("xfrm-neigh", |stop| ctl.run(rx, stop))
            .context("start the neighbour task")?;
        Ok(Self {
            shared,
            requests: tx,
            _task: task,
        })
    }

    pub fn reader(&self) -> NeighReader {
        let snap = self
            .shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        NeighReader {
            shared: self.shared.clone(),
            generation: self.shared.generation.load(Ordering::Acquire),
            snap,
            requests: self.requests.clone(),
        }
    }

    /// Waits until `dst` resolves (for start-up and tests).
    pub fn wait_resolved(&self, dst: IpAddr, timeout: Duration) -> Option<L2> {
        let mut r = self.reader();
        let end = Instant::now() + timeout;
        loop {
            r.refresh();
            if let Some(l2) = r.lookup(dst) {
                return Some(l2);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Destinations the cache follows at most (each costs a route lookup on every route
/// change); beyond it new ones stay unresolved and their packets are dropped.
pub(super) const MAX_TRACKED: usize = 65536;

/// What the control thread knows about one tracked destination.
#[derive(Clone, Copy, Debug)]
pub(super) struct DstState {
    route: Option<Route>,
    /// The destination is one of our own addresses (a local route): delivered to the host.
    local: bool,
    /// When resolution was last asked of the kernel (to retry, not to flood).
    last_try: Option<Instant>,
}

pub(super) struct Control {
    rtnl: Rtnl,
    events: NlSocket,
    shared: Arc<Shared>,
    opts: NeighOptions,
    dsts: HashMap<IpAddr, DstState>,
    /// (ifindex, next hop) → what the kernel says.
    neighs: HashMap<(u32, IpAddr), Neigh>,
    links: HashMap<u32, Link>,
}

impl Control {
    /// The control loop: workers' requests, kernel events, and the two timers (re-probe
    /// STALE next hops; retry the unresolved), until `stop`.
    async fn run(mut self, mut requests: mpsc::Receiver<IpAddr>, stop: Arc<Notify>) {
        let raw = LentFd(self.events.fd.as_raw_fd());
        // SAFETY: the fd belongs to self.events, which outlives this local (a parameter is
        // dropped after the function's locals) and is not closed or replaced meanwhile.
        let events = match unsafe { AsyncFd::register_with_interest(raw, Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => {
                log::error!("rtnetlink events: {e}; the neighbour cache stays empty");
                return;
            }
        };
        let mut poke = tokio::time::interval(self.opts.poke_interval);
        let mut retry = tokio::time::interval(self.opts.retry_interval);
        for t in [&mut poke, &mut retry] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            let changed = tokio::select! {
                _ = stop.notified() => break,
                Some(d) = requests.recv() => {
                    // Everything queued, as one batch.
                    let mut fresh = HashSet::from([d]);
                    while let Ok(d) = requests.try_recv() {
                        fresh.insert(d);
                    }
                    self.track(fresh)
                }
                ready = events.readable() => {
                    let Ok(mut guard) = ready else { break };
                    guard.clear_ready();
                    match self.drain_events() {
                        Ok(c) => c,
                        Err(e) => {
                            log::warn!("rtnetlink events: {e}; resyncing");
                            self.resync();
                            true
                        }
                    }
                }
                _ = poke.tick() => {
                    retry.reset();
                    self.poke(true)
                }
                _ = retry.tick() => self.poke(false),
            };
            if changed {
                self.publish();
            }
        }
    }

    /// New destinations from the workers: tracked and resolved (true if any was new).
    pub(super) fn track(&mut self, fresh: HashSet<IpAddr>) -> bool {
        let mut changed = false;
        for d in fresh {
            if self.dsts.contains_key(&d) {
                continue;
            }
            if self.dsts.len() >= MAX_TRACKED {
                log::warn!("neighbour cache full ({MAX_TRACKED} destinations): {d} not tracked");
                break;
            }
            self.dsts.insert(
                d,
                DstState {
                    route: None,
                    local: false,
                    last_try: None,
                },
            );
            self.resolve_dst(d);
            changed = true;
        }
        changed
    }

    /// Route, link and neighbour of `d` from the kernel; resolution asked when needed.
    pub(super) fn resolve_dst(&mut self, d: IpAddr) {
        let mut local = false;
        let route = match self.rtnl.route_get(d) {
            Ok(r) if !r.local => Some(r),
            Ok(_) => {
                local = true;
                None
            }
            Err(e) => {
                log::debug!("{e:#}");
                None
            }
        };
        let st = self.dsts.entry(d).or_insert(DstState {
            route: None,
            local: false,
            last_try: None,
        });
        st.route = route;
        st.local = local;
        let Some(route) = route else { return };
        if let Entry::Vacant(v) = self.links.entry(route.oif) {
            match self.rtnl.link_by_index(route.oif) {
                Ok(l) => {
                    v.insert(l);
                }
                Err(e) => log::warn!("{e:#}"),
            }
        }
        let key = (route.oif, route.next_hop());
        match self.rtnl.neigh_get(route.oif, route.next_hop()) {
            Ok(Some(n)) => {
                self.neighs.insert(key, n);
            }
            Ok(None) => {
                self.neighs.remove(&key);
            }
            Err(e) => log::debug!("{e:#}"),
        }
        let usable = self.neighs.get(&key).and_then(|n| n.usable_mac()).is_some();
        if !usable {
            self.trigger(d, route);
        }
    }

    pub(super) fn trigger(&mut self, d: IpAddr, route: Route) {
        if let Err(e) = self.rtnl.neigh_resolve(route.oif, route.next_hop()) {
            log::warn!("{e:#}");
        }
        if let Some(st) = self.dsts.get_mut(&d) {
            st.last_try = Some(Instant::now());
        }
    }

    /// Reads pending events for up to `wait`; true if anything we track changed.
    pub(super) fn drain_events(&mut self) -> io::Result<bool> {
        let mut changed = false;
        let mut reroute = false;
        loop {
            let n = match self.events.recv(true) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e), // ENOBUFS: events were lost
            };
            let batch: Vec<(u16, Vec<u8>)> = messages(&self.events.buf[..n])
                .map(|(ty, _, b)| (ty, b.to_vec()))
                .collect();
            for (ty, body) in batch {
                match ty {
                    RTM_NEWNEIGH | RTM_DELNEIGH => {
                        let Some(mut n) = parse_neigh(&body) else {
                            continue;
                        };
                        let key = (n.ifindex, n.addr);
                        if !self.tracked_next_hop(key) {
                            continue;
                        }
                        if ty == RTM_DELNEIGH {
                            n.state = 0;
                        }
                        if self.neighs.get(&key) != Some(&n) {
                            log::debug!(
                                "neighbour {} now {:?} state {:#x}",
                                n.addr,
                                n.mac,
                                n.state
                            );
                            self.neighs.insert(key, n);
                            changed = true;
                        }
                    }
                    RTM_NEWROUTE | RTM_DELROUTE => reroute = true,
                    RTM_NEWLINK | RTM_DELLINK => {
                        if let Some(l) = parse_link(&body) {
                            if let Entry::Occupied(mut e) = self.links.entry(l.index) {
                                if ty == RTM_DELLINK {
                                    e.remove();
                                } else {
                                    e.insert(l);
                                }
                                changed = true;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if reroute {
            self.resync();
            changed = true;
        }
        Ok(changed)
    }

    pub(super) fn tracked_next_hop(&self, key: (u32, IpAddr)) -> bool {
        self.dsts
            .values()
            .filter_map(|s| s.route)
            .any(|r| (r.oif, r.next_hop()) == key)
    }

    /// Everything again from the kernel: after a route change or lost events.
    pub(super) fn resync(&mut self) {
        self.links.clear();
        self.neighs.clear();
        let dsts: Vec<IpAddr> = self.dsts.keys().copied().collect();
        for d in dsts {
            self.resolve_dst(d);
        }
    }

    /// Re-probes STALE next hops when `stale_too` (the kernel does not see our traffic),
    /// asks again for next hops that failed or vanished (an IPv6 solicitation the kernel
    /// could not send yet, e.g. while the link-local address was tentative, ends FAILED),
    /// and retries destinations without a route.
    pub(super) fn poke(&mut self, stale_too: bool) -> bool {
        let mut todo = Vec::new();
        let mut retry = Vec::new();
        for (&d, st) in &self.dsts {
            match st.route {
                Some(r) => {
                    let n = self.neighs.get(&(r.oif, r.next_hop()));
                    match n.map(|n| n.state) {
                        Some(s) if s & nud::STALE != 0 => {
                            if stale_too {
                                todo.push((d, r))
                            }
                        }
                        // Still resolving (INCOMPLETE): the kernel is on it.
                        Some(nud::INCOMPLETE) => {}
                        Some(s) if s & nud::VALID != 0 => {}
                        _ => todo.push((d, r)),
                    }
                }
                None => retry.push(d),
            }
        }
        let mut seen = HashSet::new();
        for (d, r) in todo {
            if seen.insert((r.oif, r.next_hop())) {
                self.trigger(d, r);
            }
        }
        let changed = !retry.is_empty();
        for d in retry {
            self.resolve_dst(d);
        }
        changed
    }

    pub(super) fn publish(&self) {
        let mut resolved = FastMap::default();
        let mut prefsrc = FastMap::default();
        let mut local = FastSet::default();
        for (&d, st) in &self.dsts {
            if st.local {
                local.insert(d);
            }
            let Some(r) = st.route else { continue };
            if let Some(src) = r.prefsrc {
                prefsrc.insert(d, src);
            }
            let Some(link) = self.links.get(&r.oif) else {
                continue;
            };
            let Some(mac) = self
                .neighs
                .get(&(r.oif, r.next_hop()))
                .and_then(|n| n.usable_mac())
            else {
                continue;
            };
            resolved.insert(
                d,
                L2 {
                    ifindex: r.oif,
                    dst_mac: mac,
                    src_mac: link.mac,
                    mtu: r.mtu.unwrap_or(link.mtu),
                    src_addr: r.prefsrc,
                    next_hop: r.next_hop(),
                },
            );
        }
        self.shared.publish(Snapshot {
            resolved,
            prefsrc,
            local,
        });
    }
}

/// Fails unless `name` exists here; returns its index, MAC and MTU (a convenience for the
/// worker's start-up).
pub fn interface(name: &str) -> Result<Link> {
    let mut r = Rtnl::new()?;
    let l = r.link_by_name(name)?;
    if l.mtu == 0 {
        bail!("interface {name}: no MTU reported");
    }
    Ok(l)
}
