//! What `state list`/`get` and `policy list`/`get` print: ip xfrm's text (`ip xfrm state`,
//! with `-s` its counters as `ip -s xfrm state` shows them), or JSON (`-j`). Key material is
//! shown only with `--keys`.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde_json::{json, Value};

use crate::policy::{Policy, PolicyAction, PolicyDir, TmplLevel};
use crate::sa::{EncapType, SaAlgorithm, XfrmMode, XfrmProto};
use crate::selector::Selector;
use crate::xfrm::SecurityAssociation;

/// How to print (the CLI's `-s`, `-j`, `--keys`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Show {
    pub stats: bool,
    pub json: bool,
    pub keys: bool,
}

pub fn proto_name(p: XfrmProto) -> &'static str {
    match p {
        XfrmProto::Esp => "esp",
        XfrmProto::Ah => "ah",
    }
}

fn mode_name(m: XfrmMode) -> &'static str {
    match m {
        XfrmMode::Transport => "transport",
        XfrmMode::Tunnel => "tunnel",
    }
}

pub fn dir_name(d: PolicyDir) -> &'static str {
    match d {
        PolicyDir::Out => "out",
        PolicyDir::In => "in",
        PolicyDir::Fwd => "fwd",
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + 2 * b.len());
    s.push_str("0x");
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// An SA's algorithms as ip prints them: (keyword, name, key, length in bits); two for ESP
/// with a cipher and an integrity algorithm (`auth-trunc`, then `enc`). Key copies are
/// wiped when dropped.
type AlgoLine = (
    &'static str,
    &'static str,
    zeroize::Zeroizing<Vec<u8>>,
    Option<u32>,
);

fn algorithms(alg: &SaAlgorithm) -> Vec<AlgoLine> {
    match alg {
        SaAlgorithm::Aead {
            algo,
            key,
            salt,
            icv_bits,
        } => {
            let mut k = zeroize::Zeroizing::new(key.to_vec());
            k.extend_from_slice(salt);
            vec![("aead", algo.name(), k, Some(*icv_bits))]
        }
        SaAlgorithm::Auth {
            algo,
            key,
            trunc_bits,
        } => vec![("auth-trunc", algo.name(), key.clone(), Some(*trunc_bits))],
        SaAlgorithm::EncAuth {
            enc,
            enc_key,
            auth,
            auth_key,
            trunc_bits,
        } => vec![
            (
                "auth-trunc",
                auth.name(),
                auth_key.clone(),
                Some(*trunc_bits),
            ),
            ("enc", enc.name(), enc_key.clone(), None),
        ],
    }
}

fn selector_text(s: &Selector) -> String {
    let mut t = format!(
        "src {}/{} dst {}/{}",
        s.src.addr, s.src.len, s.dst.addr, s.dst.len
    );
    if s.proto != 0 {
        let _ = write!(t, " proto {}", s.proto);
    }
    if s.sport.mask != 0 {
        let _ = write!(t, " sport {}", s.sport.port);
    }
    if s.dport.mask != 0 {
        let _ = write!(t, " dport {}", s.dport.port);
    }
    t
}

fn selector_json(s: &Selector) -> Value {
    json!({
        "src": format!("{}/{}", s.src.addr, s.src.len),
        "dst": format!("{}/{}", s.dst.addr, s.dst.len),
        "proto": s.proto,
        "sport": (s.sport.mask != 0).then_some(s.sport.port),
        "dport": (s.dport.mask != 0).then_some(s.dport.port),
    })
}

fn flags(x: &SecurityAssociation) -> Vec<&'static str> {
    let f = &x.cfg.flags;
    [
        (f.noecn, "noecn"),
        (f.decap_dscp, "decap-dscp"),
        (f.nopmtudisc, "nopmtudisc"),
        (f.align4, "align4"),
        (f.esn, "esn"),
        (f.af_unspec, "af-unspec"),
    ]
    .into_iter()
    .filter_map(|(on, n)| on.then_some(n))
    .collect()
}

fn limit(v: u64) -> String {
    if v == u64::MAX {
        "(INF)".to_string()
    } else {
        v.to_string()
    }
}

fn time_text(t: u64) -> String {
    if t == 0 {
        "-".to_string()
    } else {
        format!("{t}")
    }
}

