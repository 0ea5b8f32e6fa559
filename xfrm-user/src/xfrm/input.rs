//! xfrm_input (net/xfrm/xfrm_input.c), with what the stack does around it: the NAT-T
//! receive hook in front (xfrm4_udp_encap_rcv / xfrm6_udp_encap_rcv) and the inbound policy
//! check behind (__xfrm_policy_check, see policy_check.rs).
//!
//! For each SA, in the kernel's order: SA lookup by (daddr, SPI, proto); state VALID;
//! encapsulation as the SA says; replay check (which also infers the ESN high half);
//! lifetime; type input (ESP/AH: ICV, decryption, trailer); replay advance; lifetime
//! counters; mode input (transport: IP header restored; tunnel: outer header stripped).
//! Then again while the packet still carries ESP/AH for us (bundles), and finally the
//! selector and policy checks on the plaintext.
//!
//! Every failure drops the packet and counts one /proc/net/xfrm_stat counter, globally and
//! on the SA concerned. Nothing here allocates or panics; the packet shrinks in place.

use std::net::IpAddr;

use crate::frame::Frame;
use crate::policy::PolicyDir;
use crate::sa::{EncapType, XfrmMode, XfrmProto};
use crate::stats::{XfrmStat, XfrmStats};
use crate::wire::{
    be16, be32, checksum, esp, flow, ipv4, ipv6, proto, udp, Ipv4Packet, Ipv6Packet,
};

use super::ah::{ah_input, AhInputError};
use super::esp::{esp_input, EspInputError};
use super::mode::{xfrm_inner_mode_input, XfrmLayout};
use super::policy_check::{xfrm_policy_check, SecPathEntry};
use super::spd::{XfrmDb, XFRM_MAX_DEPTH};
use super::state::SecurityAssociation;

/// What happened to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputVerdict {
    /// Not IPsec, or IKE on the NAT-T port: the packet is unchanged (Ethernet padding
    /// aside) and belongs to the host stack.
    Pass,
    /// Every SA was undone and the checks passed: the frame holds the plaintext packet
    /// (tunnel mode: the inner packet).
    Decapsulated,
    /// Taken in without error and nothing to deliver.
    Consumed(Consumed),
    /// Dropped; the counter that was incremented.
    Dropped(XfrmStat),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consumed {
    /// A NAT-keepalive (RFC 3948 section 2.3: one 0xFF byte on the encapsulation port).
    Keepalive,
    /// A dummy packet (RFC 4303 section 2.6: next header 59), after its ICV verified and
    /// its sequence number was recorded. The kernel counts these as XfrmInStateProtoError
    /// (esp_input_done2 turns IPPROTO_NONE into -EINVAL); RFC 4303 asks for a silent
    /// discard, which is what this is.
    Dummy,
}

impl SecPathEntry for SecurityAssociation {
    fn config(&self) -> &crate::sa::SaConfig {
        &self.cfg
    }
}

/// What the input path needs besides the databases, computed once from them.
#[derive(Debug, Clone, Default)]
pub struct InputTables {
    /// Addresses of this host: the policy check asks `dir in` for packets to them and
    /// `dir fwd` for the others, as ip_local_deliver / ip_forward do.
    local: Vec<IpAddr>,
    /// UDP ports the IKE daemon would have set UDP_ENCAP on (the encap dport of inbound
    /// SAs), with the encapsulation type.
    encap_ports: Vec<(u16, EncapType)>,
}

impl InputTables {
    /// Local addresses are those the config names as ours: the destination of in/fwd
    /// templates (where tunnels end) and the source of out templates. Encapsulation ports
    /// come from the SAs addressed to a local address (all SAs when none is known).
    pub fn new(db: &XfrmDb) -> Self {
        let dirs = [PolicyDir::In, PolicyDir::Fwd, PolicyDir::Out];
        Self::compute(
            dirs.iter().flat_map(|&d| db.policies(d)),
            db.states().iter().map(|x| &**x),
        )
    }

