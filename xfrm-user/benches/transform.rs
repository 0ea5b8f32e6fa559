//! The per-packet output path as the AF_XDP worker runs it, against ring in the same run:
//! ESP tunnel AES-GCM-128 against ring's AES-128-GCM seal, AH tunnel HMAC-SHA-256-128
//! against ring's HMAC-SHA-256, each on the same packet sizes.
//!
//! `cargo bench -p xfrm-user --bench transform` (or `cargo xtask bench`).
//!
//! What one packet of "ours" costs is `xfrm_output_bundle` over a bundle the worker has
//! already resolved (one SA): flow parse, Ethernet padding trim, then xfrm_output_one
//! (space check, tunnel mode, state valid, lifetime check, sequence number, IP ID, curlft)
//! and esp_output / ah_output, and the outer header's length and checksum. The inner UDP
//! checksum is complete, and left as it is, as xfrm_output leaves it. The clock is read
//! once per burst, as the worker reads its coarse clock once per batch.
//!
//! A second ESP row, `esp_partial_ns_<size>`, gives the packet as veth hands it over with
//! offloads on (CHECKSUM_PARTIAL: the field holds the pseudo-header sum), so the cost of
//! completing it (skb_checksum_help, a pass over the datagram) shows:
//! `ratio_partial_vs_ring_<size>`.
//!
//! Every packet starts from a fresh copy of the plain inner packet: each burst first copies
//! the packet into K separate frames (not timed: that is the NIC's DMA), then times the K
//! transforms. ring's baselines get the same: K buffers reset untimed, then K seals (or
//! HMACs) of `size` bytes timed, the tag copied out as a user of ring must. K frames fit
//! L1 together, so both sides run on cache-hot data.
//!
//! After criterion's report, a paired measurement prints per size
//! `esp_ns_<size> ring=<ns> ours=<ns>`, `ratio_vs_ring_<size>=<x>` with
//! x = time(ring seal) / time(ESP transform), i.e. our throughput over ring's, the same for
//! AH (`ah_ns_<size>`, `ratio_ah_vs_ring_hmac_<size>`), and as last line
//! `ratio_vs_ring_1400=<x>`. The machine is shared, so ring and ours run alternately in
//! short bursts and every ratio is the median of the per-round ratios; the cost of reading
//! the timer twice per burst is measured and taken off both sides.

use std::hint::black_box;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use ring::aead;
use xfrm_user::frame::Frame;
use xfrm_user::sa::*;
use xfrm_user::stats::XfrmStats;
use xfrm_user::xfrm::output::{xfrm_output_bundle, Verdict};
use xfrm_user::xfrm::{Clock, SecurityAssociation, SystemClock};

const SIZES: [usize; 3] = [64, 512, 1400];
const KEY128: [u8; 16] = [0x42; 16];
const SALT: [u8; 4] = [1, 2, 3, 4];
const HMAC_KEY: [u8; 32] = [0x17; 32];
const HEADROOM: usize = 128;
const TAILROOM: usize = 256;

fn sa(proto: XfrmProto) -> SecurityAssociation {
    let algorithm = match proto {
        XfrmProto::Esp => SaAlgorithm::Aead {
            algo: AeadAlgo::Rfc4106Gcm,
            key: zeroize::Zeroizing::new(KEY128.to_vec()),
            salt: SALT,
            icv_bits: 128,
        },
        XfrmProto::Ah => SaAlgorithm::Auth {
            algo: AuthAlgo::HmacSha256,
            key: zeroize::Zeroizing::new(HMAC_KEY.to_vec()),
            trunc_bits: 128,
        },
    };
    let id = XfrmId {
        daddr: "192.0.2.2".parse().unwrap(),
        spi: 0x1000,
        proto,
    };
    let saddr: IpAddr = "192.0.2.1".parse().unwrap();
    let cfg = SaConfig {
        flags: SaFlags {
            esn: true, // 64-bit counter: never runs out during a benchmark
            ..Default::default()
        },
        // Lifetimes set (and never reached), so every check runs as it would in service.
        lifetime: Lifetime {
            soft_byte_limit: 1 << 60,
            hard_byte_limit: 1 << 61,
            soft_packet_limit: 1 << 60,
            hard_packet_limit: 1 << 61,
            soft_add_expires_seconds: 1 << 40,
            hard_add_expires_seconds: 1 << 41,
            soft_use_expires_seconds: 1 << 40,
            hard_use_expires_seconds: 1 << 41,
        },
        ..SaConfig::new(id, saddr, 1, XfrmMode::Tunnel, algorithm)
    };
    SecurityAssociation::new(cfg, 0, SystemClock.now()).expect("valid SA")
}

