//! Who an SA is across restarts: family, protocol, SPI, both addresses and a fingerprint of
//! its key. A re-keyed SA that kept its SPI is another SA (it starts from its configured
//! numbers, as its peer does).

use std::net::IpAddr;

use sha2::{Digest, Sha256};

use crate::sa::{SaAlgorithm, SaConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SaIdentity {
    /// 4 or 6.
    pub family: u8,
    /// IPPROTO_ESP or IPPROTO_AH.
    pub proto: u8,
    pub spi: u32,
    /// IPv4: the first 4 bytes, the rest zero.
    pub daddr: [u8; 16],
    pub saddr: [u8; 16],
    pub key_fp: [u8; 16],
}

pub(super) fn addr16(a: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match a {
        IpAddr::V4(v) => b[..4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => b = v.octets(),
    }
    b
}

/// SHA-256 over the algorithm and its key material, truncated: tells a re-keyed SA from the
/// old one without putting the key in a record that outlives the SA.
pub fn key_fingerprint(alg: &SaAlgorithm) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"xfrm-user state file: SA key v1\0");
    match alg {
        SaAlgorithm::Aead {
            algo,
            key,
            salt,
            icv_bits,
        } => {
            h.update(format!("aead {algo:?} {icv_bits}\0").as_bytes());
            h.update(&key[..]);
            h.update(salt);
        }
        SaAlgorithm::Auth {
            algo,
            key,
            trunc_bits,
        } => {
            h.update(format!("auth {algo:?} {trunc_bits}\0").as_bytes());
            h.update(&key[..]);
        }
        SaAlgorithm::EncAuth {
            enc,
            enc_key,
            auth,
            auth_key,
            trunc_bits,
        } => {
            // Lengths first: the two keys are not told apart by their concatenation.
            h.update(
                format!(
                    "enc {enc:?} {} auth {auth:?} {} {trunc_bits}\0",
                    enc_key.len(),
                    auth_key.len()
                )
                .as_bytes(),
            );
            h.update(&enc_key[..]);
            h.update(&auth_key[..]);
        }
    }
    let d = h.finalize();
    let mut fp = [0u8; 16];
    fp.copy_from_slice(&d[..16]);
    fp
}

impl SaIdentity {
    pub fn of(cfg: &SaConfig) -> Self {
        Self {
            family: if cfg.id.daddr.is_ipv4() { 4 } else { 6 },
            proto: cfg.id.proto.ip_proto(),
            spi: cfg.id.spi,
            daddr: addr16(cfg.id.daddr),
            saddr: addr16(cfg.saddr),
            key_fp: key_fingerprint(&cfg.algorithm),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sa::{AuthAlgo, XfrmMode};
    use crate::xfrm::state::tests::{ah_cfg, esp_cfg};

    #[test]
    fn identity_tells_apart_what_must_not_share_counters() {
        let base = esp_cfg(0x100, "10.0.0.1", "10.0.0.2", XfrmMode::Tunnel);
        let id = SaIdentity::of(&base);
        assert_eq!(id, SaIdentity::of(&base.clone()));
        let mut other_key = base.clone();
        if let SaAlgorithm::Aead { key, .. } = &mut other_key.algorithm {
            key[0] ^= 1;
        }
        let mut other_salt = base.clone();
        if let SaAlgorithm::Aead { salt, .. } = &mut other_salt.algorithm {
            salt[3] ^= 1;
        }
        let mut other_spi = base.clone();
        other_spi.id.spi = 0x101;
        let mut other_src = base.clone();
        other_src.saddr = "10.0.0.3".parse().unwrap();
        let mut other_dst = base.clone();
        other_dst.id.daddr = "10.0.0.4".parse().unwrap();
        let ah = ah_cfg(
            0x100,
            "10.0.0.1",
            "10.0.0.2",
            XfrmMode::Tunnel,
            AuthAlgo::HmacSha256,
        );
        for (what, c) in [
            ("key", other_key),
            ("salt", other_salt),
            ("spi", other_spi),
            ("saddr", other_src),
            ("daddr", other_dst),
            ("proto", ah),
        ] {
            assert_ne!(SaIdentity::of(&c), id, "{what}");
        }
        // The mode is not part of it (the key and numbers are what matter).
        let mut transport = base.clone();
        transport.mode = XfrmMode::Transport;
        assert_eq!(SaIdentity::of(&transport), id);
    }
}
