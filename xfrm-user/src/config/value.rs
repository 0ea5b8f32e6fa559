//! The values that follow keywords: numbers, addresses, prefixes, keys, protocol names.
//! Each parser returns the message of what was expected; the caller attaches the word.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use zeroize::Zeroizing;

use super::error::{LineError, LineResult};
use super::lexer::Word;
use crate::selector::Prefix;

/// A number as ip's `get_u32(…, 0)` (strtoul base 0) reads it, minus octal: decimal or
/// `0x` hex. A decimal with a leading zero is refused because ip would read it as octal.
pub(crate) fn number(s: &str, max: u64) -> Result<u64, String> {
    let what = || format!("expected a number from 0 to {max} (decimal or 0x… hex)");
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(what());
        }
        u64::from_str_radix(h, 16).map_err(|_| what())?
    } else {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(what());
        }
        if s.len() > 1 && s.starts_with('0') {
            return Err(format!(
                "{}; a leading 0 would make ip read it as octal: write it without the 0 or as 0x… hex",
                what()
            ));
        }
        s.parse::<u64>().map_err(|_| what())?
    };
    if v > max {
        return Err(what());
    }
    Ok(v)
}

/// `proto esp|ah` of a state or a template; the other ip-xfrm protocols are named as
/// unsupported rather than unknown.
pub(crate) fn xfrm_proto_of(val: &Word) -> LineResult<crate::sa::XfrmProto> {
    use crate::sa::XfrmProto;
    match val.text.as_str() {
        "esp" => Ok(XfrmProto::Esp),
        "ah" => Ok(XfrmProto::Ah),
        "comp" | "route2" | "hao" => Err(LineError::at(
            val,
            format!(
                "proto '{}' is not supported by xfrm-ebpf: expected esp or ah",
                val.text
            ),
        )),
        _ => Err(LineError::at(val, "expected an IPsec protocol: esp or ah")),
    }
}

pub(crate) fn u32_of(w: &Word) -> LineResult<u32> {
    number(&w.text, u64::from(u32::MAX))
        .map(|v| v as u32)
        .map_err(|m| LineError::at(w, m))
}

pub(crate) fn u64_of(w: &Word) -> LineResult<u64> {
    number(&w.text, u64::MAX).map_err(|m| LineError::at(w, m))
}

/// A port: 0..=65535 (0 = any, as ip sets no mask for it).
pub(crate) fn port_of(w: &Word) -> LineResult<u16> {
    number(&w.text, 65535)
        .map(|v| v as u16)
        .map_err(|_| LineError::at(w, "expected a port number from 0 to 65535"))
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok()
}

fn full_len(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        32
    } else {
        128
    }
}

/// `ADDR[/PLEN]`; a plain address is a host prefix (/32 or /128).
pub(crate) fn prefix_of(w: &Word) -> LineResult<Prefix> {
    let expected = "expected an IPv4 or IPv6 address or prefix (ADDR or ADDR/LEN)";
    let (a, len) = match w.text.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (w.text.as_str(), None),
    };
    let addr = parse_ip(a).ok_or_else(|| LineError::at(w, expected))?;
    let max = full_len(addr);
    let len = match len {
        None => max,
        Some(l) => {
            let n = number(l, u64::from(max)).map_err(|_| {
                LineError::at(
                    w,
                    format!("expected a prefix length from 0 to {max} after '/'"),
                )
            })?;
            n as u8
        }
    };
    Ok(Prefix { addr, len })
}

/// One address (an SA end point, a tmpl end point, an encap address). `/32` or `/128` is
/// accepted as ip accepts a prefix there; a shorter prefix is refused.
pub(crate) fn host_of(w: &Word) -> LineResult<IpAddr> {
    let p = prefix_of(w).map_err(|e| {
        if e.message.starts_with("expected an IPv4") {
            LineError::at(w, "expected an IPv4 or IPv6 address")
        } else {
            e
        }
    })?;
    if p.len != full_len(p.addr) {
        return Err(LineError::at(
            w,
            "expected a single address, not a prefix (an SA or template end point is one host)",
        ));
    }
    Ok(p.addr)
}

