//! Path MTU on the output path, as the kernel does it for forwarded traffic:
//!
//! - the MTU a bundle leaves for the inner packet: `xfrm_state_mtu` per SA (esp4/esp6
//!   `header_len`/`trailer_len` from esp_init_state, ah from ah_init_state), chained over the
//!   bundle as `xfrm_init_pmtu` does;
//! - the size check before the transform (`ip_forward`'s `ip_exceeds_mtu` and
//!   `xfrm4_tunnel_check_size`; `ip6_forward`'s `ip6_pkt_too_big` and `xfrm6_tunnel_check_size`);
//! - the error back to the sender built in place: ICMP fragmentation needed (`__icmp_send`)
//!   and ICMPv6 packet too big (`icmp6_send`), with the kernel's eligibility rules;
//! - fragmentation of the outer packet when it does not fit the link (`ip_do_fragment`'s
//!   slow path, `ip6_fragment`'s slow path), one fragment at a time into buffers the caller
//!   provides: nothing is allocated per packet.
//!
//! Everything here is a pure function over byte buffers; the worker supplies MTUs, source
//! addresses and IP IDs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use thiserror::Error;

use crate::frame::{Frame, FrameError};
use crate::sa::{EncapType, SaConfig, XfrmMode, XfrmProto};
use crate::wire::icmp::{self, IcmpPacket};
use crate::wire::ipv4::{self, Ipv4Packet, FLAG_MF, FRAG_OFFSET_MASK};
use crate::wire::ipv6::{self, Ipv6Packet};
use crate::wire::{checksum, proto, WireError};

/// RFC 8200 §5: every IPv6 link carries 1280 bytes; PMTU never goes below it.
pub const IPV6_MIN_MTU: u32 = 1280;
/// RFC 791: the smallest MTU fragmentation can work with (ip_fragment's "mtu < 68").
pub const IPV4_MIN_MTU: u32 = 68;

/// RFC 1812 §4.3.2.3 / __icmp_send: an ICMP error is at most 576 bytes.
const ICMP_ERROR_MAX: usize = 576;
const ICMP_HEADER_LEN: usize = icmp::ERROR_HEADER_LEN;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
/// NR_ICMP_TYPES: types above it are unknown and never answered.
const NR_ICMP_TYPES: u8 = 18;
const ICMPV6_PKT_TOOBIG: u8 = 2;
/// Types below 128 are ICMPv6 errors (ICMPV6_INFOMSG_MASK clear).
const ICMPV6_INFOMSG_MASK: u8 = 0x80;
/// The default TTL / hop limit (sysctl ip_default_ttl, IPv6 devconf hop_limit).
const DEFAULT_TTL: u8 = 64;
/// __icmp_send: tos = RT_TOS(iph->tos) | IPTOS_PREC_INTERNETCONTROL for errors.
const IPTOS_TOS_MASK: u8 = 0x1e;
const IPTOS_PREC_INTERNETCONTROL: u8 = 0xc0;
const FRAG_HDR_LEN: usize = ipv6::FRAG_HEADER_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum PmtuError {
    #[error("malformed packet")]
    Malformed,
    /// The kernel would not send an ICMP error for this packet (a non-first fragment, an
    /// ICMP error, a multicast/broadcast destination, a source that is not one node).
    #[error("no ICMP error is sent for this packet")]
    NotEligible,
    /// IPv4 with DF set: fragmenting it is not allowed.
    #[error("DF set: cannot fragment")]
    DontFragment,
    /// The MTU leaves fewer than 8 data bytes per fragment.
    #[error("MTU {0} too small to fragment")]
    MtuTooSmall(u32),
    #[error("buffer too small: need {need}, have {have}")]
    NoRoom { need: usize, have: usize },
}

impl From<WireError> for PmtuError {
    fn from(_: WireError) -> Self {
        PmtuError::Malformed
    }
}

