//! `state add …`: ip's xfrm_state_modify, then the checks the kernel's verify_newsa_info,
//! xfrm_init_replay and __xfrm_init_state would make, plus what xfrm-ebpf does not support.

use std::net::IpAddr;

use super::cursor::{set_once, At, Cursor, Slot};
use super::error::{LineError, LineResult};
use super::lexer::Word;
use super::sel::SelParts;
use super::value::{family_name, host_of, key_of, port_of, u32_of, u64_of, xfrm_proto_of};
use crate::sa::{
    AeadAlgo, AuthAlgo, Encap, EncapType, Lifetime, SaAlgorithm, SaConfig, SaExtraFlags, SaFlags,
    XfrmId, XfrmMode, XfrmProto,
};
use crate::selector::Selector;

/// XFRMA_REPLAY_ESN_MAX: the largest replay window Linux keeps (bits).
pub const REPLAY_WINDOW_MAX: u32 = 4096;

const AEAD_EXPECTED: &str =
    "expected an aead algorithm name: 'rfc4106(gcm(aes))' or 'rfc4543(gcm(aes))'";
const AUTH_EXPECTED: &str = "expected an auth algorithm name: 'hmac(sha256)' or 'hmac(sha1)'";
const ESP_NEEDS_AEAD: &str = "ESP with separate encryption and authentication algorithms (enc + auth/auth-trunc) is not supported by xfrm-ebpf: use aead 'rfc4106(gcm(aes))' or 'rfc4543(gcm(aes))'";

/// The flags of ip's xfrm_state_flag_parse that xfrm-ebpf implements.
const FLAGS: &[&str] = &[
    "noecn",
    "decap-dscp",
    "nopmtudisc",
    "align4",
    "esn",
    "af-unspec",
];
/// The other flags ip knows: refused, never ignored.
const UNSUPPORTED_FLAGS: &[&str] = &["wildrecv", "icmp"];
const EXTRA_FLAGS: &[&str] = &["dont-encap-dscp", "oseq-may-wrap"];

/// `state add` keywords of ip-xfrm(8) that xfrm-ebpf does not implement.
const UNSUPPORTED_KEYWORDS: &[(&str, &str)] = &[
    ("enc", ESP_NEEDS_AEAD),
    ("comp", "'comp' (IPComp) is not supported by xfrm-ebpf"),
    ("mark", "'mark' is not supported by xfrm-ebpf"),
    ("output-mark", "'output-mark' is not supported by xfrm-ebpf"),
    ("if_id", "'if_id' (xfrm interfaces) is not supported by xfrm-ebpf"),
    ("ctx", "'ctx' (security contexts) is not supported by xfrm-ebpf"),
    ("coa", "'coa' (Mobile IPv6) is not supported by xfrm-ebpf"),
    ("offload", "'offload' is not supported by xfrm-ebpf"),
    ("dir", "'dir' (SA direction) is not supported by xfrm-ebpf: an SA serves the output and input paths"),
    ("seq", "'seq' (the acquire sequence number) is not supported by xfrm-ebpf; for the ESP/AH sequence number use replay-oseq"),
    ("nat-keepalive-interval", "'nat-keepalive-interval' is not supported by xfrm-ebpf"),
    ("mtimer-thresh", "'mtimer-thresh' is not supported by xfrm-ebpf"),
    ("pcpu-num", "'pcpu-num' is not supported by xfrm-ebpf"),
];

#[derive(Clone, Copy)]
enum AlgKind {
    Aead,
    Auth,
    AuthTrunc,
}

