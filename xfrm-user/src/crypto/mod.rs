//! The transforms' cryptography: AES-GCM for rfc4106(gcm(aes)) and AES-GMAC for
//! rfc4543(gcm(aes)) (ESP), HMAC-SHA-256 / HMAC-SHA-1 for AH.
//!
//! Keys are set up once per SA (`SaCrypto::from_algorithm`, like the kernel's
//! crypto_aead_setkey / crypto_ahash_setkey at xfrm_state init); per packet nothing is
//! allocated and nothing is re-keyed.
//!
//! GCM has two backends behind [`GcmKey`]: ring (fast, used to seal and to open full
//! 16-byte tags) and a portable GCM over the `aes` and `ghash` crates (`gcm::PortableGcm`,
//! used to open truncated 8/12-byte tags, which ring cannot verify, and as a
//! cross-check of ring in the tests).
//!
//! Why two: composed from `aes` 0.8 + `ghash` 0.5, GCM is limited by polyval's one-block-
//! at-a-time GHASH. `cargo bench -p xfrm-user --bench crypto` (2-core shared Xeon with
//! VAES/VPCLMULQDQ, paired against ring's own AES-128-GCM seal in the same run) measured
//! at 64 / 512 / 1400 bytes: `GcmKey` (ring) 0.87 / 0.93 / 0.97 of ring's throughput, the
//! portable GCM 0.59 / 0.25 / 0.20. HMAC-SHA-256 (`hmac` + `sha2`, SHA-NI) ran at
//! 1.48 / 1.20 / 1.10 of ring's HMAC.

pub mod gcm;
pub mod hmac;

pub use gcm::GcmKey;
pub use hmac::HmacKey;

use crate::sa::{AeadAlgo, SaAlgorithm};

#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum CryptoError {
    #[error("bad key length {0}")]
    BadKeyLength(usize),
    #[error("bad ICV length {0}")]
    BadIcvLength(usize),
    /// Also returned when the input exceeds GCM's limit of 2^36 - 32 bytes, which no IP
    /// packet (at most 2^32 - 1 bytes, IPv6 jumbogram) reaches.
    #[error("ICV mismatch")]
    IcvMismatch,
}

/// What an SA needs at run time, built once from its config.
pub enum SaCrypto {
    /// ESP rfc4106(gcm(aes)): ICV of 8, 12 or 16 bytes.
    Gcm { key: GcmKey, icv_len: usize },
    /// ESP rfc4543(gcm(aes)): GMAC, ICV always 16 bytes.
    Gmac { key: GcmKey },
    /// AH hmac(sha256) / hmac(sha1), ICV truncated to `icv_len` bytes.
    Hmac { key: HmacKey, icv_len: usize },
}

impl SaCrypto {
    pub fn from_algorithm(a: &SaAlgorithm) -> Result<Self, CryptoError> {
        match a {
            SaAlgorithm::Aead {
                algo,
                key,
                salt,
                icv_bits,
            } => {
                let icv_len = bits_to_bytes(*icv_bits)?;
                let key = GcmKey::new(key, *salt)?;
                match algo {
                    AeadAlgo::Rfc4106Gcm => {
                        if !gcm::TAG_LENS.contains(&icv_len) {
                            return Err(CryptoError::BadIcvLength(icv_len));
                        }
                        Ok(SaCrypto::Gcm { key, icv_len })
                    }
                    // RFC 4543 section 5: the ICV is the full 16-byte tag; the kernel's
                    // rfc4543 template rejects any other authsize.
                    AeadAlgo::Rfc4543Gmac => {
                        if icv_len != gcm::TAG_LEN {
                            return Err(CryptoError::BadIcvLength(icv_len));
                        }
                        Ok(SaCrypto::Gmac { key })
                    }
                }
            }
            SaAlgorithm::Auth {
                algo,
                key,
                trunc_bits,
            } => {
                let icv_len = bits_to_bytes(*trunc_bits)?;
                // Like the kernel's hmac template: a truncation to 0 or beyond the digest is
                // refused (crypto_hash_setauthsize / xfrm_algo's "trunc_len > icv_fullbits").
                if icv_len == 0 || *trunc_bits > algo.full_bits() {
                    return Err(CryptoError::BadIcvLength(icv_len));
                }
                Ok(SaCrypto::Hmac {
                    key: HmacKey::new(*algo, key),
                    icv_len,
                })
            }
        }
    }

