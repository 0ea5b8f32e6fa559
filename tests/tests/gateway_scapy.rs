//! One gateway against an implementation that is not ours: gw-a runs `xfrm-user run`, the far
//! end is tests/interop/scapy_gateway.py in gw-b's namespace (Scapy's scapy.layers.ipsec and
//! the interop peer's own engine, both following Linux). Hosts ping and transfer through it
//! both ways, so our output is checked by the peer's input (ICV, Linux's layout) and our input
//! accepts the peer's output; the peer counts every packet of ours it finds wrong.
//!
//! The Scapy gateway does no PMTU discovery: host-b's LAN gets MTU 1400, so that nothing it
//! sends needs fragmenting after encapsulation (and TCP's MSS keeps host-a's segments as
//! small).

use std::time::Instant;

use serde_json::Value;
use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128, SHA256},
    init_logging,
    peer::{check_samples, peer_python},
    root_or_skip,
    scenario::{
        check_capture, daemon_logs, heavy, ping_both_ways, start_gateway, start_scapy_gateway,
        stop_scapy, transfer_size, transfers_both_ways, wait_path, wire_capture, Times,
    },
};

fn against_scapy(test: &str, case: Case) {
    if !root_or_skip(test) {
        return;
    }
    init_logging();
    let Some(py) = peer_python() else {
        return;
    };
    let _one_at_a_time = heavy();
    let mut times = Times::default();
    let t = Instant::now();
    xfrm_tests::daemon::xfrm_user_bin();
    let t = times.add("build xfrm-user", t);
    eprintln!(
        "case {} against Scapy (key seed {:#x})",
        case.name, case.seed
    );
    let net = GatewayNet::new(NetOpts::default()).unwrap();
    let tp = &net.topo;
    for (ns, p) in [
        (net.gw_b, net.inside(Side::B)),
        (net.host_b, net.host_port(Side::B)),
    ] {
        tp.ns(ns)
            .ip(&["link", "set", "dev", &p.ifname, "mtu", "1400"])
            .unwrap();
    }
    // Only the Scapy gateway moves packets between gw-b's interfaces.
    tp.ns(net.gw_b).sysctl("net.ipv4.ip_forward", "0").unwrap();
    tp.ns(net.gw_b)
        .sysctl("net.ipv6.conf.all.forwarding", "0")
        .unwrap();
    let work = std::env::temp_dir().join(format!("xfrm-gw-{}-{}", tp.id(), case.name));
    std::fs::create_dir_all(&work).unwrap();
    let report = work.join("scapy-gateway.json");
    let t = times.add("topology", t);

    let cap = wire_capture(&net, &case).unwrap();
    let mut scapy = start_scapy_gateway(&net, &case, Side::B, &py, &work, &report).unwrap();
    let mut a = start_gateway(&net, &case, Side::A).unwrap();
    let size = transfer_size(2);
    let r = (|| -> anyhow::Result<()> {
        let up = wait_path(&net, &case, &mut || {
            a.check_alive()?;
            match scapy.try_wait() {
                Some(st) => anyhow::bail!("scapy_gateway.py exited ({st}):\n{}", scapy.log()),
                None => Ok(()),
            }
        })?;
        eprintln!("  path up after {up:.1?}");
        let t = times.add("start", t);
        eprintln!("  ping: {}", ping_both_ways(&net, &case, 3)?);
        let [ra, rb] = transfers_both_ways(&net, &case, size, 5001)?;
        eprintln!("  A->B {ra}\n  B->A {rb}");
        times.add("ping+transfer", t);
        Ok(())
    })();
    let t = Instant::now();
    let scapy_log = scapy.log();
    stop_scapy(&mut scapy);
    if let Err(e) = r {
        panic!(
            "{test}: {e:#}\nscapy_gateway.py:\n{scapy_log}\n{}",
            daemon_logs(&[&a])
        );
    }
    let st: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    eprintln!("  scapy gateway: {st}");
    assert_eq!(
        st["errors"], 0,
        "the Scapy peer found packets of ours wrong: {st}"
    );
    assert!(st["decrypted"].as_u64().unwrap() > 0 && st["encrypted"].as_u64().unwrap() > 0);
    let rep = cap.stop().unwrap();
    eprintln!("  wire: {}", rep.summary());
    check_capture(&net, &case, &rep).unwrap();
    let c = check_samples(&py, &case, &net, &rep, &work).unwrap();
    eprintln!("  peer (offline, wire samples): {c}");
    a.check_alive().unwrap();
    let log = a.log();
    let status = a.stop();
    assert!(status.success(), "xfrm-user run: {status}\n{log}");
    times.add("checks", t);
    let _ = std::fs::remove_dir_all(&work);
    xfrm_tests::scenario::report(&format!(
        "TIME {test}: {:.1?} ({} MiB each way; {times})",
        times.total(),
        size >> 20
    ));
}

#[test]
fn scapy_far_end_esp_tunnel_ipv4() {
    let case = Case::new("scapy-esp-v4", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128));
    against_scapy("scapy_far_end_esp_tunnel_ipv4", case);
}

#[test]
fn scapy_far_end_esp_tunnel_ipv6() {
    let case = Case::new("scapy-esp-v6", Endpoints::Hosts, Family::V6, Family::V6)
        .sa(SaSpec::new(Mode::Tunnel, GCM128));
    against_scapy("scapy_far_end_esp_tunnel_ipv6", case);
}

#[test]
fn scapy_far_end_ah_tunnel() {
    let case = Case::new("scapy-ah-v4", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, SHA256));
    against_scapy("scapy_far_end_ah_tunnel", case);
}

#[test]
fn scapy_far_end_nat_traversal() {
    let case = Case::new("scapy-natt-v4", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128).natt(4500));
    against_scapy("scapy_far_end_nat_traversal", case);
}
