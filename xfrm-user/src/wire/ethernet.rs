//! Ethernet II (+ 802.1Q / 802.1ad tags), and the helper the datapath and the pcap mode use
//! to take the L2 header off before the transform and put it back afterwards (the EtherType
//! may change: 4-in-6 tunnels).

use super::{be16, put16, Result, WireError};
use crate::frame::{Frame, FrameError};

pub const HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// Tags kept by `L2Header` (QinQ: an outer 802.1ad and an inner 802.1Q tag).
pub const MAX_VLAN_TAGS: usize = 2;
const MAX_L2: usize = 12 + 4 * MAX_VLAN_TAGS + 2;

#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    pub fn new_checked(buffer: T) -> Result<Self> {
        let f = Self::new_unchecked(buffer);
        if f.buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(f)
    }
    pub fn dst_addr(&self) -> [u8; 6] {
        let mut a = [0; 6];
        a.copy_from_slice(&self.buffer.as_ref()[0..6]);
        a
    }
    pub fn src_addr(&self) -> [u8; 6] {
        let mut a = [0; 6];
        a.copy_from_slice(&self.buffer.as_ref()[6..12]);
        a
    }
    /// The EtherType right after the addresses (0x8100 when tagged).
    pub fn ethertype(&self) -> u16 {
        be16(self.buffer.as_ref(), 12)
    }
    /// The EtherType after any VLAN tags, and the offset of the L3 header.
    pub fn inner_ethertype(&self) -> Result<(u16, usize)> {
        let b = self.buffer.as_ref();
        let mut off = 12;
        let mut tags = 0;
        loop {
            if b.len() < off + 2 {
                return Err(WireError::Truncated);
            }
            let et = be16(b, off);
            if et == ETHERTYPE_VLAN || et == ETHERTYPE_QINQ {
                tags += 1;
                if tags > MAX_VLAN_TAGS {
                    return Err(WireError::Malformed);
                }
                off += 4;
                continue;
            }
            return Ok((et, off + 2));
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, a: [u8; 6]) {
        self.buffer.as_mut()[0..6].copy_from_slice(&a);
    }
    pub fn set_src_addr(&mut self, a: [u8; 6]) {
        self.buffer.as_mut()[6..12].copy_from_slice(&a);
    }
    pub fn set_ethertype(&mut self, v: u16) {
        put16(self.buffer.as_mut(), 12, v)
    }
}

/// An untagged Ethernet II header by value: what the worker reads of a received frame and
/// writes in front of the packets it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    pub dst_addr: [u8; 6],
    pub src_addr: [u8; 6],
    pub ethertype: u16,
}

impl EthernetRepr {
    /// The header from `dst` to `src` for the IP packet `ip` (its EtherType by the version:
    /// IPv4 for a version-4 header, IPv6 otherwise).
    pub fn for_ip(dst_addr: [u8; 6], src_addr: [u8; 6], ip: &[u8]) -> Self {
        let ethertype = match super::ip_version(ip) {
            Some(4) => ETHERTYPE_IPV4,
            _ => ETHERTYPE_IPV6,
        };
        Self {
            dst_addr,
            src_addr,
            ethertype,
        }
    }
    /// The first 14 bytes of a checked frame (the EtherType as it stands: 0x8100 when tagged).
    pub fn parse<T: AsRef<[u8]>>(f: &EthernetFrame<T>) -> Self {
        Self {
            dst_addr: f.dst_addr(),
            src_addr: f.src_addr(),
            ethertype: f.ethertype(),
        }
    }
    /// Writes the header into the first [`HEADER_LEN`] bytes of `f` (which must hold them:
    /// `new_checked`, or a buffer of at least that length).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, f: &mut EthernetFrame<T>) {
        f.set_dst_addr(self.dst_addr);
        f.set_src_addr(self.src_addr);
        f.set_ethertype(self.ethertype);
    }
}

/// A copy of an Ethernet header with its VLAN tags, without the final EtherType.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2Header {
    bytes: [u8; MAX_L2],
    /// Length including the final EtherType.
    len: usize,
}

