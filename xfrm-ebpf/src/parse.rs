//! Ethernet (+ up to two 802.1Q/802.1ad tags) → IPv4/IPv6 (+ extension headers) → the flow
//! key of `struct flowi`. Every read is bounds-checked against data_end (the verifier insists,
//! and a short packet must not be misread).

use aya_ebpf::programs::{TcContext, XdpContext};
use xfrm_common::{FAMILY_V4, FAMILY_V6, META_F_FRAGMENT, META_F_IPV6, META_F_VLAN};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_DCCP: u8 = 33;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

/// Extension headers followed before giving up (fail closed) on an IPv6 packet.
const MAX_EXT_HDRS: usize = 6;
/// Keeps offsets small and bounded so the verifier can prove every access.
pub const MAX_L4_OFFSET: usize = 512;

/// What the classifier matches rules against; offsets for the worker's metadata.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Flow {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub flags: u16,
    pub l3_off: u16,
    pub l4_off: u16,
}

pub enum Parsed {
    NotIp,
    ArpNd,
    Malformed,
    Unparsed,
    Ip(Flow),
}

/// A packet the parser can read: the XDP buffer (inside and outside programs) or the skb's
/// linear part (the TC program on the host's own output, which pulls the headers in first).
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
}

impl Packet for XdpContext {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
}

impl Packet for TcContext {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self)
    }
}

/// `N` bytes at `off`, with one bounds check on one pointer. Reads go through this single
/// pointer: the verifier tracks the checked range per pointer, and separately computed pointers
/// to neighbouring bytes (or a 1-byte check, which LLVM turns into `p >= end`) lose it.
#[inline(always)]
pub fn at<const N: usize>(ctx: &impl Packet, off: usize) -> Option<[u8; N]> {
    let p = ctx.data() + off;
    if p + N > ctx.data_end() {
        return None;
    }
    // SAFETY: [p, p + N) is inside the packet, checked above; [u8; N] has alignment 1.
    Some(unsafe { *(p as *const [u8; N]) })
}

#[inline(always)]
pub fn parse<C: Packet>(ctx: &C) -> Parsed {
    let Some(h) = at::<14>(ctx, 0) else {
        return Parsed::Malformed;
    };
    let mut proto = u16::from_be_bytes([h[12], h[13]]);
    let mut off = ETH_HLEN;
    let mut flags = 0u16;
    // Up to two VLAN tags (802.1ad outer, 802.1Q inner).
    for _ in 0..2 {
        if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
            let Some(tag) = at::<4>(ctx, off) else {
                return Parsed::Malformed;
            };
            proto = u16::from_be_bytes([tag[2], tag[3]]);
            off += 4;
            flags |= META_F_VLAN;
        }
    }
    match proto {
        ETH_P_IP => ipv4(ctx, off, flags),
        ETH_P_IPV6 => ipv6(ctx, off, flags | META_F_IPV6),
        ETH_P_ARP => Parsed::ArpNd,
        _ => Parsed::NotIp,
    }
}

#[inline(always)]
fn ipv4<C: Packet>(ctx: &C, l3: usize, mut flags: u16) -> Parsed {
    let Some(h) = at::<20>(ctx, l3) else {
        return Parsed::Malformed;
    };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Parsed::Malformed;
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let proto = h[9];
    // The addresses as they sit in the packet (see PolicyRule).
    let src = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
    let dst = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
    let mut flow = Flow {
        src: [src, 0, 0, 0],
        dst: [dst, 0, 0, 0],
        sport: 0,
        dport: 0,
        proto,
        family: FAMILY_V4,
        flags,
        l3_off: l3 as u16,
        l4_off: 0,
    };
    let more_fragments = frag & 0x2000 != 0;
    let frag_offset = frag & 0x1fff;
    if more_fragments || frag_offset != 0 {
        flags |= META_F_FRAGMENT;
        flow.flags = flags;
    }
    if frag_offset != 0 {
        // A non-first fragment has no transport header: ports 0, as in flowi.
        return Parsed::Ip(flow);
    }
    l4(ctx, flow, l3 + ihl)
}

#[inline(always)]
fn ipv6<C: Packet>(ctx: &C, l3: usize, mut flags: u16) -> Parsed {
    let Some(h) = at::<40>(ctx, l3) else {
        return Parsed::Malformed;
    };
    if h[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let mut next = h[6];
    let word = |o: usize| u32::from_ne_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let src = [word(8), word(12), word(16), word(20)];
    let dst = [word(24), word(28), word(32), word(36)];
    let mut off = l3 + 40;
    let mut first_fragment = true;
    let mut done = false;
    for _ in 0..MAX_EXT_HDRS + 1 {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some([n, len]) = at::<2>(ctx, off) else {
                    return Parsed::Malformed;
                };
                next = n;
                off += (usize::from(len) + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                let Some([n, _, fo_hi, fo_lo]) = at::<4>(ctx, off) else {
                    return Parsed::Malformed;
                };
                let fo = u16::from_be_bytes([fo_hi, fo_lo]);
                next = n;
                off += 8;
                flags |= META_F_FRAGMENT;
                if fo & 0xfff8 != 0 {
                    first_fragment = false;
                    done = true;
                    break;
                }
            }
            _ => {
                done = true;
                break;
            }
        }
        if off > MAX_L4_OFFSET {
            return Parsed::Unparsed;
        }
    }
    if !done {
        return Parsed::Unparsed;
    }
    let flow = Flow {
        src,
        dst,
        sport: 0,
        dport: 0,
        proto: next,
        family: FAMILY_V6,
        flags,
        l3_off: l3 as u16,
        l4_off: 0,
    };
    if !first_fragment {
        return Parsed::Ip(flow);
    }
    l4(ctx, flow, off)
}

/// Ports, or ICMP type/code, into the flow key.
#[inline(always)]
fn l4<C: Packet>(ctx: &C, mut flow: Flow, off: usize) -> Parsed {
    if off > MAX_L4_OFFSET {
        return Parsed::Unparsed;
    }
    match flow.proto {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP | IPPROTO_DCCP => {
            let Some(p) = at::<4>(ctx, off) else {
                return short_l4(&flow);
            };
            flow.sport = u16::from_be_bytes([p[0], p[1]]);
            flow.dport = u16::from_be_bytes([p[2], p[3]]);
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if (flow.proto == IPPROTO_ICMP) != (flow.family == FAMILY_V4) {
                // ICMPv4 inside IPv6 or ICMPv6 inside IPv4: no type/code semantics.
                flow.l4_off = off as u16;
                return Parsed::Ip(flow);
            }
            let Some([t, c]) = at::<2>(ctx, off) else {
                return short_l4(&flow);
            };
            // Router solicitation/advertisement, neighbour solicitation/advertisement,
            // redirect: the link's own plumbing, never redirected.
            if flow.proto == IPPROTO_ICMPV6 && (133..=137).contains(&t) {
                return Parsed::ArpNd;
            }
            flow.sport = u16::from(t);
            flow.dport = u16::from(c);
        }
        _ => {}
    }
    flow.l4_off = off as u16;
    Parsed::Ip(flow)
}

/// A transport header too short for its ports. Unfragmented, the kernel drops it. A first
/// fragment (RFC 1858's tiny fragment) is reassembled by the kernel with the next ones into
/// a packet whose ports a rule may name: unknown ports, so fail closed, as for a long
/// extension header chain.
#[inline(always)]
fn short_l4(flow: &Flow) -> Parsed {
    if flow.flags & META_F_FRAGMENT != 0 {
        Parsed::Unparsed
    } else {
        Parsed::Malformed
    }
}
