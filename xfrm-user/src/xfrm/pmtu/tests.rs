//! Known answers from Linux itself (testdata/, made by testdata/capture.sh: what a 6.18
//! kernel forwarding between two veths sent) and exhaustive checks of the MTU arithmetic.

use super::*;
use crate::frame::OwnedFrame;
use crate::sa::{AeadAlgo, AuthAlgo, Encap, SaAlgorithm, XfrmId};
use crate::wire::ipv4::FLAG_DF;

const V4_DF_ORIG: &[u8] = include_bytes!("testdata/v4_df_orig.bin");
const V4_FRAG_NEEDED: &[u8] = include_bytes!("testdata/v4_frag_needed.bin");
const V4_NODF_ORIG: &[u8] = include_bytes!("testdata/v4_nodf_orig.bin");
const V4_NODF_FRAGS: [&[u8]; 2] = [
    include_bytes!("testdata/v4_nodf_frag0.bin"),
    include_bytes!("testdata/v4_nodf_frag1.bin"),
];
const V6_ORIG: &[u8] = include_bytes!("testdata/v6_orig.bin");
const V6_TOO_BIG: &[u8] = include_bytes!("testdata/v6_too_big.bin");
const V6_FRAG_ORIG: &[u8] = include_bytes!("testdata/v6_frag_orig.bin");
const V6_FRAGS: [&[u8]; 3] = [
    include_bytes!("testdata/v6_frag0.bin"),
    include_bytes!("testdata/v6_frag1.bin"),
    include_bytes!("testdata/v6_frag2.bin"),
];

fn v4_header_ok(p: &[u8]) -> bool {
    Ipv4Packet::new_checked(p).unwrap().verify_checksum()
}

fn icmp6_checksum_ok(p: &[u8]) -> bool {
    let ip = Ipv6Packet::new_checked(p).unwrap();
    let body = &p[40..ip.total_len()];
    let sum = checksum::combine(&[
        checksum::pseudo_header_v6(
            ip.src_addr(),
            ip.dst_addr(),
            proto::ICMPV6,
            body.len() as u32,
        ),
        checksum::data(body),
    ]);
    sum == 0xffff
}

#[test]
fn frag_needed_equals_linux() {
    // The kernel's answer: from the gateway's inside address, id chosen by the kernel.
    let gw: Ipv4Addr = "10.91.1.254".parse().unwrap();
    let ident = u16::from_be_bytes([V4_FRAG_NEEDED[4], V4_FRAG_NEEDED[5]]);
    let mut f = OwnedFrame::from_packet(V4_DF_ORIG);
    assert_eq!(
        check_size(V4_DF_ORIG, 1400),
        Ok(SizeCheck::FragNeeded { mtu: 1400 })
    );
    f.with_frame(|fr| icmp4_frag_needed(fr, gw, 1400, ident))
        .unwrap();
    assert_eq!(f.data(), V4_FRAG_NEEDED);
    assert!(v4_header_ok(f.data()));
    assert_eq!(checksum::data(&f.data()[20..]), 0xffff, "ICMP checksum");
}

#[test]
fn packet_too_big_equals_linux_but_the_flow_label() {
    let gw: Ipv6Addr = "fd00:91:1::fe".parse().unwrap();
    assert_eq!(
        check_size(V6_ORIG, 1400),
        Ok(SizeCheck::PacketTooBig { mtu: 1400 })
    );
    let mut f = OwnedFrame::from_packet(V6_ORIG);
    f.with_frame(|fr| icmp6_packet_too_big(fr, gw, 1400))
        .unwrap();
    // Linux hashes a flow label (auto_flowlabels); we send 0. The checksum does not
    // cover it.
    let mut linux = V6_TOO_BIG.to_vec();
    linux[1] &= 0xf0;
    linux[2] = 0;
    linux[3] = 0;
    assert_eq!(f.data(), &linux[..]);
    assert!(icmp6_checksum_ok(f.data()));
}

