//! AH (x->type for IPPROTO_AH) with HMAC-SHA-256-128 / HMAC-SHA1-96, as net/ipv4/ah4.c
//! and net/ipv6/ah6.c: ah_output / ah6_output, and ah_input / ah6_input after them.
//!
//! The ICV covers the whole packet with the mutable IP fields and options zeroed (RFC 4302
//! section 3.3.3.1). The kernel zeroes them in the packet, digests, and restores them; we
//! zero them in a copy of the IP header on the stack and digest the copy followed by the
//! rest of the packet: the same ICV input, and the packet is never half-changed.
//! `ah_icv_header` is the part the input side reuses (it zeroes the same fields).

use crate::crypto::SaCrypto;
use crate::frame::Frame;
use crate::wire::{ah, ipv6, proto, put32, Ipv4Packet, Ipv6Packet};

use super::mode::XfrmLayout;
use super::state::SecurityAssociation;

/// Largest IP header + extension headers in front of AH that the ICV copy takes.
pub const MAX_ICV_HEADER: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AhError {
    /// An IPv4 option or IPv6 extension header that does not parse (ip_clear_mutable_options
    /// / ipv6_clear_mutable_options returning -EINVAL).
    #[error("malformed options or extension headers")]
    BadOptions,
    #[error("IP headers longer than {MAX_ICV_HEADER} bytes")]
    HeaderTooLong,
    #[error("packet too big")]
    TooBig,
    #[error("not an AH algorithm")]
    Crypto,
}

/// IPv4 options that do not change in transit and so stay in the ICV input
/// (ip_clear_mutable_options): Security, Extended Security, CIPSO, Router Alert, SDB.
fn ipv4_option_is_immutable(ty: u8) -> bool {
    matches!(ty, 130 | 133 | 134 | 148 | 149)
}

/// ip_clear_mutable_options on a copy of an IPv4 header: every option but the immutable
/// ones is zeroed (type and length too); a source route puts its final destination into the
/// header's destination address, where the packet will have it on arrival.
pub fn ip_clear_mutable_options(hdr: &mut [u8]) -> Result<(), AhError> {
    ip_clear_mutable_options_dir(hdr, true)
}

/// ip_clear_mutable_options for either direction: only output moves a source route's final
/// destination into the header (ah_output passes &top_iph->daddr, ah_input a dummy: on
/// arrival the header has it already, and the route's slots hold the recorded route).
pub fn ip_clear_mutable_options_dir(hdr: &mut [u8], out: bool) -> Result<(), AhError> {
    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    let mut i = 20;
    while i < ihl {
        match hdr[i] {
            0 => return Ok(()), // IPOPT_END
            1 => {
                i += 1; // IPOPT_NOOP
                continue;
            }
            _ => {}
        }
        if i + 1 >= ihl {
            return Err(AhError::BadOptions);
        }
        let optlen = usize::from(hdr[i + 1]);
        if optlen < 2 || optlen > ihl - i {
            return Err(AhError::BadOptions);
        }
        let ty = hdr[i];
        if !ipv4_option_is_immutable(ty) {
            if ty == 131 || ty == 137 {
                // LSRR / SSRR: the last address is the final destination.
                if optlen < 6 {
                    return Err(AhError::BadOptions);
                }
                if out {
                    let mut last = [0u8; 4];
                    last.copy_from_slice(&hdr[i + optlen - 4..i + optlen]);
                    hdr[16..20].copy_from_slice(&last);
                }
            }
            hdr[i..i + optlen].fill(0);
        }
        i += optlen;
    }
    Ok(())
}

