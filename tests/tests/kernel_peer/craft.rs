//! Plaintext packets with correct checksums (the guest's kernel checks them when forwarding).

use std::net::IpAddr;

pub const UDP: u8 = 17;
pub const TCP: u8 = 6;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// The IP header fields a test varies.
#[derive(Clone, Copy, Debug)]
pub struct IpOpts {
    /// IPv4 TOS / IPv6 traffic class (DSCP and ECN).
    pub tos: u8,
    /// IPv4 TTL / IPv6 hop limit.
    pub ttl: u8,
    /// IPv4 DF.
    pub df: bool,
    /// IPv4 identification.
    pub id: u16,
    /// IPv6 flow label (20 bits).
    pub flow: u32,
}

impl Default for IpOpts {
    fn default() -> Self {
        IpOpts {
            tos: 0,
            ttl: 64,
            df: true,
            id: 1,
            flow: 0,
        }
    }
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = chunks.remainder() {
        acc += u32::from(*b) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(data, 0))
}

fn pseudo(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut acc = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            acc = sum16(&s.octets(), acc);
            acc = sum16(&d.octets(), acc);
        }
        _ => panic!("mixed address families"),
    }
    acc + u32::from(proto) + len as u32
}

/// An L4 segment with its checksum: UDP/TCP (ports), ICMP/ICMPv6 echo request (id, seq).
pub fn l4(src: IpAddr, dst: IpAddr, proto: u8, a: u16, b: u16, payload: &[u8]) -> Vec<u8> {
    let mut s = match proto {
        UDP => {
            let mut h = Vec::with_capacity(8 + payload.len());
            h.extend_from_slice(&a.to_be_bytes());
            h.extend_from_slice(&b.to_be_bytes());
            h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0, 0]);
            h
        }
        TCP => {
            let mut h = Vec::with_capacity(20 + payload.len());
            h.extend_from_slice(&a.to_be_bytes());
            h.extend_from_slice(&b.to_be_bytes());
            h.extend_from_slice(&0x1000_0000u32.to_be_bytes()); // seq
            h.extend_from_slice(&0u32.to_be_bytes()); // ack
            h.extend_from_slice(&[0x50, 0x18]); // data offset 5, PSH|ACK
            h.extend_from_slice(&0xffffu16.to_be_bytes()); // window
            h.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
            h
        }
        ICMP | ICMPV6 => {
            let t = if proto == ICMP { 8 } else { 128 };
            let mut h = vec![t, 0, 0, 0];
            h.extend_from_slice(&a.to_be_bytes());
            h.extend_from_slice(&b.to_be_bytes());
            h
        }
        p => panic!("l4: protocol {p}"),
    };
    s.extend_from_slice(payload);
    let c = match proto {
        ICMP => checksum(&s),
        _ => fold(sum16(&s, pseudo(src, dst, proto, s.len()))),
    };
    // UDP: a computed 0 is sent as 0xffff (RFC 768)
    let c = if proto == UDP && c == 0 { 0xffff } else { c };
    let at = match proto {
        UDP => 6,
        TCP => 16,
        _ => 2,
    };
    s[at..at + 2].copy_from_slice(&c.to_be_bytes());
    s
}

/// An IPv4 or IPv6 packet around `l4` (no options, no extension headers).
pub fn ip(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8], o: IpOpts) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0x45, o.tos];
            h.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            h.extend_from_slice(&o.id.to_be_bytes());
            h.extend_from_slice(&(if o.df { 0x4000u16 } else { 0 }).to_be_bytes());
            h.extend_from_slice(&[o.ttl, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h.extend_from_slice(l4);
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let first = 6u32 << 28 | u32::from(o.tos) << 20 | (o.flow & 0xf_ffff);
            let mut h = first.to_be_bytes().to_vec();
            h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            h.extend_from_slice(&[proto, o.ttl]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h.extend_from_slice(l4);
            h
        }
        _ => panic!("mixed address families"),
    }
}

/// A whole packet: `ip(…, l4(…), …)`.
pub fn packet(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    a: u16,
    b: u16,
    payload: &[u8],
    o: IpOpts,
) -> Vec<u8> {
    let proto = if proto == ICMP && src.is_ipv6() {
        ICMPV6
    } else {
        proto
    };
    ip(src, dst, proto, &l4(src, dst, proto, a, b, payload), o)
}

/// Deterministic payload bytes.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
