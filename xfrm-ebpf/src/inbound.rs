//! The outside interface: is this packet IPsec for one of our SAs? What the kernel's
//! xfrm4_rcv / xfrm6_rcv (ESP 50, AH 51) and xfrm4_udp_encap_rcv (ESP in UDP on a NAT-T
//! socket) find before xfrm_input: the SPI (xfrm_parse_spi), then the SA by (daddr, SPI,
//! protocol) (xfrm_state_lookup).

use xfrm_common::{
    Config, Counter, SaKey, ENCAP_ESPINUDP, ENCAP_ESPINUDP_NON_IKE, ENCAP_NONE, MAX_ENCAP_PORTS,
    META_F_FRAGMENT, META_F_NON_IKE, META_F_UDP_ENCAP,
};

use crate::{
    parse::{at, Flow},
    SAS,
};

const IPPROTO_UDP: u8 = 17;
const IPPROTO_ESP: u8 = 50;
const IPPROTO_AH: u8 = 51;

/// The verdict: `why` is [`Counter::RedirectIn`] for a known SA (then the encapsulation's
/// `META_F_*` in `flags`), else the pass counter that says why not.
/// A plain struct with every field always set, not an enum with payloads: LLVM may leave the
/// payload registers of the other variants undefined, and the verifier refuses to read them.
pub struct Inbound {
    pub why: Counter,
    pub flags: u16,
}

impl Inbound {
    const fn pass(why: Counter) -> Self {
        Self { why, flags: 0 }
    }
    const NOT_IPSEC: Self = Self::pass(Counter::PassNotIpsec);
    const UNKNOWN_SPI: Self = Self::pass(Counter::PassUnknownSpi);
    const IKE: Self = Self::pass(Counter::PassIke);
    const KEEPALIVE: Self = Self::pass(Counter::PassNattKeepalive);
    const FRAGMENT: Self = Self::pass(Counter::PassFragment);
    const MALFORMED: Self = Self::pass(Counter::PassMalformed);
}

#[inline(always)]
pub fn classify(ctx: &aya_ebpf::programs::XdpContext, flow: &Flow, cfg: &Config) -> Inbound {
    let off = usize::from(flow.l4_off);
    let fragment = flow.flags & META_F_FRAGMENT != 0;
    match flow.proto {
        IPPROTO_ESP | IPPROTO_AH => {
            // The worker cannot reassemble: the kernel does, and has no SA of ours.
            if fragment {
                return Inbound::FRAGMENT;
            }
            // xfrm_parse_spi pulls the whole fixed header: 8 bytes of ESP, 12 of AH.
            let spi = if flow.proto == IPPROTO_ESP {
                match at::<8>(ctx, off) {
                    Some(h) => u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
                    None => return Inbound::MALFORMED,
                }
            } else {
                match at::<12>(ctx, off) {
                    Some(h) => u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
                    None => return Inbound::MALFORMED,
                }
            };
            sa(flow, spi, flow.proto, 0)
        }
        // A non-first fragment has no ports (l4_off 0): not recognisable, the host's.
        IPPROTO_UDP if off != 0 => {
            let kind = encap_kind(cfg, flow.dport);
            if kind == ENCAP_NONE {
                return Inbound::NOT_IPSEC;
            }
            if fragment {
                return Inbound::FRAGMENT;
            }
            udp_encap(ctx, flow, off, kind)
        }
        _ => Inbound::NOT_IPSEC,
    }
}

/// The encapsulation the NAT-T socket on `port` would have (ENCAP_NONE: no such socket).
#[inline(always)]
fn encap_kind(cfg: &Config, port: u16) -> u8 {
    let mut kind = ENCAP_NONE;
    for i in 0..MAX_ENCAP_PORTS {
        let e = &cfg.encap[i];
        if e.port != 0 && e.port == port {
            kind = e.kind;
        }
    }
    kind
}

/// __xfrm4_udp_encap_rcv: keepalive, ESP (non-zero first word; or behind the 8-byte non-IKE
/// marker), or IKE. Lengths from the UDP header, as the kernel's (the frame may be padded).
#[inline(always)]
fn udp_encap(ctx: &aya_ebpf::programs::XdpContext, flow: &Flow, off: usize, kind: u8) -> Inbound {
    let Some(u) = at::<8>(ctx, off) else {
        return Inbound::MALFORMED;
    };
    let ulen = usize::from(u16::from_be_bytes([u[4], u[5]]));
    if ulen < 8 {
        return Inbound::MALFORMED;
    }
    let len = ulen - 8;
    if len == 1 {
        return match at::<9>(ctx, off) {
            Some(p) if p[8] == 0xff => Inbound::KEEPALIVE,
            Some(_) => Inbound::IKE,
            None => Inbound::MALFORMED,
        };
    }
    if kind == ENCAP_ESPINUDP {
        // "ESP Packet without Non-ESP header": longer than an ESP header, SPI != 0.
        if len <= 8 {
            return Inbound::IKE;
        }
        let Some(p) = at::<12>(ctx, off) else {
            return Inbound::MALFORMED;
        };
        let spi = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
        if spi == 0 {
            return Inbound::IKE;
        }
        return sa(flow, spi, IPPROTO_ESP, META_F_UDP_ENCAP);
    }
    if kind == ENCAP_ESPINUDP_NON_IKE {
        // "ESP Packet with Non-IKE marker": two zero words, then ESP.
        if len <= 16 {
            return Inbound::IKE;
        }
        let Some(p) = at::<20>(ctx, off) else {
            return Inbound::MALFORMED;
        };
        let marker = u64::from_ne_bytes([p[8], p[9], p[10], p[11], p[12], p[13], p[14], p[15]]);
        if marker != 0 {
            return Inbound::IKE;
        }
        let spi = u32::from_be_bytes([p[16], p[17], p[18], p[19]]);
        return sa(flow, spi, IPPROTO_ESP, META_F_UDP_ENCAP | META_F_NON_IKE);
    }
    Inbound::NOT_IPSEC
}

/// xfrm_state_lookup(daddr, spi, proto).
#[inline(always)]
fn sa(flow: &Flow, spi: u32, proto: u8, flags: u16) -> Inbound {
    let key = SaKey {
        daddr: flow.dst,
        spi,
        family: flow.family,
        proto,
        _pad: 0,
    };
    // The worker looks the SA up again by the same key in its own tables: only whether
    // there is one matters here.
    match SAS.get_ptr(key) {
        Some(_) => Inbound {
            why: Counter::RedirectIn,
            flags,
        },
        None => Inbound::UNKNOWN_SPI,
    }
}