#[test]
fn ipv4_fragments_equal_linux() {
    // Linux forwarded it (TTL 64 -> 63), then fragmented it for the 1400-byte link.
    let mut orig = V4_NODF_ORIG.to_vec();
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut orig[..]);
        ip.set_ttl(63);
        ip.fill_checksum();
    }
    assert_eq!(check_size(&orig, 1400), Ok(SizeCheck::Fits));
    let plan = Fragmenter::ipv4(&orig, 1400).unwrap();
    assert_eq!(plan.count(), V4_NODF_FRAGS.len());
    let mut out = [0u8; 2048];
    for (i, linux) in V4_NODF_FRAGS.iter().enumerate() {
        assert_eq!(plan.fragment_len(i), linux.len());
        let n = plan.write(&orig, i, &mut out).unwrap();
        assert_eq!(&out[..n], *linux, "fragment {i}");
        assert!(v4_header_ok(&out[..n]));
    }
    // Fragment 0 made in place is the same packet.
    let mut f = OwnedFrame::from_packet(&orig);
    f.with_frame(|fr| plan.first_in_place(fr)).unwrap();
    assert_eq!(f.data(), V4_NODF_FRAGS[0]);
}

#[test]
fn ipv6_fragments_equal_linux() {
    let ident = u32::from_be_bytes(V6_FRAGS[0][44..48].try_into().unwrap());
    let plan = Fragmenter::ipv6(V6_FRAG_ORIG, 1400, ident).unwrap();
    assert_eq!(plan.count(), V6_FRAGS.len());
    let mut out = [0u8; 2048];
    for (i, linux) in V6_FRAGS.iter().enumerate() {
        let n = plan.write(V6_FRAG_ORIG, i, &mut out).unwrap();
        assert_eq!(&out[..n], *linux, "fragment {i}");
    }
    let mut f = OwnedFrame::from_packet(V6_FRAG_ORIG);
    f.with_frame(|fr| plan.first_in_place(fr)).unwrap();
    assert_eq!(f.data(), V6_FRAGS[0]);
}

/// Reassembles IPv4 fragments (any order) into the original payload.
fn reassemble_v4(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut data = vec![];
    let mut seen_last = false;
    let mut sorted: Vec<_> = frags.iter().collect();
    sorted.sort_by_key(|f| Ipv4Packet::new_checked(&f[..]).unwrap().frag_offset());
    for f in sorted {
        let ip = Ipv4Packet::new_checked(&f[..]).unwrap();
        assert_eq!(usize::from(ip.frag_offset()), data.len(), "gap or overlap");
        data.extend_from_slice(ip.payload());
        assert!(!seen_last);
        seen_last = !ip.more_frags();
    }
    assert!(seen_last);
    data
}

fn v4_packet(len: usize, opts: &[u8], frag_field: u16) -> Vec<u8> {
    let hl = 20 + opts.len();
    let mut p: Vec<u8> = (0..len).map(|i| (i * 13 + 5) as u8).collect();
    let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
    ip.set_version_ihl(hl);
    ip.set_tos(0);
    ip.set_total_len(len as u16);
    ip.set_ident(0xbeef);
    ip.set_frag_field(frag_field);
    ip.set_ttl(64);
    ip.set_protocol(proto::ESP);
    ip.set_src_addr(Ipv4Addr::new(10, 0, 0, 1));
    ip.set_dst_addr(Ipv4Addr::new(10, 0, 0, 2));
    ip.options_mut().copy_from_slice(opts);
    ip.fill_checksum();
    p
}

#[test]
fn ipv4_fragmentation_rules_for_every_size() {
    let mut out = vec![0u8; 1600];
    for mtu in [68u32, 576, 1279, 1280, 1400, 1500] {
        for len in (20..4000).step_by(37) {
            let p = v4_packet(len, &[], 0);
            let plan = Fragmenter::ipv4(&p, mtu).unwrap();
            let frags: Vec<Vec<u8>> = (0..plan.count())
                .map(|i| {
                    let n = plan.write(&p, i, &mut out).unwrap();
                    out[..n].to_vec()
                })
                .collect();
            for (i, f) in frags.iter().enumerate() {
                let ip = Ipv4Packet::new_checked(&f[..]).unwrap();
                assert!(f.len() <= mtu as usize, "mtu {mtu} len {len} frag {i}");
                assert!(ip.verify_checksum());
                assert_eq!(ip.ident(), 0xbeef, "same ID on every fragment");
                assert!(!ip.dont_frag());
                if i + 1 < frags.len() {
                    assert_eq!(ip.payload().len() % 8, 0, "8-byte aligned");
                    assert!(ip.more_frags());
                }
            }
            if len <= mtu as usize {
                assert_eq!(frags.len(), 1);
                assert_eq!(frags[0], p);
            }
            assert_eq!(reassemble_v4(&frags), p[20..]);
        }
    }
}

