//! What each fuzz target runs, as plain functions: `fuzz/harness` hands them libFuzzer's
//! inputs, and `fuzz/tests/replay.rs` hands them every seed and every saved crash on each
//! `cargo test`, so a bug the fuzzer found stays found.
//!
//! The fixture is `xfrm-user/examples/site-a.conf`: ESP tunnel GCM + ESN, AH transport
//! (sha256), NAT-T with GMAC, an ESP+AH bundle (sha1, align4), IPv6 tunnel GCM-256. Each
//! input gets fresh databases (replay windows, counters), so a crash reproduces from its
//! input alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use xfrm_user::{
    config::{parse_config, Config},
    datapath::rules::{compile_db, PolicyIndex},
    frame::OwnedFrame,
    policy::{Policy, PolicyAction, PolicyDir},
    selector::{FlowKey, PortMatch, Prefix, Selector},
    stats::XfrmStats,
    xfrm::{xfrm_input, xfrm_output, InputTables, InputVerdict, Verdict, XfrmDb},
};

mod control;
pub use control::{control, replies as control_replies, seeds as control_seeds};

pub const SITE_A: &str = include_str!("../../xfrm-user/examples/site-a.conf");

/// What a target runs on one input.
pub type Target = fn(&[u8]);

/// The targets by name, for the replay test and `cargo xtask fuzz`.
pub const TARGETS: [(&str, Target); 8] = [
    ("input", input),
    ("input_sealed", input_sealed),
    ("output", output),
    ("config", config),
    ("pcap", pcap),
    ("classifier", classifier),
    ("neigh", neigh),
    ("control", control),
];

/// Parsed once per process; each input gets databases of its own built from a copy.
fn site_a() -> Config {
    site_a_parsed().clone()
}

fn site_a_parsed() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| parse_config(SITE_A, "site-a.conf").expect("the example config parses"))
}

/// The far end of site-a.conf as far as input goes: the same SAs, and each out policy as
/// the peer's fwd policy (same selector and templates; the inner destinations are behind
/// it), so what A sends, the peer accepts.
fn peer_of_site_a() -> Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| {
        parse_config(&SITE_A.replace(" dir out ", " dir fwd "), "peer.conf")
            .expect("the peer config parses")
    })
    .clone()
}

fn db_of(cfg: Config) -> XfrmDb {
    XfrmDb::new(cfg.states, cfg.policies).expect("the example config builds")
}

/// Arbitrary bytes as the IP packet the worker hands `xfrm_input` (Ethernet and VLAN tags
/// are taken off before it; `pcap` covers those). The verdict must be one of the four and
/// a decapsulated packet must fit the frame.
pub fn input(data: &[u8]) {
    let db = db_of(site_a());
    let tables = InputTables::new(&db);
    let stats = XfrmStats::default();
    let mut f = OwnedFrame::with_room(data, 64, 64);
    let v = f.with_frame(|frame| xfrm_input(&db, &tables, &stats, frame));
    if v == InputVerdict::Decapsulated {
        assert!(f.len <= data.len(), "decapsulation grew the packet");
    }
}

