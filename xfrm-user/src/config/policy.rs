//! `policy add …`: ip's xfrm_policy_modify and xfrm_tmpl_parse, then the checks of the
//! kernel's verify_newpolicy_info and validate_tmpl.

use std::net::IpAddr;

use super::cursor::{set_once, At, Cursor};
use super::error::{LineError, LineResult};
use super::lexer::Word;
use super::sel::SelParts;
use super::state::{mode_of, SEL_WORDS};
use super::value::{family_name, host_of, u32_of, unspecified_like, xfrm_proto_of};
use crate::policy::{Policy, PolicyAction, PolicyDir, Template, TmplLevel};
use crate::sa::{XfrmMode, XfrmProto};
use crate::selector::Prefix;

/// XFRM_MAX_DEPTH: the most templates one policy may have.
pub const MAX_TEMPLATES: usize = 6;

const TMPL_WORDS: &[&str] = &["src", "dst", "proto", "spi", "mode", "reqid", "level"];

const POLICY_EXPECTED: &str = "expected a 'policy add' keyword: src, dst, proto, sport, dport, type, code, dir, priority, action, index, ptype, tmpl";

const UNSUPPORTED_KEYWORDS: &[(&str, &str)] = &[
    (
        "ctx",
        "'ctx' (security contexts) is not supported by xfrm-ebpf",
    ),
    ("mark", "'mark' is not supported by xfrm-ebpf"),
    (
        "if_id",
        "'if_id' (xfrm interfaces) is not supported by xfrm-ebpf",
    ),
    (
        "flag",
        "policy flags (localok, icmp) are not supported by xfrm-ebpf",
    ),
    (
        "limit",
        "policy lifetimes ('limit' in 'policy add') are not supported by xfrm-ebpf",
    ),
    ("offload", "'offload' is not supported by xfrm-ebpf"),
    (
        "level",
        "expected 'level' inside a template: 'tmpl … level required|use'",
    ),
];

/// The words of one `tmpl`.
struct TmplParts<'w> {
    kw: &'w Word,
    src: At<'w, IpAddr>,
    dst: At<'w, IpAddr>,
    proto: At<'w, XfrmProto>,
    spi: At<'w, u32>,
    mode: At<'w, XfrmMode>,
    reqid: At<'w, u32>,
    level: At<'w, TmplLevel>,
}