#[test]
fn fragmenting_a_fragment_keeps_offset_and_mf() {
    // A middle fragment at offset 1480 with MF: every piece keeps MF, offsets continue.
    let p = v4_packet(1500, &[], FLAG_MF | (1480 >> 3));
    let plan = Fragmenter::ipv4(&p, 600).unwrap();
    let mut out = [0u8; 600];
    let mut expect_off = 1480;
    for i in 0..plan.count() {
        let n = plan.write(&p, i, &mut out).unwrap();
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert!(ip.more_frags());
        assert_eq!(usize::from(ip.frag_offset()), expect_off);
        expect_off += ip.payload().len();
    }
    assert_eq!(expect_off, 1480 + 1480);
}

#[test]
fn later_fragments_keep_only_copied_options() {
    // Record route (7, not copied), router alert (0x94, copied), NOOP, END.
    let opts = [7, 7, 4, 0, 0, 0, 0, 0x94, 4, 0, 0, 1, 0, 0, 0, 0];
    let p = v4_packet(300, &opts, 0);
    let plan = Fragmenter::ipv4(&p, 100).unwrap();
    let mut out = [0u8; 100];
    let n = plan.write(&p, 0, &mut out).unwrap();
    assert_eq!(&out[20..36], &opts, "first fragment: all options");
    assert!(v4_header_ok(&out[..n]));
    let n = plan.write(&p, 2, &mut out).unwrap();
    assert_eq!(
        &out[20..36],
        &[1, 1, 1, 1, 1, 1, 1, 0x94, 4, 0, 0, 1, 0, 0, 0, 0]
    );
    assert!(v4_header_ok(&out[..n]));
    // Data per fragment: (100 - 36) & !7 = 64.
    assert_eq!(n, 36 + 64);
}

#[test]
fn fragmenter_refuses() {
    let p = v4_packet(1500, &[], FLAG_DF);
    assert_eq!(Fragmenter::ipv4(&p, 1400), Err(PmtuError::DontFragment));
    let p = v4_packet(1500, &[], 0);
    assert_eq!(Fragmenter::ipv4(&p, 27), Err(PmtuError::MtuTooSmall(27)));
    assert!(Fragmenter::ipv4(&p, 28).is_ok());
    assert_eq!(Fragmenter::ipv4(&p[..100], 1400), Err(PmtuError::Malformed));
    let plan = Fragmenter::ipv4(&p, 1000).unwrap();
    let mut small = [0u8; 100];
    assert!(matches!(
        plan.write(&p, 0, &mut small),
        Err(PmtuError::NoRoom { .. })
    ));
    assert_eq!(
        plan.write(&p, 2, &mut [0u8; 2000]),
        Err(PmtuError::Malformed)
    );
    assert!(Fragmenter::ipv6(V6_FRAG_ORIG, 40 + 8 + 7, 1).is_err());
    assert!(Fragmenter::ipv6(&V6_FRAG_ORIG[..100], 1280, 1).is_err());
}

