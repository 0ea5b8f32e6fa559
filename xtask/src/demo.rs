//! `cargo xtask run`: the two-gateway demo (the topology the gateway tests use):
//!
//! ```text
//!  host-a ──lan── gw-a ══wan══ wire ══wan══ gw-b ──lan── host-b
//!                 xfrm-user run       router     xfrm-user run
//! ```
//!
//! Both gateways run `xfrm-user run` with ESP tunnels (AES-GCM-128) between their LANs, IPv4
//! and IPv6. Once a second the demo pings across both ways in both families; a TCP transfer
//! loop moves 16 MiB one way then the other and checks SHA-256 at both ends. It shows each
//! gateway's counter lines (global and per SA, as `xfrm-user run` prints them), and a decoded
//! sample of the wire from a packet socket in the `wire` namespace (`ESP spi=… seq=… len=…`)
//! with the count of protected packets seen in clear (0 unless something is wrong). Ctrl-C
//! (or `--duration`) stops the gateways, takes their XDP programs off (`xfrm-user run` leaves
//! them attached, fail closed; `Daemon::stop` runs `xfrm-user detach`), removes their state
//! files and deletes every namespace.

use std::{
    io::{BufRead, BufReader, Seek, SeekFrom},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use xfrm_tests::{
    capture::{Capture, CaptureOpts},
    daemon::{Daemon, RunArgs},
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    traffic::{tcp_transfer, wait_ping},
};

use crate::{ebpf, setup, util};

/// Set by SIGINT/SIGTERM: the demo tears down.
pub static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// New lines of a log file since the last call.
struct Tail {
    path: std::path::PathBuf,
    pos: u64,
}

impl Tail {
    fn lines(&mut self) -> Vec<String> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return Vec::new();
        }
        let mut r = BufReader::new(f);
        let mut out = Vec::new();
        let mut line = String::new();
        while let Ok(n) = r.read_line(&mut line) {
            if n == 0 || !line.ends_with('\n') {
                break; // a partial line waits for the next round
            }
            self.pos += n as u64;
            out.push(line.trim_end().to_string());
            line.clear();
        }
        out
    }
}

