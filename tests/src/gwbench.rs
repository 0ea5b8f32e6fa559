//! The gateway benchmark behind `cargo xtask bench --gateway`: the demo's topology
//! (host-a — gw-a ══ wire ══ gw-b — host-b, [`GatewayNet`]) and iperf3 from host-a to
//! host-b through each [`Route`] in turn, every figure with the command that made it.
//!
//! A fresh topology per route. Every route but the offloads-on one runs with TSO, GSO and
//! GRO off on every interface (MTU-sized packets all the way), so that they differ only in
//! what the gateways do. The daemon's CPU time per packet is its utime + stime
//! (/proc/PID/stat) over an iperf3 run, both gateways together, divided by the packets
//! both gateways transmitted meanwhile (their interfaces' tx counters). Traffic stays in
//! the bench's own namespaces. This measures; it asserts nothing about speed.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    daemon::{Daemon, RunArgs},
    gateway::{Case, Endpoints, Family, GatewayNet, Mode, NetOpts, SaSpec, Side, GCM128},
    topology::Netns,
    traffic::wait_ping,
};

/// What carries the traffic between the two LANs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// (a) The kernel forwards, no encryption, TSO/GSO/GRO on.
    KernelOffloadsOn,
    /// (a) The same with TSO/GSO/GRO off: per-packet forwarding.
    KernelOffloadsOff,
    /// (b) `xfrm-user run --bench-null-transform`: XDP → AF_XDP → worker → TX, no ESP.
    NullTransform,
    /// (c) `xfrm-user run`, ESP tunnel AES-GCM-128, one queue.
    Esp,
    /// (d) The same with `--queues 2` (two queues on every link).
    EspQueues2,
    /// (e) ESP as (c), with [`SCALE_SAS`] SAs and [`SCALE_POLICIES`] policies per direction
    /// loaded on both gateways ([`scale_config`]).
    EspScale,
}

/// SAs loaded on each gateway in route (e), the traffic's two among them: what the XDP
/// SA table holds (`xfrm_common::MAX_SAS`).
pub const SCALE_SAS: usize = 65_536;
/// Policies per direction (out, in, fwd) in route (e), the traffic's among them: what each
/// XDP policy table holds (`xfrm_common::MAX_POLICIES`).
pub const SCALE_POLICIES: usize = 1_024;

impl Route {
    pub const ALL: [Route; 6] = [
        Route::KernelOffloadsOn,
        Route::KernelOffloadsOff,
        Route::NullTransform,
        Route::Esp,
        Route::EspQueues2,
        Route::EspScale,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Route::KernelOffloadsOn => "(a) kernel forwarding, TSO/GSO/GRO on",
            Route::KernelOffloadsOff => "(a) kernel forwarding, TSO/GSO/GRO off",
            Route::NullTransform => "(b) xfrm-user, null transform (no ESP)",
            Route::Esp => "(c) xfrm-user, ESP AES-GCM-128",
            Route::EspQueues2 => "(d) xfrm-user, ESP AES-GCM-128, --queues 2",
            Route::EspScale => {
                "(e) xfrm-user, ESP AES-GCM-128, 65 536 SAs and 3 x 1 024 policies loaded"
            }
        }
    }

    /// The name in the summary lines.
    pub fn key(self) -> &'static str {
        match self {
            Route::KernelOffloadsOn => "kernel_offloads_on",
            Route::KernelOffloadsOff => "kernel_offloads_off",
            Route::NullTransform => "null",
            Route::Esp => "esp",
            Route::EspQueues2 => "esp_queues2",
            Route::EspScale => "esp_64k_sas",
        }
    }

    fn queues(self) -> u32 {
        if self == Route::EspQueues2 {
            2
        } else {
            1
        }
    }

    pub fn runs_daemon(self) -> bool {
        !matches!(self, Route::KernelOffloadsOn | Route::KernelOffloadsOff)
    }
}

/// One iperf3 run from host-a to host-b.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    Tcp {
        streams: u32,
    },
    /// UDP at iperf3's unlimited rate (`-b 0`), `len` bytes of UDP payload (`-l`).
    Udp {
        len: u32,
    },
}

impl Load {
    pub const ALL: [Load; 4] = [
        Load::Tcp { streams: 1 },
        Load::Tcp { streams: 4 },
        Load::Udp { len: 64 },
        Load::Udp { len: 1400 },
    ];

    pub fn label(self) -> String {
        match self {
            Load::Tcp { streams: 1 } => "TCP, 1 stream".into(),
            Load::Tcp { streams } => format!("TCP, {streams} streams"),
            Load::Udp { len } => format!("UDP, {len} B payload"),
        }
    }

    pub fn key(self) -> String {
        match self {
            Load::Tcp { streams } => format!("tcp{streams}"),
            Load::Udp { len } => format!("udp{len}"),
        }
    }

