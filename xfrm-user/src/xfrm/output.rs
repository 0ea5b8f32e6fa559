//! xfrm_output, xfrm_output_resume and xfrm_output_one (net/xfrm/xfrm_output.c), with the
//! SPD step in front (what xfrm_lookup does for the kernel before the packet gets here).
//!
//! Every failure drops the packet and counts one /proc/net/xfrm_stat counter, globally and
//! on the SA concerned. Nothing here allocates or panics; the packet is changed in place
//! inside its frame (headroom for the new headers, tailroom for the trailer).

use std::net::IpAddr;

use crate::frame::Frame;
use crate::policy::{Policy, PolicyAction, PolicyDir};
use crate::sa::{XfrmMode, XfrmProto};
use crate::stats::{XfrmStat, XfrmStats};
use crate::wire::{checksum, flow, proto, put16, tcp::TcpPacket, Ipv4Packet};

use super::ah::ah_output;
use super::esp::{esp_iv, esp_output, esp_tfc_padto};
use super::mode::{ip_local_out_fixup, xfrm_outer_mode_output_with, InnerHeader};
use super::pmtu::{bundle_mtu, check_size_parsed, SaMtu, SizeCheck};
use super::spd::{XfrmDb, XFRM_MAX_DEPTH};
use super::state::SecurityAssociation;

/// What happened to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No policy (or an allow policy without transforms): the packet goes out unchanged.
    Pass,
    /// Every SA of the bundle was applied; the frame holds the new packet.
    Transformed,
    /// Dropped; the counter that was incremented.
    Dropped(XfrmStat),
}

/// How the caller's mode wants the output path run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputOpts {
    /// Whether the inner L4 checksum field holds only the pseudo-header sum
    /// (CHECKSUM_PARTIAL); None: find out from the packet (veth hands packets over that
    /// way, and AF_XDP does not say). See [`inner_l4_checksum`].
    pub csum_partial: Option<bool>,
    /// The host's own TCP SYNs get their MSS clamped to what the bundle leaves (its stack
    /// cannot know the ESP overhead).
    pub clamp_mss: bool,
}

/// What [`xfrm_output_policy`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyVerdict {
    /// The bundle's verdict (Pass: no SA to apply).
    Done(Verdict),
    /// Over what the bundle leaves of the route MTU and not to be fragmented: the caller
    /// answers with the ICMP error (pmtu.rs builds it).
    TooBig(SizeCheck),
}

/// The output path from a protect policy on, for every mode (the pcap tool and the live
/// gateway): template resolution, then, when `route_mtu` gives the MTU towards the
/// outermost SA's peer, the size check against what the bundle leaves of it (ip_forward /
/// xfrm_tunnel_check_size), each SA's path MTU for TFC padding, the host's MSS clamp; then
/// the inner checksum and every SA. `info` is the packet's one parse.
pub fn xfrm_output_policy(
    db: &XfrmDb,
    pol: &Policy,
    info: &flow::FlowInfo,
    stats: &XfrmStats,
    frame: &mut Frame<'_>,
    opts: OutputOpts,
    route_mtu: &mut dyn FnMut(IpAddr) -> Option<u32>,
) -> PolicyVerdict {
    let mut xs = [None; XFRM_MAX_DEPTH];
    let n = match db.tmpl_resolve(pol, &info.key, &mut xs) {
        Ok(n) => n,
        Err(s) => {
            stats.inc(s);
            return PolicyVerdict::Done(Verdict::Dropped(s));
        }
    };
    // Allow without transforms, or only optional (`level use`) templates without SA.
    let Some(first) = xs[0].filter(|_| n > 0) else {
        return PolicyVerdict::Done(Verdict::Pass);
    };
    let mut refs = [&**first; XFRM_MAX_DEPTH];
    let mut overhead = [SaMtu::ah(0, false, 0, false); XFRM_MAX_DEPTH];
    for (i, x) in xs[..n].iter().flatten().enumerate() {
        refs[i] = x;
        overhead[i] = x.overhead();
    }
    if let Some(link) = route_mtu(refs[n - 1].daddr()) {
        let mtu = bundle_mtu(&overhead[..n], link);
        if opts.clamp_mss {
            clamp_mss(frame.data_mut(), info, mtu);
        }
        let verdict = check_size_parsed(&info.l4(), mtu);
        if verdict != SizeCheck::Fits {
            return PolicyVerdict::TooBig(verdict);
        }
        // Each SA's view of the path MTU (dst->child_mtu_cached: what the SAs outside it
        // leave), for TFC padding. A relaxed load per SA; a store only when it changed.
        for i in 0..n {
            let child = bundle_mtu(&overhead[i + 1..n], link);
            if refs[i].mtu() != child {
                refs[i].set_mtu(child);
            }
        }
    }
    PolicyVerdict::Done(xfrm_output_parsed(
        &refs[..n],
        stats,
        frame,
        &info.l4(),
        opts.csum_partial,
        db.now(),
    ))
}

