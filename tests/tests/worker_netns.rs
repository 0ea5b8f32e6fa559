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
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use xfrm_common::XdpMeta;
use xfrm_tests::{
    bpf_object, init_logging, root_or_skip,
    topology::{Topology, VethOpts},
};
use xfrm_user::{
    datapath::{
        neigh::{NeighOptions, NeighService},
        rules::compile_sorted,
        worker::{port_info, too_big, Action, Ctx, Side, Worker, WorkerConfig, WorkerStats},
        AttachMode, Datapath,
    },
    frame::Frame,
    policy::{Policy, PolicyAction, PolicyDir, Template, TmplLevel},
    sa::{XfrmMode, XfrmProto},
    selector::{PortMatch, Prefix, Selector},
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

fn set_int(s: &UdpSocket, level: i32, opt: i32, v: i32) {
    // SAFETY: a valid socket and an int option.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    assert_eq!(r, 0, "setsockopt {level}/{opt}");
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

#[test]
fn worker_moves_frames_between_veths() {
    if !root_or_skip("worker_moves_frames_between_veths") {
        return;
    }
    init_logging();
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
    let (h1v4, gw1v4, h2v4) = (l1.a.ipv4, l1.b.ipv4, l2.b.ipv4);
    let (h1v6, gw1v6, h2v6) = (l1.a.ipv6, l1.b.ipv6, l2.b.ipv6);
    t.ns(h1)
        .ip(&["route", "add", "10.2.0.0/24", "via", &gw1v4.to_string()])
        .unwrap();
    t.ns(h1)
        .ip(&[
            "-6",
            "route",
            "add",
            "fd00:2::/64",
            "via",
            &gw1v6.to_string(),
        ])
        .unwrap();
    t.ns(h2)
        .ip(&["route", "add", "10.1.0.0/24", "via", &l2.a.ipv4.to_string()])
        .unwrap();
    t.ns(h2)
        .ip(&["addr", "add", "10.2.0.3/24", "dev", &l2.b.ifname])
        .unwrap();

    let mut policies = vec![
        protect("10.1.0.0/24", "10.2.0.0/24", 0),
        protect("fd00:1::/64", "fd00:2::/64", 1),
    ];
    policies[1].templates[0].dst = IpAddr::V6(h2v6);
    let rules = compile_sorted(&policies, |p| Some(p.index)).unwrap();

    let h2_sock = t
        .ns(h2)
        .run(|| {
            let s = UdpSocket::bind("0.0.0.0:5000")?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            Ok(s)
        })
        .unwrap();
    let h2_sock6 = t
        .ns(h2)
        .run(|| {
            let s = UdpSocket::bind(SocketAddr::new(h2v6.into(), 5000))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            Ok(s)
        })
        .unwrap();

    let topo = &t;
    topo.ns(gw)
        .run(|| {
            let addrs: Vec<IpAddr> = vec![
                h2v4.into(),
                h2v6.into(),
                h1v4.into(),
                h1v6.into(),
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
            let queues = rx_queues(topo, gw, &l1.b.ifname);
            let mut dp = Datapath::load(&bpf_object())?;
            dp.set_out_policies(&rules)?;
            let mut workers = Vec::new();
            for q in 0..queues {
                let mut cfg = WorkerConfig::new(inside.clone(), outside.clone(), q);
                cfg.frames = 2048;
                cfg.ring_size = 512;
                let w = Worker::new(cfg, forward, neigh.reader())?;
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
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    exercise(
                        topo,
                        h1,
                        h2_sock.try_clone().unwrap(),
                        &h2_sock6,
                        (h2v4, h2v6),
                    )
                }));
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
                if r.is_err() {
                    eprintln!(
                        "classifier: {:?}",
                        dp.counters().map(|c| c.iter().collect::<Vec<_>>())
                    );
                }
                if let Err(p) = r {
                    std::panic::resume_unwind(p);
                }
                assert!(sum(&|s| &s.replies) >= 2, "two ICMP errors sent");
                assert!(sum(&|s| &s.fragments) >= 1, "outer fragments sent");
            });
            drop(dp);
            Ok(())
        })
        .unwrap();
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
    set_int(
        &s4,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DO,
    );
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
            set_int(
                &s,
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_DONT,
            );
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
