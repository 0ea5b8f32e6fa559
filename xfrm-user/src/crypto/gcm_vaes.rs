//! AES-GCM with 512-bit VAES and VPCLMULQDQ (x86_64 with AVX-512): four AES blocks per
//! instruction, sixteen blocks (256 bytes) per loop step, their GHASH aggregated with
//! precomputed powers of H so that one reduction serves the whole step. The last step
//! (1 to 256 bytes) uses masked loads and stores, so a packet's odd tail costs no extra
//! pass; the AAD block (ESP's 8 or 12 bytes) and the length block are folded into the
//! first and last steps' products. Used for seal and open when the CPU has the features
//! (checked once per key); ring otherwise.
//!
//! GHASH runs as POLYVAL, with the helpers both VAES GCMs share (`gcm_x86`).
//!
//! Nothing here branches on or indexes by secret data: AES rounds and carry-less
//! multiplications are constant-time instructions; lengths are public.

use core::arch::x86_64::*;

use zeroize::Zeroize;

use super::gcm_x86::{
    encrypt_block, finish, h_powers, j0, len_block, missing, mul_parts, reduce, round_keys,
    u128_to_m128, VaesCrypt,
};
use super::CryptoError;

/// Powers of H in the table: 16 data blocks of one step plus the AAD block in front and
/// the length block behind.
const MAX_POW: usize = 18;
/// Table length: H^18 .. H^1, then zeros, so a 4-lane load that starts at any position a
/// step can ask for stays inside the table (the lanes past the data are multiplied by
/// zero blocks).
const HTAB_LEN: usize = MAX_POW + 3;
/// Bytes per loop step.
const STEP: usize = 256;

/// What `VaesGcm` needs of the CPU, by /proc/cpuinfo's names: its vectors are 512 bits wide,
/// so VAES alone (as on CPUs with VAES and AVX2 only) is not enough.
pub const VAES_FEATURES: [&str; 7] = [
    "aes",
    "pclmulqdq",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "vaes",
    "vpclmulqdq",
];

/// The features of [`VAES_FEATURES`] this CPU lacks.
pub fn vaes_missing() -> Vec<&'static str> {
    missing(&VAES_FEATURES)
}

/// Whether this CPU has what `VaesGcm` needs.
pub fn cpu_has_vaes() -> bool {
    vaes_missing().is_empty()
}

/// Whether [`super::ENV_NO_VAES`] is set (read once).
pub fn forced_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os(super::ENV_NO_VAES).is_some())
}

/// Whether new keys run `VaesGcm`: the CPU has it and it is not forced off.
pub fn available() -> bool {
    cpu_has_vaes() && !forced_off()
}

/// An AES-128/256 GCM key with its round keys and powers of H, for ESP's 96-bit nonces
/// (salt || IV). Only built when `available()`.
pub struct VaesGcm {
    /// Round keys (11 or 15 used), as __m128i bytes.
    rk: [u128; 15],
    /// Number of AES rounds: 10 (AES-128) or 14 (AES-256).
    rounds: usize,
    /// htab[i] = H'^(MAX_POW - i) for i < MAX_POW, then zeros; H' = mulX(ByteReverse(H)).
    htab: [u128; HTAB_LEN],
}

impl Drop for VaesGcm {
    fn drop(&mut self) {
        self.rk.zeroize();
        self.htab.zeroize();
    }
}

impl VaesGcm {
    /// `key` of 16 or 32 bytes. None when the CPU lacks the features.
    pub fn new(key: &[u8]) -> Result<Option<Self>, CryptoError> {
        if key.len() != 16 && key.len() != 32 {
            return Err(CryptoError::BadKeyLength(key.len()));
        }
        if !available() {
            return Ok(None);
        }
        Ok(Self::on_this_cpu(key))
    }

    /// A key for a CPU that `cpu_has_vaes()`, whatever [`super::ENV_NO_VAES`] says (the tests of
    /// this code run on such a CPU even when the rest of the process is forced off it).
    fn on_this_cpu(key: &[u8]) -> Option<Self> {
        if !cpu_has_vaes() {
            return None;
        }
        // SAFETY: the features were checked just above.
        Some(unsafe { Self::new_unchecked(key) })
    }

    #[target_feature(enable = "aes,pclmulqdq,avx512f,avx512bw,avx512vl,vaes,vpclmulqdq")]
    fn new_unchecked(key: &[u8]) -> Self {
        let (rk, rounds) = round_keys(key);
        let mut htab = [0; HTAB_LEN];
        h_powers(&rk, rounds, &mut htab[..MAX_POW]);
        Self { rk, rounds, htab }
    }

