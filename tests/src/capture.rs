//! A capture on the wire: a packet socket (AF_PACKET, every protocol) on one interface of a
//! namespace, read by a thread until stopped. Each frame is checked as it arrives, so that
//! hundreds of MiB need not be kept:
//!
//! - **leaks**: a frame holding a plaintext marker ([`crate::traffic::MAGIC`]: the transfers
//!   and pings put it in every block of their payload), or an IP packet of a protected flow
//!   ([`FlowMatch`]) that is not ESP, AH or ESP-in-UDP;
//! - **samples**: the first N IPsec frames and a uniform random sample (reservoir) of the
//!   rest, for an independent peer to decrypt (`tests/interop/ipsec_peer.py`);
//! - **counts** of frames per protocol and per SPI;
//! - **sequence numbers** per SPI and per phase of the test ([`Capture::mark`]), and how
//!   often one went backwards (a restarted sender that forgot its counter).
//!
//! On a veth in a namespace of its own, a packet socket sees every frame: nothing there runs
//! XDP or AF_XDP (see the topology in [`crate::gateway`]).

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::SystemTime,
};

use anyhow::{bail, Context, Result};

use crate::{
    sock::{packet_socket, set_recv_timeout},
    topology::Netns,
    traffic::MAGIC,
};

const IPPROTO_UDP: u8 = 17;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_AH: u8 = 51;

/// Packets from `src` to `dst` (prefixes) are protected: never in clear on the wire.
#[derive(Clone, Copy, Debug)]
pub struct FlowMatch {
    pub src: (IpAddr, u8),
    pub dst: (IpAddr, u8),
}

pub fn in_prefix(a: IpAddr, (p, len): (IpAddr, u8)) -> bool {
    match (a, p) {
        (IpAddr::V4(a), IpAddr::V4(p)) => {
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            u32::from(a) & m == u32::from(p) & m
        }
        (IpAddr::V6(a), IpAddr::V6(p)) => {
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            u128::from(a) & m == u128::from(p) & m
        }
        _ => false,
    }
}

#[derive(Clone, Debug)]
pub struct CaptureOpts {
    pub protected: Vec<FlowMatch>,
    /// UDP ports carrying ESP (NAT-T).
    pub natt_ports: Vec<u16>,
    /// SPIs (outermost) of integrity-only bundles (AH, ESP with GMAC): their packets carry
    /// the payload in clear by design, so a marker inside them is not a leak; the packet
    /// itself being AH/ESP is what protects the flow.
    pub clear_payload_spis: Vec<u32>,
    /// IPsec frames kept from the start.
    pub first: usize,
    /// IPsec frames kept at random from the rest.
    pub random: usize,
    /// Leaking frames kept (for the report).
    pub leaks_kept: usize,
    /// A one-line summary of each of the last `recent` frames, for a live view
    /// ([`Capture::recent`]); 0 = none.
    pub recent: usize,
}

impl Default for CaptureOpts {
    fn default() -> Self {
        Self {
            protected: Vec::new(),
            natt_ports: Vec::new(),
            clear_payload_spis: Vec::new(),
            first: 64,
            random: 448,
            leaks_kept: 8,
            recent: 0,
        }
    }
}

/// A captured frame with its time.
#[derive(Clone, Debug)]
pub struct Frame {
    pub time: SystemTime,
    pub data: Vec<u8>,
}

/// What an IP packet on the wire is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Esp {
        spi: u32,
        seq: u32,
    },
    Ah {
        spi: u32,
        seq: u32,
    },
    /// ESP in UDP (NAT-T).
    EspInUdp {
        spi: u32,
        seq: u32,
    },
    /// Any other IP packet: protocol (after IPv6 extension headers).
    Other {
        proto: u8,
    },
}

impl Kind {
    pub fn spi(self) -> Option<u32> {
        match self {
            Kind::Esp { spi, .. } | Kind::Ah { spi, .. } | Kind::EspInUdp { spi, .. } => Some(spi),
            Kind::Other { .. } => None,
        }
    }
    pub fn seq(self) -> Option<u32> {
        match self {
            Kind::Esp { seq, .. } | Kind::Ah { seq, .. } | Kind::EspInUdp { seq, .. } => Some(seq),
            Kind::Other { .. } => None,
        }
    }
}