/// Parses the words after `policy add`; `head` is the `policy` word; `index` is the policy's
/// position among the policies of the file.
pub(crate) fn parse_policy(head: &Word, words: &[Word], index: u32) -> LineResult<Policy> {
    let mut cur = Cursor::new(words);
    let mut sel = SelParts::default();
    let mut dir: At<PolicyDir> = None;
    let mut priority: At<u32> = None;
    let mut action: At<PolicyAction> = None;
    let mut user_index: At<u32> = None;
    let mut ptype: At<()> = None;
    let mut tmpls: Vec<TmplParts> = Vec::new();

    while let Some(kw) = cur.next() {
        match kw.text.as_str() {
            "dir" => {
                let val = cur.value(kw, "out, in or fwd")?;
                let d = match val.text.as_str() {
                    "out" => PolicyDir::Out,
                    "in" => PolicyDir::In,
                    "fwd" => PolicyDir::Fwd,
                    _ => return Err(LineError::at(val, "expected a direction: out, in or fwd")),
                };
                set_once(&mut dir, kw, val, d)?;
            }
            "priority" => {
                let val = cur.value(kw, "a number")?;
                set_once(&mut priority, kw, val, u32_of(val)?)?;
            }
            "action" => {
                let val = cur.value(kw, "allow or block")?;
                let a = match val.text.as_str() {
                    "allow" => PolicyAction::Allow,
                    "block" => PolicyAction::Block,
                    _ => return Err(LineError::at(val, "expected an action: allow or block")),
                };
                set_once(&mut action, kw, val, a)?;
            }
            "index" => {
                // Linux's policy id: it names the policy for get/delete and plays no part in
                // the lookup, so it is checked and otherwise not used.
                let val = cur.value(kw, "a number")?;
                set_once(&mut user_index, kw, val, u32_of(val)?)?;
            }
            "ptype" => {
                let val = cur.value(kw, "main")?;
                match val.text.as_str() {
                    "main" => set_once(&mut ptype, kw, val, ())?,
                    "sub" => {
                        return Err(LineError::at(
                            val,
                            "ptype 'sub' (MIGRATE sub-policies) is not supported by xfrm-ebpf: expected main",
                        ))
                    }
                    _ => return Err(LineError::at(val, "expected a policy type: main")),
                }
            }
            "tmpl" => {
                let mut t = TmplParts {
                    kw,
                    src: None,
                    dst: None,
                    proto: None,
                    spi: None,
                    mode: None,
                    reqid: None,
                    level: None,
                };
                // The template's words, as ip's xfrm_tmpl_parse reads them, up to the first
                // other keyword: after `tmpl`, src and dst are the template's.
                while let Some(w) = cur.peek() {
                    if !TMPL_WORDS.contains(&w.text.as_str()) {
                        break;
                    }
                    cur.next();
                    tmpl_word(&mut t, w, &mut cur)?;
                }
                if t.src.is_none()
                    && t.dst.is_none()
                    && t.proto.is_none()
                    && t.spi.is_none()
                    && t.mode.is_none()
                    && t.reqid.is_none()
                    && t.level.is_none()
                {
                    return Err(LineError::at(
                        kw,
                        "expected template words after 'tmpl': src, dst, proto, spi, mode, reqid, level",
                    ));
                }
                if tmpls.len() == MAX_TEMPLATES {
                    return Err(LineError::at(
                        kw,
                        format!("expected at most {MAX_TEMPLATES} templates per policy (XFRM_MAX_DEPTH)"),
                    ));
                }
                tmpls.push(t);
            }
            s if SEL_WORDS.contains(&s) => {
                if let Some(t) = tmpls.first() {
                    // ip would have read it as a template word or refused it; be explicit.
                    return Err(LineError::at(
                        kw,
                        format!(
                            "expected the selector before the first 'tmpl' (column {}): '{}' here is not a template word",
                            t.kw.col, kw.text
                        ),
                    ));
                }
                sel.take(kw, &mut cur)?;
            }
            other => {
                if let Some((_, msg)) = UNSUPPORTED_KEYWORDS.iter().find(|(k, _)| *k == other) {
                    return Err(LineError::at(kw, *msg));
                }
                return Err(LineError::at(kw, POLICY_EXPECTED));
            }
        }
    }

    let dir = dir.ok_or_else(|| {
        LineError::at(
            head,
            "expected 'dir out|in|fwd' in 'policy add' (ip: DIR is required)",
        )
    })?;
    // ip sends AF_INET when the selector names no address.
    let v4_any: IpAddr = "0.0.0.0".parse().expect("literal");
    let selector = sel.build(v4_any)?;

    if let Some(i) = user_index {
        // verify_newpolicy_info: "Policy index doesn't match direction" (id & 7 is the dir).
        let d = match dir.v {
            PolicyDir::In => 0,
            PolicyDir::Out => 1,
            PolicyDir::Fwd => 2,
        };
        if i.v != 0 && i.v & 7 != d {
            return Err(LineError::at(
                i.val,
                format!(
                    "expected an index whose low 3 bits are {d} for dir {} (Linux: Policy index doesn't match direction)",
                    dir.val.text
                ),
            ));
        }
    }

    let action_v = action.map_or(PolicyAction::Allow, |a| a.v);
    if action_v == PolicyAction::Block {
        if let Some(t) = tmpls.first() {
            return Err(LineError::at(
                t.kw,
                "expected no 'tmpl' in a block policy: its packets are dropped, a template would never apply",
            ));
        }
    }

    // validate_tmpl: a transport template keeps the family of what it protects; a tunnel
    // may change it (and then sets it for the next template).
    let mut prev_family = selector.src.addr;
    let mut templates = Vec::with_capacity(tmpls.len());
    for t in &tmpls {
        let proto = t.proto.ok_or_else(|| {
            LineError::at(
                t.kw,
                "expected 'proto esp|ah' in the template (Linux: Invalid XFRM protocol in template)",
            )
        })?;
        if let (Some(s), Some(d)) = (t.src, t.dst) {
            if s.v.is_ipv4() != d.v.is_ipv4() {
                return Err(LineError::at(
                    d.val,
                    format!(
                        "expected a template dst of the same family as its src {} ({})",
                        s.val.text,
                        family_name(s.v)
                    ),
                ));
            }
        }
        let mode = t.mode.map_or(XfrmMode::Transport, |m| m.v);
        let level = t.level.map_or(TmplLevel::Required, |l| l.v);
        let host = |p: Prefix| (p.len == if p.addr.is_ipv4() { 32 } else { 128 }).then_some(p.addr);
        let (src, dst) = match mode {
            XfrmMode::Tunnel => {
                let d = t.dst.ok_or_else(|| {
                    LineError::at(
                        t.kw,
                        "expected 'dst ADDR' in a tunnel-mode template: the tunnel's far end",
                    )
                })?;
                if level == TmplLevel::Use && dir.v == PolicyDir::Out {
                    return Err(LineError::at(
                        t.level.expect("level use was given").val,
                        "expected level required in a tunnel-mode template of an out policy (Linux: Mode in optional template not allowed in outbound policy)",
                    ));
                }
                (t.src.map(|s| s.v), d.v)
            }
            XfrmMode::Transport => {
                // Linux takes a transport SA's addresses from the flow; with a host
                // selector those are the selector's, which is what is used when omitted.
                let d = match t.dst {
                    Some(d) => d.v,
                    None => host(selector.dst).ok_or_else(|| {
                        LineError::at(
                            t.kw,
                            "expected 'dst ADDR' in the template: the policy's dst is not a single host, so it cannot stand for the SA's destination",
                        )
                    })?,
                };
                let s = t.src.map(|s| s.v).or_else(|| host(selector.src));
                if d.is_ipv4() != prev_family.is_ipv4() {
                    let at = t.dst.map_or(t.kw, |x| x.val);
                    return Err(LineError::at(
                        at,
                        format!(
                            "expected a transport-mode template of the family it protects ({}) (Linux: Mode in template doesn't support a family change)",
                            family_name(prev_family)
                        ),
                    ));
                }
                (s, d)
            }
        };
        if dst.is_unspecified() {
            let at = t.dst.map_or(t.kw, |x| x.val);
            return Err(LineError::at(
                at,
                "expected a specific template dst, not the unspecified address",
            ));
        }
        prev_family = unspecified_like(dst);
        templates.push(Template {
            // An unspecified tmpl src is ip's "any source".
            src: src.filter(|a| !a.is_unspecified()),
            dst,
            proto: proto.v,
            spi: t.spi.map(|s| s.v).filter(|&s| s != 0),
            reqid: t.reqid.map_or(0, |r| r.v),
            mode,
            level,
        });
    }

    Ok(Policy {
        selector,
        dir: dir.v,
        priority: priority.map_or(0, |p| p.v),
        action: action_v,
        templates,
        index,
    })
}

