//! ICMP (RFC 792) and ICMPv6 (RFC 4443): type and code, which Linux's flowi carries in the
//! port fields for the selectors, and the checksum offset.

use super::{be16, put16, put32};

pub const HEADER_LEN: usize = 4;
pub const CHECKSUM_OFFSET: usize = 2;
/// An error message's header: type, code, checksum and the 32-bit rest of the header
/// (RFC 1191's next-hop MTU, RFC 4443's MTU of "packet too big").
pub const ERROR_HEADER_LEN: usize = 8;

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

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[0] = v;
    }
    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[1] = v;
    }
    pub fn set_checksum(&mut self, v: u16) {
        put16(self.buffer.as_mut(), CHECKSUM_OFFSET, v)
    }
}

/// Writes an error message's header into `b` (at least [`ERROR_HEADER_LEN`] bytes) with a
/// zero checksum, for the caller to sum what follows with it.
pub fn emit_error_header(b: &mut [u8], msg_type: u8, code: u8, rest: u32) {
    let mut p = IcmpPacket::new_unchecked(&mut *b);
    p.set_msg_type(msg_type);
    p.set_msg_code(code);
    p.set_checksum(0);
    put32(b, HEADER_LEN, rest);
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

    #[test]
    fn error_header() {
        let mut b = [0xaau8; 8];
        emit_error_header(&mut b, 3, 4, 1400);
        assert_eq!(b, [3, 4, 0, 0, 0, 0, 0x05, 0x78]);
        IcmpPacket::new_unchecked(&mut b[..]).set_checksum(0x1234);
        assert_eq!(IcmpPacket::new_checked(&b[..]).unwrap().checksum(), 0x1234);
    }
}
