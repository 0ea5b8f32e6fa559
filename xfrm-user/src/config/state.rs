//! `state add …`: ip's xfrm_state_modify, then the checks the kernel's verify_newsa_info,
//! xfrm_init_replay and __xfrm_init_state would make, plus what xfrm-ebpf does not support.

use std::net::IpAddr;

use super::cursor::{set_once, At, Cursor, Slot};
use super::error::{LineError, LineResult};
use super::lexer::Word;
use super::sel::SelParts;
use super::value::{family_name, host_of, key_of, port_of, u32_of, u64_of, xfrm_proto_of};
use crate::sa::{
    AeadAlgo, AuthAlgo, EncAlgo, Encap, EncapType, Lifetime, SaAlgorithm, SaConfig, SaExtraFlags,
    SaFlags, XfrmId, XfrmMode, XfrmProto,
};
use crate::selector::Selector;

/// XFRMA_REPLAY_ESN_MAX: the largest replay window Linux keeps (bits).
pub const REPLAY_WINDOW_MAX: u32 = 4096;

const AEAD_EXPECTED: &str = "expected an aead algorithm name: 'rfc4106(gcm(aes))', 'rfc4543(gcm(aes))' or 'rfc7539esp(chacha20,poly1305)'";
const AUTH_EXPECTED: &str = "expected an auth algorithm name: 'hmac(sha256)', 'hmac(sha384)', 'hmac(sha512)' or 'hmac(sha1)'";
const ENC_EXPECTED: &str =
    "expected an enc algorithm name: 'cbc(aes)', 'rfc3686(ctr(aes))' or 'cipher_null'";
const ESP_EXPECTED: &str = "expected 'aead NAME KEY ICV-BITS', or 'enc NAME KEY' with 'auth NAME KEY' or 'auth-trunc NAME KEY BITS', in an ESP 'state add'";

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