impl From<FrameError> for PmtuError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::NoHeadroom { need, have } | FrameError::NoTailroom { need, have } => {
                PmtuError::NoRoom { need, have }
            }
            FrameError::TooShort { .. } => PmtuError::Malformed,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Overhead of one SA and the MTU it leaves.

/// What one SA adds to a packet, as the kernel's `x->props.header_len` / `trailer_len`,
/// plus what `xfrm_state_mtu` needs to undo ESP's padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaMtu {
    pub proto: XfrmProto,
    /// Bytes in front: ESP header + IV (+ UDP encap) or the AH header, plus the outer IP
    /// header in tunnel mode.
    pub header_len: u32,
    /// Bytes behind at most: ESP's ALIGN(blocksize, 4) of padding + pad length + next
    /// header + ICV; 0 for AH.
    pub trailer_len: u32,
    /// ESP's ICV length (crypto_aead_authsize).
    pub authsize: u32,
    /// ESP's ALIGN(crypto_aead_blocksize, 4).
    pub blksize: u32,
    /// Transport mode: the IP header, which ESP does not pad (xfrm_state_mtu's net_adj).
    pub net_adj: u32,
}

const ESP_HDR_LEN: u32 = 8; // struct ip_esp_hdr
const AH_HDR_LEN: u32 = 12; // struct ip_auth_hdr without the ICV
const UDP_HDR_LEN: u32 = 8;

fn align(v: u32, a: u32) -> u32 {
    v.div_ceil(a) * a
}

fn outer_ip_len(addr: IpAddr) -> u32 {
    match addr {
        IpAddr::V4(_) => ipv4::HEADER_LEN as u32,
        IpAddr::V6(_) => ipv6::HEADER_LEN as u32,
    }
}

impl SaMtu {
    /// From an SA's config: the outer family is the SA's (its destination address), as
    /// the kernel picks esp4/esp6 and ah4/ah6 by `x->props.family`.
    pub fn from_sa(sa: &SaConfig) -> Self {
        let outer = outer_ip_len(sa.id.daddr);
        let tunnel = sa.mode == XfrmMode::Tunnel;
        match sa.id.proto {
            XfrmProto::Esp => {
                // The IV and block size of the transform (8 and 1 for the AEADs, 16 and 16
                // for CBC, 8 and 1 for CTR, 0 and 1 for NULL); ESP with only an integrity
                // algorithm is ecb(cipher_null): no IV, block size 1.
                let ivsize = sa.algorithm.esp_iv_len() as u32;
                let blocksize = sa.algorithm.esp_block_size() as u32;
                let authsize = sa.algorithm.icv_bits() / 8;
                let encap = sa.encap.map(|e| e.kind);
                Self::esp(outer, tunnel, ivsize, blocksize, authsize, encap)
            }
            XfrmProto::Ah => {
                let icv = sa.algorithm.icv_bits() / 8;
                // ah4_init_state: XFRM_ALIGN4 with `flag align4`, XFRM_ALIGN8 otherwise;
                // ah6_init_state: always XFRM_ALIGN8.
                let align4 = sa.flags.align4 && matches!(sa.id.daddr, IpAddr::V4(_));
                Self::ah(outer, tunnel, icv, align4)
            }
        }
    }

    /// esp_init_state / esp6_init_state for an AEAD of `ivsize`, `blocksize`, `authsize`.
    /// `outer` is the outer IP header length (20 or 40).
    pub fn esp(
        outer: u32,
        tunnel: bool,
        ivsize: u32,
        blocksize: u32,
        authsize: u32,
        encap: Option<EncapType>,
    ) -> Self {
        let mut header_len = ESP_HDR_LEN + ivsize;
        if tunnel {
            header_len += outer;
        }
        header_len += match encap {
            None => 0,
            Some(EncapType::EspInUdp) => UDP_HDR_LEN,
            // Two zero words of the non-IKE marker after the UDP header.
            Some(EncapType::EspInUdpNonIke) => UDP_HDR_LEN + 8,
        };
        let blksize = align(blocksize.max(1), 4);
        Self {
            proto: XfrmProto::Esp,
            header_len,
            trailer_len: blksize + 1 + authsize,
            authsize,
            blksize,
            net_adj: if tunnel { 0 } else { outer },
        }
    }

