//! The running SA (struct xfrm_state): km state, output sequence counter, current lifetime,
//! and the kernel's per-packet state checks (xfrm_state_check_expire, xfrm_replay_overflow).
//!
//! Several workers share one SA, so everything that changes per packet is atomic; no lock
//! is taken on the packet path.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::crypto::{CryptoError, SaCrypto};
use crate::sa::{EncapType, SaConfig, XfrmMode, XfrmProto};
use crate::stats::{XfrmStat, XfrmStats};
use crate::wire::{ah, esp, ipv4, ipv6, udp};

use super::persist::SeqSlot;
use super::pmtu::SaMtu;
use super::replay::{ReplayError, ReplayState, SaInput};

/// Seconds since the epoch (ktime_get_real_seconds), injectable for tests and replays.
pub trait Clock: Send + Sync {
    fn now(&self) -> u64;
}

/// The wall clock, in whole seconds.
///
/// On Linux it reads CLOCK_REALTIME_COARSE: the time of the last timer tick, a few ns from
/// the vDSO without reading the TSC, as precise as ktime_get_real_seconds and the lifetimes
/// need (seconds); the datapath asks once per packet.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> u64 {
        #[cfg(target_os = "linux")]
        {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid timespec to write; the clock id is a constant.
            if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } == 0 {
                return u64::try_from(ts.tv_sec).unwrap_or(0);
            }
        }
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to (tests, pcap replays).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now: u64) -> Self {
        Self(AtomicU64::new(now))
    }
    pub fn set(&self, now: u64) {
        self.0.store(now, Ordering::Relaxed)
    }
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::Relaxed);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// xfrm_state_check_expire refused the packet: a hard lifetime ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateExpired;

/// xfrm_replay_overflow refused the packet: no sequence number left (-EOVERFLOW).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqOverflow;

/// x->km.state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KmState {
    Valid = 0,
    /// A hard lifetime ran out (XFRM_STATE_EXPIRED).
    Expired = 1,
    /// Deleted (XFRM_STATE_DEAD).
    Dead = 2,
}

/// Default hop limit of an outer header. The kernel takes it from the route
/// (ip4_dst_hoplimit / ip6_dst_hoplimit), which without a hop-limit metric is the sysctl
/// net.ipv4.ip_default_ttl / net.ipv6.conf.*.hop_limit, both 64 by default. We have no
/// route, so the same default, changeable per SA with `set_outer_hop_limit`.
pub const DEFAULT_HOP_LIMIT: u8 = 64;
/// MTU assumed towards the peer until the datapath says otherwise (TFC padding target).
pub const DEFAULT_MTU: u32 = 1500;

/// Sizes fixed at SA creation (x->props.header_len and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaProps {
    /// Outer family is IPv6 (from the SA's addresses).
    pub outer_v6: bool,
    /// Everything output puts in front of the protected data: outer IP header (tunnel),
    /// UDP encapsulation, ESP header + IV, or AH header + ICV + padding (x->props.header_len).
    pub header_len: usize,
    /// The part of header_len that the type (ESP/AH) writes: UDP + ESP + IV, or AH.
    pub type_header_len: usize,
    /// ICV length on the wire.
    pub icv_len: usize,
    /// ESP: the IV after the header (crypto_aead_ivsize: 8, 16 for CBC, 0 for NULL).
    pub iv_len: usize,
    /// ESP: what the encrypted part is padded to (ALIGN(crypto_aead_blocksize, 4)).
    pub blksize: usize,
    /// Bytes of UDP encapsulation in front of ESP (0, 8, or 16 for non-IKE).
    pub encap_len: usize,
}

impl SaProps {
    fn new(cfg: &SaConfig, icv_len: usize) -> Self {
        let outer_v6 = cfg.id.daddr.is_ipv6();
        let outer_ip = if outer_v6 {
            ipv6::HEADER_LEN
        } else {
            ipv4::HEADER_LEN
        };
        let (type_header_len, encap_len) = match cfg.id.proto {
            XfrmProto::Esp => {
                let encap = match cfg.encap.map(|e| e.kind) {
                    None => 0,
                    Some(EncapType::EspInUdp) => udp::HEADER_LEN,
                    Some(EncapType::EspInUdpNonIke) => udp::HEADER_LEN + 8,
                };
                (encap + esp::HEADER_LEN + cfg.algorithm.esp_iv_len(), encap)
            }
            // ah_init_state / ah6_init_state: ALIGN8, or ALIGN4 with align4 on IPv4.
            XfrmProto::Ah => {
                let raw = ah::HEADER_LEN + icv_len;
                let align = if cfg.flags.align4 && !outer_v6 { 4 } else { 8 };
                (raw.div_ceil(align) * align, 0)
            }
        };
        let header_len = type_header_len
            + match cfg.mode {
                XfrmMode::Tunnel => outer_ip,
                XfrmMode::Transport => 0,
            };
        Self {
            outer_v6,
            header_len,
            type_header_len,
            icv_len,
            iv_len: cfg.algorithm.esp_iv_len(),
            blksize: cfg.algorithm.esp_block_size(),
            encap_len,
        }
    }
}

