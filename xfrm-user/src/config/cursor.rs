//! A cursor over the words of one command, with the helpers every keyword parser needs.

use super::error::{LineError, LineResult};
use super::lexer::Word;

pub(crate) struct Cursor<'w> {
    words: &'w [Word],
    pos: usize,
}

impl<'w> Cursor<'w> {
    pub fn new(words: &'w [Word]) -> Self {
        Self { words, pos: 0 }
    }

    pub fn next(&mut self) -> Option<&'w Word> {
        let w = self.words.get(self.pos)?;
        self.pos += 1;
        Some(w)
    }

    pub fn peek(&self) -> Option<&'w Word> {
        self.words.get(self.pos)
    }

    /// The word after keyword `kw`, or an error on `kw` saying what should have followed.
    pub fn value(&mut self, kw: &Word, what: &str) -> LineResult<&'w Word> {
        self.next().ok_or_else(|| {
            LineError::at(
                kw,
                format!(
                    "expected {what} after '{}', found the end of the line",
                    kw.text
                ),
            )
        })
    }
}

/// A keyword's value with the words it came from, so later checks can point at them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot<'w, T> {
    pub v: T,
    /// The keyword (`src`, `spi`, …).
    pub kw: &'w Word,
    /// The value's word (the keyword itself for a keyword without a value).
    pub val: &'w Word,
}

pub(crate) type At<'w, T> = Option<Slot<'w, T>>;

/// Sets `slot` once; a keyword given twice is an error naming the first one's column.
pub(crate) fn set_once<'w, T>(
    slot: &mut At<'w, T>,
    kw: &'w Word,
    val: &'w Word,
    v: T,
) -> LineResult<()> {
    if let Some(first) = slot {
        return Err(LineError::at(
            kw,
            format!(
                "'{}' given twice (first at column {}): expected each keyword once",
                kw.text, first.kw.col
            ),
        ));
    }
    *slot = Some(Slot { v, kw, val });
    Ok(())
}