#[test]
fn ipv6_fragments_reassemble() {
    let mut out = [0u8; 1600];
    for mtu in [1280u32, 1300, 1500] {
        let plan = Fragmenter::ipv6(V6_FRAG_ORIG, mtu, 0x1234_5678).unwrap();
        let mut body = vec![];
        for i in 0..plan.count() {
            let n = plan.write(V6_FRAG_ORIG, i, &mut out).unwrap();
            let f = &out[..n];
            assert!(n <= mtu as usize);
            let ip = Ipv6Packet::new_checked(f).unwrap();
            assert_eq!(ip.next_header(), proto::FRAGMENT);
            assert_eq!(ip.total_len(), n);
            assert_eq!(f[40], proto::UDP);
            let off = u16::from_be_bytes([f[42], f[43]]);
            assert_eq!(usize::from(off & 0xfff8), body.len());
            assert_eq!(off & 1 == 1, i + 1 < plan.count());
            assert_eq!(&f[44..48], &0x1234_5678u32.to_be_bytes());
            body.extend_from_slice(&f[48..]);
        }
        assert_eq!(body, V6_FRAG_ORIG[40..]);
    }
}

#[test]
fn icmp_is_not_sent_for() {
    let gw = Ipv4Addr::new(10, 0, 0, 254);
    let try_v4 = |p: &[u8]| {
        let mut f = OwnedFrame::from_packet(p);
        f.with_frame(|fr| icmp4_frag_needed(fr, gw, 1400, 1))
    };
    // A non-first fragment.
    let p = v4_packet(1500, &[], FLAG_DF | 100);
    assert_eq!(try_v4(&p), Err(PmtuError::NotEligible));
    // A multicast destination, a broadcast source.
    let mut p = v4_packet(1500, &[], FLAG_DF);
    Ipv4Packet::new_unchecked(&mut p[..]).set_dst_addr(Ipv4Addr::new(239, 1, 1, 1));
    assert_eq!(try_v4(&p), Err(PmtuError::NotEligible));
    let mut p = v4_packet(1500, &[], FLAG_DF);
    Ipv4Packet::new_unchecked(&mut p[..]).set_src_addr(Ipv4Addr::BROADCAST);
    assert_eq!(try_v4(&p), Err(PmtuError::NotEligible));
    // An ICMP error (type 11) is not answered; an echo request (8) is.
    for (ty, ok) in [(11u8, false), (3, false), (8, true), (0, true), (19, false)] {
        let mut p = v4_packet(1500, &[], FLAG_DF);
        Ipv4Packet::new_unchecked(&mut p[..]).set_protocol(proto::ICMP);
        p[20] = ty;
        assert_eq!(try_v4(&p).is_ok(), ok, "icmp type {ty}");
    }
    // Garbage.
    assert_eq!(try_v4(&[0x45, 0, 0]), Err(PmtuError::Malformed));

    let gw6: Ipv6Addr = "fd00::fe".parse().unwrap();
    let try_v6 = |p: &[u8]| {
        let mut f = OwnedFrame::from_packet(p);
        f.with_frame(|fr| icmp6_packet_too_big(fr, gw6, 1280))
    };
    assert!(try_v6(V6_ORIG).is_ok());
    let mut p = V6_ORIG.to_vec();
    Ipv6Packet::new_unchecked(&mut p[..]).set_src_addr(Ipv6Addr::UNSPECIFIED);
    assert_eq!(try_v6(&p), Err(PmtuError::NotEligible));
    // Packet too big goes even to a multicast destination.
    let mut p = V6_ORIG.to_vec();
    Ipv6Packet::new_unchecked(&mut p[..]).set_dst_addr("ff02::1".parse().unwrap());
    assert!(try_v6(&p).is_ok());
    // Not for an ICMPv6 error (type 1), yes for an echo request (128).
    for (ty, ok) in [(1u8, false), (128, true)] {
        let mut p = V6_ORIG.to_vec();
        Ipv6Packet::new_unchecked(&mut p[..]).set_next_header(proto::ICMPV6);
        p[40] = ty;
        assert_eq!(try_v6(&p).is_ok(), ok, "icmpv6 type {ty}");
    }
}

