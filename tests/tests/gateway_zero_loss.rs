//! No datagram lost by the datapath's own plumbing: numbered UDP datagrams at a fixed rate
//! both ways through the two-gateway ESP tunnel while TCP transfers run both ways, and not
//! one may be missing at the far end. The TCP senders are paced below what the gateways
//! carry (saturated, some queue must overflow for TCP to find the rate, and a lost
//! datagram would say nothing about the plumbing); what is left to lose a datagram is the
//! worker: a TX ring it did not drain, a fill ring it let run dry, a UMEM it ran out of, a
//! neighbour it did not wait for. Each drop reason's counter is printed for both gateways,
//! and nothing protected may cross the wire in clear.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xfrm_tests::{
    daemon::Daemon,
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    init_logging,
    load::{paced_transfers, DatagramStreams},
    root_or_skip,
    scenario::{check_capture, daemon_logs, heavy, report, start_gateway, wait_path, wire_capture},
};

/// How long the datagrams flow.
const LOAD: Duration = Duration::from_secs(20);
/// One datagram every millisecond each way (1000/s: 20 000 each way).
const UDP_INTERVAL: Duration = Duration::from_millis(1);
/// Each TCP transfer's size and pace (bytes per second, each way).
const TCP_SIZE: u64 = 32 << 20;
const TCP_PACING: u64 = 40_000_000;

#[test]
fn gateway_loses_no_datagram_under_tcp_load() {
    let test = "gateway_loses_no_datagram_under_tcp_load";
    if !root_or_skip(test) {
        return;
    }
    init_logging();
    let _one = heavy();
    if let Err(e) = zero_loss() {
        panic!("{test}: {e:#}");
    }
}

fn zero_loss() -> Result<()> {
    let t0 = Instant::now();
    xfrm_tests::daemon::xfrm_user_bin();
    let case = Case::new("zero-loss", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128));
    let net = GatewayNet::new(NetOpts::default())?;
    let cap = wire_capture(&net, &case)?;
    let mut a = start_gateway(&net, &case, Side::A)?;
    let mut b = start_gateway(&net, &case, Side::B)?;
    let r = load(&net, &case, &mut a, &mut b);
    let rep = cap.stop()?;
    if let Err(e) = r {
        bail!("{e:#}\n{}", daemon_logs(&[&a, &b]));
    }
    report(&format!("  wire: {}", rep.summary()));
    check_capture(&net, &case, &rep)?;
    for d in [a, b] {
        let st = d.stop();
        if !st.success() {
            bail!("stop: {st}");
        }
    }
    report(&format!(
        "TIME gateway_loses_no_datagram_under_tcp_load: {:.1?}",
        t0.elapsed()
    ));
    Ok(())
}

fn load(net: &GatewayNet, case: &Case, a: &mut Daemon, b: &mut Daemon) -> Result<()> {
    wait_path(net, case, &mut || {
        a.check_alive()?;
        b.check_alive()
    })?;
    let streams = DatagramStreams::start(net, case, [7201, 7202], UDP_INTERVAL);
    let transfers = std::thread::scope(|sc| -> Result<u32> {
        let stop_tcp = streams.stop.clone();
        let tcp = sc.spawn(move || -> Result<u32> {
            let mut n = 0u32;
            while !stop_tcp.load(Ordering::Relaxed) {
                paced_transfers(net, case, 5800 + 2 * (n as u16 % 50), TCP_SIZE, TCP_PACING)?;
                n += 1;
            }
            Ok(n)
        });
        let end = Instant::now() + LOAD;
        while Instant::now() < end && !tcp.is_finished() {
            std::thread::sleep(Duration::from_millis(100));
        }
        streams.stop.store(true, Ordering::Relaxed);
        tcp.join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
            .context("TCP transfers under the datagrams")
    })?;
    report(&format!(
        "  {transfers} TCP transfer pairs ({} MiB each way at {} MB/s) intact",
        TCP_SIZE >> 20,
        TCP_PACING / 1_000_000
    ));
    a.check_alive()?;
    b.check_alive()?;
    let mut problems = Vec::new();
    for t in streams.finish()? {
        report(&format!("  {t}"));
        if t.sent == 0 {
            problems.push(format!("UDP from {:?}: nothing sent", t.from));
        }
        if !t.lost.is_empty() {
            problems.push(format!("{t}"));
        }
    }
    // The counter lines written after the load: every drop reason of each gateway.
    std::thread::sleep(Duration::from_millis(1500));
    for (s, d) in [(Side::A, &*a), (Side::B, &*b)] {
        let log = d.log();
        if let Some(line) = log.lines().rev().find(|l| l.starts_with("out ")) {
            report(&format!("  gw-{s:?}: {line}"));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}