/// The lowest of each kind of limit, soft or hard: below all of them a packet needs no
/// further look at the lifetime (the common case, one comparison per kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExpireBounds {
    bytes: u64,
    packets: u64,
    /// add_time + the nearest add-expires limit (u64::MAX when none).
    add_deadline: u64,
    /// The nearest use-expires limit (u64::MAX when none), counted from use_time.
    use_limit: u64,
}

impl ExpireBounds {
    fn new(lft: &crate::sa::Lifetime, add_time: u64) -> Self {
        // A time limit of 0 means none.
        let nearest = |a: u64, b: u64| match (a, b) {
            (0, 0) => u64::MAX,
            (0, x) | (x, 0) => x,
            (a, b) => a.min(b),
        };
        let add = nearest(lft.soft_add_expires_seconds, lft.hard_add_expires_seconds);
        Self {
            bytes: lft.soft_byte_limit.min(lft.hard_byte_limit),
            packets: lft.soft_packet_limit.min(lft.hard_packet_limit),
            add_deadline: if add == u64::MAX {
                u64::MAX
            } else {
                add_time.saturating_add(add)
            },
            use_limit: nearest(lft.soft_use_expires_seconds, lft.hard_use_expires_seconds),
        }
    }
}

/// Why an SA could not be built from its config.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SaError {
    #[error("SA spi 0x{spi:08x}: {err}")]
    Crypto { spi: u32, err: CryptoError },
    #[error("SA spi 0x{spi:08x}: {what}")]
    Invalid { spi: u32, what: &'static str },
}

/// The runtime xfrm_state.
pub struct SecurityAssociation {
    pub cfg: SaConfig,
    pub crypto: SaCrypto,
    pub props: SaProps,
    /// The same sizes as the PMTU arithmetic wants them (xfrm_state_mtu).
    overhead: SaMtu,
    /// Position in the database (stable id for metadata and logs).
    pub index: usize,
    km_state: AtomicU8,
    /// x->km.dying: a soft limit was reached (the log line is written once).
    dying: AtomicBool,
    /// The last sequence number handed out (x->replay.oseq, 64-bit with ESN) and the top of
    /// the inbound window, in the state file's mapping when there is one (persist.rs): the
    /// counter a restart goes on from.
    slot: SeqSlot,
    /// The configured oseq (before the SA's first packet ever): every number handed out is
    /// one packet counted, so curlft.packets = oseq - oseq_base and needs no counter of its
    /// own (one atomic less per packet; nothing can fail between xfrm_replay_overflow and
    /// the curlft update). Across a restart the count goes on with the number, so a packet
    /// limit bounds what the key protected, not what one run did.
    oseq_base: u64,
    /// The input window's top when made, written to the slot by `claim_slot`.
    claim_in_top: u64,
    /// curlft.bytes, the input path's packets (an inbound SA hands out no sequence
    /// numbers), add_time and use_time live in `slot` too: they go on across a restart.
    add_time: u64,
    /// The nearest of the soft and hard limits, for the per-packet check's fast path.
    expire_bounds: ExpireBounds,
    /// Outer IPv4 identification = low 16 bits of the sequence number XOR this random value:
    /// the per-destination counter of ip_select_ident (an SA has one destination), without a
    /// second atomic per packet.
    ip_id_base: u16,
    mtu: AtomicU32,
    hop_limit: AtomicU8,
    /// Counters of this SA alone (same names as the global ones).
    pub stats: XfrmStats,
    soft_expiries: AtomicU64,
    /// The inbound replay window and x->stats, under the SA's lock (x->lock): checked
    /// before the ICV, advanced after it (see replay.rs).
    input: Mutex<SaInput>,
}

impl std::fmt::Debug for SecurityAssociation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityAssociation")
            .field("spi", &format_args!("0x{:08x}", self.cfg.id.spi))
            .field("daddr", &self.cfg.id.daddr)
            .field("proto", &self.cfg.id.proto)
            .field("mode", &self.cfg.mode)
            .field("km_state", &self.km_state())
            .finish()
    }
}

/// A start value for the IP ID counter that differs between runs (RandomState is seeded
/// from the OS), so IDs are not predictable across restarts.
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish() as u32
}

impl SecurityAssociation {
    /// An SA whose counters live in memory only (nothing survives the process).
    pub fn new(cfg: SaConfig, index: usize, now: u64) -> Result<Self, SaError> {
        Self::with_slot(cfg, index, now, SeqSlot::in_memory())
    }

