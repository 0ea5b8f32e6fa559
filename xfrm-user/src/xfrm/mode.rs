//! Outer modes (x->outer_mode->output): transport and tunnel, IPv4 and IPv6, as in
//! net/xfrm/xfrm_output.c. Each leaves the packet as
//! `| IP header (+ kept extension headers) | gap of type_header_len | data to protect |`
//! with the gap for ESP/AH to fill, and says where things are in an [`XfrmLayout`] (the
//! kernel keeps the same in skb->mac_header, ->transport_header and ->data).
//!
//! The input side (xfrm_inner_mode_input: xfrm4_transport_input, xfrm4_remove_tunnel_encap,
//! …) is at the end, beside them.

use std::net::IpAddr;

use crate::frame::Frame;
use crate::sa::XfrmMode;
use crate::wire::{ipv4, ipv6, proto, Ipv4Packet, Ipv6Packet};

use super::state::SecurityAssociation;

/// Where the mode put things, for the type (ESP/AH) output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XfrmLayout {
    /// The byte naming the protocol after the IP headers: IPv4 protocol, IPv6 next header
    /// or the next-header byte of the last extension header kept in front
    /// (*skb_mac_header(skb) in the kernel).
    pub proto_off: usize,
    /// Start of the gap: where the ESP/AH header (or the NAT-T UDP header) goes.
    pub xfrm_off: usize,
    /// Start of the data to protect (xfrm_off + type_header_len).
    pub payload_off: usize,
    /// What `proto_off` named before: the next header of the ESP trailer / AH header.
    pub inner_proto: u8,
    /// The IP header at offset 0 is IPv6.
    pub v6: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ModeError {
    /// The IP header (or an IPv6 extension-header chain) does not parse.
    #[error("malformed packet")]
    Malformed,
    /// The packet's family cannot go through this SA (xfrm_inner_extract_output's
    /// -EAFNOSUPPORT, or transport mode across families).
    #[error("address family not supported by this SA")]
    Family,
    /// No headroom for the new headers.
    #[error("no room for the headers")]
    NoRoom,
    /// Input, tunnel mode: the SA protected something that is not an IP packet (next
    /// header neither IPIP nor IPv6).
    #[error("tunnel carries next header {0}, not IP")]
    NextHeader(u8),
    /// Input, tunnel mode: outer CE over a not-ECT inner packet (RFC 6040: drop).
    #[error("CE on a not-ECT packet")]
    EcnDrop,
}

/// x->outer_mode output: xfrm_outer_mode_output.
#[inline]
pub fn xfrm_outer_mode_output(
    x: &SecurityAssociation,
    frame: &mut Frame<'_>,
) -> Result<XfrmLayout, ModeError> {
    xfrm_outer_mode_output_with(x, frame, None)
}

/// [`xfrm_outer_mode_output`] with the inner header already read (`inner`: the packet's
/// parse, for the first SA of a bundle), so that tunnel mode does not read it again.
#[inline]
pub fn xfrm_outer_mode_output_with(
    x: &SecurityAssociation,
    frame: &mut Frame<'_>,
    inner: Option<InnerHeader>,
) -> Result<XfrmLayout, ModeError> {
    match (x.cfg.mode, x.props.outer_v6) {
        (XfrmMode::Transport, false) => xfrm4_transport_output(x, frame),
        (XfrmMode::Transport, true) => xfrm6_transport_output(x, frame),
        (XfrmMode::Tunnel, false) => xfrm4_prepare_output(x, frame, inner),
        (XfrmMode::Tunnel, true) => xfrm6_prepare_output(x, frame, inner),
    }
}

/// xfrm4_transport_output: the IPv4 header (with its options) moves forward by
/// type_header_len; the payload stays where it is.
pub fn xfrm4_transport_output(
    x: &SecurityAssociation,
    frame: &mut Frame<'_>,
) -> Result<XfrmLayout, ModeError> {
    let ihl = {
        let ip = Ipv4Packet::new_checked(frame.data()).map_err(|_| ModeError::Malformed)?;
        ip.header_len()
    };
    let inner_proto = frame.data()[ipv4::PROTOCOL_OFFSET];
    let n = x.props.type_header_len;
    frame.open_gap(ihl, n).map_err(|_| ModeError::NoRoom)?;
    Ok(XfrmLayout {
        proto_off: ipv4::PROTOCOL_OFFSET,
        xfrm_off: ihl,
        payload_off: ihl + n,
        inner_proto,
        v6: false,
    })
}

