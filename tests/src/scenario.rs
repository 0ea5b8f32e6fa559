//! One acceptance case end to end: the two-gateway topology, `xfrm-user run` on both
//! gateways with the case's mirror configurations, a capture on the wire, pings both ways, a
//! TCP transfer each way (concurrently) with SHA-256 compared at both ends, then the capture
//! checked (no plaintext, both bundles present) and its samples decrypted by the independent
//! peer. Every phase is timed; the times are printed (CI has 2 cores and 90 minutes for
//! everything, so they are reported, not asserted).

use std::{
    fmt::Write as _,
    path::Path,
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    capture::{Capture, CaptureOpts, CaptureReport},
    daemon::{Daemon, RunArgs},
    gateway::{Case, GatewayNet, NetOpts, Side},
    peer::{check_samples, peer_python, peer_script, stream_of},
    topology::Proc,
    traffic::{expected_sha256, ping, tcp_transfer, wait_ping, TransferReport},
};

/// A line straight to stderr (fd 2): libtest captures eprintln! of passing tests, and the
/// times must show in CI's log.
pub fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The heavy tests of one test binary run one at a time: two transfers at once on 2 cores
/// would measure each other.
pub fn heavy() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|p| p.into_inner())
}

/// Transfer size: `XFRM_GW_MIB` (MiB) overrides `default_mib`, for quick local runs.
pub fn transfer_size(default_mib: u64) -> u64 {
    std::env::var("XFRM_GW_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_mib)
        << 20
}

/// A generous bound for a transfer of `size` bytes: a stall fails the test, slowness does
/// not (no timed assertion). 2 minutes plus 1 s per MiB (1 MiB/s would be pathological).
pub fn transfer_deadline(size: u64) -> Instant {
    Instant::now() + Duration::from_secs(120 + (size >> 20))
}

/// Timings of a case, printed at the end.
#[derive(Default, Debug)]
pub struct Times {
    pub phases: Vec<(&'static str, Duration)>,
}

impl Times {
    pub fn add(&mut self, name: &'static str, since: Instant) -> Instant {
        self.phases.push((name, since.elapsed()));
        Instant::now()
    }
    pub fn total(&self) -> Duration {
        self.phases.iter().map(|p| p.1).sum()
    }
}

impl std::fmt::Display for Times {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (n, d) in &self.phases {
            write!(f, "{n} {:.1?}, ", d)?;
        }
        write!(f, "total {:.1?}", self.total())
    }
}

/// Both gateways of a case running.
pub struct Gateways {
    pub a: Daemon,
    pub b: Daemon,
}

/// `xfrm-user run` for side `s` of `case` (inside = towards the host, outside = the wire).
/// Returns once its classifier is attached to the inside interface (see
/// [`Daemon::wait_attached`]).
pub fn start_gateway(net: &GatewayNet, case: &Case, s: Side) -> Result<Daemon> {
    let mut d = spawn_gateway(net, case, s)?;
    d.wait_attached(
        net.topo.ns(net.gw(s)),
        &[&net.inside(s).ifname],
        Duration::from_secs(30),
    )?;
    Ok(d)
}

/// The lines of a gateway's configuration that start with `word` (`"policy "`, `"state "`).
pub fn config_lines(config: &str, word: &str) -> String {
    config
        .lines()
        .filter(|l| l.starts_with(word))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `xfrm-user run` for side `s` with `config` (the control tests' own), waited for until
/// its classifier is attached and its control socket answers.
pub fn start_ctl_gateway(net: &GatewayNet, s: Side, config: &str) -> Result<Daemon> {
    let mut d = Daemon::start(
        net.topo.ns(net.gw(s)),
        &format!("xfrm-user-ctl-{s:?}").to_lowercase(),
        config,
        &RunArgs {
            inside: net.inside(s).ifname.clone(),
            outside: net.outside(s).ifname.clone(),
            xdp_mode: "native",
            queues: None,
            own_process_group: false,
            extra: Vec::new(),
        },
    )?;
    d.wait_attached(
        net.topo.ns(net.gw(s)),
        &[&net.inside(s).ifname],
        Duration::from_secs(30),
    )?;
    d.wait_ctl(Duration::from_secs(30))?;
    Ok(d)
}

/// `xfrm-user run` for side `s` of `case`, without waiting for anything.
pub fn spawn_gateway(net: &GatewayNet, case: &Case, s: Side) -> Result<Daemon> {
    Daemon::start(
        net.topo.ns(net.gw(s)),
        &format!("xfrm-user-gw-{s:?}").to_lowercase(),
        &case.config(net, s),
        &RunArgs {
            inside: net.inside(s).ifname.clone(),
            outside: net.outside(s).ifname.clone(),
            xdp_mode: "native",
            queues: (net.queues > 1).then_some(net.queues),
            own_process_group: false,
            extra: Vec::new(),
        },
    )
}

/// A capture on the wire router's port towards gw-a: it sees both directions once.
pub fn wire_capture(net: &GatewayNet, case: &Case) -> Result<Capture> {
    wire_capture_at(net, case, Side::A)
}

/// A capture on the wire router's port towards the gateway of side `s`.
pub fn wire_capture_at(net: &GatewayNet, case: &Case, s: Side) -> Result<Capture> {
    Capture::start(
        net.topo.ns(net.wire),
        &net.wire_port(s).ifname,
        CaptureOpts {
            protected: case.protected_flows(net),
            natt_ports: case.natt_ports(),
            clear_payload_spis: case.integrity_only_spis(net),
            ..CaptureOpts::default()
        },
    )
}

/// Waits until the protected path answers pings both ways (gateways starting up); fails at
/// once if a gateway exits.
pub fn wait_path(
    net: &GatewayNet,
    case: &Case,
    alive: &mut dyn FnMut() -> Result<()>,
) -> Result<Duration> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(30);
    for s in [Side::A, Side::B] {
        loop {
            let step = (Instant::now() + Duration::from_secs(1)).min(deadline);
            let r = wait_ping(
                net.topo.ns(case.traffic_ns(net, s)),
                case.traffic_addr(net, s.other()),
                step,
            );
            alive()?;
            match r {
                Ok(_) => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e.context("the protected path did not come up in 30 s"))
                }
                Err(_) => {}
            }
        }
    }
    Ok(start.elapsed())
}

