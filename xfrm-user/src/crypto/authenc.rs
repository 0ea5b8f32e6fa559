//! ESP with a cipher and a separate integrity algorithm, encrypt-then-MAC (RFC 4303
//! section 3.3.2), as the kernel's authenc / authencesn templates compose them: the cipher
//! encrypts the payload after the IV, then HMAC covers SPI, sequence number, IV and
//! ciphertext; with ESN the high half of the sequence number is appended to what the ICV
//! covers, never sent (RFC 4303 section 2.2.1).

use super::cipher::EspCipher;
use super::hmac::HmacKey;
use super::CryptoError;
use crate::sa::{AuthAlgo, EncAlgo};

/// A keyed `enc` + `auth` pair.
pub struct AuthEnc {
    pub cipher: EspCipher,
    pub mac: HmacKey,
    /// ICV bytes on the wire (the truncated HMAC).
    pub icv_len: usize,
}

impl AuthEnc {
    pub fn new(
        enc: EncAlgo,
        enc_key: &[u8],
        auth: AuthAlgo,
        auth_key: &[u8],
        icv_len: usize,
    ) -> Result<Self, CryptoError> {
        Ok(Self {
            cipher: EspCipher::new(enc, enc_key)?,
            mac: HmacKey::new(auth, auth_key),
            icv_len,
        })
    }

    /// `esp` is SPI | seq | IV | plaintext with `hdr_len` (8 + IV) bytes in front of the
    /// plaintext, the IV already in place. Encrypts the plaintext in place, then writes the
    /// ICV over SPI | seq | IV | ciphertext [| seq_hi] into `icv`.
    #[inline]
    pub fn seal(
        &self,
        esp: &mut [u8],
        hdr_len: usize,
        seq_hi: Option<u32>,
        icv: &mut [u8],
    ) -> Result<(), CryptoError> {
        let (hdr, text) = esp.split_at_mut(hdr_len);
        self.cipher.encrypt(&hdr[8..], text)?;
        let hi = seq_hi.map(u32::to_be_bytes);
        self.mac
            .sign(&[esp, hi.as_ref().map_or(&[], |h| &h[..])], icv);
        Ok(())
    }

    /// The reverse of `seal`: verifies the ICV first (constant time), then decrypts in
    /// place. `IcvMismatch` when the ICV is wrong; `BadLength` when it is right but the
    /// ciphertext is no whole number of cipher blocks (the kernel's -EINVAL after the
    /// hash).
    #[inline]
    pub fn open(
        &self,
        esp: &mut [u8],
        hdr_len: usize,
        seq_hi: Option<u32>,
        icv: &[u8],
    ) -> Result<(), CryptoError> {
        let hi = seq_hi.map(u32::to_be_bytes);
        if icv.len() != self.icv_len
            || !self
                .mac
                .verify(&[esp, hi.as_ref().map_or(&[], |h| &h[..])], icv)
        {
            return Err(CryptoError::IcvMismatch);
        }
        let (hdr, text) = esp.split_at_mut(hdr_len);
        self.cipher.decrypt(&hdr[8..], text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_hex as hex;

    /// The composition: ciphertext is the RFC 3602 case 2 CBC output, and the ICV is
    /// HMAC-SHA-256 over SPI | seq | IV | ciphertext (| seq_hi with ESN), computed here
    /// independently with the `hmac` crate.
    #[test]
    fn encrypt_then_mac_with_and_without_esn() {
        use ::hmac::{Hmac, Mac};
        let key = hex("c286696d887c9aa0611bbb3e2025a45a");
        let iv = hex("562e17996d093d28ddb3ba695a2e6f58");
        let ctext = hex("d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1");
        let akey = [0x0bu8; 32];
        let a = AuthEnc::new(EncAlgo::AesCbc, &key, AuthAlgo::HmacSha256, &akey, 16).unwrap();
        for esn in [None, Some(0x0102_0304u32)] {
            let mut esp = vec![0, 0, 0x12, 0x34, 0, 0, 0, 9];
            esp.extend_from_slice(&iv);
            esp.extend(0u8..32);
            let mut icv = [0u8; 16];
            a.seal(&mut esp, 24, esn, &mut icv).unwrap();
            assert_eq!(esp[24..], ctext[..]);
            let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&akey).unwrap();
            m.update(&esp);
            if let Some(hi) = esn {
                m.update(&hi.to_be_bytes());
            }
            assert_eq!(icv[..], m.finalize().into_bytes()[..16]);
            let wire = esp.clone();
            a.open(&mut esp, 24, esn, &icv).unwrap();
            assert_eq!(esp[24..], (0u8..32).collect::<Vec<_>>()[..]);
            // Wrong ICV, wrong high half, a flipped ciphertext bit: refused, untouched.
            let mut e = wire.clone();
            let other = Some(esn.unwrap_or(0) + 1);
            assert_eq!(
                a.open(&mut e, 24, other, &icv),
                Err(CryptoError::IcvMismatch)
            );
            e[30] ^= 1;
            assert_eq!(a.open(&mut e, 24, esn, &icv), Err(CryptoError::IcvMismatch));
            assert_eq!(
                a.open(&mut e, 24, esn, &icv[..12]),
                Err(CryptoError::IcvMismatch)
            );
        }
    }

    /// A right ICV over a ciphertext that is no whole number of CBC blocks: BadLength.
    #[test]
    fn cbc_partial_block_after_a_valid_icv() {
        let a = AuthEnc::new(EncAlgo::AesCbc, &[1; 16], AuthAlgo::HmacSha1, &[2; 20], 12).unwrap();
        let mut esp = vec![0u8; 8 + 16 + 20];
        let mut icv = [0u8; 12];
        a.mac.sign(&[&esp], &mut icv);
        assert_eq!(
            a.open(&mut esp, 24, None, &icv),
            Err(CryptoError::BadLength(20))
        );
    }
}