/// Structure-aware: a valid ESP packet of SA 0x1000 (AES-GCM-128, ESN) around a plaintext
/// the fuzzer chooses whole — inner headers, padding, pad length, next header — so that the
/// ICV passes and what follows it in `esp_input` and the mode's input is what is fuzzed.
/// First two bytes: the sequence number's low bits (the window starts at 0).
pub fn input_sealed(data: &[u8]) {
    let Some((seq, plain)) = data.split_first_chunk::<2>() else {
        return;
    };
    let seq = u64::from(u16::from_be_bytes(*seq)).max(1);
    // The sealing key never changes: expanded once.
    static KEY: OnceLock<xfrm_user::crypto::gcm::GcmKey> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let sa = site_a_parsed()
            .states
            .iter()
            .find(|s| s.id.spi == 0x1000)
            .expect("SA 0x1000 in site-a.conf");
        let xfrm_user::sa::SaAlgorithm::Aead { key, salt, .. } = &sa.algorithm else {
            panic!("SA 0x1000 is AEAD");
        };
        xfrm_user::crypto::gcm::GcmKey::new(key, *salt).expect("GCM key")
    });
    // What esp_iv gives a GCM SA: the 64-bit count.
    let iv = seq.to_be_bytes();
    let (aad, aad_len) = xfrm_user::xfrm::esp::esp_aad(0x1000, seq, true);
    // IPv4 192.0.2.1 > 192.0.2.2, ESP: SPI, seq, IV, ciphertext, 16-byte ICV.
    let esp_len = 8 + 8 + plain.len() + 16;
    let Ok(total) = u16::try_from(20 + esp_len) else {
        return;
    };
    let mut pkt = vec![0u8; usize::from(total)];
    pkt[0] = 0x45;
    pkt[2..4].copy_from_slice(&total.to_be_bytes());
    pkt[8] = 64;
    pkt[9] = 50;
    pkt[12..16].copy_from_slice(&[192, 0, 2, 1]);
    pkt[16..20].copy_from_slice(&[192, 0, 2, 2]);
    let h: &[u8; 20] = pkt[..20].try_into().expect("20 bytes");
    let csum = !xfrm_user::wire::checksum::ipv4_header20(h);
    pkt[10..12].copy_from_slice(&csum.to_be_bytes());
    pkt[20..24].copy_from_slice(&0x1000u32.to_be_bytes());
    pkt[24..28].copy_from_slice(&(seq as u32).to_be_bytes());
    pkt[28..36].copy_from_slice(&iv);
    let (text, tag) = pkt[36..].split_at_mut(plain.len());
    text.copy_from_slice(plain);
    key.seal_in_place(&iv, &aad[..aad_len], text, tag)
        .expect("seal");
    let db = db_of(site_a());
    let tables = InputTables::new(&db);
    let stats = XfrmStats::default();
    let mut f = OwnedFrame::with_room(&pkt, 64, 64);
    let v = f.with_frame(|frame| xfrm_input(&db, &tables, &stats, frame));
    let sa = db
        .states()
        .iter()
        .find(|x| x.spi() == 0x1000)
        .expect("SA 0x1000");
    assert_eq!(
        sa.input().stats.integrity_failed,
        0,
        "a packet sealed with the SA's key failed its ICV ({v:?})"
    );
}

/// Round trip: an arbitrary inner packet through `xfrm_output`; what it transforms, the
/// peer's `xfrm_input` must take back (decapsulate, and pass its policy check) to the same
/// inner packet, in tunnel mode byte for byte.
pub fn output(data: &[u8]) {
    let db = db_of(site_a());
    let stats = XfrmStats::default();
    let mut f = OwnedFrame::with_room(data, 256, 512);
    let v = f.with_frame(|frame| xfrm_output(&db, &stats, frame, Some(false)));
    if v != Verdict::Transformed {
        return;
    }
    let wire = f.data().to_vec();
    // Transport mode keeps a fragment's IP header (as the kernel's does: it transforms
    // before it fragments, so it never meets one of its own): the result is a fragment
    // the peer reassembles before its xfrm_input, which is not what this round trip runs.
    let fragment = xfrm_user::wire::flow::parse_l4(data).is_ok_and(|i| i.fragment);
    if fragment && !tunnel_to(&wire) {
        return;
    }
    if source_routed_elsewhere(&wire) {
        return;
    }
    let peer = db_of(peer_of_site_a());
    let tables = InputTables::new(&peer);
    let mut back = OwnedFrame::with_room(&wire, 64, 64);
    let v = back.with_frame(|frame| xfrm_input(&peer, &tables, &stats, frame));
    assert_eq!(
        v,
        InputVerdict::Decapsulated,
        "the peer refused our own output: {}",
        stats.render_nonzero()
    );
    if tunnel_to(&wire) {
        // The inner packet as IP defines it: output cuts what follows (Ethernet padding).
        let ip_len = match data[0] >> 4 {
            4 => usize::from(u16::from_be_bytes([data[2], data[3]])),
            _ => 40 + usize::from(u16::from_be_bytes([data[4], data[5]])),
        };
        assert_eq!(
            back.data(),
            &data[..ip_len],
            "tunnel round trip changed the inner packet"
        );
    }
}