/// RFC 1071, the plain way (independent of the library's checksum code).
fn rfc1071(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u64;
    for p in parts {
        for w in p.chunks(2) {
            sum += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
        }
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// An IPv4 UDP packet of `size` bytes in total, with correct IP and UDP checksums.
fn inner(size: usize, partial: bool) -> Vec<u8> {
    let mut p = vec![0u8; size];
    p[..20].copy_from_slice(&[
        0x45,
        0,
        (size >> 8) as u8,
        size as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
        10,
        1,
        0,
        1,
        10,
        2,
        0,
        1,
    ]);
    let c = !rfc1071(&[&p[..20]]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let ulen = size - 20;
    p[20..28].copy_from_slice(&[0x30, 0x39, 0, 53, (ulen >> 8) as u8, ulen as u8, 0, 0]);
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let mut ph = [0u8; 12];
    ph[..8].copy_from_slice(&p[12..20]);
    ph[9] = 17;
    ph[10..].copy_from_slice(&(ulen as u16).to_be_bytes());
    let mut c = !rfc1071(&[&ph, &p[20..]]);
    if c == 0 {
        c = 0xffff;
    }
    if partial {
        // What the sender's stack leaves for the offload: the pseudo-header sum.
        c = rfc1071(&[&ph]);
    }
    p[26..28].copy_from_slice(&c.to_be_bytes());
    p
}

/// K buffers of one packet size, and how to reset them.
struct Frames {
    pkt: Vec<u8>,
    bufs: Vec<Vec<u8>>,
}

impl Frames {
    fn new(size: usize) -> Self {
        Self::with_packet(inner(size, false))
    }
    fn with_packet(pkt: Vec<u8>) -> Self {
        let size = pkt.len();
        // Together within ~32 KiB (L1d is 48 KiB here), at least 8 and at most 64.
        let k = (32 * 1024 / (HEADROOM + size + TAILROOM)).clamp(8, 64);
        Self {
            pkt,
            bufs: vec![vec![0u8; HEADROOM + size + TAILROOM]; k],
        }
    }
    /// The NIC's part: a fresh copy of the plain packet in every frame. Not timed.
    fn reset(&mut self) {
        let n = self.pkt.len();
        for b in &mut self.bufs {
            b[HEADROOM..HEADROOM + n].copy_from_slice(&self.pkt);
        }
    }
}

/// One side of a comparison: K packets per burst.
trait Side {
    fn frames(&mut self) -> &mut Frames;
    /// Processes every frame once (the timed part).
    fn burst(&mut self);
    /// Untimed reset, then the burst; returns its duration.
    fn timed(&mut self) -> Duration {
        self.frames().reset();
        let t = Instant::now();
        self.burst();
        t.elapsed()
    }
    fn k(&mut self) -> usize {
        self.frames().bufs.len()
    }
}

/// Our output path over an SA the worker has already resolved.
struct Ours {
    x: SecurityAssociation,
    stats: XfrmStats,
    f: Frames,
    /// The inner checksum is partial, and said to be.
    partial: bool,
}

impl Ours {
    fn new(proto: XfrmProto, size: usize) -> Self {
        Self {
            x: sa(proto),
            stats: XfrmStats::new(),
            f: Frames::new(size),
            partial: false,
        }
    }
    fn partial(size: usize) -> Self {
        Self {
            f: Frames::with_packet(inner(size, true)),
            partial: true,
            ..Self::new(XfrmProto::Esp, size)
        }
    }
}

impl Side for Ours {
    fn frames(&mut self) -> &mut Frames {
        &mut self.f
    }
    #[inline(never)]
    fn burst(&mut self) {
        // The worker's coarse clock: read once per batch.
        let now = SystemClock.now();
        let n = self.f.pkt.len();
        let xs = [&self.x];
        for b in &mut self.f.bufs {
            let mut fr = Frame::new(b, HEADROOM, n);
            let v = xfrm_output_bundle(&xs, &self.stats, &mut fr, self.partial, now);
            assert_eq!(v, Verdict::Transformed);
            black_box(fr.len());
        }
    }
}

/// ring's AES-128-GCM seal of `size` bytes in place, tag appended.
struct RingGcm {
    key: aead::LessSafeKey,
    seq: u64,
    f: Frames,
}

impl RingGcm {
    fn new(size: usize) -> Self {
        Self {
            key: aead::LessSafeKey::new(
                aead::UnboundKey::new(&aead::AES_128_GCM, &KEY128).expect("key"),
            ),
            seq: 0,
            f: Frames::new(size),
        }
    }
}

impl Side for RingGcm {
    fn frames(&mut self) -> &mut Frames {
        &mut self.f
    }
    #[inline(never)]
    fn burst(&mut self) {
        let n = self.f.pkt.len();
        for b in &mut self.f.bufs {
            self.seq += 1;
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(&SALT);
            nonce[4..].copy_from_slice(&self.seq.to_be_bytes());
            let mut aad = [0u8; 8];
            aad[4..].copy_from_slice(&(self.seq as u32).to_be_bytes());
            let (text, tail) = b[HEADROOM..].split_at_mut(n);
            let tag = self
                .key
                .seal_in_place_separate_tag(
                    aead::Nonce::assume_unique_for_key(nonce),
                    aead::Aad::from(black_box(&aad)),
                    text,
                )
                .expect("seal");
            tail[..16].copy_from_slice(tag.as_ref());
        }
    }
}

/// ring's HMAC-SHA-256 over `size` bytes, truncated to 128 bits into the buffer.
struct RingHmac {
    key: ring::hmac::Key,
    f: Frames,
}

impl RingHmac {
    fn new(size: usize) -> Self {
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &HMAC_KEY),
            f: Frames::new(size),
        }
    }
}

impl Side for RingHmac {
    fn frames(&mut self) -> &mut Frames {
        &mut self.f
    }
    #[inline(never)]
    fn burst(&mut self) {
        let n = self.f.pkt.len();
        for b in &mut self.f.bufs {
            let (data, tail) = b[HEADROOM..].split_at_mut(n);
            let tag = ring::hmac::sign(&self.key, data);
            tail[..16].copy_from_slice(&tag.as_ref()[..16]);
        }
    }
}

/// criterion's view: per packet, from whole bursts.
fn bench_side(b: &mut criterion::Bencher<'_>, side: &mut dyn Side) {
    b.iter_custom(|iters| {
        let k = side.k() as u64;
        let mut total = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            total += side.timed();
            done += k;
        }
        // Scale to the number of iterations criterion asked for.
        total.mul_f64(iters as f64 / done as f64)
    })
}

