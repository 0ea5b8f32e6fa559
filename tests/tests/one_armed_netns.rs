//! The one-armed gateway end to end ("inside may equal outside"): gw-a runs
//! `xfrm-user run --inside X --outside X` on its single interface, against the two-armed gw-b
//! (xfrm_tests::gateway::GatewayNet::one_armed):
//!
//! ```text
//!  host-a ──── wire ════ gw-b ──── host-b
//!               ║ (gw-a's one arm: clear to and from the router, ESP to and from gw-b)
//!              gw-a
//! ```
//!
//! Pings both ways, a TCP transfer each way with SHA-256 compared at both ends, a capture on
//! the wire router's port towards gw-b (where every packet between the sites passes, and where
//! plaintext gw-a forwarded instead of protecting would go: the router's main table sends
//! host-b's LAN to gw-b), checked for plaintext of the protected flow, and its ESP decrypted
//! by the Scapy peer when it is installed. Then clear text that gw-a's fwd policy wants
//! protected (pings from host-b's LAN sent by the router in clear through gw-a's arm) is
//! refused on the same single interface and counted, where without the daemons gw-a's kernel
//! forwards it to host-a (the control); unprotected traffic through the arm passes.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};
use xfrm_tests::{
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    init_logging,
    peer::{check_samples, peer_python},
    root_or_skip,
    scenario::{
        check_capture, daemon_logs, heavy, ping_both_ways, report, start_gateway, transfer_size,
        transfers_both_ways, wait_path, wire_capture_at, Times,
    },
    traffic::wait_ping,
};

/// Pings in clear "from host-b's LAN" per [`spoof`] round.
const SPOOFED: u32 = 3;

/// An address of host-b's LAN that no host has: the wire router sends from it.
fn spoofed_addr(net: &GatewayNet, f: Family) -> IpAddr {
    match f.addr(net.host_port(Side::B)) {
        IpAddr::V4(a) => {
            let o = a.octets();
            IpAddr::from([o[0], o[1], o[2], 99])
        }
        IpAddr::V6(a) => {
            let mut s = a.segments();
            s[7] = 0x99;
            IpAddr::from(s)
        }
    }
}

/// The wire router sends what it originates from the spoofed address and from its own
/// address on gw-a's link to host-a through gw-a (policy routes for its own output only:
/// what gw-a's kernel forwards back comes in on that link and takes the main table, straight
/// to host-a). The spoofed address is the router's, so the answers come back to it.
fn spoof_routes(net: &GatewayNet, case: &Case) -> Result<()> {
    let f = case.inner;
    let w = net.topo.ns(net.wire);
    let v = if f == Family::V6 { "-6" } else { "-4" };
    let spoofed = spoofed_addr(net, f).to_string();
    let len = if f == Family::V6 { "128" } else { "32" };
    w.ip(&[v, "addr", "add", &format!("{spoofed}/{len}"), "dev", "lo"])?;
    // Its own address comes back from gw-a as a source: not a martian here.
    w.sysctl("net.ipv4.conf.all.accept_local", "1")?;
    for from in [spoofed, f.addr(&net.wan_a.b).to_string()] {
        w.ip(&[
            v, "rule", "add", "from", &from, "iif", "lo", "lookup", "101",
        ])?;
    }
    w.ip(&[
        v,
        "route",
        "add",
        &f.addr(net.host_port(Side::A)).to_string(),
        "via",
        &f.addr(&net.wan_a.a).to_string(),
        "table",
        "101",
    ])?;
    Ok(())
}

/// Echo requests host-a received so far (its ICMP or ICMPv6 counters; /proc/thread-self:
/// /proc/net is the namespace of the process, not of the thread that entered host-a's).
fn echo_requests(net: &GatewayNet, f: Family) -> Result<u64> {
    net.topo.ns(net.host_a).run(|| {
        let (file, key) = match f {
            Family::V4 => ("/proc/thread-self/net/snmp", "InEchos"),
            Family::V6 => ("/proc/thread-self/net/snmp6", "Icmp6InEchos"),
        };
        let text = std::fs::read_to_string(file)?;
        if f == Family::V6 {
            return text
                .lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
                .ok_or_else(|| anyhow::anyhow!("no {key} in {file}"));
        }
        // Two lines per protocol: names, then values.
        let mut icmp = text.lines().filter(|l| l.starts_with("Icmp:"));
        let (names, values) = (icmp.next(), icmp.next());
        let (Some(names), Some(values)) = (names, values) else {
            bail!("no Icmp lines in {file}");
        };
        let i = names
            .split_whitespace()
            .position(|n| n == key)
            .ok_or_else(|| anyhow::anyhow!("no {key} in {file}"))?;
        Ok(values.split_whitespace().nth(i).unwrap_or("0").parse()?)
    })
}

/// [`SPOOFED`] pings from the spoofed address of host-b's LAN to host-a, through gw-a's arm
/// in clear. Returns how many echo requests host-a received, and gw-a's
/// drop_in_tmpl_mismatch before them (from its daemon's `log`).
fn spoof(net: &GatewayNet, case: &Case, log: &str) -> Result<[u64; 2]> {
    let f = case.inner;
    let before = echo_requests(net, f)?;
    let refused = outside_counter(log, "drop_in_tmpl_mismatch");
    let host_a = f.addr(net.host_port(Side::A)).to_string();
    let from = spoofed_addr(net, f).to_string();
    let out = net
        .topo
        .ns(net.wire)
        .command("ping")
        .args([
            "-c",
            &SPOOFED.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            "-I",
            &from,
            &host_a,
        ])
        .output()?;
    eprintln!(
        "  ping {host_a} -I {from} through gw-a: {}",
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("transmitted"))
            .unwrap_or("?")
    );
    Ok([echo_requests(net, f)? - before, refused])
}

