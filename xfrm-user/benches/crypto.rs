//! Benchmarks of the crypto primitives of xfrm-user, with ring's own AES-128-GCM as the
//! reference measured in the same run.
//!
//! `cargo bench -p xfrm-user --bench crypto -- --warm-up-time 1 --measurement-time 2`
//!
//! After criterion's report, a paired measurement of the seals against ring prints per size
//! `seal_ns_<size> ring=<ns> GcmKey=<ns> portable=<ns>` and one line per backend
//! `ratio_<ours>_vs_ring_<size>=<x>`, x = time(ring) / time(ours), i.e. our throughput over
//! ring's (1.0 = as fast as ring). The machine is shared, so instead of comparing numbers
//! taken seconds apart, ring and ours run alternately in short bursts and the ratio is the
//! median of the per-round ratios. The same for HMAC-SHA-256-128 against ring's HMAC.
//!
//! The other ESP algorithms (`print_esp_algo_ratios`): one ESP seal as esp_output does it
//! (IV, encryption, ICV over SPI | seq | IV | ciphertext) per size, paired against the
//! fastest other library available in the same run: AWS-LC (aws-lc-rs, with the
//! `aws-lc-peer` feature that `cargo xtask bench` turns on) for cbc(aes)/rfc3686(ctr(aes))
//! with HMAC and for ChaCha20-Poly1305, ring's HMAC for cipher_null, and RustCrypto's
//! `chacha20poly1305`. Lines `ratio_vs_<peer>_<algo>_<size>=<x>`, x > 1: ours is faster.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use ring::aead;
use xfrm_user::crypto::gcm::GcmKey;
use xfrm_user::crypto::{AuthEnc, ChaChaKey, EspAead, HmacKey};
use xfrm_user::sa::{AuthAlgo, EncAlgo};

