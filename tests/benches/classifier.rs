//! What the XDP classifier costs per packet, measured by the kernel: BPF_PROG_TEST_RUN with
//! `repeat`, whose duration is the program's run time averaged over the repetitions (no
//! driver, no redirect performed). The peer figure is `xfrm_pass`, a program that returns
//! XDP_PASS and nothing else, measured in the same run; the ratio is classifier / peer.
//!
//! `cargo xtask bench --classifier` (root: BPF_PROG_TEST_RUN needs CAP_BPF + CAP_NET_ADMIN).
//! A figure, not a test: nothing here asserts a time.

use std::{net::IpAddr, os::fd::AsRawFd, time::Duration};

use xfrm_common::MAX_SAS;
use xfrm_tests::{
    bpf_object,
    packet::{FrameSpec, IPPROTO_TCP, IPPROTO_UDP},
    sa,
    topology::Topology,
};
use xfrm_user::{
    datapath::{
        loader::{Program, XDP_PASS, XDP_REDIRECT},
        rules::compile_db,
        Datapath,
    },
    policy::{Policy, PolicyAction, PolicyDir, Template, TmplLevel},
    sa::{XfrmMode, XfrmProto},
    selector::{PortMatch, Prefix, Selector},
    xfrm::XfrmDb,
};

const IPPROTO_ESP: u8 = 50;

/// Each figure is the median of this many kernel measurements.
const SAMPLES: usize = 5;
/// Aim for this much kernel time per measurement.
const TARGET: Duration = Duration::from_millis(60);

fn prefix(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix {
        addr: a.parse().unwrap(),
        len: l.parse().unwrap(),
    }
}

fn policy(src: &str, dst: &str, dport: Option<u16>, protect: bool, index: u32) -> Policy {
    Policy {
        selector: Selector {
            src: prefix(src),
            dst: prefix(dst),
            proto: IPPROTO_UDP,
            sport: PortMatch::ANY,
            dport: dport.map_or(PortMatch::ANY, PortMatch::exact),
        },
        dir: PolicyDir::Out,
        priority: 100,
        action: PolicyAction::Allow,
        templates: if protect {
            vec![Template {
                src: None,
                dst: "10.255.0.2".parse().unwrap(),
                proto: XfrmProto::Esp,
                spi: None,
                reqid: 1,
                mode: XfrmMode::Tunnel,
                level: TmplLevel::Required,
            }]
        } else {
            vec![]
        },
        index,
    }
}

/// `n` site-to-site policies, one remote /24 each: 10.1.0.0/16 -> 10.(128+i/256).(i%256).0/24.
fn distinct(n: usize, protect: bool) -> Vec<Policy> {
    (0..n)
        .map(|i| {
            let dst = format!("10.{}.{}.0/24", 128 + i / 256, i % 256);
            policy("10.1.0.0/16", &dst, None, protect, i as u32)
        })
        .collect()
}

/// `n` policies that differ only in the UDP destination port (1000 + i): every one is a
/// candidate for every packet between the two subnets, the worst case of any prefix index.
fn same_prefixes(n: usize) -> Vec<Policy> {
    (0..n)
        .map(|i| {
            policy(
                "10.1.0.0/16",
                "10.2.0.0/16",
                Some(1000 + i as u16),
                false,
                i as u32,
            )
        })
        .collect()
}

/// `n` policies whose destination port selector has a partial mask (port 2i, mask 0xfffe:
/// ports 2i and 2i + 1). The index only knows exact ports, so every rule is a candidate for
/// every packet: the worst case of the index, a scan in bpf_loop steps.
fn partial_masks(n: usize) -> Vec<Policy> {
    (0..n)
        .map(|i| {
            let mut p = policy("10.1.0.0/16", "10.2.0.0/16", None, false, i as u32);
            p.selector.dport = PortMatch {
                port: 2 * i as u16,
                mask: 0xfffe,
            };
            p
        })
        .collect()
}

fn udp(dst: &str, dport: u16) -> Vec<u8> {
    FrameSpec::new("10.1.0.1", dst, IPPROTO_UDP, 40000, dport).build()
}

