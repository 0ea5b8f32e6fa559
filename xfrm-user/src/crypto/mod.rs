//! The transforms' cryptography. ESP: AES-GCM for rfc4106(gcm(aes)), AES-GMAC for
//! rfc4543(gcm(aes)), ChaCha20-Poly1305 for rfc7539esp(chacha20,poly1305) (`chacha`), and
//! a cipher (cbc(aes), rfc3686(ctr(aes)), cipher_null: `cipher`) with HMAC-SHA-1/256/384/512
//! encrypt-then-MAC (`authenc`). AH: HMAC (`hmac`).
//!
//! Keys are set up once per SA (`SaCrypto::from_algorithm`, like the kernel's
//! crypto_aead_setkey / crypto_ahash_setkey at xfrm_state init); per packet nothing is
//! allocated and nothing is re-keyed.
//!
//! GCM has four backends behind [`GcmKey`]:
//! - `gcm_vaes::VaesGcm`: 512-bit VAES + VPCLMULQDQ (x86_64 with AVX-512), sixteen blocks
//!   per step with one GHASH reduction, masked loads/stores for the tail, the ESP AAD and
//!   the length block folded into the first/last step. Seals and opens (any tag length)
//!   wherever the CPU has it (checked once per key).
//! - `gcm_vaes256::Vaes256Gcm`: the same with 256-bit VAES (AVX2, no AVX-512), eight
//!   blocks per step, the tail through a stack copy: CPUs with VAES but without AVX-512.
//! - ring: seal and full-tag open elsewhere.
//! - a portable GCM over the `aes` and `ghash` crates (`gcm::PortableGcm`): truncated-tag
//!   open where VAES is missing (ring cannot verify those), and a cross-check in the tests.
//!
//! Why: composed from `aes` 0.8 + `ghash` 0.5, GCM is limited by polyval's one-block-at-a-
//! time GHASH, and ring's seal carries ~45 ns of fixed cost per call (partial block, AAD and
//! tag through separate assembly calls). `cargo bench -p xfrm-user --bench crypto` (2-core
//! shared Sapphire Rapids Xeon, paired against ring's own AES-128-GCM seal in the same run)
//! measured at 64 / 512 / 1400 bytes: `GcmKey` (VAES) 3.01 / 1.63 / 1.87 of ring's
//! throughput (23.8 / 63.7 / 119.8 ns against ring's 70.1 / 103.3 / 228.8 ns), the portable
//! GCM 0.59 / 0.24 / 0.20. HMAC-SHA-256 (`hmac` + `sha2`, SHA-NI) ran at 1.52 / 1.20 / 1.10
//! of ring's HMAC. On a 2-core VM with VAES and AVX2 but no AVX-512 (where ring runs its own
//! VAES/AVX2 code), the same bench gave `GcmKey` (VAES-256) 1.55 / 1.23 / 1.24 of ring's
//! throughput (57.0 / 117.4 / 248.3 ns against 88.5 / 144.7 / 306.9 ns).

pub mod authenc;
pub mod chacha;
pub mod cipher;
pub mod gcm;
#[cfg(target_arch = "x86_64")]
mod gcm_vaes;
#[cfg(target_arch = "x86_64")]
mod gcm_vaes256;
#[cfg(target_arch = "x86_64")]
mod gcm_x86;

/// The GCMs of our own, by name, with what each needs of the CPU that this one lacks
/// (empty: it runs here). `cargo xtask test` names those that could not run.
pub fn vaes_backends_missing() -> Vec<(&'static str, Vec<&'static str>)> {
    #[cfg(target_arch = "x86_64")]
    return vec![
        ("VAES-512", gcm_vaes::vaes_missing()),
        ("VAES-256", gcm_vaes256::vaes256_missing()),
    ];
    #[cfg(not(target_arch = "x86_64"))]
    vec![("VAES-512", vec!["x86_64"]), ("VAES-256", vec!["x86_64"])]
}

/// Whether one of our VAES GCMs runs on this CPU (then ring's path is tested as well, with
/// [`ENV_NO_VAES`]).
pub fn cpu_has_vaes() -> bool {
    vaes_backends_missing().iter().any(|(_, m)| m.is_empty())
}

/// Set (to any value), every AES-GCM key made afterwards in this process uses the fallback
/// (ring and the portable GCM), not the VAES code: a machine with VAES tests and measures
/// that path too.
pub const ENV_NO_VAES: &str = "XFRM_GCM_NO_VAES";

