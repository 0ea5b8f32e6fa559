//! IPv6 header (RFC 8200) and the extension-header walk the output path needs: where the
//! upper-layer header starts, and where ESP/AH go in transport mode (ip6_find_1stfragopt).

use std::net::Ipv6Addr;

use super::{be16, proto, put16, put32, Result, WireError};

pub const HEADER_LEN: usize = 40;
pub const NEXT_HEADER_OFFSET: usize = 6;
/// Home Address destination option (RFC 6275), which ip6_find_1stfragopt keeps in front.
pub const TLV_HAO: u8 = 0xc9;

mod field {
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

#[derive(Debug, Clone)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }
    /// Version 6 and `40 + payload_len` inside the buffer. Jumbograms (payload length 0 with
    /// data behind) are not supported here and count as malformed.
    pub fn check_len(&self) -> Result<()> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if b[0] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        let total = HEADER_LEN + usize::from(self.payload_len());
        if b.len() < total {
            return Err(WireError::Truncated);
        }
        if self.payload_len() == 0 && self.next_header() == proto::HOPOPTS {
            return Err(WireError::Malformed);
        }
        Ok(())
    }
    pub fn into_inner(self) -> T {
        self.buffer
    }
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }
    /// The traffic class (DSCP << 2 | ECN).
    pub fn traffic_class(&self) -> u8 {
        let b = self.buffer.as_ref();
        (b[0] << 4) | (b[1] >> 4)
    }
    pub fn flow_label(&self) -> u32 {
        let b = self.buffer.as_ref();
        (u32::from(b[1] & 0x0f) << 16) | (u32::from(b[2]) << 8) | u32::from(b[3])
    }
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), field::PAYLOAD_LEN)
    }
    /// Length of the packet as the header says (40 + payload length).
    pub fn total_len(&self) -> usize {
        HEADER_LEN + usize::from(self.payload_len())
    }
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }
    pub fn src_addr(&self) -> Ipv6Addr {
        addr_at(self.buffer.as_ref(), field::SRC)
    }
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr_at(self.buffer.as_ref(), field::DST)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Writes version 6, traffic class and flow label (the first four bytes).
    pub fn set_version_tc_flow(&mut self, tc: u8, flow: u32) {
        let v = (6u32 << 28) | (u32::from(tc) << 20) | (flow & 0x000f_ffff);
        self.buffer.as_mut()[0..4].copy_from_slice(&v.to_be_bytes());
    }
    pub fn set_traffic_class(&mut self, tc: u8) {
        let flow = self.flow_label();
        self.set_version_tc_flow(tc, flow);
    }
    pub fn set_flow_label(&mut self, flow: u32) {
        let tc = self.traffic_class();
        self.set_version_tc_flow(tc, flow);
    }
    pub fn set_payload_len(&mut self, len: u16) {
        put16(self.buffer.as_mut(), field::PAYLOAD_LEN, len)
    }
    pub fn set_next_header(&mut self, nh: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = nh;
    }
    pub fn set_hop_limit(&mut self, h: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = h;
    }
    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC..field::SRC + 16].copy_from_slice(&a.octets());
    }
    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST..field::DST + 16].copy_from_slice(&a.octets());
    }
}

pub(crate) fn addr_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(o)
}

/// Is `nh` an extension header this walk steps over?
pub fn is_ext_header(nh: u8) -> bool {
    matches!(
        nh,
        proto::HOPOPTS | proto::ROUTING | proto::DSTOPTS | proto::FRAGMENT | proto::AH
    )
}

/// Length of the extension header at `at` whose type is `nh` (ipv6_optlen, AH's own unit).
pub fn ext_header_len(pkt: &[u8], at: usize, nh: u8) -> Result<usize> {
    if at + 2 > pkt.len() {
        return Err(WireError::Truncated);
    }
    let len = match nh {
        proto::FRAGMENT => 8,
        proto::AH => (usize::from(pkt[at + 1]) + 2) * 4,
        _ => (usize::from(pkt[at + 1]) + 1) * 8,
    };
    if at + len > pkt.len() {
        return Err(WireError::Truncated);
    }
    Ok(len)
}

/// Where the upper layer starts in an IPv6 packet (`pkt` cut to its total length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// The upper-layer protocol (or the last header type when the walk stopped).
    pub proto: u8,
    /// Offset of that header from the start of the IPv6 header.
    pub offset: usize,
    /// A fragment header with a non-zero offset was met: no upper-layer header here.
    pub later_fragment: bool,
    /// A fragment header was met (first fragment or later).
    pub fragment: bool,
}

