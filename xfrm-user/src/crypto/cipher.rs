//! The ciphers of ESP with a separate integrity algorithm: cbc(aes) (RFC 3602),
//! rfc3686(ctr(aes)) (RFC 3686) and cipher_null (RFC 2410), over the RustCrypto `aes`,
//! `cbc` and `ctr` crates. Keyed once per SA; per packet nothing is allocated: the modes
//! borrow the expanded key (`&Aes128Enc` is a block cipher too).
//!
//! The IV a packet carries:
//! - CBC needs an IV the attacker cannot predict (RFC 3602 section 2.4). We use the first
//!   method of NIST SP 800-38A appendix C: IV = AES_K(nonce), the nonce unique per packet,
//!   here the 64-bit sequence number XOR a random per-SA block. Like the kernel's
//!   echainiv, it costs one block encryption and no random numbers per packet (a CSPRNG
//!   call per packet would cost more than the block); without the key the IV cannot be
//!   told from random, and the sequence number never repeats under a key (see
//!   xfrm_replay_overflow and the state file), so neither does the nonce.
//! - CTR needs only a unique IV (RFC 3686 section 3): the 64-bit sequence number, as for
//!   GCM.

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{
    BlockDecryptMut, BlockEncrypt, BlockEncryptMut, InnerIvInit, KeyInit, StreamCipher,
};
use aes::{Aes128Dec, Aes128Enc, Aes192Dec, Aes192Enc, Aes256Dec, Aes256Enc, Block};
use zeroize::Zeroize;

use super::CryptoError;
use crate::sa::EncAlgo;

/// Largest IV of these ciphers (CBC's 16 bytes).
pub const MAX_IV_LEN: usize = 16;
/// AES block.
const BLOCK: usize = 16;

/// An AES key schedule of one of the three sizes, encryption and decryption halves.
pub struct AesKey(AesKeys);

// Built once per SA and never moved per packet: the size of the largest variant is paid
// once, and boxing would add a pointer chase per packet.
#[allow(clippy::large_enum_variant)]
enum AesKeys {
    A128(Aes128Enc, Aes128Dec),
    A192(Aes192Enc, Aes192Dec),
    A256(Aes256Enc, Aes256Dec),
}

impl AesKey {
    fn new(key: &[u8]) -> Result<Self, CryptoError> {
        let bad = |_| CryptoError::BadKeyLength(key.len());
        Ok(AesKey(match key.len() {
            16 => AesKeys::A128(
                Aes128Enc::new_from_slice(key).map_err(bad)?,
                Aes128Dec::new_from_slice(key).map_err(bad)?,
            ),
            24 => AesKeys::A192(
                Aes192Enc::new_from_slice(key).map_err(bad)?,
                Aes192Dec::new_from_slice(key).map_err(bad)?,
            ),
            32 => AesKeys::A256(
                Aes256Enc::new_from_slice(key).map_err(bad)?,
                Aes256Dec::new_from_slice(key).map_err(bad)?,
            ),
            n => return Err(CryptoError::BadKeyLength(n)),
        }))
    }

    fn encrypt_block(&self, b: &mut Block) {
        match &self.0 {
            AesKeys::A128(e, _) => e.encrypt_block(b),
            AesKeys::A192(e, _) => e.encrypt_block(b),
            AesKeys::A256(e, _) => e.encrypt_block(b),
        }
    }
}

/// The cipher of an `enc` SA, keyed.
pub enum EspCipher {
    /// cbc(aes) with the random block that IVs are made from.
    Cbc { key: AesKey, iv_mask: [u8; BLOCK] },
    /// rfc3686(ctr(aes)): the AES key and the 4-byte nonce from the end of the `enc` key.
    Ctr { key: AesKey, nonce: [u8; 4] },
    /// cipher_null.
    Null,
}

impl Drop for EspCipher {
    fn drop(&mut self) {
        // The `aes` crate wipes its round keys itself (feature "zeroize").
        if let EspCipher::Cbc { iv_mask, .. } = self {
            iv_mask.zeroize();
        }
    }
}

