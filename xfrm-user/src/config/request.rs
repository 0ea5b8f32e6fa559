//! One control request: the words that follow `ip xfrm`, for every command a running
//! gateway takes (`state add|update|delete|get|list|flush|count|allocspi`, `policy
//! add|update|delete|get|list|flush|count`, `monitor`). `add` and `update` are the
//! configuration file's own parsers; the others name an SA (`dst`, `proto`, `spi`, as
//! xfrm_state_lookup needs them) or a policy (`dir` and its selector) the way ip-xfrm(8)
//! spells it.

use std::net::IpAddr;

use super::cursor::{set_once, At, Cursor};
use super::error::{LineError, LineResult};
use super::lexer::{self, Word};
use super::sel::SelParts;
use super::value::{host_of, u32_of, xfrm_proto_of};
use super::{policy, state, ConfigError};
use crate::policy::{Policy, PolicyDir};
use crate::sa::{SaConfig, XfrmMode, XfrmProto};
use crate::selector::Selector;

/// An SA as `delete` and `get` name it: (dst, proto, spi), and src when given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateId {
    pub src: Option<IpAddr>,
    pub dst: IpAddr,
    pub proto: XfrmProto,
    pub spi: u32,
}

/// `state list`/`count`: the SAs whose given fields match (ip's ID filter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateFilter {
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub proto: Option<XfrmProto>,
    pub spi: Option<u32>,
}

/// `state allocspi src A dst B proto P [mode M] [reqid R] [min X max Y]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocSpi {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: XfrmProto,
    pub mode: XfrmMode,
    pub reqid: u32,
    pub min: u32,
    pub max: u32,
}

/// A policy as `delete` and `get` name it: its direction and selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyId {
    pub dir: PolicyDir,
    pub selector: Selector,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    StateAdd(Box<SaConfig>),
    StateUpdate(Box<SaConfig>),
    StateDelete(StateId),
    StateGet(StateId),
    StateList(StateFilter),
    StateFlush(Option<XfrmProto>),
    StateCount,
    StateAllocSpi(AllocSpi),
    /// The policy's `index` is set by whoever adds it (its place among all policies).
    PolicyAdd(Box<Policy>),
    PolicyUpdate(Box<Policy>),
    PolicyDelete(PolicyId),
    PolicyGet(PolicyId),
    PolicyList(Option<PolicyDir>),
    PolicyFlush,
    PolicyCount,
    Monitor,
    /// Re-read the daemon's configuration file and apply what changed in it (`xfrm-user
    /// reload`, or SIGHUP).
    Reload,
}

impl Request {
    /// Whether the request may change the tables (the others only read them).
    pub fn is_change(&self) -> bool {
        !matches!(
            self,
            Self::StateGet(_)
                | Self::StateList(_)
                | Self::StateCount
                | Self::PolicyGet(_)
                | Self::PolicyList(_)
                | Self::PolicyCount
                | Self::Monitor
        )
    }
}

/// ip's default SPI range for allocspi.
pub const ALLOCSPI_MIN: u32 = 0x100;
pub const ALLOCSPI_MAX: u32 = 0x0fff_ffff;

/// Parses one request (`text` holds exactly one command; `file` names it in errors).
pub fn parse_request(text: &str, file: &str) -> Result<Request, ConfigError> {
    let (lines, errors) = lexer::lex(text);
    let fail = |e: LineError| e.into_config_error(file);
    if let Some(e) = errors.into_iter().next() {
        return Err(fail(e));
    }
    match lines.as_slice() {
        [] => Err(ConfigError {
            file: file.to_string(),
            line: 0,
            column: 0,
            word: String::new(),
            message: "expected a request ('state …', 'policy …' or 'monitor'), found none"
                .to_string(),
        }),
        [words] => parse_words(words).map_err(fail),
        [_, second, ..] => Err(fail(LineError::at(
            &second[0],
            "expected one request per message (a second command starts here)",
        ))),
    }
}

