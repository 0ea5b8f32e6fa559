//! IPv4 header (RFC 791) with options and header checksum.

use std::net::Ipv4Addr;

use super::{be16, checksum, put16, Result, WireError};

pub const HEADER_LEN: usize = 20;
/// Flags/fragment-offset bits (host order of the 16-bit field).
pub const FLAG_DF: u16 = 0x4000;
pub const FLAG_MF: u16 = 0x2000;
pub const FRAG_OFFSET_MASK: u16 = 0x1fff;

mod field {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}
pub use field::{CHECKSUM as CHECKSUM_OFFSET, PROTOCOL as PROTOCOL_OFFSET};

#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Version 4, IHL >= 5, the header and `total_len` inside the buffer (the buffer may be
    /// longer: Ethernet pads short frames).
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 4 {
            return Err(WireError::Malformed);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if b.len() < hl {
            return Err(WireError::Truncated);
        }
        let tl = usize::from(self.total_len());
        if tl < hl {
            return Err(WireError::Malformed);
        }
        if b.len() < tl {
            return Err(WireError::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }
    /// Header length in bytes (IHL * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }
    /// The whole TOS byte (DSCP << 2 | ECN).
    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }
    pub fn dscp(&self) -> u8 {
        self.tos() >> 2
    }
    pub fn ecn(&self) -> u8 {
        self.tos() & 0x03
    }
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::LENGTH)
    }
    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), field::IDENT)
    }
    /// The flags + fragment offset field as a whole.
    pub fn frag_field(&self) -> u16 {
        be16(self.buffer.as_ref(), field::FLG_OFF)
    }
    pub fn dont_frag(&self) -> bool {
        self.frag_field() & FLAG_DF != 0
    }
    pub fn more_frags(&self) -> bool {
        self.frag_field() & FLAG_MF != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (self.frag_field() & FRAG_OFFSET_MASK) << 3
    }
    /// True for any fragment (first, middle or last): ip_is_fragment.
    pub fn is_fragment(&self) -> bool {
        self.frag_field() & (FLAG_MF | FRAG_OFFSET_MASK) != 0
    }
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), field::CHECKSUM)
    }
    pub fn src_addr(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(b[12], b[13], b[14], b[15])
    }
    pub fn dst_addr(&self) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(b[16], b[17], b[18], b[19])
    }
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len()]
    }
    /// True when the header checksum is right.
    pub fn verify_checksum(&self) -> bool {
        checksum::data(&self.buffer.as_ref()[..self.header_len()]) == 0xffff
    }
    /// The payload as `total_len` says (Ethernet padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..usize::from(self.total_len())]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    fn b(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_version_ihl(&mut self, header_len: usize) {
        self.b()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }
    pub fn set_tos(&mut self, tos: u8) {
        self.b()[field::TOS] = tos;
    }
    pub fn set_total_len(&mut self, len: u16) {
        put16(self.b(), field::LENGTH, len)
    }
    pub fn set_ident(&mut self, id: u16) {
        put16(self.b(), field::IDENT, id)
    }
    pub fn set_frag_field(&mut self, v: u16) {
        put16(self.b(), field::FLG_OFF, v)
    }
    pub fn set_ttl(&mut self, ttl: u8) {
        self.b()[field::TTL] = ttl;
    }
    pub fn set_protocol(&mut self, p: u8) {
        self.b()[field::PROTOCOL] = p;
    }
    pub fn set_checksum(&mut self, c: u16) {
        put16(self.b(), field::CHECKSUM, c)
    }
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.b()[field::SRC..field::SRC + 4].copy_from_slice(&a.octets());
    }
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.b()[field::DST..field::DST + 4].copy_from_slice(&a.octets());
    }
    pub fn options_mut(&mut self) -> &mut [u8] {
        let hl = self.header_len();
        &mut self.b()[HEADER_LEN..hl]
    }
    /// ip_send_check: recomputes the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let h = &self.buffer.as_ref()[..hl];
        let sum = match <&[u8; HEADER_LEN]>::try_from(h) {
            Ok(h20) => checksum::ipv4_header20(h20),
            Err(_) => checksum::data(h),
        };
        self.set_checksum(!sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut v = vec![
            0x46, 0xb8, 0x00, 0x20, 0x12, 0x34, 0x40, 0x00, 0x3f, 0x11, 0x00, 0x00, 10, 0, 0, 1,
            10, 0, 0, 2, 0x94, 0x04, 0x00, 0x00, // Router Alert option
        ];
        v.extend_from_slice(&[0xaa; 8]);
        v.extend_from_slice(&[0; 6]); // Ethernet padding beyond total_len
        v
    }

    #[test]
    fn getters_and_checksum() {
        let mut buf = sample();
        let mut p = Ipv4Packet::new_checked(&mut buf[..]).unwrap();
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.dscp(), 0x2e);
        assert_eq!(p.ecn(), 0);
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.ttl(), 63);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.options(), &[0x94, 0x04, 0, 0]);
        assert_eq!(p.payload(), &[0xaa; 8]);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        p.set_ttl(1);
        assert!(!p.verify_checksum());
    }

    #[test]
    fn rejects_bad_headers() {
        let mut b = sample();
        assert_eq!(
            Ipv4Packet::new_checked(&b[..10]).unwrap_err(),
            WireError::Truncated
        );
        b[0] = 0x44; // IHL 4
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
        b[0] = 0x46;
        b[3] = 0xff; // total length beyond the buffer
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Truncated
        );
        b[3] = 0x10; // total length < header length
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
        b[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
    }
}
