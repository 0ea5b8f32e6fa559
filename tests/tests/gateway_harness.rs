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
    eprintln!("harness control: {:.1?}", t0.elapsed());
}