/// The "any" address of the family of `like`.
pub(crate) fn unspecified_like(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

pub(crate) fn family_name(a: IpAddr) -> &'static str {
    if a.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Key material as ip's xfrm_algo_parse reads it: a word starting with `0x` is hex, any other
/// word is its raw bytes. Two differences, both to catch mistakes: the raw-bytes form must be
/// quoted (an unquoted `deadbeef…` is almost always a hex key missing its `0x`), and an odd
/// number of hex digits is refused (ip would silently prepend a 0).
pub(crate) fn key_of(w: &Word) -> LineResult<Zeroizing<Vec<u8>>> {
    const MAX: usize = 512; // ip's XFRM_ALGO_KEY_BUF_SIZE
    let t = w.text.as_bytes();
    if t.len() > 2 && t.starts_with(b"0x") {
        let h = &t[2..];
        if !h.iter().all(|b| b.is_ascii_hexdigit()) {
            return Err(LineError::at_key(
                w,
                "expected a key: 0x followed by hex digits only",
            ));
        }
        if !h.len().is_multiple_of(2) {
            return Err(LineError::at_key(
                w,
                format!(
                    "expected a key: an even number of hex digits after 0x, got {}",
                    h.len()
                ),
            ));
        }
        if h.len() / 2 > MAX {
            return Err(LineError::at_key(
                w,
                format!("expected a key of at most {MAX} bytes"),
            ));
        }
        let mut out = Zeroizing::new(Vec::with_capacity(h.len() / 2));
        for pair in h.chunks_exact(2) {
            out.push((hexval(pair[0]) << 4) | hexval(pair[1]));
        }
        return Ok(out);
    }
    if !w.quoted {
        return Err(LineError::at_key(
            w,
            "expected a key: 0x followed by hex digits, or a quoted string whose bytes are the key",
        ));
    }
    if t.len() > MAX {
        return Err(LineError::at_key(
            w,
            format!("expected a key of at most {MAX} bytes"),
        ));
    }
    Ok(Zeroizing::new(t.to_vec()))
}

fn hexval(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// Upper-layer protocol of a selector: `any`, a name (as getprotobyname knows them,
/// case-insensitive) or a number 0-255.
pub(crate) fn upper_proto_of(w: &Word) -> LineResult<u8> {
    const NAMES: &[(&str, u8)] = &[
        ("any", 0),
        ("ip", 0),
        ("icmp", 1),
        ("igmp", 2),
        ("ipencap", 4),
        ("ipip", 4),
        ("tcp", 6),
        ("udp", 17),
        ("dccp", 33),
        ("ipv6", 41),
        ("gre", 47),
        ("esp", 50),
        ("ah", 51),
        ("ipv6-icmp", 58),
        ("icmpv6", 58),
        ("icmp6", 58),
        ("sctp", 132),
        ("mobility-header", 135),
        ("ipv6-mh", 135),
        ("mh", 135),
        ("udplite", 136),
    ];
    let lower = w.text.to_ascii_lowercase();
    if let Some((_, n)) = NAMES.iter().find(|(name, _)| *name == lower) {
        return Ok(*n);
    }
    number(&w.text, 255).map(|v| v as u8).map_err(|_| {
        LineError::at(
            w,
            "expected a protocol: tcp, udp, icmp, ipv6-icmp, gre, esp, ah, sctp, dccp, any, or a number from 0 to 255",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Word {
        Word {
            text: s.to_string(),
            line: 1,
            col: 1,
            quoted: false,
        }
    }

    fn q(s: &str) -> Word {
        let mut w = w(s);
        w.quoted = true;
        w
    }

    #[test]
    fn numbers() {
        assert_eq!(number("0", 10), Ok(0));
        assert_eq!(number("4096", 4096), Ok(4096));
        assert!(number("4097", 4096).is_err());
        assert_eq!(number("0x1000", u64::MAX), Ok(0x1000));
        assert_eq!(number("0XfF", 255), Ok(255));
        assert!(number("0x", 10).is_err());
        assert!(number("-1", 10).is_err());
        assert!(number("1e3", 10000).is_err());
        assert!(number("", 10).is_err());
        assert!(number("010", 100).unwrap_err().contains("octal"));
        assert!(number("18446744073709551616", u64::MAX).is_err());
        assert_eq!(u32_of(&w("0xffffffff")).unwrap(), u32::MAX);
        assert!(u32_of(&w("0x100000000")).is_err());
    }

    #[test]
    fn prefixes_and_hosts() {
        let p = prefix_of(&w("10.1.0.0/24")).unwrap();
        assert_eq!((p.addr, p.len), ("10.1.0.0".parse().unwrap(), 24));
        let p = prefix_of(&w("fd00::1")).unwrap();
        assert_eq!(p.len, 128);
        let p = prefix_of(&w("::/0")).unwrap();
        assert_eq!(p.len, 0);
        assert!(prefix_of(&w("10.0.0.0/33")).is_err());
        assert!(prefix_of(&w("fd00::/129")).is_err());
        assert!(prefix_of(&w("10.1/16")).is_err());
        assert!(prefix_of(&w("10.0.0.0/")).is_err());
        assert_eq!(
            host_of(&w("192.0.2.1/32")).unwrap(),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        let e = host_of(&w("192.0.2.0/24")).unwrap_err();
        assert!(e.message.contains("single address"), "{e:?}");
        let e = host_of(&w("host.example")).unwrap_err();
        assert_eq!(e.message, "expected an IPv4 or IPv6 address");
    }

    #[test]
    fn keys() {
        assert_eq!(&*key_of(&w("0x00ff10")).unwrap(), &[0, 0xff, 0x10]);
        assert_eq!(&*key_of(&q("0xAbCd")).unwrap(), &[0xab, 0xcd]);
        assert_eq!(&*key_of(&q("abc")).unwrap(), b"abc");
        // "0x" alone is a 2-byte string for ip; quoted it is that here too.
        assert_eq!(&*key_of(&q("0x")).unwrap(), b"0x");
        let e = key_of(&w("0x123")).unwrap_err();
        assert!(e.message.contains("even number"), "{e:?}");
        assert_eq!(e.word, "<key>");
        assert!(key_of(&w("0x12zz")).is_err());
        let e = key_of(&w("deadbeef")).unwrap_err();
        assert!(e.message.contains("quoted string"), "{e:?}");
        assert!(key_of(&w(&format!("0x{}", "00".repeat(513)))).is_err());
    }

    #[test]
    fn protocols() {
        assert_eq!(upper_proto_of(&w("tcp")).unwrap(), 6);
        assert_eq!(upper_proto_of(&w("UDP")).unwrap(), 17);
        assert_eq!(upper_proto_of(&w("ipv6-icmp")).unwrap(), 58);
        assert_eq!(upper_proto_of(&w("icmpv6")).unwrap(), 58);
        assert_eq!(upper_proto_of(&w("any")).unwrap(), 0);
        assert_eq!(upper_proto_of(&w("255")).unwrap(), 255);
        assert!(upper_proto_of(&w("256")).is_err());
        assert!(upper_proto_of(&w("tcpp")).is_err());
    }
}