/// One SA as `ip xfrm state` prints it (`ip -s` with `show.stats`).
pub fn state_text(x: &SecurityAssociation, show: Show) -> String {
    let c = &x.cfg;
    let mut s = format!("src {} dst {}\n", c.saddr, c.id.daddr);
    let _ = writeln!(
        s,
        "\tproto {} spi 0x{:08x} reqid {} mode {}",
        proto_name(c.id.proto),
        c.id.spi,
        c.reqid,
        mode_name(c.mode)
    );
    let fl = flags(x);
    let _ = write!(s, "\treplay-window {}", c.replay_window);
    if !fl.is_empty() {
        let _ = write!(s, " flag {}", fl.join(" "));
    }
    s.push('\n');
    for (kw, name, key, bits) in algorithms(&c.algorithm) {
        let key = if show.keys {
            hex(&key)
        } else {
            "(key hidden: --keys)".to_string()
        };
        let bits = bits.map(|b| format!(" {b}")).unwrap_or_default();
        let _ = writeln!(s, "\t{kw} {name} {key}{bits}");
    }
    if let Some(e) = c.encap {
        let t = match e.kind {
            EncapType::EspInUdp => "espinudp",
            EncapType::EspInUdpNonIke => "espinudp-nonike",
        };
        let _ = writeln!(
            s,
            "\tencap type {t} sport {} dport {} addr {}",
            e.sport, e.dport, e.oaddr
        );
    }
    let _ = writeln!(s, "\tanti-replay context: oseq 0x{:x}", x.oseq());
    if let Some(sel) = &c.selector {
        let _ = writeln!(s, "\tsel {}", selector_text(sel));
    }
    if show.stats {
        let l = &c.lifetime;
        let _ = writeln!(s, "\tlifetime config:");
        let _ = writeln!(
            s,
            "\t  limit: soft {}(bytes), hard {}(bytes)",
            limit(l.soft_byte_limit),
            limit(l.hard_byte_limit)
        );
        let _ = writeln!(
            s,
            "\t  limit: soft {}(packets), hard {}(packets)",
            limit(l.soft_packet_limit),
            limit(l.hard_packet_limit)
        );
        let _ = writeln!(
            s,
            "\t  expire add: soft {}(sec), hard {}(sec)",
            l.soft_add_expires_seconds, l.hard_add_expires_seconds
        );
        let _ = writeln!(
            s,
            "\t  expire use: soft {}(sec), hard {}(sec)",
            l.soft_use_expires_seconds, l.hard_use_expires_seconds
        );
        let _ = writeln!(s, "\tlifetime current:");
        let _ = writeln!(
            s,
            "\t  {}(bytes), {}(packets)",
            x.curlft_bytes(),
            x.curlft_packets()
        );
        let _ = writeln!(
            s,
            "\t  add {} use {}",
            time_text(x.add_time()),
            time_text(x.use_time())
        );
        let st = x.input().stats;
        let _ = writeln!(s, "\tstats:");
        let _ = writeln!(
            s,
            "\t  replay-window {} replay {} failed {}",
            st.replay_window, st.replay, st.integrity_failed
        );
    }
    s
}

pub fn state_json(x: &SecurityAssociation, show: Show) -> Value {
    let c = &x.cfg;
    let algos = algorithms(&c.algorithm);
    let mut v = json!({
        "src": c.saddr.to_string(),
        "dst": c.id.daddr.to_string(),
        "proto": proto_name(c.id.proto),
        "spi": c.id.spi,
        "reqid": c.reqid,
        "mode": mode_name(c.mode),
        "replay-window": c.replay_window,
        "flags": flags(x),
        "oseq": x.oseq(),
        "encap": c.encap.map(|e| json!({
            "type": match e.kind { EncapType::EspInUdp => "espinudp", EncapType::EspInUdpNonIke => "espinudp-nonike" },
            "sport": e.sport, "dport": e.dport, "addr": e.oaddr.to_string(),
        })),
        "sel": c.selector.as_ref().map(selector_json),
    });
    for (kw, name, key, bits) in &algos {
        v[*kw] = json!({ "name": name, "bits": bits });
        if show.keys {
            v[*kw]["key"] = json!(hex(key));
        }
    }
    if show.stats {
        let l = &c.lifetime;
        let lim = |n: u64| (n != u64::MAX).then_some(n);
        let st = x.input().stats;
        v["lifetime"] = json!({
            "config": {
                "byte-soft": lim(l.soft_byte_limit), "byte-hard": lim(l.hard_byte_limit),
                "packet-soft": lim(l.soft_packet_limit), "packet-hard": lim(l.hard_packet_limit),
                "time-soft": l.soft_add_expires_seconds, "time-hard": l.hard_add_expires_seconds,
                "time-use-soft": l.soft_use_expires_seconds, "time-use-hard": l.hard_use_expires_seconds,
            },
            "current": {
                "bytes": x.curlft_bytes(), "packets": x.curlft_packets(),
                "add": x.add_time(), "use": x.use_time(),
            },
        });
        v["stats"] = json!({
            "replay-window": st.replay_window, "replay": st.replay, "failed": st.integrity_failed,
        });
    }
    v
}

/// `state count`: as ip prints it, or with `-j` the JSON object `{"count": N}` (ip has no
/// JSON form of it; a client that asked for JSON gets JSON).
pub fn sad_count(n: usize, show: Show) -> String {
    if show.json {
        format!("{}\n", json!({ "count": n }))
    } else {
        format!("SAD count {n}\n")
    }
}

