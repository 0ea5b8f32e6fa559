//! Tests of the whole language: every keyword with its value, every error with its exact
//! file:line:word, several errors in one file, all or nothing, IPv4 and IPv6, the lines of
//! the ip-xfrm(8) examples, the sample configuration, and random mutations that must never panic.

use std::net::IpAddr;
use std::path::PathBuf;

use proptest::prelude::*;

use super::*;
use crate::policy::{PolicyAction, PolicyDir, Template, TmplLevel};
use crate::sa::{
    AeadAlgo, AuthAlgo, EncAlgo, Encap, EncapType, SaAlgorithm, SaConfig, XfrmId, XfrmMode,
    XfrmProto,
};
use crate::selector::{PortMatch, Prefix, Selector};

/// A 16-byte AES key and a 4-byte salt.
const K20: &str = "0x00112233445566778899aabbccddeeff01020304";
/// A 32-byte AES key and a 4-byte salt.
const K36: &str = "0x00112233445566778899aabbccddeeff00112233445566778899aabbccddeeffa0a1a2a3";
const SHA1_KEY: &str = "0x0102030405060708090a0b0c0d0e0f1011121314";
const SHA256_KEY: &str = "0x000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pfx(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix {
        addr: ip(a),
        len: l.parse().unwrap(),
    }
}

