//! Outer fragmentation between two of our gateways: an inner IPv4 packet without DF whose
//! ESP packet exceeds the wire's MTU is sent as outer fragments (what the kernel's xfrm does
//! for it); the receiving gateway's kernel reassembles them and must hand the whole ESP packet
//! to our input path (a raw socket), since it holds no SA to decrypt it itself.
//!
//! `ping -M dont -s 1450` from host-a to host-b: 1478-byte inner packets, over 1500 once in
//! ESP, both ways (the replies are as big). Over an IPv4 wire and an IPv6 one. The capture
//! on the wire must show the fragments and no plaintext.

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    init_logging, root_or_skip,
    scenario::{check_capture, daemon_logs, heavy, start_gateway, wait_path, wire_capture},
    topology::Netns,
};

/// `count` pings of `size` bytes with DF off; the statistics line when all were answered.
fn big_ping(ns: &Netns, dst: IpAddr, size: u32, count: u32) -> Result<String> {
    let out = ns
        .command("ping")
        .args([
            "-M",
            "dont",
            "-s",
            &size.to_string(),
            "-c",
            &count.to_string(),
        ])
        .args(["-i", "0.2", "-W", "2", &dst.to_string()])
        .output()
        .context("ping")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_default()
        .to_string();
    if !line.contains(&format!("{count} received")) {
        bail!("ping -M dont -s {size} to {dst}: {line}\n{text}");
    }
    Ok(line)
}

fn case(name: &str, outer: Family) -> Result<()> {
    let case =
        Case::new(name, Endpoints::Hosts, Family::V4, outer).sa(SaSpec::new(Mode::Tunnel, GCM128));
    let net = GatewayNet::new(NetOpts::default())?;
    let cap = wire_capture(&net, &case)?;
    let mut a = start_gateway(&net, &case, Side::A)?;
    let mut b = start_gateway(&net, &case, Side::B)?;
    let r = (|| -> Result<()> {
        wait_path(&net, &case, &mut || {
            a.check_alive()?;
            b.check_alive()
        })?;
        for s in [Side::A, Side::B] {
            let line = big_ping(
                net.topo.ns(case.traffic_ns(&net, s)),
                case.traffic_addr(&net, s.other()),
                1450,
                3,
            )?;
            eprintln!("  {name} {s:?}->{:?}: {line}", s.other());
        }
        Ok(())
    })();
    let rep = cap.stop()?;
    eprintln!("  wire: {}", rep.summary());
    if let Err(e) = r {
        bail!("{e:#}\n{}", daemon_logs(&[&a, &b]));
    }
    check_capture(&net, &case, &rep)?;
    // The second fragments (no ESP header: counted as "other" protocol 50), one per ping
    // and reply: the outer packets really were fragmented.
    let later = rep.other.get("ip proto 50").copied().unwrap_or(0);
    if later < 12 {
        bail!(
            "expected 12 non-first outer fragments on the wire: {}",
            rep.summary()
        );
    }
    for (n, d) in [("A", a), ("B", b)] {
        let log = d.log();
        let st = d.stop();
        if !st.success() {
            bail!("gateway {n}: exited with {st}; log:\n{log}");
        }
    }
    Ok(())
}

#[test]
fn gateway_outer_fragments_are_reassembled() {
    if !root_or_skip("gateway_outer_fragments_are_reassembled") {
        return;
    }
    init_logging();
    let _one_at_a_time = heavy();
    for (name, outer) in [("frag-4in4", Family::V4), ("frag-4in6", Family::V6)] {
        if let Err(e) = case(name, outer) {
            panic!("{name}: {e:#}");
        }
    }
}
