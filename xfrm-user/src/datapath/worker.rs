//! The AF_XDP worker: one thread per receive queue, moving frames between the inside and the
//! outside interface through a transform, in place.
//!
//! # Frames
//! One UMEM per worker, shared by its sockets (inside and outside queue `q`; one socket when
//! both are the same interface, the one-armed gateway). Frames are 4096 bytes; in copy mode
//! the kernel puts a packet at XDP_PACKET_HEADROOM (256) into its frame, with the
//! classifier's [`XdpMeta`] right in front of it. So a received packet has 256 bytes of
//! headroom (outer IP + UDP + ESP header + IV, or AH, after the Ethernet header is taken off)
//! and 4096 - 256 - len of tailroom (padding, trailer, ICV): every transform runs in place and
//! the same frame goes to the other interface's TX ring without a copy.
//!
//! # The loop
//! Reap both completion rings into the free list → top up both fill rings (waking the kernel
//! when it asks: need_wakeup) → receive a batch from each RX ring → for each frame: read the
//! metadata, strip Ethernet, run the [`Transform`], put the next hop's Ethernet header from
//! the neighbour cache in front (or hold the frame until the next hop resolves), fragment
//! the outer packet if it exceeds the route MTU → submit each TX batch, kicking and reaping
//! until the kernel has taken it all. Buffers for descriptors are allocated once at start;
//! nothing is allocated per packet.
//!
//! # No frame lost to the plumbing
//! A frame the wire could take is not dropped by the worker: a TX batch is kicked until the
//! kernel has taken it (copy mode sends 32 frames per sendto and needs completion room);
//! an RX batch is no larger than every TX ring can still hold, so what does not fit waits
//! in the RX ring; the UMEM holds full fill and RX rings on both sockets with as many
//! frames again in flight ([`WorkerConfig::new`]); a frame for an unresolved next hop waits
//! for its MAC in a bounded queue per destination. Each remaining drop has its counter
//! ([`WorkerStats`], with the kernel's own XDP_STATISTICS of the sockets).
//!
//! # Several workers on one SA
//! Sequence numbers come from the SA's atomic counter (`SecurityAssociation`), so two workers
//! never send the same number. The wire order between workers is not the counter order: a
//! worker takes numbers for its batch and transmits the batch at the end of the same loop
//! iteration (and keeps kicking until the kernel has taken every descriptor: copy mode sends
//! at most 32 per kick), so numbers in flight at once are bounded by about workers × batch
//! (64 per worker by default), unless a worker thread is preempted mid-batch. The receiver's
//! replay window (32 to 4096 packets) accepts any order within the window; with a window of
//! at least 2 × workers × batch, reordering between workers does not cause replay drops.
//! That is the "monotonic within the replay window" property (tests/worker_netns.rs
//! `two_workers_share_one_sa` measures the lag).
//!
//! # The host's own traffic
//! With a TAP queue ([`Worker::with_local`], see tap.rs), the worker also reads the frames the
//! TC program took from the host's own output ([`Side::Local`]: no metadata, the transform
//! classifies them) into free frames at the same headroom, and writes to that queue what is
//! for the host itself: decapsulated packets to one of its addresses, and ICMP errors about
//! its own packets. A syscall per frame: the host's own traffic is the small part.

use std::{
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xdpilone::{xdp::XdpDesc, Umem};
use xfrm_common::XdpMeta;

use super::neigh::{Hop, NeighReader, L2};
use super::reasm::{Datagram, Reassembled};
use super::umem::{new_umem, take_meta, Area, QueueSocket};
use crate::frame::Frame;
use crate::wire::ethernet::{EthernetFrame, EthernetRepr, HEADER_LEN as ETH_LEN};
use crate::wire::{flow, ip_version, ipv4::Ipv4Packet, ipv6::Ipv6Packet};
use crate::xfrm::pmtu::{self, Fragmenter, SizeCheck};

/// Metadata flag for the one-armed gateway, where one socket receives both directions: set
/// by the program on the outside path (ESP/AH/NAT-T to a local SA).
pub use xfrm_common::META_F_INBOUND;

pub use super::umem::FRAME_SIZE;
/// Where the kernel puts a received packet in its frame (XDP_PACKET_HEADROOM).
pub const XDP_HEADROOM: usize = 256;
/// What a frame read from the TAP leaves free after it, for the trailer, ICV and TFC padding.
const LOCAL_TAILROOM: usize = 1024;

/// The two sides of the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The protected network (plaintext).
    Inside = 0,
    /// The wire (ESP/AH).
    Outside = 1,
    /// The host itself: its own packets (read from the TAP device) and packets for it.
    Local = 2,
}

/// What the transform decided for a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the IP packet now in the frame out of `Side`, to the next hop towards its
    /// destination address (the worker reads it from the packet and looks the hop up).
    Tx(Side),
    /// As `Tx`, to the next hop towards this destination, which the transform has read
    /// from the packet already (the worker looks the hop up).
    Route(Side, IpAddr),
    /// Send it out of `Side` to this next hop, which the transform looked up already.
    TxTo(Side, L2),
    /// The frame now holds an error for the sender (ICMP built in place): send it back out
    /// of the interface it came from, to the MAC it came from.
    Reply,
    /// Drop (the transform counted why).
    Drop,
}

/// What a transform can ask the worker about.
pub struct Ctx<'a> {
    neigh: &'a NeighReader,
    ports: &'a [PortInfo; 3],
}

impl Ctx<'_> {
    /// The next hop's L2 and the route MTU towards `dst` (None until it resolves; the lookup
    /// asks for resolution).
    pub fn l2(&self, dst: IpAddr) -> Option<L2> {
        self.neigh.lookup(dst)
    }
    /// Our address towards `dst` (the route's preferred source), known as soon as the route
    /// is, before the neighbour.
    pub fn src_towards(&self, dst: IpAddr) -> Option<IpAddr> {
        self.neigh.src_towards(dst)
    }
    /// The interface of a side: index, MAC, MTU.
    pub fn port(&self, side: Side) -> &PortInfo {
        &self.ports[side as usize]
    }
}

