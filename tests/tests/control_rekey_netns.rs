//! Make-before-break under load: two gateways (`xfrm-user run`) rekey every 2 s for 60 s
//! through `xfrm-user xfrm` while numbered UDP datagrams flow both ways at a fixed rate and
//! TCP transfers run both ways. Each round adds the new inbound SA on both sides, then the
//! new outbound SA (the output path switches to the newest SA of its template), then
//! deletes the old ones; the gateway that goes first alternates. Checked: every transfer
//! whole (SHA-256 at both ends), no protected packet in clear on the wire, no xfrm error
//! on either gateway (replay, integrity, unknown, dead or missing SA), and not one datagram
//! lost (the datapath's own drop counters are printed beside the figures).
//! The TCP senders are paced so that the gateways are not saturated: saturated, they drop
//! (TCP recovers), and a lost datagram would then say nothing about the rekeys.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use xfrm_tests::{
    daemon::Daemon,
    gateway::{
        Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaInstance, SaSpec, Side, GCM128,
    },
    init_logging,
    load::{paced_transfers, DatagramStreams},
    root_or_skip,
    scenario::{check_capture, daemon_logs, heavy, report, start_gateway, wait_path, wire_capture},
};

const ROUNDS: u32 = 30;
const PERIOD: Duration = Duration::from_secs(2);
/// One datagram every 2 ms each way (500/s).
const UDP_INTERVAL: Duration = Duration::from_millis(2);

/// `state add` of `x` under another SPI and key.
fn sa_line(x: &SaInstance, spi: u32, key: &str) -> String {
    format!(
        "state add src {} dst {} proto esp spi {spi:#010x} reqid {} mode tunnel aead 'rfc4106(gcm(aes))' 0x{key} 128 replay-window 128\n",
        x.src, x.dst, x.reqid
    )
}

fn sa_delete(x: &SaInstance, spi: u32) -> String {
    format!("state delete dst {} proto esp spi {spi:#010x}\n", x.dst)
}

/// Round `k`'s key (20 bytes: AES-128 and the salt), different each round.
fn key(seed: u64, k: u32) -> String {
    let mut z = seed ^ (u64::from(k) << 32);
    (0..3)
        .map(|_| {
            z = xfrm_tests::gateway::splitmix64(z);
            format!("{z:016x}")
        })
        .collect::<String>()[..40]
        .to_string()
}

/// Each TCP transfer's size and pace: a load the gateways carry without dropping (at full
/// speed they drop, and TCP recovers: a datagram lost then would say nothing of the
/// rekeys).
const TCP_SIZE: u64 = 16 << 20;
const TCP_PACING: u64 = 20_000_000;

#[test]
fn control_rekey_under_load() {
    let test = "control_rekey_under_load";
    if !root_or_skip(test) {
        return;
    }
    init_logging();
    let _one = heavy();
    if let Err(e) = rekey_under_load() {
        panic!("{test}: {e:#}");
    }
}

fn rekey_under_load() -> Result<()> {
    let t0 = Instant::now();
    xfrm_tests::daemon::xfrm_user_bin();
    let case = Case::new("ctl-rekey", Endpoints::Hosts, Family::V4, Family::V4)
        .sa(SaSpec::new(Mode::Tunnel, GCM128));
    let net = GatewayNet::new(NetOpts::default())?;
    let cap = wire_capture(&net, &case)?;
    let mut a = start_gateway(&net, &case, Side::A)?;
    let mut b = start_gateway(&net, &case, Side::B)?;
    a.wait_ctl(Duration::from_secs(30))?;
    b.wait_ctl(Duration::from_secs(30))?;
    let r = load_and_rekey(&net, &case, &mut a, &mut b);
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
        "TIME control_rekey_under_load: {:.1?}",
        t0.elapsed()
    ));
    Ok(())
}

