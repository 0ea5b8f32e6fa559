//! AES-GCM with 256-bit VAES and VPCLMULQDQ (x86_64 with AVX2; no AVX-512 needed): two AES
//! blocks per instruction, sixteen blocks (256 bytes, eight independent AES chains to fill
//! the pipeline) per loop step, their GHASH aggregated with precomputed powers of H so that
//! one reduction serves the whole step. For CPUs with VAES but without AVX-512 (the 512-bit
//! `gcm_vaes` cannot run there). AVX2 masks dwords, not bytes: the last step (1 to 256
//! bytes, half as wide when it fits) reads and writes a text of whole dwords (every ESP
//! text) in place with masked loads and stores, any other through a zero-padded copy on the
//! stack. The AAD block (ESP's 8 or 12 bytes) and the length block are folded into the first
//! and last steps' products, as in `gcm_vaes`.
//!
//! Nothing here branches on or indexes by secret data: AES rounds and carry-less
//! multiplications are constant-time instructions; lengths are public.

use core::arch::x86_64::*;

use zeroize::Zeroize;

use super::gcm_vaes::forced_off;
use super::gcm_x86::{
    encrypt_block, finish, h_powers, j0, len_block, missing, mul_parts, reduce, rev128, round_keys,
    u128_to_m128, VaesCrypt,
};
use super::CryptoError;

/// Powers of H in the table: 16 data blocks of one step plus the AAD block in front and the
/// length block behind.
const MAX_POW: usize = 18;
/// Table length: H^18 .. H^1, then a zero, so a 2-lane load that starts at any position a
/// step can ask for stays inside the table (a lane past the data multiplies a zero block).
const HTAB_LEN: usize = MAX_POW + 1;
/// Registers (of two blocks) per loop step.
const REGS: usize = 8;
/// Bytes per loop step.
const STEP: usize = 32 * REGS;

/// What `Vaes256Gcm` needs of the CPU, by /proc/cpuinfo's names.
pub const VAES256_FEATURES: [&str; 5] = ["aes", "pclmulqdq", "avx2", "vaes", "vpclmulqdq"];

/// The features of [`VAES256_FEATURES`] this CPU lacks.
pub fn vaes256_missing() -> Vec<&'static str> {
    missing(&VAES256_FEATURES)
}

/// Whether this CPU has what `Vaes256Gcm` needs.
pub fn cpu_has_vaes256() -> bool {
    vaes256_missing().is_empty()
}

/// An AES-128/256 GCM key with its round keys and powers of H, for ESP's 96-bit nonces
/// (salt || IV). Only built where the CPU has [`VAES256_FEATURES`].
pub struct Vaes256Gcm {
    rk: [u128; 15],
    rounds: usize,
    /// htab[i] = H'^(MAX_POW - i) for i < MAX_POW, then a zero.
    htab: [u128; HTAB_LEN],
}

impl Drop for Vaes256Gcm {
    fn drop(&mut self) {
        self.rk.zeroize();
        self.htab.zeroize();
    }
}

impl Vaes256Gcm {
    /// `key` of 16 or 32 bytes. None when the CPU lacks the features or
    /// [`super::ENV_NO_VAES`] is set.
    pub fn new(key: &[u8]) -> Result<Option<Self>, CryptoError> {
        if key.len() != 16 && key.len() != 32 {
            return Err(CryptoError::BadKeyLength(key.len()));
        }
        if forced_off() {
            return Ok(None);
        }
        Ok(Self::on_this_cpu(key))
    }

    /// A key for a CPU that `cpu_has_vaes256()`, whatever [`super::ENV_NO_VAES`] says.
    fn on_this_cpu(key: &[u8]) -> Option<Self> {
        if !cpu_has_vaes256() {
            return None;
        }
        // SAFETY: the features were checked just above.
        Some(unsafe { Self::new_unchecked(key) })
    }