/// The per-packet work: `frame` holds the IP packet (Ethernet removed); `meta` is what the
/// classifier found (None from an interface without classifier, or without valid metadata).
pub trait Transform: Send {
    fn process(
        &mut self,
        from: Side,
        meta: Option<&XdpMeta>,
        frame: &mut Frame<'_>,
        ctx: &Ctx<'_>,
    ) -> Action;

    /// Called between two batches, with no frame in hand: where a transform may move to
    /// new tables, so that each packet sees one version of them.
    fn between_batches(&mut self) {}

    /// A descriptor the worker polls with its sockets: readable when
    /// [`Self::between_batches`] has something to do.
    fn wake_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

impl<F> Transform for F
where
    F: FnMut(Side, Option<&XdpMeta>, &mut Frame<'_>, &Ctx<'_>) -> Action + Send,
{
    fn process(
        &mut self,
        from: Side,
        meta: Option<&XdpMeta>,
        frame: &mut Frame<'_>,
        ctx: &Ctx<'_>,
    ) -> Action {
        self(from, meta, frame, ctx)
    }
}

/// The size check of ip_forward / xfrm_tunnel_check_size for a transform to call before it
/// grows a packet: `mtu` is what the bundle leaves ([`pmtu::bundle_mtu`] of the route MTU).
/// Returns `Some(Action::Reply)` with the ICMP error built in the frame, `Some(Drop)` when
/// the packet is too big but no error may be sent, None when the packet fits.
pub fn too_big(frame: &mut Frame<'_>, mtu: u32, ctx: &Ctx<'_>) -> Option<Action> {
    let info = flow::parse(frame.data()).ok()?;
    match pmtu::check_size_parsed(&info.l4(), mtu) {
        SizeCheck::Fits => None,
        check => Some(reply_too_big(frame, &info, check, ctx)),
    }
}

/// The ICMP error for a packet `check` found too big (`info`: its parse): `Reply` with the
/// error built in the frame, or `Drop` when none may be sent.
pub fn reply_too_big(
    frame: &mut Frame<'_>,
    info: &flow::FlowInfo,
    check: SizeCheck,
    ctx: &Ctx<'_>,
) -> Action {
    // Our address towards the sender: the route's preferred source, as icmp_send picks it.
    // (The reply goes back to the MAC the packet came from: no neighbour needed.)
    let src = ctx.src_towards(info.key.src);
    let r = match (check, src) {
        (SizeCheck::FragNeeded { mtu }, Some(IpAddr::V4(s))) => {
            let id = frame_ident(frame);
            pmtu::icmp4_frag_needed(frame, s, mtu, id)
        }
        (SizeCheck::PacketTooBig { mtu }, Some(IpAddr::V6(s))) => {
            pmtu::icmp6_packet_too_big(frame, s, mtu)
        }
        _ => return Action::Drop,
    };
    if r.is_ok() {
        Action::Reply
    } else {
        Action::Drop
    }
}

/// An IP ID for our ICMP errors: the kernel picks a hashed one; the original's, inverted,
/// is as good and costs nothing.
fn frame_ident(frame: &Frame<'_>) -> u16 {
    let d = frame.data();
    !u16::from_be_bytes([d[4], d[5]])
}

/// One interface as the worker sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
}

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub inside: PortInfo,
    pub outside: PortInfo,
    pub queue: u32,
    /// UMEM frames (shared by the sockets of this worker).
    pub frames: u32,
    /// Size of each ring (fill, completion, rx, tx).
    pub ring_size: u32,
    /// Frames taken from an RX ring per loop iteration.
    pub batch: u32,
}

impl WorkerConfig {
    /// Rings of 2048 descriptors: at ~120 kpps a burst of ~17 ms before the kernel finds an
    /// RX ring full. UMEM of 16 384 frames (64 MiB): per socket a full fill ring and a full
    /// RX ring (2 x 2048), for the two sockets 8192, and as many again for frames in TX
    /// rings, held for a neighbour or being fragmented: the fill rings never run dry
    /// because frames are elsewhere.
    pub fn new(inside: PortInfo, outside: PortInfo, queue: u32) -> Self {
        Self {
            inside,
            outside,
            queue,
            frames: 16384,
            ring_size: 2048,
            batch: 64,
        }
    }
}

/// Counters of one worker (relaxed atomics, read by the control plane).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// By [`Side`]: inside, outside, the host itself.
    pub rx: [AtomicU64; 3],
    pub tx: [AtomicU64; 3],
    /// Frames without an Ethernet + IP header.
    pub bad_frame: AtomicU64,
    /// Frames from an AF_XDP socket without a valid [`XdpMeta`] header at their start.
    pub bad_meta: AtomicU64,
    /// The transform dropped the frame.
    pub dropped: AtomicU64,
    /// No route or neighbour yet for the destination.
    pub no_l2: AtomicU64,
    /// The route points to an interface this worker does not transmit on.
    pub wrong_port: AtomicU64,
    /// Over the route MTU and not allowed to fragment.
    pub too_big: AtomicU64,
    /// Extra fragments sent (outer fragmentation).
    pub fragments: AtomicU64,
    /// ICMP errors sent back (fragmentation needed, packet too big).
    pub replies: AtomicU64,
    /// Outer fragments the kernel reassembled, taken from the raw sockets.
    pub reassembled: AtomicU64,
    /// No free frame in the UMEM (outer fragments, the host's own frames, reassembled
    /// datagrams): with the UMEM sized as [`WorkerConfig`] says, only a burst of fragments.
    pub no_buffer: AtomicU64,
    /// The TX ring stayed full while the kernel took nothing more, however often it was
    /// kicked and its completions reaped: the frames that did not fit.
    pub tx_full: AtomicU64,
    /// Frames the kernel took from the TX ring and the device then refused (sendto EBUSY:
    /// the driver's NET_XMIT_DROP, e.g. a veth peer's full ring).
    pub tx_device_drops: AtomicU64,
    /// Frames held for an unresolved next hop and dropped because its queue was full (the
    /// kernel's unresolved_discards).
    pub unres_discards: AtomicU64,
    /// The kernel's counters of this worker's sockets (XDP_STATISTICS), sampled by the
    /// worker: frames it could not hand us.
    pub xsk: XskStats,
}