impl EspCipher {
    /// Keys the cipher as the kernel's setkey would accept it: cbc(aes) 16, 24 or 32
    /// bytes; rfc3686(ctr(aes)) the same plus the 4-byte nonce; cipher_null no key.
    pub fn new(algo: EncAlgo, key: &[u8]) -> Result<Self, CryptoError> {
        match algo {
            EncAlgo::AesCbc => {
                let mut iv_mask = [0u8; BLOCK];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut iv_mask)
                    .map_err(|_| CryptoError::NoRandom)?;
                Ok(EspCipher::Cbc {
                    key: AesKey::new(key)?,
                    iv_mask,
                })
            }
            EncAlgo::AesCtr => {
                let split = key
                    .len()
                    .checked_sub(4)
                    .ok_or(CryptoError::BadKeyLength(key.len()))?;
                let aes =
                    AesKey::new(&key[..split]).map_err(|_| CryptoError::BadKeyLength(key.len()))?;
                let mut nonce = [0u8; 4];
                nonce.copy_from_slice(&key[split..]);
                Ok(EspCipher::Ctr { key: aes, nonce })
            }
            EncAlgo::Null if key.is_empty() => Ok(EspCipher::Null),
            EncAlgo::Null => Err(CryptoError::BadKeyLength(key.len())),
        }
    }

    /// IV length on the wire.
    pub fn iv_len(&self) -> usize {
        match self {
            EspCipher::Cbc { .. } => BLOCK,
            EspCipher::Ctr { .. } => 8,
            EspCipher::Null => 0,
        }
    }

    /// Writes the IV of packet `seq` into `iv` (`iv_len()` bytes; see the module comment).
    #[inline]
    pub fn make_iv(&self, seq: u64, iv: &mut [u8]) {
        match self {
            EspCipher::Cbc { key, iv_mask } => {
                let mut b = Block::from(*iv_mask);
                for (m, s) in b[8..].iter_mut().zip(seq.to_be_bytes()) {
                    *m ^= s;
                }
                key.encrypt_block(&mut b);
                iv[..BLOCK].copy_from_slice(&b);
            }
            EspCipher::Ctr { .. } => iv[..8].copy_from_slice(&seq.to_be_bytes()),
            EspCipher::Null => {}
        }
    }

    /// Encrypts `data` in place. CBC: `data` is a whole number of blocks (ESP's padding
    /// sees to it) or `Err`.
    #[inline]
    pub fn encrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
        match self {
            EspCipher::Cbc { key, .. } => cbc_encrypt(key, iv, data),
            EspCipher::Ctr { key, nonce } => ctr_apply(key, nonce, iv, data),
            EspCipher::Null => Ok(()),
        }
    }

    /// Decrypts `data` in place; CBC: `Err` unless a whole number of blocks.
    #[inline]
    pub fn decrypt(&self, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
        match self {
            EspCipher::Cbc { key, .. } => cbc_decrypt(key, iv, data),
            EspCipher::Ctr { key, nonce } => ctr_apply(key, nonce, iv, data),
            EspCipher::Null => Ok(()),
        }
    }
}

/// CBC over whole blocks (ESP's padding sees to it); anything else is refused, as the
/// kernel's cbc template refuses it (-EINVAL).
fn cbc_encrypt(key: &AesKey, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
    let iv = Block::from_slice(iv.get(..BLOCK).ok_or(CryptoError::BadLength(iv.len()))?);
    let n = data.len();
    let r = match &key.0 {
        AesKeys::A128(e, _) => cbc::Encryptor::<&Aes128Enc>::inner_iv_init(e, iv)
            .encrypt_padded_mut::<NoPadding>(data, n)
            .map(|_| ()),
        AesKeys::A192(e, _) => cbc::Encryptor::<&Aes192Enc>::inner_iv_init(e, iv)
            .encrypt_padded_mut::<NoPadding>(data, n)
            .map(|_| ()),
        AesKeys::A256(e, _) => cbc::Encryptor::<&Aes256Enc>::inner_iv_init(e, iv)
            .encrypt_padded_mut::<NoPadding>(data, n)
            .map(|_| ()),
    };
    r.map_err(|_| CryptoError::BadLength(n))
}

fn cbc_decrypt(key: &AesKey, iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
    let iv = Block::from_slice(iv.get(..BLOCK).ok_or(CryptoError::BadLength(iv.len()))?);
    let n = data.len();
    let r = match &key.0 {
        AesKeys::A128(_, d) => cbc::Decryptor::<&Aes128Dec>::inner_iv_init(d, iv)
            .decrypt_padded_mut::<NoPadding>(data)
            .map(|_| ()),
        AesKeys::A192(_, d) => cbc::Decryptor::<&Aes192Dec>::inner_iv_init(d, iv)
            .decrypt_padded_mut::<NoPadding>(data)
            .map(|_| ()),
        AesKeys::A256(_, d) => cbc::Decryptor::<&Aes256Dec>::inner_iv_init(d, iv)
            .decrypt_padded_mut::<NoPadding>(data)
            .map(|_| ()),
    };
    r.map_err(|_| CryptoError::BadLength(n))
}