const SIZES: [usize; 3] = [64, 512, 1400];
/// ESP AAD without ESN: SPI | sequence number.
const AAD: [u8; 8] = [0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x01];
const KEY128: [u8; 16] = [0x42; 16];
const SALT: [u8; 4] = [1, 2, 3, 4];
const IV: [u8; 8] = [9; 8];

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
            b.iter(|| {
                let n = aead::Nonce::assume_unique_for_key(black_box(nonce));
                let tag = ring_key
                    .seal_in_place_separate_tag(n, aead::Aad::from(black_box(&AAD)), &mut buf)
                    .expect("seal");
                // Like any ESP user of ring: the tag goes into the packet.
                let mut icv = [0u8; 16];
                icv.copy_from_slice(tag.as_ref());
                black_box(icv);
            })
        });
        g.bench_function(BenchmarkId::new("GcmKey", size), |b| {
            b.iter(|| {
                let mut tag = [0u8; 16];
                ours.seal_in_place(black_box(&IV), black_box(&AAD), &mut buf, &mut tag)
                    .expect("seal");
                black_box(tag);
            })
        });
        g.bench_function(BenchmarkId::new("portable", size), |b| {
            b.iter(|| {
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
                b.iter(|| {
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
                b.iter(|| {
                    let mut out = [0u8; 16];
                    key.sign(&[black_box(&data)], &mut out[..icv]);
                    black_box(out);
                })
            });
        }
        g.finish();
    }
}

/// Rounds of the paired measurement and calls per burst.
const ROUNDS: usize = 301;
const BURST: u32 = 100;

fn burst(f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..BURST {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(BURST)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `ring` and each of `ours` alternately, ROUNDS times; returns ring's median ns per
/// call and, per entry of `ours`, (median ns per call, median of time(ring)/time(ours)).
fn paired(ring: &mut dyn FnMut(), ours: &mut [&mut dyn FnMut()]) -> (f64, Vec<(f64, f64)>) {
    let mut ring_ns = Vec::with_capacity(ROUNDS);
    let mut ours_ns = vec![Vec::with_capacity(ROUNDS); ours.len()];
    let mut ratios = vec![Vec::with_capacity(ROUNDS); ours.len()];
    for _ in 0..ROUNDS {
        let r = burst(ring);
        ring_ns.push(r);
        for (i, f) in ours.iter_mut().enumerate() {
            let t = burst(*f);
            ours_ns[i].push(t);
            ratios[i].push(r / t);
        }
    }
    let out = ours_ns
        .iter_mut()
        .zip(ratios.iter_mut())
        .map(|(t, r)| (median(t), median(r)))
        .collect();
    (median(&mut ring_ns), out)
}

fn print_ratios() {
    let ring_key = aead::LessSafeKey::new(
        aead::UnboundKey::new(&aead::AES_128_GCM, &KEY128).expect("AES-128 key"),
    );
    let ours = GcmKey::new(&KEY128, SALT).expect("AES-128 key");
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&SALT);
    nonce[4..].copy_from_slice(&IV);
    for size in SIZES {
        let mut b1 = vec![0xa5u8; size];
        let mut b2 = b1.clone();
        let mut b3 = b1.clone();
        let mut ring = || {
            let n = aead::Nonce::assume_unique_for_key(black_box(nonce));
            let tag = ring_key
                .seal_in_place_separate_tag(n, aead::Aad::from(black_box(&AAD)), &mut b1)
                .expect("seal");
            let mut icv = [0u8; 16];
            icv.copy_from_slice(tag.as_ref());
            black_box(icv);
        };
        let mut gcm_key = || {
            let mut tag = [0u8; 16];
            ours.seal_in_place(black_box(&IV), black_box(&AAD), &mut b2, &mut tag)
                .expect("seal");
            black_box(tag);
        };
        let mut portable = || {
            let mut tag = [0u8; 16];
            ours.portable()
                .seal_in_place(black_box(&IV), black_box(&AAD), &mut b3, &mut tag)
                .expect("seal");
            black_box(tag);
        };
        let (ring_ns, r) = paired(&mut ring, &mut [&mut gcm_key, &mut portable]);
        println!(
            "seal_ns_{size} ring={ring_ns:.1} GcmKey={:.1} portable={:.1}",
            r[0].0, r[1].0
        );
        println!("ratio_GcmKey_vs_ring_{size}={:.3}", r[0].1);
        println!("ratio_portable_vs_ring_{size}={:.3}", r[1].1);
    }
    // HMAC-SHA-256 (hmac + sha2 crates, SHA-NI via cpufeatures) against ring's HMAC.
    let ring_hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[0x0b; 32]);
    let ours = HmacKey::new(AuthAlgo::HmacSha256, &[0x0b; 32]);
    for size in SIZES {
        let data = vec![0x5au8; size];
        let mut ring = || {
            let tag = ring::hmac::sign(&ring_hmac, black_box(&data));
            let mut icv = [0u8; 16];
            icv.copy_from_slice(&tag.as_ref()[..16]);
            black_box(icv);
        };
        let mut hmac = || {
            let mut icv = [0u8; 16];
            ours.sign(&[black_box(&data)], &mut icv);
            black_box(icv);
        };
        let (ring_ns, r) = paired(&mut ring, &mut [&mut hmac]);
        println!(
            "hmac_sha256_ns_{size} ring={ring_ns:.1} HmacKey={:.1}",
            r[0].0
        );
        println!("ratio_HmacKey_vs_ring_{size}={:.3}", r[0].1);
    }
}

/// One ESP packet's protected part for `size` bytes of payload: SPI | seq | IV | payload
/// (padded to 16 for CBC) | ICV room.
fn esp_buf(iv_len: usize, size: usize, icv: usize) -> (Vec<u8>, usize) {
    let text = size.div_ceil(16) * 16;
    let mut b = vec![0x5au8; 8 + iv_len + text + icv];
    b[..8].copy_from_slice(&AAD);
    (b, 8 + iv_len + text)
}

/// Ours: `AuthEnc` as esp_output calls it (IV from the sequence number, encrypt, HMAC).
fn ours_enc_auth(a: &AuthEnc, buf: &mut [u8], end: usize, seq: u64) {
    let iv_len = a.cipher.iv_len();
    let (esp, icv) = buf.split_at_mut(end);
    a.cipher.make_iv(seq, &mut esp[8..8 + iv_len]);
    a.seal(esp, 8 + iv_len, None, &mut icv[..a.icv_len])
        .expect("seal");
}

#[cfg(feature = "aws-lc-peer")]
mod awslc {
    use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128, AES_256};
    use aws_lc_rs::{aead, hmac};

    /// AES-CBC or AES-CTR then HMAC, with AWS-LC.
    pub struct EncAuth {
        key: EncryptingKey,
        mac: hmac::Key,
        icv: usize,
        iv_len: usize,
    }

    impl EncAuth {
        pub fn new(
            cbc: bool,
            key: &[u8],
            mac: hmac::Algorithm,
            mac_key: &[u8],
            icv: usize,
        ) -> Self {
            let alg = if key.len() == 16 { &AES_128 } else { &AES_256 };
            let k = UnboundCipherKey::new(alg, key).expect("AES key");
            let key = if cbc {
                EncryptingKey::cbc(k)
            } else {
                EncryptingKey::ctr(k)
            };
            Self {
                key: key.expect("key"),
                mac: hmac::Key::new(mac, mac_key),
                icv,
                iv_len: if cbc { 16 } else { 8 },
            }
        }
        /// The same work as ours: encrypt the text after the IV, sign the whole.
        pub fn seal(&self, buf: &mut [u8], end: usize, seq: u64) {
            let mut iv = [0u8; 16];
            iv[8..].copy_from_slice(&seq.to_be_bytes());
            buf[8..8 + self.iv_len].copy_from_slice(&iv[16 - self.iv_len..]);
            let (esp, out) = buf.split_at_mut(end);
            self.key
                .less_safe_encrypt(
                    &mut esp[8 + self.iv_len..],
                    EncryptionContext::Iv128(iv.into()),
                )
                .expect("encrypt");
            let tag = hmac::sign(&self.mac, esp);
            out[..self.icv].copy_from_slice(&tag.as_ref()[..self.icv]);
        }
    }

    pub fn chacha(key: &[u8]) -> aead::LessSafeKey {
        aead::LessSafeKey::new(aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key).expect("key"))
    }

    pub fn chacha_seal(
        k: &aead::LessSafeKey,
        nonce: [u8; 12],
        aad: &[u8],
        text: &mut [u8],
    ) -> [u8; 16] {
        let tag = k
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                text,
            )
            .expect("seal");
        let mut t = [0u8; 16];
        t.copy_from_slice(tag.as_ref());
        t
    }

    pub const HMAC_SHA256: hmac::Algorithm = hmac::HMAC_SHA256;
    pub const HMAC_SHA512: hmac::Algorithm = hmac::HMAC_SHA512;
}

