//! What the two VAES GCMs (`gcm_vaes`, 512-bit with AVX-512; `gcm_vaes256`, 256-bit with
//! AVX2) share: the AES key schedule, GHASH's key H and its powers in POLYVAL's field,
//! POLYVAL's multiplication and reduction, the tag, and the CPU's feature list.
//!
//! GHASH is computed as POLYVAL (RFC 8452 appendix A): GHASH(H, X1..Xn) =
//! ByteReverse(POLYVAL(mulX_POLYVAL(ByteReverse(H)), ByteReverse(X1), ..)), the same
//! identity the `ghash` crate is built on; POLYVAL's field has the simpler reduction (two
//! carry-less multiplications by x^127 + x^126 + x^121, Gueron's GCM-SIV code).

use core::arch::x86_64::*;

use subtle::ConstantTimeEq;

use super::CryptoError;

/// One of our VAES GCMs: its `crypt`, and ESP's seal and open over it.
pub(super) trait VaesCrypt {
    /// GCM encryption (SEAL) or decryption in place; returns the full tag (computed over
    /// the ciphertext: the output when sealing, the input when opening).
    ///
    /// # Safety
    /// The CPU has the implementor's features (its constructors check them).
    unsafe fn crypt<const SEAL: bool>(
        &self,
        salt: &[u8; 4],
        iv: &[u8; 8],
        aad: &[u8],
        data: &mut [u8],
    ) -> [u8; 16];

    /// Seal in place: `tag` gets the first tag.len() bytes (at most 16) of the GCM tag.
    fn seal(
        &self,
        salt: &[u8; 4],
        iv: &[u8; 8],
        aad: &[u8],
        data: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), CryptoError> {
        if tag.len() > 16 {
            return Err(CryptoError::BadIcvLength(tag.len()));
        }
        // SAFETY: an implementor exists only where the CPU has its features.
        let full = unsafe { self.crypt::<true>(salt, iv, aad, data) };
        tag.copy_from_slice(&full[..tag.len()]);
        Ok(())
    }

    /// Open in place: decrypts and checks `tag` (a prefix of the full tag) in constant
    /// time. On Err `data` holds unauthenticated plaintext that must not be used.
    fn open(
        &self,
        salt: &[u8; 4],
        iv: &[u8; 8],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        // SAFETY: as in `seal`.
        let full = unsafe { self.crypt::<false>(salt, iv, aad, data) };
        if bool::from(full[..tag.len()].ct_eq(tag)) {
            Ok(())
        } else {
            Err(CryptoError::IcvMismatch)
        }
    }
}

/// Round keys of an AES-128 or AES-256 key (11 or 15 used), as __m128i bytes, and the
/// number of rounds (10 or 14). `key` must be 16 or 32 bytes.
#[target_feature(enable = "aes,sse2")]
pub(super) fn round_keys(key: &[u8]) -> ([u128; 15], usize) {
    let mut rk = [_mm_setzero_si128(); 15];
    let rounds = if key.len() == 16 {
        expand128(key, &mut rk);
        10
    } else {
        expand256(key, &mut rk);
        14
    };
    let mut out = [0u128; 15];
    for (d, s) in out.iter_mut().zip(rk.iter()) {
        *d = m128_to_u128(*s);
    }
    (out, rounds)
}

/// One block through AES with round keys `rk` (from [`round_keys`]).
#[target_feature(enable = "aes,sse2")]
#[inline]
pub(super) fn encrypt_block(rk: &[u128; 15], rounds: usize, mut b: __m128i) -> __m128i {
    let k = |i: usize| u128_to_m128(rk[i]);
    b = _mm_xor_si128(b, k(0));
    for i in 1..rounds {
        b = _mm_aesenc_si128(b, k(i));
    }
    _mm_aesenclast_si128(b, k(rounds))
}