    /// [`Self::new`] from the policies (any order of directions) and SAs a database would
    /// hold: a running gateway's change computes its input tables without building one.
    pub fn compute<'a>(
        policies: impl Iterator<Item = &'a crate::policy::Policy> + Clone,
        states: impl Iterator<Item = &'a super::SecurityAssociation>,
    ) -> Self {
        let mut t = Self::default();
        for p in policies.clone().filter(|p| p.dir != PolicyDir::Out) {
            for tmpl in &p.templates {
                t.add_local(tmpl.dst);
            }
        }
        for p in policies.filter(|p| p.dir == PolicyDir::Out) {
            for tmpl in &p.templates {
                if let Some(src) = tmpl.src {
                    t.add_local(src);
                }
            }
        }
        let known = !t.local.is_empty();
        for x in states {
            let Some(e) = x.cfg.encap else { continue };
            if known && !t.is_local(x.cfg.id.daddr) {
                continue;
            }
            if !t.encap_ports.iter().any(|&(p, _)| p == e.dport) {
                t.encap_ports.push((e.dport, e.kind));
            }
        }
        t
    }

    /// Declares one more address of this host.
    pub fn add_local(&mut self, a: IpAddr) {
        if !a.is_unspecified() && !self.local.contains(&a) {
            self.local.push(a);
        }
    }

    /// Declares a NAT-T port (an IKE daemon listening there with this encapsulation).
    pub fn add_encap_port(&mut self, port: u16, kind: EncapType) {
        self.encap_ports.retain(|&(p, _)| p != port);
        self.encap_ports.push((port, kind));
    }

    pub fn is_local(&self, a: IpAddr) -> bool {
        self.local.contains(&a)
    }

    /// Every NAT-T port with its encapsulation, in the order they were found (the XDP
    /// outside classifier is configured from this list).
    pub fn encap_ports(&self) -> &[(u16, EncapType)] {
        &self.encap_ports
    }

    pub fn encap_type(&self, port: u16) -> Option<EncapType> {
        self.encap_ports
            .iter()
            .find(|&&(p, _)| p == port)
            .map(|&(_, k)| k)
    }
}

/// Where the IP headers of a packet end and what follows (the kernel's network header,
/// nhoff and the protocol xfrm_parse_spi is given).
#[derive(Debug, Clone, Copy)]
struct IpHeaders {
    v6: bool,
    daddr: IpAddr,
    /// Offset of the byte naming `proto` (IPv4 protocol / last IPv6 next-header byte).
    proto_off: usize,
    /// End of the IP headers: where `proto`'s header starts.
    l4_off: usize,
    proto: u8,
    /// A fragment: nothing after the IP headers can be processed (no reassembly here).
    fragment: bool,
    /// The IPv4 header checksum is right (always true for IPv6).
    csum_ok: bool,
}

/// Parses the IP headers at the head of `frame` and cuts anything after the IP length
/// (Ethernet padding). IPv6 hop-by-hop, routing and destination-options headers are
/// stepped over; a fragment header stops the walk. None: not a well-formed IP header.
fn ip_headers(frame: &mut Frame<'_>) -> Option<IpHeaders> {
    match crate::wire::ip_version(frame.data()) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(frame.data()).ok()?;
            let len = usize::from(ip.total_len());
            let h = IpHeaders {
                v6: false,
                daddr: IpAddr::V4(ip.dst_addr()),
                proto_off: ipv4::PROTOCOL_OFFSET,
                l4_off: ip.header_len(),
                proto: ip.protocol(),
                fragment: ip.is_fragment(),
                csum_ok: ip.verify_checksum(),
            };
            frame.trim_tail(frame.len() - len).ok()?;
            Some(h)
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(frame.data()).ok()?;
            let len = ip.total_len();
            let daddr = IpAddr::V6(ip.dst_addr());
            frame.trim_tail(frame.len() - len).ok()?;
            let next = ipv6::skip_options(frame.data()).ok()?;
            Some(IpHeaders {
                v6: true,
                daddr,
                proto_off: next.proto_off,
                l4_off: next.offset,
                proto: next.proto,
                fragment: next.proto == proto::FRAGMENT,
                csum_ok: true,
            })
        }
        _ => None,
    }
}

/// What arrived on a NAT-T port (xfrm4_udp_encap_rcv's cases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpEncapRcv {
    /// RFC 3948 section 2.3: one 0xFF byte, eaten.
    Keepalive,
    /// Anything that is not ESP by the rules below: IKE (non-ESP marker, RFC 3948 section
    /// 2.2) or a packet too short to be ESP; the IKE daemon's business.
    Ike,
    /// ESP after `skip` bytes of UDP payload (0, or 8 zero bytes for espinudp-nonike).
    Esp { skip: usize },
}

