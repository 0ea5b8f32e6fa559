//! The configuration language: the `ip xfrm state add …` and `ip xfrm policy add …` lines
//! operators already know (iproute2, ip-xfrm(8)), one command per line, without the leading
//! `ip xfrm` (which is accepted too). `#` starts a comment, blank lines are ignored, a line
//! ending in `\` goes on on the next one, and words are quoted as a shell would quote them.
//!
//! Layers: [`lexer`] (words), [`state`] and [`policy`] (one parser per command, each with the
//! checks ip and the kernel make), then the checks across lines here (duplicate SAs, duplicate
//! policies). Every error of the file is collected; a file with any error yields no
//! configuration at all.
//!
//! Where this differs from ip or Linux, it refuses what is probably a mistake instead of
//! guessing, and says so:
//! - a key is `0x` + an even number of hex digits, or a quoted string (raw bytes);
//! - a decimal number with a leading zero (ip: octal) is refused;
//! - keywords may come in any order, but each at most once;
//! - `auth-trunc` lengths are multiples of 8 from 96 to the digest size;
//! - a soft limit above its hard limit, `replay-*-hi` without `flag esn`, `tmpl` in a block
//!   policy and unspecified SA addresses are refused;
//! - policies with the same dir and the same selector (compared after masking the
//!   addresses to their prefix) are duplicates, as `ip xfrm policy add` reports EEXIST.

mod cursor;
mod error;
mod lexer;
mod policy;
pub mod request;
mod sel;
mod state;
mod value;

#[cfg(test)]
mod secrecy_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

pub use error::ConfigError;
pub use policy::MAX_TEMPLATES;
pub use state::REPLAY_WINDOW_MAX;

pub(crate) use sel::normalized as normalized_selector;

use self::error::{LineError, LineResult};
use self::lexer::Word;
use crate::policy::{Policy, PolicyDir};
use crate::sa::{SaConfig, XfrmId, XfrmProto};
use crate::selector::Selector;

/// A whole configuration: the SAs and the policies, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub states: Vec<SaConfig>,
    pub policies: Vec<Policy>,
}

/// Parses `text`, the contents of `file` (used in the errors). All or nothing: either every
/// line is valid, or every error of the file is returned, sorted by position.
pub fn parse_config(text: &str, file: &str) -> Result<Config, Vec<ConfigError>> {
    let (lines, mut errors) = lexer::lex(text);
    let mut states = Vec::new();
    let mut policies = Vec::new();
    let mut sa_lines: HashMap<XfrmId, usize> = HashMap::new();
    let mut policy_lines: HashMap<(PolicyDir, Selector), usize> = HashMap::new();

    for words in &lines {
        match parse_line(words, policies.len() as u32) {
            Ok((head, Command::State(sa))) => {
                if let Some(first) = sa_lines.get(&sa.id) {
                    errors.push(LineError::at(
                        head,
                        format!(
                            "duplicate SA (dst {}, spi 0x{:08x}, proto {}): already added at line {first} (ip xfrm state add: File exists)",
                            sa.id.daddr,
                            sa.id.spi,
                            proto_name(sa.id.proto)
                        ),
                    ));
                    continue;
                }
                sa_lines.insert(sa.id, head.line);
                states.push(*sa);
            }
            Ok((head, Command::Policy(p))) => {
                let key = (p.dir, sel::normalized(&p.selector));
                if let Some(first) = policy_lines.get(&key) {
                    errors.push(LineError::at(
                        head,
                        format!(
                            "duplicate policy (same selector and dir): already added at line {first} (ip xfrm policy add: File exists)"
                        ),
                    ));
                    continue;
                }
                policy_lines.insert(key, head.line);
                policies.push(p);
            }
            Err(e) => errors.push(e.redacted(words)),
        }
    }

    if errors.is_empty() {
        Ok(Config { states, policies })
    } else {
        errors.sort_by_key(|e| (e.line, e.column));
        Err(errors
            .into_iter()
            .map(|e| e.into_config_error(file))
            .collect())
    }
}

/// Reads and parses the file at `path`; a read error, or a file that group or others may
/// read ([`crate::keyfile`]), is a [`ConfigError`] of the file. The text is wiped when
/// parsed.
pub fn load_config(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let file = path.display().to_string();
    let whole = |message: String| {
        vec![ConfigError {
            file: file.clone(),
            line: 0,
            column: 0,
            word: String::new(),
            message,
        }]
    };
    let bytes = crate::keyfile::read_private(path).map_err(|e| match e {
        crate::keyfile::KeyFileError::Io { err, .. } => whole(format!("cannot read: {err}")),
        refused => whole(refused.problem()),
    })?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
            return Err(whole(format!(
                "line {line}: expected UTF-8 text, found an invalid byte"
            )));
        }
    };
    parse_config(text, &file)
}

