//! UDP header (RFC 768).

use super::{be16, put16};

pub const HEADER_LEN: usize = 8;
pub const CHECKSUM_OFFSET: usize = 6;

fixed_header_view!(UdpPacket, HEADER_LEN);

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }
    pub fn len(&self) -> u16 {
        be16(self.buffer.as_ref(), 4)
    }
    pub fn is_empty(&self) -> bool {
        self.len() as usize <= HEADER_LEN
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), CHECKSUM_OFFSET)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    pub fn set_src_port(&mut self, v: u16) {
        put16(self.buffer.as_mut(), 0, v)
    }
    pub fn set_dst_port(&mut self, v: u16) {
        put16(self.buffer.as_mut(), 2, v)
    }
    pub fn set_len(&mut self, v: u16) {
        put16(self.buffer.as_mut(), 4, v)
    }
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buffer.as_mut(), CHECKSUM_OFFSET, v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn fields() {
        let mut b = [0u8; 8];
        let mut u = UdpPacket::new_checked(&mut b[..]).unwrap();
        u.set_src_port(4500);
        u.set_dst_port(4501);
        u.set_len(8);
        u.set_checksum(0xbeef);
        assert_eq!(b, [0x11, 0x94, 0x11, 0x95, 0, 8, 0xbe, 0xef]);
        assert!(UdpPacket::new_checked(&b[..7]).is_err());
    }
}