/// The fragment extension header (RFC 8200 section 4.5): next header, reserved, the
/// offset in 8-byte units with the M flag, identification.
pub const FRAG_HEADER_LEN: usize = 8;
const FRAG_OFFSET_MASK: u16 = 0xfff8;

/// Writes a fragment header into `b` ([`FRAG_HEADER_LEN`] bytes): `offset` in bytes (a
/// multiple of 8), `more`: not the last fragment.
pub fn emit_fragment_header(b: &mut [u8], next: u8, offset: usize, more: bool, ident: u32) {
    b[0] = next;
    b[1] = 0;
    put16(b, 2, (offset as u16 & FRAG_OFFSET_MASK) | u16::from(more));
    put32(b, 4, ident);
}

/// Walks hop-by-hop, routing, destination options, fragment and AH headers to the upper
/// layer (ESP ends the walk: its content is opaque).
pub fn upper_layer(pkt: &[u8]) -> Result<UpperLayer> {
    if pkt.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let mut nh = pkt[NEXT_HEADER_OFFSET];
    let mut off = HEADER_LEN;
    let mut fragment = false;
    let mut later_fragment = false;
    while is_ext_header(nh) {
        let len = ext_header_len(pkt, off, nh)?;
        if nh == proto::FRAGMENT {
            fragment = true;
            let fo = be16(pkt, off + 2) & FRAG_OFFSET_MASK;
            if fo != 0 {
                later_fragment = true;
                nh = pkt[off];
                off += len;
                break;
            }
        }
        nh = pkt[off];
        off += len;
    }
    Ok(UpperLayer {
        proto: nh,
        offset: off,
        later_fragment,
        fragment,
    })
}

/// The header after an IPv6 packet's hop-by-hop, routing and destination-options headers,
/// as the input path meets it (`pkt` cut to its total length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterOptions {
    /// Its type (FRAGMENT when a fragment header ended the walk).
    pub proto: u8,
    /// Offset of the byte that names it (the next-header field before it).
    pub proto_off: usize,
    /// Offset of the header itself.
    pub offset: usize,
}

/// Steps over hop-by-hop, routing and destination-options headers; stops at anything else,
/// a fragment header included (what follows it is not here to process).
pub fn skip_options(pkt: &[u8]) -> Result<AfterOptions> {
    if pkt.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let mut proto_off = NEXT_HEADER_OFFSET;
    let mut off = HEADER_LEN;
    while let nh @ (proto::HOPOPTS | proto::ROUTING | proto::DSTOPTS) = pkt[proto_off] {
        let n = ext_header_len(pkt, off, nh)?;
        proto_off = off;
        off += n;
    }
    Ok(AfterOptions {
        proto: pkt[proto_off],
        proto_off,
        offset: off,
    })
}

/// Where xfrm6_transport_output opens its gap: ip6_find_1stfragopt (net/ipv6/output_core.c).
/// Hop-by-hop and routing headers stay in front; destination options stay in front unless a
/// routing header came before them (or they carry a Home Address option, CONFIG_IPV6_MIP6);
/// anything else (fragment header, upper layer) starts the part that gets protected.
/// Returns (offset of the gap, offset of the next-header byte that names what follows).
pub fn find_1stfragopt(pkt: &[u8]) -> Result<(usize, usize)> {
    if pkt.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let mut offset = HEADER_LEN;
    let mut prevhdr = NEXT_HEADER_OFFSET;
    let mut found_rhdr = false;
    while offset <= pkt.len() {
        match pkt[prevhdr] {
            proto::HOPOPTS => {}
            proto::ROUTING => found_rhdr = true,
            proto::DSTOPTS => {
                if !has_tlv(pkt, offset, TLV_HAO)? && found_rhdr {
                    return Ok((offset, prevhdr));
                }
            }
            _ => return Ok((offset, prevhdr)),
        }
        if offset + 2 > pkt.len() {
            return Err(WireError::Truncated);
        }
        let len = (usize::from(pkt[offset + 1]) + 1) * 8;
        prevhdr = offset;
        offset += len;
        if offset > 65535 {
            return Err(WireError::Malformed);
        }
    }
    Err(WireError::Truncated)
}