fn criterion_groups(c: &mut Criterion) {
    let mut g = c.benchmark_group("transform");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let mut esp = Ours::new(XfrmProto::Esp, size);
        g.bench_function(BenchmarkId::new("esp_tunnel_aes128gcm", size), |b| {
            bench_side(b, &mut esp)
        });
        let mut ring = RingGcm::new(size);
        g.bench_function(BenchmarkId::new("ring_aes128gcm_seal", size), |b| {
            bench_side(b, &mut ring)
        });
        let mut ah = Ours::new(XfrmProto::Ah, size);
        g.bench_function(BenchmarkId::new("ah_tunnel_hmac_sha256_128", size), |b| {
            bench_side(b, &mut ah)
        });
        let mut hmac = RingHmac::new(size);
        g.bench_function(BenchmarkId::new("ring_hmac_sha256", size), |b| {
            bench_side(b, &mut hmac)
        });
    }
    g.finish();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// What two `Instant::now` around an empty burst cost, in ns (median of many).
fn timer_cost() -> f64 {
    let mut v: Vec<f64> = (0..10_001)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            t.elapsed().as_nanos() as f64
        })
        .collect();
    median(&mut v)
}

/// Rounds of the paired measurement; bursts of each side per round.
const ROUNDS: usize = 301;

