//! ICMP (RFC 792) and ICMPv6 (RFC 4443): type and code, which Linux's flowi carries in the
//! port fields for the selectors, and the checksum offset.

use super::be16;

pub const HEADER_LEN: usize = 4;
pub const CHECKSUM_OFFSET: usize = 2;

fixed_header_view!(IcmpPacket, HEADER_LEN);

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[1]
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), CHECKSUM_OFFSET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn type_code() {
        let b = [8u8, 0, 0xf7, 0xff];
        let p = IcmpPacket::new_checked(&b[..]).unwrap();
        assert_eq!((p.msg_type(), p.msg_code(), p.checksum()), (8, 0, 0xf7ff));
        assert!(IcmpPacket::new_checked(&b[..3]).is_err());
    }
}