/// xfrm6_transport_output: the IPv6 header and the extension headers that must stay in
/// front (ip6_find_1stfragopt) move forward; the next-header byte that named the rest is
/// the one ESP/AH will rewrite.
pub fn xfrm6_transport_output(
    x: &SecurityAssociation,
    frame: &mut Frame<'_>,
) -> Result<XfrmLayout, ModeError> {
    Ipv6Packet::new_checked(frame.data()).map_err(|_| ModeError::Malformed)?;
    let (hdr_len, prevhdr) =
        ipv6::find_1stfragopt(frame.data()).map_err(|_| ModeError::Malformed)?;
    let inner_proto = frame.data()[prevhdr];
    let n = x.props.type_header_len;
    frame.open_gap(hdr_len, n).map_err(|_| ModeError::NoRoom)?;
    Ok(XfrmLayout {
        proto_off: prevhdr,
        xfrm_off: hdr_len,
        payload_off: hdr_len + n,
        inner_proto,
        v6: true,
    })
}

/// What xfrm4_extract_header / xfrm6_extract_header keep of the inner header
/// (XFRM_MODE_SKB_CB) for building the outer one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InnerHeader {
    pub v6: bool,
    /// TOS / traffic class.
    pub tos: u8,
    /// DF as the outer header may copy it: the inner DF for IPv4; always set for IPv6
    /// (xfrm6_extract_header sets frag_off = htons(IP_DF)).
    pub df: bool,
    /// The inner flow label (0 for IPv4).
    pub flow_lbl: u32,
    pub len: usize,
}

/// xfrm_inner_extract_output: reads the inner header and checks the SA may carry its
/// family. With a selector, the inner family is the selector's; without one, the SA's own
/// family, unless `flag af-unspec` (x->sel.family == AF_UNSPEC: any family).
#[inline]
pub fn xfrm_inner_extract_output(
    x: &SecurityAssociation,
    pkt: &[u8],
) -> Result<InnerHeader, ModeError> {
    xfrm_inner_check_family(x, inner_header(pkt)?)
}

impl From<&crate::wire::flow::L4Info> for InnerHeader {
    fn from(i: &crate::wire::flow::L4Info) -> Self {
        Self {
            v6: i.version == 6,
            tos: i.tos,
            df: i.df,
            flow_lbl: i.flow_lbl,
            len: i.ip_len,
        }
    }
}

/// The part of xfrm_inner_extract_output that checks the SA may carry the inner family.
#[inline]
fn xfrm_inner_check_family(
    x: &SecurityAssociation,
    inner: InnerHeader,
) -> Result<InnerHeader, ModeError> {
    let allowed = match &x.cfg.selector {
        Some(sel) => sel.src.addr.is_ipv6() == inner.v6,
        None => x.cfg.flags.af_unspec || x.props.outer_v6 == inner.v6,
    };
    if !allowed {
        return Err(ModeError::Family);
    }
    Ok(inner)
}

/// The inner header's fields (xfrm4/6_extract_header).
#[inline]
fn inner_header(pkt: &[u8]) -> Result<InnerHeader, ModeError> {
    Ok(match crate::wire::ip_version(pkt) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(pkt).map_err(|_| ModeError::Malformed)?;
            InnerHeader {
                v6: false,
                tos: ip.tos(),
                df: ip.dont_frag(),
                flow_lbl: 0,
                len: usize::from(ip.total_len()),
            }
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(pkt).map_err(|_| ModeError::Malformed)?;
            InnerHeader {
                v6: true,
                tos: ip.traffic_class(),
                df: true,
                flow_lbl: ip.flow_label(),
                len: ip.total_len(),
            }
        }
        _ => return Err(ModeError::Malformed),
    })
}

