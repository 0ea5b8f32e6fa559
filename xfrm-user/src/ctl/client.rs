//! `xfrm-user xfrm …`: the client. One request per command line, or one per line of a batch
//! file (`-batch FILE|-`, so that keys never sit in argv), or `monitor`.

use std::{
    io::{BufRead, Write},
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use super::{
    protocol::{self, ReplyPart},
    render::Show,
    socket,
};

/// Finds the control socket of the daemon of this network namespace: the one
/// `/run/xfrm-user/netns-<inode>-*.ctl` there is.
pub fn default_ctl() -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(|e| format!("network namespace: {e}"))?
        .ino();
    let dir = Path::new("/run/xfrm-user");
    let prefix = format!("netns-{ns}-");
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "ctl")
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!(
            "no control socket of a daemon of this network namespace in {} (is `xfrm-user run` running here? else give --ctl PATH)",
            dir.display()
        )),
        _ => Err(format!(
            "several daemons in this network namespace ({}): choose one with --ctl PATH",
            found
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A connection to the daemon.
pub struct Client {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Self, String> {
        let fd = socket::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self {
            fd,
            buf: vec![0u8; protocol::MAX_REPLY],
        })
    }

    /// Sends raw bytes as one request (tests send malformed ones).
    pub fn send_raw(&self, d: &[u8]) -> Result<(), String> {
        socket::send(self.fd.as_raw_fd(), d).map_err(|e| format!("send: {e}"))
    }

    /// One request; the reply's body, or the daemon's error.
    pub fn request(&mut self, show: Show, command: &str) -> Result<String, String> {
        self.send_raw(&protocol::request(show, command))?;
        self.reply()
    }

    /// Reads a whole reply (its `more` parts, then `ok` or `error`).
    pub fn reply(&mut self) -> Result<String, String> {
        let mut body = String::new();
        loop {
            match self.next_part()? {
                Part::More(b) => body.push_str(&b),
                Part::Ok(b) => {
                    body.push_str(&b);
                    return Ok(body);
                }
                Part::Error(e) => return Err(e),
                Part::Event(_) => return Err("reply: an event where a reply was due".into()),
            }
        }
    }

    fn next_part(&mut self) -> Result<Part, String> {
        let n = socket::recv(self.fd.as_raw_fd(), &mut self.buf)
            .map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err("the daemon closed the connection".to_string());
        }
        let d = &self.buf[..n.min(self.buf.len())];
        Ok(match protocol::parse_reply(d)? {
            ReplyPart::More(b) => Part::More(b.to_string()),
            ReplyPart::Ok(b) => Part::Ok(b.to_string()),
            ReplyPart::Error(e) => Part::Error(e.to_string()),
            ReplyPart::Event(e) => Part::Event(e.to_string()),
        })
    }

    /// `monitor`: subscribes, then returns each event as it comes (None when the daemon
    /// goes).
    pub fn monitor(&mut self) -> Result<(), String> {
        self.request(Show::default(), "monitor").map(|_| ())
    }

    pub fn next_event(&mut self) -> Result<String, String> {
        match self.next_part()? {
            Part::Event(e) => Ok(e),
            Part::Error(e) => Err(e),
            _ => Err("monitor: a reply where an event was due".to_string()),
        }
    }

    /// A receive timeout (tests wait for events with one).
    pub fn set_timeout(&self, t: std::time::Duration) -> Result<(), String> {
        socket::set_recv_timeout(self.fd.as_raw_fd(), t).map_err(|e| e.to_string())
    }
}

enum Part {
    More(String),
    Ok(String),
    Error(String),
    Event(String),
}

/// The command line's words as one request's text: each word quoted when the request
/// lexer would otherwise split or change it (a key given as 0x… stays unquoted: quoted, it
/// would be taken as raw bytes).
pub fn join_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty()
                && !w.starts_with('#')
                && w.chars()
                    .all(|c| !c.is_whitespace() && !"'\"\\".contains(c));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `-batch FILE`: one request per line (`#` comments, blank lines, `\` continuations), in
/// order, stopping at the first error, which is reported as `FILE:LINE: …`. Returns the
/// exit code.
pub fn batch(
    client: &mut Client,
    show: Show,
    name: &str,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<u8> {
    let mut pending = String::new();
    let mut first_line = 0;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if pending.is_empty() {
            first_line = i + 1;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(&line);
        let cmd = std::mem::take(&mut pending);
        let t = cmd.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        match client.request(show, t) {
            Ok(body) => out.write_all(body.as_bytes())?,
            Err(e) => {
                // "request:1: …" names the line of the request: put the file's there.
                let e = match e.strip_prefix("request:") {
                    Some(rest) => match rest.split_once(':') {
                        Some((n, msg)) if n.parse::<usize>().is_ok() => {
                            let n: usize = n.parse().unwrap_or(1);
                            format!("{name}:{}:{msg}", first_line + n - 1)
                        }
                        _ => format!("{name}:{first_line}:{rest}"),
                    },
                    None => format!("{name}:{first_line}: {e}"),
                };
                writeln!(err, "{e}")?;
                return Ok(1);
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_only_where_the_lexer_needs_it() {
        let w: Vec<String> = [
            "state",
            "add",
            "rfc4106(gcm(aes))",
            "0xab",
            "a b",
            "it's",
            "#x",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            join_words(&w),
            r#"state add rfc4106(gcm(aes)) 0xab 'a b' 'it'\''s' '#x' ''"#
        );
        // What the shell handed over comes back word for word through the request lexer.
        let argv: Vec<String> = "state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x10 mode tunnel aead rfc4106(gcm(aes)) 0x0102030405060708090a0b0c0d0e0f1011121314 128"
            .split(' ')
            .map(String::from)
            .collect();
        let r = crate::config::request::parse_request(&join_words(&argv), "request").unwrap();
        assert!(matches!(r, crate::config::request::Request::StateAdd(s) if s.id.spi == 0x10));
    }
}