    #[target_feature(enable = "aes,pclmulqdq,avx512f,avx512bw,avx512vl,vaes,vpclmulqdq")]
    #[inline]
    fn encrypt_block(&self, b: __m128i) -> __m128i {
        encrypt_block(&self.rk, self.rounds, b)
    }

    /// Four blocks at once.
    #[target_feature(enable = "aes,pclmulqdq,avx512f,avx512bw,avx512vl,vaes,vpclmulqdq")]
    #[inline]
    fn encrypt4(&self, rk: &[__m512i; 15], mut b: __m512i) -> __m512i {
        b = _mm512_xor_si512(b, rk[0]);
        for k in &rk[1..self.rounds] {
            b = _mm512_aesenc_epi128(b, *k);
        }
        _mm512_aesenclast_epi128(b, rk[self.rounds])
    }

    /// The aggregated GHASH of one step: `x` holds `k` (0..=16) byte-reflected blocks (zero
    /// past them), `y` the running hash. With `head`, one block that precedes the data (the
    /// AAD); with `tail`, one that follows it (the length block). Returns the new hash:
    /// (y ^ B1)·H^n ^ B2·H^(n-1) ^ .. ^ Bn·H over the n blocks head, data, tail.
    #[target_feature(enable = "aes,pclmulqdq,avx512f,avx512bw,avx512vl,vaes,vpclmulqdq")]
    #[inline]
    fn ghash_step(
        &self,
        y: __m128i,
        x: &[__m512i; 4],
        k: usize,
        head: Option<__m128i>,
        tail: Option<__m128i>,
    ) -> __m128i {
        let last = usize::from(tail.is_some());
        // Data block b (0-based) takes H^(k - b + last): htab index MAX_POW - k - last + b.
        let base = MAX_POW - k - last;
        let (mut lo, mut mid, mut hi) = (
            _mm512_setzero_si512(),
            _mm512_setzero_si512(),
            _mm512_setzero_si512(),
        );
        let (mut y_data, mut xlo, mut xmid, mut xhi) = (
            y,
            _mm_setzero_si128(),
            _mm_setzero_si128(),
            _mm_setzero_si128(),
        );
        if let Some(a) = head {
            // The head comes first: y joins it, and it takes the highest power.
            let (l, m, h) = mul_parts(_mm_xor_si128(y, a), u128_to_m128(self.htab[base - 1]));
            (xlo, xmid, xhi) = (l, m, h);
            y_data = _mm_setzero_si128();
        }
        for (g, xg) in x.iter().enumerate().take(k.div_ceil(4)) {
            let mut d = *xg;
            if g == 0 {
                d = _mm512_xor_si512(d, _mm512_zextsi128_si512(y_data));
            }
            // SAFETY: base + 4g + 3 < HTAB_LEN for every g < ceil(k/4) (see HTAB_LEN).
            let h = unsafe { _mm512_loadu_si512(self.htab.as_ptr().add(base + 4 * g).cast()) };
            lo = _mm512_xor_si512(lo, _mm512_clmulepi64_epi128::<0x00>(d, h));
            hi = _mm512_xor_si512(hi, _mm512_clmulepi64_epi128::<0x11>(d, h));
            mid = _mm512_ternarylogic_epi64::<0x96>(
                mid,
                _mm512_clmulepi64_epi128::<0x01>(d, h),
                _mm512_clmulepi64_epi128::<0x10>(d, h),
            );
        }
        if k == 0 && head.is_none() {
            // No block but (maybe) the tail: y joins it.
            let Some(t) = tail else { return y };
            let (l, m, h) = mul_parts(_mm_xor_si128(t, y), u128_to_m128(self.htab[MAX_POW - 1]));
            return reduce(l, m, h);
        }
        if let Some(t) = tail {
            let (l, m, h) = mul_parts(t, u128_to_m128(self.htab[MAX_POW - 1]));
            xlo = _mm_xor_si128(xlo, l);
            xmid = _mm_xor_si128(xmid, m);
            xhi = _mm_xor_si128(xhi, h);
        }
        reduce(
            _mm_xor_si128(fold4(lo), xlo),
            _mm_xor_si128(fold4(mid), xmid),
            _mm_xor_si128(fold4(hi), xhi),
        )
    }

