//! Errors of the configuration language: each names the file, the line, the offending word
//! and what was expected there.

use std::fmt;

use super::lexer::Word;

/// One error of a configuration file.
///
/// `Display` gives `FILE:LINE: word 'WORD': MESSAGE` (or `FILE: MESSAGE` for an error of the
/// whole file, such as an I/O error, where `line` is 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based physical line of the offending word; 0 for the whole file.
    pub line: usize,
    /// 1-based column (in characters) of the offending word; 0 when there is none.
    pub column: usize,
    /// The offending word as the parser saw it (quotes removed); key material is never
    /// echoed: a key word shows as `<key>`.
    pub word: String,
    /// What was wrong, usually "expected …".
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}: word '{}': {}",
                self.file, self.line, self.word, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// An error inside one line, before the file name is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LineError {
    pub line: usize,
    pub column: usize,
    pub word: String,
    pub message: String,
}

impl LineError {
    pub fn at(w: &Word, message: impl Into<String>) -> Self {
        Self {
            line: w.line,
            column: w.col,
            word: w.text.clone(),
            message: message.into(),
        }
    }

    /// Like `at`, for a word that holds key material: the word itself is not repeated.
    pub fn at_key(w: &Word, message: impl Into<String>) -> Self {
        Self {
            line: w.line,
            column: w.col,
            word: "<key>".to_string(),
            message: message.into(),
        }
    }

    pub fn into_config_error(self, file: &str) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            line: self.line,
            column: self.column,
            word: self.word,
            message: self.message,
        }
    }
}

pub(crate) type LineResult<T> = Result<T, LineError>;

/// The keywords followed by an algorithm name and a key (ip-xfrm(8) ALGO), with the number
/// of words that may follow the key (`aead` and `auth-trunc`: a length in bits).
const KEY_KEYWORDS: &[(&str, usize)] = &[
    ("aead", 1),
    ("auth-trunc", 1),
    ("auth", 0),
    ("enc", 0),
    ("comp", 0),
];

/// No number of this language has more than 16 hex digits (a u64); a longer `0x` word is
/// key material wherever it stands.
fn hex_key_shaped(t: &str) -> bool {
    t.strip_prefix("0x")
        .is_some_and(|h| h.len() > 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A word that could stand where a key goes: `0x…` or quoted.
fn key_shaped(w: &Word) -> bool {
    w.quoted || w.text.starts_with("0x")
}

/// What `line` holds that may be key material: the word after an algorithm name, and, where
/// the line is not as expected, its neighbours (the name when no key follows it: the key
/// may stand there; a length word that is not a number: the half of a split key).
fn secret_words(line: &[Word]) -> Vec<&str> {
    let mut out = Vec::new();
    for (i, w) in line.iter().enumerate() {
        let Some(&(_, after)) = KEY_KEYWORDS.iter().find(|(k, _)| w.is(k)) else {
            continue;
        };
        let (name, key) = (line.get(i + 1), line.get(i + 2));
        if let Some(n) = name {
            if !key.is_some_and(key_shaped) {
                out.push(n.text.as_str());
            }
        }
        out.extend(key.map(|k| k.text.as_str()));
        for extra in line.iter().skip(i + 3).take(after) {
            if !extra.text.bytes().all(|b| b.is_ascii_digit()) {
                out.push(extra.text.as_str());
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

impl LineError {
    /// The error with every piece of `line` that may be key material replaced by `<key>`, in
    /// its word and in its message: a key where the parser expected something else would
    /// otherwise be quoted back.
    pub fn redacted(mut self, line: &[Word]) -> Self {
        let secrets = secret_words(line);
        // Quoted words are algorithm names, which have parentheses, or raw keys.
        let quoted_key = line
            .iter()
            .any(|w| w.quoted && w.text == self.word && !w.text.contains('('));
        if quoted_key || hex_key_shaped(&self.word) || secrets.contains(&self.word.as_str()) {
            self.word = "<key>".to_string();
        }
        for s in secrets.into_iter().chain(
            line.iter()
                .map(|w| w.text.as_str())
                .filter(|t| hex_key_shaped(t)),
        ) {
            if self.message.contains(s) {
                self.message = self.message.replace(s, "<key>");
            }
        }
        self
    }
}