/// ESP from the peer to `dst`: SPI, sequence number, 64 bytes of ciphertext and ICV.
fn esp_frame(dst: IpAddr, spi: u32) -> Vec<u8> {
    let mut f = FrameSpec::new("10.201.0.1", "10.200.0.1", IPPROTO_ESP, 0, 0);
    f.dst = dst;
    f.payload = spi.to_be_bytes().to_vec();
    f.payload.extend(1u32.to_be_bytes());
    f.payload.extend([0xa5; 64]);
    f.build()
}

/// UDP from the peer's port 4500 to `dst`:`dport`, payload `head` + 64 bytes.
fn udp_frame(dst: IpAddr, dport: u16, head: &[u8]) -> Vec<u8> {
    let mut f = FrameSpec::new("10.201.0.1", "10.200.0.1", IPPROTO_UDP, 4500, dport);
    f.dst = dst;
    f.payload = head.to_vec();
    f.payload.extend(1u32.to_be_bytes());
    f.payload.extend([0xa5; 64]);
    f.build()
}

/// The median ns per run of `prog` on `packet`, with the action it returned.
fn measure(dp: &mut Datapath, prog: Program, packet: &[u8]) -> (f64, u32) {
    measure_on(dp, prog, packet, 0)
}

/// [`measure`] with the packet arriving on interface `ifindex` (of the calling thread's
/// namespace; 0 = loopback).
fn measure_on(dp: &mut Datapath, prog: Program, packet: &[u8], ifindex: u32) -> (f64, u32) {
    // Calibrate: how many runs fill TARGET.
    let probe = dp
        .test_run_on(prog, packet, 2000, ifindex)
        .expect("test run");
    let per = probe.ns_per_run.max(1);
    let repeat = (TARGET.as_nanos() as u64 / per).clamp(1000, 5_000_000) as u32;
    let mut v: Vec<u64> = (0..SAMPLES)
        .map(|_| {
            dp.test_run_on(prog, packet, repeat, ifindex)
                .expect("test run")
                .ns_per_run
        })
        .collect();
    v.sort_unstable();
    (v[SAMPLES / 2] as f64, probe.action)
}

struct Row {
    what: String,
    ns: f64,
    action: u32,
}

fn action_name(a: u32) -> &'static str {
    match a {
        XDP_PASS => "PASS",
        XDP_REDIRECT => "REDIRECT",
        1 => "DROP",
        _ => "other",
    }
}