fn load_and_rekey(net: &GatewayNet, case: &Case, a: &mut Daemon, b: &mut Daemon) -> Result<()> {
    wait_path(net, case, &mut || {
        a.check_alive()?;
        b.check_alive()
    })?;
    // The SA from each side (its bundle has one SA), under the SPIs of each round.
    let ab = case.bundle(net, Side::A)[0].clone();
    let ba = case.bundle(net, Side::B)[0].clone();
    let spi = |x: &SaInstance, k: u32| if k == 0 { x.spi } else { x.spi + 0x10000 + k };
    let gw = |s: Side| if s == Side::A { &*a } else { &*b };
    // Each SA's key, the same at both ends: one stream of keys per direction.
    let key_of = |x: &SaInstance, k: u32| key(case.seed ^ u64::from(x.src == ab.src), k);

    let streams = DatagramStreams::start(net, case, [7101, 7102], UDP_INTERVAL);
    let stop = streams.stop.clone();
    let rekeys = std::thread::scope(|sc| -> Result<u32> {
        let stop_tcp = stop.clone();
        let tcp = sc.spawn(move || -> Result<u32> {
            let mut n = 0u32;
            while !stop_tcp.load(Ordering::Relaxed) {
                paced_transfers(net, case, 5700 + 2 * (n as u16 % 50), TCP_SIZE, TCP_PACING)?;
                n += 1;
            }
            Ok(n)
        });
        let r = (|| -> Result<u32> {
            let start = Instant::now();
            for k in 1..=ROUNDS {
                let order = if k % 2 == 1 {
                    [Side::A, Side::B]
                } else {
                    [Side::B, Side::A]
                };
                // New inbound SAs: at B the one from A, at A the one from B.
                for s in order {
                    let x = if s == Side::B { &ab } else { &ba };
                    gw(s).xfrm_ok(&["-batch", "-"], &sa_line(x, spi(x, k), &key_of(x, k)))?;
                }
                // New outbound SAs: from now on each side sends with them.
                for s in order {
                    let x = if s == Side::A { &ab } else { &ba };
                    gw(s).xfrm_ok(&["-batch", "-"], &sa_line(x, spi(x, k), &key_of(x, k)))?;
                }
                // What was sent with the old ones has arrived (a round trip is well under
                // a millisecond here); then they go, outbound first.
                std::thread::sleep(Duration::from_millis(200));
                for s in order {
                    let (out, inb) = if s == Side::A { (&ab, &ba) } else { (&ba, &ab) };
                    let del = sa_delete(out, spi(out, k - 1)) + &sa_delete(inb, spi(inb, k - 1));
                    gw(s).xfrm_ok(&["-batch", "-"], &del)?;
                }
                for s in [Side::A, Side::B] {
                    let n = gw(s).xfrm_ok(&["state", "count"], "")?;
                    if n != "SAD count 2\n" {
                        bail!("round {k}: gw-{s:?} has {n}");
                    }
                }
                let next = start + PERIOD * k;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
            Ok(ROUNDS)
        })();
        stop.store(true, Ordering::Relaxed);
        let transfers = tcp.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        let rounds = r?;
        let transfers = transfers.context("TCP transfers during the rekeys")?;
        report(&format!(
            "  {rounds} rekeys on both gateways, {transfers} TCP transfer pairs ({} MiB each way at {} MB/s) intact",
            TCP_SIZE >> 20,
            TCP_PACING / 1_000_000
        ));
        Ok(rounds)
    })?;
    a.check_alive()?;
    b.check_alive()?;
    let mut problems = Vec::new();
    let mut lost_total = 0u64;
    for t in streams.finish()? {
        report(&format!("  {t}"));
        if t.sent == 0 {
            problems.push(format!("UDP from {:?}: nothing sent", t.from));
        }
        lost_total += t.lost.len() as u64;
    }
    // The counters of the last line written after the load.
    std::thread::sleep(Duration::from_millis(1500));
    let mut gap = 0;
    for (s, d) in [(Side::A, &*a), (Side::B, &*b)] {
        let errs: Vec<_> = d
            .xfrm_counters()
            .into_iter()
            .filter(|(n, _)| n.starts_with("XfrmIn") || n.starts_with("XfrmOut"))
            .collect();
        report(&format!(
            "  gw-{s:?}: xfrm counters {errs:?}, packets the datapath took and did not pass on {}",
            d.datapath_gap()
        ));
        gap += d.datapath_gap();
        // The rekeys themselves: no packet for an SA already gone or not yet there, none
        // replayed or failing its ICV, none without an SA on output.
        if !errs.is_empty() {
            problems.push(format!("gw-{s:?}: {errs:?}"));
        }
    }
    // Not one: neither to a rekey (a window with no SA, a policy gap) nor to the plumbing
    // (a TX ring or neighbour the worker did not wait for; `gap` says which if it happens).
    if lost_total > 0 {
        problems.push(format!(
            "{lost_total} datagrams lost ({gap} of them dropped inside the datapath)"
        ));
    }
    if rekeys != ROUNDS || !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}