fn tmpl_word<'w>(t: &mut TmplParts<'w>, kw: &'w Word, cur: &mut Cursor<'w>) -> LineResult<()> {
    match kw.text.as_str() {
        "src" | "dst" => {
            let val = cur.value(kw, "an address")?;
            let a = host_of(val)?;
            let slot = if kw.is("src") { &mut t.src } else { &mut t.dst };
            set_once(slot, kw, val, a)
        }
        "proto" => {
            let val = cur.value(kw, "esp or ah")?;
            let p = xfrm_proto_of(val)?;
            set_once(&mut t.proto, kw, val, p)
        }
        "spi" => {
            let val = cur.value(kw, "an SPI")?;
            set_once(&mut t.spi, kw, val, u32_of(val)?)
        }
        "mode" => {
            let val = cur.value(kw, "a mode")?;
            set_once(&mut t.mode, kw, val, mode_of(val)?)
        }
        "reqid" => {
            let val = cur.value(kw, "a number")?;
            set_once(&mut t.reqid, kw, val, u32_of(val)?)
        }
        _ => {
            let val = cur.value(kw, "required or use")?;
            let l = match val.text.as_str() {
                "required" => TmplLevel::Required,
                "use" => TmplLevel::Use,
                _ => return Err(LineError::at(val, "expected a level: required or use")),
            };
            set_once(&mut t.level, kw, val, l)
        }
    }
}