/// The classification of __xfrm4_udp_encap_rcv / __xfrm6_udp_encap_rcv on the UDP payload.
pub fn udp_encap_classify(payload: &[u8], kind: EncapType) -> UdpEncapRcv {
    if payload == [0xff] {
        return UdpEncapRcv::Keepalive;
    }
    match kind {
        // ESP when longer than an ESP header and the first word (the SPI) is not zero.
        EncapType::EspInUdp if payload.len() > esp::HEADER_LEN && be32(payload, 0) != 0 => {
            UdpEncapRcv::Esp { skip: 0 }
        }
        // ESP behind two zero words.
        EncapType::EspInUdpNonIke
            if payload.len() > 8 + esp::HEADER_LEN
                && be32(payload, 0) == 0
                && be32(payload, 4) == 0 =>
        {
            UdpEncapRcv::Esp { skip: 8 }
        }
        _ => UdpEncapRcv::Ike,
    }
}

/// The UDP header of a NAT-T packet: its length must be what the IP header leaves, and its
/// checksum right (udp_lib_checksum_complete before encap_rcv; 0 = none, IPv4 only).
fn udp_encap_header_ok(pkt: &[u8], h: &IpHeaders) -> bool {
    let Some(u) = pkt.get(h.l4_off..) else {
        return false;
    };
    let Ok(uh) = udp::UdpPacket::new_checked(u) else {
        return false;
    };
    if usize::from(uh.len()) != u.len() {
        return false;
    }
    if uh.checksum() == 0 {
        return !h.v6;
    }
    let ph = checksum::pseudo_header_at(pkt, h.v6, proto::UDP, u.len() as u32);
    checksum::combine(&[ph, checksum::data(u)]) == 0xffff
}

/// RFC 3948 section 3.1.2, transport mode: NAT changed the addresses the inner TCP/UDP
/// checksum covers, so it is computed anew over the addresses the packet has now (the
/// kernel marks the packet CHECKSUM_UNNECESSARY instead; we hand it to a NIC, so it must be
/// right). A UDP checksum of 0 over IPv4 stays 0 (none), fragments stay as they are.
fn nat_t_transport_fix_l4_checksum(pkt: &mut [u8]) {
    let Ok(info) = flow::parse(pkt) else { return };
    if info.fragment || !info.l4_present {
        return;
    }
    if !matches!(info.key.proto, proto::TCP | proto::UDP) {
        return;
    }
    let Some(at) = crate::wire::l4_checksum_offset(info.key.proto) else {
        return;
    };
    let Some(l4) = pkt.get(info.l4_offset..info.ip_len) else {
        return;
    };
    if l4.len() < at + 2 || (info.key.proto == proto::UDP && info.version == 4 && be16(l4, at) == 0)
    {
        return;
    }
    let len = l4.len();
    let ph = checksum::pseudo_header_at(pkt, info.version == 6, info.key.proto, len as u32);
    let l4 = &mut pkt[info.l4_offset..info.ip_len];
    l4[at..at + 2].fill(0);
    let mut c = !checksum::combine(&[ph, checksum::data(l4)]);
    if c == 0 && info.key.proto == proto::UDP {
        c = 0xffff;
    }
    crate::wire::put16(l4, at, c);
}

fn drop_global(stats: &XfrmStats, s: XfrmStat) -> InputVerdict {
    stats.inc(s);
    InputVerdict::Dropped(s)
}

fn drop_sa(x: &SecurityAssociation, stats: &XfrmStats, s: XfrmStat) -> InputVerdict {
    x.count(stats, s);
    InputVerdict::Dropped(s)
}

/// The policy check for a packet nothing was undone on: allowed unless an in/fwd policy
/// covering it blocks it or wants it protected.
fn plaintext_policy_check(
    db: &XfrmDb,
    t: &InputTables,
    stats: &XfrmStats,
    frame: &Frame<'_>,
) -> InputVerdict {
    let Ok(info) = flow::parse(frame.data()) else {
        // xfrm_decode_session failing.
        return drop_global(stats, XfrmStat::XfrmInHdrError);
    };
    let dir = if t.is_local(info.key.dst) {
        PolicyDir::In
    } else {
        PolicyDir::Fwd
    };
    let pol = db.policy_lookup(dir, &info.key);
    match xfrm_policy_check::<&SecurityAssociation>(&info.key, &[], pol) {
        Ok(()) => InputVerdict::Pass,
        Err(s) => drop_global(stats, s),
    }
}

/// The input path for one IP packet at the head of `frame` (L2 header already removed).
pub fn xfrm_input(
    db: &XfrmDb,
    t: &InputTables,
    stats: &XfrmStats,
    frame: &mut Frame<'_>,
) -> InputVerdict {
    xfrm_input_flow(db, t, stats, frame).0
}