/// The kernel's XDP_STATISTICS, summed over a worker's sockets (values, not increments).
#[derive(Debug, Default)]
pub struct XskStats {
    /// Dropped on receive for any reason (includes the two below).
    pub rx_dropped: AtomicU64,
    /// The RX ring was full: the worker did not keep up.
    pub rx_ring_full: AtomicU64,
    /// The fill ring was empty: the worker gave the kernel no frame to write into.
    pub rx_fill_empty: AtomicU64,
    /// TX descriptors the kernel refused (outside the UMEM, too long).
    pub tx_invalid: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// A frame waiting for its next hop's MAC.
#[derive(Clone, Copy, Debug)]
struct Parked {
    to: Side,
    dst: IpAddr,
    base: u64,
    head: usize,
    len: usize,
    since: Instant,
}

/// What a worker holds for unresolved next hops (the kernel's arp_queue): per destination
/// at most `PARK_PER_HOP` frames (unres_qlen_bytes' 212 992 bytes hold about 90 full-size
/// frames), the oldest dropped first beyond it, as neigh_event_send does; `PARK_MAX` in
/// all; each for at most `PARK_TIMEOUT` (resolution gives up after 3 solicitations a
/// second apart).
const PARK_PER_HOP: usize = 64;
const PARK_MAX: usize = 256;
const PARK_TIMEOUT: Duration = Duration::from_secs(3);

/// Kicks of a TX ring in a row that the kernel answers without taking a descriptor before
/// the worker gives up on what is left (a device that stopped, a peer that does not drain).
const TX_STALLS: u32 = 64;

/// How often (in loop iterations, and whenever the loop idles) the worker copies the
/// kernel's socket counters into [`WorkerStats::xsk`]: a getsockopt per socket.
const XSK_STATS_EVERY: u32 = 1024;

/// One socket of the worker and the descriptors waiting for its TX ring (capacity reserved
/// at start).
struct Port {
    sock: QueueSocket,
    pending: Vec<XdpDesc>,
}

/// The sockets of one queue and everything the loop needs. Built in the network namespace of
/// the interfaces (the calling thread's), then moved to its thread.
pub struct Worker<T: Transform> {
    // Drop order: ports (sockets, rings) before the UMEM, the UMEM before the area.
    ports: Vec<Port>,
    umem: Umem,
    area: Area,
    /// Index into `ports` of each side (the same index when one-armed).
    side_port: [usize; 2],
    /// By [`Side`]; the local one is a placeholder (index 0) without a TAP.
    infos: [PortInfo; 3],
    /// This worker's queue of the TAP device (the host's own traffic), if any.
    local: Option<OwnedFd>,
    /// Raw sockets for outer fragments the kernel reassembled (one worker has them).
    reasm: Option<Reassembled>,
    free: Vec<u64>,
    rx_batch: Vec<XdpDesc>,
    parked: Vec<Parked>,
    /// Loop iterations, for sampling the kernel's socket counters.
    steps: u32,
    cfg: WorkerConfig,
    transform: T,
    neigh: NeighReader,
    stats: Arc<WorkerStats>,
}

// SAFETY: the raw pointers inside point into `area`, owned by the same value; the rings are
// SPSC with the kernel and used by this one thread.
unsafe impl<T: Transform> Send for Worker<T> {}

impl<T: Transform> Worker<T> {
    /// Opens the sockets (inside and outside queue `cfg.queue`, sharing one UMEM) in the
    /// calling thread's network namespace. Put [`Worker::rx_fds`] in the classifier's XSKS
    /// map, then [`Worker::run`] it on its own thread.
    pub fn new(cfg: WorkerConfig, transform: T, neigh: NeighReader) -> Result<Self> {
        if cfg.frames < 2 * cfg.ring_size || !cfg.ring_size.is_power_of_two() {
            bail!(
                "worker: {} frames for rings of {} (power of two; frames >= 2 x ring)",
                cfg.frames,
                cfg.ring_size
            );
        }
        let (area, umem) = new_umem(cfg.frames, cfg.ring_size)?;
        let one_armed = cfg.inside.ifindex == cfg.outside.ifindex;
        let names: &[&PortInfo] = if one_armed {
            &[&cfg.inside]
        } else {
            &[&cfg.inside, &cfg.outside]
        };
        let mut ports = Vec::new();
        for (i, p) in names.iter().enumerate() {
            ports.push(Port {
                sock: QueueSocket::bind(&umem, &p.name, cfg.queue, cfg.ring_size, i == 0)?,
                pending: Vec::with_capacity(cfg.ring_size as usize),
            });
        }
        let free = (0..cfg.frames)
            .map(|i| u64::from(i) * u64::from(FRAME_SIZE))
            .collect();
        let side_port = if one_armed { [0, 0] } else { [0, 1] };
        let mut w = Self {
            ports,
            umem,
            area,
            side_port,
            infos: [
                cfg.inside.clone(),
                cfg.outside.clone(),
                PortInfo {
                    name: String::new(),
                    ifindex: 0,
                    mac: [0; 6],
                    mtu: 0,
                },
            ],
            local: None,
            reasm: None,
            free,
            rx_batch: Vec::with_capacity(cfg.batch as usize),
            parked: Vec::with_capacity(PARK_MAX),
            steps: 0,
            cfg,
            transform,
            neigh,
            stats: Arc::new(WorkerStats::default()),
        };
        // Fill rings primed before the sockets go into the XSKS map: a frame redirected to
        // a socket with an empty fill ring is lost.
        w.refill();
        Ok(w)
    }

    /// Also serve the host's own traffic through `queue` of the TAP device `info`.
    pub fn with_local(mut self, queue: OwnedFd, info: PortInfo) -> Self {
        self.local = Some(queue);
        self.infos[Side::Local as usize] = info;
        self
    }

    /// Also take the ESP/AH datagrams the kernel reassembled from outer fragments (see
    /// reasm.rs). One worker only: every raw socket gets a copy of each datagram.
    pub fn with_reassembled(mut self, r: Reassembled) -> Self {
        self.reasm = Some(r);
        self
    }