/// Whether AH's ICV covers another destination than `wire` is sent to: with a loose or
/// strict source route, ah_output (ours as the kernel's) computes it over the route's final
/// address, which the header carries only once the route's hops have forwarded the packet,
/// so the peer at the first hop cannot verify it. The round trip does not model the hops.
fn source_routed_elsewhere(wire: &[u8]) -> bool {
    let Some(&b0) = wire.first() else {
        return false;
    };
    let ihl = usize::from(b0 & 0x0f) * 4;
    if b0 >> 4 != 4 || ihl <= 20 || wire.len() < ihl {
        return false;
    }
    let mut hdr = wire[..ihl].to_vec();
    xfrm_user::xfrm::ah::ip_clear_mutable_options(&mut hdr).is_ok() && hdr[16..20] != wire[16..20]
}

/// Whether `wire` is IP-in-ESP to a tunnel end point of site-a.conf (192.0.2.2, 203.0.113.50,
/// 2001:db8:b::1): its inner packet comes back whole.
fn tunnel_to(wire: &[u8]) -> bool {
    match wire.first().map(|b| b >> 4) {
        Some(4) if wire.len() >= 20 => {
            let d = Ipv4Addr::new(wire[16], wire[17], wire[18], wire[19]);
            d == Ipv4Addr::new(192, 0, 2, 2) || d == Ipv4Addr::new(203, 0, 113, 50)
        }
        Some(6) if wire.len() >= 40 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&wire[24..40]);
            Ipv6Addr::from(a) == "2001:db8:b::1".parse::<Ipv6Addr>().unwrap()
        }
        _ => false,
    }
}

/// Arbitrary text as a config file: no panic; every error names the file, its line and a
/// word (`fuzz.conf:LINE: word '…': …`) or the line alone for line-level errors.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(errs) = parse_config(&text, "fuzz.conf") {
        assert!(!errs.is_empty(), "an error without errors");
        for e in errs {
            let s = e.to_string();
            assert!(s.starts_with("fuzz.conf:"), "error without file: {s}");
            let line = s["fuzz.conf:".len()..]
                .split(':')
                .next()
                .and_then(|l| l.parse::<usize>().ok());
            assert!(line.is_some_and(|l| l >= 1), "error without line: {s}");
        }
    }
}

/// Arbitrary bytes as a capture for `xfrm-user pcap`: no panic. The first byte picks the
/// direction (bit 0: in), the rest is the file: one direction per execution, as each opens
/// a reader with an 8 MB buffer (pcap-file's), which is most of an execution's time.
pub fn pcap(data: &[u8]) {
    let Some((&dir, file)) = data.split_first() else {
        return;
    };
    let cfg = site_a_parsed();
    let stats = XfrmStats::default();
    let mut out = Vec::new();
    if dir & 1 == 0 {
        let _ = xfrm_user::pcap::run_output(cfg, file, &mut out, &stats);
    } else {
        let _ = xfrm_user::pcap::run_input(cfg, file, &mut out, &stats);
    }
}

