//! Security associations (struct xfrm_state): what the config says (`SaConfig`) and the
//! running state built from it (`SecurityAssociation`).

use std::net::IpAddr;

use crate::selector::Selector;

pub const IPPROTO_ESP: u8 = 50;
pub const IPPROTO_AH: u8 = 51;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XfrmProto {
    Esp,
    Ah,
}

impl XfrmProto {
    pub fn ip_proto(self) -> u8 {
        match self {
            XfrmProto::Esp => IPPROTO_ESP,
            XfrmProto::Ah => IPPROTO_AH,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XfrmMode {
    Transport,
    Tunnel,
}

/// struct xfrm_id: how an SA is found on input (daddr, spi, proto).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct XfrmId {
    pub daddr: IpAddr,
    pub spi: u32,
    pub proto: XfrmProto,
}

/// The AEAD transforms of ESP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AeadAlgo {
    /// rfc4106(gcm(aes)): AES-GCM, ICV 8, 12 or 16 bytes.
    Rfc4106Gcm,
    /// rfc4543(gcm(aes)): AES-GMAC, authentication only, ICV 16 bytes.
    Rfc4543Gmac,
    /// rfc7539esp(chacha20,poly1305): ChaCha20-Poly1305 (RFC 7634), 32-byte key, ICV 16
    /// bytes.
    Rfc7539EspChaCha20Poly1305,
}

impl AeadAlgo {
    /// The name `ip xfrm` and the kernel give it.
    pub fn name(self) -> &'static str {
        match self {
            AeadAlgo::Rfc4106Gcm => "rfc4106(gcm(aes))",
            AeadAlgo::Rfc4543Gmac => "rfc4543(gcm(aes))",
            AeadAlgo::Rfc7539EspChaCha20Poly1305 => "rfc7539esp(chacha20,poly1305)",
        }
    }
}

/// The integrity transforms of AH, and of ESP beside a cipher (`enc` + `auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthAlgo {
    HmacSha256,
    HmacSha1,
    HmacSha384,
    HmacSha512,
}

impl AuthAlgo {
    /// Truncation used by `auth` without an explicit length (the kernel's xfrm_algo.c
    /// `icv_truncbits`, which `auth` gets as alg_trunc_len).
    pub fn default_trunc_bits(self) -> u32 {
        match self {
            AuthAlgo::HmacSha256 => 96, // the kernel's historical default for "auth hmac(sha256)"
            AuthAlgo::HmacSha1 => 96,
            AuthAlgo::HmacSha384 => 192,
            AuthAlgo::HmacSha512 => 256,
        }
    }
    pub fn full_bits(self) -> u32 {
        match self {
            AuthAlgo::HmacSha256 => 256,
            AuthAlgo::HmacSha1 => 160,
            AuthAlgo::HmacSha384 => 384,
            AuthAlgo::HmacSha512 => 512,
        }
    }
    /// The name `ip xfrm` and the kernel give it.
    pub fn name(self) -> &'static str {
        match self {
            AuthAlgo::HmacSha256 => "hmac(sha256)",
            AuthAlgo::HmacSha1 => "hmac(sha1)",
            AuthAlgo::HmacSha384 => "hmac(sha384)",
            AuthAlgo::HmacSha512 => "hmac(sha512)",
        }
    }
}

/// The ciphers of ESP with a separate integrity algorithm (`enc NAME KEY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncAlgo {
    /// cbc(aes): AES-128/192/256-CBC (RFC 3602), 16-byte IV, 16-byte blocks.
    AesCbc,
    /// rfc3686(ctr(aes)): AES-CTR (RFC 3686), key = AES key || 4-byte nonce, 8-byte IV.
    AesCtr,
    /// cipher_null / ecb(cipher_null) (RFC 2410): no encryption, no IV, empty key.
    Null,
}