    fn iperf3_args(self, dst: &str, port: u16, secs: u32) -> Vec<String> {
        let mut a: Vec<String> = ["-c", dst, "-p", &port.to_string(), "-t", &secs.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(["-J".into(), "--connect-timeout".into(), "5000".into()]);
        match self {
            Load::Tcp { streams } => a.extend(["-P".into(), streams.to_string()]),
            Load::Udp { len } => {
                a.extend(["-u", "-b", "0", "-l"].map(String::from));
                a.push(len.to_string());
            }
        }
        a
    }
}

/// One figure of the table.
#[derive(Clone, Debug)]
pub struct Figure {
    pub route: Route,
    pub load: Load,
    /// What host-b received.
    pub mbit_s: f64,
    /// UDP: datagrams host-b received per second, and the share lost.
    pub udp: Option<(f64, f64)>,
    /// TCP: the sender's retransmissions.
    pub retransmits: Option<u64>,
    /// Both daemons' CPU time over the run per packet both gateways transmitted (routes
    /// through xfrm-user), and the user-space part of it (the kernel part includes the
    /// receiving namespaces' softirq work that veth runs inside the daemon's transmit).
    pub cpu_ns_per_packet: Option<f64>,
    pub user_ns_per_packet: Option<f64>,
    /// The daemons' sleeps (voluntary context switches, all threads) per packet transmitted:
    /// how often a worker went to sleep in poll() and had to be woken.
    pub wakeups_per_packet: Option<f64>,
    /// The client's command line.
    pub command: String,
    /// Which round of `Options::rounds` (0-based).
    pub round: u32,
}

impl Figure {
    /// The figure the ratios compare: Mbit/s for TCP, packets per second for UDP.
    pub fn value(&self) -> f64 {
        match self.udp {
            Some((pps, _)) => pps,
            None => self.mbit_s,
        }
    }
}

pub struct Options {
    pub routes: Vec<Route>,
    pub loads: Vec<Load>,
    /// Seconds per iperf3 run.
    pub secs: u32,
    pub bin: PathBuf,
    pub bpf: PathBuf,
    /// Times every route runs, one after the other each time: the ratios are the median
    /// over the rounds of each round's ratio (a shared machine's load moves between routes).
    pub rounds: u32,
    /// Record `perf record -a -g` into this directory during each TCP 1-stream run through
    /// xfrm-user, and report where the CPU went.
    pub perf: Option<PathBuf>,
}

/// What a whole run found, and how each route was set up.
#[derive(Default)]
pub struct Report {
    pub figures: Vec<Figure>,
    /// Per route: the gateways' command line, or what the kernel path was.
    pub setups: Vec<(Route, String)>,
    /// Per route through xfrm-user: from the daemons' start to their programs attached
    /// (the slower of the two).
    pub startups: Vec<(Route, Duration)>,
}

/// Runs every route with every load, `opts.rounds` times, reporting progress through `log`.
pub fn run(opts: &Options, log: &mut dyn FnMut(&str)) -> Result<Report> {
    let mut rep = Report::default();
    let rounds = opts.rounds.max(1);
    for round in 0..rounds {
        for &route in &opts.routes {
            if rounds > 1 {
                log(&format!(
                    "{} (round {}/{rounds}):",
                    route.label(),
                    round + 1
                ));
            } else {
                log(&format!("{}:", route.label()));
            }
            let mut startups = Vec::new();
            let (setup, mut figs) = run_route(opts, route, log, &mut startups)
                .with_context(|| format!("route {}", route.label()))?;
            for f in &mut figs {
                f.round = round;
            }
            if round == 0 {
                rep.setups.push((route, setup));
                rep.startups.extend(startups);
            }
            rep.figures.extend(figs);
        }
    }
    Ok(rep)
}

fn run_route(
    opts: &Options,
    route: Route,
    log: &mut dyn FnMut(&str),
    startups: &mut Vec<(Route, Duration)>,
) -> Result<(String, Vec<Figure>)> {
    let offloads = route == Route::KernelOffloadsOn;
    let net = GatewayNet::new(NetOpts {
        // TSO needs TX checksum offload on the hosts' links.
        host_tx_checksum: offloads,
        mtu: 1500,
        queues: route.queues(),
    })?;
    set_offloads(&net, offloads)?;
    let t = &net.topo;
    let mut daemons = Vec::new();
    let setup = if route.runs_daemon() {
        let case = Case::new("bench", Endpoints::Hosts, Family::V4, Family::V4)
            .sa(SaSpec::new(Mode::Tunnel, GCM128));
        let null = route == Route::NullTransform;
        if null {
            // The wire then carries the hosts' own packets, which it must route.
            net.route_lans_through_wire()?;
        }
        let mut line = String::new();
        let mut configs = Vec::new();
        for s in [Side::A, Side::B] {
            let config = match route {
                Route::NullTransform => null_config(&case, &net, s),
                Route::EspScale => scale_config(&case, &net, s),
                _ => case.config(&net, s),
            };
            configs.push(config_counts(&config));
            let args = RunArgs {
                inside: net.inside(s).ifname.clone(),
                outside: net.outside(s).ifname.clone(),
                xdp_mode: "native",
                queues: (route.queues() > 1).then_some(route.queues()),
                own_process_group: false,
                extra: if null {
                    vec!["--bench-null-transform".into()]
                } else {
                    Vec::new()
                },
            };
            let label = format!("gw-{s:?}").to_lowercase();
            let d = Daemon::start_with(
                t.ns(net.gw(s)),
                &label,
                &config,
                &args,
                &opts.bin,
                &opts.bpf,
            )?;
            if s == Side::A {
                line = format!(
                    "ip netns exec {} xfrm-user run --config FILE --inside {} --outside {} \
                     --xdp-mode native{}{} (gw-b alike)",
                    t.ns(net.gw(s)).name(),
                    args.inside,
                    args.outside,
                    args.queues
                        .map(|q| format!(" --queues {q}"))
                        .unwrap_or_default(),
                    if null { " --bench-null-transform" } else { "" },
                );
            }
            daemons.push(d);
        }
        let mut startup = Duration::ZERO;
        for (s, d) in [Side::A, Side::B].into_iter().zip(&mut daemons) {
            let took = d.wait_attached(
                t.ns(net.gw(s)),
                &[&net.inside(s).ifname],
                Duration::from_secs(120),
            )?;
            startup = startup.max(took);
        }
        // What the daemons say they loaded (their start line) is what their files hold:
        // route (e) runs with its whole table.
        if route == Route::EspScale && configs[0] != (SCALE_SAS, SCALE_POLICIES) {
            bail!(
                "route (e)'s configuration holds (SAs, out policies) {:?}",
                configs[0]
            );
        }
        for ((s, d), &want) in [Side::A, Side::B]
            .into_iter()
            .zip(&mut daemons)
            .zip(&configs)
        {
            let end = Instant::now() + Duration::from_secs(30);
            let got = loop {
                if let Some(c) = loaded_counts(&d.log()) {
                    break c;
                }
                d.check_alive()?;
                if Instant::now() > end {
                    bail!("gw-{s:?}: no start line after 30 s; log:\n{}", d.log());
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if got != want {
                bail!("gw-{s:?} loaded (SAs, out policies) {got:?}, not {want:?}");
            }
        }
        let (sas, pols) = configs[0];
        log(&format!(
            "  loaded {sas} SAs and {pols} out policies per gateway; attached {:.1} s after \
             start (the slower gateway)",
            startup.as_secs_f64()
        ));
        startups.push((route, startup));
        line
    } else {
        net.route_lans_through_wire()?;
        format!(
            "no daemon: the gateways' and the wire's kernels forward (ethtool -K IF tso {0} \
             gso {0} gro {0} on every interface)",
            if offloads { "on" } else { "off" }
        )
    };
    log(&format!("  {setup}"));
    let dst = Family::V4.addr(net.host_port(Side::B));
    wait_ping(
        t.ns(net.host_a),
        dst,
        Instant::now() + Duration::from_secs(20),
    )
    .context("the path did not come up")?;
    let mut figs = Vec::new();
    for &load in &opts.loads {
        let profile = opts
            .perf
            .as_ref()
            .filter(|_| route.runs_daemon() && load == Load::Tcp { streams: 1 })
            .map(|dir| dir.join(format!("{}-{}.data", route.key(), load.key())));
        let f = measure(
            &net,
            route,
            load,
            opts.secs,
            &mut daemons,
            profile.as_deref(),
        )?;
        log(&format!("  {}: {}", load.label(), describe(&f)));
        if let Some(file) = &profile {
            log(&perf_summary(file)?);
        }
        figs.push(f);
    }
    if route.runs_daemon() {
        // The workers, not the kernels, must have carried the traffic, both ways.
        for (s, d) in [Side::A, Side::B].into_iter().zip(&mut daemons) {
            d.check_alive()?;
            match worker_counts(&d.log()) {
                Some((wire, inside)) if wire > 0 && inside > 0 => {}
                c => bail!(
                    "gw-{s:?}: its workers did not forward both ways (to the wire, to the \
                     inside: {c:?}); log:\n{}",
                    d.log()
                ),
            }
        }
    }
    for d in daemons {
        let st = d.stop();
        if !st.success() {
            log(&format!("  a gateway did not stop cleanly: {st}"));
        }
    }
    Ok((setup, figs))
}

/// `ethtool -K IF tso X gso X gro X` on both ends of every link.
fn set_offloads(net: &GatewayNet, on: bool) -> Result<()> {
    let v = if on { "on" } else { "off" };
    for l in net.topo.links() {
        for p in [&l.a, &l.b] {
            net.topo
                .ns(p.ns)
                .exec("ethtool", &["-K", &p.ifname, "tso", v, "gso", v, "gro", v])?;
        }
    }
    Ok(())
}

/// The ESP case's configuration for the null transform: its SAs and out policy, and the far
/// side's traffic as an out policy too instead of the in/fwd pair, so that the outside
/// program hands the clear text from the wire to a worker (bench.rs in xfrm-user), where
/// an in/fwd policy requiring ESP would have refused it.
pub fn null_config(case: &Case, net: &GatewayNet, s: Side) -> String {
    case.config(net, s)
        .lines()
        .filter(|l| !l.contains(" dir in "))
        .map(|l| l.replace(" dir fwd ", " dir out ") + "\n")
        .collect()
}

/// The route (e) configuration of side `s`: the case's own ([`Case::config`]) within
/// [`SCALE_SAS`] SAs and [`SCALE_POLICIES`] policies per direction. The others are SA
/// pairs between the same two gateways (each its own SPI, reqid and key, as an IKE daemon
/// with many child SAs to one peer installs them) and site-to-site policies to remote
/// /24s of 10.128.0.0/14 that no traffic uses. The case's SAs sit in the middle of the
/// SA list and its policies in the middle of each direction's lookup order, where a scan
/// would meet half the table first. Both gateways load the same SAs.
pub fn scale_config(case: &Case, net: &GatewayNet, s: Side) -> String {
    let own = case.config(net, s);
    let (states, policies): (Vec<&str>, Vec<&str>) = own
        .lines()
        .filter(|l| !l.starts_with('#'))
        .partition(|l| l.starts_with("state "));
    let pairs = (SCALE_SAS - states.len()) / 2;
    let addr = |side| case.outer.addr(net.outside(side));
    // Pair k: from A (SPI 0x0010_0000 + k, reqid likewise) and from B (0x0020_0000 + k).
    let sa = |k: usize, from: Side| {
        let base = if from == Side::A {
            0x0010_0000
        } else {
            0x0020_0000
        };
        (base + k as u32, addr(from), addr(from.other()))
    };
    let mut c = String::with_capacity(SCALE_SAS * 200);
    let _ = writeln!(
        c,
        "# {} route (e): {SCALE_SAS} SAs, {SCALE_POLICIES} policies per direction",
        case.name
    );
    let state = |c: &mut String, k: usize, from: Side| {
        let (id, src, dst) = sa(k, from);
        let key = crate::gateway::splitmix64(u64::from(id) ^ case.seed);
        let _ = writeln!(
            c,
            "state add src {src} dst {dst} proto esp spi {id:#010x} reqid {id} mode tunnel \
             aead 'rfc4106(gcm(aes))' 0x{key:016x}{:016x}{id:08x} 128 replay-window 128",
            crate::gateway::splitmix64(key)
        );
    };
    for k in 0..pairs {
        if k == pairs / 2 {
            for l in &states {
                c.push_str(l);
                c.push('\n');
            }
        }
        state(&mut c, k, Side::A);
        state(&mut c, k, Side::B);
    }
    let here = case.selector(net, s);
    let others = SCALE_POLICIES - 1;
    for dir in ["out", "in", "fwd"] {
        for k in 0..others {
            if k == others / 2 {
                for l in policies
                    .iter()
                    .filter(|l| l.contains(&format!(" dir {dir} ")))
                {
                    c.push_str(l);
                    c.push('\n');
                }
            }
            let remote = format!("10.{}.{}.0/24", 128 + k / 256, k % 256);
            let from = if dir == "out" { s } else { s.other() };
            let (id, src, dst) = sa(k, from);
            let (ssel, dsel) = if dir == "out" {
                (&here, &remote)
            } else {
                (&remote, &here)
            };
            let _ = writeln!(
                c,
                "policy add src {ssel} dst {dsel} dir {dir} priority 100 tmpl src {src} \
                 dst {dst} proto esp reqid {id} mode tunnel"
            );
        }
    }
    c
}

/// SAs and out policies of a configuration file.
fn config_counts(config: &str) -> (usize, usize) {
    let lines = |f: &dyn Fn(&str) -> bool| config.lines().filter(|l| f(l)).count();
    (
        lines(&|l| l.starts_with("state add ")),
        lines(&|l| l.starts_with("policy add ") && l.contains(" dir out ")),
    )
}

/// SAs and out policies a daemon loaded, from its start line ("…, 2 SAs, 1 out
/// policies, …").
pub fn loaded_counts(log: &str) -> Option<(usize, usize)> {
    let line = log.lines().find(|l| l.contains(" out policies, "))?;
    let before = |key: &str| -> Option<usize> {
        line.split(key)
            .next()?
            .rsplit([' ', ','])
            .next()?
            .parse()
            .ok()
    };
    Some((before(" SAs, ")?, before(" out policies, ")?))
}

/// What the daemon's latest counter line says its workers sent to the wire and to the inside.
pub fn worker_counts(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().rev().find(|l| l.contains(" -> wire "))?;
    let after = |key: &str| -> Option<u64> {
        line.split(key)
            .nth(1)?
            .split([',', ' '])
            .next()?
            .parse()
            .ok()
    };
    Some((after(" -> wire ")?, after(" -> inside ")?))
}

/// CPU ticks of the daemons (user, system) and packets the gateways transmitted, at one
/// moment.
struct Sample {
    user: u64,
    system: u64,
    /// Voluntary context switches of every daemon thread: each is a sleep in poll() that a
    /// packet (or a timeout) ended.
    wakeups: u64,
    packets: u64,
}

fn sample(net: &GatewayNet, daemons: &mut [Daemon]) -> Result<Option<Sample>> {
    if daemons.is_empty() {
        return Ok(None);
    }
    let mut s = Sample {
        user: 0,
        system: 0,
        wakeups: 0,
        packets: 0,
    };
    for d in daemons.iter_mut() {
        let pid = d.proc().pid().context("the daemon has exited")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("/proc/{pid}/stat"))?;
        let (user, system) = cpu_ticks(&stat).context("/proc/PID/stat: no utime/stime")?;
        s.user += user;
        s.system += system;
        s.wakeups += voluntary_switches(pid)?;
    }
    for side in [Side::A, Side::B] {
        let ns = net.topo.ns(net.gw(side));
        for p in [net.inside(side), net.outside(side)] {
            s.packets += tx_packets(ns, &p.ifname)?;
        }
    }
    Ok(Some(s))
}

/// utime and stime (fields 14 and 15 of /proc/PID/stat, all threads), in clock ticks.
pub fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    // The command name (field 2) may hold spaces: count from the closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

/// voluntary_ctxt_switches summed over the threads of `pid` (/proc/PID/task/*/status).
fn voluntary_switches(pid: u32) -> Result<u64> {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        // A thread may end between the listing and the read.
        if let Ok(status) = std::fs::read_to_string(t?.path().join("status")) {
            n += status_field(&status, "voluntary_ctxt_switches:").unwrap_or(0);
        }
    }
    Ok(n)
}

/// A numeric field of /proc/PID/status (`name` with its colon).
pub fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

fn tx_packets(ns: &Netns, ifname: &str) -> Result<u64> {
    let out = ns.ip(&["-j", "-s", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j -s link")?;
    v[0]["stats64"]["tx"]["packets"]
        .as_u64()
        .context("ip -j -s link: no stats64.tx.packets")
}

fn measure(
    net: &GatewayNet,
    route: Route,
    load: Load,
    secs: u32,
    daemons: &mut [Daemon],
    profile: Option<&Path>,
) -> Result<Figure> {
    const PORT: u16 = 5201;
    let t = &net.topo;
    let (ha, hb) = (t.ns(net.host_a), t.ns(net.host_b));
    let mut server = hb.spawn(
        "iperf3-server",
        "iperf3",
        &["-s", "-1", "-p", &PORT.to_string()],
    )?;
    let deadline = Instant::now() + Duration::from_secs(5);
    // (Its "listening" line sits in stdio's buffer: ask the socket table instead.)
    while !listening(hb, PORT) {
        if server.try_wait().is_some() || Instant::now() > deadline {
            bail!(
                "iperf3 -s did not start (`cargo xtask setup` installs iperf3): {}",
                server.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let dst = Family::V4.addr(net.host_port(Side::B)).to_string();
    let args = load.iperf3_args(&dst, PORT, secs);
    let command = format!("ip netns exec {} iperf3 {}", ha.name(), args.join(" "));
    let before = sample(net, daemons)?;
    let mut perf = match profile {
        Some(file) => Some(
            Command::new("perf")
                .args(["record", "-a", "-g", "-q", "-o"])
                .arg(file)
                .args(["--", "sleep", &secs.saturating_sub(1).max(1).to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("perf record (Debian's linux-perf)")?,
        ),
        None => None,
    };
    let json = run_bounded(
        ha.command("iperf3").args(&args),
        Duration::from_secs(u64::from(secs) + 30),
    )
    .with_context(|| command.clone())?;
    let after = sample(net, daemons)?;
    if let Some(p) = &mut perf {
        let st = p.wait().context("perf record")?;
        if !st.success() {
            bail!("perf record failed: {st}");
        }
    }
    drop(server);
    let mut f = parse_iperf3(&json, load).with_context(|| format!("{command}: its output"))?;
    f.route = route;
    f.command = command;
    if let (Some(b), Some(a)) = (before, after) {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let packets = a.packets.saturating_sub(b.packets);
        if packets > 0 {
            let per_packet = |ticks: u64| ticks as f64 / hz * 1e9 / packets as f64;
            let user = a.user.saturating_sub(b.user);
            let system = a.system.saturating_sub(b.system);
            f.cpu_ns_per_packet = Some(per_packet(user + system));
            f.user_ns_per_packet = Some(per_packet(user));
            f.wakeups_per_packet =
                Some(a.wakeups.saturating_sub(b.wakeups) as f64 / packets as f64);
        }
    }
    Ok(f)
}

/// Where the CPU went during a recorded run: the share of each thread name of the whole
/// machine, then the workers' samples by kind of code (the kernel, xfrm-user, the XDP
/// programs, the rest) and by symbol.
fn perf_summary(file: &Path) -> Result<String> {
    let report = |args: &[&str]| -> Result<Vec<String>> {
        let out = Command::new("perf")
            .args(["report", "--stdio", "--no-children", "-g", "none", "-i"])
            .arg(file)
            .args(args)
            .output()
            .context("perf report")?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
            .map(str::to_string)
            .collect())
    };
    let threads = report(&["--sort", "comm", "--percent-limit", "1"])?;
    let symbols = report(&["--comm", "xfrm-worker-0", "--sort", "dso,sym"])?;
    let kinds = perf_kinds(&symbols);
    let mut s = format!(
        "  perf record -a -g -o {} (the whole machine), by thread:\n",
        file.display()
    );
    for l in &threads {
        let _ = writeln!(s, "    {l}");
    }
    let _ = writeln!(
        s,
        "  the workers (xfrm-worker-0 of both gateways), by kind of code:"
    );
    for (kind, pct) in kinds {
        let _ = writeln!(s, "    {pct:6.2}%  {kind}");
    }
    let _ = writeln!(s, "  the workers, symbols above 0.8 %:");
    for l in symbols
        .iter()
        .filter(|l| percent(l).is_some_and(|p| p >= 0.8))
    {
        let _ = writeln!(s, "    {l}");
    }
    Ok(s)
}

/// The leading "12.34%" of a perf report line.
fn percent(line: &str) -> Option<f64> {
    line.split_whitespace()
        .next()?
        .strip_suffix('%')?
        .parse()
        .ok()
}

/// `perf report --sort dso,sym` lines summed by kind of code, in a fixed order.
pub fn perf_kinds(lines: &[String]) -> [(&'static str, f64); 4] {
    let mut k = [
        ("kernel", 0.0),
        ("xfrm-user (user space)", 0.0),
        ("XDP programs", 0.0),
        ("other user space (libc, vDSO)", 0.0),
    ];
    for l in lines {
        let (Some(p), Some(dso)) = (percent(l), l.split_whitespace().nth(1)) else {
            continue;
        };
        let i = if dso.starts_with("[kernel") {
            0
        } else if dso == "xfrm-user" {
            1
        } else if dso.starts_with("bpf_prog_") {
            2
        } else {
            3
        };
        k[i].1 += p;
    }
    k
}

/// Is a TCP socket listening on `port` in `ns` (`ss -Hltn sport = :PORT`)?
fn listening(ns: &Netns, port: u16) -> bool {
    ns.command("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
}

/// Runs `cmd` with its stdout to a file, killing it (by pid) after `limit`; its stdout.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<String> {
    let path = std::env::temp_dir().join(format!("xfrm-gwbench-{}.out", std::process::id()));
    let file =
        std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(file)
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .context("start iperf3 (`cargo xtask setup` installs it)")?;
    let end = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&path);
            bail!("no result after {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    if !status.success() {
        bail!("{status}: {}", out.trim());
    }
    Ok(out)
}

/// The receiver's figures from `iperf3 -J` of the client (3.12: `end.sum_received`, and for
/// UDP the datagrams the server counted and lost).
pub fn parse_iperf3(json: &str, load: Load) -> Result<Figure> {
    let v: serde_json::Value = serde_json::from_str(json).context("not JSON")?;
    if let Some(e) = v["error"].as_str() {
        bail!("iperf3: {e}");
    }
    let rx = &v["end"]["sum_received"];
    let num = |x: &serde_json::Value, k: &str| -> Result<f64> {
        x[k].as_f64()
            .with_context(|| format!("no end.sum_received.{k}"))
    };
    let mbit_s = num(rx, "bits_per_second")? / 1e6;
    let (udp, retransmits) = match load {
        Load::Udp { .. } => {
            let got = num(rx, "packets")? - num(rx, "lost_packets")?;
            let secs = num(rx, "seconds")?;
            if secs <= 0.0 {
                bail!("end.sum_received.seconds is 0");
            }
            (Some((got.max(0.0) / secs, num(rx, "lost_percent")?)), None)
        }
        Load::Tcp { .. } => (None, v["end"]["sum_sent"]["retransmits"].as_u64()),
    };
    Ok(Figure {
        route: Route::KernelOffloadsOff,
        load,
        mbit_s,
        udp,
        retransmits,
        cpu_ns_per_packet: None,
        user_ns_per_packet: None,
        wakeups_per_packet: None,
        command: String::new(),
        round: 0,
    })
}

fn describe(f: &Figure) -> String {
    let mut s = format!("{:.0} Mbit/s", f.mbit_s);
    if let Some((pps, loss)) = f.udp {
        let _ = write!(s, ", {pps:.0} pkt/s received, {loss:.1} % lost");
    }
    if let Some(r) = f.retransmits {
        let _ = write!(s, ", {r} retransmits");
    }
    if let (Some(c), Some(u)) = (f.cpu_ns_per_packet, f.user_ns_per_packet) {
        let _ = write!(s, ", daemons {c:.0} ns CPU/packet ({u:.0} ns user)");
    }
    if let Some(w) = f.wakeups_per_packet {
        let _ = write!(s, ", {w:.3} wake-ups/packet");
    }
    s
}

impl Report {
    fn find(&self, r: Route, l: Load, round: u32) -> Option<&Figure> {
        self.figures
            .iter()
            .find(|f| f.route == r && f.load == l && f.round == round)
    }

    /// How many rounds the figures come from.
    fn rounds(&self) -> u32 {
        self.figures.iter().map(|f| f.round + 1).max().unwrap_or(0)
    }

    /// A figure's route, with its round when there are several.
    fn route_label(&self, f: &Figure) -> String {
        if self.rounds() > 1 {
            format!("{} (round {})", f.route.label(), f.round + 1)
        } else {
            f.route.label().to_string()
        }
    }

    /// The table (Markdown), one row per route and load.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| route | load | Mbit/s received | packets/s received | loss | daemons' CPU per packet (user) | wake-ups per packet |\n\
             |---|---|---:|---:|---:|---:|---:|\n",
        );
        for f in &self.figures {
            let (pps, loss) = match f.udp {
                Some((p, l)) => (format!("{p:.0}"), format!("{l:.1} %")),
                None => ("—".into(), "—".into()),
            };
            let cpu = match (f.cpu_ns_per_packet, f.user_ns_per_packet) {
                (Some(c), Some(u)) => format!("{c:.0} ns ({u:.0} ns)"),
                _ => "—".into(),
            };
            let wake = f
                .wakeups_per_packet
                .map_or("—".into(), |w| format!("{w:.3}"));
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {pps} | {loss} | {cpu} | {wake} |",
                self.route_label(f),
                f.load.label(),
                f.mbit_s
            );
        }
        s
    }

    /// Each route's setup and each figure's command.
    pub fn commands(&self) -> String {
        let mut s = String::new();
        for (r, setup) in &self.setups {
            let _ = writeln!(s, "{}: {setup}", r.label());
            for f in self
                .figures
                .iter()
                .filter(|f| f.route == *r && f.round == 0)
            {
                let _ = writeln!(s, "  {}: {}", f.load.label(), f.command);
            }
        }
        s
    }

    /// `ratio_*=x` lines (ESP over the null transform, ESP over per-packet kernel
    /// forwarding, two queues over one, 64k SAs over one pair) and `cpu_ns_per_packet_*=x`,
    /// per load; `startup_s_*=x` per route through xfrm-user. With several rounds a ratio is
    /// the median of the rounds' ratios, which follow it (`rounds=a,b,..`), and the CPU lines
    /// name their round.
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        let rounds = self.rounds();
        let pairs = [
            ("esp_vs_null", Route::Esp, Route::NullTransform),
            (
                "esp_vs_kernel_offloads_off",
                Route::Esp,
                Route::KernelOffloadsOff,
            ),
            ("queues2_vs_1", Route::EspQueues2, Route::Esp),
            ("64k_sas_vs_1_sa", Route::EspScale, Route::Esp),
        ];
        for (name, num, den) in pairs {
            for l in Load::ALL {
                let per_round: Vec<f64> = (0..rounds)
                    .filter_map(|k| match (self.find(num, l, k), self.find(den, l, k)) {
                        (Some(n), Some(d)) if d.value() > 0.0 => Some(n.value() / d.value()),
                        _ => None,
                    })
                    .collect();
                let Some(m) = median(&per_round) else {
                    continue;
                };
                let mut line = format!("ratio_{name}_{}={m:.3}", l.key());
                if rounds > 1 {
                    let each: Vec<String> = per_round.iter().map(|r| format!("{r:.3}")).collect();
                    let _ = write!(line, " rounds={}", each.join(","));
                }
                out.push(line);
            }
        }
        for f in &self.figures {
            if let (Some(c), Some(u)) = (f.cpu_ns_per_packet, f.user_ns_per_packet) {
                let (r, l) = (f.route.key(), f.load.key());
                let w = f.wakeups_per_packet.unwrap_or(0.0);
                let round = if rounds > 1 {
                    format!("_round{}", f.round + 1)
                } else {
                    String::new()
                };
                out.push(format!(
                    "cpu_ns_per_packet_{r}_{l}{round}={c:.0} user={u:.0} wakeups={w:.3}"
                ));
            }
        }
        for (r, d) in &self.startups {
            out.push(format!("startup_s_{}={:.1}", r.key(), d.as_secs_f64()));
        }
        out
    }
}

/// The median (the mean of the middle two for an even count); None for no values.
fn median(v: &[f64]) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_cpu_ticks() {
        let stat = "4242 (xfrm user) S 1 4242 4242 0 -1 4194560 500 0 0 0 731 269 0 0 20 0 3 0 \
                    100 1000 100 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some((731, 269)));
        assert_eq!(cpu_ticks("1 (x) S"), None);
    }

    #[test]
    fn perf_lines_by_kind() {
        let lines: Vec<String> = [
            "9.33%  [kernel.kallsyms]  [k] __pi_memcpy",
            "2.11%  xfrm-user  [.] xfrm_user::crypto::gcm_vaes256::Vaes256Gcm::crypt",
            "0.59%  bpf_prog_75306f4700351c1c_xfrm_outside  [k] bpf_prog_75306f4700351c1c_xfrm_outside",
            "0.11%  libc.so.6  [.] __libc_sendto",
            "1.00%  [kernel.kallsyms]  [k] veth_xmit",
            "not a line",
        ]
        .map(String::from)
        .to_vec();
        let k = perf_kinds(&lines);
        assert!((k[0].1 - 10.33).abs() < 1e-9, "{k:?}");
        assert_eq!((k[1].1, k[2].1, k[3].1), (2.11, 0.59, 0.11));
    }

    #[test]
    fn proc_status_fields() {
        let status =
            "Name:\txfrm-user\nvoluntary_ctxt_switches:\t1234\nnonvoluntary_ctxt_switches:\t56\n";
        assert_eq!(status_field(status, "voluntary_ctxt_switches:"), Some(1234));
        assert_eq!(
            status_field(status, "nonvoluntary_ctxt_switches:"),
            Some(56)
        );
        assert_eq!(status_field(status, "Threads:"), None);
    }

    #[test]
    fn loaded_counts_from_the_start_line() {
        let log = "xfrm-user: gateway veth1 -> veth2 (Tunnel), 65536 SAs, 1024 out policies, \
                   1 worker(s), host's own traffic through xfrm0; Ctrl-C stops\n";
        assert_eq!(loaded_counts(log), Some((65536, 1024)));
        assert_eq!(loaded_counts("xfrm-user: starting"), None);
    }

    #[test]
    fn worker_counts_from_the_last_counter_line() {
        let log = "xdp inside: rx 5 | ...\n\
                   out 10 pkts + local 0 -> wire 10, in 7 (reassembled 0) -> inside 7 + local 0, icmp 0\n\
                   out 20 pkts + local 1 -> wire 21, in 9 (reassembled 0) -> inside 9 + local 0, icmp 0\n";
        assert_eq!(worker_counts(log), Some((21, 9)));
        assert_eq!(worker_counts("nothing yet"), None);
    }

    #[test]
    fn iperf3_udp_and_tcp_results() {
        let udp = r#"{"end":{"sum_received":{"seconds":2.0,"bits_per_second":8e6,
            "packets":1000,"lost_packets":400,"lost_percent":40.0},"sum_sent":{}}}"#;
        let f = parse_iperf3(udp, Load::Udp { len: 64 }).unwrap();
        assert_eq!(f.udp, Some((300.0, 40.0)));
        assert_eq!(f.value(), 300.0);
        let tcp = r#"{"end":{"sum_received":{"seconds":5.0,"bits_per_second":1.5e9},
            "sum_sent":{"retransmits":3}}}"#;
        let f = parse_iperf3(tcp, Load::Tcp { streams: 1 }).unwrap();
        assert_eq!((f.mbit_s, f.retransmits, f.udp), (1500.0, Some(3), None));
        let err = parse_iperf3(r#"{"error":"unable to connect"}"#, Load::Tcp { streams: 1 });
        assert!(format!("{:#}", err.unwrap_err()).contains("unable to connect"));
    }

    #[test]
    fn ratios_per_load() {
        let fig = |route, v: f64| Figure {
            route,
            load: Load::Tcp { streams: 1 },
            mbit_s: v,
            udp: None,
            retransmits: None,
            cpu_ns_per_packet: None,
            user_ns_per_packet: None,
            wakeups_per_packet: None,
            command: String::new(),
            round: 0,
        };
        let rep = Report {
            figures: vec![
                fig(Route::KernelOffloadsOff, 3000.0),
                fig(Route::NullTransform, 2000.0),
                fig(Route::Esp, 1500.0),
            ],
            setups: Vec::new(),
            startups: Vec::new(),
        };
        assert_eq!(
            rep.summary(),
            [
                "ratio_esp_vs_null_tcp1=0.750",
                "ratio_esp_vs_kernel_offloads_off_tcp1=0.500"
            ]
        );
        // Three rounds: each round's ratio, and their median first.
        let mut figures = Vec::new();
        for (round, (null, esp)) in [(2000.0, 1500.0), (1000.0, 1000.0), (1000.0, 900.0)]
            .into_iter()
            .enumerate()
        {
            for (route, v) in [(Route::NullTransform, null), (Route::Esp, esp)] {
                figures.push(Figure {
                    round: round as u32,
                    ..fig(route, v)
                });
            }
        }
        let rep = Report {
            figures,
            setups: Vec::new(),
            startups: Vec::new(),
        };
        assert_eq!(
            rep.summary(),
            ["ratio_esp_vs_null_tcp1=0.900 rounds=0.750,1.000,0.900"]
        );
        assert!(rep.table().contains("(round 3)"), "{}", rep.table());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