#[test]
fn icmp_quote_is_bounded_and_needs_headroom() {
    let gw = Ipv4Addr::new(10, 0, 0, 254);
    let small = v4_packet(100, &[], FLAG_DF);
    let mut f = OwnedFrame::from_packet(&small);
    f.with_frame(|fr| icmp4_frag_needed(fr, gw, 68, 7)).unwrap();
    assert_eq!(f.data().len(), 128);
    assert_eq!(&f.data()[28..], &small[..]);
    assert_eq!(&f.data()[24..28], &[0, 0, 0, 68]);
    let mut f = OwnedFrame::with_room(&small, 20, 0);
    assert!(matches!(
        f.with_frame(|fr| icmp4_frag_needed(fr, gw, 68, 7)),
        Err(PmtuError::NoRoom { .. })
    ));
    // An Ethernet-padded packet quotes only what total_len says.
    let mut padded = v4_packet(30, &[], FLAG_DF);
    padded.extend_from_slice(&[0xee; 16]);
    let mut f = OwnedFrame::from_packet(&padded);
    f.with_frame(|fr| icmp4_frag_needed(fr, gw, 68, 7)).unwrap();
    assert_eq!(f.data().len(), 28 + 30);
}

#[test]
fn check_size_rules() {
    let p = v4_packet(1400, &[], FLAG_DF);
    assert_eq!(check_size(&p, 1400), Ok(SizeCheck::Fits));
    assert_eq!(
        check_size(&p, 1399),
        Ok(SizeCheck::FragNeeded { mtu: 1399 })
    );
    let p = v4_packet(1400, &[], 0);
    assert_eq!(check_size(&p, 1000), Ok(SizeCheck::Fits));
    // IPv6: never reported below 1280; a packet up to 1280 goes through.
    let mut v6 = V6_ORIG.to_vec(); // 1450 bytes
    assert_eq!(check_size(&v6, 1450), Ok(SizeCheck::Fits));
    assert_eq!(
        check_size(&v6, 1000),
        Ok(SizeCheck::PacketTooBig { mtu: 1280 })
    );
    v6.truncate(1280);
    Ipv6Packet::new_unchecked(&mut v6[..]).set_payload_len(1240);
    assert_eq!(check_size(&v6, 1000), Ok(SizeCheck::Fits));
    assert_eq!(check_size(&[0x10; 40], 1000), Err(PmtuError::Malformed));
    assert_eq!(ip_len(&v6), Some(1280));
    assert_eq!(ip_len(&p), Some(1400));
}

// ---- the MTU arithmetic ----

/// The size of a packet of `len` bytes after `sa`, computed the long way: what esp_output
/// and ah_output add.
fn encapsulated_len(sa: &SaMtu, len: u32) -> u32 {
    match sa.proto {
        XfrmProto::Ah => len + sa.header_len,
        XfrmProto::Esp => {
            // The IP header stays in front in transport mode; ESP pads the rest + 2.
            let body = len - sa.net_adj;
            let padded = (body + 2).div_ceil(sa.blksize) * sa.blksize;
            sa.net_adj + sa.header_len + padded + sa.authsize
        }
    }
}

/// The largest inner length whose result fits `mtu`, by search.
fn largest_fitting(sa: &SaMtu, mtu: u32) -> u32 {
    (sa.net_adj..=mtu)
        .rev()
        .find(|&l| encapsulated_len(sa, l) <= mtu)
        .unwrap_or(0)
}

#[test]
fn state_mtu_is_the_largest_packet_that_fits() {
    let encaps = [
        None,
        Some(EncapType::EspInUdp),
        Some(EncapType::EspInUdpNonIke),
    ];
    let mut sas = vec![];
    for outer in [20, 40] {
        for tunnel in [false, true] {
            for icv in [8, 12, 16] {
                for encap in encaps {
                    sas.push(SaMtu::esp(outer, tunnel, 8, 1, icv, encap));
                }
                // A block cipher's numbers (cbc(aes): 16-byte IV and block).
                sas.push(SaMtu::esp(outer, tunnel, 16, 16, icv, None));
                sas.push(SaMtu::ah(outer, tunnel, icv, false));
                sas.push(SaMtu::ah(outer, tunnel, icv, true));
            }
        }
    }
    for sa in &sas {
        for mtu in (576..1600).chain([9000, 65535]) {
            assert_eq!(
                sa.state_mtu(mtu),
                largest_fitting(sa, mtu),
                "{sa:?} mtu {mtu}"
            );
        }
        // Never an underflow.
        assert_eq!(sa.state_mtu(0), 0);
    }
}

