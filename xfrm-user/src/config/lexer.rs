//! Splits a configuration file into lines of words the way a POSIX shell would hand them to
//! `ip`: blanks separate words, 'single quotes' keep everything literally, "double quotes"
//! keep everything but `\"`, `\\`, `\$` and `` \` ``, a backslash outside quotes makes the next
//! character literal, a backslash before the end of a line joins the next line (a
//! continuation), and `#` at the start of a word starts a comment that runs to the end of the
//! physical line. Unlike a shell, a quote must close on the line where it opened: a config
//! line is one command.
//!
//! The text holds keys: every copy made here (the characters with their positions, each
//! word, each buffer a growing word leaves behind) is wiped when dropped.

use zeroize::{Zeroize, Zeroizing};

use super::error::LineError;

/// One word of a command, quotes removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Word {
    pub text: String,
    /// 1-based physical line and column (in characters) of the word's first character.
    pub line: usize,
    pub col: usize,
    /// Whether any part of the word was quoted (a quoted key is raw bytes, never hex).
    pub quoted: bool,
}

impl Word {
    pub fn is(&self, s: &str) -> bool {
        self.text == s
    }

    /// Appends `c`. When the buffer is full, the word moves to a larger one and the old one
    /// is wiped (String::push would free it with the key's first bytes in it).
    fn push(&mut self, c: char) {
        if self.text.len() + c.len_utf8() > self.text.capacity() {
            let mut bigger = String::with_capacity((self.text.capacity() * 2).max(64));
            bigger.push_str(&self.text);
            self.text.zeroize();
            self.text = bigger;
        }
        self.text.push(c);
    }
}

impl Drop for Word {
    fn drop(&mut self) {
        self.text.zeroize();
    }
}

/// A character with its position.
#[derive(Clone, Copy, Default)]
struct Pc {
    c: char,
    line: usize,
    col: usize,
}

impl zeroize::DefaultIsZeroes for Pc {}

fn positions(text: &str) -> Zeroizing<Vec<Pc>> {
    // One Pc per character, at most one per byte: the capacity is never exceeded.
    let mut out = Zeroizing::new(Vec::with_capacity(text.len()));
    let (mut line, mut col) = (1, 0);
    for c in text.chars() {
        col += 1;
        out.push(Pc { c, line, col });
        if c == '\n' {
            line += 1;
            col = 0;
        }
    }
    out
}

fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\x0b' | '\x0c')
}

/// The logical lines of `text` (empty ones dropped) and the errors of lines that could not be
/// split; such a line is left out of the result so the parser never sees half of it.
pub(crate) fn lex(text: &str) -> (Vec<Vec<Word>>, Vec<LineError>) {
    let v = positions(text);
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    let mut words: Vec<Word> = Vec::new();
    let mut cur: Option<Word> = None;
    let mut i = 0;

    // Ends the logical line at index `i` (a '\n' or the end of the text).
    let end_line = |words: &mut Vec<Word>, cur: &mut Option<Word>, lines: &mut Vec<Vec<Word>>| {
        if let Some(w) = cur.take() {
            words.push(w);
        }
        if !words.is_empty() {
            lines.push(std::mem::take(words));
        }
    };

    while i < v.len() {
        let p = v[i];
        match p.c {
            '\n' => {
                end_line(&mut words, &mut cur, &mut lines);
                i += 1;
            }
            c if is_blank(c) => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
                i += 1;
            }
            '#' if cur.is_none() => {
                // A comment: skip to the newline, which then ends the line.
                while i < v.len() && v[i].c != '\n' {
                    i += 1;
                }
            }
            '\\' => {
                match v.get(i + 1) {
                    Some(n) if n.c == '\n' => {
                        // Continuation: the word (if any) goes on on the next line.
                        i += 2;
                    }
                    Some(n) => {
                        word_at(&mut cur, p).push(n.c);
                        i += 2;
                    }
                    None => {
                        errors.push(LineError {
                            line: p.line,
                            column: p.col,
                            word: "\\".to_string(),
                            message: "expected a character or a line after '\\', found the end of the file"
                                .to_string(),
                        });
                        words.clear();
                        cur = None;
                        i += 1;
                    }
                }
            }
            q @ ('\'' | '"') => {
                let w = word_at(&mut cur, p);
                w.quoted = true;
                let mut j = i + 1;
                let mut closed = false;
                while j < v.len() {
                    let c = v[j].c;
                    if c == q {
                        closed = true;
                        break;
                    }
                    if c == '\n' {
                        break;
                    }
                    if q == '"' && c == '\\' {
                        match v.get(j + 1).map(|n| n.c) {
                            Some(e @ ('"' | '\\' | '$' | '`')) => {
                                w.push(e);
                                j += 2;
                                continue;
                            }
                            Some('\n') => {
                                // A continuation inside double quotes would span lines; a
                                // quote must close on its own line here.
                                break;
                            }
                            _ => {}
                        }
                    }
                    w.push(c);
                    j += 1;
                }
                if closed {
                    i = j + 1;
                } else {
                    errors.push(LineError {
                        line: p.line,
                        column: p.col,
                        word: q.to_string(),
                        message: format!(
                            "expected a closing {q} on the same line (a quote opened here does not close)"
                        ),
                    });
                    // Drop the whole logical line and resume after its physical end.
                    words.clear();
                    cur = None;
                    i = skip_rest_of_logical_line(&v, j);
                }
            }
            c => {
                word_at(&mut cur, p).push(c);
                i += 1;
            }
        }
    }
    end_line(&mut words, &mut cur, &mut lines);
    (lines, errors)
}