/// Counter `name` of the outside program in the last counter line of a daemon's log (0 when
/// absent: counters at zero are not printed).
fn outside_counter(log: &str, name: &str) -> u64 {
    log.lines()
        .rev()
        .find(|l| l.contains("xdp outside:"))
        .and_then(|l| l.split("xdp outside:").nth(1))
        .and_then(|o| o.split(" | ").next())
        .and_then(|o| {
            o.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        })
        .unwrap_or(0)
}

fn run(case: &Case, size: u64) -> Result<Times> {
    let mut times = Times::default();
    let t = Instant::now();
    xfrm_tests::daemon::xfrm_user_bin();
    let t = times.add("build xfrm-user", t);
    let net = GatewayNet::one_armed(NetOpts::default())?;
    ensure!(net.inside(Side::A).ifname == net.outside(Side::A).ifname);
    spoof_routes(&net, case)?;
    // Neighbours on the arm resolved first (a fresh IPv6 link can take a second to answer
    // its first solicitation, longer than the pings wait).
    let f = case.inner;
    let warm = Instant::now() + Duration::from_secs(10);
    let host_a = f.addr(net.host_port(Side::A));
    wait_ping(net.topo.ns(net.wire), host_a, warm)?;
    wait_ping(net.topo.ns(net.wire), f.addr(&net.wan_a.a), warm)?;
    wait_ping(net.topo.ns(net.gw_a), host_a, warm)?;
    // The control: without the daemons gw-a's kernel forwards the spoofed pings to host-a.
    let [pings, _] = spoof(&net, case, "")?;
    ensure!(
        pings == u64::from(SPOOFED),
        "control: host-a answered {pings} of {SPOOFED} pings sent through gw-a's kernel"
    );
    let t = times.add("topology", t);
    let cap = wire_capture_at(&net, case, Side::B)?;
    let mut a = start_gateway(&net, case, Side::A)?;
    let mut b = start_gateway(&net, case, Side::B)?;
    let r = (|| -> Result<()> {
        let mut t = t;
        let up = wait_path(&net, case, &mut || {
            a.check_alive()?;
            b.check_alive()
        })?;
        eprintln!("  path up after {up:.1?}");
        t = times.add("start", t);
        eprintln!("  ping: {}", ping_both_ways(&net, case, 3)?);
        let [ra, rb] = transfers_both_ways(&net, case, size, 5001)?;
        eprintln!("  A->B {ra}\n  B->A {rb}");
        t = times.add("transfer", t);
        a.check_alive()?;
        b.check_alive()?;
        let rep = cap.stop()?;
        eprintln!("  wire (towards gw-b): {}", rep.summary());
        check_capture(&net, case, &rep)?;
        t = times.add("capture check", t);
        if let Some(py) = peer_python() {
            let work =
                std::env::temp_dir().join(format!("xfrm-gw-{}-{}", net.topo.id(), case.name));
            let c = check_samples(&py, case, &net, &rep, &work)?;
            eprintln!("  peer: {c}");
            if c.from_a.blocks == 0 || c.from_b.blocks == 0 {
                bail!("the sampled packets held no transfer data: {c}");
            }
            let _ = std::fs::remove_dir_all(&work);
            t = times.add("peer decrypt", t);
        }
        // The one arm refuses clear text that gw-a's fwd policy wants protected.
        let [pings, refused] = spoof(&net, case, &a.log())?;
        ensure!(
            pings == 0,
            "host-a answered {pings} pings from host-b's LAN sent in clear through gw-a"
        );
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let now = outside_counter(&a.log(), "drop_in_tmpl_mismatch");
            if now >= refused + u64::from(SPOOFED) {
                break;
            }
            if Instant::now() > end {
                bail!("gw-a counted drop_in_tmpl_mismatch {refused} -> {now}, expected +{SPOOFED}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Unprotected traffic through the arm still passes.
        let f = case.inner;
        let w = net.topo.ns(net.wire);
        let from = f.addr(&net.wan_a.b).to_string();
        let host_a = f.addr(net.host_port(Side::A)).to_string();
        let out = w
            .command("ping")
            .args(["-c", "2", "-i", "0.2", "-W", "2", "-I", &from, &host_a])
            .output()?;
        ensure!(
            out.status.success(),
            "unprotected ping through gw-a's arm: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        times.add("clear text refused", t);
        a.check_alive()?;
        b.check_alive()
    })();
    if let Err(e) = r {
        bail!("{e:#}\n{}", daemon_logs(&[&a, &b]));
    }
    for (n, d) in [("A", a), ("B", b)] {
        let log = d.log();
        let st = d.stop();
        ensure!(
            st.success(),
            "gateway {n}: xfrm-user run exited with {st} on SIGINT; log:\n{log}"
        );
    }
    Ok(times)
}

fn one_armed(test: &str, inner: Family, outer: Family, default_mib: u64) {
    if !root_or_skip(test) {
        return;
    }
    init_logging();
    let _one_at_a_time = heavy();
    let case =
        Case::new(test, Endpoints::Hosts, inner, outer).sa(SaSpec::new(Mode::Tunnel, GCM128));
    let size = transfer_size(default_mib);
    match run(&case, size) {
        Ok(t) => report(&format!(
            "TIME {test}: {:.1?} ({} MiB each way; {t})",
            t.total(),
            size >> 20
        )),
        Err(e) => panic!("{test}: {e:#}"),
    }
}

#[test]
fn one_armed_gateway_ipv4() {
    one_armed("one-armed-v4", Family::V4, Family::V4, 64);
}

#[test]
fn one_armed_gateway_ipv6() {
    one_armed("one-armed-v6", Family::V6, Family::V6, 16);
}
