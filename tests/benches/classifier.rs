//! What the XDP classifier costs per packet, measured by the kernel: BPF_PROG_TEST_RUN with
//! `repeat`, whose duration is the program's run time averaged over the repetitions (no
//! driver, no redirect performed). The peer figure is `xfrm_pass`, a program that returns
//! XDP_PASS and nothing else, measured in the same run; the ratio is classifier / peer.
//!
//! `cargo xtask bench --classifier` (root: BPF_PROG_TEST_RUN needs CAP_BPF + CAP_NET_ADMIN).
//! A figure, not a test: nothing here asserts a time.

use std::{os::fd::AsRawFd, time::Duration};

use xfrm_tests::{
    bpf_object,
    packet::{FrameSpec, IPPROTO_UDP},
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

fn udp(dst: &str, dport: u16) -> Vec<u8> {
    FrameSpec::new("10.1.0.1", dst, IPPROTO_UDP, 40000, dport).build()
}

/// The median ns per run of `prog` on `packet`, with the action it returned.
fn measure(dp: &mut Datapath, prog: Program, packet: &[u8]) -> (f64, u32) {
    // Calibrate: how many runs fill TARGET.
    let probe = dp.test_run_prog(prog, packet, 2000).expect("test run");
    let per = probe.ns_per_run.max(1);
    let repeat = (TARGET.as_nanos() as u64 / per).clamp(1000, 5_000_000) as u32;
    let mut v: Vec<u64> = (0..SAMPLES)
        .map(|_| {
            dp.test_run_prog(prog, packet, repeat)
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
    // SAFETY: plain socket(2); checked.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket(AF_XDP)");
    // SAFETY: a fresh fd we own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
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

    for n in [1usize, 64, 1024] {
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
    if std::env::var_os("XFRM_BENCH_NO_PROTECT").is_none() {
        // The protect path to the end: metadata written, redirect to the queue's socket.
        install(&mut dp, distinct(1024, true));
        let (ns, action) = measure(&mut dp, Program::Inside, &udp("10.131.255.9", 5000));
        rows.push(Row {
            what: "inside, 1024 distinct /24s, protect last -> redirect".into(),
            ns,
            action,
        });
    }

    println!();
    println!("XDP classifier, ns/packet (BPF_PROG_TEST_RUN, median of {SAMPLES}; kernel-measured)");
    println!("{:<58} {:>9} {:>8}  verdict", "case", "ns/pkt", "x peer");
    for r in &rows {
        println!(
            "{:<58} {:>9.1} {:>8.2}  {}",
            r.what,
            r.ns,
            r.ns / peer,
            action_name(r.action)
        );
    }
    drop(sock);
}