/// The word under construction, started at `p` if there is none yet.
fn word_at(cur: &mut Option<Word>, p: Pc) -> &mut Word {
    cur.get_or_insert_with(|| Word {
        text: String::new(),
        line: p.line,
        col: p.col,
        quoted: false,
    })
}

/// Index just past the end of the logical line that contains index `j` (its newline is left
/// to be read, so the line ends there); lines ending in a backslash continue.
fn skip_rest_of_logical_line(v: &[Pc], mut j: usize) -> usize {
    while j < v.len() {
        if v[j].c == '\n' {
            let continued = j > 0 && v[j - 1].c == '\\';
            if !continued {
                return j;
            }
        }
        j += 1;
    }
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(line: &[Word]) -> Vec<&str> {
        line.iter().map(|w| w.text.as_str()).collect()
    }

    #[test]
    fn words_quotes_comments() {
        let (lines, errs) = lex(
            "# a comment\n\n  state add src 1.2.3.4 # trailing\naead 'rfc4106(gcm(aes))' \"a b\\\"c\" x'y'z\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(lines.len(), 2);
        assert_eq!(texts(&lines[0]), ["state", "add", "src", "1.2.3.4"]);
        assert_eq!(
            texts(&lines[1]),
            ["aead", "rfc4106(gcm(aes))", "a b\"c", "xyz"]
        );
        assert_eq!((lines[0][0].line, lines[0][0].col), (3, 3));
        assert_eq!((lines[1][1].line, lines[1][1].col), (4, 6));
        assert!(lines[1][1].quoted && lines[1][3].quoted && !lines[1][0].quoted);
    }

    #[test]
    fn continuation_joins_lines_and_keeps_positions() {
        let (lines, errs) = lex("state add \\\n  src 1.2.3.4\\\n/32 dst\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(lines.len(), 1);
        assert_eq!(
            texts(&lines[0]),
            ["state", "add", "src", "1.2.3.4/32", "dst"]
        );
        assert_eq!((lines[0][2].line, lines[0][2].col), (2, 3));
        assert_eq!((lines[0][4].line, lines[0][4].col), (3, 5));
    }

    #[test]
    fn hash_inside_word_is_literal_and_backslash_escapes() {
        let (lines, _) = lex("a#b \\#c '#d' e\\ f\n");
        assert_eq!(texts(&lines[0]), ["a#b", "#c", "#d", "e f"]);
    }

    #[test]
    fn empty_quotes_make_an_empty_word() {
        let (lines, _) = lex("key '' \"\"\n");
        assert_eq!(texts(&lines[0]), ["key", "", ""]);
        assert!(lines[0][1].quoted);
    }

    #[test]
    fn single_quotes_keep_backslashes() {
        let (lines, _) = lex("'a\\b' \"a\\b\"\n");
        assert_eq!(texts(&lines[0]), ["a\\b", "a\\b"]);
    }

    #[test]
    fn unterminated_quote_drops_the_line_only() {
        let (lines, errs) = lex("one 'two\nthree \\\n four\nfive \"six\\\nseven\"\neight\n");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert_eq!(
            (errs[0].line, errs[0].column, errs[0].word.as_str()),
            (1, 5, "'")
        );
        assert_eq!(
            (errs[1].line, errs[1].column, errs[1].word.as_str()),
            (4, 6, "\"")
        );
        // Lines 2-3 are one continued line. The quote of line 4 would need the continuation
        // to close, which is refused; line 4 ends in a backslash, so line 5 is skipped too.
        let got: Vec<Vec<&str>> = lines.iter().map(|l| texts(l)).collect();
        assert_eq!(got, vec![vec!["three", "four"], vec!["eight"]]);
    }

    #[test]
    fn trailing_backslash_at_eof_is_an_error() {
        let (lines, errs) = lex("state add \\");
        assert!(lines.is_empty());
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].word, "\\");
    }

    #[test]
    fn crlf_is_blank() {
        let (lines, _) = lex("a b\r\nc\r\n");
        assert_eq!(lines.len(), 2);
        assert_eq!(texts(&lines[0]), ["a", "b"]);
    }
}