/// `xfrm-user check --config FILE`: prints "N states, M policies" (singular for 1) to `out` and returns 0 when
/// the file is valid; prints every error, one per line, to `err` and returns 2 otherwise.
/// What `xfrm-user check --algorithms` prints: every algorithm the config accepts, as the
/// `ip xfrm` words, with the key and ICV lengths Linux accepts for it (anything else is
/// refused at config time).
pub const SUPPORTED_ALGORITHMS: &str = "\
ESP, aead NAME KEY ICV-BITS:
  rfc4106(gcm(aes))              key 20 or 36 bytes (AES-128/256 + 4-byte salt), ICV 64, 96 or 128
  rfc4543(gcm(aes))              key 20 or 36 bytes (AES-128/256 + 4-byte salt), ICV 128 (GMAC)
  rfc7539esp(chacha20,poly1305)  key 36 bytes (ChaCha20 + 4-byte salt), ICV 128
ESP, enc NAME KEY with auth NAME KEY or auth-trunc NAME KEY BITS (encrypt-then-MAC):
  cbc(aes), aes                  key 16, 24 or 32 bytes (AES-128/192/256)
  rfc3686(ctr(aes))              key 20, 28 or 36 bytes (AES-128/192/256 + 4-byte nonce)
  cipher_null, ecb(cipher_null)  key '' (no encryption, integrity only)
AH auth / auth-trunc, and ESP's auth (any key of 1 byte or more; BITS a multiple of 8):
  hmac(sha256), sha256           auth-trunc 96..256 (RFC 4868: 128); auth alone: 96 (as Linux)
  hmac(sha384), sha384           auth-trunc 96..384 (RFC 4868: 192); auth alone: 192
  hmac(sha512), sha512           auth-trunc 96..512 (RFC 4868: 256); auth alone: 256
  hmac(sha1), sha1               auth-trunc 96..160 (RFC 2404: 96); auth alone: 96
";

pub fn check(path: &Path, out: &mut dyn Write, err: &mut dyn Write) -> std::io::Result<u8> {
    match load_config(path) {
        Ok(c) => {
            let (n, m) = (c.states.len(), c.policies.len());
            let s = if n == 1 { "state" } else { "states" };
            let p = if m == 1 { "policy" } else { "policies" };
            writeln!(out, "{n} {s}, {m} {p}")?;
            Ok(0)
        }
        Err(errors) => {
            for e in &errors {
                writeln!(err, "{e}")?;
            }
            Ok(2)
        }
    }
}

enum Command {
    State(Box<SaConfig>),
    Policy(Policy),
}

const COMMANDS_NOT_IN_A_FILE: &[&str] = &[
    "update",
    "delete",
    "get",
    "deleteall",
    "list",
    "show",
    "flush",
    "count",
    "allocspi",
    "setdefault",
    "getdefault",
    "set",
    "spdinfo",
];

/// One command: `[ip xfrm] state add …` or `[ip xfrm] policy add …`, with its `state` or
/// `policy` word.
fn parse_line(words: &[Word], policy_index: u32) -> LineResult<(&Word, Command)> {
    let mut rest = words;
    if rest[0].is("ip") {
        match rest.get(1) {
            Some(w) if w.is("xfrm") => rest = &rest[2..],
            Some(w) => {
                return Err(LineError::at(
                    w,
                    "expected 'xfrm' after 'ip' (only ip xfrm commands belong in this file; global ip options are not accepted)",
                ))
            }
            None => {
                return Err(LineError::at(
                    &rest[0],
                    "expected 'xfrm' after 'ip', found the end of the line",
                ))
            }
        }
    }
    let Some(head) = rest.first() else {
        let last = words.last().expect("a line has a word");
        return Err(LineError::at(
            last,
            "expected 'state add' or 'policy add', found the end of the line",
        ));
    };
    if !head.is("state") && !head.is("policy") {
        return Err(LineError::at(
            head,
            "expected a command: 'state add' or 'policy add'",
        ));
    }
    match rest.get(1) {
        Some(w) if w.is("add") => {}
        Some(w) if COMMANDS_NOT_IN_A_FILE.contains(&w.text.as_str()) => {
            return Err(LineError::at(
                w,
                format!(
                    "expected 'add': '{} {}' is not a configuration command (a file only adds states and policies)",
                    head.text, w.text
                ),
            ))
        }
        Some(w) => return Err(LineError::at(w, format!("expected 'add' after '{}'", head.text))),
        None => {
            return Err(LineError::at(
                head,
                format!("expected 'add' after '{}', found the end of the line", head.text),
            ))
        }
    }
    let args = &rest[2..];
    if head.is("state") {
        state::parse_state(head, args).map(|s| (head, Command::State(Box::new(s))))
    } else {
        policy::parse_policy(head, args, policy_index).map(|p| (head, Command::Policy(p)))
    }
}

fn proto_name(p: XfrmProto) -> &'static str {
    match p {
        XfrmProto::Esp => "esp",
        XfrmProto::Ah => "ah",
    }
}