/// zero_out_mutable_opts: in a hop-by-hop or destination options header, the data of every
/// option whose type has the "may change en route" bit (0x20, RFC 8200 section 4.2).
fn zero_out_mutable_opts(opt: &mut [u8]) -> Result<(), AhError> {
    let mut off = 2;
    while off < opt.len() {
        if opt[off] == 0 {
            off += 1; // Pad1
            continue;
        }
        if off + 2 > opt.len() {
            return Err(AhError::BadOptions);
        }
        let dlen = usize::from(opt[off + 1]);
        if off + 2 + dlen > opt.len() {
            return Err(AhError::BadOptions);
        }
        if opt[off] & 0x20 != 0 {
            opt[off + 2..off + 2 + dlen].fill(0);
        }
        off += 2 + dlen;
    }
    Ok(())
}

/// ipv6_rearrange_destopt: a Home Address option (RFC 6275 section 11.3.2) swaps with the
/// source address, as the packet will look at its destination.
fn ipv6_rearrange_destopt(hdr: &mut [u8], at: usize, len: usize) -> Result<(), AhError> {
    let mut off = at + 2;
    let end = at + len;
    while off < end {
        if hdr[off] == 0 {
            off += 1;
            continue;
        }
        if off + 2 > end {
            return Err(AhError::BadOptions);
        }
        let dlen = usize::from(hdr[off + 1]);
        if off + 2 + dlen > end {
            return Err(AhError::BadOptions);
        }
        if hdr[off] == ipv6::TLV_HAO {
            if dlen != 16 {
                return Err(AhError::BadOptions);
            }
            let mut hao = [0u8; 16];
            hao.copy_from_slice(&hdr[off + 2..off + 18]);
            hdr.copy_within(8..24, off + 2);
            hdr[8..24].copy_from_slice(&hao);
        }
        off += 2 + dlen;
    }
    Ok(())
}

/// ipv6_rearrange_rthdr: addresses of a routing header in the order they will have at the
/// final destination (RFC 4302 appendix A.2): segments left 0, the final address in the
/// IPv6 header, the current destination first in the list.
fn ipv6_rearrange_rthdr(hdr: &mut [u8], at: usize, len: usize) -> Result<(), AhError> {
    let segments_left = usize::from(hdr[at + 3]);
    if segments_left == 0 {
        return Ok(());
    }
    let segments = usize::from(hdr[at + 1]) >> 1;
    if segments < segments_left || 8 + segments * 16 > len {
        return Err(AhError::BadOptions);
    }
    hdr[at + 3] = 0;
    let addrs = at + 8;
    let mut fin = [0u8; 16];
    fin.copy_from_slice(&hdr[addrs + (segments - 1) * 16..addrs + segments * 16]);
    let first = addrs + (segments - segments_left) * 16;
    hdr.copy_within(first..first + (segments_left - 1) * 16, first + 16);
    hdr.copy_within(24..40, first);
    hdr[24..40].copy_from_slice(&fin);
    Ok(())
}

/// ipv6_clear_mutable_options over the extension headers in `hdr`. `out`: the packet is
/// being sent, so a Home Address option still has to be swapped into its final place
/// (the kernel does that only for XFRM_POLICY_OUT; a received packet has it there already).
pub fn ipv6_clear_mutable_options(hdr: &mut [u8], out: bool) -> Result<(), AhError> {
    let mut nexthdr = hdr[ipv6::NEXT_HEADER_OFFSET];
    let mut off = ipv6::HEADER_LEN;
    while off < hdr.len() {
        if off + 2 > hdr.len() {
            return Err(AhError::BadOptions);
        }
        let len = (usize::from(hdr[off + 1]) + 1) * 8;
        if off + len > hdr.len() {
            return Err(AhError::BadOptions);
        }
        match nexthdr {
            proto::DSTOPTS => {
                if out {
                    ipv6_rearrange_destopt(hdr, off, len)?;
                }
                zero_out_mutable_opts(&mut hdr[off..off + len])?;
            }
            proto::HOPOPTS => zero_out_mutable_opts(&mut hdr[off..off + len])?,
            proto::ROUTING => ipv6_rearrange_rthdr(hdr, off, len)?,
            _ => return Ok(()),
        }
        nexthdr = hdr[off];
        off += len;
    }
    Ok(())
}