    #[target_feature(enable = "aes,pclmulqdq,avx2,vaes,vpclmulqdq")]
    fn new_unchecked(key: &[u8]) -> Self {
        let (rk, rounds) = round_keys(key);
        let mut htab = [0; HTAB_LEN];
        h_powers(&rk, rounds, &mut htab[..MAX_POW]);
        Self { rk, rounds, htab }
    }

    #[target_feature(enable = "aes,pclmulqdq,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn encrypt<const N: usize>(&self, rk: &[__m256i; 15], mut b: [__m256i; N]) -> [__m256i; N] {
        for v in &mut b {
            *v = _mm256_xor_si256(*v, rk[0]);
        }
        for k in &rk[1..self.rounds] {
            for v in &mut b {
                *v = _mm256_aesenc_epi128(*v, *k);
            }
        }
        for v in &mut b {
            *v = _mm256_aesenclast_epi128(*v, rk[self.rounds]);
        }
        b
    }

    /// The aggregated GHASH of one step: `x` holds `k` (0..=16) byte-reflected blocks (zero
    /// past them), `y` the running hash. With `head`, one block that precedes the data (the
    /// AAD); with `tail`, one that follows it (the length block). Returns the new hash:
    /// (y ^ B1)·H^n ^ B2·H^(n-1) ^ .. ^ Bn·H over the n blocks head, data, tail.
    #[target_feature(enable = "aes,pclmulqdq,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn ghash_step(
        &self,
        y: __m128i,
        x: &[__m256i],
        k: usize,
        head: Option<__m128i>,
        tail: Option<__m128i>,
    ) -> __m128i {
        let last = usize::from(tail.is_some());
        // Data block b (0-based) takes H^(k - b + last): htab index MAX_POW - k - last + b.
        let base = MAX_POW - k - last;
        let (mut lo, mut mid, mut hi) = (
            _mm256_setzero_si256(),
            _mm256_setzero_si256(),
            _mm256_setzero_si256(),
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
        for (g, xg) in x.iter().enumerate().take(k.div_ceil(2)) {
            let mut d = *xg;
            if g == 0 {
                d = _mm256_xor_si256(d, _mm256_zextsi128_si256(y_data));
            }
            // SAFETY: base + 2g + 1 < HTAB_LEN for every g < ceil(k/2) (see HTAB_LEN).
            let h = unsafe { _mm256_loadu_si256(self.htab.as_ptr().add(base + 2 * g).cast()) };
            lo = _mm256_xor_si256(lo, _mm256_clmulepi64_epi128::<0x00>(d, h));
            hi = _mm256_xor_si256(hi, _mm256_clmulepi64_epi128::<0x11>(d, h));
            mid = _mm256_xor_si256(
                mid,
                _mm256_xor_si256(
                    _mm256_clmulepi64_epi128::<0x01>(d, h),
                    _mm256_clmulepi64_epi128::<0x10>(d, h),
                ),
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
            _mm_xor_si128(fold2(lo), xlo),
            _mm_xor_si128(fold2(mid), xmid),
            _mm_xor_si128(fold2(hi), xhi),
        )
    }

    /// GHASH of `data` as whole steps, the final partial block zero-padded; `tail` (the
    /// length block) joins the last step. For AADs longer than one block (GMAC: the whole
    /// packet, so only a partial last step goes through a copy).
    #[target_feature(enable = "aes,pclmulqdq,avx2,vaes,vpclmulqdq")]
    fn ghash_bytes(&self, mut y: __m128i, data: &[u8], tail: Option<__m128i>) -> __m128i {
        let rev = rev_mask();
        let mut rest = data;
        loop {
            let n = rest.len().min(STEP);
            let is_last = rest.len() <= STEP;
            let mut buf = [0u8; STEP];
            let step: &[u8] = if n == STEP {
                &rest[..STEP]
            } else {
                buf[..n].copy_from_slice(rest);
                &buf
            };
            let mut x = [_mm256_setzero_si256(); REGS];
            for (g, xg) in x.iter_mut().enumerate().take(n.div_ceil(32)) {
                // SAFETY: 32 bytes inside `step` (32g + 32 <= STEP = step.len()).
                let v = unsafe { _mm256_loadu_si256(step.as_ptr().add(32 * g).cast()) };
                *xg = _mm256_shuffle_epi8(v, rev);
            }
            y = self.ghash_step(y, &x, n.div_ceil(16), None, tail.filter(|_| is_last));
            if is_last {
                return y;
            }
            rest = &rest[STEP..];
        }
    }
}

impl VaesCrypt for Vaes256Gcm {
    #[target_feature(enable = "aes,pclmulqdq,avx2,vaes,vpclmulqdq")]
    unsafe fn crypt<const SEAL: bool>(
        &self,
        salt: &[u8; 4],
        iv: &[u8; 8],
        aad: &[u8],
        data: &mut [u8],
    ) -> [u8; 16] {
        let rev = rev_mask();
        let rev128 = rev128();
        let mut rk = [_mm256_setzero_si256(); 15];
        for (d, s) in rk.iter_mut().zip(self.rk.iter()).take(self.rounds + 1) {
            *d = _mm256_broadcastsi128_si256(u128_to_m128(*s));
        }
        let j0 = j0(salt, iv);
        let ej0 = encrypt_block(&self.rk, self.rounds, j0);
        // Counters kept byte-reversed: inc32 is then a 32-bit add on each lane's low dword.
        // J0 holds counter 1; the data blocks use 2, 3, 4, ...
        let mut ctr = _mm256_add_epi32(
            _mm256_broadcastsi128_si256(_mm_shuffle_epi8(j0, rev128)),
            _mm256_set_epi32(0, 0, 0, 2, 0, 0, 0, 1),
        );
        let two = _mm256_set_epi32(0, 0, 0, 2, 0, 0, 0, 2);
        let mut counters = || {
            let mut c = [_mm256_setzero_si256(); REGS];
            for v in &mut c {
                *v = _mm256_shuffle_epi8(ctr, rev);
                ctr = _mm256_add_epi32(ctr, two);
            }
            c
        };
        let len_block = len_block(aad.len(), data.len());

        // The AAD: ESP's one block joins the first step; longer ones (GMAC) are hashed first.
        let mut y = _mm_setzero_si128();
        let mut head = None;
        if aad.len() <= 16 {
            if !aad.is_empty() {
                let mut a = [0u8; 16];
                a[..aad.len()].copy_from_slice(aad);
                // SAFETY: 16 bytes.
                let a = unsafe { _mm_loadu_si128(a.as_ptr().cast()) };
                head = Some(_mm_shuffle_epi8(a, rev128));
            }
        } else {
            let tail = data.is_empty().then_some(len_block);
            y = self.ghash_bytes(y, aad, tail);
            if data.is_empty() {
                return finish(y, ej0);
            }
        }

        // Whole steps while more than one step remains: the last one (1..=256 bytes, or
        // none for an empty text) goes through `last_step` with the length block.
        let whole = data.len().saturating_sub(1) / STEP * STEP;
        let (body, last) = data.split_at_mut(whole);
        for chunk in body.chunks_exact_mut(STEP) {
            let ks = self.encrypt(&rk, counters());
            let mut x = [_mm256_setzero_si256(); REGS];
            for g in 0..REGS {
                // SAFETY: 32g + 32 <= STEP bytes of `chunk`.
                unsafe {
                    let q = chunk.as_mut_ptr().add(32 * g);
                    let inp = _mm256_loadu_si256(q.cast());
                    let out = _mm256_xor_si256(inp, ks[g]);
                    _mm256_storeu_si256(q.cast(), out);
                    x[g] = _mm256_shuffle_epi8(if SEAL { out } else { inp }, rev);
                }
            }
            y = self.ghash_step(y, &x, 2 * REGS, head.take(), None);
        }
        let ks = counters();
        if last.len() <= STEP / 2 {
            let half: [__m256i; REGS / 2] = core::array::from_fn(|i| ks[i]);
            self.last_step::<SEAL, { REGS / 2 }>(&rk, half, last, y, head, len_block, ej0)
        } else {
            self.last_step::<SEAL, REGS>(&rk, ks, last, y, head, len_block, ej0)
        }
    }
}

impl Vaes256Gcm {
    /// The last step (0..=32·N bytes), the length block with it: the tag. Texts of whole
    /// dwords in place with masked loads and stores, others through a zero-padded copy.
    #[target_feature(enable = "aes,pclmulqdq,avx2,vaes,vpclmulqdq")]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn last_step<const SEAL: bool, const N: usize>(
        &self,
        rk: &[__m256i; 15],
        counters: [__m256i; N],
        last: &mut [u8],
        mut y: __m128i,
        head: Option<__m128i>,
        len_block: __m128i,
        ej0: __m128i,
    ) -> [u8; 16] {
        let rev = rev_mask();
        let n = last.len();
        let mut x = [_mm256_setzero_si256(); N];
        if n > 0 && n.is_multiple_of(4) {
            // Whole dwords (every ESP text: its trailer aligns it to 4 bytes): masked loads
            // and stores reach exactly the text, no copy.
            let ks = self.encrypt(rk, counters);
            let whole = n / 32;
            for (g, xg) in x.iter_mut().enumerate().take(whole) {
                // SAFETY: 32 bytes at 32g, inside `last` (g < n / 32).
                unsafe {
                    let q = last.as_mut_ptr().add(32 * g).cast::<__m256i>();
                    let inp = _mm256_loadu_si256(q);
                    let out = _mm256_xor_si256(inp, ks[g]);
                    _mm256_storeu_si256(q, out);
                    *xg = _mm256_shuffle_epi8(if SEAL { out } else { inp }, rev);
                }
            }
            if !n.is_multiple_of(32) {
                // Only the partial group is masked: with every group masked, the 64-byte
                // transform bench took 103-104 ns per packet, now 96-99.
                let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(((n % 32) / 4) as i32), lane);
                // SAFETY: the mask enables only the dwords at 32·whole + 4i < n, inside
                // `last`; masked-off elements are neither read nor written.
                unsafe {
                    let q = last.as_mut_ptr().add(32 * whole).cast::<i32>();
                    let inp = _mm256_maskload_epi32(q, m);
                    let out = _mm256_xor_si256(inp, ks[whole]);
                    _mm256_maskstore_epi32(q, m, out);
                    // GHASH takes the ciphertext zero-padded (maskload zeroed past it).
                    x[whole] =
                        _mm256_shuffle_epi8(if SEAL { _mm256_and_si256(out, m) } else { inp }, rev);
                }
            }
        } else if n > 0 {
            let mut buf = [[0u8; 32]; N];
            buf.as_flattened_mut()[..n].copy_from_slice(last);
            let ks = self.encrypt(rk, counters);
            for (g, b) in buf.iter_mut().enumerate().take(n.div_ceil(32)) {
                // SAFETY: 32 bytes.
                unsafe {
                    let inp = _mm256_loadu_si256(b.as_ptr().cast());
                    _mm256_storeu_si256(b.as_mut_ptr().cast(), _mm256_xor_si256(inp, ks[g]));
                    x[g] = _mm256_shuffle_epi8(inp, rev);
                }
            }
            last.copy_from_slice(&buf.as_flattened()[..n]);
            if SEAL {
                // GHASH takes the ciphertext, zero-padded: not the key stream past the text.
                buf.as_flattened_mut()[n..].fill(0);
                for (g, xg) in x.iter_mut().enumerate().take(n.div_ceil(32)) {
                    // SAFETY: 32 bytes.
                    let v = unsafe { _mm256_loadu_si256(buf[g].as_ptr().cast()) };
                    *xg = _mm256_shuffle_epi8(v, rev);
                }
            }
        }
        y = self.ghash_step(y, &x, n.div_ceil(16), head, Some(len_block));
        finish(y, ej0)
    }
}

