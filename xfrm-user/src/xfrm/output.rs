//! xfrm_output, xfrm_output_resume and xfrm_output_one (net/xfrm/xfrm_output.c), with the
//! SPD step in front (what xfrm_lookup does for the kernel before the packet gets here).
//!
//! Every failure drops the packet and counts one /proc/net/xfrm_stat counter, globally and
//! on the SA concerned. Nothing here allocates or panics; the packet is changed in place
//! inside its frame (headroom for the new headers, tailroom for the trailer).

use crate::frame::Frame;
use crate::policy::{PolicyAction, PolicyDir};
use crate::sa::{XfrmMode, XfrmProto};
use crate::stats::{XfrmStat, XfrmStats};
use crate::wire::{checksum, flow, proto, put16};

use super::ah::ah_output;
use super::esp::{esp_iv, esp_output, esp_tfc_padto};
use super::mode::{ip_local_out_fixup, xfrm_outer_mode_output};
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

/// The whole output path for one IP packet at the head of `frame`: SPD lookup, template
/// resolution, then `xfrm_output_bundle`. `csum_partial` says the inner L4 checksum field
/// holds only the pseudo-header sum (CHECKSUM_PARTIAL, as veth hands packets over); it is
/// completed before encryption. Otherwise the checksum is verified and a packet with a
/// wrong one is dropped (XfrmOutError) rather than encrypted.
pub fn xfrm_output(
    db: &XfrmDb,
    stats: &XfrmStats,
    frame: &mut Frame<'_>,
    csum_partial: bool,
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
    let mut xs = [None; XFRM_MAX_DEPTH];
    let n = match db.tmpl_resolve(pol, &info.key, &mut xs) {
        Ok(n) => n,
        Err(s) => {
            stats.inc(s);
            return Verdict::Dropped(s);
        }
    };
    if n == 0 {
        // Allow without transforms, or only optional (`level use`) templates without SA.
        return Verdict::Pass;
    }
    let bundle = xs[..n].iter().flatten().map(|x| &***x);
    output_checked(bundle, stats, frame, &info.l4(), csum_partial, db.now())
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
    if xs.is_empty() {
        return Verdict::Pass;
    }
    if xs.len() > XFRM_MAX_DEPTH {
        stats.inc(XfrmStat::XfrmOutBundleGenError);
        return Verdict::Dropped(XfrmStat::XfrmOutBundleGenError);
    }
    output_checked(xs.iter().copied(), stats, frame, &info, csum_partial, now)
}

/// xfrm_output: cut the Ethernet padding, fix or verify the inner L4 checksum
/// (skb_checksum_help), then xfrm_output_resume.
fn output_checked<'a>(
    mut xs: impl Iterator<Item = &'a SecurityAssociation> + Clone,
    stats: &XfrmStats,
    frame: &mut Frame<'_>,
    info: &flow::L4Info,
    csum_partial: bool,
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
    xfrm_output_resume(xs, stats, frame, now)
}

/// xfrm_output_resume: one xfrm_output_one per SA of the bundle, in order.
pub fn xfrm_output_resume<'a>(
    xs: impl Iterator<Item = &'a SecurityAssociation>,
    stats: &XfrmStats,
    frame: &mut Frame<'_>,
    now: u64,
) -> Verdict {
    for x in xs {
        if let Err(s) = xfrm_output_one(x, frame, now) {
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
    if !xfrm_skb_check_space(x, frame) {
        return Err(XfrmStat::XfrmOutError);
    }
    let l = xfrm_outer_mode_output(x, frame).map_err(|_| XfrmStat::XfrmOutStateModeError)?;
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
        put16(frame.data_mut(), 4, x.ip_ident(seq));
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

/// The inner L4 checksum is wrong (or cannot be completed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChecksum;

/// The inner L4 checksum before encryption. Partial (CHECKSUM_PARTIAL): the field holds the
/// pseudo-header sum, and skb_checksum_help folds the sum of the whole L4 segment into it
/// (0 becomes 0xffff, CSUM_MANGLED_0). Otherwise TCP, UDP, ICMP and ICMPv6 checksums are
/// verified. UDP with checksum 0 means "none" over IPv4 and is let through over IPv6 too
/// (RFC 6935 tunnels use it). Fragments cannot be checked and pass as they are.
#[inline]
pub fn inner_l4_checksum(
    pkt: &mut [u8],
    info: &flow::L4Info,
    partial: bool,
) -> Result<(), BadChecksum> {
    if info.fragment || !info.l4_present {
        return if partial { Err(BadChecksum) } else { Ok(()) };
    }
    let p = info.proto;
    let (csum_off, min_len) = match p {
        proto::TCP => (16, 20),
        proto::UDP => (6, 8),
        proto::ICMP | proto::ICMPV6 => (2, 4),
        _ => return if partial { Err(BadChecksum) } else { Ok(()) },
    };
    let (hdr, rest) = pkt.split_at_mut(info.l4_offset.min(pkt.len()));
    let l4 = rest
        .get_mut(..info.ip_len.saturating_sub(info.l4_offset))
        .ok_or(BadChecksum)?;
    if l4.len() < min_len {
        return Err(BadChecksum);
    }
    if partial {
        let mut c = !checksum::data(l4);
        if c == 0 {
            c = 0xffff;
        }
        l4[csum_off..csum_off + 2].copy_from_slice(&c.to_be_bytes());
        return Ok(());
    }
    if p == proto::UDP && l4[6] == 0 && l4[7] == 0 {
        return Ok(());
    }
    // ICMP (IPv4) has no pseudo-header; the parse proved the addresses are in `hdr`.
    let ph = match info.version {
        4 if p == proto::ICMP => 0,
        v => checksum::pseudo_header_at(hdr, v == 6, p, l4.len() as u32),
    };
    if checksum::combine(&[ph, checksum::data(l4)]) == 0xffff {
        Ok(())
    } else {
        Err(BadChecksum)
    }
}