    /// An SA whose counters live in `slot` (a state file's record), carrying over what it
    /// holds:
    /// - output: the next number is above both the slot's and the configured one
    ///   (replay-oseq), so no number is handed out twice under one key;
    /// - input: when the slot's window top is above the configured replay-seq, the window
    ///   starts there with every number at or below it taken as seen. A packet in flight at
    ///   the restart may be dropped; a replay of anything delivered before is never taken.
    pub fn with_slot(
        cfg: SaConfig,
        index: usize,
        now: u64,
        slot: SeqSlot,
    ) -> Result<Self, SaError> {
        let x = Self::on_slot(cfg, index, now, slot)?;
        x.claim_slot();
        Ok(x)
    }

    /// [`Self::with_slot`] without writing to `slot` yet: for an SA that shares a live SA's
    /// slot (a `state update`, a reload) in a change that may still be refused. Its numbers
    /// start from what the slot holds now; [`Self::claim_slot`] raises the slot to its
    /// configured ones once the change goes live.
    pub fn on_slot(cfg: SaConfig, index: usize, now: u64, slot: SeqSlot) -> Result<Self, SaError> {
        let spi = cfg.id.spi;
        let crypto =
            SaCrypto::from_algorithm(&cfg.algorithm).map_err(|err| SaError::Crypto { spi, err })?;
        match (cfg.id.proto, crypto.is_esp()) {
            (XfrmProto::Esp, true) | (XfrmProto::Ah, false) => {}
            (XfrmProto::Esp, false) => {
                return Err(SaError::Invalid {
                    spi,
                    what: "ESP needs an aead algorithm or enc + auth",
                })
            }
            (XfrmProto::Ah, _) => {
                return Err(SaError::Invalid {
                    spi,
                    what: "AH needs an auth algorithm",
                })
            }
        }
        if cfg.saddr.is_ipv4() != cfg.id.daddr.is_ipv4() {
            return Err(SaError::Invalid {
                spi,
                what: "src and dst of different families",
            });
        }
        if cfg.encap.is_some() && cfg.id.proto != XfrmProto::Esp {
            // ah_init_state: "if (x->encap) goto error"
            return Err(SaError::Invalid {
                spi,
                what: "encap only with ESP",
            });
        }
        let props = SaProps::new(&cfg, crypto.icv_len());
        let mut replay = ReplayState::from_config(&cfg).map_err(|_| SaError::Invalid {
            spi,
            what: "replay-window larger than 4096",
        })?;
        let oseq = if cfg.flags.esn {
            cfg.initial_oseq()
        } else {
            u64::from(cfg.replay_oseq)
        };
        // Kept from before a restart (or a `state update`), else now.
        let add_time = match slot.add_time().load(Ordering::Relaxed) {
            0 => now,
            t => t,
        };
        let top = slot.in_top().load(Ordering::Relaxed);
        if top > replay.top() {
            replay.resume_above(top);
        }
        let claim_in_top = replay.top();
        Ok(Self {
            overhead: SaMtu::from_sa(&cfg),
            props,
            crypto,
            index,
            km_state: AtomicU8::new(KmState::Valid as u8),
            dying: AtomicBool::new(false),
            slot,
            oseq_base: oseq,
            claim_in_top,
            add_time,
            expire_bounds: ExpireBounds::new(&cfg.lifetime, add_time),
            ip_id_base: random_u32() as u16,
            mtu: AtomicU32::new(DEFAULT_MTU),
            hop_limit: AtomicU8::new(DEFAULT_HOP_LIMIT),
            stats: XfrmStats::new(),
            soft_expiries: AtomicU64::new(0),
            input: Mutex::new(SaInput::new(replay)),
            cfg,
        })
    }

