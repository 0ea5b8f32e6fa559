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