    /// The sockets to put in the XSKS map of the classifier on each side (inside first).
    pub fn rx_fds(&self) -> [i32; 2] {
        [
            self.ports[self.side_port[0]].sock.rx.as_raw_fd(),
            self.ports[self.side_port[1]].sock.rx.as_raw_fd(),
        ]
    }

    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Runs until `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            self.step(Duration::from_millis(50))?;
        }
        Ok(())
    }

    /// One iteration of the loop; waits up to `wait` for frames when there is nothing to do.
    pub fn step(&mut self, wait: Duration) -> Result<usize> {
        self.transform.between_batches();
        self.reap();
        self.refill();
        self.neigh.refresh();
        // Descriptors the kernel has not taken yet: copy mode sends at most 32 per kick
        // (TX_BATCH_SIZE), so kick again until the ring is drained, and do not sleep on it.
        let mut tx_left = false;
        for p in &mut self.ports {
            if p.sock.tx.pending() > 0 {
                tx_left = true;
                if p.sock.tx.needs_wakeup() {
                    p.sock.tx.wake();
                }
            }
        }
        // (The TAP queue has no ring to peek at: poll looks at it, with the sockets.)
        if !self.ports.iter().any(|p| p.sock.rx.available() > 0) {
            let wait = if tx_left {
                Duration::ZERO
            } else if !self.parked.is_empty() {
                // Held frames: look again soon (resolution takes about a round trip).
                wait.min(Duration::from_millis(1))
            } else {
                wait
            };
            self.poll(wait)?;
        }
        if !self.parked.is_empty() {
            let stats = self.stats.clone();
            self.unpark(&stats);
        }
        let mut n = 0;
        for pi in 0..self.ports.len() {
            n += self.receive(pi);
        }
        n += self.receive_local();
        n += self.receive_reassembled();
        for pi in 0..self.ports.len() {
            self.submit(pi);
        }
        self.steps = self.steps.wrapping_add(1);
        if n == 0 || self.steps.is_multiple_of(XSK_STATS_EVERY) {
            self.sample_xsk_stats();
        }
        Ok(n)
    }

    /// The kernel's counters of our sockets into [`WorkerStats::xsk`].
    fn sample_xsk_stats(&self) {
        let mut sum = [0u64; 4];
        for p in &self.ports {
            if let Ok(st) = p.sock.device.statistics_v2() {
                sum[0] += st.rx_dropped;
                sum[1] += st.rx_ring_full;
                sum[2] += st.rx_fill_ring_empty_descs;
                sum[3] += st.tx_invalid_descs;
            }
        }
        let x = &self.stats.xsk;
        for (c, v) in [
            &x.rx_dropped,
            &x.rx_ring_full,
            &x.rx_fill_empty,
            &x.tx_invalid,
        ]
        .into_iter()
        .zip(sum)
        {
            c.store(v, Ordering::Relaxed);
        }
    }

    /// Descriptors a port's TX ring has room for now.
    fn tx_room(&self, pi: usize) -> u32 {
        self.cfg
            .ring_size
            .saturating_sub(self.ports[pi].sock.tx.pending())
    }

    fn poll(&self, wait: Duration) -> Result<()> {
        let mut fds = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; 8];
        let rx = self.ports.iter().map(|p| p.sock.rx.as_raw_fd());
        let local = self.local.as_ref().map(|f| f.as_raw_fd());
        let reasm = self.reasm.iter().flat_map(|r| r.fds());
        let wake = self.transform.wake_fd();
        let mut n = 0;
        for fd in rx.chain(local).chain(reasm).chain(wake).take(fds.len()) {
            fds[n] = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            n += 1;
        }
        // SAFETY: `n` valid pollfds.
        let r = unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                n as libc::nfds_t,
                wait.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                bail!("poll AF_XDP sockets: {e}");
            }
        }
        Ok(())
    }

    /// Completed TX frames back to the free list.
    fn reap(&mut self) {
        let mask = !(u64::from(FRAME_SIZE) - 1);
        for p in &mut self.ports {
            let mut c = p.sock.device.complete(self.cfg.ring_size);
            while let Some(addr) = c.read() {
                self.free.push(addr & mask);
            }
            c.release();
        }
    }

    /// Free frames into the fill rings, split between the RX sockets; the rest stays for
    /// fragments and replies. Wakes the kernel if it waits for fill entries.
    fn refill(&mut self) {
        let nports = self.ports.len();
        // Keep a reserve for outer fragments.
        let reserve = self.cfg.batch as usize;
        for p in &mut self.ports {
            let spare = self.free.len().saturating_sub(reserve) / nports;
            if spare == 0 {
                continue;
            }
            let mut w = p.sock.device.fill(spare as u32);
            let n = w.capacity() as usize;
            let from = self.free.len() - n;
            w.insert(self.free[from..].iter().copied());
            w.commit();
            drop(w);
            self.free.truncate(from);
            if p.sock.device.needs_wakeup() {
                p.sock.device.wake();
            }
        }
    }

    /// The whole frame that holds `addr`, as a slice not tied to `self` (the worker hands
    /// frames to the transform while it keeps using its other fields).
    ///
    /// # Safety
    /// The frame must be ours (received or taken from the free list, not in any ring), and
    /// no other slice of the same frame may be alive.
    unsafe fn frame_bytes<'f>(&self, addr: u64) -> Option<&'f mut [u8]> {
        let base = usize::try_from(addr & !(u64::from(FRAME_SIZE) - 1)).ok()?;
        if base.checked_add(FRAME_SIZE as usize)? > self.area.len {
            return None;
        }
        // SAFETY: in bounds of the mapping, which lives as long as the worker; exclusive
        // per the caller's contract.
        Some(unsafe {
            std::slice::from_raw_parts_mut(self.area.ptr.as_ptr().add(base), FRAME_SIZE as usize)
        })
    }

    fn receive(&mut self, pi: usize) -> usize {
        self.rx_batch.clear();
        // Backpressure: take no more than every TX ring can still hold (a frame may leave
        // by either side) and than the free frames can stand for outer fragments; what we
        // leave in the RX ring waits there, in order, for the next iteration.
        let room = (0..self.ports.len()).map(|i| self.tx_room(i)).min();
        let budget = self.cfg.batch.min(room.unwrap_or(0));
        if budget == 0 {
            return 0;
        }
        {
            let p = &mut self.ports[pi];
            let mut r = p.sock.rx.receive(budget);
            while let Some(d) = r.read() {
                self.rx_batch.push(d);
            }
            r.release();
        }
        let n = self.rx_batch.len();
        // One handle on the counters per batch (the loop below borrows self mutably).
        let stats = self.stats.clone();
        let one_armed = self.side_port[0] == self.side_port[1];
        for i in 0..n {
            let d = self.rx_batch[i];
            if let Some(next) = self.rx_batch.get(i + 1) {
                self.prefetch(next.addr);
            }
            let Some((meta, packet)) = self.take_meta(d) else {
                inc(&stats.bad_meta);
                continue;
            };
            let from = if one_armed {
                // One socket for both directions: the XDP program says which it saw.
                if meta.flags & META_F_INBOUND != 0 {
                    Side::Outside
                } else {
                    Side::Inside
                }
            } else if pi == self.side_port[0] {
                Side::Inside
            } else {
                Side::Outside
            };
            inc(&stats.rx[from as usize]);
            self.handle(from, Some(meta), packet, &stats);
        }
        n
    }

    /// The first read of a frame the kernel has just written misses the cache (in `perf`, the
    /// largest cost of the worker's own code): the head of the next one is fetched while
    /// this one is handled.
    #[inline]
    fn prefetch(&self, addr: u64) {
        #[cfg(not(target_arch = "x86_64"))]
        let _ = addr;
        #[cfg(target_arch = "x86_64")]
        if let Ok(off) = usize::try_from(addr) {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            for line in [0, 64] {
                if off + line < self.area.len {
                    // SAFETY: inside the mapping, which lives as long as the worker; a
                    // prefetch reads nothing the program can see.
                    unsafe {
                        _mm_prefetch::<_MM_HINT_T0>(self.area.ptr.as_ptr().add(off + line).cast())
                    };
                }
            }
        }
    }

    /// The classifier's header at the start of a received descriptor and the packet behind
    /// it (the contract at [`XdpMeta`]); None gives the frame back to the free list.
    fn take_meta(&mut self, d: XdpDesc) -> Option<(XdpMeta, XdpDesc)> {
        let base = d.addr & !(u64::from(FRAME_SIZE) - 1);
        // SAFETY: a received frame (ours), read only; the slice ends before `handle` makes
        // its own.
        let Some(buf) = (unsafe { self.frame_bytes(d.addr) }) else {
            return None; // outside the UMEM: cannot be ours, nothing to give back
        };
        match take_meta(buf, (d.addr - base) as usize, d.len as usize) {
            Some(r) => Some((
                r.meta,
                XdpDesc {
                    addr: base + r.head as u64,
                    len: r.len as u32,
                    options: d.options,
                },
            )),
            None => {
                self.free.push(base);
                None
            }
        }
    }

    /// One packet: Ethernet off, transform, Ethernet on, maybe fragments, onto a TX batch
    /// (or back to the free list). `meta` is the classifier's header for frames from an
    /// AF_XDP socket, None for those the worker read itself (TAP, reassembly sockets).
    fn handle(&mut self, from: Side, meta: Option<XdpMeta>, d: XdpDesc, stats: &WorkerStats) {
        let mask = !(u64::from(FRAME_SIZE) - 1);
        let base = d.addr & mask;
        let head = (d.addr - base) as usize;
        let len = d.len as usize;
        // SAFETY: the kernel handed this frame over in the RX ring (or it came from the free
        // list); it is ours until we put it in a ring or the free list, and this is the only
        // slice of it.
        let Some(buf) = (unsafe { self.frame_bytes(d.addr) }) else {
            inc(&stats.bad_frame);
            return; // outside the UMEM: cannot be ours, nothing to give back
        };
        let Some(Ok(eth)) = buf.get(head..head + len).map(EthernetFrame::new_checked) else {
            inc(&stats.bad_frame);
            self.free.push(base);
            return;
        };
        // Kept by value: the frame is the transform's from here on.
        let rx_eth = EthernetRepr::parse(&eth);
        // The classifier said where IP starts (VLAN tags); without its header, plain Ethernet.
        let l3 = meta
            .map(|m| usize::from(m.l3_offset))
            .unwrap_or(ETH_LEN)
            .min(len);
        let mut frame = Frame::new(buf, head + l3, len - l3);
        let ctx = Ctx {
            neigh: &self.neigh,
            ports: &self.infos,
        };
        let action = self
            .transform
            .process(from, meta.as_ref(), &mut frame, &ctx);
        let (to, dst_mac, src_mac) = match action {
            Action::Drop => {
                inc(&stats.dropped);
                self.free.push(base);
                return;
            }
            Action::Reply => {
                inc(&stats.replies);
                // Back to the sender's MAC, from the MAC it sent to; the host's own stack
                // takes only frames to the TAP's MAC.
                let dst = if from == Side::Local {
                    self.infos[Side::Local as usize].mac
                } else {
                    rx_eth.src_addr
                };
                (from, dst, rx_eth.dst_addr)
            }
            Action::TxTo(to, l2) => {
                self.transmit(to, frame, base, &l2, stats);
                return;
            }
            Action::Tx(to) => {
                let Some(dst) = ip_dst(frame.data()) else {
                    inc(&stats.bad_frame);
                    self.free.push(base);
                    return;
                };
                self.route(to, dst, frame, base, stats);
                return;
            }
            Action::Route(to, dst) => {
                self.route(to, dst, frame, base, stats);
                return;
            }
        };
        self.send_eth(to, frame, base, dst_mac, src_mac, stats);
    }

    /// To the next hop towards `dst` out of `to` (held until it resolves), or to the host.
    fn route(&mut self, to: Side, dst: IpAddr, frame: Frame<'_>, base: u64, stats: &WorkerStats) {
        if to == Side::Local {
            self.deliver_local(frame, base, stats);
            return;
        }
        match self.neigh.next_hop(dst) {
            Some(hop) => self.forward(to, hop, frame, base, stats),
            None => self.park(to, dst, &frame, base, stats),
        }
    }

    /// A frame whose destination resolved: to its next hop, or, decapsulated for one of the
    /// host's own addresses, to the host (an encapsulated packet for ourselves is dropped).
    fn forward(&mut self, to: Side, hop: Hop, frame: Frame<'_>, base: u64, stats: &WorkerStats) {
        match hop {
            Hop::Via(l2) => self.transmit(to, frame, base, &l2, stats),
            Hop::Local if to == Side::Inside => self.deliver_local(frame, base, stats),
            Hop::Local => {
                inc(&stats.no_l2);
                self.free.push(base);
            }
        }
    }

    /// Ethernet header for the next hop, fragments when over the route MTU, onto the TX batch.
    fn transmit(&mut self, to: Side, frame: Frame<'_>, base: u64, l2: &L2, stats: &WorkerStats) {
        if l2.ifindex != self.infos[to as usize].ifindex {
            inc(&stats.wrong_port);
            self.free.push(base);
            return;
        }
        if frame.len() > l2.mtu as usize {
            self.fragment_out(to, frame, base, l2, stats);
            return;
        }
        self.send_eth(to, frame, base, l2.dst_mac, l2.src_mac, stats);
    }

    /// No neighbour yet (the lookup asked the kernel to resolve it): hold the frame until
    /// the MAC arrives, as the kernel queues packets on an unresolved neighbour (arp_queue),
    /// so that no packet is lost to resolution. Bounded per destination (the oldest goes
    /// first, as in neigh_event_send) and in all; held frames are not in any ring.
    fn park(&mut self, to: Side, dst: IpAddr, frame: &Frame<'_>, base: u64, stats: &WorkerStats) {
        let same = self.parked.iter().filter(|p| p.dst == dst).count();
        if same >= PARK_PER_HOP {
            if let Some(i) = self.parked.iter().position(|p| p.dst == dst) {
                // Order kept: `unpark` sends in the order of the vector.
                let old = self.parked.remove(i);
                inc(&stats.unres_discards);
                self.free.push(old.base);
            }
        } else if self.parked.len() == self.parked.capacity() {
            inc(&stats.unres_discards);
            self.free.push(base);
            return;
        }
        self.parked.push(Parked {
            to,
            dst,
            base,
            head: frame.head_offset(),
            len: frame.len(),
            since: Instant::now(),
        });
    }

    /// Sends the held frames whose next hop resolved, in the order they came; drops those
    /// held too long.
    fn unpark(&mut self, stats: &WorkerStats) {
        let mut i = 0;
        while i < self.parked.len() {
            let p = self.parked[i];
            // Resolution was asked for when the frame was parked: only look here.
            match self.neigh.snapshot().hop(&p.dst) {
                Some(hop) => {
                    self.parked.remove(i);
                    // SAFETY: a held frame: ours, in no ring, no other slice of it alive.
                    let Some(buf) = (unsafe { self.frame_bytes(p.base) }) else {
                        continue;
                    };
                    let frame = Frame::new(buf, p.head, p.len);
                    self.forward(p.to, hop, frame, p.base, stats);
                }
                None if p.since.elapsed() > PARK_TIMEOUT => {
                    self.parked.remove(i);
                    inc(&stats.no_l2);
                    self.free.push(p.base);
                }
                None => i += 1,
            }
        }
    }

    /// The packet in `frame` exceeds the route MTU: IPv4 without DF and IPv6 are fragmented
    /// (fragments 1.. into free frames, fragment 0 in place), IPv4 with DF is dropped.
    fn fragment_out(
        &mut self,
        to: Side,
        mut frame: Frame<'_>,
        base: u64,
        l2: &L2,
        stats: &WorkerStats,
    ) {
        let plan = match ip_version(frame.data()) {
            Some(4) => Fragmenter::ipv4(frame.data(), l2.mtu),
            _ => {
                let id = ipv6_frag_ident(frame.data());
                Fragmenter::ipv6(frame.data(), l2.mtu, id)
            }
        };
        let Ok(plan) = plan else {
            inc(&stats.too_big);
            self.free.push(base);
            return;
        };
        let eth = EthernetRepr::for_ip(l2.dst_mac, l2.src_mac, frame.data());
        let count = plan.count();
        if self.free.len() < count - 1 {
            inc(&stats.no_buffer);
            self.free.push(base);
            return;
        }
        for i in 1..count {
            let Some(fbase) = self.free.pop() else { break };
            // SAFETY: a frame from the free list (in no ring), distinct from `base`.
            let Some(out) = (unsafe { self.frame_bytes(fbase) }) else {
                continue;
            };
            let at = XDP_HEADROOM;
            eth.emit(&mut EthernetFrame::new_unchecked(&mut out[at..]));
            match plan.write(frame.data(), i, &mut out[at + ETH_LEN..]) {
                Ok(n) => {
                    inc(&stats.fragments);
                    let desc = XdpDesc {
                        addr: fbase + at as u64,
                        len: (ETH_LEN + n) as u32,
                        options: 0,
                    };
                    self.queue_tx(to, desc, fbase);
                }
                Err(_) => self.free.push(fbase),
            }
        }
        if plan.first_in_place(&mut frame).is_err() {
            inc(&stats.too_big);
            self.free.push(base);
            return;
        }
        self.send_eth(to, frame, base, l2.dst_mac, l2.src_mac, stats);
    }

    fn queue_tx(&mut self, to: Side, desc: XdpDesc, base: u64) {
        if to == Side::Local {
            self.write_local(desc, base);
            return;
        }
        let pi = self.side_port[to as usize];
        if self.ports[pi].pending.len() == self.ports[pi].pending.capacity() {
            // A batch that grew past a ring (fragments): send what is queued first.
            self.submit(pi);
        }
        self.ports[pi].pending.push(desc);
    }

    /// The pending descriptors of port `pi` onto its TX ring, kicking the kernel (when it
    /// asks: need_wakeup) and reaping completions until it has taken them all. Copy mode
    /// sends only inside sendto, at most 32 frames a call, and only while the completion
    /// ring has room: a ring left half sent fills up and drops the next batch. Only a
    /// kernel that stops taking descriptors ([`TX_STALLS`] kicks in a row) makes the rest
    /// count as `tx_full`; in zero-copy mode the driver sends on its own and the loop ends
    /// once every descriptor is in the ring.
    fn submit(&mut self, pi: usize) {
        let side = if pi == self.side_port[1] {
            Side::Outside
        } else {
            Side::Inside
        };
        if self.ports[pi].pending.is_empty() {
            return;
        }
        let total = self.ports[pi].pending.len();
        let mut done = 0;
        let mut stalls = 0;
        loop {
            let p = &mut self.ports[pi];
            if done < total {
                let mut w = p.sock.tx.transmit((total - done) as u32);
                done += w.insert(p.pending[done..].iter().copied()) as usize;
                w.commit();
            }
            let before = p.sock.tx.pending();
            let wake = p.sock.tx.needs_wakeup();
            if done == total && (before == 0 || !wake) {
                break;
            }
            if wake {
                match kick(p.sock.tx.as_raw_fd()) {
                    // The driver refused a frame the kernel had taken (its completion comes
                    // back as for a sent one): lost, and counted.
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        inc(&self.stats.tx_device_drops)
                    }
                    // EAGAIN: more to send, or no completion slot: reap and go on.
                    Ok(()) | Err(_) => {}
                }
            }
            self.reap();
            if self.ports[pi].sock.tx.pending() < before {
                stalls = 0;
            } else {
                stalls += 1;
                if stalls >= TX_STALLS {
                    break;
                }
            }
        }
        let mask = !(u64::from(FRAME_SIZE) - 1);
        let p = &mut self.ports[pi];
        for d in &p.pending[done..] {
            inc(&self.stats.tx_full);
            self.free.push(d.addr & mask);
        }
        self.stats.tx[side as usize].fetch_add(done as u64, Ordering::Relaxed);
        p.pending.clear();
    }

    /// Frames the TC program took from the host's own output, from this worker's TAP queue:
    /// up to a batch, each read into a free frame at the receive headroom, then handled as
    /// received frames are.
    fn receive_local(&mut self) -> usize {
        let Some(fd) = self.local.as_ref().map(|f| f.as_raw_fd()) else {
            return 0;
        };
        let stats = self.stats.clone();
        let mut n = 0;
        while n < self.cfg.batch as usize {
            let Some(base) = self.free.pop() else {
                break; // frames come back with the next reap; the TAP queue holds the rest
            };
            // SAFETY: a frame from the free list: ours, in no ring, no other slice alive.
            let Some(buf) = (unsafe { self.frame_bytes(base) }) else {
                break;
            };
            let room = &mut buf[XDP_HEADROOM..FRAME_SIZE as usize - LOCAL_TAILROOM];
            // SAFETY: reads at most room.len() bytes into room.
            let r = unsafe { libc::read(fd, room.as_mut_ptr().cast(), room.len()) };
            if r <= 0 {
                self.free.push(base);
                let e = std::io::Error::last_os_error();
                if r < 0 && e.kind() != std::io::ErrorKind::WouldBlock {
                    log::warn!("read {}: {e}", self.infos[Side::Local as usize].name);
                }
                break;
            }
            let len = r as usize;
            if room[0] & 1 != 0 {
                // To a multicast MAC: the kernel's own chatter on the TAP (its MLD reports
                // once IPv6 forwarding is on), nothing TC sends us; not a frame to count.
                self.free.push(base);
                continue;
            }
            if len == room.len() {
                // Possibly cut short: not a frame we can trust (the TAP's MTU keeps them
                // well below this).
                inc(&stats.bad_frame);
                self.free.push(base);
                continue;
            }
            n += 1;
            inc(&stats.rx[Side::Local as usize]);
            let desc = XdpDesc {
                addr: base + XDP_HEADROOM as u64,
                len: len as u32,
                options: 0,
            };
            self.handle(Side::Local, None, desc, &stats);
        }
        n
    }

    /// Datagrams the kernel reassembled from outer fragments (reasm.rs), each into a free
    /// frame behind an Ethernet header of our own, then handled as a frame received on the
    /// outside.
    fn receive_reassembled(&mut self) -> usize {
        let Some(r) = self.reasm.take() else {
            return 0;
        };
        let stats = self.stats.clone();
        let mut n = 0;
        'socks: for i in 0..r.len() {
            for _ in 0..self.cfg.batch {
                let Some(base) = self.free.pop() else {
                    break 'socks;
                };
                // SAFETY: a frame from the free list: ours, in no ring, no other slice alive.
                let Some(buf) = (unsafe { self.frame_bytes(base) }) else {
                    break 'socks;
                };
                let at = XDP_HEADROOM + ETH_LEN;
                let len = match r.read(i, &mut buf[at..FRAME_SIZE as usize - LOCAL_TAILROOM]) {
                    Ok(Datagram::Packet(len)) => len,
                    Ok(Datagram::Dropped) => {
                        inc(&stats.bad_frame);
                        self.free.push(base);
                        continue;
                    }
                    Ok(Datagram::None) => {
                        self.free.push(base);
                        break;
                    }
                    Err(e) => {
                        log::warn!("raw socket for reassembled IPsec: {e}");
                        self.free.push(base);
                        break;
                    }
                };
                let mac = self.infos[Side::Outside as usize].mac;
                let eth = EthernetRepr::for_ip(mac, [0; 6], &buf[at..at + len]);
                eth.emit(&mut EthernetFrame::new_unchecked(&mut buf[XDP_HEADROOM..]));
                n += 1;
                inc(&stats.rx[Side::Outside as usize]);
                inc(&stats.reassembled);
                let desc = XdpDesc {
                    addr: base + XDP_HEADROOM as u64,
                    len: (ETH_LEN + len) as u32,
                    options: 0,
                };
                self.handle(Side::Outside, None, desc, &stats);
            }
        }
        self.reasm = Some(r);
        n
    }

    /// The IP packet in `frame` behind an Ethernet header from `src` to `dst`, onto the TX
    /// batch of `to` (for the host itself, written to the TAP now).
    fn send_eth(
        &mut self,
        to: Side,
        mut frame: Frame<'_>,
        base: u64,
        dst: [u8; 6],
        src: [u8; 6],
        stats: &WorkerStats,
    ) {
        let eth = EthernetRepr::for_ip(dst, src, frame.data());
        let Ok(h) = frame.push_head(ETH_LEN) else {
            inc(&stats.no_buffer);
            self.free.push(base);
            return;
        };
        eth.emit(&mut EthernetFrame::new_unchecked(h));
        let desc = XdpDesc {
            addr: base + frame.head_offset() as u64,
            len: frame.len() as u32,
            options: 0,
        };
        self.queue_tx(to, desc, base);
    }

    /// An IP packet for the host itself: to the TAP, addressed to its MAC, as if received.
    fn deliver_local(&mut self, frame: Frame<'_>, base: u64, stats: &WorkerStats) {
        if self.local.is_none() {
            // No TAP (the gateway runs without the local path): nowhere to deliver.
            inc(&stats.no_l2);
            self.free.push(base);
            return;
        }
        let tap = self.infos[Side::Local as usize].mac;
        let ours = self.infos[Side::Outside as usize].mac;
        self.send_eth(Side::Local, frame, base, tap, ours, stats);
    }

    /// Writes the frame `desc` to the TAP queue now (the kernel copies it) and frees it.
    fn write_local(&mut self, desc: XdpDesc, base: u64) {
        let Some(fd) = self.local.as_ref().map(|f| f.as_raw_fd()) else {
            self.free.push(base);
            return;
        };
        // SAFETY: a frame of ours, handed to this call; read only here.
        if let Some(buf) = unsafe { self.frame_bytes(base) } {
            let at = (desc.addr - base) as usize;
            if let Some(bytes) = buf.get(at..at + desc.len as usize) {
                // SAFETY: writes bytes.len() bytes from bytes.
                let r = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
                if r == bytes.len() as isize {
                    inc(&self.stats.tx[Side::Local as usize]);
                } else {
                    inc(&self.stats.no_buffer);
                }
            }
        }
        self.free.push(base);
    }

    /// Frames of the UMEM not in our free list (in rings or in flight).
    pub fn frames_in_use(&self) -> usize {
        self.umem.len_frames() as usize - self.free.len()
    }
}

/// sendto(MSG_DONTWAIT) on an AF_XDP socket: the TX wake-up. Its error says what the kernel
/// did (EAGAIN: more left or no completion room; EBUSY: the device dropped a frame).
fn kick(fd: i32) -> std::io::Result<()> {
    // SAFETY: a zero-length sendto without buffers on a socket fd we own.
    let r = unsafe {
        libc::sendto(
            fd,
            std::ptr::null(),
            0,
            libc::MSG_DONTWAIT,
            std::ptr::null(),
            0,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn ip_dst(pkt: &[u8]) -> Option<IpAddr> {
    match ip_version(pkt)? {
        4 => Ipv4Packet::new_checked(pkt)
            .ok()
            .map(|p| IpAddr::V4(p.dst_addr())),
        _ => Ipv6Packet::new_checked(pkt)
            .ok()
            .map(|p| IpAddr::V6(p.dst_addr())),
    }
}

/// An identification for IPv6 fragments: ipv6_select_ident hashes the addresses with a
/// secret and a counter; a process-wide counter mixed with the addresses is unique enough
/// for reassembly (RFC 7739 asks only that it not repeat soon for the same pair).
fn ipv6_frag_ident(pkt: &[u8]) -> u32 {
    static NEXT: AtomicU64 = AtomicU64::new(0x9e37_79b9);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
    let mut h = n.wrapping_mul(0x9e37_79b1);
    for c in pkt.get(8..40).unwrap_or(&[]).chunks(4) {
        let mut w = [0u8; 4];
        w[..c.len()].copy_from_slice(c);
        h = (h ^ u32::from_ne_bytes(w))
            .rotate_left(5)
            .wrapping_mul(0x85eb_ca6b);
    }
    h.max(1)
}

/// Start-up helper: the interface `name` as a [`PortInfo`] (in the calling thread's
/// namespace).
pub fn port_info(name: &str) -> Result<PortInfo> {
    let l = super::neigh::interface(name).with_context(|| format!("interface {name}"))?;
    Ok(PortInfo {
        name: l.name,
        ifindex: l.index,
        mac: l.mac,
        mtu: l.mtu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_config;
    use crate::frame::OwnedFrame;
    use crate::stats::XfrmStats;
    use crate::xfrm::{xfrm_output_bundle, Verdict, XfrmDb};

    /// Several workers on one SA: every packet gets its own sequence number, each worker's
    /// numbers rise, and together they are exactly 1..=N (no gap, no repeat).
    #[test]
    fn workers_sharing_an_sa_never_repeat_a_sequence_number() {
        let cfg = parse_config(
            "ip xfrm state add src 10.0.0.1 dst 10.0.0.2 proto esp spi 0x42 reqid 1 \
             mode tunnel aead 'rfc4106(gcm(aes))' 0x000102030405060708090a0b0c0d0e0f01020304 128\n",
            "t.conf",
        )
        .unwrap();
        let db = XfrmDb::new(cfg.states, vec![]).unwrap();
        let x = db.state(0).unwrap().clone();
        let stats = XfrmStats::new();
        const WORKERS: usize = 4;
        const PACKETS: usize = 500;
        let mut inner = vec![0u8; 60];
        inner[0] = 0x45;
        inner[2..4].copy_from_slice(&60u16.to_be_bytes());
        inner[8] = 64;
        inner[9] = 17;
        inner[12..16].copy_from_slice(&[10, 1, 0, 1]);
        inner[16..20].copy_from_slice(&[10, 2, 0, 1]);
        let c = !crate::wire::checksum::data(&inner[..20]);
        inner[10..12].copy_from_slice(&c.to_be_bytes());
        inner[24..26].copy_from_slice(&40u16.to_be_bytes());
        let per_worker: Vec<Vec<u32>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..WORKERS)
                .map(|_| {
                    s.spawn(|| {
                        let mut seqs = Vec::with_capacity(PACKETS);
                        for _ in 0..PACKETS {
                            let mut f = OwnedFrame::from_packet(&inner);
                            let v = f.with_frame(|fr| {
                                xfrm_output_bundle(&[&*x], &stats, fr, false, db.now())
                            });
                            assert_eq!(v, Verdict::Transformed);
                            // Outer IPv4 (20) + SPI (4), then the sequence number.
                            let d = f.data();
                            seqs.push(u32::from_be_bytes(d[24..28].try_into().unwrap()));
                        }
                        seqs
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for seqs in &per_worker {
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "rising per worker");
        }
        let mut all: Vec<u32> = per_worker.concat();
        all.sort_unstable();
        let want: Vec<u32> = (1..=(WORKERS * PACKETS) as u32).collect();
        assert_eq!(all, want);
    }

    #[test]
    fn ipv6_fragment_idents_differ() {
        let mut p = [0u8; 40];
        p[0] = 0x60;
        let a = ipv6_frag_ident(&p);
        let b = ipv6_frag_ident(&p);
        assert_ne!(a, b);
        assert_ne!(a, 0);
    }
}
