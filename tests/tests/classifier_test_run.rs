//! The XDP classifier on crafted packets through BPF_PROG_TEST_RUN: no network, no attach.
//! Verdicts, metadata and counters are asserted; the randomized test compares the program with
//! `XfrmDb::policy_lookup`, the library's classifier; the outside program is compared with
//! `XfrmDb::state_lookup` the same way (random SA tables up to 64k entries), and its check of
//! clear text against the in/fwd policies with `rules::plaintext_check` (random in, fwd and
//! out tables, in a namespace whose routes make the program's route lookup answer local,
//! forwarded or unroutable).

use std::{
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use xfrm_common::{
    Counter, XdpMeta, META_F_FRAGMENT, META_F_INBOUND, META_F_IPV6, META_F_NON_IKE,
    META_F_UDP_ENCAP, META_F_VLAN, NO_POLICY, XDP_META_MAGIC,
};
use xfrm_tests::{
    bpf_object, capture,
    gateway::parse_prefix,
    init_logging,
    packet::{
        self, FrameSpec, IPPROTO_GRE, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP,
        IPPROTO_UDP,
    },
    root_or_skip, sa,
    topology::Topology,
};
use xfrm_user::{
    datapath::{
        loader::{Program, Table, XDP_DROP, XDP_PASS, XDP_REDIRECT},
        rules::{compile_sorted, plaintext_check, InputRoute},
        Datapath,
    },
    policy::{Policy, PolicyAction, PolicyDir, Template, TmplLevel},
    sa::{XfrmMode, XfrmProto},
    selector::{FlowKey, PortMatch, Prefix, Selector},
    stats::XfrmStat,
    xfrm::{
        input::{udp_encap_classify, UdpEncapRcv},
        spd::DbError,
        InputTables, XfrmDb,
    },
};

fn prefix(s: &str) -> Prefix {
    let (a, l) = s
        .split_once('/')
        .unwrap_or((s, if s.contains(':') { "128" } else { "32" }));
    Prefix {
        addr: a.parse().unwrap(),
        len: l.parse().unwrap(),
    }
}

fn selector(src: &str, dst: &str, proto: u8, sport: Option<u16>, dport: Option<u16>) -> Selector {
    Selector {
        src: prefix(src),
        dst: prefix(dst),
        proto,
        sport: sport.map_or(PortMatch::ANY, PortMatch::exact),
        dport: dport.map_or(PortMatch::ANY, PortMatch::exact),
    }
}

fn tmpl(dst: &str) -> Template {
    Template {
        src: None,
        dst: dst.parse().unwrap(),
        proto: XfrmProto::Esp,
        spi: Some(0x1000),
        reqid: 1,
        mode: XfrmMode::Tunnel,
        level: TmplLevel::Required,
    }
}

/// `protect` = allow with a template, `bypass` = allow without, `block`.
fn policy(sel: Selector, priority: u32, what: &str) -> Policy {
    let (action, templates) = match what {
        "protect" => (PolicyAction::Allow, vec![tmpl("10.200.0.2")]),
        "bypass" => (PolicyAction::Allow, vec![]),
        "block" => (PolicyAction::Block, vec![]),
        _ => panic!("{what}"),
    };
    Policy {
        selector: sel,
        dir: PolicyDir::Out,
        priority,
        action,
        templates,
        index: 0,
    }
}

/// Give every policy its config position, as the parser does.
fn numbered(mut ps: Vec<Policy>) -> Vec<Policy> {
    for (i, p) in ps.iter_mut().enumerate() {
        p.index = i as u32;
    }
    ps
}

/// An AF_XDP socket, not bound: enough for the XskMap (the program only checks presence and
/// BPF_PROG_TEST_RUN does not perform the redirect).
fn xdp_socket() -> OwnedFd {
    xfrm_tests::sock::socket(libc::AF_XDP, libc::SOCK_RAW, 0).unwrap()
}

struct Harness {
    dp: Datapath,
    db: XfrmDb,
    _sock: Option<OwnedFd>,
}

/// The library's databases for `policies` (numbered in config order). The db refuses a second
/// policy with the same selector and direction, as `ip xfrm policy add` does: with
/// `drop_duplicates`, such policies are left out (random tables make them).
fn database(policies: Vec<Policy>, drop_duplicates: bool) -> XfrmDb {
    let mut policies = numbered(policies);
    loop {
        match XfrmDb::new(vec![], policies.clone()) {
            Ok(db) => return db,
            Err(DbError::DuplicatePolicy(i)) if drop_duplicates => {
                policies.remove(i);
            }
            Err(e) => panic!("policy database: {e}"),
        }
    }
}

impl Harness {
    /// SA ids: the policy of config index i protects with SA 100 + i.
    fn new(policies: Vec<Policy>, with_socket: bool) -> Self {
        Self::with_db(database(policies, false), with_socket)
    }

    fn with_db(db: XfrmDb, with_socket: bool) -> Self {
        init_logging();
        let mut dp = Datapath::load(&bpf_object()).expect("load the XDP object");
        let rules = compile_sorted(db.policies(PolicyDir::Out)).unwrap();
        dp.set_out_policies(&rules).unwrap();
        let sock = with_socket.then(|| {
            let s = xdp_socket();
            dp.set_socket(0, s.as_raw_fd())
                .expect("XSKS[0] = AF_XDP socket");
            s
        });
        Self {
            dp,
            db,
            _sock: sock,
        }
    }

    /// The verdict and metadata, with `policy_id` (a position in the db's out list) turned
    /// back into the policy's config index so that the tests read in config terms.
    fn run(&mut self, frame: &[u8]) -> (u32, Option<XdpMeta>) {
        let out = self.dp.test_run(frame).expect("BPF_PROG_TEST_RUN");
        assert_eq!(
            out.packet, frame,
            "the classifier must not change the packet"
        );
        let meta = out.meta.map(|mut m| {
            let out_list = self.db.policies(PolicyDir::Out);
            let p = out_list
                .get(m.policy_id as usize)
                .unwrap_or_else(|| panic!("policy_id {} outside the out table", m.policy_id));
            m.policy_id = p.index;
            m
        });
        (out.action, meta)
    }

    fn count(&self, c: Counter) -> u64 {
        self.dp.counters().unwrap().get(c)
    }
}

fn udp4(dport: u16) -> FrameSpec {
    FrameSpec::new("10.1.0.1", "10.2.0.2", IPPROTO_UDP, 40000, dport)
}

#[test]
fn verdicts_and_metadata() {
    if !root_or_skip("verdicts_and_metadata") {
        return;
    }
    let mut h = Harness::new(
        vec![
            policy(
                selector("10.1.0.0/16", "10.2.0.0/16", IPPROTO_UDP, None, Some(5555)),
                10,
                "protect",
            ),
            policy(
                selector("10.1.0.0/16", "10.2.0.0/16", IPPROTO_UDP, None, Some(6666)),
                10,
                "block",
            ),
            // Higher priority (lower number): port 7777 goes in clear although the next rule
            // would protect it.
            policy(
                selector("10.1.0.0/16", "10.2.0.0/16", IPPROTO_UDP, None, Some(7777)),
                5,
                "bypass",
            ),
            policy(
                selector("10.1.0.0/16", "10.2.0.0/16", IPPROTO_UDP, None, None),
                20,
                "protect",
            ),
            policy(
                selector("fd00:1::/64", "fd00:2::/64", IPPROTO_TCP, None, Some(443)),
                10,
                "protect",
            ),
            policy(
                selector("10.9.0.1", "10.9.0.2", IPPROTO_ICMP, Some(8), None),
                10,
                "protect",
            ),
        ],
        true,
    );

    let (act, meta) = h.run(&udp4(5555).build());
    assert_eq!(act, XDP_REDIRECT);
    let m = meta.expect("metadata on a redirected frame");
    assert_eq!(
        m,
        XdpMeta {
            magic: XDP_META_MAGIC,
            flags: 0,
            l3_offset: 14,
            _pad: 0,
            policy_id: 0,
        }
    );

    assert_eq!(h.run(&udp4(6666).build()), (XDP_DROP, None));
    assert_eq!(h.run(&udp4(7777).build()), (XDP_PASS, None));
    // Any other UDP port of the subnets: the priority-20 catch-all protects it.
    let (act, meta) = h.run(&udp4(1234).build());
    assert_eq!((act, meta.map(|m| m.policy_id)), (XDP_REDIRECT, Some(3)));
    // TCP between the same hosts: no rule.
    let tcp = FrameSpec::new("10.1.0.1", "10.2.0.2", IPPROTO_TCP, 40000, 5555);
    assert_eq!(h.run(&tcp.build()), (XDP_PASS, None));

    // IPv6 TCP 443.
    let v6 = FrameSpec::new("fd00:1::1", "fd00:2::2", IPPROTO_TCP, 50000, 443);
    let (act, meta) = h.run(&v6.build());
    let m = meta.unwrap();
    assert_eq!(
        (act, m.policy_id, m.flags, m.l3_offset),
        (XDP_REDIRECT, 4, META_F_IPV6, 14)
    );
    let mut v6_other = v6.clone();
    v6_other.dport = 444;
    assert_eq!(h.run(&v6_other.build()).0, XDP_PASS);

    // ICMP: type in sport. Echo request (8) matches, echo reply (0) does not.
    let echo = FrameSpec::new("10.9.0.1", "10.9.0.2", IPPROTO_ICMP, 8, 0);
    assert_eq!(h.run(&echo.build()).0, XDP_REDIRECT);
    let reply = FrameSpec::new("10.9.0.1", "10.9.0.2", IPPROTO_ICMP, 0, 0);
    assert_eq!(h.run(&reply.build()).0, XDP_PASS);

    // 802.1Q: classified on the inner packet, offsets shifted by the tag.
    let mut tagged = udp4(5555);
    tagged.vlan = Some(42);
    let (act, meta) = h.run(&tagged.build());
    let m = meta.unwrap();
    assert_eq!((act, m.flags, m.l3_offset), (XDP_REDIRECT, META_F_VLAN, 18));

    // IPv6 extension headers are walked to the transport header: its port 443 matches.
    let mut ext = v6.clone();
    ext.v6_ext = vec![0, 60, 43];
    let (act, meta) = h.run(&ext.build());
    assert_eq!((act, meta.map(|m| m.policy_id)), (XDP_REDIRECT, Some(4)));

    let c = h.dp.counters().unwrap();
    assert_eq!(c.get(Counter::Redirect), 6, "{c}");
    assert_eq!(c.get(Counter::DropBlock), 1, "{c}");
    assert_eq!(c.get(Counter::PassBypass), 1, "{c}");
    assert_eq!(c.get(Counter::PassNoPolicy), 3, "{c}");
    assert_eq!(c.get(Counter::Rx), 11, "{c}");
}

#[test]
fn fail_closed_without_socket() {
    if !root_or_skip("fail_closed_without_socket") {
        return;
    }
    let mut h = Harness::new(
        vec![policy(
            selector("10.1.0.0/16", "10.2.0.0/16", 0, None, None),
            1,
            "protect",
        )],
        false,
    );
    assert_eq!(h.run(&udp4(5555).build()), (XDP_DROP, None));
    assert_eq!(h.count(Counter::DropNoSocket), 1);
    // The socket comes (worker started): redirect; it goes (worker died): drop again.
    let s = xdp_socket();
    h.dp.set_socket(0, s.as_raw_fd()).unwrap();
    assert_eq!(h.run(&udp4(5555).build()).0, XDP_REDIRECT);
    h.dp.clear_socket(0).unwrap();
    assert_eq!(h.run(&udp4(5555).build()), (XDP_DROP, None));
    assert_eq!(h.count(Counter::DropNoSocket), 2);
    assert_eq!(h.count(Counter::Redirect), 1);
}

#[test]
fn arp_and_nd_are_never_stolen() {
    if !root_or_skip("arp_and_nd_are_never_stolen") {
        return;
    }
    // Catch-all block for both families at top priority.
    let mut h = Harness::new(
        vec![
            policy(
                selector("0.0.0.0/0", "0.0.0.0/0", 0, None, None),
                0,
                "block",
            ),
            policy(selector("::/0", "::/0", 0, None, None), 0, "block"),
        ],
        true,
    );
    let arp = packet::arp_request("10.1.0.1".parse().unwrap(), "10.1.0.2".parse().unwrap());
    assert_eq!(h.run(&arp).0, XDP_PASS);
    for nd_type in 133..=137u16 {
        let nd = FrameSpec::new("fe80::1", "ff02::1:ff00:2", IPPROTO_ICMPV6, nd_type, 0);
        assert_eq!(h.run(&nd.build()).0, XDP_PASS, "ND type {nd_type}");
    }
    // ICMPv6 echo is not ND: blocked.
    let echo6 = FrameSpec::new("fd00::1", "fd00::2", IPPROTO_ICMPV6, 128, 0);
    assert_eq!(h.run(&echo6.build()).0, XDP_DROP);
    assert_eq!(h.run(&udp4(53).build()).0, XDP_DROP);
    assert_eq!(h.count(Counter::PassArpNd), 6);
    assert_eq!(h.count(Counter::DropBlock), 2);
}

#[test]
fn fragments_and_odd_packets() {
    if !root_or_skip("fragments_and_odd_packets") {
        return;
    }
    let mut h = Harness::new(
        vec![
            policy(
                selector("10.1.0.0/16", "10.2.0.0/16", IPPROTO_UDP, None, Some(5555)),
                1,
                "protect",
            ),
            policy(
                selector("10.3.0.0/16", "10.4.0.0/16", IPPROTO_UDP, None, None),
                1,
                "protect",
            ),
            policy(
                selector("fd00:1::/64", "fd00:2::/64", 0, None, None),
                1,
                "block",
            ),
        ],
        true,
    );
    // A non-first fragment has no ports (flowi gives 0): the port-5555 rule cannot match it,
    // the portless rule does, flagged as a fragment.
    let mut frag = udp4(5555);
    frag.frag_offset = 100;
    assert_eq!(h.run(&frag.build()), (XDP_PASS, None));
    let mut frag2 = FrameSpec::new("10.3.0.1", "10.4.0.1", IPPROTO_UDP, 1, 2);
    frag2.frag_offset = 100;
    let (act, meta) = h.run(&frag2.build());
    let m = meta.unwrap();
    assert_eq!((act, m.flags), (XDP_REDIRECT, META_F_FRAGMENT));

    // Too many IPv6 extension headers to follow: dropped, whatever the rules (fail closed).
    let mut deep = FrameSpec::new("fd00:9::1", "fd00:9::2", IPPROTO_UDP, 1, 2);
    deep.v6_ext = vec![0, 60, 60, 60, 60, 60, 60, 60];
    assert_eq!(h.run(&deep.build()), (XDP_DROP, None));
    assert_eq!(h.count(Counter::DropUnparsed), 1);

    // Truncated transport header: left to the kernel, which drops it.
    let mut cut = udp4(5555).build();
    cut.truncate(14 + 20 + 2);
    assert_eq!(h.run(&cut).0, XDP_PASS);
    assert_eq!(h.count(Counter::PassMalformed), 1);

    // Not IP at all.
    let other = packet::ethernet(packet::MAC_B, packet::MAC_A, None, 0x88b5, &[0u8; 46]);
    assert_eq!(h.run(&other).0, XDP_PASS);
    assert_eq!(h.count(Counter::PassNotIp), 1);
}

fn random_prefix(rng: &mut StdRng, v6: bool) -> String {
    if v6 {
        let len = [0u8, 16, 32, 48, 64, 112, 128][rng.gen_range(0..7)];
        format!(
            "fd00:{:x}::{:x}/{len}",
            rng.gen_range(0..4),
            rng.gen_range(0..4)
        )
    } else {
        let len = [0u8, 8, 16, 24, 30, 32][rng.gen_range(0..6)];
        format!("10.{}.0.{}/{len}", rng.gen_range(0..4), rng.gen_range(0..4))
    }
}

#[test]
fn randomized_agrees_with_reference_lookup() {
    if !root_or_skip("randomized_agrees_with_reference_lookup") {
        return;
    }
    let seed = test_seed(0x5846_0002);
    let mut rng = StdRng::seed_from_u64(seed);
    let protos = [
        0u8,
        IPPROTO_UDP,
        IPPROTO_TCP,
        IPPROTO_ICMP,
        IPPROTO_ICMPV6,
        IPPROTO_SCTP,
        IPPROTO_GRE,
    ];
    let mut checked = 0;
    for round in 0..8 {
        let n = [1usize, 4, 5, 16, 64, 200, 300, 1024][round];
        let policies: Vec<Policy> = (0..n)
            .map(|_| {
                let v6 = rng.gen_bool(0.5);
                let sel = Selector {
                    src: prefix(&random_prefix(&mut rng, v6)),
                    dst: prefix(&random_prefix(&mut rng, v6)),
                    proto: protos[rng.gen_range(0..protos.len())],
                    sport: if rng.gen_bool(0.3) {
                        PortMatch::exact(rng.gen_range(0..4))
                    } else {
                        PortMatch::ANY
                    },
                    dport: if rng.gen_bool(0.3) {
                        PortMatch {
                            port: rng.gen_range(0..4),
                            mask: [0xffff, 0xfffe, 0xff00][rng.gen_range(0..3)],
                        }
                    } else {
                        PortMatch::ANY
                    },
                };
                let what = ["protect", "bypass", "block"][rng.gen_range(0..3)];
                let mut p = policy(sel, rng.gen_range(0..4), what);
                if rng.gen_bool(0.1) {
                    p.dir = PolicyDir::In;
                }
                p
            })
            .collect();
        let mut h = Harness::with_db(database(policies, true), true);
        for _ in 0..300 {
            let v6 = rng.gen_bool(0.5);
            let proto = random_proto(&mut rng, &protos, v6);
            let (src, dst) = (random_addr(&mut rng, v6), random_addr(&mut rng, v6));
            let mut spec = random_spec(&mut rng, src, dst, proto);
            if proto == IPPROTO_ICMPV6 {
                // Keep clear of ND types 133..137 (always pass) except on purpose.
                spec.sport = [128, 129, 1, 135][rng.gen_range(0..4)];
            }
            if proto == IPPROTO_GRE {
                (spec.sport, spec.dport) = (0, 0);
            }
            let flow = FlowKey {
                src,
                dst,
                proto,
                sport: spec.sport,
                dport: spec.dport,
            };
            let nd = proto == IPPROTO_ICMPV6 && spec.sport == 135;
            let expected = if nd {
                (XDP_PASS, None)
            } else {
                // The library's own lookup: the one definition the program must agree with.
                match h.db.policy_lookup(PolicyDir::Out, &flow) {
                    None => (XDP_PASS, None),
                    Some(p) => match p.action {
                        PolicyAction::Block => (XDP_DROP, None),
                        PolicyAction::Allow if p.templates.is_empty() => (XDP_PASS, None),
                        PolicyAction::Allow => (XDP_REDIRECT, Some(p.index)),
                    },
                }
            };
            let (act, meta) = h.run(&spec.build());
            let got = (act, meta.map(|m| m.policy_id));
            assert_eq!(
                got, expected,
                "seed {seed} round {round} ({n} policies) flow {flow:?}"
            );
            checked += 1;
        }
    }
    println!("{checked} packets agreed with XfrmDb::policy_lookup");
}

/// The randomized tests' seed: $XFRM_TEST_SEED, else `default`; printed, to replay a failure.
fn test_seed(default: u64) -> u64 {
    let seed = std::env::var("XFRM_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    println!("seed {seed} (XFRM_TEST_SEED to replay)");
    seed
}

/// An address of the small space the randomized tests draw from (4 × 4 per family), so that
/// random rules and packets meet often.
fn random_addr(rng: &mut StdRng, v6: bool) -> IpAddr {
    if v6 {
        format!("fd00:{:x}::{:x}", rng.gen_range(0..4), rng.gen_range(0..4))
            .parse()
            .unwrap()
    } else {
        format!("10.{}.0.{}", rng.gen_range(0..4), rng.gen_range(0..4))
            .parse()
            .unwrap()
    }
}

/// One of `protos` but the first (0, "any"), ICMP made to match the family.
fn random_proto(rng: &mut StdRng, protos: &[u8], v6: bool) -> u8 {
    match protos[1 + rng.gen_range(0..protos.len() - 1)] {
        IPPROTO_ICMP if v6 => IPPROTO_ICMPV6,
        IPPROTO_ICMPV6 if !v6 => IPPROTO_ICMP,
        p => p,
    }
}

/// A frame from `src` to `dst` of `proto` with small random ports (or ICMP type/code).
fn random_spec(rng: &mut StdRng, src: IpAddr, dst: IpAddr, proto: u8) -> FrameSpec {
    let mut spec = FrameSpec::new(
        "10.0.0.1",
        "10.0.0.1",
        proto,
        rng.gen_range(0..4),
        rng.gen_range(0..4),
    );
    (spec.src, spec.dst) = (src, dst);
    spec
}

// ---- The outside program: inbound IPsec by (daddr, SPI, protocol) ----

const IPPROTO_ESP: u8 = 50;
const IPPROTO_AH: u8 = 51;

/// An ESP header (SPI, sequence number) and 24 bytes standing for IV, ciphertext and ICV.
fn esp_payload(spi: u32) -> Vec<u8> {
    let mut p = spi.to_be_bytes().to_vec();
    p.extend(7u32.to_be_bytes());
    p.extend([0xa5; 24]);
    p
}

/// An AH header with a 16-byte ICV (payload length field (12 + 16) / 4 - 2 = 5).
fn ah_payload(spi: u32) -> Vec<u8> {
    let mut p = vec![4, 5, 0, 0];
    p.extend(spi.to_be_bytes());
    p.extend(7u32.to_be_bytes());
    p.extend([0x5a; 16]);
    p.extend([0x45; 20]); // the protected packet, whatever it is
    p
}

fn ipsec_frame(src: &str, dst: &str, proto: u8, payload: Vec<u8>) -> FrameSpec {
    let mut f = FrameSpec::new(src, dst, proto, 0, 0);
    f.payload = payload;
    f
}

fn udp_frame(src: &str, dst: &str, dport: u16, payload: Vec<u8>) -> FrameSpec {
    let mut f = FrameSpec::new(src, dst, IPPROTO_UDP, 4500, dport);
    f.payload = payload;
    f
}

struct Outside {
    dp: Datapath,
    db: XfrmDb,
    _sock: Option<OwnedFd>,
    /// The interface the test runs pretend the packets arrived on (0: loopback).
    ifindex: u32,
}

impl Outside {
    fn new(states: Vec<xfrm_user::sa::SaConfig>, policies: Vec<Policy>, socket: bool) -> Self {
        init_logging();
        let db = XfrmDb::new(states, numbered(policies)).expect("databases");
        let mut dp = Datapath::load(&bpf_object()).expect("load the XDP object");
        dp.install(&db).expect("install the databases");
        let sock = socket.then(|| {
            let s = xdp_socket();
            dp.set_outside_socket(0, s.as_raw_fd())
                .expect("XSKS_OUT[0] = AF_XDP socket");
            s
        });
        Self {
            dp,
            db,
            _sock: sock,
            ifindex: 0,
        }
    }

    fn run(&mut self, frame: &[u8]) -> (u32, Option<XdpMeta>) {
        let out = self
            .dp
            .test_run_on(Program::Outside, frame, 1, self.ifindex)
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(
            out.packet, frame,
            "the classifier must not change the packet"
        );
        (out.action, out.meta)
    }

    fn count(&self, c: Counter) -> u64 {
        self.dp.outside_counters().unwrap().get(c)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn outside_verdicts_and_metadata() {
    if !root_or_skip("outside_verdicts_and_metadata") {
        return;
    }
    let (peer, us, peer6, us6) = ("10.200.0.2", "10.200.0.1", "fd00:200::2", "fd00:200::1");
    let mut h = Outside::new(
        vec![
            sa::esp(0x1001, ip(peer), ip(us)),
            sa::ah(0x1002, ip(peer), ip(us)),
            sa::esp(0x1003, ip(peer6), ip(us6)),
            sa::esp_in_udp(0x1004, ip(peer), ip(us), 4500, false),
            sa::esp_in_udp(0x1005, ip(peer), ip(us), 4501, true),
            // Outbound SA (to the peer): same SPI as an inbound one, other daddr.
            sa::esp(0x1001, ip(us), ip(peer)),
        ],
        vec![],
        true,
    );
    let inbound = |flags| XdpMeta {
        magic: XDP_META_MAGIC,
        flags: flags | META_F_INBOUND,
        l3_offset: 14,
        _pad: 0,
        policy_id: NO_POLICY,
    };
    // ESP, AH, ESP over IPv6 to our SAs: to the worker, marked inbound.
    let esp = ipsec_frame(peer, us, IPPROTO_ESP, esp_payload(0x1001));
    assert_eq!(h.run(&esp.build()), (XDP_REDIRECT, Some(inbound(0))));
    let ah = ipsec_frame(peer, us, IPPROTO_AH, ah_payload(0x1002));
    assert_eq!(h.run(&ah.build()), (XDP_REDIRECT, Some(inbound(0))));
    let esp6 = ipsec_frame(peer6, us6, IPPROTO_ESP, esp_payload(0x1003));
    assert_eq!(
        h.run(&esp6.build()),
        (XDP_REDIRECT, Some(inbound(META_F_IPV6)))
    );
    // The SA is found by (daddr, SPI, protocol): the same SPI to the peer is the outbound SA
    // (an SA of ours too), ESP with AH's SPI or to another address is unknown.
    let out_sa = ipsec_frame(us, peer, IPPROTO_ESP, esp_payload(0x1001));
    assert_eq!(h.run(&out_sa.build()).0, XDP_REDIRECT);
    for f in [
        ipsec_frame(peer, us, IPPROTO_ESP, esp_payload(0x1002)),
        ipsec_frame(peer, us, IPPROTO_AH, ah_payload(0x1001)),
        ipsec_frame(peer, "10.200.0.9", IPPROTO_ESP, esp_payload(0x1001)),
        ipsec_frame(peer, us, IPPROTO_ESP, esp_payload(0x9999)),
    ] {
        assert_eq!(h.run(&f.build()), (XDP_PASS, None), "{f:?}");
    }
    assert_eq!(h.count(Counter::PassUnknownSpi), 4);

    // NAT-T on 4500 (RFC 3948): ESP after the UDP header; IKE behind the zero marker; a
    // keepalive. 4501 is a non-IKE-marker port: ESP behind 8 zero bytes.
    let udp_esp = udp_frame(peer, us, 4500, esp_payload(0x1004));
    assert_eq!(
        h.run(&udp_esp.build()),
        (XDP_REDIRECT, Some(inbound(META_F_UDP_ENCAP)))
    );
    let mut non_ike = vec![0u8; 8];
    non_ike.extend(esp_payload(0x1005));
    assert_eq!(
        h.run(&udp_frame(peer, us, 4501, non_ike).build()),
        (
            XDP_REDIRECT,
            Some(inbound(META_F_UDP_ENCAP | META_F_NON_IKE))
        )
    );
    let mut ike = vec![0u8; 4];
    ike.extend([0x11; 28]);
    assert_eq!(
        h.run(&udp_frame(peer, us, 4500, ike).build()),
        (XDP_PASS, None)
    );
    // ESP-sized but only 8 bytes: not longer than an ESP header, so IKE's (as the kernel).
    assert_eq!(
        h.run(&udp_frame(peer, us, 4500, 0x1004u32.to_be_bytes().repeat(2)).build()),
        (XDP_PASS, None)
    );
    assert_eq!(h.count(Counter::PassIke), 2);
    assert_eq!(
        h.run(&udp_frame(peer, us, 4500, vec![0xff]).build()),
        (XDP_PASS, None)
    );
    assert_eq!(h.count(Counter::PassNattKeepalive), 1);
    // ESP-in-UDP on a port with no NAT-T socket, IKE on 500, TCP: the host's.
    assert_eq!(
        h.run(&udp_frame(peer, us, 4600, esp_payload(0x1004)).build())
            .0,
        XDP_PASS
    );
    assert_eq!(
        h.run(&udp_frame(peer, us, 500, vec![0x22; 40]).build()).0,
        XDP_PASS
    );
    let tcp = FrameSpec::new(peer, us, IPPROTO_TCP, 1, 22);
    assert_eq!(h.run(&tcp.build()).0, XDP_PASS);
    assert_eq!(h.count(Counter::PassNotIpsec), 3);

    // Fragments of ESP go to the kernel (no reassembly in the worker); a cut ESP header
    // is malformed; ARP passes.
    let mut frag = esp.clone();
    frag.frag_offset = 10;
    assert_eq!(h.run(&frag.build()), (XDP_PASS, None));
    assert_eq!(h.count(Counter::PassFragment), 1);
    let mut cut = esp.build();
    cut.truncate(14 + 20 + 6);
    assert_eq!(h.run(&cut), (XDP_PASS, None));
    assert_eq!(h.count(Counter::PassMalformed), 1);
    let arp = packet::arp_request(us.parse().unwrap(), peer.parse().unwrap());
    assert_eq!(h.run(&arp).0, XDP_PASS);

    let c = h.dp.outside_counters().unwrap();
    assert_eq!(c.get(Counter::RedirectIn), 6, "{c}");
    assert_eq!(c.get(Counter::Rx), 19, "{c}");
    // The inside program saw none of this.
    assert_eq!(h.dp.counters().unwrap().get(Counter::Rx), 0);

    // Without a socket on the queue: dropped and counted, not handed to the kernel.
    h.dp.clear_outside_socket(0).unwrap();
    assert_eq!(h.run(&esp.build()), (XDP_DROP, None));
    assert_eq!(h.count(Counter::DropNoSocketIn), 1);
    // The table follows the database: without the SA, the SPI is unknown.
    let keep: Vec<_> = xfrm_user::datapath::rules::compile_sas(&h.db)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.spi != 0x1001)
        .collect();
    h.dp.set_sas(&keep).unwrap();
    assert_eq!(h.run(&esp.build()), (XDP_PASS, None));
}

#[test]
fn outside_one_armed_classifies_the_rest() {
    if !root_or_skip("outside_one_armed_classifies_the_rest") {
        return;
    }
    let mut h = Outside::new(
        vec![sa::esp(0x2001, ip("10.200.0.2"), ip("10.200.0.1"))],
        vec![
            policy(
                selector("10.1.0.0/16", "10.2.0.0/16", IPPROTO_UDP, None, None),
                1,
                "protect",
            ),
            policy(
                selector("10.1.0.0/16", "10.2.0.0/16", IPPROTO_TCP, None, None),
                1,
                "block",
            ),
        ],
        true,
    );
    let esp = ipsec_frame("10.200.0.2", "10.200.0.1", IPPROTO_ESP, esp_payload(0x2001));
    let udp = udp4(5555).build();
    let tcp = FrameSpec::new("10.1.0.1", "10.2.0.2", IPPROTO_TCP, 1, 2).build();
    // Two-armed: the outside program leaves plaintext alone.
    assert_eq!(h.run(&udp), (XDP_PASS, None));
    assert_eq!(h.run(&tcp), (XDP_PASS, None));
    h.dp.set_one_armed(true).unwrap();
    let (act, meta) = h.run(&udp);
    let m = meta.expect("metadata");
    assert_eq!(
        (act, m.policy_id, m.flags & META_F_INBOUND),
        (XDP_REDIRECT, 0, 0)
    );
    assert_eq!(h.run(&tcp), (XDP_DROP, None));
    // Inbound IPsec is still found first.
    let (act, meta) = h.run(&esp.build());
    assert_eq!(
        (act, meta.map(|m| m.flags & META_F_INBOUND)),
        (XDP_REDIRECT, Some(META_F_INBOUND))
    );
    let c = h.dp.outside_counters().unwrap();
    assert_eq!(
        (
            c.get(Counter::Redirect),
            c.get(Counter::DropBlock),
            c.get(Counter::RedirectIn)
        ),
        (1, 1, 1),
        "{c}"
    );
    // Fail closed on this side too: protect without the socket drops.
    h.dp.clear_outside_socket(0).unwrap();
    assert_eq!(h.run(&udp), (XDP_DROP, None));
    assert_eq!(h.count(Counter::DropNoSocket), 1);
}

/// What the outside program must do with an inbound packet, from the library: the input
/// path's NAT-T classification (`udp_encap_classify`, xfrm4_udp_encap_rcv's rules) on its
/// ports (`InputTables`), then `XfrmDb::state_lookup`.
fn inbound_expected(db: &XfrmDb, tables: &InputTables, f: &FrameSpec) -> (u32, Option<u16>) {
    let (spi, proto, flags) = match f.proto {
        IPPROTO_ESP => (
            u32::from_be_bytes(f.payload[0..4].try_into().unwrap()),
            XfrmProto::Esp,
            0,
        ),
        IPPROTO_AH => (
            u32::from_be_bytes(f.payload[4..8].try_into().unwrap()),
            XfrmProto::Ah,
            0,
        ),
        IPPROTO_UDP => {
            let Some(kind) = tables.encap_type(f.dport) else {
                return (XDP_PASS, None);
            };
            match udp_encap_classify(&f.payload, kind) {
                UdpEncapRcv::Esp { skip } => {
                    let p = &f.payload[skip..];
                    let flags = if skip == 0 {
                        META_F_UDP_ENCAP
                    } else {
                        META_F_UDP_ENCAP | META_F_NON_IKE
                    };
                    (
                        u32::from_be_bytes(p[0..4].try_into().unwrap()),
                        XfrmProto::Esp,
                        flags,
                    )
                }
                UdpEncapRcv::Ike | UdpEncapRcv::Keepalive => return (XDP_PASS, None),
            }
        }
        _ => return (XDP_PASS, None),
    };
    match db.state_lookup(f.dst, spi, proto) {
        Some(_) => {
            let v6 = if f.dst.is_ipv6() { META_F_IPV6 } else { 0 };
            (XDP_REDIRECT, Some(flags | META_F_INBOUND | v6))
        }
        None => (XDP_PASS, None),
    }
}

#[test]
fn randomized_outside_agrees_with_state_lookup() {
    if !root_or_skip("randomized_outside_agrees_with_state_lookup") {
        return;
    }
    let seed = test_seed(0x5846_0005);
    let mut rng = StdRng::seed_from_u64(seed);
    // Few addresses and SPIs, so that packets hit, nearly hit (same SPI, other address or
    // protocol) and miss.
    let addr = |rng: &mut StdRng| -> IpAddr {
        if rng.gen_bool(0.5) {
            IpAddr::from([10, 200, 0, rng.gen_range(1..5)])
        } else {
            IpAddr::from([0xfd00, 0x200, 0, 0, 0, 0, 0, rng.gen_range(1..5)])
        }
    };
    let mut checked = 0;
    let mut hits = 0;
    for (round, n) in [1usize, 8, 200, 65536].into_iter().enumerate() {
        let spi_space = (n as u32 * 2).max(16);
        let mut seen = std::collections::HashSet::new();
        let mut states = Vec::new();
        while states.len() < n {
            let dst = addr(&mut rng);
            let src = if dst.is_ipv4() {
                IpAddr::from([10, 200, 1, 1])
            } else {
                IpAddr::from([0xfd00, 0x201, 0, 0, 0, 0, 0, 1])
            };
            let spi = rng.gen_range(1..spi_space);
            let x = match rng.gen_range(0..4) {
                0 => sa::ah(spi, src, dst),
                1 => sa::esp_in_udp(spi, src, dst, 4500, false),
                2 if n < 1000 => sa::esp_in_udp(spi, src, dst, 4501, true),
                _ => sa::esp(spi, src, dst),
            };
            if seen.insert(x.id) {
                states.push(x);
            }
        }
        let mut h = Outside::new(states, vec![], true);
        let tables = InputTables::new(&h.db);
        for _ in 0..500 {
            // Half the packets name an existing SA's (daddr, SPI), in any encapsulation.
            let (dst, spi) = if rng.gen_bool(0.5) {
                let x = &h.db.states()[rng.gen_range(0..n)];
                (x.cfg.id.daddr, x.cfg.id.spi)
            } else {
                (addr(&mut rng), rng.gen_range(0..spi_space))
            };
            let src = addr(&mut rng);
            let src = if src.is_ipv4() == dst.is_ipv4() {
                src
            } else {
                dst
            };
            let mut f = match rng.gen_range(0..5) {
                0 => ipsec_frame("10.0.0.1", "10.0.0.1", IPPROTO_AH, ah_payload(spi)),
                1 | 2 => ipsec_frame("10.0.0.1", "10.0.0.1", IPPROTO_ESP, esp_payload(spi)),
                3 => {
                    let port = [4500, 4500, 4501, 500][rng.gen_range(0..4)];
                    let mut p = match rng.gen_range(0..4) {
                        0 => vec![0, 0, 0, 0, 0, 0, 0, 0],
                        1 => vec![0, 0, 0, 0],
                        _ => vec![],
                    };
                    p.extend(esp_payload(spi));
                    udp_frame("10.0.0.1", "10.0.0.1", port, p)
                }
                _ => udp_frame("10.0.0.1", "10.0.0.1", 4500, vec![0xff]),
            };
            (f.src, f.dst) = (src, dst);
            let expected = inbound_expected(&h.db, &tables, &f);
            let (act, meta) = h.run(&f.build());
            let got = (act, meta.map(|m| m.flags));
            assert_eq!(got, expected, "seed {seed} round {round} ({n} SAs) {f:?}");
            if let Some(m) = meta {
                assert_eq!(m.policy_id, NO_POLICY);
                hits += 1;
            }
            checked += 1;
        }
    }
    assert!(
        hits > checked / 10,
        "only {hits} of {checked} packets hit an SA"
    );
    println!("{checked} packets agreed with XfrmDb::state_lookup ({hits} redirected)");
}

// ---- The outside program's inbound policy check: clear text under in/fwd policies ----

/// The gateway's own addresses in [`in_route_ns`] (within the randomized address space).
const LOCAL: [&str; 4] = ["10.1.0.1", "10.2.0.2", "fd00:1::1", "fd00:3::2"];
/// Blackholed there; every other destination is forwarded out of the dummy interface.
const BLACKHOLE: [&str; 2] = ["10.3.0.2/31", "fd00:2::2/127"];

/// Where the kernel of [`in_route_ns`] takes a packet to `dst`: the direction the expected
/// verdicts are computed for.
fn input_route(dst: IpAddr) -> InputRoute {
    if LOCAL.iter().any(|a| ip(a) == dst) {
        InputRoute::Local
    } else if BLACKHOLE
        .iter()
        .any(|p| capture::in_prefix(dst, parse_prefix(p)))
    {
        InputRoute::Unroutable
    } else {
        InputRoute::Forward
    }
}

/// Runs `f` in a namespace of its own whose routes are [`input_route`]'s: an interface `d0`,
/// up, holding [`LOCAL`], default routes out of it, blackhole routes for [`BLACKHOLE`],
/// forwarding on. `f` gets d0's ifindex: test runs that "arrive" there make the program's
/// bpf_fib_lookup route the packet as this namespace's kernel would (test runs resolve the
/// interface in the calling thread's namespace).
fn in_route_ns(f: impl FnOnce(u32) + Send) {
    let mut topo = Topology::new().expect("topology");
    let i = topo.add_netns("rt").expect("namespace");
    let ns = topo.ns(i);
    let ip_cmd = |args: &[&str]| {
        ns.ip(args).unwrap_or_else(|e| panic!("{e:#}"));
    };
    // A veth pair inside the namespace (this kernel may lack the dummy driver); d1 is only
    // there for d0 to have a carrier.
    ip_cmd(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
    ip_cmd(&["link", "set", "d1", "up"]);
    ip_cmd(&["link", "set", "d0", "up"]);
    for a in LOCAL {
        if a.contains(':') {
            ip_cmd(&[
                "-6",
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                "d0",
                "nodad",
            ]);
        } else {
            ip_cmd(&["addr", "add", &format!("{a}/32"), "dev", "d0"]);
        }
    }
    for fam in ["-4", "-6"] {
        ip_cmd(&[fam, "route", "add", "default", "dev", "d0"]);
    }
    for p in BLACKHOLE {
        let fam = if p.contains(':') { "-6" } else { "-4" };
        ip_cmd(&[fam, "route", "add", "blackhole", p]);
    }
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    ns.sysctl("net.ipv6.conf.all.forwarding", "1").unwrap();
    ns.run(|| {
        let name = std::ffi::CString::new("d0").unwrap();
        // SAFETY: a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0, "d0: {}", std::io::Error::last_os_error());
        f(ifindex);
        Ok(())
    })
    .unwrap();
}

/// A `dir` policy: `protect` (a required template), `optional` (only a `level use`
/// template), `mixed` (an optional and a required one), `bypass` (no template), `block`.
fn dir_policy(dir: PolicyDir, sel: Selector, priority: u32, what: &str) -> Policy {
    let optional = |mut t: Template| {
        t.level = TmplLevel::Use;
        t
    };
    let mut p = match what {
        "optional" | "mixed" => policy(sel, priority, "protect"),
        _ => policy(sel, priority, what),
    };
    match what {
        "optional" => p.templates = vec![optional(tmpl("10.200.0.2"))],
        "mixed" => p.templates.insert(0, optional(tmpl("10.200.0.2"))),
        _ => {}
    }
    p.dir = dir;
    p
}

/// An IPv4 first fragment (MF set) with one byte of UDP header: its ports are in the next
/// fragment (RFC 1858).
fn tiny_first_fragment(src: &str, dst: &str) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (ip(src), ip(dst)) else {
        panic!("IPv4 only");
    };
    let l3 = packet::ipv4(s, d, IPPROTO_UDP, 0x2000, &[0x9c]);
    packet::ethernet(packet::MAC_B, packet::MAC_A, None, packet::ETH_P_IP, &l3)
}

#[test]
fn outside_refuses_clear_text_under_in_fwd_policies() {
    if !root_or_skip("outside_refuses_clear_text_under_in_fwd_policies") {
        return;
    }
    in_route_ns(|ifindex| {
        use PolicyDir::{Fwd, In, Out};
        let sel = |s, d, proto, dport| selector(s, d, proto, None, dport);
        let mut h = Outside::new(
            vec![
                // NAT-T SAs: the program's encap ports 4501 and 4502, not 4500 (to the
                // template's address, the one InputTables takes as local).
                sa::esp_in_udp(0x4242, ip("10.9.0.1"), ip("10.200.0.2"), 4501, false),
                sa::esp_in_udp(0x4243, ip("10.9.0.1"), ip("10.200.0.2"), 4502, true),
            ],
            vec![
                dir_policy(
                    In,
                    sel("10.9.0.0/16", "10.1.0.0/16", 0, None),
                    10,
                    "protect",
                ),
                dir_policy(
                    In,
                    sel("10.9.0.0/16", "10.1.0.0/16", IPPROTO_UDP, Some(53)),
                    5,
                    "block",
                ),
                dir_policy(
                    In,
                    sel("10.8.0.0/16", "10.1.0.0/16", 0, None),
                    10,
                    "optional",
                ),
                dir_policy(
                    Fwd,
                    sel("10.9.0.0/16", "10.5.0.0/16", 0, None),
                    10,
                    "protect",
                ),
                // Asymmetric: only fwd has a rule for 10.7/16, and it covers every address.
                dir_policy(
                    Fwd,
                    sel("10.7.0.0/16", "0.0.0.0/0", IPPROTO_TCP, Some(22)),
                    10,
                    "block",
                ),
                dir_policy(In, sel("fd00:9::/32", "fd00:1::/32", 0, None), 10, "mixed"),
                dir_policy(
                    Fwd,
                    sel("fd00:9::/32", "fd00:5::/32", 0, None),
                    10,
                    "protect",
                ),
                dir_policy(
                    In,
                    sel("fd00:8::/32", "fd00:1::/32", 0, None),
                    10,
                    "optional",
                ),
                // For the one-armed part: what the out table protects.
                dir_policy(
                    Out,
                    sel("10.1.0.0/16", "10.5.0.0/16", 0, None),
                    10,
                    "protect",
                ),
            ],
            true,
        );
        h.ifindex = ifindex;
        let tcp = |s, d, dport| FrameSpec::new(s, d, IPPROTO_TCP, 40000, dport).build();
        let udp = |s, d, dport| FrameSpec::new(s, d, IPPROTO_UDP, 40000, dport).build();
        let udp_with = |s, d, dport, payload: &[u8]| {
            let mut f = FrameSpec::new(s, d, IPPROTO_UDP, 4500, dport);
            f.payload = payload.to_vec();
            f.build()
        };
        let fragment = |s, d| {
            let mut f = FrameSpec::new(s, d, IPPROTO_UDP, 40000, 80);
            f.frag_offset = 100;
            f.build()
        };
        let esp = |d, spi| ipsec_frame("10.9.0.5", d, IPPROTO_ESP, esp_payload(spi)).build();
        let mut ike = vec![0u8; 4];
        ike.extend([0x21; 28]);
        use Counter::*;
        let cases: Vec<(&str, Vec<u8>, u32, Counter)> = vec![
            // Local delivery: the in table.
            (
                "in: protected",
                tcp("10.9.0.5", "10.1.0.1", 80),
                XDP_DROP,
                DropInTmplMismatch,
            ),
            (
                "in: block",
                udp("10.9.0.5", "10.1.0.1", 53),
                XDP_DROP,
                DropInPolBlock,
            ),
            (
                "in: optional only",
                tcp("10.8.0.5", "10.1.0.1", 80),
                XDP_PASS,
                PassNotIpsec,
            ),
            (
                "in: IKE 500",
                udp("10.9.0.5", "10.1.0.1", 500),
                XDP_PASS,
                PassNotIpsec,
            ),
            (
                "in: IKE 4500, no NAT-T SA on it",
                udp_with("10.9.0.5", "10.1.0.1", 4500, &ike),
                XDP_PASS,
                PassNotIpsec,
            ),
            (
                "in: IKE behind the zero marker on the NAT-T port 4501",
                udp_with("10.9.0.5", "10.1.0.1", 4501, &ike),
                XDP_PASS,
                PassIke,
            ),
            (
                "in: keepalive on 4501",
                udp_with("10.9.0.5", "10.1.0.1", 4501, &[0xff]),
                XDP_PASS,
                PassNattKeepalive,
            ),
            (
                "in: IKE on the non-IKE-marker NAT-T port 4502",
                udp("10.9.0.5", "10.1.0.1", 4502),
                XDP_PASS,
                PassIke,
            ),
            (
                "in: ESP, unknown SPI",
                esp("10.1.0.1", 0x9999),
                XDP_PASS,
                PassUnknownSpi,
            ),
            (
                "in: non-first fragment",
                fragment("10.9.0.5", "10.1.0.1"),
                XDP_PASS,
                PassNotIpsec,
            ),
            (
                "in: tiny first fragment",
                tiny_first_fragment("10.9.0.5", "10.1.0.1"),
                XDP_DROP,
                DropUnparsed,
            ),
            (
                "ESP in UDP of our SA: the worker's, before any check",
                udp_with("10.9.0.1", "10.200.0.2", 4501, &esp_payload(0x4242)),
                XDP_REDIRECT,
                RedirectIn,
            ),
            // Forwarded: the fwd table, which exempts nothing.
            (
                "fwd: protected",
                tcp("10.9.0.5", "10.5.0.7", 80),
                XDP_DROP,
                DropInTmplMismatch,
            ),
            (
                "fwd: IKE 500",
                udp("10.9.0.5", "10.5.0.7", 500),
                XDP_DROP,
                DropInTmplMismatch,
            ),
            (
                "fwd: non-first fragment",
                fragment("10.9.0.5", "10.5.0.7"),
                XDP_DROP,
                DropInTmplMismatch,
            ),
            (
                "fwd: ESP",
                esp("10.5.0.7", 0x9999),
                XDP_DROP,
                DropInTmplMismatch,
            ),
            (
                "fwd: block",
                tcp("10.7.0.1", "10.6.0.1", 22),
                XDP_DROP,
                DropInPolBlock,
            ),
            (
                "fwd: other port",
                tcp("10.7.0.1", "10.6.0.1", 23),
                XDP_PASS,
                PassNotIpsec,
            ),
            // The tables disagree: the route decides.
            (
                "fwd's 0/0 rule, but a local address: in decides",
                tcp("10.7.0.1", "10.1.0.1", 22),
                XDP_PASS,
                PassNotIpsec,
            ),
            (
                "no route (blackhole): refused if either refuses",
                tcp("10.7.0.1", "10.3.0.2", 22),
                XDP_DROP,
                DropInPolBlock,
            ),
            // IPv6.
            (
                "in v6: an optional and a required template",
                tcp("fd00:9::5", "fd00:1::1", 80),
                XDP_DROP,
                DropInTmplMismatch,
            ),
            (
                "fwd v6",
                tcp("fd00:9::5", "fd00:5::7", 80),
                XDP_DROP,
                DropInTmplMismatch,
            ),
            (
                "in v6: optional only",
                tcp("fd00:8::5", "fd00:1::1", 80),
                XDP_PASS,
                PassNotIpsec,
            ),
            (
                "ARP",
                packet::arp_request(ip4("10.9.0.5"), ip4("10.1.0.1")),
                XDP_PASS,
                PassArpNd,
            ),
        ];
        let run_all = |h: &mut Outside, cases: &[(&str, Vec<u8>, u32, Counter)]| {
            for (what, frame, action, counter) in cases {
                let before = h.dp.outside_counters().unwrap();
                let (got, _) = h.run(frame);
                let after = h.dp.outside_counters().unwrap();
                let moved: Vec<(&str, u64)> = after
                    .iter()
                    .zip(before.iter())
                    .filter(|((_, a), (_, b))| a != b)
                    .map(|((n, a), (_, b))| (n, a - b))
                    .collect();
                let name = xfrm_common::COUNTER_NAMES[*counter as usize];
                assert_eq!(got, *action, "{what}: counters moved {moved:?}");
                assert_eq!(moved, [("rx", 1), (name, 1)], "{what}");
            }
        };
        run_all(&mut h, &cases);

        // One-armed: what the in/fwd check lets through is then classified against the out
        // table (the kernel's order: ip_forward's fwd check, then xfrm_lookup).
        h.dp.set_one_armed(true).unwrap();
        run_all(
            &mut h,
            &[
                (
                    "out: protect",
                    tcp("10.1.0.5", "10.5.0.7", 80),
                    XDP_REDIRECT,
                    Redirect,
                ),
                (
                    "fwd first",
                    tcp("10.9.0.5", "10.5.0.7", 80),
                    XDP_DROP,
                    DropInTmplMismatch,
                ),
                (
                    "in first",
                    tcp("10.9.0.5", "10.1.0.1", 80),
                    XDP_DROP,
                    DropInTmplMismatch,
                ),
                (
                    "no rule",
                    tcp("10.8.0.5", "10.6.0.1", 80),
                    XDP_PASS,
                    PassNoPolicy,
                ),
            ],
        );
        // Without in/fwd policies the outside program passes clear text as before.
        h.dp.set_one_armed(false).unwrap();
        h.dp.set_policies(Table::In, &[]).unwrap();
        h.dp.set_policies(Table::Fwd, &[]).unwrap();
        run_all(
            &mut h,
            &[
                (
                    "no in table",
                    tcp("10.9.0.5", "10.1.0.1", 80),
                    XDP_PASS,
                    PassNotIpsec,
                ),
                (
                    "no fwd table",
                    tcp("10.9.0.5", "10.5.0.7", 80),
                    XDP_PASS,
                    PassNotIpsec,
                ),
                (
                    "nothing to cover a tiny fragment",
                    tiny_first_fragment("10.9.0.5", "10.1.0.1"),
                    XDP_PASS,
                    PassMalformed,
                ),
            ],
        );
    });
}

/// The inside program refuses a first fragment too short for its ports (fail closed: a
/// port rule could cover the reassembled packet).
#[test]
fn tiny_first_fragment_is_dropped_inside() {
    if !root_or_skip("tiny_first_fragment_is_dropped_inside") {
        return;
    }
    let mut h = Harness::new(
        vec![policy(
            selector("10.1.0.0/16", "10.2.0.0/16", IPPROTO_UDP, None, Some(5555)),
            1,
            "protect",
        )],
        true,
    );
    assert_eq!(
        h.run(&tiny_first_fragment("10.1.0.1", "10.2.0.2")),
        (XDP_DROP, None)
    );
    assert_eq!(h.count(Counter::DropUnparsed), 1);
}

/// What the outside program must do with a packet when no SA of ours takes it, from the
/// library: `plaintext_check` (the in/fwd policies on clear text, in the direction the
/// route gives), then one-armed the out table as `XfrmDb::policy_lookup` finds it.
fn clear_text_expected(
    db: &XfrmDb,
    tables: &InputTables,
    flow: &FlowKey,
    non_first: bool,
    one_armed: bool,
) -> (u32, Option<u32>, Option<XfrmStat>) {
    if let Err(stat) = plaintext_check(db, tables, flow, non_first, input_route(flow.dst)) {
        return (XDP_DROP, None, Some(stat));
    }
    if !one_armed {
        return (XDP_PASS, None, None);
    }
    match db.policy_lookup(PolicyDir::Out, flow) {
        None => (XDP_PASS, None, None),
        Some(p) => match p.action {
            PolicyAction::Block => (XDP_DROP, None, None),
            PolicyAction::Allow if p.templates.is_empty() => (XDP_PASS, None, None),
            PolicyAction::Allow => (XDP_REDIRECT, Some(p.index), None),
        },
    }
}

#[test]
fn randomized_in_fwd_check_agrees_with_library() {
    if !root_or_skip("randomized_in_fwd_check_agrees_with_library") {
        return;
    }
    let seed = test_seed(0x5846_0006);
    in_route_ns(|ifindex| {
        let mut rng = StdRng::seed_from_u64(seed);
        let protos = [
            0u8,
            IPPROTO_UDP,
            IPPROTO_TCP,
            IPPROTO_ICMP,
            IPPROTO_ICMPV6,
            IPPROTO_SCTP,
            IPPROTO_GRE,
            IPPROTO_ESP,
        ];
        let mut checked = 0;
        let mut refused = [0u64; 2];
        let mut by_route = [0u64; 3];
        for round in 0..8 {
            let n = [1usize, 4, 5, 16, 64, 200, 300, 1024][round];
            let one_armed = round % 2 == 1;
            let policies: Vec<Policy> = (0..n)
                .map(|_| {
                    let v6 = rng.gen_bool(0.5);
                    let sel = Selector {
                        src: prefix(&random_prefix(&mut rng, v6)),
                        dst: prefix(&random_prefix(&mut rng, v6)),
                        proto: protos[rng.gen_range(0..protos.len())],
                        sport: PortMatch::ANY,
                        dport: if rng.gen_bool(0.3) {
                            PortMatch {
                                port: rng.gen_range(0..4),
                                mask: [0xffff, 0xfffe, 0xff00][rng.gen_range(0..3)],
                            }
                        } else {
                            PortMatch::ANY
                        },
                    };
                    let dir = [PolicyDir::In, PolicyDir::Fwd, PolicyDir::Out][rng.gen_range(0..3)];
                    let what =
                        ["protect", "optional", "mixed", "bypass", "block"][rng.gen_range(0..5)];
                    dir_policy(dir, sel, rng.gen_range(0..4), what)
                })
                .collect();
            let mut policies = numbered(policies);
            loop {
                match XfrmDb::new(vec![natt_sa()], policies.clone()) {
                    Ok(_) => break,
                    Err(DbError::DuplicatePolicy(i)) => {
                        policies.remove(i);
                    }
                    Err(e) => panic!("policy database: {e}"),
                }
            }
            let mut h = Outside::new(vec![natt_sa()], policies, true);
            h.ifindex = ifindex;
            h.dp.set_one_armed(one_armed).unwrap();
            let tables = InputTables::new(&h.db);
            let mut want_refused = [0u64; 2];
            for _ in 0..300 {
                let v6 = rng.gen_bool(0.5);
                let proto = random_proto(&mut rng, &protos, v6);
                let src = random_addr(&mut rng, v6);
                // A local destination more often than the address space alone would give.
                let dst = if rng.gen_bool(0.25) {
                    ip(LOCAL[2 * usize::from(v6) + rng.gen_range(0..2)])
                } else {
                    random_addr(&mut rng, v6)
                };
                let mut spec = random_spec(&mut rng, src, dst, proto);
                match proto {
                    IPPROTO_ICMPV6 => spec.sport = [128, 129, 1][rng.gen_range(0..3)],
                    IPPROTO_GRE => (spec.sport, spec.dport) = (0, 0),
                    IPPROTO_ESP => {
                        (spec.sport, spec.dport) = (0, 0);
                        spec.payload = esp_payload(rng.gen_range(1..16));
                    }
                    // IKE's ports and the configured NAT-T port now and then.
                    IPPROTO_UDP if rng.gen_bool(0.3) => {
                        spec.dport = [500, 4500, 4501][rng.gen_range(0..3)];
                    }
                    _ => {}
                }
                let non_first = rng.gen_bool(0.1);
                if non_first {
                    spec.frag_offset = 100;
                    if v6 {
                        spec.v6_ext = vec![44];
                    }
                }
                // flowi of a non-first fragment: no ports.
                let (sport, dport) = if non_first {
                    (0, 0)
                } else {
                    (spec.sport, spec.dport)
                };
                let flow = FlowKey {
                    src,
                    dst,
                    proto,
                    sport,
                    dport,
                };
                let (want, want_policy, stat) =
                    clear_text_expected(&h.db, &tables, &flow, non_first, one_armed);
                match stat {
                    Some(XfrmStat::XfrmInTmplMismatch) => want_refused[0] += 1,
                    Some(_) => want_refused[1] += 1,
                    None => {}
                }
                by_route[input_route(dst) as usize] += 1;
                let (act, meta) = h.run(&spec.build());
                let got_policy =
                    meta.map(|m| h.db.policies(PolicyDir::Out)[m.policy_id as usize].index);
                assert_eq!(
                    (act, got_policy),
                    (want, want_policy),
                    "seed {seed} round {round} ({n} policies, one-armed {one_armed}) \
                     {flow:?} non-first fragment {non_first} route {:?}",
                    input_route(dst)
                );
                checked += 1;
            }
            let c = h.dp.outside_counters().unwrap();
            assert_eq!(
                [
                    c.get(Counter::DropInTmplMismatch),
                    c.get(Counter::DropInPolBlock)
                ],
                want_refused,
                "seed {seed} round {round}: drop counters"
            );
            refused[0] += want_refused[0];
            refused[1] += want_refused[1];
        }
        // Not a test of empty verdicts: both drop reasons, all three routes.
        assert!(refused.iter().all(|&r| r > 20), "refused {refused:?}");
        assert!(by_route.iter().all(|&r| r > 20), "by route {by_route:?}");
        println!(
            "{checked} packets agreed with plaintext_check (refused: {} tmpl mismatch, {} \
             block; local/forward/unroutable {by_route:?})",
            refused[0], refused[1]
        );
    });
}

/// A NAT-T SA whose encap port (4501) the outside program then knows; addressed outside the
/// randomized space, so no random packet is its.
fn natt_sa() -> xfrm_user::sa::SaConfig {
    sa::esp_in_udp(0x4243, ip("10.9.0.1"), ip("10.200.0.2"), 4501, true)
}

fn ip4(s: &str) -> std::net::Ipv4Addr {
    s.parse().unwrap()
}
