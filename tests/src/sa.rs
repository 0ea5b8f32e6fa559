//! SAs for tests that need many of them (SA tables of the outside classifier): valid
//! `SaConfig`s with fixed keys, built without a config file.

use std::net::IpAddr;

use xfrm_user::sa::{
    AeadAlgo, AuthAlgo, Encap, EncapType, SaAlgorithm, SaConfig, SaFlags, XfrmId, XfrmMode,
    XfrmProto,
};

/// ESP, AES-GCM-128 (rfc4106, 16-byte ICV), tunnel mode, from `src` to `dst`.
pub fn esp(spi: u32, src: IpAddr, dst: IpAddr) -> SaConfig {
    SaConfig {
        replay_window: 32,
        flags: SaFlags {
            af_unspec: true,
            ..SaFlags::default()
        },
        ..SaConfig::new(
            XfrmId {
                daddr: dst,
                spi,
                proto: XfrmProto::Esp,
            },
            src,
            1,
            XfrmMode::Tunnel,
            SaAlgorithm::Aead {
                algo: AeadAlgo::Rfc4106Gcm,
                key: zeroize::Zeroizing::new((1..=16).collect()),
                salt: [0xca, 0xfe, 0xba, 0xbe],
                icv_bits: 128,
            },
        )
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
