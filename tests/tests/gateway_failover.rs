//! `kill -9` of gw-a's `xfrm-user run` under load: a TCP transfer and a UDP stream
//! from host-a to host-b are running when the daemon dies. From then on, nothing of the
//! protected flows may cross the wire in clear (fail closed: the capture covers the whole
//! test, before, during and after the outage). Then `xfrm-user run` again, with the same
//! configuration, must restore the traffic: pings pass again and the interrupted TCP transfer
//! completes with equal SHA-256 at both ends. The UDP stream stops when the restart begins:
//! the restart itself must bring the path back, not a flood of packets (which would, for
//! instance, push a restarted sequence counter past the peer's replay window).
//!
//! The restarted daemon reads its state file: on the wire, its ESP sequence numbers go on
//! above every one it sent before the kill (none goes backwards on either SPI), and gw-b's
//! keep flowing into it (its window resumed at the old top, not empty). At the end both
//! daemons stop in order, keep their programs attached (fail closed), and are detached.
//!
//! What happens to the XDP programs when the process dies (still attached, or detached with
//! their links) is printed: the capture's verdict is what counts.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use xfrm_tests::{
    daemon::xdp_line,
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    init_logging,
    peer::stream_of,
    root_or_skip,
    scenario::{
        check_capture, daemon_logs, heavy, start_gateway, transfer_size, wait_path, wire_capture,
        Times,
    },
    traffic::{expected_sha256, tcp_transfer_progress, udp_stream},
};

