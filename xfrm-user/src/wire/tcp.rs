//! TCP header (RFC 9293): the fields the selectors and the checksum code need.

use super::{be16, Result, WireError};

pub const HEADER_LEN: usize = 20;
pub const CHECKSUM_OFFSET: usize = 16;

#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }
    /// The fixed header and the data offset inside the buffer.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if b.len() < hl {
            return Err(WireError::Truncated);
        }
        Ok(())
    }
    pub fn src_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 0)
    }
    pub fn dst_port(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[12] >> 4) * 4
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), CHECKSUM_OFFSET)
    }
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[13]
    }
    /// The MSS option's offset in the header and its value, if the segment carries one.
    pub fn mss_option(&self) -> Option<(usize, u16)> {
        let b = self.buffer.as_ref();
        let end = self.header_len().min(b.len());
        let mut i = HEADER_LEN;
        while i < end {
            match b[i] {
                OPT_END => return None,
                OPT_NOP => i += 1,
                kind => {
                    let len = usize::from(*b.get(i + 1)?);
                    if len < 2 || i + len > end {
                        return None; // malformed options: leave them alone
                    }
                    if kind == OPT_MSS && len == 4 {
                        return Some((i + 2, be16(b, i + 2)));
                    }
                    i += len;
                }
            }
        }
        None
    }
}

pub const FLAG_SYN: u8 = 0x02;
const OPT_END: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// What TCPMSS --clamp-mss-to-pmtu does: a SYN announcing an MSS above `max` announces
    /// `max` instead (checksum updated incrementally, RFC 1624). True if it changed. The
    /// caller has checked the header (`new_checked`).
    pub fn clamp_mss(&mut self, max: u16) -> bool {
        if self.flags() & FLAG_SYN == 0 {
            return false;
        }
        let Some((at, mss)) = self.mss_option() else {
            return false;
        };
        if mss <= max {
            return false;
        }
        // The option may sit at an odd offset (after one NOP): update the checksum over the
        // aligned words that cover it, before and after.
        let first = at & !1;
        let words = (at + 2 - first).div_ceil(2);
        let mut csum = self.checksum();
        let b = self.buffer.as_mut();
        if first + 2 * words > b.len() {
            return false;
        }
        let mut old = [0u16; 2];
        for (w, o) in old.iter_mut().enumerate().take(words) {
            *o = be16(b, first + 2 * w);
        }
        debug_assert_eq!(be16(b, at), mss);
        b[at..at + 2].copy_from_slice(&max.to_be_bytes());
        for (w, &o) in old.iter().enumerate().take(words) {
            csum = super::checksum::update16(csum, o, be16(b, first + 2 * w));
        }
        b[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 2].copy_from_slice(&csum.to_be_bytes());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn fields() {
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&[0x30, 0x39, 0x00, 0x50]);
        b[12] = 0x60;
        let t = TcpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(
            (t.src_port(), t.dst_port(), t.header_len()),
            (12345, 80, 24)
        );
        assert_eq!(
            TcpPacket::new_checked(&b[..22]).unwrap_err(),
            WireError::Truncated
        );
        b[12] = 0x40;
        assert_eq!(
            TcpPacket::new_checked(&b[..]).unwrap_err(),
            WireError::Malformed
        );
    }

    /// A SYN of 10.0.0.1:1000 → 10.0.0.2:80 with options NOP, MSS `mss`, NOP, NOP, and a
    /// correct checksum.
    fn syn(mss: u16, flags: u8) -> Vec<u8> {
        use crate::wire::checksum;
        let mut t = vec![0u8; 28];
        t[0..4].copy_from_slice(&[0x03, 0xe8, 0x00, 0x50]);
        t[12] = 0x70;
        t[13] = flags;
        let [hi, lo] = mss.to_be_bytes();
        t[20..28].copy_from_slice(&[1, 2, 4, hi, lo, 1, 1, 0]);
        let ph = checksum::pseudo_header_v4(
            [10, 0, 0, 1].into(),
            [10, 0, 0, 2].into(),
            6,
            t.len() as u32,
        );
        let c = !checksum::combine(&[ph, checksum::data(&t)]);
        t[16..18].copy_from_slice(&c.to_be_bytes());
        t
    }

    fn checksum_ok(t: &[u8]) -> bool {
        use crate::wire::checksum;
        let ph = checksum::pseudo_header_v4(
            [10, 0, 0, 1].into(),
            [10, 0, 0, 2].into(),
            6,
            t.len() as u32,
        );
        checksum::combine(&[ph, checksum::data(t)]) == 0xffff
    }

    #[test]
    fn mss_is_clamped_on_syn_only_and_checksum_stays_right() {
        let mut t = syn(1460, FLAG_SYN);
        assert!(checksum_ok(&t));
        let mut p = TcpPacket::new_checked(&mut t[..]).unwrap();
        assert_eq!(p.mss_option(), Some((23, 1460)));
        assert!(p.clamp_mss(1380));
        assert_eq!(p.mss_option(), Some((23, 1380)));
        assert!(!p.clamp_mss(1400), "already below");
        assert!(checksum_ok(&t));
        // The usual layout (MSS first, aligned) too.
        let mut al = syn(1460, FLAG_SYN);
        al[20..28].copy_from_slice(&[2, 4, 0x05, 0xb4, 1, 1, 1, 0]);
        let c = {
            use crate::wire::checksum;
            al[16..18].copy_from_slice(&[0, 0]);
            let ph = checksum::pseudo_header_v4(
                [10, 0, 0, 1].into(),
                [10, 0, 0, 2].into(),
                6,
                al.len() as u32,
            );
            !checksum::combine(&[ph, checksum::data(&al)])
        };
        al[16..18].copy_from_slice(&c.to_be_bytes());
        let mut p = TcpPacket::new_checked(&mut al[..]).unwrap();
        assert_eq!(p.mss_option(), Some((22, 1460)));
        assert!(p.clamp_mss(1200));
        assert!(checksum_ok(&al));
        // Not a SYN: untouched.
        let mut a = syn(1460, 0x10);
        assert!(!TcpPacket::new_checked(&mut a[..]).unwrap().clamp_mss(1380));
        assert_eq!(a, syn(1460, 0x10));
        // Malformed option length: untouched, no panic.
        let mut m = syn(1460, FLAG_SYN);
        m[21] = 40;
        let before = m.clone();
        assert!(!TcpPacket::new_checked(&mut m[..]).unwrap().clamp_mss(1380));
        assert_eq!(m, before);
    }
}