/// An Ethernet frame's IP packet: (offset of the IP header, src, dst, what it carries).
pub fn parse(frame: &[u8], natt_ports: &[u16]) -> Option<(usize, IpAddr, IpAddr, Kind)> {
    let mut off = 14;
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = u16::from_be_bytes([*frame.get(off + 2)?, *frame.get(off + 3)?]);
        off += 4;
    }
    let ip = frame.get(off..)?;
    let (src, dst, mut proto, mut l4) = match ethertype {
        0x0800 if ip.len() >= 20 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let s: [u8; 4] = ip[12..16].try_into().ok()?;
            let d: [u8; 4] = ip[16..20].try_into().ok()?;
            let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
            if frag != 0 {
                // A non-first fragment: no header to look at.
                return Some((off, s.into(), d.into(), Kind::Other { proto: ip[9] }));
            }
            (IpAddr::from(s), IpAddr::from(d), ip[9], ihl)
        }
        0x86dd if ip.len() >= 40 => {
            let s: [u8; 16] = ip[8..24].try_into().ok()?;
            let d: [u8; 16] = ip[24..40].try_into().ok()?;
            (IpAddr::from(s), IpAddr::from(d), ip[6], 40)
        }
        _ => return None,
    };
    if ethertype == 0x86dd {
        // Hop-by-hop, routing, destination options, fragment.
        while matches!(proto, 0 | 43 | 60 | 44) && ip.len() >= l4 + 8 {
            let next = ip[l4];
            if proto == 44 && u16::from_be_bytes([ip[l4 + 2], ip[l4 + 3]]) & 0xfff8 != 0 {
                // A non-first fragment: no header to look at (as for IPv4).
                return Some((off, src, dst, Kind::Other { proto: next }));
            }
            l4 += if proto == 44 {
                8
            } else {
                (usize::from(ip[l4 + 1]) + 1) * 8
            };
            proto = next;
        }
    }
    let w = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(
            ip.get(l4 + at..l4 + at + 4)?.try_into().ok()?,
        ))
    };
    let kind = match proto {
        IPPROTO_ESP => Kind::Esp {
            spi: w(0)?,
            seq: w(4)?,
        },
        IPPROTO_AH => Kind::Ah {
            spi: w(4)?,
            seq: w(8)?,
        },
        IPPROTO_UDP if ip.len() >= l4 + 16 => {
            let dport = u16::from_be_bytes([ip[l4 + 2], ip[l4 + 3]]);
            let spi = w(8)?;
            // A zero SPI is the non-ESP marker (IKE on 4500).
            if natt_ports.contains(&dport) && spi != 0 {
                Kind::EspInUdp { spi, seq: w(12)? }
            } else {
                Kind::Other { proto }
            }
        }
        p => Kind::Other { proto: p },
    };
    Some((off, src, dst, kind))
}

/// The result of a capture.
#[derive(Debug, Default)]
pub struct CaptureReport {
    pub frames: u64,
    pub bytes: u64,
    /// IPsec frames (ESP, AH, ESP-in-UDP).
    pub ipsec: u64,
    /// Frames per SPI.
    pub per_spi: BTreeMap<u32, u64>,
    /// Frames carrying a plaintext marker or a protected flow in clear.
    pub leaks: u64,
    /// The first of them, with why.
    pub leak_samples: Vec<(String, Frame)>,
    /// IPsec frames: the first ones, then a uniform sample of the rest.
    pub samples: Vec<Frame>,
    /// Other protocols seen (ethertype or IP protocol), for the report.
    pub other: BTreeMap<String, u64>,
    /// The first frames that were not IPsec (for diagnostics).
    pub other_samples: Vec<Frame>,
    /// Frames the kernel dropped before we read them (PACKET_STATISTICS).
    pub kernel_drops: u64,
    /// Frames of integrity-only bundles (AH, GMAC) whose clear payload holds a marker.
    pub integrity_only_with_marker: u64,
    /// Sequence numbers (the wire's 32 bits) per (SPI, phase): phase 0 until the first
    /// [`Capture::mark`], then 1, ….
    pub seqs: BTreeMap<(u32, u32), SeqRange>,
    /// Per SPI, frames whose sequence number was not above the highest one read before on
    /// that SPI (replays, or a sender that started over).
    pub seq_backwards: BTreeMap<u32, u64>,
}