/// Pings both ways, `count` each, with the plaintext marker in them.
pub fn ping_both_ways(net: &GatewayNet, case: &Case, count: u32) -> Result<String> {
    let mut out = String::new();
    for s in [Side::A, Side::B] {
        let line = ping(
            net.topo.ns(case.traffic_ns(net, s)),
            case.traffic_addr(net, s.other()),
            count,
            stream_of(s).to_ascii_uppercase(),
        )?;
        let _ = write!(out, "{s:?}->{:?}: {line}; ", s.other());
    }
    Ok(out)
}

/// A TCP transfer of `size` bytes each way at once; each checked: equal byte counts and
/// SHA-256 at both ends, equal to the stream's.
pub fn transfers_both_ways(
    net: &GatewayNet,
    case: &Case,
    size: u64,
    port: u16,
) -> Result<[TransferReport; 2]> {
    let deadline = transfer_deadline(2 * size);
    let one = |s: Side| {
        tcp_transfer(
            net.topo.ns(case.traffic_ns(net, s)),
            net.topo.ns(case.traffic_ns(net, s.other())),
            case.traffic_addr(net, s.other()),
            port + if s == Side::A { 0 } else { 1 },
            stream_of(s),
            size,
            deadline,
        )
    };
    let (ra, rb) = std::thread::scope(|sc| {
        let b = sc.spawn(|| one(Side::B));
        let a = one(Side::A);
        (a, b.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    });
    let ra = ra.context("transfer A->B")?;
    let rb = rb.context("transfer B->A")?;
    for (s, r) in [(Side::A, &ra), (Side::B, &rb)] {
        if r.sent != r.received {
            bail!("{s:?}->{:?}: the ends differ: {r}", s.other());
        }
        if r.received.bytes != size || r.received.sha256 != expected_sha256(stream_of(s), size) {
            bail!("{s:?}->{:?}: not the stream that was sent: {r}", s.other());
        }
    }
    Ok([ra, rb])
}

/// The checks on a capture of a case's traffic: no leak, both bundles' outermost SPIs seen,
/// the kernel dropped (almost) nothing.
pub fn check_capture(net: &GatewayNet, case: &Case, rep: &CaptureReport) -> Result<()> {
    rep.assert_no_leak(&case.name);
    for s in [Side::A, Side::B] {
        let spi = case.bundle(net, s).last().expect("a bundle").spi;
        if rep.per_spi.get(&spi).copied().unwrap_or(0) == 0 {
            bail!(
                "no packet with SPI {spi:#x} (from {s:?}) on the wire: {}",
                rep.summary()
            );
        }
    }
    // A frame the kernel dropped before the capture read it was not checked.
    if rep.kernel_drops * 100 > rep.frames {
        bail!(
            "the capture lost more than 1% of the frames: {}",
            rep.summary()
        );
    }
    Ok(())
}

/// The whole case. `size`: bytes per direction.
pub fn run_case(case: &Case, opts: NetOpts, size: u64) -> Result<Times> {
    let mut times = Times::default();
    let t = Instant::now();
    crate::daemon::xfrm_user_bin();
    let t = times.add("build xfrm-user", t);
    eprintln!("case {} (key seed {:#x})", case.name, case.seed);
    let net = GatewayNet::new(opts)?;
    let t = times.add("topology", t);
    let cap = wire_capture(&net, case)?;
    let mut a = start_gateway(&net, case, Side::A)?;
    let mut b = start_gateway(&net, case, Side::B)?;
    let r = case_traffic(case, &net, cap, &mut a, &mut b, size, &mut times, t);
    if let Err(e) = r {
        bail!("{e:#}\n{}", daemon_logs(&[&a, &b]));
    }
    let t = Instant::now();
    for (n, d) in [("A", a), ("B", b)] {
        let log = d.log();
        let st = d.stop();
        if !st.success() {
            bail!("gateway {n}: xfrm-user run exited with {st} on SIGINT; log:\n{log}");
        }
    }
    times.add("stop", t);
    eprintln!("  times: {times}");
    Ok(times)
}

/// How many frames the XDP program on `ifname` (in `ns`) redirected, per receive queue
/// (veth's `ethtool -S` counters).
pub fn xdp_redirects_per_queue(ns: &crate::topology::Netns, ifname: &str) -> Result<Vec<u64>> {
    let out = ns.exec("ethtool", &["-S", ifname])?;
    let mut v = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((name, value)) = line.trim().split_once(": ") else {
            continue;
        };
        let Some(q) = name
            .strip_prefix("rx_queue_")
            .and_then(|r| r.strip_suffix("_xdp_redirect"))
        else {
            continue;
        };
        let q: usize = q.parse()?;
        if v.len() <= q {
            v.resize(q + 1, 0);
        }
        v[q] = value.trim().parse()?;
    }
    Ok(v)
}

