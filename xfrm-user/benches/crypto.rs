//! Benchmarks of the crypto primitives of xfrm-user, with ring's own AES-128-GCM as the
//! reference measured in the same run.
//!
//! `cargo bench -p xfrm-user --bench crypto -- --warm-up-time 1 --measurement-time 2`
//!
//! After criterion's report, one line per size and backend:
//! `ratio_<ours>_vs_ring_<size>=<x>` with x = time(ring) / time(ours), i.e. our throughput
//! over ring's (1.0 = as fast as ring). Times are the median ns/iteration over all the
//! samples criterion took of that benchmark.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{Bencher, BenchmarkId, Criterion, Throughput};
use ring::aead;
use xfrm_user::crypto::gcm::GcmKey;
use xfrm_user::crypto::HmacKey;
use xfrm_user::sa::AuthAlgo;

const SIZES: [usize; 3] = [64, 512, 1400];
/// ESP AAD without ESN: SPI | sequence number.
const AAD: [u8; 8] = [0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x01];
const KEY128: [u8; 16] = [0x42; 16];
const SALT: [u8; 4] = [1, 2, 3, 4];
const IV: [u8; 8] = [9; 8];

/// ns per iteration of every sample, by benchmark id.
static SAMPLES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Like `Bencher::iter`, also recording each sample's time per iteration under `id`.
fn timed(b: &mut Bencher, id: String, mut f: impl FnMut()) {
    b.iter_custom(|iters| {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        let elapsed = start.elapsed();
        if iters > 0 {
            SAMPLES
                .lock()
                .unwrap()
                .entry(id.clone())
                .or_default()
                .push(elapsed.as_nanos() as f64 / iters as f64);
        }
        elapsed
    });
}

fn gcm_seal(c: &mut Criterion) {
    let ring_key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_128_GCM, &KEY128).expect("AES-128 key"),
    );
    let ours = GcmKey::new(&KEY128, SALT).expect("AES-128 key");
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&SALT);
    nonce[4..].copy_from_slice(&IV);

    let mut g = c.benchmark_group("aes128gcm_seal");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0xa5u8; size];
        g.bench_function(BenchmarkId::new("ring", size), |b| {
            timed(b, format!("ring/{size}"), || {
                let n = aead::Nonce::assume_unique_for_key(black_box(nonce));
                let tag = ring_key
                    .seal_in_place_separate_tag(n, aead::Aad::from(black_box(&AAD)), &mut buf)
                    .expect("seal");
                black_box(&tag);
            })
        });
        g.bench_function(BenchmarkId::new("GcmKey", size), |b| {
            timed(b, format!("GcmKey/{size}"), || {
                let mut tag = [0u8; 16];
                ours.seal_in_place(black_box(&IV), black_box(&AAD), &mut buf, &mut tag)
                    .expect("seal");
                black_box(tag);
            })
        });
        g.bench_function(BenchmarkId::new("portable", size), |b| {
            timed(b, format!("portable/{size}"), || {
                let mut tag = [0u8; 16];
                ours.portable()
                    .seal_in_place(black_box(&IV), black_box(&AAD), &mut buf, &mut tag)
                    .expect("seal");
                black_box(tag);
            })
        });
    }
    g.finish();
}

/// Open: 16-byte ICV (ring) and 12-byte ICV (portable, ring cannot check truncated tags).
fn gcm_open(c: &mut Criterion) {
    let ours = GcmKey::new(&KEY128, SALT).expect("AES-128 key");
    let mut g = c.benchmark_group("aes128gcm_open");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        for icv in [16usize, 12] {
            let pt = vec![0xa5u8; size];
            let mut ct = pt.clone();
            let mut tag = [0u8; 16];
            ours.seal_in_place(&IV, &AAD, &mut ct, &mut tag[..icv])
                .expect("seal");
            let mut buf = ct.clone();
            g.bench_function(BenchmarkId::new(format!("GcmKey_icv{icv}"), size), |b| {
                timed(b, format!("open_icv{icv}/{size}"), || {
                    buf.copy_from_slice(&ct);
                    ours.open_in_place(black_box(&IV), black_box(&AAD), &mut buf, &tag[..icv])
                        .expect("open");
                })
            });
        }
    }
    g.finish();
}

fn hmac(c: &mut Criterion) {
    for (name, algo, icv) in [
        ("hmac_sha256_128", AuthAlgo::HmacSha256, 16usize),
        ("hmac_sha1_96", AuthAlgo::HmacSha1, 12),
    ] {
        let key = HmacKey::new(algo, &[0x0b; 32]);
        let mut g = c.benchmark_group(name);
        for size in SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            let data = vec![0x5au8; size];
            g.bench_function(BenchmarkId::new("sign", size), |b| {
                timed(b, format!("{name}/{size}"), || {
                    let mut out = [0u8; 16];
                    key.sign(&[black_box(&data)], &mut out[..icv]);
                    black_box(out);
                })
            });
        }
        g.finish();
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

fn print_ratios() {
    let mut samples = SAMPLES.lock().unwrap();
    let mut med = |id: &str| samples.get_mut(id).and_then(|v| median(v));
    for size in SIZES {
        let Some(ring) = med(&format!("ring/{size}")) else {
            continue;
        };
        println!("median_ns ring_aes128gcm_seal_{size}={ring:.1}");
        for ours in ["GcmKey", "portable"] {
            if let Some(t) = med(&format!("{ours}/{size}")) {
                println!("median_ns {ours}_seal_{size}={t:.1}");
                println!("ratio_{ours}_vs_ring_{size}={:.3}", ring / t);
            }
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    gcm_seal(&mut c);
    gcm_open(&mut c);
    hmac(&mut c);
    c.final_summary();
    print_ratios();
}