/// The MSS a TCP SYN of the host may announce so that its segments fit `mtu` (what the bundle
/// leaves): `mtu` less the IP and TCP headers, as tcp_mtu_to_mss counts them.
fn clamp_mss(pkt: &mut [u8], info: &flow::FlowInfo, mtu: u32) {
    if info.key.proto != proto::TCP || !info.l4_present || info.fragment {
        return;
    }
    let ip_hdr = if info.version == 4 { 20 } else { 40 };
    let max = mtu
        .saturating_sub(ip_hdr + 20)
        .clamp(88, u32::from(u16::MAX)) as u16;
    let Some(l4) = pkt.get_mut(info.l4_offset..info.ip_len) else {
        return;
    };
    if let Ok(mut tcp) = TcpPacket::new_checked(l4) {
        tcp.clamp_mss(max);
    }
}

/// The whole output path for one IP packet at the head of `frame`: SPD lookup, then
/// [`xfrm_output_policy`] without a route (no size check). `csum_partial` says whether the
/// inner L4 checksum field holds only the pseudo-header sum (CHECKSUM_PARTIAL, as veth hands
/// packets over; None: find out from the packet); a partial one is completed before
/// encryption, a complete one left as it is (see [`inner_l4_checksum`]).
pub fn xfrm_output(
    db: &XfrmDb,
    stats: &XfrmStats,
    frame: &mut Frame<'_>,
    csum_partial: Option<bool>,
) -> Verdict {
    // Fail closed: a packet we cannot classify might belong to a protected flow.
    let Ok(info) = flow::parse(frame.data()) else {
        stats.inc(XfrmStat::XfrmOutError);
        return Verdict::Dropped(XfrmStat::XfrmOutError);
    };
    let Some(pol) = db.policy_lookup(PolicyDir::Out, &info.key) else {
        return Verdict::Pass;
    };
    if pol.action == PolicyAction::Block {
        stats.inc(XfrmStat::XfrmOutPolBlock);
        return Verdict::Dropped(XfrmStat::XfrmOutPolBlock);
    }
    let opts = OutputOpts {
        csum_partial,
        clamp_mss: false,
    };
    match xfrm_output_policy(db, pol, &info, stats, frame, opts, &mut |_| None) {
        PolicyVerdict::Done(v) => v,
        // No route MTU, no size check: cannot happen; dropped and counted if it did.
        PolicyVerdict::TooBig(_) => {
            stats.inc(XfrmStat::XfrmOutError);
            Verdict::Dropped(XfrmStat::XfrmOutError)
        }
    }
}

/// The output path for a bundle already resolved (e.g. by the XDP classifier, whose
/// metadata names the SAs): inner checksum, then every SA in order. An SA that is no
/// longer valid is refused here with XfrmOutStateInvalid.
pub fn xfrm_output_bundle(
    xs: &[&SecurityAssociation],
    stats: &XfrmStats,
    frame: &mut Frame<'_>,
    csum_partial: bool,
    now: u64,
) -> Verdict {
    // Only lengths and the L4 header: the classifier did the flow lookup.
    let Ok(info) = flow::parse_l4(frame.data()) else {
        stats.inc(XfrmStat::XfrmOutError);
        return Verdict::Dropped(XfrmStat::XfrmOutError);
    };
    xfrm_output_parsed(xs, stats, frame, &info, Some(csum_partial), now)
}

/// [`xfrm_output_bundle`] for a packet parsed already (`info`: its one parse).
pub fn xfrm_output_parsed(
    xs: &[&SecurityAssociation],
    stats: &XfrmStats,
    frame: &mut Frame<'_>,
    info: &flow::L4Info,
    csum_partial: Option<bool>,
    now: u64,
) -> Verdict {
    if xs.is_empty() {
        return Verdict::Pass;
    }
    if xs.len() > XFRM_MAX_DEPTH {
        stats.inc(XfrmStat::XfrmOutBundleGenError);
        return Verdict::Dropped(XfrmStat::XfrmOutBundleGenError);
    }
    output_checked(xs.iter().copied(), stats, frame, info, csum_partial, now)
}

