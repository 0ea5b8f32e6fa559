//! A packet inside a buffer with headroom and tailroom: `[headroom | packet | tailroom]`.
//!
//! Output grows the packet forward into the headroom (outer IP, UDP, ESP/AH header, IV) and
//! back into the tailroom (padding, trailer, ICV); input shrinks it. The same type wraps an
//! AF_XDP UMEM chunk in the datapath and a `Vec` in the pcap mode and in tests.

use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("not enough headroom: need {need}, have {have}")]
    NoHeadroom { need: usize, have: usize },
    #[error("not enough tailroom: need {need}, have {have}")]
    NoTailroom { need: usize, have: usize },
    #[error("packet too short: need {need}, have {have}")]
    TooShort { need: usize, have: usize },
}

pub struct Frame<'a> {
    buf: &'a mut [u8],
    head: usize,
    tail: usize,
}

impl<'a> Frame<'a> {
    /// The packet is `buf[head..head + len]`. Panics only on a caller bug (range outside buf).
    #[inline]
    pub fn new(buf: &'a mut [u8], head: usize, len: usize) -> Self {
        assert!(head + len <= buf.len(), "frame range outside its buffer");
        Self {
            buf,
            head,
            tail: head + len,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.tail - self.head
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    #[inline]
    pub fn headroom(&self) -> usize {
        self.head
    }
    #[inline]
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.tail
    }
    /// Offset of the packet's first byte inside the buffer.
    #[inline]
    pub fn head_offset(&self) -> usize {
        self.head
    }
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.head..self.tail]
    }
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.head..self.tail]
    }
    /// The whole buffer and the packet's range in it, for code that must reach into the
    /// headroom (e.g. the ESN trick that makes GMAC's AAD contiguous).
    pub fn raw_mut(&mut self) -> (&mut [u8], usize, usize) {
        (self.buf, self.head, self.tail)
    }

    /// Grows the packet by `n` bytes at the front; returns the packet (new bytes first).
    #[inline]
    pub fn push_head(&mut self, n: usize) -> Result<&mut [u8], FrameError> {
        if n > self.head {
            return Err(FrameError::NoHeadroom {
                need: n,
                have: self.head,
            });
        }
        self.head -= n;
        Ok(self.data_mut())
    }
    /// Drops `n` bytes from the front.
    #[inline]
    pub fn pull_head(&mut self, n: usize) -> Result<(), FrameError> {
        if n > self.len() {
            return Err(FrameError::TooShort {
                need: n,
                have: self.len(),
            });
        }
        self.head += n;
        Ok(())
    }
    /// Grows the packet by `n` bytes at the end; returns the new bytes (content unspecified).
    #[inline]
    pub fn push_tail(&mut self, n: usize) -> Result<&mut [u8], FrameError> {
        if n > self.tailroom() {
            return Err(FrameError::NoTailroom {
                need: n,
                have: self.tailroom(),
            });
        }
        let old = self.tail;
        self.tail += n;
        Ok(&mut self.buf[old..self.tail])
    }
    /// Drops `n` bytes from the end.
    #[inline]
    pub fn trim_tail(&mut self, n: usize) -> Result<(), FrameError> {
        if n > self.len() {
            return Err(FrameError::TooShort {
                need: n,
                have: self.len(),
            });
        }
        self.tail -= n;
        Ok(())
    }
    /// Opens a gap of `n` bytes at offset `at` of the packet by moving the first `at` bytes
    /// forward into the headroom (the transport-mode move: `|IP|payload` -> `|IP|gap|payload`).
    /// Only the `at` header bytes move; the payload stays where it is.
    pub fn open_gap(&mut self, at: usize, n: usize) -> Result<&mut [u8], FrameError> {
        if at > self.len() {
            return Err(FrameError::TooShort {
                need: at,
                have: self.len(),
            });
        }
        if n > self.head {
            return Err(FrameError::NoHeadroom {
                need: n,
                have: self.head,
            });
        }
        let old = self.head;
        self.buf.copy_within(old..old + at, old - n);
        self.head -= n;
        Ok(self.data_mut())
    }
    /// The reverse of `open_gap`: removes `n` bytes at offset `at` by moving the first `at`
    /// bytes back.
    pub fn close_gap(&mut self, at: usize, n: usize) -> Result<&mut [u8], FrameError> {
        if at + n > self.len() {
            return Err(FrameError::TooShort {
                need: at + n,
                have: self.len(),
            });
        }
        let old = self.head;
        self.buf.copy_within(old..old + at, old + n);
        self.head += n;
        Ok(self.data_mut())
    }
}

/// An owned buffer with fixed headroom/tailroom, for the pcap mode and tests.
pub struct OwnedFrame {
    pub buf: Vec<u8>,
    pub head: usize,
    pub len: usize,
}

impl OwnedFrame {
    pub const DEFAULT_HEADROOM: usize = 256;
    pub const DEFAULT_TAILROOM: usize = 2048;

    pub fn from_packet(packet: &[u8]) -> Self {
        Self::with_room(packet, Self::DEFAULT_HEADROOM, Self::DEFAULT_TAILROOM)
    }
    pub fn with_room(packet: &[u8], headroom: usize, tailroom: usize) -> Self {
        let mut buf = vec![0u8; headroom + packet.len() + tailroom];
        buf[headroom..headroom + packet.len()].copy_from_slice(packet);
        Self {
            buf,
            head: headroom,
            len: packet.len(),
        }
    }
    /// Runs `f` over a `Frame` view and keeps the resulting packet range.
    pub fn with_frame<R>(&mut self, f: impl FnOnce(&mut Frame<'_>) -> R) -> R {
        let mut frame = Frame::new(&mut self.buf, self.head, self.len);
        let r = f(&mut frame);
        self.head = frame.head;
        self.len = frame.len();
        r
    }
    pub fn data(&self) -> &[u8] {
        &self.buf[self.head..self.head + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_and_shrink() {
        let mut f = OwnedFrame::with_room(&[1, 2, 3, 4], 8, 4);
        f.with_frame(|fr| {
            fr.push_head(2).unwrap()[..2].copy_from_slice(&[9, 9]);
            fr.push_tail(3).unwrap().copy_from_slice(&[7, 7, 7]);
            assert!(fr.push_tail(2).is_err());
            assert!(fr.push_head(7).is_err());
        });
        assert_eq!(f.data(), &[9, 9, 1, 2, 3, 4, 7, 7, 7]);
        f.with_frame(|fr| {
            fr.pull_head(2).unwrap();
            fr.trim_tail(3).unwrap();
            assert!(fr.trim_tail(5).is_err());
        });
        assert_eq!(f.data(), &[1, 2, 3, 4]);
    }

    #[test]
    fn gap_moves_only_the_header() {
        let mut f = OwnedFrame::with_room(&[1, 2, 3, 4, 5], 4, 0);
        f.with_frame(|fr| {
            let d = fr.open_gap(2, 3).unwrap();
            d[2..5].copy_from_slice(&[0, 0, 0]);
        });
        assert_eq!(f.data(), &[1, 2, 0, 0, 0, 3, 4, 5]);
        f.with_frame(|fr| {
            fr.close_gap(2, 3).unwrap();
        });
        assert_eq!(f.data(), &[1, 2, 3, 4, 5]);
    }
}