/// With several queues per link: short transfers on fresh ports (new flow hashes) from
/// each host until every receive queue of both gateways' inside interfaces has handed
/// frames to its worker, each transfer checked end to end. Fails if a queue is never used
/// after 32 flows per side (the odds of that by chance are 2^-31 with two queues).
pub fn spread_over_queues(net: &GatewayNet, case: &Case) -> Result<String> {
    let mut report = String::new();
    for s in [Side::A, Side::B] {
        let inside = &net.inside(s).ifname;
        let gw = net.topo.ns(net.gw(s));
        for i in 0..32u16 {
            let per_q = xdp_redirects_per_queue(gw, inside)?;
            if per_q.len() >= net.queues as usize && per_q.iter().all(|&n| n > 0) {
                let _ = write!(report, "gw-{s:?} inside {per_q:?} after {i} extra flows; ");
                break;
            }
            if i == 31 {
                bail!("gw-{s:?}: receive queues never all used: {per_q:?}");
            }
            let size = 256 << 10;
            let r = tcp_transfer(
                net.topo.ns(case.traffic_ns(net, s)),
                net.topo.ns(case.traffic_ns(net, s.other())),
                case.traffic_addr(net, s.other()),
                6100 + i,
                stream_of(s),
                size,
                transfer_deadline(size),
            )?;
            if r.sent != r.received || r.received.sha256 != expected_sha256(stream_of(s), size) {
                bail!("extra flow {i} from {s:?}: {r}");
            }
        }
    }
    Ok(report)
}

/// The daemons' logs, for an error message.
pub fn daemon_logs(ds: &[&Daemon]) -> String {
    let mut s = String::from("logs of the gateways:");
    for d in ds {
        let _ = write!(s, "\n--- {} ---\n{}", d.config_path().display(), d.log());
    }
    s
}