    /// GHASH of `data` as whole steps, the final partial block zero-padded; `tail` (the
    /// length block) joins the last step. For AADs longer than one block (GMAC).
    #[target_feature(enable = "aes,pclmulqdq,avx512f,avx512bw,avx512vl,vaes,vpclmulqdq")]
    fn ghash_bytes(&self, mut y: __m128i, data: &[u8], tail: Option<__m128i>) -> __m128i {
        let rev = rev_mask();
        let mut rest = data;
        loop {
            let n = rest.len().min(STEP);
            let is_last = rest.len() <= STEP;
            let mut x = [_mm512_setzero_si512(); 4];
            for (g, xg) in x.iter_mut().enumerate().take(n.div_ceil(64)) {
                let m = byte_mask(n - 64 * g);
                // SAFETY: the mask covers only bytes inside `rest` (64g + popcount <= n).
                let v = unsafe { _mm512_maskz_loadu_epi8(m, rest.as_ptr().add(64 * g).cast()) };
                *xg = _mm512_shuffle_epi8(v, rev);
            }
            y = self.ghash_step(y, &x, n.div_ceil(16), None, tail.filter(|_| is_last));
            if is_last {
                return y;
            }
            rest = &rest[STEP..];
        }
    }
}

impl VaesCrypt for VaesGcm {
    #[target_feature(enable = "aes,pclmulqdq,avx512f,avx512bw,avx512vl,vaes,vpclmulqdq")]
    unsafe fn crypt<const SEAL: bool>(
        &self,
        salt: &[u8; 4],
        iv: &[u8; 8],
        aad: &[u8],
        data: &mut [u8],
    ) -> [u8; 16] {
        let rev = rev_mask();
        let rev128 = _mm512_castsi512_si128(rev);
        let mut rk = [_mm512_setzero_si512(); 15];
        for (d, s) in rk.iter_mut().zip(self.rk.iter()).take(self.rounds + 1) {
            *d = _mm512_broadcast_i32x4(u128_to_m128(*s));
        }
        let j0 = j0(salt, iv);
        let ej0 = self.encrypt_block(j0);
        // Counters kept byte-reversed: inc32 is then a 32-bit add on each lane's low dword.
        // J0 holds counter 1; the data blocks use 2, 3, 4, ...
        let mut ctr = _mm512_add_epi32(
            _mm512_broadcast_i32x4(_mm_shuffle_epi8(j0, rev128)),
            _mm512_set_epi32(0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 1),
        );
        let four = _mm512_set_epi32(0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4);
        let len_block = len_block(aad.len(), data.len());

        // The AAD: ESP's one block joins the first step; longer ones (GMAC) are hashed first.
        let mut y = _mm_setzero_si128();
        let mut head = None;
        if aad.len() <= 16 {
            if !aad.is_empty() {
                // SAFETY: the mask covers aad.len() bytes.
                let a =
                    unsafe { _mm_maskz_loadu_epi8(byte_mask16(aad.len()), aad.as_ptr().cast()) };
                head = Some(_mm_shuffle_epi8(a, rev128));
            }
        } else {
            let tail = data.is_empty().then_some(len_block);
            y = self.ghash_bytes(y, aad, tail);
            if data.is_empty() {
                return finish(y, ej0);
            }
        }

        let mut p = data.as_mut_ptr();
        let mut rest = data.len();
        // Whole steps while more than one step remains: the last one (1..=256 bytes, or
        // none for an empty text) goes through the masked path with the length block.
        while rest > STEP {
            let mut ks = [_mm512_setzero_si512(); 4];
            for k in &mut ks {
                *k = self.encrypt4(&rk, _mm512_shuffle_epi8(ctr, rev));
                ctr = _mm512_add_epi32(ctr, four);
            }
            let mut x = [_mm512_setzero_si512(); 4];
            for g in 0..4 {
                // SAFETY: p..p+STEP lies inside `data` (rest > STEP bytes remain at p).
                unsafe {
                    let q = p.add(64 * g);
                    let inp = _mm512_loadu_si512(q.cast());
                    let out = _mm512_xor_si512(inp, ks[g]);
                    _mm512_storeu_si512(q.cast(), out);
                    x[g] = _mm512_shuffle_epi8(if SEAL { out } else { inp }, rev);
                }
            }
            y = self.ghash_step(y, &x, 16, head.take(), None);
            // SAFETY: stays inside `data` (or one past its end).
            p = unsafe { p.add(STEP) };
            rest -= STEP;
        }
        let nz = rest.div_ceil(64);
        let mut x = [_mm512_setzero_si512(); 4];
        for (g, xg) in x.iter_mut().enumerate().take(nz) {
            let ks = self.encrypt4(&rk, _mm512_shuffle_epi8(ctr, rev));
            ctr = _mm512_add_epi32(ctr, four);
            let m = byte_mask(rest - 64 * g);
            // SAFETY: the mask covers only the `rest` bytes left at p.
            unsafe {
                let q = p.add(64 * g);
                let inp = _mm512_maskz_loadu_epi8(m, q.cast());
                // Zero past the text: those bytes are not stored, and GHASH pads with zeros.
                let out = _mm512_maskz_mov_epi8(m, _mm512_xor_si512(inp, ks));
                _mm512_mask_storeu_epi8(q.cast(), m, out);
                *xg = _mm512_shuffle_epi8(if SEAL { out } else { inp }, rev);
            }
        }
        y = self.ghash_step(y, &x, rest.div_ceil(16), head, Some(len_block));
        finish(y, ej0)
    }
}