/// Parses the words after `state add`; `head` is the `state` word (errors about something
/// missing point at it).
pub(crate) fn parse_state(head: &Word, words: &[Word]) -> LineResult<SaConfig> {
    let mut cur = Cursor::new(words);
    let mut src: At<IpAddr> = None;
    let mut dst: At<IpAddr> = None;
    let mut proto: At<XfrmProto> = None;
    let mut spi: At<u32> = None;
    let mut reqid: At<u32> = None;
    let mut mode: At<XfrmMode> = None;
    let mut alg: At<(AlgKind, SaAlgorithm)> = None;
    let mut replay_window: At<u32> = None;
    let mut replay_seq: At<u32> = None;
    let mut replay_oseq: At<u32> = None;
    let mut replay_seq_hi: At<u32> = None;
    let mut replay_oseq_hi: At<u32> = None;
    let mut flags = SaFlags::default();
    let mut esn_word: Option<&Word> = None;
    let mut extra_flags = SaExtraFlags::default();
    let mut encap: At<Encap> = None;
    let mut tfcpad: At<u32> = None;
    let mut lifetime = Lifetime::default();
    let mut limits: Vec<Slot<u64>> = Vec::new();
    let mut sel: At<()> = None;
    let mut sel_parts = SelParts::default();

    while let Some(kw) = cur.next() {
        match kw.text.as_str() {
            "src" | "dst" => {
                let val = cur.value(kw, "an address")?;
                let a = host_of(val)?;
                let slot = if kw.is("src") { &mut src } else { &mut dst };
                set_once(slot, kw, val, a)?;
            }
            "proto" => {
                let val = cur.value(kw, "esp or ah")?;
                let p = xfrm_proto_of(val)?;
                set_once(&mut proto, kw, val, p)?;
            }
            "spi" => {
                let val = cur.value(kw, "an SPI")?;
                let v = u32_of(val)?;
                if v == 0 {
                    return Err(LineError::at(
                        val,
                        "expected an SPI from 1 to 0xffffffff (SPI 0 is reserved, RFC 4303 section 2.1)",
                    ));
                }
                set_once(&mut spi, kw, val, v)?;
            }
            "reqid" => {
                let val = cur.value(kw, "a number")?;
                set_once(&mut reqid, kw, val, u32_of(val)?)?;
            }
            "mode" => {
                let val = cur.value(kw, "a mode")?;
                set_once(&mut mode, kw, val, mode_of(val)?)?;
            }
            "aead" => {
                let name = cur.value(kw, "an aead algorithm name")?;
                let algo = match name.text.as_str() {
                    "rfc4106(gcm(aes))" => AeadAlgo::Rfc4106Gcm,
                    "rfc4543(gcm(aes))" => AeadAlgo::Rfc4543Gmac,
                    _ => return Err(LineError::at(name, AEAD_EXPECTED)),
                };
                let key_w = cur.value(name, "a key (0x… hex or a quoted string)")?;
                let key = key_of(key_w)?;
                if key.len() != 20 && key.len() != 36 {
                    return Err(LineError::at_key(
                        key_w,
                        format!(
                            "expected a key of 20 or 36 bytes for {} (a 16 or 32-byte AES key and a 4-byte salt), got {} bytes",
                            name.text,
                            key.len()
                        ),
                    ));
                }
                let icv_w = value_after_key(&mut cur, key_w, "an ICV length in bits")?;
                let icv_bits = u32_of(icv_w)?;
                match algo {
                    AeadAlgo::Rfc4106Gcm if ![64, 96, 128].contains(&icv_bits) => {
                        return Err(LineError::at(
                            icv_w,
                            "expected an ICV length in bits for rfc4106(gcm(aes)): 64, 96 or 128",
                        ))
                    }
                    AeadAlgo::Rfc4543Gmac if icv_bits != 128 => {
                        return Err(LineError::at(
                            icv_w,
                            "expected ICV length 128 for rfc4543(gcm(aes)) (the only one Linux accepts)",
                        ))
                    }
                    _ => {}
                }
                let split = key.len() - 4;
                let mut salt = [0u8; 4];
                salt.copy_from_slice(&key[split..]);
                let aes_key = zeroize::Zeroizing::new(key[..split].to_vec());
                let a = SaAlgorithm::Aead {
                    algo,
                    key: aes_key,
                    salt,
                    icv_bits,
                };
                set_alg(&mut alg, kw, name, (AlgKind::Aead, a))?;
            }
            "auth" | "auth-trunc" => {
                let name = cur.value(kw, "an auth algorithm name")?;
                let algo = match name.text.as_str() {
                    // The kernel's aalg_list also matches the compat names.
                    "hmac(sha256)" | "sha256" => AuthAlgo::HmacSha256,
                    "hmac(sha1)" | "sha1" => AuthAlgo::HmacSha1,
                    _ => return Err(LineError::at(name, AUTH_EXPECTED)),
                };
                let key_w = cur.value(name, "a key (0x… hex or a quoted string)")?;
                let key = key_of(key_w)?;
                if key.is_empty() {
                    return Err(LineError::at_key(
                        key_w,
                        "expected a key of at least 1 byte",
                    ));
                }
                let (kind, trunc_bits) = if kw.is("auth") {
                    (AlgKind::Auth, algo.default_trunc_bits())
                } else {
                    let tw = value_after_key(&mut cur, key_w, "a truncation length in bits")?;
                    let t = u32_of(tw)?;
                    let full = algo.full_bits();
                    // Linux only caps it at the digest size; 96 is the shortest any RFC
                    // defines (RFC 2404, RFC 4868) and whole bytes are what AH carries.
                    if !(96..=full).contains(&t) || !t.is_multiple_of(8) {
                        return Err(LineError::at(
                            tw,
                            format!(
                                "expected a truncation length in bits for {}: a multiple of 8 from 96 to {full}",
                                name.text
                            ),
                        ));
                    }
                    (AlgKind::AuthTrunc, t)
                };
                let a = SaAlgorithm::Auth {
                    algo,
                    key,
                    trunc_bits,
                };
                set_alg(&mut alg, kw, name, (kind, a))?;
            }
            "replay-window" => {
                let val = cur.value(kw, "a window size")?;
                let v = u32_of(val)?;
                if v > REPLAY_WINDOW_MAX {
                    return Err(LineError::at(
                        val,
                        format!("expected a replay window from 0 to {REPLAY_WINDOW_MAX} packets (XFRMA_REPLAY_ESN_MAX)"),
                    ));
                }
                set_once(&mut replay_window, kw, val, v)?;
            }
            "replay-seq" | "replay-oseq" | "replay-seq-hi" | "replay-oseq-hi" => {
                let val = cur.value(kw, "a sequence number")?;
                let v = u32_of(val)?;
                let slot = match kw.text.as_str() {
                    "replay-seq" => &mut replay_seq,
                    "replay-oseq" => &mut replay_oseq,
                    "replay-seq-hi" => &mut replay_seq_hi,
                    _ => &mut replay_oseq_hi,
                };
                set_once(slot, kw, val, v)?;
            }
            "flag" => {
                // Like ip: one or more flag names after one `flag`.
                let first = cur.value(kw, "a flag name")?;
                if !FLAGS.contains(&first.text.as_str())
                    && !UNSUPPORTED_FLAGS.contains(&first.text.as_str())
                {
                    return Err(LineError::at(
                        first,
                        format!("expected a flag name: {}", FLAGS.join(", ")),
                    ));
                }
                let mut w = first;
                loop {
                    match w.text.as_str() {
                        "noecn" => flags.noecn = true,
                        "decap-dscp" => flags.decap_dscp = true,
                        "nopmtudisc" => flags.nopmtudisc = true,
                        "align4" => flags.align4 = true,
                        "esn" => {
                            flags.esn = true;
                            esn_word.get_or_insert(w);
                        }
                        "af-unspec" => flags.af_unspec = true,
                        _ => {
                            return Err(LineError::at(
                                w,
                                format!("flag '{}' is not supported by xfrm-ebpf", w.text),
                            ))
                        }
                    }
                    match cur.peek() {
                        Some(n)
                            if FLAGS.contains(&n.text.as_str())
                                || UNSUPPORTED_FLAGS.contains(&n.text.as_str()) =>
                        {
                            w = n;
                            cur.next();
                        }
                        _ => break,
                    }
                }
            }
            "extra-flag" => {
                let mut w = cur.value(kw, "an extra-flag name")?;
                loop {
                    match w.text.as_str() {
                        "dont-encap-dscp" => extra_flags.dont_encap_dscp = true,
                        "oseq-may-wrap" => extra_flags.oseq_may_wrap = true,
                        _ => {
                            return Err(LineError::at(
                                w,
                                format!(
                                    "expected an extra-flag name: {}",
                                    EXTRA_FLAGS.join(" or ")
                                ),
                            ))
                        }
                    }
                    match cur.peek() {
                        Some(n) if EXTRA_FLAGS.contains(&n.text.as_str()) => {
                            w = n;
                            cur.next();
                        }
                        _ => break,
                    }
                }
            }
            "encap" => {
                let tw = cur.value(kw, "an encapsulation type")?;
                let kind = match tw.text.as_str() {
                    "espinudp" => EncapType::EspInUdp,
                    "espinudp-nonike" => EncapType::EspInUdpNonIke,
                    "espintcp" => {
                        return Err(LineError::at(
                            tw,
                            "encap 'espintcp' (RFC 8229) is not supported by xfrm-ebpf: expected espinudp or espinudp-nonike",
                        ))
                    }
                    _ => {
                        return Err(LineError::at(
                            tw,
                            "expected an encapsulation type: espinudp or espinudp-nonike",
                        ))
                    }
                };
                let sw = cur.value(tw, "a UDP source port")?;
                let sport = nonzero_port(sw)?;
                let dw = cur.value(sw, "a UDP destination port")?;
                let dport = nonzero_port(dw)?;
                let ow = cur.value(dw, "the original address (OADDR)")?;
                let oaddr = host_of(ow)?;
                let e = Encap {
                    kind,
                    sport,
                    dport,
                    oaddr,
                };
                set_once(&mut encap, kw, ow, e)?;
            }
            "tfcpad" => {
                let val = cur.value(kw, "a length in bytes")?;
                set_once(&mut tfcpad, kw, val, u32_of(val)?)?;
            }
            "limit" => {
                let name = cur.value(kw, "a limit name")?;
                let val = cur.value(name, "a number")?;
                let v = u64_of(val)?;
                let field = match name.text.as_str() {
                    "time-soft" => &mut lifetime.soft_add_expires_seconds,
                    "time-hard" => &mut lifetime.hard_add_expires_seconds,
                    "time-use-soft" => &mut lifetime.soft_use_expires_seconds,
                    "time-use-hard" => &mut lifetime.hard_use_expires_seconds,
                    "byte-soft" => &mut lifetime.soft_byte_limit,
                    "byte-hard" => &mut lifetime.hard_byte_limit,
                    "packet-soft" => &mut lifetime.soft_packet_limit,
                    "packet-hard" => &mut lifetime.hard_packet_limit,
                    _ => return Err(LineError::at(name, LIMIT_EXPECTED)),
                };
                if let Some(first) = limits.iter().find(|l| l.kw.text == name.text) {
                    return Err(LineError::at(
                        name,
                        format!(
                            "limit '{}' given twice (first at column {}): expected each limit once",
                            name.text, first.kw.col
                        ),
                    ));
                }
                *field = v;
                limits.push(Slot { v, kw: name, val });
                // ip takes one limit per `limit` word; say so rather than "unknown keyword".
                if let Some(n) = cur.peek() {
                    if LIMIT_NAMES.contains(&n.text.as_str()) {
                        return Err(LineError::at(
                            n,
                            format!("expected 'limit' before '{}': each limit has its own 'limit' word, as in ip", n.text),
                        ));
                    }
                }
            }
            "sel" => {
                set_once(&mut sel, kw, kw, ())?;
                // Selector words, as ip reads them, up to the first other keyword.
                while let Some(w) = cur.peek() {
                    if !SEL_WORDS.contains(&w.text.as_str()) {
                        break;
                    }
                    cur.next();
                    sel_parts.take(w, &mut cur)?;
                }
                if sel_parts.is_empty() {
                    return Err(LineError::at(
                        kw,
                        "expected selector words after 'sel': src, dst, proto, sport, dport, type, code",
                    ));
                }
            }
            other => {
                if let Some((_, msg)) = UNSUPPORTED_KEYWORDS.iter().find(|(k, _)| *k == other) {
                    return Err(LineError::at(kw, *msg));
                }
                return Err(LineError::at(kw, STATE_EXPECTED));
            }
        }
    }

    // What must be there.
    let missing = |what: &str| {
        LineError::at(
            head,
            format!("expected '{what}' in 'state add' (an SA needs src, dst, proto, spi and an algorithm)"),
        )
    };
    let src = src.ok_or_else(|| missing("src ADDR"))?;
    let dst = dst.ok_or_else(|| missing("dst ADDR"))?;
    let proto = proto.ok_or_else(|| missing("proto esp|ah"))?;
    let spi = spi.ok_or_else(|| missing("spi SPI"))?;

    if src.v.is_ipv4() != dst.v.is_ipv4() {
        return Err(LineError::at(
            dst.val,
            format!(
                "expected a dst of the same family as src {} ({}): both addresses of an SA have one family",
                src.val.text,
                family_name(src.v)
            ),
        ));
    }
    for a in [src, dst] {
        if a.v.is_unspecified() {
            return Err(LineError::at(
                a.val,
                "expected a specific address, not the unspecified one (xfrm-ebpf needs both end points of an SA)",
            ));
        }
    }
    let mode_v = mode.map_or(XfrmMode::Transport, |m| m.v);

    // Algorithms per protocol (verify_newsa_info, ip's xfrm_state_modify).
    let Some(Slot {
        v: (kind, algorithm),
        kw: alg_kw,
        ..
    }) = alg
    else {
        return Err(LineError::at(
            head,
            match proto.v {
                XfrmProto::Esp => "expected 'aead rfc4106(gcm(aes)) KEY ICV-BITS' or 'aead rfc4543(gcm(aes)) KEY 128' in an ESP 'state add'",
                XfrmProto::Ah => "expected 'auth NAME KEY' or 'auth-trunc NAME KEY BITS' in an AH 'state add'",
            },
        ));
    };
    match (proto.v, kind) {
        (XfrmProto::Esp, AlgKind::Auth | AlgKind::AuthTrunc) => {
            return Err(LineError::at(alg_kw, ESP_NEEDS_AEAD))
        }
        (XfrmProto::Ah, AlgKind::Aead) => {
            return Err(LineError::at(
                alg_kw,
                "expected 'auth' or 'auth-trunc' with proto ah: AH has no aead (Linux: Invalid attributes for AH)",
            ))
        }
        _ => {}
    }

    // Replay state (ip: "esn flag set without replay-window"; kernel xfrm_init_replay:
    // "ESN replay window must be > 0" for an SA that is not output-only).
    let window = replay_window.map_or(0, |w| w.v);
    if let Some(w) = esn_word {
        if window == 0 {
            return Err(LineError::at(
                w,
                "expected 'replay-window N' (N > 0) with flag esn, as Linux requires",
            ));
        }
    }
    if !flags.esn {
        for s in [replay_seq_hi, replay_oseq_hi].into_iter().flatten() {
            if s.v != 0 {
                return Err(LineError::at(
                    s.kw,
                    format!(
                        "expected 'flag esn' with '{}': the high 32 bits exist only with ESN",
                        s.kw.text
                    ),
                ));
            }
        }
    }

    if let Some(e) = encap {
        if proto.v != XfrmProto::Esp {
            return Err(LineError::at(
                e.kw,
                "expected proto esp with 'encap': UDP encapsulation (RFC 3948) carries ESP only",
            ));
        }
        if e.v.oaddr.is_ipv4() != dst.v.is_ipv4() {
            return Err(LineError::at(
                e.val,
                format!(
                    "expected an encap OADDR of the SA's family ({})",
                    family_name(dst.v)
                ),
            ));
        }
    }
    if let Some(t) = tfcpad {
        if proto.v != XfrmProto::Esp {
            return Err(LineError::at(
                t.kw,
                "expected proto esp with 'tfcpad' (Linux: Invalid attributes for AH: TFCPAD)",
            ));
        }
        if mode_v != XfrmMode::Tunnel {
            return Err(LineError::at(
                t.kw,
                "expected mode tunnel with 'tfcpad' (Linux: TFC padding can only be used in tunnel mode)",
            ));
        }
    }

    // Lifetimes: a soft limit above its hard limit could never fire.
    let pairs = [
        (
            "time-soft",
            "time-hard",
            lifetime.soft_add_expires_seconds,
            lifetime.hard_add_expires_seconds,
            true,
        ),
        (
            "time-use-soft",
            "time-use-hard",
            lifetime.soft_use_expires_seconds,
            lifetime.hard_use_expires_seconds,
            true,
        ),
        (
            "byte-soft",
            "byte-hard",
            lifetime.soft_byte_limit,
            lifetime.hard_byte_limit,
            false,
        ),
        (
            "packet-soft",
            "packet-hard",
            lifetime.soft_packet_limit,
            lifetime.hard_packet_limit,
            false,
        ),
    ];
    for (soft, hard, s, h, zero_is_none) in pairs {
        let hard_set = if zero_is_none { h != 0 } else { h != u64::MAX };
        // Only a soft limit that was written can be wrong: an unwritten one is "inf", which a
        // hard limit ends first anyway.
        let written_soft = limits.iter().find(|l| l.kw.text == soft);
        if let (true, Some(w)) = (hard_set && s > h, written_soft) {
            return Err(LineError::at(
                w.val,
                format!("expected {soft} at most {hard} ({h}): a soft limit must come before the hard one"),
            ));
        }
    }

    // The SA's selector (copy_from_user_state, __xfrm_init_state).
    let selector: Option<Selector> = if let Some(sel_slot) = sel {
        let s = sel_parts.build(dst.v)?;
        if s.src.addr.is_ipv4() != dst.v.is_ipv4() && mode_v != XfrmMode::Tunnel {
            let at = sel_parts
                .src
                .or(sel_parts.dst)
                .map_or(sel_slot.kw, |p| p.val);
            return Err(LineError::at(
                at,
                format!(
                    "expected a selector of the SA's family ({}) in transport mode (Linux: Only tunnel modes can accommodate a change of family)",
                    family_name(dst.v)
                ),
            ));
        }
        Some(s)
    } else if flags.af_unspec {
        // An AF_UNSPEC selector: packets of either family (the 4-in-6 / 6-in-4 tunnel case).
        None
    } else {
        // Linux gives the selector the SA's family: only that family's packets use it.
        Some(Selector::any_of_family(dst.v))
    };

    Ok(SaConfig {
        id: XfrmId {
            daddr: dst.v,
            spi: spi.v,
            proto: proto.v,
        },
        saddr: src.v,
        reqid: reqid.map_or(0, |r| r.v),
        mode: mode_v,
        algorithm,
        replay_window: window,
        replay_seq: replay_seq.map_or(0, |s| s.v),
        replay_seq_hi: replay_seq_hi.map_or(0, |s| s.v),
        replay_oseq: replay_oseq.map_or(0, |s| s.v),
        replay_oseq_hi: replay_oseq_hi.map_or(0, |s| s.v),
        flags,
        extra_flags,
        encap: encap.map(|e| e.v),
        tfcpad: tfcpad.map_or(0, |t| t.v),
        lifetime,
        selector,
    })
}