/// Lowest and highest sequence number of a set of frames, and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqRange {
    pub min: u32,
    pub max: u32,
    pub count: u64,
}

impl CaptureReport {
    /// The sequence numbers of `spi` over the phases `phases`, merged.
    pub fn seq_range(&self, spi: u32, phases: std::ops::Range<u32>) -> Option<SeqRange> {
        self.seqs
            .range((spi, phases.start)..(spi, phases.end))
            .map(|(_, r)| *r)
            .reduce(|a, b| SeqRange {
                min: a.min.min(b.min),
                max: a.max.max(b.max),
                count: a.count + b.count,
            })
    }
}

impl CaptureReport {
    pub fn summary(&self) -> String {
        let spis: Vec<String> = self
            .per_spi
            .iter()
            .map(|(s, n)| format!("{s:#x}:{n}"))
            .collect();
        format!(
            "{} frames ({} bytes), {} IPsec [{}] ({} integrity-only with visible payload), {} \
             leaks, other {:?}, {} samples, {} dropped by the kernel",
            self.frames,
            self.bytes,
            self.ipsec,
            spis.join(" "),
            self.integrity_only_with_marker,
            self.leaks,
            self.other,
            self.samples.len(),
            self.kernel_drops
        )
    }

    /// Panics with the leaking frames if there is any.
    pub fn assert_no_leak(&self, what: &str) {
        if self.leaks == 0 {
            return;
        }
        let mut msg = format!(
            "{what}: {} frame(s) of protected traffic in clear on the wire",
            self.leaks
        );
        for (why, f) in &self.leak_samples {
            let _ = std::fmt::Write::write_fmt(
                &mut msg,
                format_args!("\n  {why}: {}", hex(&f.data[..f.data.len().min(96)])),
            );
        }
        panic!("{msg}\n({})", self.summary());
    }

    /// Samples as a classic pcap file (Ethernet).
    pub fn write_samples(&self, path: &Path, filter: impl Fn(&Frame) -> bool) -> Result<usize> {
        write_pcap(path, self.samples.iter().filter(|f| filter(f)))
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Write frames as a classic pcap (microseconds, LINKTYPE_ETHERNET).
pub fn write_pcap<'a>(path: &Path, frames: impl Iterator<Item = &'a Frame>) -> Result<usize> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    f.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    f.write_all(&2u16.to_le_bytes())?;
    f.write_all(&4u16.to_le_bytes())?;
    f.write_all(&[0; 8])?;
    f.write_all(&262_144u32.to_le_bytes())?;
    f.write_all(&1u32.to_le_bytes())?;
    let mut n = 0;
    for fr in frames {
        let t = fr
            .time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        f.write_all(&(t.as_secs() as u32).to_le_bytes())?;
        f.write_all(&t.subsec_micros().to_le_bytes())?;
        f.write_all(&(fr.data.len() as u32).to_le_bytes())?;
        f.write_all(&(fr.data.len() as u32).to_le_bytes())?;
        f.write_all(&fr.data)?;
        n += 1;
    }
    f.flush()?;
    Ok(n)
}