impl EncAlgo {
    /// The name `ip xfrm` and the kernel give it.
    pub fn name(self) -> &'static str {
        match self {
            EncAlgo::AesCbc => "cbc(aes)",
            EncAlgo::AesCtr => "rfc3686(ctr(aes))",
            EncAlgo::Null => "ecb(cipher_null)",
        }
    }
    /// crypto_skcipher_ivsize: the IV ESP carries in front of the payload.
    pub fn iv_len(self) -> usize {
        match self {
            EncAlgo::AesCbc => 16,
            EncAlgo::AesCtr => 8,
            EncAlgo::Null => 0,
        }
    }
    /// crypto_skcipher_blocksize (CTR and NULL are stream ciphers: 1).
    pub fn block_size(self) -> usize {
        match self {
            EncAlgo::AesCbc => 16,
            EncAlgo::AesCtr | EncAlgo::Null => 1,
        }
    }
}

/// The algorithm of an SA with its key material. Keys and salt are zeroized on drop, and
/// `Debug` shows their length, never their bytes (a `{:?}` in a log or a panic message must
/// not carry them).
#[derive(Clone, PartialEq, Eq)]
pub enum SaAlgorithm {
    /// `key` is the cipher key (16 or 32 bytes) without the 4-byte salt.
    Aead {
        algo: AeadAlgo,
        key: zeroize::Zeroizing<Vec<u8>>,
        salt: [u8; 4],
        icv_bits: u32,
    },
    Auth {
        algo: AuthAlgo,
        key: zeroize::Zeroizing<Vec<u8>>,
        trunc_bits: u32,
    },
    /// ESP with a cipher and a separate integrity algorithm, encrypt-then-MAC (the kernel's
    /// authenc / authencesn). `enc_key` as configured (rfc3686: AES key || nonce).
    EncAuth {
        enc: EncAlgo,
        enc_key: zeroize::Zeroizing<Vec<u8>>,
        auth: AuthAlgo,
        auth_key: zeroize::Zeroizing<Vec<u8>>,
        trunc_bits: u32,
    },
}

impl SaAlgorithm {
    /// The ICV length in bits on the wire.
    pub fn icv_bits(&self) -> u32 {
        match self {
            SaAlgorithm::Aead { icv_bits, .. } => *icv_bits,
            SaAlgorithm::Auth { trunc_bits, .. } | SaAlgorithm::EncAuth { trunc_bits, .. } => {
                *trunc_bits
            }
        }
    }

    /// crypto_aead_ivsize of the ESP transform: the IV after the ESP header.
    pub fn esp_iv_len(&self) -> usize {
        match self {
            SaAlgorithm::Aead { .. } => 8,
            SaAlgorithm::EncAuth { enc, .. } => enc.iv_len(),
            // ESP with only an integrity algorithm would be ecb(cipher_null): no IV.
            SaAlgorithm::Auth { .. } => 0,
        }
    }

    /// ALIGN(crypto_aead_blocksize, 4): what ESP pads the encrypted part to. GCM, GMAC,
    /// ChaCha20, CTR and NULL are stream modes (block size 1, so 4); CBC pads to 16.
    pub fn esp_block_size(&self) -> usize {
        let b = match self {
            SaAlgorithm::EncAuth { enc, .. } => enc.block_size(),
            _ => 1,
        };
        b.div_ceil(4) * 4
    }
}

impl Drop for SaAlgorithm {
    fn drop(&mut self) {
        // The key is a Zeroizing<Vec>; the salt is key material too (the last 4 bytes of
        // the configured key).
        if let SaAlgorithm::Aead { salt, .. } = self {
            zeroize::Zeroize::zeroize(salt);
        }
    }
}

impl std::fmt::Debug for SaAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SaAlgorithm::Aead {
                algo,
                key,
                icv_bits,
                ..
            } => f
                .debug_struct("Aead")
                .field("algo", algo)
                .field("key", &format_args!("<{} bytes + 4-byte salt>", key.len()))
                .field("icv_bits", icv_bits)
                .finish(),
            SaAlgorithm::Auth {
                algo,
                key,
                trunc_bits,
            } => f
                .debug_struct("Auth")
                .field("algo", algo)
                .field("key", &format_args!("<{} bytes>", key.len()))
                .field("trunc_bits", trunc_bits)
                .finish(),
            SaAlgorithm::EncAuth {
                enc,
                enc_key,
                auth,
                auth_key,
                trunc_bits,
            } => f
                .debug_struct("EncAuth")
                .field("enc", enc)
                .field("enc_key", &format_args!("<{} bytes>", enc_key.len()))
                .field("auth", auth)
                .field("auth_key", &format_args!("<{} bytes>", auth_key.len()))
                .field("trunc_bits", trunc_bits)
                .finish(),
        }
    }
}