fn ok(text: &str) -> Config {
    parse_config(text, "t.conf").unwrap_or_else(|errs| {
        panic!(
            "expected a valid config, got:\n{}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

fn errs(text: &str) -> Vec<String> {
    match parse_config(text, "t.conf") {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e.iter().map(|e| e.to_string()).collect(),
    }
}

/// The one error of `text`.
fn err1(text: &str) -> String {
    let e = errs(text);
    assert_eq!(e.len(), 1, "expected one error: {e:#?}");
    e.into_iter().next().unwrap()
}

fn state(line: &str) -> SaConfig {
    let c = ok(line);
    assert_eq!((c.states.len(), c.policies.len()), (1, 0));
    c.states.into_iter().next().unwrap()
}

fn policy(line: &str) -> Policy {
    let c = ok(line);
    assert_eq!((c.states.len(), c.policies.len()), (0, 1));
    c.policies.into_iter().next().unwrap()
}

/// A valid ESP SA line to append words to.
fn esp(extra: &str) -> String {
    format!(
        "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1000 aead 'rfc4106(gcm(aes))' {K20} 128 {extra}"
    )
}

fn ah(extra: &str) -> String {
    format!("state add src 192.0.2.1 dst 192.0.2.2 proto ah spi 0x2000 auth-trunc 'hmac(sha256)' {SHA256_KEY} 128 {extra}")
}

// ---------------------------------------------------------------- ip-xfrm(8) example lines

#[test]
fn issue_example_lines() {
    let text = format!(
        "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x00001000 reqid 1 mode tunnel aead 'rfc4106(gcm(aes))' {K20} 128 replay-window 64 flag esn\n\
         policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out priority 100 tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 1 mode tunnel\n"
    );
    let c = ok(&text);
    let sa = &c.states[0];
    assert_eq!(
        sa.id,
        XfrmId {
            daddr: ip("192.0.2.2"),
            spi: 0x1000,
            proto: XfrmProto::Esp
        }
    );
    assert_eq!(sa.saddr, ip("192.0.2.1"));
    assert_eq!(sa.reqid, 1);
    assert_eq!(sa.mode, XfrmMode::Tunnel);
    match &sa.algorithm {
        SaAlgorithm::Aead {
            algo,
            key,
            salt,
            icv_bits,
        } => {
            assert_eq!(*algo, AeadAlgo::Rfc4106Gcm);
            assert_eq!(
                &key[..],
                &[
                    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc,
                    0xdd, 0xee, 0xff
                ]
            );
            assert_eq!(salt, &[1, 2, 3, 4]);
            assert_eq!(*icv_bits, 128);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sa.replay_window, 64);
    assert!(sa.flags.esn);
    assert!(!sa.flags.noecn && !sa.flags.af_unspec);
    assert_eq!(sa.initial_oseq(), 0);
    assert_eq!(sa.encap, None);
    // No `sel` and no af-unspec: Linux gives the SA a selector of its own family.
    assert_eq!(sa.selector, Some(Selector::any_of_family(ip("192.0.2.2"))));

    let p = &c.policies[0];
    assert_eq!(p.selector.src, pfx("10.1.0.0/24"));
    assert_eq!(p.selector.dst, pfx("10.2.0.0/24"));
    assert_eq!(p.selector.proto, 0);
    assert_eq!(
        (p.dir, p.priority, p.action),
        (PolicyDir::Out, 100, PolicyAction::Allow)
    );
    assert_eq!(
        p.templates,
        vec![Template {
            src: Some(ip("192.0.2.1")),
            dst: ip("192.0.2.2"),
            proto: XfrmProto::Esp,
            spi: None,
            reqid: 1,
            mode: XfrmMode::Tunnel,
            level: TmplLevel::Required,
        }]
    );
    assert_eq!(p.index, 0);
}

// ---------------------------------------------------------------- state keywords

#[test]
fn state_defaults() {
    let sa = state(&esp(""));
    assert_eq!(sa.mode, XfrmMode::Transport);
    assert_eq!(sa.reqid, 0);
    assert_eq!(sa.replay_window, 0);
    assert_eq!(
        (
            sa.replay_seq,
            sa.replay_seq_hi,
            sa.replay_oseq,
            sa.replay_oseq_hi
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(sa.flags, Default::default());
    assert_eq!(sa.extra_flags, Default::default());
    assert_eq!(sa.tfcpad, 0);
    assert_eq!(sa.lifetime, Default::default());
}

#[test]
fn spi_reqid_numbers() {
    let sa = state(&esp("reqid 0xffffffff").replace("spi 0x1000", "spi 4096"));
    assert_eq!((sa.id.spi, sa.reqid), (4096, u32::MAX));
    let sa = state(&esp("").replace("spi 0x1000", "spi 0xFFFFFFFF"));
    assert_eq!(sa.id.spi, u32::MAX);
}

#[test]
fn modes() {
    assert_eq!(state(&esp("mode transport")).mode, XfrmMode::Transport);
    assert_eq!(state(&esp("mode tunnel")).mode, XfrmMode::Tunnel);
}

#[test]
fn aead_variants() {
    for icv in [64, 96, 128] {
        let line = format!("state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 1 aead 'rfc4106(gcm(aes))' {K36} {icv}");
        match &state(&line).algorithm {
            SaAlgorithm::Aead {
                algo,
                key,
                salt,
                icv_bits,
            } => {
                assert_eq!(*algo, AeadAlgo::Rfc4106Gcm);
                assert_eq!(key.len(), 32);
                assert_eq!(key[31], 0xff);
                assert_eq!(*salt, [0xa0, 0xa1, 0xa2, 0xa3]);
                assert_eq!(*icv_bits, icv);
            }
            other => panic!("{other:?}"),
        }
    }
    let line = format!(
        "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 1 aead \"rfc4543(gcm(aes))\" {K20} 128"
    );
    match &state(&line).algorithm {
        SaAlgorithm::Aead { algo, key, .. } => {
            assert_eq!(*algo, AeadAlgo::Rfc4543Gmac);
            assert_eq!(key.len(), 16);
        }
        other => panic!("{other:?}"),
    }
}

fn auth_of(sa: &SaConfig) -> (AuthAlgo, Vec<u8>, u32) {
    match &sa.algorithm {
        SaAlgorithm::Auth {
            algo,
            key,
            trunc_bits,
        } => (*algo, key.to_vec(), *trunc_bits),
        other => panic!("{other:?}"),
    }
}

#[test]
fn auth_and_auth_trunc() {
    let base = "state add src 192.0.2.1 dst 192.0.2.2 proto ah spi 0x2000";
    // `auth` takes the kernel's default truncation (xfrm_algo.c icv_truncbits: 96 for both).
    let sa = state(&format!("{base} auth 'hmac(sha1)' {SHA1_KEY}"));
    assert_eq!(auth_of(&sa).0, AuthAlgo::HmacSha1);
    assert_eq!(auth_of(&sa).1.len(), 20);
    assert_eq!(auth_of(&sa).2, 96);
    let sa = state(&format!("{base} auth 'hmac(sha256)' {SHA256_KEY}"));
    assert_eq!((auth_of(&sa).0, auth_of(&sa).2), (AuthAlgo::HmacSha256, 96));
    let sa = state(&format!(
        "{base} auth-trunc 'hmac(sha256)' {SHA256_KEY} 128"
    ));
    assert_eq!(
        (auth_of(&sa).0, auth_of(&sa).2),
        (AuthAlgo::HmacSha256, 128)
    );
    assert_eq!(auth_of(&sa).1, (0u8..32).collect::<Vec<_>>());
    for t in [96, 160] {
        let sa = state(&format!("{base} auth-trunc 'hmac(sha1)' {SHA1_KEY} {t}"));
        assert_eq!(auth_of(&sa).2, t);
    }
    let sa = state(&format!(
        "{base} auth-trunc 'hmac(sha256)' {SHA256_KEY} 256"
    ));
    assert_eq!(auth_of(&sa).2, 256);
    // The kernel's compat names.
    let sa = state(&format!("{base} auth sha256 {SHA256_KEY}"));
    assert_eq!(auth_of(&sa).0, AuthAlgo::HmacSha256);
    let sa = state(&format!("{base} auth sha1 {SHA1_KEY}"));
    assert_eq!(auth_of(&sa).0, AuthAlgo::HmacSha1);
}

#[test]
fn quoted_string_keys_are_raw_bytes() {
    let sa = state(
        "state add src 192.0.2.1 dst 192.0.2.2 proto ah spi 7 auth 'hmac(sha1)' \"twenty bytes of key!\"",
    );
    assert_eq!(auth_of(&sa).1, b"twenty bytes of key!");
    let sa = state(
        "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 7 aead 'rfc4106(gcm(aes))' 'sixteen byte keySALT' 128",
    );
    match &sa.algorithm {
        SaAlgorithm::Aead { key, salt, .. } => {
            assert_eq!(&key[..], b"sixteen byte key");
            assert_eq!(salt, b"SALT");
        }
        other => panic!("{other:?}"),
    }
    // A quoted 0x… is hex, as the shell hands ip the same word.
    let sa = state(&format!(
        "state add src 192.0.2.1 dst 192.0.2.2 proto ah spi 7 auth 'hmac(sha1)' '{SHA1_KEY}'"
    ));
    assert_eq!(auth_of(&sa).1.len(), 20);
}

#[test]
fn replay_words() {
    let sa = state(&esp(
        "replay-window 4096 replay-seq 10 replay-oseq 0x20 replay-seq-hi 3 replay-oseq-hi 4 flag esn",
    ));
    assert_eq!(sa.replay_window, 4096);
    assert_eq!(
        (
            sa.replay_seq,
            sa.replay_oseq,
            sa.replay_seq_hi,
            sa.replay_oseq_hi
        ),
        (10, 0x20, 3, 4)
    );
    assert_eq!(sa.initial_oseq(), (4 << 32) | 0x20);
    let sa = state(&esp("replay-window 32 replay-oseq 4294967295"));
    assert_eq!(sa.replay_oseq, u32::MAX);
    // replay-*-hi of 0 says nothing, so it is fine without esn.
    let sa = state(&esp("replay-seq-hi 0"));
    assert_eq!(sa.replay_seq_hi, 0);
}

#[test]
fn each_flag() {
    let f = |words: &str| state(&esp(&format!("replay-window 32 mode tunnel {words}"))).flags;
    assert!(f("flag noecn").noecn);
    assert!(f("flag decap-dscp").decap_dscp);
    assert!(f("flag nopmtudisc").nopmtudisc);
    assert!(f("flag align4").align4);
    assert!(f("flag esn").esn);
    assert!(f("flag af-unspec").af_unspec);
    // Several after one `flag` (as ip reads them), and several `flag` words.
    let all = f("flag esn align4 noecn reqid 3 flag decap-dscp flag nopmtudisc af-unspec");
    assert!(
        all.esn && all.align4 && all.noecn && all.decap_dscp && all.nopmtudisc && all.af_unspec
    );
    let sa = state(&esp("replay-window 32 flag esn align4 reqid 3"));
    assert_eq!(sa.reqid, 3);
}

#[test]
fn extra_flags() {
    let x = state(&esp("extra-flag dont-encap-dscp")).extra_flags;
    assert!(x.dont_encap_dscp && !x.oseq_may_wrap);
    let x = state(&esp("extra-flag oseq-may-wrap")).extra_flags;
    assert!(!x.dont_encap_dscp && x.oseq_may_wrap);
    let x = state(&esp("extra-flag oseq-may-wrap dont-encap-dscp reqid 2")).extra_flags;
    assert!(x.dont_encap_dscp && x.oseq_may_wrap);
    let x = state(&esp("extra-flag oseq-may-wrap extra-flag dont-encap-dscp")).extra_flags;
    assert!(x.dont_encap_dscp && x.oseq_may_wrap);
}

#[test]
fn encap_both_types() {
    let sa = state(&esp("encap espinudp 4500 4501 203.0.113.9"));
    assert_eq!(
        sa.encap,
        Some(Encap {
            kind: EncapType::EspInUdp,
            sport: 4500,
            dport: 4501,
            oaddr: ip("203.0.113.9")
        })
    );
    let sa = state(&esp("encap espinudp-nonike 500 0x1194 0.0.0.0"));
    let e = sa.encap.unwrap();
    assert_eq!(
        (e.kind, e.sport, e.dport),
        (EncapType::EspInUdpNonIke, 500, 4500)
    );
}

#[test]
fn tfcpad_in_tunnel_mode() {
    assert_eq!(state(&esp("mode tunnel tfcpad 1400")).tfcpad, 1400);
}

#[test]
fn every_limit() {
    let l = state(&esp(
        "limit time-soft 1 limit time-hard 2 limit time-use-soft 3 limit time-use-hard 4 \
         limit byte-soft 5 limit byte-hard 6 limit packet-soft 7 limit packet-hard 0xffffffffffffffff",
    ))
    .lifetime;
    assert_eq!(
        (l.soft_add_expires_seconds, l.hard_add_expires_seconds),
        (1, 2)
    );
    assert_eq!(
        (l.soft_use_expires_seconds, l.hard_use_expires_seconds),
        (3, 4)
    );
    assert_eq!((l.soft_byte_limit, l.hard_byte_limit), (5, 6));
    assert_eq!((l.soft_packet_limit, l.hard_packet_limit), (7, u64::MAX));
    // One side alone is fine; the other keeps its "unlimited" default.
    let l = state(&esp("limit byte-soft 100")).lifetime;
    assert_eq!((l.soft_byte_limit, l.hard_byte_limit), (100, u64::MAX));
    let l = state(&esp("limit time-soft 100")).lifetime;
    assert_eq!(
        (l.soft_add_expires_seconds, l.hard_add_expires_seconds),
        (100, 0)
    );
}

#[test]
fn sa_selector() {
    let sa = state(&esp(
        "mode tunnel sel src 10.1.0.0/24 dst 10.2.0.5 proto tcp sport 1024 dport 443 reqid 9",
    ));
    assert_eq!(sa.reqid, 9);
    assert_eq!(
        sa.selector,
        Some(Selector {
            src: pfx("10.1.0.0/24"),
            dst: pfx("10.2.0.5/32"),
            proto: 6,
            sport: PortMatch::exact(1024),
            dport: PortMatch::exact(443),
        })
    );
    // ICMP type and code live in sport and dport, as in Linux.
    let sa = state(&esp("sel proto icmp type 8 code 0"));
    let s = sa.selector.unwrap();
    assert_eq!(s.src, pfx("0.0.0.0/0"));
    assert_eq!(
        (s.proto, s.sport, s.dport),
        (1, PortMatch::exact(8), PortMatch::exact(0))
    );
    // A tunnel may carry another family than its own.
    let sa = state(&esp(
        "mode tunnel sel src 2001:db8:1::/48 dst 2001:db8:2::/48",
    ));
    assert_eq!(sa.selector.unwrap().dst, pfx("2001:db8:2::/48"));
    // af-unspec without sel: packets of either family.
    assert_eq!(state(&esp("mode tunnel flag af-unspec")).selector, None);
    // af-unspec in transport mode is accepted as Linux accepts it (since the 2023 fix).
    assert_eq!(state(&esp("flag af-unspec")).selector, None);
    // sel port 0 means any port, as in ip.
    let s = state(&esp("sel proto udp sport 0")).selector.unwrap();
    assert_eq!(s.sport, PortMatch::ANY);
}

#[test]
fn ipv6_sa_and_ip_xfrm_prefix() {
    let sa = state(&format!(
        "ip xfrm state add src 2001:db8::1 dst 2001:db8::2 proto esp spi 0x10 mode tunnel aead 'rfc4106(gcm(aes))' {K36} 96 encap espinudp 4500 4500 2001:db8::2"
    ));
    assert_eq!(sa.id.daddr, ip("2001:db8::2"));
    assert_eq!(sa.saddr, ip("2001:db8::1"));
    assert_eq!(sa.selector, Some(Selector::any_of_family(ip("::"))));
    assert_eq!(sa.encap.unwrap().oaddr, ip("2001:db8::2"));
    let sa = state(&format!(
        "state add src 2001:db8::1/128 dst 2001:db8::2/128 proto ah spi 0x11 auth 'hmac(sha1)' {SHA1_KEY}"
    ));
    assert_eq!(sa.id.proto, XfrmProto::Ah);
}

#[test]
fn keyword_order_is_free() {
    let a = state(&format!(
        "state add aead 'rfc4106(gcm(aes))' {K20} 128 spi 0x1000 proto esp dst 192.0.2.2 src 192.0.2.1"
    ));
    assert_eq!(a, state(&esp("")));
}

// ---------------------------------------------------------------- policy keywords

#[test]
fn policy_selector_words() {
    let p = policy("policy add src 10.1.0.0/24 dst 10.2.0.9 proto udp sport 53 dport 0x35 dir out");
    assert_eq!(p.selector.src, pfx("10.1.0.0/24"));
    assert_eq!(p.selector.dst, pfx("10.2.0.9/32"));
    assert_eq!(p.selector.proto, 17);
    assert_eq!(
        (p.selector.sport, p.selector.dport),
        (PortMatch::exact(53), PortMatch::exact(53))
    );
    assert!(p.templates.is_empty());
    assert_eq!((p.priority, p.action), (0, PolicyAction::Allow));

    let p = policy("policy add src 2001:db8::/32 dst ::/0 proto ipv6-icmp type 135 code 0 dir in");
    assert_eq!(p.selector.dst, pfx("::/0"));
    assert_eq!(
        (p.selector.proto, p.selector.sport, p.selector.dport),
        (58, PortMatch::exact(135), PortMatch::exact(0))
    );
    for (name, n) in [
        ("tcp", 6),
        ("icmp", 1),
        ("icmpv6", 58),
        ("esp", 50),
        ("ah", 51),
        ("gre", 47),
        ("sctp", 132),
        ("200", 200),
        ("0", 0),
    ] {
        let p = policy(&format!(
            "policy add src 10.0.0.0/8 dst 10.0.0.0/8 proto {name} dir fwd"
        ));
        assert_eq!(p.selector.proto, n, "{name}");
        assert_eq!(p.dir, PolicyDir::Fwd);
    }
    // Only one address: the other is the "any" prefix of its family.
    let p = policy("policy add dst 2001:db8::1 dir out");
    assert_eq!(p.selector.src, pfx("::/0"));
    // No address at all: IPv4, as ip sends AF_INET.
    let p = policy("policy add proto tcp dport 22 dir out action block");
    assert_eq!(p.selector.src, pfx("0.0.0.0/0"));
    assert_eq!(p.action, PolicyAction::Block);
}

#[test]
fn policy_other_words() {
    let p = policy("policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir in priority 0xffffffff action allow ptype main index 8");
    assert_eq!(
        (p.dir, p.priority, p.action),
        (PolicyDir::In, u32::MAX, PolicyAction::Allow)
    );
    // `index` is Linux's policy id (low 3 bits = dir): checked, not used.
    let p = policy("policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir out index 0x11");
    assert_eq!(p.index, 0);
    let p = policy("policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir fwd index 10");
    assert_eq!(p.dir, PolicyDir::Fwd);
}

#[test]
fn templates_and_bundles() {
    let p = policy(
        "policy add src 192.0.2.1 dst 198.51.100.9 dir out \
         tmpl proto esp spi 0x5000 reqid 4 mode transport \
         tmpl src 192.0.2.1 dst 203.0.113.1 proto ah reqid 5 mode tunnel level required \
         priority 7",
    );
    assert_eq!(p.priority, 7);
    assert_eq!(
        p.templates,
        vec![
            // Transport without addresses: the host selector's (Linux takes the flow's).
            Template {
                src: Some(ip("192.0.2.1")),
                dst: ip("198.51.100.9"),
                proto: XfrmProto::Esp,
                spi: Some(0x5000),
                reqid: 4,
                mode: XfrmMode::Transport,
                level: TmplLevel::Required,
            },
            Template {
                src: Some(ip("192.0.2.1")),
                dst: ip("203.0.113.1"),
                proto: XfrmProto::Ah,
                spi: None,
                reqid: 5,
                mode: XfrmMode::Tunnel,
                level: TmplLevel::Required,
            },
        ]
    );
    let p = policy("policy add src 10.0.0.0/8 dst 10.9.0.0/16 dir in tmpl dst 192.0.2.2 proto esp spi 0 mode tunnel level use");
    let t = p.templates[0];
    assert_eq!(
        (t.src, t.spi, t.level, t.reqid),
        (None, None, TmplLevel::Use, 0)
    );
    // An unspecified tmpl src is "any".
    let p = policy("policy add src 10.0.0.0/8 dst 10.9.0.0/16 dir out tmpl src 0.0.0.0 dst 192.0.2.2 proto esp mode tunnel");
    assert_eq!(p.templates[0].src, None);
    // Six templates is the most.
    let six = " tmpl dst 192.0.2.2 proto esp mode tunnel".repeat(6);
    assert_eq!(
        policy(&format!("policy add dir out{six}")).templates.len(),
        6
    );
    // IPv6 inside an IPv4 tunnel, then a transport template of the tunnel's family.
    let p = policy("policy add src 2001:db8:1::/48 dst 2001:db8:2::/48 dir out tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel tmpl dst 192.0.2.2 proto ah");
    assert_eq!(p.templates[1].dst, ip("192.0.2.2"));
}

#[test]
fn policy_index_is_position_and_duplicates_differ_by_dir() {
    let c = ok("policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out\n\
         policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir in\n\
         policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir fwd\n\
         policy add src 10.1.0.0/24 dst 10.2.0.0/24 proto tcp dir out\n");
    let idx: Vec<u32> = c.policies.iter().map(|p| p.index).collect();
    assert_eq!(idx, [0, 1, 2, 3]);
}

// ---------------------------------------------------------------- errors, exactly

#[test]
fn error_display_matches_the_brief() {
    let line =
        format!("state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 1 aead gcm128 {K20} 128");
    let e = parse_config(&format!("# site\n\n{line}\n"), "conf/site.xfrm").unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(
        e[0].to_string(),
        "conf/site.xfrm:3: word 'gcm128': expected an aead algorithm name: 'rfc4106(gcm(aes))', 'rfc4543(gcm(aes))' or 'rfc7539esp(chacha20,poly1305)'"
    );
    assert_eq!((e[0].line, e[0].column), (3, 60));
    assert_eq!(e[0].word, "gcm128");
    assert_eq!(e[0].file, "conf/site.xfrm");
}

/// `enc` + `auth`/`auth-trunc` and ChaCha20-Poly1305, with the names and key lengths Linux
/// takes; `auth` without a length gets the kernel's default truncation.
#[test]
fn state_enc_auth_and_chacha() {
    let b = "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 1";
    let k16 = "0x00112233445566778899aabbccddeeff";
    let cases = [
        (
            format!("enc 'cbc(aes)' {k16} auth-trunc 'hmac(sha256)' {SHA256_KEY} 128"),
            EncAlgo::AesCbc,
            16,
            AuthAlgo::HmacSha256,
            128,
        ),
        (
            format!("enc aes {k16}0011223344556677 auth-trunc sha384 {SHA256_KEY} 192"),
            EncAlgo::AesCbc,
            24,
            AuthAlgo::HmacSha384,
            192,
        ),
        (
            format!(
                "enc 'cbc(aes)' {}00112233445566778899aabbccddeeff auth sha512 {SHA256_KEY}",
                k16
            ),
            EncAlgo::AesCbc,
            32,
            AuthAlgo::HmacSha512,
            256,
        ),
        (
            format!("auth 'hmac(sha1)' {SHA1_KEY} enc 'cbc(aes)' {k16}"),
            EncAlgo::AesCbc,
            16,
            AuthAlgo::HmacSha1,
            96,
        ),
        (
            format!("enc 'rfc3686(ctr(aes))' {K20} auth sha256 {SHA256_KEY}"),
            EncAlgo::AesCtr,
            20,
            AuthAlgo::HmacSha256,
            96,
        ),
        (
            format!("enc cipher_null '' auth-trunc 'hmac(sha256)' {SHA256_KEY} 128"),
            EncAlgo::Null,
            0,
            AuthAlgo::HmacSha256,
            128,
        ),
        (
            format!("enc 'ecb(cipher_null)' \"\" auth-trunc sha1 {SHA1_KEY} 160"),
            EncAlgo::Null,
            0,
            AuthAlgo::HmacSha1,
            160,
        ),
    ];
    for (alg, enc_want, len, auth_want, bits) in cases {
        let sa = state(&format!("{b} {alg}"));
        match &sa.algorithm {
            SaAlgorithm::EncAuth {
                enc,
                enc_key,
                auth,
                trunc_bits,
                ..
            } => {
                assert_eq!(
                    (*enc, enc_key.len(), *auth, *trunc_bits),
                    (enc_want, len, auth_want, bits),
                    "{alg}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
    let sa = state(&format!(
        "{b} aead 'rfc7539esp(chacha20,poly1305)' {K36} 128"
    ));
    match &sa.algorithm {
        SaAlgorithm::Aead {
            algo,
            key,
            salt,
            icv_bits,
        } => {
            assert_eq!(*algo, AeadAlgo::Rfc7539EspChaCha20Poly1305);
            assert_eq!(
                (key.len(), *salt, *icv_bits),
                (32, [0xa0, 0xa1, 0xa2, 0xa3], 128)
            );
        }
        other => panic!("{other:?}"),
    }
}

/// (line, expected Display) pairs: each line alone must give exactly that error.
fn assert_errors(cases: &[(String, &str)]) {
    for (line, want) in cases {
        let got = err1(line);
        assert_eq!(&got, want, "for line: {line}");
    }
}

#[test]
fn state_errors() {
    let b = "state add src 192.0.2.1 dst 192.0.2.2";
    let cases: Vec<(String, &str)> = vec![
        (esp("").replace(K20, "0x00112233445566778899aabbccddeeff0102"),
         "t.conf:1: word '<key>': expected a key of 20 or 36 bytes for rfc4106(gcm(aes)) (a 16 or 32-byte AES key and a 4-byte salt), got 18 bytes"),
        (esp("").replace(K20, "0x0011223"),
         "t.conf:1: word '<key>': expected a key: an even number of hex digits after 0x, got 7"),
        (esp("").replace(K20, "00112233445566778899aabbccddeeff01020304"),
         "t.conf:1: word '<key>': expected a key: 0x followed by hex digits, or a quoted string whose bytes are the key"),
        (esp("").replace(" 128 ", " 100 "),
         "t.conf:1: word '100': expected an ICV length in bits for rfc4106(gcm(aes)): 64, 96 or 128"),
        (format!("{b} proto esp spi 1 aead 'rfc4543(gcm(aes))' {K20} 96"),
         "t.conf:1: word '96': expected ICV length 128 for rfc4543(gcm(aes)) (the only one Linux accepts)"),
        (format!("{b} proto esp spi 1 aead 'rfc4106(gcm(aes))' {K20}"),
         "t.conf:1: word '<key>': expected an ICV length in bits after the key, found the end of the line"),
        (format!("{b} proto ah spi 1 auth 'hmac(md5)' {SHA1_KEY}"),
         "t.conf:1: word 'hmac(md5)': expected an auth algorithm name: 'hmac(sha256)', 'hmac(sha384)', 'hmac(sha512)' or 'hmac(sha1)'"),
        (format!("{b} proto ah spi 1 auth-trunc 'hmac(sha256)' {SHA256_KEY}"),
         "t.conf:1: word '<key>': expected a truncation length in bits after the key, found the end of the line"),
        (format!("{b} proto ah spi 1 auth-trunc 'hmac(sha256)' {SHA256_KEY} 64"),
         "t.conf:1: word '64': expected a truncation length in bits for hmac(sha256): a multiple of 8 from 96 to 256"),
        (format!("{b} proto ah spi 1 auth-trunc 'hmac(sha256)' {SHA256_KEY} 100"),
         "t.conf:1: word '100': expected a truncation length in bits for hmac(sha256): a multiple of 8 from 96 to 256"),
        (format!("{b} proto ah spi 1 auth-trunc 'hmac(sha1)' {SHA1_KEY} 168"),
         "t.conf:1: word '168': expected a truncation length in bits for hmac(sha1): a multiple of 8 from 96 to 160"),
        (format!("{b} proto ah spi 1 auth 'hmac(sha1)' ''"),
         "t.conf:1: word '<key>': expected a key of at least 1 byte"),
        (format!("{b} proto esp spi 1 auth 'hmac(sha1)' {SHA1_KEY}"),
         "t.conf:1: word 'auth': expected 'enc NAME KEY' with 'auth' in ESP (Linux's ESP needs an enc algorithm; for integrity only use enc cipher_null '')"),
        (format!("{b} proto esp spi 1 enc 'cbc(aes)' 0x00112233445566778899aabbccddeeff"),
         "t.conf:1: word 'enc': expected 'auth NAME KEY' or 'auth-trunc NAME KEY BITS' with 'enc': xfrm-ebpf does not run ESP without integrity (RFC 8221 section 5)"),
        (format!("{b} proto esp spi 1 enc 'cbc(des3_ede)' 0x00112233445566778899aabbccddeeff0011223344556677"),
         "t.conf:1: word 'cbc(des3_ede)': expected an enc algorithm name: 'cbc(aes)', 'rfc3686(ctr(aes))' or 'cipher_null'"),
        (format!("{b} proto esp spi 1 enc 'cbc(aes)' 0x00112233445566778899aabbccddeeff0011 auth sha256 {SHA256_KEY}"),
         "t.conf:1: word '<key>': expected a key of 16, 24 or 32 bytes for cbc(aes) (AES-128, AES-192 or AES-256), got 18 bytes"),
        (format!("{b} proto esp spi 1 enc 'rfc3686(ctr(aes))' 0x00112233445566778899aabbccddeeff auth sha256 {SHA256_KEY}"),
         "t.conf:1: word '<key>': expected a key of 20, 28 or 36 bytes for rfc3686(ctr(aes)) (a 16, 24 or 32-byte AES key and a 4-byte nonce), got 16 bytes"),
        (format!("{b} proto esp spi 1 enc cipher_null 0x00 auth sha256 {SHA256_KEY}"),
         "t.conf:1: word '<key>': expected a key of 0 bytes ('') for cipher_null, got 1 bytes"),
        (format!("{b} proto esp spi 1 enc cipher_null '' auth-trunc sha512 {SHA256_KEY} 520"),
         "t.conf:1: word '520': expected a truncation length in bits for sha512: a multiple of 8 from 96 to 512"),
        (format!("{b} proto esp spi 1 enc cipher_null '' auth sha1 {SHA1_KEY} enc 'cbc(aes)' 0x00112233445566778899aabbccddeeff"),
         "t.conf:1: word 'enc': expected one algorithm of each kind per SA: 'enc' already given at column 55 (ESP takes one aead, or one enc with one auth or auth-trunc; AH one auth or auth-trunc)"),
        (format!("{b} proto esp spi 1 aead 'rfc4106(gcm(aes))' {K20} 128 auth sha1 {SHA1_KEY}"),
         "t.conf:1: word 'auth': expected either 'aead' or 'enc' with 'auth', not both: 'auth' beside 'aead' (Linux: Invalid attributes for ESP)"),
        (format!("{b} proto esp spi 1 aead 'rfc7539esp(chacha20,poly1305)' {K20} 128"),
         "t.conf:1: word '<key>': expected a key of 36 bytes for rfc7539esp(chacha20,poly1305) (a 32-byte ChaCha20 key and a 4-byte salt), got 20 bytes"),
        (format!("{b} proto esp spi 1 aead 'rfc7539esp(chacha20,poly1305)' {K36} 96"),
         "t.conf:1: word '96': expected ICV length 128 for rfc7539esp(chacha20,poly1305) (the only one Linux accepts)"),
        (format!("{b} proto ah spi 1 aead 'rfc4106(gcm(aes))' {K20} 128"),
         "t.conf:1: word 'aead': expected 'auth' or 'auth-trunc' with proto ah: AH has no aead (Linux: Invalid attributes for AH)"),
        (format!("{b} proto ah spi 1 enc 'cbc(aes)' 0x00112233445566778899aabbccddeeff auth sha1 {SHA1_KEY}"),
         "t.conf:1: word 'enc': expected 'auth' or 'auth-trunc' with proto ah: AH has no enc (Linux: Invalid attributes for AH)"),
        (format!("{b} proto ah spi 1 auth sha1 {SHA1_KEY} auth-trunc sha1 {SHA1_KEY} 96"),
         "t.conf:1: word 'auth-trunc': expected one algorithm of each kind per SA: 'auth' already given at column 54 (ESP takes one aead, or one enc with one auth or auth-trunc; AH one auth or auth-trunc)"),
        (format!("{b} proto esp spi 1"),
         "t.conf:1: word 'state': expected 'aead NAME KEY ICV-BITS', or 'enc NAME KEY' with 'auth NAME KEY' or 'auth-trunc NAME KEY BITS', in an ESP 'state add'"),
        (format!("{b} proto ah spi 1"),
         "t.conf:1: word 'state': expected 'auth NAME KEY' or 'auth-trunc NAME KEY BITS' in an AH 'state add'"),
        (esp("").replace("spi 0x1000 ", ""),
         "t.conf:1: word 'state': expected 'spi SPI' in 'state add' (an SA needs src, dst, proto, spi and an algorithm)"),
        (esp("").replace("src 192.0.2.1 ", ""),
         "t.conf:1: word 'state': expected 'src ADDR' in 'state add' (an SA needs src, dst, proto, spi and an algorithm)"),
        (esp("").replace("dst 192.0.2.2 ", ""),
         "t.conf:1: word 'state': expected 'dst ADDR' in 'state add' (an SA needs src, dst, proto, spi and an algorithm)"),
        (esp("").replace("proto esp ", ""),
         "t.conf:1: word 'state': expected 'proto esp|ah' in 'state add' (an SA needs src, dst, proto, spi and an algorithm)"),
        (esp("").replace("spi 0x1000", "spi 0"),
         "t.conf:1: word '0': expected an SPI from 1 to 0xffffffff (SPI 0 is reserved, RFC 4303 section 2.1)"),
        (esp("").replace("spi 0x1000", "spi 010"),
         "t.conf:1: word '010': expected a number from 0 to 4294967295 (decimal or 0x… hex); a leading 0 would make ip read it as octal: write it without the 0 or as 0x… hex"),
        (esp("").replace("spi 0x1000", "spi 0x100000000"),
         "t.conf:1: word '0x100000000': expected a number from 0 to 4294967295 (decimal or 0x… hex)"),
        (esp("").replace("proto esp", "proto comp"),
         "t.conf:1: word 'comp': proto 'comp' is not supported by xfrm-ebpf: expected esp or ah"),
        (esp("").replace("proto esp", "proto udp"),
         "t.conf:1: word 'udp': expected an IPsec protocol: esp or ah"),
        (esp("").replace("dst 192.0.2.2", "dst 2001:db8::2"),
         "t.conf:1: word '2001:db8::2': expected a dst of the same family as src 192.0.2.1 (IPv4): both addresses of an SA have one family"),
        (esp("").replace("dst 192.0.2.2", "dst 192.0.2.0/24"),
         "t.conf:1: word '192.0.2.0/24': expected a single address, not a prefix (an SA or template end point is one host)"),
        (esp("").replace("dst 192.0.2.2", "dst gw.example"),
         "t.conf:1: word 'gw.example': expected an IPv4 or IPv6 address"),
        (esp("").replace("src 192.0.2.1", "src 0.0.0.0"),
         "t.conf:1: word '0.0.0.0': expected a specific address, not the unspecified one (xfrm-ebpf needs both end points of an SA)"),
        (esp("src 192.0.2.9"),
         "t.conf:1: word 'src': 'src' given twice (first at column 11): expected each keyword once"),
        (esp("mode beet"),
         "t.conf:1: word 'beet': mode 'beet' is not supported by xfrm-ebpf: expected transport or tunnel"),
        (esp("mode tunel"),
         "t.conf:1: word 'tunel': expected a mode: transport or tunnel"),
        (esp("replay-window 4097"),
         "t.conf:1: word '4097': expected a replay window from 0 to 4096 packets (XFRMA_REPLAY_ESN_MAX)"),
        (esp("flag esn"),
         "t.conf:1: word 'esn': expected 'replay-window N' (N > 0) with flag esn, as Linux requires"),
        (esp("replay-window 0 flag esn"),
         "t.conf:1: word 'esn': expected 'replay-window N' (N > 0) with flag esn, as Linux requires"),
        (esp("replay-window 32 replay-oseq-hi 1"),
         "t.conf:1: word 'replay-oseq-hi': expected 'flag esn' with 'replay-oseq-hi': the high 32 bits exist only with ESN"),
        (esp("flag wildrecv"),
         "t.conf:1: word 'wildrecv': flag 'wildrecv' is not supported by xfrm-ebpf"),
        (esp("replay-window 8 flag esn icmp"),
         "t.conf:1: word 'icmp': flag 'icmp' is not supported by xfrm-ebpf"),
        (esp("flag fast"),
         "t.conf:1: word 'fast': expected a flag name: noecn, decap-dscp, nopmtudisc, align4, esn, af-unspec"),
        (esp("flag 0x10"),
         "t.conf:1: word '0x10': expected a flag name: noecn, decap-dscp, nopmtudisc, align4, esn, af-unspec"),
        (esp("flag"),
         "t.conf:1: word 'flag': expected a flag name after 'flag', found the end of the line"),
        (esp("extra-flag dont-encap-ecn"),
         "t.conf:1: word 'dont-encap-ecn': expected an extra-flag name: dont-encap-dscp or oseq-may-wrap"),
        (ah("encap espinudp 4500 4500 192.0.2.2"),
         "t.conf:1: word 'encap': expected proto esp with 'encap': UDP encapsulation (RFC 3948) carries ESP only"),
        (esp("encap espintcp 4500 4500 192.0.2.2"),
         "t.conf:1: word 'espintcp': encap 'espintcp' (RFC 8229) is not supported by xfrm-ebpf: expected espinudp or espinudp-nonike"),
        (esp("encap udp 4500 4500 192.0.2.2"),
         "t.conf:1: word 'udp': expected an encapsulation type: espinudp or espinudp-nonike"),
        (esp("encap espinudp 0 4500 192.0.2.2"),
         "t.conf:1: word '0': expected a UDP port from 1 to 65535"),
        (esp("encap espinudp 4500 65536 192.0.2.2"),
         "t.conf:1: word '65536': expected a port number from 0 to 65535"),
        (esp("encap espinudp 4500 4500 2001:db8::1"),
         "t.conf:1: word '2001:db8::1': expected an encap OADDR of the SA's family (IPv4)"),
        (esp("encap espinudp 4500 4500"),
         "t.conf:1: word '4500': expected the original address (OADDR) after '4500', found the end of the line"),
        (esp("tfcpad 100"),
         "t.conf:1: word 'tfcpad': expected mode tunnel with 'tfcpad' (Linux: TFC padding can only be used in tunnel mode)"),
        (ah("mode tunnel tfcpad 100"),
         "t.conf:1: word 'tfcpad': expected proto esp with 'tfcpad' (Linux: Invalid attributes for AH: TFCPAD)"),
        (esp("limit byte-soft 10 limit byte-hard 5"),
         "t.conf:1: word '10': expected byte-soft at most byte-hard (5): a soft limit must come before the hard one"),
        (esp("limit time-soft 10 time-hard 20"),
         "t.conf:1: word 'time-hard': expected 'limit' before 'time-hard': each limit has its own 'limit' word, as in ip"),
        (esp("limit packet-hard 1 limit packet-hard 2"),
         "t.conf:1: word 'packet-hard': limit 'packet-hard' given twice (first at column 138): expected each limit once"),
        (esp("limit bytes-soft 10"),
         "t.conf:1: word 'bytes-soft': expected a limit name: time-soft, time-hard, time-use-soft, time-use-hard, byte-soft, byte-hard, packet-soft, packet-hard"),
        (esp("limit byte-soft -1"),
         "t.conf:1: word '-1': expected a number from 0 to 18446744073709551615 (decimal or 0x… hex)"),
        (esp("sel"),
         "t.conf:1: word 'sel': expected selector words after 'sel': src, dst, proto, sport, dport, type, code"),
        (esp("sel src 2001:db8::/32"),
         "t.conf:1: word '2001:db8::/32': expected a selector of the SA's family (IPv4) in transport mode (Linux: Only tunnel modes can accommodate a change of family)"),
        (esp("mode tunnel sel src 10.0.0.0/8 dst 2001:db8::/32"),
         "t.conf:1: word '2001:db8::/32': expected a dst of the same family as src 10.0.0.0/8 (IPv4)"),
        (esp("sel dport 80"),
         "t.conf:1: word 'dport': expected proto tcp, udp, sctp or dccp before 'dport' (ports need a port protocol, as in ip)"),
        (esp("sel proto tcp type 3"),
         "t.conf:1: word 'type': expected proto icmp, ipv6-icmp or mh before 'type' (as in ip)"),
        (esp("sel dev eth0"),
         "t.conf:1: word 'dev': 'dev' (a selector bound to an interface) is not supported by xfrm-ebpf"),
        (esp("mark 7"),
         "t.conf:1: word 'mark': 'mark' is not supported by xfrm-ebpf"),
        (esp("comp deflate"),
         "t.conf:1: word 'comp': 'comp' (IPComp) is not supported by xfrm-ebpf"),
        (esp("bogus 1"),
         "t.conf:1: word 'bogus': expected a 'state add' keyword: src, dst, proto, spi, reqid, mode, aead, auth, auth-trunc, replay-window, replay-seq, replay-oseq, replay-seq-hi, replay-oseq-hi, flag, extra-flag, encap, tfcpad, limit, sel"),
        (esp("reqid"),
         "t.conf:1: word 'reqid': expected a number after 'reqid', found the end of the line"),
    ];
    assert_errors(&cases);
}

#[test]
fn policy_errors() {
    let p = "policy add src 10.1.0.0/24 dst 10.2.0.0/24";
    let cases: Vec<(String, &str)> = vec![
        (p.to_string(),
         "t.conf:1: word 'policy': expected 'dir out|in|fwd' in 'policy add' (ip: DIR is required)"),
        (format!("{p} dir up"), "t.conf:1: word 'up': expected a direction: out, in or fwd"),
        (format!("{p} dir out dir in"),
         "t.conf:1: word 'dir': 'dir' given twice (first at column 44): expected each keyword once"),
        (format!("{p} dir out action reject"), "t.conf:1: word 'reject': expected an action: allow or block"),
        (format!("{p} dir out priority high"),
         "t.conf:1: word 'high': expected a number from 0 to 4294967295 (decimal or 0x… hex)"),
        (format!("{p} dir out ptype sub"),
         "t.conf:1: word 'sub': ptype 'sub' (MIGRATE sub-policies) is not supported by xfrm-ebpf: expected main"),
        (format!("{p} dir out index 8"),
         "t.conf:1: word '8': expected an index whose low 3 bits are 1 for dir out (Linux: Policy index doesn't match direction)"),
        (format!("{p} dir out level use"),
         "t.conf:1: word 'level': expected 'level' inside a template: 'tmpl … level required|use'"),
        (format!("{p} dir out flag localok"),
         "t.conf:1: word 'flag': policy flags (localok, icmp) are not supported by xfrm-ebpf"),
        (format!("{p} dir out ctx x"),
         "t.conf:1: word 'ctx': 'ctx' (security contexts) is not supported by xfrm-ebpf"),
        (format!("{p} dir out frob"),
         "t.conf:1: word 'frob': expected a 'policy add' keyword: src, dst, proto, sport, dport, type, code, dir, priority, action, index, ptype, tmpl"),
        ("policy add src 10.1.0.0/24 dst 2001:db8::/32 dir out".to_string(),
         "t.conf:1: word '2001:db8::/32': expected a dst of the same family as src 10.1.0.0/24 (IPv4)"),
        ("policy add src 10.1.0.0/33 dir out".to_string(),
         "t.conf:1: word '10.1.0.0/33': expected a prefix length from 0 to 32 after '/'"),
        ("policy add src 10.1.0.300 dir out".to_string(),
         "t.conf:1: word '10.1.0.300': expected an IPv4 or IPv6 address or prefix (ADDR or ADDR/LEN)"),
        (format!("{p} sport 80 dir out"),
         "t.conf:1: word 'sport': expected proto tcp, udp, sctp or dccp before 'sport' (ports need a port protocol, as in ip)"),
        (format!("{p} proto tcp dport 70000 dir out"),
         "t.conf:1: word '70000': expected a port number from 0 to 65535"),
        (format!("{p} proto icmp type 256 dir out"),
         "t.conf:1: word '256': expected an ICMP type from 0 to 255"),
        (format!("{p} proto bogus dir out"),
         "t.conf:1: word 'bogus': expected a protocol: tcp, udp, icmp, ipv6-icmp, gre, esp, ah, sctp, dccp, any, or a number from 0 to 255"),
        (format!("{p} proto gre key 5 dir out"),
         "t.conf:1: word 'key': 'key' (a GRE key selector) is not supported by xfrm-ebpf"),
        (format!("{p} dir out tmpl"),
         "t.conf:1: word 'tmpl': expected template words after 'tmpl': src, dst, proto, spi, mode, reqid, level"),
        (format!("{p} dir out tmpl priority 3"),
         "t.conf:1: word 'tmpl': expected template words after 'tmpl': src, dst, proto, spi, mode, reqid, level"),
        (format!("{p} dir out tmpl dst 192.0.2.2 mode tunnel"),
         "t.conf:1: word 'tmpl': expected 'proto esp|ah' in the template (Linux: Invalid XFRM protocol in template)"),
        (format!("{p} dir out tmpl dst 192.0.2.2 proto comp"),
         "t.conf:1: word 'comp': proto 'comp' is not supported by xfrm-ebpf: expected esp or ah"),
        (format!("{p} dir out tmpl proto esp mode tunnel"),
         "t.conf:1: word 'tmpl': expected 'dst ADDR' in a tunnel-mode template: the tunnel's far end"),
        (format!("{p} dir out tmpl proto esp"),
         "t.conf:1: word 'tmpl': expected 'dst ADDR' in the template: the policy's dst is not a single host, so it cannot stand for the SA's destination"),
        (format!("{p} dir out tmpl src 192.0.2.1 dst 2001:db8::2 proto esp mode tunnel"),
         "t.conf:1: word '2001:db8::2': expected a template dst of the same family as its src 192.0.2.1 (IPv4)"),
        (format!("{p} dir out tmpl dst 2001:db8::2 proto esp mode transport"),
         "t.conf:1: word '2001:db8::2': expected a transport-mode template of the family it protects (IPv4) (Linux: Mode in template doesn't support a family change)"),
        (format!("{p} dir out tmpl dst 192.0.2.2 proto esp mode tunnel level use"),
         "t.conf:1: word 'use': expected level required in a tunnel-mode template of an out policy (Linux: Mode in optional template not allowed in outbound policy)"),
        (format!("{p} dir out tmpl dst 192.0.2.2 proto esp level maybe"),
         "t.conf:1: word 'maybe': expected a level: required or use"),
        (format!("{p} dir out tmpl dst 0.0.0.0 proto esp mode tunnel"),
         "t.conf:1: word '0.0.0.0': expected a specific template dst, not the unspecified address"),
        (format!("{p} dir out tmpl dst 192.0.2.2 proto esp mode tunnel dst 192.0.2.3"),
         "t.conf:1: word 'dst': 'dst' given twice (first at column 57): expected each keyword once"),
        (format!("{p} dir out tmpl dst 192.0.2.2 proto esp mode tunnel priority 1 sport 5"),
         "t.conf:1: word 'sport': expected the selector before the first 'tmpl' (column 52): 'sport' here is not a template word"),
        (format!("{p} dir out action block tmpl dst 192.0.2.2 proto esp mode tunnel"),
         "t.conf:1: word 'tmpl': expected no 'tmpl' in a block policy: its packets are dropped, a template would never apply"),
        (format!("{p} dir out{}", " tmpl dst 192.0.2.2 proto esp mode tunnel".repeat(7)),
         "t.conf:1: word 'tmpl': expected at most 6 templates per policy (XFRM_MAX_DEPTH)"),
    ];
    assert_errors(&cases);
}

#[test]
fn command_errors() {
    let cases: Vec<(String, &str)> = vec![
        ("state delete src 192.0.2.1 dst 192.0.2.2 proto esp spi 1".into(),
         "t.conf:1: word 'delete': expected 'add': 'state delete' is not a configuration command (a file only adds states and policies)"),
        ("policy flush".into(),
         "t.conf:1: word 'flush': expected 'add': 'policy flush' is not a configuration command (a file only adds states and policies)"),
        ("policy".into(), "t.conf:1: word 'policy': expected 'add' after 'policy', found the end of the line"),
        ("state ad".into(), "t.conf:1: word 'ad': expected 'add' after 'state'"),
        ("route add 10.0.0.0/8 via 192.0.2.1".into(),
         "t.conf:1: word 'route': expected a command: 'state add' or 'policy add'"),
        ("ip route add 10.0.0.0/8".into(),
         "t.conf:1: word 'route': expected 'xfrm' after 'ip' (only ip xfrm commands belong in this file; global ip options are not accepted)"),
        ("ip -6 xfrm policy add dir out".into(),
         "t.conf:1: word '-6': expected 'xfrm' after 'ip' (only ip xfrm commands belong in this file; global ip options are not accepted)"),
        ("ip".into(), "t.conf:1: word 'ip': expected 'xfrm' after 'ip', found the end of the line"),
        ("ip xfrm".into(), "t.conf:1: word 'xfrm': expected 'state add' or 'policy add', found the end of the line"),
        ("state add 'src".into(),
         "t.conf:1: word ''': expected a closing ' on the same line (a quote opened here does not close)"),
    ];
    assert_errors(&cases);
}

#[test]
fn errors_point_at_the_physical_line_of_the_word() {
    let text = format!(
        "# header\nstate add src 192.0.2.1 \\\n  dst 192.0.2.2 proto esp \\\n  spi 0x1000 \\\n  aead 'rfc4106(gcm(aes))' {K20} 129\n"
    );
    let e = parse_config(&text, "t.conf").unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(
        e[0].to_string(),
        "t.conf:5: word '129': expected an ICV length in bits for rfc4106(gcm(aes)): 64, 96 or 128"
    );
    assert_eq!(e[0].column, 71);
}

#[test]
fn duplicate_sa_and_policy() {
    let text = format!(
        // Same (daddr, spi) but AH on the last line: another SA.
        "{}\n{}\n# same SPI, other dst: fine\n{}\nstate add src 192.0.2.1 dst 192.0.2.2 proto ah spi 0x1000 auth sha1 {SHA1_KEY}\n",
        esp(""),
        esp("reqid 2"),
        esp("").replace("dst 192.0.2.2", "dst 192.0.2.3"),
    );
    assert_eq!(
        errs(&text),
        ["t.conf:2: word 'state': duplicate SA (dst 192.0.2.2, spi 0x00001000, proto esp): already added at line 1 (ip xfrm state add: File exists)"]
    );
    let text = "policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out priority 1\n\
                policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir in\n\
                \n\
                ip xfrm policy add src 10.1.0.7/24 dst 10.2.0.0/24 dir out priority 2\n";
    assert_eq!(
        errs(text),
        ["t.conf:4: word 'policy': duplicate policy (same selector and dir): already added at line 1 (ip xfrm policy add: File exists)"]
    );
}

#[test]
fn a_template_without_an_sa_is_fine() {
    // SAs may come later (from an IKE daemon), as with ip.
    let c = ok("policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 77 mode tunnel\n");
    assert_eq!(c.states.len(), 0);
}

#[test]
fn all_errors_of_a_file_in_order_and_nothing_applied() {
    let text = format!(
        "{good_sa}\n\
         state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x2000 aead gcm128 {K20} 128\n\
         policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel\n\
         policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir sideways\n\
         # a comment\n\
         state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x3000 \\\n   aead 'rfc4106(gcm(aes))' {K20} 128 flag esn\n\
         \n\
         state add 'unterminated\n\
         {good_sa}\n\
         flush\n",
        good_sa = esp("")
    );
    let e = parse_config(&text, "bad.conf").unwrap_err();
    let lines: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        lines,
        [
            "bad.conf:2: word 'gcm128': expected an aead algorithm name: 'rfc4106(gcm(aes))', 'rfc4543(gcm(aes))' or 'rfc7539esp(chacha20,poly1305)'",
            "bad.conf:4: word 'sideways': expected a direction: out, in or fwd",
            "bad.conf:7: word 'esn': expected 'replay-window N' (N > 0) with flag esn, as Linux requires",
            "bad.conf:9: word ''': expected a closing ' on the same line (a quote opened here does not close)",
            "bad.conf:10: word 'state': duplicate SA (dst 192.0.2.2, spi 0x00001000, proto esp): already added at line 1 (ip xfrm state add: File exists)",
            "bad.conf:11: word 'flush': expected a command: 'state add' or 'policy add'",
        ]
    );
}

#[test]
fn one_bad_line_rejects_the_whole_file() {
    let sample = String::from_utf8(SAMPLE.to_vec()).unwrap();
    assert!(parse_config(&sample, "s").is_ok());
    let broken =
        format!("{sample}\npolicy add src 10.7.0.0/16 dst 10.8.0.0/16 dir out priority x\n");
    let e = parse_config(&broken, "s").unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].word, "x");
}

#[test]
fn empty_and_comment_only_files_are_valid() {
    assert_eq!(
        ok(""),
        Config {
            states: vec![],
            policies: vec![]
        }
    );
    let c = ok("# nothing yet\n\n   # still nothing\n");
    assert!(c.states.is_empty() && c.policies.is_empty());
}

// ---------------------------------------------------------------- the sample file, check

/// The example file; loaded through a 0600 copy (a checkout leaves it 0644).
const SAMPLE: &[u8] = include_bytes!("../../examples/site-a.conf");

#[test]
fn sample_config_parses() {
    let p = temp_file("sample-parses.conf", SAMPLE);
    let c = load_config(&p);
    std::fs::remove_file(&p).unwrap();
    let c = c.unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert_eq!((c.states.len(), c.policies.len()), (8, 9));
    assert_invariants(&c);
    let sa = |spi: u32| c.states.iter().find(|s| s.id.spi == spi).unwrap();
    // ESP tunnel, GCM-128 with ESN and lifetimes.
    let t = sa(0x1000);
    assert!(t.flags.esn && t.replay_window == 128 && t.mode == XfrmMode::Tunnel);
    assert_eq!(t.lifetime.hard_add_expires_seconds, 3600);
    assert_eq!(t.lifetime.hard_byte_limit, 1_000_000_000_000);
    // AH transport, HMAC-SHA-256-128.
    assert_eq!(auth_of(sa(0x3000)).2, 128);
    // NAT-T with GMAC.
    let n = sa(0x4000);
    assert_eq!(n.encap.unwrap().kind, EncapType::EspInUdp);
    assert!(n.extra_flags.dont_encap_dscp);
    assert!(matches!(
        n.algorithm,
        SaAlgorithm::Aead {
            algo: AeadAlgo::Rfc4543Gmac,
            ..
        }
    ));
    // The 6-in-4 SA takes both families.
    assert_eq!(sa(0x7000).selector, None);
    assert_eq!(sa(0x7000).tfcpad, 512);
    // The bundle: ESP then AH, both to the backup host.
    let b = c.policies.iter().find(|p| p.templates.len() == 2).unwrap();
    assert_eq!(
        b.templates
            .iter()
            .map(|t| (t.proto, t.dst))
            .collect::<Vec<_>>(),
        [
            (XfrmProto::Esp, ip("198.51.100.9")),
            (XfrmProto::Ah, ip("198.51.100.9"))
        ]
    );
    // Policy indexes follow the file.
    assert!(c
        .policies
        .iter()
        .enumerate()
        .all(|(i, p)| p.index == i as u32));
    // One block policy, one IPv6 policy over IPv4.
    assert_eq!(
        c.policies
            .iter()
            .filter(|p| p.action == PolicyAction::Block)
            .count(),
        1
    );
    let six_in_four = c.policies.last().unwrap();
    assert!(six_in_four.selector.src.addr.is_ipv6() && six_in_four.templates[0].dst.is_ipv4());
}

/// What every accepted configuration must satisfy, whatever the text was.
fn assert_invariants(c: &Config) {
    let mut ids = std::collections::HashSet::new();
    for sa in &c.states {
        assert!(ids.insert(sa.id), "duplicate SA {:?}", sa.id);
        assert_eq!(sa.saddr.is_ipv4(), sa.id.daddr.is_ipv4());
        assert!(!sa.saddr.is_unspecified() && !sa.id.daddr.is_unspecified());
        assert_ne!(sa.id.spi, 0);
        assert!(sa.replay_window <= REPLAY_WINDOW_MAX);
        assert!(!sa.flags.esn || sa.replay_window > 0);
        assert!(sa.flags.esn || (sa.replay_seq_hi == 0 && sa.replay_oseq_hi == 0));
        match &sa.algorithm {
            SaAlgorithm::Aead {
                algo,
                key,
                icv_bits,
                ..
            } => {
                assert_eq!(sa.id.proto, XfrmProto::Esp);
                assert!(key.len() == 16 || key.len() == 32);
                match algo {
                    AeadAlgo::Rfc4106Gcm => assert!([64, 96, 128].contains(icv_bits)),
                    AeadAlgo::Rfc4543Gmac => assert_eq!(*icv_bits, 128),
                    AeadAlgo::Rfc7539EspChaCha20Poly1305 => {
                        assert_eq!((key.len(), *icv_bits), (32, 128))
                    }
                }
            }
            SaAlgorithm::EncAuth {
                auth,
                auth_key,
                trunc_bits,
                ..
            } => {
                assert_eq!(sa.id.proto, XfrmProto::Esp);
                assert!(!auth_key.is_empty());
                assert!(
                    *trunc_bits >= 96
                        && *trunc_bits <= auth.full_bits()
                        && trunc_bits.is_multiple_of(8)
                );
            }
            SaAlgorithm::Auth {
                algo,
                key,
                trunc_bits,
            } => {
                assert_eq!(sa.id.proto, XfrmProto::Ah);
                assert!(!key.is_empty());
                assert!(
                    *trunc_bits >= 96
                        && *trunc_bits <= algo.full_bits()
                        && trunc_bits.is_multiple_of(8)
                );
            }
        }
        if let Some(e) = sa.encap {
            assert_eq!(sa.id.proto, XfrmProto::Esp);
            assert_eq!(e.oaddr.is_ipv4(), sa.id.daddr.is_ipv4());
            assert!(e.sport != 0 && e.dport != 0);
        }
        if sa.tfcpad > 0 {
            assert_eq!((sa.id.proto, sa.mode), (XfrmProto::Esp, XfrmMode::Tunnel));
        }
        match sa.selector {
            Some(s) => {
                assert_eq!(s.src.addr.is_ipv4(), s.dst.addr.is_ipv4());
                if sa.mode == XfrmMode::Transport {
                    assert_eq!(s.src.addr.is_ipv4(), sa.id.daddr.is_ipv4());
                }
            }
            None => assert!(sa.flags.af_unspec),
        }
        let l = sa.lifetime;
        assert!(l.soft_byte_limit <= l.hard_byte_limit);
        assert!(l.soft_packet_limit <= l.hard_packet_limit);
    }
    let mut keys = std::collections::HashSet::new();
    for (i, p) in c.policies.iter().enumerate() {
        assert_eq!(p.index, i as u32);
        assert!(
            keys.insert((p.dir, sel::normalized(&p.selector))),
            "duplicate policy {p:?}"
        );
        assert_eq!(p.selector.src.addr.is_ipv4(), p.selector.dst.addr.is_ipv4());
        assert!(p.templates.len() <= MAX_TEMPLATES);
        assert!(p.action == PolicyAction::Allow || p.templates.is_empty());
        for t in &p.templates {
            assert!(!t.dst.is_unspecified());
            assert!(t
                .src
                .is_none_or(|s| s.is_ipv4() == t.dst.is_ipv4() && !s.is_unspecified()));
            assert!(t.spi != Some(0));
            assert!(
                !(t.mode == XfrmMode::Tunnel
                    && t.level == TmplLevel::Use
                    && p.dir == PolicyDir::Out)
            );
        }
    }
}

fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("xfrm-config-test-{}-{name}", std::process::id()));
    crate::keyfile::write_private(&p, contents).unwrap();
    p
}

#[test]
fn check_valid_file() {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let p = temp_file("sample-check.conf", SAMPLE);
    let code = check(&p, &mut out, &mut err).unwrap();
    std::fs::remove_file(&p).unwrap();
    assert_eq!(code, 0);
    assert_eq!(String::from_utf8(out).unwrap(), "8 states, 9 policies\n");
    assert!(err.is_empty());
}

#[test]
fn check_summary_counts_one_as_singular() {
    let p = temp_file(
        "one.conf",
        format!("{}\npolicy add dir out\n", esp("")).as_bytes(),
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = check(&p, &mut out, &mut err).unwrap();
    std::fs::remove_file(&p).unwrap();
    assert_eq!(code, 0);
    assert_eq!(String::from_utf8(out).unwrap(), "1 state, 1 policy\n");
}

#[test]
fn check_invalid_file_prints_every_error() {
    let p = temp_file(
        "bad.conf",
        format!(
            "{}\npolicy add dir nowhere\nstate add src 192.0.2.1\n",
            esp("")
        )
        .as_bytes(),
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = check(&p, &mut out, &mut err).unwrap();
    std::fs::remove_file(&p).unwrap();
    assert_eq!(code, 2);
    assert!(out.is_empty());
    let f = p.display();
    assert_eq!(
        String::from_utf8(err).unwrap(),
        format!(
            "{f}:2: word 'nowhere': expected a direction: out, in or fwd\n\
             {f}:3: word 'state': expected 'dst ADDR' in 'state add' (an SA needs src, dst, proto, spi and an algorithm)\n"
        )
    );
}

#[test]
fn a_file_others_can_read_is_refused_with_the_chmod_to_run() {
    use std::os::unix::fs::PermissionsExt;
    let p = temp_file("open.conf", SAMPLE);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = check(&p, &mut out, &mut err).unwrap();
    let e = load_config(&p).unwrap_err();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ok = load_config(&p);
    std::fs::remove_file(&p).unwrap();
    let f = p.display();
    let want = format!(
        "{f}: mode 0644 gives group or others access to a file that holds keys; run \
         `chmod 600 {f}` (only its owner may read it)"
    );
    assert_eq!((code, e.len(), e[0].to_string()), (2, 1, want.clone()));
    assert_eq!(String::from_utf8(err).unwrap(), format!("{want}\n"));
    assert!(out.is_empty());
    assert!(ok.is_ok(), "0600 is fine");
}

#[test]
fn io_and_encoding_errors_are_config_errors() {
    let missing = std::env::temp_dir().join("xfrm-config-test-does-not-exist.conf");
    let e = load_config(&missing).unwrap_err();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, 0);
    let s = e[0].to_string();
    assert!(
        s.starts_with(&format!("{}: cannot read: ", missing.display())),
        "{s}"
    );
    let (mut out, mut err) = (Vec::new(), Vec::new());
    assert_eq!(check(&missing, &mut out, &mut err).unwrap(), 2);

    let p = temp_file("latin1.conf", b"# ok\n# caf\xe9\n");
    let e = load_config(&p).unwrap_err();
    std::fs::remove_file(&p).unwrap();
    assert_eq!(
        e[0].to_string(),
        format!(
            "{}: line 2: expected UTF-8 text, found an invalid byte",
            p.display()
        )
    );
}

// ---------------------------------------------------------------- never a panic

/// Valid lines to mutate: the sample's commands, one per line.
fn seed_lines() -> Vec<String> {
    let text = String::from_utf8(SAMPLE.to_vec()).unwrap();
    let joined = text.replace("\\\n", " ");
    let mut v: Vec<String> = joined
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(str::to_string)
        .collect();
    v.push(esp(
        "mode tunnel sel proto icmp type 8 code 0 limit packet-soft 5 flag af-unspec",
    ));
    v.push(ah("flag esn replay-window 64 replay-seq-hi 1"));
    v
}

const VOCAB: &[&str] = &[
    "src",
    "dst",
    "proto",
    "spi",
    "reqid",
    "mode",
    "aead",
    "auth",
    "auth-trunc",
    "enc",
    "flag",
    "extra-flag",
    "encap",
    "tfcpad",
    "limit",
    "sel",
    "tmpl",
    "dir",
    "priority",
    "action",
    "level",
    "index",
    "ptype",
    "esn",
    "af-unspec",
    "tunnel",
    "transport",
    "esp",
    "ah",
    "0",
    "0x",
    "0x0",
    "4096",
    "4294967296",
    "-1",
    "010",
    "::",
    "0.0.0.0",
    "10.0.0.0/99",
    "fd00::1",
    "''",
    "\"",
    "'",
    "\\",
    "#",
    "\\\n",
    "\n",
    "rfc4106(gcm(aes))",
    "hmac(sha1)",
    "time-soft",
    "byte-hard",
    "use",
    "block",
    "state",
    "policy",
    "add",
    "ip",
    "xfrm",
    "é",
    "\u{0}",
];

#[derive(Clone, Debug)]
enum Mutation {
    DeleteChars(usize, usize),
    InsertChar(usize, char),
    ReplaceWord(usize, usize),
    InsertWord(usize, usize),
    SwapWords(usize, usize),
    DropWord(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..8).prop_map(|(a, n)| Mutation::DeleteChars(a, n)),
        (any::<usize>(), any::<char>()).prop_map(|(a, c)| Mutation::InsertChar(a, c)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::ReplaceWord(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::InsertWord(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapWords(a, b)),
        any::<usize>().prop_map(Mutation::DropWord),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(line: &str, m: &Mutation) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut words: Vec<String> = line.split(' ').map(str::to_string).collect();
    let nw = words.len();
    match *m {
        Mutation::DeleteChars(a, n) => {
            let a = a % (chars.len() + 1);
            let b = (a + n).min(chars.len());
            chars[..a].iter().chain(&chars[b..]).collect()
        }
        Mutation::InsertChar(a, c) => {
            let a = a % (chars.len() + 1);
            let mut c2 = chars.clone();
            c2.insert(a, c);
            c2.into_iter().collect()
        }
        Mutation::ReplaceWord(a, b) => {
            words[a % nw] = VOCAB[b % VOCAB.len()].to_string();
            words.join(" ")
        }
        Mutation::InsertWord(a, b) => {
            words.insert(a % (nw + 1), VOCAB[b % VOCAB.len()].to_string());
            words.join(" ")
        }
        Mutation::SwapWords(a, b) => {
            words.swap(a % nw, b % nw);
            words.join(" ")
        }
        Mutation::DropWord(a) => {
            words.remove(a % nw);
            words.join(" ")
        }
        Mutation::Truncate(a) => chars[..a % (chars.len() + 1)].iter().collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random mutations of valid lines never panic; every error names a line of the input
    /// and a word, and a result is all or nothing.
    #[test]
    fn mutated_lines_never_panic(
        picks in proptest::collection::vec((any::<usize>(), proptest::collection::vec(mutation(), 1..5)), 1..6)
    ) {
        let seeds = seed_lines();
        let mut text = String::new();
        for (i, muts) in &picks {
            let mut line = seeds[i % seeds.len()].clone();
            for m in muts {
                line = apply(&line, m);
            }
            text.push_str(&line);
            text.push('\n');
        }
        let physical = text.split('\n').count();
        match parse_config(&text, "fuzz.conf") {
            Ok(c) => assert_invariants(&c),
            Err(errors) => {
                prop_assert!(!errors.is_empty());
                for e in &errors {
                    prop_assert!(e.line >= 1 && e.line <= physical, "{e:?}");
                    prop_assert!(e.column >= 1, "{e:?}");
                    let shown = e.to_string();
                    let prefix = format!("fuzz.conf:{}: word '", e.line);
                    prop_assert!(shown.starts_with(&prefix), "{}", shown);
                }
                let mut sorted = errors.clone();
                sorted.sort_by_key(|e| (e.line, e.column));
                prop_assert_eq!(sorted, errors);
            }
        }
    }

    /// Arbitrary text never panics either.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = parse_config(&text, "any.conf");
    }
}

/// A hard limit below the unwritten soft one ("inf") is valid; found by
/// `mutated_lines_never_panic`, which once hit a panic here.
#[test]
fn hard_limit_without_soft_limit_is_accepted() {
    let line = "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x1000 reqid 1 mode tunnel \
                aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f10cafebabe 128 \
                limit packet-hard 5 limit byte-hard 1000";
    let cfg = super::parse_config(line, "t.conf").expect("valid");
    assert_eq!(cfg.states[0].lifetime.hard_packet_limit, 5);
    assert_eq!(cfg.states[0].lifetime.hard_byte_limit, 1000);
}
