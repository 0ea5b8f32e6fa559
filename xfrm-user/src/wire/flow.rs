//! A packet's flow (struct flowi) for the selectors: addresses, upper protocol, ports — or,
//! for ICMP/ICMPv6, type and code in the port fields as Linux's flowi does.

use std::net::IpAddr;

use super::{icmp::IcmpPacket, ipv4::Ipv4Packet, ipv6, proto, Result, WireError};
use crate::selector::FlowKey;

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

/// Parses the IP packet at the start of `pkt`.
pub fn parse(pkt: &[u8]) -> Result<FlowInfo> {
    match super::ip_version(pkt) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(pkt)?;
            let ip_len = usize::from(ip.total_len());
            let hl = ip.header_len();
            let later = ip.frag_offset() != 0;
            let (sport, dport) = if later {
                (0, 0)
            } else {
                ports(ip.protocol(), &pkt[hl..ip_len])
            };
            Ok(FlowInfo {
                key: FlowKey {
                    src: IpAddr::V4(ip.src_addr()),
                    dst: IpAddr::V4(ip.dst_addr()),
                    proto: ip.protocol(),
                    sport,
                    dport,
                },
                version: 4,
                ip_len,
                l4_offset: hl,
                l4_present: !later,
                fragment: ip.is_fragment(),
            })
        }
        Some(6) => {
            let ip = ipv6::Ipv6Packet::new_checked(pkt)?;
            let ip_len = ip.total_len();
            let ul = ipv6::upper_layer(&pkt[..ip_len])?;
            let (sport, dport) = if ul.later_fragment {
                (0, 0)
            } else {
                ports(ul.proto, &pkt[ul.offset..ip_len])
            };
            Ok(FlowInfo {
                key: FlowKey {
                    src: IpAddr::V6(ip.src_addr()),
                    dst: IpAddr::V6(ip.dst_addr()),
                    proto: ul.proto,
                    sport,
                    dport,
                },
                version: 6,
                ip_len,
                l4_offset: ul.offset,
                l4_present: !ul.later_fragment,
                fragment: ul.fragment,
            })
        }
        _ => Err(WireError::Malformed),
    }
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