/// vpshufb mask reversing the 16 bytes of each lane.
#[target_feature(enable = "avx2")]
#[inline]
fn rev_mask() -> __m256i {
    _mm256_broadcastsi128_si256(rev128())
}

/// XOR of the two 128-bit lanes.
#[target_feature(enable = "avx2")]
#[inline]
fn fold2(v: __m256i) -> __m128i {
    _mm_xor_si128(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v))
}

#[cfg(test)]
mod tests {
    use super::super::gcm_x86::proc_cpuinfo_flags;
    use super::super::gcm_x86::test_util::{
        agrees_with_ring, bytes, refuses_a_long_tag, ring_seal, stays_inside_the_text,
    };
    use super::*;

    /// Every text length 0..=700 (all step and lane boundaries, texts of whole dwords in
    /// place and others through the copy), AAD lengths 0, 8, 12, 16 and several longer ones
    /// (the GMAC path), both key sizes: ciphertext and tag equal ring's, and open gives the
    /// plaintext back and refuses any flipped tag bit.
    #[test]
    fn seal_and_open_agree_with_ring() {
        if !cpu_has_vaes256() {
            return;
        }
        for klen in [16usize, 32] {
            let key = bytes(klen as u64 + 50, klen);
            let g = Vaes256Gcm::on_this_cpu(&key).unwrap();
            agrees_with_ring(&g, &key, [0, 8, 12, 16, 17, 128, 255, 256, 257, 600]);
        }
    }