/// `policy count` per direction: as ip prints it, or with `-j` `{"in": a, "out": b, "fwd": c}`.
pub fn spd_count(inb: usize, out: usize, fwd: usize, show: Show) -> String {
    if show.json {
        format!("{}\n", json!({ "in": inb, "out": out, "fwd": fwd }))
    } else {
        format!("SPD IN  {inb} OUT {out} FWD {fwd}\n")
    }
}

/// One policy as `ip xfrm policy` prints it.
pub fn policy_text(p: &Policy) -> String {
    let mut s = format!("{}\n", selector_text(&p.selector));
    let _ = writeln!(
        s,
        "\tdir {} priority {} action {}",
        dir_name(p.dir),
        p.priority,
        match p.action {
            PolicyAction::Allow => "allow",
            PolicyAction::Block => "block",
        }
    );
    for t in &p.templates {
        let src = t
            .src
            .map_or("0.0.0.0".to_string(), |a: IpAddr| a.to_string());
        let _ = writeln!(s, "\ttmpl src {src} dst {}", t.dst);
        let _ = writeln!(
            s,
            "\t\tproto {} spi 0x{:08x} reqid {} mode {}{}",
            proto_name(t.proto),
            t.spi.unwrap_or(0),
            t.reqid,
            mode_name(t.mode),
            if t.level == TmplLevel::Use {
                " level use"
            } else {
                ""
            }
        );
    }
    s
}

pub fn policy_json(p: &Policy) -> Value {
    json!({
        "sel": selector_json(&p.selector),
        "dir": dir_name(p.dir),
        "priority": p.priority,
        "action": match p.action { PolicyAction::Allow => "allow", PolicyAction::Block => "block" },
        "tmpl": p.templates.iter().map(|t| json!({
            "src": t.src.map(|a| a.to_string()),
            "dst": t.dst.to_string(),
            "proto": proto_name(t.proto),
            "spi": t.spi.unwrap_or(0),
            "reqid": t.reqid,
            "mode": mode_name(t.mode),
            "level": if t.level == TmplLevel::Use { "use" } else { "required" },
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xfrm::state::tests::esp_cfg;

    #[test]
    fn keys_only_when_asked() {
        let x = SecurityAssociation::new(
            esp_cfg(0x10, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel),
            0,
            0,
        )
        .unwrap();
        let SaAlgorithm::Aead { key, .. } = &x.cfg.algorithm else {
            unreachable!()
        };
        let khex = hex(key);
        let hidden = state_text(&x, Show::default());
        assert!(
            hidden.starts_with("src 192.0.2.1 dst 192.0.2.2\n\tproto esp spi 0x00000010"),
            "{hidden}"
        );
        assert!(!hidden.contains(&khex[2..]), "{hidden}");
        assert!(!state_json(&x, Show::default())
            .to_string()
            .contains(&khex[2..]));
        let keys = Show {
            keys: true,
            ..Show::default()
        };
        assert!(state_text(&x, keys).contains(&khex[2..]));
        assert!(state_json(&x, keys).to_string().contains(&khex[2..]));
        let stats = state_text(
            &x,
            Show {
                stats: true,
                ..Show::default()
            },
        );
        assert!(
            stats.contains("lifetime current:\n\t  0(bytes), 0(packets)"),
            "{stats}"
        );
        assert!(
            stats.contains("replay-window 0 replay 0 failed 0"),
            "{stats}"
        );
        let j = state_json(
            &x,
            Show {
                stats: true,
                json: true,
                keys: false,
            },
        );
        assert_eq!(j["lifetime"]["current"]["packets"], 0);
        assert_eq!(j["spi"], 0x10);
    }

    /// enc + auth: both lines, as `ip xfrm state` prints them (auth-trunc, then enc), keys
    /// hidden unless asked.
    #[test]
    fn enc_auth_shows_both_algorithms() {
        let mut c = esp_cfg(0x11, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel);
        c.algorithm = SaAlgorithm::EncAuth {
            enc: crate::sa::EncAlgo::AesCbc,
            enc_key: zeroize::Zeroizing::new(vec![0xab; 16]),
            auth: crate::sa::AuthAlgo::HmacSha256,
            auth_key: zeroize::Zeroizing::new(vec![0xcd; 32]),
            trunc_bits: 128,
        };
        let x = SecurityAssociation::new(c, 0, 0).unwrap();
        let t = state_text(&x, Show::default());
        assert!(
            t.contains("\tauth-trunc hmac(sha256) (key hidden: --keys) 128\n\tenc cbc(aes) (key hidden: --keys)\n"),
            "{t}"
        );
        let keys = Show {
            keys: true,
            ..Show::default()
        };
        assert!(state_text(&x, keys).contains(&format!("\tenc cbc(aes) 0x{}\n", "ab".repeat(16))));
        let j = state_json(&x, keys);
        assert_eq!(
            (j["enc"]["name"].as_str(), j["auth-trunc"]["bits"].as_u64()),
            (Some("cbc(aes)"), Some(128))
        );
        assert!(!state_json(&x, Show::default())
            .to_string()
            .contains("abababab"));
    }
}