pub mod hmac;

pub use authenc::AuthEnc;
pub use chacha::ChaChaKey;
pub use gcm::GcmKey;
pub use hmac::HmacKey;

use crate::sa::{AeadAlgo, AuthAlgo, SaAlgorithm};

#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum CryptoError {
    #[error("bad key length {0}")]
    BadKeyLength(usize),
    #[error("bad ICV length {0}")]
    BadIcvLength(usize),
    #[error("ICV mismatch")]
    IcvMismatch,
    /// The input exceeds GCM's limit of 2^36 - 32 bytes, which no IP packet (at most
    /// 2^32 - 1 bytes, IPv6 jumbogram) reaches.
    #[error("text of {0} bytes too long")]
    TextTooLong(usize),
    /// The AEAD library refused to seal (it does so only for inputs past its limits).
    #[error("seal failed")]
    SealFailed,
    /// A CBC text that is no whole number of blocks, or an IV of the wrong length.
    #[error("bad length {0}")]
    BadLength(usize),
    /// The operating system gave no random bytes (CBC's per-SA IV block).
    #[error("no random numbers")]
    NoRandom,
}

/// The AEADs of ESP whose nonce is salt || 8-byte IV and whose AAD is SPI || [seq_hi ||]
/// seq (RFC 4106 section 5, RFC 7634 section 2.1): one ESP code path serves both, statically
/// dispatched.
pub trait EspAead {
    /// Encrypts `in_out` in place, writes the ICV into `tag` (its length is the ICV's).
    fn seal(
        &self,
        iv: &[u8; 8],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), CryptoError>;
    /// Verifies `tag`, then decrypts in place; on Err `in_out` must not be used.
    fn open(
        &self,
        iv: &[u8; 8],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8],
    ) -> Result<(), CryptoError>;
}

impl EspAead for GcmKey {
    #[inline]
    fn seal(
        &self,
        iv: &[u8; 8],
        aad: &[u8],
        t: &mut [u8],
        tag: &mut [u8],
    ) -> Result<(), CryptoError> {
        self.seal_in_place(iv, aad, t, tag)
    }
    #[inline]
    fn open(&self, iv: &[u8; 8], aad: &[u8], t: &mut [u8], tag: &[u8]) -> Result<(), CryptoError> {
        self.open_in_place(iv, aad, t, tag)
    }
}

/// What an SA needs at run time, built once from its config.
pub enum SaCrypto {
    /// ESP rfc4106(gcm(aes)): ICV of 8, 12 or 16 bytes.
    Gcm { key: GcmKey, icv_len: usize },
    /// ESP rfc4543(gcm(aes)): GMAC, ICV always 16 bytes.
    Gmac { key: GcmKey },
    /// ESP rfc7539esp(chacha20,poly1305): ICV always 16 bytes.
    ChaCha { key: ChaChaKey },
    /// ESP `enc` + `auth`: a cipher and a truncated HMAC, encrypt-then-MAC.
    AuthEnc(AuthEnc),
    /// AH hmac(sha256) / hmac(sha1) / …, ICV truncated to `icv_len` bytes.
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
                match algo {
                    AeadAlgo::Rfc4106Gcm => {
                        let key = GcmKey::new(key, *salt)?;
                        if !gcm::TAG_LENS.contains(&icv_len) {
                            return Err(CryptoError::BadIcvLength(icv_len));
                        }
                        Ok(SaCrypto::Gcm { key, icv_len })
                    }
                    // RFC 4543 section 5: the ICV is the full 16-byte tag; the kernel's
                    // rfc4543 template rejects any other authsize.
                    AeadAlgo::Rfc4543Gmac => {
                        let key = GcmKey::new(key, *salt)?;
                        if icv_len != gcm::TAG_LEN {
                            return Err(CryptoError::BadIcvLength(icv_len));
                        }
                        Ok(SaCrypto::Gmac { key })
                    }
                    // The kernel's chachapoly_setauthsize: the full 16-byte tag only.
                    AeadAlgo::Rfc7539EspChaCha20Poly1305 => {
                        let key = ChaChaKey::new(key, *salt)?;
                        if icv_len != chacha::TAG_LEN {
                            return Err(CryptoError::BadIcvLength(icv_len));
                        }
                        Ok(SaCrypto::ChaCha { key })
                    }
                }
            }
            SaAlgorithm::Auth {
                algo,
                key,
                trunc_bits,
            } => {
                let icv_len = hmac_icv_len(*algo, *trunc_bits)?;
                Ok(SaCrypto::Hmac {
                    key: HmacKey::new(*algo, key),
                    icv_len,
                })
            }
            SaAlgorithm::EncAuth {
                enc,
                enc_key,
                auth,
                auth_key,
                trunc_bits,
            } => {
                let icv_len = hmac_icv_len(*auth, *trunc_bits)?;
                Ok(SaCrypto::AuthEnc(AuthEnc::new(
                    *enc, enc_key, *auth, auth_key, icv_len,
                )?))
            }
        }
    }

    /// ICV length on the wire in bytes.
    pub fn icv_len(&self) -> usize {
        match self {
            SaCrypto::Gcm { icv_len, .. } | SaCrypto::Hmac { icv_len, .. } => *icv_len,
            SaCrypto::Gmac { .. } => gcm::TAG_LEN,
            SaCrypto::ChaCha { .. } => chacha::TAG_LEN,
            SaCrypto::AuthEnc(a) => a.icv_len,
        }
    }

    /// Whether this is an ESP transform (AH takes `Hmac` only).
    pub fn is_esp(&self) -> bool {
        !matches!(self, SaCrypto::Hmac { .. })
    }
}

