//! AH header (RFC 4302 §2): next header, payload length in 32-bit words minus 2, reserved,
//! SPI, sequence number, ICV (and padding to 8 bytes, or 4 for IPv4 with align4).

use super::{be16, be32, put16, put32, Result, WireError};

/// The fixed part before the ICV.
pub const HEADER_LEN: usize = 12;

#[derive(Debug, Clone)]
pub struct AhPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> AhPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }
    /// The fixed part and the whole header as its length field says.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if self.header_len() < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if b.len() < self.header_len() {
            return Err(WireError::Truncated);
        }
        Ok(())
    }
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[0]
    }
    /// The raw length field (32-bit words minus 2).
    pub fn payload_len_field(&self) -> u8 {
        self.buffer.as_ref()[1]
    }
    /// Length of the whole AH header in bytes: (field + 2) * 4.
    pub fn header_len(&self) -> usize {
        (usize::from(self.payload_len_field()) + 2) * 4
    }
    pub fn reserved(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }
    pub fn spi(&self) -> u32 {
        be32(self.buffer.as_ref(), 4)
    }
    pub fn seq(&self) -> u32 {
        be32(self.buffer.as_ref(), 8)
    }
    /// ICV plus padding (everything after the fixed part up to the header length).
    pub fn icv(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> AhPacket<T> {
    pub fn set_next_header(&mut self, v: u8) {
        self.buffer.as_mut()[0] = v;
    }
    pub fn set_header_len(&mut self, bytes: usize) {
        self.buffer.as_mut()[1] = (bytes / 4).saturating_sub(2) as u8;
    }
    pub fn set_reserved(&mut self, v: u16) {
        put16(self.buffer.as_mut(), 2, v)
    }
    pub fn set_spi(&mut self, v: u32) {
        put32(self.buffer.as_mut(), 4, v)
    }
    pub fn set_seq(&mut self, v: u32) {
        put32(self.buffer.as_mut(), 8, v)
    }
    pub fn icv_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.buffer.as_mut()[HEADER_LEN..hl]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn fields() {
        let mut b = [0u8; 32];
        let mut a = AhPacket::new_unchecked(&mut b[..]);
        a.set_next_header(4);
        a.set_header_len(32);
        a.set_spi(0xdead);
        a.set_seq(3);
        a.icv_mut().fill(0xee);
        assert_eq!(b[1], 6);
        let a = AhPacket::new_checked(&b[..]).unwrap();
        assert_eq!(
            (a.next_header(), a.header_len(), a.spi(), a.seq()),
            (4, 32, 0xdead, 3)
        );
        assert_eq!(a.icv(), &[0xee; 20]);
        assert_eq!(
            AhPacket::new_checked(&b[..28]).unwrap_err(),
            WireError::Truncated
        );
    }
}