/// [`xfrm_input`], and for a decapsulated packet the parse of the plaintext the policy check
/// made (`Some` exactly with [`InputVerdict::Decapsulated`]): the caller routes it on
/// `key.dst` without reading the packet again.
pub fn xfrm_input_flow(
    db: &XfrmDb,
    t: &InputTables,
    stats: &XfrmStats,
    frame: &mut Frame<'_>,
) -> (InputVerdict, Option<flow::FlowInfo>) {
    let mut plain = None;
    let v = xfrm_rcv(db, t, stats, frame, &mut plain);
    (v, plain)
}

/// The body of [`xfrm_input_flow`]; `plain` receives the plaintext's parse.
fn xfrm_rcv(
    db: &XfrmDb,
    t: &InputTables,
    stats: &XfrmStats,
    frame: &mut Frame<'_>,
    plain: &mut Option<flow::FlowInfo>,
) -> InputVerdict {
    let now = db.now();
    let Some(mut h) = ip_headers(frame) else {
        return drop_global(stats, XfrmStat::XfrmInHdrError);
    };

    // The first SA may be reached through UDP encapsulation; `xfrm_off` is where what the
    // SA added begins (UDP header for NAT-T), `hdr_off` where its ESP/AH header is.
    let mut encap: Option<EncapType> = None;
    let mut xfrm_off = h.l4_off;
    let mut hdr_off = h.l4_off;
    match h.proto {
        proto::ESP | proto::AH => {}
        proto::UDP if !h.fragment => {
            let pkt = frame.data();
            let Some(kind) = pkt
                .get(h.l4_off + 2..h.l4_off + 4)
                .and_then(|p| t.encap_type(u16::from_be_bytes([p[0], p[1]])))
            else {
                return plaintext_policy_check(db, t, stats, frame);
            };
            let payload = pkt.get(h.l4_off + udp::HEADER_LEN..).unwrap_or(&[]);
            match udp_encap_classify(payload, kind) {
                UdpEncapRcv::Keepalive => return InputVerdict::Consumed(Consumed::Keepalive),
                UdpEncapRcv::Ike => return InputVerdict::Pass,
                UdpEncapRcv::Esp { skip } => {
                    if !udp_encap_header_ok(pkt, &h) {
                        return drop_global(stats, XfrmStat::XfrmInHdrError);
                    }
                    encap = Some(kind);
                    hdr_off = h.l4_off + udp::HEADER_LEN + skip;
                    h.proto = proto::ESP;
                }
            }
        }
        _ => return plaintext_policy_check(db, t, stats, frame),
    }
    if h.fragment || !h.csum_ok {
        // No reassembly here (the kernel reassembles before xfrm_input); a bad IPv4
        // header checksum is ip_rcv's drop.
        return drop_global(stats, XfrmStat::XfrmInHdrError);
    }

    let mut sp: [Option<&SecurityAssociation>; XFRM_MAX_DEPTH] = [None; XFRM_MAX_DEPTH];
    let mut sp_len = 0;
    let (last, info) = loop {
        // xfrm_parse_spi
        let pkt = frame.data();
        let (spi, seq_lo) = match h.proto {
            proto::ESP if pkt.len() >= hdr_off + esp::HEADER_LEN => {
                (be32(pkt, hdr_off), be32(pkt, hdr_off + 4))
            }
            proto::AH if pkt.len() >= hdr_off + crate::wire::ah::HEADER_LEN => {
                (be32(pkt, hdr_off + 4), be32(pkt, hdr_off + 8))
            }
            _ => return drop_global(stats, XfrmStat::XfrmInHdrError),
        };
        let xproto = if h.proto == proto::ESP {
            XfrmProto::Esp
        } else {
            XfrmProto::Ah
        };
        if sp_len == XFRM_MAX_DEPTH {
            return drop_global(stats, XfrmStat::XfrmInBufferError);
        }
        let Some(x) = db.state_lookup(h.daddr, spi, xproto) else {
            return drop_global(stats, XfrmStat::XfrmInNoStates);
        };
        let x: &SecurityAssociation = x;
        sp[sp_len] = Some(x);
        sp_len += 1;

        if !x.is_valid() {
            return drop_sa(x, stats, XfrmStat::XfrmInStateInvalid);
        }
        if x.cfg.encap.map(|e| e.kind) != encap {
            return drop_sa(x, stats, XfrmStat::XfrmInStateMismatch);
        }
        let seq = {
            let mut inp = x.input();
            match inp.replay.check(seq_lo) {
                Ok(seq) => seq,
                Err(e) => {
                    inp.stats.count_replay_error(e);
                    drop(inp);
                    return drop_sa(x, stats, e.stat());
                }
            }
        };
        if x.xfrm_state_check_expire(now).is_err() {
            return drop_sa(x, stats, XfrmStat::XfrmInStateExpired);
        }

        // x->type->input
        let typed = match xproto {
            XfrmProto::Esp => esp_input(x, frame, hdr_off, seq)
                .map(|nh| (nh, hdr_off + esp::HEADER_LEN + x.props.iv_len))
                .map_err(|e| e == EspInputError::Icv),
            XfrmProto::Ah => ah_input(x, frame, hdr_off, h.v6, seq)
                .map(|(nh, ah_len)| (nh, hdr_off + ah_len))
                .map_err(|e| e == AhInputError::Icv),
        };
        let (nexthdr, payload_off) = match typed {
            Ok(r) => r,
            Err(icv_failed) => {
                if icv_failed {
                    x.input().stats.integrity_failed += 1;
                }
                return drop_sa(x, stats, XfrmStat::XfrmInStateProtoError);
            }
        };
        // Only the first SA gets the encapsulation.
        encap = None;
        let recorded = x.replay_advance(seq);
        if let Err(e) = recorded {
            x.input().stats.count_replay_error(e);
            return drop_sa(x, stats, e.stat());
        }
        x.add_curlft_input(frame.len().saturating_sub(payload_off));
        if nexthdr == proto::NONE {
            return InputVerdict::Consumed(Consumed::Dummy);
        }

        let l = XfrmLayout {
            proto_off: h.proto_off,
            xfrm_off,
            payload_off,
            inner_proto: nexthdr,
            v6: h.v6,
        };
        if xfrm_inner_mode_input(x, frame, &l).is_err() {
            return drop_sa(x, stats, XfrmStat::XfrmInStateModeError);
        }
        if x.cfg.mode == XfrmMode::Transport && x.cfg.encap.is_some() {
            nat_t_transport_fix_l4_checksum(frame.data_mut());
        }

        // The plaintext's one parse, which the policy check needs. Another SA to undo?
        // After transport mode the next header says so; after a tunnel, the inner packet is
        // ours again only when it is addressed to us (the kernel re-receives it and
        // xfrm_input adds to the same sec path). Only a packet that may carry ESP/AH right
        // after its IP headers (or whose headers the parse refused) has them walked the
        // way the first round did.
        let info = flow::parse(frame.data()).ok();
        let may_nest = info.as_ref().is_none_or(|i| {
            matches!(i.key.proto, proto::ESP | proto::AH)
                || (i.version == 6 && i.l4_offset != ipv6::HEADER_LEN)
        });
        if !may_nest {
            break (x, info);
        }
        let Some(next) = ip_headers(frame) else {
            return drop_sa(x, stats, XfrmStat::XfrmInHdrError);
        };
        let ours = x.cfg.mode == XfrmMode::Transport
            || t.is_local(next.daddr)
            || sp[..sp_len]
                .iter()
                .flatten()
                .any(|s| s.daddr() == next.daddr);
        if !matches!(next.proto, proto::ESP | proto::AH) || !ours {
            break (x, info);
        }
        if next.fragment || !next.csum_ok {
            return drop_sa(x, stats, XfrmStat::XfrmInHdrError);
        }
        h = next;
        xfrm_off = h.l4_off;
        hdr_off = h.l4_off;
    };

    // __xfrm_policy_check on the plaintext.
    let Some(info) = info else {
        return drop_sa(last, stats, XfrmStat::XfrmInHdrError);
    };
    let dir = if t.is_local(info.key.dst)
        || sp[..sp_len]
            .iter()
            .flatten()
            .any(|s| s.daddr() == info.key.dst)
    {
        PolicyDir::In
    } else {
        PolicyDir::Fwd
    };
    let pol = db.policy_lookup(dir, &info.key);
    let xs: [&SecurityAssociation; XFRM_MAX_DEPTH] = std::array::from_fn(|i| sp[i].unwrap_or(last));
    match xfrm_policy_check(&info.key, &xs[..sp_len], pol) {
        Ok(()) => {
            *plain = Some(info);
            InputVerdict::Decapsulated
        }
        Err(s) => drop_global(stats, s),
    }
}