/// xfrm_output: cut the Ethernet padding, complete a partial inner L4 checksum
/// (skb_checksum_help), then xfrm_output_resume.
fn output_checked<'a>(
    mut xs: impl Iterator<Item = &'a SecurityAssociation> + Clone,
    stats: &XfrmStats,
    frame: &mut Frame<'_>,
    info: &flow::L4Info,
    csum_partial: Option<bool>,
    now: u64,
) -> Verdict {
    let extra = frame.len().saturating_sub(info.ip_len);
    if frame.trim_tail(extra).is_err()
        || inner_l4_checksum(frame.data_mut(), info, csum_partial).is_err()
    {
        if let Some(x) = xs.next() {
            x.stats.inc(XfrmStat::XfrmOutError);
        }
        stats.inc(XfrmStat::XfrmOutError);
        return Verdict::Dropped(XfrmStat::XfrmOutError);
    }
    resume(xs, stats, frame, now, Some(InnerHeader::from(info)))
}

/// xfrm_output_resume: one xfrm_output_one per SA of the bundle, in order.
pub fn xfrm_output_resume<'a>(
    xs: impl Iterator<Item = &'a SecurityAssociation>,
    stats: &XfrmStats,
    frame: &mut Frame<'_>,
    now: u64,
) -> Verdict {
    resume(xs, stats, frame, now, None)
}

/// xfrm_output_resume, the first SA told what the parse read of the inner header.
fn resume<'a>(
    xs: impl Iterator<Item = &'a SecurityAssociation>,
    stats: &XfrmStats,
    frame: &mut Frame<'_>,
    now: u64,
    mut inner: Option<InnerHeader>,
) -> Verdict {
    for x in xs {
        if let Err(s) = output_one(x, frame, now, inner.take()) {
            x.count(stats, s);
            return Verdict::Dropped(s);
        }
    }
    Verdict::Transformed
}

/// xfrm_skb_check_space: room for what this SA adds in front (header_len) and behind
/// (largest trailer: TFC padding, block padding, pad length, next header, ICV), and a
/// result that still fits an IP length.
#[inline]
fn xfrm_skb_check_space(x: &SecurityAssociation, frame: &Frame<'_>) -> bool {
    let tail = match x.cfg.id.proto {
        XfrmProto::Esp => {
            esp_tfc_padto(x).saturating_sub(frame.len()) + x.props.blksize + 1 + x.props.icv_len
        }
        XfrmProto::Ah => 0,
    };
    frame.headroom() >= x.props.header_len
        && frame.tailroom() >= tail
        && frame.len() + x.props.header_len + tail <= usize::from(u16::MAX)
}

/// xfrm_output_one for one SA, the kernel's steps in the kernel's order, each failure with
/// its counter.
#[inline]
pub fn xfrm_output_one(
    x: &SecurityAssociation,
    frame: &mut Frame<'_>,
    now: u64,
) -> Result<(), XfrmStat> {
    output_one(x, frame, now, None)
}

#[inline]
fn output_one(
    x: &SecurityAssociation,
    frame: &mut Frame<'_>,
    now: u64,
    inner: Option<InnerHeader>,
) -> Result<(), XfrmStat> {
    if !xfrm_skb_check_space(x, frame) {
        return Err(XfrmStat::XfrmOutError);
    }
    let l = xfrm_outer_mode_output_with(x, frame, inner)
        .map_err(|_| XfrmStat::XfrmOutStateModeError)?;
    if !x.is_valid() {
        return Err(XfrmStat::XfrmOutStateInvalid);
    }
    x.xfrm_state_check_expire(now)
        .map_err(|_| XfrmStat::XfrmOutStateExpired)?;
    let seq = x
        .xfrm_replay_overflow()
        .map_err(|_| XfrmStat::XfrmOutStateSeqError)?;
    // skb->len at this point is what the mode left after skb->data: the data to protect.
    // Right after the sequence number, as the kernel does both under x->lock: the second
    // locked instruction then has no stores of ours to wait for.
    x.add_curlft(frame.len() - l.payload_off);
    if x.cfg.mode == XfrmMode::Tunnel && !l.v6 {
        // Fresh outer IPv4 ID (ip_select_ident), before AH covers it with the ICV.
        Ipv4Packet::new_unchecked(frame.data_mut()).set_ident(x.ip_ident(seq));
    }
    let typed = match x.cfg.id.proto {
        XfrmProto::Esp => esp_output(x, frame, &l, seq, &esp_iv(x, seq)).is_ok(),
        XfrmProto::Ah => ah_output(x, frame, &l, seq).is_ok(),
    };
    if !typed {
        return Err(XfrmStat::XfrmOutStateProtoError);
    }
    ip_local_out_fixup(frame.data_mut(), l.v6).map_err(|_| XfrmStat::XfrmOutError)
}

/// The inner L4 checksum was said to be partial but cannot be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChecksum;

