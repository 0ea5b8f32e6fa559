//! The control protocol's messages (docs/control-protocol.md): SOCK_SEQPACKET, one datagram
//! per request, text only, so that a C client needs nothing but `send`/`recv`.
//!
//! ```text
//! request:  "xfrmctl 1[ -s][ -j][ --keys]\n" + the words after `ip xfrm` (one command)
//! reply:    zero or more "more\n" + part of the body, then "ok\n" + the rest of the body,
//!           or one "error " + message + "\n"
//! event:    "event\n" + text, on a connection that sent `monitor` (after its "ok")
//! ```

use super::render::Show;

/// The first word pair of every request.
pub const MAGIC: &str = "xfrmctl";
pub const VERSION: u32 = 1;
/// The largest request taken (a state add with the longest key and every option is well
/// under 1 KiB); a longer one is refused whole.
pub const MAX_REQUEST: usize = 8192;
/// The largest reply datagram (a long list is split at line ends into several).
pub const MAX_REPLY: usize = 32 * 1024;

/// A request's header options and its command text.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub show: Show,
    pub command: &'a str,
}

/// Splits a received datagram (`len` is its real length, which may exceed `buf`).
pub fn parse(buf: &[u8], len: usize) -> Result<Message<'_>, String> {
    if len > MAX_REQUEST || len > buf.len() {
        return Err(format!(
            "request: {len} bytes: expected at most {MAX_REQUEST} (nothing applied)"
        ));
    }
    let text = std::str::from_utf8(&buf[..len]).map_err(|e| {
        format!(
            "request: expected UTF-8 text, found an invalid byte at offset {}",
            e.valid_up_to()
        )
    })?;
    if text.contains('\0') {
        return Err("request: expected text, found a NUL byte".to_string());
    }
    let (head, command) = text.split_once('\n').unwrap_or((text, ""));
    let mut words = head.split_ascii_whitespace();
    if words.next() != Some(MAGIC) {
        return Err(format!(
            "request: expected a first line '{MAGIC} {VERSION}' (the protocol header)"
        ));
    }
    match words.next() {
        Some(v) if v == VERSION.to_string() => {}
        Some(v) => {
            return Err(format!(
                "request: protocol version '{v}' is not spoken here: expected {VERSION}"
            ))
        }
        None => {
            return Err(format!(
                "request: expected '{MAGIC} {VERSION}', found no version"
            ))
        }
    }
    let mut show = Show::default();
    for w in words {
        match w {
            "-s" => show.stats = true,
            "-j" => show.json = true,
            "--keys" => show.keys = true,
            _ => {
                return Err(format!(
                    "request: header option '{w}': expected -s, -j or --keys"
                ))
            }
        }
    }
    Ok(Message { show, command })
}

/// A request as a client sends it.
pub fn request(show: Show, command: &str) -> Vec<u8> {
    let mut s = format!("{MAGIC} {VERSION}");
    for (on, o) in [
        (show.stats, " -s"),
        (show.json, " -j"),
        (show.keys, " --keys"),
    ] {
        if on {
            s.push_str(o);
        }
    }
    s.push('\n');
    s.push_str(command);
    s.into_bytes()
}

/// The datagrams of a reply.
pub fn reply(r: &Result<String, String>) -> Vec<Vec<u8>> {
    match r {
        Err(e) => vec![format!("error {}\n", e.trim_end().replace('\n', "; ")).into_bytes()],
        Ok(body) => {
            let mut out = Vec::new();
            let mut rest = body.as_str();
            let room = MAX_REPLY - 5;
            while rest.len() > room {
                // Cut after the last line end that fits (or, for one huge line, anywhere
                // on a character boundary).
                let mut cut = rest[..room].rfind('\n').map_or(room, |i| i + 1);
                while !rest.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.push(format!("more\n{}", &rest[..cut]).into_bytes());
                rest = &rest[cut..];
            }
            out.push(format!("ok\n{rest}").into_bytes());
            out
        }
    }
}

/// An event datagram for `monitor`.
pub fn event(text: &str) -> Vec<u8> {
    format!("event\n{text}").into_bytes()
}

/// One received reply datagram, for a client.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyPart<'a> {
    More(&'a str),
    Ok(&'a str),
    Error(&'a str),
    Event(&'a str),
}

pub fn parse_reply(d: &[u8]) -> Result<ReplyPart<'_>, String> {
    let s = std::str::from_utf8(d).map_err(|_| "reply: not UTF-8".to_string())?;
    if let Some(b) = s.strip_prefix("ok\n") {
        Ok(ReplyPart::Ok(b))
    } else if let Some(b) = s.strip_prefix("more\n") {
        Ok(ReplyPart::More(b))
    } else if let Some(b) = s.strip_prefix("error ") {
        Ok(ReplyPart::Error(b.trim_end()))
    } else if let Some(b) = s.strip_prefix("event\n") {
        Ok(ReplyPart::Event(b))
    } else {
        Err(format!(
            "reply: unexpected datagram starting {:?}",
            &s[..s.len().min(16)]
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_options_and_errors() {
        let r = request(
            Show {
                stats: true,
                json: false,
                keys: true,
            },
            "state list",
        );
        assert_eq!(r, b"xfrmctl 1 -s --keys\nstate list");
        let m = parse(&r, r.len()).unwrap();
        assert_eq!(m.command, "state list");
        assert!(m.show.stats && m.show.keys && !m.show.json);
        for (bad, want) in [
            (&b"state list"[..], "expected a first line 'xfrmctl 1'"),
            (b"xfrmctl 2\nstate list", "version '2'"),
            (b"xfrmctl\nstate list", "found no version"),
            (b"xfrmctl 1 -x\nstate list", "header option '-x'"),
            (b"xfrmctl 1\nstate \xff", "UTF-8"),
            (b"xfrmctl 1\nstate\0list", "NUL"),
        ] {
            let e = parse(bad, bad.len()).unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
        let big = vec![b'a'; MAX_REQUEST + 1];
        assert!(parse(&big, big.len()).unwrap_err().contains("at most 8192"));
        // Truncated by the receiver: the real length decides.
        assert!(parse(&big[..10], 100_000)
            .unwrap_err()
            .contains("100000 bytes"));
    }

    #[test]
    fn long_replies_are_split_at_line_ends_and_put_back_whole() {
        let body: String = (0..5000)
            .map(|i| format!("line {i} of the body\n"))
            .collect();
        let parts = reply(&Ok(body.clone()));
        assert!(parts.len() > 1);
        let mut got = String::new();
        for (i, d) in parts.iter().enumerate() {
            assert!(d.len() <= MAX_REPLY);
            match parse_reply(d).unwrap() {
                ReplyPart::More(b) => {
                    assert!(i + 1 < parts.len());
                    assert!(b.ends_with('\n'));
                    got.push_str(b);
                }
                ReplyPart::Ok(b) => {
                    assert_eq!(i + 1, parts.len());
                    got.push_str(b);
                }
                p => panic!("{p:?}"),
            }
        }
        assert_eq!(got, body);
        let e = reply(&Err("request:1: word 'x': expected y\nmore".to_string()));
        assert_eq!(
            e,
            vec![b"error request:1: word 'x': expected y; more\n".to_vec()]
        );
        assert_eq!(
            parse_reply(&e[0]).unwrap(),
            ReplyPart::Error("request:1: word 'x': expected y; more")
        );
        assert_eq!(
            parse_reply(&event("Deleted x\n")).unwrap(),
            ReplyPart::Event("Deleted x\n")
        );
    }
}
