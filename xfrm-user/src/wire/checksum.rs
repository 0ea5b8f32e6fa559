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
/// with zero), folded but not complemented.
///
/// The sum is byte-order independent (RFC 1071 section 2(B)): words are added in the CPU's
/// own order and the folded result is swapped once at the end. On x86_64 the words go
/// through vector code (features checked once, cached by std): 64 bytes per step with
/// AVX-512BW, whose masked load also takes the tail, or 32 with AVX2. The whole payload of a
/// packet goes through here when its partial inner L4 checksum is completed.
#[inline]
pub fn data(data: &[u8]) -> u16 {
    #[cfg(target_arch = "x86_64")]
    if data.len() >= 16 {
        if std::is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has AVX-512F/BW (BW implies F; checked just above).
            return from_native(unsafe { x86::sum_avx512(data) });
        }
        if data.len() >= 64 && std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return from_native(unsafe { x86::sum_avx2(data) });
        }
    }
    from_native(sum_native(data))
}

/// The folded native-order sum as the big-endian sum.
#[inline]
fn from_native(sum: u64) -> u16 {
    u16::from_be(fold(sum))
}

/// Sum of native-order 16-bit words, not folded. Eight bytes per step: two 32-bit halves
/// into a 64-bit accumulator never overflow for any packet size.
#[inline]
fn sum_native(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        acc += u64::from(u16::from_ne_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let Some(&b) = rest.first() {
        acc += u64::from(u16::from_ne_bytes([b, 0]));
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Chunks of 64 bytes between two drains of the 32-bit lanes: each chunk adds at most
    /// 2^16 in magnitude to a lane of `a` and of `b`, so after 2^13 chunks a + b stays
    /// within 2^30.
    const DRAIN: usize = 1 << 13;

    /// `sum_native` with AVX2. vpmaddwd adds word pairs into 32-bit lanes but reads the
    /// words as signed, so each word is biased by -0x8000 first (XOR with 0x8000) and the
    /// bias, 0x8000 per word, is added back at the end: three ALU operations per 32 bytes.
    #[target_feature(enable = "avx2")]
    pub(super) fn sum_avx2(data: &[u8]) -> u64 {
        let bias = _mm256_set1_epi16(i16::MIN);
        let ones = _mm256_set1_epi16(1);
        let mut total: i64 = 0;
        let chunks = data.chunks_exact(64);
        let rest = chunks.remainder();
        let words = (data.len() - rest.len()) / 2;
        let mut chunks = chunks.peekable();
        while chunks.peek().is_some() {
            let (mut a, mut b) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            for c in chunks.by_ref().take(DRAIN) {
                // SAFETY: `c` is 64 bytes; loadu has no alignment requirement.
                let (x, y) = unsafe {
                    (
                        _mm256_loadu_si256(c.as_ptr().cast()),
                        _mm256_loadu_si256(c.as_ptr().add(32).cast()),
                    )
                };
                a = _mm256_add_epi32(a, _mm256_madd_epi16(_mm256_xor_si256(x, bias), ones));
                b = _mm256_add_epi32(b, _mm256_madd_epi16(_mm256_xor_si256(y, bias), ones));
            }
            let s = _mm256_add_epi64(
                _mm256_cvtepi32_epi64(_mm256_castsi256_si128(_mm256_add_epi32(a, b))),
                _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(_mm256_add_epi32(a, b))),
            );
            let s = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            total += _mm_cvtsi128_si64(s) + _mm_extract_epi64::<1>(s);
        }
        // Each word was read as (w - 0x8000).
        let vec = (total + 0x8000 * words as i64) as u64;
        vec + super::sum_native(rest)
    }

    /// `sum_avx2`'s method on 64 bytes per step; a last, partial step is one masked load
    /// (zero bytes past the end: zero words, and a trailing odd byte becomes the low byte
    /// of its word, as in `sum_native`). The lanes are folded once per block of at most
    /// 1024 whole steps (64 KiB: one block for any packet; the partial step joins the
    /// first): a lane then holds at most 1025 * 2^16 in magnitude, and the sixteen of them
    /// add up within an i32.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) fn sum_avx512(data: &[u8]) -> u64 {
        const BLOCK: usize = 1024;
        let bias = _mm512_set1_epi16(i16::MIN);
        let ones = _mm512_set1_epi16(1);
        let (whole, rest) = data.as_chunks::<64>();
        let words = |x: __m512i| _mm512_madd_epi16(_mm512_xor_si512(x, bias), ones);
        let mut a = _mm512_setzero_si512();
        if !rest.is_empty() {
            let m: __mmask64 = (1u64 << rest.len()) - 1;
            // SAFETY: the mask covers only the rest.len() bytes of `rest`.
            a = words(unsafe { _mm512_maskz_loadu_epi8(m, rest.as_ptr().cast()) });
        }
        let mut total: i64 = 0;
        if whole.is_empty() {
            total = i64::from(_mm512_reduce_add_epi32(a));
        }
        for block in whole.chunks(BLOCK) {
            // Two accumulators: consecutive adds do not wait on each other.
            let mut b = _mm512_setzero_si512();
            let (pairs, odd) = block.as_chunks::<2>();
            for [x, y] in pairs {
                // SAFETY: x and y are 64 bytes each; loadu has no alignment requirement.
                let (x, y) = unsafe {
                    (
                        _mm512_loadu_si512(x.as_ptr().cast()),
                        _mm512_loadu_si512(y.as_ptr().cast()),
                    )
                };
                a = _mm512_add_epi32(a, words(x));
                b = _mm512_add_epi32(b, words(y));
            }
            if let [x] = odd {
                // SAFETY: as above.
                a = _mm512_add_epi32(a, words(unsafe { _mm512_loadu_si512(x.as_ptr().cast()) }));
            }
            total += i64::from(_mm512_reduce_add_epi32(_mm512_add_epi32(a, b)));
            a = _mm512_setzero_si512();
        }
        // Every word of every step (the partial one's padding included) was read as
        // (w - 0x8000).
        let steps = whole.len() + usize::from(!rest.is_empty());
        (total + 0x8000 * 32 * steps as i64) as u64
    }
}