#[allow(clippy::too_many_arguments)]
fn case_traffic(
    case: &Case,
    net: &GatewayNet,
    cap: Capture,
    a: &mut Daemon,
    b: &mut Daemon,
    size: u64,
    times: &mut Times,
    mut t: Instant,
) -> Result<()> {
    let up = wait_path(net, case, &mut || {
        a.check_alive()?;
        b.check_alive()
    })?;
    eprintln!("  path up after {up:.1?}");
    t = times.add("start", t);
    let p = ping_both_ways(net, case, 3)?;
    eprintln!("  ping: {p}");
    t = times.add("ping", t);
    let [ra, rb] = transfers_both_ways(net, case, size, 5001)?;
    eprintln!("  A->B {ra}\n  B->A {rb}");
    if net.queues > 1 {
        let q = spread_over_queues(net, case)?;
        eprintln!("  queues: {q}");
    }
    t = times.add("transfer", t);
    a.check_alive()?;
    b.check_alive()?;
    let rep = cap.stop()?;
    eprintln!("  wire: {}", rep.summary());
    check_capture(net, case, &rep)?;
    t = times.add("capture check", t);
    if let Some(py) = peer_python() {
        let work = std::env::temp_dir().join(format!("xfrm-gw-{}-{}", net.topo.id(), case.name));
        let c = check_samples(&py, case, net, &rep, &work)?;
        eprintln!("  peer: {c}");
        if c.from_a.blocks == 0 || c.from_b.blocks == 0 {
            bail!("the sampled packets held no transfer data: {c}");
        }
        if std::env::var_os("XFRM_GW_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&work);
        } else {
            eprintln!("  kept {}", work.display());
        }
        times.add("peer decrypt", t);
    }
    Ok(())
}

/// tests/interop/scapy_gateway.py as the gateway of side `s` (in its namespace, which stops
/// forwarding: only the script moves packets). Returns once it listens. `work`: where the SA
/// files go; `report`: where it writes its summary when stopped ([`stop_scapy`]).
pub fn start_scapy_gateway(
    net: &GatewayNet,
    case: &Case,
    s: Side,
    python: &Path,
    work: &Path,
    report: &Path,
) -> Result<Proc> {
    let tp = &net.topo;
    let gw = tp.ns(net.gw(s));
    gw.sysctl("net.ipv4.ip_forward", "0")?;
    gw.sysctl("net.ipv6.conf.all.forwarding", "0")?;
    std::fs::create_dir_all(work)?;
    let sa = |from: Side| -> Result<String> {
        let p = work.join(format!("scapy-{s:?}-sa-from-{from:?}.json"));
        xfrm_user::keyfile::write_private(&p, case.peer_json(net, from).to_string())?;
        Ok(p.display().to_string())
    };
    let (sa_in, sa_out) = (sa(s.other())?, sa(s)?);
    let mac = |m: &[u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let mut p = gw.spawn(
        &format!("scapy-gateway-{s:?}"),
        python.to_str().context("python path")?,
        &[
            peer_script("scapy_gateway.py")
                .to_str()
                .context("script path")?,
            "--sa-in",
            &sa_in,
            "--sa-out",
            &sa_out,
            "--outside",
            &net.outside(s).ifname,
            "--inside",
            &net.inside(s).ifname,
            "--outside-mac",
            &mac(&net.wire_port(s).mac),
            "--inside-mac",
            &mac(&net.host_port(s).mac),
            "--protect-src",
            &case.selector(net, s),
            "--protect-dst",
            &case.selector(net, s.other()),
            "--report",
            report.to_str().context("report path")?,
        ],
    )?;
    let ready = Instant::now() + Duration::from_secs(60);
    while !p.log().contains("ready") {
        if let Some(st) = p.try_wait() {
            bail!("scapy_gateway.py exited ({st}):\n{}", p.log());
        }
        if Instant::now() > ready {
            bail!("scapy_gateway.py not ready after 60 s:\n{}", p.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(p)
}

/// SIGTERM to a Scapy gateway; it writes its report and exits 0.
pub fn stop_scapy(p: &mut Proc) {
    let st = p.stop(libc::SIGTERM, Duration::from_secs(10));
    assert!(st.success(), "scapy_gateway.py: {st}\n{}", p.log());
}