fn install(dp: &mut Datapath, policies: Vec<Policy>) -> XfrmDb {
    let db = XfrmDb::new(vec![], policies).expect("policy database");
    dp.set_out_policies(&compile_db(&db).expect("compile"))
        .expect("install the table");
    db
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would run us too: only measure
    // when asked to.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    if !xfrm_tests::root_or_skip("classifier bench") {
        return;
    }
    let mut dp = Datapath::load(&bpf_object()).expect("load the XDP object");
    // A socket for queue 0 so that protect matches redirect (the redirect itself is not
    // performed by BPF_PROG_TEST_RUN).
    let sock = xfrm_tests::sock::socket(libc::AF_XDP, libc::SOCK_RAW, 0).expect("AF_XDP socket");
    dp.set_socket(0, sock.as_raw_fd()).expect("XSKS[0]");

    let mut rows = Vec::new();
    let pkt = udp("10.2.0.1", 5000);
    let (peer, _) = measure(&mut dp, Program::Pass, &pkt);
    rows.push(Row {
        what: "xfrm_pass (peer: returns XDP_PASS)".into(),
        ns: peer,
        action: XDP_PASS,
    });

    install(&mut dp, vec![]);
    let (ns, action) = measure(&mut dp, Program::Inside, &pkt);
    rows.push(Row {
        what: "inside, empty table".into(),
        ns,
        action,
    });

    for n in [1usize, 4, 5, 64, 1024] {
        // Distinct remote subnets: the packet matches the last rule of the table, or none.
        install(&mut dp, distinct(n, false));
        let last = format!("10.{}.{}.9", 128 + (n - 1) / 256, (n - 1) % 256);
        for (what, p) in [
            ("match last", udp(&last, 5000)),
            ("miss", udp("10.99.0.1", 5000)),
        ] {
            let (ns, action) = measure(&mut dp, Program::Inside, &p);
            rows.push(Row {
                what: format!("inside, {n:>4} distinct /24s, {what}"),
                ns,
                action,
            });
        }
        // Same prefixes, ports differ: every rule is a candidate.
        install(&mut dp, same_prefixes(n));
        for (what, p) in [
            ("match last", udp("10.2.0.1", 1000 + n as u16 - 1)),
            ("miss", udp("10.2.0.1", 9)),
        ] {
            let (ns, action) = measure(&mut dp, Program::Inside, &p);
            rows.push(Row {
                what: format!("inside, {n:>4} same-prefix rules, {what}"),
                ns,
                action,
            });
        }
    }
    // The index's worst case: every rule a candidate.
    for n in [64usize, 1024] {
        install(&mut dp, partial_masks(n));
        for (what, p) in [
            ("match last", udp("10.2.0.1", 2 * n as u16 - 1)),
            ("miss", udp("10.2.0.1", 60000)),
        ] {
            let (ns, action) = measure(&mut dp, Program::Inside, &p);
            rows.push(Row {
                what: format!("inside, {n:>4} partial-mask rules (all candidates), {what}"),
                ns,
                action,
            });
        }
    }

    // The protect path to the end: metadata written, redirect to the queue's socket.
    install(&mut dp, distinct(1024, true));
    let (ns, action) = measure(&mut dp, Program::Inside, &udp("10.131.255.9", 5000));
    rows.push(Row {
        what: "inside, 1024 distinct /24s, protect last -> redirect".into(),
        ns,
        action,
    });

    // The outside program with 64k SAs (half ESP, a quarter AH, a quarter ESP in UDP 4500),
    // to 16 local addresses.
    let local = |i: u32| IpAddr::from([10, 200, 0, 1 + (i % 16) as u8]);
    let remote = IpAddr::from([10, 201, 0, 1]);
    let states: Vec<_> = (0..MAX_SAS)
        .map(|i| {
            let spi = 0x1000 + i;
            match i % 4 {
                0 | 1 => sa::esp(spi, remote, local(i)),
                2 => sa::ah(spi, remote, local(i)),
                _ => sa::esp_in_udp(spi, remote, local(i), 4500, false),
            }
        })
        .collect();
    let db = XfrmDb::new(states, vec![]).expect("SA database");
    dp.install(&db).expect("install 64k SAs");
    dp.set_outside_socket(0, sock.as_raw_fd())
        .expect("XSKS_OUT[0]");
    let nat_t = MAX_SAS - 1; // i % 4 == 3: ESP in UDP
    let esp = MAX_SAS - 3; // i % 4 == 1: ESP
    let cases: [(&str, Vec<u8>); 6] = [
        (
            "ESP, known SPI -> redirect",
            esp_frame(local(esp), 0x1000 + esp),
        ),
        (
            "ESP in UDP 4500, known SPI -> redirect",
            udp_frame(local(nat_t), 4500, &(0x1000 + nat_t).to_be_bytes()),
        ),
        ("ESP, unknown SPI", esp_frame(local(0), 0x10_0000)),
        (
            "IKE on 4500 (zero marker)",
            udp_frame(local(0), 4500, &[0; 4]),
        ),
        (
            "UDP, not a NAT-T port",
            udp_frame(local(0), 53, &[1, 2, 3, 4]),
        ),
        (
            "TCP",
            FrameSpec::new("10.201.0.1", "10.200.0.1", IPPROTO_TCP, 40000, 22).build(),
        ),
    ];
    for (what, p) in cases {
        let (ns, action) = measure(&mut dp, Program::Outside, &p);
        rows.push(Row {
            what: format!("outside, 64k SAs, {what}"),
            ns,
            action,
        });
    }

    in_fwd_rows(&mut dp, &mut rows);

    println!();
    println!("XDP classifier, ns/packet (BPF_PROG_TEST_RUN, median of {SAMPLES}; kernel-measured)");
    println!("{:<62} {:>7} {:>7}  verdict", "case", "ns/pkt", "x peer");
    for r in &rows {
        println!(
            "{:<62} {:>7.0} {:>7.1}  {}",
            r.what,
            r.ns,
            r.ns / peer,
            action_name(r.action)
        );
    }
    println!();
    for (prog, insns) in dp.verifier_stats().expect("program info") {
        println!("verifier: {prog} took {insns} instructions of its 1000000 budget");
    }
    drop(sock);
}

