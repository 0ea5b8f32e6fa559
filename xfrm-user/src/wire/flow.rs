//! A packet's flow (struct flowi) for the selectors: addresses, upper protocol, ports — or,
//! for ICMP/ICMPv6, type and code in the port fields as Linux's flowi does.

use std::net::IpAddr;

use super::{icmp::IcmpPacket, ipv4::Ipv4Packet, ipv6, proto, Result, WireError};
use crate::selector::FlowKey;

/// What the output path needs of a packet, without its flow key: the IP length and where
/// the upper-layer header is. `parse_l4` finds it with one pass over the headers and
/// nothing else; `parse` adds the flow key on top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L4Info {
    /// 4 or 6.
    pub version: u8,
    /// Length of the packet per its IP header (the buffer may hold Ethernet padding after).
    pub ip_len: usize,
    /// Offset of the upper-layer header (valid when `l4_present`).
    pub l4_offset: usize,
    /// The upper-layer protocol (IPv6: after the extension headers).
    pub proto: u8,
    /// The packet holds the start of the upper-layer header (not a later fragment).
    pub l4_present: bool,
    /// The packet is a fragment (first or later).
    pub fragment: bool,
    /// What a tunnel's outer header copies (xfrm4/6_extract_header): TOS / traffic class,
    /// DF (always set for IPv6, as xfrm6_extract_header does) and the IPv6 flow label.
    pub tos: u8,
    pub df: bool,
    pub flow_lbl: u32,
}

/// What `parse` found besides the flow key: enough for the output path to find the L4
/// header without walking the headers again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowInfo {
    pub key: FlowKey,
    /// 4 or 6.
    pub version: u8,
    /// Length of the packet per its IP header (the buffer may hold Ethernet padding after).
    pub ip_len: usize,
    /// Offset of the upper-layer header (valid when `l4_present`).
    pub l4_offset: usize,
    /// The packet holds the start of the upper-layer header (not a later fragment).
    pub l4_present: bool,
    /// The packet is a fragment (first or later).
    pub fragment: bool,
    /// As in [`L4Info`].
    pub tos: u8,
    pub df: bool,
    pub flow_lbl: u32,
}

impl FlowInfo {
    /// The same packet's `L4Info`.
    pub fn l4(&self) -> L4Info {
        L4Info {
            version: self.version,
            ip_len: self.ip_len,
            l4_offset: self.l4_offset,
            proto: self.key.proto,
            l4_present: self.l4_present,
            fragment: self.fragment,
            tos: self.tos,
            df: self.df,
            flow_lbl: self.flow_lbl,
        }
    }
}

fn ports(proto_: u8, l4: &[u8]) -> (u16, u16) {
    match proto_ {
        proto::TCP | proto::UDP | 132 /* SCTP */ | 33 /* DCCP */ | 136 /* UDP-Lite */
            if l4.len() >= 4 =>
        {
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            )
        }
        proto::ICMP | proto::ICMPV6 => match IcmpPacket::new_checked(l4) {
            Ok(p) => (u16::from(p.msg_type()), u16::from(p.msg_code())),
            Err(_) => (0, 0),
        },
        // RFC 6275 mobility header: the MH type in sport, as Linux does.
        proto::MH if l4.len() >= 3 => (u16::from(l4[2]), 0),
        _ => (0, 0),
    }
}

/// The IP length and the upper-layer header of the IP packet at the start of `pkt`.
#[inline]
pub fn parse_l4(pkt: &[u8]) -> Result<L4Info> {
    match super::ip_version(pkt) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(pkt)?;
            Ok(L4Info {
                version: 4,
                ip_len: usize::from(ip.total_len()),
                l4_offset: ip.header_len(),
                proto: ip.protocol(),
                l4_present: ip.frag_offset() == 0,
                fragment: ip.is_fragment(),
                tos: ip.tos(),
                df: ip.dont_frag(),
                flow_lbl: 0,
            })
        }
        Some(6) => {
            let ip = ipv6::Ipv6Packet::new_checked(pkt)?;
            let ip_len = ip.total_len();
            let ul = ipv6::upper_layer(&pkt[..ip_len])?;
            Ok(L4Info {
                version: 6,
                ip_len,
                l4_offset: ul.offset,
                proto: ul.proto,
                l4_present: !ul.later_fragment,
                fragment: ul.fragment,
                tos: ip.traffic_class(),
                df: true,
                flow_lbl: ip.flow_label(),
            })
        }
        _ => Err(WireError::Malformed),
    }
}

/// Parses the IP packet at the start of `pkt`.
pub fn parse(pkt: &[u8]) -> Result<FlowInfo> {
    let l4 = parse_l4(pkt)?;
    // parse_l4 checked the header: the addresses are inside `pkt`.
    let (src, dst) = if l4.version == 4 {
        let ip = Ipv4Packet::new_unchecked(pkt);
        (IpAddr::V4(ip.src_addr()), IpAddr::V4(ip.dst_addr()))
    } else {
        let ip = ipv6::Ipv6Packet::new_unchecked(pkt);
        (IpAddr::V6(ip.src_addr()), IpAddr::V6(ip.dst_addr()))
    };
    let (sport, dport) = if l4.l4_present {
        ports(l4.proto, &pkt[l4.l4_offset..l4.ip_len])
    } else {
        (0, 0)
    };
    Ok(FlowInfo {
        key: FlowKey {
            src,
            dst,
            proto: l4.proto,
            sport,
            dport,
        },
        version: l4.version,
        ip_len: l4.ip_len,
        l4_offset: l4.l4_offset,
        l4_present: l4.l4_present,
        fragment: l4.fragment,
        tos: l4.tos,
        df: l4.df,
        flow_lbl: l4.flow_lbl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_udp_and_icmp() {
        let mut p = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 1, 0, 1, 10, 2, 0, 1, 0x04, 0xd2, 0x00,
            0x35, 0, 8, 0, 0,
        ];
        p.extend_from_slice(&[0; 18]); // Ethernet padding
        let f = parse(&p).unwrap();
        assert_eq!(f.key.proto, 17);
        assert_eq!((f.key.sport, f.key.dport), (1234, 53));
        assert_eq!(f.ip_len, 28);
        assert_eq!(f.key.dst, "10.2.0.1".parse::<IpAddr>().unwrap());
        p[9] = 1;
        p[20] = 3;
        p[21] = 4;
        let f = parse(&p).unwrap();
        assert_eq!((f.key.sport, f.key.dport), (3, 4));
        // A later fragment has no ports.
        p[9] = 17;
        p[7] = 1;
        let f = parse(&p).unwrap();
        assert!(f.fragment && !f.l4_present);
        assert_eq!((f.key.sport, f.key.dport), (0, 0));
    }

    #[test]
    fn v6_through_extension_headers() {
        let mut p = vec![0x60, 0, 0, 0, 0, 16, 0, 64];
        p.extend_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&"fd00::2".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p.extend_from_slice(&[58, 0, 1, 4, 0, 0, 0, 0]); // hop-by-hop
        p.extend_from_slice(&[128, 0, 0, 0, 0, 0, 0, 0]); // echo request
        let f = parse(&p).unwrap();
        assert_eq!(f.key.proto, 58);
        assert_eq!((f.key.sport, f.key.dport, f.l4_offset), (128, 0, 48));
        assert!(parse(&p[..50]).is_err());
        assert!(parse(&[0x20, 0, 0]).is_err());
    }
}