fn sa(daddr: &str, proto: XfrmProto, mode: XfrmMode, algorithm: SaAlgorithm) -> SaConfig {
    let daddr: IpAddr = daddr.parse().unwrap();
    SaConfig {
        replay_window: 32,
        ..SaConfig::new(
            XfrmId {
                daddr,
                spi: 0x100,
                proto,
            },
            daddr,
            1,
            mode,
            algorithm,
        )
    }
}

fn gcm(icv_bits: u32) -> SaAlgorithm {
    SaAlgorithm::Aead {
        algo: AeadAlgo::Rfc4106Gcm,
        key: vec![0; 16].into(),
        salt: [0; 4],
        icv_bits,
    }
}

#[test]
fn sa_overheads_as_the_kernel_computes_them() {
    // esp4 tunnel, rfc4106 ICV 16: header 20 + 8 + 8, trailer 4 + 1 + 16.
    let s = SaMtu::from_sa(&sa("10.0.0.2", XfrmProto::Esp, XfrmMode::Tunnel, gcm(128)));
    assert_eq!((s.header_len, s.trailer_len), (36, 21));
    assert_eq!(s.state_mtu(1500), 1446);
    // With NAT-T: 8 bytes of UDP more.
    let mut c = sa("10.0.0.2", XfrmProto::Esp, XfrmMode::Tunnel, gcm(128));
    c.encap = Some(Encap {
        kind: EncapType::EspInUdp,
        sport: 4500,
        dport: 4500,
        oaddr: "10.0.0.9".parse().unwrap(),
    });
    assert_eq!(SaMtu::from_sa(&c).state_mtu(1500), 1438);
    // esp6 tunnel: 40-byte outer header.
    let s = SaMtu::from_sa(&sa("fd00::2", XfrmProto::Esp, XfrmMode::Tunnel, gcm(128)));
    assert_eq!(s.header_len, 56);
    assert_eq!(s.state_mtu(1500), 1426);
    // esp4 transport, ICV 8: the IP header is not padded.
    let s = SaMtu::from_sa(&sa(
        "10.0.0.2",
        XfrmProto::Esp,
        XfrmMode::Transport,
        gcm(64),
    ));
    assert_eq!((s.header_len, s.net_adj), (16, 20));
    assert_eq!(s.state_mtu(1500), ((1500 - 16 - 8 - 20) & !3) + 20 - 2);
    // GMAC: ICV 16.
    let gmac = SaAlgorithm::Aead {
        algo: AeadAlgo::Rfc4543Gmac,
        key: vec![0; 16].into(),
        salt: [0; 4],
        icv_bits: 128,
    };
    let s = SaMtu::from_sa(&sa("10.0.0.2", XfrmProto::Esp, XfrmMode::Tunnel, gmac));
    assert_eq!(s.authsize, 16);
    // ah4 hmac(sha256) 96 bits: 12 + 12 = 24 (8-aligned), tunnel + 20.
    let hmac = |bits| SaAlgorithm::Auth {
        algo: AuthAlgo::HmacSha256,
        key: vec![0; 32].into(),
        trunc_bits: bits,
    };
    let s = SaMtu::from_sa(&sa("10.0.0.2", XfrmProto::Ah, XfrmMode::Tunnel, hmac(96)));
    assert_eq!(s.header_len, 44);
    assert_eq!(s.state_mtu(1500), 1456);
    // 128 bits: 12 + 16 = 28 -> 32 with 8-alignment, 28 with align4 (IPv4 only).
    let mut c = sa("10.0.0.2", XfrmProto::Ah, XfrmMode::Transport, hmac(128));
    assert_eq!(SaMtu::from_sa(&c).header_len, 32);
    c.flags.align4 = true;
    assert_eq!(SaMtu::from_sa(&c).header_len, 28);
    let mut c = sa("fd00::2", XfrmProto::Ah, XfrmMode::Transport, hmac(128));
    c.flags.align4 = true;
    assert_eq!(SaMtu::from_sa(&c).header_len, 32);
}

