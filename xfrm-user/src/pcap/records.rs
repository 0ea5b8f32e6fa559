//! The records of a pcap stream, read through a buffer that grows to what one record needs.
//! pcap-file's `PcapReader` zeroes an 8 MB buffer for every stream, which was nearly all the
//! cost of a small capture (one packet's, or the fuzz target's); its parser is used as is.

use std::io::{self, ErrorKind, Read};

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapParser};
use pcap_file::PcapError;

/// The buffer's first size; it doubles while one record does not fit.
const CHUNK: usize = 64 * 1024;
/// A record longer than this is refused, as `PcapReader`'s 8 MB buffer refused it.
const MAX_BUFFER: usize = 8_000_000;

pub struct Records<R> {
    src: Buffered<R>,
    parser: PcapParser,
}

impl<R: Read> Records<R> {
    /// Reads the file header.
    pub fn new(input: R) -> Result<Self, PcapError> {
        let mut src = Buffered::new(input);
        let used = src.complete(|b| PcapParser::new(b).map(|(rest, _)| rest.len()))?;
        let (_, parser) = PcapParser::new(src.take(used))?;
        Ok(Records { src, parser })
    }

    pub fn header(&self) -> PcapHeader {
        self.parser.header()
    }

    /// The next record; None at the end of the stream.
    pub fn next_packet(&mut self) -> Option<Result<PcapPacket<'_>, PcapError>> {
        match self.src.at_end() {
            Ok(true) => return None,
            Ok(false) => {}
            Err(e) => return Some(Err(PcapError::IoError(e))),
        }
        let parser = &self.parser;
        let used = match self
            .src
            .complete(|b| parser.next_raw_packet(b).map(|(rest, _)| rest.len()))
        {
            Ok(used) => used,
            Err(e) => return Some(Err(e)),
        };
        Some(parser.next_packet(self.src.take(used)).map(|(_, p)| p))
    }
}

struct Buffered<R> {
    input: R,
    /// Zeroed once as it grows; the unread bytes are `buf[start..end]`.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Buffered<R> {
    fn new(input: R) -> Self {
        Buffered {
            input,
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
        }
    }

    /// How many bytes from `start` make one whole item for `parse` (which returns the
    /// length left after the item), reading more while it says the buffer is incomplete.
    fn complete(
        &mut self,
        parse: impl Fn(&[u8]) -> Result<usize, PcapError>,
    ) -> Result<usize, PcapError> {
        loop {
            let avail = &self.buf[self.start..self.end];
            match parse(avail) {
                Ok(left) => return Ok(avail.len() - left),
                Err(PcapError::IncompleteBuffer) => {
                    if avail.len() >= MAX_BUFFER || self.fill().map_err(PcapError::IoError)? == 0 {
                        return Err(PcapError::IoError(ErrorKind::UnexpectedEof.into()));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Hands out the next `n` bytes (which `complete` found there).
    fn take(&mut self, n: usize) -> &[u8] {
        let item = &self.buf[self.start..self.start + n];
        self.start += n;
        item
    }

    fn at_end(&mut self) -> io::Result<bool> {
        Ok(self.start == self.end && self.fill()? == 0)
    }

    /// Moves the unread bytes to the front, grows the buffer when they fill it, and reads
    /// what the reader gives in one call; 0 at the end.
    fn fill(&mut self) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).clamp(CHUNK, MAX_BUFFER);
            self.buf.resize(grown.max(self.end + 1), 0);
        }
        let n = loop {
            match self.input.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        self.end += n;
        self.eof = n == 0;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcap::PcapWriter;
    use std::borrow::Cow;
    use std::time::Duration;

    fn capture(lens: &[usize]) -> Vec<u8> {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        for (i, &n) in lens.iter().enumerate() {
            let data = vec![i as u8; n];
            w.write_packet(&PcapPacket {
                timestamp: Duration::from_secs(i as u64),
                orig_len: n as u32,
                data: Cow::Borrowed(&data),
            })
            .unwrap();
        }
        w.into_writer()
    }

    /// A reader that gives a few bytes per call, to cross every buffer boundary.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(out.len()).min(self.0.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn reads_what_pcap_file_reads() {
        let lens = [0, 1, 60, 1500, 65535, 65535, 3];
        let file = capture(&lens);
        for step in [1, 7, 4096, usize::MAX] {
            let mut r = Records::new(Trickle(&file, step)).unwrap();
            let mut got = Vec::new();
            while let Some(p) = r.next_packet() {
                let p = p.unwrap();
                assert!(p.data.iter().all(|&b| b == got.len() as u8));
                assert_eq!(p.timestamp.as_secs(), got.len() as u64);
                got.push(p.data.len());
            }
            assert_eq!(got, lens, "read {step} bytes at a time");
        }
    }

    #[test]
    fn a_cut_record_or_header_is_an_error_not_the_end() {
        let file = capture(&[100]);
        let mut r = Records::new(&file[..file.len() - 1]).unwrap();
        assert!(matches!(r.next_packet(), Some(Err(PcapError::IoError(_)))));
        assert!(Records::new(&file[..10]).is_err());
        assert!(Records::new(&[][..]).is_err());
    }
}