/// INET_ECN_encapsulate (include/net/inet_ecn.h): the outer ECN field copies the inner one,
/// except that CE becomes ECT(0) (RFC 3168 section 9.1.1 full functionality, which the
/// kernel follows; RFC 6040 normal mode would copy CE as well).
#[inline]
pub fn inet_ecn_encapsulate(outer: u8, inner: u8) -> u8 {
    const CE: u8 = 3;
    const ECT_0: u8 = 2;
    let ecn = if inner & 3 == CE { ECT_0 } else { inner & 3 };
    (outer & !3) | ecn
}

/// The outer DS field: the inner DSCP unless dont-encap-dscp, ECN encapsulated, and ECN
/// cleared with noecn.
#[inline]
fn outer_dsfield(x: &SecurityAssociation, inner_tos: u8) -> u8 {
    let tos = if x.cfg.extra_flags.dont_encap_dscp {
        0
    } else {
        inner_tos
    };
    let tos = inet_ecn_encapsulate(tos, inner_tos);
    if x.cfg.flags.noecn {
        tos & !3
    } else {
        tos
    }
}

/// xfrm4_prepare_output + xfrm4_tunnel_encap_add: a new outer IPv4 header (RFC 4301
/// section 5.1.2.1) in front of the whole inner packet.
#[inline]
pub fn xfrm4_prepare_output(
    x: &SecurityAssociation,
    frame: &mut Frame<'_>,
    inner: Option<InnerHeader>,
) -> Result<XfrmLayout, ModeError> {
    let inner = match inner {
        Some(i) => xfrm_inner_check_family(x, i)?,
        None => xfrm_inner_extract_output(x, frame.data())?,
    };
    let (IpAddr::V4(saddr), IpAddr::V4(daddr)) = (x.saddr(), x.daddr()) else {
        return Err(ModeError::Family);
    };
    let hl = x.props.header_len;
    let d = frame.push_head(hl).map_err(|_| ModeError::NoRoom)?;
    let mut top = Ipv4Packet::new_unchecked(&mut d[..ipv4::HEADER_LEN]);
    top.set_version_ihl(ipv4::HEADER_LEN);
    top.set_tos(outer_dsfield(x, inner.tos));
    // DF copied unless nopmtudisc (xfrm6_extract_header gives an IPv6 inner packet DF).
    // xfrm4_tunnel_encap_add has a small_ipv6 exception, but xfrm4_prepare_output has set
    // skb->protocol to IPv4 before it runs, so it never fires: Linux (6.1, seen through the
    // kernel peer in tests/kernel-peer) sends small IPv6 inner packets with DF too.
    let df = !x.cfg.flags.nopmtudisc && inner.df;
    top.set_frag_field(if df { ipv4::FLAG_DF } else { 0 });
    top.set_ttl(x.outer_hop_limit());
    top.set_protocol(if inner.v6 { proto::IPV6 } else { proto::IPIP });
    // The identification is set by xfrm_output_one once the sequence number is known
    // (SecurityAssociation::ip_ident); ip_select_ident does it here in the kernel.
    top.set_ident(0);
    top.set_src_addr(saddr);
    top.set_dst_addr(daddr);
    top.set_total_len(0);
    top.set_checksum(0);
    Ok(XfrmLayout {
        proto_off: ipv4::PROTOCOL_OFFSET,
        xfrm_off: ipv4::HEADER_LEN,
        payload_off: hl,
        inner_proto: if inner.v6 { proto::IPV6 } else { proto::IPIP },
        v6: false,
    })
}