/// Differential: a policy table and flows drawn from the bytes; the index model (what the
/// XDP program computes, `PolicyIndex::lookup`) must pick the policy `XfrmDb::policy_lookup`
/// picks, for every flow.
pub fn classifier(data: &[u8]) {
    let mut b = Bytes(data);
    let n = usize::from(b.u8() % 24) + 1;
    let protos = [0u8, 1, 6, 17, 58, 132];
    let mut policies = Vec::new();
    for i in 0..n {
        let six = b.u8() & 1 == 1;
        let sel = Selector {
            src: b.prefix(six),
            dst: b.prefix(six),
            proto: protos[usize::from(b.u8()) % protos.len()],
            sport: b.port(),
            dport: b.port(),
        };
        policies.push(Policy {
            selector: sel,
            dir: PolicyDir::Out,
            priority: u32::from(b.u8() % 4),
            action: if b.u8() & 1 == 0 {
                PolicyAction::Allow
            } else {
                PolicyAction::Block
            },
            templates: vec![],
            index: i as u32,
        });
    }
    let Ok(db) = XfrmDb::new(vec![], policies) else {
        return;
    };
    let Ok(rules) = compile_db(&db) else {
        return;
    };
    let index = PolicyIndex::build(&rules).expect("a table of at most 24 rules");
    while !b.0.is_empty() {
        let six = b.u8() & 1 == 1;
        let flow = FlowKey {
            src: b.addr(six),
            dst: b.addr(six),
            proto: protos[usize::from(b.u8()) % protos.len()],
            sport: u16::from(b.u8() % 6),
            dport: u16::from(b.u8() % 6),
        };
        let want = db
            .policies(PolicyDir::Out)
            .iter()
            .position(|p| p.selector.matches(&flow));
        let got = index
            .lookup(&rules, &flow)
            .map(|i| rules[i].policy_id as usize);
        assert_eq!(got, want, "flow {flow:?}");
    }
}

/// Arbitrary bytes as an rtnetlink datagram, through every decoder of the neighbour cache.
pub fn neigh(data: &[u8]) {
    let _ = xfrm_user::datapath::neigh::decode_datagram(data);
}

/// A cursor that yields zeros once the input runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&x, rest)) => {
                self.0 = rest;
                x
            }
            None => 0,
        }
    }

    /// Addresses from a small space, so rules and flows overlap.
    fn addr(&mut self, six: bool) -> IpAddr {
        let (a, c) = (self.u8() % 3, self.u8() % 4);
        if six {
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                u16::from(a),
                0,
                0,
                0,
                0,
                0,
                u16::from(c),
            ))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, a, 0, c))
        }
    }

    fn prefix(&mut self, six: bool) -> Prefix {
        let addr = self.addr(six);
        let max = if six { 128 } else { 32 };
        let lens = [0u8, 8, 16, 24, 30, max];
        let len = lens[usize::from(self.u8()) % lens.len()].min(max);
        Prefix { addr, len }
    }

    fn port(&mut self) -> PortMatch {
        match self.u8() % 4 {
            0 => PortMatch::exact(u16::from(self.u8() % 5)),
            1 => PortMatch {
                port: u16::from(self.u8() % 5),
                mask: [0xfffe, 0xff00, 0x0001][usize::from(self.u8()) % 3],
            },
            _ => PortMatch::ANY,
        }
    }
}