/// Alternating rounds of ring and ours, each a few bursts; per round the ns per packet of
/// each side (timer cost taken off). Returns the median ns of ring, of ours, and the median
/// of the per-round ratios time(ring) / time(ours).
fn paired(ring: &mut dyn Side, ours: &mut dyn Side, timer: f64) -> (f64, f64, f64) {
    let k = ring.k();
    assert_eq!(k, ours.k());
    // ~20 us of work per side and round.
    let bursts = (20_000 / (k * 100)).max(1);
    let side_ns = |s: &mut dyn Side| {
        let mut ns = 0.0;
        for _ in 0..bursts {
            ns += s.timed().as_nanos() as f64 - timer;
        }
        ns / (bursts * k) as f64
    };
    for _ in 0..20 {
        side_ns(ring);
        side_ns(ours);
    }
    let (mut rs, mut os, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let r = side_ns(ring);
        let o = side_ns(ours);
        rs.push(r);
        os.push(o);
        ratios.push(r / o);
    }
    (median(&mut rs), median(&mut os), median(&mut ratios))
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    criterion_groups(&mut c);
    c.final_summary();
    // Only when benchmarking (`cargo test --benches` runs this unoptimised), and not under
    // a profiler (`--profile-time`).
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") || args.iter().any(|a| a == "--profile-time") {
        return;
    }
    // Which AES-GCM the ESP rows ran (XFRM_GCM_NO_VAES=1 forces ring's AES-NI/AVX2 code
    // where the CPU has VAES, as on machines without it).
    let backend = xfrm_user::crypto::gcm::GcmKey::new(&[0; 16], [0; 4]).map(|k| k.backend());
    println!("gcm_backend={}", backend.unwrap_or("none"));
    let timer = timer_cost();
    println!("timer_ns={timer:.1}");
    let mut last = 0.0;
    for size in SIZES {
        let (r, o, ratio) = paired(
            &mut RingGcm::new(size),
            &mut Ours::new(XfrmProto::Esp, size),
            timer,
        );
        println!(
            "esp_ns_{size} ring={r:.1} ours={o:.1} overhead={:.1}",
            o - r
        );
        println!("ratio_vs_ring_{size}={ratio:.3}");
        last = ratio;
    }
    for size in SIZES {
        let (r, o, ratio) = paired(&mut RingGcm::new(size), &mut Ours::partial(size), timer);
        println!("esp_partial_ns_{size} ring={r:.1} ours={o:.1}");
        println!("ratio_partial_vs_ring_{size}={ratio:.3}");
    }
    for size in SIZES {
        let (r, o, ratio) = paired(
            &mut RingHmac::new(size),
            &mut Ours::new(XfrmProto::Ah, size),
            timer,
        );
        println!("ah_ns_{size} ring_hmac={r:.1} ours={o:.1}");
        println!("ratio_ah_vs_ring_hmac_{size}={ratio:.3}");
    }
    // The acceptance line: ESP at 1400 bytes, last.
    println!("ratio_vs_ring_1400={last:.3}");
}
