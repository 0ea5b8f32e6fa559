//! The AF_XDP worker between two veths, with the XDP classifier from xfrm-ebpf:
//!
//!   ns "h1" [a] ──veth 1 (mtu 1500)── [b] ns "gw" [a] ──veth 2 (mtu 1400)── [b] ns "h2"
//!
//! gw does not forward (ip_forward 0): whatever reaches h2 went through the worker. The
//! classifier on gw's veth 1 redirects h1 → h2 traffic to the worker's socket; the worker's
//! transform here is the identity plus the size check, so the test looks at the worker alone:
//! L2 from the neighbour cache, TX on the other interface, the ICMP errors back to h1 (and
//! h1's kernel learning the MTU from them), outer fragmentation without DF.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use xfrm_common::XdpMeta;
use xfrm_tests::{
    bpf_object, init_logging, root_or_skip, sock,
    topology::{Link, Topology, VethOpts},
};
use xfrm_user::{
    config::parse_config,
    datapath::{
        neigh::{NeighOptions, NeighService},
        rules::{compile_db, compile_sorted},
        worker::{
            port_info, too_big, Action, Ctx, Side, Transform, Worker, WorkerConfig, WorkerStats,
        },
        AttachMode, Datapath,
    },
    frame::{Frame, OwnedFrame},
    policy::{Policy, PolicyAction, PolicyDir, Template, TmplLevel},
    sa::{XfrmMode, XfrmProto},
    selector::{PortMatch, Prefix, Selector},
    stats::XfrmStats,
    xfrm::{
        pmtu::{bundle_mtu, SaMtu},
        xfrm_input, xfrm_output_bundle, InputTables, InputVerdict, Verdict, XfrmDb,
    },
};

fn prefix(s: &str) -> Prefix {
    let (a, l) = s.split_once('/').unwrap();
    Prefix {
        addr: a.parse().unwrap(),
        len: l.parse().unwrap(),
    }
}

fn protect(src: &str, dst: &str, index: u32) -> Policy {
    Policy {
        selector: Selector {
            src: prefix(src),
            dst: prefix(dst),
            proto: 0,
            sport: PortMatch::ANY,
            dport: PortMatch::ANY,
        },
        dir: PolicyDir::Out,
        priority: 10,
        action: PolicyAction::Allow,
        templates: vec![Template {
            src: None,
            dst: "10.2.0.2".parse().unwrap(),
            proto: XfrmProto::Esp,
            spi: Some(0x100),
            reqid: 1,
            mode: XfrmMode::Tunnel,
            level: TmplLevel::Required,
        }],
        index,
    }
}

/// Identity transform with the size check a real one makes (the bundle adds nothing here).
fn forward(from: Side, meta: Option<&XdpMeta>, frame: &mut Frame<'_>, ctx: &Ctx<'_>) -> Action {
    if from != Side::Inside || meta.is_none() {
        return Action::Drop;
    }
    let d = frame.data();
    let dst: IpAddr = match d.first().map(|b| b >> 4) {
        Some(4) if d.len() >= 20 => IpAddr::from([d[16], d[17], d[18], d[19]]),
        Some(6) if d.len() >= 40 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(&d[24..40]);
            IpAddr::from(a)
        }
        _ => return Action::Drop,
    };
    let Some(l2) = ctx.l2(dst) else {
        return Action::Drop;
    };
    if let Some(a) = too_big(frame, l2.mtu, ctx) {
        return a;
    }
    Action::Tx(Side::Outside)
}

fn recv_all(s: &UdpSocket, n: usize, wait: Duration) -> Vec<Vec<u8>> {
    let end = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < n && Instant::now() < end {
        if let Ok((k, _)) = s.recv_from(&mut buf) {
            got.push(buf[..k].to_vec());
        }
    }
    got
}

/// The three namespaces, addressed and routed (h2 also has 10.2.0.3).
struct Env {
    t: Topology,
    h1: usize,
    gw: usize,
    h2: usize,
    l1: Link,
    l2: Link,
}

