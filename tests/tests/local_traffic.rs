//! The gateway's own traffic ("ESP transport between the gateways' own addresses"):
//!
//!   ns "h1" [a] ──veth 1── [b] ns "gw" [a] ──veth 2── [b] ns "h2"
//!
//! UDP from gw's own address to h2 is protected by a transport-mode SA (h2 has no IPsec: a raw
//! socket takes the ESP); ICMP is not. Without the daemon the UDP reaches h2 in clear (the
//! control: this test can see a leak). With it, the TC egress program on gw's outside
//! interface hands the datagrams to the daemon's TAP and they arrive as ESP only. After
//! `kill -9` the TC filter stays and the TAP is gone with the process: the UDP reaches h2
//! neither in clear nor as ESP, while ping still passes. A second daemon replaces the filter
//! (still one) and ESP flows again; SIGTERM keeps the filter (dropping), `xfrm-user detach`
//! removes it. With `--no-local` the host's own traffic is left alone (documented: in
//! clear).
//!
//! The full two-gateway transfer in transport mode between the gateways' addresses (both
//! directions, decrypted by the Scapy peer) is `gateway_cases::gateway_esp_transport_between_gateways`.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use xfrm_tests::{
    bpf_object,
    daemon::xfrm_user_bin,
    init_logging,
    probe::{ping_once as ping, Receiver},
    root_or_skip,
    topology::{Netns, Proc, Topology, VethOpts},
};

fn config(gw: &str, h2: &str) -> String {
    format!(
        "ip xfrm state add src {gw} dst {h2} proto esp spi 0x3001 reqid 4 mode transport \
         aead 'rfc4106(gcm(aes))' 0x3132333435363738393a3b3c3d3e3f40cafef00d 128\n\
         ip xfrm policy add src {gw} dst {h2} proto udp dir out \
         tmpl src {gw} dst {h2} proto esp reqid 4 mode transport\n"
    )
}

/// `xfrm-user run` in `ns`, its state file beside the config (removed with it).
fn start(ns: &Netns, conf: &Path, inside: &str, outside: &str, extra: &[&str]) -> Proc {
    let bin = xfrm_user_bin();
    let bpf = bpf_object();
    let state = conf.with_extension("state");
    let mut args = vec![
        "run",
        "--config",
        conf.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--inside",
        inside,
        "--outside",
        outside,
        "--interval",
        "1",
        "--bpf",
        bpf.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ns.spawn("xfrm-user", bin.to_str().unwrap(), &args)
        .expect("spawn xfrm-user run")
}

/// The egress filters of `ifname` named xfrm_local_out (`tc filter show` lines).
fn local_out_filters(ns: &Netns, ifname: &str) -> usize {
    let o = ns
        .exec("tc", &["filter", "show", "dev", ifname, "egress"])
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.contains("xfrm_local_out"))
        .count()
}