/// `table[i] = H'^(table.len() - i)`: the highest power first, H' = mulX(ByteReverse(H))
/// with H = E_K(0^128), GHASH's key in POLYVAL's field.
#[target_feature(enable = "aes,pclmulqdq,sse2")]
pub(super) fn h_powers(rk: &[u128; 15], rounds: usize, table: &mut [u128]) {
    let h = encrypt_block(rk, rounds, _mm_setzero_si128());
    let h = u128::from_le_bytes(m128_to_u128(h).to_be_bytes());
    let hi = h >> 127;
    let h = (h << 1) ^ hi ^ (hi << 127) ^ (hi << 126) ^ (hi << 121);
    let h1 = u128_to_m128(h);
    let mut p = h1;
    for t in table.iter_mut().rev() {
        *t = m128_to_u128(p);
        let (lo, mid, hi) = mul_parts(p, h1);
        p = reduce(lo, mid, hi);
    }
}

/// J0 = salt || IV || 0^31 || 1 (the tag is masked with E(J0); data blocks count from 2).
#[target_feature(enable = "sse2")]
#[inline]
pub(super) fn j0(salt: &[u8; 4], iv: &[u8; 8]) -> __m128i {
    let mut j0 = [0u8; 16];
    j0[..4].copy_from_slice(salt);
    j0[4..12].copy_from_slice(iv);
    j0[15] = 1;
    // SAFETY: 16 bytes.
    unsafe { _mm_loadu_si128(j0.as_ptr().cast()) }
}

/// The length block: bit lengths of the AAD and the text (byte-reflected, as the hash
/// takes its blocks).
#[target_feature(enable = "sse2")]
#[inline]
pub(super) fn len_block(aad_len: usize, text_len: usize) -> __m128i {
    _mm_set_epi64x((aad_len as u64 * 8) as i64, (text_len as u64 * 8) as i64)
}

/// vpshufb mask reversing the 16 bytes of a lane.
#[target_feature(enable = "sse2")]
#[inline]
pub(super) fn rev128() -> __m128i {
    _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
}

/// The tag: GHASH back in its byte order, masked with E(J0).
#[target_feature(enable = "ssse3")]
#[inline]
pub(super) fn finish(y: __m128i, ej0: __m128i) -> [u8; 16] {
    let t = _mm_xor_si128(_mm_shuffle_epi8(y, rev128()), ej0);
    m128_to_u128(t).to_le_bytes()
}