type CtrCore<C> = ctr::CtrCore<C, ctr::flavors::Ctr32BE>;
type Ctr<C> = aes::cipher::StreamCipherCoreWrapper<CtrCore<C>>;

/// RFC 3686 section 4: counter block = nonce || IV || 32-bit big-endian counter from 1.
fn ctr_apply(key: &AesKey, nonce: &[u8; 4], iv: &[u8], data: &mut [u8]) -> Result<(), CryptoError> {
    let mut cb = Block::default();
    cb[..4].copy_from_slice(nonce);
    cb[4..12].copy_from_slice(iv.get(..8).ok_or(CryptoError::BadLength(iv.len()))?);
    cb[15] = 1;
    match &key.0 {
        AesKeys::A128(e, _) => {
            Ctr::<&Aes128Enc>::from_core(CtrCore::inner_iv_init(e, &cb)).apply_keystream(data)
        }
        AesKeys::A192(e, _) => {
            Ctr::<&Aes192Enc>::from_core(CtrCore::inner_iv_init(e, &cb)).apply_keystream(data)
        }
        AesKeys::A256(e, _) => {
            Ctr::<&Aes256Enc>::from_core(CtrCore::inner_iv_init(e, &cb)).apply_keystream(data)
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_hex as hex;

    /// RFC 3602 section 4, cases 1-4 (AES-128-CBC).
    #[test]
    fn rfc3602_aes_cbc() {
        let cases = [
            (
                "06a9214036b8a15b512e03d534120006",
                "3dafba429d9eb430b422da802c9fac41",
                b"Single block msg".to_vec(),
                "e353779c1079aeb82708942dbe77181a",
            ),
            (
                "c286696d887c9aa0611bbb3e2025a45a",
                "562e17996d093d28ddb3ba695a2e6f58",
                (0u8..32).collect(),
                "d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1",
            ),
            (
                "6c3ea0477630ce21a2ce334aa746c2cd",
                "c782dc4c098c66cbd9cd27d825682c81",
                b"This is a 48-byte message (exactly 3 AES blocks)".to_vec(),
                "d0a02b3836451753d493665d33f0e8862dea54cdb293abc7506939276772f8d5021c19216bad525c8579695d83ba2684",
            ),
            (
                "56e47a38c5598974bc46903dba290349",
                "8ce82eefbea0da3c44699ed7db51b7d9",
                (0xa0u8..=0xdf).collect(),
                "c30e32ffedc0774e6aff6af0869f71aa0f3af07a9a31a9c684db207eb0ef8e4e35907aa632c3ffdf868bb7b29d3d46ad83ce9f9a102ee99d49a53e87f4c3da55",
            ),
        ];
        for (key, iv, ptext, ctext) in cases {
            let c = EspCipher::new(EncAlgo::AesCbc, &hex(key)).unwrap();
            let mut d = ptext.clone();
            c.encrypt(&hex(iv), &mut d).unwrap();
            assert_eq!(d, hex(ctext));
            c.decrypt(&hex(iv), &mut d).unwrap();
            assert_eq!(d, ptext);
        }
    }

    /// RFC 3686 section 6, test vectors 1-9 (AES-128/192/256-CTR, key || nonce as ESP
    /// configures it).
    #[test]
    fn rfc3686_aes_ctr() {
        let p16 = b"Single block msg".to_vec();
        let p32: Vec<u8> = (0u8..32).collect();
        let p36: Vec<u8> = (0u8..36).collect();
        let cases = [
            (
                "ae6852f8121067cc4bf7a5765577f39e",
                "00000030",
                "0000000000000000",
                &p16,
                "e4095d4fb7a7b3792d6175a3261311b8",
            ),
            (
                "7e24067817fae0d743d6ce1f32539163",
                "006cb6db",
                "c0543b59da48d90b",
                &p32,
                "5104a106168a72d9790d41ee8edad388eb2e1efc46da57c8fce630df9141be28",
            ),
            (
                "7691be035e5020a8ac6e618529f9a0dc",
                "00e0017b",
                "27777f3f4a1786f0",
                &p36,
                "c1cf48a89f2ffdd9cf4652e9efdb72d74540a42bde6d7836d59a5ceaaef3105325b2072f",
            ),
            (
                "16af5b145fc9f579c175f93e3bfb0eed863d06ccfdb78515",
                "00000048",
                "36733c147d6d93cb",
                &p16,
                "4b55384fe259c9c84e7935a003cbe928",
            ),
            (
                "7c5cb2401b3dc33c19e7340819e0f69c678c3db8e6f6a91a",
                "0096b03b",
                "020c6eadc2cb500d",
                &p32,
                "453243fc609b23327edfaafa7131cd9f8490701c5ad4a79cfc1fe0ff42f4fb00",
            ),
            (
                "02bf391ee8ecb159b959617b0965279bf59b60a786d3e0fe",
                "0007bdfd",
                "5cbd60278dcc0912",
                &p36,
                "96893fc55e5c722f540b7dd1ddf7e758d288bc95c69165884536c811662f2188abee0935",
            ),
            (
                "776beff2851db06f4c8a0542c8696f6c6a81af1eec96b4d37fc1d689e6c1c104",
                "00000060",
                "db5672c97aa8f0b2",
                &p16,
                "145ad01dbf824ec7560863dc71e3e0c0",
            ),
            (
                "f6d66d6bd52d59bb0796365879eff886c66dd51a5b6a99744b50590c87a23884",
                "00faac24",
                "c1585ef15a43d875",
                &p32,
                "f05e231b3894612c49ee000b804eb2a9b8306b508f839d6a5530831d9344af1c",
            ),
            (
                "ff7a617ce69148e4f1726e2f43581de2aa62d9f805532edff1eed687fb54153d",
                "001cc5b7",
                "51a51d70a1c11148",
                &p36,
                "eb6c52821d0bbbf7ce7594462aca4faab407df866569fd07f48cc0b583d6071f1ec0e6b8",
            ),
        ];
        for (key, nonce, iv, ptext, ctext) in cases {
            let mut k = hex(key);
            k.extend(hex(nonce));
            let c = EspCipher::new(EncAlgo::AesCtr, &k).unwrap();
            assert_eq!(c.iv_len(), 8);
            let mut d = ptext.clone();
            c.encrypt(&hex(iv), &mut d).unwrap();
            assert_eq!(d, hex(ctext), "key {key}");
            c.decrypt(&hex(iv), &mut d).unwrap();
            assert_eq!(&d, ptext);
        }
    }

    #[test]
    fn key_lengths_as_the_kernel() {
        for n in [16, 24, 32] {
            assert!(EspCipher::new(EncAlgo::AesCbc, &vec![1; n]).is_ok());
            assert!(EspCipher::new(EncAlgo::AesCtr, &vec![1; n + 4]).is_ok());
        }
        for n in [0, 8, 15, 20, 33] {
            assert_eq!(
                EspCipher::new(EncAlgo::AesCbc, &vec![1; n]).err(),
                Some(CryptoError::BadKeyLength(n))
            );
        }
        for n in [0, 3, 16, 19, 32, 37] {
            assert_eq!(
                EspCipher::new(EncAlgo::AesCtr, &vec![1; n]).err(),
                Some(CryptoError::BadKeyLength(n))
            );
        }
        assert!(EspCipher::new(EncAlgo::Null, &[]).is_ok());
        assert_eq!(
            EspCipher::new(EncAlgo::Null, &[0]).err(),
            Some(CryptoError::BadKeyLength(1))
        );
    }

    #[test]
    fn cbc_refuses_partial_blocks_and_ivs_differ() {
        let c = EspCipher::new(EncAlgo::AesCbc, &[7; 16]).unwrap();
        let mut d = [0u8; 17];
        assert_eq!(c.encrypt(&[0; 16], &mut d), Err(CryptoError::BadLength(17)));
        assert_eq!(
            c.decrypt(&[0; 16], &mut d[..15]),
            Err(CryptoError::BadLength(15))
        );
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        c.make_iv(1, &mut a);
        c.make_iv(2, &mut b);
        assert_ne!(a, b);
        // A second key schedule of the same key has its own random block.
        let c2 = EspCipher::new(EncAlgo::AesCbc, &[7; 16]).unwrap();
        let mut a2 = [0u8; 16];
        c2.make_iv(1, &mut a2);
        assert_ne!(a, a2);
        let mut z = [0u8; 0];
        assert!(c.encrypt(&a, &mut z).is_ok());
    }
}