/// `flag …` of ip xfrm state (XFRM_STATE_*).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaFlags {
    pub noecn: bool,
    pub decap_dscp: bool,
    pub nopmtudisc: bool,
    pub align4: bool,
    pub esn: bool,
    pub af_unspec: bool,
}

/// `extra-flag …` of ip xfrm state (XFRM_SA_XFLAG_*).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaExtraFlags {
    pub dont_encap_dscp: bool,
    pub oseq_may_wrap: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncapType {
    /// UDP_ENCAP_ESPINUDP (RFC 3948): ESP directly after the UDP header.
    EspInUdp,
    /// UDP_ENCAP_ESPINUDP_NON_IKE: 8 zero bytes between UDP and ESP (old drafts).
    EspInUdpNonIke,
}

/// `encap TYPE SPORT DPORT OADDR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Encap {
    pub kind: EncapType,
    pub sport: u16,
    pub dport: u16,
    pub oaddr: IpAddr,
}

/// `limit …`: soft and hard lifetimes. `u64::MAX` means unlimited ("inf").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    pub soft_byte_limit: u64,
    pub hard_byte_limit: u64,
    pub soft_packet_limit: u64,
    pub hard_packet_limit: u64,
    /// Seconds since the SA was added.
    pub soft_add_expires_seconds: u64,
    pub hard_add_expires_seconds: u64,
    /// Seconds since the SA was first used.
    pub soft_use_expires_seconds: u64,
    pub hard_use_expires_seconds: u64,
}

impl Default for Lifetime {
    fn default() -> Self {
        Self {
            soft_byte_limit: u64::MAX,
            hard_byte_limit: u64::MAX,
            soft_packet_limit: u64::MAX,
            hard_packet_limit: u64::MAX,
            soft_add_expires_seconds: 0,
            hard_add_expires_seconds: 0,
            soft_use_expires_seconds: 0,
            hard_use_expires_seconds: 0,
        }
    }
}

/// One `state add` line, parsed and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaConfig {
    pub id: XfrmId,
    pub saddr: IpAddr,
    pub reqid: u32,
    pub mode: XfrmMode,
    pub algorithm: SaAlgorithm,
    /// Anti-replay window in packets (0 = no replay protection); at most 4096.
    pub replay_window: u32,
    /// Input: last sequence number seen (low, high 32 bits).
    pub replay_seq: u32,
    pub replay_seq_hi: u32,
    /// Output: last sequence number sent (low, high 32 bits); the first packet is +1.
    pub replay_oseq: u32,
    pub replay_oseq_hi: u32,
    pub flags: SaFlags,
    pub extra_flags: SaExtraFlags,
    pub encap: Option<Encap>,
    /// TFC padding target length (0 = none).
    pub tfcpad: u32,
    pub lifetime: Lifetime,
    /// `sel …`. Without `sel` the config parser does what Linux's copy_from_user_state does:
    /// the "any" selector of the SA's own family (only that family's packets use the SA), or
    /// None with `flag af-unspec` (packets of either family: nothing to check).
    pub selector: Option<Selector>,
}

impl SaConfig {
    /// An SA with the rest as `ip xfrm state add` leaves it when not given: no replay
    /// window, sequence numbers from 0, no flags, no encapsulation, no TFC padding, no
    /// lifetime limits, no selector.
    pub fn new(
        id: XfrmId,
        saddr: IpAddr,
        reqid: u32,
        mode: XfrmMode,
        algorithm: SaAlgorithm,
    ) -> Self {
        Self {
            id,
            saddr,
            reqid,
            mode,
            algorithm,
            replay_window: 0,
            replay_seq: 0,
            replay_seq_hi: 0,
            replay_oseq: 0,
            replay_oseq_hi: 0,
            flags: SaFlags::default(),
            extra_flags: SaExtraFlags::default(),
            encap: None,
            tfcpad: 0,
            lifetime: Lifetime::default(),
            selector: None,
        }
    }

    /// The first 64-bit output sequence number minus one.
    pub fn initial_oseq(&self) -> u64 {
        (u64::from(self.replay_oseq_hi) << 32) | u64::from(self.replay_oseq)
    }
}