    /// ah_init_state / ah6_init_state for an ICV of `icv_len` bytes.
    pub fn ah(outer: u32, tunnel: bool, icv_len: u32, align4: bool) -> Self {
        let unit = if align4 { 4 } else { 8 };
        let mut header_len = align(AH_HDR_LEN + icv_len, unit);
        if tunnel {
            header_len += outer;
        }
        Self {
            proto: XfrmProto::Ah,
            header_len,
            trailer_len: 0,
            authsize: icv_len,
            blksize: 0,
            net_adj: 0,
        }
    }

    /// The most this SA adds to a packet (room the frame must have).
    pub fn max_overhead(&self) -> u32 {
        self.header_len + self.trailer_len
    }

    /// xfrm_state_mtu: the largest packet that still fits `mtu` after this SA. For ESP the
    /// padded payload is rounded down to the block size and the 2 trailer bytes taken off;
    /// in transport mode the IP header (net_adj) is not part of the padded payload.
    pub fn state_mtu(&self, mtu: u32) -> u32 {
        let mtu = i64::from(mtu);
        let r = match self.proto {
            XfrmProto::Ah => mtu - i64::from(self.header_len),
            XfrmProto::Esp => {
                let net_adj = i64::from(self.net_adj);
                let room = mtu - i64::from(self.header_len) - i64::from(self.authsize) - net_adj;
                if room < 0 {
                    return 0;
                }
                (room & !(i64::from(self.blksize) - 1)) + net_adj - 2
            }
        };
        r.clamp(0, i64::from(u32::MAX)) as u32
    }
}

/// xfrm_init_pmtu: the MTU a bundle leaves for the packet entering it. `bundle` is in
/// output order (the first SA applied first, i.e. innermost); the last SA sees `link_mtu`.
pub fn bundle_mtu(bundle: &[SaMtu], link_mtu: u32) -> u32 {
    bundle
        .iter()
        .rev()
        .fold(link_mtu, |mtu, sa| sa.state_mtu(mtu))
}

// ---------------------------------------------------------------------------------------
// The size check before the transform.

/// What happens to a packet entering a bundle whose MTU is `mtu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeCheck {
    /// Transform it. (An IPv4 packet without DF may still need its outer packet
    /// fragmented afterwards: see [`Fragmenter`].)
    Fits,
    /// IPv4 with DF over the MTU: drop, and send ICMP fragmentation needed with `mtu`.
    FragNeeded { mtu: u32 },
    /// IPv6 over the MTU: drop, and send ICMPv6 packet too big with `mtu` (>= 1280).
    PacketTooBig { mtu: u32 },
}

/// The check `ip_forward` (ip_exceeds_mtu) and `ip6_forward` (ip6_pkt_too_big) make
/// against the xfrm bundle's MTU, which is also what xfrm4_tunnel_check_size /
/// xfrm6_tunnel_check_size enforce: IPv4 over the MTU only matters with DF; IPv6 is never
/// fragmented by a router and its MTU is never reported below 1280 (a packet between the
/// bundle MTU and 1280 is sent, and its outer packet fragmented).
pub fn check_size(pkt: &[u8], mtu: u32) -> Result<SizeCheck, PmtuError> {
    match crate::wire::ip_version(pkt) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(pkt)?;
            if u32::from(ip.total_len()) > mtu && ip.dont_frag() {
                Ok(SizeCheck::FragNeeded { mtu })
            } else {
                Ok(SizeCheck::Fits)
            }
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(pkt)?;
            let mtu = mtu.max(IPV6_MIN_MTU);
            if ip.total_len() as u32 > mtu {
                Ok(SizeCheck::PacketTooBig { mtu })
            } else {
                Ok(SizeCheck::Fits)
            }
        }
        _ => Err(PmtuError::Malformed),
    }
}