/// The inner L4 checksum before encryption, as xfrm_output treats it: a partial one
/// (CHECKSUM_PARTIAL: the field holds the pseudo-header sum) gets the sum of the whole L4
/// segment folded in (skb_checksum_help; 0 becomes 0xffff, CSUM_MANGLED_0); a complete one
/// is left as it is, unread, as the kernel leaves it (checking it is the receiver's job).
///
/// `partial` None: AF_XDP does not carry the skb's ip_summed, so the packet tells. A
/// TCP/UDP field that equals the pseudo-header sum is partial unless the segment's full
/// checksum verifies (a complete checksum equals that sum 1 time in 65536); any other field
/// is complete. The one pass over the segment that tells them apart also completes it.
#[inline]
pub fn inner_l4_checksum(
    pkt: &mut [u8],
    info: &flow::L4Info,
    partial: Option<bool>,
) -> Result<(), BadChecksum> {
    if partial == Some(false) {
        return Ok(());
    }
    // Said to be partial but cannot be completed: refused (Err); only suspected: left.
    let cannot = if partial == Some(true) {
        Err(BadChecksum)
    } else {
        Ok(())
    };
    let p = info.proto;
    if info.fragment
        || !info.l4_present
        || (partial.is_none() && !matches!(p, proto::TCP | proto::UDP))
    {
        return cannot;
    }
    let Some((csum_off, min_len)) = crate::wire::l4_checksum_field(p) else {
        return cannot;
    };
    let (hdr, rest) = pkt.split_at_mut(info.l4_offset.min(pkt.len()));
    let Some(l4) = rest.get_mut(..info.ip_len.saturating_sub(info.l4_offset)) else {
        return cannot;
    };
    if l4.len() < min_len {
        return cannot;
    }
    let sum = if partial.is_none() {
        // ICMP (IPv4) has no pseudo-header, but only TCP and UDP get here; the parse
        // proved the addresses are in `hdr`.
        let ph = checksum::pseudo_header_at(hdr, info.version == 6, p, l4.len() as u32);
        if crate::wire::be16(l4, csum_off) != ph {
            return Ok(());
        }
        let sum = checksum::data(l4);
        if checksum::combine(&[ph, sum]) == 0xffff {
            return Ok(());
        }
        sum
    } else {
        checksum::data(l4)
    };
    let c = match !sum {
        0 => 0xffff,
        c => c,
    };
    put16(l4, csum_off, c);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(partial: bool) -> Vec<u8> {
        let mut p = vec![0u8; 28 + 5];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&33u16.to_be_bytes());
        p[8] = 64;
        p[9] = proto::UDP;
        p[12..16].copy_from_slice(&[10, 1, 0, 1]);
        p[16..20].copy_from_slice(&[10, 2, 0, 2]);
        let c = !checksum::data(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&4000u16.to_be_bytes());
        p[22..24].copy_from_slice(&5000u16.to_be_bytes());
        p[24..26].copy_from_slice(&13u16.to_be_bytes());
        p[28..].copy_from_slice(b"hello");
        let pseudo =
            checksum::pseudo_header_v4([10, 1, 0, 1].into(), [10, 2, 0, 2].into(), proto::UDP, 13);
        let v = if partial {
            pseudo
        } else {
            !checksum::combine(&[pseudo, checksum::data(&p[20..])])
        };
        p[26..28].copy_from_slice(&v.to_be_bytes());
        p
    }

    /// The field after `inner_l4_checksum` with `partial` unknown.
    fn detected(pkt: &[u8]) -> [u8; 2] {
        let mut p = pkt.to_vec();
        let info = flow::parse_l4(&p).unwrap();
        inner_l4_checksum(&mut p, &info, None).unwrap();
        assert_eq!(p[..26], pkt[..26], "only the checksum field may change");
        assert_eq!(p[28..], pkt[28..], "only the checksum field may change");
        [p[26], p[27]]
    }

    #[test]
    fn partial_checksums_are_recognised_and_completed() {
        let full = udp4(false);
        assert_eq!(detected(&full), [full[26], full[27]], "complete: left");
        assert_eq!(
            detected(&udp4(true)),
            [full[26], full[27]],
            "partial: completed"
        );
        // A wrong checksum that is not the pseudo-header sum is not "partial": left as it
        // is, as the kernel leaves a complete one.
        let mut bad = udp4(false);
        bad[27] ^= 1;
        assert_eq!(detected(&bad), [bad[26], bad[27]]);
        // UDP checksum 0 (none) is not partial.
        let mut none = udp4(false);
        none[26] = 0;
        none[27] = 0;
        assert_eq!(detected(&none), [0, 0]);
    }
}