/// `auth` / `auth-trunc` as parsed: algorithm, key, ICV bits.
type AuthParts = (AuthAlgo, zeroize::Zeroizing<Vec<u8>>, u32);

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
    let mut aead: At<SaAlgorithm> = None;
    let mut enc: At<(EncAlgo, zeroize::Zeroizing<Vec<u8>>)> = None;
    let mut auth: At<AuthParts> = None;
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
                let key_w = cur.value(name, "a key (0x… hex or a quoted string)")?;
                set_alg(&mut aead, kw, name, aead_of(name, key_w, &mut cur)?)?;
            }
            "enc" => {
                let name = cur.value(kw, "an enc algorithm name")?;
                let key_w = cur.value(name, "a key (0x… hex, or a quoted string: '' for none)")?;
                set_alg(&mut enc, kw, name, enc_of(name, key_w)?)?;
            }
            "auth" | "auth-trunc" => {
                let name = cur.value(kw, "an auth algorithm name")?;
                let algo = match name.text.as_str() {
                    // The kernel's aalg_list also matches the compat names.
                    "hmac(sha256)" | "sha256" => AuthAlgo::HmacSha256,
                    "hmac(sha1)" | "sha1" => AuthAlgo::HmacSha1,
                    "hmac(sha384)" | "sha384" => AuthAlgo::HmacSha384,
                    "hmac(sha512)" | "sha512" => AuthAlgo::HmacSha512,
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
                let trunc_bits = if kw.is("auth") {
                    algo.default_trunc_bits()
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
                    t
                };
                set_alg(&mut auth, kw, name, (algo, key, trunc_bits))?;
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

    // Algorithms per protocol (verify_newsa_info, ip's xfrm_state_modify, esp_init_state).
    let algorithm = algorithm_of(head, proto.v, aead, enc, auth)?;

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

fn set_alg<'w, T>(slot: &mut At<'w, T>, kw: &'w Word, name: &'w Word, v: T) -> LineResult<()> {
    if let Some(first) = slot {
        return Err(LineError::at(
            kw,
            format!(
                "expected one algorithm of each kind per SA: '{}' already given at column {} (ESP takes one aead, or one enc with one auth or auth-trunc; AH one auth or auth-trunc)",
                first.kw.text, first.kw.col
            ),
        ));
    }
    *slot = Some(Slot { v, kw, val: name });
    Ok(())
}

/// `aead NAME KEY ICV-BITS` with the key and ICV lengths the kernel's templates accept
/// (rfc4106/rfc4543 setkey and setauthsize, chachapoly_setkey and setauthsize).
fn aead_of(name: &Word, key_w: &Word, cur: &mut Cursor<'_>) -> LineResult<SaAlgorithm> {
    let algo = match name.text.as_str() {
        "rfc4106(gcm(aes))" => AeadAlgo::Rfc4106Gcm,
        "rfc4543(gcm(aes))" => AeadAlgo::Rfc4543Gmac,
        "rfc7539esp(chacha20,poly1305)" => AeadAlgo::Rfc7539EspChaCha20Poly1305,
        _ => return Err(LineError::at(name, AEAD_EXPECTED)),
    };
    let key = key_of(key_w)?;
    let (lens, what): (&[usize], &str) = match algo {
        AeadAlgo::Rfc4106Gcm | AeadAlgo::Rfc4543Gmac => (
            &[20, 36],
            "20 or 36 bytes for {} (a 16 or 32-byte AES key and a 4-byte salt)",
        ),
        AeadAlgo::Rfc7539EspChaCha20Poly1305 => (
            &[36],
            "36 bytes for {} (a 32-byte ChaCha20 key and a 4-byte salt)",
        ),
    };
    if !lens.contains(&key.len()) {
        return Err(LineError::at_key(
            key_w,
            format!(
                "expected a key of {}, got {} bytes",
                what.replace("{}", &name.text),
                key.len()
            ),
        ));
    }
    let icv_w = value_after_key(cur, key_w, "an ICV length in bits")?;
    let icv_bits = u32_of(icv_w)?;
    match algo {
        AeadAlgo::Rfc4106Gcm if ![64, 96, 128].contains(&icv_bits) => {
            return Err(LineError::at(
                icv_w,
                "expected an ICV length in bits for rfc4106(gcm(aes)): 64, 96 or 128",
            ))
        }
        AeadAlgo::Rfc4543Gmac | AeadAlgo::Rfc7539EspChaCha20Poly1305 if icv_bits != 128 => {
            return Err(LineError::at(
                icv_w,
                format!(
                    "expected ICV length 128 for {} (the only one Linux accepts)",
                    name.text
                ),
            ))
        }
        _ => {}
    }
    let split = key.len() - 4;
    let mut salt = [0u8; 4];
    salt.copy_from_slice(&key[split..]);
    Ok(SaAlgorithm::Aead {
        algo,
        key: zeroize::Zeroizing::new(key[..split].to_vec()),
        salt,
        icv_bits,
    })
}

/// `enc NAME KEY` with the key lengths the kernel's ciphers accept (aes_setkey; rfc3686's
/// nonce after the AES key; cipher_null's empty key).
fn enc_of(name: &Word, key_w: &Word) -> LineResult<(EncAlgo, zeroize::Zeroizing<Vec<u8>>)> {
    let algo = match name.text.as_str() {
        // "aes" is cbc(aes)'s compat name in the kernel's ealg_list.
        "cbc(aes)" | "aes" => EncAlgo::AesCbc,
        "rfc3686(ctr(aes))" => EncAlgo::AesCtr,
        "ecb(cipher_null)" | "cipher_null" => EncAlgo::Null,
        _ => return Err(LineError::at(name, ENC_EXPECTED)),
    };
    let key = key_of(key_w)?;
    let (ok, what) = match algo {
        EncAlgo::AesCbc => (
            [16, 24, 32].contains(&key.len()),
            "16, 24 or 32 bytes for cbc(aes) (AES-128, AES-192 or AES-256)",
        ),
        EncAlgo::AesCtr => (
            [20, 28, 36].contains(&key.len()),
            "20, 28 or 36 bytes for rfc3686(ctr(aes)) (a 16, 24 or 32-byte AES key and a 4-byte nonce)",
        ),
        EncAlgo::Null => (key.is_empty(), "0 bytes ('') for cipher_null"),
    };
    if !ok {
        return Err(LineError::at_key(
            key_w,
            format!("expected a key of {what}, got {} bytes", key.len()),
        ));
    }
    Ok((algo, key))
}

/// Which algorithms a protocol takes (verify_newsa_info; esp_init_authenc needs `enc`), as
/// one `SaAlgorithm`.
fn algorithm_of(
    head: &Word,
    proto: XfrmProto,
    aead: At<SaAlgorithm>,
    enc: At<(EncAlgo, zeroize::Zeroizing<Vec<u8>>)>,
    auth: At<AuthParts>,
) -> LineResult<SaAlgorithm> {
    match proto {
        XfrmProto::Esp => match (aead, enc, auth) {
            (Some(a), None, None) => Ok(a.v),
            (Some(_), Some(Slot { kw, .. }), _) | (Some(_), None, Some(Slot { kw, .. })) => {
                Err(LineError::at(
                    kw,
                    format!(
                        "expected either 'aead' or 'enc' with 'auth', not both: '{}' beside 'aead' (Linux: Invalid attributes for ESP)",
                        kw.text
                    ),
                ))
            }
            (None, Some(e), Some(a)) => {
                let (enc, enc_key) = e.v;
                let (auth, auth_key, trunc_bits) = a.v;
                Ok(SaAlgorithm::EncAuth {
                    enc,
                    enc_key,
                    auth,
                    auth_key,
                    trunc_bits,
                })
            }
            (None, Some(e), None) => Err(LineError::at(
                e.kw,
                "expected 'auth NAME KEY' or 'auth-trunc NAME KEY BITS' with 'enc': xfrm-ebpf does not run ESP without integrity (RFC 8221 section 5)",
            )),
            (None, None, Some(a)) => Err(LineError::at(
                a.kw,
                "expected 'enc NAME KEY' with 'auth' in ESP (Linux's ESP needs an enc algorithm; for integrity only use enc cipher_null '')",
            )),
            (_, None, None) => Err(LineError::at(head, ESP_EXPECTED)),
        },
        XfrmProto::Ah => {
            if let Some(s) = aead.map(|a| a.kw).or(enc.map(|e| e.kw)) {
                return Err(LineError::at(
                    s,
                    format!(
                        "expected 'auth' or 'auth-trunc' with proto ah: AH has no {} (Linux: Invalid attributes for AH)",
                        s.text
                    ),
                ));
            }
            let Some(a) = auth else {
                return Err(LineError::at(
                    head,
                    "expected 'auth NAME KEY' or 'auth-trunc NAME KEY BITS' in an AH 'state add'",
                ));
            };
            let (algo, key, trunc_bits) = a.v;
            Ok(SaAlgorithm::Auth {
                algo,
                key,
                trunc_bits,
            })
        }
    }
}