#[test]
fn bundle_mtu_chains_from_the_outermost() {
    // AH transport applied first, then ESP tunnel: the ESP SA sees the link.
    let ah = SaMtu::ah(20, false, 12, false);
    let esp = SaMtu::esp(20, true, 8, 1, 16, None);
    let m = bundle_mtu(&[ah, esp], 1500);
    assert_eq!(m, ah.state_mtu(esp.state_mtu(1500)));
    assert_eq!(m, 1446 - 24);
    // And the result really fits: AH then ESP on the largest packet is <= 1500.
    assert!(encapsulated_len(&esp, encapsulated_len(&ah, m)) <= 1500);
    assert!(encapsulated_len(&esp, encapsulated_len(&ah, m + 1)) > 1500);
    assert_eq!(bundle_mtu(&[], 1500), 1500);
}

mod no_panic {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any bytes, any MTU: an answer or an error, never a panic, and whatever is
        /// produced fits its MTU.
        #[test]
        fn any_input(mut pkt in proptest::collection::vec(any::<u8>(), 0..1600),
                     v6 in any::<bool>(), len_hint in any::<u16>(), mtu in 0u32..2000) {
            if pkt.len() >= 40 {
                // Make some of them look like real headers.
                pkt[0] = if v6 { 0x60 } else { 0x45 };
                let l = (usize::from(len_hint) % pkt.len()) as u16;
                if v6 { pkt[4..6].copy_from_slice(&l.saturating_sub(40).to_be_bytes()); }
                else { pkt[2..4].copy_from_slice(&l.to_be_bytes()); }
            }
            let _ = check_size(&pkt, mtu);
            let _ = ip_len(&pkt);
            let mut f = OwnedFrame::from_packet(&pkt);
            let _ = f.with_frame(|fr| icmp4_frag_needed(fr, Ipv4Addr::new(10, 0, 0, 1), mtu, 1));
            let mut f = OwnedFrame::from_packet(&pkt);
            let _ = f.with_frame(|fr| icmp6_packet_too_big(fr, "fd00::1".parse().unwrap(), mtu));
            let mut out = vec![0u8; 2048];
            let plans = [Fragmenter::ipv4(&pkt, mtu), Fragmenter::ipv6(&pkt, mtu, 9)];
            for plan in plans.into_iter().flatten() {
                for i in 0..plan.count() {
                    let n = plan.write(&pkt, i, &mut out).unwrap();
                    prop_assert!(n <= mtu as usize);
                    prop_assert_eq!(n, plan.fragment_len(i));
                }
                let mut f = OwnedFrame::from_packet(&pkt);
                f.with_frame(|fr| plan.first_in_place(fr)).unwrap();
            }
        }
    }
}

#[test]
fn agrees_with_the_output_path_state_mtu() {
    // Output's SecurityAssociation::xfrm_state_mtu computes the same from its own props.
    let hmac = |bits| SaAlgorithm::Auth {
        algo: AuthAlgo::HmacSha256,
        key: vec![1; 32].into(),
        trunc_bits: bits,
    };
    let mut cfgs = vec![];
    for d in ["10.0.0.2", "fd00::2"] {
        for mode in [XfrmMode::Tunnel, XfrmMode::Transport] {
            for icv in [64, 96, 128] {
                cfgs.push(sa(d, XfrmProto::Esp, mode, gcm(icv)));
            }
            cfgs.push(sa(d, XfrmProto::Ah, mode, hmac(96)));
            cfgs.push(sa(d, XfrmProto::Ah, mode, hmac(128)));
        }
    }
    let mut natt = sa("10.0.0.2", XfrmProto::Esp, XfrmMode::Tunnel, gcm(128));
    natt.encap = Some(Encap {
        kind: EncapType::EspInUdp,
        sport: 4500,
        dport: 4500,
        oaddr: "10.0.0.9".parse().unwrap(),
    });
    cfgs.push(natt);
    for c in cfgs {
        let x = crate::xfrm::SecurityAssociation::new(c.clone(), 0, 0).unwrap();
        let ours = SaMtu::from_sa(&c);
        for mtu in [576, 1280, 1400, 1500, 9000] {
            assert_eq!(ours.state_mtu(mtu), x.xfrm_state_mtu(mtu), "{c:?} {mtu}");
        }
    }
}
