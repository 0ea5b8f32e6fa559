//! The Internet checksum: RFC 1071 one's-complement sum, the IPv4/IPv6 pseudo-headers
//! (RFC 793/768, RFC 8200 §8.1) and incremental update (RFC 1624).
//!
//! `data` returns the folded sum *not* complemented (like smoltcp's `checksum::data`); the
//! value stored in a header is `!combine(..)`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Folds a wide one's-complement accumulator to 16 bits.
#[inline]
pub fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// One's-complement sum of `data` as 16-bit big-endian words (a trailing odd byte is padded
/// with zero), folded but not complemented. Eight bytes per step: two 32-bit halves into a
/// 64-bit accumulator never overflow for any packet size.
pub fn data(data: &[u8]) -> u16 {
    fold(sum_wide(data))
}

#[inline]
fn sum_wide(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        acc += u64::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let Some(&b) = rest.first() {
        acc += u64::from(b) << 8;
    }
    acc
}

/// The sum of a 20-byte IPv4 header without options: five 32-bit words, no loop.
#[inline]
pub fn ipv4_header20(h: &[u8; 20]) -> u16 {
    let w = |i: usize| u64::from(u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    fold(w(0) + w(4) + w(8) + w(12) + w(16))
}

/// One's-complement sum of several partial sums.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// Sum of the IPv4 pseudo-header (src, dst, zero, protocol, upper-layer length).
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u32) -> u16 {
    let mut acc = sum_wide(&src.octets()) + sum_wide(&dst.octets());
    acc += u64::from(proto);
    acc += u64::from(len & 0xffff) + u64::from(len >> 16);
    fold(acc)
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1: src, dst, 32-bit length, next header).
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: u32) -> u16 {
    let mut acc = sum_wide(&src.octets()) + sum_wide(&dst.octets());
    acc += u64::from(proto);
    acc += u64::from(len & 0xffff) + u64::from(len >> 16);
    fold(acc)
}

/// RFC 1624 eqn. 3: the checksum field after one 16-bit word of the covered data changed
/// from `old` to `new`: HC' = ~(~HC + ~m + m').
pub fn update16(csum: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!csum) + u64::from(!old) + u64::from(new))
}

/// `update16` for a 32-bit field (two words).
pub fn update32(csum: u16, old: u32, new: u32) -> u16 {
    let c = update16(csum, (old >> 16) as u16, (new >> 16) as u16);
    update16(c, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward RFC 1071 loop, to check the wide version against.
    fn reference(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        let mut i = 0;
        while i + 1 < data.len() {
            sum += u32::from(u16::from_be_bytes([data[i], data[i + 1]]));
            i += 2;
        }
        if i < data.len() {
            sum += u32::from(data[i]) << 8;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2 (before complement).
        assert_eq!(
            data(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
    }

    #[test]
    fn wide_sum_equals_reference_for_every_length() {
        let buf: Vec<u8> = (0..300u32).map(|i| (i * 151 + 7) as u8 | 0x80).collect();
        for len in 0..buf.len() {
            for start in 0..3.min(len + 1) {
                assert_eq!(
                    data(&buf[start..len]),
                    reference(&buf[start..len]),
                    "len {len}"
                );
            }
        }
        let ones = vec![0xffu8; 70_001];
        assert_eq!(data(&ones), reference(&ones));
    }

    #[test]
    fn known_ipv4_header_checksum() {
        // A classic example header (wikipedia "IPv4 header checksum"): checksum b861.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(!data(&hdr), 0xb861);
        assert_eq!(!ipv4_header20(&hdr), 0xb861);
    }

    #[test]
    fn incremental_update_matches_recompute() {
        let mut hdr = [
            0x45u8, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        // TTL 0x40 -> 0x3f: the word at offset 8 changes.
        let old = u16::from_be_bytes([hdr[8], hdr[9]]);
        hdr[8] = 0x3f;
        let new = u16::from_be_bytes([hdr[8], hdr[9]]);
        let inc = update16(0xb861, old, new);
        hdr[10] = 0;
        hdr[11] = 0;
        assert_eq!(inc, !data(&hdr));
        // A 32-bit address change.
        let c0 = !data(&hdr);
        let old32 = u32::from_be_bytes([hdr[12], hdr[13], hdr[14], hdr[15]]);
        hdr[12..16].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(update32(c0, old32, 0x0a01_0203), !data(&hdr));
    }

    #[test]
    fn pseudo_headers() {
        let s4 = Ipv4Addr::new(192, 0, 2, 1);
        let d4 = Ipv4Addr::new(198, 51, 100, 2);
        let mut ph = Vec::new();
        ph.extend_from_slice(&s4.octets());
        ph.extend_from_slice(&d4.octets());
        ph.extend_from_slice(&[0, 17, 0x01, 0x2c]);
        assert_eq!(pseudo_header_v4(s4, d4, 17, 300), reference(&ph));
        let s6: Ipv6Addr = "fd00::1".parse().unwrap();
        let d6: Ipv6Addr = "fd00:1::abcd".parse().unwrap();
        let mut ph = Vec::new();
        ph.extend_from_slice(&s6.octets());
        ph.extend_from_slice(&d6.octets());
        ph.extend_from_slice(&70_000u32.to_be_bytes());
        ph.extend_from_slice(&[0, 0, 0, 6]);
        assert_eq!(pseudo_header_v6(s6, d6, 6, 70_000), reference(&ph));
    }
}