/// vpshufb mask reversing the 16 bytes of each lane.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
fn rev_mask() -> __m512i {
    _mm512_broadcast_i32x4(_mm_set_epi8(
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    ))
}

/// The first `n` bytes of a 64-byte lane group (n >= 64: all).
#[inline]
fn byte_mask(n: usize) -> __mmask64 {
    if n >= 64 {
        !0
    } else {
        (1u64 << n) - 1
    }
}

#[inline]
fn byte_mask16(n: usize) -> __mmask16 {
    if n >= 16 {
        !0
    } else {
        (1u16 << n) - 1
    }
}

/// XOR of the four 128-bit lanes.
#[target_feature(enable = "avx512f,avx512vl")]
#[inline]
fn fold4(v: __m512i) -> __m128i {
    let a = _mm256_xor_si256(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
    _mm_xor_si128(_mm256_castsi256_si128(a), _mm256_extracti128_si256::<1>(a))
}

#[cfg(test)]
mod tests {
    use super::super::gcm_x86::test_util::{
        agrees_with_ring, bytes, refuses_a_long_tag, stays_inside_the_text,
    };
    use super::super::gcm_x86::{m128_to_u128, proc_cpuinfo_flags};
    use super::*;
    use aes::cipher::{BlockEncrypt, KeyInit};

    #[test]
    fn key_schedule_matches_the_aes_crate() {
        if !cpu_has_vaes() {
            return;
        }
        for (seed, len) in [(1u64, 16usize), (2, 32), (3, 16), (4, 32)] {
            let key = bytes(seed, len);
            let g = VaesGcm::on_this_cpu(&key).unwrap();
            let block = bytes(seed + 100, 16);
            // SAFETY: available() was checked.
            let ours = unsafe { g.encrypt_block(_mm_loadu_si128(block.as_ptr().cast())) };
            let mut b = aes::Block::clone_from_slice(&block);
            if len == 16 {
                aes::Aes128::new_from_slice(&key)
                    .unwrap()
                    .encrypt_block(&mut b);
            } else {
                aes::Aes256::new_from_slice(&key)
                    .unwrap()
                    .encrypt_block(&mut b);
            }
            assert_eq!(
                m128_to_u128(ours).to_le_bytes(),
                b.as_slice(),
                "key len {len}"
            );
        }
    }

    /// Every text length 0..=700 (all step and mask boundaries), AAD lengths 0, 8, 12, 16
    /// and several longer ones (the GMAC path), both key sizes: ciphertext and tag equal
    /// ring's, and open gives the plaintext back and refuses any flipped tag bit.
    #[test]
    fn seal_and_open_agree_with_ring() {
        if !cpu_has_vaes() {
            return;
        }
        for klen in [16usize, 32] {
            let key = bytes(klen as u64, klen);
            let g = VaesGcm::on_this_cpu(&key).unwrap();
            agrees_with_ring(&g, &key, [0, 8, 12, 16, 17, 40, 255, 256, 257, 600]);
        }
    }

    /// Bytes around the text are never touched, though the tail is written with masked
    /// 64-byte stores.
    #[test]
    fn masked_tail_stays_inside_the_text() {
        if !cpu_has_vaes() {
            return;
        }
        let g = VaesGcm::on_this_cpu(&[7u8; 16]).unwrap();
        stays_inside_the_text(&g, &[0, 1, 15, 16, 17, 63, 64, 65, 255, 256, 257, 300]);
    }

    /// The feature probe these tests rely on agrees with the kernel's view of the CPU, so
    /// a machine with VAES cannot skip them.
    #[test]
    fn cpu_probe_agrees_with_proc_cpuinfo() {
        let Some(flags) = proc_cpuinfo_flags() else {
            return;
        };
        let want = VAES_FEATURES.iter().all(|f| flags.iter().any(|g| g == f));
        assert_eq!(cpu_has_vaes(), want, "/proc/cpuinfo flags: {flags:?}");
    }

    /// A longer tag than GCM's is an error, not a panic.
    #[test]
    fn seal_refuses_a_tag_longer_than_gcms() {
        if !cpu_has_vaes() {
            return;
        }
        refuses_a_long_tag(&VaesGcm::on_this_cpu(&[7u8; 16]).unwrap());
    }
}