/// The XDP program on an interface, as `ip -d link show` says.
fn xdp_state(net: &GatewayNet, ns: usize, ifname: &str) -> String {
    match net.topo.ns(ns).ip(&["-d", "link", "show", "dev", ifname]) {
        Ok(o) => {
            xdp_line(&String::from_utf8_lossy(&o.stdout)).unwrap_or_else(|| "no XDP program".into())
        }
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn gateway_kill9_fails_closed_and_restarts() {
    if !root_or_skip("gateway_kill9_fails_closed_and_restarts") {
        return;
    }
    init_logging();
    let _one_at_a_time = heavy();
    let mut times = Times::default();
    let t = Instant::now();
    xfrm_tests::daemon::xfrm_user_bin();
    let t = times.add("build xfrm-user", t);
    let case = Case::new("kill9", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128));
    eprintln!("case {} (key seed {:#x})", case.name, case.seed);
    let net = GatewayNet::new(NetOpts::default()).unwrap();
    let cap = wire_capture(&net, &case).unwrap();
    let mut a = start_gateway(&net, &case, Side::A).unwrap();
    let mut b = start_gateway(&net, &case, Side::B).unwrap();
    let r = wait_path(&net, &case, &mut || {
        a.check_alive()?;
        b.check_alive()
    });
    if let Err(e) = r {
        panic!("{e:#}\n{}", daemon_logs(&[&a, &b]));
    }
    let t = times.add("start", t);
    let inside = net.inside(Side::A).ifname.clone();
    eprintln!(
        "  gw-a inside while running: {}",
        xdp_state(&net, net.gw_a, &inside)
    );

    // Load: a TCP transfer and a UDP stream (1 datagram / ms), both host-a -> host-b.
    let size = transfer_size(64);
    let progress = Arc::new(AtomicU64::new(0));
    let dst = case.traffic_addr(&net, Side::B);
    let stop_udp = Arc::new(AtomicBool::new(false));
    let udp = udp_stream(
        net.topo.ns(net.host_a),
        SocketAddr::new(dst, 7000),
        b'u',
        Duration::from_millis(1),
        stop_udp.clone(),
    );
    let mut problems: Vec<String> = Vec::new();
    let (report, kill_at) = std::thread::scope(|s| {
        let p = progress.clone();
        let net = &net;
        // A short bound: the transfer takes seconds when the restart restores the path; if it
        // does not, the test fails after this, not after the usual generous deadline.
        let deadline = Instant::now() + Duration::from_secs(90);
        let tcp = s.spawn(move || {
            tcp_transfer_progress(
                net.topo.ns(net.host_a),
                net.topo.ns(net.host_b),
                dst,
                5001,
                stream_of(Side::A),
                size,
                deadline,
                p,
            )
        });
        // Under load: an eighth of the transfer through.
        let until = Instant::now() + Duration::from_secs(60);
        while progress.load(Ordering::Relaxed) < size / 8 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let kill_at = progress.load(Ordering::Relaxed);
        let status = a.proc().kill9();
        // Phase 1 of the wire's sequence record: the outage.
        cap.mark();
        eprintln!("  kill -9 at {kill_at} of {size} bytes: {status}");
        // The outage: traffic keeps coming from host-a.
        std::thread::sleep(Duration::from_millis(500));
        eprintln!(
            "  gw-a inside after kill -9: {}",
            xdp_state(net, net.gw_a, &inside)
        );
        eprintln!(
            "  gw-a outside after kill -9: {}",
            xdp_state(net, net.gw_a, &net.outside(Side::A).ifname)
        );
        let stalled = progress.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2500));
        let during = progress.load(Ordering::Relaxed) - stalled;
        eprintln!("  received during the outage (after 0.5 s): {during} bytes");
        // The UDP load stops with the outage: what restores the path must be the restart,
        // not a flood pushing sequence numbers along.
        stop_udp.store(true, Ordering::Relaxed);
        // Restart with the same configuration. Phase 2: after the restart (3 s after the
        // kill: the capture has read what the dead daemon sent).
        cap.mark();
        a = start_gateway(net, &case, Side::A).unwrap();
        let restart = Instant::now();
        let r = wait_path(net, &case, &mut || {
            a.check_alive()?;
            b.check_alive()
        });
        match r {
            Ok(_) => eprintln!(
                "  traffic restored {:.1?} after the restart",
                restart.elapsed()
            ),
            Err(e) => problems.push(format!(
                "traffic not restored after `xfrm-user run` again: {e:#}"
            )),
        }
        let report = tcp.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (report, kill_at)
    });
    let sent_udp = udp.join().unwrap().unwrap();
    let t = times.add("load, kill -9, restart", t);
    match report {
        Ok(r) => {
            eprintln!("  A->B {r} (killed at {kill_at}); {sent_udp} UDP datagrams sent");
            if r.sent != r.received
                || r.received.sha256 != expected_sha256(stream_of(Side::A), size)
            {
                problems.push(format!(
                    "the transfer across the restart is not intact: {r}"
                ));
            }
        }
        Err(e) => problems.push(format!(
            "the TCP transfer did not survive the restart: {e:#}"
        )),
    }
    let rep = cap.stop().unwrap();
    eprintln!("  wire: {}", rep.summary());
    // Sequence numbers on the wire: gw-a's go on above the ones before the kill; nothing
    // goes backwards on either SPI; both directions carry traffic after the restart.
    let spi = |s: Side| case.bundle(&net, s).last().expect("a bundle").spi;
    for s in [Side::A, Side::B] {
        let (before, after) = (rep.seq_range(spi(s), 0..2), rep.seq_range(spi(s), 2..3));
        eprintln!(
            "  ESP from {s:?} (spi {:#x}): before the restart {before:?}, after {after:?}, \
             backwards {}",
            spi(s),
            rep.seq_backwards.get(&spi(s)).copied().unwrap_or(0)
        );
        match (before, after) {
            (Some(b), Some(a)) if s == Side::A && a.min <= b.max => problems.push(format!(
                "gw-a restarted its sequence numbers: {} after the restart, {} before",
                a.min, b.max
            )),
            (_, None) => problems.push(format!("no ESP from {s:?} after the restart")),
            (None, _) => problems.push(format!("no ESP from {s:?} before the restart")),
            _ => {}
        }
        if let Some(n) = rep.seq_backwards.get(&spi(s)) {
            problems.push(format!(
                "{n} ESP frames from {s:?} with a sequence number not above the ones before"
            ));
        }
    }
    let carried = format!("state {}: 2 SA(s) carried over", a.state_path().display());
    if !a.log().contains(&carried) {
        problems.push(format!("the restarted gw-a did not say `{carried}`"));
    }
    // Before, during and after the outage: nothing in clear.
    if rep.leaks > 0 {
        let mut m = format!(
            "{} frames of the protected flows in clear on the wire",
            rep.leaks
        );
        for (why, f) in &rep.leak_samples {
            let parsed = xfrm_tests::capture::parse(&f.data, &[]);
            m.push_str(&format!(
                "\n    {why}: {}",
                xfrm_tests::capture::describe(&f.data, parsed)
            ));
        }
        problems.push(m);
    }
    if rep.leaks == 0 {
        if let Err(e) = check_capture(&net, &case, &rep) {
            problems.push(format!("{e:#}"));
        }
    }
    times.add("checks", t);
    if !problems.is_empty() {
        panic!(
            "kill -9 / restart:\n  - {}\n{}",
            problems.join("\n  - "),
            daemon_logs(&[&a, &b])
        );
    }
    a.check_alive().unwrap();
    b.check_alive().unwrap();
    for d in [a, b] {
        let st = d.stop();
        assert!(st.success(), "xfrm-user run on SIGINT: {st}");
    }
    xfrm_tests::scenario::report(&format!(
        "TIME gateway_kill9_fails_closed_and_restarts: {:.1?} ({} MiB; {times})",
        times.total(),
        size >> 20
    ));
}