fn env() -> Env {
    let mut t = Topology::new().unwrap();
    let h1 = t.add_netns("h1").unwrap();
    let gw = t.add_netns("gw").unwrap();
    let h2 = t.add_netns("h2").unwrap();
    // Full checksums from h1: the identity transform forwards packets as they are, and
    // AF_XDP loses CHECKSUM_PARTIAL.
    let l1 = t
        .add_veth(
            h1,
            gw,
            VethOpts {
                tx_checksum: false,
                ..VethOpts::default()
            },
        )
        .unwrap();
    let l2 = t
        .add_veth(
            gw,
            h2,
            VethOpts {
                mtu: 1400,
                tx_checksum: false,
                ..VethOpts::default()
            },
        )
        .unwrap();
    let (g1v4, g1v6) = (l1.b.ipv4.to_string(), l1.b.ipv6.to_string());
    t.ns(h1)
        .ip(&["route", "add", "10.2.0.0/24", "via", &g1v4])
        .unwrap();
    t.ns(h1)
        .ip(&["-6", "route", "add", "fd00:2::/64", "via", &g1v6])
        .unwrap();
    t.ns(h2)
        .ip(&["route", "add", "10.1.0.0/24", "via", &l2.a.ipv4.to_string()])
        .unwrap();
    t.ns(h2)
        .ip(&["addr", "add", "10.2.0.3/24", "dev", &l2.b.ifname])
        .unwrap();
    Env {
        t,
        h1,
        gw,
        h2,
        l1,
        l2,
    }
}

/// In gw: the neighbour cache (primed with the hosts), one worker per inside receive
/// queue with the transform `make()` gives, the classifier with `rules`; runs `exercise`
/// while the workers run, then stops them and returns their counters (printed).
fn run_gateway<T: Transform>(
    e: &Env,
    rules: &[xfrm_common::PolicyRule],
    make: impl Fn() -> T + Sync,
    exercise: impl FnOnce() + Send,
) -> Vec<Arc<WorkerStats>> {
    let (l1, l2) = (&e.l1, &e.l2);
    let topo = &e.t;
    topo.ns(e.gw)
        .run(|| {
            let addrs: Vec<IpAddr> = vec![
                l2.b.ipv4.into(),
                l2.b.ipv6.into(),
                l1.a.ipv4.into(),
                l1.a.ipv6.into(),
                IpAddr::from([10, 2, 0, 3]),
            ];
            let neigh = NeighService::start(&addrs, NeighOptions::default())?;
            for a in &addrs {
                assert!(
                    neigh.wait_resolved(*a, Duration::from_secs(5)).is_some(),
                    "{a} resolves"
                );
            }
            let inside = port_info(&l1.b.ifname)?;
            let outside = port_info(&l2.a.ifname)?;
            // One worker per receive queue in use (veth: 1 unless `ethtool -L` raised it); a
            // flow on a queue without a socket would be dropped (fail closed).
            let queues = rx_queues(topo, e.gw, &l1.b.ifname);
            let mut dp = Datapath::load(&bpf_object())?;
            dp.set_out_policies(rules)?;
            let mut workers = Vec::new();
            for q in 0..queues {
                let mut cfg = WorkerConfig::new(inside.clone(), outside.clone(), q);
                cfg.frames = 2048;
                cfg.ring_size = 512;
                let w = Worker::new(cfg, make(), neigh.reader())?;
                dp.set_socket(q, w.rx_fds()[0])?;
                workers.push(w);
            }
            let stats: Vec<_> = workers.iter().map(|w| w.stats()).collect();
            dp.attach_classifier(&l1.b.ifname, AttachMode::Native)?;
            let stop = AtomicBool::new(false);
            std::thread::scope(|s| {
                let handles: Vec<_> = workers
                    .iter_mut()
                    .map(|w| {
                        let stop = &stop;
                        s.spawn(move || w.run(stop))
                    })
                    .collect();
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(exercise));
                stop.store(true, Ordering::Relaxed);
                for h in handles {
                    h.join().unwrap().unwrap();
                }
                let sum = |f: &dyn Fn(&WorkerStats) -> &AtomicU64| -> u64 {
                    stats.iter().map(|st| f(st).load(Ordering::Relaxed)).sum()
                };
                eprintln!(
                    "{queues} workers: rx inside {} tx outside {} tx inside {} replies {} \
                     fragments {} no_l2 {} dropped {} too_big {}",
                    sum(&|s| &s.rx[0]),
                    sum(&|s| &s.tx[1]),
                    sum(&|s| &s.tx[0]),
                    sum(&|s| &s.replies),
                    sum(&|s| &s.fragments),
                    sum(&|s| &s.no_l2),
                    sum(&|s| &s.dropped),
                    sum(&|s| &s.too_big),
                );
                if let Err(p) = r {
                    eprintln!(
                        "classifier: {:?}",
                        dp.counters().map(|c| c.iter().collect::<Vec<_>>())
                    );
                    std::panic::resume_unwind(p);
                }
            });
            drop(dp);
            Ok(stats)
        })
        .unwrap()
}