/// xfrm6_prepare_output + xfrm6_tunnel_encap_add: a new outer IPv6 header; the flow label
/// is the inner one (0 for an IPv4 inner packet).
#[inline]
pub fn xfrm6_prepare_output(
    x: &SecurityAssociation,
    frame: &mut Frame<'_>,
    inner: Option<InnerHeader>,
) -> Result<XfrmLayout, ModeError> {
    let inner = match inner {
        Some(i) => xfrm_inner_check_family(x, i)?,
        None => xfrm_inner_extract_output(x, frame.data())?,
    };
    let (IpAddr::V6(saddr), IpAddr::V6(daddr)) = (x.saddr(), x.daddr()) else {
        return Err(ModeError::Family);
    };
    let hl = x.props.header_len;
    let d = frame.push_head(hl).map_err(|_| ModeError::NoRoom)?;
    let mut top = Ipv6Packet::new_unchecked(&mut d[..ipv6::HEADER_LEN]);
    top.set_version_tc_flow(outer_dsfield(x, inner.tos), inner.flow_lbl);
    top.set_payload_len(0);
    top.set_next_header(if inner.v6 { proto::IPV6 } else { proto::IPIP });
    top.set_hop_limit(x.outer_hop_limit());
    top.set_src_addr(saddr);
    top.set_dst_addr(daddr);
    Ok(XfrmLayout {
        proto_off: ipv6::NEXT_HEADER_OFFSET,
        xfrm_off: ipv6::HEADER_LEN,
        payload_off: hl,
        inner_proto: if inner.v6 { proto::IPV6 } else { proto::IPIP },
        v6: true,
    })
}