fn parse_words(words: &[Word]) -> LineResult<Request> {
    let mut rest = words;
    if rest[0].is("ip") && rest.get(1).is_some_and(|w| w.is("xfrm")) {
        rest = &rest[2..];
    }
    let Some(head) = rest.first() else {
        return Err(LineError::at(
            &words[words.len() - 1],
            "expected 'state', 'policy' or 'monitor', found the end of the line",
        ));
    };
    if head.is("monitor") {
        if let Some(w) = rest.get(1) {
            return Err(LineError::at(
                w,
                "expected nothing after 'monitor' (every event is reported)",
            ));
        }
        return Ok(Request::Monitor);
    }
    if head.is("reload") {
        if let Some(w) = rest.get(1) {
            return Err(LineError::at(w, "expected nothing after 'reload'"));
        }
        return Ok(Request::Reload);
    }
    let is_state = head.is("state");
    if !is_state && !head.is("policy") {
        return Err(LineError::at(
            head,
            "expected an object: 'state', 'policy', 'monitor' or 'reload'",
        ));
    }
    let Some(cmd) = rest.get(1) else {
        return Err(LineError::at(
            head,
            format!(
                "expected a command after '{}', found the end of the line",
                head.text
            ),
        ));
    };
    let args = &rest[2..];
    if is_state {
        parse_state_cmd(head, cmd, args)
    } else {
        parse_policy_cmd(head, cmd, args)
    }
}

const STATE_COMMANDS: &str =
    "expected a state command: add, update, delete, get, list, flush, count or allocspi";
const POLICY_COMMANDS: &str =
    "expected a policy command: add, update, delete, get, list, flush or count";

fn parse_state_cmd(head: &Word, cmd: &Word, args: &[Word]) -> LineResult<Request> {
    match cmd.text.as_str() {
        "add" => Ok(Request::StateAdd(Box::new(state::parse_state(head, args)?))),
        "update" => Ok(Request::StateUpdate(Box::new(state::parse_state(
            head, args,
        )?))),
        "delete" | "get" => {
            let f = state_filter(args)?;
            let id = StateId {
                src: f.src,
                dst: f.dst.ok_or_else(|| {
                    missing(cmd, "dst ADDR", "the SA is named by dst, proto and spi")
                })?,
                proto: f.proto.ok_or_else(|| {
                    missing(cmd, "proto esp|ah", "the SA is named by dst, proto and spi")
                })?,
                spi: f.spi.ok_or_else(|| {
                    missing(cmd, "spi SPI", "the SA is named by dst, proto and spi")
                })?,
            };
            Ok(if cmd.is("delete") {
                Request::StateDelete(id)
            } else {
                Request::StateGet(id)
            })
        }
        "list" | "show" => Ok(Request::StateList(state_filter(args)?)),
        "count" => no_more(args, Request::StateCount),
        "flush" => {
            let mut cur = Cursor::new(args);
            let mut proto: At<XfrmProto> = None;
            while let Some(kw) = cur.next() {
                if !kw.is("proto") {
                    return Err(LineError::at(
                        kw,
                        "expected 'proto esp|ah' or nothing after 'state flush'",
                    ));
                }
                let val = cur.value(kw, "esp or ah")?;
                set_once(&mut proto, kw, val, xfrm_proto_of(val)?)?;
            }
            Ok(Request::StateFlush(proto.map(|p| p.v)))
        }
        "allocspi" => parse_allocspi(cmd, args),
        "deleteall" => Err(LineError::at(
            cmd,
            "'state deleteall' is not supported: use 'state flush [proto P]' or 'state delete'",
        )),
        _ => Err(LineError::at(cmd, STATE_COMMANDS)),
    }
}

fn missing(cmd: &Word, what: &str, why: &str) -> LineError {
    LineError::at(
        cmd,
        format!("expected '{what}' after 'state {}' ({why})", cmd.text),
    )
}

fn no_more(args: &[Word], r: Request) -> LineResult<Request> {
    match args.first() {
        Some(w) => Err(LineError::at(w, "expected the end of the request")),
        None => Ok(r),
    }
}

/// ip's ID words: src, dst, proto, spi (each at most once).
fn state_filter(args: &[Word]) -> LineResult<StateFilter> {
    let mut cur = Cursor::new(args);
    let (mut src, mut dst): (At<IpAddr>, At<IpAddr>) = (None, None);
    let mut proto: At<XfrmProto> = None;
    let mut spi: At<u32> = None;
    while let Some(kw) = cur.next() {
        if id_word(kw, &mut cur, [&mut src, &mut dst], &mut proto)? {
            continue;
        }
        match kw.text.as_str() {
            "spi" => {
                let val = cur.value(kw, "an SPI")?;
                set_once(&mut spi, kw, val, u32_of(val)?)?;
            }
            _ => {
                return Err(LineError::at(
                    kw,
                    "expected an SA id word: src ADDR, dst ADDR, proto esp|ah, spi SPI",
                ))
            }
        }
    }
    Ok(StateFilter {
        src: src.map(|s| s.v),
        dst: dst.map(|s| s.v),
        proto: proto.map(|s| s.v),
        spi: spi.map(|s| s.v),
    })
}