fn udp_in(t: &Topology, ns: usize, at: SocketAddr) -> UdpSocket {
    t.ns(ns)
        .run(|| {
            let s = UdpSocket::bind(at)?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            Ok(s)
        })
        .unwrap()
}

fn total(stats: &[Arc<WorkerStats>], f: impl Fn(&WorkerStats) -> &AtomicU64) -> u64 {
    stats.iter().map(|s| f(s).load(Ordering::Relaxed)).sum()
}

#[test]
fn worker_moves_frames_between_veths() {
    if !root_or_skip("worker_moves_frames_between_veths") {
        return;
    }
    init_logging();
    let e = env();
    let (h2v4, h2v6) = (e.l2.b.ipv4, e.l2.b.ipv6);
    let mut policies = vec![
        protect("10.1.0.0/24", "10.2.0.0/24", 0),
        protect("fd00:1::/64", "fd00:2::/64", 1),
    ];
    policies[1].templates[0].dst = IpAddr::V6(h2v6);
    let rules = compile_sorted(&policies).unwrap();
    let h2_sock = udp_in(&e.t, e.h2, "0.0.0.0:5000".parse().unwrap());
    let h2_sock6 = udp_in(&e.t, e.h2, SocketAddr::new(h2v6.into(), 5000));
    let stats = run_gateway(
        &e,
        &rules,
        || forward,
        || exercise(&e.t, e.h1, h2_sock, &h2_sock6, (h2v4, h2v6)),
    );
    assert_eq!(
        total(&stats, |s| &s.rx[0]),
        45,
        "every frame the classifier redirected"
    );
    assert!(total(&stats, |s| &s.replies) >= 2, "two ICMP errors sent");
    assert!(total(&stats, |s| &s.fragments) >= 1, "outer fragments sent");
}

fn exercise(
    t: &Topology,
    h1: usize,
    h2_sock: UdpSocket,
    h2_sock6: &UdpSocket,
    (h2v4, h2v6): (std::net::Ipv4Addr, std::net::Ipv6Addr),
) {
    // 1. Small datagrams, both families: all arrive at h2, through the worker.
    let (s4, s6) = t
        .ns(h1)
        .run(|| Ok((UdpSocket::bind("0.0.0.0:0")?, UdpSocket::bind("[::]:0")?)))
        .unwrap();
    for i in 0..20u32 {
        s4.send_to(
            format!("v4 {i}").as_bytes(),
            SocketAddr::new(h2v4.into(), 5000),
        )
        .unwrap();
        s6.send_to(
            format!("v6 {i}").as_bytes(),
            SocketAddr::new(h2v6.into(), 5000),
        )
        .unwrap();
    }
    let got = recv_all(&h2_sock, 20, Duration::from_secs(3));
    let want: Vec<Vec<u8>> = (0..20).map(|i| format!("v4 {i}").into_bytes()).collect();
    assert_eq!(got, want, "IPv4 datagrams through the worker");
    let got = recv_all(h2_sock6, 20, Duration::from_secs(3));
    let want: Vec<Vec<u8>> = (0..20).map(|i| format!("v6 {i}").into_bytes()).collect();
    assert_eq!(got, want, "IPv6 datagrams through the worker");

    // 2. IPv4 with DF over the 1400-byte link: fragmentation needed back to h1, whose kernel
    //    then knows the path MTU.
    sock::setsockopt_int(
        &s4,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DO,
    )
    .unwrap();
    s4.send_to(&[0x55; 1422], SocketAddr::new(h2v4.into(), 5000))
        .unwrap();
    let learned = wait_route_mtu(t, h1, &h2v4.to_string(), 1400);
    assert!(
        learned,
        "h1 learned mtu 1400 from our ICMP fragmentation needed"
    );
    assert!(recv_all(&h2_sock, 1, Duration::from_millis(300)).is_empty());

    // 3. IPv6 over the link: packet too big back to h1.
    s6.send_to(&[0x66; 1402], SocketAddr::new(h2v6.into(), 5000))
        .unwrap();
    let learned = wait_route_mtu(t, h1, &h2v6.to_string(), 1400);
    assert!(
        learned,
        "h1 learned mtu 1400 from our ICMPv6 packet too big"
    );

    // 4. IPv4 without DF, 3000 bytes: h1 fragments it for its 1500-byte link, the worker
    //    fragments those pieces again for the 1400-byte link, h2 reassembles.
    let s4b = t
        .ns(h1)
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            sock::setsockopt_int(
                &s,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            )
            .unwrap();
            Ok(s)
        })
        .unwrap();
    // (To 10.2.0.3, h2's second address: for 10.2.0.2 h1 now knows MTU 1400 and would
    // fragment for it itself.)
    let big: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 1) as u8).collect();
    s4b.send_to(&big, SocketAddr::new(IpAddr::from([10, 2, 0, 3]), 5000))
        .unwrap();
    let got = recv_all(&h2_sock, 1, Duration::from_secs(3));
    assert_eq!(got.len(), 1, "the 3000-byte datagram reassembled at h2");
    assert_eq!(got[0], big);
}

