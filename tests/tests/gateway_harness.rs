//! The gateway tests' own harness checked against plain routing, without any IPsec: the
//! two-gateway topology forwards, the transfers hash equal at both ends, and the wire capture
//! finds the plaintext (markers and protected flows in clear). A capture that found nothing
//! here could not be trusted to find a leak in the real tests.

use std::time::{Duration, Instant};

use xfrm_tests::{
    capture::{Capture, CaptureOpts},
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    init_logging,
    peer::stream_of,
    root_or_skip,
    scenario::{
        check_capture, ping_both_ways, start_scapy_gateway, stop_scapy, transfers_both_ways,
        wait_path, wire_capture,
    },
    traffic::{expected_sha256, ping, tcp_transfer},
};

#[test]
fn harness_finds_plaintext_without_gateways() {
    if !root_or_skip("harness_finds_plaintext_without_gateways") {
        return;
    }
    init_logging();
    let t0 = Instant::now();
    let net = GatewayNet::new(NetOpts::default()).unwrap();
    net.route_lans_through_wire().unwrap();
    let case = Case::new("control", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128));
    let cap = Capture::start(
        net.topo.ns(net.wire),
        &net.wire_port(Side::A).ifname,
        CaptureOpts {
            protected: case.protected_flows(&net),
            ..CaptureOpts::default()
        },
    )
    .unwrap();
    let t = &net.topo;
    for f in [Family::V4, Family::V6] {
        ping(t.ns(net.host_a), f.addr(net.host_port(Side::B)), 2, b'A').unwrap();
        ping(t.ns(net.host_b), f.addr(net.host_port(Side::A)), 2, b'B').unwrap();
    }
    let size: u64 = std::env::var("XFRM_GW_CONTROL_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
        << 20;
    let deadline = Instant::now() + Duration::from_secs(60);
    let r = tcp_transfer(
        t.ns(net.host_a),
        t.ns(net.host_b),
        case.traffic_addr(&net, Side::B),
        5001,
        stream_of(Side::A),
        size,
        deadline,
    )
    .unwrap();
    eprintln!("A->B: {r}");
    assert_eq!(r.sent, r.received);
    assert_eq!(r.received.sha256, expected_sha256(stream_of(Side::A), size));
    let rep = cap.stop().unwrap();
    eprintln!("capture: {}", rep.summary());
    // Every data segment carries markers; the pings too, in both directions.
    assert!(
        rep.leaks > 2000,
        "the capture must see the clear transfer: {}",
        rep.summary()
    );
    let why: Vec<&str> = rep.leak_samples.iter().map(|(w, _)| w.as_str()).collect();
    assert!(
        why.iter().any(|w| w.starts_with("plaintext marker")),
        "{why:?}"
    );
    // Pure ACKs have no marker: found by their addresses.
    assert!(
        rep.leak_samples.len() == CaptureOpts::default().leaks_kept,
        "{why:?}"
    );
    assert_eq!(rep.ipsec, 0);
    xfrm_tests::scenario::report(&format!(
        "TIME harness_finds_plaintext_without_gateways: {:.1?} ({} MiB)",
        t0.elapsed(),
        size >> 20
    ));
}

/// The Scapy gateway (tests/interop/scapy_gateway.py) against itself on both sides: the far
/// end of gateway_scapy.rs works before it judges ours.
#[test]
fn harness_scapy_gateway_against_itself() {
    if !root_or_skip("harness_scapy_gateway_against_itself") {
        return;
    }
    init_logging();
    let Some(py) = xfrm_tests::peer::peer_python() else {
        return;
    };
    let t0 = Instant::now();
    let net = GatewayNet::new(NetOpts::default()).unwrap();
    for (ns, p) in [
        (net.host_a, net.host_port(Side::A)),
        (net.gw_a, net.inside(Side::A)),
        (net.gw_b, net.inside(Side::B)),
        (net.host_b, net.host_port(Side::B)),
    ] {
        net.topo
            .ns(ns)
            .ip(&["link", "set", "dev", &p.ifname, "mtu", "1400"])
            .unwrap();
    }
    let case = Case::new("scapy-pair", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128));
    let work = std::env::temp_dir().join(format!("xfrm-gw-{}-scapy-pair", net.topo.id()));
    let cap = wire_capture(&net, &case).unwrap();
    let reports = [work.join("a.json"), work.join("b.json")];
    let mut gws: Vec<_> = [Side::A, Side::B]
        .iter()
        .zip(&reports)
        .map(|(&s, r)| start_scapy_gateway(&net, &case, s, &py, &work, r).unwrap())
        .collect();
    wait_path(&net, &case, &mut || Ok(())).unwrap();
    eprintln!("ping: {}", ping_both_ways(&net, &case, 2).unwrap());
    let [ra, rb] = transfers_both_ways(&net, &case, 256 << 10, 5001).unwrap();
    eprintln!("A->B {ra}\nB->A {rb}");
    for g in &mut gws {
        stop_scapy(g);
    }
    for r in &reports {
        let st: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(r).unwrap()).unwrap();
        eprintln!("{}: {st}", r.display());
        assert_eq!(st["errors"], 0, "{st}");
        assert!(st["decrypted"].as_u64().unwrap() > 100, "{st}");
        assert_eq!(st["kernel_unknown_protos"], 0, "the kernel saw ESP: {st}");
    }
    let rep = cap.stop().unwrap();
    eprintln!("wire: {}", rep.summary());
    check_capture(&net, &case, &rep).unwrap();
    let c = xfrm_tests::peer::check_samples(&py, &case, &net, &rep, &work).unwrap();
    eprintln!("peer: {c}");
    let _ = std::fs::remove_dir_all(&work);
    xfrm_tests::scenario::report(&format!(
        "TIME harness_scapy_gateway_against_itself: {:.1?}",
        t0.elapsed()
    ));
}