/// What __ip_local_out / ip6_local_out do to the new packet before it leaves: the length
/// field, and for IPv4 the header checksum (ip_send_check). Fails when the packet no
/// longer fits an IP length field.
#[inline]
pub fn ip_local_out_fixup(pkt: &mut [u8], v6: bool) -> Result<(), ModeError> {
    if v6 {
        let plen = u16::try_from(pkt.len().saturating_sub(ipv6::HEADER_LEN))
            .map_err(|_| ModeError::NoRoom)?;
        let mut ip = Ipv6Packet::new_unchecked(pkt);
        ip.set_payload_len(plen);
    } else {
        let len = u16::try_from(pkt.len()).map_err(|_| ModeError::NoRoom)?;
        Ipv4Packet::new_unchecked(pkt).set_total_len_and_checksum(len);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Input: x->inner_mode input (net/xfrm/xfrm_input.c: xfrm_inner_mode_input,
// xfrm4_transport_input / xfrm6_transport_input, xfrm4_remove_tunnel_encap /
// xfrm6_remove_tunnel_encap). The type (ESP/AH) input has verified the packet, cut its
// trailer and left `XfrmLayout` saying where its header was; the mode removes that header
// and gives back an IP packet.

/// ECN codepoints (RFC 3168).
const ECN_NOT_ECT: u8 = 0;
const ECN_ECT_1: u8 = 1;
const ECN_ECT_0: u8 = 2;
const ECN_CE: u8 = 3;

/// RFC 6040 section 4.2 (figure 4): the inner ECN field after decapsulation, from the
/// arriving inner and outer ECN fields; None = drop (the outer was marked CE but the inner
/// packet's transport does not understand ECN: the congestion signal cannot be passed on).
///
/// The kernel's xfrm tunnels (ipip_ecn_decapsulate) only copy CE into an ECT inner header
/// and never drop; this follows RFC 6040 as the generic tunnels' INET_ECN_decapsulate does,
/// plus the ECT(1)-over-ECT(0) row the kernel leaves out.
pub fn inet_ecn_decapsulate(outer: u8, inner: u8) -> Option<u8> {
    let (outer, inner) = (outer & 3, inner & 3);
    match (inner, outer) {
        (ECN_NOT_ECT, ECN_CE) => None,
        (_, ECN_CE) => Some(ECN_CE),
        (ECN_ECT_0, ECN_ECT_1) => Some(ECN_ECT_1),
        _ => Some(inner),
    }
}

/// The inner DS field after decapsulation: DSCP from the outer header with decap-dscp
/// (ipv4_copy_dscp / ipv6_copy_dscp), ECN per RFC 6040 unless noecn.
fn inner_dsfield(x: &SecurityAssociation, outer: u8, inner: u8) -> Result<u8, ModeError> {
    let mut ds = inner;
    if x.cfg.flags.decap_dscp {
        ds = (outer & !3) | (ds & 3);
    }
    if !x.cfg.flags.noecn {
        let ecn = inet_ecn_decapsulate(outer, inner).ok_or(ModeError::EcnDrop)?;
        ds = (ds & !3) | ecn;
    }
    Ok(ds)
}

/// xfrm_inner_mode_input: the mode's input for the packet the type input left in `frame`,
/// `l` saying where the type's header was and `l.inner_proto` what it protected.
pub fn xfrm_inner_mode_input(
    x: &SecurityAssociation,
    frame: &mut Frame<'_>,
    l: &XfrmLayout,
) -> Result<(), ModeError> {
    match x.cfg.mode {
        XfrmMode::Transport if l.v6 => xfrm6_transport_input(frame, l),
        XfrmMode::Transport => xfrm4_transport_input(frame, l),
        XfrmMode::Tunnel => xfrm_remove_tunnel_encap(x, frame, l),
    }
}

/// xfrm4_transport_input + xfrm4_transport_finish: the IPv4 header (with its options) moves
/// back over the ESP/AH header (and the NAT-T UDP header); protocol, total length and
/// header checksum become those of the packet without them.
pub fn xfrm4_transport_input(frame: &mut Frame<'_>, l: &XfrmLayout) -> Result<(), ModeError> {
    let d = frame
        .close_gap(l.xfrm_off, l.payload_off - l.xfrm_off)
        .map_err(|_| ModeError::Malformed)?;
    let len = u16::try_from(d.len()).map_err(|_| ModeError::Malformed)?;
    let mut ip = Ipv4Packet::new_unchecked(d);
    ip.set_protocol(l.inner_proto);
    ip.set_total_len(len);
    ip.fill_checksum();
    Ok(())
}

/// xfrm6_transport_input + xfrm6_transport_finish: the IPv6 header and the extension headers
/// in front of ESP/AH move back; the next-header byte that named ESP/AH names what it
/// protected, and the payload length shrinks.
pub fn xfrm6_transport_input(frame: &mut Frame<'_>, l: &XfrmLayout) -> Result<(), ModeError> {
    let d = frame
        .close_gap(l.xfrm_off, l.payload_off - l.xfrm_off)
        .map_err(|_| ModeError::Malformed)?;
    let plen = u16::try_from(d.len().saturating_sub(ipv6::HEADER_LEN))
        .map_err(|_| ModeError::Malformed)?;
    *d.get_mut(l.proto_off).ok_or(ModeError::Malformed)? = l.inner_proto;
    Ipv6Packet::new_unchecked(d).set_payload_len(plen);
    Ok(())
}

/// xfrm4_remove_tunnel_encap / xfrm6_remove_tunnel_encap: strips the outer header and the
/// ESP/AH header; the inner packet must be of a family the SA carries (next header IPIP or
/// IPv6, as on output); ECN and DSCP as RFC 6040 and decap-dscp say; anything after the
/// inner packet's own length (TFC padding, RFC 4303 section 2.7) is cut.
pub fn xfrm_remove_tunnel_encap(
    x: &SecurityAssociation,
    frame: &mut Frame<'_>,
    l: &XfrmLayout,
) -> Result<(), ModeError> {
    let want_v6 = match l.inner_proto {
        proto::IPIP => false,
        proto::IPV6 => true,
        other => return Err(ModeError::NextHeader(other)),
    };
    let outer_ds = if l.v6 {
        Ipv6Packet::new_unchecked(frame.data()).traffic_class()
    } else {
        Ipv4Packet::new_unchecked(frame.data()).tos()
    };
    frame
        .pull_head(l.payload_off)
        .map_err(|_| ModeError::Malformed)?;
    if crate::wire::ip_version(frame.data()) != Some(if want_v6 { 6 } else { 4 }) {
        return Err(ModeError::Malformed);
    }
    let inner = xfrm_inner_extract_output(x, frame.data())?;
    frame
        .trim_tail(frame.len() - inner.len)
        .map_err(|_| ModeError::Malformed)?;
    let ds = inner_dsfield(x, outer_ds, inner.tos)?;
    if ds != inner.tos {
        let d = frame.data_mut();
        if inner.v6 {
            Ipv6Packet::new_unchecked(d).set_traffic_class(ds);
        } else {
            // RFC 1624 update of the word holding version/IHL and TOS.
            let old = u16::from_be_bytes([d[0], d[1]]);
            let new = u16::from_be_bytes([d[0], ds]);
            let mut ip = Ipv4Packet::new_unchecked(d);
            let c = crate::wire::checksum::update16(ip.checksum(), old, new);
            ip.set_tos(ds);
            ip.set_checksum(c);
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::frame::OwnedFrame;
    use crate::sa::*;
    use crate::xfrm::state::tests::esp_cfg;
    use crate::xfrm::state::DEFAULT_HOP_LIMIT;

    /// An IPv4 UDP packet 10.1.0.1 -> 10.2.0.1 with the given TOS and DF.
    pub fn udp4(tos: u8, df: bool, payload: &[u8]) -> Vec<u8> {
        let len = 28 + payload.len();
        let mut p = vec![0x45, tos, (len >> 8) as u8, len as u8, 0x12, 0x34];
        p.extend_from_slice(&[if df { 0x40 } else { 0 }, 0, 33, 17, 0, 0]);
        p.extend_from_slice(&[10, 1, 0, 1, 10, 2, 0, 1]);
        let ulen = 8 + payload.len();
        p.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, (ulen >> 8) as u8, ulen as u8, 0, 0]);
        p.extend_from_slice(payload);
        fill_l4_checksum(&mut p);
        Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
        p
    }

    /// An IPv6 UDP packet fd00:1::1 -> fd00:2::1.
    pub fn udp6(tc: u8, flow: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        {
            let mut ip = Ipv6Packet::new_unchecked(&mut p[..]);
            ip.set_version_tc_flow(tc, flow);
            ip.set_payload_len((8 + payload.len()) as u16);
            ip.set_next_header(17);
            ip.set_hop_limit(47);
            ip.set_src_addr("fd00:1::1".parse().unwrap());
            ip.set_dst_addr("fd00:2::1".parse().unwrap());
        }
        let ulen = 8 + payload.len();
        p.extend_from_slice(&[0x30, 0x39, 0x00, 0x35, (ulen >> 8) as u8, ulen as u8, 0, 0]);
        p.extend_from_slice(payload);
        fill_l4_checksum(&mut p);
        p
    }

    /// Test helper: a correct TCP/UDP/ICMP checksum computed the plain way.
    pub fn fill_l4_checksum(p: &mut [u8]) {
        use crate::wire::checksum;
        let info = crate::wire::flow::parse(p).unwrap();
        let off = info.l4_offset;
        let len = (info.ip_len - off) as u32;
        let Some(csum_at) = crate::wire::l4_checksum_offset(info.key.proto) else {
            return;
        };
        p[off + csum_at..off + csum_at + 2].fill(0);
        let ph = match (info.key.src, info.key.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) if info.key.proto != 1 => {
                checksum::pseudo_header_v4(s, d, info.key.proto, len)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => checksum::pseudo_header_v6(s, d, info.key.proto, len),
            _ => 0,
        };
        let mut c = !checksum::combine(&[ph, checksum::data(&p[off..info.ip_len])]);
        if c == 0 && info.key.proto == 17 {
            c = 0xffff;
        }
        crate::wire::put16(p, off + csum_at, c);
    }

    fn sa(cfg: SaConfig) -> SecurityAssociation {
        SecurityAssociation::new(cfg, 0, 0).unwrap()
    }

    fn tunnel4() -> SaConfig {
        esp_cfg(1, "192.0.2.1", "192.0.2.2", XfrmMode::Tunnel)
    }

    fn run(x: &SecurityAssociation, pkt: &[u8]) -> (Vec<u8>, XfrmLayout) {
        let mut f = OwnedFrame::from_packet(pkt);
        let l = f.with_frame(|fr| xfrm_outer_mode_output(x, fr)).unwrap();
        (f.data().to_vec(), l)
    }

    #[test]
    fn ecn_encapsulation_rule() {
        // not-ECT, ECT(1), ECT(0) copied; CE -> ECT(0); DSCP bits of `outer` kept.
        assert_eq!(inet_ecn_encapsulate(0xb8, 0), 0xb8);
        assert_eq!(inet_ecn_encapsulate(0xb8, 1), 0xb9);
        assert_eq!(inet_ecn_encapsulate(0xb8, 2), 0xba);
        assert_eq!(inet_ecn_encapsulate(0xb8, 3), 0xba);
        assert_eq!(inet_ecn_encapsulate(0xbb, 0), 0xb8);
    }

    #[test]
    fn tunnel4_outer_header_defaults() {
        let x = sa(tunnel4());
        let inner = udp4(0xb9, true, b"hello");
        let (out, l) = run(&x, &inner);
        assert_eq!(l.xfrm_off, 20);
        assert_eq!(l.payload_off, 36);
        assert_eq!(l.inner_proto, proto::IPIP);
        assert_eq!(
            &out[36..],
            &inner[..],
            "inner packet untouched after the gap"
        );
        let top = Ipv4Packet::new_unchecked(&out[..20]);
        assert_eq!(top.header_len(), 20);
        assert_eq!(top.tos(), 0xb9, "DSCP and ECT(1) copied");
        assert!(top.dont_frag(), "DF copied");
        assert_eq!(top.ttl(), DEFAULT_HOP_LIMIT);
        assert_eq!(top.protocol(), proto::IPIP);
        assert_eq!(
            top.src_addr(),
            "192.0.2.1".parse::<std::net::Ipv4Addr>().unwrap()
        );
        assert_eq!(
            top.dst_addr(),
            "192.0.2.2".parse::<std::net::Ipv4Addr>().unwrap()
        );
    }

    #[test]
    fn tunnel4_flags() {
        let inner_ce = udp4(0xbb, true, b"x"); // DSCP 46, CE
        let mut c = tunnel4();
        let (out, _) = run(&sa(c.clone()), &inner_ce);
        assert_eq!(out[1], 0xba, "CE -> ECT(0)");
        c.extra_flags.dont_encap_dscp = true;
        let (out, _) = run(&sa(c.clone()), &inner_ce);
        assert_eq!(
            out[1], 0x02,
            "dont-encap-dscp: DSCP 0, ECN still encapsulated"
        );
        c.flags.noecn = true;
        let (out, _) = run(&sa(c.clone()), &inner_ce);
        assert_eq!(out[1], 0x00, "noecn clears ECN");
        c.flags.nopmtudisc = true;
        let (out, _) = run(&sa(c.clone()), &inner_ce);
        assert!(
            !Ipv4Packet::new_unchecked(&out[..20]).dont_frag(),
            "nopmtudisc: DF 0"
        );
        let (out, _) = run(&sa(tunnel4()), &udp4(0, false, b"x"));
        assert!(
            !Ipv4Packet::new_unchecked(&out[..20]).dont_frag(),
            "DF 0 copied"
        );
    }

    #[test]
    fn tunnel_6in4_and_4in6() {
        let mut c = tunnel4();
        let inner6 = udp6(0x28, 0xabcde, &[7; 1300]);
        // Without af-unspec the IPv4 SA does not carry IPv6.
        let mut f = OwnedFrame::from_packet(&inner6);
        assert_eq!(
            f.with_frame(|fr| xfrm_outer_mode_output(&sa(c.clone()), fr)),
            Err(ModeError::Family)
        );
        c.flags.af_unspec = true;
        let (out, l) = run(&sa(c.clone()), &inner6);
        assert_eq!(l.inner_proto, proto::IPV6);
        let top = Ipv4Packet::new_unchecked(&out[..20]);
        assert_eq!(top.protocol(), proto::IPV6);
        assert_eq!(top.tos(), 0x28);
        assert!(top.dont_frag(), "IPv6 inner: DF set");
        // Small IPv6 inner packets get DF as well, as Linux really sends them.
        let (out, _) = run(&sa(c), &udp6(0, 0, &[1; 100]));
        assert!(Ipv4Packet::new_unchecked(&out[..20]).dont_frag());

        let mut c6 = esp_cfg(1, "fd00::a", "fd00::b", XfrmMode::Tunnel);
        c6.flags.af_unspec = true;
        let inner4 = udp4(0x29, true, b"abc");
        let (out, l) = run(&sa(c6.clone()), &inner4);
        assert_eq!((l.xfrm_off, l.payload_off, l.proto_off), (40, 56, 6));
        let top = Ipv6Packet::new_unchecked(&out[..40]);
        assert_eq!(top.next_header(), proto::IPIP);
        assert_eq!(top.traffic_class(), 0x29);
        assert_eq!(top.flow_label(), 0, "IPv4 inner: flow label 0");
        assert_eq!(top.hop_limit(), DEFAULT_HOP_LIMIT);
        assert_eq!(&out[56..], &inner4[..]);
        c6.flags.af_unspec = false;
        let (out, _) = run(&sa(c6.clone()), &udp6(0x2b, 0x12345, b"q"));
        let top = Ipv6Packet::new_unchecked(&out[..40]);
        assert_eq!(top.flow_label(), 0x12345, "flow label copied");
        assert_eq!(top.traffic_class(), 0x2a, "CE -> ECT(0)");
        assert_eq!(top.next_header(), proto::IPV6);
        c6.flags.noecn = true;
        c6.extra_flags.dont_encap_dscp = true;
        let (out, _) = run(&sa(c6), &udp6(0x2b, 0x12345, b"q"));
        assert_eq!(Ipv6Packet::new_unchecked(&out[..40]).traffic_class(), 0);
    }

    #[test]
    fn transport4_moves_the_header_with_options() {
        let x = sa(esp_cfg(1, "10.1.0.1", "10.2.0.1", XfrmMode::Transport));
        let mut p = udp4(0, true, b"data");
        // Add a 4-byte option (router alert): IHL 6.
        p.splice(20..20, [0x94, 4, 0, 0]);
        p[0] = 0x46;
        p[3] += 4;
        let (out, l) = run(&x, &p);
        assert_eq!((l.xfrm_off, l.payload_off, l.proto_off), (24, 40, 9));
        assert_eq!(l.inner_proto, 17);
        assert_eq!(&out[..24], &p[..24]);
        assert_eq!(&out[40..], &p[24..]);
        // The family must match in transport mode.
        let mut f = OwnedFrame::from_packet(&udp6(0, 0, b"z"));
        assert_eq!(
            f.with_frame(|fr| xfrm_outer_mode_output(&x, fr)),
            Err(ModeError::Malformed)
        );
    }

    #[test]
    fn transport6_keeps_hop_by_hop_in_front() {
        let x = sa(esp_cfg(1, "fd00:1::1", "fd00:2::1", XfrmMode::Transport));
        let mut p = udp6(0, 0, b"data");
        // Insert a hop-by-hop header: nh HBH -> UDP.
        p.splice(40..40, [17, 0, 1, 4, 0, 0, 0, 0]);
        p[6] = 0;
        p[5] += 8;
        let (out, l) = run(&x, &p);
        assert_eq!((l.xfrm_off, l.payload_off, l.proto_off), (48, 64, 40));
        assert_eq!(l.inner_proto, 17);
        assert_eq!(&out[..48], &p[..48]);
        assert_eq!(&out[64..], &p[48..]);
    }

    #[test]
    fn no_headroom_is_an_error_not_a_panic() {
        let x = sa(tunnel4());
        let mut f = OwnedFrame::with_room(&udp4(0, true, b"x"), 10, 100);
        assert_eq!(
            f.with_frame(|fr| xfrm_outer_mode_output(&x, fr)),
            Err(ModeError::NoRoom)
        );
        let mut f = OwnedFrame::from_packet(&[0x45, 0, 0]);
        assert_eq!(
            f.with_frame(|fr| xfrm_outer_mode_output(&x, fr)),
            Err(ModeError::Malformed)
        );
    }
}