    /// ICV length on the wire in bytes.
    pub fn icv_len(&self) -> usize {
        match self {
            SaCrypto::Gcm { icv_len, .. } | SaCrypto::Hmac { icv_len, .. } => *icv_len,
            SaCrypto::Gmac { .. } => gcm::TAG_LEN,
        }
    }
}

/// ICV bits as configured -> bytes; only whole bytes are meaningful on the wire.
fn bits_to_bytes(bits: u32) -> Result<usize, CryptoError> {
    let bytes = usize::try_from(bits / 8).map_err(|_| CryptoError::BadIcvLength(usize::MAX))?;
    if !bits.is_multiple_of(8) {
        return Err(CryptoError::BadIcvLength(bytes));
    }
    Ok(bytes)
}

/// Hex (whitespace ignored) to bytes, for the known-answer tests.
#[cfg(test)]
pub(crate) fn test_hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sa::AuthAlgo;
    use zeroize::Zeroizing;

    fn aead(algo: AeadAlgo, key_len: usize, icv_bits: u32) -> SaAlgorithm {
        SaAlgorithm::Aead {
            algo,
            key: Zeroizing::new(vec![7; key_len]),
            salt: [1, 2, 3, 4],
            icv_bits,
        }
    }

    fn auth(algo: AuthAlgo, trunc_bits: u32) -> SaAlgorithm {
        SaAlgorithm::Auth {
            algo,
            key: Zeroizing::new(vec![9; 20]),
            trunc_bits,
        }
    }

    #[test]
    fn from_algorithm_icv_lengths() {
        for (bits, len) in [(64, 8), (96, 12), (128, 16)] {
            for key_len in [16, 32] {
                let c =
                    SaCrypto::from_algorithm(&aead(AeadAlgo::Rfc4106Gcm, key_len, bits)).unwrap();
                assert!(matches!(c, SaCrypto::Gcm { .. }));
                assert_eq!(c.icv_len(), len);
            }
        }
        let c = SaCrypto::from_algorithm(&aead(AeadAlgo::Rfc4543Gmac, 16, 128)).unwrap();
        assert!(matches!(c, SaCrypto::Gmac { .. }));
        assert_eq!(c.icv_len(), 16);
        let c = SaCrypto::from_algorithm(&auth(AuthAlgo::HmacSha256, 128)).unwrap();
        assert!(matches!(c, SaCrypto::Hmac { .. }));
        assert_eq!(c.icv_len(), 16);
        let c = SaCrypto::from_algorithm(&auth(AuthAlgo::HmacSha1, 96)).unwrap();
        assert_eq!(c.icv_len(), 12);
        let c = SaCrypto::from_algorithm(&auth(AuthAlgo::HmacSha256, 256)).unwrap();
        assert_eq!(c.icv_len(), 32);
    }

    #[test]
    fn from_algorithm_rejects() {
        let err = |a: SaAlgorithm| SaCrypto::from_algorithm(&a).err();
        assert_eq!(
            err(aead(AeadAlgo::Rfc4106Gcm, 24, 128)),
            Some(CryptoError::BadKeyLength(24))
        );
        assert_eq!(
            err(aead(AeadAlgo::Rfc4106Gcm, 16, 32)),
            Some(CryptoError::BadIcvLength(4))
        );
        assert_eq!(
            err(aead(AeadAlgo::Rfc4106Gcm, 16, 100)),
            Some(CryptoError::BadIcvLength(12))
        );
        assert_eq!(
            err(aead(AeadAlgo::Rfc4543Gmac, 16, 96)),
            Some(CryptoError::BadIcvLength(12))
        );
        assert_eq!(
            err(auth(AuthAlgo::HmacSha1, 192)),
            Some(CryptoError::BadIcvLength(24))
        );
        assert_eq!(
            err(auth(AuthAlgo::HmacSha256, 0)),
            Some(CryptoError::BadIcvLength(0))
        );
    }

    /// Every SA of the shipped example config gets its run-time crypto, with the ICV
    /// length its config line says.
    #[test]
    fn example_config_builds() {
        let text = include_str!("../../examples/site-a.conf");
        let config = crate::config::parse_config(text, "site-a.conf").unwrap();
        assert!(!config.states.is_empty());
        for sa in &config.states {
            let c = SaCrypto::from_algorithm(&sa.algorithm).unwrap();
            let bits = match &sa.algorithm {
                SaAlgorithm::Aead { icv_bits, .. } => *icv_bits,
                SaAlgorithm::Auth { trunc_bits, .. } => *trunc_bits,
            };
            assert_eq!(c.icv_len() * 8, bits as usize);
        }
    }
}
