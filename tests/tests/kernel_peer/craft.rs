//! Plaintext packets with correct checksums (the guest's kernel checks them when forwarding)
//! and the IP header fields the interop tests vary; the transport part is
//! `xfrm_tests::packet::l4`.

use std::net::IpAddr;

pub use xfrm_tests::packet::checksum;
use xfrm_tests::packet::{l4, IPPROTO_ICMP, IPPROTO_ICMPV6};

pub const UDP: u8 = xfrm_tests::packet::IPPROTO_UDP;
pub const TCP: u8 = xfrm_tests::packet::IPPROTO_TCP;
/// ICMP echo request (ICMPv6 over IPv6).
pub const ICMP: u8 = IPPROTO_ICMP;

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

/// A whole packet. UDP/TCP: `a`, `b` are the ports; ICMP: an echo request (ICMPv6 over IPv6).
pub fn packet(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    a: u16,
    b: u16,
    payload: &[u8],
    o: IpOpts,
) -> Vec<u8> {
    let (proto, a, b) = match (proto, src.is_ipv6()) {
        (IPPROTO_ICMP, false) => (IPPROTO_ICMP, 8, 0),
        (IPPROTO_ICMP, true) => (IPPROTO_ICMPV6, 128, 0),
        _ => (proto, a, b),
    };
    ip(src, dst, proto, &l4(src, dst, proto, a, b, payload), o)
}

/// Deterministic payload bytes.
pub fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}