/// Of `features` (/proc/cpuinfo's names), those this CPU lacks.
pub(super) fn missing(features: &[&'static str]) -> Vec<&'static str> {
    features
        .iter()
        .copied()
        .filter(|f| !has_feature(f))
        .collect()
}

fn has_feature(f: &str) -> bool {
    match f {
        "aes" => std::is_x86_feature_detected!("aes"),
        "pclmulqdq" => std::is_x86_feature_detected!("pclmulqdq"),
        "avx2" => std::is_x86_feature_detected!("avx2"),
        "avx512f" => std::is_x86_feature_detected!("avx512f"),
        "avx512bw" => std::is_x86_feature_detected!("avx512bw"),
        "avx512vl" => std::is_x86_feature_detected!("avx512vl"),
        "vaes" => std::is_x86_feature_detected!("vaes"),
        "vpclmulqdq" => std::is_x86_feature_detected!("vpclmulqdq"),
        _ => false,
    }
}

#[inline]
pub(super) fn m128_to_u128(v: __m128i) -> u128 {
    // SAFETY: both are 16 plain bytes.
    unsafe { core::mem::transmute::<__m128i, u128>(v) }
}

#[inline]
pub(super) fn u128_to_m128(v: u128) -> __m128i {
    // SAFETY: both are 16 plain bytes.
    unsafe { core::mem::transmute::<u128, __m128i>(v) }
}

/// The 256-bit carry-less product a*b as (low, middle, high) parts: low = a0*b0,
/// high = a1*b1, middle = a0*b1 ^ a1*b0.
#[target_feature(enable = "pclmulqdq,sse2")]
#[inline]
pub(super) fn mul_parts(a: __m128i, b: __m128i) -> (__m128i, __m128i, __m128i) {
    (
        _mm_clmulepi64_si128::<0x00>(a, b),
        _mm_xor_si128(
            _mm_clmulepi64_si128::<0x01>(a, b),
            _mm_clmulepi64_si128::<0x10>(a, b),
        ),
        _mm_clmulepi64_si128::<0x11>(a, b),
    )
}

/// POLYVAL's reduction of a 256-bit product (low, middle, high) to lo·hi·x^-128: two
/// multiplications by the constant 0xc2000000_00000000 (x^127 + x^126 + x^121 in the
/// reflected order), as in Gueron's GCM-SIV GFMUL.
#[target_feature(enable = "pclmulqdq,sse2")]
#[inline]
pub(super) fn reduce(lo: __m128i, mid: __m128i, hi: __m128i) -> __m128i {
    let lo = _mm_xor_si128(lo, _mm_slli_si128::<8>(mid));
    let hi = _mm_xor_si128(hi, _mm_srli_si128::<8>(mid));
    let poly = _mm_set_epi64x(0xc200_0000_0000_0000_u64 as i64, 1);
    let t = _mm_clmulepi64_si128::<0x10>(lo, poly);
    let lo = _mm_xor_si128(_mm_shuffle_epi32::<0x4e>(lo), t);
    let t = _mm_clmulepi64_si128::<0x10>(lo, poly);
    let lo = _mm_xor_si128(_mm_shuffle_epi32::<0x4e>(lo), t);
    _mm_xor_si128(lo, hi)
}

/// One step of the AES key schedule: the previous round key with its words chained
/// (w0, w0^w1, w0^w1^w2, ..) XOR the broadcast word from aeskeygenassist.
#[target_feature(enable = "aes,sse2")]
#[inline]
fn key_mix(t: __m128i, assist: __m128i) -> __m128i {
    let mut t = t;
    let mut s = _mm_slli_si128::<4>(t);
    t = _mm_xor_si128(t, s);
    s = _mm_slli_si128::<4>(s);
    t = _mm_xor_si128(t, s);
    s = _mm_slli_si128::<4>(s);
    t = _mm_xor_si128(t, s);
    _mm_xor_si128(t, assist)
}

/// AES-128 key expansion (FIPS 197 section 5.2) with AESKEYGENASSIST.
#[target_feature(enable = "aes,sse2")]
fn expand128(key: &[u8], rk: &mut [__m128i; 15]) {
    // SAFETY: key is 16 bytes (checked by the caller).
    let mut t = unsafe { _mm_loadu_si128(key.as_ptr().cast()) };
    rk[0] = t;
    macro_rules! round {
        ($i:expr, $rcon:expr) => {
            t = key_mix(
                t,
                _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(t)),
            );
            rk[$i] = t;
        };
    }
    round!(1, 0x01);
    round!(2, 0x02);
    round!(3, 0x04);
    round!(4, 0x08);
    round!(5, 0x10);
    round!(6, 0x20);
    round!(7, 0x40);
    round!(8, 0x80);
    round!(9, 0x1b);
    round!(10, 0x36);
}

/// AES-256 key expansion: even round keys from the previous even one and RotWord/SubWord
/// of the odd one; odd ones from the previous odd one and SubWord of the even one.
#[target_feature(enable = "aes,sse2")]
fn expand256(key: &[u8], rk: &mut [__m128i; 15]) {
    // SAFETY: key is 32 bytes (checked by the caller).
    let (mut a, mut b) = unsafe {
        (
            _mm_loadu_si128(key.as_ptr().cast()),
            _mm_loadu_si128(key.as_ptr().add(16).cast()),
        )
    };
    rk[0] = a;
    rk[1] = b;
    // Round keys 2i and 2i+1 from 2i-2 and 2i-1; the last step makes only key 14.
    macro_rules! even {
        ($i:expr, $rcon:expr) => {
            a = key_mix(
                a,
                _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(b)),
            );
            rk[$i] = a;
        };
    }
    macro_rules! odd {
        ($i:expr) => {
            b = key_mix(
                b,
                _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(a)),
            );
            rk[$i] = b;
        };
    }
    even!(2, 0x01);
    odd!(3);
    even!(4, 0x02);
    odd!(5);
    even!(6, 0x04);
    odd!(7);
    even!(8, 0x08);
    odd!(9);
    even!(10, 0x10);
    odd!(11);
    even!(12, 0x20);
    odd!(13);
    even!(14, 0x40);
}