fn ping_once(net: &GatewayNet, from: Side, to: IpAddr) -> bool {
    net.topo
        .ns(net.host(from))
        .command("ping")
        .args(["-c", "1", "-W", "1", "-q", &to.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn gateways(duration: Option<u64>, xdp_mode: &str) -> Result<()> {
    if !util::is_root() {
        bail!("`cargo xtask run` needs root: it creates network namespaces and loads XDP");
    }
    setup::run(&[])?;
    let bpf = ebpf::build(true)?;
    let bin = util::build_xfrm_user_release()?;

    util::section("two gateways");
    let net = GatewayNet::new(NetOpts::default())?;
    let cases = [
        Case::new("demo-v4", Endpoints::Hosts, Family::V4, Family::V4)
            .sa(SaSpec::new(Mode::Tunnel, GCM128)),
        Case::new("demo-v6", Endpoints::Hosts, Family::V6, Family::V6)
            .sa(SaSpec::new(Mode::Tunnel, GCM128))
            .spi_base(0x3000),
    ];
    let t = &net.topo;
    let addr = |p: &xfrm_tests::topology::Port| format!("{} {}", p.ipv4, p.ipv6);
    println!(
        "  host-a [{}] {}\n    ── gw-a [{}] {} | {} [{}] (xfrm-user run)\n    ══ wire [{}] {} | {} [{}] (router; capture here)\n    ══ gw-b [{}] {} | {} [{}] (xfrm-user run)\n    ── host-b [{}] {}",
        t.ns(net.host_a).name(),
        addr(&net.lan_a.a),
        t.ns(net.gw_a).name(),
        addr(&net.lan_a.b),
        addr(&net.wan_a.a),
        net.wan_a.a.ifname,
        t.ns(net.wire).name(),
        addr(&net.wan_a.b),
        addr(&net.wan_b.a),
        net.wan_b.a.ifname,
        t.ns(net.gw_b).name(),
        addr(&net.wan_b.b),
        addr(&net.lan_b.a),
        net.wan_b.b.ifname,
        t.ns(net.host_b).name(),
        addr(&net.lan_b.b),
    );
    let mut protected = Vec::new();
    for c in &cases {
        protected.extend(c.protected_flows(&net));
    }
    let cap = Capture::start(
        t.ns(net.wire),
        &net.wire_port(Side::A).ifname,
        CaptureOpts {
            protected,
            recent: 4,
            first: 0,
            random: 0,
            ..CaptureOpts::default()
        },
    )?;
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic. The gateways run in process groups
        // of their own: Ctrl-C reaches only us, and we stop them after the traffic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let mut gws = Vec::new();
    for s in [Side::A, Side::B] {
        let config: String = cases.iter().map(|c| c.config(&net, s)).collect();
        println!(
            "  gw-{s:?} configuration:\n    {}",
            config.trim().replace('\n', "\n    ")
        );
        gws.push(Daemon::start_with(
            t.ns(net.gw(s)),
            &format!("gw-{s:?}").to_lowercase(),
            &config,
            &RunArgs {
                inside: net.inside(s).ifname.clone(),
                outside: net.outside(s).ifname.clone(),
                xdp_mode: if xdp_mode == "skb" { "skb" } else { "native" },
                queues: None,
                own_process_group: true,
                extra: Vec::new(),
            },
            &bin,
            &bpf,
        )?);
    }
    for (s, g) in [Side::A, Side::B].into_iter().zip(&mut gws) {
        // Nothing is sent before the classifiers are attached: until then gw-a and gw-b are
        // plain routers and would forward it in clear.
        g.wait_attached(
            t.ns(net.gw(s)),
            &[&net.inside(s).ifname],
            Duration::from_secs(30),
        )?;
    }
    let mut tails: Vec<Tail> = gws
        .iter_mut()
        .map(|g| Tail {
            path: g.proc().log_path().to_path_buf(),
            pos: 0,
        })
        .collect();

    util::section("traffic (Ctrl-C stops)");
    let start = Instant::now();
    let up = wait_ping(
        t.ns(net.host_a),
        Family::V4.addr(net.host_port(Side::B)),
        start + Duration::from_secs(20),
    );
    if let Err(e) = &up {
        println!("  the path did not come up: {e:#}");
    }
    // The transfer loop: 16 MiB A->B, then B->A, again.
    let tcp_log = Arc::new(Mutex::new(Vec::<String>::new()));
    let transfers = Arc::new(AtomicU64::new(0));
    let result = std::thread::scope(|sc| -> Result<()> {
        let (log, n, net) = (tcp_log.clone(), transfers.clone(), &net);
        sc.spawn(move || {
            let mut from = Side::A;
            while !STOP.load(Ordering::Relaxed) {
                let to = Family::V4.addr(net.host_port(from.other()));
                let r = tcp_transfer(
                    net.topo.ns(net.host(from)),
                    net.topo.ns(net.host(from.other())),
                    to,
                    5001,
                    if from == Side::A { b'a' } else { b'b' },
                    16 << 20,
                    Instant::now() + Duration::from_secs(10),
                );
                let line = match r {
                    Ok(r) if r.sent == r.received => format!(
                        "TCP {from:?}->{:?} 16 MiB in {:.2?} ({:.0} MiB/s), SHA-256 equal at both ends",
                        from.other(),
                        r.elapsed,
                        r.mib_per_s()
                    ),
                    Ok(r) => format!("TCP {from:?}->{:?} MISMATCH: {r}", from.other()),
                    Err(e) => format!("TCP {from:?}->{:?} failed: {e:#}", from.other()),
                };
                log.lock().unwrap().push(line);
                n.fetch_add(1, Ordering::Relaxed);
                from = from.other();
            }
        });
        let mut result = Ok(());
        while !STOP.load(Ordering::Relaxed)
            && duration.is_none_or(|d| start.elapsed() < Duration::from_secs(d))
        {
            let tick = Instant::now();
            let mut pings = Vec::new();
            for from in [Side::A, Side::B] {
                for f in [Family::V4, Family::V6] {
                    let ok = ping_once(net, from, f.addr(net.host_port(from.other())));
                    pings.push(format!(
                        "{from:?}->{:?} {f:?} {}",
                        from.other(),
                        if ok { "ok" } else { "LOST" }
                    ));
                }
            }
            println!(
                "[{:>4.0}s] ping {}",
                start.elapsed().as_secs_f64(),
                pings.join(", ")
            );
            for l in tcp_log.lock().unwrap().drain(..) {
                println!("        {l}");
            }
            for (g, tail) in ["gw-a", "gw-b"].iter().zip(&mut tails) {
                // The gateway's latest report: its XDP/TC verdicts, its transform counters
                // and a line per SA in use (a report starts with `xdp inside:`).
                let lines = tail.lines();
                let from = lines
                    .iter()
                    .rposition(|l| l.starts_with("xdp inside:"))
                    .unwrap_or(lines.len().saturating_sub(2));
                for l in &lines[from..] {
                    println!("  [{g}] {l}");
                }
            }
            let live = cap.live();
            let per_sa: Vec<String> = live
                .per_spi()
                .iter()
                .map(|(spi, n)| format!("spi {spi:#06x}: {n}"))
                .collect();
            println!(
                "  [wire] {} frames, {} IPsec ({}), protected packets in clear: {}",
                live.frames.load(Ordering::Relaxed),
                live.ipsec.load(Ordering::Relaxed),
                per_sa.join(", "),
                live.leaks.load(Ordering::Relaxed)
            );
            for l in cap.recent() {
                println!("         {l}");
            }
            for g in &mut gws {
                if let Err(e) = g.check_alive() {
                    result = Err(e);
                }
            }
            if result.is_err() {
                break;
            }
            if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
                std::thread::sleep(rest);
            }
        }
        STOP.store(true, Ordering::Relaxed);
        result
    });
    util::section("teardown");
    // Traffic has stopped (the scope joined its threads): the capture ends while both
    // gateways still run, then the gateways stop.
    let rep = cap.stop()?;
    let mut unclean = Vec::new();
    for (g, d) in ["gw-a", "gw-b"].iter().zip(gws) {
        let st = d.stop();
        println!("  {g}: xfrm-user run exited ({st})");
        if !st.success() {
            unclean.push(format!("{g}: {st}"));
        }
    }
    println!("  wire: {}", rep.summary());
    for (why, f) in &rep.leak_samples {
        let parsed = xfrm_tests::capture::parse(&f.data, &[]);
        println!(
            "  IN CLEAR: {why}: {} [{}]",
            xfrm_tests::capture::describe(&f.data, parsed),
            xfrm_tests::capture::hex(&f.data[..f.data.len().min(64)])
        );
    }
    println!(
        "  {} TCP transfers; demo ran {:.0?}",
        transfers.load(Ordering::Relaxed),
        start.elapsed()
    );
    drop(net);
    println!("demo: torn down");
    result?;
    if !unclean.is_empty() {
        bail!("a gateway did not stop cleanly: {}", unclean.join("; "));
    }
    if rep.leaks > 0 {
        bail!("{} protected packets crossed the wire in clear", rep.leaks);
    }
    Ok(())
}