/// Read a classic pcap (either byte order, micro or nanoseconds): the frames.
pub fn read_pcap(path: &Path) -> Result<Vec<Vec<u8>>> {
    let d = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    if d.len() < 24 {
        bail!("{}: not a pcap file", path.display());
    }
    let le = match u32::from_le_bytes(d[0..4].try_into()?) {
        0xa1b2_c3d4 | 0xa1b2_3c4d => true,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => false,
        m => bail!("{}: pcap magic {m:#x}", path.display()),
    };
    let rd = |b: &[u8]| {
        let a: [u8; 4] = b.try_into().unwrap();
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= d.len() {
        let incl = rd(&d[off + 8..off + 12]) as usize;
        off += 16;
        if off + incl > d.len() {
            bail!("{}: truncated record", path.display());
        }
        out.push(d[off..off + incl].to_vec());
        off += incl;
    }
    Ok(out)
}

/// Live counters of a running capture.
#[derive(Debug, Default)]
pub struct Live {
    pub frames: AtomicU64,
    pub ipsec: AtomicU64,
    pub leaks: AtomicU64,
    /// The phase frames are counted in ([`Capture::mark`]).
    phase: std::sync::atomic::AtomicU32,
    recent: std::sync::Mutex<std::collections::VecDeque<String>>,
    per_spi: std::sync::Mutex<BTreeMap<u32, u64>>,
}

impl Live {
    /// Frames per SPI so far (kept only with `CaptureOpts::recent` > 0, the live view).
    pub fn per_spi(&self) -> BTreeMap<u32, u64> {
        self.per_spi
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A running capture; [`Capture::stop`] ends it and returns the report.
pub struct Capture {
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
    thread: Option<JoinHandle<Result<CaptureReport>>>,
}

impl Capture {
    /// Start capturing on `ifname` in `ns`. Returns once the socket is bound: every frame
    /// after that is seen.
    pub fn start(ns: &Netns, ifname: &str, opts: CaptureOpts) -> Result<Self> {
        let fd = ns.run(|| open_packet_socket(ifname))?;
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Live::default());
        let (s, l) = (stop.clone(), live.clone());
        let thread = std::thread::Builder::new()
            .name(format!("capture {ifname}"))
            .spawn(move || capture_loop(fd, &opts, &s, &l))?;
        Ok(Self {
            stop,
            live,
            thread: Some(thread),
        })
    }

    /// Counters so far.
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Starts the next phase of the sequence-number record ([`CaptureReport::seqs`]) and
    /// returns its number. Frames are put in a phase when the capture reads them, a little
    /// after they crossed: a mark set right after an event may still see frames from before
    /// it.
    pub fn mark(&self) -> u32 {
        self.live.phase.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Summaries of the last frames (`CaptureOpts::recent`), oldest first, taken out.
    pub fn recent(&self) -> Vec<String> {
        let mut r = self.live.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.drain(..).collect()
    }

    pub fn stop(mut self) -> Result<CaptureReport> {
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().expect("capture thread");
        t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_packet_socket(ifname: &str) -> Result<OwnedFd> {
    // Room for bursts while the thread is descheduled (2 cores shared by everything).
    let fd = packet_socket(ifname, 64 << 20)?;
    set_recv_timeout(&fd, std::time::Duration::from_millis(50))?;
    // Reset the statistics: what the kernel dropped before bind is not ours to count.
    let _ = packet_drops(&fd);
    Ok(fd)
}

/// PACKET_STATISTICS: frames dropped since the last call (reading resets it).
fn packet_drops(fd: &OwnedFd) -> Result<u64> {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: valid fd, a tpacket_stats out-parameter with its length.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut st as *mut libc::tpacket_stats).cast(),
            &mut len,
        )
    };
    if r != 0 {
        bail!("PACKET_STATISTICS: {}", std::io::Error::last_os_error());
    }
    Ok(u64::from(st.tp_drops))
}

/// Why a frame is a leak (None: it is not), and whether it is an integrity-only IPsec
/// frame with a marker in its clear payload (allowed, counted).
pub fn leak_reason(
    data: &[u8],
    parsed: Option<(usize, IpAddr, IpAddr, Kind)>,
    opts: &CaptureOpts,
    finder: &memchr::memmem::Finder<'_>,
) -> (Option<String>, bool) {
    let spi = parsed.and_then(|p| p.3.spi());
    if let Some(at) = finder.find(data) {
        if spi.is_some_and(|spi| opts.clear_payload_spis.contains(&spi)) {
            return (None, true);
        }
        return (Some(format!("plaintext marker at byte {at}")), false);
    }
    if let Some((_, src, dst, Kind::Other { proto })) = parsed {
        if opts
            .protected
            .iter()
            .any(|m| in_prefix(src, m.src) && in_prefix(dst, m.dst))
        {
            return (
                Some(format!(
                    "protected flow in clear: {src} -> {dst} proto {proto}"
                )),
                false,
            );
        }
    }
    (None, false)
}

fn capture_loop(
    fd: OwnedFd,
    opts: &CaptureOpts,
    stop: &AtomicBool,
    live: &Live,
) -> Result<CaptureReport> {
    let mut rep = CaptureReport::default();
    let mut buf = vec![0u8; 65536 + 256];
    let finder = memchr::memmem::Finder::new(&MAGIC[..]);
    let mut seen_ipsec: u64 = 0;
    let mut rng = crate::gateway::run_seed() | 1;
    let mut reservoir: Vec<Frame> = Vec::with_capacity(opts.random);
    let mut top: BTreeMap<u32, u32> = BTreeMap::new();
    // Drain until stop is set and one timeout passes with nothing left to read.
    loop {
        // SAFETY: valid fd, writes at most buf.len() bytes.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
                std::io::ErrorKind::Interrupted => continue,
                _ => bail!("capture recv: {e}"),
            }
        }
        let len = n as usize;
        let data = &buf[..len.min(buf.len())];
        rep.frames += 1;
        rep.bytes += len as u64;
        live.frames.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now();
        let parsed = parse(data, &opts.natt_ports);
        let (leak, integrity_only) = leak_reason(data, parsed, opts, &finder);
        if integrity_only {
            rep.integrity_only_with_marker += 1;
        }
        if opts.recent > 0 {
            let line = describe(data, parsed);
            let mut r = live.recent.lock().unwrap_or_else(|p| p.into_inner());
            if r.len() == opts.recent {
                r.pop_front();
            }
            r.push_back(line);
        }
        match parsed {
            Some((_, _, _, kind)) => match kind.spi() {
                Some(spi) => {
                    rep.ipsec += 1;
                    live.ipsec.fetch_add(1, Ordering::Relaxed);
                    *rep.per_spi.entry(spi).or_default() += 1;
                    if let Some(seq) = kind.seq() {
                        let phase = live.phase.load(Ordering::Relaxed);
                        let r = rep.seqs.entry((spi, phase)).or_insert(SeqRange {
                            min: seq,
                            max: seq,
                            count: 0,
                        });
                        r.min = r.min.min(seq);
                        r.max = r.max.max(seq);
                        r.count += 1;
                        let t = top.entry(spi).or_insert(0);
                        if seq <= *t {
                            *rep.seq_backwards.entry(spi).or_default() += 1;
                        }
                        *t = (*t).max(seq);
                    }
                    if opts.recent > 0 {
                        *live
                            .per_spi
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(spi)
                            .or_default() += 1;
                    }
                    seen_ipsec += 1;
                    let f = || Frame {
                        time: now,
                        data: data.to_vec(),
                    };
                    if rep.samples.len() < opts.first {
                        rep.samples.push(f());
                    } else {
                        // Reservoir sampling (Algorithm R) over the frames after the first.
                        let i = seen_ipsec - opts.first as u64;
                        if reservoir.len() < opts.random {
                            reservoir.push(f());
                        } else {
                            rng = crate::gateway::splitmix64(rng);
                            let j = rng % i;
                            if (j as usize) < opts.random {
                                reservoir[j as usize] = f();
                            }
                        }
                    }
                }
                None => {
                    let Kind::Other { proto } = kind else {
                        unreachable!()
                    };
                    *rep.other.entry(format!("ip proto {proto}")).or_default() += 1;
                    if rep.other_samples.len() < 32 {
                        rep.other_samples.push(Frame {
                            time: now,
                            data: data.to_vec(),
                        });
                    }
                }
            },
            None => {
                let et = data
                    .get(12..14)
                    .map(|b| u16::from_be_bytes([b[0], b[1]]))
                    .unwrap_or(0);
                *rep.other.entry(format!("ethertype {et:#06x}")).or_default() += 1;
            }
        }
        if let Some(why) = leak {
            rep.leaks += 1;
            live.leaks.fetch_add(1, Ordering::Relaxed);
            if rep.leak_samples.len() < opts.leaks_kept {
                rep.leak_samples.push((
                    why,
                    Frame {
                        time: now,
                        data: data.to_vec(),
                    },
                ));
            }
        }
    }
    rep.samples.extend(reservoir);
    rep.kernel_drops = packet_drops(&fd).unwrap_or(0);
    Ok(rep)
}

