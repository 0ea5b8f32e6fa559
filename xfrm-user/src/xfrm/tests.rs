//! End-to-end tests of the output path: layouts of every mode x type x family, each flag's
//! effect, padding, ESN, NAT-T, TFC, lifetimes, sequence numbers and every drop counter.
//! Decryption and ICVs are checked independently of esp.rs/ah.rs: GCM through the crypto
//! module's open path, HMAC through the `hmac` crate directly over a header the test zeroes
//! by hand.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use zeroize::Zeroizing;

use super::mode::tests::{fill_l4_checksum, udp4, udp6};
use super::output::{xfrm_output, xfrm_output_bundle, Verdict};
use super::spd::XfrmDb;
use super::state::tests::{ah_cfg, esp_cfg};
use super::state::{KmState, ManualClock};
use crate::crypto::GcmKey;
use crate::frame::OwnedFrame;
use crate::policy::{Policy, PolicyAction, PolicyDir, Template, TmplLevel};
use crate::sa::*;
use crate::selector::{PortMatch, Prefix, Selector};
use crate::stats::{XfrmStat, XfrmStats};
use crate::wire::{checksum, proto, Ipv4Packet, Ipv6Packet};

const GCM_KEY: [u8; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];
const SALT: [u8; 4] = [0xca, 0xfe, 0xba, 0xbe];

fn any_sel(v6: bool) -> Selector {
    let a = if v6 { "::" } else { "0.0.0.0" };
    let p = Prefix {
        addr: a.parse().unwrap(),
        len: 0,
    };
    Selector {
        src: p,
        dst: p,
        proto: 0,
        sport: PortMatch::ANY,
        dport: PortMatch::ANY,
    }
}

fn tmpl_for(c: &SaConfig) -> Template {
    Template {
        src: Some(c.saddr),
        dst: c.id.daddr,
        proto: c.id.proto,
        spi: None,
        reqid: c.reqid,
        mode: c.mode,
        level: TmplLevel::Required,
    }
}

fn out_pol(sel: Selector, templates: Vec<Template>, index: u32) -> Policy {
    Policy {
        selector: sel,
        dir: PolicyDir::Out,
        priority: 100,
        action: PolicyAction::Allow,
        templates,
        index,
    }
}

struct Env {
    db: XfrmDb,
    stats: XfrmStats,
    clock: Arc<ManualClock>,
}

fn env(states: Vec<SaConfig>, policies: Vec<Policy>) -> Env {
    let clock = Arc::new(ManualClock::new(1_000_000));
    Env {
        db: XfrmDb::with_clock(states, policies, clock.clone()).unwrap(),
        stats: XfrmStats::new(),
        clock,
    }
}

/// One SA and one policy covering every packet of the inner family.
fn env1(c: SaConfig, inner_v6: bool) -> Env {
    let p = out_pol(any_sel(inner_v6), vec![tmpl_for(&c)], 0);
    env(vec![c], vec![p])
}

impl Env {
    fn send(&self, pkt: &[u8]) -> (Verdict, Vec<u8>) {
        self.send_opt(pkt, Some(false))
    }
    fn send_opt(&self, pkt: &[u8], partial: Option<bool>) -> (Verdict, Vec<u8>) {
        let mut f = OwnedFrame::from_packet(pkt);
        let v = f.with_frame(|fr| xfrm_output(&self.db, &self.stats, fr, partial));
        (v, f.data().to_vec())
    }
    fn sa(&self, i: usize) -> &super::state::SecurityAssociation {
        self.db.state(i).unwrap()
    }
}

/// Decrypts an ESP packet whose ESP header is at `esph`, checks and removes the trailer,
/// returns (seq, iv, plaintext without trailer, next header, pad length).
fn esp_open(
    pkt: &[u8],
    esph: usize,
    icv: usize,
    esn_hi: Option<u32>,
) -> (u32, [u8; 8], Vec<u8>, u8, usize) {
    let key = GcmKey::new(&GCM_KEY, SALT).unwrap();
    let spi = &pkt[esph..esph + 4];
    let seq = u32::from_be_bytes(pkt[esph + 4..esph + 8].try_into().unwrap());
    let iv: [u8; 8] = pkt[esph + 8..esph + 16].try_into().unwrap();
    let mut aad = spi.to_vec();
    if let Some(hi) = esn_hi {
        aad.extend_from_slice(&hi.to_be_bytes());
    }
    aad.extend_from_slice(&seq.to_be_bytes());
    let mut text = pkt[esph + 16..pkt.len() - icv].to_vec();
    let tag = &pkt[pkt.len() - icv..];
    key.open_in_place(&iv, &aad, &mut text, tag)
        .expect("ICV verifies");
    let nh = text[text.len() - 1];
    let padlen = usize::from(text[text.len() - 2]);
    let body = text.len() - 2 - padlen;
    for (i, b) in text[body..body + padlen].iter().enumerate() {
        assert_eq!(usize::from(*b), i + 1, "padding bytes 1, 2, 3, ...");
    }
    assert_eq!(text.len() % 4, 0, "encrypted part aligned to 4");
    text.truncate(body);
    (seq, iv, text, nh, padlen)
}

fn v4_checksum_ok(pkt: &[u8]) -> bool {
    Ipv4Packet::new_checked(pkt).unwrap().verify_checksum()
}

// ---------------------------------------------------------------- SPD verdicts

