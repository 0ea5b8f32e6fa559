//! Crafting test frames: Ethernet (+802.1Q), IPv4/IPv6 (+extension headers, fragments),
//! UDP/TCP/ICMP/ICMPv6, ARP; checksums computed so the kernel accepts them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_GRE: u8 = 47;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_SCTP: u8 = 132;

/// RFC 1071 ones' complement sum, folded, not inverted.
pub fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u32::from(*b) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

pub fn checksum(data: &[u8]) -> u16 {
    !(sum16(data, 0) as u16)
}

/// The pseudo-header sum for a transport checksum (folded, not inverted).
pub fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut ph = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ph.extend(s.octets());
            ph.extend(d.octets());
            ph.extend([0, proto]);
            ph.extend((len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ph.extend(s.octets());
            ph.extend(d.octets());
            ph.extend((len as u32).to_be_bytes());
            ph.extend([0, 0, 0, proto]);
        }
        _ => panic!("pseudo header: mixed families"),
    }
    sum16(&ph, 0)
}

/// Does the transport checksum of `l4` (UDP/TCP/ICMPv6) verify?
pub fn l4_checksum_ok(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> bool {
    sum16(l4, pseudo_header_sum(src, dst, proto, l4.len())) == 0xffff
}

/// What CHECKSUM_PARTIAL leaves in a UDP/TCP checksum field: the folded pseudo-header sum,
/// not inverted, the payload not summed (the NIC, or software before the wire, finishes it).
pub fn partial_checksum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u16 {
    pseudo_header_sum(src, dst, proto, len) as u16
}

/// A transport header + payload with its checksum filled in (checksum offset per protocol).
pub fn l4(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    let csum_at = match proto {
        IPPROTO_UDP => {
            b.extend(sport.to_be_bytes());
            b.extend(dport.to_be_bytes());
            b.extend(((8 + payload.len()) as u16).to_be_bytes());
            b.extend([0, 0]);
            Some(6)
        }
        IPPROTO_TCP => {
            b.extend(sport.to_be_bytes());
            b.extend(dport.to_be_bytes());
            b.extend(1u32.to_be_bytes()); // seq
            b.extend(0u32.to_be_bytes()); // ack
            b.extend([0x50, 0x02]); // data offset 5, SYN
            b.extend(64240u16.to_be_bytes());
            b.extend([0, 0, 0, 0]); // checksum, urgent
            Some(16)
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // sport = type, dport = code (as flowi); then id/seq.
            b.extend([sport as u8, dport as u8, 0, 0, 0x12, 0x34, 0, 1]);
            Some(2)
        }
        IPPROTO_SCTP => {
            b.extend(sport.to_be_bytes());
            b.extend(dport.to_be_bytes());
            b.extend([0; 8]); // vtag, checksum (CRC32c: the classifier never checks it)
            None
        }
        _ => None,
    };
    b.extend(payload);
    if let Some(at) = csum_at {
        let c = if proto == IPPROTO_ICMP {
            checksum(&b)
        } else {
            !(sum16(&b, pseudo_header_sum(src, dst, proto, b.len())) as u16)
        };
        // UDP: 0 means "no checksum"; send 0xffff instead.
        let c = if proto == IPPROTO_UDP && c == 0 {
            0xffff
        } else {
            c
        };
        b[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    b
}

/// IPv4 header (no options) + payload. `frag` is the flags/fragment-offset word.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend(((20 + payload.len()) as u16).to_be_bytes());
    h.extend([0x12, 0x34]);
    h.extend(frag.to_be_bytes());
    h.extend([64, proto, 0, 0]);
    h.extend(src.octets());
    h.extend(dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend(payload);
    h
}

/// IPv6 header + extension headers (each 8 bytes, by type: 0 hop-by-hop, 43 routing,
/// 60 destination options, 44 fragment with `frag_offset`) + payload of protocol `proto`.
pub fn ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    proto: u8,
    ext: &[u8],
    frag_offset: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut exts = Vec::new();
    for (i, &t) in ext.iter().enumerate() {
        let next = ext.get(i + 1).copied().unwrap_or(proto);
        match t {
            44 => {
                exts.extend([next, 0]);
                exts.extend((frag_offset << 3).to_be_bytes());
                exts.extend(0x1234_5678u32.to_be_bytes());
            }
            // Routing type 0 would be refused by a host; the classifier only walks it.
            43 => exts.extend([next, 0, 4, 0, 0, 0, 0, 0]),
            _ => exts.extend([next, 0, 1, 4, 0, 0, 0, 0]), // PadN
        }
    }
    let first = ext.first().copied().unwrap_or(proto);
    let mut h = vec![0x60, 0, 0, 0];
    h.extend(((exts.len() + payload.len()) as u16).to_be_bytes());
    h.extend([first, 64]);
    h.extend(src.octets());
    h.extend(dst.octets());
    h.extend(exts);
    h.extend(payload);
    h
}

pub fn ethernet(
    dst: [u8; 6],
    src: [u8; 6],
    vlan: Option<u16>,
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + payload.len());
    f.extend(dst);
    f.extend(src);
    if let Some(tag) = vlan {
        f.extend(ETH_P_8021Q.to_be_bytes());
        f.extend(tag.to_be_bytes());
    }
    f.extend(ethertype.to_be_bytes());
    f.extend(payload);
    f
}

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];

/// A whole frame for a flow, the common case of the classifier tests.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub vlan: Option<u16>,
    /// IPv6 extension header types to insert (see [`ipv6`]).
    pub v6_ext: Vec<u8>,
    /// Fragment offset in 8-byte units (IPv4: also sets nothing else; IPv6: needs 44 in
    /// `v6_ext`). Non-zero = a non-first fragment: no transport header is written.
    pub frag_offset: u16,
    pub payload: Vec<u8>,
}

impl FrameSpec {
    pub fn new(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> Self {
        Self {
            src: src.parse().expect("src address"),
            dst: dst.parse().expect("dst address"),
            proto,
            sport,
            dport,
            vlan: None,
            v6_ext: Vec::new(),
            frag_offset: 0,
            payload: b"xfrm-ebpf test payload".to_vec(),
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let l4b = if self.frag_offset != 0 {
            self.payload.clone()
        } else {
            l4(
                self.src,
                self.dst,
                self.proto,
                self.sport,
                self.dport,
                &self.payload,
            )
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let frag = self.frag_offset & 0x1fff;
                ethernet(
                    MAC_B,
                    MAC_A,
                    self.vlan,
                    ETH_P_IP,
                    &ipv4(s, d, self.proto, frag, &l4b),
                )
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => ethernet(
                MAC_B,
                MAC_A,
                self.vlan,
                ETH_P_IPV6,
                &ipv6(s, d, self.proto, &self.v6_ext, self.frag_offset, &l4b),
            ),
            _ => panic!("FrameSpec: mixed families"),
        }
    }
}

/// An ARP request for `target` from `sender`.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend(MAC_A);
    a.extend(sender.octets());
    a.extend([0; 6]);
    a.extend(target.octets());
    ethernet([0xff; 6], MAC_A, None, ETH_P_ARP, &a)
}