/// [`check_size`] from the packet's parse: no second look at its header.
pub fn check_size_parsed(info: &crate::wire::flow::L4Info, mtu: u32) -> SizeCheck {
    if info.version == 6 {
        let mtu = mtu.max(IPV6_MIN_MTU);
        if info.ip_len as u32 > mtu {
            return SizeCheck::PacketTooBig { mtu };
        }
    } else if info.ip_len as u32 > mtu && info.df {
        return SizeCheck::FragNeeded { mtu };
    }
    SizeCheck::Fits
}

// ---------------------------------------------------------------------------------------
// ICMP errors back to the sender, built in place.

/// __icmp_send's refusals: only the first fragment is answered, never an ICMP error (nor
/// an unknown ICMP type), never a packet to multicast/broadcast, never a packet whose
/// source is not a single node.
fn icmp4_eligible(ip: &Ipv4Packet<&[u8]>) -> bool {
    if ip.frag_field() & FRAG_OFFSET_MASK != 0 {
        return false;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if dst.is_multicast() || dst.is_broadcast() {
        return false;
    }
    if src.is_unspecified() || src.is_multicast() || src.is_broadcast() || src.is_loopback() {
        return false;
    }
    if ip.protocol() == proto::ICMP {
        let Some(&ty) = ip.payload().first() else {
            return false;
        };
        // icmp_pointers[].error: dest unreachable, source quench, redirect, time
        // exceeded, parameter problem.
        if ty > NR_ICMP_TYPES || matches!(ty, 3 | 4 | 5 | 11 | 12) {
            return false;
        }
    }
    true
}

/// Turns the IPv4 packet in `frame` (IP header first) into the ICMP "fragmentation needed"
/// (type 3 code 4) that `icmp_send(skb, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, htonl(mtu))`
/// sends back to its source: from `src` (the gateway's address towards the sender), TTL 64,
/// DF clear (the ICMP socket's IP_PMTUDISC_DONT), TOS `RT_TOS(tos) | 0xc0`, quoting the
/// original packet up to 576 bytes in all. Uses 28 bytes of headroom.
pub fn icmp4_frag_needed(
    frame: &mut Frame<'_>,
    src: Ipv4Addr,
    mtu: u32,
    ident: u16,
) -> Result<(), PmtuError> {
    let (orig_src, tos, quote) = {
        let ip = Ipv4Packet::new_checked(frame.data())?;
        if !icmp4_eligible(&ip) {
            return Err(PmtuError::NotEligible);
        }
        let len = usize::from(ip.total_len());
        (
            ip.src_addr(),
            ip.tos(),
            len.min(ICMP_ERROR_MAX - 20 - ICMP_HEADER_LEN),
        )
    };
    frame.trim_tail(frame.len() - quote)?;
    let pkt = frame.push_head(ipv4::HEADER_LEN + ICMP_HEADER_LEN)?;
    let total = pkt.len();
    let (hdr, icmp) = pkt.split_at_mut(ipv4::HEADER_LEN);
    // un.gateway = htonl(mtu): RFC 1191's unused half-word, then the next-hop MTU.
    icmp::emit_error_header(icmp, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, mtu.min(0xffff));
    let c = !checksum::data(icmp);
    IcmpPacket::new_unchecked(icmp).set_checksum(c);

    let mut ip = Ipv4Packet::new_unchecked(hdr);
    ip.set_version_ihl(ipv4::HEADER_LEN);
    ip.set_tos((tos & IPTOS_TOS_MASK) | IPTOS_PREC_INTERNETCONTROL);
    ip.set_total_len(total as u16);
    ip.set_ident(ident);
    ip.set_frag_field(0);
    ip.set_ttl(DEFAULT_TTL);
    ip.set_protocol(proto::ICMP);
    ip.set_src_addr(src);
    ip.set_dst_addr(orig_src);
    ip.fill_checksum();
    Ok(())
}

/// icmp6_send's refusals: an unspecified or multicast source; an ICMPv6 error (or an
/// ICMPv6 packet too short to say, unless a later fragment: is_ineligible). Packet too big
/// is the one error sent even to a multicast destination.
fn icmp6_eligible(pkt: &[u8]) -> Result<bool, PmtuError> {
    let ip = Ipv6Packet::new_checked(pkt)?;
    let src = ip.src_addr();
    if src.is_unspecified() || src.is_multicast() {
        return Ok(false);
    }
    let pkt = &pkt[..ip.total_len()];
    let Ok(ul) = ipv6::upper_layer(pkt) else {
        return Ok(true); // ipv6_skip_exthdr failed: is_ineligible says "eligible"
    };
    if ul.proto == proto::ICMPV6 {
        match pkt.get(ul.offset) {
            None if ul.later_fragment => return Ok(true),
            None => return Ok(false),
            Some(&ty) if ty & ICMPV6_INFOMSG_MASK == 0 => return Ok(false),
            Some(_) => {}
        }
    }
    Ok(true)
}

/// Turns the IPv6 packet in `frame` into the ICMPv6 "packet too big" (type 2) that
/// `icmpv6_send(skb, ICMPV6_PKT_TOOBIG, 0, mtu)` sends: from `src`, hop limit 64, traffic
/// class 0, flow label 0 (Linux hashes one with auto_flowlabels; 0 is valid, RFC 6437),
/// quoting the original packet so the whole message fits 1280 bytes. Uses 48 bytes of
/// headroom.
pub fn icmp6_packet_too_big(
    frame: &mut Frame<'_>,
    src: Ipv6Addr,
    mtu: u32,
) -> Result<(), PmtuError> {
    if !icmp6_eligible(frame.data())? {
        return Err(PmtuError::NotEligible);
    }
    let (orig_src, quote) = {
        let ip = Ipv6Packet::new_checked(frame.data())?;
        let max = IPV6_MIN_MTU as usize - ipv6::HEADER_LEN - ICMP_HEADER_LEN;
        (ip.src_addr(), ip.total_len().min(max))
    };
    frame.trim_tail(frame.len() - quote)?;
    let pkt = frame.push_head(ipv6::HEADER_LEN + ICMP_HEADER_LEN)?;
    let payload_len = (pkt.len() - ipv6::HEADER_LEN) as u16;
    let (hdr, icmp) = pkt.split_at_mut(ipv6::HEADER_LEN);
    icmp::emit_error_header(icmp, ICMPV6_PKT_TOOBIG, 0, mtu);
    let sum = checksum::combine(&[
        checksum::pseudo_header_v6(src, orig_src, proto::ICMPV6, u32::from(payload_len)),
        checksum::data(icmp),
    ]);
    IcmpPacket::new_unchecked(icmp).set_checksum(!sum);

    let mut ip = Ipv6Packet::new_unchecked(hdr);
    ip.set_version_tc_flow(0, 0);
    ip.set_payload_len(payload_len);
    ip.set_next_header(proto::ICMPV6);
    ip.set_hop_limit(DEFAULT_TTL);
    ip.set_src_addr(src);
    ip.set_dst_addr(orig_src);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Fragmentation of the outer packet.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// `base`: the packet's own fragment offset in bytes; `more`: its own MF (fragmenting
    /// a fragment keeps MF on every piece).
    V4 { base: usize, more: bool },
    /// `nexthdr_at`: offset of the next-header byte that becomes 44 (prevhdr);
    /// `next`: what it named; `ident`: the fragment identification.
    V6 {
        nexthdr_at: usize,
        next: u8,
        ident: u32,
    },
}

/// A fragmentation plan for one packet: how many fragments, how long each is, and how to
/// write fragment `i` into a buffer. It holds no reference to the packet, so the caller
/// may write fragments 1.. into fresh buffers and then turn the packet itself into
/// fragment 0 ([`Fragmenter::first_in_place`]) without copying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragmenter {
    family: Family,
    /// Bytes copied in front of every fragment: the IPv4 header with options, or IPv6's
    /// unfragmentable part (the fragment header goes after it).
    hlen: usize,
    /// The fragmentable bytes (the packet's length minus `hlen`).
    left: usize,
    /// Data bytes per fragment but the last: a multiple of 8.
    chunk: usize,
    /// Data bytes the MTU leaves: the last fragment may use all of them (the kernel aligns
    /// only fragments that do not reach the end).
    room: usize,
}