#[test]
fn own_traffic_is_protected_and_fails_closed_after_kill9() {
    if !root_or_skip("own_traffic_is_protected_and_fails_closed_after_kill9") {
        return;
    }
    init_logging();
    let mut t = Topology::new().unwrap();
    let h1 = t.add_netns("h1").unwrap();
    let gw = t.add_netns("gw").unwrap();
    let h2 = t.add_netns("h2").unwrap();
    let l1 = t.add_veth(h1, gw, VethOpts::default()).unwrap();
    let l2 = t.add_veth(gw, h2, VethOpts::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("gw.conf");
    let (gw_addr, h2_addr) = (l2.a.ipv4, l2.b.ipv4);
    xfrm_user::keyfile::write_private(&conf, config(&gw_addr.to_string(), &h2_addr.to_string()))
        .unwrap();
    let (inside, outside) = (l1.b.ifname.clone(), l2.a.ifname.clone());
    let to = SocketAddr::new(IpAddr::V4(h2_addr), 5001);

    let sender = t
        .ns(gw)
        .run(|| Ok(UdpSocket::bind(SocketAddr::new(gw_addr.into(), 4001))?))
        .unwrap();
    let rx = t.ns(h2).run(|| Receiver::bind(to)).unwrap();

    // Control: no daemon, the host's own datagrams leave in clear.
    let (clear, esp) = rx.probe(&sender, to, 5);
    assert!(clear > 0, "control: gw's own UDP reaches h2 in clear");
    assert_eq!(esp, 0);

    // --no-local: the same (the operator said so).
    let mut d0 = start(t.ns(gw), &conf, &inside, &outside, &["--no-local"]);
    let end = Instant::now() + Duration::from_secs(15);
    while !xfrm_tests::daemon::xdp_attached(t.ns(gw), &outside).unwrap() {
        assert!(Instant::now() < end, "no XDP program; log:\n{}", d0.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        local_out_filters(t.ns(gw), &outside),
        0,
        "--no-local: no TC"
    );
    let (clear, esp) = rx.probe(&sender, to, 5);
    assert_eq!(
        (clear, esp),
        (5, 0),
        "--no-local leaves the host's traffic alone"
    );
    assert!(d0.stop(libc::SIGTERM, Duration::from_secs(10)).success());

    let mut d1 = start(t.ns(gw), &conf, &inside, &outside, &[]);
    rx.wait_protected(&sender, to, &mut d1, Duration::from_secs(15));
    assert_eq!(local_out_filters(t.ns(gw), &outside), 1);
    let (clear, esp) = rx.probe(&sender, to, 10);
    assert_eq!((clear, esp), (0, 10), "daemon 1: all protected");

    // A second daemon in the same namespace is refused (the TAP's name is taken) before it
    // touches anything; daemon 1 goes on protecting.
    let conf2 = dir.path().join("gw2.conf");
    std::fs::copy(&conf, &conf2).unwrap();
    let mut dup = start(t.ns(gw), &conf2, &inside, &outside, &[]);
    let end = Instant::now() + Duration::from_secs(15);
    let st = loop {
        if let Some(st) = dup.try_wait() {
            break st;
        }
        assert!(Instant::now() < end, "second daemon still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!st.success(), "second daemon: {st}");
    assert!(
        dup.log().contains("an interface of that name exists"),
        "{}",
        dup.log()
    );
    assert_eq!(rx.probe(&sender, to, 5), (0, 5), "daemon 1 still protects");
    assert!(
        ping(t.ns(gw), &h2_addr.to_string()),
        "ICMP is not protected"
    );

    let st = d1.kill9();
    eprintln!("daemon 1: {st}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        local_out_filters(t.ns(gw), &outside),
        1,
        "the TC filter stays after kill -9"
    );
    let (clear, esp) = rx.probe(&sender, to, 20);
    eprintln!("after kill -9: clear {clear}, esp {esp}");
    assert_eq!(
        clear, 0,
        "the host's protected datagrams left in clear after kill -9"
    );
    assert_eq!(esp, 0);
    assert!(
        ping(t.ns(gw), &h2_addr.to_string()),
        "unprotected traffic passes"
    );

    let mut d2 = start(t.ns(gw), &conf, &inside, &outside, &[]);
    rx.wait_protected(&sender, to, &mut d2, Duration::from_secs(15));
    assert_eq!(
        local_out_filters(t.ns(gw), &outside),
        1,
        "the restarted daemon replaced the filter"
    );
    let (clear, esp) = rx.probe(&sender, to, 10);
    assert_eq!((clear, esp), (0, 10), "after restart: all protected");
    let st = d2.stop(libc::SIGTERM, Duration::from_secs(10));
    assert!(st.success(), "SIGTERM: {st}; log:\n{}", d2.log());
    // An orderly stop keeps the filter too (fail closed), and it still drops.
    assert_eq!(local_out_filters(t.ns(gw), &outside), 1, "kept at SIGTERM");
    assert_eq!(rx.probe(&sender, to, 5), (0, 0), "stopped: dropped");
    // `xfrm-user detach` takes it off with the XDP programs: in clear again, as at first.
    let bin = xfrm_user_bin();
    let out = t
        .ns(gw)
        .command(bin.to_str().unwrap())
        .args(["detach", "--inside", &inside, "--outside", &outside])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "detach: {said}");
    assert!(
        said.contains("xfrm_local_out"),
        "detach says what it did: {said}"
    );
    assert_eq!(local_out_filters(t.ns(gw), &outside), 0, "detached");
    let (clear, esp) = rx.probe(&sender, to, 5);
    assert_eq!(
        (clear, esp),
        (5, 0),
        "after detach the host's traffic is plain again"
    );
}