/// The outside program's check of clear text against the in/fwd policies, `n` site-to-site
/// policies (remote /24 → 10.1.0.0/16, a required ESP template) per table. Measured in a
/// namespace of its own, as the tests do, so that the program's route lookup
/// (bpf_fib_lookup, when the in and fwd tables disagree) sees known routes: an interface d0
/// holding 10.1.0.1 (the gateway's address), a default route out of it, forwarding on.
fn in_fwd_rows(dp: &mut Datapath, rows: &mut Vec<Row>) {
    let mut topo = Topology::new().expect("topology");
    let i = topo.add_netns("bench").expect("namespace");
    let ns = topo.ns(i);
    for args in [
        &["link", "add", "d0", "type", "veth", "peer", "name", "d1"][..],
        &["link", "set", "d1", "up"],
        &["link", "set", "d0", "up"],
        &["addr", "add", "10.1.0.1/32", "dev", "d0"],
        &["route", "add", "default", "dev", "d0"],
    ] {
        ns.ip(args).expect("bench namespace");
    }
    ns.sysctl("net.ipv4.ip_forward", "1").expect("forwarding");
    let remote = |i: usize| format!("10.{}.{}", 128 + i / 256, i % 256);
    let table = |n: usize, dir: PolicyDir, first: u32| -> Vec<Policy> {
        (0..n)
            .map(|i| {
                let mut p = policy(
                    &format!("{}.0/24", remote(i)),
                    "10.1.0.0/16",
                    None,
                    true,
                    first + i as u32,
                );
                p.dir = dir;
                p.selector.proto = 0;
                p
            })
            .collect()
    };
    ns.run(|| {
        let name = std::ffi::CString::new("d0")?;
        // SAFETY: a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        anyhow::ensure!(ifindex != 0, "no d0");
        let tcp = |src: &str, dst: &str| FrameSpec::new(src, dst, IPPROTO_TCP, 40000, 22).build();
        for n in [1usize, 64, 1024] {
            let last = format!("{}.9", remote(n - 1));
            // The usual pair: in and fwd with the same selectors (they always agree).
            let mut both = table(n, PolicyDir::In, 0);
            both.extend(table(n, PolicyDir::Fwd, n as u32));
            dp.install(&XfrmDb::new(vec![], both).expect("database"))?;
            for (what, p) in [
                ("no policy covers it", tcp("10.99.0.1", "10.1.0.1")),
                ("in and fwd refuse it", tcp(&last, "10.1.0.1")),
            ] {
                let (ns, action) = measure_on(dp, Program::Outside, &p, ifindex);
                rows.push(Row {
                    what: format!("outside, {n:>4} in + {n:>4} fwd, clear, {what}"),
                    ns,
                    action,
                });
            }
            // fwd only: the tables disagree, the route decides.
            dp.install(&XfrmDb::new(vec![], table(n, PolicyDir::Fwd, 0)).expect("database"))?;
            for (what, p) in [
                ("to us -> route: in", tcp(&last, "10.1.0.1")),
                ("forwarded -> route: fwd", tcp(&last, "10.1.0.7")),
            ] {
                let (ns, action) = measure_on(dp, Program::Outside, &p, ifindex);
                rows.push(Row {
                    what: format!("outside, {n:>4} fwd only, {what}"),
                    ns,
                    action,
                });
            }
        }
        Ok(())
    })
    .expect("in/fwd rows");
}