/// One line for a frame: `10.2.0.1 > 10.3.0.2 ESP spi=0x00001000 seq=17 len=1456`.
pub fn describe(frame: &[u8], parsed: Option<(usize, IpAddr, IpAddr, Kind)>) -> String {
    let Some((off, src, dst, kind)) = parsed else {
        let et = frame
            .get(12..14)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .unwrap_or(0);
        let what = match et {
            0x0806 => "ARP",
            _ => "non-IP",
        };
        return format!("{what} ethertype {et:#06x} len={}", frame.len());
    };
    let len = frame.len() - off;
    match kind {
        Kind::Esp { spi, seq } => format!("{src} > {dst} ESP spi={spi:#010x} seq={seq} len={len}"),
        Kind::Ah { spi, seq } => format!("{src} > {dst} AH spi={spi:#010x} seq={seq} len={len}"),
        Kind::EspInUdp { spi, seq } => {
            format!("{src} > {dst} UDP-encap ESP spi={spi:#010x} seq={seq} len={len}")
        }
        Kind::Other { proto } => {
            let name = match proto {
                1 => "ICMP".to_string(),
                6 => "TCP".to_string(),
                17 => "UDP".to_string(),
                58 => "ICMPv6".to_string(),
                p => format!("proto {p}"),
            };
            format!("{src} > {dst} {name} len={len} (clear)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, ip: &[u8]) -> Vec<u8> {
        crate::packet::ethernet([2; 6], [4; 6], None, ethertype, ip)
    }

    #[test]
    fn parse_classifies_ipsec_and_clear() {
        let (a, b) = ("10.2.0.1".parse().unwrap(), "10.3.0.2".parse().unwrap());
        let esp = [&0x1000u32.to_be_bytes()[..], &7u32.to_be_bytes(), &[0; 24]].concat();
        let f = eth(0x0800, &crate::packet::ipv4(a, b, 50, 0, &esp));
        assert_eq!(
            parse(&f, &[]).unwrap().3,
            Kind::Esp {
                spi: 0x1000,
                seq: 7
            }
        );
        // ESP in UDP 4500, and the IKE marker on the same port.
        let mut u = vec![0x11, 0x94, 0x11, 0x94, 0, 0, 0, 0];
        u.extend_from_slice(&esp);
        let f = eth(0x0800, &crate::packet::ipv4(a, b, 17, 0, &u));
        assert_eq!(
            parse(&f, &[4500]).unwrap().3,
            Kind::EspInUdp {
                spi: 0x1000,
                seq: 7
            }
        );
        assert_eq!(parse(&f, &[]).unwrap().3, Kind::Other { proto: 17 });
        u[8..12].fill(0);
        let f = eth(0x0800, &crate::packet::ipv4(a, b, 17, 0, &u));
        assert_eq!(parse(&f, &[4500]).unwrap().3, Kind::Other { proto: 17 });
        // AH after an IPv6 destination options header.
        let (a6, b6) = ("fd00:2::1".parse().unwrap(), "fd00:3::2".parse().unwrap());
        let ah = [
            &[4u8, 4, 0, 0][..],
            &0x2001u32.to_be_bytes(),
            &9u32.to_be_bytes(),
            &[0; 16],
        ]
        .concat();
        let f = eth(0x86dd, &crate::packet::ipv6(a6, b6, 51, &[60], 0, &ah));
        assert_eq!(
            parse(&f, &[]).unwrap().3,
            Kind::Ah {
                spi: 0x2001,
                seq: 9
            }
        );
        assert!(parse(&eth(0x0806, &[0; 28]), &[]).is_none());
    }

    #[test]
    fn leaks_found_and_integrity_only_allowed() {
        let (a, b) = ("10.2.0.1".parse().unwrap(), "10.3.0.2".parse().unwrap());
        let (ha, hb) = ("10.1.0.1".parse().unwrap(), "10.4.0.2".parse().unwrap());
        let opts = CaptureOpts {
            protected: vec![FlowMatch {
                src: ("10.1.0.0".parse().unwrap(), 24),
                dst: ("10.4.0.0".parse().unwrap(), 24),
            }],
            clear_payload_spis: vec![0x2001],
            ..CaptureOpts::default()
        };
        let finder = memchr::memmem::Finder::new(&MAGIC[..]);
        let check = |f: &[u8]| leak_reason(f, parse(f, &[]), &opts, &finder);
        let block = crate::traffic::block(b'a', 3);
        // The inner packet in clear: by address (no marker), and by marker.
        let clear = eth(0x0800, &crate::packet::ipv4(ha, hb, 6, 0, &[0; 20]));
        assert!(check(&clear).0.unwrap().starts_with("protected flow"));
        let clear = eth(0x0800, &crate::packet::ipv4(hb, ha, 17, 0, &[0; 20]));
        assert!(
            check(&clear).0.is_none(),
            "the other direction is not protected here"
        );
        let clear = eth(0x0800, &crate::packet::ipv4(hb, ha, 17, 0, &block));
        assert!(check(&clear).0.unwrap().starts_with("plaintext marker"));
        let other = eth(0x0800, &crate::packet::ipv4(a, b, 17, 0, &block));
        assert!(check(&other).0.unwrap().starts_with("plaintext marker"));
        // ESP whose payload shows the marker: a leak; AH of an integrity-only SPI: allowed.
        let esp = [&0x1000u32.to_be_bytes()[..], &1u32.to_be_bytes(), &block].concat();
        let f = eth(0x0800, &crate::packet::ipv4(a, b, 50, 0, &esp));
        assert!(check(&f).0.unwrap().starts_with("plaintext marker"));
        let ah = [
            &[4u8, 4, 0, 0][..],
            &0x2001u32.to_be_bytes(),
            &1u32.to_be_bytes(),
            &[0; 16],
            &block,
        ]
        .concat();
        let f = eth(0x0800, &crate::packet::ipv4(a, b, 51, 0, &ah));
        assert_eq!(check(&f), (None, true));
        // Ciphertext between the gateways: nothing.
        let esp = [
            &0x1000u32.to_be_bytes()[..],
            &1u32.to_be_bytes(),
            &[0x5a; 64],
        ]
        .concat();
        let f = eth(0x0800, &crate::packet::ipv4(a, b, 50, 0, &esp));
        assert_eq!(check(&f), (None, false));
    }

    #[test]
    fn prefixes() {
        let p = ("10.1.0.0".parse().unwrap(), 24);
        assert!(in_prefix("10.1.0.77".parse().unwrap(), p));
        assert!(!in_prefix("10.1.1.1".parse().unwrap(), p));
        assert!(!in_prefix("fd00:1::1".parse().unwrap(), p));
        let p6 = ("fd00:1::".parse().unwrap(), 64);
        assert!(in_prefix("fd00:1::1".parse().unwrap(), p6));
        assert!(!in_prefix("fd00:2::1".parse().unwrap(), p6));
        assert!(in_prefix(
            "1.2.3.4".parse().unwrap(),
            ("0.0.0.0".parse().unwrap(), 0)
        ));
    }

    #[test]
    fn pcap_roundtrip() {
        let p = std::env::temp_dir().join(format!("xfrm-cap-test-{}.pcap", std::process::id()));
        let frames = [
            Frame {
                time: SystemTime::now(),
                data: vec![1, 2, 3],
            },
            Frame {
                time: SystemTime::now(),
                data: vec![4; 70],
            },
        ];
        assert_eq!(write_pcap(&p, frames.iter()).unwrap(), 2);
        let back = read_pcap(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        assert_eq!(back, vec![vec![1, 2, 3], vec![4; 70]]);
    }
}