impl Fragmenter {
    /// ip_do_fragment (slow path) of an IPv4 packet for a link of `mtu`: each fragment
    /// carries `(mtu - hlen) & !7` data bytes but the last, the original ID, MF on all but
    /// the last (on all if the packet was a non-last fragment), DF clear, its own length and
    /// header checksum; fragments after the first keep only the options with the copied
    /// bit (ip_options_fragment pads the others with NOOP). A DF packet is refused: the
    /// caller sends fragmentation needed instead, as ip_fragment does.
    pub fn ipv4(pkt: &[u8], mtu: u32) -> Result<Self, PmtuError> {
        let ip = Ipv4Packet::new_checked(pkt)?;
        if ip.dont_frag() {
            return Err(PmtuError::DontFragment);
        }
        let hlen = ip.header_len();
        let room = (mtu as usize).saturating_sub(hlen);
        if room < 8 {
            return Err(PmtuError::MtuTooSmall(mtu));
        }
        Ok(Self {
            family: Family::V4 {
                base: usize::from(ip.frag_offset()),
                more: ip.more_frags(),
            },
            hlen,
            left: usize::from(ip.total_len()) - hlen,
            chunk: room & !7,
            room,
        })
    }

    /// ip6_fragment (slow path) for a link of `mtu`: the unfragmentable part
    /// (ip6_find_1stfragopt) is copied in front of each fragment, followed by a fragment
    /// header naming what came after it, identification `ident` (ipv6_select_ident's job:
    /// the caller's), offset and M flag; `(mtu - hlen - 8) & !7` data bytes per fragment.
    pub fn ipv6(pkt: &[u8], mtu: u32, ident: u32) -> Result<Self, PmtuError> {
        let ip = Ipv6Packet::new_checked(pkt)?;
        let pkt = &pkt[..ip.total_len()];
        let (hlen, nexthdr_at) = ipv6::find_1stfragopt(pkt)?;
        if hlen > pkt.len() {
            return Err(PmtuError::Malformed);
        }
        let room = (mtu as usize).saturating_sub(hlen + FRAG_HDR_LEN);
        if room < 8 {
            return Err(PmtuError::MtuTooSmall(mtu));
        }
        Ok(Self {
            family: Family::V6 {
                nexthdr_at,
                next: pkt[nexthdr_at],
                ident,
            },
            hlen,
            left: pkt.len() - hlen,
            chunk: room & !7,
            room,
        })
    }