    /// The 32-bit block counter wraps as GCM's inc32 does (an IV whose counter block is
    /// near 2^32 cannot occur with 96-bit nonces, but the lane arithmetic must still be
    /// inc32): a text long enough to cross several steps agrees with ring for IVs of all
    /// ones and zeros.
    #[test]
    fn long_texts_and_extreme_ivs() {
        if !cpu_has_vaes256() {
            return;
        }
        let key = bytes(9, 16);
        let g = Vaes256Gcm::on_this_cpu(&key).unwrap();
        for iv in [[0u8; 8], [0xff; 8]] {
            for len in [4096usize, 9000, 65_535] {
                let salt = [0xff; 4];
                let mut nonce = [0u8; 12];
                nonce[..4].copy_from_slice(&salt);
                nonce[4..].copy_from_slice(&iv);
                let pt = bytes(len as u64, len);
                let mut want = pt.clone();
                let want_tag = ring_seal(&key, nonce, b"12345678", &mut want);
                let mut got = pt.clone();
                let mut tag = [0u8; 16];
                g.seal(&salt, &iv, b"12345678", &mut got, &mut tag).unwrap();
                assert_eq!((got == want, tag), (true, want_tag), "len {len}");
            }
        }
    }

    /// Bytes around the text are never touched, in place or through the copy.
    #[test]
    fn tail_stays_inside_the_text() {
        if !cpu_has_vaes256() {
            return;
        }
        let g = Vaes256Gcm::on_this_cpu(&[7u8; 16]).unwrap();
        stays_inside_the_text(
            &g,
            &[
                0, 1, 4, 15, 16, 17, 31, 32, 33, 68, 127, 128, 129, 255, 256, 257, 300,
            ],
        );
    }

    /// The feature probe these tests rely on agrees with the kernel's view of the CPU, so
    /// a machine with VAES and AVX2 cannot skip them.
    #[test]
    fn cpu_probe_agrees_with_proc_cpuinfo() {
        let Some(flags) = proc_cpuinfo_flags() else {
            return;
        };
        let want = VAES256_FEATURES
            .iter()
            .all(|f| flags.iter().any(|g| g == f));
        assert_eq!(cpu_has_vaes256(), want, "/proc/cpuinfo flags: {flags:?}");
    }

    /// A longer tag than GCM's is an error, not a panic.
    #[test]
    fn seal_refuses_a_tag_longer_than_gcms() {
        if !cpu_has_vaes256() {
            return;
        }
        refuses_a_long_tag(&Vaes256Gcm::on_this_cpu(&[7u8; 16]).unwrap());
    }
}