/// `ip route get DST` in namespace `ns` shows `mtu WANT` (a learned PMTU) within 3 s.
fn wait_route_mtu(t: &Topology, ns: usize, dst: &str, want: u32) -> bool {
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        let out = t.ns(ns).ip(&["route", "get", dst]).unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        if s.contains(&format!("mtu {want}")) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = t.ns(ns).ip(&["route", "get", dst]).unwrap();
    eprintln!("route get {dst}: {}", String::from_utf8_lossy(&out.stdout));
    false
}

/// The receive queues of `ifname` in use (`ethtool -l`: current RX), in namespace `ns`.
fn rx_queues(t: &Topology, ns: usize, ifname: &str) -> u32 {
    let out = t.ns(ns).exec("ethtool", &["-l", ifname]).unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    let current = s
        .split("Current hardware settings:")
        .nth(1)
        .expect("ethtool -l");
    current
        .lines()
        .find_map(|l| l.strip_prefix("RX:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("current RX channels")
}

const ESP_CONFIG: &str = "\
ip xfrm state add src 10.2.0.1 dst 10.2.0.2 proto esp spi 0x1234 reqid 7 mode tunnel \
aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f10cafebabe 128
ip xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir out \
tmpl src 10.2.0.1 dst 10.2.0.2 proto esp reqid 7 mode tunnel
ip xfrm policy add src 10.1.0.0/24 dst 10.2.0.0/24 dir in \
tmpl src 10.2.0.1 dst 10.2.0.2 proto esp reqid 7 mode tunnel
";

/// A raw IPPROTO_ESP socket in namespace `ns`: every ESP packet h2 receives (IP header
/// included).
fn esp_socket(t: &Topology, ns: usize) -> OwnedFd {
    t.ns(ns)
        .run(|| {
            let fd = sock::esp_socket(false, 0)?;
            // Room for a few hundred packets read after the fact (root may force it).
            sock::setsockopt_int(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 8 << 20)?;
            sock::set_recv_timeout(&fd, Duration::from_millis(200))?;
            Ok(fd)
        })
        .unwrap()
}

fn recv_esp(fd: &OwnedFd, n: usize, wait: Duration) -> Vec<Vec<u8>> {
    let end = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while got.len() < n && Instant::now() < end {
        // SAFETY: valid fd, writes at most buf.len() bytes.
        let k = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if k > 0 {
            got.push(buf[..k as usize].to_vec());
        }
    }
    got
}

/// The worker's transform for these tests: xfrm_output_bundle on the SA of the policy the
/// classifier's metadata names; with `size_check`, first the size check against what the SA leaves of
/// the route MTU (ICMP back when too big).
fn esp_output(
    db: Arc<XfrmDb>,
    xstats: Arc<XfrmStats>,
    size_check: bool,
) -> impl FnMut(Side, Option<&XdpMeta>, &mut Frame<'_>, &Ctx<'_>) -> Action + Send {
    move |from: Side, meta: Option<&XdpMeta>, frame: &mut Frame<'_>, ctx: &Ctx<'_>| {
        let (Side::Inside, Some(m)) = (from, meta) else {
            return Action::Drop;
        };
        // The SA as the output path finds it: the policy's first template, for this flow.
        let Ok(info) = xfrm_user::wire::flow::parse(frame.data()) else {
            return Action::Drop;
        };
        let Some(t) = db
            .policy_by_id(m.policy_id)
            .and_then(|p| p.templates.first())
        else {
            return Action::Drop;
        };
        let Some(x) = db.state_find(t, &info.key) else {
            return Action::Drop;
        };
        if size_check {
            let Some(l2) = ctx.l2(x.daddr()) else {
                return Action::Drop;
            };
            if let Some(a) = too_big(frame, bundle_mtu(&[x.overhead()], l2.mtu), ctx) {
                return a;
            }
        }
        match xfrm_output_bundle(&[&**x], &xstats, frame, false, db.now()) {
            Verdict::Transformed => Action::Tx(Side::Outside),
            _ => Action::Drop,
        }
    }
}

/// The real output path in the worker: xfrm_output_bundle on the SA of the policy the
/// classifier's metadata names, after the size check against the bundle's MTU.
#[test]
fn worker_runs_esp_output_in_place() {
    if !root_or_skip("worker_runs_esp_output_in_place") {
        return;
    }
    init_logging();
    let e = env();
    let cfg = parse_config(ESP_CONFIG, "esp.conf").unwrap();
    let sa_mtu = SaMtu::from_sa(&cfg.states[0]);
    let out_db = Arc::new(XfrmDb::new(cfg.states.clone(), cfg.policies.clone()).unwrap());
    let in_db = XfrmDb::new(cfg.states.clone(), cfg.policies.clone()).unwrap();
    let rules = compile_db(&out_db).unwrap();
    let xstats = Arc::new(XfrmStats::new());

    let make = || esp_output(out_db.clone(), xstats.clone(), true);

    let esp = esp_socket(&e.t, e.h2);
    let h2v4 = e.l2.b.ipv4;
    let stats = run_gateway(&e, &rules, make, || {
        let s4 =
            e.t.ns(e.h1)
                .run(|| Ok(UdpSocket::bind("0.0.0.0:4000")?))
                .unwrap();
        for i in 0..20u32 {
            s4.send_to(
                format!("esp {i}").as_bytes(),
                SocketAddr::new(h2v4.into(), 5000),
            )
            .unwrap();
        }
        let got = recv_esp(&esp, 20, Duration::from_secs(3));
        assert_eq!(got.len(), 20, "20 ESP packets at h2");
        let tables = InputTables::new(&in_db);
        let in_stats = XfrmStats::new();
        for (i, p) in got.iter().enumerate() {
            // Outer header: gw -> h2, ESP, SPI 0x1234, sequence numbers 1, 2, 3… in order.
            assert_eq!(&p[12..20], &[10, 2, 0, 1, 10, 2, 0, 2]);
            assert_eq!(p[9], 50);
            let ihl = usize::from(p[0] & 0x0f) * 4;
            assert_eq!(&p[ihl..ihl + 4], &0x1234u32.to_be_bytes());
            let seq = u32::from_be_bytes(p[ihl + 4..ihl + 8].try_into().unwrap());
            assert_eq!(seq, i as u32 + 1, "sequence numbers in order");
            // Our own input path opens it: the ICV verifies and the inner datagram is h1's.
            let mut f = OwnedFrame::from_packet(p);
            let v = f.with_frame(|fr| xfrm_input(&in_db, &tables, &in_stats, fr));
            assert_eq!(
                v,
                InputVerdict::Decapsulated,
                "packet {i}: {}",
                in_stats.render_nonzero()
            );
            let inner = f.data();
            assert_eq!(&inner[12..20], &[10, 1, 0, 1, 10, 2, 0, 2]);
            assert_eq!(&inner[28..], format!("esp {i}").as_bytes());
        }

        // DF over what the bundle leaves of the 1400-byte link: h1 is told that MTU.
        let want = sa_mtu.state_mtu(1400);
        sock::setsockopt_int(
            &s4,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
        .unwrap();
        s4.send_to(&[0x77; 1372], SocketAddr::new(h2v4.into(), 5000))
            .unwrap();
        assert!(
            wait_route_mtu(&e.t, e.h1, &h2v4.to_string(), want),
            "h1 learned the bundle MTU {want}"
        );
        // A datagram of exactly that size fits after ESP: one packet, within the link MTU.
        s4.send_to(
            &vec![0x78; want as usize - 28],
            SocketAddr::new(h2v4.into(), 5000),
        )
        .unwrap();
        let got = recv_esp(&esp, 1, Duration::from_secs(3));
        assert_eq!(got.len(), 1, "the largest datagram that fits went through");
        assert!(
            got[0].len() <= 1400 && got[0].len() > 1400 - 4,
            "{} bytes",
            got[0].len()
        );
    });
    assert_eq!(total(&stats, |s| &s.replies), 1);
    assert_eq!(total(&stats, |s| &s.tx[1]), 21);
}

/// Two receive queues, two workers, one SA: flows from h1 spread over both queues (veth maps
/// h1's TX queue i to gw's RX queue i), both workers encrypt with the same SA. At h2 every
/// sequence number is unique, none is missing, and our input path accepts every packet in
/// arrival order with a replay window of 2 × workers × batch (256): a worker transmits its
/// batch in the iteration that numbered it, so the other worker gets ahead by at most its
/// own batches meanwhile (twice that as margin for a thread preempted mid-batch).
#[test]
fn two_workers_share_one_sa() {
    if !root_or_skip("two_workers_share_one_sa") {
        return;
    }
    init_logging();
    let e = env();
    // gw's inside RX queues first (native XDP wants rx >= the peer's tx), then h1's TX.
    e.t.ns(e.gw)
        .exec("ethtool", &["-L", &e.l1.b.ifname, "rx", "2"])
        .unwrap();
    e.t.ns(e.h1)
        .exec("ethtool", &["-L", &e.l1.a.ifname, "tx", "2"])
        .unwrap();
    // Worker q also binds the outside interface's queue q.
    e.t.ns(e.gw)
        .exec("ethtool", &["-L", &e.l2.a.ifname, "rx", "2", "tx", "2"])
        .unwrap();
    let conf = ESP_CONFIG.replace(
        "reqid 7 mode tunnel aead",
        "reqid 7 mode tunnel replay-window 256 aead",
    );
    let cfg = parse_config(&conf, "esp.conf").unwrap();
    let out_db = Arc::new(XfrmDb::new(cfg.states.clone(), cfg.policies.clone()).unwrap());
    let in_db = XfrmDb::new(cfg.states.clone(), cfg.policies.clone()).unwrap();
    let rules = compile_db(&out_db).unwrap();
    let xstats = Arc::new(XfrmStats::new());
    let make = || esp_output(out_db.clone(), xstats.clone(), false);
    const FLOWS: u16 = 16;
    const PER_FLOW: usize = 25;
    let esp = esp_socket(&e.t, e.h2);
    let h2v4 = e.l2.b.ipv4;
    let mut got = Vec::new();
    let stats = run_gateway(&e, &rules, make, || {
        let socks: Vec<UdpSocket> = (0..FLOWS)
            .map(|i| {
                e.t.ns(e.h1)
                    .run(|| Ok(UdpSocket::bind(("10.1.0.1", 6000 + i))?))
                    .unwrap()
            })
            .collect();
        for k in 0..PER_FLOW {
            for (i, s) in socks.iter().enumerate() {
                s.send_to(
                    format!("{i}/{k}").as_bytes(),
                    SocketAddr::new(h2v4.into(), 5000),
                )
                .unwrap();
            }
        }
        got = recv_esp(&esp, FLOWS as usize * PER_FLOW, Duration::from_secs(5));
    });
    let n = FLOWS as usize * PER_FLOW;
    assert_eq!(stats.len(), 2, "one worker per queue");
    for (q, s) in stats.iter().enumerate() {
        assert!(
            s.tx[1].load(Ordering::Relaxed) > 0,
            "worker {q} encrypted some of the flows"
        );
    }
    assert_eq!(got.len(), n, "every datagram arrived as ESP");
    let mut seqs: Vec<u32> = got
        .iter()
        .map(|p| u32::from_be_bytes(p[24..28].try_into().unwrap()))
        .collect();
    // How far behind the highest number seen so far each packet arrives.
    let mut top = 0;
    let mut lag = 0;
    for &q in &seqs {
        top = top.max(q);
        lag = lag.max(top - q);
    }
    eprintln!("largest lag behind the highest sequence number: {lag}");
    let tables = InputTables::new(&in_db);
    let in_stats = XfrmStats::new();
    for p in &got {
        let mut f = OwnedFrame::from_packet(p);
        let v = f.with_frame(|fr| xfrm_input(&in_db, &tables, &in_stats, fr));
        assert_eq!(
            v,
            InputVerdict::Decapsulated,
            "{}",
            in_stats.render_nonzero()
        );
    }
    let reordered = seqs.windows(2).filter(|w| w[1] < w[0]).count();
    eprintln!(
        "two workers: {} + {} packets, {reordered} arrived after a higher sequence number",
        stats[0].tx[1].load(Ordering::Relaxed),
        stats[1].tx[1].load(Ordering::Relaxed)
    );
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=n as u32).collect::<Vec<_>>(), "unique, no gap");
}