    /// How many fragments. An IPv4 packet that fits is one fragment equal to itself; an IPv6
    /// one would get a fragment header all the same, so check its length first.
    pub fn count(&self) -> usize {
        1 + self.left.saturating_sub(self.room).div_ceil(self.chunk)
    }

    fn extra(&self) -> usize {
        match self.family {
            Family::V4 { .. } => 0,
            Family::V6 { .. } => FRAG_HDR_LEN,
        }
    }

    /// (offset, length) of fragment `i`'s data: ip_frag_next's `len = min(left, mtu)`,
    /// aligned down to 8 unless it reaches the end.
    fn data_range(&self, i: usize) -> (usize, usize) {
        let start = i * self.chunk;
        let rest = self.left.saturating_sub(start);
        (start, if rest <= self.room { rest } else { self.chunk })
    }

    /// Length of fragment `i` on the wire (IP header included).
    pub fn fragment_len(&self, i: usize) -> usize {
        self.hlen + self.extra() + self.data_range(i).1
    }

    /// Writes fragment `i` of `pkt` (the packet the plan was made for) at the start of
    /// `out`; returns its length.
    pub fn write(&self, pkt: &[u8], i: usize, out: &mut [u8]) -> Result<usize, PmtuError> {
        if i >= self.count() || pkt.len() < self.hlen + self.left {
            return Err(PmtuError::Malformed);
        }
        let need = self.fragment_len(i);
        if out.len() < need {
            return Err(PmtuError::NoRoom {
                need,
                have: out.len(),
            });
        }
        let (start, len) = self.data_range(i);
        let hdr_end = self.hlen + self.extra();
        out[..self.hlen].copy_from_slice(&pkt[..self.hlen]);
        out[hdr_end..need].copy_from_slice(&pkt[self.hlen + start..self.hlen + start + len]);
        if i > 0 {
            if let Family::V4 { .. } = self.family {
                options_fragment(&mut out[ipv4::HEADER_LEN..self.hlen]);
            }
        }
        self.fix_header(&mut out[..need], i);
        Ok(need)
    }