/// Copies the IP header (and the extension headers in front of AH) into `buf` with the
/// mutable fields zeroed as the ICV wants them: IPv4 TOS, flags/fragment offset, TTL,
/// checksum and the mutable options; IPv6 traffic class, flow label, hop limit and the
/// mutable option data / routing addresses. `out` as in `ipv6_clear_mutable_options` and
/// `ip_clear_mutable_options_dir` (ah_input passes false). Returns the copy.
pub fn ah_icv_header<'b>(
    hdr: &[u8],
    v6: bool,
    out: bool,
    buf: &'b mut [u8; MAX_ICV_HEADER],
) -> Result<&'b [u8], AhError> {
    let n = hdr.len();
    if n > MAX_ICV_HEADER {
        return Err(AhError::HeaderTooLong);
    }
    let c = &mut buf[..n];
    c.copy_from_slice(hdr);
    if v6 {
        c[0] = 0x60;
        c[1] = 0;
        c[2] = 0;
        c[3] = 0;
        c[7] = 0;
        ipv6_clear_mutable_options(c, out)?;
    } else {
        c[1] = 0; // tos
        c[6] = 0; // frag_off
        c[7] = 0;
        c[8] = 0; // ttl
        c[10] = 0; // check
        c[11] = 0;
        if n > 20 {
            ip_clear_mutable_options_dir(c, out)?;
        }
    }
    Ok(c)
}

/// Header length of AH for this SA (ah->hdrlen in bytes).
pub fn ah_header_len(x: &SecurityAssociation) -> usize {
    x.props.type_header_len
}

/// ah_output / ah6_output: fills the AH header in the gap and computes the ICV over the
/// packet (mutable fields zeroed, ESN high bits appended, RFC 4302 section 2.5.1).
pub fn ah_output(
    x: &SecurityAssociation,
    frame: &mut Frame<'_>,
    l: &XfrmLayout,
    seq: u64,
) -> Result<(), AhError> {
    let SaCrypto::Hmac { key, icv_len } = &x.crypto else {
        return Err(AhError::Crypto);
    };
    let icv_len = *icv_len;
    let ah_len = ah_header_len(x);
    let data = frame.data_mut();
    let total = data.len();
    data[l.proto_off] = proto::AH;
    // The length fields are part of the ICV input: set them now (ah_output's tot_len,
    // ah6_output's payload_len).
    if l.v6 {
        let plen = u16::try_from(total - ipv6::HEADER_LEN).map_err(|_| AhError::TooBig)?;
        Ipv6Packet::new_unchecked(&mut *data).set_payload_len(plen);
    } else {
        let len = u16::try_from(total).map_err(|_| AhError::TooBig)?;
        Ipv4Packet::new_unchecked(&mut *data).set_total_len(len);
    }
    {
        let mut a = ah::AhPacket::new_unchecked(&mut data[l.xfrm_off..l.xfrm_off + ah_len]);
        a.set_next_header(l.inner_proto);
        a.set_header_len(ah_len);
        a.set_reserved(0);
        a.set_spi(x.spi());
        a.set_seq(seq as u32);
        a.icv_mut().fill(0);
    }
    let mut hbuf = [0u8; MAX_ICV_HEADER];
    let hdr = ah_icv_header(&data[..l.xfrm_off], l.v6, true, &mut hbuf)?;
    let mut seqhi = [0u8; 4];
    put32(&mut seqhi, 0, (seq >> 32) as u32);
    let parts_esn: [&[u8]; 3] = [hdr, &data[l.xfrm_off..], &seqhi];
    let parts = if x.cfg.flags.esn {
        &parts_esn[..]
    } else {
        &parts_esn[..2]
    };
    let mut icv = [0u8; 64];
    key.sign(parts, &mut icv[..icv_len]);
    let at = l.xfrm_off + ah::HEADER_LEN;
    data[at..at + icv_len].copy_from_slice(&icv[..icv_len]);
    Ok(())
}