const STATE_EXPECTED: &str = "expected a 'state add' keyword: src, dst, proto, spi, reqid, mode, aead, auth, auth-trunc, replay-window, replay-seq, replay-oseq, replay-seq-hi, replay-oseq-hi, flag, extra-flag, encap, tfcpad, limit, sel";

/// The words `sel` takes (ip's xfrm_selector_parse).
pub(crate) const SEL_WORDS: &[&str] = &[
    "src", "dst", "proto", "sport", "dport", "type", "code", "dev", "key",
];

const LIMIT_NAMES: &[&str] = &[
    "time-soft",
    "time-hard",
    "time-use-soft",
    "time-use-hard",
    "byte-soft",
    "byte-hard",
    "packet-soft",
    "packet-hard",
];
const LIMIT_EXPECTED: &str = "expected a limit name: time-soft, time-hard, time-use-soft, time-use-hard, byte-soft, byte-hard, packet-soft, packet-hard";

pub(crate) fn mode_of(w: &Word) -> LineResult<XfrmMode> {
    match w.text.as_str() {
        "transport" => Ok(XfrmMode::Transport),
        "tunnel" => Ok(XfrmMode::Tunnel),
        "beet" | "ro" | "in_trigger" | "iptfs" => Err(LineError::at(
            w,
            format!(
                "mode '{}' is not supported by xfrm-ebpf: expected transport or tunnel",
                w.text
            ),
        )),
        _ => Err(LineError::at(w, "expected a mode: transport or tunnel")),
    }
}

/// The word after a key; an error points at the key without repeating it.
fn value_after_key<'w>(cur: &mut Cursor<'w>, key_w: &Word, what: &str) -> LineResult<&'w Word> {
    cur.next().ok_or_else(|| {
        LineError::at_key(
            key_w,
            format!("expected {what} after the key, found the end of the line"),
        )
    })
}

fn nonzero_port(w: &Word) -> LineResult<u16> {
    match port_of(w)? {
        0 => Err(LineError::at(w, "expected a UDP port from 1 to 65535")),
        p => Ok(p),
    }
}

fn set_alg<'w>(
    slot: &mut At<'w, (AlgKind, SaAlgorithm)>,
    kw: &'w Word,
    name: &'w Word,
    v: (AlgKind, SaAlgorithm),
) -> LineResult<()> {
    if let Some(first) = slot {
        return Err(LineError::at(
            kw,
            format!(
                "expected one algorithm per SA: '{}' already given at column {} (xfrm-ebpf runs ESP with one aead and AH with one auth or auth-trunc)",
                first.kw.text, first.kw.col
            ),
        ));
    }
    *slot = Some(Slot { v, kw, val: name });
    Ok(())
}