    /// Turns `frame` (holding the packet, IP header first) into fragment 0 in place. Call it
    /// after writing fragments 1.., which read the bytes this cuts off. IPv6 needs 8 bytes
    /// of headroom for the fragment header (only the unfragmentable part moves).
    pub fn first_in_place(&self, frame: &mut Frame<'_>) -> Result<(), PmtuError> {
        if frame.len() < self.hlen + self.left {
            return Err(PmtuError::Malformed);
        }
        let keep = self.hlen + self.data_range(0).1;
        frame.trim_tail(frame.len() - keep)?;
        if self.extra() > 0 {
            frame.open_gap(self.hlen, self.extra())?;
        }
        self.fix_header(frame.data_mut(), 0);
        Ok(())
    }

    /// Header fields of fragment `i` in `frag` (header + data already in place).
    fn fix_header(&self, frag: &mut [u8], i: usize) {
        let (start, len) = self.data_range(i);
        let last = start + len >= self.left;
        match self.family {
            Family::V4 { base, more } => {
                let mut ip = Ipv4Packet::new_unchecked(frag);
                let mut field = (((base + start) >> 3) as u16) & FRAG_OFFSET_MASK;
                if !last || more {
                    field |= FLAG_MF;
                }
                ip.set_frag_field(field);
                ip.set_total_len((self.hlen + len) as u16);
                ip.fill_checksum();
            }
            Family::V6 {
                nexthdr_at,
                next,
                ident,
            } => {
                frag[nexthdr_at] = proto::FRAGMENT;
                let fh = &mut frag[self.hlen..self.hlen + FRAG_HDR_LEN];
                ipv6::emit_fragment_header(fh, next, start, !last, ident);
                let plen = (self.hlen + FRAG_HDR_LEN + len - ipv6::HEADER_LEN) as u16;
                Ipv6Packet::new_unchecked(frag).set_payload_len(plen);
            }
        }
    }
}

/// ip_options_fragment: options without the "copied" bit become NOOPs in the header used
/// for the fragments after the first (the header keeps its length).
fn options_fragment(opts: &mut [u8]) {
    const IPOPT_END: u8 = 0;
    const IPOPT_NOOP: u8 = 1;
    const IPOPT_COPIED: u8 = 0x80;
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            IPOPT_END => return,
            IPOPT_NOOP => i += 1,
            ty => {
                let Some(&l) = opts.get(i + 1) else { return };
                let l = usize::from(l);
                if l < 2 || i + l > opts.len() {
                    return;
                }
                if ty & IPOPT_COPIED == 0 {
                    opts[i..i + l].fill(IPOPT_NOOP);
                }
                i += l;
            }
        }
    }
}

/// The IP length of the packet (`total_len` or 40 + `payload_len`), for callers that
/// compare it to an MTU.
pub fn ip_len(pkt: &[u8]) -> Option<usize> {
    match crate::wire::ip_version(pkt)? {
        4 => Ipv4Packet::new_checked(pkt)
            .ok()
            .map(|p| usize::from(p.total_len())),
        _ => Ipv6Packet::new_checked(pkt).ok().map(|p| p.total_len()),
    }
}

#[cfg(test)]
mod tests;