/// ipv6_find_tlv: does the options header at `at` carry an option of type `ty`?
pub fn has_tlv(pkt: &[u8], at: usize, ty: u8) -> Result<bool> {
    let len = ext_header_len(pkt, at, proto::DSTOPTS)?;
    let opts = &pkt[at + 2..at + len];
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => i += 1, // Pad1
            t => {
                if i + 1 >= opts.len() {
                    return Err(WireError::Malformed);
                }
                if t == ty {
                    return Ok(true);
                }
                i += 2 + usize::from(opts[i + 1]);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(nh: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; 40];
        {
            let mut p = Ipv6Packet::new_unchecked(&mut v[..]);
            p.set_version_tc_flow(0xb9, 0x12345);
            p.set_payload_len(payload.len() as u16);
            p.set_next_header(nh);
            p.set_hop_limit(64);
            p.set_src_addr("fd00::1".parse().unwrap());
            p.set_dst_addr("fd00::2".parse().unwrap());
        }
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn fields() {
        let v = base(proto::UDP, &[0; 8]);
        let p = Ipv6Packet::new_checked(&v[..]).unwrap();
        assert_eq!(p.traffic_class(), 0xb9);
        assert_eq!(p.flow_label(), 0x12345);
        assert_eq!(p.payload_len(), 8);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.dst_addr(), "fd00::2".parse::<Ipv6Addr>().unwrap());
        assert!(Ipv6Packet::new_checked(&v[..45]).is_err());
    }

    /// hop-by-hop, routing, destination options, fragment, UDP.
    fn chain() -> Vec<u8> {
        let mut pl = Vec::new();
        pl.extend_from_slice(&[proto::ROUTING, 0, 1, 4, 0, 0, 0, 0]); // HBH: PadN
        pl.extend_from_slice(&[proto::DSTOPTS, 0, 0, 0, 0, 0, 0, 0]); // RH type 0, 0 segs
        pl.extend_from_slice(&[proto::FRAGMENT, 0, 1, 4, 0, 0, 0, 0]); // DSTOPTS after RH
        pl.extend_from_slice(&[proto::UDP, 0, 0, 0, 0, 0, 0, 7]); // fragment, offset 0
        pl.extend_from_slice(&[0x12, 0x34, 0x00, 0x35, 0, 8, 0, 0]);
        base(proto::HOPOPTS, &pl)
    }

    #[test]
    fn walk_to_upper_layer() {
        let v = chain();
        let ul = upper_layer(&v).unwrap();
        assert_eq!(ul.proto, proto::UDP);
        assert_eq!(ul.offset, 72);
        assert!(ul.fragment && !ul.later_fragment);
        let mut later = v.clone();
        later[64 + 3] = 0x08; // fragment offset 1
        let ul = upper_layer(&later).unwrap();
        assert!(ul.later_fragment);
        assert!(upper_layer(&v[..60]).is_err());
    }

    #[test]
    fn skip_options_stops_at_the_fragment_header() {
        let v = chain();
        let a = skip_options(&v).unwrap();
        assert_eq!((a.proto, a.proto_off, a.offset), (proto::FRAGMENT, 56, 64));
        let v = base(proto::UDP, &[0; 8]);
        let a = skip_options(&v).unwrap();
        assert_eq!((a.proto, a.proto_off, a.offset), (proto::UDP, 6, 40));
        assert!(skip_options(&chain()[..50]).is_err());
    }

    #[test]
    fn esp_goes_before_dstopts_that_follow_a_routing_header() {
        let v = chain();
        // HBH (40..48) and RH (48..56) stay in front; the DSTOPTS after the RH does not.
        assert_eq!(find_1stfragopt(&v).unwrap(), (56, 48));
        // Without extension headers: right after the base header.
        let plain = base(proto::TCP, &[0; 20]);
        assert_eq!(find_1stfragopt(&plain).unwrap(), (40, 6));
        // A lone DSTOPTS (no routing header before it) stays in front.
        let lone = base(
            proto::DSTOPTS,
            &[proto::UDP, 0, 1, 4, 0, 0, 0, 0, 1, 2, 0, 8, 0, 0, 0, 0],
        );
        assert_eq!(find_1stfragopt(&lone).unwrap(), (48, 40));
        // A fragment header starts the protected part.
        let frag = base(proto::FRAGMENT, &[proto::UDP, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(find_1stfragopt(&frag).unwrap(), (40, 6));
        // Truncated chain.
        let bad = base(proto::HOPOPTS, &[proto::UDP, 3]);
        assert!(find_1stfragopt(&bad).is_err());
    }
}