impl L2Header {
    /// Reads the L2 header at the start of `frame`; returns it and the L3 EtherType.
    pub fn parse(frame: &[u8]) -> Result<(Self, u16)> {
        let (et, len) = EthernetFrame::new_checked(frame)?.inner_ethertype()?;
        let mut bytes = [0; MAX_L2];
        bytes[..len].copy_from_slice(&frame[..len]);
        Ok((Self { bytes, len }, et))
    }
    /// Bytes taken by this header in a frame.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Writes the header into `out` (at least `len()` bytes) with `ethertype` last.
    pub fn write(&self, out: &mut [u8], ethertype: u16) {
        out[..self.len].copy_from_slice(&self.bytes[..self.len]);
        put16(out, self.len - 2, ethertype);
    }
}

/// Takes the L2 header off the front of `frame`: the frame then starts with the IP header.
pub fn strip(frame: &mut Frame<'_>) -> Result<(L2Header, u16)> {
    let (hdr, et) = L2Header::parse(frame.data())?;
    frame
        .pull_head(hdr.len())
        .map_err(|_| WireError::Truncated)?;
    Ok((hdr, et))
}

/// Puts `hdr` back in front of the IP packet in `frame`, with the EtherType of its version.
pub fn push(frame: &mut Frame<'_>, hdr: &L2Header) -> core::result::Result<(), FrameError> {
    let et = match frame.data().first().map(|b| b >> 4) {
        Some(6) => ETHERTYPE_IPV6,
        _ => ETHERTYPE_IPV4,
    };
    let d = frame.push_head(hdr.len())?;
    hdr.write(d, et);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::OwnedFrame;

    #[test]
    fn strip_and_push_with_vlan() {
        let mut pkt = vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        pkt.extend_from_slice(&[0x81, 0x00, 0x00, 0x64, 0x08, 0x00]);
        pkt.extend_from_slice(&[0x45, 0, 0, 20]);
        let mut f = OwnedFrame::from_packet(&pkt);
        let hdr = f.with_frame(|fr| {
            let (h, et) = strip(fr).unwrap();
            assert_eq!(et, ETHERTYPE_IPV4);
            assert_eq!(fr.data(), &[0x45, 0, 0, 20]);
            // The packet becomes IPv6 (a 4-in-6 tunnel): the EtherType follows.
            fr.data_mut()[0] = 0x60;
            push(fr, &h).unwrap();
            h
        });
        assert_eq!(hdr.len(), 18);
        assert_eq!(&f.data()[12..18], &[0x81, 0x00, 0x00, 0x64, 0x86, 0xdd]);
        let e = EthernetFrame::new_checked(f.data()).unwrap();
        assert_eq!(e.src_addr(), [7, 8, 9, 10, 11, 12]);
        assert_eq!(e.ethertype(), ETHERTYPE_VLAN);
    }

    #[test]
    fn repr_round_trips_through_the_view() {
        let r = EthernetRepr {
            dst_addr: [2, 0, 0, 0, 0, 1],
            src_addr: [2, 0, 0, 0, 0, 2],
            ethertype: ETHERTYPE_IPV6,
        };
        let mut b = [0xaau8; 20];
        r.emit(&mut EthernetFrame::new_checked(&mut b[..]).unwrap());
        assert_eq!(
            &b[..14],
            &[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd],
            "addresses, then the EtherType in network order"
        );
        assert_eq!(&b[14..], &[0xaa; 6], "nothing written past the header");
        let f = EthernetFrame::new_checked(&b[..]).unwrap();
        assert_eq!(EthernetRepr::parse(&f), r);
        assert!(EthernetFrame::new_checked(&b[..13]).is_err());
    }

    #[test]
    fn repr_for_ip_follows_the_version() {
        let (d, s) = ([1; 6], [2; 6]);
        assert_eq!(
            EthernetRepr::for_ip(d, s, &[0x45, 0]).ethertype,
            ETHERTYPE_IPV4
        );
        assert_eq!(
            EthernetRepr::for_ip(d, s, &[0x60, 0]).ethertype,
            ETHERTYPE_IPV6
        );
        let r = EthernetRepr::for_ip(d, s, &[0x45]);
        assert_eq!((r.dst_addr, r.src_addr), (d, s));
    }

    #[test]
    fn rejects_short_and_too_many_tags() {
        assert!(L2Header::parse(&[0; 13]).is_err());
        let mut p = vec![0; 12];
        for _ in 0..3 {
            p.extend_from_slice(&[0x81, 0, 0, 1]);
        }
        p.extend_from_slice(&[0x08, 0]);
        assert_eq!(L2Header::parse(&p).unwrap_err(), WireError::Malformed);
    }
}