/// `src ADDR`, `dst ADDR` or `proto esp|ah` of an SA id; false for another word.
fn id_word<'w>(
    kw: &'w Word,
    cur: &mut Cursor<'w>,
    [src, dst]: [&mut At<'w, IpAddr>; 2],
    proto: &mut At<'w, XfrmProto>,
) -> LineResult<bool> {
    match kw.text.as_str() {
        "src" | "dst" => {
            let val = cur.value(kw, "an address")?;
            let a = host_of(val)?;
            set_once(if kw.is("src") { src } else { dst }, kw, val, a)?;
        }
        "proto" => {
            let val = cur.value(kw, "esp or ah")?;
            set_once(proto, kw, val, xfrm_proto_of(val)?)?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}

fn parse_allocspi(cmd: &Word, args: &[Word]) -> LineResult<Request> {
    let mut cur = Cursor::new(args);
    let (mut src, mut dst): (At<IpAddr>, At<IpAddr>) = (None, None);
    let mut proto: At<XfrmProto> = None;
    let mut mode: At<XfrmMode> = None;
    let (mut reqid, mut min, mut max): (At<u32>, At<u32>, At<u32>) = (None, None, None);
    while let Some(kw) = cur.next() {
        if id_word(kw, &mut cur, [&mut src, &mut dst], &mut proto)? {
            continue;
        }
        match kw.text.as_str() {
            "mode" => {
                let val = cur.value(kw, "a mode")?;
                set_once(&mut mode, kw, val, state::mode_of(val)?)?;
            }
            "reqid" | "min" | "max" => {
                let val = cur.value(kw, "a number")?;
                let slot = match kw.text.as_str() {
                    "reqid" => &mut reqid,
                    "min" => &mut min,
                    _ => &mut max,
                };
                set_once(slot, kw, val, u32_of(val)?)?;
            }
            _ => {
                return Err(LineError::at(
                    kw,
                    "expected an allocspi word: src, dst, proto, mode, reqid, min, max",
                ))
            }
        }
    }
    let need = |what: &str| {
        LineError::at(
            cmd,
            format!("expected '{what}' after 'state allocspi' (the larval SA's id)"),
        )
    };
    let (src, dst) = (
        src.ok_or_else(|| need("src ADDR"))?,
        dst.ok_or_else(|| need("dst ADDR"))?,
    );
    if src.v.is_ipv4() != dst.v.is_ipv4() {
        return Err(LineError::at(
            dst.val,
            "expected a dst of the same family as src",
        ));
    }
    let proto = proto.ok_or_else(|| need("proto esp|ah"))?.v;
    let lo = min.map_or(ALLOCSPI_MIN, |m| m.v);
    let hi = max.map_or(ALLOCSPI_MAX, |m| m.v);
    if min.is_some() != max.is_some() {
        let w = min.or(max).expect("one is given");
        return Err(LineError::at(
            w.kw,
            "expected both 'min' and 'max' (ip: both or neither)",
        ));
    }
    if lo == 0 || lo > hi {
        let w = min.expect("min given when the range is bad");
        return Err(LineError::at(
            w.val,
            "expected 1 <= min <= max (SPI 0 is reserved)",
        ));
    }
    Ok(Request::StateAllocSpi(AllocSpi {
        src: src.v,
        dst: dst.v,
        proto,
        mode: mode.map_or(XfrmMode::Transport, |m| m.v),
        reqid: reqid.map_or(0, |r| r.v),
        min: lo,
        max: hi,
    }))
}

fn parse_policy_cmd(head: &Word, cmd: &Word, args: &[Word]) -> LineResult<Request> {
    match cmd.text.as_str() {
        "add" => Ok(Request::PolicyAdd(Box::new(policy::parse_policy(
            head, args, 0,
        )?))),
        "update" => Ok(Request::PolicyUpdate(Box::new(policy::parse_policy(
            head, args, 0,
        )?))),
        "delete" | "get" => {
            let mut cur = Cursor::new(args);
            let mut sel = SelParts::default();
            let mut dir: At<PolicyDir> = None;
            while let Some(kw) = cur.next() {
                if kw.is("dir") {
                    let val = cur.value(kw, "out, in or fwd")?;
                    set_once(&mut dir, kw, val, dir_of(val)?)?;
                } else if kw.is("index") {
                    return Err(LineError::at(
                        kw,
                        "'index' is not supported: name the policy by 'dir DIR' and its selector",
                    ));
                } else if !sel.take(kw, &mut cur)? {
                    return Err(LineError::at(
                        kw,
                        "expected a selector word (src, dst, proto, sport, dport, type, code) or 'dir'",
                    ));
                }
            }
            let dir = dir
                .ok_or_else(|| {
                    LineError::at(
                        cmd,
                        format!("expected 'dir out|in|fwd' after 'policy {}'", cmd.text),
                    )
                })?
                .v;
            let v4_any: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
            let id = PolicyId {
                dir,
                selector: sel.build(v4_any)?,
            };
            Ok(if cmd.is("delete") {
                Request::PolicyDelete(id)
            } else {
                Request::PolicyGet(id)
            })
        }
        "list" | "show" => {
            let mut cur = Cursor::new(args);
            let mut dir: At<PolicyDir> = None;
            while let Some(kw) = cur.next() {
                if !kw.is("dir") {
                    return Err(LineError::at(
                        kw,
                        "expected 'dir out|in|fwd' or nothing after 'policy list'",
                    ));
                }
                let val = cur.value(kw, "out, in or fwd")?;
                set_once(&mut dir, kw, val, dir_of(val)?)?;
            }
            Ok(Request::PolicyList(dir.map(|d| d.v)))
        }
        "flush" => no_more(args, Request::PolicyFlush),
        "count" => no_more(args, Request::PolicyCount),
        "deleteall" => Err(LineError::at(
            cmd,
            "'policy deleteall' is not supported: use 'policy flush' or 'policy delete'",
        )),
        _ => Err(LineError::at(cmd, POLICY_COMMANDS)),
    }
}

fn dir_of(val: &Word) -> LineResult<PolicyDir> {
    match val.text.as_str() {
        "out" => Ok(PolicyDir::Out),
        "in" => Ok(PolicyDir::In),
        "fwd" => Ok(PolicyDir::Fwd),
        _ => Err(LineError::at(val, "expected a direction: out, in or fwd")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0x0102030405060708090a0b0c0d0e0f1011121314";

    fn ok(s: &str) -> Request {
        parse_request(s, "request").unwrap_or_else(|e| panic!("{s}: {e}"))
    }
    fn err(s: &str) -> String {
        parse_request(s, "request").unwrap_err().to_string()
    }

    #[test]
    fn every_command() {
        let add = format!(
            "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x10 reqid 1 mode tunnel aead 'rfc4106(gcm(aes))' {KEY} 128"
        );
        assert!(matches!(ok(&add), Request::StateAdd(s) if s.id.spi == 0x10));
        assert!(matches!(
            ok(&format!("ip xfrm {}", add.replace("add", "update"))),
            Request::StateUpdate(_)
        ));
        let id = StateId {
            src: None,
            dst: "192.0.2.2".parse().unwrap(),
            proto: XfrmProto::Esp,
            spi: 0x10,
        };
        assert_eq!(
            ok("state delete dst 192.0.2.2 proto esp spi 0x10"),
            Request::StateDelete(id)
        );
        assert_eq!(
            ok("state get spi 16 proto esp dst 192.0.2.2"),
            Request::StateGet(id)
        );
        assert_eq!(ok("state list"), Request::StateList(StateFilter::default()));
        assert_eq!(
            ok("state list proto ah"),
            Request::StateList(StateFilter {
                proto: Some(XfrmProto::Ah),
                ..Default::default()
            })
        );
        assert_eq!(ok("state flush"), Request::StateFlush(None));
        assert_eq!(
            ok("state flush proto esp"),
            Request::StateFlush(Some(XfrmProto::Esp))
        );
        assert_eq!(ok("state count"), Request::StateCount);
        assert_eq!(
            ok("state allocspi src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel reqid 7 min 0x1000 max 0x1fff"),
            Request::StateAllocSpi(AllocSpi {
                src: "192.0.2.1".parse().unwrap(),
                dst: "192.0.2.2".parse().unwrap(),
                proto: XfrmProto::Esp,
                mode: XfrmMode::Tunnel,
                reqid: 7,
                min: 0x1000,
                max: 0x1fff,
            })
        );
        let pol = "policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir out tmpl src 192.0.2.1 dst 192.0.2.2 proto esp mode tunnel reqid 1";
        assert!(matches!(ok(pol), Request::PolicyAdd(p) if p.templates.len() == 1));
        assert!(matches!(
            ok(&pol.replace("add", "update")),
            Request::PolicyUpdate(_)
        ));
        match ok("policy delete dir out src 10.1.0.0/16 dst 10.2.0.0/16") {
            Request::PolicyDelete(p) => {
                assert_eq!(p.dir, PolicyDir::Out);
                assert_eq!(p.selector.src.len, 16);
            }
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            ok("policy get dir in src 10.1.0.0/16"),
            Request::PolicyGet(_)
        ));
        assert_eq!(ok("policy list"), Request::PolicyList(None));
        assert_eq!(
            ok("policy list dir fwd"),
            Request::PolicyList(Some(PolicyDir::Fwd))
        );
        assert_eq!(ok("policy flush"), Request::PolicyFlush);
        assert_eq!(ok("policy count"), Request::PolicyCount);
        assert_eq!(ok("monitor"), Request::Monitor);
        assert_eq!(ok("reload"), Request::Reload);
        assert!(ok("reload").is_change());
        assert!(!ok("state list").is_change());
        assert!(ok("state flush").is_change());
    }

    #[test]
    fn errors_name_the_word_and_what_was_expected() {
        for (req, want) in [
            ("", "request: expected a request"),
            (
                "state",
                "request:1: word 'state': expected a command after 'state'",
            ),
            (
                "state remove",
                "request:1: word 'remove': expected a state command",
            ),
            (
                "policy frobnicate",
                "request:1: word 'frobnicate': expected a policy command",
            ),
            ("route add", "request:1: word 'route': expected an object"),
            (
                "state delete dst 192.0.2.2 proto esp",
                "word 'delete': expected 'spi SPI'",
            ),
            (
                "state delete dst 192.0.2.2 proto esp spi 0x10 reqid 1",
                "word 'reqid': expected an SA id word",
            ),
            (
                "state get dst 192.0.2.300 proto esp spi 1",
                "word '192.0.2.300'",
            ),
            ("state add src 192.0.2.1", "request:1: word 'state'"),
            (
                "state count now",
                "word 'now': expected the end of the request",
            ),
            (
                "policy delete src 10.0.0.0/8",
                "word 'delete': expected 'dir out|in|fwd'",
            ),
            (
                "policy delete dir out index 9",
                "word 'index': 'index' is not supported",
            ),
            (
                "state allocspi src 192.0.2.1 dst 192.0.2.2 proto esp min 5",
                "word 'min': expected both",
            ),
            (
                "state allocspi src 192.0.2.1 dst 192.0.2.2 proto esp min 9 max 5",
                "word '9': expected 1 <= min <= max",
            ),
            (
                "monitor all",
                "word 'all': expected nothing after 'monitor'",
            ),
            (
                "state list\nstate flush",
                "word 'state': expected one request per message",
            ),
            ("state list 'open", "request:1:"),
        ] {
            let e = err(req);
            assert!(e.contains(want), "{req:?}: {e}");
        }
        // A key in a bad request is never echoed.
        let e = err(&format!(
            "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 1 aead 'rfc4106(gcm(aes))' {KEY} 100"
        ));
        assert!(!e.contains(&KEY[4..]), "{e}");
    }

    /// Arbitrary bytes (as text) are an error or a request, never a panic.
    #[test]
    fn random_text_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let words = [
            "state",
            "policy",
            "add",
            "delete",
            "src",
            "dst",
            "proto",
            "esp",
            "spi",
            "0x10",
            "dir",
            "out",
            "'",
            "\\",
            "\n",
            "#",
            "192.0.2.1",
            "10.0.0.0/8",
            "tmpl",
            "monitor",
            "\"",
            "allocspi",
            "min",
            "max",
        ];
        for _ in 0..20000 {
            let mut s = String::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (seed % 12) as usize;
            for i in 0..n {
                let k = ((seed >> (i * 5)) as usize) % words.len();
                s.push_str(words[k]);
                s.push(' ');
            }
            let _ = parse_request(&s, "request");
        }
    }
}
