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
pub struct GcmKey {
    ring: aead::LessSafeKey,
    portable: PortableGcm,
    salt: [u8; 4],
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
            salt,
        })
    }

    /// Encrypts in_out in place; authenticates aad then the ciphertext; writes the first
    /// tag.len() bytes of the 16-byte GCM tag into `tag` (tag.len() must be 8, 12 or 16).
    pub fn seal_in_place(
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
            .map_err(|_| CryptoError::IcvMismatch)?;
        // RFC 4106 section 8: a truncated ICV is the leftmost bytes of the tag.
        tag.copy_from_slice(&full.as_ref()[..tag.len()]);
        Ok(())
    }

    /// Verifies `tag` (8, 12 or 16 bytes, constant time) over aad+ciphertext, then decrypts
    /// in place. On Err the contents of in_out are unspecified and must not be used.
    pub fn open_in_place(
        &self,
        iv: &[u8; 8],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        check_tag_len(tag.len())?;
        if tag.len() == TAG_LEN {
            let tag = aead::Tag::try_from(tag).map_err(|_| CryptoError::IcvMismatch)?;
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
        self.ctr32(&j0, in_out);
        let full = self.tag(&j0, aad, in_out);
        tag.copy_from_slice(&full[..tag.len()]);
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
        let full = self.tag(&j0, aad, in_out);
        if !bool::from(full[..tag.len()].ct_eq(tag)) {
            return Err(CryptoError::IcvMismatch);
        }
        self.ctr32(&j0, in_out);
        Ok(())
    }

    fn j0(&self, iv: &[u8; 8]) -> Block {
        let mut j0 = Block::default();
        j0[..12].copy_from_slice(&nonce(&self.salt, iv));
        j0[15] = 1;
        j0
    }

    /// GCTR from inc32(J0): XORs the keystream into `data`, PAR_BLOCKS blocks per AES call.
    fn ctr32(&self, j0: &Block, data: &mut [u8]) {
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
            for (d, k) in chunk.iter_mut().zip(ks.iter().flat_map(|b| b.iter())) {
                *d ^= k;
            }
        }
        for b in &mut ks {
            zeroize::Zeroize::zeroize(b.as_mut_slice());
        }
    }

    /// T = GHASH_H(A || 0^v || C || 0^u || [len(A)]64 || [len(C)]64) XOR E_K(J0).
    fn tag(&self, j0: &Block, aad: &[u8], ct: &[u8]) -> [u8; TAG_LEN] {
        let mut g = self.ghash.clone();
        g.update_padded(aad);
        g.update_padded(ct);
        let mut lens = Block::default();
        lens[..8].copy_from_slice(&((aad.len() as u64) * 8).to_be_bytes());
        lens[8..].copy_from_slice(&((ct.len() as u64) * 8).to_be_bytes());
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
        Err(CryptoError::IcvMismatch)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// NIST GCM spec (McGrew & Viega, "The Galois/Counter Mode of Operation", test case 4)
    /// with the 12-byte IV split as salt (4) || IV (8).
    #[test]
    fn mcgrew_viega_test_case_4() {
        let key = hex("feffe9928665731c6d6a8f9467308308");
        let nonce = hex("cafebabefacedbaddecaf888");
        let pt = hex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let ct = hex(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
        );
        let tag = hex("5bc94fbc3221a5db94fae95ae7121a47");
        let salt: [u8; 4] = nonce[..4].try_into().unwrap();
        let iv: [u8; 8] = nonce[4..].try_into().unwrap();
        let k = GcmKey::new(&key, salt).unwrap();
        for tag_len in TAG_LENS {
            let mut buf = pt.clone();
            let mut t = vec![0; tag_len];
            k.seal_in_place(&iv, &aad, &mut buf, &mut t).unwrap();
            assert_eq!(buf, ct);
            assert_eq!(t, tag[..tag_len]);
            let mut buf2 = pt.clone();
            let mut t2 = vec![0; tag_len];
            k.portable()
                .seal_in_place(&iv, &aad, &mut buf2, &mut t2)
                .unwrap();
            assert_eq!(buf2, ct);
            assert_eq!(t2, tag[..tag_len]);

            k.open_in_place(&iv, &aad, &mut buf, &t).unwrap();
            assert_eq!(buf, pt);
            k.portable()
                .open_in_place(&iv, &aad, &mut buf2, &t2)
                .unwrap();
            assert_eq!(buf2, pt);

            let mut bad = tag[..tag_len].to_vec();
            bad[tag_len - 1] ^= 1;
            let mut buf = ct.clone();
            assert_eq!(
                k.open_in_place(&iv, &aad, &mut buf, &bad),
                Err(CryptoError::IcvMismatch)
            );
            let mut buf = ct.clone();
            assert_eq!(
                k.portable().open_in_place(&iv, &aad, &mut buf, &bad),
                Err(CryptoError::IcvMismatch)
            );
            // The portable path checks before decrypting.
            assert_eq!(buf, ct);
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
        }
    }
}