/// The enc + auth algorithms and ChaCha20-Poly1305 against the other libraries (see the
/// module comment).
fn print_esp_algo_ratios() {
    let ek16 = [0x42u8; 16];
    let ek32 = [0x42u8; 32];
    let ak = [0x0bu8; 64];
    let cases: [(&str, EncAlgo, &[u8], AuthAlgo, usize); 4] = [
        (
            "cbc128_sha256",
            EncAlgo::AesCbc,
            &ek16,
            AuthAlgo::HmacSha256,
            16,
        ),
        (
            "cbc256_sha512",
            EncAlgo::AesCbc,
            &ek32,
            AuthAlgo::HmacSha512,
            32,
        ),
        (
            "ctr128_sha256",
            EncAlgo::AesCtr,
            &[0x42; 20],
            AuthAlgo::HmacSha256,
            16,
        ),
        ("null_sha256", EncAlgo::Null, &[], AuthAlgo::HmacSha256, 16),
    ];
    for (name, enc, key, auth, icv) in cases {
        let akey = &ak[..auth.full_bits() as usize / 8];
        let ours = AuthEnc::new(enc, key, auth, akey, icv).expect("key");
        for size in SIZES {
            let (mut b1, end) = esp_buf(enc.iv_len(), size, icv);
            let mut b2 = b1.clone();
            let mut seq = 0u64;
            let mut mine = || {
                seq += 1;
                ours_enc_auth(&ours, &mut b1, end, seq);
                black_box(&b1);
            };
            if enc == EncAlgo::Null {
                // No cipher: the peer is the fastest HMAC, ring's.
                let rk = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, akey);
                let mut peer = || {
                    let (esp, out) = b2.split_at_mut(end);
                    let tag = ring::hmac::sign(&rk, black_box(esp));
                    out[..16].copy_from_slice(&tag.as_ref()[..16]);
                    black_box(&b2);
                };
                let (peer_ns, r) = paired(&mut peer, &mut [&mut mine]);
                println!("{name}_ns_{size} ring={peer_ns:.1} ours={:.1}", r[0].0);
                println!("ratio_vs_ring_{name}_{size}={:.3}", r[0].1);
                continue;
            }
            #[cfg(feature = "aws-lc-peer")]
            {
                let mac = if auth == AuthAlgo::HmacSha512 {
                    awslc::HMAC_SHA512
                } else {
                    awslc::HMAC_SHA256
                };
                let aes_key = if enc == EncAlgo::AesCtr {
                    &key[..16]
                } else {
                    key
                };
                let peer_key = awslc::EncAuth::new(enc == EncAlgo::AesCbc, aes_key, mac, akey, icv);
                let mut s2 = 0u64;
                let mut peer = || {
                    s2 += 1;
                    peer_key.seal(&mut b2, end, s2);
                    black_box(&b2);
                };
                let (peer_ns, r) = paired(&mut peer, &mut [&mut mine]);
                println!("{name}_ns_{size} awslc={peer_ns:.1} ours={:.1}", r[0].0);
                println!("ratio_vs_awslc_{name}_{size}={:.3}", r[0].1);
            }
            #[cfg(not(feature = "aws-lc-peer"))]
            {
                let _ = (&mut b2, &mut mine);
                println!("{name}_{size}: no peer without the aws-lc-peer feature");
            }
        }
    }

    // ChaCha20-Poly1305: ours is ring's; against RustCrypto and AWS-LC.
    use chacha20poly1305::aead::{AeadInPlace, KeyInit};
    let ours = ChaChaKey::new(&ek32, SALT).expect("key");
    let rc = chacha20poly1305::ChaCha20Poly1305::new_from_slice(&ek32).expect("key");
    #[cfg(feature = "aws-lc-peer")]
    let al = awslc::chacha(&ek32);
    for size in SIZES {
        let mut b1 = vec![0xa5u8; size];
        let mut b2 = b1.clone();
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&SALT);
        nonce[4..].copy_from_slice(&IV);
        let mut mine = || {
            let mut tag = [0u8; 16];
            EspAead::seal(&ours, black_box(&IV), black_box(&AAD), &mut b1, &mut tag).expect("seal");
            black_box(tag);
        };
        let mut rustcrypto = || {
            let tag = rc
                .encrypt_in_place_detached(black_box(&nonce.into()), black_box(&AAD), &mut b2)
                .expect("seal");
            black_box(tag);
        };
        let (peer_ns, r) = paired(&mut rustcrypto, &mut [&mut mine]);
        println!(
            "chacha20poly1305_ns_{size} rustcrypto={peer_ns:.1} ours={:.1}",
            r[0].0
        );
        println!("ratio_vs_rustcrypto_chacha20poly1305_{size}={:.3}", r[0].1);
        #[cfg(feature = "aws-lc-peer")]
        {
            let mut b3 = vec![0xa5u8; size];
            let mut aws = || {
                black_box(awslc::chacha_seal(&al, black_box(nonce), &AAD, &mut b3));
            };
            let (peer_ns, r) = paired(&mut aws, &mut [&mut mine]);
            println!(
                "chacha20poly1305_ns_{size} awslc={peer_ns:.1} ours={:.1}",
                r[0].0
            );
            println!("ratio_vs_awslc_chacha20poly1305_{size}={:.3}", r[0].1);
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
    // Only when benchmarking: `cargo test --benches` runs this unoptimised.
    if std::env::args().any(|a| a == "--bench") {
        print_ratios();
        print_esp_algo_ratios();
    }
}