    #[inline]
    pub fn spi(&self) -> u32 {
        self.cfg.id.spi
    }
    #[inline]
    pub fn daddr(&self) -> IpAddr {
        self.cfg.id.daddr
    }
    #[inline]
    pub fn saddr(&self) -> IpAddr {
        self.cfg.saddr
    }
    #[inline]
    pub fn km_state(&self) -> KmState {
        match self.km_state.load(Ordering::Acquire) {
            0 => KmState::Valid,
            1 => KmState::Expired,
            _ => KmState::Dead,
        }
    }
    pub fn set_km_state(&self, s: KmState) {
        self.km_state.store(s as u8, Ordering::Release)
    }
    #[inline]
    pub fn is_valid(&self) -> bool {
        self.km_state() == KmState::Valid
    }
    /// A soft limit was reached (km.dying).
    pub fn is_dying(&self) -> bool {
        self.dying.load(Ordering::Relaxed)
    }
    #[cfg(test)]
    pub(crate) fn set_dying(&self) {
        self.dying.store(true, Ordering::Relaxed)
    }
    /// How many times a packet found the SA past a soft limit for the first time (0 or 1:
    /// the event is counted and logged once, like km_state_expired(x, 0, 0)).
    pub fn soft_expiries(&self) -> u64 {
        self.soft_expiries.load(Ordering::Relaxed)
    }
    #[inline]
    pub fn curlft_bytes(&self) -> u64 {
        self.slot.bytes().load(Ordering::Relaxed)
    }
    #[inline]
    pub fn curlft_packets(&self) -> u64 {
        self.slot
            .oseq()
            .load(Ordering::Relaxed)
            .saturating_sub(self.oseq_base)
            + self.slot.in_packets().load(Ordering::Relaxed)
    }
    pub fn add_time(&self) -> u64 {
        self.add_time
    }
    #[inline]
    pub fn use_time(&self) -> u64 {
        self.slot.use_time().load(Ordering::Relaxed)
    }
    /// The last output sequence number handed out (x->replay.oseq, with oseq_hi above bit
    /// 32 under ESN). Saturates at the limit: a refused number is never counted.
    pub fn oseq(&self) -> u64 {
        self.slot.oseq().load(Ordering::Relaxed)
    }
    /// Where this SA keeps its sequence counters, shared (see [`SeqSlot::share`]).
    /// Writes this SA's configured numbers and add time into its slot (each only raises
    /// what is there): what [`Self::on_slot`] left for the moment the SA goes live.
    pub fn claim_slot(&self) {
        self.slot
            .oseq()
            .fetch_max(self.oseq_base, Ordering::Relaxed);
        let _ = self.slot.add_time().compare_exchange(
            0,
            self.add_time,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        self.slot
            .in_top()
            .fetch_max(self.claim_in_top, Ordering::Relaxed);
    }

    pub fn share_slot(&self) -> SeqSlot {
        self.slot.share()
    }
    /// The inbound window's top as kept for a restart (equal to `input().replay.top()`).
    pub fn persisted_in_top(&self) -> u64 {
        self.slot.in_top().load(Ordering::Relaxed)
    }
    /// The input state (replay window, x->stats), locked. A panic elsewhere while it was
    /// held leaves a state that is still consistent (every update is a plain store), so a
    /// poisoned lock is taken over rather than propagated.
    pub fn input(&self) -> MutexGuard<'_, SaInput> {
        self.input.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Path MTU towards the peer (the kernel's dst->child_mtu_cached), for TFC padding.
    pub fn set_mtu(&self, mtu: u32) {
        self.mtu.store(mtu, Ordering::Relaxed)
    }
    #[inline]
    pub fn mtu(&self) -> u32 {
        self.mtu.load(Ordering::Relaxed)
    }
    pub fn set_outer_hop_limit(&self, h: u8) {
        self.hop_limit.store(h, Ordering::Relaxed)
    }
    #[inline]
    pub fn outer_hop_limit(&self) -> u8 {
        self.hop_limit.load(Ordering::Relaxed)
    }
    /// The outer IPv4 identification of packet `seq` (tunnel mode).
    #[inline]
    pub fn ip_ident(&self, seq: u64) -> u16 {
        (seq as u16) ^ self.ip_id_base
    }

    /// Counts a drop for this SA and globally.
    pub(crate) fn count(&self, stats: &XfrmStats, s: XfrmStat) {
        self.stats.inc(s);
        stats.inc(s);
    }

    /// xfrm_state_mtu: the largest payload that still fits `mtu` after this SA's overhead
    /// (ESP rounds down to its block size and takes the pad-length/next-header bytes off).
    /// The arithmetic is [`SaMtu::state_mtu`], shared with the size check before a bundle.
    pub fn xfrm_state_mtu(&self, mtu: u32) -> u32 {
        self.overhead.state_mtu(mtu)
    }

    /// What this SA adds to a packet (for [`super::pmtu::bundle_mtu`]).
    pub fn overhead(&self) -> SaMtu {
        self.overhead
    }

    /// xfrm_state_check_expire: called for every packet before it is transformed.
    /// Hard limit reached -> the state becomes Expired and the packet is refused; soft limit
    /// -> the state is marked dying, counted and logged once, and the packet goes on.
    /// Byte and packet limits compare the counts before this packet, as the kernel does.
    /// The time limits, which the kernel enforces from a timer (xfrm_timer_handler), are
    /// checked here against `now`. Several workers may pass the check at once, so a hard
    /// byte/packet limit can be overshot by at most one packet per worker.
    #[inline]
    pub fn xfrm_state_check_expire(&self, now: u64) -> Result<(), StateExpired> {
        let mut use_time = self.slot.use_time().load(Ordering::Relaxed);
        if use_time == 0 {
            use_time = self.first_use(now);
        }
        let bytes = self.curlft_bytes();
        let packets = self.curlft_packets();
        let b = &self.expire_bounds;
        if bytes < b.bytes
            && packets < b.packets
            && now < b.add_deadline
            && now < use_time.saturating_add(b.use_limit)
        {
            return Ok(());
        }
        self.check_expire_limits(now, bytes, packets, use_time)
    }

    /// Valid → Expired (a hard limit); true for the one caller that made the change.
    fn expire_hard(&self) -> bool {
        self.km_state
            .compare_exchange(
                KmState::Valid as u8,
                KmState::Expired as u8,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// The control plane's timer (xfrm_timer_handler): the time limits without a packet,
    /// since an idle SA must expire too. Returns (soft reached, hard reached), including
    /// what the packet paths found (bytes, packets, sequence numbers exhausted).
    pub fn lifetime_tick(&self, now: u64) -> (bool, bool) {
        // Never used: the use-time limits do not run yet (the kernel's use_time 0).
        let use_time = match self.slot.use_time().load(Ordering::Relaxed) {
            0 => u64::MAX,
            t => t,
        };
        let (bytes, packets) = (self.curlft_bytes(), self.curlft_packets());
        // Short of every limit (most SAs, most ticks): what the packet path's bounds say.
        let b = &self.expire_bounds;
        let near = bytes >= b.bytes
            || packets >= b.packets
            || now >= b.add_deadline
            || now >= use_time.saturating_add(b.use_limit);
        let hard = (near
            && self
                .check_expire_limits(now, bytes, packets, use_time)
                .is_err())
            || self.km_state() == KmState::Expired;
        (self.is_dying() || hard, hard)
    }

    /// The first packet sets use_time (once, whichever worker gets there first).
    #[cold]
    fn first_use(&self, now: u64) -> u64 {
        match self.slot.use_time().compare_exchange(
            0,
            now.max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now.max(1),
            Err(t) => t,
        }
    }

    /// xfrm_state_check_expire past the nearest limit: which one, and what it does.
    #[cold]
    fn check_expire_limits(
        &self,
        now: u64,
        bytes: u64,
        packets: u64,
        use_time: u64,
    ) -> Result<(), StateExpired> {
        let lft = &self.cfg.lifetime;
        let timed_out = |add_limit: u64, use_limit: u64| {
            (add_limit != 0 && now >= self.add_time.saturating_add(add_limit))
                || (use_limit != 0 && now >= use_time.saturating_add(use_limit))
        };
        if bytes >= lft.hard_byte_limit
            || packets >= lft.hard_packet_limit
            || timed_out(lft.hard_add_expires_seconds, lft.hard_use_expires_seconds)
        {
            if self.expire_hard() {
                log::warn!(
                    "SA spi 0x{:08x} dst {}: hard lifetime reached ({} bytes, {} packets), state expired",
                    self.spi(),
                    self.daddr(),
                    bytes,
                    packets
                );
            }
            return Err(StateExpired);
        }
        if (bytes >= lft.soft_byte_limit
            || packets >= lft.soft_packet_limit
            || timed_out(lft.soft_add_expires_seconds, lft.soft_use_expires_seconds))
            && !self.dying.swap(true, Ordering::Relaxed)
        {
            self.soft_expiries.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "SA spi 0x{:08x} dst {}: soft lifetime reached ({} bytes, {} packets); rekey needed",
                self.spi(),
                self.daddr(),
                bytes,
                packets
            );
        }
        Ok(())
    }

    /// xfrm_replay_overflow / xfrm_replay_overflow_esn: the next output sequence number.
    ///
    /// The first number is replay-oseq + 1 (1 by default). Without ESN the last one is
    /// 2^32 - 1; after it every packet is refused, unless the SA has oseq-may-wrap, when the
    /// low 32 bits wrap to 0 and go on. With ESN the counter is 64 bits (seq_hi:seq) and is
    /// refused only past 2^64 - 1. The counter never goes back, so no number is handed out
    /// twice, whatever the number of workers.
    ///
    /// Returns the full 64-bit count; the wire carries its low 32 bits, ESN's AAD/ICV also
    /// the high 32. With oseq-may-wrap the high bits count the wraps, which keeps the IV
    /// built from this value unique per packet even though the wire number repeats (the
    /// kernel's IV would repeat there; see esp.rs).
    #[inline]
    pub fn xfrm_replay_overflow(&self) -> Result<u64, SeqOverflow> {
        let limit = if self.cfg.flags.esn || self.cfg.extra_flags.oseq_may_wrap {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        };
        // Far from the limit a plain fetch_add is exact: fewer than 2^16 workers can race
        // past the threshold check. Near it, a CAS loop saturates instead of wrapping.
        const SLACK: u64 = 1 << 16;
        let oseq = self.slot.oseq();
        let cur = oseq.load(Ordering::Relaxed);
        if cur < limit - SLACK {
            return Ok(oseq.fetch_add(1, Ordering::Relaxed) + 1);
        }
        self.replay_overflow_near_limit(limit)
    }

    #[cold]
    fn replay_overflow_near_limit(&self, limit: u64) -> Result<u64, SeqOverflow> {
        self.slot
            .oseq()
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                if v >= limit {
                    None
                } else {
                    Some(v + 1)
                }
            })
            .map(|old| old + 1)
            .map_err(|_| {
                // Without ESN or oseq-may-wrap, running out of numbers is a hard expiry
                // (xfrm_replay_overflow: XFRM_MSG_EXPIRE hard, so IKE rekeys).
                if self.expire_hard() {
                    log::warn!(
                        "SA spi 0x{:08x} dst {}: output sequence number overflow, state expired",
                        self.spi(),
                        self.daddr()
                    );
                }
                SeqOverflow
            })
    }

    /// x->curlft.bytes += len (x->curlft.packets++ is implied by the sequence number the
    /// packet took, see `oseq_base`).
    #[inline]
    pub fn add_curlft(&self, bytes: usize) {
        self.slot.bytes().fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// xfrm_replay_advance once the ICV verified (see ReplayState::advance), and the new top
    /// kept for a restart: a relaxed store under the SA's lock, so the kept top only rises,
    /// and before the packet is delivered, so no delivered number is ever above it.
    pub fn replay_advance(&self, seq: u64) -> Result<(), ReplayError> {
        let mut inp = self.input();
        inp.replay.advance(seq)?;
        let top = inp.replay.top();
        let kept = self.slot.in_top();
        if kept.load(Ordering::Relaxed) != top {
            kept.store(top, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The input path's x->curlft.bytes += len; x->curlft.packets++ (xfrm_input, after the
    /// replay advance).
    pub fn add_curlft_input(&self, bytes: usize) {
        self.slot.bytes().fetch_add(bytes as u64, Ordering::Relaxed);
        self.slot.in_packets().fetch_add(1, Ordering::Relaxed);
    }
}

/// Shared handle to an SA.
pub type SaRef = Arc<SecurityAssociation>;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sa::*;
    use zeroize::Zeroizing;

    pub fn esp_cfg(spi: u32, src: &str, dst: &str, mode: XfrmMode) -> SaConfig {
        SaConfig {
            replay_window: 32,
            ..SaConfig::new(
                XfrmId {
                    daddr: dst.parse().unwrap(),
                    spi,
                    proto: XfrmProto::Esp,
                },
                src.parse().unwrap(),
                1,
                mode,
                SaAlgorithm::Aead {
                    algo: AeadAlgo::Rfc4106Gcm,
                    key: Zeroizing::new((1..=16).collect()),
                    salt: [0xca, 0xfe, 0xba, 0xbe],
                    icv_bits: 128,
                },
            )
        }
    }

    pub fn ah_cfg(spi: u32, src: &str, dst: &str, mode: XfrmMode, algo: AuthAlgo) -> SaConfig {
        let mut c = esp_cfg(spi, src, dst, mode);
        c.id.proto = XfrmProto::Ah;
        c.algorithm = SaAlgorithm::Auth {
            algo,
            key: Zeroizing::new((0x40..0x60).collect()),
            trunc_bits: if algo == AuthAlgo::HmacSha1 { 96 } else { 128 },
        };
        c
    }

    fn sa(cfg: SaConfig) -> SecurityAssociation {
        SecurityAssociation::new(cfg, 0, 1000).unwrap()
    }

    /// The coarse clock reads the same second as SystemTime (give or take the tick and a
    /// second boundary between the two reads).
    #[test]
    fn system_clock_is_the_wall_clock_in_seconds() {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let ours = SystemClock.now();
        assert!(ours + 1 >= wall && ours <= wall + 1, "{ours} vs {wall}");
    }

    #[test]
    fn header_lengths() {
        let t = sa(esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel));
        assert_eq!((t.props.header_len, t.props.type_header_len), (36, 16));
        let t6 = sa(esp_cfg(1, "fd00::1", "fd00::2", XfrmMode::Tunnel));
        assert_eq!(t6.props.header_len, 56);
        let mut c = esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Transport);
        c.encap = Some(Encap {
            kind: EncapType::EspInUdpNonIke,
            sport: 4500,
            dport: 4500,
            oaddr: "0.0.0.0".parse().unwrap(),
        });
        assert_eq!(sa(c).props.header_len, 32);
        // AH sha256-128: 12 + 16 = 28 -> 32 (ALIGN8), 28 with align4 on IPv4, 32 on IPv6.
        let a = ah_cfg(
            2,
            "192.0.2.1",
            "192.0.2.2",
            XfrmMode::Transport,
            AuthAlgo::HmacSha256,
        );
        assert_eq!(sa(a.clone()).props.header_len, 32);
        let mut a4 = a.clone();
        a4.flags.align4 = true;
        assert_eq!(sa(a4).props.header_len, 28);
        let mut a6 = ah_cfg(
            2,
            "fd00::1",
            "fd00::2",
            XfrmMode::Tunnel,
            AuthAlgo::HmacSha256,
        );
        a6.flags.align4 = true;
        assert_eq!(sa(a6).props.header_len, 32 + 40);
        // sha1-96: 12 + 12 = 24, already aligned.
        let s1 = ah_cfg(
            2,
            "192.0.2.1",
            "192.0.2.2",
            XfrmMode::Tunnel,
            AuthAlgo::HmacSha1,
        );
        assert_eq!(sa(s1).props.header_len, 24 + 20);
    }

    #[test]
    fn rejects_mismatched_algorithms_and_families() {
        let mut c = esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        c.id.proto = XfrmProto::Ah;
        assert!(SecurityAssociation::new(c, 0, 0).is_err());
        let c = esp_cfg(1, "192.0.2.1", "fd00::2", XfrmMode::Tunnel);
        assert!(SecurityAssociation::new(c, 0, 0).is_err());
    }

    #[test]
    fn sequence_starts_at_one_or_after_replay_oseq() {
        let s = sa(esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel));
        assert_eq!(s.xfrm_replay_overflow(), Ok(1));
        assert_eq!(s.xfrm_replay_overflow(), Ok(2));
        let mut c = esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        c.replay_oseq = 41;
        c.replay_oseq_hi = 7; // ignored without ESN
        assert_eq!(sa(c.clone()).xfrm_replay_overflow(), Ok(42));
        c.flags.esn = true;
        assert_eq!(sa(c).xfrm_replay_overflow(), Ok((7 << 32) | 42));
    }

    /// What a state file's slot holds against what the config says: the higher wins, for
    /// the output counter and for the inbound window.
    #[test]
    fn carried_counters_against_the_configured_ones() {
        use std::sync::atomic::Ordering::Relaxed;
        let slot = |oseq: u64, top: u64| {
            let s = SeqSlot::in_memory();
            s.oseq().store(oseq, Relaxed);
            s.in_top().store(top, Relaxed);
            s
        };
        let mut c = esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        c.replay_oseq = 100;
        c.replay_seq = 100;
        // The slot is ahead: go on from it.
        let x = SecurityAssociation::with_slot(c.clone(), 0, 0, slot(500, 700)).unwrap();
        assert_eq!(x.xfrm_replay_overflow(), Ok(501));
        // Packets count from the configured start: 401 numbers handed out under this key.
        assert_eq!(x.curlft_packets(), 401);
        let r = &x.input().replay;
        assert_eq!(r.top(), 700);
        assert!(r.check(700).is_err() && r.check(690).is_err() && r.check(701).is_ok());
        // The config is ahead (an operator's replay-oseq / replay-seq): it wins, and the
        // window starts as configured (numbers below replay-seq not marked seen).
        let x = SecurityAssociation::with_slot(c.clone(), 0, 0, slot(50, 60)).unwrap();
        assert_eq!(x.xfrm_replay_overflow(), Ok(101));
        assert_eq!(x.persisted_in_top(), 100);
        assert!(x.input().replay.check(90).is_ok());
        // An advance is kept at once.
        x.replay_advance(120).unwrap();
        assert_eq!(x.persisted_in_top(), 120);
        assert!(x.replay_advance(120).is_err());
        assert_eq!(x.persisted_in_top(), 120);
    }

    #[test]
    fn sequence_overflow_without_esn() {
        let mut c = esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        c.replay_oseq = u32::MAX - 1;
        let s = sa(c.clone());
        assert_eq!(s.xfrm_replay_overflow(), Ok(u64::from(u32::MAX)));
        assert_eq!(s.xfrm_replay_overflow(), Err(SeqOverflow));
        assert_eq!(s.xfrm_replay_overflow(), Err(SeqOverflow));
        assert_eq!(s.oseq(), u64::from(u32::MAX));
        // oseq-may-wrap: the wire number wraps to 0 (low 32 bits), the count goes on.
        c.extra_flags.oseq_may_wrap = true;
        let s = sa(c);
        assert_eq!(s.xfrm_replay_overflow(), Ok(u64::from(u32::MAX)));
        let n = s.xfrm_replay_overflow().unwrap();
        assert_eq!(n as u32, 0);
        assert_eq!(s.xfrm_replay_overflow().unwrap() as u32, 1);
    }

    #[test]
    fn sequence_with_esn_carries_into_the_high_half_and_stops_at_2_64() {
        let mut c = esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        c.flags.esn = true;
        c.replay_oseq = u32::MAX;
        c.replay_oseq_hi = 3;
        let s = sa(c.clone());
        assert_eq!(s.xfrm_replay_overflow(), Ok(4 << 32));
        c.replay_oseq = u32::MAX - 1;
        c.replay_oseq_hi = u32::MAX;
        let s = sa(c);
        assert_eq!(s.xfrm_replay_overflow(), Ok(u64::MAX));
        assert_eq!(s.xfrm_replay_overflow(), Err(SeqOverflow));
        assert_eq!(s.oseq(), u64::MAX);
    }

    #[test]
    fn sequence_numbers_are_unique_across_threads() {
        let s = Arc::new(sa(esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel)));
        let mut handles = Vec::new();
        for _ in 0..4 {
            let s = s.clone();
            handles.push(std::thread::spawn(move || {
                (0..10_000)
                    .map(|_| s.xfrm_replay_overflow().unwrap())
                    .collect::<Vec<_>>()
            }));
        }
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 40_000);
        assert_eq!((all[0], all[39_999]), (1, 40_000));
    }

    #[test]
    fn packet_and_byte_lifetimes() {
        let mut c = esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        c.lifetime.soft_packet_limit = 2;
        c.lifetime.hard_packet_limit = 3;
        let s = sa(c);
        for _ in 0..3 {
            assert_eq!(s.xfrm_state_check_expire(1000), Ok(()));
            s.xfrm_replay_overflow().unwrap();
            s.add_curlft(100);
        }
        assert!(s.is_dying());
        assert_eq!(s.soft_expiries(), 1, "soft expiry counted once");
        assert_eq!(s.xfrm_state_check_expire(1000), Err(StateExpired));
        assert_eq!(s.km_state(), KmState::Expired);

        let mut c = esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        c.lifetime.soft_byte_limit = 150;
        c.lifetime.hard_byte_limit = 250;
        let s = sa(c);
        s.xfrm_state_check_expire(1000).unwrap();
        s.xfrm_replay_overflow().unwrap();
        s.add_curlft(100);
        s.xfrm_state_check_expire(1000).unwrap();
        assert!(!s.is_dying());
        s.xfrm_replay_overflow().unwrap();
        s.add_curlft(100);
        s.xfrm_state_check_expire(1000).unwrap();
        assert!(s.is_dying());
        s.xfrm_replay_overflow().unwrap();
        s.add_curlft(100);
        assert_eq!(s.xfrm_state_check_expire(1000), Err(StateExpired));
    }

    #[test]
    fn time_lifetimes() {
        let mut c = esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        c.lifetime.soft_add_expires_seconds = 10;
        c.lifetime.hard_add_expires_seconds = 20;
        let s = sa(c); // added at 1000
        s.xfrm_state_check_expire(1009).unwrap();
        assert!(!s.is_dying());
        s.xfrm_state_check_expire(1010).unwrap();
        assert!(s.is_dying());
        assert_eq!(s.xfrm_state_check_expire(1020), Err(StateExpired));

        let mut c = esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        c.lifetime.hard_use_expires_seconds = 5;
        let s = sa(c);
        // Unused for a long time: the use clock starts with the first packet.
        s.xfrm_state_check_expire(5000).unwrap();
        assert_eq!(s.use_time(), 5000);
        s.xfrm_state_check_expire(5004).unwrap();
        assert_eq!(s.xfrm_state_check_expire(5005), Err(StateExpired));
    }

    /// Idle SAs expire by time too (the control plane's timer), and what a packet path
    /// found shows in the tick.
    #[test]
    fn lifetime_tick_without_traffic() {
        let mut c = esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        c.lifetime.soft_add_expires_seconds = 10;
        c.lifetime.hard_add_expires_seconds = 20;
        c.lifetime.hard_use_expires_seconds = 3;
        let s = sa(c); // added at 1000, never used: the use limit does not run
        assert_eq!(s.lifetime_tick(1009), (false, false));
        assert_eq!(s.lifetime_tick(1010), (true, false));
        assert_eq!(s.soft_expiries(), 1);
        assert_eq!(s.lifetime_tick(1011), (true, false));
        assert_eq!(s.soft_expiries(), 1, "soft once");
        assert_eq!(s.lifetime_tick(1020), (true, true));
        assert_eq!(s.km_state(), KmState::Expired);
        // Sequence numbers exhausted (no ESN): a hard expiry.
        let mut c = esp_cfg(2, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        c.replay_oseq = u32::MAX;
        let s = sa(c);
        assert_eq!(s.lifetime_tick(1000), (false, false));
        assert_eq!(s.xfrm_replay_overflow(), Err(SeqOverflow));
        assert_eq!(s.km_state(), KmState::Expired);
        assert_eq!(s.lifetime_tick(1000), (true, true));
    }

    #[test]
    fn state_mtu_for_tfc() {
        let t = sa(esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel));
        // (1500 - 36 - 16) & ~3 - 2 = 1446
        assert_eq!(t.xfrm_state_mtu(1500), 1446);
        let tr = sa(esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Transport));
        // ((1500 - 16 - 16 - 20) & ~3) + 20 - 2 = 1466
        assert_eq!(tr.xfrm_state_mtu(1500), 1466);
    }
}