#[test]
fn no_policy_passes_unchanged_and_block_drops() {
    let c = esp_cfg(0x100, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
    let mut narrow = any_sel(false);
    narrow.dst = Prefix {
        addr: "10.9.0.0".parse().unwrap(),
        len: 16,
    };
    let mut block = out_pol(any_sel(false), vec![], 1);
    block.selector.src = Prefix {
        addr: "10.7.0.0".parse().unwrap(),
        len: 16,
    };
    block.action = PolicyAction::Block;
    let e = env(
        vec![c.clone()],
        vec![out_pol(narrow, vec![tmpl_for(&c)], 0), block],
    );
    let p = udp4(0, true, b"plain");
    assert_eq!(e.send(&p), (Verdict::Pass, p.clone()));
    // Ethernet padding after the IP packet is left alone on pass.
    let mut padded = p.clone();
    padded.extend_from_slice(&[0; 6]);
    assert_eq!(e.send(&padded).0, Verdict::Pass);
    let mut b = p.clone();
    b[12..16].copy_from_slice(&[10, 7, 0, 1]);
    assert_eq!(e.send(&b).0, Verdict::Dropped(XfrmStat::XfrmOutPolBlock));
    assert_eq!(e.stats.get(XfrmStat::XfrmOutPolBlock), 1);
    // Not an IP packet at all: dropped (fail closed), XfrmOutError.
    assert_eq!(
        e.send(&[0x45, 0, 0]).0,
        Verdict::Dropped(XfrmStat::XfrmOutError)
    );
    // An allow policy without templates passes.
    let e2 = env(vec![], vec![out_pol(any_sel(false), vec![], 0)]);
    assert_eq!(e2.send(&p).0, Verdict::Pass);
}

#[test]
fn missing_sa_counts_no_states() {
    let c = esp_cfg(0x100, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
    let mut t = tmpl_for(&c);
    t.reqid = 99;
    let e = env(vec![c], vec![out_pol(any_sel(false), vec![t], 0)]);
    assert_eq!(
        e.send(&udp4(0, true, b"x")).0,
        Verdict::Dropped(XfrmStat::XfrmOutNoStates)
    );
    assert_eq!(e.stats.get(XfrmStat::XfrmOutNoStates), 1);
    // The same template with level use is optional: the packet passes in clear.
    let c = esp_cfg(0x100, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
    let mut t = tmpl_for(&c);
    t.reqid = 99;
    t.level = TmplLevel::Use;
    let e = env(vec![c], vec![out_pol(any_sel(false), vec![t], 0)]);
    assert_eq!(e.send(&udp4(0, true, b"x")).0, Verdict::Pass);
}

// ---------------------------------------------------------------- ESP

#[test]
fn esp_tunnel4_layout_and_decrypt() {
    let e = env1(
        esp_cfg(0x1000, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel),
        false,
    );
    for len in [0usize, 1, 2, 3, 4, 5, 100, 1400] {
        let inner = udp4(0x10, true, &vec![0x5a; len]);
        let (v, out) = e.send(&inner);
        assert_eq!(v, Verdict::Transformed);
        let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
        assert_eq!(usize::from(ip.total_len()), out.len());
        assert_eq!(ip.protocol(), proto::ESP);
        assert!(v4_checksum_ok(&out));
        assert_eq!(&out[20..24], &0x1000u32.to_be_bytes());
        let (seq, iv, plain, nh, padlen) = esp_open(&out, 20, 16, None);
        assert_eq!(plain, inner);
        assert_eq!(nh, proto::IPIP);
        assert_eq!((inner.len() + 2 + padlen) % 4, 0);
        assert!(padlen < 4, "minimal padding");
        assert_eq!(
            iv,
            u64::from(seq).to_be_bytes(),
            "IV = 64-bit sequence number"
        );
    }
    assert_eq!(e.sa(0).oseq(), 8);
    // Fresh outer IPv4 IDs: all different.
    let ids: std::collections::HashSet<u16> = (0..100)
        .map(|_| {
            Ipv4Packet::new_checked(&e.send(&udp4(0, true, b"id")).1[..])
                .unwrap()
                .ident()
        })
        .collect();
    assert_eq!(ids.len(), 100);
    assert_eq!(e.sa(0).curlft_packets(), 108);
}

#[test]
fn esp_sequence_and_iv_are_unique_per_packet() {
    let e = env1(
        esp_cfg(0x1000, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel),
        false,
    );
    let mut seen = std::collections::HashSet::new();
    for i in 1..=50u32 {
        let (_, out) = e.send(&udp4(0, true, b"same payload"));
        let (seq, iv, ..) = esp_open(&out, 20, 16, None);
        assert_eq!(seq, i);
        assert!(seen.insert(iv));
    }
}

#[test]
fn esp_icv_lengths_and_aes256() {
    for (bits, len) in [(64u32, 8usize), (96, 12), (128, 16)] {
        let mut c = esp_cfg(0x1000, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        if let SaAlgorithm::Aead { icv_bits, .. } = &mut c.algorithm {
            *icv_bits = bits;
        }
        let e = env1(c, false);
        let inner = udp4(0, true, b"icv");
        let (_, out) = e.send(&inner);
        assert_eq!(esp_open(&out, 20, len, None).2, inner);
    }
    let mut c = esp_cfg(0x1000, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
    let key256: Vec<u8> = (0..32).collect();
    c.algorithm = SaAlgorithm::Aead {
        algo: AeadAlgo::Rfc4106Gcm,
        key: Zeroizing::new(key256.clone()),
        salt: SALT,
        icv_bits: 128,
    };
    let e = env1(c, false);
    let inner = udp4(0, true, b"aes-256");
    let (_, out) = e.send(&inner);
    let k = GcmKey::new(&key256, SALT).unwrap();
    let iv: [u8; 8] = out[28..36].try_into().unwrap();
    let mut text = out[36..out.len() - 16].to_vec();
    k.open_in_place(&iv, &out[20..28], &mut text, &out[out.len() - 16..])
        .unwrap();
    assert_eq!(&text[..inner.len()], &inner[..]);
}

/// ESP enc + auth on the wire, checked with the `cbc`/`ctr`/`hmac` crates directly: CBC
/// carries a 16-byte IV (different per packet, not the bare count) and pads to 16 bytes;
/// CTR an 8-byte IV; NULL none. The ICV is the truncated HMAC over SPI | seq | IV |
/// ciphertext, with ESN the high half appended (RFC 4303 section 2.2.1).
#[test]
fn esp_enc_auth_layout_checked_independently() {
    use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, KeyIvInit, StreamCipher};
    let enc_key: Vec<u8> = (0x20..0x30).collect();
    let auth_key: Vec<u8> = (0x40..0x60).collect();
    for (enc, iv_len, blk) in [
        (EncAlgo::AesCbc, 16, 16),
        (EncAlgo::AesCtr, 8, 4),
        (EncAlgo::Null, 0, 4),
    ] {
        for esn in [false, true] {
            let mut c = esp_cfg(0x1000, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
            let mut k = if enc == EncAlgo::Null {
                vec![]
            } else {
                enc_key.clone()
            };
            if enc == EncAlgo::AesCtr {
                k.extend_from_slice(&[0xa1, 0xa2, 0xa3, 0xa4]);
            }
            c.algorithm = SaAlgorithm::EncAuth {
                enc,
                enc_key: Zeroizing::new(k),
                auth: AuthAlgo::HmacSha256,
                auth_key: Zeroizing::new(auth_key.clone()),
                trunc_bits: 128,
            };
            if esn {
                c.flags.esn = true;
                c.replay_oseq_hi = 3;
            }
            let e = env1(c, false);
            let mut ivs = std::collections::HashSet::new();
            for n in [1usize, 17, 100] {
                let inner = udp4(0, true, &vec![0x5a; n]);
                let (_, out) = e.send(&inner);
                let esph = 20;
                let iv = out[esph + 8..esph + 8 + iv_len].to_vec();
                assert!(ivs.insert(iv.clone()) || iv_len == 0, "{enc:?}: IV repeats");
                let icv = &out[out.len() - 16..];
                let mut m = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&auth_key).unwrap();
                m.update(&out[esph..out.len() - 16]);
                if esn {
                    m.update(&3u32.to_be_bytes());
                }
                assert_eq!(icv, &m.finalize().into_bytes()[..16], "{enc:?} esn {esn}");
                let mut text = out[esph + 8 + iv_len..out.len() - 16].to_vec();
                assert_eq!(text.len() % blk, 0, "{enc:?}: padded to {blk}");
                match enc {
                    EncAlgo::AesCbc => {
                        assert_ne!(
                            &iv[8..],
                            &(n as u64).to_be_bytes(),
                            "CBC IV is not the count"
                        );
                        cbc::Decryptor::<aes::Aes128>::new_from_slices(&enc_key, &iv)
                            .unwrap()
                            .decrypt_padded_mut::<NoPadding>(&mut text)
                            .unwrap();
                    }
                    EncAlgo::AesCtr => {
                        let mut cb = vec![0xa1, 0xa2, 0xa3, 0xa4];
                        cb.extend_from_slice(&iv);
                        cb.extend_from_slice(&[0, 0, 0, 1]);
                        ctr::Ctr32BE::<aes::Aes128>::new_from_slices(&enc_key, &cb)
                            .unwrap()
                            .apply_keystream(&mut text);
                    }
                    EncAlgo::Null => {}
                }
                let padlen = usize::from(text[text.len() - 2]);
                assert_eq!(text[text.len() - 1], proto::IPIP);
                assert_eq!(&text[..text.len() - 2 - padlen], &inner[..], "{enc:?}");
                assert!(padlen < blk, "minimal padding");
            }
        }
    }
}

#[test]
fn esp_esn_puts_the_high_bits_in_the_aad() {
    let mut c = esp_cfg(0x1000, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
    c.flags.esn = true;
    c.replay_oseq = u32::MAX;
    c.replay_oseq_hi = 4;
    let e = env1(c, false);
    let inner = udp4(0, true, b"esn");
    let (_, out) = e.send(&inner);
    assert_eq!(&out[24..28], &[0, 0, 0, 0], "wire carries the low 32 bits");
    let (_, iv, plain, ..) = esp_open(&out, 20, 16, Some(5));
    assert_eq!(plain, inner);
    assert_eq!(iv, (5u64 << 32).to_be_bytes());
    // The 8-byte AAD (no seq_hi) does not verify.
    let key = GcmKey::new(&GCM_KEY, SALT).unwrap();
    let mut text = out[36..out.len() - 16].to_vec();
    assert!(key
        .open_in_place(&iv, &out[20..28], &mut text, &out[out.len() - 16..])
        .is_err());
}

fn gmac_cfg(mode: XfrmMode, src: &str, dst: &str) -> SaConfig {
    let mut c = esp_cfg(0x2000, src, dst, mode);
    c.algorithm = SaAlgorithm::Aead {
        algo: AeadAlgo::Rfc4543Gmac,
        key: Zeroizing::new(GCM_KEY.to_vec()),
        salt: SALT,
        icv_bits: 128,
    };
    c
}

/// RFC 4543: the tag over SPI || [seq_hi] || seq || IV || payload || trailer, nothing
/// encrypted. Recomputed here from the packet bytes.
fn gmac_check(out: &[u8], esph: usize, esn_hi: Option<u32>) {
    let key = GcmKey::new(&GCM_KEY, SALT).unwrap();
    let iv: [u8; 8] = out[esph + 8..esph + 16].try_into().unwrap();
    let mut aad = out[esph..esph + 4].to_vec();
    if let Some(hi) = esn_hi {
        aad.extend_from_slice(&hi.to_be_bytes());
    }
    aad.extend_from_slice(&out[esph + 4..out.len() - 16]);
    let mut tag = [0u8; 16];
    key.seal_in_place(&iv, &aad, &mut [], &mut tag).unwrap();
    assert_eq!(&tag[..], &out[out.len() - 16..]);
}

#[test]
fn esp_gmac_authenticates_without_encrypting() {
    let e = env1(gmac_cfg(XfrmMode::Tunnel, "192.0.2.1", "192.0.2.2"), false);
    let inner = udp4(0, true, b"visible payload");
    let (_, out) = e.send(&inner);
    assert_eq!(
        &out[36..36 + inner.len()],
        &inner[..],
        "GMAC leaves the payload in clear"
    );
    gmac_check(&out, 20, None);
    let mut bad = out.clone();
    bad[40] ^= 1;
    let r = std::panic::catch_unwind(|| gmac_check(&bad, 20, None));
    assert!(r.is_err(), "a changed byte breaks the tag");

    let mut c = gmac_cfg(XfrmMode::Tunnel, "192.0.2.1", "192.0.2.2");
    c.flags.esn = true;
    c.replay_oseq_hi = 9;
    let e = env1(c, false);
    let (_, out) = e.send(&inner);
    gmac_check(&out, 20, Some(9));
    // esp_restore_header: the outer header and ESP header are whole again.
    assert_eq!(&out[16..20], &[192, 0, 2, 2]);
    assert_eq!(&out[20..24], &0x2000u32.to_be_bytes());
    assert!(v4_checksum_ok(&out));
}

#[test]
fn esp_transport4_and_transport6() {
    let e = env1(
        esp_cfg(0x3000, "10.1.0.1", "10.2.0.1", XfrmMode::Transport),
        false,
    );
    let inner = udp4(0x04, true, b"transport payload");
    let (v, out) = e.send(&inner);
    assert_eq!(v, Verdict::Transformed);
    let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
    assert_eq!(ip.protocol(), proto::ESP);
    assert_eq!(usize::from(ip.total_len()), out.len());
    assert!(ip.verify_checksum());
    assert_eq!(
        (ip.tos(), ip.ttl(), ip.ident()),
        (0x04, 33, 0x1234),
        "header kept"
    );
    let (_, _, plain, nh, _) = esp_open(&out, 20, 16, None);
    assert_eq!(nh, proto::UDP);
    assert_eq!(plain, &inner[20..]);

    let e = env1(
        esp_cfg(0x3001, "fd00:1::1", "fd00:2::1", XfrmMode::Transport),
        true,
    );
    let mut p6 = udp6(0, 7, b"six");
    // hop-by-hop header in front, kept before ESP.
    p6.splice(40..40, [17, 0, 1, 4, 0, 0, 0, 0]);
    p6[6] = 0;
    p6[5] += 8;
    let (v, out) = e.send(&p6);
    assert_eq!(v, Verdict::Transformed);
    let ip = Ipv6Packet::new_checked(&out[..]).unwrap();
    assert_eq!(ip.next_header(), proto::HOPOPTS);
    assert_eq!(ip.total_len(), out.len());
    assert_eq!(out[40], proto::ESP, "hop-by-hop now names ESP");
    let (_, _, plain, nh, _) = esp_open(&out, 48, 16, None);
    assert_eq!((nh, &plain[..]), (proto::UDP, &p6[48..]));
}

#[test]
fn esp_tunnel6_and_cross_family() {
    let e = env1(
        esp_cfg(0x4000, "fd00::a", "fd00::b", XfrmMode::Tunnel),
        true,
    );
    let inner = udp6(0x22, 0x54321, b"in six");
    let (_, out) = e.send(&inner);
    let ip = Ipv6Packet::new_checked(&out[..]).unwrap();
    assert_eq!(
        (ip.next_header(), ip.flow_label(), ip.traffic_class()),
        (proto::ESP, 0x54321, 0x22)
    );
    let (_, _, plain, nh, _) = esp_open(&out, 40, 16, None);
    assert_eq!((nh, plain), (proto::IPV6, inner));

    let mut c = esp_cfg(0x4001, "fd00::a", "fd00::b", XfrmMode::Tunnel);
    c.flags.af_unspec = true;
    let e = env1(c, false);
    let inner = udp4(0, true, b"4 in 6");
    let (v, out) = e.send(&inner);
    assert_eq!(v, Verdict::Transformed);
    let (_, _, plain, nh, _) = esp_open(&out, 40, 16, None);
    assert_eq!((nh, plain), (proto::IPIP, inner));

    let mut c = esp_cfg(0x4002, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
    c.flags.af_unspec = true;
    let e = env1(c, true);
    let inner = udp6(0, 0, b"6 in 4");
    let (_, out) = e.send(&inner);
    assert_eq!(out[9], proto::ESP);
    let (_, _, plain, nh, _) = esp_open(&out, 20, 16, None);
    assert_eq!((nh, plain), (proto::IPV6, inner));
}

fn encap(kind: EncapType) -> Encap {
    Encap {
        kind,
        sport: 4500,
        dport: 4501,
        oaddr: "0.0.0.0".parse().unwrap(),
    }
}

#[test]
fn nat_t_espinudp_and_nonike() {
    let mut c = esp_cfg(0x5000, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
    c.encap = Some(encap(EncapType::EspInUdp));
    let e = env1(c, false);
    let inner = udp4(0, true, b"natt");
    let (_, out) = e.send(&inner);
    assert_eq!(out[9], proto::UDP);
    assert!(v4_checksum_ok(&out));
    assert_eq!(
        &out[20..24],
        &[0x11, 0x94, 0x11, 0x95],
        "ports from the SA's encap"
    );
    assert_eq!(
        usize::from(u16::from_be_bytes([out[24], out[25]])),
        out.len() - 20
    );
    assert_eq!(&out[26..28], &[0, 0], "UDP checksum 0 (RFC 3948)");
    assert_eq!(&out[28..32], &0x5000u32.to_be_bytes());
    assert_eq!(esp_open(&out, 28, 16, None).2, inner);

    let mut c = esp_cfg(0x5001, "192.0.2.1", "192.0.2.2", XfrmMode::Transport);
    c.saddr = "10.1.0.1".parse().unwrap();
    c.id.daddr = "10.2.0.1".parse().unwrap();
    c.encap = Some(encap(EncapType::EspInUdpNonIke));
    let e = env1(c, false);
    let (_, out) = e.send(&inner);
    assert_eq!(out[9], proto::UDP);
    assert_eq!(&out[28..36], &[0; 8], "non-IKE marker");
    assert_eq!(&out[36..40], &0x5001u32.to_be_bytes());
    let (_, _, plain, nh, _) = esp_open(&out, 36, 16, None);
    assert_eq!((nh, &plain[..]), (proto::UDP, &inner[20..]));
}

#[test]
fn nat_t_over_ipv6_has_a_valid_udp_checksum() {
    let mut c = esp_cfg(0x5002, "fd00::a", "fd00::b", XfrmMode::Tunnel);
    c.encap = Some(encap(EncapType::EspInUdp));
    let e = env1(c, true);
    let (_, out) = e.send(&udp6(0, 0, b"natt6"));
    assert_eq!(out[6], proto::UDP);
    let ip = Ipv6Packet::new_checked(&out[..]).unwrap();
    let ph = checksum::pseudo_header_v6(ip.src_addr(), ip.dst_addr(), 17, (out.len() - 40) as u32);
    assert_ne!(&out[46..48], &[0, 0]);
    assert_eq!(checksum::combine(&[ph, checksum::data(&out[40..])]), 0xffff);
}

#[test]
fn tfc_pads_small_packets_to_tfcpad_and_not_beyond_the_mtu() {
    let mut c = esp_cfg(0x6000, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
    c.tfcpad = 200;
    let e = env1(c.clone(), false);
    let inner = udp4(0, true, b"tiny");
    let (_, out) = e.send(&inner);
    let (_, _, plain, _, _) = esp_open(&out, 20, 16, None);
    assert_eq!(plain.len(), 200);
    assert_eq!(&plain[..inner.len()], &inner[..]);
    assert!(
        plain[inner.len()..].iter().all(|&b| b == 0),
        "TFC bytes are zero"
    );
    // Bigger than tfcpad: no TFC.
    let big = udp4(0, true, &[1; 300]);
    assert_eq!(esp_open(&e.send(&big).1, 20, 16, None).2, big);
    // tfcpad above the MTU: padded to xfrm_state_mtu, so the packet fits the MTU.
    c.tfcpad = 9000;
    let e = env1(c, false);
    let (_, out) = e.send(&inner);
    assert_eq!(esp_open(&out, 20, 16, None).2.len(), 1446);
    assert!(out.len() <= 1500);
    // Transport mode never pads (the kernel refuses tfcpad there).
    let mut t = esp_cfg(0x6001, "10.1.0.1", "10.2.0.1", XfrmMode::Transport);
    t.tfcpad = 200;
    let e = env1(t, false);
    assert!(e.send(&inner).1.len() < 100);
}

/// draft-mcgrew-gcm-test-01 test case 3 layout check against the kernel formula is in
/// `esp_reproduces_known_packet`; this one checks esp_output with an IV given explicitly.
#[test]
fn esp_output_with_explicit_iv() {
    use super::esp::esp_output;
    use super::mode::xfrm_outer_mode_output;
    let x = super::state::SecurityAssociation::new(
        esp_cfg(0x7000, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel),
        0,
        0,
    )
    .unwrap();
    let inner = udp4(0, true, b"iv");
    let mut f = OwnedFrame::from_packet(&inner);
    f.with_frame(|fr| {
        let l = xfrm_outer_mode_output(&x, fr).unwrap();
        esp_output(&x, fr, &l, 77, &[9, 8, 7, 6, 5, 4, 3, 2]).unwrap();
    });
    let out = f.data();
    let (seq, iv, plain, ..) = esp_open(out, 20, 16, None);
    assert_eq!((seq, iv, plain), (77, [9, 8, 7, 6, 5, 4, 3, 2], inner));
}

// ---------------------------------------------------------------- AH

type HmacSha256 = Hmac<sha2::Sha256>;
type HmacSha1 = Hmac<sha1::Sha1>;

fn ah_key() -> Vec<u8> {
    (0x40..0x60).collect()
}

/// The ICV the receiver computes: packet with TOS, flags/offset, TTL, checksum (v4) or
/// traffic class, flow label, hop limit (v6) zeroed, ICV zeroed, [seq_hi] appended.
fn ah_expected_icv(
    pkt: &[u8],
    ah_off: usize,
    icv_len: usize,
    algo: AuthAlgo,
    esn_hi: Option<u32>,
) -> Vec<u8> {
    let mut z = pkt.to_vec();
    if z[0] >> 4 == 4 {
        z[1] = 0;
        z[6..9].fill(0);
        z[10..12].fill(0);
    } else {
        z[0] = 0x60;
        z[1..4].fill(0);
        z[7] = 0;
    }
    z[ah_off + 12..ah_off + 12 + icv_len].fill(0);
    if let Some(hi) = esn_hi {
        z.extend_from_slice(&hi.to_be_bytes());
    }
    let full = match algo {
        AuthAlgo::HmacSha256 => {
            let mut m = HmacSha256::new_from_slice(&ah_key()).unwrap();
            m.update(&z);
            m.finalize().into_bytes().to_vec()
        }
        AuthAlgo::HmacSha1 => {
            let mut m = HmacSha1::new_from_slice(&ah_key()).unwrap();
            m.update(&z);
            m.finalize().into_bytes().to_vec()
        }
        AuthAlgo::HmacSha384 => {
            let mut m = hmac::Hmac::<sha2::Sha384>::new_from_slice(&ah_key()).unwrap();
            m.update(&z);
            m.finalize().into_bytes().to_vec()
        }
        AuthAlgo::HmacSha512 => {
            let mut m = hmac::Hmac::<sha2::Sha512>::new_from_slice(&ah_key()).unwrap();
            m.update(&z);
            m.finalize().into_bytes().to_vec()
        }
    };
    full[..icv_len].to_vec()
}

#[test]
fn ah_tunnel4_sha256_and_sha1() {
    for (algo, icv, hlen) in [(AuthAlgo::HmacSha256, 16, 32), (AuthAlgo::HmacSha1, 12, 24)] {
        let e = env1(
            ah_cfg(0x8000, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel, algo),
            false,
        );
        let inner = udp4(0xb9, true, b"ah tunnel");
        let (v, out) = e.send(&inner);
        assert_eq!(v, Verdict::Transformed);
        let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
        assert_eq!(ip.protocol(), proto::AH);
        assert!(ip.verify_checksum());
        assert_eq!(ip.tos(), 0xb9, "mutable fields restored / kept on the wire");
        assert_eq!(ip.ttl(), 64);
        assert!(ip.dont_frag());
        assert_eq!(out[20], proto::IPIP, "AH next header");
        assert_eq!(
            usize::from(out[21] + 2) * 4,
            hlen,
            "AH length in 32-bit words - 2"
        );
        assert_eq!(&out[22..24], &[0, 0]);
        assert_eq!(&out[24..28], &0x8000u32.to_be_bytes());
        assert_eq!(&out[28..32], &1u32.to_be_bytes());
        assert_eq!(
            &out[32..32 + icv],
            &ah_expected_icv(&out, 20, icv, algo, None)[..]
        );
        assert!(
            out[32 + icv..20 + hlen].iter().all(|&b| b == 0),
            "padding zero"
        );
        assert_eq!(&out[20 + hlen..], &inner[..]);
    }
}

#[test]
fn ah_align4_and_esn() {
    let mut c = ah_cfg(
        0x8001,
        "192.0.2.1",
        "192.0.2.2",
        XfrmMode::Tunnel,
        AuthAlgo::HmacSha256,
    );
    c.flags.align4 = true;
    c.flags.esn = true;
    c.replay_oseq_hi = 3;
    let e = env1(c, false);
    let inner = udp4(0, true, b"align4");
    let (_, out) = e.send(&inner);
    assert_eq!(out[21], 5, "12 + 16 = 28 bytes: (28 / 4) - 2");
    assert_eq!(
        &out[32..48],
        &ah_expected_icv(&out, 20, 16, AuthAlgo::HmacSha256, Some(3))[..]
    );
    assert_ne!(
        &out[32..48],
        &ah_expected_icv(&out, 20, 16, AuthAlgo::HmacSha256, None)[..]
    );
    assert_eq!(&out[48..], &inner[..]);
}

#[test]
fn ah_transport4_zeroes_mutable_options_for_the_icv_only() {
    let e = env1(
        ah_cfg(
            0x8002,
            "10.1.0.1",
            "10.2.0.1",
            XfrmMode::Transport,
            AuthAlgo::HmacSha1,
        ),
        false,
    );
    let mut p = udp4(0x2c, false, b"opts");
    // Options: router alert (immutable) + timestamp (mutable) -> IHL 8.
    p.splice(20..20, [148, 4, 0, 0, 68, 8, 5, 0, 1, 2, 3, 4]);
    p[0] = 0x48;
    p[3] += 12;
    Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
    let (v, out) = e.send(&p);
    assert_eq!(v, Verdict::Transformed);
    assert_eq!(&out[20..32], &p[20..32], "options on the wire unchanged");
    assert_eq!(out[9], proto::AH);
    assert_eq!(out[32], proto::UDP);
    assert!(v4_checksum_ok(&out));
    // Independent ICV: zero the timestamp option by hand as well.
    let mut z = out.clone();
    z[24..32].fill(0);
    assert_eq!(
        &out[44..56],
        &ah_expected_icv(&z, 32, 12, AuthAlgo::HmacSha1, None)[..]
    );
    // A broken option: the type output fails, XfrmOutStateProtoError.
    let mut bad = p.clone();
    bad[25] = 40;
    Ipv4Packet::new_unchecked(&mut bad[..]).fill_checksum();
    assert_eq!(
        e.send(&bad).0,
        Verdict::Dropped(XfrmStat::XfrmOutStateProtoError)
    );
    assert_eq!(e.sa(0).stats.get(XfrmStat::XfrmOutStateProtoError), 1);
}

#[test]
fn ah_ipv6_tunnel_and_transport() {
    let e = env1(
        ah_cfg(
            0x8003,
            "fd00::a",
            "fd00::b",
            XfrmMode::Tunnel,
            AuthAlgo::HmacSha256,
        ),
        true,
    );
    let inner = udp6(0x2b, 0xfeed, b"ah6");
    let (_, out) = e.send(&inner);
    let ip = Ipv6Packet::new_checked(&out[..]).unwrap();
    assert_eq!(
        (ip.next_header(), ip.flow_label(), ip.hop_limit()),
        (proto::AH, 0xfeed, 64)
    );
    assert_eq!(out[40], proto::IPV6);
    assert_eq!(
        &out[52..68],
        &ah_expected_icv(&out, 40, 16, AuthAlgo::HmacSha256, None)[..]
    );
    assert_eq!(&out[72..], &inner[..]);

    let e = env1(
        ah_cfg(
            0x8004,
            "fd00:1::1",
            "fd00:2::1",
            XfrmMode::Transport,
            AuthAlgo::HmacSha1,
        ),
        true,
    );
    let (_, out) = e.send(&inner);
    assert_eq!(out[6], proto::AH);
    assert_eq!(out[40], proto::UDP);
    assert_eq!(out[41], 4, "24 bytes");
    assert_eq!(
        &out[52..64],
        &ah_expected_icv(&out, 40, 12, AuthAlgo::HmacSha1, None)[..]
    );
    assert_eq!(&out[64..], &inner[40..]);
}

#[test]
fn bundle_esp_then_ah_in_template_order() {
    let esp = esp_cfg(0x9001, "10.1.0.1", "10.2.0.1", XfrmMode::Transport);
    let mut ah = ah_cfg(
        0x9002,
        "10.1.0.1",
        "10.2.0.1",
        XfrmMode::Transport,
        AuthAlgo::HmacSha256,
    );
    ah.reqid = 2;
    let p = out_pol(any_sel(false), vec![tmpl_for(&esp), tmpl_for(&ah)], 0);
    let e = env(vec![esp, ah], vec![p]);
    let inner = udp4(0, true, b"bundle");
    let (v, out) = e.send(&inner);
    assert_eq!(v, Verdict::Transformed);
    assert_eq!(out[9], proto::AH, "the last template is outermost");
    assert_eq!(out[20], proto::ESP, "AH protects ESP");
    assert_eq!(&out[52..56], &0x9001u32.to_be_bytes());
    assert_eq!(
        &out[32..48],
        &ah_expected_icv(&out, 20, 16, AuthAlgo::HmacSha256, None)[..]
    );
    let (_, _, plain, nh, _) = esp_open(&out[..], 52, 16, None);
    assert_eq!((nh, &plain[..]), (proto::UDP, &inner[20..]));
    assert!(v4_checksum_ok(&out));
}

// ---------------------------------------------------------------- state checks and counters

#[test]
fn hard_packet_limit_expires_the_state() {
    let mut c = esp_cfg(0xa000, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
    c.lifetime.soft_packet_limit = 1;
    c.lifetime.hard_packet_limit = 2;
    let e = env1(c, false);
    let p = udp4(0, true, b"lft");
    assert_eq!(e.send(&p).0, Verdict::Transformed);
    assert_eq!(e.send(&p).0, Verdict::Transformed);
    assert_eq!(e.sa(0).soft_expiries(), 1);
    assert_eq!(
        e.send(&p).0,
        Verdict::Dropped(XfrmStat::XfrmOutStateExpired)
    );
    assert_eq!(e.stats.get(XfrmStat::XfrmOutStateExpired), 1);
    assert_eq!(e.sa(0).stats.get(XfrmStat::XfrmOutStateExpired), 1);
    assert_eq!(e.sa(0).km_state(), KmState::Expired);
    assert_eq!(e.sa(0).soft_expiries(), 1, "logged once");
    // Afterwards the lookup finds no valid SA, as the kernel's bundle check would.
    assert_eq!(e.send(&p).0, Verdict::Dropped(XfrmStat::XfrmOutNoStates));
    // A bundle resolved earlier (e.g. by the XDP classifier) meets the invalid state.
    let x = e.sa(0);
    let mut f = OwnedFrame::from_packet(&p);
    let v =
        f.with_frame(|fr| xfrm_output_bundle(&[x], &e.stats, fr, false, e.clock.now_for_test()));
    assert_eq!(v, Verdict::Dropped(XfrmStat::XfrmOutStateInvalid));
    assert_eq!(e.stats.get(XfrmStat::XfrmOutStateInvalid), 1);
}

trait NowForTest {
    fn now_for_test(&self) -> u64;
}
impl NowForTest for ManualClock {
    fn now_for_test(&self) -> u64 {
        super::state::Clock::now(self)
    }
}

#[test]
fn hard_byte_and_time_limits() {
    let mut c = esp_cfg(0xa001, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
    c.lifetime.hard_byte_limit = 100;
    let e = env1(c, false);
    let p = udp4(0, true, &[0; 72]); // 100 bytes: the byte count counts the inner packet
    assert_eq!(e.send(&p).0, Verdict::Transformed);
    assert_eq!(e.sa(0).curlft_bytes(), 100);
    assert_eq!(
        e.send(&p).0,
        Verdict::Dropped(XfrmStat::XfrmOutStateExpired)
    );

    let mut c = esp_cfg(0xa002, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
    c.lifetime.soft_add_expires_seconds = 10;
    c.lifetime.hard_add_expires_seconds = 60;
    let e = env1(c, false);
    assert_eq!(e.send(&p).0, Verdict::Transformed);
    e.clock.advance(10);
    assert_eq!(e.send(&p).0, Verdict::Transformed);
    assert!(e.sa(0).is_dying());
    e.clock.advance(50);
    assert_eq!(
        e.send(&p).0,
        Verdict::Dropped(XfrmStat::XfrmOutStateExpired)
    );
}

#[test]
fn sequence_overflow_counts_seq_error() {
    let mut c = esp_cfg(0xb000, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
    c.replay_oseq = u32::MAX - 1;
    let e = env1(c.clone(), false);
    let p = udp4(0, true, b"seq");
    let (_, out) = e.send(&p);
    assert_eq!(&out[24..28], &[0xff; 4]);
    assert_eq!(
        e.send(&p).0,
        Verdict::Dropped(XfrmStat::XfrmOutStateSeqError)
    );
    assert_eq!(e.stats.get(XfrmStat::XfrmOutStateSeqError), 1);
    // oseq-may-wrap: 0xffffffff then 0, and the IVs still differ.
    c.extra_flags.oseq_may_wrap = true;
    let e = env1(c, false);
    let (_, a) = e.send(&p);
    let (_, b) = e.send(&p);
    assert_eq!(&b[24..28], &[0; 4]);
    assert_ne!(&a[28..36], &b[28..36]);
}

#[test]
fn mode_and_space_errors() {
    // IPv6 packet, IPv4 transport SA, bundle given directly: XfrmOutStateModeError.
    let c = esp_cfg(0xc000, "10.1.0.1", "10.2.0.1", XfrmMode::Transport);
    let x = super::state::SecurityAssociation::new(c, 0, 0).unwrap();
    let stats = XfrmStats::new();
    let mut f = OwnedFrame::from_packet(&udp6(0, 0, b"v6"));
    let v = f.with_frame(|fr| xfrm_output_bundle(&[&x], &stats, fr, false, 0));
    assert_eq!(v, Verdict::Dropped(XfrmStat::XfrmOutStateModeError));
    assert_eq!(x.stats.get(XfrmStat::XfrmOutStateModeError), 1);
    // No headroom: XfrmOutError from the space check.
    let t = esp_cfg(0xc001, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
    let x = super::state::SecurityAssociation::new(t, 0, 0).unwrap();
    let mut f = OwnedFrame::with_room(&udp4(0, true, b"room"), 20, 100);
    let v = f.with_frame(|fr| xfrm_output_bundle(&[&x], &stats, fr, false, 0));
    assert_eq!(v, Verdict::Dropped(XfrmStat::XfrmOutError));
    // No tailroom for the ICV.
    let mut f = OwnedFrame::with_room(&udp4(0, true, b"room"), 100, 8);
    let v = f.with_frame(|fr| xfrm_output_bundle(&[&x], &stats, fr, false, 0));
    assert_eq!(v, Verdict::Dropped(XfrmStat::XfrmOutError));
    assert_eq!(x.oseq(), 0, "nothing consumed a sequence number");
}

/// `p` as a CHECKSUM_PARTIAL sender leaves it: the L4 checksum field holds the
/// pseudo-header sum.
fn partial_of(p: &[u8]) -> Vec<u8> {
    let info = crate::wire::flow::parse_l4(p).unwrap();
    let (at, _) = crate::wire::l4_checksum_field(info.proto).unwrap();
    let len = (info.ip_len - info.l4_offset) as u32;
    let ph = checksum::pseudo_header_at(p, info.version == 6, info.proto, len);
    let mut q = p.to_vec();
    q[info.l4_offset + at..][..2].copy_from_slice(&ph.to_be_bytes());
    q
}

/// As xfrm_output: a complete inner checksum is left as it is (a wrong one too: checking it
/// is the receiver's job, and a router does not), a partial one is completed, whether the
/// caller says so or the packet shows it.
#[test]
fn inner_checksum_left_or_completed() {
    let e = env1(
        esp_cfg(0xd000, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel),
        false,
    );
    let inner = |out: &[u8]| esp_open(out, 20, 16, None).2;
    let good = udp4(0, true, b"checksummed");
    let mut bad = good.clone();
    bad[30] ^= 0xff; // payload byte: UDP checksum now wrong
    for said in [Some(false), None] {
        let (v, out) = e.send_opt(&bad, said);
        assert_eq!(v, Verdict::Transformed);
        assert_eq!(inner(&out), bad, "{said:?}: sent as it came");
    }
    assert_eq!(e.stats.get(XfrmStat::XfrmOutError), 0);
    // CHECKSUM_PARTIAL: the field holds the pseudo-header sum only.
    let partial = partial_of(&good);
    for said in [Some(true), None] {
        let (v, out) = e.send_opt(&partial, said);
        assert_eq!(v, Verdict::Transformed);
        assert_eq!(inner(&out), good, "{said:?}: completed = the right one");
    }
    // Said complete: the caller knows best.
    assert_eq!(inner(&e.send(&partial).1), partial);
    // A complete checksum that happens to equal the pseudo-header sum (the first payload
    // word chosen to make it so) stays.
    let mut odd = partial_of(&udp4(0, true, b"\0\0coincidence"));
    let ph = u16::from_be_bytes([odd[26], odd[27]]);
    // pseudo + rest + w = 0xffff (one's complement), with the field holding ph.
    let rest = checksum::combine(&[ph, checksum::data(&odd[20..])]);
    let w = !checksum::combine(&[rest]);
    odd[28..30].copy_from_slice(&w.to_be_bytes());
    assert_eq!(checksum::combine(&[ph, checksum::data(&odd[20..])]), 0xffff);
    assert_eq!(inner(&e.send_opt(&odd, None).1), odd);
    // UDP checksum 0 (none) is not partial.
    let mut none = good.clone();
    none[26..28].fill(0);
    assert_eq!(inner(&e.send_opt(&none, None).1), none);
    // ICMP said partial is completed (only TCP and UDP are ever guessed partial).
    let mut icmp = udp4(0, true, b"");
    icmp[9] = 1;
    icmp[20..28].copy_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
    Ipv4Packet::new_unchecked(&mut icmp[..]).fill_checksum();
    let mut done = icmp.clone();
    fill_l4_checksum(&mut done);
    assert_eq!(inner(&e.send_opt(&icmp, Some(true)).1), done);
    assert_eq!(inner(&e.send_opt(&icmp, None).1), icmp);
    // IPv6 partial, completed.
    let v6 = udp6(0, 0, b"six");
    let e6 = env1(
        esp_cfg(0xd001, "fd00::a", "fd00::b", XfrmMode::Tunnel),
        true,
    );
    assert_eq!(
        esp_open(&e6.send_opt(&partial_of(&v6), None).1, 40, 16, None).2,
        v6
    );
    // Said partial but not completable (no L4 header in a later fragment): dropped.
    let mut frag = good.clone();
    frag[6..8].copy_from_slice(&0x0001u16.to_be_bytes()); // offset 8 bytes
    Ipv4Packet::new_unchecked(&mut frag[..]).fill_checksum();
    assert_eq!(
        e.send_opt(&frag, Some(true)).0,
        Verdict::Dropped(XfrmStat::XfrmOutError)
    );
    assert_eq!(e.send_opt(&frag, None).0, Verdict::Transformed);
    // Said partial, but the protocol has no checksum to complete (GRE): dropped, counted,
    // no sequence number spent; unsaid, it goes as it is.
    let mut gre = good.clone();
    gre[9] = 47;
    Ipv4Packet::new_unchecked(&mut gre[..]).fill_checksum();
    let seq = e.sa(0).oseq();
    assert_eq!(
        e.send_opt(&gre, Some(true)).0,
        Verdict::Dropped(XfrmStat::XfrmOutError)
    );
    assert_eq!(e.stats.get(XfrmStat::XfrmOutError), 2);
    assert_eq!(e.sa(0).oseq(), seq);
    assert_eq!(inner(&e.send_opt(&gre, None).1), gre);
}

#[test]
fn ethernet_padding_is_cut_before_the_transform() {
    let e = env1(
        esp_cfg(0xe000, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel),
        false,
    );
    let inner = udp4(0, true, b"");
    let mut padded = inner.clone();
    padded.extend_from_slice(&[0xee; 18]);
    let (_, out) = e.send(&padded);
    assert_eq!(esp_open(&out, 20, 16, None).2, inner);
}