/// Why ah_input refused a packet; xfrm_input counts each as XfrmInStateProtoError.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AhInputError {
    #[error("AH packet too short")]
    Truncated,
    /// The header length is not the SA's (ALIGN8 or, IPv4 with align4, ALIGN4 of 12 + ICV).
    #[error("AH header length {0} not the SA's")]
    HeaderLen(usize),
    #[error(transparent)]
    Options(#[from] AhError),
    /// The ICV did not verify (-EBADMSG; x->stats.integrity_failed).
    #[error("ICV mismatch")]
    Icv,
}

/// ah_input / ah6_input for the AH header at `ah_off` (the IP headers in front of it, the
/// protected data after it, to the end of the frame): checks the header length, verifies
/// the ICV over the packet with the mutable fields zeroed, the ICV field zeroed and, with
/// ESN, the high half of the inferred `seq` appended (RFC 4302 sections 2.5.1 and 3.3.3).
/// Returns the next header and AH's length; the mode then removes the header. Nothing in
/// the packet changes: the zeroing is done in a copy of the IP headers, and the ICV field
/// is fed to the HMAC as zeros.
pub fn ah_input(
    x: &SecurityAssociation,
    frame: &Frame<'_>,
    ah_off: usize,
    v6: bool,
    seq: u64,
) -> Result<(u8, usize), AhInputError> {
    let SaCrypto::Hmac { key, icv_len } = &x.crypto else {
        return Err(AhInputError::Icv);
    };
    let icv_len = *icv_len;
    let data = frame.data();
    let a = ah::AhPacket::new_checked(data.get(ah_off..).ok_or(AhInputError::Truncated)?)
        .map_err(|_| AhInputError::Truncated)?;
    let ah_hlen = a.header_len();
    // ah_input accepts the length of the truncated ICV and that of the full digest
    // (XFRM_ALIGN8, or XFRM_ALIGN4 with align4; ah6_input always ALIGN8); only the
    // truncated ICV is compared.
    let align = if x.cfg.flags.align4 && !v6 { 4 } else { 8 };
    let aligned = |icv: usize| (ah::HEADER_LEN + icv).div_ceil(align) * align;
    let full = key.digest_len().max(icv_len);
    if ah_hlen != aligned(icv_len) && ah_hlen != aligned(full) {
        return Err(AhInputError::HeaderLen(ah_hlen));
    }
    let end = ah_off + ah_hlen;
    if end > data.len() {
        return Err(AhInputError::Truncated);
    }
    let mut hbuf = [0u8; MAX_ICV_HEADER];
    let hdr = ah_icv_header(&data[..ah_off], v6, false, &mut hbuf)?;
    let icv_at = ah_off + ah::HEADER_LEN;
    // As ah_input: only the ICV itself is zeroed; padding after it counts as received.
    let zeros = [0u8; 64];
    if icv_len > zeros.len() || icv_at + icv_len > end {
        return Err(AhInputError::HeaderLen(ah_hlen));
    }
    let mut seqhi = [0u8; 4];
    put32(&mut seqhi, 0, (seq >> 32) as u32);
    let parts_esn: [&[u8]; 5] = [
        hdr,
        &data[ah_off..icv_at],
        &zeros[..icv_len],
        &data[icv_at + icv_len..],
        &seqhi,
    ];
    let parts = if x.cfg.flags.esn {
        &parts_esn[..]
    } else {
        &parts_esn[..4]
    };
    if !key.verify(parts, &data[icv_at..icv_at + icv_len]) {
        return Err(AhInputError::Icv);
    }
    Ok((a.next_header(), ah_hlen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_options_mutable_cleared_immutable_kept() {
        // IHL 10: RA (4), NOP, LSRR (7 bytes, one address + final 10.9.9.9), timestamp (8),
        // END + padding.
        let mut h = vec![
            0x4a, 0, 0, 0, 0, 0, 0, 0, 64, 51, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
        ];
        h.extend_from_slice(&[148, 4, 0, 0]);
        h.push(1);
        h.extend_from_slice(&[131, 7, 4, 10, 9, 9, 9]);
        h.extend_from_slice(&[68, 8, 5, 0, 1, 2, 3, 4]);
        h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        h.truncate(40);
        ip_clear_mutable_options(&mut h).unwrap();
        assert_eq!(
            &h[16..20],
            &[10, 9, 9, 9],
            "final destination of the source route"
        );
        assert_eq!(&h[20..24], &[148, 4, 0, 0], "router alert kept");
        assert_eq!(h[24], 1, "NOP kept");
        assert_eq!(&h[25..32], &[0; 7], "LSRR zeroed");
        assert_eq!(&h[32..40], &[0; 8], "timestamp zeroed");
        // A length running past the header is an error, not a panic.
        let mut bad = vec![
            0x46, 0, 0, 0, 0, 0, 0, 0, 64, 51, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
        ];
        bad.extend_from_slice(&[68, 9, 0, 0]);
        assert_eq!(ip_clear_mutable_options(&mut bad), Err(AhError::BadOptions));
        let mut bad2 = bad.clone();
        bad2[20..24].copy_from_slice(&[1, 1, 1, 68]);
        assert_eq!(
            ip_clear_mutable_options(&mut bad2),
            Err(AhError::BadOptions)
        );
    }

    #[test]
    fn ipv6_mutable_options_and_routing_header() {
        let mut h = vec![0u8; 40];
        h[0] = 0x6b;
        h[1] = 0x81;
        h[6] = proto::HOPOPTS;
        h[7] = 9;
        h[8..24].copy_from_slice(&[0x11; 16]); // src
        h[24..40].copy_from_slice(&[0x22; 16]); // dst (first hop)
                                                // HBH: option 0x3e (mutable bit set) with 2 bytes, option 0x05 (immutable) 2 bytes.
        h.extend_from_slice(&[proto::ROUTING, 0, 0x3e, 2, 0xaa, 0xbb, 0x05, 0]);
        h.truncate(48);
        h.extend_from_slice(&[0x05, 0x00]);
        h.truncate(48);
        let hbh = [proto::ROUTING, 0, 0x3e, 1, 0xaa, 0x05, 1, 0xcc];
        h.truncate(40);
        h.extend_from_slice(&hbh);
        // RH type 0, 2 segments, segments left 2: addresses A3 (next) and A4 (final).
        h.extend_from_slice(&[proto::UDP, 4, 0, 2, 0, 0, 0, 0]);
        h.extend_from_slice(&[0x33; 16]);
        h.extend_from_slice(&[0x44; 16]);
        let mut buf = [0u8; MAX_ICV_HEADER];
        let c = ah_icv_header(&h, true, true, &mut buf).unwrap().to_vec();
        assert_eq!(
            &c[0..4],
            &[0x60, 0, 0, 0],
            "traffic class and flow label zeroed"
        );
        assert_eq!(c[7], 0, "hop limit zeroed");
        assert_eq!(&c[40..48], &[proto::ROUTING, 0, 0x3e, 1, 0, 0x05, 1, 0xcc]);
        assert_eq!(&c[24..40], &[0x44; 16], "final destination in the header");
        assert_eq!(c[51], 0, "segments left 0");
        assert_eq!(&c[56..72], &[0x22; 16], "first hop first in the list");
        assert_eq!(&c[72..88], &[0x33; 16]);
        // Broken chain.
        let mut bad = h.clone();
        bad[41] = 9;
        assert!(ah_icv_header(&bad, true, true, &mut buf).is_err());
    }
}
