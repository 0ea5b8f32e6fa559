//! SAs for tests that need many of them (SA tables of the outside classifier): valid
//! `SaConfig`s with fixed keys, built without a config file.

use std::net::IpAddr;

use xfrm_user::sa::{
    AeadAlgo, AuthAlgo, Encap, EncapType, Lifetime, SaAlgorithm, SaConfig, SaExtraFlags, SaFlags,
    XfrmId, XfrmMode, XfrmProto,
};

/// ESP, AES-GCM-128 (rfc4106, 16-byte ICV), tunnel mode, from `src` to `dst`.
pub fn esp(spi: u32, src: IpAddr, dst: IpAddr) -> SaConfig {
    SaConfig {
        id: XfrmId {
            daddr: dst,
            spi,
            proto: XfrmProto::Esp,
        },
        saddr: src,
        reqid: 1,
        mode: XfrmMode::Tunnel,
        algorithm: SaAlgorithm::Aead {
            algo: AeadAlgo::Rfc4106Gcm,
            key: zeroize::Zeroizing::new((1..=16).collect()),
            salt: [0xca, 0xfe, 0xba, 0xbe],
            icv_bits: 128,
        },
        replay_window: 32,
        replay_seq: 0,
        replay_seq_hi: 0,
        replay_oseq: 0,
        replay_oseq_hi: 0,
        flags: SaFlags {
            af_unspec: true,
            ..SaFlags::default()
        },
        extra_flags: SaExtraFlags::default(),
        encap: None,
        tfcpad: 0,
        lifetime: Lifetime::default(),
        selector: None,
    }
}

/// AH, HMAC-SHA-256 truncated to 128 bits.
pub fn ah(spi: u32, src: IpAddr, dst: IpAddr) -> SaConfig {
    let mut c = esp(spi, src, dst);
    c.id.proto = XfrmProto::Ah;
    c.algorithm = SaAlgorithm::Auth {
        algo: AuthAlgo::HmacSha256,
        key: zeroize::Zeroizing::new((0x40..0x60).collect()),
        trunc_bits: 128,
    };
    c
}

/// ESP in UDP to local port `dport` (RFC 3948 or the non-IKE-marker variant).
pub fn esp_in_udp(spi: u32, src: IpAddr, dst: IpAddr, dport: u16, non_ike: bool) -> SaConfig {
    let mut c = esp(spi, src, dst);
    c.encap = Some(Encap {
        kind: if non_ike {
            EncapType::EspInUdpNonIke
        } else {
            EncapType::EspInUdp
        },
        sport: 4500,
        dport,
        oaddr: if src.is_ipv4() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            IpAddr::from([0u16; 8])
        },
    });
    c
}