/// Seed inputs per target, built from the fixture (`cargo run -p xfrm-fuzz --example
/// write_seeds` writes them to fuzz/seeds/): inner packets each policy of site-a.conf
/// protects, what `xfrm_output` makes of them, a capture of both, the config itself.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let inner = [
        ipv4_udp([10, 1, 0, 5], [10, 2, 0, 9], 4000, 53, b"site to site"),
        ipv4_udp(
            [10, 1, 0, 5],
            [10, 9, 0, 5],
            4500,
            4500,
            b"road warrior nat-t",
        ),
        ipv4_udp(
            [192, 0, 2, 1],
            [198, 51, 100, 7],
            1161,
            161,
            b"snmp over ah",
        ),
        ipv4_tcp([192, 0, 2, 1], [198, 51, 100, 9], 40000, 873),
        ipv6_udp("2001:db8:1::5", "2001:db8:2::9", 5000, 5001, b"v6 tunnel"),
    ];
    let db = db_of(site_a());
    let stats = XfrmStats::default();
    let mut out = Vec::new();
    let mut wire = Vec::new();
    for p in &inner {
        out.push(("output", p.clone()));
        let mut f = OwnedFrame::with_room(p, 256, 512);
        if f.with_frame(|frame| xfrm_output(&db, &stats, frame, Some(false)))
            == Verdict::Transformed
        {
            wire.push(f.data().to_vec());
            out.push(("input", f.data().to_vec()));
        }
    }
    // input_sealed: sequence 1, then an inner packet and its ESP trailer (pad 2, IPv4).
    let mut sealed = vec![0, 1];
    sealed.extend_from_slice(&inner[0]);
    sealed.extend_from_slice(&[1, 2, 2, 4]);
    out.push(("input_sealed", sealed));
    let mut cap = Vec::new();
    {
        use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
        let header = PcapHeader {
            datalink: pcap_file::DataLink::RAW,
            ..PcapHeader::default()
        };
        let mut w = PcapWriter::with_header(&mut cap, header).expect("pcap header");
        for p in inner.iter().chain(wire.iter()) {
            let pkt = PcapPacket::new(std::time::Duration::ZERO, p.len() as u32, p);
            w.write_packet(&pkt).expect("pcap packet");
        }
    }
    for dir in [0u8, 1] {
        out.push(("pcap", [&[dir][..], &cap].concat()));
    }
    out.push(("config", SITE_A.as_bytes().to_vec()));
    out.push((
        "classifier",
        (0u8..=255).map(|i| i.wrapping_mul(37)).collect(),
    ));
    // RTM_NEWNEIGH for 10.0.0.1 with a MAC, as the kernel sends it.
    let mut nl = Vec::new();
    let body: Vec<u8> = [
        &[2u8, 0, 0, 0][..],    // ndm_family AF_INET, pad
        &2i32.to_ne_bytes(),    // ifindex
        &0x02u16.to_ne_bytes(), // NUD_REACHABLE
        &[0, 0],                // flags, type
        &8u16.to_ne_bytes(),    // NDA_DST len
        &1u16.to_ne_bytes(),    // NDA_DST
        &[10, 0, 0, 1],
        &10u16.to_ne_bytes(), // NDA_LLADDR len
        &2u16.to_ne_bytes(),  // NDA_LLADDR
        &[2, 0, 0, 0, 0, 1, 0, 0],
    ]
    .concat();
    nl.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    nl.extend_from_slice(&28u16.to_ne_bytes()); // RTM_NEWNEIGH
    nl.extend_from_slice(&[0; 10]);
    nl.extend_from_slice(&body);
    out.push(("neigh", nl));
    out.extend(control::seeds().into_iter().map(|s| ("control", s)));
    out
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    let h: &[u8; 20] = p[..20].try_into().expect("20 bytes");
    let c = !xfrm_user::wire::checksum::ipv4_header20(h);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(l4);
    p
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]); // no checksum (IPv4 allows it)
    u.extend_from_slice(payload);
    u
}

fn ipv4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    ipv4(src, dst, 17, &udp(sport, dport, payload))
}

fn ipv4_tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    let sum = xfrm_user::wire::checksum::combine(&[
        xfrm_user::wire::checksum::pseudo_header_v4(src.into(), dst.into(), 6, t.len() as u32),
        xfrm_user::wire::checksum::data(&t),
    ]);
    t[16..18].copy_from_slice(&(!sum).to_be_bytes());
    ipv4(src, dst, 6, &t)
}

fn ipv6_udp(src: &str, dst: &str, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = udp(sport, dport, payload);
    let s: Ipv6Addr = src.parse().expect("v6");
    let d: Ipv6Addr = dst.parse().expect("v6");
    // IPv6 requires the UDP checksum.
    let sum = xfrm_user::wire::checksum::combine(&[
        xfrm_user::wire::checksum::pseudo_header_v6(s, d, 17, u.len() as u32),
        xfrm_user::wire::checksum::data(&u),
    ]);
    u[6..8].copy_from_slice(&(!sum).to_be_bytes());
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(u.len() as u16).to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&s.octets());
    p.extend_from_slice(&d.octets());
    p.extend_from_slice(&u);
    p
}