/// The first `flags` line of /proc/cpuinfo, split (None where there is none).
#[cfg(test)]
pub(crate) fn proc_cpuinfo_flags() -> Option<Vec<String>> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("flags"))?;
    let (_, list) = line.split_once(':')?;
    Some(list.split_whitespace().map(str::to_owned).collect())
}

/// What the tests of both VAES GCMs share: ring as the reference, and the checks.
#[cfg(test)]
pub(super) mod test_util {
    use super::VaesCrypt;
    use crate::crypto::CryptoError;
    use ring::aead;

    pub fn ring_seal(key: &[u8], nonce: [u8; 12], aad: &[u8], data: &mut [u8]) -> [u8; 16] {
        let algo = if key.len() == 16 {
            &aead::AES_128_GCM
        } else {
            &aead::AES_256_GCM
        };
        let k = aead::LessSafeKey::new(aead::UnboundKey::new(algo, key).unwrap());
        let t = k
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(aad),
                data,
            )
            .unwrap();
        t.as_ref().try_into().unwrap()
    }

    /// A small deterministic generator for test data.
    pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    /// Every text length 0..=700 with `key`, the AAD length cycling through `aad_lens`:
    /// ciphertext and tag equal ring's, and open gives the plaintext back and refuses any
    /// flipped tag bit.
    pub fn agrees_with_ring(g: &impl VaesCrypt, key: &[u8], aad_lens: [usize; 10]) {
        let salt = [0xca, 0xfe, 0xba, 0xbe];
        let klen = key.len();
        for len in 0..=700usize {
            let aad_len = aad_lens[len % 10];
            let aad = bytes(len as u64 + 7, aad_len);
            let iv: [u8; 8] = bytes(len as u64 + 3, 8).try_into().unwrap();
            let pt = bytes(len as u64, len);
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(&salt);
            nonce[4..].copy_from_slice(&iv);
            let mut want = pt.clone();
            let want_tag = ring_seal(key, nonce, &aad, &mut want);
            let mut got = pt.clone();
            let mut tag = [0u8; 16];
            g.seal(&salt, &iv, &aad, &mut got, &mut tag).unwrap();
            assert_eq!(got, want, "ciphertext, len {len} aad {aad_len} key {klen}");
            assert_eq!(tag, want_tag, "tag, len {len} aad {aad_len} key {klen}");
            let mut back = got.clone();
            g.open(&salt, &iv, &aad, &mut back, &tag[..12]).unwrap();
            assert_eq!(back, pt);
            let mut bad = tag;
            bad[(len * 7) % 16] ^= 1 << (len % 8);
            let mut back = got.clone();
            assert_eq!(
                g.open(&salt, &iv, &aad, &mut back, &bad),
                Err(CryptoError::IcvMismatch)
            );
        }
    }

    /// Bytes around the text are never touched, for texts of each of `lens`.
    pub fn stays_inside_the_text(g: &impl VaesCrypt, lens: &[usize]) {
        for &len in lens {
            let mut buf = vec![0x5au8; len + 128];
            let mut tag = [0u8; 16];
            g.seal(
                &[1, 2, 3, 4],
                &[5; 8],
                b"spi+seq!",
                &mut buf[64..64 + len],
                &mut tag,
            )
            .unwrap();
            assert!(buf[..64].iter().all(|&b| b == 0x5a), "len {len}: before");
            assert!(
                buf[64 + len..].iter().all(|&b| b == 0x5a),
                "len {len}: after"
            );
        }
    }

    /// A longer tag than GCM's is an error, not a panic.
    pub fn refuses_a_long_tag(g: &impl VaesCrypt) {
        let mut tag = [0u8; 17];
        assert_eq!(
            g.seal(&[0; 4], &[0; 8], &[], &mut [0u8; 4], &mut tag),
            Err(CryptoError::BadIcvLength(17))
        );
    }
}