/// The big-endian sum, unfolded (for the small fixed inputs of the pseudo-headers).
#[inline]
fn sum_wide(data: &[u8]) -> u64 {
    let mut acc: u64 = 0;
    for w in data.chunks_exact(2) {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
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

/// The pseudo-header sum of the IP packet at the start of `pkt`, its addresses read in
/// place (IPv4 bytes 12..20, IPv6 bytes 8..40), for an upper layer `proto` of `len` bytes.
/// `pkt` must hold the whole IP header (the caller has parsed it).
#[inline]
pub fn pseudo_header_at(pkt: &[u8], v6: bool, proto: u8, len: u32) -> u16 {
    let addrs = if v6 { &pkt[8..40] } else { &pkt[12..20] };
    let acc = sum_native(addrs) + u64::from(u16::from_be(u16::from(proto)));
    let acc =
        acc + u64::from(u16::from_be(len as u16)) + u64::from(u16::from_be((len >> 16) as u16));
    from_native(acc)
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
        let mut sum: u64 = 0;
        let mut i = 0;
        while i + 1 < data.len() {
            sum += u64::from(u16::from_be_bytes([data[i], data[i + 1]]));
            i += 2;
        }
        if i < data.len() {
            sum += u64::from(data[i]) << 8;
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
        // Past the vector code's drain interval (2^13 chunks of 64 bytes), with the words
        // that push its biased lanes furthest up (0xffff) and down (0x0000), odd lengths.
        for (fill, len) in [
            (0xffu8, 1_500_001usize),
            (0x00, 1_500_001),
            (0x80, 1_048_640),
        ] {
            let v = vec![fill; len];
            assert_eq!(data(&v), reference(&v), "fill {fill:#x}");
        }
        let mixed: Vec<u8> = (0..1_200_003u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert_eq!(data(&mixed), reference(&mixed));
    }

    /// Each implementation on its own, against the reference, every length to 700 and a
    /// long odd one (`data` uses only the best one the machine has).
    #[test]
    fn every_implementation_equals_reference() {
        let buf: Vec<u8> = (0..2_000_001u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let mut cases: Vec<&[u8]> = (0..700).map(|n| &buf[3..3 + n]).collect();
        cases.push(&buf[1..]);
        cases.push(&[0xff; 4097]);
        for c in cases {
            let want = reference(c);
            assert_eq!(
                from_native(sum_native(c)),
                want,
                "portable, len {}",
                c.len()
            );
            #[cfg(target_arch = "x86_64")]
            {
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has avx2, checked above.
                    let got = unsafe { x86::sum_avx2(c) };
                    assert_eq!(from_native(got), want, "avx2, len {}", c.len());
                }
                if std::is_x86_feature_detected!("avx512bw") {
                    // SAFETY: the CPU has avx512bw, checked above.
                    let got = unsafe { x86::sum_avx512(c) };
                    assert_eq!(from_native(got), want, "avx512, len {}", c.len());
                }
            }
        }
    }

    /// The portable sum on its own (a vector one is what `data` uses on this machine).
    #[test]
    fn portable_sum_equals_reference() {
        let buf: Vec<u8> = (0..700u32).map(|i| (i * 37 + 11) as u8).collect();
        for len in 0..buf.len() {
            assert_eq!(
                from_native(sum_native(&buf[1..=len.max(1)])),
                reference(&buf[1..=len.max(1)])
            );
        }
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
        // The same sums with the addresses read from headers in place.
        let mut h4 = [0u8; 20];
        h4[12..16].copy_from_slice(&s4.octets());
        h4[16..20].copy_from_slice(&d4.octets());
        assert_eq!(
            pseudo_header_at(&h4, false, 17, 300),
            pseudo_header_v4(s4, d4, 17, 300)
        );
        let mut h6 = [0u8; 40];
        h6[8..24].copy_from_slice(&s6.octets());
        h6[24..40].copy_from_slice(&d6.octets());
        assert_eq!(pseudo_header_at(&h6, true, 6, 70_000), reference(&ph));
    }
}
