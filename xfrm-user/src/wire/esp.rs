//! ESP header (RFC 4303 §2): SPI and sequence number; the transform's IV follows (8 bytes
//! for the AEADs and CTR, 16 for CBC, none for NULL: `SaProps::iv_len`).

use super::{be32, put32};

pub const HEADER_LEN: usize = 8;
/// The explicit IV of the AEAD transforms (AES-GCM, AES-GMAC, ChaCha20-Poly1305).
pub const IV_LEN: usize = 8;

fixed_header_view!(EspPacket, HEADER_LEN);

impl<T: AsRef<[u8]>> EspPacket<T> {
    pub fn spi(&self) -> u32 {
        be32(self.buffer.as_ref(), 0)
    }
    pub fn seq(&self) -> u32 {
        be32(self.buffer.as_ref(), 4)
    }
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EspPacket<T> {
    pub fn set_spi(&mut self, v: u32) {
        put32(self.buffer.as_mut(), 0, v)
    }
    pub fn set_seq(&mut self, v: u32) {
        put32(self.buffer.as_mut(), 4, v)
    }
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn fields() {
        let mut b = [0u8; 12];
        let mut e = EspPacket::new_checked(&mut b[..]).unwrap();
        e.set_spi(0x1000);
        e.set_seq(7);
        e.payload_mut()[0] = 9;
        assert_eq!(b, [0, 0, 0x10, 0, 0, 0, 0, 7, 9, 0, 0, 0]);
        let e = EspPacket::new_checked(&b[..]).unwrap();
        assert_eq!((e.spi(), e.seq(), e.payload().len()), (0x1000, 7, 4));
        assert!(EspPacket::new_checked(&b[..7]).is_err());
    }
}