/// Like the kernel's hmac template: a truncation to 0 or beyond the digest is refused
/// (crypto_hash_setauthsize / xfrm_algo's "trunc_len > icv_fullbits").
fn hmac_icv_len(algo: AuthAlgo, trunc_bits: u32) -> Result<usize, CryptoError> {
    let icv_len = bits_to_bytes(trunc_bits)?;
    if icv_len == 0 || trunc_bits > algo.full_bits() {
        return Err(CryptoError::BadIcvLength(icv_len));
    }
    Ok(icv_len)
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
    use crate::sa::EncAlgo;
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

    #[test]
    fn from_algorithm_new_esp_algorithms() {
        let c =
            SaCrypto::from_algorithm(&aead(AeadAlgo::Rfc7539EspChaCha20Poly1305, 32, 128)).unwrap();
        assert!(matches!(c, SaCrypto::ChaCha { .. }) && c.icv_len() == 16 && c.is_esp());
        for (key_len, bits) in [(32, 96), (16, 128)] {
            assert!(SaCrypto::from_algorithm(&aead(
                AeadAlgo::Rfc7539EspChaCha20Poly1305,
                key_len,
                bits
            ))
            .is_err());
        }
        let ea = |enc, enc_len, auth, trunc_bits| SaAlgorithm::EncAuth {
            enc,
            enc_key: Zeroizing::new(vec![3; enc_len]),
            auth,
            auth_key: Zeroizing::new(vec![4; 32]),
            trunc_bits,
        };
        for (enc, len, auth, bits) in [
            (EncAlgo::AesCbc, 16, AuthAlgo::HmacSha256, 128),
            (EncAlgo::AesCbc, 24, AuthAlgo::HmacSha384, 192),
            (EncAlgo::AesCbc, 32, AuthAlgo::HmacSha512, 256),
            (EncAlgo::AesCbc, 16, AuthAlgo::HmacSha1, 96),
            (EncAlgo::AesCtr, 20, AuthAlgo::HmacSha256, 128),
            (EncAlgo::Null, 0, AuthAlgo::HmacSha256, 128),
        ] {
            let c = SaCrypto::from_algorithm(&ea(enc, len, auth, bits)).unwrap();
            assert!(matches!(c, SaCrypto::AuthEnc(_)) && c.is_esp());
            assert_eq!(c.icv_len() * 8, bits as usize);
        }
        let err = |a: SaAlgorithm| SaCrypto::from_algorithm(&a).err();
        assert_eq!(
            err(ea(EncAlgo::AesCbc, 20, AuthAlgo::HmacSha256, 128)),
            Some(CryptoError::BadKeyLength(20))
        );
        assert_eq!(
            err(ea(EncAlgo::AesCbc, 16, AuthAlgo::HmacSha256, 264)),
            Some(CryptoError::BadIcvLength(33))
        );
        assert_eq!(
            err(ea(EncAlgo::Null, 4, AuthAlgo::HmacSha1, 96)),
            Some(CryptoError::BadKeyLength(4))
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
            assert_eq!(c.icv_len() * 8, sa.algorithm.icv_bits() as usize);
        }
    }
}
